"""Greedy decoding for evaluation: batches grouped by length, left padding, stop at end of turn.

Batches are formed over the whole prompt list (sorted by length, longest first), so a batch's
composition, and hence its padding and its outputs, never depends on what was decoded before:
a resumed evaluation regenerates exactly what an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Generation:
    index: int  # position in the caller's prompt list
    token_ids: list[int]  # generated tokens, end-of-turn excluded
    text: str
    prompt_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (stable for equal lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
) -> list[tuple[list[int], str]]:
    """Greedy-decode one batch (left-padded). Returns (token ids without padding/eos, finish reason)."""
    import torch

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=list(eos_ids),
            pad_token_id=pad,
        )
    results = []
    stop = set(eos_ids)
    for row in out[:, width:].tolist():
        end = next((j for j, t in enumerate(row) if t in stop), None)
        results.append((row[:end], "stop") if end is not None else (row, "length"))
    return results


def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    skip: Callable[[list[int]], bool] = lambda batch: False,
) -> Iterator[list[Generation]]:
    """Yield each batch's generations as it finishes; `skip(batch_indices)` skips finished batches."""
    for batch in length_batches([len(p) for p in prompts], batch_size):
        if skip(batch):
            continue
        outs = generate_batch(
            model,
            tokenizer,
            [prompts[i] for i in batch],
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
        )
        yield [
            Generation(
                i, toks, tokenizer.decode(toks, skip_special_tokens=False), len(prompts[i]), finish
            )
            for i, (toks, finish) in zip(batch, outs)
        ]
