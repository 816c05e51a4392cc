"""The fast tier: the real driver (`search`), planner and registry through whole studies, with a
scripted executor instead of training (tests/scripted.py). Each study takes milliseconds."""

from __future__ import annotations

import pytest

from sftgate.search import RunsLost, search
from sftgate.search.registry import Registry, RunState
from sftgate.search.runner import RunSpec
from tests.scripted import ScriptedExecutor, metrics
from tests.test_search import make_project


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """The report's plots are tested in test_report.py; drawing them here would take most of
    each study's time (the report's text is still written and read)."""
    monkeypatch.setattr("sftgate.search.report.plot", lambda runs, gate, out: [])


# The project's policy (tests/test_search.py): round 1 is base (2 steps), conservative (3 steps,
# lr 1e-3) and max_length 64.


def by_steps(**scores: float | str):
    """Outcome by the run's max_steps / max_length: a score (schema 0.99), or a failure."""

    def script(spec: RunSpec) -> dict | str:
        if spec.split == "full":
            return metrics(96.0, n=5)
        key = f"len{spec.params.max_length}" if spec.params.max_length == 64 else None
        key = key or f"steps{spec.params.max_steps}"
        result = scores[key]
        return result if isinstance(result, str) else metrics(float(result))

    return script


def decisions(tmp_path) -> list[tuple[str, int, str | None]]:
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        study = reg.study("tiny-study")
        assert study is not None
        return [(d["action"], d["round"], d["selected_run"]) for d in reg.decisions(study.id)]
    finally:
        reg.close()


def states(tmp_path) -> dict[str, str]:
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        return {r.id: r.status for r in reg.runs()}
    finally:
        reg.close()


def test_a_gate_passing_study_runs_the_full_set_and_stops(tmp_path):
    config = make_project(tmp_path)
    script = by_steps(steps1=40.0, steps2=96.5, steps3=90.0, len64="ValueError: no example fits")
    executor = ScriptedExecutor(script)
    result = search(config, progress=False, executor=executor)
    assert (
        result.decision.action == "stop" and "full-set evaluation is done" in result.decision.reason
    )
    passed = result.decision.selected_run
    assert [d[0] for d in decisions(tmp_path)] == ["train", "train", "full_eval", "stop"]
    assert [(s.split, s.params.max_steps) for s in executor.started] == [
        ("gate", 1),
        ("gate", 2),
        ("gate", 3),
        ("gate", 1),
        ("full", 2),
    ]
    assert sorted(states(tmp_path).values()) == ["done", "done", "done", "failed"]
    reg = Registry(tmp_path / "registry.sqlite")
    run = reg.run(passed or "")
    assert run is not None and run.full is not None and run.full.metrics is not None
    assert run.full.metrics.n == 5 and run.adapter_id == f"adapter-{passed}"
    reg.close()
    assert "Gate: PASSED" in result.report.read_text(encoding="utf-8")
    assert executor.closed


def test_the_same_decisions_whatever_the_executor_capacity(tmp_path):
    script = by_steps(steps1=40.0, steps2=80.0, steps3=82.0, len64=70.0, steps4=82.1)
    one, three = tmp_path / "one", tmp_path / "three"
    for root, capacity in ((one, 1), (three, 3)):
        root.mkdir()
        search(
            make_project(root), progress=False, executor=ScriptedExecutor(script, capacity=capacity)
        )
    strip = [(a, r) for a, r, _ in decisions(one)]
    assert strip == [(a, r) for a, r, _ in decisions(three)]
    assert strip[-1] == ("stop", 2)  # a plateau after round 2


def test_an_interrupted_round_resumes_without_redoing_finished_runs(tmp_path):
    config = make_project(tmp_path)
    script = by_steps(steps1=40.0, steps2=80.0, steps3=70.0, len64="failed", steps4=80.1)
    with pytest.raises(KeyboardInterrupt):
        search(config, progress=False, executor=ScriptedExecutor(script, interrupt_after=2))
    at_stop = states(tmp_path)
    assert sorted(at_stop.values()) == ["done", "done", "planned", "planned"]
    again = ScriptedExecutor(script)
    result = search(config, progress=False, executor=again)
    # only round 1's two unfinished runs, then round 2's
    assert [s.run_id for s in again.started][:2] == [
        k for k, v in at_stop.items() if v == "planned"
    ]
    assert all(s.run_id not in at_stop or at_stop[s.run_id] == "planned" for s in again.started)
    assert result.decision.action == "stop"
    assert search(config, progress=False, executor=ScriptedExecutor(script)).decision == (
        result.decision
    )  # a finished study: nothing runs, the same decision


def test_a_lost_run_stops_the_search_and_runs_again_on_resume(tmp_path):
    config = make_project(tmp_path)
    lost_once = {"left": 1}

    def script(spec: RunSpec) -> dict | str:
        if spec.params.max_steps == 3 and lost_once["left"]:
            lost_once["left"] -= 1
            return "lost: the process was killed by SIGKILL"
        return by_steps(steps1=40.0, steps2=80.0, steps3=81.0, len64=60.0, steps4=81.2)(spec)

    with pytest.raises(RunsLost, match="1 run\\(s\\) lost their worker") as e:
        search(config, progress=False, executor=ScriptedExecutor(script))
    assert "sftgate search --config" in str(e.value)
    assert sorted(states(tmp_path).values()) == ["done", "done", "done", "failed (lost)"]
    assert [d[0] for d in decisions(tmp_path)] == ["train", "train"]  # not planned from it
    again = ScriptedExecutor(script)
    search(config, progress=False, executor=again)
    assert again.started[0].params.max_steps == 3  # the lost run, first
    assert all(v in ("done", "failed") for v in states(tmp_path).values())


def test_a_round_where_every_run_failed_stops_the_study(tmp_path):
    config = make_project(tmp_path)
    script = by_steps(steps1=40.0, steps2="OOM", steps3="OOM", len64="OOM")
    result = search(config, progress=False, executor=ScriptedExecutor(script))
    assert (
        result.decision.action == "stop" and "every run of round 1 failed" in result.decision.reason
    )
    reg = Registry(tmp_path / "registry.sqlite")
    assert [r.state for r in reg.runs(round_=1)] == [RunState.FAILED] * 3
    reg.close()
