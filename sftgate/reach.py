"""Is the gate reachable? A study's ceiling on the gate set and its token budget, before any GPU work.

`study_reach` works from plain data (the prompt template, the question sets and the passages each
question gets), so `sftgate ceiling`, `sftgate index tune` and `sftgate search` share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sftgate.budget import budget_tokenizer, example_lengths, length_summary
from sftgate.ceiling import Ceiling, compute_ceiling
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.index import Index
from sftgate.prompt import PromptTemplate
from sftgate.questions import Passage, QuestionSet

# The other top_k a study's reach is measured at (its own + these), for concrete advice at a stop.
OPTION_STEPS = (1, 2, 3)

Passages = Mapping[str, Sequence[Passage]]


def split_passages(
    sets: Mapping[str, QuestionSet], contexts: Mapping[str, Path | None]
) -> dict[str, Passages]:
    """Each split's passages, from its contexts file (None: the items carry their own)."""
    out: dict[str, Passages] = {}
    for split, qs in sets.items():
        path = contexts[split]
        out[split] = resolve_passages(qs, load_contexts(path) if path else None)[0]
    return out


@dataclass(frozen=True)
class Reach:
    ceiling: Ceiling  # on the gate set
    index_version: str
    top_k: int | None  # the study's retrieval top_k; None with contexts files of its own
    tokenizer: str  # which tokenizer measured the lengths
    max_lengths: tuple[int, ...]  # the max_length values the policy can propose
    lengths: Mapping[str, Mapping[str, Any]]  # split -> budget.length_summary
    options: tuple[Mapping[str, Any], ...] = ()  # other top_k: {top_k, ceiling, length_p95}

    def to_json(self) -> dict[str, Any]:
        """What `sftgate ceiling --json` prints and the registry stores with the study."""
        return {
            **self.ceiling.to_json(),
            "index_version": self.index_version,
            "top_k": self.top_k,
            "token_budget": {
                "tokenizer": self.tokenizer,
                "max_lengths": list(self.max_lengths),
                **{split: dict(s) for split, s in self.lengths.items()},
            },
            "options": [dict(o) for o in self.options],
            "questions": [q.to_row() for q in self.ceiling.questions],
        }


def study_reach(
    *,
    model_id: str,
    template: PromptTemplate,
    sets: Mapping[str, QuestionSet],
    passages: Mapping[str, Passages],
    index_version: str,
    gate_score: float,
    margin: float,
    max_lengths: Sequence[int],
    index: Index | None = None,
    top_k: int | None = None,
) -> Reach:
    """The ceiling of the gate set and the lengths of the train and gate sets' examples; with
    the study's index, also the ceiling and p95 length of the gate set at top_k + 1 .. + 3."""
    gate = list(sets["gate"])
    ceiling = compute_ceiling(gate, passages["gate"], gate_score=gate_score, margin=margin)
    tok = budget_tokenizer(model_id)
    lengths = {
        split: length_summary(
            example_lengths(tok.tokenizer, template, list(sets[split]), passages[split]),
            max_lengths,
        )
        for split in ("train", "gate")
    }
    options: list[dict[str, Any]] = []
    if index is not None and top_k is not None:
        ks = [top_k + d for d in OPTION_STEPS]
        ranked = index.search([q.question for q in gate], max(ks))
        for k in ks:
            more = {
                q.id: [Passage(source_path=h.source_path, text=h.text) for h in hits[:k]]
                for q, hits in zip(gate, ranked)
            }
            c = compute_ceiling(gate, more, gate_score=gate_score, margin=margin)
            p95 = float(np.percentile(example_lengths(tok.tokenizer, template, gate, more), 95))
            options.append({"top_k": k, "ceiling": round(c.ceiling, 6), "length_p95": p95})
    return Reach(
        ceiling,
        index_version,
        top_k,
        tok.description,
        tuple(sorted(set(max_lengths))),
        lengths,
        tuple(options),
    )
