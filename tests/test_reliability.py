"""Nothing recorded is ever wrong (issue 15, items 1-3): one writer per study, runs that use the
pinned bytes, failures that say what they are.

Real processes where the promise is about processes (two searches at once, a download that
fails); the scripted executor (tests/scripted.py) where it is about what the driver records.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftgate.cli import main
from sftgate.cli.study import print_result
from sftgate.search import search
from sftgate.search.driver import EnvironmentFailed
from sftgate.search.executors import InProcess
from sftgate.search.lease import HeldLease, StudyBusy
from sftgate.search.registry import MIGRATIONS, Lease, Registry, RunState
from sftgate.search.runner import RunSpec
from tests.conftest import REPO
from tests.scripted import ScriptedExecutor, metrics
from tests.test_driver import by_steps
from tests.test_search import make_project


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr("sftgate.search.report.plots", lambda *args: [])
    monkeypatch.setattr("sftgate.search.report.curve_plots", lambda *args: [])


def sftgate(*argv: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sftgate", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300", **(env or {})},
        **kw,
    )


def query(registry: Path, sql: str) -> tuple[Any, ...] | None:
    if not registry.exists():
        return None
    db = sqlite3.connect(registry, timeout=30)
    try:
        return db.execute(sql).fetchone()
    except sqlite3.OperationalError:  # the registry is being created
        return None
    finally:
        db.close()


def events(registry: Path, study: str) -> list[dict[str, Any]]:
    reg = Registry(registry)
    try:
        return reg.events(study)
    finally:
        reg.close()


# ---------------------------------------------------------------------- 1. one writer per study


@pytest.mark.slow
def test_two_real_searches_one_refused_then_a_killed_ones_lease_taken_over(tmp_path):
    # Round 0 trains long enough (4000 steps of tiny-qwen3) that the first search is still
    # running when the second starts; it is killed afterwards.
    config = make_project(tmp_path, round0={"max_steps": 4000, "max_length": 1024, "lr": 2e-3})
    registry = tmp_path / "registry.sqlite"
    first = sftgate("search", "--config", str(config))
    try:
        deadline = time.monotonic() + 240
        while query(registry, "SELECT id FROM runs WHERE status = 'training'") is None:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first search never started training"
            time.sleep(0.5)
        assert query(registry, "SELECT host, pid FROM leases") == (socket.gethostname(), first.pid)
        second = sftgate("search", "--config", str(config))
        _, err = second.communicate(timeout=240)
        assert second.returncode == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err
        assert f"is being searched by {socket.gethostname()} pid {first.pid}" in lines[0]
        assert first.poll() is None  # the refused search did not disturb the running one
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()  # waits, and closes its pipes
    reg = Registry(registry)
    try:
        study = reg.study("tiny-study")
        assert study is not None
        assert [r.state for r in reg.runs(study.id)] == [RunState.TRAINING]  # killed mid-run
    finally:
        reg.close()
    # The killed search's lease (its pid is gone) is taken over at once, and the takeover logged.
    result = search(config, progress=False, executor=ScriptedExecutor(lambda spec: metrics(60.0)))
    assert result.decision.action == "stop"
    log = events(registry, "tiny-study")
    assert [e["event"] for e in log] == ["lease taken", "lease taken over", "lease released"]
    assert log[1]["detail"]["from"]["pid"] == first.pid
    assert log[1]["detail"]["by"]["pid"] == os.getpid()
    assert query(registry, "SELECT * FROM leases") is None


def test_a_live_lease_refuses_a_stale_one_is_taken_over(tmp_path):
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        other = Lease("t0", "another-host", 4242, "2026-01-01T00:00:00+00:00", "")
        fresh = Lease(**{**other.__dict__, "heartbeat_at": datetime_now()})
        assert reg.take_lease("s", fresh, lambda lease: False) is None
        with pytest.raises(StudyBusy, match="another-host pid 4242") as e:
            HeldLease(reg, "s")
        assert e.value.exit_code == 2
        with reg.tx() as db:  # the other host stopped renewing it two minutes ago
            db.execute("UPDATE leases SET heartbeat_at = '2026-01-01T00:00:00+00:00'")
        held = HeldLease(reg, "s")
        row = reg.lease("s")
        assert row is not None and (row.host, row.pid) == (socket.gethostname(), os.getpid())
        held.release()
        assert reg.lease("s") is None
        log = reg.events("s")
        assert [e["event"] for e in log] == [
            "lease taken",
            "lease taken over",
            "lease released",
        ]
        assert log[1]["detail"]["from"]["host"] == "another-host"
    finally:
        reg.close()


def datetime_now() -> str:
    from sftgate.search.registry import now

    return now()


def test_the_lease_is_a_migration_appended_to_the_list(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    try:
        assert reg.schema_version() == len(MIGRATIONS) >= 5  # migrations are only appended
        tables = {r[0] for r in reg.db.execute("SELECT name FROM sqlite_master")}
        assert {"leases", "study_events"} <= tables
    finally:
        reg.close()
    assert "CREATE TABLE leases" in MIGRATIONS[4]
    assert all("leases" not in m for m in MIGRATIONS[:4])


# ---------------------------------------------------------------------- 2. runs use the pinned bytes


class EditsThePromptMidRound(InProcess):
    """The real in-process executor; once the second run of round 1 has started, the prompt file
    the config names is edited (as a person might, mid-search)."""

    def __init__(self, prompt: Path):
        super().__init__()
        self.prompt, self.started = prompt, 0

    def start(self, spec: RunSpec) -> None:
        super().start(spec)
        if spec.run_id.startswith("r1-"):
            self.started += 1
            if self.started == 2:
                self.prompt.write_text(
                    self.prompt.read_text(encoding="utf-8") + "\nAnswer in one word.\n",
                    encoding="utf-8",
                )


@pytest.mark.slow
def test_a_prompt_edited_mid_round_changes_nothing_and_is_reported_next_start(tmp_path, capsys):
    config = make_project(tmp_path, thresholds={"smoke_schema": 0.0, "max_rounds": 2})
    prompt = tmp_path / "prompt.md"
    pinned = prompt.read_bytes()
    result = search(config, progress=False, executor=EditsThePromptMidRound(prompt))
    assert prompt.read_bytes() != pinned  # edited while round 1 ran
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        study = reg.study("tiny-study")
        assert study is not None
        runs = reg.runs(study.id)
        done = [r for r in runs if r.state is RunState.DONE]
        assert len(done) == 3 and {r.round for r in done} == {0, 1}
        for r in done:  # trained and evaluated on the pinned bytes, not the edited file
            assert r.train_meta is not None and r.eval_meta is not None
            assert r.train_meta["prompt_sha256"] == study.pins["prompt_sha256"]
            assert r.eval_meta["prompt_sha256"] == study.pins["prompt_sha256"]
    finally:
        reg.close()
    assert result.decision.action == "stop"
    copy = Path(result.report).parent / "inputs" / "prompt" / "prompt.md"
    assert copy.read_bytes() == pinned
    capsys.readouterr()
    assert main(["search", "--config", str(config)]) == 2  # the next start reports the edit
    err = capsys.readouterr().err
    assert "prompt_sha256" in err and "tiny-study" in err


def test_a_run_whose_metadata_disagrees_with_the_pins_is_failed_never_done(tmp_path):
    config = make_project(tmp_path, thresholds={"smoke_schema": 0.0, "max_rounds": 2})

    def train_meta(spec: RunSpec) -> dict[str, Any]:
        meta = {"adapter_id": f"adapter-{spec.run_id}", "wall_time_s": 1.0}
        if spec.params.max_steps == 2:  # this one trained with another prompt
            meta["prompt_sha256"] = "0" * 64
        return meta

    script = by_steps(steps1=40.0, steps2=90.0, steps3=60.0, len64=50.0)
    search(config, progress=False, executor=ScriptedExecutor(script, train_meta=train_meta))
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        (bad,) = [r for r in reg.runs() if r.params.max_steps == 2]
        assert bad.state is RunState.FAILED
        assert bad.failure is not None
        assert "ran on inputs other than the study's pins" in bad.failure
        assert "the adapter's prompt_sha256 is 0000000000000000" in bad.failure
        assert {r.state for r in reg.runs() if r.id != bad.id} == {RunState.DONE}
    finally:
        reg.close()


# ---------------------------------------------------------------------- 3. failures say what they are


def test_an_environment_failure_leaves_the_run_planned_and_the_rerun_goes_on(tmp_path):
    config = make_project(tmp_path)
    broken = {"yes": True}

    def script(spec: RunSpec) -> dict | str:
        if broken["yes"]:
            return "environment: OSError: we couldn't connect to 'https://huggingface.co'"
        return by_steps(steps1=40.0, steps2=80.0, steps3=81.0, len64=60.0, steps4=81.2)(spec)

    with pytest.raises(EnvironmentFailed, match="environment, not their configuration") as e:
        search(config, progress=False, executor=ScriptedExecutor(script))
    assert e.value.exit_code == 1 and "couldn't connect" in str(e.value)
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        (smoke,) = reg.runs()
        assert smoke.state is RunState.PLANNED  # not failed: the planner never saw it
        row = reg.run_json(smoke.id)
        assert row is not None and "couldn't connect" in row["environment_failure"]
        study = reg.study("tiny-study")
        assert study is not None and study.status == "running"
        assert [d["action"] for d in reg.decisions(study.id)] == ["train"]
    finally:
        reg.close()
    broken["yes"] = False  # the fix
    result = search(config, progress=False, executor=ScriptedExecutor(script))
    assert result.decision.action == "stop" and result.failed is None


def test_a_study_that_stops_on_failures_exits_1_and_retry_failed_replans_them(tmp_path, capsys):
    config = make_project(tmp_path)
    oom = by_steps(steps1=40.0, steps2="OOM", steps3="OOM", len64="OOM")
    result = search(config, progress=False, executor=ScriptedExecutor(oom))
    assert result.failed is not None and "every run of round 1 failed" in result.failed
    assert print_result(result) == 1
    assert "stopped on a failure" in capsys.readouterr().err
    rerun = ScriptedExecutor(oom)
    search(config, progress=False, executor=rerun)
    assert rerun.started == []  # a plain rerun retries nothing
    fixed = ScriptedExecutor(
        by_steps(steps1=40.0, steps2=80.0, steps3=81.0, len64=60.0, steps4=81.2)
    )
    result = search(config, progress=False, executor=fixed, retry_failed=True)
    assert {s.run_id[:3] for s in fixed.started[:3]} == {"r1-"}
    assert result.failed is None
    log = events(tmp_path / "registry.sqlite", "tiny-study")
    retried = [e for e in log if e["event"].startswith("failed runs re-planned")]
    assert len(retried) == 1 and sorted(retried[0]["detail"].values()) == ["OOM"] * 3


def cache_tiny_model(hf_home: Path, repo_id: str) -> None:
    """The fix for a failed download: the model in the Hugging Face cache, as a download leaves
    it (refs/main -> snapshots/COMMIT/)."""
    from sftgate.tiny import build_tiny_qwen3

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    model, tokenizer = build_tiny_qwen3(0)
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")


@pytest.mark.slow
def test_a_download_failure_then_the_fix_and_a_rerun(tmp_path):
    repo_id = "sftgate-test/tiny-qwen3"
    config = make_project(tmp_path, thresholds={"smoke_schema": 1.0})  # stops after round 0
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump({**data, "model": repo_id}), encoding="utf-8")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # no network: no download
    first = sftgate("search", "--config", str(config), env=env)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 1, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert "Traceback" not in err, err
    assert last.startswith("error: 1 run(s) failed because of their environment"), err
    assert "OSError" in last and "sftgate search --config" in last
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        (smoke,) = reg.runs()
        assert smoke.state is RunState.PLANNED
        row = reg.run_json(smoke.id)
        assert row is not None and "OSError" in row["environment_failure"]
    finally:
        reg.close()
    cache_tiny_model(tmp_path / "hf", repo_id)
    second = sftgate("search", "--config", str(config), env=env)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        (smoke,) = reg.runs()
        assert smoke.state is RunState.DONE and smoke.train_meta is not None
        assert smoke.train_meta["model_id"] == repo_id
    finally:
        reg.close()
