"""Search benchmark: the sample study's seed search end to end (`sftgate search`, a process of its
own, validation, index, ceiling, every round, the report), its wall time and where it went
(train steps, decoding, everything else), for this tree's code and, in the same call, an older
tree's (the baseline).

    # CPU smoke (tiny-qwen3, a few steps and questions; a smoke test, not a performance result)
    PYTHONPATH=. python benchmarks/bench_search.py --preset cpu-smoke --out DIR
    # one GPU: the random-weight Qwen3-4B shape (benchmarks/shapes.py), the seed's steps / 5
    PYTHONPATH=. python benchmarks/bench_search.py --model random-qwen3-4b --steps-scale 0.2 --out DIR
    # a real model (a folder or a .gguf file), the previous commit as the baseline
    git archive HEAD~1 | tar -x -C /tmp/base   # or any checkout of the older code
    PYTHONPATH=. python benchmarks/bench_search.py --model /models/m.gguf --baseline-src /tmp/base --out DIR

The study is `sftgate/sample/study.yaml` (`--study study_cpu.yaml` for the CPU demo's settings)
with the model replaced, every max_steps (and steps_delta) multiplied by --steps-scale, the smoke
bar at 0 and `allow_unreachable` (a random model must walk through the rounds), optionally the
question sets cut to their first N questions and decoding capped. Each tree runs the same study
in a fresh registry and work folder under DIR, with its source first on PYTHONPATH; this tree runs first,
so warm caches (the checkpoint in the page cache, compiled kernels) favour the baseline.

The split comes from what the runs recorded: train steps are the training loops' wall time
(`wall_time_s` of each adapter's metadata), decoding the decode loops' (`wall_time_s` of every
evaluation's `eval_meta.json`: gate, checkpoints, full set); the rest of the search's wall time
(process start, model loads, index and ceiling, merges, merge checks, scoring, registry, report)
is "everything else". Where the code records `timings` (the resident-worker commit on), their
parts are summed too. Writes DIR/search.json (machine, libraries, git commits, date, settings,
results) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from studies import load_study, source_env  # benchmarks/ is on sys.path when a script runs

from sftgate.provenance import library_versions, source_sha256

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sftgate" / "sample"
LIBS = ("torch", "transformers", "peft", "bitsandbytes", "liger-kernel", "bm25s", "ray")
RANDOM_4B = "random-qwen3-4b"

PRESETS: dict[str, dict[str, Any]] = {
    # A minute or two of tiny-qwen3 on a CPU: rounds 0-2 with the demo's settings, few questions.
    "cpu-smoke": {
        "model": "tiny-qwen3",
        "study": "study_cpu.yaml",
        "steps_scale": 0.5,
        "train_questions": 40,
        "gate_questions": 12,
        "full_questions": 24,
        "max_new_tokens": 16,
        "batch_size": 12,
        "merge_check_questions": 2,
    },
}

# Run inside each tree's own process (PYTHONPATH = its source): what its registry and run
# folders recorded, through APIs every tree since the search package has.
READ_RUNS = """
import json, sys
from pathlib import Path
from sftgate.search.registry import Registry
registry, work, out = sys.argv[1:4]
reg = Registry(registry)
runs = [reg.run_json(r.id) for r in reg.runs()]
decisions = [d for s in reg.studies() for d in reg.decisions(s.id)]
reg.close()
evals = {}
for meta in sorted(Path(work, "runs").glob("*/*/eval_meta.json")):
    evals[str(meta.parent.relative_to(Path(work, "runs")))] = json.loads(meta.read_text())
Path(out).write_text(json.dumps({"runs": runs, "decisions": decisions, "evals": evals}, default=str))
"""


def git_state(src: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        done = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
        }
    return info | {"libraries": library_versions(LIBS)}


def prepare_model(args: argparse.Namespace) -> str:
    """The model id the study names; the random 4B shape is built (once) under DIR."""
    if args.model != RANDOM_4B:
        return str(args.model)
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_round import build_checkpoint

    path = Path(args.out) / "random-qwen3-4b"
    if not (path / "config.json").exists():
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(
            f"building the random Qwen3-4B shape in {path}: {build_checkpoint(path, False, device)}"
        )
    return str(path)


def first(source: Path, n: int | None, out: Path) -> str:
    """The question set at `source`, cut to its first n questions (a new file), or itself."""
    if n is None:
        return str(source)
    items = json.loads(source.read_text(encoding="utf-8"))
    out.write_text(json.dumps(items[:n], ensure_ascii=False), encoding="utf-8")
    return str(out)


def study_file(args: argparse.Namespace, model: str, tree: str, src: Path) -> Path:
    """The benchmark's study: the sample's, scaled as the arguments say, for one tree."""
    study = load_study(SAMPLE / args.study)
    # A setting this tree's code added at its default (null) is left out for an older tree,
    # which would refuse the unknown key: the same study, as that tree can read it.
    own = yaml.safe_load((src / "sftgate" / "sample" / args.study).read_text(encoding="utf-8"))
    for key in [k for k, v in study.items() if v is None and k not in own]:
        del study[key]
    root = Path(args.out) / tree
    shutil.rmtree(root, ignore_errors=True)  # a fresh study: nothing reused
    root.mkdir(parents=True)
    study["name"] = f"bench-search-{tree}"
    study["model"] = model
    for key, n in (
        ("train", args.train_questions),
        ("gate", args.gate_questions),
        ("full", args.full_questions),
    ):
        study[f"{key}_questions"] = first(Path(study[f"{key}_questions"]), n, root / f"{key}.json")
    study["workdir"] = str(root / "work")
    study["registry"] = str(root / "registry.sqlite")
    study["note"] = "bench_search.py: a timing run, not a result"
    study["executor"] = yaml.safe_load(args.executor)
    decode = study.setdefault("decode", {})
    for key in ("max_new_tokens", "batch_size", "merge_check_questions"):
        if getattr(args, key) is not None:
            decode[key] = getattr(args, key)
    policy = study["policy"]
    policy["allow_unreachable"] = True
    policy.setdefault("thresholds", {})["smoke_schema"] = 0.0
    scale = lambda steps: max(1, round(steps * args.steps_scale))  # noqa: E731
    policy["round0"]["max_steps"] = scale(policy["round0"]["max_steps"])
    for change in policy["round1"]:
        change["max_steps"] = scale(change["max_steps"])
    policy["round1_reasons"] = [  # the sample's name the unscaled steps
        f"round-1 config {i}: lr {c['lr']:g}, {c['max_steps']} steps (x {args.steps_scale:g})"
        for i, c in enumerate(policy["round1"])
    ]
    policy["steps_delta"] = scale(policy.get("steps_delta", 100))
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study, allow_unicode=True), encoding="utf-8")
    return path


def run_tree(tree: str, src: Path, args: argparse.Namespace, model: str, home: Path) -> dict:
    """`sftgate search` with this tree's code in a process of its own; then what it recorded."""
    config = study_file(args, model, tree, src)
    root = config.parent
    env = source_env(src, SFTGATE_HOME=str(home))
    env["PYTHONUNBUFFERED"] = "1"
    print(f"[{tree}] sftgate search --config {config} (code: {src})", flush=True)
    t0 = time.perf_counter()
    with open(root / "search.log", "w", encoding="utf-8") as log:
        search = subprocess.Popen(
            [sys.executable, "-m", "sftgate", "search", "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,  # its process group: a timeout ends its workers too
        )
        try:
            code: int | str = search.wait(timeout=args.tree_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
            code = f"timeout after {args.tree_timeout_s} s (what it recorded until then)"
    wall = time.perf_counter() - t0
    recorded = root / "recorded.json"
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            READ_RUNS,
            str(root / "registry.sqlite"),
            str(root / "work"),
            str(recorded),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if read.returncode != 0:
        raise SystemExit(f"[{tree}] reading its registry failed:\n{read.stderr[-3000:]}")
    data = json.loads(recorded.read_text(encoding="utf-8"))
    log_tail = (root / "search.log").read_text(encoding="utf-8")[-1500:]
    return (
        {
            "src": str(src),
            "git": git_state(src),
            "source_sha256": source_sha256(src / "sftgate"),  # the code, whatever git says
            "exit_code": code,
            "wall_s": round(wall, 1),
        }
        | split(wall, data)
        | ({"log_tail": log_tail} if code != 0 else {})
    )


def split(wall: float, data: dict) -> dict[str, Any]:
    """Where the wall time went, from the runs' metadata."""
    runs = data["runs"]
    train_steps = sum((r.get("train_meta") or {}).get("wall_time_s") or 0.0 for r in runs)
    decode = sum(m.get("wall_time_s") or 0.0 for m in data["evals"].values())
    parts: dict[str, float] = {}
    for r in runs:
        for name, s in ((r.get("train_meta") or {}).get("timings") or {}).items():
            parts[f"train.{name}"] = parts.get(f"train.{name}", 0.0) + s
    for m in data["evals"].values():
        for name, s in (m.get("timings") or {}).items():
            parts[f"eval.{name}"] = parts.get(f"eval.{name}", 0.0) + s
    loads = [
        (r.get("worker") or {}).get("model_loads")
        for r in runs
        if (r.get("worker") or {}).get("pid")
    ]
    decision = data["decisions"][-1] if data["decisions"] else {}
    return {
        "runs": len(runs),
        "runs_done": sum(r["status"] == "done" for r in runs),
        "evaluations": len(data["evals"]),
        "split_s": {
            "train_steps": round(train_steps, 1),
            "decode": round(decode, 1),
            "everything_else": round(wall - train_steps - decode, 1),
        },
        "recorded_parts_s": {k: round(v, 2) for k, v in sorted(parts.items())},
        "worker_model_loads": loads or None,
        "train_s_sum": round(sum(r.get("train_s") or 0.0 for r in runs), 1),
        "eval_s_sum": round(sum(r.get("eval_s") or 0.0 for r in runs), 1),
        "final_decision": {k: decision.get(k) for k in ("action", "round", "reason")},
        "per_run": [
            {
                "id": r["id"],
                "status": r["status"],
                "max_steps": (r.get("params") or {}).get("max_steps"),
                "train_s": r.get("train_s"),
                "eval_s": r.get("eval_s"),
                "train_steps_s": (r.get("train_meta") or {}).get("wall_time_s"),
                "decode_s": (r.get("eval_meta") or {}).get("wall_time_s"),
            }
            for r in runs
        ],
    }


def table(results: dict[str, dict]) -> str:
    rows = [("", "wall s", "train steps s", "decode s", "everything else s", "runs")]
    for tree, r in results.items():
        s = r["split_s"]
        rows.append(
            (tree, r["wall_s"], s["train_steps"], s["decode"], s["everything_else"], r["runs"])
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="DIR: search.json, each tree's study and logs")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="defaults for the other options")
    ap.add_argument(
        "--model", default="tiny-qwen3", help=f"tiny-qwen3, a folder, a .gguf, or {RANDOM_4B}"
    )
    ap.add_argument("--study", default="study.yaml", help="the sample study file to start from")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every max_steps")
    ap.add_argument("--train-questions", type=int, help="cut the training set to its first N")
    ap.add_argument("--gate-questions", type=int, help="cut the gate set to its first N")
    ap.add_argument("--full-questions", type=int, help="cut the full set to its first N")
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--batch-size", type=int, help="decode batch size")
    ap.add_argument("--merge-check-questions", type=int)
    ap.add_argument("--executor", default="{kind: local}", help="the study's executor: (YAML)")
    ap.add_argument("--baseline-src", type=Path, help="an older tree's root, run as the baseline")
    ap.add_argument(
        "--baseline-commit",
        help="the baseline's commit, recorded when its tree is not a git checkout",
    )
    ap.add_argument("--label", default="", help="what this measurement is, kept in search.json")
    ap.add_argument(
        "--tree-timeout-s",
        type=float,
        help="stop a tree's search after this many seconds and report what it recorded",
    )
    ap.add_argument(
        "--trees",
        default="current,baseline",
        help="which trees run, in this order (baseline: only with --baseline-src); one tree's "
        "search at a time, so a long baseline may run in a later invocation",
    )
    args = ap.parse_args()
    if args.preset:
        ap.set_defaults(**PRESETS[args.preset])
        args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"  # the data directory both trees use (tiny-qwen3 built here once)
    env = source_env(REPO, SFTGATE_HOME=str(home))
    subprocess.run(
        [sys.executable, "-c", "from sftgate.models import tiny_model_dir; tiny_model_dir()"],
        env=env,
        check=True,
    )
    model = prepare_model(args)
    sources = {"current": REPO}
    if args.baseline_src is not None:
        sources["baseline"] = args.baseline_src.resolve()
    wanted = [t.strip() for t in args.trees.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in ("current", "baseline")]
    if unknown or not wanted:
        ap.error(f"--trees takes current and/or baseline, got {args.trees!r}")
    trees = {t: sources[t] for t in wanted if t in sources}
    if not trees:
        ap.error("--trees baseline needs --baseline-src")
    info = machine()
    results: dict[str, dict] = {}
    for tree, src in trees.items():
        results[tree] = run_tree(tree, src, args, model, home)
        if tree == "baseline" and results[tree]["git"]["commit"] is None:
            results[tree]["git"]["commit"] = args.baseline_commit
        report = write_report(out, args, info, results)
    print(table(results))
    if "speedup_wall" in report:
        print(f"baseline / current wall time: {report['speedup_wall']}x")
    print(f"-> {out / 'search.json'} ({report['label']})")
    return 0


def write_report(
    out: Path, args: argparse.Namespace, info: dict[str, Any], results: dict[str, dict]
) -> dict[str, Any]:
    """DIR/search.json with the trees that have run so far (written after each)."""
    on_gpu = "gpus" in info
    report = {
        "benchmark": "bench_search",
        "label": args.label
        or (
            "GPU"
            if on_gpu
            else "CPU smoke: checks that the benchmark runs; not a performance result"
        ),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }
    finished = all(r["exit_code"] == 0 for r in results.values())
    # a ratio only for two finished searches on a GPU (a CPU smoke run's is no result)
    if {"baseline", "current"} <= set(results) and on_gpu and finished:
        report["speedup_wall"] = round(
            results["baseline"]["wall_s"] / results["current"]["wall_s"], 2
        )

    (out / "search.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
