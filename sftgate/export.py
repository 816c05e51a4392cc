"""A run's adapter for serving: merged into its base as one bf16 model folder, or the PEFT folder
itself, checked first against the conditions vLLM's LoRA loader states.

Merged (`export RUN --merged OUT`): the base loaded as the adapter was trained (a 4-bit-trained
adapter's base dequantised first, as `sftgate eval` merges it), the adapter merged in the dtype
the base loads in (bf16 on CUDA, fp32 on a CPU), the result cast to bf16 (or kept in fp32) and
saved with the tokenizer: a plain transformers model folder (`AutoModelForCausalLM.from_pretrained`, `vllm
serve OUT`). Adapter (`export RUN --adapter OUT`): the adapter's files without its checkpoints.
Both folders are written whole or not at all (into `OUT.partial-<uuid>`, renamed at the end) and
carry `sftgate_export.json`: what was exported, from which run and adapter.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftgate.artifacts import (
    ADAPTER_METADATA,
    adapter_exists,
    checkpoint_dir,
    read_adapter_metadata,
)
from sftgate.errors import InputError, MismatchError, Problem
from sftgate.fsutil import atomic_write_json, ordinary_modes
from sftgate.provenance import provenance
from sftgate.search.registry import Registry

EXPORT_METADATA = "sftgate_export.json"

# vLLM's LoRA loader (vllm/lora/peft_helper.py, PEFTHelper.validate_legal; vllm/config/lora.py).
# --max-lora-rank takes one of these values; its default is 16.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
# The linear layers vLLM's decoder models (Qwen2/Qwen3, Llama, Mistral, Gemma) take LoRA on: the
# attention and MLP projections, the ones sftgate trains (`target_modules="all-linear"`).
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# init_lora_weights values that only set the starting weights (the others, PiSSA, OLoRA, CorDA,
# LoftQ, change the base model's weights, which vLLM does not do).
VLLM_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# PEFT features vLLM refuses: each is a problem when set (truthy).
VLLM_UNSUPPORTED = {
    "use_dora": "vLLM does not support DoRA",
    "lora_bias": "vLLM does not support LoRA biases",
    "layer_replication": "vLLM does not support layer_replication",
    "alora_invocation_tokens": "vLLM does not support activated LoRA (aLoRA)",
    "use_qalora": "vLLM does not support QALoRA",
    "use_bdlora": "vLLM does not support block-diagonal LoRA",
}


@dataclass(frozen=True)
class AdapterSource:
    """The adapter folder an export reads, and where it came from."""

    path: Path
    meta: dict[str, Any]  # its sftgate_train.json
    run_id: str | None  # None: given as a folder
    step: int | None  # a checkpoint's step, or None for the final adapter


def adapter_source(
    path: str | Path, *, run_id: str | None = None, step: int | None = None
) -> AdapterSource:
    """A finished sftgate adapter folder (or its checkpoint at `step`)."""
    folder = Path(path)
    where = f"run {run_id}'s adapter {folder}" if run_id else str(folder)
    if not adapter_exists(folder):
        raise InputError(
            Problem(
                str(folder),
                run_id or "",
                ADAPTER_METADATA,
                f"{where} is not a finished sftgate adapter",
                "give a run that finished training, or the folder `sftgate train --out` wrote",
            )
        )
    if step is not None:
        saved = read_adapter_metadata(folder).get("checkpoints", [])
        if step not in saved:
            raise InputError(
                Problem(
                    str(folder),
                    run_id or "",
                    "--step",
                    f"{where} has no checkpoint at step {step} (it has: {saved or 'none'})",
                    "give one of those steps, or leave --step out for the final adapter",
                )
            )
        folder = checkpoint_dir(folder, step)
    return AdapterSource(folder, read_adapter_metadata(folder), run_id, step)


def run_adapter(reg: Registry, run_id: str, step: int | None = None) -> AdapterSource:
    """The adapter folder of a run recorded in the registry (`sftgate show RUN`)."""
    run = reg.run(run_id)
    if run is None:
        raise InputError(
            Problem(
                str(reg.path),
                run_id,
                "run",
                "no such run, and no adapter folder at this path",
                "list runs with `sftgate runs`, or give an adapter folder",
            )
        )
    if run.adapter_path is None:
        why = f": {run.failure}" if run.failure else ""
        raise InputError(
            Problem(
                str(reg.path),
                run_id,
                "adapter_path",
                f"the run has no adapter (it is {run.status}{why})",
                "export a run that finished training",
            )
        )
    return adapter_source(run.adapter_path, run_id=run.id, step=step)


def vllm_lora_problems(adapter_dir: Path, max_lora_rank: int) -> list[Problem]:
    """What in the adapter's adapter_config.json vLLM's LoRA loader would refuse, one problem per
    field, for a vLLM started with `--max-lora-rank max_lora_rank`."""
    file = str(adapter_dir / "adapter_config.json")
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    problems = []

    def bad(field: str, message: str, fix: str) -> None:
        problems.append(Problem(file, "", field, message, fix))

    if config.get("peft_type") != "LORA":
        bad("peft_type", f"{config.get('peft_type')!r}: vLLM loads LoRA adapters only", "")
    if config.get("modules_to_save"):
        bad(
            "modules_to_save",
            f"{config['modules_to_save']}: vLLM only loads adapters whose modules_to_save is "
            "null (it cannot load fully trained copies of modules)",
            "train without modules_to_save, or export --merged",
        )
    for key, message in VLLM_UNSUPPORTED.items():
        if config.get(key):
            bad(key, f"{config[key]!r}: {message}", "export --merged instead")
    if config.get("bias", "none") != "none":
        bad("bias", f"{config['bias']!r}: vLLM does not support adapter biases", "export --merged")
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > max_lora_rank:
        need = min((r for r in VLLM_MAX_LORA_RANKS if r >= max(ranks)), default=None)
        fix = (
            f"start vLLM with --max-lora-rank {need} and export with --max-lora-rank {need}"
            if need
            else f"vLLM's largest max_lora_rank is {VLLM_MAX_LORA_RANKS[-1]}: export --merged"
        )
        field = "r" if config.get("r", 0) == max(ranks) else "rank_pattern"
        bad(field, f"rank {max(ranks)} is above max_lora_rank {max_lora_rank}", fix)
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in VLLM_INITS:
        bad(
            "init_lora_weights",
            f"{init!r} changes the base model's weights, which vLLM does not do",
            "export --merged instead",
        )
    targets = config.get("target_modules") or []
    names = [targets] if isinstance(targets, str) else list(targets)
    others = sorted({n for n in names if n.rsplit(".", 1)[-1] not in VLLM_LORA_MODULES})
    if others:
        bad(
            "target_modules",
            f"{', '.join(others[:5])}: vLLM takes LoRA only on the attention and MLP "
            f"projections ({', '.join(VLLM_LORA_MODULES)})",
            "train LoRA on those projections only, or export --merged",
        )
    if not (adapter_dir / "adapter_model.safetensors").exists():
        bad("", "no adapter_model.safetensors (the weights vLLM reads)", "train it again")
    return problems


@contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A partial folder beside `out` to write into, renamed to `out` when the block ends without
    an error (and removed if it fails): `out` is never seen half-written."""
    if out.exists():
        raise InputError(
            Problem(str(out), "", "out", "exists", "choose another folder or delete it")
        )
    tmp = out.with_name(f"{out.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        tmp.mkdir(parents=True)
        yield tmp
        ordinary_modes(tmp)  # safetensors writes its files 0600: a server may run as another user
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_record(source: AdapterSource, kind: str, **extra: Any) -> dict[str, Any]:
    m = source.meta
    return {
        "kind": kind,
        "run_id": source.run_id,
        "adapter_id": m.get("adapter_id"),
        "checkpoint_step": source.step,
        "adapter_path": str(source.path),
        "model_id": m.get("model_id"),
        "model_revision": m.get("model_revision"),
        "prompt_sha256": m.get("prompt_sha256"),
        "index_version": m.get("index_version"),
        **extra,
        "provenance": provenance(),
    }


def export_adapter(source: AdapterSource, out: str | Path, *, max_lora_rank: int) -> Path:
    """The adapter's files (not its checkpoints) in `out`, after vLLM's conditions are checked."""
    problems = vllm_lora_problems(source.path, max_lora_rank)
    if problems:
        raise InputError(problems)
    out = Path(out)
    with new_folder(out) as tmp:
        for f in sorted(source.path.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        record = export_record(source, "adapter", vllm={"max_lora_rank": max_lora_rank})
        atomic_write_json(tmp / EXPORT_METADATA, record)
    return out


MERGED_DTYPES = ("bfloat16", "float32")


def export_merged(source: AdapterSource, out: str | Path, *, dtype: str = "bfloat16") -> Path:
    """The adapter merged into its base, saved as a transformers model folder in `dtype` with the
    tokenizer. The base must be the revision the adapter was trained on."""
    import torch

    from sftgate.evaluate import load_for_eval

    out = Path(out)
    if out.exists():  # before loading the model
        raise InputError(
            Problem(str(out), "", "out", "exists", "choose another folder or delete it")
        )
    m = source.meta
    loaded = load_for_eval(m["model_id"], str(source.path), m, "auto", merged=True)
    if m.get("model_revision") != loaded.model_revision:
        raise MismatchError(
            f"adapter {source.path} was trained on revision {m.get('model_revision')!r} of "
            f"{m['model_id']}, but {loaded.model_revision!r} loaded: the merged model would not "
            "be the trained one"
        )
    merged_in = str(loaded.model.dtype).removeprefix("torch.")
    model = loaded.model.to(getattr(torch, dtype))
    with new_folder(out) as tmp:
        model.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
        record = export_record(source, "merged", dtype=dtype, merged_in=merged_in)
        atomic_write_json(tmp / EXPORT_METADATA, record)
    return out
