from __future__ import annotations

import shutil

import pytest

from sftgate.errors import InputError
from sftgate.hashing import sha256_file
from sftgate.prompt import load_prompt, render_messages, render_prompt
from sftgate.questions import Passage
from sftgate.tiny import build_tiny_tokenizer
from tests.conftest import PROMPT_PATH

PASSAGES = [
    Passage(source_path="it/vpn.md#申請", text="填寫 IT-07 遠端存取申請表，經直屬主管核准。"),
    Passage(source_path="it/accounts.md", text="Passwords expire every 90 days."),
]


def test_shipped_prompt_loads_with_version_and_sha():
    p = load_prompt(PROMPT_PATH)
    assert p.version == "eval_json_v2.0"
    assert p.sha256 == sha256_file(PROMPT_PATH)
    assert '"answer": string' in p.system  # braces survive: no str.format anywhere


def test_sha_changes_with_any_byte(tmp_path):
    copy = tmp_path / "p.md"
    shutil.copy(PROMPT_PATH, copy)
    copy.write_bytes(copy.read_bytes() + b"\n")
    assert load_prompt(copy).sha256 != load_prompt(PROMPT_PATH).sha256


def test_messages_number_passages_with_source_paths():
    msgs = render_messages(load_prompt(PROMPT_PATH), " 怎麼申請 VPN？ ", PASSAGES)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert user.startswith(
        "Question: 怎麼申請 VPN？\n\nPassages:\n[1] source_path: it/vpn.md#申請\n填寫"
    )
    assert "\n\n[2] source_path: it/accounts.md\nPasswords expire every 90 days." in user


def test_render_through_chat_template_with_thinking_off():
    text = render_prompt(
        build_tiny_tokenizer(), load_prompt(PROMPT_PATH), "How long is a password valid?", PASSAGES
    )
    assert text.startswith("<|im_start|>system\nYou answer questions")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_tiny_tokenizer_round_trips_chinese():
    tok = build_tiny_tokenizer()
    s = "特別休假三日 <|im_end|> résumé"
    assert tok.decode(tok(s)["input_ids"]) == s
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id


def test_broken_prompt_file_names_each_problem(tmp_path):
    bad = tmp_path / "p.md"
    bad.write_text(
        "# no front matter\n\n## user\n\n```text\nQuestion only\n```\n", encoding="utf-8"
    )
    with pytest.raises(InputError) as e:
        load_prompt(bad)
    text = str(e.value)
    assert "prompt_version" in text and "'## system'" in text and "{passages}" in text
