"""`tiny-qwen3`: a random-init 2-layer Qwen3 with a tokenizer built in code.

For offline demos and tests: it needs no download, builds in well under a second, and exercises
the same code paths as Qwen/Qwen3-4B (Qwen3 architecture, ChatML template with thinking off).
It is not expected to answer anything correctly.
"""

from __future__ import annotations

from typing import Any

TINY_MODEL_ID = "tiny-qwen3"

# ChatML as Qwen3 renders it for plain system/user/assistant turns (no tools): with
# enable_thinking=False the generation prompt ends with an empty think block, as Qwen3's own
# template does, and an assistant turn is written the same way.
QWEN3_STYLE_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def build_tiny_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens, no merges) plus Qwen3's special tokens.

    Byte level means every string, Traditional Chinese included, round-trips exactly; a CJK
    character costs three tokens, which only matters for length budgets in demos.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = qwen3_style_tokenizer(tok)
    tokenizer.name_or_path = TINY_MODEL_ID
    return tokenizer


def qwen3_style_tokenizer(tok: Any) -> Any:
    """A `tokenizers.Tokenizer` as a transformers tokenizer with Qwen3's special tokens (end of
    turn as eos) and a Qwen3-style chat template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = QWEN3_STYLE_CHAT_TEMPLATE
    return tokenizer


def tiny_qwen3_config(vocab_size: int) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        # Larger than Qwen3's 0.02: with 64-wide frozen tied embeddings, 0.02 caps the logits near
        # zero and LoRA alone could not move the loss far from uniform.
        initializer_range=0.2,
    )


def build_tiny_qwen3(seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer): random weights from `seed`, float32, on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = tiny_qwen3_config(len(tokenizer))
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
