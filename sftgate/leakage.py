"""`sftgate data check`: does the evaluation leak into training? Is the gate set part of the full set?

Rules (docs/data_check.md): questions are compared after normalisation (NFKC, lowercase,
punctuation and spaces dropped). Exact duplicate: equal normalised text. Near duplicate: Jaccard
similarity of character 3-gram sets >= NEAR_DUP_THRESHOLD. Shared reference: an evaluation
question whose reference shares an evidence quote (whitespace-normalised) with a training question.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sftgate.questions import QuestionSet
from sftgate.textnorm import compact, squash_ws

NEAR_DUP_THRESHOLD = 0.8
NGRAM = 3


def char_ngrams(text: str, n: int = NGRAM) -> frozenset[str]:
    s = compact(text)
    if len(s) <= n:
        return frozenset([s]) if s else frozenset()
    return frozenset(s[i : i + n] for i in range(len(s) - n + 1))


def near_duplicates(
    train: QuestionSet, evaluation: QuestionSet, threshold: float = NEAR_DUP_THRESHOLD
) -> list[tuple[str, str, float]]:
    """(eval_id, train_id, jaccard) for every pair at or above the threshold, best match per eval item.

    An inverted index from n-gram to training items keeps this near-linear: only items sharing at
    least one n-gram are compared.
    """
    index: dict[str, list[int]] = defaultdict(list)
    train_grams = [char_ngrams(q.question) for q in train]
    for i, grams in enumerate(train_grams):
        for g in grams:
            index[g].append(i)
    pairs = []
    for q in evaluation:
        grams = char_ngrams(q.question)
        shared: dict[int, int] = defaultdict(int)
        for g in grams:
            for i in index.get(g, ()):
                shared[i] += 1
        best = max(
            ((c / (len(grams) + len(train_grams[i]) - c), i) for i, c in shared.items()),
            default=(0.0, -1),
        )
        if best[0] >= threshold:
            pairs.append((q.id, train.questions[best[1]].id, round(best[0], 4)))
    return pairs


@dataclass
class LeakageReport:
    train_n: int
    eval_n: int
    exact_duplicates: list[tuple[str, str]] = field(default_factory=list)  # (eval_id, train_id)
    near_duplicates: list[tuple[str, str, float]] = field(
        default_factory=list
    )  # includes exact ones
    shared_evidence: list[tuple[str, str]] = field(default_factory=list)  # (eval_id, train_id)
    shared_ids: list[str] = field(default_factory=list)
    gate_n: int | None = None
    gate_not_in_full: list[str] = field(default_factory=list)  # ids missing from the full set
    gate_changed: list[str] = field(default_factory=list)  # same id, different content

    @property
    def leaks(self) -> bool:
        return bool(self.exact_duplicates or self.near_duplicates or self.shared_ids)

    @property
    def gate_ok(self) -> bool:
        return not (self.gate_not_in_full or self.gate_changed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_n": self.train_n,
            "eval_n": self.eval_n,
            "near_dup_threshold": NEAR_DUP_THRESHOLD,
            "exact_duplicates": len(self.exact_duplicates),
            "near_duplicates": len(self.near_duplicates),
            "shared_evidence": len(self.shared_evidence),
            "shared_ids": len(self.shared_ids),
            "gate_n": self.gate_n,
            "gate_not_in_full": self.gate_not_in_full,
            "gate_changed": self.gate_changed,
            "leaks": self.leaks,
            "gate_subset_of_full": self.gate_ok if self.gate_n is not None else None,
            "examples": {
                "exact_duplicates": self.exact_duplicates[:5],
                "near_duplicates": self.near_duplicates[:5],
                "shared_evidence": self.shared_evidence[:5],
            },
        }


def check(
    train: QuestionSet, evaluation: QuestionSet, gate: QuestionSet | None = None
) -> LeakageReport:
    report = LeakageReport(train_n=len(train), eval_n=len(evaluation))
    by_text = {compact(q.question): q.id for q in train}
    report.exact_duplicates = [
        (q.id, by_text[compact(q.question)]) for q in evaluation if compact(q.question) in by_text
    ]
    report.near_duplicates = near_duplicates(train, evaluation)
    quote_owner: dict[str, str] = {}
    for q in train:
        for quote in q.reference.original_evidence:
            quote_owner.setdefault(squash_ws(quote), q.id)
    for q in evaluation:
        owners = [
            quote_owner[s]
            for s in map(squash_ws, q.reference.original_evidence)
            if s in quote_owner
        ]
        if owners:
            report.shared_evidence.append((q.id, owners[0]))
    train_ids = {q.id for q in train}
    report.shared_ids = [q.id for q in evaluation if q.id in train_ids]
    if gate is not None:
        full = evaluation.by_id
        report.gate_n = len(gate)
        report.gate_not_in_full = [q.id for q in gate if q.id not in full]
        report.gate_changed = [q.id for q in gate if q.id in full and full[q.id] != q]
    return report
