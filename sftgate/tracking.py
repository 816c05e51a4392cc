"""Experiment trackers: sftgate's runs mirrored into MLflow or TensorBoard, from plain data.

The registry stays the source of truth. A tracker is handed what the registry (or a train or eval
folder) holds: a run's train_params, its metadata (loss per step, pins, git commit, the adapter
folder) and its metrics, and writes them where MLflow's or TensorBoard's UI shows them.

- **MLflow** (`pip install 'sftgate[mlflow]'`): one experiment per study (its name unless
  `experiment:` says otherwise), one parent run per study with the planner's decisions, one nested
  run per sftgate run. `sync_mlflow` is idempotent: what a run already has is not logged again, so
  the search calls it after every outcome and decision, and `sftgate export mlflow STUDY`
  back-fills a finished study with the same function.
- **TensorBoard** (`pip install 'sftgate[tensorboard]'`): one folder per study, a sub-folder per
  run and one for the study. Event files can only be appended to, so the study's folder is written
  anew from the registry on every sync (a fraction of a second for a study's runs).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from sftgate import libwarnings
from sftgate.config import StrictModel
from sftgate.errors import SftgateError
from sftgate.paths import data_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient

TrackerKind = Literal["none", "mlflow", "tensorboard"]
SPLITS = ("gate", "full")
# MLflow limits a dataset digest to 36 characters; the full SHA-256 goes into the input's tags.
DIGEST_CHARS = 32
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the tag MLflow's UI shows as the source version
RUN_KEY_TAG = "sftgate.run_id"
STUDY_KEY_TAG = "sftgate.study_id"
LOGGED_TAG = "sftgate.logged"  # the parts of a run already logged: train, gate, full


class TrackingConfig(StrictModel):
    kind: TrackerKind = Field(
        "none",
        description="mirror runs into mlflow or tensorboard (the registry stays the source of "
        "truth); none: only the registry",
    )
    uri: str | None = Field(
        None,
        description="mlflow: a tracking URI (default sqlite:///$SFTGATE_HOME/mlflow.db; a SQLite "
        "store keeps artifacts in mlartifacts/ beside its file); tensorboard: the log folder (default "
        "$SFTGATE_HOME/tensorboard)",
    )
    experiment: str | None = Field(
        None, description="mlflow experiment; default the study's name (train and eval: sftgate)"
    )


# ---------------------------------------------------------------------- plain data


@dataclass(frozen=True)
class DatasetRef:
    """A question set a run read, by its content hash (train_set_version / eval_set_version)."""

    context: str  # train | gate | full
    path: str
    version: str


@dataclass(frozen=True)
class TrackedRun:
    """One run as a tracker sees it. `key` is its name there (a run id, or an adapter id)."""

    key: str
    params: Mapping[str, Any] = field(default_factory=dict)  # train_params
    tags: Mapping[str, str] = field(default_factory=dict)  # pins and sftgate's labels
    git_commit: str | None = None
    loss_per_step: Sequence[float] = ()
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # split -> metrics
    # the learning curve, when the run has one: (step, gate metrics at that checkpoint)
    curve: Sequence[tuple[int, Mapping[str, float]]] = ()
    datasets: Sequence[DatasetRef] = ()
    adapter_dir: str | None = None
    eval_dirs: Mapping[str, str] = field(default_factory=dict)  # split -> evaluation folder
    failure: str | None = None

    @property
    def parts(self) -> list[str]:
        """What there is to log: the training (params, loss, adapter) and each evaluation."""
        return (["train"] if self.params else []) + [s for s in SPLITS if s in self.metrics]


@dataclass(frozen=True)
class TrackedStudy:
    study_id: str
    name: str
    status: str  # running | finished
    tags: Mapping[str, str]  # the pins
    decisions: Sequence[Mapping[str, Any]]
    runs: Sequence[TrackedRun]
    best_by_round: Mapping[int, float] = field(default_factory=dict)  # best eval_score_avg so far


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scorer's aggregates as numbers (the 95% interval as two), without labels and counts."""
    out = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if "eval_score_ci95" in metrics:
        out["eval_score_ci_low"], out["eval_score_ci_high"] = map(float, metrics["eval_score_ci95"])
    return out


def run_from_train_meta(meta: Mapping[str, Any], adapter_dir: str | Path) -> TrackedRun:
    """A run of `sftgate train`, from the adapter's metadata (sftgate_train.json)."""
    return TrackedRun(
        key=meta["adapter_id"],
        params=meta["train_params"],
        tags={
            "adapter_id": meta["adapter_id"],
            **{
                k: str(meta[k])
                for k in ("model_id", "prompt_version", "prompt_sha256", "index_version")
            },
            "train_set_version": meta["train_set_version"],
        },
        git_commit=meta["provenance"]["git"]["commit"],
        loss_per_step=meta["loss_per_step"],
        datasets=[DatasetRef("train", meta["train_set_path"], meta["train_set_version"])],
        adapter_dir=str(adapter_dir),
    )


def run_from_eval(
    metrics: Mapping[str, Any], meta: Mapping[str, Any], eval_dir: str | Path
) -> TrackedRun:
    """A run of `sftgate eval`, from its metrics.json and eval_meta.json."""
    tags = {k: str(meta[k]) for k in ("model_id", "prompt_sha256", "index_version")}
    tags |= {
        "eval_set_version": meta["eval_set_version"],
        "prompt_version": str(meta["prompt_version"]),
    }
    if meta["adapter_id"]:
        tags["adapter_id"] = meta["adapter_id"]
    return TrackedRun(
        key=f"{Path(eval_dir).name}-{meta['eval_set_version'][:8]}",
        tags=tags,
        git_commit=meta["provenance"]["git"]["commit"],
        metrics={"gate": numeric_metrics(metrics)},
        datasets=[DatasetRef("gate", meta["questions_path"], meta["eval_set_version"])],
        eval_dirs={"gate": str(eval_dir)},
    )


# ---------------------------------------------------------------------- MLflow


def default_mlflow_uri() -> str:
    return f"sqlite:///{(data_dir() / 'mlflow.db').resolve()}"


@contextmanager
def _mlflow(uri: str | None) -> Iterator[tuple[MlflowClient, str | None]]:
    """(client, artifact location for new experiments: None when the store decides)."""
    try:
        import mlflow
    except ImportError:
        raise SftgateError(
            "tracking: mlflow needs MLflow: pip install 'sftgate[mlflow]' (or set tracking: none)"
        ) from None
    # MLflow logs "Creating initial MLflow database tables..." at INFO on a new store, which would
    # scroll the live view; its warnings and errors still show.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with libwarnings.quiet():  # MLflow's SQL store's use of SQLAlchemy's deprecated `noload`
        uri = uri or default_mlflow_uri()
        client = mlflow.MlflowClient(tracking_uri=uri)
        yield client, _artifacts_beside(uri)


def _artifacts_beside(uri: str) -> str | None:
    """A local SQLite store keeps new experiments' artifacts in `mlartifacts/` beside its file
    (MLflow's own default is ./mlruns in the current folder); other stores decide themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def _experiment_id(client: MlflowClient, name: str, artifacts: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifacts))


def _find_run(client: MlflowClient, experiment_id: str, filters: Mapping[str, str]) -> Any:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    found = client.search_runs([experiment_id], query, max_results=2)
    return found[0] if found else None


def _log_part(client: MlflowClient, run_id: str, run: TrackedRun, part: str) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    if part == "train":
        params = [Param(k, str(v)) for k, v in sorted(run.params.items())]
        loss = [Metric("train/loss", float(v), 0, i) for i, v in enumerate(run.loss_per_step, 1)]
        for start in range(0, max(len(loss), 1), 1000):  # log_batch takes 1000 metrics at most
            client.log_batch(run_id, metrics=loss[start : start + 1000], params=params)
            params = []
        if run.adapter_dir:
            client.log_artifacts(run_id, run.adapter_dir, "adapter")
    else:
        metrics = [Metric(f"{part}/{k}", v, 0, 0) for k, v in sorted(run.metrics[part].items())]
        if part == "gate":
            metrics += [
                Metric(f"curve/{k}", v, 0, step)
                for step, point in run.curve
                for k, v in point.items()
            ]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        folder = run.eval_dirs.get(part)
        if folder:
            for path in sorted(Path(folder).glob("*.json*")):
                client.log_artifact(run_id, str(path), part)
    datasets = [
        DatasetInput(
            Dataset(
                name=Path(d.path).name,
                digest=d.version[:DIGEST_CHARS],
                source_type="local",
                source=json.dumps({"uri": d.path}),
            ),
            tags=[InputTag("mlflow.data.context", d.context), InputTag("version", d.version)],
        )
        for d in run.datasets
        if d.context == part or (part == "train" and d.context not in SPLITS)
    ]
    if datasets:
        client.log_inputs(run_id, datasets=datasets)


def log_run(client: MlflowClient, experiment_id: str, run: TrackedRun, parent: str | None) -> str:
    """Log what `run` has and the MLflow run (found by its key) lacks; returns the MLflow run id.

    Each part (train, gate, full) is recorded in a tag only once logged, so a sync interrupted
    half-way logs the part again and nothing is lost."""
    from mlflow.entities import RunStatus

    filters = {RUN_KEY_TAG: run.key} | ({"mlflow.parentRunId": parent} if parent else {})
    found = _find_run(client, experiment_id, filters)
    if found is None:
        tags = {**run.tags, RUN_KEY_TAG: run.key, LOGGED_TAG: ""}
        if parent:
            tags["mlflow.parentRunId"] = parent
        if run.git_commit:
            tags[GIT_COMMIT_TAG] = run.git_commit
        found = client.create_run(experiment_id, tags=tags, run_name=run.key)
    run_id = str(found.info.run_id)
    logged = set(filter(None, found.data.tags.get(LOGGED_TAG, "").split(",")))
    for part in run.parts:
        if part not in logged:
            _log_part(client, run_id, run, part)
            logged.add(part)
            client.set_tag(run_id, LOGGED_TAG, ",".join(sorted(logged)))
    if run.failure:
        client.set_tag(run_id, "sftgate.failure", run.failure[:5000])
    status = RunStatus.FAILED if run.failure else RunStatus.FINISHED
    if found.info.status != RunStatus.to_string(status):
        client.set_terminated(run_id, RunStatus.to_string(status))
    return run_id


def log_mlflow_run(run: TrackedRun, config: TrackingConfig) -> str:
    """One run of `sftgate train` or `sftgate eval`, outside a study. Returns MLflow's run id."""
    with _mlflow(config.uri) as (client, artifacts):
        experiment_id = _experiment_id(client, config.experiment or "sftgate", artifacts)
        return log_run(client, experiment_id, run, parent=None)


def sync_mlflow(study: TrackedStudy, config: TrackingConfig) -> str:
    """Mirror a study into MLflow: its parent run (pins, decisions, status) and each finished run
    nested under it. Returns the parent's MLflow run id."""
    from mlflow.entities import Metric, RunStatus

    with _mlflow(config.uri) as (client, artifacts):
        experiment_id = _experiment_id(client, config.experiment or study.name, artifacts)
        parent = _find_run(client, experiment_id, {STUDY_KEY_TAG: study.study_id})
        if parent is None:
            parent = client.create_run(
                experiment_id,
                tags={**study.tags, STUDY_KEY_TAG: study.study_id, "sftgate.study": study.name},
                run_name=study.name,
            )
        parent_id = str(parent.info.run_id)
        for run in study.runs:
            log_run(client, experiment_id, run, parent_id)
        client.log_dict(parent_id, {"decisions": list(study.decisions)}, "decisions.json")
        logged = {m.step for m in client.get_metric_history(parent_id, "best_eval_score_avg")}
        best = [
            Metric("best_eval_score_avg", score, 0, round_)
            for round_, score in sorted(study.best_by_round.items())
            if round_ not in logged
        ]
        client.log_batch(parent_id, metrics=best)
        if study.decisions:
            last = study.decisions[-1]
            client.set_tag(
                parent_id, "sftgate.decision", f"{last['action']}: {last['reason']}"[:5000]
            )
            if last.get("selected_run"):
                client.set_tag(parent_id, "sftgate.selected_run", last["selected_run"])
        if study.status == "finished" and parent.info.status != "FINISHED":
            client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))
        return parent_id


# ---------------------------------------------------------------------- TensorBoard


def default_tensorboard_dir() -> Path:
    return data_dir() / "tensorboard"


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SftgateError(
            "tracking: tensorboard needs TensorBoard: pip install 'sftgate[tensorboard]' "
            "(or set tracking: none)"
        ) from None
    return SummaryWriter


def _summary_writer(folder: Path) -> Any:
    return _summary_writer_class()(log_dir=str(folder))


def _markdown_table(rows: Mapping[str, Any]) -> str:
    # TensorBoard's text dashboard renders Markdown.
    return "| key | value |\n|---|---|\n" + "".join(f"| {k} | `{v}` |\n" for k, v in rows.items())


def write_tensorboard_run(run: TrackedRun, folder: Path) -> None:
    """One run's event files in `folder`: train/loss per step, each split's metrics, its params
    and tags as text, and its params with the gate metrics in the HParams dashboard."""
    writer = _summary_writer(folder)
    try:
        for step, loss in enumerate(run.loss_per_step, 1):
            writer.add_scalar("train/loss", loss, step)
        for split, metrics in run.metrics.items():
            for k, v in metrics.items():
                writer.add_scalar(f"{split}/{k}", v, 0)
        for step, point in run.curve:
            for k, v in point.items():
                writer.add_scalar(f"curve/{k}", v, step)
        tags = {**run.tags, **({"git_commit": run.git_commit} if run.git_commit else {})}
        writer.add_text("tags", _markdown_table(tags))
        if run.params:
            writer.add_text("train_params", _markdown_table(run.params))
        if run.adapter_dir:
            writer.add_text("adapter", f"`{run.adapter_dir}`")
        for d in run.datasets:
            writer.add_text(f"dataset/{d.context}", f"`{d.path}` version `{d.version}`")
        if run.failure:
            writer.add_text("failure", run.failure)
        if run.params and "gate" in run.metrics:
            # run_name=".": the HParams summary goes into this run's folder, not a new sub-folder
            writer.add_hparams(
                dict(run.params),
                {f"hparam/{k}": v for k, v in run.metrics["gate"].items()},
                run_name=".",
            )
    finally:
        writer.close()


def write_tensorboard(study: TrackedStudy, root: str | Path | None = None) -> Path:
    """ROOT/STUDY/ written anew: a folder per run and `_study` with the decisions and the best
    score by round. Written beside the old folder and swapped in, so a reader sees one or the
    other. Returns the study's folder."""
    root = Path(root) if root else default_tensorboard_dir()
    final = root / study.name
    fresh = root / f".{study.name}.partial"
    shutil.rmtree(fresh, ignore_errors=True)
    for run in study.runs:
        write_tensorboard_run(run, fresh / run.key)
    writer = _summary_writer(fresh / "_study")
    try:
        writer.add_text("pins", _markdown_table(study.tags))
        for i, d in enumerate(study.decisions):
            writer.add_text(
                "decisions", f"**{d['action']}** (round {d['round']}): {d['reason']}", i
            )
        for round_, score in sorted(study.best_by_round.items()):
            writer.add_scalar("study/best_eval_score_avg", score, round_)
    finally:
        writer.close()
    old = root / f".{study.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    fresh.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def check_installed(config: TrackingConfig) -> None:
    """Fail now, not after hours of training, when the configured tracker's library is missing."""
    if config.kind == "mlflow":
        uri = config.uri or default_mlflow_uri()
        try:
            with _mlflow(uri) as (client, _):
                client.search_experiments(max_results=1)
        except SftgateError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever MLflow raises for a store it cannot use
            raise SftgateError(
                f"tracking: mlflow cannot use the store {uri} ({type(e).__name__}: {e}); fix "
                "`tracking.uri` (or --tracking-uri), or set tracking: none"
            ) from None
    elif config.kind == "tensorboard":
        _summary_writer_class()


def track_run(run: TrackedRun, config: TrackingConfig, group: str) -> str | None:
    """One run of `sftgate train` or `sftgate eval` (group: train | eval) into the configured
    tracker: where it went, or None for `none`. TensorBoard: ROOT/GROUP/KEY/, written anew."""
    if config.kind == "mlflow":
        run_id = log_mlflow_run(run, config)
        return f"MLflow run {run_id} in {config.uri or default_mlflow_uri()}"
    if config.kind == "tensorboard":
        folder = Path(config.uri or default_tensorboard_dir()) / group / run.key
        shutil.rmtree(folder, ignore_errors=True)
        write_tensorboard_run(run, folder)
        return str(folder)
    return None


def sync(study: TrackedStudy, config: TrackingConfig) -> str | None:
    """Mirror the study into the configured tracker: where it went, or None for `none`."""
    if config.kind == "mlflow":
        sync_mlflow(study, config)
        return config.uri or default_mlflow_uri()
    if config.kind == "tensorboard":
        return str(write_tensorboard(study, config.uri))
    return None
