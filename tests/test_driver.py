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
    monkeypatch.setattr("sftgate.search.report.plots", lambda *args: [])
    monkeypatch.setattr("sftgate.search.report.curve_plots", lambda *args: [])


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


def test_an_adaptive_study_records_curves_and_doubles_steps_while_they_rise(tmp_path):
    import yaml

    config = make_project(tmp_path)
    study = yaml.safe_load(config.read_text(encoding="utf-8"))
    study["policy"] |= {"kind": "adaptive", "checkpoints": [0.5]}
    study["policy"]["thresholds"]["max_rounds"] = 8
    study["policy"]["round0"]["lr_scheduler"] = "constant"
    config.write_text(yaml.safe_dump(study), encoding="utf-8")

    def score(steps: int) -> float:  # rises up to 8 steps, flat after
        return 40.0 + 5.0 * min(steps, 8)

    def script(spec: RunSpec) -> dict | str:
        if spec.params.max_length == 64:
            return "ValueError: no example fits"
        return metrics(score(spec.params.max_steps))

    executor = ScriptedExecutor(
        script, checkpoint=lambda spec, step: metrics(score(step)), questions=20
    )
    result = search(config, progress=False, executor=executor)
    steps = [s.params.max_steps for s in executor.started]
    assert steps[:4] == [1, 2, 3, 1]  # the seed's rounds 0 and 1
    assert steps[4:] == [6, 12, 24]  # x2 from the best (3 steps) while rising; flat: stop
    assert [s.checkpoint_steps for s in executor.started][4:] == [(3,), (6,), (12,)]
    assert result.decision.action == "stop" and "flat within noise" in result.decision.reason
    reg = Registry(tmp_path / "registry.sqlite")
    run = next(r for r in reg.runs() if r.params.max_steps == 12)
    (point,) = reg.curve(run.id)
    assert (point.step, point.metrics.eval_score_avg) == (6, score(6))
    assert result.decision.selected_run == next(
        r.id for r in reg.runs() if r.params.max_steps == 12
    )  # 24 steps are no better than 12: the cheaper run
    assert len(point.per_question or {}) == 20
    assert reg.run_json(run.id)["curve"][0]["step"] == 6  # type: ignore[index]
    reg.close()
    assert "Learning curves" in result.report.read_text(encoding="utf-8")


def test_the_index_is_built_once_and_each_set_retrieved_once_before_round_0(tmp_path, monkeypatch):
    """Before round 0 the search builds the index once and freezes each set's passages once; a
    resumed study builds and retrieves nothing."""
    import sftgate.search.inputs as inputs

    calls: list[str] = []

    def counted(name: str):
        real = getattr(inputs, name)

        def call(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return call

    for name in ("build_index", "retrieve_contexts"):
        monkeypatch.setattr(inputs, name, counted(name))
    config = make_project(tmp_path)
    script = by_steps(steps1=40.0, steps2=80.0, steps3=82.0, len64=70.0, steps4=82.1)
    search(config, progress=False, executor=ScriptedExecutor(script))
    assert sorted(calls) == ["build_index"] + ["retrieve_contexts"] * 3
    calls.clear()
    search(config, progress=False, executor=ScriptedExecutor(script))
    assert calls == []
