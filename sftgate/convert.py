"""`sftgate data convert`: Alpaca, ShareGPT and OpenAI-messages records into a question set.

Each record is one question and one answer. The answer (Alpaca's `output`, the assistant turn)
must already be an eval JSON v2 object, checked with the scorer's own `parse_output` and
`schema_errors`: it becomes the item's reference, its anchors' documents the `source_paths`.
A record that does not map (a plain-text answer, several user turns, a tool turn) is a problem
naming the file, the line and the field; every problem is reported at once and nothing is
written. The mapping is documented in docs/question_sets.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from sftgate.config import validation_problems
from sftgate.contexts import load_contexts
from sftgate.errors import InputError, MismatchError, Problem
from sftgate.fsutil import atomic_write_json
from sftgate.questions import Question, read_json_records, set_version
from sftgate.scoring import parse_output, schema_errors

Format = Literal["alpaca", "sharegpt", "messages"]
FORMATS: tuple[Format, ...] = ("alpaca", "sharegpt", "messages")

ANSWER_FIX = (
    "the answer must be the eval JSON v2 object the model is trained to write "
    "(docs/prompts/eval_json_v2.md): convert your references to it first"
)
# ShareGPT's `from` and the OpenAI `role` values, by what they are.
ROLES = {
    "system": "system",
    "developer": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


class Unmapped(Exception):
    """A record that does not map: the field and what is wrong with it."""

    def __init__(self, field: str, message: str, fix: str = ""):
        super().__init__(message)
        self.field, self.message, self.fix = field, message, fix


@dataclass(frozen=True)
class Pair:
    """One record as a question and the raw answer, with the answer's field path."""

    question: str
    answer: str
    answer_field: str
    dropped_system: bool  # a system prompt was left out: sftgate's prompt has its own


def text_field(record: dict[str, Any], key: str, field: str | None = None) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if key not in record else f"must be non-empty text, got {value!r:.60}"
        raise Unmapped(field or key, got)
    return value


def alpaca_pair(record: dict[str, Any]) -> Pair:
    """instruction (+ a blank line and input, when given) -> question; output -> answer."""
    if record.get("history"):
        raise Unmapped(
            "history",
            "earlier turns do not map: a question-set item is one question and its answer",
            "drop the record or its history",
        )
    question = text_field(record, "instruction")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise Unmapped("input", f"must be text, got {extra!r:.60}")
    if extra.strip():
        question = f"{question}\n\n{extra}"
    return Pair(question, text_field(record, "output"), "output", bool(record.get("system")))


def turns_pair(record: dict[str, Any], key: str, role_key: str, text_key: str) -> Pair:
    """[system], user, assistant -> question, answer; anything else is Unmapped."""
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise Unmapped(key, "missing" if key not in record else "must be a non-empty list of turns")
    roles = []
    for i, turn in enumerate(turns):
        role = turn.get(role_key) if isinstance(turn, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise Unmapped(
                f"{key}[{i}].{role_key}",
                f"{role!r} does not map (system, user and assistant turns only)",
                "drop the record: tool and function turns have no place in a question set",
            )
        roles.append(ROLES[role])
    dropped = 0
    while dropped < len(roles) and roles[dropped] == "system":
        dropped += 1
    rest = roles[dropped:]
    if rest != ["user", "assistant"]:
        users = rest.count("user")
        raise Unmapped(
            key,
            f"{users} user turn(s) and {rest.count('assistant')} assistant turn(s) after the "
            "system prompt; a question-set item is one user turn followed by one assistant turn",
            "split multi-turn conversations or drop them",
        )
    user, answer = dropped, dropped + 1
    return Pair(
        text_field(turns[user], text_key, f"{key}[{user}].{text_key}"),
        text_field(turns[answer], text_key, f"{key}[{answer}].{text_key}"),
        f"{key}[{answer}].{text_key}",
        dropped > 0,
    )


PAIRS: dict[Format, Callable[[dict[str, Any]], Pair]] = {
    "alpaca": alpaca_pair,
    "sharegpt": lambda r: turns_pair(r, "conversations", "from", "value"),
    "messages": lambda r: turns_pair(r, "messages", "role", "content"),
}


def reference(pair: Pair) -> dict[str, Any]:
    """The answer as an item's reference: its answer, description and evidence, and the
    documents its anchors cite (source_path without '#section', each once, in order)."""
    obj, reason = parse_output(pair.answer)
    if obj is None:
        raise Unmapped(pair.answer_field, f"not an eval JSON v2 answer: {reason}", ANSWER_FIX)
    errors = schema_errors(obj)
    if errors:
        raise Unmapped(
            pair.answer_field, f"not an eval JSON v2 answer: {'; '.join(errors)}", ANSWER_FIX
        )
    paths = [a["source_path"].split("#", 1)[0] for a in obj["anchors"]]
    return {
        "answer": obj["answer"],
        "detailed_description": obj["detailed_description"],
        "original_evidence": obj["original_evidence"],
        "source_paths": list(dict.fromkeys(p for p in paths if p)),
    }


@dataclass(frozen=True)
class Converted:
    out: Path
    questions: int
    eval_set_version: str
    index_version: str | None  # of the contexts attached, if any
    system_prompts_dropped: int


def record_id(raw: dict[str, Any], stem: str, n: int) -> str:
    """The record's own `id` (text or a number), else STEM-N for the N-th record (from 1)."""
    value = raw.get("id")
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    return f"{stem}-{n}"


def convert_records(fmt: Format, path: Path) -> tuple[list[Question], int]:
    """The file's records as questions, and how many system prompts were dropped."""
    _, records = read_json_records(path)
    problems: list[Problem] = []
    questions: list[Question] = []
    seen: dict[str, str] = {}
    dropped = 0
    for n, (where, raw) in enumerate(records, 1):
        if not isinstance(raw, dict):
            problems.append(
                Problem(str(path), where, "", f"a {fmt} record must be a JSON object", "")
            )
            continue
        qid = record_id(raw, path.stem, n)
        item = f"{qid!r} ({where})"
        try:
            pair = PAIRS[fmt](raw)
            item_data = {"id": qid, "question": pair.question, "reference": reference(pair)}
        except Unmapped as e:
            problems.append(Problem(str(path), item, e.field, e.message, e.fix))
            continue
        try:
            question = Question.model_validate(item_data)
        except ValidationError as e:
            problems += validation_problems(e, str(path), item=item, data=item_data)
            continue
        if qid in seen:
            problems.append(
                Problem(
                    str(path),
                    item,
                    "id",
                    f"duplicate id (also at {seen[qid]})",
                    "ids must be unique",
                )
            )
            continue
        seen[qid] = where
        questions.append(question)
        dropped += pair.dropped_system
    if not records:
        problems.append(Problem(str(path), "", "", "no records", "give a file with records"))
    if problems:
        raise InputError(problems)
    return questions, dropped


def attach_contexts(
    questions: list[Question], contexts_path: str | Path
) -> tuple[list[Question], str]:
    """Each question with its passages from a contexts file (one line per question id)."""
    contexts = load_contexts(contexts_path)
    wanted = contexts.meta.eval_set_version
    if wanted and wanted != set_version(questions):
        raise MismatchError(
            f"{contexts_path} was retrieved for eval_set_version {wanted[:12]}, not for these "
            f"{len(questions)} questions ({set_version(questions)[:12]})"
        )
    missing = [q.id for q in questions if q.id not in contexts.passages]
    if missing:
        raise InputError(
            Problem(
                str(contexts_path),
                ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
                "id",
                f"{len(missing)} converted question(s) have no passages here",
                "give a contexts file with a line for every question id",
            )
        )
    with_passages = [
        q.model_copy(update={"contexts": list(contexts.passages[q.id])}) for q in questions
    ]
    return with_passages, contexts.index_version


def convert_file(
    fmt: Format, path: str | Path, out: str | Path, contexts: str | Path | None = None
) -> Converted:
    """Convert IN into a question-set file at OUT (written atomically; an existing OUT is
    refused), with the passages of a contexts file attached when one is given."""
    path, out = Path(path), Path(out)
    if out.exists():
        raise InputError(
            Problem(str(out), "", "--out", "exists", "choose another file or delete it")
        )
    questions, dropped = convert_records(fmt, path)
    index_version = None
    if contexts is not None:
        questions, index_version = attach_contexts(questions, contexts)
    items = [q.model_dump(mode="json", exclude_none=True) for q in questions]
    doc: Any = {"index_version": index_version, "questions": items} if index_version else items
    atomic_write_json(out, doc)
    return Converted(out, len(questions), set_version(questions), index_version, dropped)
