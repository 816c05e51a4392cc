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
- hf-dynamic-bsN: `generate` with the default dynamic cache, batch N (the stock stack).
- static-transformers-graph-bsN: sftgate's static decoder before the fused one (and still its
  path for models other than plain Qwen3): transformers' forward over a `StaticCache`, one-token
  steps captured once per batch as a CUDA graph, GQA attention on the key/value heads.
- static-fused-graph-bsN: sftgate's default (`static_generate_batch`, `fused=True`): the fused
  Qwen3 decoder (`sftgate/qwen3_decoder.py`, Triton kernels in `sftgate/decode_kernels.py`),
  packed prefill, CUDA graph per batch. Measured twice (run-to-run spread).
- static-fused-eager-bsN: the same without the CUDA graph.
- both graph decoders at batch 16 (`sftgate eval`'s default batch size), then the full set (1,000
  prompts) at batch 100 and 200 with the default.
- with --more-baselines: `generate` at batch 64 and `generate(cache_implementation="static")`
  compiled (81 s of compile per batch shape on an H100; measured in the 2026-11-25 run).
Greedy parity: the first 16 prompts' outputs of each variant against stock `generate` and against
the transformers static decoder (first divergent position per prompt). Accuracy: last-token
prefill logits of 8 prompts from transformers' bf16 forward and from the fused decoder, each
against transformers' forward of an fp32 copy of the model (relative error, argmax agreement).
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
from pathlib import Path
from typing import Any

import torch
from shapes import QWEN3_4B, TINY  # noqa: E402 - benchmarks/ is on sys.path when a script runs

from sftgate.generate import static_generate_batch
from sftgate.provenance import library_versions


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
    model: Any,
    ps: list[list[int]],
    batch_size: int,
    new_tokens: int,
    device: str,
    cuda_graph: bool,
    fused: bool = True,
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
            fused=fused,
        )
        for i, (row, _) in zip(idx, res):
            outs[i] = row
    sync()
    return time.perf_counter() - t0, [outs[i] for i in range(len(ps))]


def first_divergence(a: list[list[int]], b: list[list[int]]) -> list[int | None]:
    """Per prompt: the first generated position where two greedy outputs differ (None: identical)."""
    return [next((j for j, (x, y) in enumerate(zip(r, s)) if x != y), None) for r, s in zip(a, b)]


def accuracy_vs_fp32(model: Any, ps: list[list[int]]) -> dict[str, Any]:
    """Last-token prefill logits, bf16 transformers vs the fused decoder, against fp32 transformers."""
    import copy

    from sftgate.qwen3_decoder import Qwen3Decoder

    def transformers_logits(m: Any) -> torch.Tensor:
        ids, mask = left_pad(ps, "cuda")
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = m(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        return out.logits[:, -1].float()

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return round(float((a.float() - b).norm() / b.norm()), 5)

    with torch.inference_mode():
        reference = transformers_logits(copy.deepcopy(model).float())
        hf = transformers_logits(model)
        fused = Qwen3Decoder(model, len(ps), max(map(len, ps))).prefill(ps)
    top = reference.argmax(-1)
    return {
        "prompts": len(ps),
        "transformers_bf16": {
            "rel_err": rel(hf, reference),
            "argmax_agrees": int((hf.argmax(-1) == top).sum()),
        },
        "fused_bf16": {
            "rel_err": rel(fused, reference),
            "argmax_agrees": int((fused.argmax(-1) == top).sum()),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--full", type=int, default=1000, help="prompts for the full-set measurement")
    ap.add_argument(
        "--budget-s", type=float, default=480.0, help="skip the remaining variants after this"
    )
    ap.add_argument(
        "--more-baselines",
        action="store_true",
        help="also generate at batch 64 and generate with a compiled static cache",
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
        "versions": library_versions(("torch", "transformers", "triton")),
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
        refs_to: tuple[str, ...],
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
        for ref in refs_to:
            if ref in refs:
                div = first_divergence(outs[:16], refs[ref][:16])
                row[f"vs_{ref}"] = {
                    "identical_of_16": sum(d is None for d in div),
                    "first_divergence": div,
                }
        if device == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if keep:
            refs[name] = outs
        result["variants"].append(row)
        print(json.dumps(row), flush=True)
        save()

    bs = n_gate
    cuda = device == "cuda"
    run_generate(model, gate[:4], 4, 4, device)  # warm-up (kernels, allocator, Triton compiles)
    for fused in (True, False):
        run_static(model, gate, bs, 4, device, cuda, fused)
        run_static(model, gate[:16], 16, 4, device, cuda, fused)
    stock, before = f"hf-dynamic-bs{bs}", f"static-transformers-graph-bs{bs}"
    measure(
        stock,
        gate,
        bs,
        lambda: run_generate(model, gate, bs, new_tokens, device),
        (),
        "stock: generate, default dynamic cache",
        keep=True,
    )
    for b in (bs, 16 if not args.tiny else 3):
        measure(
            f"static-transformers-graph-bs{b}",
            gate,
            b,
            lambda b=b: run_static(model, gate, b, new_tokens, device, cuda, fused=False),
            (stock,),
            "transformers forward over a StaticCache, CUDA graph (sftgate's decoder before)",
            keep=b == bs,
        )
        for run in ("", "-run2") if b == bs else ("",):
            measure(
                f"static-fused-graph-bs{b}{run}",
                gate,
                b,
                lambda b=b: run_static(model, gate, b, new_tokens, device, cuda),
                (stock, before),
                "fused Qwen3 decoder, CUDA graph (the sftgate eval default)",
            )
        if b == bs:
            measure(
                f"static-fused-eager-bs{b}",
                gate,
                b,
                lambda b=b: run_static(model, gate, b, new_tokens, device, False),
                (stock, before),
                "fused Qwen3 decoder, no graph",
            )
    for fbs in [100, 200] if not args.tiny else [6, 12]:
        measure(
            f"full-static-fused-graph-bs{fbs}",
            full,
            fbs,
            lambda fbs=fbs: run_static(model, full, fbs, new_tokens, device, cuda),
            (),
            f"the full set: {len(full)} prompts",
        )
    if cuda:
        result["accuracy_vs_fp32"] = accuracy_vs_fp32(model, gate[:8])
        print(json.dumps(result["accuracy_vs_fp32"]), flush=True)
    if args.more_baselines:
        small = 64 if not args.tiny else 3
        measure(
            f"hf-dynamic-bs{small}",
            gate,
            small,
            lambda: run_generate(model, gate, small, new_tokens, device),
            (stock,),
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
            (stock,),
            "generate(cache_implementation='static'), compile warm-up call excluded",
        )
    result["total_s"] = round(time.perf_counter() - began, 1)
    save()


if __name__ == "__main__":
    main()
