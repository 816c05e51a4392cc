"""Is the gate reachable: the gap decomposition (pure), the planner's explained stops, the search's
refusal of an unreachable study, `sftgate show` and the report."""

from __future__ import annotations

import json

import pytest

from sftgate.ceiling import decompose_gap, failure_kind
from sftgate.cli import main
from sftgate.errors import UnreachableGate
from sftgate.scoring import QuestionScore
from sftgate.search import search
from sftgate.search.planner import (
    History,
    QuestionFacts,
    ReachFacts,
    RetrievalOption,
    RoundRecord,
    RunRecord,
    plan_next,
)
from sftgate.search.registry import Registry
from sftgate.search.runner import RunSpec
from tests.scripted import ScriptedExecutor, metrics
from tests.test_search import make_project

# Four questions: a retrieved one the model got mostly right, a retrieved one whose output was cut
# before its closing brace, one missing its evidence (ceiling 80) and an unanswerable one.
CEILINGS = {"a": 100.0, "b": 100.0, "c": 80.0, "d": 100.0}
RETRIEVED = {"a": True, "b": True, "c": False, "d": True}
KINDS = {
    "a": ["one_document", "zh"],
    "b": ["two_documents", "zh"],
    "c": ["two_documents", "en"],
    "d": ["unanswerable", "en"],
}
SCORES = {"a": 90.0, "b": 0.0, "c": 50.0, "d": 100.0}
ERRORS = {"b": "invalid JSON: Expecting ',' delimiter at character 812"}


def test_gap_adds_up_and_names_each_part():
    gap = decompose_gap(
        gate_score=95.0,
        ceilings=CEILINGS,
        evidence_retrieved=RETRIEVED,
        kinds=KINDS,
        scores=SCORES,
        schema_errors=ERRORS,
    )
    assert gap["eval_score_avg"] == 60.0 and gap["ceiling"] == 95.0 and gap["gap"] == 35.0
    r, f, m = gap["retrieval"], gap["format"], gap["model"]
    assert r["gate_minus_ceiling"] == 0.0
    assert r["lost_on_missing_evidence"] == pytest.approx(30 / 4)  # c: 80 - 50
    assert r["questions_missing_evidence"] == 1
    assert f == {
        "points": 25.0,  # b lost its whole ceiling
        "questions": 1,
        "by_reason": {"invalid JSON: Expecting ',' delimiter": 25.0},
    }
    assert m == {"points": 2.5, "questions": 2}  # a: 100 - 90 over 4 questions
    # the gap to the gate and the points lost of 100 both add up
    parts = r["gate_minus_ceiling"] + r["lost_on_missing_evidence"] + f["points"] + m["points"]
    assert parts == pytest.approx(gap["gap"])
    assert r["points"] + f["points"] + m["points"] == pytest.approx(100 - gap["eval_score_avg"])
    assert r["points"] == pytest.approx((20 + 30) / 4)  # c's ceiling loss and its model loss
    two = gap["by_kind"]["two_documents"]
    assert (two["n"], two["ceiling"], two["eval_score_avg"]) == (2, 90.0, 25.0)
    assert (two["retrieval"], two["format"], two["model"]) == (25.0, 50.0, 0.0)
    assert set(gap["by_kind"]) == {"one_document", "two_documents", "unanswerable", "zh", "en"}


def test_gap_refuses_a_run_scored_on_other_questions():
    with pytest.raises(ValueError, match="scores 1 questions, the ceiling 4"):
        decompose_gap(
            gate_score=95.0,
            ceilings=CEILINGS,
            evidence_retrieved=RETRIEVED,
            kinds=KINDS,
            scores={"a": 1.0},
            schema_errors={},
        )


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("invalid JSON: Expecting ',' delimiter at character 812", "invalid JSON: Expecting ',' delimiter"),
        ("anchors/3: 'text' is a required property; answer: '' is too short", "anchors/N: 'text' is a required property"),
        ("wrapped in a code fence", "wrapped in a code fence"),
    ],
)  # fmt: skip
def test_failure_kind(reason, kind):
    assert failure_kind(reason) == kind


REACH = ReachFacts(
    ceiling=95.0,
    context_recall=0.75,
    top_k=3,
    questions={
        q: QuestionFacts(ceiling=CEILINGS[q], evidence_retrieved=RETRIEVED[q], kinds=KINDS[q])
        for q in CEILINGS
    },
    options=[
        RetrievalOption(top_k=4, ceiling=96.5, length_p95=1139.0),
        RetrievalOption(top_k=5, ceiling=97.3, length_p95=1305.0),
        RetrievalOption(top_k=6, ceiling=97.0, length_p95=1456.0),
    ],
)
R0 = {"max_steps": 20, "lr": 2e-4}


def record(run_id: str, score: float, per_question: dict[str, float], **params) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        params={**R0, **params},
        status="done",
        metrics=metrics(score),
        per_question=per_question,
        schema_errors={q: e for q, e in ERRORS.items() if q in per_question},
    )


def plateau_history(reach: ReachFacts | None) -> History:
    same = dict(SCORES)
    return History(
        rounds=[
            RoundRecord(round=0, runs=[record("r0", 60.0, same)]),
            RoundRecord(round=1, runs=[record("r1", 60.0, same, max_steps=200)]),
            RoundRecord(round=2, runs=[record("r2", 60.1, same, max_steps=300)]),
        ],
        reach=reach,
    )


def test_a_stop_explains_its_gap_and_ranks_the_advice_by_it():
    d = plan_next(plateau_history(REACH))
    assert d.action == "stop" and d.reason.startswith("plateau") and d.selected_run == "r2"
    assert d.gap is not None and d.gap["format"]["points"] == 25.0
    recs = d.recommendations
    # format lost 25 points, retrieval 12.5, the model 2.5: in that order, each with its numbers
    assert [r.split(" (")[0] for r in recs] == ["Format", "Retrieval", "Model"]
    assert "invalid JSON: Expecting ',' delimiter" in recs[0] and "(25.0 points)" in recs[0]
    assert "top_k 5 raises the ceiling from 95.0 to 97.3" in recs[1]
    assert "p95 prompt + completion 1,305 tokens: needs max_length 1536" in recs[1]
    assert "1 of 4 gate questions miss some evidence" in recs[1]
    assert "max_steps + 100" in recs[2]


def test_without_a_ceiling_the_stop_keeps_the_seeds_advice():
    d = plan_next(plateau_history(None))
    assert d.gap is None and d.recommendations[0].startswith("Prompt:")


def test_options_beyond_the_policy_say_so():
    reach = REACH.model_copy(
        update={"options": [RetrievalOption(top_k=8, ceiling=99.0, length_p95=1900.0)]}
    )
    d = plan_next(plateau_history(reach))
    assert "needs max_length above 1,900" in next(
        r for r in d.recommendations if r.startswith("Retrieval")
    )


# ------------------------------------------------------------------ the search


def gate_scores(score: float):
    """Per-question scores for the test project's three gate questions (g0, g1, g2)."""

    def scores(spec: RunSpec) -> list[QuestionScore]:
        if spec.split != "gate":
            return []
        return [
            QuestionScore(q, True, None, 1.0, 1.0, 1.0, 1.0, 1.0, score) for q in ("g0", "g1", "g2")
        ]

    return scores


def test_search_refuses_an_unreachable_study_before_round_0(tmp_path, capsys):
    """The project's ceiling is 100 (every question's evidence is retrieved): a gate of 99 with
    the 2-point margin is out of reach."""
    thresholds = {"smoke_schema": 0.0, "max_rounds": 3, "gate_score": 99.0}
    config = make_project(tmp_path, thresholds=thresholds)
    executor = ScriptedExecutor(lambda spec: metrics(80.0), scores=gate_scores(80.0))
    with pytest.raises(UnreachableGate, match=r"ceiling 100\.00 .* gate 99 \+ margin 2"):
        search(config, progress=False, executor=executor)
    assert executor.started == []  # no run at all
    reg = Registry(tmp_path / "registry.sqlite")
    study = reg.study("tiny-study")
    assert study is not None and study.reach is not None and not study.reach["reachable"]
    assert reg.runs(study.id) == [] and reg.decisions(study.id) == []
    reg.close()
    assert main(["search", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "sftgate index tune" in err and "allow_unreachable" in err

    # The same study with policy.allow_unreachable: the pins hold, the search goes on, recorded.
    allowed = make_project(tmp_path, thresholds=thresholds, allow_unreachable=True)
    result = search(allowed, progress=False, executor=executor)
    assert executor.started and result.decision.action == "stop"
    reg = Registry(tmp_path / "registry.sqlite")
    study = reg.study("tiny-study")
    assert study is not None and study.reach is not None and study.reach["allowed_unreachable"]
    reg.close()
    assert result.decision.gap is not None
    assert result.decision.gap["retrieval"]["gate_minus_ceiling"] == pytest.approx(-1.0)
    assert result.decision.gap["model"]["points"] == pytest.approx(20.0)


def test_stop_decisions_show_and_report_carry_the_gap(tmp_path, capsys):
    config = make_project(tmp_path)
    executor = ScriptedExecutor(lambda spec: metrics(90.0), scores=gate_scores(90.0))
    result = search(config, progress=False, executor=executor)
    gap = result.decision.gap
    assert result.decision.action == "stop" and gap is not None
    assert gap["ceiling"] == 100.0 and gap["model"]["points"] == pytest.approx(10.0)
    assert gap["gap"] == pytest.approx(5.0)
    reg = Registry(tmp_path / "registry.sqlite")
    study = reg.study("tiny-study")
    assert study is not None
    stored = reg.decisions(study.id)[-1]
    assert stored["gap"] == gap  # in the registry's decision, byte for byte the planner's
    reg.close()
    assert (
        main(
            [
                "show",
                result.decision.selected_run or "",
                "--registry",
                str(tmp_path / "registry.sqlite"),
            ]
        )
        == 0
    )
    out = "\n" + capsys.readouterr().out  # the search's own lines come first
    shown = json.loads(out[out.index("\n{") :])
    assert shown["gap"]["model"]["points"] == pytest.approx(10.0)
    report = (tmp_path / "work" / "report.md").read_text(encoding="utf-8")
    assert "## Is the gate reachable?" in report and "Ceiling 100.00" in report
    assert "**The gap**" in report and "| kind | questions |" in report
    assert (tmp_path / "work" / "scores.png").read_bytes()[:4] == b"\x89PNG"  # with the ceiling
