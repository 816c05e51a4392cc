"""One run, from plain data to an outcome: train (unless a matching adapter is already there) and
evaluate on the gate set, or evaluate a finished adapter on the full set.

`execute_run(spec) -> RunOutcome` touches no registry and never raises for a failed run, so any
executor (this process, a child process per GPU, a Ray task on another node) can run a spec and
hand the outcome back to the search's driver, which alone writes the registry.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sftgate.artifacts import (
    EvalResult,
    adapter_exists,
    checkpoint_dir,
    finished_evaluation,
    read_adapter_metadata,
)
from sftgate.config import pin_view
from sftgate.errors import SftgateError
from sftgate.evaluate import DecodeSettings, EvalConfig, evaluate
from sftgate.fsutil import atomic_write_text
from sftgate.models import Quantization
from sftgate.params import TrainParams
from sftgate.resident import ResidentBase
from sftgate.scoring import Metrics, QuestionScore
from sftgate.search.registry import Checkpoint
from sftgate.train import TrainConfig, train


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, as plain values (picklable; the paths must be reachable where it
    runs). split "gate": train (unless the adapter is complete) and evaluate on the gate set;
    split "full": evaluate the finished adapter on the full set."""

    run_id: str
    split: Literal["gate", "full"]
    params: TrainParams
    model: str
    quantization: Quantization
    gradient_checkpointing: bool | None
    prompt: str
    train_questions: str
    train_contexts: str | None
    eval_questions: str
    eval_contexts: str | None
    run_dir: str
    decode: DecodeSettings
    # What an adapter found on disk must have been trained with, to be reused by a restart.
    expected: dict[str, str] = field(default_factory=dict)
    progress: bool = True
    checkpoint_steps: tuple[int, ...] = ()  # gate split: also evaluate the adapter at these steps
    cuda_graphs: bool | None = None  # as TrainConfig.cuda_graphs (None: auto)

    @property
    def adapter_dir(self) -> Path:
        return Path(self.run_dir) / "adapter"

    @property
    def eval_dir(self) -> Path:
        return Path(self.run_dir) / self.split


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    split: Literal["gate", "full"]
    status: Literal["done", "failed"]
    metrics: Metrics | None = None
    question_scores: list[QuestionScore] | None = None
    train_meta: dict[str, Any] | None = None
    eval_meta: dict[str, Any] | None = None
    failure: str | None = None
    train_s: float | None = None
    eval_s: float | None = None
    # True when the process running it died (a worker killed, a node lost): not the run's fault,
    # so resuming the study runs it again. `failure` says what happened.
    lost: bool = False
    # True when it failed because of its environment (an OSError: a download, a file, a full
    # disk), not its configuration: the run stays planned and the search stops until it is fixed.
    environment: bool = False
    worker: dict[str, Any] | None = None  # where it ran: host, pid, devices
    curve: list[Checkpoint] = field(default_factory=list)  # the gate set at checkpoints
    # where this attempt's train_s + eval_s went (`run_timings`)
    timings: dict[str, float] = field(default_factory=dict)


def lost_outcome(spec: RunSpec, reason: str, worker: dict[str, Any] | None) -> RunOutcome:
    return RunOutcome(spec.run_id, spec.split, "failed", failure=reason, lost=True, worker=worker)


def adapter_mismatches(meta: dict[str, Any], spec: RunSpec) -> list[str]:
    wanted = {**spec.expected, "train_params": pin_view(spec.params)}
    wrong = [k for k, v in wanted.items() if meta.get(k) != v]
    if not set(spec.checkpoint_steps) <= set(meta.get("checkpoints", [])):
        wrong.append("checkpoints")
    return wrong


def execute_run(
    spec: RunSpec,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    base: ResidentBase | None = None,
) -> RunOutcome:
    """Do one run and return its outcome (`on_stage`: training, evaluating; `on_progress`: the
    stage's steps or questions done, of all); any error (out of memory, NaN loss, a crash) is a
    failed outcome with its reason, and the traceback is written to RUN_DIR/failure-SPLIT.txt.
    `base`: the worker's base model, kept loaded from run to run (a run that fails drops it, so
    the next run loads it afresh); None loads the model for this run alone.
    An OSError (a model that cannot be downloaded, a file that cannot be read or written, a full
    disk) is the environment's failure, not the configuration's: `environment` says so.
    A restart reuses a complete adapter that matches the spec, and the evaluation resumes from
    its last finished batch."""
    stage = on_stage or (lambda _: None)
    train_s: float | None = None
    train_meta = None
    try:
        train_meta = reusable_adapter(spec)
        if train_meta is None:
            stage("training")
            t0 = time.perf_counter()
            train_meta = train_adapter(spec, on_progress, base)
            train_s = time.perf_counter() - t0
        stage("evaluating")
        curve, eval_s, metas = evaluate_checkpoints(
            spec, train_meta["adapter_id"], on_progress, base
        )
        result = finished_evaluation(spec.eval_dir, train_meta["adapter_id"])
        if result is not None:  # killed after the evaluation, before the registry heard of it
            eval_s += evaluation_seconds(result.meta)
        else:
            t0 = time.perf_counter()
            result = evaluate_adapter(spec, on_progress, base)
            eval_s += time.perf_counter() - t0
        return RunOutcome(
            spec.run_id,
            spec.split,
            "done",
            metrics=Metrics.model_validate(result.metrics),
            question_scores=result.scores,
            train_meta=train_meta,
            eval_meta=result.meta,
            train_s=train_s,
            eval_s=eval_s,
            curve=curve,
            timings=run_timings(
                train_meta if train_s is not None else None,
                [*metas, result.meta],
                (train_s or 0.0) + eval_s,
            ),
        )
    except Exception as e:  # noqa: BLE001 - one run's failure is recorded; the round goes on
        if base is not None:
            base.drop()
        reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line
        Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(spec.run_dir) / f"failure-{spec.split}.txt", traceback.format_exc())
        return RunOutcome(
            spec.run_id,
            spec.split,
            "failed",
            train_meta=train_meta,
            failure=reason[:2000],
            train_s=train_s,
            environment=isinstance(e, OSError),
        )


def reusable_adapter(spec: RunSpec) -> dict[str, Any] | None:
    """The metadata of a complete adapter left by an earlier attempt, if it matches the spec;
    None when there is none and the gate split should train one."""
    if adapter_exists(spec.adapter_dir):
        meta = read_adapter_metadata(spec.adapter_dir)
        wrong = adapter_mismatches(meta, spec)
        if wrong:
            raise SftgateError(
                f"{spec.adapter_dir} holds an adapter trained with other {', '.join(wrong)}; "
                "delete it to train this run again"
            )
        return meta
    if spec.split == "full":
        raise SftgateError(f"no finished adapter at {spec.adapter_dir} to evaluate")
    return None


TIMED_PARTS = ("model_load", "train_steps", "merge", "decode", "merge_check", "scoring")


def run_timings(
    train_meta: dict[str, Any] | None, eval_metas: list[dict[str, Any]], total_s: float
) -> dict[str, float]:
    """Where a run's time went: each part of its training's and evaluations' recorded `timings`
    summed (`train_meta` None when the adapter was reused), `other_s` the rest of `total_s`
    (examples, LoRA setup, saving, the runner's own work)."""
    recorded = [m["timings"] for m in [train_meta or {}, *eval_metas] if m.get("timings")]
    parts = {f"{p}_s": round(sum(t.get(f"{p}_s", 0.0) for t in recorded), 3) for p in TIMED_PARTS}
    other = max(0.0, total_s - sum(parts.values()))
    return {**parts, "other_s": round(other, 3), "total_s": round(total_s, 3)}


def evaluation_seconds(meta: dict[str, Any]) -> float:
    """A finished evaluation's wall time: all of it where recorded (`timings`), else its
    decoding's (evaluations written before the timings were)."""
    timings = meta.get("timings")
    return float(timings["total_s"] if timings else meta["wall_time_s"])


def evaluate_checkpoints(
    spec: RunSpec,
    adapter_id: str,
    on_progress: Callable[[int, int], None] | None,
    base: ResidentBase | None,
) -> tuple[list[Checkpoint], float, list[dict[str, Any]]]:
    """The gate set at each checkpoint (RUN_DIR/gate-step-K), finished ones reused; the points,
    the seconds they took and the evaluations' metadata."""
    curve, seconds, metas = [], 0.0, []
    for step in spec.checkpoint_steps:
        eval_dir = Path(spec.run_dir) / f"gate-step-{step}"
        result = finished_evaluation(eval_dir, adapter_id, step)
        if result is None:
            t0 = time.perf_counter()
            adapter = checkpoint_dir(spec.adapter_dir, step)
            result = evaluate_adapter(spec, on_progress, base, adapter, eval_dir)
            seconds += time.perf_counter() - t0
        else:
            seconds += evaluation_seconds(result.meta)
        metrics = Metrics.model_validate(result.metrics)
        curve.append(Checkpoint(step, metrics, result.scores, str(eval_dir)))
        metas.append(result.meta)
    return curve, seconds, metas


def train_adapter(
    spec: RunSpec, on_progress: Callable[[int, int], None] | None, base: ResidentBase | None
) -> dict[str, Any]:
    config = TrainConfig(
        model=spec.model,
        quantization=spec.quantization,
        questions=spec.train_questions,
        contexts=spec.train_contexts,
        prompt=spec.prompt,
        out=str(spec.adapter_dir),
        gradient_checkpointing=spec.gradient_checkpointing,
        cuda_graphs=spec.cuda_graphs,
        params=spec.params,
        checkpoint_steps=list(spec.checkpoint_steps),
    )
    return train(config, progress=spec.progress, on_step=on_progress, base=base).metadata


def evaluate_adapter(
    spec: RunSpec,
    on_progress: Callable[[int, int], None] | None,
    base: ResidentBase | None,
    adapter: Path | None = None,
    out: Path | None = None,
) -> EvalResult:
    """The run's adapter (or one of its checkpoints, into its own folder) on the question set."""
    return evaluate(
        EvalConfig(
            model=spec.model,
            adapter=str(adapter or spec.adapter_dir),
            quantization=spec.quantization,
            questions=spec.eval_questions,
            contexts=spec.eval_contexts,
            prompt=spec.prompt,
            out=str(out or spec.eval_dir),
            decode=spec.decode,
        ),
        progress=spec.progress,
        on_batch=on_progress,
        base=base,
    )
