"""`sftgate search`: the seed's strategy run end to end, resumable, every step in the registry.

`search` reads top to bottom: load the config and pin the inputs (a study whose inputs changed is
refused before its files are touched), build the index and the contexts files, put interrupted
runs back to planned, then `drive` the study, then write the report. `drive` is one loop:

    execute the planned runs and record each outcome; decision = plan_next(history(registry));
    record the decision (with the next round's runs, in one transaction); until it says stop.

Only the driver writes the registry. One run's work is `sftgate.search.runner.execute_run(spec)`,
from plain data; an executor (`sftgate.search.executors`: this process, a child process per GPU,
or Ray tasks) runs the specs and hands the outcomes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from sftgate.errors import SftgateError, UnreachableGate
from sftgate.params import TrainParams
from sftgate.search.executors import Executor, open_executor
from sftgate.search.inputs import (
    Inputs,
    measure_reach,
    pin_inputs,
    pinned_copies,
    prepare_contexts,
)
from sftgate.search.lease import HeldLease
from sftgate.search.live import LiveView, console, rule
from sftgate.search.planner import (
    Decision,
    History,
    Policy,
    QuestionFacts,
    ReachFacts,
    RetrievalOption,
    RoundRecord,
    RunRecord,
    plan_next,
)
from sftgate.search.registry import Registry, RunState, Study
from sftgate.search.runner import RunOutcome, RunSpec
from sftgate.search.study import StudyConfig, load_study_config
from sftgate.search.tracking import sync_study
from sftgate.tracking import TrackingConfig, check_installed

# ---------------------------------------------------------------------- the driver's registry writes


RAN_WITH = ("model_id", "prompt_sha256", "index_version")  # what both metadata files record


def disagreements(spec: RunSpec, outcome: RunOutcome, pins: dict[str, str]) -> list[str]:
    """Where the run's own metadata (the adapter's, the evaluation's) disagrees with the study's
    pins: such a run did not run on the study's inputs and is never recorded done."""
    wanted = {
        "adapter": {
            **{k: pins[k] for k in RAN_WITH},
            "train_set_version": pins["train_set_version"],
        }
    }
    wanted["evaluation"] = {
        **{k: pins[k] for k in RAN_WITH},
        "eval_set_version": pins[f"{spec.split}_set_version"],
    }
    ran = {"adapter": outcome.train_meta or {}, "evaluation": outcome.eval_meta or {}}
    return [
        f"the {what}'s {k} is {str(ran[what].get(k))[:16]}, the study pins {v[:16]}"
        for what, keys in wanted.items()
        for k, v in keys.items()
        if k in ran[what] and ran[what][k] != v
    ]


def record_outcome(
    reg: Registry, spec: RunSpec, outcome: RunOutcome, pins: dict[str, str] | None = None
) -> None:
    if outcome.status == "failed" and outcome.environment:
        reg.hold_back(spec.run_id, spec.split, outcome.failure or "")
        return
    wrong = disagreements(spec, outcome, pins) if pins and outcome.status == "done" else []
    if wrong:
        failure = "ran on inputs other than the study's pins: " + "; ".join(wrong)
        outcome = replace(outcome, status="failed", failure=failure)
    if spec.split == "full":
        if outcome.status == "failed":
            reg.record_full_failed(spec.run_id, outcome.failure or "", lost=outcome.lost)
            return
        assert outcome.metrics is not None and outcome.question_scores is not None
        reg.record_full_done(
            spec.run_id,
            outcome.metrics,
            outcome.question_scores,
            full_dir=str(spec.eval_dir),
            eval_s=outcome.eval_s,
        )
        return
    common: dict[str, Any] = {"train_s": outcome.train_s, "eval_s": outcome.eval_s}
    if outcome.worker is not None:
        common["worker_json"] = outcome.worker
    if outcome.train_meta is not None:
        common |= {
            "adapter_id": outcome.train_meta["adapter_id"],
            "adapter_path": str(spec.adapter_dir),
            "train_meta_json": outcome.train_meta,
        }
    if outcome.status == "failed":
        reg.record_failed(spec.run_id, outcome.failure or "", lost=outcome.lost, **common)
        return
    assert outcome.metrics is not None and outcome.question_scores is not None
    if outcome.train_s is None and outcome.train_meta is not None:
        # a restart that reused the adapter: its training time is in the adapter's metadata
        common["train_s"] = outcome.train_meta["wall_time_s"]
    reg.record_done(
        spec.run_id,
        outcome.metrics,
        outcome.question_scores,
        outcome.curve,
        gate_dir=str(spec.eval_dir),
        eval_meta_json=outcome.eval_meta,
        **common,
    )


def reach_facts(reach: dict[str, Any] | None) -> ReachFacts | None:
    """The planner's view of the ceiling stored with the study (`Reach.to_json()`)."""
    if reach is None:
        return None
    return ReachFacts(
        ceiling=reach["ceiling"],
        context_recall=reach["context_recall"],
        top_k=reach["top_k"],
        questions={
            q["id"]: QuestionFacts(
                ceiling=q["ceiling"],
                evidence_retrieved=q["evidence_missing"] == 0,
                kinds=q["kinds"],
            )
            for q in reach["questions"]
        },
        options=[RetrievalOption(**o) for o in reach["options"]],
    )


def history(reg: Registry, study: Study) -> History:
    """The planner's view of the study, from the registry alone."""
    rounds: dict[int, list[RunRecord]] = {}
    full_done, full_failed = None, {}
    for r in reg.runs(study.id):
        if r.state not in (RunState.DONE, RunState.FAILED):
            continue
        scores = reg.question_scores(r.id, "gate") if r.state is RunState.DONE else []
        rounds.setdefault(r.round, []).append(
            RunRecord(
                run_id=r.id,
                params=r.params,
                status=r.state.value,
                metrics=r.metrics,
                per_question={s.id: s.eval_score for s in scores} or None,
                schema_errors={s.id: s.schema_error or "" for s in scores if not s.schema_ok},
                failure=r.failure,
                curve=reg.curve(r.id) if r.state is RunState.DONE else [],
                seconds=(r.train_s or 0.0) + (r.eval_s or 0.0),
            )
        )
        if r.full is None:
            continue
        if r.full.state.value == "done":
            full_done = r.id
        elif r.full.state.value == "failed":
            full_failed[r.id] = r.full.failure or "unknown"
    return History(
        rounds=[RoundRecord(round=k, runs=v) for k, v in sorted(rounds.items())],
        full_eval_run=full_done,
        full_eval_failures=full_failed,
        ceiling=study.reach["ceiling"] if study.reach else None,
        reach=reach_facts(study.reach),
        study=study.name,
        constrain=study.constrain,
    )


# ---------------------------------------------------------------------- run specs


@dataclass(frozen=True)
class Specs:
    """Run specs from a study config whose files are the study's own pinned copies."""

    config: StudyConfig
    inputs: Inputs
    progress: bool

    def spec(self, run_id: str, params: TrainParams, split: Literal["gate", "full"]) -> RunSpec:
        config, contexts = self.config, self.inputs.contexts

        def ctx(s: str) -> str | None:
            path = contexts[s]
            return str(path) if path else None

        return RunSpec(
            run_id=run_id,
            split=split,
            params=params,
            model=config.model,
            quantization=config.quantization,
            gradient_checkpointing=config.gradient_checkpointing,
            cuda_graphs=config.cuda_graphs,
            prompt=config.prompt,
            train_questions=config.train_questions,
            train_contexts=ctx("train"),
            eval_questions=config.gate_questions if split == "gate" else config.full_questions,
            eval_contexts=ctx(split),
            run_dir=str(config.work / "runs" / run_id),
            decode=config.decode,
            expected={
                k: self.inputs.pins[k]
                for k in ("model_id", "prompt_sha256", "index_version", "train_set_version")
            },
            progress=self.progress,
            checkpoint_steps=tuple(config.policy.checkpoint_steps(params.max_steps))
            if split == "gate"
            else (),
        )


# ---------------------------------------------------------------------- executing runs


def _each(outcomes: Sequence[RunOutcome]) -> str:
    return "; ".join(
        f"{o.run_id}{' (full set)' if o.split == 'full' else ''}: {o.failure}" for o in outcomes
    )


class RunsLost(SftgateError):
    """Runs whose worker died; recorded as failed (lost), they run again when the study resumes."""

    def __init__(self, lost: Sequence[RunOutcome], config_path: str | Path = "STUDY.yaml"):
        self.lost = list(lost)
        super().__init__(
            f"{len(lost)} run(s) lost their worker; the round's other runs are recorded. "
            f"{_each(lost)}. "
            f"Run `sftgate search --config {config_path}` again to run the lost ones again."
        )


class EnvironmentFailed(SftgateError):
    """Runs that failed because of their environment (a download, a file, a full disk): they stay
    planned, and the search stops so that the cause can be fixed; the rerun goes on."""

    def __init__(self, held: Sequence[RunOutcome], config_path: str | Path = "STUDY.yaml"):
        self.held = list(held)
        super().__init__(
            f"{len(held)} run(s) failed because of their environment, not their configuration, "
            f"and stay planned: {_each(held)}. Fix the cause, then run `sftgate search --config "
            f"{config_path}` again"
        )


def _where(worker: dict[str, Any] | None) -> str:
    if not worker:
        return ""
    gpu = f" GPU {worker['devices']}" if worker.get("devices") else ""
    return f"{worker['host']} pid {worker['pid']}{gpu}"


class StageRecorder:
    """Stages to the registry and the live view, progress to the live view."""

    STAGES = {"training": RunState.TRAINING, "evaluating": RunState.EVALUATING}

    def __init__(self, reg: Registry, view: LiveView):
        self.reg, self.view = reg, view

    def stage(self, spec: RunSpec, stage: str, worker: dict[str, Any] | None) -> None:
        self.view.set_stage(spec.run_id, stage, _where(worker))
        state = self.STAGES.get(stage) if spec.split == "gate" else None
        self.reg.set_stage(spec.run_id, state, worker)

    def progress(self, spec: RunSpec, done: int, total: int) -> None:
        self.view.set_progress(spec.run_id, done, total)


def execute(
    specs: Sequence[RunSpec],
    executor: Executor,
    reg: Registry,
    view: LiveView,
    pins: dict[str, str] | None = None,
    recorded: Callable[[], None] = lambda: None,
) -> list[RunOutcome]:
    """Run specs on the executor, at most its capacity at once, and record each outcome as it
    arrives (checked against the study's `pins`; then call `recorded`). Runs that lost their
    worker (RunsLost) or that their environment failed (EnvironmentFailed) stop the search once
    the others are in."""
    watch = StageRecorder(reg, view)
    pending, running, outcomes = list(specs), set[str](), list[RunOutcome]()
    try:
        while pending or running:
            while pending and len(running) < executor.capacity:
                spec = pending.pop(0)
                executor.start(spec)
                running.add(spec.run_id)
                view.set_stage(spec.run_id, "queued")
            for outcome in executor.wait(0.5, watch):
                running.discard(outcome.run_id)
                spec = next(s for s in specs if s.run_id == outcome.run_id)
                record_outcome(reg, spec, outcome, pins)
                recorded()
                view.finished(spec, outcome)
                outcomes.append(outcome)
    except BaseException:
        executor.close()  # leaves the started runs in training/evaluating: a resume restarts them
        raise
    lost = [o for o in outcomes if o.lost]
    if lost:
        raise RunsLost(lost)
    held = [o for o in outcomes if o.environment]
    if held:
        raise EnvironmentFailed(held)
    return outcomes


# ---------------------------------------------------------------------- the loop


def drive(
    reg: Registry,
    study: Study,
    policy: Policy,
    executor: Executor,
    spec: Callable[[str, TrainParams, Literal["gate", "full"]], RunSpec],
    view: LiveView,
    check: Callable[[], None] = lambda: None,
    max_steps_of_the_loop: int = 100,
    recorded: Callable[[], None] = lambda: None,
) -> Decision:
    """Plan, execute, record until the planner stops; returns its last decision. Resumable: what
    the registry holds is never redone. `check` runs before each round's work (the lease);
    `recorded` after each outcome and decision is recorded (the tracker's sync)."""
    for _ in range(max_steps_of_the_loop):
        planned = reg.runs(study.id, state=RunState.PLANNED)
        if planned:
            check()
            view.set_round(planned[0].round, len(planned))
            for r in planned:
                view.log(f"[bold]round {r.round}[/bold] · {r.id}: {r.reason}")
            gate = [spec(r.id, r.params, "gate") for r in planned]
            execute(gate, executor, reg, view, study.pins, recorded)
        view.set_round(view.round, 0)
        view.set_stage("planner", "planning")
        decision = plan_next(history(reg, study), policy)
        configs = (
            [(c.params, c.reason) for c in decision.configs] if decision.action == "train" else None
        )
        reg.record_decision(study, decision.model_dump(mode="json"), configs)
        recorded()
        view.log(
            f"[bold]planner:[/bold] {decision.action} (round {decision.round}): {decision.reason}"
        )
        if decision.action == "train" and not configs:
            raise SftgateError(f"the planner proposed round {decision.round} with no config")
        if decision.action == "full_eval":
            assert decision.selected_run is not None
            check()
            run = reg.run(decision.selected_run)
            assert run is not None
            view.set_round(f"{decision.round} (full set)", 1)
            reg.start_full(run.id)
            execute([spec(run.id, run.params, "full")], executor, reg, view, study.pins, recorded)
        if decision.action == "stop":
            reg.set_study_status(study.id, "finished")
            recorded()  # the study's status
            return decision
    raise SftgateError(f"the search loop did not finish in {max_steps_of_the_loop} steps")


def check_reach(
    reg: Registry, study: Study, config: StudyConfig, inputs: Inputs, config_path: str | Path
) -> Study:
    """Measure the ceiling once and store it with the study; refuse an unreachable study before
    any GPU work unless policy.allow_unreachable (which is recorded with it)."""
    reach = study.reach
    if reach is None:
        console.print("measuring the ceiling of the gate set (`sftgate ceiling`)")
        reach = measure_reach(config, inputs).to_json()
    ceiling, gate, margin = reach["ceiling"], reach["gate_score"], reach["margin"]
    summary = (
        f"ceiling {ceiling:.2f} on the gate set, gate {gate:g} + margin {margin:g} "
        f"(context_recall {fmt_recall(reach['context_recall'])}, "
        f"{reach['questions_missing_evidence']} of {reach['n']} gate questions miss some evidence)"
    )
    if not reach["reachable"]:
        if not config.policy.allow_unreachable:
            reg.set_study_reach(study.id, reach)
            raise UnreachableGate(
                f"study {study.name} cannot pass its gate: {summary}; not even a perfect answer "
                f"passes. Run `sftgate index tune --config {config_path}` for a retrieval with a "
                "higher ceiling that fits max_length and use it in a new study, or set "
                "policy.allow_unreachable: true to search anyway"
            )
        reach = {**reach, "allowed_unreachable": True}
        console.print(
            f"[yellow]not reachable, searching anyway (policy.allow_unreachable): {summary}[/yellow]"
        )
    else:
        console.print(f"reachable: {summary}")
    if reach != study.reach:
        reg.set_study_reach(study.id, reach)
    return reg.study(study.name) or study


def fmt_recall(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class Tracker:
    """The study mirrored into its tracker after each record. A tracker that fails (its server
    is down) does not stop the search: the registry has everything, and the live view says how
    to back-fill the tracker later."""

    reg: Registry
    study: str
    config: TrackingConfig
    view: LiveView

    def __call__(self) -> None:
        if self.config.kind == "none":
            return
        try:
            sync_study(self.reg, self.study, self.config)
        except Exception as e:  # noqa: BLE001 - the tracker is a mirror; the registry holds all
            kind = self.config.kind
            self.view.log(
                f"[yellow]tracking: {kind} failed ({type(e).__name__}: {e}); the registry has "
                f"every result: `sftgate export {kind} {self.study}` back-fills it[/yellow]"
            )


@dataclass(frozen=True)
class SearchResult:
    study: Study
    decision: Decision
    report: Path
    registry: Path
    failed: str | None = None  # why, when the study stopped on a failure (`sftgate search` exits 1)


def stopped_on_failure(decision: Decision, hist: History) -> str | None:
    """The stop's reason when failed runs made it: every run of the last round failed (the smoke
    run, for one), or the full-set evaluation failed."""
    if decision.action != "stop" or not hist.rounds:
        return None
    if all(run.status == "failed" for run in hist.rounds[-1].runs) or hist.full_eval_failures:
        return decision.reason
    return None


def search(
    config_path: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    retry_failed: bool = False,
) -> SearchResult:
    """Run (or resume) the study of a config file. `executor`: None opens the one the config's
    `executor:` asks for. `retry_failed`: plan the study's failed runs again (logged).

    The search holds the study's lease from before it opens the study until it returns: a second
    search of the same study is refused (StudyBusy). Runs read only the study's own copies of
    its pinned files (`pinned_copies`)."""
    from sftgate.search.report import write_report

    config = load_study_config(config_path, overrides)
    inputs = pin_inputs(config)
    check_installed(config.tracking)
    reg = Registry(config.registry)
    lease: HeldLease | None = None
    try:
        lease = HeldLease(reg, config.name)
        study, created = reg.open_study(
            config.name, inputs.pins, str(config_path), config.model_dump(mode="json")
        )
        prepare_contexts(config, inputs)
        study = check_reach(reg, study, config, inputs, config_path)
        pinned, inputs = pinned_copies(config, inputs)
        executor = executor or open_executor(config.executor)
        rule(f"study {study.name} ({'new' if created else 'resumed'}) · {reg.path}")
        restarted = reg.reset_interrupted(study.id)
        if restarted:
            console.print(f"restarting interrupted work: {', '.join(restarted)}")
        if retry_failed:
            retried = reg.retry_failed(study)
            console.print(
                f"planned again (--retry-failed): {', '.join(retried) or 'no failed run'}"
            )
        durations = [r.train_s + r.eval_s for r in reg.runs(study.id) if r.train_s and r.eval_s]
        view = LiveView(study.name, durations, progress, executor.capacity)
        view.where = executor.where()
        # Progress bars of train and evaluate nest in the live view only in this process.
        specs = Specs(pinned, inputs, progress and executor.nests_progress)
        track = Tracker(reg, study.name, config.tracking, view)
        with view.shown():
            try:
                decision = drive(
                    reg,
                    study,
                    config.policy,
                    executor,
                    specs.spec,
                    view,
                    lease.check,
                    recorded=track,
                )
            except RunsLost as e:
                raise RunsLost(e.lost, config_path) from None
            except EnvironmentFailed as e:
                raise EnvironmentFailed(e.held, config_path) from None
        report = write_report(reg, study.name, config.work / "report.md")
        write_report(reg, study.name, config.work / "report.html", "html")
        failed = stopped_on_failure(decision, history(reg, study))
        return SearchResult(reg.study(study.name) or study, decision, report, reg.path, failed)
    finally:
        if executor is not None:
            executor.close()
        if lease is not None:
            lease.release()
        reg.close()
