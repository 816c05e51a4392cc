"""A study as the trackers see it, from the registry alone: each finished run's params, loss,
pins, git commit, datasets, adapter folder and metrics (`sftgate.tracking`'s plain data).

The driver syncs after every recorded outcome and decision; `sftgate export mlflow STUDY` syncs a
study once, from the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftgate.search.planner import CurvePoint
from sftgate.search.registry import Registry, Run, RunState, Study
from sftgate.tracking import (
    DatasetRef,
    TrackedRun,
    TrackedStudy,
    TrackingConfig,
    numeric_metrics,
    sync,
)


def tracked_run(run: Run, study: Study, curve: Sequence[CurvePoint] = ()) -> TrackedRun:
    meta: dict[str, Any] = run.train_meta or {}
    tags = {
        **{k: v for k, v in study.pins.items() if not k.startswith("settings.")},
        "eval_set_version": run.eval_set_version,
        "sftgate.study": study.name,
        "sftgate.round": str(run.round),
        "sftgate.reason": run.reason[:5000],
    }
    if run.adapter_id:
        tags["adapter_id"] = run.adapter_id
    datasets = [
        DatasetRef("train", study.config["train_questions"], study.pins["train_set_version"])
    ]
    metrics, eval_dirs = {}, {}
    if run.metrics is not None:
        metrics["gate"] = numeric_metrics(run.metrics.to_json())
        datasets.append(DatasetRef("gate", study.config["gate_questions"], run.eval_set_version))
        if run.gate_dir:
            eval_dirs["gate"] = run.gate_dir
    full = run.full
    if full is not None and full.metrics is not None and full.eval_set_version:
        metrics["full"] = numeric_metrics(full.metrics.to_json())
        datasets.append(DatasetRef("full", study.config["full_questions"], full.eval_set_version))
        if full.dir:
            eval_dirs["full"] = full.dir
    adapter = run.adapter_path if run.adapter_path and Path(run.adapter_path).is_dir() else None
    return TrackedRun(
        key=run.id,
        params=run.params.model_dump(mode="json"),
        tags=tags,
        git_commit=meta.get("provenance", {}).get("git", {}).get("commit"),
        loss_per_step=meta.get("loss_per_step", ()),
        metrics=metrics,
        # the checkpoints, then the run's end
        curve=[(p.step, numeric_metrics(p.metrics.to_json())) for p in curve]
        + ([(run.params.max_steps, metrics["gate"])] if curve and "gate" in metrics else []),
        datasets=datasets,
        adapter_dir=adapter,
        eval_dirs=eval_dirs,
        failure=run.failure if run.state is RunState.FAILED else None,
    )


def best_by_round(runs: list[Run]) -> dict[int, float]:
    """The best gate eval_score_avg as of each finished round (every run done or failed)."""
    out: dict[int, float] = {}
    best = float("-inf")
    for round_ in sorted({r.round for r in runs}):
        of_round = [r for r in runs if r.round == round_]
        if any(r.state not in (RunState.DONE, RunState.FAILED) for r in of_round):
            break
        scores = [r.metrics.eval_score_avg for r in of_round if r.metrics is not None]
        best = max([best, *scores])
        if best > float("-inf"):
            out[round_] = best
    return out


def tracked_study(reg: Registry, study: Study) -> TrackedStudy:
    """The study's finished runs (done, or failed by themselves: a lost run runs again)."""
    runs = reg.runs(study.id)
    finished = [
        r for r in runs if r.state is RunState.DONE or (r.state is RunState.FAILED and not r.lost)
    ]
    return TrackedStudy(
        study_id=study.id,
        name=study.name,
        status=study.status,
        tags={k: v for k, v in study.pins.items() if not k.startswith("settings.")},
        decisions=reg.decisions(study.id),
        runs=[tracked_run(r, study, reg.curve(r.id)) for r in finished],
        best_by_round=best_by_round(runs),
    )


def sync_study(reg: Registry, study_name: str, config: TrackingConfig) -> str | None:
    """Mirror a recorded study into the tracker: where it went (None for `none`)."""
    return sync(tracked_study(reg, reg.require_study(study_name)), config)
