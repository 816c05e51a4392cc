"""The seed's rules, one scripted history each."""

from __future__ import annotations

import json

import pytest

from sftgate.cli import main
from sftgate.errors import MismatchError
from sftgate.params import TrainParams
from sftgate.search.planner import History, Policy, Thresholds, plan_next

R0 = {
    "max_steps": 20,
    "lr": 2e-4,
    "batch_size": 1,
    "max_length": 1024,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
}
BASE = {**R0, "max_steps": 200}
CONS = {**R0, "lr": 1e-4, "max_steps": 300}
STRONG = {**R0, "lr": 3e-4, "max_steps": 150}
GOOD = {"detailed_description_f1": 0.95, "original_evidence": 0.95, "grounding_avg": 0.97}


def run(rid, params, score=None, schema=0.99, status="done", per_question=None, **metrics):
    m = (
        {"eval_score_avg": score, "schema_pass_rate": schema, **GOOD, **metrics}
        if status == "done"
        else {}
    )
    out = {"run_id": rid, "params": params, "status": status, "metrics": m}
    if status == "failed":
        out["failure"] = "CUDA out of memory"
    if per_question is not None:
        out["per_question"] = per_question
    return out


def hist(*rounds, full=None):
    return History.model_validate(
        {
            "rounds": [{"round": i, "runs": runs} for i, runs in enumerate(rounds)],
            "full_eval_run": full,
        }
    )


SMOKE_OK = [run("r0", R0, 40.0, schema=0.95)]
ROUND1 = [run("b", BASE, 90.0), run("c", CONS, 88.0), run("s", STRONG, 89.0)]


CASES = [
    ("empty history -> smoke", hist(), "train", 0, [R0], None, "round 0"),
    (
        "smoke schema fails -> stop, fix prompt",
        hist([run("r0", R0, 30.0, schema=0.5)]),
        "stop",
        0,
        [],
        "r0",
        "fix the prompt",
    ),
    (
        "smoke run crashed -> stop",
        hist([run("r0", R0, status="failed")]),
        "stop",
        0,
        [],
        None,
        "smoke run failed",
    ),
    (
        "smoke passes -> round 1's three configs",
        hist(SMOKE_OK),
        "train",
        1,
        [BASE, CONS, STRONG],
        None,
        "smoke passed",
    ),
    (
        "dd_f1 low -> steps +100 and lr +0.5e-4",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 90.0, detailed_description_f1=0.8),
                run("c", CONS, 80.0),
                run("s", STRONG, 70.0),
            ],
        ),
        "train",
        2,
        [{**BASE, "max_steps": 300}, {**BASE, "lr": 2.5e-4}],
        "b",
        "best so far",
    ),
    (
        "evidence low -> max_length 1536",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 90.0, original_evidence=0.8),
                run("c", CONS, 80.0),
                run("s", STRONG, 70.0),
            ],
        ),
        "train",
        2,
        [{**BASE, "max_length": 1536}],
        "b",
        "best so far",
    ),
    (
        "dd and evidence low -> at most two configs",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 90.0, original_evidence=0.8, detailed_description_f1=0.5),
                run("c", CONS, 80.0),
                run("s", STRONG, 70.0),
            ],
        ),
        "train",
        2,
        [{**BASE, "max_steps": 300}, {**BASE, "max_length": 1536}],
        "b",
        "best so far",
    ),
    (
        "grounding low only -> prompt recommendation, no config",
        hist(
            SMOKE_OK,
            [run("b", BASE, 90.0, grounding_avg=0.5), run("c", CONS, 80.0), run("s", STRONG, 70.0)],
        ),
        "stop",
        1,
        [],
        "b",
        "no parameter change left",
    ),
    (
        "tie band: higher grounding wins within 0.5",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 90.4, grounding_avg=0.96, original_evidence=0.8),
                run("c", CONS, 90.0, grounding_avg=0.99, original_evidence=0.8),
                run("s", STRONG, 70.0),
            ],
        ),
        "train",
        2,
        [{**CONS, "max_length": 1536}],
        "c",
        "higher grounding",
    ),
    (
        "schema first: a higher score with schema < 0.98 loses",
        hist(
            SMOKE_OK,
            [run("b", BASE, 99.0, schema=0.9), run("c", CONS, 96.0), run("s", STRONG, 70.0)],
        ),
        "full_eval",
        1,
        [],
        "c",
        "passes the gate",
    ),
    (
        "gate pass -> full eval",
        hist(SMOKE_OK, [run("b", BASE, 95.5), run("c", CONS, 94.0), run("s", STRONG, 93.0)]),
        "full_eval",
        1,
        [],
        "b",
        "passes the gate",
    ),
    (
        "gate pass and full eval done -> stop",
        hist(
            SMOKE_OK, [run("b", BASE, 95.5), run("c", CONS, 94.0), run("s", STRONG, 93.0)], full="b"
        ),
        "stop",
        1,
        [],
        "b",
        "full-set evaluation is done",
    ),
    (
        "no run reaches schema 0.98 -> go on from the highest schema_pass_rate",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 92.0, schema=0.9),
                run("c", CONS, 90.0, schema=0.95),
                run("s", STRONG, 90.0, schema=0.5),
            ],
        ),
        "train",
        2,
        [{**CONS, "max_steps": 400}],
        "c",
        "no run reaches schema_pass_rate",
    ),
    (
        "failed runs are recorded and skipped",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, status="failed"),
                run("c", CONS, 90.0, detailed_description_f1=0.5),
                run("s", STRONG, status="failed"),
            ],
        ),
        "train",
        2,
        [{**CONS, "max_steps": 400}, {**CONS, "lr": 1.5e-4}],
        "c",
        "best so far",
    ),
    (
        "a whole round failed -> stop",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, status="failed"),
                run("c", CONS, status="failed"),
                run("s", STRONG, status="failed"),
            ],
        ),
        "stop",
        1,
        [],
        None,
        "every run of round 1 failed",
    ),
    (
        "plateau: round 2 improved the best by < 0.3",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 90.0, detailed_description_f1=0.5),
                run("c", CONS, 80.0),
                run("s", STRONG, 70.0),
            ],
            [run("b2", {**BASE, "max_steps": 300}, 90.2), run("b3", {**BASE, "lr": 2.5e-4}, 89.0)],
        ),
        "stop",
        2,
        [],
        "b2",
        "plateau",
    ),
    (
        "oscillation in 94.5-95 for two rounds",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 94.6, detailed_description_f1=0.5),
                run("c", CONS, 80.0),
                run("s", STRONG, 70.0),
            ],
            [run("b2", {**BASE, "max_steps": 300}, 94.95, detailed_description_f1=0.5)],
        ),
        "stop",
        2,
        [],
        "b2",
        "oscillation",
    ),
    (
        "progress continues into round 3",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 85.0, detailed_description_f1=0.5),
                run("c", CONS, 80.0),
                run("s", STRONG, 70.0),
            ],
            [run("b2", {**BASE, "max_steps": 300}, 88.0, detailed_description_f1=0.5)],
        ),
        "train",
        3,
        [{**BASE, "max_steps": 400}, {**BASE, "max_steps": 300, "lr": 2.5e-4}],
        "b2",
        "best so far",
    ),
    (
        "max_rounds reached",
        hist(
            SMOKE_OK,
            [
                run("b", BASE, 80.0, detailed_description_f1=0.5),
                run("c", CONS, 70.0),
                run("s", STRONG, 60.0),
            ],
            [run("b2", {**BASE, "max_steps": 300}, 85.0, detailed_description_f1=0.5)],
            [run("b3", {**BASE, "max_steps": 400}, 90.0, detailed_description_f1=0.5)],
        ),
        "stop",
        3,
        [],
        "b3",
        "max_rounds",
    ),
]


@pytest.mark.parametrize(
    ("name", "history", "action", "round_", "configs", "selected", "reason"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_seed_rules(name, history, action, round_, configs, selected, reason):
    d = plan_next(history)
    assert d.action == action
    assert d.round == round_
    assert [c.params.seed_view() for c in d.configs] == configs
    assert all(c.reason for c in d.configs)
    assert d.selected_run == selected
    assert reason in d.reason
    if action == "stop" and "plateau" in reason:
        assert any("Prompt" in r for r in d.recommendations) and any(
            "Retrieval" in r for r in d.recommendations
        )


def test_grounding_low_recommendation_rides_along_with_configs():
    h = hist(
        SMOKE_OK,
        [
            run("b", BASE, 90.0, grounding_avg=0.5, detailed_description_f1=0.5),
            run("c", CONS, 80.0),
            run("s", STRONG, 70.0),
        ],
    )
    d = plan_next(h)
    assert d.action == "train" and any("anchor" in r for r in d.recommendations)


def test_tie_band_uses_paired_comparison_when_predictions_exist():
    # Averages 0.6 apart (outside the band), but on the shared questions the paired difference is
    # what counts: here b's lead comes from questions c never saw... same ids, so paired = 0.6 too.
    pq_b = {f"q{i}": 90.0 + (0.6 if i == 0 else 0.0) for i in range(1)}
    pq_c = {"q0": 90.0}
    h = hist(
        SMOKE_OK,
        [
            run("b", BASE, 90.6, grounding_avg=0.96, per_question=pq_b, original_evidence=0.8),
            run("c", CONS, 90.0, grounding_avg=0.99, per_question=pq_c),
            run("s", STRONG, 70.0),
        ],
    )
    assert plan_next(h).selected_run == "b"
    # Raw averages 0.6 apart but paired difference 0.2 on the same questions: a tie, grounding decides.
    pq_b2 = {"q0": 90.2, "q1": 90.2}
    pq_c2 = {"q0": 90.0, "q1": 90.0}
    h2 = hist(
        SMOKE_OK,
        [
            run("b", BASE, 90.6, grounding_avg=0.96, per_question=pq_b2),
            run("c", CONS, 90.0, grounding_avg=0.99, per_question=pq_c2, original_evidence=0.8),
            run("s", STRONG, 70.0),
        ],
    )
    assert plan_next(h2).selected_run == "c"


def test_never_reproposes_a_config_already_run():
    h = hist(
        SMOKE_OK,
        [
            run("b", BASE, 85.0, detailed_description_f1=0.5),
            run("c", CONS, 80.0),
            run("s", {**BASE, "max_steps": 300}, 70.0),
        ],
    )
    d = plan_next(h)
    assert {**BASE, "max_steps": 300} not in [c.params.seed_view() for c in d.configs]


def test_thresholds_override():
    h = hist([run("r0", R0, 30.0, schema=0.5)])
    assert plan_next(h, Policy(thresholds=Thresholds(smoke_schema=0.4))).action == "train"


def test_plan_cli_same_decisions(tmp_path, capsys):
    for name, history, action, round_, configs, selected, _ in CASES:
        path = tmp_path / "h.json"
        path.write_text(history.model_dump_json(), encoding="utf-8")
        assert main(["plan", "--history", str(path)]) == 0, name
        out = json.loads(capsys.readouterr().out)
        assert (out["action"], out["round"], out["selected_run"]) == (action, round_, selected), (
            name
        )
        assert [c["params"] for c in out["configs"]] == configs
        assert set(out) == {
            "action",
            "round",
            "configs",
            "selected_run",
            "reason",
            "recommendations",
            "gap",
            "new_study",
        }
        assert out["gap"] is None  # these histories carry no ceiling
    path.write_text(
        json.dumps({"rounds": [], "thresholds": {"smoke_schema": 0.1, "nope": 1}}), encoding="utf-8"
    )
    assert main(["plan", "--history", str(path)]) == 2
    assert "thresholds.nope: unknown key" in capsys.readouterr().err.replace("field '", "").replace(
        "'", ""
    )


def test_plateau_gain_of_exactly_the_threshold_goes_on():
    # 90.3 - 90.0 is 0.2999... in floating point; the rule compares the rounded gain.
    rounds = (
        SMOKE_OK,
        [run("b", BASE, 90.0, detailed_description_f1=0.5), run("c", CONS, 80.0)],
        [run("b2", {**BASE, "max_steps": 300}, 90.3, detailed_description_f1=0.5)],
    )
    d = plan_next(hist(*rounds))
    assert (d.action, d.round, d.selected_run) == ("train", 3, "b2")


def test_full_eval_failure_stops_with_its_reason():
    h = History.model_validate(
        {
            "rounds": [
                {"round": 0, "runs": SMOKE_OK},
                {"round": 1, "runs": [run("b", BASE, 96.0)]},
            ],
            "full_eval_failures": {"b": "CUDA out of memory"},
        }
    )
    d = plan_next(h)
    assert (d.action, d.selected_run) == ("stop", "b")
    assert "full-set evaluation failed: CUDA out of memory" in d.reason


def test_round1_skips_a_config_equal_to_the_smoke_run():
    policy = Policy(round0=TrainParams(max_steps=200))
    d = plan_next(hist([run("r0", BASE, 40.0, schema=0.95)]), policy)
    assert [c.params.seed_view() for c in d.configs] == [CONS, STRONG]


def test_round1_reasons_must_match_configs():
    with pytest.raises(ValueError, match="one reason per config"):
        Policy(round1=[{"max_steps": 10}], round1_reasons=["a", "b"])


def test_oscillation_needs_the_schema_to_pass():
    # Best scores 94.6 then 94.95 (a 0.35 gain, not a plateau) but schema below 0.98: no
    # oscillation stop; the search goes on from the run closest to the format.
    rounds = (
        SMOKE_OK,
        [run("b", BASE, 94.6, schema=0.95, detailed_description_f1=0.5)],
        [run("b2", {**BASE, "max_steps": 300}, 94.95, schema=0.96, detailed_description_f1=0.5)],
    )
    d = plan_next(hist(*rounds))
    assert (d.action, d.round, d.selected_run) == ("train", 3, "b2")


def test_runs_scored_on_other_questions_are_not_compared():
    h = hist(
        SMOKE_OK,
        [
            run("b", BASE, 90.2, per_question={"q0": 90.2}),
            run("c", CONS, 90.0, per_question={"x9": 90.0}),
        ],
    )
    with pytest.raises(MismatchError, match="same questions"):
        plan_next(h)


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ({"budget_minutes": 10}, "time budget: the runs took 11.7 min >= 10"),
        ({"max_runs": 4}, "run budget: 4 runs done >= max_runs 4"),
        ({"budget_minutes": 12, "max_runs": 5}, None),
    ],
)
def test_seed_budgets_stop_between_rounds(budget, expected):
    """The same time and run budgets as the adaptive policy's, so that both can be compared
    under one budget; unset (the default), the seed's rules are unchanged."""
    rounds = [[{**r, "seconds": 100.0} for r in rd] for rd in (SMOKE_OK, ROUND1)]
    rounds[1][0]["seconds"] = 400.0  # 100 + 400 + 100 + 100 = 700 s
    policy = Policy.model_validate({"round0": R0, **budget})
    d = plan_next(hist(*rounds), policy)
    if expected is None:
        assert d == plan_next(hist(*rounds))
        assert d.action == "train"
    else:
        assert (d.action, d.round, d.selected_run) == ("stop", 1, "b")
        assert expected in d.reason


SMOKE_BAD = [run("r0", R0, 30.0, schema=0.89)]
# (name, history extras, policy, proposes a new study, a recommendation contains)
FORMAT_STOPS = [
    ("seed's policy: advice only", {}, Policy(), None, "decode.constrain: json_schema"),
    (
        "auto_constrain: the same study, constrained, as a new study",
        {"study": "vpn"},
        Policy(auto_constrain=True),
        {"name": "vpn-constrained", "decode": {"constrain": "json_schema"}},
        "start the new study `vpn-constrained`",
    ),
    (
        "auto_constrain, adaptive policy: the same stop",
        {"study": "vpn"},
        Policy(kind="adaptive", auto_constrain=True),
        {"name": "vpn-constrained", "decode": {"constrain": "json_schema"}},
        "`name: vpn-constrained` and `decode: {constrain: json_schema}`",
    ),
    (
        "already constrained: nothing to propose, the budget is the cause",
        {"study": "vpn", "constrain": "json_schema"},
        Policy(auto_constrain=True),
        None,
        "raise it",
    ),
]


@pytest.mark.parametrize(
    ("name", "extras", "policy", "new_study", "advice"),
    FORMAT_STOPS,
    ids=[c[0] for c in FORMAT_STOPS],
)
def test_smoke_schema_below_the_bar_stops_for_the_output_constraints(
    name, extras, policy, new_study, advice
):
    h = History.model_validate({**hist(SMOKE_BAD).model_dump(), **extras})
    d = plan_next(h, policy)
    assert (d.action, d.round, d.selected_run) == ("stop", 0, "r0")
    assert "fix the prompt and output constraints, not the hyperparameters" in d.reason
    assert d.new_study == new_study
    assert any(advice in r for r in d.recommendations), d.recommendations
    # 0.9 exactly passes the smoke bar, as the seed says (>= 0.9)
    ok = History.model_validate({**hist([run("r0", R0, 30.0, schema=0.9)]).model_dump(), **extras})
    assert plan_next(ok, policy).action == "train"


def test_auto_constrain_keeps_earlier_pins():
    from sftgate.config import pin_view

    assert "auto_constrain" not in pin_view(Policy())
    assert pin_view(Policy(auto_constrain=True))["auto_constrain"] is True
