"""The SQLite registry, on real databases in temp folders."""

from __future__ import annotations

import sqlite3

import pytest

from sftgate.errors import MismatchError, SftgateError
from sftgate.params import TrainParams
from sftgate.scoring import Metrics, QuestionScore
from sftgate.search.registry import (
    MIGRATIONS,
    PIN_KEYS,
    Registry,
    RunState,
    comparable,
    default_path,
)

PINS = {k: f"{k}-v1" for k in PIN_KEYS} | {"settings.policy": "p1"}
PARAMS = TrainParams(max_steps=20, lr=2e-4)


METRICS = {
    "eval_score_avg": 81.5,
    "eval_score_ci95": [79.0, 84.0],
    "schema_pass_rate": 0.97,
    "grounding_avg": 0.9,
    "detailed_description_f1": 0.8,
    "original_evidence": 0.85,
    "answer_f1": 0.7,
    "context_recall": None,
    "n": 2,
}


def decision(round_: int, action: str = "train") -> dict:
    return {
        "action": action,
        "round": round_,
        "configs": [],
        "selected_run": None,
        "reason": f"r{round_}",
        "recommendations": [],
    }


def test_blank_database_gets_every_migration(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    assert reg.schema_version() == len(MIGRATIONS)
    tables = {r[0] for r in reg.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"studies", "runs", "decisions", "question_scores", "schema_version"} <= tables
    assert reg.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reg.close()
    assert Registry(tmp_path / "r.sqlite").schema_version() == len(
        MIGRATIONS
    )  # reopening adds nothing


def test_a_version_1_database_is_migrated_with_its_data(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[0])
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    con.execute("INSERT INTO schema_version VALUES (1)")
    con.execute(
        "INSERT INTO studies (id, name, created_at, config_path, config_json, pins_json, "
        + ", ".join(PIN_KEYS)
        + ") VALUES ('s1', 'old', 't', 'c', '{}', '{}'"
        + ", 'x'" * len(PIN_KEYS)
        + ")"
    )
    con.commit()
    con.close()
    reg = Registry(path)
    assert reg.schema_version() == len(MIGRATIONS)
    study = reg.study("old")
    assert study is not None and study.id == "s1"
    columns = {r[1] for r in reg.db.execute("PRAGMA table_info(runs)")}
    assert {"full_status", "worker_json", "lost", "full_lost"} <= columns


def test_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    Registry(path).db.execute("INSERT INTO schema_version VALUES (999)")
    with pytest.raises(SftgateError, match="newer sftgate"):
        Registry(path)


def test_sftgate_home_moves_the_default_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTGATE_HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / "registry.sqlite"
    Registry().close()
    assert (tmp_path / "home" / "registry.sqlite").exists()


def test_a_failed_transaction_leaves_nothing(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    study, _ = reg.open_study("s", PINS, "c.yaml", {})
    with pytest.raises(RuntimeError), reg.tx() as db:
        db.execute(
            "INSERT INTO decisions (study_id, round, action, decision_json, created_at) "
            "VALUES (?, 0, 'train', '{}', 't')",
            (study.id,),
        )
        raise RuntimeError("crash mid-transaction")
    assert reg.decisions(study.id) == []


def test_changed_pins_are_refused_with_what_changed(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    study, created = reg.open_study("s", PINS, "c.yaml", {})
    assert created and study.pins == PINS
    assert reg.open_study("s", PINS, "c.yaml", {}) == (study, False)
    changed = {**PINS, "prompt_sha256": "other", "settings.policy": "p2"}
    with pytest.raises(MismatchError) as e:
        reg.open_study("s", changed, "c.yaml", {})
    assert "prompt_sha256" in str(e.value) and "settings.policy" in str(e.value)
    assert "new `name`" in str(e.value)
    assert reg.open_study("s2", changed, "c.yaml", {})[1]  # a new name is a new study


def test_decision_and_its_round_are_recorded_together_once(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    study, _ = reg.open_study("s", PINS, "c.yaml", {})
    longer = PARAMS.model_copy(update={"max_steps": 30})
    configs = [(PARAMS, "a"), (longer, "b")]
    ids = reg.record_decision(study, decision(1), configs)
    assert reg.record_decision(study, decision(1), configs) == ids  # a resume re-derives it
    assert len(reg.decisions(study.id)) == 1
    runs = reg.runs(study.id)
    assert [(r.id, r.state, r.params) for r in runs] == [
        (ids[0], RunState.PLANNED, PARAMS),
        (ids[1], RunState.PLANNED, longer),
    ]
    assert runs[0].prompt_sha256 == "prompt_sha256-v1"
    assert runs[0].eval_set_version == "gate_set_version-v1"
    # recorded as the seed's seven parameters; the others are the study's round 0
    assert reg.run_json(ids[1])["params"] == longer.seed_view()  # type: ignore[index]


def test_runs_get_the_parameters_the_seed_does_not_name_from_round0(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    round0 = TrainParams(warmup_ratio=0.1, seed=7).model_dump(mode="json")
    study, _ = reg.open_study("s", PINS, "c.yaml", {"policy": {"round0": round0}})
    (run_id,) = reg.add_round(study, 1, [(TrainParams(max_steps=200), "a")])
    run = reg.run(run_id)
    assert run is not None
    assert (run.params.max_steps, run.params.warmup_ratio, run.params.seed) == (200, 0.1, 7)


def test_run_states_are_checked(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    study, _ = reg.open_study("s", PINS, "c.yaml", {})
    (run_id,) = reg.add_round(study, 0, [(PARAMS, "smoke")])
    with pytest.raises(ValueError, match="sets training or evaluating, not done"):
        reg.set_stage(run_id, RunState.DONE)
    with pytest.raises(sqlite3.IntegrityError):
        reg.db.execute("UPDATE runs SET status = 'running' WHERE id = ?", (run_id,))


def test_interrupted_work_goes_back_to_planned(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    study, _ = reg.open_study("s", PINS, "c.yaml", {})
    a, b, c = reg.add_round(study, 1, [(PARAMS, "a"), (PARAMS, "b"), (PARAMS, "c")])
    reg.record_done(a, Metrics.model_validate(METRICS), [])
    reg.start_full(a)
    reg.set_stage(b, RunState.TRAINING)
    reg.set_stage(c, RunState.EVALUATING)
    assert reg.reset_interrupted(study.id) == [b, c, f"{a} (full set)"]
    assert [r.state.value for r in reg.runs(study.id)] == ["done", "planned", "planned"]
    assert reg.run(a).full is None  # type: ignore[union-attr]


def test_lost_runs_go_back_to_planned_and_ordinary_failures_stay(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    study, _ = reg.open_study("s", PINS, "c.yaml", {})
    lost, failed, full = reg.add_round(study, 1, [(PARAMS, "a"), (PARAMS, "b"), (PARAMS, "c")])
    worker = {"host": "node-2", "pid": 7, "devices": "1"}
    reg.record_failed(lost, "lost while training", lost=True, worker_json=worker)
    reg.record_failed(failed, "OutOfMemoryError", lost=False)
    reg.record_done(full, Metrics.model_validate(METRICS), [])
    reg.record_full_failed(full, "gone", lost=True)
    assert reg.run(lost).worker == worker  # type: ignore[union-attr]
    assert reg.run(lost).status == "failed (lost)"  # type: ignore[union-attr]
    assert reg.reset_interrupted(study.id) == [f"{lost} (lost)", f"{full} (full set, lost)"]
    rows = {r.id: r for r in reg.runs(study.id)}
    assert (rows[lost].state, rows[lost].lost, rows[lost].failure) == (
        RunState.PLANNED,
        False,
        None,
    )
    assert (rows[failed].state, rows[failed].failure) == (RunState.FAILED, "OutOfMemoryError")
    assert (rows[full].state, rows[full].full) == (RunState.DONE, None)
    assert reg.reset_interrupted(study.id) == []  # nothing left to restart


def test_metrics_and_question_scores_round_trip(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    study, _ = reg.open_study("s", PINS, "c.yaml", {})
    (run_id,) = reg.add_round(study, 0, [(PARAMS, "smoke")])
    scores = [
        QuestionScore("q1", True, None, 1.0, 0.5, 0.25, 1.0, None, 80.0),
        QuestionScore("q2", False, "not JSON", 0.0, 0.0, 0.0, 0.0, 0.5, 0.0),
    ]
    reg.record_done(run_id, Metrics.model_validate(METRICS), scores)
    reg.record_done(run_id, Metrics.model_validate(METRICS), scores)  # rewritten, not doubled
    row = reg.run_json(run_id)
    assert row is not None
    assert (row["eval_score_avg"], row["eval_score_ci_low"], row["eval_score_ci_high"]) == (
        81.5,
        79.0,
        84.0,
    )
    assert row["metrics"] == METRICS  # the metrics.json object, key for key
    run = reg.run(run_id)
    assert run is not None and run.metrics == Metrics.model_validate(METRICS)
    assert reg.question_scores(run_id) == scores
    assert reg.question_scores(run_id, "full") == []


def test_runs_of_other_studies_or_pins_are_not_comparable(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    s1, _ = reg.open_study("s1", PINS, "c.yaml", {})
    s2, _ = reg.open_study("s2", {**PINS, "prompt_sha256": "p2"}, "c.yaml", {})
    a, b = reg.add_round(s1, 1, [(PARAMS, "a"), (PARAMS, "b")])
    (c,) = reg.add_round(s2, 1, [(PARAMS, "c")])
    comparable(reg.run(a), reg.run(b))  # type: ignore[arg-type]
    with pytest.raises(MismatchError, match="study_id.*prompt_sha256"):
        comparable(reg.run(a), reg.run(c))  # type: ignore[arg-type]


def test_a_constrained_and_an_unconstrained_run_are_not_comparable(tmp_path):
    """Within a study every run shares the pinned decode settings; across evaluations recorded
    otherwise (or edited by hand), the comparison names the constraint."""
    from dataclasses import replace

    reg = Registry(tmp_path / "r.sqlite")
    s1, _ = reg.open_study("s1", PINS, "c.yaml", {})
    a, b = reg.add_round(s1, 1, [(PARAMS, "a"), (PARAMS, "b")])
    run_a, run_b = reg.run(a), reg.run(b)
    assert run_a is not None and run_b is not None
    held = replace(run_b, eval_meta={"decoding": {"constrain": "json_schema"}})
    with pytest.raises(MismatchError, match="a constrained and an unconstrained run are never"):
        comparable(run_a, held)
    comparable(replace(run_a, eval_meta={"decoding": {"constrain": "json_schema"}}), held)
