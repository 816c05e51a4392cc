"""Round benchmark: one round of three configs run one after another, then in parallel, through
the search's own `execute` (sftgate/search/driver.py) (train + gate evaluation per run, registry writes included).

    PYTHONPATH=. python benchmarks/bench_round.py --out DIR          # CUDA: random Qwen3-4B shape
    PYTHONPATH=. python benchmarks/bench_round.py --tiny --out DIR   # CPU dry run, tiny shape

The sample project (`sftgate/sample/study.yaml`: BM25 index, top-3 passages, the 100-question
gate set), with `model` replaced by a random-weight checkpoint (no weights are reachable on the
GPU machine) whose tokenizer is a byte-level BPE trained here on the sample's text, so prompts
have about as many tokens as with Qwen3's own tokenizer. The round: the seed's round-1 configs
(lr 2e-4/1e-4/3e-4, 200/300/150 steps) with steps multiplied by --steps-scale.

Modes, each with a fresh registry study and work folder:
- parallel: `LocalProcesses` over --slots (default: one per visible GPU; with a single GPU,
  three processes sharing it), what `executor: {parallel_runs: N}` does;
- sequential: the same specs in this process, one after another: the `local` executor with one
  GPU, the baseline.
Parallel runs first, so warm caches (Triton kernels, the checkpoint in the page cache) favour
the baseline. Results are written after each mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from shapes import QWEN3_4B, TINY  # noqa: E402 - benchmarks/ is on sys.path when a script runs

from sftgate.provenance import library_versions

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sftgate" / "sample"
LIBS = ("torch", "transformers", "peft", "bitsandbytes", "liger-kernel", "sftgate", "ray")


def sample_texts() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted((SAMPLE / "kb").rglob("*.md"))]
    texts.append((REPO / "docs" / "prompts" / "eval_json_v2.md").read_text(encoding="utf-8"))
    for name in ("question_v1.json", "question_v2.json"):
        texts.append((SAMPLE / "docs" / name).read_text(encoding="utf-8"))
    return texts


def sample_tokenizer(vocab_size: int) -> Any:
    """tiny-qwen3's tokenizer (bytes, Qwen3's special tokens and chat template) with BPE merges
    learnt from the sample's text: about one token per CJK character, as with Qwen3's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from sftgate.tiny import SPECIAL_TOKENS, qwen3_style_tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_texts(), trainer)
    return qwen3_style_tokenizer(tok)


def build_checkpoint(path: Path, tiny: bool, device: str) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, Qwen3Config

    tokenizer = sample_tokenizer(8192)
    shape = dict(TINY, vocab_size=8192) if tiny else QWEN3_4B
    config = Qwen3Config(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16 if device == "cuda" else torch.float32
        )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"parameters": n, "build_and_save_s": round(time.perf_counter() - t0, 1)}


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
        }
    import os

    info["cpus"] = os.cpu_count()
    return info | {"libraries": library_versions(LIBS)}


def run_mode(
    mode: str, args: argparse.Namespace, checkpoint: Path, slots: list[str | None]
) -> dict:
    from sftgate.search.driver import Specs, execute
    from sftgate.search.executors import InProcess, LocalProcesses
    from sftgate.search.inputs import pin_inputs, pinned_copies, prepare_contexts
    from sftgate.search.live import LiveView
    from sftgate.search.planner import with_changes
    from sftgate.search.registry import Registry
    from sftgate.search.study import load_study_config

    root = Path(args.workdir) / mode
    shutil.rmtree(root, ignore_errors=True)  # a fresh study: nothing reused from an earlier run
    overrides: dict[str, Any] = {
        "name": f"bench-round-{mode}",
        "model": str(checkpoint),
        "workdir": str(root / "work"),
        "registry": str(root / "registry.sqlite"),
        "decode.batch_size": args.decode_batch,
        "decode.max_new_tokens": args.max_new_tokens,
        "decode.merge_check_questions": 0,
    }
    config = load_study_config(SAMPLE / "study.yaml", overrides)
    inputs = pin_inputs(config)
    prepare_contexts(config, inputs)
    workers, inputs = pinned_copies(config, inputs)
    configs = [
        (
            with_changes(
                config.policy.round0,
                {**c, "max_steps": max(1, round(c["max_steps"] * args.steps_scale))},
            ),
            f"round-1 config {i}",
        )
        for i, c in enumerate(config.policy.round1)
    ]
    assert len(configs) == 3
    reg = Registry(config.registry)
    try:
        study, _ = reg.open_study(config.name, inputs.pins, "bench", config.model_dump(mode="json"))
        reg.add_round(study, 1, configs)
        runs = reg.runs(study.id)
        make = Specs(workers, inputs, progress=False)
        specs = [make.spec(r.id, r.params, "gate") for r in runs]
        executor = (
            LocalProcesses(slots, threads=None if slots[0] else 1)
            if mode == "parallel"
            else InProcess()
        )
        view = LiveView(study.name, [], enabled=False, slots=len(slots))
        t0 = time.perf_counter()
        try:
            outcomes = execute(specs, executor, reg, view)
        finally:
            executor.close()
        wall = time.perf_counter() - t0
        params = {spec.run_id: spec.params for spec in specs}
    finally:
        reg.close()
    return {
        "wall_s": round(wall, 1),
        "slots": slots if mode == "parallel" else ["this process"],
        "runs": [
            {
                "run_id": o.run_id,
                "params": {
                    k: getattr(params[o.run_id], k) for k in ("lr", "max_steps", "max_length")
                },
                "status": o.status,
                "failure": o.failure,
                "train_s": round(o.train_s, 1) if o.train_s else None,
                "eval_s": round(o.eval_s, 1) if o.eval_s else None,
                "train_tokens_per_s": (o.train_meta or {}).get("tokens_per_s"),
                "train_peak_gib": (o.train_meta or {}).get("peak_memory_gib"),
                "train_machinery": (o.train_meta or {}).get("machinery"),
                "eval_tokens_per_s": (o.eval_meta or {}).get("tokens_per_s"),
                "eval_peak_gib": (o.eval_meta or {}).get("peak_memory_gib"),
                "worker": o.worker,
            }
            for o in outcomes
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="results.json is written here")
    ap.add_argument("--tiny", action="store_true", help="tiny shape on the CPU (a dry run)")
    ap.add_argument("--workdir", default="/tmp/sftgate-bench-round")
    ap.add_argument("--checkpoint-dir", default="/tmp/sftgate-bench-round-model")
    ap.add_argument("--steps-scale", type=float, default=0.25, help="x the seed's round-1 steps")
    ap.add_argument("--decode-batch", type=int, default=32, help="eval prompts per batch")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--slots", default="", help="GPU per parallel process, e.g. 0,1,2 or 0,0,0")
    ap.add_argument("--modes", default="parallel,sequential")
    args = ap.parse_args()

    from sftgate.search.executors import visible_gpus

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    gpus = visible_gpus() if device == "cuda" else []
    slots: list[str | None]
    if args.slots:
        slots = [s.strip() for s in args.slots.split(",")]
    elif len(gpus) >= 3:
        slots = list(gpus[:3])
    else:
        slots = [gpus[0] if gpus else None] * 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "bench_round",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"slots": slots},
        "modes": {},
    }

    def save() -> None:
        seq, par = (result["modes"].get(m, {}).get("wall_s") for m in ("sequential", "parallel"))
        if seq and par:
            result["speedup_parallel_over_sequential"] = round(seq / par, 2)
        (out / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))

    checkpoint = Path(args.checkpoint_dir)
    result["checkpoint"] = build_checkpoint(checkpoint, args.tiny, device)
    save()
    for mode in args.modes.split(","):
        print(f"--- {mode}", flush=True)
        try:
            result["modes"][mode] = run_mode(mode, args, checkpoint, slots)
        except Exception:  # noqa: BLE001 - keep what the other mode measured
            result["modes"][mode] = {"error": traceback.format_exc()}
        print(json.dumps(result["modes"][mode], indent=1)[:3000], flush=True)
        save()
    print(json.dumps({k: v for k, v in result.items() if k != "modes"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
