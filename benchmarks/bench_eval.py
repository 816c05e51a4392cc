"""Evaluation-decoding benchmark: greedy generation throughput, stock `generate` against levers.

    python benchmarks/bench_eval.py --out DIR            # on a CUDA GPU: Qwen3-4B shape, bf16
    python benchmarks/bench_eval.py --tiny --out DIR     # a 2-layer model on the CPU (dry run)

Model: random weights in the Qwen3-4B configuration in bf16 (what `sftgate eval` decodes with
after merging an adapter). Prompts: random token ids, lengths 900-1100 (~1,000 tokens, like a
gate question with its passages). Every prompt generates exactly 256 new tokens
(min_new_tokens = max_new_tokens = 256; random weights would rarely stop anyway), so all variants
do the same work and tokens/s = prompts x 256 / wall seconds, prefill included.

Variants (all greedy, all measured in this one process, in this order, each skipped once the
time budget `--budget-s` is spent so that a capped run still returns what it measured):
- static-graph-bsN: sftgate's decoder (`sftgate.generate.static_generate_batch`): prefill with
  sdpa, then one-token decode steps over a preallocated KV cache, captured once per batch as a
  CUDA graph and replayed; GQA attention on the key/value heads (no repeat_kv copy).
- static-eager-bsN: the same decoder without the CUDA graph (the graph's share of the gain).
- hf-dynamic-bsN: `generate` with the default dynamic cache, batch N (the stock stack).
- hf-static-compiled-bsN: `generate(cache_implementation="static")`, which compiles the decode
  step (torch.compile, CUDA graphs); first call per shape excluded as compile warm-up.
The first 8 prompts' outputs of each variant are compared with the baseline's (greedy parity).
Results are written after every variant, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from shapes import QWEN3_4B, TINY  # noqa: E402 - benchmarks/ is on sys.path when a script runs

from sftgate.generate import static_generate_batch


def build_model(tiny: bool, device: str) -> Any:
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**(dict(TINY, vocab_size=1000) if tiny else QWEN3_4B))
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model


def prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(rng.randint(900, 1100))] for _ in range(n)]


def left_pad(batch: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def run_generate(
    model: Any, ps: list[list[int]], batch_size: int, new_tokens: int, device: str, **kwargs: Any
) -> tuple[float, list[list[int]]]:
    order = sorted(range(len(ps)), key=lambda i: -len(ps[i]))
    outs: dict[int, list[int]] = {}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = left_pad([ps[i] for i in idx], device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                **kwargs,
            )
        for i, row in zip(idx, out[:, ids.shape[1] :].tolist()):
            outs[i] = row
    sync()
    return time.perf_counter() - t0, [outs[i] for i in range(len(ps))]


def run_static(
    model: Any, ps: list[list[int]], batch_size: int, new_tokens: int, device: str, cuda_graph: bool
) -> tuple[float, list[list[int]]]:
    order = sorted(range(len(ps)), key=lambda i: (-len(ps[i]), i))
    outs: dict[int, list[int]] = {}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        res = static_generate_batch(
            model,
            [ps[i] for i in idx],
            max_new_tokens=new_tokens,
            eos_ids=[],
            pad_id=0,
            cuda_graph=cuda_graph,
        )
        for i, (row, _) in zip(idx, res):
            outs[i] = row
    sync()
    return time.perf_counter() - t0, [outs[i] for i in range(len(ps))]


def first_divergence(a: list[list[int]], b: list[list[int]]) -> list[int | None]:
    """Per prompt: the first generated position where two greedy outputs differ (None: identical)."""
    return [next((j for j, (x, y) in enumerate(zip(r, s)) if x != y), None) for r, s in zip(a, b)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--full", type=int, default=1000, help="prompts for the full-set measurement")
    ap.add_argument(
        "--budget-s", type=float, default=480.0, help="skip the remaining variants after this"
    )
    ap.add_argument(
        "--static-only",
        action="store_true",
        help="only sftgate's decoder (the baselines measured before)",
    )
    args = ap.parse_args()
    began = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    new_tokens = 256 if not args.tiny else 16
    model = build_model(args.tiny, device)
    vocab = model.config.vocab_size
    n_gate = 100 if not args.tiny else 6
    gate = prompts(n_gate, vocab)
    full = prompts(args.full if not args.tiny else 12, vocab, seed=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "eval greedy decoding, Qwen3-4B shape (random weights), bf16"
        if not args.tiny
        else "tiny dry run",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {k: metadata.version(k) for k in ("torch", "transformers")},
        "new_tokens_per_prompt": new_tokens,
        "prompt_tokens": {
            "gate_total": sum(map(len, gate)),
            "min": min(map(len, gate)),
            "max": max(map(len, gate)),
        },
        "note": "random weights, end of turn ignored: every prompt generates exactly new_tokens_per_prompt tokens, so all output lengths are equal",
        "variants": [],
    }
    refs: dict[str, list[list[int]]] = {}

    def save() -> None:
        (out / "bench_eval.json").write_text(json.dumps(result, indent=2) + "\n")

    def measure(
        name: str,
        ps: list[list[int]],
        batch: int,
        fn: Any,
        ref: str | None,
        note: str = "",
        keep: bool = False,
    ) -> None:
        if time.perf_counter() - began > args.budget_s:
            result["variants"].append(
                {"variant": name, "skipped": f"time budget {args.budget_s} s spent"}
            )
            save()
            return
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            wall, outs = fn()
        except Exception as e:  # noqa: BLE001 - record and go on to the next lever
            result["variants"].append(
                {
                    "variant": name,
                    "error": f"{type(e).__name__}: {e}"[:800],
                    "trace": traceback.format_exc(limit=6)[-2000:],
                }
            )
            print(name, "failed:", e, flush=True)
            save()
            return
        row: dict[str, Any] = {
            "variant": name,
            "prompts": len(ps),
            "batch_size": batch,
            "wall_s": round(wall, 3),
            "generated_tok_per_s": round(len(ps) * new_tokens / wall, 1),
            "note": note,
        }
        if ref is not None and ref in refs:
            div = first_divergence(outs[:16], refs[ref][:16])
            row["greedy_parity_vs"] = ref
            row["identical_first16"] = sum(d is None for d in div)
            row["first_divergence_first16"] = div
        if device == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if keep:
            refs[name] = outs
        result["variants"].append(row)
        print(json.dumps(row), flush=True)
        save()

    bs = n_gate
    run_generate(model, gate[:4], 4, 4, device)  # warm-up (kernels, allocator)
    static_generate_batch(
        model, gate[:4], max_new_tokens=4, eos_ids=[], pad_id=0, cuda_graph=device == "cuda"
    )
    if not args.static_only:
        measure(
            f"hf-dynamic-bs{bs}",
            gate,
            bs,
            lambda: run_generate(model, gate, bs, new_tokens, device),
            None,
            "stock: generate, default dynamic cache",
            keep=True,
        )
    ref = f"hf-dynamic-bs{bs}"
    if device == "cuda":
        measure(
            f"static-graph-bs{bs}",
            gate,
            bs,
            lambda: run_static(model, gate, bs, new_tokens, device, True),
            ref,
            "sftgate decoder, CUDA graph",
            keep=True,
        )
    measure(
        f"static-eager-bs{bs}",
        gate,
        bs,
        lambda: run_static(model, gate, bs, new_tokens, device, False),
        ref,
        "sftgate decoder, no graph",
    )
    best = "static-graph" if device == "cuda" else "static-eager"
    for fbs in [100, 200] if not args.tiny else [6, 12]:
        measure(
            f"full-{best}-bs{fbs}",
            full,
            fbs,
            lambda fbs=fbs: run_static(model, full, fbs, new_tokens, device, device == "cuda"),
            None,
            f"the full set: {len(full)} prompts",
        )
    if args.static_only:
        result["total_s"] = round(time.perf_counter() - began, 1)
        save()
        return
    small = 64 if not args.tiny else 3
    measure(
        f"hf-dynamic-bs{small}",
        gate,
        small,
        lambda: run_generate(model, gate, small, new_tokens, device),
        ref,
    )

    def compiled() -> tuple[float, list[list[int]]]:
        t0 = time.perf_counter()
        run_generate(
            model, gate, bs, new_tokens, device, cache_implementation="static"
        )  # compile warm-up
        result.setdefault("compile_warmup_s", round(time.perf_counter() - t0, 1))
        return run_generate(model, gate, bs, new_tokens, device, cache_implementation="static")

    measure(
        f"hf-static-compiled-bs{bs}",
        gate,
        bs,
        compiled,
        ref,
        "generate(cache_implementation='static'), compile warm-up call excluded",
    )
    result["total_s"] = round(time.perf_counter() - began, 1)
    save()


if __name__ == "__main__":
    main()
