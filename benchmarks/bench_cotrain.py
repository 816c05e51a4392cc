"""Co-training benchmark: a round's configs trained together on one base (benchmarks/cotrain.py)
against the same configs in separate processes sharing the GPU (what `parallel_runs` does today),
in the same call.

    PYTHONPATH=.:benchmarks python benchmarks/bench_cotrain.py --model random-qwen3-4b --out DIR
    PYTHONPATH=.:benchmarks python benchmarks/bench_cotrain.py --model /path/to/gemma-3-270m --out DIR
    PYTHONPATH=.:benchmarks python benchmarks/bench_cotrain.py --tiny --out DIR   # CPU dry run

The configs are the seed's round 1 (lr 2e-4 x 200 steps, 1e-4 x 300, 3e-4 x 150; max_length 1024;
LoRA r 16, alpha 32, dropout 0.05; batch 1), steps times --steps-scale. Data: for a model folder,
the sample study's training examples (its prompt, questions and retrieved passages, tokenised as
`sftgate train` does); for the random shapes, 64 random examples of 600-1,024 tokens (a quarter of
each the completion). Every model is loaded as NF4 + double quantisation (bf16 compute).

- `separate`: one process per config, each loading its own base, waiting at a barrier, then
  `sftgate.train.train_loop` (CUDA graphs, as `sftgate train` trains on CUDA); the wall time is
  from the barrier to the last process's end.
- `cotrained`: one process, one base, `cotrain.cotrain_loop` (CUDA graphs); the wall time
  of the loop.
- `numerics`: --check-steps steps with lora_dropout 0, each config alone (graphed) against the
  three co-trained: the loss curves' and the adapters' largest relative difference.

Writes DIR/cotrain.json (machine, libraries, git, date, settings, results) after each part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import random
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from bench_step import MODELS, load_base, release  # noqa: E402 - benchmarks/ is on sys.path
from bench_train import machine  # noqa: E402
from cotrain import Member, add_members, cotrain_loop, member_parameters  # noqa: E402

from sftgate.params import TrainParams
from sftgate.provenance import git_state, source_sha256
from sftgate.train import (
    Example,
    TrainingFailed,
    TrainSetup,
    add_lora,
    set_checkpointing,
    train_loop,
)

ROUND_1 = ((2e-4, 200), (1e-4, 300), (3e-4, 150))  # the seed's round 1: (lr, max_steps)


def round_params(scale: float, dropout: float = 0.05) -> list[TrainParams]:
    return [
        TrainParams(lr=lr, max_steps=max(2, round(steps * scale)), lora_dropout=dropout)
        for lr, steps in ROUND_1
    ]


def random_examples(vocab: int, n: int = 64, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randrange(600, 1025)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        out.append(Example(f"x{i}", ids, length - length // 4, False))
    return out


def sample_examples(model: str, work: Path, tokenizer: Any) -> list[Example]:
    """The sample study's training set as `sftgate train` tokenises it at max_length 1024."""
    from check_graphs_real import sample_contexts  # noqa: E402

    from sftgate.train import TrainConfig, read_inputs, training_examples

    study, contexts = sample_contexts(work)
    config = TrainConfig(
        model=model,
        questions=study["train_questions"],
        contexts=str(contexts),
        prompt=study["prompt"],
        out=str(work / "unused"),
    )
    return list(training_examples(config, tokenizer, read_inputs(config)).examples)


def loop_alone(loaded: Any, p: TrainParams, data: list[Example], graphs: bool) -> tuple[Any, list]:
    model = add_lora(loaded.model, p)
    set_checkpointing(loaded.model, False)
    setup = TrainSetup.of(model, loaded, False, "none")
    try:
        loop = train_loop(setup, data, p, progress=False, on_step=None, cuda_graphs=graphs)
        tensors = [t.detach().float().cpu() for t in setup.trainable]
    finally:
        model.unload()
    return loop, tensors


def child(
    args: argparse.Namespace, p: TrainParams, data: list[Example], barrier: Any, q: Any
) -> None:
    """One config in its own process: load, wait for the others, train, report."""
    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_saved(args, device)
        barrier.wait()
        loop, _ = loop_alone(loaded, p, data, device == "cuda")
        q.put({"max_steps": p.max_steps, "lr": p.lr, "wall_s": round(loop.wall_s, 3),
               "s_per_step": round(loop.wall_s / p.max_steps, 4), "end": time.time(),
               "peak_allocated_gib": None if loop.peak_memory_bytes is None
               else round(loop.peak_memory_bytes / 2**30, 3), "losses": loop.losses})  # fmt: skip
    except Exception as e:
        traceback.print_exc()
        break_barrier(barrier)
        q.put({"error": f"{type(e).__name__}: {str(e)[:500]}"})


def load_saved(args: argparse.Namespace, device: str) -> Any:
    """The model `load_base` built (random shapes) or was given, loaded again as it loads it."""
    from sftgate.models import load_model

    name = "tiny" if args.tiny else args.model
    folder = Path(args.checkpoint_dir) / name if args.tiny or args.model in MODELS else Path(name)
    return load_model(str(folder), quantization="4bit", device=device)


def break_barrier(barrier: Any) -> None:
    with contextlib.suppress(Exception):  # the others must not wait for this one
        barrier.abort()


def separate(args: argparse.Namespace, params: list[TrainParams], data: list[Example]) -> dict:
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(len(params) + 1), ctx.Queue()
    procs = [ctx.Process(target=child, args=(args, p, data, barrier, q)) for p in params]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=900)
    started = time.time()
    rows = [q.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join()
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        return {"status": f"error: {errors}"}
    rows.sort(key=lambda r: r["max_steps"])
    wall = max(r["end"] for r in rows) - started
    return {"status": "ok", "wall_s": round(wall, 3), "runs": rows,
            "steps": sum(r["max_steps"] for r in rows)}  # fmt: skip


def cotrained(
    loaded: Any, params: list[TrainParams], data: list[Example], graphs: bool
) -> tuple[dict, list]:
    members = [Member(p, data) for p in params]
    model = add_members(loaded.model, members)
    set_checkpointing(loaded.model, False)
    device = loaded.device
    try:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        outcomes = cotrain_loop(
            model, members, loaded.tokenizer.pad_token_id, device, cuda_graphs=graphs
        )
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
        tensors = [
            [t.detach().float().cpu() for t in member_parameters(model, m.name)] for m in members
        ]
    finally:
        model.unload()
    failed = [str(o) for o in outcomes if isinstance(o, TrainingFailed)]
    if failed:
        return {"status": f"error: {failed}"}, []
    runs = [{"max_steps": o.params.max_steps, "lr": o.params.lr, "wall_s": round(o.wall_s, 3),
             "peak_allocated_gib": None if o.peak_memory_bytes is None
             else round(o.peak_memory_bytes / 2**30, 3), "losses": o.losses} for o in outcomes]  # fmt: skip
    graphs_info = outcomes[0].graphs
    return {"status": "ok", "wall_s": round(wall, 3), "runs": runs, "graphs": graphs_info}, [
        (o.losses, t) for o, t in zip(outcomes, tensors)
    ]


def rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def numerics(loaded: Any, args: argparse.Namespace, data: list[Example], graphs: bool) -> dict:
    params = [p.model_copy(update={"max_steps": args.check_steps + 5 * i})
              for i, p in enumerate(round_params(1.0, dropout=0.0))]  # fmt: skip
    alone = []
    for p in params:
        loop, tensors = loop_alone(loaded, p, data, graphs)
        alone.append((loop.losses, tensors))
        release(loaded.device)
    row, together = cotrained(loaded, params, data, graphs)
    release(loaded.device)
    if row["status"] != "ok":
        return row
    out = []
    for (a_losses, a_t), (c_losses, c_t) in zip(alone, together):
        lora = [
            float((c - a).abs().max() / a.abs().max().clamp_min(1e-12)) for c, a in zip(c_t, a_t)
        ]
        out.append({"steps": len(a_losses), "loss_max_rel_diff": rel_diff(c_losses, a_losses),
                    "lora_max_rel_diff": max(lora), "alone_losses": a_losses,
                    "cotrained_losses": c_losses})  # fmt: skip
    return {"status": "ok", "lora_dropout": 0.0, "members": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="DIR: cotrain.json is written there")
    ap.add_argument("--model", default="random-qwen3-4b", help=f"{', '.join(MODELS)} or a folder")
    ap.add_argument("--tiny", action="store_true", help="2-layer model on the CPU (dry run)")
    ap.add_argument("--checkpoint-dir", default="/tmp/sftgate-bench-step")
    ap.add_argument("--steps-scale", type=float, default=0.5, help="times the seed's steps")
    ap.add_argument("--check-steps", type=int, default=20, help="numerics steps (0: none)")
    args = ap.parse_args()
    if args.tiny:
        args.steps_scale, args.check_steps = min(args.steps_scale, 0.02), min(args.check_steps, 3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    graphs = device == "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = round_params(args.steps_scale)
    result: dict[str, Any] = {
        "benchmark": "bench_cotrain",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(Path(__file__).parent),
        "source_sha256": source_sha256(),
        "machine": machine(device),
        "model": "tiny 2-layer Qwen3 (CPU dry run)" if args.tiny else args.model,
        "steps_scale": args.steps_scale,
        "params": [p.model_dump() for p in params],
        "cuda_graphs": graphs,
    }

    def write(key: str, value: Any) -> None:
        result[key] = value
        (out / "cotrain.json").write_text(json.dumps(result, indent=2) + "\n")
        brief = {k: v for k, v in value.items() if k in ("status", "wall_s")} if isinstance(value, dict) else value  # fmt: skip
        print(f"{key}: {brief}", flush=True)

    loaded = load_base(args, device, result)
    if args.tiny or args.model in MODELS:
        data = random_examples(loaded.model.config.vocab_size)
        if args.tiny:
            data = [Example(e.id, e.input_ids[:60], 45, False) for e in data]
    else:
        data = sample_examples(args.model, out / "work", loaded.tokenizer)
    write("data", {"examples": len(data), "tokens_mean": round(sum(len(e.input_ids) for e in data) / len(data), 1)})  # fmt: skip
    row, _ = cotrained(loaded, params, data, graphs)
    release(device)
    write("cotrained", row)
    del loaded
    release(device)
    write("separate", separate(args, params, data))
    if result["separate"].get("status") == "ok" and row.get("status") == "ok":
        write("separate_over_cotrained", round(result["separate"]["wall_s"] / row["wall_s"], 3))
    if args.check_steps:
        loaded = load_saved(args, device)
        write("numerics", numerics(loaded, args, data, graphs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
