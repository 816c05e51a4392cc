"""`sftgate index tune`: the retrieval with the highest ceiling whose examples fit max_length.

For each chunking (chunk_chars, overlap_chars, retriever) the corpus is indexed once in a
temporary folder; each top_k then takes the first k of the same ranked lists. Every setting gets
the ceiling (docs/scoring/ceiling.md) on the gate set and on a slice of the training set, the
context_recall, recall@k of the reference source_paths, and the p95 prompt + completion length
with the study model's tokenizer. `choose` picks from those rows, a pure function: the highest
ceiling on the training slice (not the gate, so the choice is not fitted to the gate) among the
settings whose p95 length fits max_length.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from sftgate.budget import example_lengths
from sftgate.ceiling import compute_ceiling
from sftgate.config import validation_problems
from sftgate.errors import InputError
from sftgate.index.evaluate import path_matches
from sftgate.index.store import IndexSettings, build_index
from sftgate.prompt import PromptTemplate
from sftgate.questions import Passage, Question

TOP_KS = (2, 3, 4, 5, 6, 8)
CHUNK_CHARS = (300, 400, 500, 700, 1000)
TRAIN_SLICE_EVERY = 5  # the training slice: every 5th training question


@dataclass(frozen=True)
class TuneRow:
    top_k: int
    chunk_chars: int
    overlap_chars: int
    retriever: str
    ceiling_gate: float
    ceiling_train: float  # on the training slice
    context_recall_gate: float | None
    recall_at_k_gate: float | None  # share of reference source_paths in the top k
    length_p95: float  # prompt + completion tokens, gate set and training slice together
    length_max: int
    current: bool = False  # the study's own setting

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def overlap_for(chunk_chars: int) -> int:
    """The grid's overlap: a fifth of the chunk (the default 500 / 100)."""
    return chunk_chars // 5


def retrievers_for(base: IndexSettings) -> tuple[str, ...]:
    """BM25 always; hybrid too where the study names an embedding model."""
    return ("bm25", "hybrid") if base.embedding_model else ("bm25",)


def grid_settings(base: IndexSettings, chars: int, overlap: int, retriever: str) -> IndexSettings:
    """One grid point: the study's settings with this chunking and retriever (BM25 without the
    embedding model, which only dense and hybrid use)."""
    update: dict[str, Any] = {
        "chunk_chars": chars,
        "overlap_chars": overlap,
        "retriever": retriever,
    }
    if retriever == "bm25":
        update["embedding_model"] = None
    try:
        return IndexSettings.model_validate(base.model_dump() | update)
    except ValidationError as e:
        raise InputError(validation_problems(e, "index tune", item=str(update))) from None


def choose(rows: Sequence[TuneRow], max_length: int) -> TuneRow | None:
    """The setting with the highest training-slice ceiling whose p95 prompt + completion length
    fits max_length; ties go to the shorter prompts, then the fewer passages. None if none fits."""
    fits = [r for r in rows if r.length_p95 <= max_length]
    if not fits:
        return None
    return min(fits, key=lambda r: (-round(r.ceiling_train, 6), r.length_p95, r.top_k))


def _recall_at_k(
    questions: Sequence[Question], passages: Mapping[str, Sequence[Passage]]
) -> float | None:
    shares = [
        sum(any(path_matches(p.source_path, ref) for p in passages[q.id]) for ref in paths)
        / len(paths)
        for q in questions
        if (paths := q.reference.source_paths)
    ]
    return float(np.mean(shares)) if shares else None


def tune(
    *,
    corpus: str | Path,
    gate: Sequence[Question],
    train: Sequence[Question],
    template: PromptTemplate,
    tokenizer: Any,
    base: IndexSettings,
    current_top_k: int,
    gate_score: float,
    margin: float,
    top_ks: Sequence[int] = TOP_KS,
    chunk_chars: Sequence[int] = CHUNK_CHARS,
    retrievers: Sequence[str] = ("bm25",),
    on_setting: Callable[[str], None] | None = None,
) -> list[TuneRow]:
    """Every setting of the grid (plus the study's own), measured. `base` supplies what the
    grid does not vary (BM25 k1 and b, the embedding model)."""
    train_slice = list(train)[::TRAIN_SLICE_EVERY]
    chunkings = {(c, overlap_for(c), r) for c in chunk_chars for r in retrievers}
    chunkings.add((base.chunk_chars, base.overlap_chars, base.retriever))
    ks = sorted(set(top_ks) | {current_top_k})
    rows: list[TuneRow] = []
    with tempfile.TemporaryDirectory(prefix="sftgate-tune-") as tmp:
        for n, (chars, overlap, retriever) in enumerate(sorted(chunkings)):
            if on_setting:
                on_setting(f"chunk_chars {chars}, overlap {overlap}, {retriever}")
            settings = grid_settings(base, chars, overlap, retriever)
            index, _ = build_index(corpus, Path(tmp) / f"index-{n}", settings)
            sets = {"gate": list(gate), "train": train_slice}
            ranked = {
                name: dict(zip([q.id for q in qs], index.search([q.question for q in qs], max(ks))))
                for name, qs in sets.items()
            }
            for k in ks:
                passages = {
                    name: {
                        qid: [Passage(source_path=h.source_path, text=h.text) for h in hits[:k]]
                        for qid, hits in by_id.items()
                    }
                    for name, by_id in ranked.items()
                }
                gate_ceiling = compute_ceiling(
                    sets["gate"], passages["gate"], gate_score=gate_score, margin=margin
                )
                train_ceiling = compute_ceiling(
                    train_slice, passages["train"], gate_score=gate_score, margin=margin
                )
                lengths = [
                    *example_lengths(tokenizer, template, sets["gate"], passages["gate"]),
                    *example_lengths(tokenizer, template, train_slice, passages["train"]),
                ]
                current = (chars, overlap, retriever, k) == (
                    base.chunk_chars,
                    base.overlap_chars,
                    base.retriever,
                    current_top_k,
                )
                rows.append(
                    TuneRow(
                        top_k=k,
                        chunk_chars=chars,
                        overlap_chars=overlap,
                        retriever=retriever,
                        ceiling_gate=gate_ceiling.ceiling,
                        ceiling_train=train_ceiling.ceiling,
                        context_recall_gate=gate_ceiling.context_recall,
                        recall_at_k_gate=_recall_at_k(sets["gate"], passages["gate"]),
                        length_p95=float(np.percentile(lengths, 95)),
                        length_max=max(lengths),
                        current=current,
                    )
                )
    return rows


def retrieval_block(corpus: str, row: TuneRow, base: IndexSettings, max_length: int) -> str:
    """The chosen setting as a study config's `retrieval:` block, its numbers in comments."""
    lines = [
        f"# sftgate index tune: ceiling {row.ceiling_gate:.2f} on the gate set, "
        f"{row.ceiling_train:.2f} on the training slice; context_recall "
        f"{row.context_recall_gate or 0:.3f}; p95 prompt + completion {row.length_p95:.0f} tokens "
        f"(max {row.length_max}) within max_length {max_length}",
        "# A new retrieval changes index_version: paste this into a study with a new name.",
        "retrieval:",
        f"  corpus: {corpus}",
        f"  top_k: {row.top_k}",
        "  settings:",
        f"    chunk_chars: {row.chunk_chars}",
        f"    overlap_chars: {row.overlap_chars}",
    ]
    if row.retriever != "bm25":
        lines += [f"    retriever: {row.retriever}", f"    embedding_model: {base.embedding_model}"]
    for key in ("k1", "b"):
        if getattr(base, key) != IndexSettings.model_fields[key].default:
            lines.append(f"    {key}: {getattr(base, key)}")
    return "\n".join(lines) + "\n"


def plot_tune(
    rows: Sequence[TuneRow],
    chosen: TuneRow | None,
    gate_score: float,
    margin: float,
    max_length: int,
    out: Path,
) -> Path:
    """Ceiling and p95 length against top_k, one line per chunk size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    groups: dict[tuple[int, int, str], list[TuneRow]] = {}
    for r in rows:
        groups.setdefault((r.chunk_chars, r.overlap_chars, r.retriever), []).append(r)
    for (chars, overlap, retriever), members in sorted(groups.items()):
        members.sort(key=lambda r: r.top_k)
        label = f"{chars}/{overlap}" + ("" if retriever == "bm25" else f" {retriever}")
        ks = [r.top_k for r in members]
        (line,) = left.plot(ks, [r.ceiling_gate for r in members], marker="o", label=label)
        right.plot(ks, [r.length_p95 for r in members], marker="o", color=line.get_color())
    for r in rows:
        if r.current:
            left.scatter([r.top_k], [r.ceiling_gate], s=160, facecolors="none", edgecolors="black")
    left.axhline(gate_score, color="red", linestyle="--", label=f"gate {gate_score:g}")
    left.set(
        xlabel="top_k", ylabel="ceiling on the gate set", title="ceiling (circle: the study's)"
    )
    left.legend(title="chunk/overlap chars", fontsize=8)
    right.axhline(max_length, color="red", linestyle="--", label=f"max_length {max_length}")
    right.set(xlabel="top_k", ylabel="tokens", title="p95 prompt + completion")
    right.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
