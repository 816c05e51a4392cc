"""Training targets: a reference serialised as the eval JSON v2 answer the model should give.

Two serialisations (`TrainParams.target_format`); the schema and the scorer read both alike (a
JSON object's keys have no order, whitespace between tokens is free):
- `schema_order` (the default, and every run before the setting existed): the keys in the
  schema's order, `json.dumps` spacing. The completion ends with the last anchor's text and
  `"}]}`, which Qwen3's tokenizer spells `"}` `]}`, or `."` `}` `]}` when the text ends with a
  period, or ` []` `}` after an empty anchor list. A model may spell the same run `"` `}]` `}`
  and stop after `}]`: one `}` short, a schema failure (8-11% of a 0.5B model's gate answers).
- `answer_last`: the keys original_evidence, anchors, detailed_description, answer (the
  evidence before the answer built on it), and a space before the one closing brace. The last
  value is a string, so a single `}` closes the object, and the space makes it a token of its own
  (` }` in Qwen's pre-tokenizer, whatever the answer ends with): every completion ends with the
  same two tokens, ` }` and the end of turn (benchmarks/README.md, "How the training targets end").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from sftgate.questions import Passage, Reference
from sftgate.textnorm import squash_ws

ANCHOR_MAX_CHARS = 40
TargetFormat = Literal["schema_order", "answer_last"]
ANSWER_LAST = ("original_evidence", "anchors", "detailed_description", "answer")


def anchor_text(quote: str) -> str:
    """A short verbatim span of the quote: the quote itself, or its first ANCHOR_MAX_CHARS characters."""
    return quote if len(quote) <= ANCHOR_MAX_CHARS else quote[:ANCHOR_MAX_CHARS].rstrip()


def reference_completion(
    reference: Reference, passages: Sequence[Passage], target_format: TargetFormat = "schema_order"
) -> str:
    """The reference as one eval JSON v2 object, grounded in the passages the model is given,
    serialised as `target_format` says (module docstring).

    Evidence quotes that are not in any passage are left out (the model must never be taught to
    quote text it was not shown); each kept quote gets an anchor naming the first passage that
    contains it. Deterministic: same inputs, same bytes.
    """
    evidence, anchors = [], []
    for quote in reference.original_evidence:
        q = squash_ws(quote)
        source = next((p for p in passages if q in squash_ws(p.text)), None)
        if source is None:
            continue
        evidence.append(quote)
        anchors.append({"source_path": source.source_path, "text": anchor_text(quote)})
    obj = {
        "answer": reference.answer,
        "detailed_description": reference.detailed_description,
        "original_evidence": evidence[:5],
        "anchors": anchors[:5],
    }
    if target_format == "schema_order":
        return json.dumps(obj, ensure_ascii=False)
    return json.dumps({k: obj[k] for k in ANSWER_LAST}, ensure_ascii=False)[:-1] + " }"
