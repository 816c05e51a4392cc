"""`sftgate data check`: does the evaluation leak into training? Is the gate set part of the full set?

Rules (docs/data_check.md): questions are compared after normalisation (NFKC, lowercase,
punctuation and spaces dropped). Exact duplicate: equal normalised text. Near duplicate: the
character 3-gram sets overlap by >= NEAR_DUP_THRESHOLD of the smaller one (containment), the
smaller having at least MIN_NGRAMS grams. Shared reference: an evaluation
question whose reference shares an evidence quote (whitespace-normalised), or the same answer and
source paths, with a training question. Gate subset: every gate item is in the full set under the
same id with the same content.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from sftgate.hashing import sha256_json
from sftgate.questions import Question, QuestionSet
from sftgate.textnorm import compact, squash_ws

NEAR_DUP_THRESHOLD = 0.8
NGRAM = 3
# Below this many grams (6 normalised characters) containment says little: "VPN?" is inside every
# VPN question. Such short texts are near duplicates only when they are exact duplicates.
MIN_NGRAMS = 4
N_EXAMPLES = 5


def char_ngrams(text: str, n: int = NGRAM) -> frozenset[str]:
    """Character n-grams of the normalised text; a text shorter than n is its own single gram."""
    s = compact(text)
    if len(s) <= n:
        return frozenset([s]) if s else frozenset()
    return frozenset(s[i : i + n] for i in range(len(s) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """The near-duplicate measure: containment |A ∩ B| / min(|A|, |B|), for texts long enough."""
    return _similarity(len(a & b), len(a), len(b))


def _similarity(shared: int, n_a: int, n_b: int) -> float:
    if shared == n_a == n_b:
        return 1.0
    return shared / min(n_a, n_b) if min(n_a, n_b) >= MIN_NGRAMS else 0.0


def near_duplicates(
    train: QuestionSet, evaluation: QuestionSet, threshold: float = NEAR_DUP_THRESHOLD
) -> list[tuple[str, str, float]]:
    """(eval_id, train_id, similarity) for each evaluation item whose best training match reaches the threshold.

    Exact: an inverted index from n-gram to training items counts the shared n-grams of every
    pair that shares at least one, so |A ∩ B| is exact and no pair above the threshold is missed.
    The best match has the highest `similarity`, then the highest Jaccard, then comes first.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], but got {threshold=}")
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
        best, best_i = (0.0, 0.0), -1
        for i, c in sorted(shared.items()):
            n_t = len(train_grams[i])
            sim = (_similarity(c, len(grams), n_t), c / (len(grams) + n_t - c))
            if sim > best:
                best, best_i = sim, i
        if best[0] >= threshold:
            pairs.append((q.id, train.questions[best_i].id, round(best[0], 4)))
    return pairs


def _answer_key(q: Question) -> tuple[str, tuple[str, ...]] | None:
    """Normalised answer + sorted source paths; None for unanswerable items (they all share one)."""
    if not q.reference.original_evidence:
        return None
    return compact(q.reference.answer), tuple(sorted(q.reference.source_paths))


def _content_key(q: Question) -> str:
    return sha256_json(q.model_dump(mode="json", exclude={"id"}, exclude_none=True))


@dataclass(frozen=True)
class LeakageReport:
    train_n: int
    eval_n: int
    exact_duplicates: tuple[tuple[str, str], ...]  # (eval_id, train_id)
    near_duplicates: tuple[
        tuple[str, str, float], ...
    ]  # (eval_id, train_id, similarity); exact too
    shared_evidence: tuple[tuple[str, str], ...]  # (eval_id, train_id): a common evidence quote
    shared_answer: tuple[tuple[str, str], ...]  # (eval_id, train_id): same answer and source_paths
    shared_ids: tuple[str, ...]
    gate_n: int | None = None
    gate_not_in_full: tuple[str, ...] = ()  # gate ids absent from the full set
    gate_changed: tuple[str, ...] = ()  # same id, different content
    gate_renamed: tuple[tuple[str, str], ...] = ()  # (gate_id, full_id): same content, other id
    gate_leaking: tuple[
        str, ...
    ] = ()  # gate ids that are near duplicates of training or share an id

    @property
    def leaks(self) -> bool:
        """What --strict fails on: the same (or nearly the same) question, or the same id."""
        return bool(self.exact_duplicates or self.near_duplicates or self.shared_ids)

    @property
    def gate_ok(self) -> bool:
        return not (self.gate_not_in_full or self.gate_changed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_n": self.train_n,
            "eval_n": self.eval_n,
            "near_dup_threshold": NEAR_DUP_THRESHOLD,
            "ngram": NGRAM,
            "min_ngrams": MIN_NGRAMS,
            "exact_duplicates": len(self.exact_duplicates),
            "near_duplicates": len(self.near_duplicates),
            "shared_evidence": len(self.shared_evidence),
            "shared_answer": len(self.shared_answer),
            "shared_ids": len(self.shared_ids),
            "leaks": self.leaks,
            "gate_n": self.gate_n,
            "gate_subset_of_full": self.gate_ok if self.gate_n is not None else None,
            "gate_not_in_full": list(self.gate_not_in_full),
            "gate_changed": list(self.gate_changed),
            "gate_renamed": [list(p) for p in self.gate_renamed],
            "gate_leaking": len(self.gate_leaking),
            "examples": {
                "exact_duplicates": [list(p) for p in self.exact_duplicates[:N_EXAMPLES]],
                "near_duplicates": [list(p) for p in self.near_duplicates[:N_EXAMPLES]],
                "shared_evidence": [list(p) for p in self.shared_evidence[:N_EXAMPLES]],
                "shared_answer": [list(p) for p in self.shared_answer[:N_EXAMPLES]],
                "shared_ids": list(self.shared_ids[:N_EXAMPLES]),
            },
        }


def check(
    train: QuestionSet, evaluation: QuestionSet, gate: QuestionSet | None = None
) -> LeakageReport:
    by_text: dict[str, str] = {}
    for q in train:
        by_text.setdefault(compact(q.question), q.id)
    exact = tuple(
        (q.id, by_text[compact(q.question)]) for q in evaluation if compact(q.question) in by_text
    )
    quote_owner: dict[str, str] = {}
    answer_owner: dict[tuple[str, tuple[str, ...]], str] = {}
    for q in train:
        for quote in q.reference.original_evidence:
            quote_owner.setdefault(squash_ws(quote), q.id)
        key = _answer_key(q)
        if key is not None:
            answer_owner.setdefault(key, q.id)
    shared_evidence = []
    shared_answer = []
    for q in evaluation:
        owners = [
            quote_owner[s]
            for s in map(squash_ws, q.reference.original_evidence)
            if s in quote_owner
        ]
        if owners:
            shared_evidence.append((q.id, owners[0]))
        key = _answer_key(q)
        if key is not None and key in answer_owner:
            shared_answer.append((q.id, answer_owner[key]))
    train_ids = {q.id for q in train}
    report = LeakageReport(
        train_n=len(train),
        eval_n=len(evaluation),
        exact_duplicates=exact,
        near_duplicates=tuple(near_duplicates(train, evaluation)),
        shared_evidence=tuple(shared_evidence),
        shared_answer=tuple(shared_answer),
        shared_ids=tuple(q.id for q in evaluation if q.id in train_ids),
    )
    if gate is None:
        return report
    full = evaluation.by_id
    full_by_content = {_content_key(q): q.id for q in evaluation}
    absent = [q for q in gate if q.id not in full]
    leaking = {p[0] for p in report.near_duplicates} | set(report.shared_ids)
    return replace(
        report,
        gate_n=len(gate),
        gate_not_in_full=tuple(q.id for q in absent),
        gate_changed=tuple(q.id for q in gate if q.id in full and full[q.id] != q),
        gate_leaking=tuple(q.id for q in gate if q.id in leaking),
        gate_renamed=tuple(
            (q.id, full_by_content[_content_key(q)])
            for q in absent
            if _content_key(q) in full_by_content
        ),
    )
