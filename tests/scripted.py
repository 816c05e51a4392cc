"""A scripted executor: canned run outcomes instead of training, so the real driver, planner and
registry run whole studies in milliseconds (the fast tier between unit tests and tiny-model
runs). It follows the Executor protocol of sftgate.search.executors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sftgate.params import TrainParams
from sftgate.scoring import Metrics, QuestionScore
from sftgate.search.executors import Watch
from sftgate.search.registry import Checkpoint
from sftgate.search.runner import RunOutcome, RunSpec

# What a run gives: metrics (a dict in metrics.json's shape), per-question scores, or a failure.
Script = Callable[[RunSpec], "dict[str, Any] | str"]


def metrics(
    score: float,
    schema: float = 0.99,
    grounding: float = 0.97,
    dd: float = 0.95,
    ev: float = 0.95,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "eval_score_avg": score,
        "eval_score_ci95": [score - 1.5, score + 1.25],
        "schema_pass_rate": schema,
        "grounding_avg": grounding,
        "detailed_description_f1": dd,
        "original_evidence": ev,
        "answer_f1": 0.9,
        "context_recall": 0.95,
        "n": 100,
        **extra,
    }


class ScriptedExecutor:
    """Runs nothing: each started spec's outcome comes from `script(spec)` (metrics, or a string:
    the run failed with that reason; "lost: ..." : its worker died; "environment: ...": its
    environment failed it, as an OSError in a real run). Records every spec it was
    given, so tests can tell what was (re)run."""

    nests_progress = False

    def __init__(
        self,
        script: Script,
        *,
        capacity: int = 1,
        scores: Callable[[RunSpec], list[QuestionScore]] | None = None,
        train_meta: Callable[[RunSpec], dict[str, Any]] | None = None,
        times: Callable[[RunSpec], tuple[float, float]] = lambda spec: (1.0, 1.0),
        interrupt_after: int | None = None,
        checkpoint: Callable[[RunSpec, int], dict[str, Any]] | None = None,
        questions: int = 0,
    ):
        self.script, self.capacity = script, capacity
        self.scores = scores or (lambda spec: [])
        self.train_meta = train_meta or (
            lambda spec: {"adapter_id": f"adapter-{spec.run_id}", "wall_time_s": 1.0}
        )
        self.times = times
        self.interrupt_after = interrupt_after  # raise KeyboardInterrupt after this many outcomes
        self.checkpoint = checkpoint  # metrics at each of a spec's checkpoint_steps
        self.questions = questions  # > 0: per-question scores, each the run's average
        self.started: list[RunSpec] = []
        self.queue: list[RunSpec] = []
        self.closed = False

    def where(self) -> str:
        return "scripted"

    def start(self, spec: RunSpec) -> None:
        self.started.append(spec)
        self.queue.append(spec)

    def wait(self, timeout_s: float, watch: Watch) -> list[RunOutcome]:
        out = []
        while self.queue:
            if self.interrupt_after is not None and self.interrupt_after <= 0:
                raise KeyboardInterrupt
            spec = self.queue.pop(0)
            if spec.split == "gate":
                watch.stage(spec, "training", None)
            watch.stage(spec, "evaluating", None)
            out.append(self.outcome(spec))
            if self.interrupt_after is not None:
                self.interrupt_after -= 1
        return out

    def outcome(self, spec: RunSpec) -> RunOutcome:
        result = self.script(spec)
        train_s, eval_s = self.times(spec)
        if isinstance(result, str):
            lost = result.startswith("lost: ")
            return RunOutcome(
                spec.run_id,
                spec.split,
                "failed",
                failure=result,
                lost=lost,
                environment=result.startswith("environment: "),
                train_s=None if lost else train_s,
                eval_s=None if lost else eval_s,
            )
        metrics = Metrics.model_validate(result)
        curve = [
            Checkpoint(step, m, self.flat_scores(m), f"{spec.run_dir}/gate-step-{step}")
            for step in spec.checkpoint_steps
            if self.checkpoint is not None
            for m in [Metrics.model_validate(self.checkpoint(spec, step))]
        ]
        return RunOutcome(
            spec.run_id,
            spec.split,
            "done",
            metrics=metrics,
            question_scores=self.flat_scores(metrics) if self.questions else self.scores(spec),
            train_meta=self.train_meta(spec) if spec.split == "gate" else None,
            train_s=train_s if spec.split == "gate" else None,
            eval_s=eval_s,
            curve=curve,
        )

    def flat_scores(self, m: Metrics) -> list[QuestionScore]:
        """Every question scoring the average: a paired comparison then has no noise."""
        return [
            QuestionScore(f"q{i}", True, None, 1.0, 1.0, 1.0, 1.0, None, m.eval_score_avg)
            for i in range(self.questions)
        ]

    def close(self) -> None:
        self.closed = True


def spec_for(run_id: str, params: TrainParams, split: str) -> RunSpec:
    """A run spec with placeholder paths, for driving the loop without a project on disk."""
    from sftgate.evaluate import DecodeSettings

    return RunSpec(
        run_id=run_id,
        split=split,  # type: ignore[arg-type]
        params=params,
        model="scripted",
        quantization="auto",
        gradient_checkpointing=None,
        prompt="prompt.md",
        train_questions="train.json",
        train_contexts=None,
        eval_questions=f"{split}.json",
        eval_contexts=None,
        run_dir=f"runs/{run_id}",
        decode=DecodeSettings(),
        progress=False,
    )
