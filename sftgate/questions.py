"""Question sets: one documented format (docs/question_sets.md), loaded with every problem reported.

A question-set file is either
  * a JSON list of question objects,
  * a JSON object {"label": ..., "index_version": ..., "questions": [...]}, or
  * JSONL, one question object per line, optionally preceded by a header line
    {"_meta": {"label": ..., "index_version": ...}}.

`eval_set_version` is the SHA-256 of the canonical JSON of the items (sorted by id, keys sorted,
no whitespace), so it does not change with key order, indentation or line endings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from sftgate.config import StrictModel, validation_problems
from sftgate.errors import InputError, Problem
from sftgate.fsutil import read_input_bytes
from sftgate.hashing import sha256_json

NonEmpty = Field(min_length=1)


class Passage(StrictModel):
    """One retrieved passage given to the model."""

    source_path: str = Field(
        min_length=1, description="document path relative to the corpus root, '#section' optional"
    )
    text: str = Field(min_length=1)


class Reference(StrictModel):
    """The expected answer. Unanswerable questions have empty evidence and source_paths and the
    fixed answer defined in the scoring spec."""

    answer: str = Field(min_length=1)
    detailed_description: str = Field(min_length=1)
    original_evidence: list[str] = Field(
        default_factory=list, description="verbatim quotes from the documents"
    )
    source_paths: list[str] = Field(default_factory=list)

    @field_validator("original_evidence", "source_paths")
    @classmethod
    def _no_empty_items(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise ValueError("list items must be non-empty strings")
        return v


class Question(StrictModel):
    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    reference: Reference
    contexts: list[Passage] | None = Field(
        default=None,
        description="passages from the user's own retrieval (then the file declares index_version)",
    )


class SetMeta(StrictModel):
    label: str | None = None
    index_version: str | None = Field(
        default=None, description="required when items carry contexts"
    )


@dataclass(frozen=True)
class QuestionSet:
    path: str
    questions: tuple[Question, ...]
    version: str  # eval_set_version: full SHA-256 hex
    label: str | None = None
    index_version: str | None = None  # of the contexts the items carry, if any

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    @property
    def by_id(self) -> dict[str, Question]:
        return {q.id: q for q in self.questions}

    @property
    def has_contexts(self) -> bool:
        return any(q.contexts is not None for q in self.questions)

    def describe(self) -> str:
        name = f"{self.label} " if self.label else ""
        return f"{name}({len(self)} questions, eval_set_version {self.version[:12]})"


def set_version(questions: Sequence[Question]) -> str:
    items = sorted(
        (q.model_dump(mode="json", exclude_none=True) for q in questions), key=lambda d: d["id"]
    )
    return sha256_json(items)


def read_text(path: Path) -> str:
    """A user's text file, UTF-8 (a BOM is dropped); a missing, unreadable or undecodable file is
    an InputError."""
    data = read_input_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            Problem(
                str(path),
                "",
                "",
                f"not UTF-8 (invalid byte at offset {e.start})",
                "save the file as UTF-8",
            )
        ) from None


def jsonl_records(path: Path, text: str, fix: str) -> tuple[list[tuple[str, Any]], list[Problem]]:
    """(location, value) for every non-blank line of a JSONL text, and a problem naming each
    line that is not JSON (with `fix` as what to do)."""
    records: list[tuple[str, Any]] = []
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(
                Problem(
                    str(path),
                    f"line {lineno}",
                    "",
                    f"not valid JSON: {e.msg} (column {e.colno})",
                    fix,
                )
            )
    return records, problems


def read_json_records(path: str | Path) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Read a JSON list / {"questions": [...]} object / JSONL file.

    Returns (meta, [(location, raw_item)]) where location names the line (JSONL) or index (JSON).
    Raises InputError for syntax errors, reporting every bad JSONL line at once.
    """
    path = Path(path)
    text = read_text(path)
    stripped = text.lstrip()
    meta: dict[str, Any] = {}
    if path.suffix == ".jsonl" or (stripped and stripped[0] == "{" and "\n{" in stripped.rstrip()):
        records, problems = jsonl_records(path, text, "fix the line")
        if problems:
            raise InputError(problems)
        first = records[0][1] if records else None
        if isinstance(first, dict) and set(first) == {"_meta"}:
            meta = (
                first["_meta"] if isinstance(first["_meta"], dict) else {"_invalid": first["_meta"]}
            )
            records = records[1:]
        return meta, records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            Problem(
                str(path),
                "",
                "",
                f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                "fix the syntax",
            )
        ) from None
    if isinstance(data, dict):
        if "questions" not in data:
            raise InputError(
                Problem(
                    str(path),
                    "",
                    "questions",
                    "a JSON object file needs a 'questions' list",
                    "or make the file a JSON list",
                )
            )
        items = data.pop("questions")
        meta = data
    else:
        items = data
    if not isinstance(items, list):
        raise InputError(Problem(str(path), "", "", "expected a list of questions", ""))
    return meta, [(f"#{i}", item) for i, item in enumerate(items)]


def load_questions(path: str | Path) -> QuestionSet:
    """Load and validate a question set; every problem in the file is reported in one InputError."""
    path = Path(path)
    raw_meta, records = read_json_records(path)
    problems: list[Problem] = []
    try:
        meta = SetMeta.model_validate(raw_meta)
    except ValidationError as e:
        problems += validation_problems(e, str(path), item="header", data=raw_meta)
        meta = SetMeta()
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for where, raw in records:
        item = where
        if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
            item = f"{raw['id']!r} ({where})"
        if not isinstance(raw, dict):
            problems.append(Problem(str(path), item, "", "each question must be a JSON object", ""))
            continue
        try:
            q = Question.model_validate(raw)
        except ValidationError as e:
            problems += validation_problems(e, str(path), item=item, data=raw)
            continue
        if q.id in seen:
            problems.append(
                Problem(
                    str(path),
                    item,
                    "id",
                    f"duplicate id (also at {seen[q.id]})",
                    "ids must be unique",
                )
            )
            continue
        seen[q.id] = where
        questions.append(q)
    if not records:
        problems.append(
            Problem(str(path), "", "", "the question set is empty", "add at least one question")
        )
    with_ctx = sum(q.contexts is not None for q in questions)
    if with_ctx and not meta.index_version:
        problems.append(
            Problem(
                str(path),
                "header",
                "index_version",
                "items carry 'contexts' but the file does not declare their index_version",
                'add "index_version" (a JSON object file) or a {"_meta": {"index_version": ...}} first line (JSONL)',
            )
        )
    if 0 < with_ctx < len(questions):
        missing = [q.id for q in questions if q.contexts is None][:5]
        problems.append(
            Problem(
                str(path),
                ", ".join(missing),
                "contexts",
                "some items carry contexts and others do not",
                "give every item contexts, or none",
            )
        )
    if problems:
        raise InputError(problems)
    return QuestionSet(
        path=str(path),
        questions=tuple(questions),
        version=set_version(questions),
        label=meta.label,
        index_version=meta.index_version,
    )
