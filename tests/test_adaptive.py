"""The adaptive policy, one scripted history each, like the seed's rules in test_planner.py."""

from __future__ import annotations

import pytest

from sftgate.search.planner import History, Policy, plan_next
from tests.test_planner import R0 as SEED_R0

R0 = {**SEED_R0, "lr_scheduler": "constant"}  # checkpoints are evidence about max_steps
GOOD = {"detailed_description_f1": 0.95, "original_evidence": 0.95, "grounding_avg": 0.97}
N = 40  # gate questions


def scores(level: float, spread: float = 0.0, flip: bool = False) -> dict[str, float]:
    """Per-question scores averaging `level`; `spread` alternates +-spread (flip: the other way)."""
    sign = -1 if flip else 1
    return {f"q{i:02d}": level + sign * spread * (1 if i % 2 else -1) for i in range(N)}


def metrics(per_question: dict[str, float], schema: float = 0.99, **m) -> dict:
    avg = sum(per_question.values()) / len(per_question)
    return {"eval_score_avg": avg, "schema_pass_rate": schema, **GOOD, **m}


def run(rid, per_question, *, curve=(), seconds=60.0, **params):
    return {
        "run_id": rid,
        "params": {**R0, **params},
        "status": "done",
        "metrics": metrics(per_question),
        "per_question": per_question,
        "curve": [{"step": step, "metrics": metrics(pq), "per_question": pq} for step, pq in curve],
        "seconds": seconds,
    }


def hist(*rounds, ceiling=None):
    return History.model_validate(
        {
            "rounds": [{"round": i, "runs": list(runs)} for i, runs in enumerate(rounds)],
            "ceiling": ceiling,
        }
    )


ADAPTIVE = Policy.model_validate({"kind": "adaptive", "round0": R0})
SMOKE = [run("r0", scores(40.0), seconds=10.0)]


def round1(*, curve_b=(), b=80.0, c=70.0, s=75.0):
    return [
        run("b", scores(b), curve=curve_b, max_steps=200),
        run("c", scores(c), max_steps=300, lr=1e-4),
        run("s", scores(s), max_steps=150, lr=3e-4),
    ]


def test_adaptive_runs_checkpoints_by_default_and_keeps_the_seeds_first_rounds():
    assert ADAPTIVE.checkpoint_steps(200) == [50, 100, 150]
    assert Policy().checkpoints == []  # the seed's policy reads no curves
    for history in (hist(), hist(SMOKE)):
        seed = plan_next(history, Policy(round0=R0))  # type: ignore[arg-type]
        assert plan_next(history, ADAPTIVE) == seed


def test_a_rising_curve_doubles_the_steps():
    rising = [(100, scores(60.0)), (150, scores(70.0))]
    d = plan_next(hist(SMOKE, round1(curve_b=rising)), ADAPTIVE)
    assert d.action == "train" and d.round == 2 and d.selected_run == "b"
    assert [c.params.max_steps for c in d.configs] == [400]
    assert "rising" in d.reason and "step 150 -> 200: +10.00" in d.reason


def test_a_flat_curve_stops_with_nothing_left_to_try():
    flat = [(100, scores(79.0)), (150, scores(80.0, spread=10.0))]
    d = plan_next(hist(SMOKE, round1(curve_b=flat)), ADAPTIVE)
    assert d.action == "stop" and d.selected_run == "b"
    assert "flat within noise" in d.reason and "nothing left to try" in d.reason


def test_a_flat_curve_still_tries_the_seeds_other_levers():
    flat = [(150, scores(80.0, spread=10.0))]
    low_evidence = round1(curve_b=flat)
    low_evidence[0]["metrics"]["original_evidence"] = 0.5
    d = plan_next(hist(SMOKE, low_evidence), ADAPTIVE)
    assert d.action == "train" and [c.params.max_length for c in d.configs] == [1536]
    assert [c.params.max_steps for c in d.configs] == [200]  # steps stay: the curve is flat


def test_noise_level_differences_pick_the_cheaper_config():
    # c is 0.5 points above s on average, but question by question the difference is noise
    runs = [
        run("b", scores(70.0), max_steps=200),
        run("c", scores(80.5, spread=12.0), max_steps=300, lr=1e-4),
        run("s", scores(80.0, spread=12.0, flip=True), max_steps=150, lr=3e-4),
    ]
    d = plan_next(hist(SMOKE, runs), ADAPTIVE)
    assert d.selected_run == "s" and "not separated from the top run c" in d.reason
    assert "costs less" in d.reason


def test_a_separated_difference_keeps_the_top_run():
    runs = round1(b=85.0, c=80.0, s=70.0)
    d = plan_next(hist(SMOKE, runs), ADAPTIVE)
    assert d.selected_run == "b"


def test_checkpoints_count_only_under_a_constant_schedule():
    # under linear decay a checkpoint is not the model a shorter run gives: the curve is ignored,
    # and with no shorter run of the same config the steps are doubled once
    flat = [(150, scores(80.0, spread=10.0))]
    runs = round1(curve_b=flat)
    for r in runs:
        r["params"]["lr_scheduler"] = "linear"
    d = plan_next(hist(SMOKE, runs), ADAPTIVE)
    assert [c.params.max_steps for c in d.configs] == [400]
    assert "no earlier point" in d.reason
    # the doubled run and its shorter self are the curve: flat -> stop
    again = {**run("b2", scores(80.0, spread=10.0, flip=True), max_steps=400)}
    again["params"]["lr_scheduler"] = "linear"
    d = plan_next(hist(SMOKE, runs, [again]), ADAPTIVE)
    assert d.action == "stop" and "step 200 -> 400" in d.reason and "flat within noise" in d.reason


def test_the_ceiling_within_margin_stops():
    d = plan_next(hist(SMOKE, round1(b=94.0), ceiling=95.5), ADAPTIVE)
    assert d.action == "stop" and "within 2 points of the ceiling 95.50" in d.reason


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"budget_minutes": 3}, "time budget: the runs took 3.2 min >= 3"),
        ({"max_runs": 4}, "run budget: 4 runs done >= max_runs 4"),
        ({"thresholds": {"max_rounds": 2}}, "max_rounds (2) reached"),
    ],
)
def test_budgets_stop(policy, expected):
    p = Policy.model_validate({"kind": "adaptive", "round0": R0, **policy})
    d = plan_next(hist(SMOKE, round1()), p)
    assert d.action == "stop" and expected in d.reason


def test_a_gate_passing_run_gets_the_full_set():
    d = plan_next(hist(SMOKE, round1(b=96.0)), ADAPTIVE)
    assert d.action == "full_eval" and d.selected_run == "b"


def test_checkpoints_must_be_fractions():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        Policy.model_validate({"checkpoints": [0.5, 1.0]})


def test_plan_cli_takes_the_policy(tmp_path, capsys):
    import json

    from sftgate.cli import main

    rising = [(100, scores(60.0)), (150, scores(70.0))]
    history = hist(SMOKE, round1(curve_b=rising)).model_dump(mode="json")
    path = tmp_path / "history.json"
    path.write_text(json.dumps({**history, "policy": {"kind": "adaptive", "round0": R0}}))
    assert main(["plan", "--history", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "train" and [c["params"]["max_steps"] for c in out["configs"]] == [400]
