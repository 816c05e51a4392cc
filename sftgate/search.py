"""`sftgate search`: the seed's strategy run end to end, resumable, every step in the registry.

The driver reads top to bottom: pin the inputs and refuse a study whose inputs changed, build the
index and the contexts files, put interrupted runs back to planned, then loop: execute the planned
runs, ask the planner, record its decision (with the next round's runs, in one transaction), until
it says stop; then write the report.

Only the driver writes the registry. `execute_run(spec) -> RunOutcome` does the work of one run
(train + gate evaluation, or a full-set evaluation) from plain data and never raises for a failed
run, so another executor can run specs elsewhere and hand the outcomes back.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from rich import get_console
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

from sftgate.config import StrictModel, load_config
from sftgate.contexts import load_contexts, write_contexts
from sftgate.errors import InputError, Problem, SftgateError
from sftgate.evaluate import META, PARTIAL_META, DecodeSettings, EvalConfig, evaluate
from sftgate.fsutil import atomic_write_text
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
from sftgate.scoring import QuestionScore, read_per_question
from sftgate.tiny import TINY_MODEL_ID
from sftgate.train import METADATA_FILE, TrainConfig, read_adapter_metadata, train

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
    executor: Literal["local"] = Field(
        "local", description="local: the round's configs one after another in this process"
    )
    note: str | None = Field(None, description="shown at the top of the report")

    @model_validator(mode="after")
    def _one_source(self) -> StudyConfig:
        if self.retrieval is not None and self.contexts is not None:
            raise ValueError("give either retrieval or contexts, not both")
        return self

    @property
    def work(self) -> Path:
        return Path(self.workdir) if self.workdir else data_dir() / "studies" / self.name

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


# ---------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, as plain values (picklable; the paths must be reachable where it
    runs). split "gate": train (unless the adapter is complete) and evaluate on the gate set;
    split "full": evaluate the finished adapter on the full set."""

    run_id: str
    split: Literal["gate", "full"]
    params: dict[str, Any]
    model: str
    quantization: Quantization
    gradient_checkpointing: bool | None
    prompt: str
    train_questions: str
    train_contexts: str | None
    eval_questions: str
    eval_contexts: str | None
    run_dir: str
    decode: dict[str, Any]
    # What an adapter found on disk must have been trained with, to be reused by a restart.
    expected: dict[str, str] = field(default_factory=dict)
    progress: bool = True

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
    metrics: dict[str, Any] | None = None
    question_scores: list[QuestionScore] | None = None
    train_meta: dict[str, Any] | None = None
    eval_meta: dict[str, Any] | None = None
    failure: str | None = None
    train_s: float | None = None
    eval_s: float | None = None


def adapter_mismatches(meta: dict[str, Any], spec: RunSpec) -> list[str]:
    wanted = {**spec.expected, "train_params": spec.params}
    return [k for k, v in wanted.items() if meta.get(k) != v]


def finished_evaluation(
    eval_dir: Path, adapter_id: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(metrics, eval_meta) of a complete evaluation of this adapter in eval_dir, if there is one."""
    if not (eval_dir / META).exists() or (eval_dir / PARTIAL_META).exists():
        return None
    meta = json.loads((eval_dir / META).read_text(encoding="utf-8"))
    if meta.get("adapter_id") != adapter_id:
        raise SftgateError(
            f"{eval_dir} holds an evaluation of adapter {meta.get('adapter_id')}, not {adapter_id}; "
            "delete the folder to evaluate this run again"
        )
    return json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8")), meta


def execute_run(spec: RunSpec, on_stage: Callable[[str], None] | None = None) -> RunOutcome:
    """Do one run and return its outcome; any error (out of memory, NaN loss, a crash) is a
    failed outcome with its reason, and the traceback is written to RUN_DIR/failure-SPLIT.txt.
    A restart reuses a complete adapter that matches the spec, and the evaluation resumes from
    its last finished batch."""
    train_s = eval_s = None
    train_meta = None
    try:
        if (spec.adapter_dir / METADATA_FILE).exists():
            train_meta = read_adapter_metadata(spec.adapter_dir)
            wrong = adapter_mismatches(train_meta, spec)
            if wrong:
                raise SftgateError(
                    f"{spec.adapter_dir} holds an adapter trained with other {', '.join(wrong)}; "
                    "delete it to train this run again"
                )
        elif spec.split == "full":
            raise SftgateError(f"no finished adapter at {spec.adapter_dir} to evaluate")
        else:
            if on_stage:
                on_stage("training")
            t0 = time.perf_counter()
            config = TrainConfig(
                model=spec.model,
                quantization=spec.quantization,
                questions=spec.train_questions,
                contexts=spec.train_contexts,
                prompt=spec.prompt,
                out=str(spec.adapter_dir),
                gradient_checkpointing=spec.gradient_checkpointing,
                params=TrainParams.model_validate(spec.params),
            )
            train_meta = train(config, progress=spec.progress).metadata
            train_s = time.perf_counter() - t0
        assert train_meta is not None
        finished = finished_evaluation(spec.eval_dir, train_meta["adapter_id"])
        if finished is not None:  # killed after the evaluation, before the registry heard of it
            metrics, eval_meta = finished
            return RunOutcome(
                spec.run_id,
                spec.split,
                "done",
                metrics=metrics,
                question_scores=read_per_question(spec.eval_dir / "per_question.jsonl"),
                train_meta=train_meta,
                eval_meta=eval_meta,
                train_s=train_s,
                eval_s=eval_meta["wall_time_s"],
            )
        if on_stage:
            on_stage("evaluating")
        t0 = time.perf_counter()
        result = evaluate(
            EvalConfig(
                model=spec.model,
                adapter=str(spec.adapter_dir),
                quantization=spec.quantization,
                questions=spec.eval_questions,
                contexts=spec.eval_contexts,
                prompt=spec.prompt,
                out=str(spec.eval_dir),
                decode=DecodeSettings.model_validate(spec.decode),
            ),
            progress=spec.progress,
        )
        eval_s = time.perf_counter() - t0
        return RunOutcome(
            spec.run_id,
            spec.split,
            "done",
            metrics=result.metrics,
            question_scores=read_per_question(spec.eval_dir / "per_question.jsonl"),
            train_meta=train_meta,
            eval_meta=result.meta,
            train_s=train_s,
            eval_s=eval_s,
        )
    except Exception as e:  # noqa: BLE001 - one run's failure is recorded; the round goes on
        reason = f"{type(e).__name__}: {e}".strip()
        Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(spec.run_dir) / f"failure-{spec.split}.txt", traceback.format_exc())
        return RunOutcome(
            spec.run_id,
            spec.split,
            "failed",
            train_meta=train_meta,
            failure=reason[:2000],
            train_s=train_s,
            eval_s=eval_s,
        )


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


# ---------------------------------------------------------------------- the driver's registry writes


def record_outcome(reg: Registry, spec: RunSpec, outcome: RunOutcome) -> None:
    if spec.split == "full":
        if outcome.status == "failed":
            reg.update_run(spec.run_id, full_status="failed", full_failure=outcome.failure)
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
    if outcome.train_meta is not None:
        common |= {
            "adapter_id": outcome.train_meta["adapter_id"],
            "adapter_path": str(spec.adapter_dir),
            "train_meta_json": outcome.train_meta,
        }
    if outcome.status == "failed":
        reg.update_run(spec.run_id, status="failed", failure=outcome.failure, **common)
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
    """Round, run, stage and ETA above the stage's own progress bar (train steps, eval questions)."""

    def __init__(self, study: str, seconds_per_run: list[float], enabled: bool):
        self.study = study
        self.seconds_per_run = seconds_per_run
        self.enabled = enabled
        self.round = "-"
        self.run = "-"
        self.stage = "starting"
        self.remaining = 0
        self.stage_started = self.run_started = time.monotonic()

    def set_run(self, round_: int | str, run: str, remaining: int) -> None:
        self.round, self.run, self.remaining = str(round_), run, remaining
        self.run_started = time.monotonic()

    def set_stage(self, stage: str) -> None:
        self.stage, self.stage_started = stage, time.monotonic()

    def eta(self) -> str:
        if not self.seconds_per_run or not self.remaining:
            return "after the first run"
        mean = sum(self.seconds_per_run) / len(self.seconds_per_run)
        left = max(0.0, mean * self.remaining - (time.monotonic() - self.run_started))
        return f"~{left / 60:.1f} min for this round's {self.remaining} run(s) left"

    def render(self) -> RenderableType:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        elapsed = time.monotonic() - self.stage_started
        grid.add_row("study", self.study)
        grid.add_row("round", self.round)
        grid.add_row("run", self.run)
        grid.add_row("stage", f"{self.stage} ({elapsed:.0f} s)")
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
    try:
        study, created = reg.open_study(
            config.name, inputs.pins, str(config_path), config.model_dump(mode="json")
        )
        prepare_contexts(config, inputs)
        if progress:
            _quiet_libraries()
        console.rule(f"study {study.name} ({'new' if created else 'resumed'}) · {reg.path}")
        restarted = reg.reset_interrupted(study.id)
        if restarted:
            console.print(f"restarting interrupted work: {', '.join(restarted)}")
        durations = [
            r["train_s"] + r["eval_s"] for r in reg.runs(study.id) if r["train_s"] and r["eval_s"]
        ]
        view = LiveView(study.name, durations, progress)
        decision: Decision | None = None
        with view.shown():
            for _ in range(max_steps_of_the_loop):
                planned = [r for r in reg.runs(study.id) if r["status"] == "planned"]
                for n, r in enumerate(planned):
                    # Inputs edited while the search runs would make this run incomparable.
                    check_pins(study, pin_inputs(config).pins)
                    view.set_run(
                        r["round"], f"{r['id']} ({n + 1} of {len(planned)})", len(planned) - n
                    )
                    view.log(f"[bold]round {r['round']}[/bold] · {r['id']}: {r['reason']}")
                    spec = run_spec(config, inputs, r, "gate", progress)

                    def on_stage(stage: str, run_id: str = r["id"]) -> None:
                        view.set_stage(stage)
                        reg.update_run(run_id, status=stage)

                    outcome = execute_run(spec, on_stage)
                    record_outcome(reg, spec, outcome)
                    if outcome.status == "failed":
                        view.log(f"[red]{r['id']} failed:[/red] {outcome.failure}")
                    else:
                        assert outcome.metrics is not None
                        m = outcome.metrics
                        view.log(
                            f"{r['id']}: eval_score_avg {m['eval_score_avg']:.2f}, "
                            f"schema_pass_rate {m['schema_pass_rate']:.3f}, "
                            f"grounding_avg {m['grounding_avg']:.3f}"
                        )
                    if outcome.train_s and outcome.eval_s:
                        durations.append(outcome.train_s + outcome.eval_s)
                view.set_stage("planning")
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
                    view.set_run(decision.round, f"{run['id']} on the full set", 1)
                    view.set_stage("evaluating (full set)")
                    reg.update_run(run["id"], full_status="evaluating")
                    spec = run_spec(config, inputs, run, "full", progress)
                    outcome = execute_run(spec)
                    record_outcome(reg, spec, outcome)
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
        reg.close()
