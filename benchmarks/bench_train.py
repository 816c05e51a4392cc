"""Training-step benchmark: the stock QLoRA stack against sftgate's levers, in one process.

    python benchmarks/bench_train.py --out DIR                  # on a CUDA GPU: Qwen3-4B shape
    python benchmarks/bench_train.py --tiny --out DIR           # a 2-layer model on the CPU (dry run)

Model: random weights in the Qwen3-4B configuration (no weights are reachable on the benchmark
machine). It is built in bf16 directly on the GPU, saved once to local disk and loaded back through
`sftgate.models.load_model`, i.e. quantised to NF4 + double quantisation by bitsandbytes exactly as
`sftgate train` loads Qwen/Qwen3-4B. LoRA r=16, alpha=32, dropout 0.05 on all 7 linear projections.

Data: pre-tokenised random token ids; the last quarter of each example is the completion (the
loss covers only it, as in sftgate). Fixed shapes: batch 1 x 1024, 1 x 1536, 8 x 1024; and a
variable-length batch of 8 (lengths 512-1024) for padding against padding-free.

Stacks:
- stock: transformers + PEFT + bitsandbytes as the QLoRA recipes write it:
  `prepare_model_for_kbit_training` (norms and the tied embedding upcast to fp32), gradient
  checkpointing, padded batches, `model(**batch, labels=...)` (logits for every position),
  AdamW (foreach).
- ours: what `sftgate train` runs (`sftgate.train.add_lora`, `make_batch`, `completion_loss`,
  `liger_kernels`): bf16 base, logits only at completion positions, fused AdamW, then Liger
  kernels, padding-free batches, checkpointing on / off / half the layers.
- trl: TRL's SFTTrainer on the same model with its speed options (Liger, padding-free,
  completion-only loss), timed per step by a callback.

Each variant: warm-up steps, then timed steps (CUDA synchronised per step); the median step
time, tokens/s = tokens per step / median, and the peak allocated memory over the timed steps.
Results are written after every variant, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from shapes import QWEN3_4B  # noqa: E402 - benchmarks/ is on sys.path when a script runs

from sftgate.models import load_model
from sftgate.params import TrainParams
from sftgate.provenance import library_versions
from sftgate.tiny import build_tiny_tokenizer
from sftgate.train import (
    IGNORE,
    Example,
    add_lora,
    completion_loss,
    liger_kernels,
    make_batch,
    segment_attention,
    set_checkpointing,
)

TINY = dict(QWEN3_4B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=1000)  # fmt: skip
PARAMS = TrainParams(lr=2e-4, lora_r=16, lora_alpha=32, lora_dropout=0.05)
LIBS = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "liger-kernel",
    "trl",
    "accelerate",
    "triton",
)


@dataclass(frozen=True)
class Variant:
    name: str
    lever: str  # what this variant changes against the one it is compared with
    stack: str  # stock | ours | trl
    batch_size: int
    length: int  # tokens per example; 0: the variable-length set (512-1024)
    checkpointing: str = "on"  # on | off | half
    liger: bool = False
    padding_free: bool = True
    head: str = "completion"  # completion: logits only where the loss is; full: model(labels=)
    fused_adamw: bool = True
    compile: bool = False
    segment_attention: bool = True  # padding-free batches attend per example (False: SDPA mask)
    adapter_dtype: str = "float32"  # LoRA weights: float32 (PEFT's default) or bfloat16
    pad_to_multiple: int = 1  # round a packed row's tokens (and loss positions) up to this


def plan() -> list[Variant]:
    s = "stock"
    v = [
        Variant("stock bs1x1024", "baseline", s, 1, 1024, head="full", fused_adamw=False),
        Variant("stock bs1x1536", "baseline", s, 1, 1536, head="full", fused_adamw=False),
        Variant("stock bs8x1024", "baseline", s, 8, 1024, head="full", fused_adamw=False),
        Variant("stock bs1x1024 ckpt off", "checkpointing off", s, 1, 1024, "off", head="full",
                fused_adamw=False),
        Variant("stock bs8x1024 var padded", "baseline, variable lengths", s, 8, 0, head="full",
                fused_adamw=False, padding_free=False),
    ]  # fmt: skip
    o = "ours"
    v += [
        Variant("bf16 bs1x1024", "no fp32 upcast (vs stock)", o, 1, 1024, head="full",
                fused_adamw=False, padding_free=False),
        Variant("bf16+head bs1x1024", "completion-only logits (vs bf16)", o, 1, 1024,
                fused_adamw=False),
        Variant("bf16+head+fused bs1x1024", "fused AdamW (vs bf16+head)", o, 1, 1024),
        Variant("ours-noliger bs1x1024 ckpt off", "checkpointing off", o, 1, 1024, "off"),
        Variant("ours-noliger bs8x1024", "bf16+head+fused at bs8 (vs stock)", o, 8, 1024),
        Variant("ours-noliger bs8x1024 ckpt off", "checkpointing off", o, 8, 1024, "off"),
        Variant("ours-noliger bs8 var padded ckpt off", "padded, variable lengths", o, 8, 0, "off",
                padding_free=False),
        Variant("ours-noliger bs8 var packed-mask ckpt off", "padding-free, SDPA block mask (vs padded)",
                o, 8, 0, "off", segment_attention=False),
        Variant("ours-noliger bs8 var packed ckpt off", "padding-free, per-example attention (vs padded)",
                o, 8, 0, "off"),
    ]  # fmt: skip
    v += [
        Variant("liger bs1x1024", "Liger kernels (vs bf16+head+fused)", o, 1, 1024, liger=True),
        Variant("liger bs1x1024 ckpt off", "checkpointing off", o, 1, 1024, "off", liger=True),
        Variant("liger bs1x1024 ckpt half", "checkpointing on half the layers", o, 1, 1024, "half",
                liger=True),
        Variant("liger bs1x1536", "Liger kernels", o, 1, 1536, liger=True),
        Variant("liger bs1x1536 ckpt off", "checkpointing off", o, 1, 1536, "off", liger=True),
        Variant("liger bs8x1024", "Liger kernels", o, 8, 1024, liger=True),
        Variant("liger bs8x1024 ckpt off", "checkpointing off", o, 8, 1024, "off", liger=True),
        Variant("liger bs8 var packed ckpt off", "Liger, padding-free, variable lengths", o, 8, 0,
                "off", liger=True),
        Variant("trl bs1x1024", "TRL SFTTrainer (Liger, padding-free)", "trl", 1, 1024,
                liger=True),
        Variant("trl bs8x1024", "TRL SFTTrainer (Liger, padding-free)", "trl", 8, 1024,
                liger=True),
        Variant("liger bs1x1024 ckpt off compiled", "torch.compile per decoder layer", o, 1, 1024,
                "off", liger=True, compile=True),
    ]  # fmt: skip
    return v


def plan_adapter_dtype() -> list[Variant]:
    """The second run: bf16 LoRA weights (TRL's and the QLoRA paper's choice) against fp32, next
    to the stock baselines measured again in the same process."""
    o, bf = "ours", "bfloat16"
    return [
        Variant("stock bs1x1024", "baseline", "stock", 1, 1024, head="full", fused_adamw=False),
        Variant("stock bs8x1024", "baseline", "stock", 8, 1024, head="full", fused_adamw=False),
        Variant("liger bs1x1024", "Liger, fp32 adapter", o, 1, 1024, liger=True),
        Variant("liger bf16 bs1x1024", "bf16 adapter (vs fp32)", o, 1, 1024, liger=True,
                adapter_dtype=bf),
        Variant("liger bs1x1024 ckpt off", "Liger, fp32 adapter", o, 1, 1024, "off", liger=True),
        Variant("liger bf16 bs1x1024 ckpt off", "bf16 adapter (vs fp32)", o, 1, 1024, "off",
                liger=True, adapter_dtype=bf),
        Variant("liger bf16 bs1x1536", "bf16 adapter", o, 1, 1536, liger=True, adapter_dtype=bf),
        Variant("liger bf16 bs1x1536 ckpt off", "bf16 adapter", o, 1, 1536, "off", liger=True,
                adapter_dtype=bf),
        Variant("liger bf16 bs8x1024", "bf16 adapter", o, 8, 1024, liger=True, adapter_dtype=bf),
        Variant("liger bf16 bs8x1024 ckpt off", "bf16 adapter", o, 8, 1024, "off", liger=True,
                adapter_dtype=bf),
        Variant("liger bf16 bs8 var packed ckpt off", "bf16 adapter, padding-free, variable lengths",
                o, 8, 0, "off", liger=True, adapter_dtype=bf),
    ]  # fmt: skip


def plan_odd_lengths() -> list[Variant]:
    """The third run: real examples have any length; matrix kernels on sizes that are not a
    multiple of 8 (or 64) can be slower, bf16 ones most. 1001 tokens against 1024, and padding a
    packed row up to a multiple of 64."""
    o, bf = "ours", "bfloat16"
    return [
        Variant("liger bf16 bs1x1001 ckpt off", "odd length", o, 1, 1001, "off", liger=True,
                adapter_dtype=bf),
        Variant("liger bf16 bs1x1001 ckpt off pad64", "pad to a multiple of 64 (vs odd)", o, 1,
                1001, "off", liger=True, adapter_dtype=bf, pad_to_multiple=64),
        Variant("liger bf16 bs1x1001 pad64", "pad to 64, checkpointing on", o, 1, 1001,
                liger=True, adapter_dtype=bf, pad_to_multiple=64),
        Variant("liger bf16 bs8 var packed ckpt off", "variable lengths (run 2 again)", o, 8, 0,
                "off", liger=True, adapter_dtype=bf),
        Variant("liger bf16 bs8 var packed ckpt off pad64", "pad to a multiple of 64 (vs odd)", o,
                8, 0, "off", liger=True, adapter_dtype=bf, pad_to_multiple=64),
        Variant("liger bs8 var packed ckpt off", "fp32 adapter (run 1 again)", o, 8, 0, "off",
                liger=True),
        Variant("liger bs8 var packed ckpt off pad64", "fp32 adapter, pad to 64", o, 8, 0, "off",
                liger=True, pad_to_multiple=64),
        Variant("liger bf16 bs8x1024 ckpt off", "fixed lengths (run 2 again)", o, 8, 1024, "off",
                liger=True, adapter_dtype=bf),
    ]  # fmt: skip


PLANS = {"levers": plan, "adapter-dtype": plan_adapter_dtype, "odd-lengths": plan_odd_lengths}


# ----------------------------------------------------------------------------- data


def fixed_examples(n: int, length: int, vocab: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    prompt = length - length // 4
    return [
        Example(f"r{i}", [rng.randrange(vocab) for _ in range(length)], prompt, False)
        for i in range(n)
    ]


def variable_examples(n: int, vocab: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(512, 1024)
        out.append(
            Example(
                f"v{i}", [rng.randrange(vocab) for _ in range(length)], length - length // 4, False
            )
        )
    return out


def padded_labels_batch(examples: list[Example], pad_id: int, device: str) -> dict[str, Any]:
    """The stock collator: right-padded rows, labels = input ids with the prompt set to -100."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


# ----------------------------------------------------------------------------- model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build_checkpoint(config: dict[str, Any], path: Path, device: str) -> dict[str, float]:
    """Random weights in `config`, built on `device` in the compute dtype, saved to `path`."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = build_tiny_tokenizer()
    cfg = Qwen3Config(**config, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None)  # fmt: skip
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    sync(device)
    t1 = time.perf_counter()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    t2 = time.perf_counter()
    n = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"parameters": n, "random_init_s": round(t1 - t0, 2), "save_s": round(t2 - t1, 2)}


def upcast_like_stock(base: Any) -> None:
    from peft import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)


def undo_stock_upcast(base: Any) -> None:
    """Back to the loaded state: fp32 copies made by prepare_model_for_kbit_training -> bf16."""
    for p in base.parameters():
        if p.dtype == torch.float32 and p.__class__.__name__ != "Params4bit":
            p.data = p.data.to(torch.bfloat16)
    drop_input_grad_hook(base)


def drop_input_grad_hook(base: Any) -> None:
    if getattr(base, "_require_grads_hook", None) is not None:
        base.disable_input_require_grads()
        base._require_grads_hook = None


def checkpoint_layers(base: Any, mode: str, stock: bool) -> None:
    if mode == "off":
        base.gradient_checkpointing_disable()
        return
    if stock:  # what prepare_model_for_kbit_training(use_gradient_checkpointing=True) does
        base.gradient_checkpointing_enable()
        if getattr(base, "_require_grads_hook", None) is None:
            base.enable_input_require_grads()
    else:
        set_checkpointing(base, True)
    if mode == "half":
        for layer in base.model.layers[::2]:
            layer.gradient_checkpointing = False


# ----------------------------------------------------------------------------- variants


def time_steps(
    step: Callable[[], None], warmup: int, steps: int, device: str
) -> tuple[list[float], float, float]:
    for _ in range(warmup):
        step()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else float("nan")
    return times, peak, reserved


def run_loop_variant(base: Any, v: Variant, data: list[Example], pad_id: int, device: str,
                     warmup: int, steps: int) -> dict[str, Any]:  # fmt: skip
    stock = v.stack == "stock"
    segments = v.stack == "ours" and v.padding_free and v.segment_attention
    attention = segment_attention(base) if segments else nullcontext()
    attention.__enter__()
    model = add_lora(base, PARAMS, adapter_dtype=getattr(torch, v.adapter_dtype))
    checkpoint_layers(base, v.checkpointing, stock)
    if v.compile:
        for layer in base.model.layers:
            layer.compile()
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = device == "cuda" and v.fused_adamw
    opt = torch.optim.AdamW(trainable, lr=PARAMS.lr, weight_decay=0.0, fused=fused)
    rng = random.Random(0)
    losses: list[float] = []
    tokens: list[int] = []

    def step() -> None:
        batch_examples = data[: v.batch_size] if v.length else rng.sample(data, v.batch_size)
        tokens.append(sum(len(e.input_ids) for e in batch_examples))
        if v.head == "full":
            inputs = padded_labels_batch(batch_examples, pad_id, device)
            loss = model(**inputs).loss
        else:
            batch = make_batch(batch_examples, pad_id, padding_free=v.padding_free, device=device,
                               pad_to_multiple=v.pad_to_multiple)  # fmt: skip
            loss = completion_loss(model, batch, fused=v.liger)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    model.train()
    try:
        times, peak, reserved = time_steps(step, warmup, steps, device)
    finally:
        if v.compile:
            for layer in base.model.layers:
                layer._compiled_call_impl = None
        base.gradient_checkpointing_disable()
        model.unload()
        attention.__exit__(None, None, None)
        opt.state.clear()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return summary(v, times, peak, reserved, tokens[-len(times) :], losses)


def run_trl_variant(base: Any, v: Variant, data: list[Example], pad_id: int, device: str,
                    warmup: int, steps: int, out: Path) -> dict[str, Any]:  # fmt: skip
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [
        {
            "input_ids": e.input_ids,
            "completion_mask": [0] * e.prompt_len + [1] * (len(e.input_ids) - e.prompt_len),
        }
        for e in data
    ]
    times: list[float] = []
    mark: list[float] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            sync(device)
            if state.global_step == warmup and device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            mark.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            sync(device)
            if state.global_step > warmup:
                times.append(time.perf_counter() - mark[-1])

    args = SFTConfig(
        output_dir=str(out / "trl"),
        max_steps=warmup + steps,
        per_device_train_batch_size=v.batch_size,
        learning_rate=PARAMS.lr,
        lr_scheduler_type="constant",
        gradient_checkpointing=v.checkpointing == "on",
        bf16=device == "cuda",
        use_liger_kernel=v.liger and device == "cuda",
        padding_free=v.padding_free,
        completion_only_loss=True,
        max_length=None,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=device != "cuda",
    )
    lora = LoraConfig(r=PARAMS.lora_r, lora_alpha=PARAMS.lora_alpha, lora_dropout=PARAMS.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    tokenizer = build_tiny_tokenizer()
    trainer = SFTTrainer(model=base, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora, callbacks=[Timer()])  # fmt: skip
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else float("nan")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model = trainer.model
    model.unload()
    base.gradient_checkpointing_disable()
    drop_input_grad_hook(base)
    del trainer, model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    tokens = [sum(len(e.input_ids) for e in data[: v.batch_size])] * len(times)
    return summary(v, times, peak, reserved, tokens, losses)


def summary(v: Variant, times: list[float], peak: float, reserved: float, tokens: list[int],
            losses: list[float]) -> dict[str, Any]:  # fmt: skip
    """Median step time; tokens/s over all timed steps (sum of tokens / sum of times)."""
    return {
        **asdict(v),
        "status": "ok",
        "s_per_step": round(statistics.median(times), 4),
        "s_per_step_min": round(min(times), 4),
        "s_per_step_max": round(max(times), 4),
        "tokens_per_step": round(sum(tokens) / len(tokens), 1),
        "tokens_per_s": round(sum(tokens) / sum(times), 1),
        "peak_allocated_gib": round(peak, 2),
        "peak_reserved_gib": round(reserved, 2),
        "timed_steps": len(times),
        "losses_finite": all(math.isfinite(x) for x in losses),
        "last_loss": round(losses[-1], 4) if losses else None,
    }


# ----------------------------------------------------------------------------- checks


def loss_checks(base: Any, pad_id: int, vocab: int, device: str, liger: bool) -> dict[str, float]:
    """Relative differences between loss paths on the same inputs (eval mode, fresh LoRA = base)."""
    model = add_lora(base, PARAMS)
    model.eval()
    one = fixed_examples(1, 1024, vocab, seed=7)
    var = variable_examples(4, vocab, seed=8)
    out = {}
    with torch.no_grad():
        ref = float(model(**padded_labels_batch(one, pad_id, device)).loss)
        ours = float(
            completion_loss(
                model, make_batch(one, pad_id, padding_free=True, device=device), fused=False
            )
        )
        out["completion_head_vs_hf_loss"] = abs(ours - ref) / abs(ref)
        padded = float(
            completion_loss(
                model, make_batch(var, pad_id, padding_free=False, device=device), fused=False
            )
        )
        packed = float(
            completion_loss(
                model, make_batch(var, pad_id, padding_free=True, device=device), fused=False
            )
        )
        out["packed_mask_vs_padded"] = abs(packed - padded) / abs(padded)
        with segment_attention(base):
            packed = float(
                completion_loss(
                    model, make_batch(var, pad_id, padding_free=True, device=device), fused=False
                )
            )
        out["packed_segments_vs_padded"] = abs(packed - padded) / abs(padded)
        if liger:
            # Liger's forward computes the fused loss only when asked to skip the logits.
            b = make_batch(one, pad_id, padding_free=True, device=device)
            fused = float(
                model(
                    **b.inputs, logits_to_keep=b.keep, shift_labels=b.targets, skip_logits=True
                ).loss
            )
            out["liger_vs_plain"] = abs(fused - ours) / abs(ours)
    model.unload()
    return {k: round(v, 6) for k, v in out.items()}


# ----------------------------------------------------------------------------- main


class Timeout(Exception):
    pass


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "cuda": torch.version.cuda}  # fmt: skip
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info | {"libraries": library_versions(LIBS)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="results JSON is written here (results.json)")
    ap.add_argument("--tiny", action="store_true", help="2-layer model, CPU dry run of every path")
    ap.add_argument("--checkpoint-dir", default="/tmp/sftgate-bench-qwen3-4b-random")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="timed steps at batch 1 (batch 8: half)")
    ap.add_argument("--budget-s", type=float, default=480, help="skip variants after this long")
    ap.add_argument("--only", default="", help="comma-separated substrings of variant names")
    ap.add_argument("--plan", choices=sorted(PLANS), default="levers", help="which variants")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TINY if args.tiny else QWEN3_4B
    vocab = config["vocab_size"]
    result: dict[str, Any] = {
        "benchmark": "bench_train",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "model": "random init, Qwen3-4B configuration" if not args.tiny else "tiny 2-layer Qwen3",
        "model_config": config,
        "lora": {
            "r": PARAMS.lora_r,
            "alpha": PARAMS.lora_alpha,
            "dropout": PARAMS.lora_dropout,
            "target_modules": "all-linear",
        },  # fmt: skip
        "data": "random token ids, last quarter of each example is the completion",
        "variants": [],
    }

    def save() -> None:
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")

    ckpt = Path(args.checkpoint_dir)
    result["setup"] = build_checkpoint(config, ckpt, device)
    t0 = time.perf_counter()
    loaded = load_model(str(ckpt), quantization="4bit", device=device)
    sync(device)
    result["setup"]["load_and_quantize_s"] = round(time.perf_counter() - t0, 2)
    if device == "cuda":
        result["setup"]["memory_after_load_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    base, pad_id = loaded.model, loaded.tokenizer.pad_token_id
    print(f"setup {result['setup']}", flush=True)
    save()

    data = {
        1024: fixed_examples(8, 1024, vocab, seed=1),
        1536: fixed_examples(1, 1536, vocab, seed=2),
        1001: fixed_examples(1, 1001, vocab, seed=4),
        0: variable_examples(64, vocab, seed=3),
    }
    result["checks"] = {"before_liger": loss_checks(base, pad_id, vocab, device, liger=False)}
    print(f"checks {result['checks']}", flush=True)
    variants = PLANS[args.plan]()
    result["plan"] = args.plan
    if args.only:
        keys = args.only.split(",")
        variants = [v for v in variants if any(k in v.name for k in keys)]
    stock_upcast = False
    liger_cm = None

    def on_alarm(signum: int, frame: Any) -> None:
        raise Timeout

    signal.signal(signal.SIGALRM, on_alarm)
    for v in variants:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            result["variants"].append({**asdict(v), "status": f"skipped: {elapsed:.0f}s > budget"})
            save()
            continue
        if device != "cuda" and (v.liger and v.stack != "trl" or v.compile):
            v = replace(v, liger=False)  # CPU dry run: no Triton
            if v.compile:
                result["variants"].append({**asdict(v), "status": "skipped on CPU"})
                continue
        if v.stack == "stock" and not stock_upcast:
            upcast_like_stock(base)
            stock_upcast = True
        if v.stack != "stock" and stock_upcast:
            undo_stock_upcast(base)
            stock_upcast = False
        if v.liger and v.stack == "ours" and liger_cm is None:
            liger_cm = liger_kernels(base)
            liger_cm.__enter__()
            result["checks"]["with_liger"] = loss_checks(base, pad_id, vocab, device, liger=True)
            print(f"checks {result['checks']}", flush=True)
        steps = args.steps if v.batch_size == 1 else max(4, args.steps // 2)
        examples = data[v.length]
        signal.alarm(120 if v.compile else 90)
        try:
            if v.stack == "trl":
                row = run_trl_variant(base, v, examples, pad_id, device, args.warmup, steps, out)
            else:
                row = run_loop_variant(base, v, examples, pad_id, device, args.warmup, steps)
        except torch.OutOfMemoryError:
            row = {**asdict(v), "status": "out of memory"}
        except Timeout:
            row = {**asdict(v), "status": "timed out"}
        except Exception as e:  # recorded, and the run goes on to the next variant
            traceback.print_exc()
            row = {**asdict(v), "status": f"error: {type(e).__name__}: {str(e)[:300]}"}
        finally:
            signal.alarm(0)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        result["variants"].append(row)
        save()
        if row["status"] == "ok":
            print(f"{v.name:40s} {row['s_per_step']:8.3f} s/step {row['tokens_per_s']:9.0f} tok/s "
                  f"{row['peak_allocated_gib']:6.2f} GiB  loss {row['last_loss']}", flush=True)  # fmt: skip
        else:
            print(f"{v.name:40s} {row['status']}", flush=True)
    if liger_cm is not None:
        liger_cm.__exit__(None, None, None)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    save()
    print("\n| variant | s/step | tok/s | peak GiB |\n| --- | --- | --- | --- |")
    for row in result["variants"]:
        if row["status"] == "ok":
            print(
                f"| {row['name']} | {row['s_per_step']} | {row['tokens_per_s']:.0f} | {row['peak_allocated_gib']} |"
            )
        else:
            print(f"| {row['name']} | {row['status']} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
