"""Where the static decoder's step time goes on a GPU: kernel time against gaps, per kernel kind.

    PYTHONPATH=. python benchmarks/profile_decode.py --out DIR   # CUDA only: Qwen3-4B shape, bf16

One batch of the gate-set shape (100 random prompts of 900-1,100 tokens, as in bench_eval.py) is
prefilled, then one decode step (at the cache slot of the middle of a 256-token answer) is timed
eagerly and as a CUDA graph replay, for both static decoders: transformers' forward over a
`StaticCache` (sftgate's decoder before the fused one) and the fused Qwen3 decoder
(`sftgate/qwen3_decoder.py`). A torch.profiler trace of 10 graph replays gives, per step, the
kernels launched, the sum of their durations, the time the GPU was busy (union of kernel
intervals; span minus busy = gaps) and the time per kernel name; the prefill gets the same
breakdown. The floor: weights plus the cache slots a step must read, over the measured
device-to-device copy bandwidth. Writes `profile_decode.json` to DIR.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from bench_eval import build_model, prompts  # noqa: E402 - benchmarks/ is on sys.path

from sftgate.generate import transformers_decoder
from sftgate.provenance import device_name, library_versions
from sftgate.qwen3_decoder import Qwen3Decoder

NEW_TOKENS = 256


def timed(fn: Any, reps: int) -> float:
    """Median milliseconds of `fn()` over `reps` runs (CUDA events, after two warm-up runs)."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def kernel_split(prof: Any, steps: int) -> dict[str, Any]:
    """Per step: summed kernel time, busy time (union of kernel intervals), top kernels by time."""
    kernels = [
        e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.name
    ]
    intervals = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, end = 0.0, -1.0
    for s, e in intervals:
        if s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    span = intervals[-1][1] - intervals[0][0] if intervals else 0.0
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        by_name[e.name[:90]].append(e.time_range.end - e.time_range.start)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:25]
    return {
        "kernels_per_step": len(kernels) / steps,
        "kernel_sum_ms_per_step": sum(e - s for s, e in intervals) / steps / 1000,
        "busy_ms_per_step": busy / steps / 1000,
        "span_ms_per_step": span / steps / 1000,
        "top_kernels": [
            {"name": n, "count_per_step": len(d) / steps, "ms_per_step": sum(d) / steps / 1000}
            for n, d in top
        ],
    }


def profile_steps(step: Any, steps: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return kernel_split(prof, steps)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read plus written per second (the memory ceiling)."""
    src = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (timed(lambda: dst.copy_(src), 20) / 1000)


def decoders(model: Any, batch: list[list[int]], cache_len: int) -> dict[str, Any]:
    """name -> (prefill function, step function of (token, position, slot) -> logits)."""

    def transformers_prefill() -> Any:
        return transformers_decoder(model, batch, cache_len, pad_id=0)

    def fused_prefill() -> Any:
        decoder = Qwen3Decoder(model, len(batch), cache_len)
        return decoder.prefill(batch), decoder.step

    return {"transformers": transformers_prefill, "fused": fused_prefill}


def measure(prefill: Any, batch: list[list[int]], width: int) -> dict[str, Any]:
    with torch.inference_mode():
        prefill()  # warm-up
        row: dict[str, Any] = {"prefill_s": timed(prefill, 3) / 1000}
        row["prefill_profile"] = profile_steps(prefill, 1)
        logits, forward = prefill()
        token = logits.argmax(-1, keepdim=True)
        position = torch.tensor([[len(p) + NEW_TOKENS // 2] for p in batch], device="cuda")
        slot = torch.tensor([width + NEW_TOKENS // 2], device="cuda")

        def step() -> None:
            token.copy_(forward(token, position, slot).argmax(-1, keepdim=True))

        row["eager_step_ms"] = timed(step, 10)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        row["graph_step_ms"] = timed(graph.replay, 50)
        row["graph_profile"] = profile_steps(graph.replay, 10)
        del graph
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(False, "cuda")
    batch = prompts(args.batch, model.config.vocab_size)
    width = max(map(len, batch))
    cache_len = -(-(width + NEW_TOKENS) // 64) * 64
    cfg = model.config
    visible = sum(len(p) for p in batch) + args.batch * (NEW_TOKENS // 2 + 1)
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2 * visible
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth()
    result: dict[str, Any] = {
        "benchmark": "static decoder step profile, Qwen3-4B shape (random weights), bf16",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(),
        "versions": library_versions(("torch", "transformers", "triton")),
        "batch": args.batch,
        "cache_len": cache_len,
        "step_at_slot": width + NEW_TOKENS // 2,
        "copy_bandwidth_GBps": round(bandwidth / 1e9),
        "step_floor_ms": {
            "weights_GB": round(weight_bytes / 1e9, 2),
            "visible_kv_GB": round(kv_bytes / 1e9, 2),
            "ms_at_copy_bandwidth": round((weight_bytes + kv_bytes) / bandwidth * 1000, 2),
        },
        "variants": {},
    }
    t0 = time.perf_counter()
    for name, prefill in decoders(model, batch, cache_len).items():
        row = measure(prefill, batch, width)
        result["variants"][name] = row
        (out / "profile_decode.json").write_text(json.dumps(result, indent=2) + "\n")
        print(name, {k: v for k, v in row.items() if "profile" not in k}, flush=True)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    (out / "profile_decode.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}))
    for name, row in result["variants"].items():
        for kind in ("graph_profile", "prefill_profile"):
            p = row[kind]
            print(name, kind, {k: v for k, v in p.items() if k != "top_kernels"})
            for t in p["top_kernels"][:12]:
                print(f"   {t['ms_per_step']:.3f} ms  x{t['count_per_step']:.0f}  {t['name'][:80]}")


if __name__ == "__main__":
    main()
