"""`sftgate search`: the seed's strategy run end to end, resumable, every step in the registry.

The driver reads top to bottom: pin the inputs and refuse a study whose inputs changed, build the
index and the contexts files, put interrupted runs back to planned, then loop: execute the planned
runs, ask the planner, record its decision (with the next round's runs, in one transaction), until
it says stop; then write the report.

Only the driver writes the registry. One run's work is `sftgate.runner.execute_run(spec)`, from
plain data; the executor (`sftgate.executors`: this process, a child process per GPU, or Ray
tasks) runs the specs and hands the outcomes back to `run_all`, which records them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from rich import get_console
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

from sftgate.config import StrictModel, load_config
from sftgate.contexts import load_contexts, write_contexts
from sftgate.errors import InputError, Problem, SftgateError
from sftgate.evaluate import DecodeSettings
from sftgate.executors import Executor, ExecutorConfig, open_executor, read_worker, worker_file
from sftgate.fsutil import atomic_write_bytes
from sftgate.hashing import sha256_file, sha256_json
from sftgate.index import (
    IndexSettings,
    build_index,
    compute_index_version,
    load_index,
    read_corpus,
    retrieve_contexts,
)
from sftgate.models import Quantization
from sftgate.params import TrainParams
from sftgate.paths import data_dir
from sftgate.planner import Decision, History, Policy, RoundRecord, RunRecord, plan_next
from sftgate.prompt import load_prompt
from sftgate.questions import QuestionSet, load_questions
from sftgate.registry import Registry, Study, check_pins
from sftgate.runner import RunOutcome, RunSpec, execute_run
from sftgate.tiny import TINY_MODEL_ID

__all__ = ["RunOutcome", "RunSpec", "StudyConfig", "execute_run", "search"]

# The global console: train's and evaluate's progress bars nest in the live view through it.
console = get_console()

# ---------------------------------------------------------------------- the study config


class RetrievalConfig(StrictModel):
    corpus: str = Field(description="knowledge-base folder (or JSONL); the index is built from it")
    top_k: int = Field(3, gt=0, description="passages per question; more passages, longer prompts")
    settings: IndexSettings = Field(default_factory=IndexSettings)


class ContextFiles(StrictModel):
    """Pre-retrieved contexts (`sftgate index retrieve` or your own), one file per question set."""

    train: str
    gate: str
    full: str


class StudyConfig(StrictModel):
    kind: Literal["study"] = "study"
    name: str = Field(
        min_length=1,
        description="the study's name in the registry; rerunning with the same name resumes it, "
        "a new name starts a new study",
    )
    model: str = Field(
        "Qwen/Qwen3-4B", description="hub id, local folder, .gguf file, or tiny-qwen3"
    )
    quantization: Quantization = Field(
        "auto", description="auto: QLoRA (4-bit NF4) on CUDA, LoRA on CPU"
    )
    prompt: str = Field(description="the prompt template file (pinned by its sha256)")
    train_questions: str = Field(description="training set (the seed's docs/question_v1.json)")
    gate_questions: str = Field(description="gate set (docs/eval_sets/question_v2_dev100.json)")
    full_questions: str = Field(
        description="full set (docs/question_v2.json), evaluated only for a gate-passing run"
    )
    retrieval: RetrievalConfig | None = Field(
        None, description="build an index from a corpus and retrieve passages for the three sets"
    )
    contexts: ContextFiles | None = Field(
        None, description="or bring contexts files for the three sets"
    )
    workdir: str | None = Field(
        None,
        description="adapters, predictions, contexts and the report; default "
        "$SFTGATE_HOME/studies/NAME",
    )
    registry: str | None = Field(
        None, description="SQLite file; default $SFTGATE_HOME/registry.sqlite"
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="None (auto): as `sftgate train` decides, off on CUDA when a probe step fits in memory, else on",
    )
    policy: Policy = Field(default_factory=Policy)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    executor: ExecutorConfig = Field(
        default_factory=ExecutorConfig,
        description="where runs execute: `local` (this machine's GPUs) or `ray` (a cluster); "
        "`executor: ray` is short for `executor: {kind: ray}`",
    )
    note: str | None = Field(None, description="shown at the top of the report")

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_kind_alone(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> StudyConfig:
        if self.retrieval is not None and self.contexts is not None:
            raise ValueError("give either retrieval or contexts, not both")
        if self.workdir is not None and self.executor.storage is not None:
            raise ValueError(
                "give either workdir or executor.storage (the study's files go to STORAGE/NAME)"
            )
        return self

    @property
    def work(self) -> Path:
        if self.workdir:
            return Path(self.workdir)
        if self.executor.storage:
            return Path(self.executor.storage) / self.name
        return data_dir() / "studies" / self.name

    def settings_pins(self) -> dict[str, str]:
        """Hashes of the settings that change results (not names, paths or notes): a study
        resumed with other settings would mix runs that are not comparable."""
        sections: dict[str, Any] = {
            "policy": self.policy.model_dump(mode="json"),
            "decode": self.decode.model_dump(mode="json"),
            "training": {
                "quantization": self.quantization,
                "gradient_checkpointing": self.gradient_checkpointing,
            },
        }
        if self.retrieval is not None:
            sections["retrieval"] = {
                "top_k": self.retrieval.top_k,
                "settings": self.retrieval.settings.model_dump(mode="json"),
            }
        return {f"settings.{k}": sha256_json(v) for k, v in sections.items()}


def resolve(config: StudyConfig, base: Path) -> StudyConfig:
    """Relative paths in a study config are relative to the config file's folder."""

    def p(value: str) -> str:
        return value if Path(value).is_absolute() else str(base / value)

    update: dict[str, Any] = {
        k: p(getattr(config, k))
        for k in ("prompt", "train_questions", "gate_questions", "full_questions")
    }
    for k in ("workdir", "registry"):
        if getattr(config, k) is not None:
            update[k] = p(getattr(config, k))
    if config.model != TINY_MODEL_ID and (base / config.model).exists():
        update["model"] = p(config.model)
    if config.retrieval:
        update["retrieval"] = config.retrieval.model_copy(
            update={"corpus": p(config.retrieval.corpus)}
        )
    if config.executor.storage:
        update["executor"] = config.executor.model_copy(
            update={"storage": p(config.executor.storage)}
        )
    if config.contexts:
        update["contexts"] = ContextFiles(
            train=p(config.contexts.train),
            gate=p(config.contexts.gate),
            full=p(config.contexts.full),
        )
    return config.model_copy(update=update)


def load_study_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    return resolve(load_config(StudyConfig, path, overrides), Path(path).resolve().parent)


# ---------------------------------------------------------------------- pinned inputs

SPLITS = ("train", "gate", "full")


@dataclass(frozen=True)
class Inputs:
    """The study's resolved inputs and their pins."""

    sets: dict[str, QuestionSet]  # train, gate, full
    contexts: dict[str, Path | None]  # None: the items carry their passages
    pins: dict[str, str]


def _index_version(r: RetrievalConfig) -> str:
    """The index_version the corpus and settings give, computed without writing anything."""
    fingerprint = None
    if r.settings.retriever != "bm25":
        from sftgate.index import dense

        assert r.settings.embedding_model is not None
        fingerprint = dense.model_fingerprint(dense.load_model(r.settings.embedding_model))
    return compute_index_version(read_corpus(r.corpus), r.settings, fingerprint)


def pin_inputs(config: StudyConfig) -> Inputs:
    """Load and hash every pinned input. Reads only: nothing is built or written here, so a
    study whose inputs changed is refused before its files are touched."""
    template = load_prompt(config.prompt)
    sets = {
        "train": load_questions(config.train_questions),
        "gate": load_questions(config.gate_questions),
        "full": load_questions(config.full_questions),
    }
    contexts: dict[str, Path | None] = dict.fromkeys(SPLITS)
    extra: dict[str, str] = {}
    if config.retrieval is not None:
        index_version = _index_version(config.retrieval)
        contexts = {s: config.work / f"contexts_{s}.jsonl" for s in SPLITS}
    elif config.contexts is not None:
        files = {s: Path(getattr(config.contexts, s)) for s in SPLITS}
        versions = {load_contexts(f).index_version for f in files.values()}
        if len(versions) != 1:
            raise InputError(
                Problem(
                    config.contexts.train,
                    "",
                    "index_version",
                    f"the three contexts files come from different indexes ({', '.join(sorted(versions))})",
                    "retrieve all three from one index",
                )
            )
        index_version = versions.pop()
        contexts = dict(files)
        extra = {f"contexts_{s}_sha256": sha256_file(f) for s, f in files.items()}
    else:
        declared = {qs.index_version for qs in sets.values()}
        if None in declared or len(declared) != 1:
            raise InputError(
                Problem(
                    config.train_questions,
                    "",
                    "retrieval",
                    "no retrieval, no contexts files, and the question sets do not all carry "
                    "contexts from one index",
                    "add `retrieval:` or `contexts:` to the study config",
                )
            )
        index_version = str(declared.pop())
    pins = {
        "model_id": config.model,
        "prompt_version": template.version,
        "prompt_sha256": template.sha256,
        "index_version": index_version,
        "train_set_version": sets["train"].version,
        "gate_set_version": sets["gate"].version,
        "full_set_version": sets["full"].version,
        **extra,
        **config.settings_pins(),
    }
    return Inputs(sets, contexts, pins)


def contexts_current(path: Path, index_version: str, eval_set_version: str, top_k: int) -> bool:
    """Whether a contexts file was retrieved from this index, for this question set, at this top_k."""
    if not path.exists():
        return False
    meta = load_contexts(path).meta
    return (meta.index_version, meta.eval_set_version, meta.top_k) == (
        index_version,
        eval_set_version,
        top_k,
    )


def prepare_contexts(config: StudyConfig, inputs: Inputs) -> None:
    """Build the index (when missing or stale) and retrieve the contexts files of the three sets."""
    r = config.retrieval
    if r is None:
        return
    index_dir = config.work / "index"
    wanted = inputs.pins["index_version"]
    if not (index_dir / "manifest.json").exists() or load_index(index_dir).version != wanted:
        console.print(f"building the index of {r.corpus}")
        build_index(r.corpus, index_dir, r.settings)
    built = load_index(index_dir).version
    if built != wanted:  # the corpus changed between pinning and building
        raise SftgateError(f"the index built from {r.corpus} is {built[:12]}, not {wanted[:12]}")
    for split, qs in inputs.sets.items():
        path = inputs.contexts[split]
        assert path is not None
        if not contexts_current(path, built, qs.version, r.top_k):
            write_contexts(path, *retrieve_contexts(index_dir, qs, r.top_k))


def run_spec(
    config: StudyConfig,
    inputs: Inputs,
    run: dict[str, Any],
    split: Literal["gate", "full"],
    progress: bool,
) -> RunSpec:
    def ctx(s: str) -> str | None:
        path = inputs.contexts[s]
        return str(path) if path else None

    # The planner varies the seed's parameters; the others (seed, warm-up, ...) are round 0's.
    params = {**config.policy.round0.model_dump(mode="json"), **run["params"]}
    return RunSpec(
        run_id=run["id"],
        split=split,
        params=TrainParams.model_validate(params).model_dump(mode="json"),
        model=config.model,
        quantization=config.quantization,
        gradient_checkpointing=config.gradient_checkpointing,
        prompt=config.prompt,
        train_questions=config.train_questions,
        train_contexts=ctx("train"),
        eval_questions=config.gate_questions if split == "gate" else config.full_questions,
        eval_contexts=ctx(split),
        run_dir=str(config.work / "runs" / run["id"]),
        decode=config.decode.model_dump(mode="json"),
        expected={
            k: inputs.pins[k]
            for k in ("model_id", "prompt_sha256", "index_version", "train_set_version")
        },
        progress=progress,
    )


def inputs_for_workers(config: StudyConfig) -> StudyConfig:
    """On a cluster, workers read the prompt and question sets from the study's folder (storage
    every node reaches): copied there byte for byte, so the pins taken from the originals hold."""
    if config.executor.kind != "ray":
        return config
    update = {}
    for key in ("prompt", "train_questions", "gate_questions", "full_questions"):
        source = Path(getattr(config, key))
        copy = config.work / "inputs" / key / source.name
        data = source.read_bytes()
        if not copy.exists() or copy.read_bytes() != data:
            atomic_write_bytes(copy, data)
        update[key] = str(copy)
    return config.model_copy(update=update)


# ---------------------------------------------------------------------- the driver's registry writes


def record_outcome(reg: Registry, spec: RunSpec, outcome: RunOutcome) -> None:
    if spec.split == "full":
        if outcome.status == "failed":
            reg.update_run(
                spec.run_id,
                full_status="failed",
                full_failure=outcome.failure,
                full_lost=int(outcome.lost),
            )
            return
        assert outcome.metrics is not None and outcome.question_scores is not None
        reg.record_question_scores(spec.run_id, "full", outcome.question_scores)
        reg.update_run(
            spec.run_id,
            full_status="done",
            full_dir=str(spec.eval_dir),
            full_metrics_json=outcome.metrics,
            full_eval_set_version=outcome.metrics["eval_set_version"],
            full_eval_s=outcome.eval_s,
            full_failure=None,
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
        reg.update_run(
            spec.run_id, status="failed", failure=outcome.failure, lost=int(outcome.lost), **common
        )
        return
    assert outcome.metrics is not None and outcome.question_scores is not None
    if outcome.train_s is None and outcome.train_meta is not None:
        # a restart that reused the adapter: its training time is in the adapter's metadata
        common["train_s"] = outcome.train_meta["wall_time_s"]
    reg.record_question_scores(spec.run_id, "gate", outcome.question_scores)
    reg.record_metrics(
        spec.run_id,
        outcome.metrics,
        status="done",
        gate_dir=str(spec.eval_dir),
        eval_meta_json=outcome.eval_meta,
        failure=None,
        **common,
    )


def history(reg: Registry, study: Study) -> History:
    """The planner's view of the study, from the registry alone."""
    rounds: dict[int, list[RunRecord]] = {}
    full_done, full_failed = None, {}
    for r in reg.runs(study.id):
        if r["status"] not in ("done", "failed"):
            continue
        scores = reg.question_scores(r["id"], "gate") if r["status"] == "done" else []
        rounds.setdefault(r["round"], []).append(
            RunRecord(
                run_id=r["id"],
                params=r["params"],
                status=r["status"],
                metrics=r["metrics"] or {},
                per_question={s.id: s.eval_score for s in scores} or None,
                failure=r["failure"],
            )
        )
        if r["full_status"] == "done":
            full_done = r["id"]
        elif r["full_status"] == "failed":
            full_failed[r["id"]] = r["full_failure"] or "unknown"
    return History(
        rounds=[RoundRecord(round=k, runs=v) for k, v in sorted(rounds.items())],
        full_eval_run=full_done,
        full_eval_failures=full_failed,
    )


# ---------------------------------------------------------------------- the live view


class LiveView:
    """The round, each active run with its stage, and an ETA, above the stage's own progress bar
    (train steps, eval questions) when runs execute in this process."""

    def __init__(self, study: str, seconds_per_run: list[float], enabled: bool, slots: int):
        self.study = study
        self.seconds_per_run = seconds_per_run
        self.enabled = enabled
        self.slots = slots
        self.round = "-"
        self.where = "this process"
        self.remaining = 0  # runs of the round not finished
        self.active: dict[str, tuple[str, float, str]] = {}  # run -> (stage, since, where)
        self.started: dict[str, float] = {}  # run -> when it started
        self.progress: dict[str, tuple[int, int]] = {}  # run -> (done, total) in its stage

    def set_round(self, round_: int | str, runs: int) -> None:
        self.round, self.remaining = str(round_), runs
        self.active.clear()

    def set_stage(self, run: str, stage: str, where: str = "") -> None:
        self.active[run] = (stage, time.monotonic(), where)
        self.started.setdefault(run, time.monotonic())
        self.progress.pop(run, None)

    def set_progress(self, run: str, done: int, total: int) -> None:
        self.progress[run] = (done, total)

    def finish(self, run: str) -> None:
        self.active.pop(run, None)
        self.remaining -= 1

    def eta(self) -> str:
        if not self.seconds_per_run or not self.remaining:
            return "after the first run"
        mean = sum(self.seconds_per_run) / len(self.seconds_per_run)
        waves = -(-self.remaining // min(self.slots, self.remaining))  # rounded up
        busy = [time.monotonic() - self.started[r] for r in self.active if r in self.started]
        left = max(0.0, mean * waves - min(max(busy, default=0.0), mean))
        return f"~{left / 60:.1f} min for this round's {self.remaining} run(s) left"

    def render(self) -> RenderableType:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("study", self.study)
        grid.add_row("executor", self.where)
        grid.add_row("round", self.round)
        now = time.monotonic()
        for run, (stage, since, where) in self.active.items():
            at = f" on {where}" if where else ""
            done = ""
            if run in self.progress:
                n, total = self.progress[run]
                unit = "steps" if stage == "training" else "questions"
                done = f" {n}/{total} {unit},"
            grid.add_row("run", f"{run}: {stage}{done} ({now - since:.0f} s){at}")
        queued = self.remaining - len(self.active)
        if queued > 0:
            grid.add_row("queued", f"{queued} run(s)")
        grid.add_row("ETA", self.eta())
        return Group(grid)

    def log(self, message: str) -> None:
        console.print(message)

    @contextmanager
    def shown(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with Live(
            console=console, get_renderable=self.render, refresh_per_second=2, transient=True
        ):
            yield


# ---------------------------------------------------------------------- the driver


class RunsLost(SftgateError):
    """Runs whose worker died; recorded as failed (lost), they run again when the study resumes."""


@dataclass(frozen=True)
class SearchResult:
    study: Study
    decision: Decision
    report: Path
    registry: Path


def _quiet_libraries() -> None:
    """Library progress bars and deprecation notes would scroll the live view away."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _where(worker: dict[str, Any] | None) -> str:
    if not worker:
        return ""
    gpu = f" GPU {worker['devices']}" if worker.get("devices") else ""
    return f"{worker['host']} pid {worker['pid']}{gpu}"


def run_all(
    specs: list[RunSpec],
    executor: Executor | None,
    reg: Registry,
    view: LiveView,
    durations: list[float],
) -> list[RunOutcome]:
    """Execute specs (None: here, one after another) and record each outcome as it arrives.
    The registry follows each run's stage; only this function's caller's process writes it."""

    def stage_to_registry(spec: RunSpec, stage: str, worker: dict[str, Any] | None) -> None:
        view.set_stage(spec.run_id, stage, _where(worker))
        fields: dict[str, Any] = {"worker_json": worker} if worker else {}
        if spec.split == "gate" and stage in ("training", "evaluating"):
            fields["status"] = stage
        if fields:
            reg.update_run(spec.run_id, **fields)

    def finish(spec: RunSpec, outcome: RunOutcome) -> None:
        record_outcome(reg, spec, outcome)
        view.finish(spec.run_id)
        name = spec.run_id + (" (full set)" if spec.split == "full" else "")
        if outcome.status == "failed":
            view.log(f"[red]{name} {'lost' if outcome.lost else 'failed'}:[/red] {outcome.failure}")
        else:
            assert outcome.metrics is not None
            m = outcome.metrics
            view.log(
                f"{name}: eval_score_avg {m['eval_score_avg']:.2f}, "
                f"schema_pass_rate {m['schema_pass_rate']:.3f}, "
                f"grounding_avg {m['grounding_avg']:.3f}"
            )
        if outcome.train_s and outcome.eval_s:
            durations.append(outcome.train_s + outcome.eval_s)

    outcomes: list[RunOutcome] = []
    if executor is None:
        for spec in specs:

            def on_stage(stage: str, spec: RunSpec = spec) -> None:
                stage_to_registry(spec, stage, None)

            view.set_stage(spec.run_id, "starting")
            outcome = execute_run(spec, on_stage)
            finish(spec, outcome)
            outcomes.append(outcome)
        return outcomes

    pending, running = list(specs), dict[str, tuple[RunSpec, str | None]]()
    try:
        while pending or running:
            while pending and len(running) < executor.capacity:
                spec = pending.pop(0)
                worker_file(spec).unlink(missing_ok=True)  # a previous attempt's
                executor.start(spec)
                running[spec.run_id] = (spec, None)
                view.set_stage(spec.run_id, "queued")
            for outcome in executor.wait(timeout_s=0.5):
                spec, _ = running.pop(outcome.run_id)
                finish(spec, outcome)
                outcomes.append(outcome)
            for run_id, (spec, seen) in list(running.items()):
                worker = read_worker(spec)
                if not worker or worker["stage"] in ("done", "failed"):
                    continue
                if worker["stage"] != seen:
                    running[run_id] = (spec, worker["stage"])
                    stage_to_registry(spec, worker["stage"], worker)
                if worker["progress"]:
                    view.set_progress(run_id, *worker["progress"])
    except BaseException:
        executor.close()  # leaves the started runs in training/evaluating: a resume restarts them
        raise
    return outcomes


def search(
    config_path: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    max_steps_of_the_loop: int = 100,
) -> SearchResult:
    from sftgate.report import write_report

    config = load_study_config(config_path, overrides)
    inputs = pin_inputs(config)
    reg = Registry(config.registry)
    executor: Executor | None = None
    try:
        study, created = reg.open_study(
            config.name, inputs.pins, str(config_path), config.model_dump(mode="json")
        )
        prepare_contexts(config, inputs)
        workers = inputs_for_workers(config)
        if progress:
            _quiet_libraries()
        executor = open_executor(config.executor)
        console.rule(f"study {study.name} ({'new' if created else 'resumed'}) · {reg.path}")
        restarted = reg.reset_interrupted(study.id)
        if restarted:
            console.print(f"restarting interrupted work: {', '.join(restarted)}")
        durations = [
            r["train_s"] + r["eval_s"] for r in reg.runs(study.id) if r["train_s"] and r["eval_s"]
        ]
        view = LiveView(study.name, durations, progress, executor.capacity if executor else 1)
        view.where = executor.where() if executor else "local: this process, one run at a time"
        # Progress bars of train and evaluate nest in the live view only in this process.
        bars = progress and executor is None
        decision: Decision | None = None
        with view.shown():
            for _ in range(max_steps_of_the_loop):
                planned = [r for r in reg.runs(study.id) if r["status"] == "planned"]
                if planned:
                    # Inputs edited while the search runs would make these runs incomparable.
                    check_pins(study, pin_inputs(config).pins)
                    view.set_round(planned[0]["round"], len(planned))
                    for r in planned:
                        view.log(f"[bold]round {r['round']}[/bold] · {r['id']}: {r['reason']}")
                    specs = [run_spec(workers, inputs, r, "gate", bars) for r in planned]
                    lost = [o for o in run_all(specs, executor, reg, view, durations) if o.lost]
                    if lost:
                        raise RunsLost(_lost_message(lost, config_path))
                view.set_round(view.round, 0)
                view.set_stage("planner", "planning")
                decision = plan_next(history(reg, study), config.policy)
                configs = (
                    [(c.params, c.reason) for c in decision.configs]
                    if decision.action == "train"
                    else None
                )
                reg.record_decision(study, decision.model_dump(mode="json"), configs)
                view.log(
                    f"[bold]planner:[/bold] {decision.action} (round {decision.round}): {decision.reason}"
                )
                if decision.action == "train":
                    if not configs:
                        raise SftgateError(
                            f"the planner proposed round {decision.round} with no config"
                        )
                    continue
                if decision.action == "full_eval":
                    assert decision.selected_run is not None
                    check_pins(study, pin_inputs(config).pins)
                    run = reg.run(decision.selected_run)
                    assert run is not None
                    view.set_round(f"{decision.round} (full set)", 1)
                    reg.update_run(run["id"], full_status="evaluating")
                    spec = run_spec(workers, inputs, run, "full", bars)
                    lost = [o for o in run_all([spec], executor, reg, view, durations) if o.lost]
                    if lost:
                        raise RunsLost(_lost_message(lost, config_path))
                    continue
                reg.set_study_status(study.id, "finished")
                break
            else:
                raise SftgateError(
                    f"the search loop did not finish in {max_steps_of_the_loop} steps"
                )
        assert decision is not None
        report = write_report(reg, study.name, config.work / "report.md")
        write_report(reg, study.name, config.work / "report.html", "html")
        study = reg.study(study.name) or study
        return SearchResult(study, decision, report, reg.path)
    finally:
        if executor is not None:
            executor.close()
        reg.close()


def _lost_message(lost: list[RunOutcome], config_path: str | Path) -> str:
    runs = "; ".join(
        f"{o.run_id}{' (full set)' if o.split == 'full' else ''}: {o.failure}" for o in lost
    )
    return (
        f"{len(lost)} run(s) lost their worker; the round's other runs are recorded. {runs}. "
        f"Run `sftgate search --config {config_path}` again to run the lost ones again."
    )
