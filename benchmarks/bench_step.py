"""Training-step benchmark: stock QLoRA, sftgate's eager loop and its CUDA-graph loop, one process.

    PYTHONPATH=.:benchmarks python benchmarks/bench_step.py --model random-qwen3-0.6b --out DIR
    PYTHONPATH=.:benchmarks python benchmarks/bench_step.py --model random-qwen3-4b --out DIR
    PYTHONPATH=.:benchmarks python benchmarks/bench_step.py --model /path/to/gemma-3-270m --out DIR
    PYTHONPATH=.:benchmarks python benchmarks/bench_step.py --tiny --out DIR   # CPU dry run, < 1 min

Model: `random-qwen3-0.6b` / `random-qwen3-4b` are random weights in Qwen3-0.6B's / Qwen3-4B's
configuration (benchmarks/shapes.py), built and saved once to local disk as bench_train.py does;
a folder is a real model. Every model is loaded through `sftgate.models.load_model` as NF4 + double
quantisation (bf16 compute), as `sftgate train` loads it. LoRA r 16, alpha 32, dropout 0.05 on all
linear projections, lr 2e-4, linear schedule.

Cases (random token ids, the last quarter of each example is the completion):
- `mixed`: 8 examples of 700-1,536 tokens (7 length buckets of 128), in the loop's seeded order;
- `fixed-1024`: one example of 1 x 1024 tokens (the issue's target shape).

Variants, each on the same examples in the same order from the same LoRA initialisation:
- `stock`: transformers + PEFT + bitsandbytes as QLoRA recipes write it (bench_train.py's stock:
  `prepare_model_for_kbit_training`, gradient checkpointing, `model(**batch, labels=...)`, AdamW
  foreach), its own loop;
- `eager`: `sftgate.train.train_loop` with the CUDA defaults before graphs (no checkpointing,
  kernels none, padding-free unless the model has sliding windows);
- `graphed`: the same `train_loop` with `cuda_graphs=True` (sftgate/graphed.py).

Times: a callback after every step synchronises the GPU and takes the time since the previous
one; the median is over the steps after the warm-up (one pass over the case's examples, so for
`graphed` every bucket has been captured, plus 2 steps). The graphed loop also reports its capture
seconds. Peak memory: the largest allocation during the loop (captures included). Numerics: the
same case trained `--check-steps` steps with lora_dropout 0, eager against graphed: the loss
curves' max abs/rel difference and each final LoRA tensor's max abs difference relative to its
largest value. Results (DIR/step.json) are written after every variant.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from bench_train import (  # noqa: E402 - benchmarks/ is on sys.path when a script runs
    TINY,
    build_checkpoint,
    checkpoint_layers,
    machine,
    padded_labels_batch,
    undo_stock_upcast,
    upcast_like_stock,
)
from shapes import QWEN3_0_6B, QWEN3_4B  # noqa: E402

from sftgate.models import load_model, uses_sliding_window
from sftgate.params import TrainParams
from sftgate.provenance import git_state, source_sha256
from sftgate.train import (
    Example,
    TrainSetup,
    add_lora,
    segment_attention,
    set_checkpointing,
    shuffled_batches,
    train_loop,
)

MODELS = {"random-qwen3-0.6b": QWEN3_0_6B, "random-qwen3-4b": QWEN3_4B}
MIXED = (700, 850, 1000, 1024, 1100, 1250, 1400, 1536)  # buckets 768 896 1024 1152 1280 1408 1536
PARAMS = TrainParams(lr=2e-4, lora_r=16, lora_alpha=32, lora_dropout=0.05, max_length=1536)


def examples_of(lengths: tuple[int, ...], vocab: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    return [
        Example(f"x{i}", [rng.randrange(3, vocab) for _ in range(n)], n - n // 4, False)
        for i, n in enumerate(lengths)
    ]


class StepClock:
    """on_step callback: the wall time of each step, the GPU synchronised at each."""

    def __init__(self, device: str):
        self.device, self.times = device, []
        self.last = time.perf_counter()

    def __call__(self, step: int, total: int) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def sftgate_run(
    base: Any, pad_id: int, data: list[Example], p: TrainParams, device: str, graphs: bool
) -> tuple[dict[str, Any], list[float], list[Any]]:
    """`train_loop` as `sftgate train` sets it up (no checkpointing, kernels none)."""
    padding_free = not uses_sliding_window(base.config)
    attention = segment_attention(base) if padding_free else nullcontext()
    with attention:
        model = add_lora(base, p)
        set_checkpointing(base, False)
        trainable = [t for t in model.parameters() if t.requires_grad]
        setup = TrainSetup(model, trainable, pad_id, device, padding_free, "none")
        clock = StepClock(device)
        try:
            loop = train_loop(setup, data, p, progress=False, on_step=clock, cuda_graphs=graphs)
            lora = [t.detach().float().cpu() for t in trainable]
        finally:
            model.unload()
    row = {
        "padding_free": padding_free,
        "peak_allocated_gib": None
        if loop.peak_memory_bytes is None
        else round(loop.peak_memory_bytes / 2**30, 3),
        "graphs": loop.graphs,
        "tokens": loop.tokens_seen,
    }
    return row | {"step_times": clock.times}, loop.losses, lora


def stock_run(
    base: Any, pad_id: int, data: list[Example], p: TrainParams, device: str
) -> tuple[dict[str, Any], list[float], list[Any]]:
    upcast_like_stock(base)
    model = add_lora(base, p)
    checkpoint_layers(base, "on", stock=True)
    trainable = [t for t in model.parameters() if t.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=p.lr, weight_decay=0.0, foreach=device == "cuda")
    batches = shuffled_batches(data, 1, p.seed)
    clock, losses, tokens = StepClock(device), [], 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    try:
        for step in range(1, p.max_steps + 1):
            batch = next(batches)
            loss = model(**padded_labels_batch(batch, pad_id, device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            tokens += len(batch[0].input_ids)
            clock(step, p.max_steps)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    finally:
        base.gradient_checkpointing_disable()
        model.unload()
        undo_stock_upcast(base)
    row = {"peak_allocated_gib": None if peak is None else round(peak, 3), "tokens": tokens}
    return row | {"step_times": clock.times}, losses, []


def timing(row: dict[str, Any], data: list[Example], p: TrainParams, warmup: int) -> dict:
    """Median step time after the warm-up; tokens/s over the timed steps (the loop's order)."""
    times = row.pop("step_times")[warmup:]
    order = shuffled_batches(data, 1, p.seed)
    lengths = [len(next(order)[0].input_ids) for _ in range(p.max_steps)][warmup:]
    return row | {
        "status": "ok",
        "timed_steps": len(times),
        "s_per_step": round(statistics.median(times), 4),
        "s_per_step_mean": round(statistics.fmean(times), 4),
        "tokens_per_s": round(sum(lengths) / sum(times), 1),
    }


def compare(a: list[float], b: list[float], lora_a: list[Any], lora_b: list[Any]) -> dict:
    x, y = torch.tensor(a), torch.tensor(b)
    out = {
        "loss_max_abs_diff": float((x - y).abs().max()),
        "loss_max_rel_diff": float(((x - y).abs() / x.abs()).max()),
    }
    if lora_a and lora_b:
        rel = [float((s - t).abs().max() / t.abs().max().clamp_min(1e-12)) for s, t in zip(lora_a, lora_b)]  # fmt: skip
        out["lora_max_rel_diff"] = max(rel)
    return out


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_case(
    name: str,
    data: list[Example],
    base: Any,
    pad_id: int,
    device: str,
    args: argparse.Namespace,
    save: Callable[[dict[str, Any]], None],
) -> None:
    warmup = len(data) + 2
    p = PARAMS.model_copy(update={"max_steps": warmup + args.steps})
    runs: dict[str, tuple[list[float], list[Any]]] = {}
    variants = ["eager", "graphed", "stock"]
    for variant in variants:
        row: dict[str, Any] = {"case": name, "variant": variant, "lengths": [len(e.input_ids) for e in data]}  # fmt: skip
        if variant == "graphed" and device != "cuda":
            save(row | {"status": "skipped: CUDA graphs need CUDA (the CPU dry run)"})
            continue
        try:
            if variant == "stock":
                got, losses, lora = stock_run(base, pad_id, data, p, device)
            else:
                got, losses, lora = sftgate_run(base, pad_id, data, p, device, variant == "graphed")
            row |= timing(got, data, p, warmup) | {"losses": losses}
            runs[variant] = (losses, lora)
        except Exception as e:  # recorded; the benchmark goes on with the next variant
            traceback.print_exc()
            row["status"] = f"error: {type(e).__name__}: {str(e)[:500]}"
        finally:
            release(device)
        if variant == "graphed" and "eager" in runs and "graphed" in runs:
            (g_losses, g_lora), (e_losses, e_lora) = runs["graphed"], runs["eager"]
            # Dropout draws another random stream under graphs: noise, not an error.
            row["vs_eager_with_dropout"] = compare(g_losses, e_losses, g_lora, e_lora)
        save(row)
    if device == "cuda" and args.check_steps:
        check = PARAMS.model_copy(update={"max_steps": args.check_steps, "lora_dropout": 0.0})
        row = {"case": name, "variant": "numerics: graphed vs eager, lora_dropout 0"}
        try:
            _, e_losses, e_lora = sftgate_run(base, pad_id, data, check, device, False)
            release(device)
            _, g_losses, g_lora = sftgate_run(base, pad_id, data, check, device, True)
            row |= {"status": "ok", "steps": args.check_steps, "eager_losses": e_losses,
                    "graphed_losses": g_losses} | compare(g_losses, e_losses, g_lora, e_lora)  # fmt: skip
        except Exception as e:
            traceback.print_exc()
            row["status"] = f"error: {type(e).__name__}: {str(e)[:500]}"
        finally:
            release(device)
        save(row)


def load_base(args: argparse.Namespace, device: str, result: dict[str, Any]) -> Any:
    if args.tiny or args.model in MODELS:
        config = TINY if args.tiny else MODELS[args.model]
        folder = Path(args.checkpoint_dir) / ("tiny" if args.tiny else args.model)
        result["model_config"] = config
        result["setup"] = build_checkpoint(config, folder, device)
    else:
        folder = Path(args.model)
    t0 = time.perf_counter()
    loaded = load_model(str(folder), quantization="4bit", device=device)
    result.setdefault("setup", {})["load_and_quantize_s"] = round(time.perf_counter() - t0, 2)
    return loaded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="DIR: step.json is written there")
    ap.add_argument("--model", default="random-qwen3-0.6b", help=f"{', '.join(MODELS)} or a folder")
    ap.add_argument("--tiny", action="store_true", help="2-layer model on the CPU (dry run)")
    ap.add_argument("--checkpoint-dir", default="/tmp/sftgate-bench-step")
    ap.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up")
    ap.add_argument("--check-steps", type=int, default=30, help="numerics check steps (0: none)")
    ap.add_argument("--cases", default="mixed,fixed-1024", help="comma-separated")
    args = ap.parse_args()
    if args.tiny:
        args.steps = min(args.steps, 3)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "bench_step",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(Path(__file__).parent),
        "source_sha256": source_sha256(),
        "machine": machine(device),
        "model": "tiny 2-layer Qwen3 (CPU dry run)" if args.tiny else args.model,
        "params": PARAMS.model_dump(),
        "rows": [],
    }

    def write() -> None:
        (out / "step.json").write_text(json.dumps(result, indent=2) + "\n")

    def save(row: dict[str, Any]) -> None:
        result["rows"].append(row)
        write()
        brief = {k: row.get(k) for k in ("status", "s_per_step", "tokens_per_s", "peak_allocated_gib")}  # fmt: skip
        print(f"{row['case']:11s} {row['variant']:45s} {brief}", flush=True)

    started = time.perf_counter()
    loaded = load_base(args, device, result)
    base, pad_id = loaded.model, loaded.tokenizer.pad_token_id
    vocab = base.config.vocab_size
    write()
    cases = {
        "mixed": examples_of(MIXED, vocab, seed=1),
        "fixed-1024": examples_of((1024,), vocab, seed=2),
    }
    for name in args.cases.split(","):
        run_case(name, cases[name], base, pad_id, device, args, save)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
