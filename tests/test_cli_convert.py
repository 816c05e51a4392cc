"""`sftgate data convert`: Alpaca, ShareGPT and OpenAI-messages records into a question set, and
the one-line errors (file, line, field) for records that do not map."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sftgate.cli import main
from sftgate.contexts import ContextsLine, ContextsMeta, write_contexts
from sftgate.questions import load_questions

ANSWER = {
    "answer": "填寫 IT-07 表單並經主管核准。",
    "detailed_description": "員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。",
    "original_evidence": ["填寫 IT-07 遠端存取申請表"],
    "anchors": [
        {"source_path": "it/vpn.md#申請", "text": "IT-07"},
        {"source_path": "it/vpn.md#開通", "text": "資訊部開通"},
        {"source_path": "hr/leave.md", "text": "主管"},
    ],
}
OUTPUT = json.dumps(ANSWER, ensure_ascii=False)
REFERENCE = {
    "answer": ANSWER["answer"],
    "detailed_description": ANSWER["detailed_description"],
    "original_evidence": ANSWER["original_evidence"],
    "source_paths": ["it/vpn.md", "hr/leave.md"],  # the anchors' documents, each once, in order
}
SYSTEM = "You are a helpful assistant."


def jsonl(path: Path, records: list) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


def convert(tmp_path: Path, fmt: str, records: list, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "out.json"
    code = main(
        [
            "data",
            "convert",
            "--from",
            fmt,
            str(jsonl(tmp_path / "in.jsonl", records)),
            "--out",
            str(out),
            *extra,
        ]
    )
    return code, out


@pytest.mark.parametrize(
    "fmt, record, question",
    [
        (
            "alpaca",
            {"instruction": "VPN 帳號要怎麼申請？", "input": "", "output": OUTPUT},
            "VPN 帳號要怎麼申請？",
        ),
        (
            "alpaca",
            {
                "instruction": "Answer the question.",
                "input": "VPN 帳號要怎麼申請？",
                "output": OUTPUT,
                "system": SYSTEM,
            },
            "Answer the question.\n\nVPN 帳號要怎麼申請？",
        ),
        (
            "sharegpt",
            {
                "conversations": [
                    {"from": "system", "value": SYSTEM},
                    {"from": "human", "value": "VPN 帳號要怎麼申請？"},
                    {"from": "gpt", "value": OUTPUT},
                ]
            },
            "VPN 帳號要怎麼申請？",
        ),
        (
            "messages",
            {
                "messages": [
                    {"role": "user", "content": "VPN 帳號要怎麼申請？"},
                    {"role": "assistant", "content": OUTPUT},
                ]
            },
            "VPN 帳號要怎麼申請？",
        ),
    ],
)
def test_each_format_maps_to_the_same_item(tmp_path, capsys, fmt, record, question):
    code, out = convert(tmp_path, fmt, [record, {**record, "id": "mine-7"}])
    assert code == 0, capsys.readouterr().err
    qs = load_questions(out)  # what train, eval and search load
    assert [q.id for q in qs] == ["in-1", "mine-7"]  # the record's id, else IN's stem and position
    for q in qs:
        assert q.question == question and q.contexts is None
        assert q.reference.model_dump() == REFERENCE
    printed = capsys.readouterr().out
    assert f"2 questions from {tmp_path / 'in.jsonl'} ({fmt})" in printed
    assert qs.version[:12] in printed
    assert ("2 system prompt(s) dropped" in printed) == (SYSTEM in json.dumps(record))


def test_a_json_list_of_alpaca_records_and_an_unanswerable_answer(tmp_path, capsys):
    refusal = {
        "answer": "知識庫中沒有足夠資訊回答此問題。",
        "detailed_description": "提供的段落未提及此事。",
        "original_evidence": [],
        "anchors": [],
    }
    path = tmp_path / "alpaca.json"
    path.write_text(
        json.dumps(
            [
                {
                    "instruction": "公司有健身房嗎？",
                    "output": json.dumps(refusal, ensure_ascii=False),
                }
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    out = tmp_path / "q.json"
    assert main(["data", "convert", "--from", "alpaca", str(path), "--out", str(out)]) == 0
    [q] = load_questions(out)
    assert (
        q.id == "alpaca-1"
        and q.reference.source_paths == []
        and q.reference.original_evidence == []
    )


MESSAGES = [{"role": "user", "content": "VPN?"}, {"role": "assistant", "content": OUTPUT}]


@pytest.mark.parametrize(
    "fmt, record, expected",
    [
        (
            "alpaca",
            {"instruction": "VPN?", "output": "Fill in form IT-07."},
            "item 'in-2' (line 2): field 'output': not an eval JSON v2 answer: no JSON object",
        ),
        (
            "alpaca",
            {"instruction": "VPN?", "output": "```json\n" + OUTPUT + "\n```"},
            "field 'output': not an eval JSON v2 answer: wrapped in a code fence",
        ),
        (
            "alpaca",
            {"instruction": "VPN?", "output": json.dumps({"answer": "Form IT-07."})},
            "field 'output': not an eval JSON v2 answer: (root): 'detailed_description' is a required property",
        ),
        ("alpaca", {"input": "VPN?", "output": OUTPUT}, "field 'instruction': missing"),
        (
            "alpaca",
            {"instruction": "VPN?", "output": OUTPUT, "history": [["Hi", "Hello"]]},
            "field 'history': earlier turns do not map",
        ),
        (
            "messages",
            {
                "messages": MESSAGES
                + [
                    {"role": "user", "content": "And leave?"},
                    {"role": "assistant", "content": OUTPUT},
                ]
            },
            "field 'messages': 2 user turn(s) and 2 assistant turn(s) after the system prompt",
        ),
        (
            "messages",
            {"messages": [{"role": "user", "content": "VPN?"}, {"role": "tool", "content": "{}"}]},
            "field 'messages[1].role': 'tool' does not map",
        ),
        (
            "messages",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "VPN?"}]},
                    MESSAGES[1],
                ]
            },
            "field 'messages[0].content': must be non-empty text",
        ),
        (
            "sharegpt",
            {"conversations": [{"from": "human", "value": "VPN?"}]},
            "field 'conversations': 1 user turn(s) and 0 assistant turn(s)",
        ),
        (
            "sharegpt",
            {
                "conversations": [
                    {"from": "gpt", "value": OUTPUT},
                    {"from": "human", "value": "VPN?"},
                ]
            },
            "field 'conversations': 1 user turn(s) and 1 assistant turn(s)",
        ),
        ("sharegpt", {"messages": MESSAGES}, "field 'conversations': missing"),
    ],
)
def test_records_that_do_not_map_name_the_line_and_field(tmp_path, capsys, fmt, record, expected):
    good = {
        "alpaca": {"instruction": "VPN?", "output": OUTPUT},
        "messages": {"messages": MESSAGES},
        "sharegpt": {
            "conversations": [{"from": "human", "value": "VPN?"}, {"from": "gpt", "value": OUTPUT}]
        },
    }[fmt]
    code, out = convert(tmp_path, fmt, [good, record])
    err = capsys.readouterr().err
    assert code == 2 and expected in " ".join(err.split()), err
    assert f"{tmp_path / 'in.jsonl'}: item 'in-2' (line 2)" in err
    assert len(err.strip().splitlines()) == 1  # the good record has no problem
    assert not out.exists()  # nothing written


def test_every_problem_at_once_and_duplicate_ids(tmp_path, capsys):
    records = [
        {"id": "a", "instruction": "VPN?", "output": OUTPUT},
        {"id": "a", "instruction": "VPN again?", "output": OUTPUT},
        {"instruction": "No answer", "output": "plain text"},
        "not a record",
    ]
    code, out = convert(tmp_path, "alpaca", records)
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 3, err
    assert "item 'a' (line 2): field 'id': duplicate id (also at line 1)" in err[0]
    assert "item 'in-3' (line 3): field 'output'" in err[1]
    assert "line 4: a alpaca record must be a JSON object" in err[2]
    assert not out.exists()


def test_an_existing_output_is_refused(tmp_path, capsys):
    (tmp_path / "out.json").write_text("[]", encoding="utf-8")
    code, _ = convert(tmp_path, "alpaca", [{"instruction": "VPN?", "output": OUTPUT}])
    assert code == 2 and "out.json: field '--out': exists" in capsys.readouterr().err
    assert (tmp_path / "out.json").read_text(encoding="utf-8") == "[]"


def test_contexts_are_attached_with_their_index_version(tmp_path, capsys):
    passage = {"source_path": "it/vpn.md#申請", "text": "員工須填寫 IT-07 遠端存取申請表。"}
    ctx = tmp_path / "ctx.jsonl"
    write_contexts(
        ctx,
        ContextsMeta(index_version="my-retriever-3"),
        [ContextsLine(id="in-1", passages=[passage])],
    )
    code, out = convert(
        tmp_path, "alpaca", [{"instruction": "VPN?", "output": OUTPUT}], "--contexts", str(ctx)
    )
    assert code == 0, capsys.readouterr().err
    qs = load_questions(out)
    assert qs.index_version == "my-retriever-3"
    assert [p.model_dump() for p in qs.questions[0].contexts or []] == [passage]
    os.remove(out)
    records = [
        {"instruction": "VPN?", "output": OUTPUT},
        {"instruction": "Leave?", "output": OUTPUT},
    ]
    code, out = convert(tmp_path, "alpaca", records, "--contexts", str(ctx))
    err = capsys.readouterr().err
    assert (
        code == 2
        and "ctx.jsonl: item in-2: field 'id': 1 converted question(s) have no passages here" in err
    )
    assert not out.exists()
