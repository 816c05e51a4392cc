"""The prompt: a versioned template file, and the one function that renders it.

Training and evaluation both build prompts with `render_prompt`, through the tokenizer's chat
template, with Qwen3's thinking turned off; nothing else in sftgate formats a prompt.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sftgate.errors import InputError, Problem
from sftgate.fsutil import read_input_bytes
from sftgate.questions import Passage

DEFAULT_PROMPT = "docs/prompts/eval_json_v2.md"
_BLOCK = re.compile(r"^## (system|user|passage)\s*\n+```text\n(.*?)\n```\s*$", re.M | re.S)
_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.S)


@dataclass(frozen=True)
class PromptTemplate:
    path: str
    version: str  # prompt_version, declared in the file's front matter
    sha256: str  # prompt_sha256: SHA-256 of the file's exact bytes
    system: str
    user: str  # contains {question} and {passages}
    passage: str  # contains {n}, {source_path} and {text}


def load_prompt(path: str | Path) -> PromptTemplate:
    path = Path(path)
    data = read_input_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(
            Problem(str(path), "", "", "prompt file is not UTF-8", "save it as UTF-8")
        ) from None
    problems = []
    front = _FRONT.match(text)
    try:
        meta: Any = yaml.safe_load(front.group(1)) if front else None
    except yaml.YAMLError:
        meta = None  # reported below as a missing prompt_version
    version = meta.get("prompt_version") if isinstance(meta, dict) else None
    if not isinstance(version, str) or not version:
        problems.append(
            Problem(
                str(path),
                "front matter",
                "prompt_version",
                "missing",
                "start the file with ---\\nprompt_version: NAME\\n---",
            )
        )
    blocks = {name: body for name, body in _BLOCK.findall(text)}
    for name in ("system", "user", "passage"):
        if name not in blocks:
            problems.append(
                Problem(
                    str(path),
                    f"section '## {name}'",
                    "",
                    "missing",
                    f"add '## {name}' followed by a ```text fenced block",
                )
            )
    for name, needles in (
        ("user", ("{question}", "{passages}")),
        ("passage", ("{source_path}", "{text}")),
    ):
        for needle in needles:
            if name in blocks and needle not in blocks[name]:
                problems.append(
                    Problem(
                        str(path),
                        f"section '## {name}'",
                        needle,
                        "placeholder missing",
                        f"put {needle} in the block",
                    )
                )
    if problems:
        raise InputError(problems)
    return PromptTemplate(
        path=str(path),
        version=str(version),
        sha256=hashlib.sha256(data).hexdigest(),  # of the bytes parsed here
        system=blocks["system"],
        user=blocks["user"],
        passage=blocks["passage"],
    )


def format_passages(template: PromptTemplate, passages: Sequence[Passage]) -> str:
    return "\n\n".join(
        template.passage.replace("{n}", str(i))
        .replace("{source_path}", p.source_path)
        .replace("{text}", p.text.strip())
        for i, p in enumerate(passages, 1)
    )


def render_messages(
    template: PromptTemplate, question: str, passages: Sequence[Passage]
) -> list[dict[str, str]]:
    """The chat messages for one question. Plain str.replace, so JSON braces stay literal."""
    user = template.user.replace("{passages}", format_passages(template, passages)).replace(
        "{question}", question.strip()
    )
    return [{"role": "system", "content": template.system}, {"role": "user", "content": user}]


def render_prompt(
    tokenizer: Any, template: PromptTemplate, question: str, passages: Sequence[Passage]
) -> str:
    """The exact text fed to the model: the chat template with the generation prompt, thinking off.

    `enable_thinking=False` makes Qwen3 hybrid templates emit the empty <think></think> block that
    means "answer directly"; templates without the variable ignore it.
    """
    if not tokenizer.chat_template:
        raise InputError(
            Problem(
                str(getattr(tokenizer, "name_or_path", "tokenizer")),
                "",
                "chat_template",
                "the tokenizer has no chat template",
                "use an instruct/chat model or set tokenizer.chat_template",
            )
        )
    text = tokenizer.apply_chat_template(
        render_messages(template, question, passages),
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    assert isinstance(text, str)
    return text


def encode_prompt(
    tokenizer: Any, template: PromptTemplate, question: str, passages: Sequence[Passage]
) -> list[int]:
    """The prompt's token ids, exactly as training uses them and evaluation feeds them.

    No special tokens are added on top of the chat template: the template already holds them.
    """
    ids = tokenizer(
        render_prompt(tokenizer, template, question, passages), add_special_tokens=False
    )["input_ids"]
    return list(ids)
