"""Trackers against the real libraries with local stores: MLflow (SQLite store, local artifacts)
read back with MlflowClient, TensorBoard event files read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sftgate.tracking import (
    DatasetRef,
    TrackedRun,
    TrackedStudy,
    TrackingConfig,
    log_mlflow_run,
    sync,
    sync_mlflow,
    write_tensorboard,
)

mlflow = pytest.importorskip("mlflow", reason="pip install 'sftgate[mlflow]'")
pytest.importorskip("tensorboard", reason="pip install 'sftgate[tensorboard]'")
# MLflow 3 reports usage over the network unless told not to; there is no network here.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

GATE = {"eval_score_avg": 41.5, "schema_pass_rate": 0.9, "grounding_avg": 0.5}
PINS = {"model_id": "tiny-qwen3", "prompt_sha256": "p" * 64, "index_version": "i" * 64}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """One SQLite store for the module (creating MLflow's tables takes seconds)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 16}', encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return folder


def gate_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "gate"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(GATE), encoding="utf-8")
    (folder / "predictions.jsonl").write_text('{"id": "q1", "output": "{}"}\n', encoding="utf-8")
    return folder


def study(tmp_path: Path, *, full: bool = False, finished: bool = False) -> TrackedStudy:
    done = TrackedRun(
        key="r0-0-abc123",
        params={"max_steps": 3, "lr": 2e-4, "lora_r": 16},
        tags={**PINS, "sftgate.round": "0"},
        git_commit="c" * 40,
        loss_per_step=[2.5, 2.0, 1.25],
        metrics={"gate": GATE} | ({"full": {"eval_score_avg": 40.0}} if full else {}),
        curve=[(1, {"eval_score_avg": 20.0}), (2, {"eval_score_avg": 35.0})],
        datasets=[
            DatasetRef("train", "/data/question_v1.json", "t" * 64),
            DatasetRef("gate", "/data/dev100.json", "g" * 64),
            *([DatasetRef("full", "/data/question_v2.json", "f" * 64)] if full else []),
        ],
        adapter_dir=str(adapter(tmp_path)),
        eval_dirs={"gate": str(gate_dir(tmp_path))},
    )
    failed = TrackedRun(
        key="r1-0-def456",
        params={"max_steps": 6, "lr": 1e-4, "lora_r": 16},
        tags={**PINS, "sftgate.round": "1"},
        failure="OutOfMemoryError: CUDA out of memory",
    )
    decisions = [
        {"action": "train", "round": 0, "reason": "smoke", "selected_run": None},
        {"action": "stop", "round": 1, "reason": "plateau", "selected_run": "r0-0-abc123"},
    ]
    return TrackedStudy(
        study_id="s0",
        name=f"study-{tmp_path.name}",
        status="finished" if finished else "running",
        tags=PINS,
        decisions=decisions,
        runs=[done, failed],
        best_by_round={0: 41.5},
    )


def children(client, parent_id: str):
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def test_mlflow_study_read_back_with_the_client(tmp_path, store):
    uri, folder = store
    config = TrackingConfig(kind="mlflow", uri=uri)
    parent_id = sync_mlflow(study(tmp_path), config)
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(parent_id)
    assert parent.data.tags["sftgate.selected_run"] == "r0-0-abc123"
    assert parent.data.tags["prompt_sha256"] == "p" * 64
    assert parent.info.status == "RUNNING"  # the study is not finished
    decisions = json.loads(Path(client.download_artifacts(parent_id, "decisions.json")).read_text())
    assert [d["action"] for d in decisions["decisions"]] == ["train", "stop"]

    runs = children(client, parent_id)
    assert set(runs) == {"r0-0-abc123", "r1-0-def456"}
    done = runs["r0-0-abc123"]
    assert done.info.status == "FINISHED"
    assert done.data.params == {"max_steps": "3", "lr": "0.0002", "lora_r": "16"}
    assert done.data.tags["mlflow.source.git.commit"] == "c" * 40
    assert done.data.tags["index_version"] == "i" * 64
    loss = client.get_metric_history(done.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in loss] == [(1, 2.5), (2, 2.0), (3, 1.25)]
    assert done.data.metrics["gate/eval_score_avg"] == 41.5
    curve = client.get_metric_history(done.info.run_id, "curve/eval_score_avg")
    assert [(m.step, m.value) for m in curve] == [(1, 20.0), (2, 35.0)]
    assert (folder / "mlartifacts").is_dir()  # beside the SQLite file, not in the current folder
    assert not Path("mlruns").exists()
    inputs = {
        i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags})
        for i in done.inputs.dataset_inputs
    }
    assert inputs["question_v1.json"] == (
        "t" * 32,
        {"mlflow.data.context": "train", "version": "t" * 64},
    )
    assert inputs["dev100.json"][1]["mlflow.data.context"] == "gate"
    files = {f.path for f in client.list_artifacts(done.info.run_id, "adapter")}
    assert files == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    assert {f.path for f in client.list_artifacts(done.info.run_id, "gate")} == {
        "gate/metrics.json",
        "gate/predictions.jsonl",
    }
    failed = runs["r1-0-def456"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["sftgate.failure"].startswith("OutOfMemoryError")


def test_mlflow_sync_is_idempotent_and_adds_the_full_set(tmp_path, store):
    uri, _ = store
    config = TrackingConfig(kind="mlflow", uri=uri, experiment=f"idem-{tmp_path.name}")
    first = sync_mlflow(study(tmp_path / "a"), config)
    again = sync_mlflow(study(tmp_path / "a"), config)
    assert again == first
    client = mlflow.MlflowClient(uri)
    runs = children(client, first)
    assert len(runs) == 2
    done_id = runs["r0-0-abc123"].info.run_id
    assert len(client.get_metric_history(done_id, "train/loss")) == 3  # not logged twice
    assert len(client.get_metric_history(first, "best_eval_score_avg")) == 1

    sync_mlflow(study(tmp_path / "a", full=True, finished=True), config)
    runs = children(client, first)
    assert len(runs) == 2
    done = client.get_run(done_id)
    assert done.data.metrics["full/eval_score_avg"] == 40.0
    assert done.data.tags["sftgate.logged"] == "full,gate,train"
    contexts = {
        t.value
        for i in done.inputs.dataset_inputs
        for t in i.tags
        if t.key == "mlflow.data.context"
    }
    assert contexts == {"train", "gate", "full"}
    assert client.get_run(first).info.status == "FINISHED"


def test_mlflow_run_outside_a_study(tmp_path, store):
    uri, _ = store
    run = study(tmp_path).runs[0]
    run_id = log_mlflow_run(run, TrackingConfig(kind="mlflow", uri=uri))
    client = mlflow.MlflowClient(uri)
    logged = client.get_run(run_id)
    assert client.get_experiment(logged.info.experiment_id).name == "sftgate"
    assert "mlflow.parentRunId" not in logged.data.tags
    assert logged.data.metrics["train/loss"] == 1.25


def test_mlflow_default_store_is_under_sftgate_home(tmp_path):
    parent_id = sync(study(tmp_path), TrackingConfig(kind="mlflow"))
    home = Path(os.environ["SFTGATE_HOME"])
    assert parent_id == f"sqlite:///{(home / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(parent_id)
    exp = client.get_experiment_by_name(f"study-{tmp_path.name}")
    run = client.search_runs([exp.experiment_id], "tags.`sftgate.run_id` = 'r0-0-abc123'")[0]
    # artifacts next to the store, not in the current directory
    assert (home / "mlartifacts").is_dir()
    assert client.list_artifacts(run.info.run_id, "adapter")


def test_tensorboard_read_back_with_the_event_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "tb"
    folder = write_tensorboard(study(tmp_path), root)
    assert folder == root / f"study-{tmp_path.name}"
    assert sorted(p.name for p in folder.iterdir()) == ["_study", "r0-0-abc123", "r1-0-def456"]

    def events(path: Path) -> EventAccumulator:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        return acc

    run = events(folder / "r0-0-abc123")
    assert [(e.step, e.value) for e in run.Scalars("train/loss")] == [(1, 2.5), (2, 2.0), (3, 1.25)]
    assert run.Scalars("gate/eval_score_avg")[0].value == 41.5
    assert [(e.step, e.value) for e in run.Scalars("curve/eval_score_avg")] == [
        (1, 20.0),
        (2, 35.0),
    ]
    tags = run.Tensors("tags/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "i" * 64 in tags and "c" * 40 in tags
    params = run.Tensors("train_params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| lr | `0.0002` |" in params
    assert run.PluginTagToContent("hparams")  # the HParams dashboard's summaries
    failed = events(folder / "r1-0-def456")
    assert (
        "OutOfMemoryError"
        in failed.Tensors("failure/text_summary")[0].tensor_proto.string_val[0].decode()
    )
    study_events = events(folder / "_study")
    assert [e.value for e in study_events.Scalars("study/best_eval_score_avg")] == [41.5]
    assert len(study_events.Tensors("decisions/text_summary")) == 2

    # written anew, not appended: the same loss points once
    write_tensorboard(study(tmp_path, full=True), root)
    assert len(events(folder / "r0-0-abc123").Scalars("train/loss")) == 3
    assert events(folder / "r0-0-abc123").Scalars("full/eval_score_avg")[0].value == 40.0


def test_tracking_config():
    assert TrackingConfig().kind == "none"
    assert sync(study_stub(), TrackingConfig()) is None
    with pytest.raises(ValueError):
        TrackingConfig(kind="wandb")  # type: ignore[arg-type]


def study_stub() -> TrackedStudy:
    return TrackedStudy("s", "s", "running", {}, [], [])


@pytest.mark.slow
def test_cli_train_and_eval_log_to_mlflow_and_tensorboard(tmp_path, store, capsys):
    from sftgate.cli import main
    from tests.conftest import PROMPT_PATH, make_question, write_json

    passages = [{"source_path": "it/vpn.md#申請", "text": "員工須填寫 IT-07 遠端存取申請表。"}]
    items = [make_question(f"q{i}", contexts=passages) for i in range(3)]
    questions = write_json(tmp_path / "q.json", {"index_version": "idx", "questions": items})
    config = tmp_path / "train.yaml"
    config.write_text(
        f"kind: train\nmodel: tiny-qwen3\nquestions: {questions}\nprompt: {PROMPT_PATH}\n"
        f"out: {tmp_path / 'adapter'}\nparams:\n  max_steps: 3\n  max_length: 4096\n",
        encoding="utf-8",
    )
    uri, _ = store
    assert (
        main(["train", "--config", str(config), "--tracking", "mlflow", "--tracking-uri", uri]) == 0
    )
    assert "tracking: MLflow run" in capsys.readouterr().out
    meta = json.loads((tmp_path / "adapter" / "sftgate_train.json").read_text(encoding="utf-8"))
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("sftgate")
    found = client.search_runs(
        [exp.experiment_id], f"tags.`sftgate.run_id` = '{meta['adapter_id']}'"
    )
    assert len(found) == 1
    run = found[0]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.value for m in history] == pytest.approx(meta["loss_per_step"])
    assert run.data.params["max_steps"] == "3"
    assert run.data.tags["prompt_sha256"] == meta["prompt_sha256"]
    assert run.data.tags["mlflow.source.git.commit"] == str(meta["provenance"]["git"]["commit"])
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest == meta["train_set_version"][:32]
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts

    tb = tmp_path / "tb"
    argv = ["eval", "--model", "tiny-qwen3", "--adapter", str(tmp_path / "adapter")]
    argv += [
        "--questions",
        str(questions),
        "--out",
        str(tmp_path / "ev"),
        "--prompt",
        str(PROMPT_PATH),
    ]
    argv += ["--max-new-tokens", "8", "--tracking", "tensorboard", "--tracking-uri", str(tb)]
    assert main(argv) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [folder] = (tb / "eval").iterdir()
    acc = EventAccumulator(str(folder))
    acc.Reload()
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    logged = acc.Scalars("gate/schema_pass_rate")[0].value
    assert logged == pytest.approx(metrics["schema_pass_rate"])
    tags = acc.Tensors("tags/text_summary")[0].tensor_proto.string_val[0].decode()
    assert meta["adapter_id"] in tags


def test_a_missing_tracker_library_fails_before_any_work(tmp_path, monkeypatch, capsys):
    import sys

    from sftgate.cli import main
    from tests.conftest import PROMPT_PATH, make_question, write_json

    passages = [{"source_path": "it/vpn.md", "text": "員工須填寫 IT-07 遠端存取申請表。"}]
    items = [make_question("q1", contexts=passages)]
    write_json(tmp_path / "q.json", {"index_version": "idx", "questions": items})
    (tmp_path / "t.yaml").write_text(
        f"kind: train\nmodel: tiny-qwen3\nquestions: {tmp_path / 'q.json'}\nprompt: {PROMPT_PATH}\n"
        f"out: {tmp_path / 'o'}\n",
        "utf-8",
    )
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if MLflow were not installed
    assert main(["train", "--config", str(tmp_path / "t.yaml"), "--tracking", "mlflow"]) == 1
    assert not (tmp_path / "o").exists()  # nothing trained
    assert "pip install 'sftgate[mlflow]'" in capsys.readouterr().err


def test_a_store_that_cannot_be_opened_is_an_error_before_any_work(tmp_path):
    from sftgate.errors import SftgateError
    from sftgate.tracking import check_installed

    (tmp_path / "a-file").write_text("", encoding="utf-8")  # no folder can be made under it
    with pytest.raises(SftgateError, match="tracking: mlflow cannot use the store"):
        check_installed(
            TrackingConfig(kind="mlflow", uri=f"sqlite:///{tmp_path / 'a-file' / 'x.db'}")
        )
