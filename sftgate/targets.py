"""Training targets: a reference serialised as the eval JSON v2 answer the model should give."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sftgate.questions import Passage, Reference
from sftgate.textnorm import squash_ws

ANCHOR_MAX_CHARS = 40


def anchor_text(quote: str) -> str:
    """A short verbatim span of the quote: the quote itself, or its first ANCHOR_MAX_CHARS characters."""
    return quote if len(quote) <= ANCHOR_MAX_CHARS else quote[:ANCHOR_MAX_CHARS].rstrip()


def reference_completion(reference: Reference, passages: Sequence[Passage]) -> str:
    """The reference as one eval JSON v2 object, grounded in the passages the model is given.

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
    return json.dumps(obj, ensure_ascii=False)
