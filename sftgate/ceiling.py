"""The ceiling: the best gate score any model could reach from the passages it is given.

Pure functions over plain data (questions, their passages, the scorer). The definition is in
docs/scoring/ceiling.md: each question's best answer is the reference itself, its evidence quotes
kept only where they are verbatim in the passages and each kept quote anchored in the passage that
holds it (the training target, `sftgate.targets.reference_completion`), scored by the scoring spec.
A question whose evidence was not retrieved keeps its answer and description (the spec scores them
against the reference whatever the passages) and loses its evidence and grounding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftgate.questions import Passage, Question
from sftgate.scoring import (
    QuestionScore,
    bootstrap_ci,
    is_unanswerable,
    score_question,
    verbatim_in,
)
from sftgate.targets import anchor_text, reference_completion
from sftgate.textnorm import has_cjk

# The question kinds the ceiling is broken down by: a shape (how many documents the answer
# needs) and a language (a CJK character in the question, as the sample's README counts them).
SHAPES = ("one_document", "two_documents", "unanswerable")
LANGUAGES = ("zh", "en")
KINDS = SHAPES + LANGUAGES


def question_kinds(question: Question) -> tuple[str, str]:
    """(shape, language): `two_documents` when the reference's source_paths name two or more
    documents (a '#section' suffix aside), `unanswerable` per the scoring spec's section 5."""
    ref = question.reference
    if is_unanswerable(ref):
        shape = "unanswerable"
    else:
        documents = {p.split("#", 1)[0] for p in ref.source_paths}
        shape = "two_documents" if len(documents) >= 2 else "one_document"
    return shape, "zh" if has_cjk(question.question) else "en"


def best_answer(question: Question, passages: Sequence[Passage]) -> str:
    """The best answer to a question from these passages, as raw model output: the training
    target (the reference, its quotes kept where verbatim in the passages, each anchored in the
    passage that holds it). An answerable question left with no anchor (its evidence was not
    retrieved) anchors the start of its first passage: grounding only checks that an anchor is
    verbatim in the passage it cites, so that is the best the scoring spec still allows."""
    target = reference_completion(question.reference, passages)
    if is_unanswerable(question.reference) or not passages:
        return target
    obj = json.loads(target)
    if not obj["anchors"]:
        first = passages[0]
        obj["anchors"] = [
            {"source_path": first.source_path, "text": anchor_text(first.text.strip())}
        ]
    return json.dumps(obj, ensure_ascii=False)


@dataclass(frozen=True)
class QuestionCeiling:
    id: str
    kinds: tuple[str, str]
    score: QuestionScore  # the best answer's score; eval_score is this question's ceiling
    evidence_quotes: int  # the reference's evidence quotes
    evidence_missing: int  # of them, not verbatim in any passage

    @property
    def evidence_retrieved(self) -> bool:
        return self.evidence_missing == 0

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kinds": list(self.kinds),
            "ceiling": self.score.eval_score,
            "context_recall": self.score.context_recall,
            "evidence_quotes": self.evidence_quotes,
            "evidence_missing": self.evidence_missing,
            "original_evidence": self.score.original_evidence,
            "grounding": self.score.grounding,
        }


def question_ceiling(question: Question, passages: Sequence[Passage]) -> QuestionCeiling:
    score = score_question(
        question.id, best_answer(question, passages), question.reference, passages
    )
    evidence = question.reference.original_evidence
    missing = sum(not verbatim_in(q, passages) for q in evidence)
    return QuestionCeiling(question.id, question_kinds(question), score, len(evidence), missing)


@dataclass(frozen=True)
class Ceiling:
    """The ceiling of a question set under one retrieval, against a gate."""

    ceiling: float  # mean per-question ceiling, 0-100
    ci95: tuple[float, float]
    context_recall: float | None  # None when no question has evidence
    gate_score: float
    margin: float
    questions: tuple[QuestionCeiling, ...]
    by_kind: Mapping[str, Mapping[str, Any]]

    @property
    def reachable(self) -> bool:
        """A model is never perfect: the gate is reachable when the ceiling clears it by `margin`."""
        return self.ceiling >= self.gate_score + self.margin

    @property
    def headroom(self) -> float:
        """Ceiling minus gate, in points (negative: not even a perfect answer passes)."""
        return self.ceiling - self.gate_score

    @property
    def missing_evidence(self) -> list[QuestionCeiling]:
        return [q for q in self.questions if not q.evidence_retrieved]

    def to_json(self) -> dict[str, Any]:
        return {
            "ceiling": round(self.ceiling, 6),
            "ceiling_ci95": [round(x, 6) for x in self.ci95],
            "gate_score": self.gate_score,
            "reachable": self.reachable,
            "margin": self.margin,
            "context_recall": self.context_recall,
            "n": len(self.questions),
            "questions_missing_evidence": len(self.missing_evidence),
            "by_kind": {k: dict(v) for k, v in self.by_kind.items()},
        }


def _kind_summary(items: Sequence[QuestionCeiling]) -> dict[str, Any]:
    recalls = [q.score.context_recall for q in items if q.score.context_recall is not None]
    return {
        "n": len(items),
        "ceiling": round(float(np.mean([q.score.eval_score for q in items])), 6),
        "context_recall": round(float(np.mean(recalls)), 6) if recalls else None,
        "missing_evidence": sum(not q.evidence_retrieved for q in items),
    }


def compute_ceiling(
    questions: Sequence[Question],
    passages: Mapping[str, Sequence[Passage]],
    *,
    gate_score: float,
    margin: float,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Ceiling:
    """The ceiling of every question, their mean with the scoring spec's seeded bootstrap
    interval, context_recall, and the same per question kind (kinds with no question left out)."""
    if not questions:
        raise ValueError("compute_ceiling() needs at least one question")
    missing = [q.id for q in questions if q.id not in passages]
    if missing:
        raise ValueError(
            f"compute_ceiling(): no passages for {len(missing)} question(s), e.g. {missing[:3]}"
        )
    items = tuple(question_ceiling(q, passages[q.id]) for q in questions)
    scores = [q.score.eval_score for q in items]
    recalls = [q.score.context_recall for q in items if q.score.context_recall is not None]
    lo, hi = bootstrap_ci(scores, n_bootstrap=n_bootstrap, seed=seed)
    by_kind = {
        kind: _kind_summary(members)
        for kind in KINDS
        if (members := [q for q in items if kind in q.kinds])
    }
    return Ceiling(
        ceiling=float(np.mean(scores)),
        ci95=(lo, hi),
        context_recall=float(np.mean(recalls)) if recalls else None,
        gate_score=gate_score,
        margin=margin,
        questions=items,
        by_kind=by_kind,
    )


# ---------------------------------------------------------------------- the gap, explained


def failure_kind(reason: str) -> str:
    """A schema failure's reason without what varies between outputs: the character offset of a
    parse error, list indexes in schema paths, and every violation after the first."""
    first = reason.split("; ", 1)[0]
    first = re.sub(r" at character \d+$", "", first)
    return re.sub(r"/\d+", "/N", first)


def _share(points: float, n: int) -> float:
    return round(points / n, 6) if n else 0.0


def gap_classes(
    ids: Sequence[str], schema_errors: Mapping[str, str], evidence_retrieved: Mapping[str, bool]
) -> dict[str, str]:
    """Where each question's points below its ceiling went: format (the output failed parse or
    schema), missing_evidence (its evidence was not retrieved), else model."""
    return {
        q: "format"
        if q in schema_errors
        else "missing_evidence"
        if not evidence_retrieved[q]
        else "model"
        for q in ids
    }


def gap_parts(
    members: Sequence[str],
    cls: Mapping[str, str],
    ceilings: Mapping[str, float],
    scores: Mapping[str, float],
) -> dict[str, Any]:
    """The decomposition over some questions (all of them, or one kind's)."""
    m = len(members)
    lost = {c: sum(ceilings[q] - scores[q] for q in members if cls[q] == c) for c in cls.values()}
    return {
        "n": m,
        "ceiling": _share(sum(ceilings[q] for q in members), m),
        "eval_score_avg": _share(sum(scores[q] for q in members), m),
        "retrieval": _share(
            sum(100 - ceilings[q] for q in members) + lost.get("missing_evidence", 0.0), m
        ),
        "format": _share(lost.get("format", 0.0), m),
        "model": _share(lost.get("model", 0.0), m),
    }


def decompose_gap(
    *,
    gate_score: float,
    ceilings: Mapping[str, float],
    evidence_retrieved: Mapping[str, bool],
    kinds: Mapping[str, Sequence[str]],
    scores: Mapping[str, float],
    schema_errors: Mapping[str, str],
) -> dict[str, Any]:
    """Why a run's eval_score_avg is below the gate, in points of that average (docs/scoring/ceiling.md).

    Per question q with ceiling c_q and score s_q, the run loses 100 - s_q = (100 - c_q) +
    (c_q - s_q). The first part is retrieval's (its mean is 100 - ceiling). The second is
    format's when q's output failed parse or schema (s_q = 0), else retrieval's again when q's
    evidence was not in its passages, else the model's. So `lost` sums to 100 - eval_score_avg
    and gate - eval_score_avg = (gate - ceiling) + lost_on_missing_evidence + format + model.
    """
    if set(scores) != set(ceilings):
        raise ValueError(
            f"decompose_gap(): the run scores {len(scores)} questions, the ceiling {len(ceilings)}"
        )
    ids = sorted(scores)
    n = len(ids)
    cls = gap_classes(ids, schema_errors, evidence_retrieved)

    def parts(members: Sequence[str]) -> dict[str, Any]:
        return gap_parts(members, cls, ceilings, scores)

    by_reason: dict[str, float] = {}
    for q in ids:
        if cls[q] == "format":
            reason = failure_kind(schema_errors[q])
            by_reason[reason] = by_reason.get(reason, 0.0) + ceilings[q] - scores[q]
    ceiling = sum(ceilings.values()) / n
    score = sum(scores.values()) / n
    missing = [q for q in ids if cls[q] == "missing_evidence"]
    lost_missing = sum(ceilings[q] - scores[q] for q in missing) / n
    whole = parts(ids)
    return {
        "gate_score": gate_score,
        "eval_score_avg": round(score, 6),
        "ceiling": round(ceiling, 6),
        "gap": round(gate_score - score, 6),
        "retrieval": {
            "gate_minus_ceiling": round(gate_score - ceiling, 6),
            "lost_on_missing_evidence": round(lost_missing, 6),
            "questions_missing_evidence": sum(not evidence_retrieved[q] for q in ids),
            "points": whole["retrieval"],  # of the 100 - eval_score_avg lost
        },
        "format": {
            "points": whole["format"],
            "questions": sum(c == "format" for c in cls.values()),
            "by_reason": {
                r: round(p / n, 6) for r, p in sorted(by_reason.items(), key=lambda x: -x[1])
            },
        },
        "model": {"points": whole["model"], "questions": sum(c == "model" for c in cls.values())},
        "by_kind": {
            kind: parts(members)
            for kind in KINDS
            if (members := [q for q in ids if kind in kinds[q]])
        },
    }
