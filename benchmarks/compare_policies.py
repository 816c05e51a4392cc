"""The seed's rules against the adaptive policy on one study, under one GPU-time budget.

Both searches run the same study (the sample's, by default) with the same model and
`policy.budget_minutes`, at the same time on the same machine (so that both share it alike),
each in its own registry; the adaptive one trains with `lr_scheduler: constant` so that its
checkpoints are evidence about max_steps (README, "The adaptive policy"). Then it writes
`compare.json` and `compare.md` (best gate score, runs, the runs' training + evaluation time, wall
time, the stop reason and every run's learning curve) and both reports into OUT.

    python benchmarks/compare_policies.py --model /tmp/gemma-3-270m --budget-minutes 15 --out OUT

`--model` is anything `sftgate search` takes (a folder, a .gguf, tiny-qwen3); `--study` another
study YAML, `--max-steps-div N` divides every step count (a CPU smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from studies import load_study, source_env  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]


def study_for(policy: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    study = load_study(Path(args.study))
    slug = Path(args.model).name.replace(".", "-")
    study.update(
        name=f"compare-{policy}-{slug}",
        model=args.model,
        workdir=str(work / policy),
        registry=str(work / policy / "registry.sqlite"),
        executor={"kind": "local", "parallel_runs": args.parallel_runs},
        note=f"{policy} policy, budget {args.budget_minutes:g} min of run time "
        f"(benchmarks/compare_policies.py)",
    )
    p = study["policy"]
    p["kind"] = policy
    p["budget_minutes"] = args.budget_minutes
    if policy == "adaptive":
        p["round0"]["lr_scheduler"] = "constant"
    div = args.max_steps_div
    if div > 1:
        p["round0"]["max_steps"] = max(1, p["round0"]["max_steps"] // div)
        for c in p.get("round1", []):
            c["max_steps"] = max(1, c["max_steps"] // div)
        p["steps_delta"] = max(1, p.get("steps_delta", 100) // div)
    for key, value in args.set or []:
        node = study
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return study


def summary(policy: str, registry: Path, name: str, wall_s: float, rc: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from sftgate.search.registry import Registry

    reg = Registry(registry)
    try:
        study = reg.require_study(name)
        runs = reg.runs(study.id)
        decisions = reg.decisions(study.id)
        rows = []
        for r in runs:
            m = r.metrics
            rows.append(
                {
                    "run": r.id,
                    "round": r.round,
                    "status": r.status,
                    "max_steps": r.params.max_steps,
                    "lr": r.params.lr,
                    "max_length": r.params.max_length,
                    "lr_scheduler": r.params.lr_scheduler,
                    "eval_score_avg": m.eval_score_avg if m else None,
                    "schema_pass_rate": m.schema_pass_rate if m else None,
                    "seconds": (r.train_s or 0.0) + (r.eval_s or 0.0),
                    "curve": [
                        {
                            "step": p.step,
                            "eval_score_avg": p.metrics.eval_score_avg,
                            "schema_pass_rate": p.metrics.schema_pass_rate,
                        }
                        for p in reg.curve(r.id)
                    ],
                    "failure": r.failure,
                }
            )
    finally:
        reg.close()
    done = [r for r in rows if r["eval_score_avg"] is not None]
    selected = decisions[-1].get("selected_run") if decisions else None
    best = next((r for r in done if r["run"] == selected), None) or max(
        done, key=lambda r: (r["schema_pass_rate"] >= 0.98, r["eval_score_avg"]), default=None
    )
    return {
        "policy": policy,
        "study": name,
        "exit_code": rc,
        "wall_s": round(wall_s, 1),
        "run_seconds": round(sum(r["seconds"] for r in rows), 1),
        "runs": len(rows),
        "best": best
        and {k: best[k] for k in ("run", "eval_score_avg", "schema_pass_rate", "max_steps", "lr")},
        "best_score_any_schema": max((r["eval_score_avg"] for r in done), default=None),
        "stop": decisions[-1]["reason"] if decisions else None,
        "rows": rows,
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Seed vs adaptive policy: {meta['model']}",
        "",
        f"{meta['date']}, {meta['machine']}, budget {meta['budget_minutes']:g} min of run time "
        f"each, both searches at once, parallel_runs {meta['parallel_runs']}.",
        "",
        "| policy | selected run: gate score (schema) | highest score | runs | run time (min) | wall (min) | stop |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        b = r["best"]
        best = (
            f"{b['eval_score_avg']:.2f} ({b['schema_pass_rate']:.2f}; {b['run']}, "
            f"{b['max_steps']} steps, lr {b['lr']:g})"
            if b
            else "-"
        )
        top = r["best_score_any_schema"]
        lines.append(
            f"| {r['policy']} | {best} | {'-' if top is None else f'{top:.2f}'} | {r['runs']} | {r['run_seconds'] / 60:.1f} | "
            f"{'-' if r['wall_s'] is None else format(r['wall_s'] / 60, '.1f')} | {r['stop']} |"
        )
    for r in results:
        lines += ["", f"## {r['policy']}: runs and curves", ""]
        lines += [
            "| run | round | steps | lr | score | schema | s | curve (step: score) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["rows"]:
            curve = ", ".join(f"{p['step']}: {p['eval_score_avg']:.1f}" for p in row["curve"])
            score = "-" if row["eval_score_avg"] is None else f"{row['eval_score_avg']:.2f}"
            schema = "-" if row["schema_pass_rate"] is None else f"{row['schema_pass_rate']:.2f}"
            lines.append(
                f"| {row['run']} | {row['round']} | {row['max_steps']} | {row['lr']:g} | {score} | "
                f"{schema} | {row['seconds']:.0f} | {curve} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Best gate score so far against the runs' time spent, one line per policy, and each
    run's learning curve (score against step) beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r, color in zip(results, ("tab:blue", "tab:orange")):
        spent, best, xs, ys = 0.0, float("-inf"), [0.0], [None]
        for row in r["rows"]:
            spent += row["seconds"] / 60
            if row["eval_score_avg"] is not None:
                best = max(best, row["eval_score_avg"])
            xs.append(spent)
            ys.append(best if best > float("-inf") else None)
        ax.step(
            xs,
            [y if y is not None else float("nan") for y in ys],
            where="post",
            color=color,
            label=r["policy"],
        )
        for row in r["rows"]:
            points = [(p["step"], p["eval_score_avg"]) for p in row["curve"]]
            if row["eval_score_avg"] is not None:
                points.append((row["max_steps"], row["eval_score_avg"]))
            if points:
                bx.plot(*zip(*sorted(points)), marker="o", ms=3, color=color, alpha=0.7)
        bx.plot([], [], color=color, label=r["policy"])
    ax.set(
        xlabel="runs' training + evaluation time (min, summed)",
        ylabel="best eval_score_avg so far",
        title="best score against time spent",
    )
    bx.set(
        xlabel="training step",
        ylabel="eval_score_avg (gate set)",
        title="every run's curve (checkpoints and end)",
    )
    for a in (ax, bx):
        a.axhline(95, color="gray", ls="--", lw=1)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"
    except ImportError:
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--study", default=str(ROOT / "sftgate" / "sample" / "study.yaml"))
    ap.add_argument("--budget-minutes", type=float, required=True)
    ap.add_argument("--parallel-runs", type=int, default=3)
    ap.add_argument("--max-steps-div", type=int, default=1)
    ap.add_argument(
        "--set",
        nargs=2,
        action="append",
        metavar=("KEY", "YAML"),
        help="override a study key (dotted) in both studies",
    )
    ap.add_argument("--work", default=None, help="where the studies write (default OUT/work)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = source_env(ROOT, PYTHONUNBUFFERED="1")
    procs = {}
    for policy in ("seed", "adaptive"):
        study = study_for(policy, args, work)
        path = work / f"{policy}.yaml"
        path.write_text(yaml.safe_dump(study, allow_unicode=True, sort_keys=False), "utf-8")
        log = (out / f"{policy}.log").open("w", encoding="utf-8")
        cmd = [sys.executable, "-m", "sftgate", "search", "--config", str(path)]
        procs[policy] = (
            study,
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
            time.time(),
            log,
        )
    results = []
    for policy, (study, proc, start, log) in procs.items():
        rc = proc.wait()
        wall = time.time() - start
        log.close()
        results.append(summary(policy, Path(study["registry"]), study["name"], wall, rc))
        report = Path(study["workdir"]) / "report.md"
        if report.exists():
            shutil.copy(report, out / f"report_{policy}.md")
    meta = {
        "model": args.model,
        "study": args.study,
        "budget_minutes": args.budget_minutes,
        "parallel_runs": args.parallel_runs,
        "max_steps_div": args.max_steps_div,
        "overrides": args.set,
        "machine": machine(),
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or None,
    }
    (out / "compare.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1), "utf-8"
    )
    (out / "compare.md").write_text(markdown(results, meta) + "\n![](compare.png)\n", "utf-8")
    plot(results, out / "compare.png")
    print((out / "compare.md").read_text("utf-8"))


if __name__ == "__main__":
    main()
