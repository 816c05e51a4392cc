"""The search end to end on a small project with tiny-qwen3 on the CPU: real index, training,
evaluation, planner and SQLite registry; no mocks."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftgate.cli import main
from sftgate.errors import MismatchError
from sftgate.search import search
from sftgate.search.registry import Registry
from sftgate.search.runner import execute_run
from tests.conftest import REPO, make_question, write_json

# A short prompt in the documented format: tiny-qwen3 spends a token per byte, and the shipped
# prompt's instructions would make every test run several times slower.
SHORT_PROMPT = """---
prompt_version: test-short
---
## system

```text
Reply with one JSON object.
```

## user

```text
Q: {question}
{passages}
```

## passage

```text
[{n}] {source_path}: {text}
```
"""

KB = {
    "it/vpn.md": "# VPN\n\n## 申請\n\n員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。\n\n"
    "## 連線\n\n連線時請使用公司發放的筆電，並開啟雙因素驗證。\n",
    "hr/leave.md": "# Leave\n\n## Annual leave\n\nEmployees get 14 days of annual leave per year. "
    "Apply in the HR portal at least three days ahead.\n",
}
EN = {
    "answer": "Apply in the HR portal three days ahead.",
    "detailed_description": "Annual leave is applied for in the HR portal at least three days ahead.",
    "original_evidence": ["Apply in the HR portal at least three days ahead."],
    "source_paths": ["hr/leave.md"],
}


def questions(prefix: str, n: int) -> list[dict]:
    items = []
    for i in range(n):
        if i % 2:
            items.append(
                make_question(
                    f"{prefix}{i}", question=f"How do I apply for leave? ({i})", reference=EN
                )
            )
        else:
            items.append(make_question(f"{prefix}{i}", question=f"VPN 帳號要怎麼申請？（{i}）"))
    return items


def make_project(root: Path, **policy: Any) -> Path:
    """A knowledge base, three question sets and a study config; returns the config's path."""
    for rel, text in KB.items():
        (root / "kb" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "kb" / rel).write_text(text, encoding="utf-8")
    write_json(root / "train.json", questions("t", 4))
    write_json(root / "gate.json", questions("g", 3))
    write_json(root / "full.json", questions("f", 5))
    (root / "prompt.md").write_text(SHORT_PROMPT, encoding="utf-8")
    config = {
        "kind": "study",
        "name": "tiny-study",
        "model": "tiny-qwen3",
        "prompt": "prompt.md",
        "train_questions": "train.json",
        "gate_questions": "gate.json",
        "full_questions": "full.json",
        "retrieval": {
            "corpus": "kb",
            "top_k": 1,
            "settings": {"chunk_chars": 200, "overlap_chars": 0},
        },
        "workdir": "work",
        "registry": "registry.sqlite",
        "tracking": {"kind": "tensorboard", "uri": "tb"},  # relative to the config's folder
        "decode": {"max_new_tokens": 6, "batch_size": 4, "merge_check_questions": 0},
        "policy": {
            "thresholds": {"smoke_schema": 0.0, "max_rounds": 3},
            "round0": {"max_steps": 1, "max_length": 1024, "lr": 2e-3},
            "round1": [{"max_steps": 2}, {"max_steps": 3, "lr": 1e-3}, {"max_length": 64}],
            "round1_reasons": ["base", "conservative", "too short: fails"],
            "steps_delta": 1,
            "long_max_length": 1536,
            **policy,
        },
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def runs_by_round(registry: Path) -> dict[int, list[dict]]:
    reg = Registry(registry)
    try:
        out: dict[int, list[dict]] = {}
        for r in reg.runs():  # the rows as recorded, column by column
            out.setdefault(r.round, []).append(reg.run_json(r.id))
        return out
    finally:
        reg.close()


@dataclass
class Killed:
    config: Path
    busy_at_kill: list[tuple[str, str]]  # (run id, state) of the run the kill interrupted
    done_at_kill: dict[str, dict]  # finished runs' rows at the kill
    result: Any  # the resumed search's SearchResult


def kill_mid_run(config: Path, timeout_s: float = 300) -> tuple[list, dict]:
    """Start `sftgate search` in a subprocess and SIGKILL it while a run is training or
    evaluating, once at least two runs have finished."""
    db = config.parent / "registry.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sftgate", "search", "--config", str(config)],
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if not db.exists():
                continue
            try:
                con = sqlite3.connect(db, timeout=1)
                rows = con.execute("SELECT id, status FROM runs").fetchall()
                con.close()
            except sqlite3.OperationalError:
                continue
            busy = [r for r in rows if r[1] in ("training", "evaluating")]
            if sum(r[1] == "done" for r in rows) >= 2 and busy:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                done = {r["id"]: r for rs in runs_by_round(db).values() for r in rs}
                return busy, {k: v for k, v in done.items() if v["status"] == "done"}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    raise AssertionError("the search finished or stalled before it could be killed mid-run")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Killed:
    """A study killed mid-run in a subprocess, then resumed here to its end."""
    config = make_project(tmp_path_factory.mktemp("project"))
    busy, done = kill_mid_run(config)
    return Killed(config, busy, done, search(config, progress=False))


@pytest.mark.slow
def test_killed_search_resumes_without_redoing_finished_runs(finished):
    after = {
        r["id"]: r
        for rs in runs_by_round(finished.config.parent / "registry.sqlite").values()
        for r in rs
    }
    for run_id, r in finished.done_at_kill.items():  # finished runs are not redone
        assert (after[run_id]["adapter_id"], after[run_id]["updated_at"]) == (
            r["adapter_id"],
            r["updated_at"],
        )
    for run_id, _ in finished.busy_at_kill:  # the interrupted run restarted and finished
        assert after[run_id]["status"] in ("done", "failed")
    assert all(r["status"] in ("done", "failed") for r in after.values())


@pytest.mark.slow
def test_search_walks_the_seed_rounds_and_records_everything(finished):
    config, result = finished.config, finished.result
    root = config.parent
    rounds = runs_by_round(root / "registry.sqlite")
    # round 0 smoke, round 1's three configs (one fails), round 2's small steps, then a plateau
    assert sorted(rounds) == [0, 1, 2]
    assert [len(rounds[0]), len(rounds[1])] == [1, 3]
    assert 1 <= len(rounds[2]) <= 2
    failed = [r for r in rounds[1] if r["status"] == "failed"]
    assert len(failed) == 1 and "max_length=64" in failed[0]["failure"]
    assert (root / "work" / "runs" / failed[0]["id"] / "failure-gate.txt").exists()
    for r in [r for rs in rounds.values() for r in rs if r["status"] == "done"]:
        assert r["eval_score_avg"] is not None and r["eval_score_ci_low"] is not None
        assert r["schema_pass_rate"] == 0.0  # a random model
        assert r["adapter_id"] and Path(r["adapter_path"], "adapter_config.json").exists()
        assert r["prompt_sha256"] == result.study.pins["prompt_sha256"]
        assert r["train_meta"]["provenance"]["libraries"]["torch"]
        assert r["train_s"] > 0 and r["eval_s"] > 0
    assert result.decision.action == "stop" and "plateau" in result.decision.reason
    assert result.study.status == "finished"
    report = (root / "work" / "report.md").read_text(encoding="utf-8")
    assert "not expected to pass the gate" in report and "Gate: not passed" in report
    for png in ("scores.png", "loss.png", "submetrics.png", "context_recall.png"):
        assert (root / "work" / png).stat().st_size > 1000
    assert (root / "work" / "report.html").exists()
    reg = Registry(root / "registry.sqlite")
    decisions = reg.decisions(result.study.id)
    assert [d["action"] for d in decisions] == ["train", "train", "train", "stop"]
    assert len(reg.question_scores(rounds[1][0]["id"])) == 3


def page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    tag = '<script type="application/json" id="data">'
    start = text.index(tag) + len(tag)
    return json.loads(text[start : text.index("</script>", start)])


@pytest.mark.slow
def test_the_report_links_a_failure_browser_of_every_evaluated_run(finished):
    root = finished.config.parent
    reg = Registry(root / "registry.sqlite")
    done = [r for r in reg.runs() if r.state.value == "done"]
    assert "[failures.html](failures.html)" in (root / "work" / "report.md").read_text("utf-8")
    assert "<a href='failures.html'>" in (root / "work" / "report.html").read_text("utf-8")
    data = page_data(root / "work" / "failures.html")
    assert [q["id"] for q in data["questions"]] == ["g0", "g1", "g2"]
    assert data["first"] == finished.result.decision.selected_run
    assert [r["id"] for r in data["runs"]] == [r.id for r in done]
    for r in done:
        lines = (Path(str(r.gate_dir)) / "predictions.jsonl").read_text("utf-8").splitlines()
        outputs = {d["id"]: d["output"] for d in map(json.loads, lines)}
        shown = next(x for x in data["runs"] if x["id"] == r.id)["results"]
        assert {q: v["output"] for q, v in shown.items()} == outputs
        scores = {s.id: round(s.eval_score, 2) for s in reg.question_scores(r.id)}
        assert {q: v["score"] for q, v in shown.items()} == scores
    # the passages the gate evaluation read: the study's frozen contexts, top 1
    assert all(len(q["passages"]) == 1 for q in data["questions"])


@pytest.mark.slow
def test_the_search_mirrors_the_study_into_tensorboard(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = finished.config.parent
    reg = Registry(root / "registry.sqlite")
    finished_runs = [r for r in reg.runs() if r.state.value in ("done", "failed")]
    folder = root / "tb" / "tiny-study"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["_study", *(r.id for r in finished_runs)]
    )
    for r in finished_runs:
        acc = EventAccumulator(str(folder / r.id), size_guidance={"scalars": 0})
        acc.Reload()
        if r.train_meta:
            losses = [e.value for e in acc.Scalars("train/loss")]
            assert losses == pytest.approx(r.train_meta["loss_per_step"], rel=1e-6)
        if r.metrics is not None:
            assert acc.Scalars("gate/eval_score_avg")[0].value == pytest.approx(
                r.metrics.eval_score_avg
            )
    study = EventAccumulator(str(folder / "_study"), size_guidance={"tensors": 0})
    study.Reload()
    assert len(study.Tensors("decisions/text_summary")) == len(
        reg.decisions(finished.result.study.id)
    )


@pytest.mark.slow
def test_export_backfills_the_finished_study_into_mlflow(finished, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="pip install 'sftgate[mlflow]'")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    root = finished.config.parent
    uri = f"sqlite:///{root / 'mlflow.db'}"
    argv = ["export", "mlflow", "tiny-study", "--registry", str(root / "registry.sqlite")]
    assert main([*argv, "--tracking-uri", uri]) == 0
    assert main([*argv, "--tracking-uri", uri]) == 0  # again: nothing is logged twice
    reg = Registry(root / "registry.sqlite")
    study = finished.result.study
    runs = {r.id: r for r in reg.runs() if r.state.value in ("done", "failed")}
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny-study")
    [parent] = client.search_runs([exp.experiment_id], f"tags.`sftgate.study_id` = '{study.id}'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sftgate.decision"].startswith("stop: ")
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == sorted(runs)
    for child in children:
        r = runs[child.info.run_name]
        assert child.data.params["max_steps"] == str(r.params.max_steps)
        assert child.data.tags["prompt_sha256"] == study.pins["prompt_sha256"]
        inputs = {i.dataset.digest for i in child.inputs.dataset_inputs}
        assert study.pins["train_set_version"][:32] in inputs
        if r.state.value == "failed":
            assert child.info.status == "FAILED" and child.data.tags["sftgate.failure"] == r.failure
            continue
        assert r.train_meta is not None and r.metrics is not None
        loss = client.get_metric_history(child.info.run_id, "train/loss")
        assert [m.value for m in loss] == pytest.approx(r.train_meta["loss_per_step"])
        assert child.data.metrics["gate/eval_score_avg"] == pytest.approx(r.metrics.eval_score_avg)
        commit = r.train_meta["provenance"]["git"]["commit"]
        assert child.data.tags.get("mlflow.source.git.commit") == commit
        files = {f.path for f in client.list_artifacts(child.info.run_id, "adapter")}
        assert "adapter/adapter_model.safetensors" in files
        assert "gate/predictions.jsonl" in {
            f.path for f in client.list_artifacts(child.info.run_id, "gate")
        }
    decisions = Path(client.download_artifacts(parent.info.run_id, "decisions.json"))
    assert len(json.loads(decisions.read_text())["decisions"]) == len(reg.decisions(study.id))
    assert (
        main(["export", "mlflow", "no-such-study", "--registry", str(root / "registry.sqlite")])
        == 2
    )


@pytest.mark.slow
def test_a_failing_tracker_is_reported_and_the_search_goes_on(finished, tmp_path):
    from sftgate.search.driver import Tracker
    from sftgate.search.live import LiveView
    from sftgate.tracking import TrackingConfig

    class Logged(LiveView):  # the live view, keeping the lines it shows
        lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    reg = Registry(finished.config.parent / "registry.sqlite")
    (tmp_path / "a-file").write_text("", encoding="utf-8")  # no folder can be made under it
    broken = TrackingConfig(kind="mlflow", uri=f"sqlite:///{tmp_path / 'a-file' / 'x.db'}")
    view = Logged("tiny-study", [], False, 1)
    Tracker(reg, "tiny-study", broken, view)()  # does not raise
    [line] = view.lines
    assert "tracking: mlflow failed" in line and "sftgate export mlflow tiny-study" in line


@pytest.mark.slow
def test_rerunning_a_finished_study_redoes_nothing(finished):
    config, result = finished.config, finished.result
    before = runs_by_round(config.parent / "registry.sqlite")
    again = search(config, progress=False)
    after = runs_by_round(config.parent / "registry.sqlite")
    assert again.decision.reason == result.decision.reason
    assert {r["id"]: (r["adapter_id"], r["updated_at"]) for rs in before.values() for r in rs} == {
        r["id"]: (r["adapter_id"], r["updated_at"]) for rs in after.values() for r in rs
    }
    reg = Registry(config.parent / "registry.sqlite")
    assert len(reg.decisions(result.study.id)) == 4


@pytest.mark.slow
def test_runs_show_compare_report_cli(finished, capsys):
    config = finished.config
    db = str(config.parent / "registry.sqlite")
    rounds = runs_by_round(config.parent / "registry.sqlite")
    a, b = rounds[1][0]["id"], rounds[1][1]["id"]
    assert main(["runs", "--registry", db]) == 0
    assert a in capsys.readouterr().out
    assert main(["show", a, "--registry", db]) == 0
    assert '"adapter_id"' in capsys.readouterr().out
    assert main(["compare", a, b, "--registry", db]) == 0
    assert "paired-bootstrap" in capsys.readouterr().out
    out = config.parent / "r.html"
    assert (
        main(["report", "tiny-study", "--format", "html", "--out", str(out), "--registry", db]) == 0
    )
    assert "<table>" in out.read_text(encoding="utf-8")
    assert main(["compare", a, rounds[1][2]["id"], "--registry", db]) == 2  # the failed run


@pytest.mark.slow
def test_changed_inputs_are_refused_with_what_changed(tmp_path):
    config = make_project(tmp_path, thresholds={"smoke_schema": 1.0})  # stops after the smoke run
    assert search(config, progress=False).decision.action == "stop"
    changes = [
        ("prompt.md", lambda t: t + "\n", "prompt_sha256"),
        ("gate.json", lambda t: t.replace("（0）", "（zero）"), "gate_set_version"),
        ("kb/it/vpn.md", lambda t: t + "\n新段落。\n", "index_version"),
        (
            "study.yaml",
            lambda t: t.replace("max_new_tokens: 6", "max_new_tokens: 7"),
            "settings.decode",
        ),
    ]
    for rel, edit, key in changes:
        path = tmp_path / rel
        original = path.read_text(encoding="utf-8")
        path.write_text(edit(original), encoding="utf-8")
        with pytest.raises(MismatchError, match=key) as e:
            search(config, progress=False)
        assert "new `name`" in str(e.value)
        path.write_text(original, encoding="utf-8")
    assert search(config, progress=False).decision.action == "stop"  # unchanged again: resumes


@pytest.mark.slow
def test_gate_pass_runs_the_full_set_then_stops(tmp_path):
    config = make_project(
        tmp_path,
        thresholds={"smoke_schema": 0.0, "gate_score": 0.0, "gate_schema": 0.0},
        round1=[{"max_steps": 2}],
        round1_reasons=["base"],
    )
    result = search(config, progress=False)
    assert (
        result.decision.action == "stop" and "full-set evaluation is done" in result.decision.reason
    )
    reg = Registry(tmp_path / "registry.sqlite")
    run = reg.run_json(result.decision.selected_run or "")
    assert run is not None and run["full_status"] == "done" and run["full_metrics"]["n"] == 5
    assert len(reg.question_scores(run["id"], "full")) == 5
    assert [d["action"] for d in reg.decisions(result.study.id)] == [
        "train",
        "train",
        "full_eval",
        "stop",
    ]
    assert "**Full set** (5 questions)" in (tmp_path / "work" / "report.md").read_text(
        encoding="utf-8"
    )


@pytest.mark.slow
def test_execute_run_reuses_its_adapter_and_refuses_a_stale_one(tmp_path):
    from sftgate.search.driver import Specs
    from sftgate.search.inputs import pin_inputs, prepare_contexts
    from sftgate.search.study import load_study_config

    config = load_study_config(make_project(tmp_path))
    inputs = pin_inputs(config)
    prepare_contexts(config, inputs)
    specs = Specs(config, inputs, progress=False)
    round0 = config.policy.round0
    spec = specs.spec("r0-0-test", round0.model_copy(update={"max_steps": 1}), "gate")
    stages: list[str] = []
    first = execute_run(spec, stages.append)
    assert first.status == "done" and stages == ["training", "evaluating"]
    assert first.train_s is not None and len(first.question_scores or []) == 3
    again = execute_run(spec, stages.append)  # a restart after training had finished
    assert again.status == "done" and again.train_s is None
    assert again.train_meta == first.train_meta and again.metrics == first.metrics
    other = specs.spec("r0-0-test", round0.model_copy(update={"max_steps": 2}), "gate")
    stale = execute_run(other)
    assert stale.status == "failed" and "other train_params" in (stale.failure or "")
    assert "SftgateError" in (Path(spec.run_dir) / "failure-gate.txt").read_text(encoding="utf-8")


@pytest.mark.slow
def test_checkpoints_are_evaluated_once_and_resumed(tmp_path):
    """A run's curve: its adapter at each checkpoint on the gate set, in RUN_DIR/gate-step-K; a
    run killed after a checkpoint's evaluation does not evaluate it again."""
    import shutil

    from sftgate.search.driver import Specs
    from sftgate.search.inputs import pin_inputs, prepare_contexts
    from sftgate.search.study import load_study_config

    config = load_study_config(make_project(tmp_path, checkpoints=[0.5]))
    inputs = pin_inputs(config)
    prepare_contexts(config, inputs)
    params = config.policy.round0.model_copy(update={"max_steps": 2})
    spec = Specs(config, inputs, progress=False).spec("r1-0-ckpt", params, "gate")
    assert spec.checkpoint_steps == (1,)
    first = execute_run(spec)
    assert first.status == "done", first.failure
    (point,) = first.curve
    assert point.step == 1 and len(point.scores) == 3
    meta = Path(point.eval_dir) / "eval_meta.json"
    assert json.loads(meta.read_text())["checkpoint_step"] == 1
    stamp = meta.stat().st_mtime_ns
    shutil.rmtree(spec.eval_dir)  # killed after the checkpoint, before the final evaluation
    again = execute_run(spec)
    assert again.status == "done" and meta.stat().st_mtime_ns == stamp  # not evaluated again
    assert again.curve[0].metrics == point.metrics and again.metrics == first.metrics
