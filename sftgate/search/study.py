"""The study config (`kind: study`): what a search pins, where its files go, and its policy.

Relative paths in a study YAML are relative to the file's folder (`load_study_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sftgate.config import StrictModel, load_config, model_under, path_under, pin_view
from sftgate.evaluate import DecodeSettings
from sftgate.hashing import sha256_json
from sftgate.index import IndexSettings
from sftgate.models import Quantization
from sftgate.paths import data_dir
from sftgate.search.executors import ExecutorConfig
from sftgate.search.planner import Policy
from sftgate.tracking import TrackingConfig


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
    cuda_graphs: bool | None = Field(
        None,
        description="None (auto): as `sftgate train` decides, on on CUDA for batch 1 without "
        "accumulation or checkpointing; pinned only when set",
    )
    policy: Policy = Field(default_factory=Policy)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    executor: ExecutorConfig = Field(
        default_factory=ExecutorConfig,
        description="where runs execute: `local` (this machine's GPUs) or `ray` (a cluster); "
        "`executor: ray` is short for `executor: {kind: ray}`",
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="mirror the study into MLflow or TensorBoard as it runs (not pinned: the "
        "registry stays the source of truth); `tracking: mlflow` is short for "
        "`tracking: {kind: mlflow}`",
    )
    note: str | None = Field(None, description="shown at the top of the report")

    @field_validator("executor", "tracking", mode="before")
    @classmethod
    def _kind_alone(cls, value: Any) -> Any:
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

    @classmethod
    def recorded(cls, data: dict[str, Any]) -> StudyConfig:
        """The config as the registry recorded it (its full dump). The executor's dump names the
        fields of both kinds, which a config may not set, so the ones at their defaults go."""
        executor = dict(data.get("executor") or {})
        default = ExecutorConfig(kind=executor.get("kind", "local"))
        executor = {k: v for k, v in executor.items() if k == "kind" or v != getattr(default, k)}
        return cls.model_validate({**data, "executor": executor})

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
            # allow_unreachable changes no result: a study may be resumed with it set.
            "policy": {k: v for k, v in pin_view(self.policy).items() if k != "allow_unreachable"},
            "decode": pin_view(self.decode),
            "training": {
                "quantization": self.quantization,
                "gradient_checkpointing": self.gradient_checkpointing,
                # Added later: only when set, so that earlier studies' pins hold.
                **({} if self.cuda_graphs is None else {"cuda_graphs": self.cuda_graphs}),
            },
        }
        if self.retrieval is not None:
            sections["retrieval"] = {
                "top_k": self.retrieval.top_k,
                "settings": pin_view(self.retrieval.settings),
            }
        return {f"settings.{k}": sha256_json(v) for k, v in sections.items()}


def resolve(config: StudyConfig, base: Path) -> StudyConfig:
    """Relative paths in a study config are relative to the config file's folder."""

    def p(value: str) -> str:
        return path_under(base, value)

    update: dict[str, Any] = {
        k: p(getattr(config, k))
        for k in ("prompt", "train_questions", "gate_questions", "full_questions")
    }
    for k in ("workdir", "registry"):
        if getattr(config, k) is not None:
            update[k] = p(getattr(config, k))
    update["model"] = model_under(base, config.model)
    if config.retrieval:
        update["retrieval"] = config.retrieval.model_copy(
            update={"corpus": p(config.retrieval.corpus)}
        )
    if config.tracking.kind == "tensorboard" and config.tracking.uri:
        update["tracking"] = config.tracking.model_copy(update={"uri": p(config.tracking.uri)})
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
