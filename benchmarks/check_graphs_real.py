"""A real model trained eager and with CUDA graphs through `sftgate.train.train`: the loss curves
and the adapters compared (the GPU check on real weights for `cuda_graphs`).

    PYTHONPATH=.:benchmarks python benchmarks/check_graphs_real.py --model /path/to/gemma-3-270m \
        --out DIR [--steps 40] [--dropout 0]

Data: the sample study's training set (sftgate/sample/study.yaml: its prompt, its train questions,
passages retrieved from its kb/ with its retrieval settings). Two runs, the same config except
`cuda_graphs: false` / `true` (lora_dropout 0 by default, so both draw no random numbers while
training and should agree up to bf16 noise). Written to DIR/check_real.json: both loss curves,
their max abs/rel difference, each adapter tensor's max abs difference relative to its largest
value, the runs' s/step, peak memory and what the graphed run captured. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from studies import load_study  # noqa: E402 - benchmarks/ is on sys.path when a script runs

from sftgate.contexts import write_contexts
from sftgate.index import IndexSettings, build_index, retrieve_contexts
from sftgate.params import TrainParams
from sftgate.paths import SAMPLE_DIR
from sftgate.questions import load_questions
from sftgate.train import TrainConfig, train


def sample_contexts(work: Path) -> tuple[dict[str, Any], Path]:
    """The sample study and its training questions' contexts (index built under `work`)."""
    study = load_study(SAMPLE_DIR / "study.yaml")
    retrieval = study["retrieval"]
    index_dir = work / "index"
    build_index(retrieval["corpus"], index_dir, IndexSettings(**retrieval.get("settings", {})))
    questions = load_questions(study["train_questions"])
    meta, rows = retrieve_contexts(index_dir, questions, retrieval["top_k"])
    path = work / "contexts_train.jsonl"
    write_contexts(path, meta, rows)
    return study, path


def run(args: argparse.Namespace, study: dict[str, Any], contexts: Path, graphs: bool) -> dict:
    params = TrainParams(
        max_steps=args.steps, lora_dropout=args.dropout, max_length=args.max_length
    )
    config = TrainConfig(
        model=args.model,
        questions=study["train_questions"],
        contexts=str(contexts),
        prompt=study["prompt"],
        out=str(Path(args.out) / ("graphed" if graphs else "eager")),
        gradient_checkpointing=False,
        cuda_graphs=graphs,
        params=params,
    )
    return train(config, progress=False).metadata


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a local model folder")
    ap.add_argument("--out", required=True, help="DIR (adapters and check_real.json)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--max-length", type=int, default=1024)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("check_graphs_real.py needs CUDA", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    study, contexts = sample_contexts(out)
    eager = run(args, study, contexts, graphs=False)
    graphed = run(args, study, contexts, graphs=True)
    e, g = torch.tensor(eager["loss_per_step"]), torch.tensor(graphed["loss_per_step"])
    a = load_file(str(out / "eager" / "adapter_model.safetensors"))
    b = load_file(str(out / "graphed" / "adapter_model.safetensors"))
    rel = {k: float((b[k] - a[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a}
    result = {
        "model": args.model,
        "steps": args.steps,
        "lora_dropout": args.dropout,
        "loss_max_abs_diff": float((g - e).abs().max()),
        "loss_max_rel_diff": float(((g - e).abs() / e.abs()).max()),
        "adapter_max_rel_diff": max(rel.values()),
        "adapter_worst_tensor": max(rel, key=lambda k: rel[k]),
        "runs": {
            name: {
                "s_per_step": round(m["wall_time_s"] / args.steps, 4),
                "tokens_per_s": m["tokens_per_s"],
                "peak_memory_gib": m["peak_memory_gib"],
                "machinery": m["machinery"],
                "cuda_graphs": m["cuda_graphs"],
                "loss_per_step": m["loss_per_step"],
            }
            for name, m in (("eager", eager), ("graphed", graphed))
        },
        "provenance": graphed["provenance"],
    }
    (out / "check_real.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: v for k, v in result.items() if k not in ("runs", "provenance")}, indent=2)
    )
    for name, r in result["runs"].items():
        print(name, r["s_per_step"], "s/step", r["peak_memory_gib"], "GiB", r["cuda_graphs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
