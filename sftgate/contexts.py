"""Contexts files: the frozen passages each question gets, so training and evaluation see the same text.

JSONL. The first line is a header {"_meta": {"index_version", "top_k", "eval_set_version", ...}};
each further line is {"id": ..., "passages": [{"source_path", "text", "score"?}]}.
Written by `sftgate index retrieve`; read by score, train, eval and search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from sftgate.config import StrictModel, validation_problems
from sftgate.errors import InputError, MismatchError, Problem
from sftgate.fsutil import atomic_write_jsonl
from sftgate.questions import Passage, QuestionSet, read_json_records


class ScoredPassage(Passage):
    score: float | None = None


class ContextsLine(StrictModel):
    id: str = Field(min_length=1)
    passages: list[ScoredPassage]


class ContextsMeta(StrictModel):
    index_version: str = Field(min_length=1)
    top_k: int | None = None
    eval_set_version: str | None = None
    questions_file: str | None = None
    retriever: dict[str, Any] | None = None


@dataclass(frozen=True)
class Contexts:
    path: str
    meta: ContextsMeta
    passages: Mapping[str, tuple[Passage, ...]] = field(default_factory=dict)

    @property
    def index_version(self) -> str:
        return self.meta.index_version

    def for_question(self, qid: str) -> tuple[Passage, ...]:
        return self.passages[qid]


def write_contexts(path: str | Path, meta: ContextsMeta, rows: Sequence[ContextsLine]) -> None:
    lines: list[Any] = [{"_meta": meta.model_dump(mode="json", exclude_none=True)}]
    lines += [r.model_dump(mode="json", exclude_none=True) for r in rows]
    atomic_write_jsonl(path, lines)


def load_contexts(path: str | Path) -> Contexts:
    path = Path(path)
    raw_meta, records = read_json_records(path)
    problems: list[Problem] = []
    meta: ContextsMeta | None = None
    try:
        meta = ContextsMeta.model_validate(raw_meta)
    except ValidationError as e:
        problems += validation_problems(e, str(path), item="header (_meta line)", data=raw_meta)
    passages: dict[str, tuple[Passage, ...]] = {}
    for where, raw in records:
        try:
            line = ContextsLine.model_validate(raw)
        except ValidationError as e:
            problems += validation_problems(e, str(path), item=where, data=raw)
            continue
        if line.id in passages:
            problems.append(
                Problem(
                    str(path),
                    f"{line.id!r} ({where})",
                    "id",
                    "duplicate id",
                    "one line per question",
                )
            )
            continue
        passages[line.id] = tuple(
            Passage(source_path=p.source_path, text=p.text) for p in line.passages
        )
    if problems or meta is None:
        raise InputError(problems)
    return Contexts(path=str(path), meta=meta, passages=passages)


def resolve_passages(
    questions: QuestionSet, contexts: Contexts | None
) -> tuple[dict[str, tuple[Passage, ...]], str]:
    """The passages for every question and the index_version they came from.

    From the contexts file when one is given (it must cover every question and, when it records
    one, match the question set's eval_set_version), else from the items' own `contexts`.
    """
    if contexts is not None:
        if contexts.meta.eval_set_version and contexts.meta.eval_set_version != questions.version:
            raise MismatchError(
                f"{contexts.path} was retrieved for eval_set_version {contexts.meta.eval_set_version[:12]}, "
                f"but {questions.path} has eval_set_version {questions.version[:12]}; "
                "run `sftgate index retrieve` again for this question set"
            )
        missing = [q.id for q in questions if q.id not in contexts.passages]
        if missing:
            raise InputError(
                Problem(
                    contexts.path,
                    ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
                    "id",
                    f"{len(missing)} question(s) of {questions.path} have no passages here",
                    "retrieve contexts for this question set",
                )
            )
        return {q.id: contexts.passages[q.id] for q in questions}, contexts.index_version
    if questions.has_contexts:
        assert questions.index_version is not None  # load_questions enforces it
        return {q.id: tuple(q.contexts or ()) for q in questions}, questions.index_version
    raise InputError(
        Problem(
            questions.path,
            "",
            "contexts",
            "the questions carry no passages and no contexts file was given",
            "pass --contexts CONTEXTS.jsonl (from `sftgate index retrieve`) or add 'contexts' to the items",
        )
    )
