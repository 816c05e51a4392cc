"""`sftgate search`: the seed's strategy run end to end, resumable, every step in the registry.

The driver loop: pin the inputs (refusing a study whose inputs changed), restart interrupted runs,
execute planned runs, ask the planner, record its decision, and repeat until it says stop. Only
the driver writes the registry; `execute_run` does the work of one run and returns its outcome.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from rich.console import Console

from sftgate.config import StrictModel, load_config
from sftgate.contexts import load_contexts, write_contexts
from sftgate.errors import InputError, Problem
from sftgate.evaluate import DecodeSettings, EvalConfig, evaluate
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
from sftgate.planner import History, Policy, RoundRecord, RunRecord, plan_next
from sftgate.prompt import DEFAULT_PROMPT, load_prompt
from sftgate.questions import QuestionSet, load_questions
from sftgate.registry import Registry, Study
from sftgate.train import METADATA_FILE, TrainConfig, read_adapter_metadata, train

console = Console(highlight=False)


class RetrievalConfig(StrictModel):
    corpus: str = Field(description="knowledge-base folder (or JSONL); the index is built from it")
    top_k: int = Field(3, gt=0, description="passages per question; more passages, longer prompts")
    settings: IndexSettings = Field(default_factory=IndexSettings)


class ContextFiles(StrictModel):
    train: str
    gate: str
    full: str


class StudyConfig(StrictModel):
    kind: Literal["study"] = "study"
    name: str = Field(description="the study's name in the registry; a new name starts a new study")
    model: str = Field(
        "Qwen/Qwen3-4B", description="hub id, local folder, .gguf file, or tiny-qwen3"
    )
    quantization: Quantization = Field(
        "auto", description="auto: QLoRA (4-bit NF4) on CUDA, LoRA on CPU"
    )
    prompt: str = DEFAULT_PROMPT
    train_questions: str = Field(description="training set (the seed's docs/question_v1.json)")
    gate_questions: str = Field(description="gate set (docs/eval_sets/question_v2_dev100.json)")
    full_questions: str = Field(
        description="full set (docs/question_v2.json), evaluated only for a gate-passing run"
    )
    retrieval: RetrievalConfig | None = Field(
        None, description="build an index from a corpus and retrieve passages"
    )
    contexts: ContextFiles | None = Field(
        None, description="or bring contexts files for the three sets"
    )
    workdir: str = Field(description="adapters, predictions, contexts and the report go here")
    registry: str | None = Field(
        None, description="SQLite file; default $SFTGATE_HOME/registry.sqlite"
    )
    gradient_checkpointing: bool | None = None
    policy: Policy = Field(default_factory=Policy)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    executor: Literal["local"] = "local"
    note: str | None = Field(None, description="shown at the top of the report")

    @model_validator(mode="after")
    def _one_source(self) -> StudyConfig:
        if self.retrieval is not None and self.contexts is not None:
            raise ValueError("give either retrieval or contexts, not both")
        return self


@dataclass(frozen=True)
class Inputs:
    """The study's resolved inputs and their pins."""

    prompt_path: Path
    sets: dict[str, QuestionSet]  # train, gate, full
    contexts: dict[str, Path | None]
    pins: dict[str, str]


def resolve(config: StudyConfig, base: Path) -> StudyConfig:
    """Relative paths in a study config are relative to the config file's folder."""

    def p(value: str | None) -> str | None:
        return (
            None
            if value is None
            else str((base / value) if not Path(value).is_absolute() else Path(value))
        )

    update: dict[str, Any] = {
        k: p(getattr(config, k))
        for k in (
            "prompt",
            "train_questions",
            "gate_questions",
            "full_questions",
            "workdir",
            "registry",
        )
    }
    if config.model != "tiny-qwen3" and (base / config.model).exists():
        update["model"] = p(config.model)
    if config.retrieval:
        update["retrieval"] = config.retrieval.model_copy(
            update={"corpus": p(config.retrieval.corpus)}
        )
    if config.contexts:
        update["contexts"] = ContextFiles(
            train=p(config.contexts.train) or "",
            gate=p(config.contexts.gate) or "",
            full=p(config.contexts.full) or "",
        )
    return config.model_copy(update=update)


def load_study_config(path: str | Path) -> StudyConfig:
    return resolve(load_config(StudyConfig, path), Path(path).resolve().parent)


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


def prepare_inputs(config: StudyConfig) -> Inputs:
    """Load and hash every pinned input; build the index and the contexts files where needed."""
    template = load_prompt(config.prompt)
    sets = {
        "train": load_questions(config.train_questions),
        "gate": load_questions(config.gate_questions),
        "full": load_questions(config.full_questions),
    }
    work = Path(config.workdir)
    contexts: dict[str, Path | None] = dict.fromkeys(sets)
    if config.retrieval is not None:
        r = config.retrieval
        index_dir = work / "index"
        index_version = (
            compute_index_version(read_corpus(r.corpus), r.settings)
            if r.settings.retriever == "bm25"
            else None
        )
        if not (index_dir / "manifest.json").exists() or (
            index_version and load_index(index_dir).version != index_version
        ):
            console.print(f"building the index of {r.corpus}")
            build_index(r.corpus, index_dir, r.settings)
        index_version = load_index(index_dir).version
        for name, qs in sets.items():
            path = work / f"contexts_{name}.jsonl"
            if not contexts_current(path, index_version, qs.version, r.top_k):
                write_contexts(path, *retrieve_contexts(index_dir, qs, r.top_k))
            contexts[name] = path
    elif config.contexts is not None:
        files = {
            "train": config.contexts.train,
            "gate": config.contexts.gate,
            "full": config.contexts.full,
        }
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
        contexts = {k: Path(v) for k, v in files.items()}
    else:
        declared = {qs.index_version for qs in sets.values()}
        if None in declared or len(declared) != 1:
            raise InputError(
                Problem(
                    config.train_questions,
                    "",
                    "retrieval",
                    "no retrieval, no contexts files, and the question sets do not all carry contexts from one index",
                    "add `retrieval:` or `contexts:` to the study config",
                )
            )
        index_version = str(declared.pop())
    pins = {
        "model_id": config.model
        if config.model == "tiny-qwen3" or not Path(config.model).exists()
        else str(Path(config.model).resolve()),
        "prompt_version": template.version,
        "prompt_sha256": template.sha256,
        "index_version": index_version,
        "train_set_version": sets["train"].version,
        "gate_set_version": sets["gate"].version,
        "full_set_version": sets["full"].version,
    }
    return Inputs(Path(config.prompt), sets, contexts, pins)


# ---------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunOutcome:
    status: Literal["done", "failed"]
    metrics: dict[str, Any] | None = None
    train_meta: dict[str, Any] | None = None
    eval_meta: dict[str, Any] | None = None
    failure: str | None = None
    train_s: float | None = None
    eval_s: float | None = None


def run_dir(config: StudyConfig, run_id: str) -> Path:
    return Path(config.workdir) / "runs" / run_id


def train_config(
    config: StudyConfig, inputs: Inputs, run_id: str, params: dict[str, Any]
) -> TrainConfig:
    return TrainConfig(
        model=config.model,
        quantization=config.quantization,
        questions=config.train_questions,
        contexts=str(inputs.contexts["train"]) if inputs.contexts["train"] else None,
        prompt=config.prompt,
        out=str(run_dir(config, run_id) / "adapter"),
        gradient_checkpointing=config.gradient_checkpointing,
        params=TrainParams(**params),
    )


def eval_config(
    config: StudyConfig, inputs: Inputs, adapter: Path, out: Path, which: str
) -> EvalConfig:
    return EvalConfig(
        model=config.model,
        adapter=str(adapter),
        quantization=config.quantization,
        questions=config.gate_questions if which == "gate" else config.full_questions,
        contexts=str(inputs.contexts[which]) if inputs.contexts[which] else None,
        prompt=config.prompt,
        out=str(out),
        decode=config.decode,
    )


def execute_run(
    config: StudyConfig, inputs: Inputs, run_id: str, params: dict[str, Any], on_stage: Any = None
) -> RunOutcome:
    """Train one config (unless its adapter is already complete) and evaluate it on the gate set.

    Any error, out-of-memory and NaN loss included, becomes a failed outcome with its reason.
    """
    adapter = run_dir(config, run_id) / "adapter"
    train_s = eval_s = None
    try:
        if (adapter / METADATA_FILE).exists():
            train_meta = read_adapter_metadata(adapter)
        else:
            for stale in adapter.parent.glob("adapter.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if on_stage:
                on_stage("training")
            t0 = time.perf_counter()
            train_meta = train(train_config(config, inputs, run_id, params)).metadata
            train_s = time.perf_counter() - t0
        if on_stage:
            on_stage("evaluating")
        t0 = time.perf_counter()
        result = evaluate(
            eval_config(config, inputs, adapter, run_dir(config, run_id) / "gate", "gate")
        )
        eval_s = time.perf_counter() - t0
        return RunOutcome("done", result.metrics, train_meta, result.meta, None, train_s, eval_s)
    except Exception as e:  # noqa: BLE001 - any failure of one run is recorded and the round goes on
        reason = f"{type(e).__name__}: {e}".strip()
        console.print(f"[red]run {run_id} failed:[/red] {reason}")
        console.print(traceback.format_exc(limit=3), markup=False)
        return RunOutcome("failed", failure=reason[:2000], train_s=train_s, eval_s=eval_s)


# ---------------------------------------------------------------------- the driver


def history(reg: Registry, study: Study) -> History:
    rounds: dict[int, list[RunRecord]] = {}
    full = None
    for r in reg.runs(study.id):
        if r["status"] not in ("done", "failed"):
            continue
        per_q = None
        if (
            r["status"] == "done"
            and r["gate_dir"]
            and (Path(r["gate_dir"]) / "per_question.jsonl").exists()
        ):
            with open(Path(r["gate_dir"]) / "per_question.jsonl", encoding="utf-8") as f:
                per_q = {row["id"]: row["eval_score"] for row in map(json.loads, f)}
        metrics = r["metrics"] or {}
        rounds.setdefault(r["round"], []).append(
            RunRecord(
                run_id=r["id"],
                params=r["params"],
                status=r["status"],
                metrics=metrics,
                per_question=per_q,
                failure=r["failure"],
            )
        )
        if r["full_metrics"] is not None:
            full = r["id"]
    return History(
        rounds=[RoundRecord(round=k, runs=v) for k, v in sorted(rounds.items())], full_eval_run=full
    )


def search(config_path: str | Path, *, max_decisions: int = 50) -> Study:
    from sftgate.report import write_report

    config = load_study_config(config_path)
    inputs = prepare_inputs(config)
    reg = Registry(config.registry)
    study, created = reg.open_study(
        config.name, inputs.pins, str(config_path), config.model_dump(mode="json")
    )
    console.rule(f"study {study.name} ({'new' if created else 'resumed'}) · registry {reg.path}")
    restarted = reg.reset_interrupted(study.id)
    if restarted:
        console.print(f"restarting interrupted runs: {', '.join(restarted)}")
    durations: list[float] = [
        r["train_s"] + r["eval_s"] for r in reg.runs(study.id) if r["train_s"] and r["eval_s"]
    ]
    for _ in range(max_decisions):
        planned = [r for r in reg.runs(study.id) if r["status"] == "planned"]
        for n, r in enumerate(planned, 1):
            eta = (
                f", about {sum(durations) / len(durations) * (len(planned) - n + 1) / 60:.1f} min left in this round"
                if durations
                else ""
            )
            console.rule(f"round {r['round']} · run {r['id']} ({n}/{len(planned)}){eta}")
            console.print(f"{r['reason']}\nparams: {r['params']}")
            outcome = execute_run(
                config,
                inputs,
                r["id"],
                r["params"],
                on_stage=lambda stage, rid=r["id"]: reg.update_run(rid, status=stage),
            )
            record_outcome(reg, config, r["id"], outcome)
            if outcome.train_s and outcome.eval_s:
                durations.append(outcome.train_s + outcome.eval_s)
        decision = plan_next(history(reg, study), config.policy)
        reg.add_decision(study.id, decision.model_dump(mode="json"))
        console.print(
            f"[bold]planner:[/bold] {decision.action} (round {decision.round}): {decision.reason}"
        )
        if decision.action == "train":
            reg.add_round(study, decision.round, [(c.params, c.reason) for c in decision.configs])
        elif decision.action == "full_eval":
            assert decision.selected_run is not None
            full_eval(reg, config, inputs, decision.selected_run)
        else:
            reg.set_study_status(study.id, "finished")
            break
    path = write_report(reg, study.name, Path(config.workdir) / "report.md")
    console.print(f"report: {path}")
    return study


def record_outcome(reg: Registry, config: StudyConfig, run_id: str, outcome: RunOutcome) -> None:
    common = {"train_s": outcome.train_s, "eval_s": outcome.eval_s}
    if outcome.status == "failed":
        reg.update_run(run_id, status="failed", failure=outcome.failure, **common)
        return
    assert outcome.metrics is not None and outcome.train_meta is not None
    d = run_dir(config, run_id)
    reg.record_metrics(
        run_id,
        outcome.metrics,
        status="done",
        adapter_id=outcome.train_meta["adapter_id"],
        adapter_path=str(d / "adapter"),
        gate_dir=str(d / "gate"),
        train_meta_json=outcome.train_meta,
        eval_meta_json=outcome.eval_meta,
        failure=None,
        **common,
    )


def full_eval(reg: Registry, config: StudyConfig, inputs: Inputs, run_id: str) -> None:
    console.rule(f"full-set evaluation of {run_id}")
    d = run_dir(config, run_id)
    result = evaluate(eval_config(config, inputs, d / "adapter", d / "full", "full"))
    reg.update_run(run_id, full_dir=str(d / "full"), full_metrics_json=result.metrics)
