"""Frozen contexts for a question set, and retrieval quality against its references."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftgate.contexts import ContextsLine, ContextsMeta, ScoredPassage
from sftgate.index.store import Hit, Index, load_index
from sftgate.questions import QuestionSet
from sftgate.textnorm import squash_ws


def retrieve_contexts(
    index_dir: str | Path, questions: QuestionSet, top_k: int
) -> tuple[ContextsMeta, list[ContextsLine]]:
    """The top_k passages of every question, with the header later stages check
    (index_version, top_k, eval_set_version, questions_file, retriever settings).
    Write them with `sftgate.contexts.write_contexts(path, meta, rows)`."""
    index = load_index(index_dir)
    hits = index.search([q.question for q in questions], top_k)
    rows = [
        ContextsLine(
            id=q.id,
            passages=[
                ScoredPassage(source_path=h.source_path, text=h.text, score=round(h.score, 6))
                for h in hs
            ],
        )
        for q, hs in zip(questions, hits)
    ]
    meta = ContextsMeta(
        index_version=index.version,
        top_k=top_k,
        eval_set_version=questions.version,
        questions_file=questions.path,
        retriever=index.retriever_description(),
    )
    return meta, rows


def path_matches(chunk_path: str, reference_path: str) -> bool:
    """A chunk matches a reference path when equal to it or when it is that path + '#section'."""
    return chunk_path == reference_path or chunk_path.startswith(reference_path + "#")


@dataclass(frozen=True)
class QuestionResult:
    id: str
    first_rank: int | None  # 1-based rank of the first chunk matching a reference path
    paths_found: tuple[int, ...]  # per k: how many reference paths the top k cover
    evidence_found: tuple[bool, ...] | None  # per k: every evidence quote in one top-k passage


def judge(
    hits: list[Hit], source_paths: list[str], evidence: list[str], ks: list[int]
) -> tuple[int | None, tuple[int, ...], tuple[bool, ...] | None]:
    first = next(
        (
            rank
            for rank, h in enumerate(hits, 1)
            if any(path_matches(h.source_path, r) for r in source_paths)
        ),
        None,
    )
    paths = tuple(
        sum(any(path_matches(h.source_path, r) for h in hits[:k]) for r in source_paths) for k in ks
    )
    if not evidence:
        return first, paths, None
    texts = [squash_ws(h.text) for h in hits]
    quotes = [squash_ws(e) for e in evidence]
    found = tuple(all(any(q in t for t in texts[:k]) for q in quotes) for k in ks)
    return first, paths, found


def evaluate_retrieval(index: Index, questions: QuestionSet, ks: Iterable[int]) -> dict[str, Any]:
    """recall@k and MRR of the reference source_paths, and the share of questions whose every
    evidence quote appears (whitespace-normalised) in a top-k passage.

    recall@k is averaged over answerable questions (non-empty source_paths) of the share of
    their reference paths that the top k cover; MRR uses the rank of the first matching chunk
    (0 when none in the top max(k)). Unanswerable questions are left out and counted; the
    evidence share is over the answerable questions that quote evidence."""
    ks = sorted(set(ks))
    answerable = [q for q in questions if q.reference.source_paths]
    hits = index.search([q.question for q in answerable], max(ks)) if answerable else []
    results = []
    for q, hs in zip(answerable, hits):
        first, paths, evidence = judge(
            hs, q.reference.source_paths, q.reference.original_evidence, ks
        )
        results.append(QuestionResult(q.id, first, paths, evidence))
    n = len(results)
    with_evidence = [r for r in results if r.evidence_found is not None]
    refs = {q.id: len(q.reference.source_paths) for q in answerable}
    return {
        "index_version": index.version,
        "eval_set_version": questions.version,
        "questions": len(questions),
        "answerable": n,
        "unanswerable_excluded": len(questions) - n,
        "with_evidence": len(with_evidence),
        "recall": {
            str(k): sum(r.paths_found[i] / refs[r.id] for r in results) / n if n else None
            for i, k in enumerate(ks)
        },
        "mrr": sum(1 / r.first_rank for r in results if r.first_rank) / n if n else None,
        "evidence_in_top_k": {
            str(k): sum(bool(r.evidence_found and r.evidence_found[i]) for r in with_evidence)
            / len(with_evidence)
            if with_evidence
            else None
            for i, k in enumerate(ks)
        },
        "missed_at_max_k": [r.id for r in results if r.first_rank is None],
    }
