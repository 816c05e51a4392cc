"""Is the gate reachable? A study's ceiling on the gate set and its token budget, before any GPU work.

`study_reach` works from plain data (the prompt template, the question sets and the passages each
question gets), so `sftgate ceiling`, `sftgate index tune` and `sftgate search` share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftgate.budget import budget_tokenizer, example_lengths, length_summary
from sftgate.ceiling import Ceiling, compute_ceiling
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.prompt import PromptTemplate
from sftgate.questions import Passage, QuestionSet

# A model is never perfect: the gate is reachable when the ceiling clears it by this many points.
DEFAULT_MARGIN = 2.0

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
    tokenizer: str  # which tokenizer measured the lengths
    max_lengths: tuple[int, ...]  # the max_length values the policy can propose
    lengths: Mapping[str, Mapping[str, Any]]  # split -> budget.length_summary

    def to_json(self) -> dict[str, Any]:
        return {
            **self.ceiling.to_json(),
            "index_version": self.index_version,
            "token_budget": {
                "tokenizer": self.tokenizer,
                "max_lengths": list(self.max_lengths),
                **{split: dict(s) for split, s in self.lengths.items()},
            },
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
) -> Reach:
    """The ceiling of the gate set and the lengths of the train and gate sets' examples."""
    ceiling = compute_ceiling(
        list(sets["gate"]), passages["gate"], gate_score=gate_score, margin=margin
    )
    tok = budget_tokenizer(model_id)
    lengths = {
        split: length_summary(
            example_lengths(tok.tokenizer, template, list(sets[split]), passages[split]),
            max_lengths,
        )
        for split in ("train", "gate")
    }
    return Reach(ceiling, index_version, tok.description, tuple(sorted(set(max_lengths))), lengths)
