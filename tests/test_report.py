"""The report, rendered from a fixed registry and compared with a golden file.

The registry is built the way the search builds it (the real planner decides every round) with
scripted metrics instead of training. Re-record the golden file only on purpose:

    SFTGATE_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sftgate.search import drive
from sftgate.search.live import LiveView
from sftgate.search.planner import Policy
from sftgate.search.registry import PIN_KEYS, Registry
from sftgate.search.report import build_blocks, to_html, write_report
from tests.scripted import ScriptedExecutor, spec_for
from tests.scripted import metrics as scripted_metrics

GOLDEN = Path(__file__).parent / "golden" / "report.md"
PINS = {k: f"{k.split('_')[0]}-{'0123456789abcdef' * 4}" for k in PIN_KEYS} | {
    "model_id": "Qwen/Qwen3-4B",
    "prompt_version": "eval_json_v2.0",
}
PROVENANCE = {
    "git": {"commit": "0" * 40, "dirty": False},
    "source_sha256": "ab" * 32,
    "libraries": {"peft": "0.21.0", "torch": "2.11.0", "transformers": "5.17.0"},
    "python": "3.12.3",
    "device": "NVIDIA H100 80GB HBM3",
}


def metrics(score: float, schema: float, grounding: float, dd: float = 0.93, ev: float = 0.92):
    return scripted_metrics(
        score, schema, grounding, dd, ev, eval_set_version=PINS["gate_set_version"]
    )


# Per round, the scripted outcome of each planned run, in order: metrics or a failure.
SCRIPT = {
    0: [metrics(41.25, 0.93, 0.55, dd=0.4, ev=0.3)],
    1: [
        metrics(93.1, 0.99, 0.96, dd=0.85),
        metrics(92.8, 0.99, 0.975, dd=0.85),  # within 0.5 of the best, higher grounding: selected
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    ],
    2: [metrics(95.4, 0.99, 0.98), metrics(94.2, 1.0, 0.97)],
}
FULL = metrics(94.9, 0.991, 0.975) | {"n": 1000, "eval_set_version": PINS["full_set_version"]}


def build_registry(path: Path) -> Registry:
    """The study driven by the real driver, planner and registry, with the script's outcomes."""
    reg = Registry(path)
    policy = Policy()
    config = {"name": "golden", "policy": policy.model_dump(mode="json"), "note": "A fixed study."}
    study, _ = reg.open_study("golden", PINS, "sftgate/sample/study.yaml", config)
    with reg.tx() as db:  # fixed identity and time, so the rendering is byte-for-byte stable
        db.execute(
            "UPDATE studies SET id = 'study0', created_at = '2026-01-01T00:00:00+00:00' WHERE id = ?",
            (study.id,),
        )
    study = reg.study("golden")
    assert study is not None

    def outcome(spec):
        if spec.split == "full":
            return FULL
        round_, position = (int(x) for x in spec.run_id[1:].split("-"))
        return SCRIPT[round_][position]

    executor = ScriptedExecutor(
        outcome,
        train_meta=lambda spec: {
            "adapter_id": f"{spec.run_id[1:].replace('-', '')}c0ffee-0000-4000-8000-0123456789ab",
            "provenance": PROVENANCE,
        },
        times=lambda spec: (
            (60.0 * (int(spec.run_id[1]) + 1), 90.5) if spec.split == "gate" else (0.0, 900.0)
        ),
    )
    view = LiveView("golden", [], enabled=False, slots=1)
    drive(reg, study, policy, executor, spec_for, view)
    return reg


@pytest.fixture(autouse=True)
def _fixed_run_ids(monkeypatch):
    """r{round}-{position}, without the random suffix, so the rendering is stable."""
    monkeypatch.setattr(
        "sftgate.search.registry.new_run_id", lambda round_, pos: f"r{round_}-{pos}"
    )


def test_report_matches_the_golden_file(tmp_path):
    reg = build_registry(tmp_path / "registry.sqlite")
    out = write_report(reg, "golden", tmp_path / "report.md")
    text = out.read_text(encoding="utf-8")
    if os.environ.get("SFTGATE_RECORD_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), (
        "the rendered report changed; if on purpose, re-record with SFTGATE_RECORD_GOLDEN=1"
    )
    for png in ("scores.png", "loss.png", "submetrics.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_report_content_from_the_registry(tmp_path):
    reg = build_registry(tmp_path / "registry.sqlite")
    blocks = build_blocks(reg, "golden", None)
    md = "\n".join(str(b.content) for b in blocks)
    assert "Gate: PASSED" in md and "r2-0" in md
    assert "OutOfMemoryError" in md  # the failed run and its reason
    assert "full set" in md.lower() and "94.90" in md
    # r1-1 scored 0.3 below r1-0, within the tie band, with the higher grounding_avg
    assert "r1-1 is within 0.5 points of r1-0 and has the higher grounding_avg (0.975)" in md
    html = to_html(blocks, "golden")
    assert html.count("<table>") >= 4 and "<strong>Gate: PASSED</strong>" in html


def test_decisions_recorded_by_the_planner(tmp_path):
    reg = build_registry(tmp_path / "registry.sqlite")
    actions = [(d["action"], d["round"], d["selected_run"]) for d in reg.decisions("study0")]
    assert actions == [
        ("train", 0, None),
        ("train", 1, None),
        ("train", 2, "r1-1"),
        ("full_eval", 2, "r2-0"),
        ("stop", 2, "r2-0"),
    ]


def test_runs_with_checkpoints_get_a_learning_curve_plot(tmp_path):
    from sftgate.params import TrainParams
    from sftgate.scoring import Metrics
    from sftgate.search.registry import Checkpoint

    reg = Registry(tmp_path / "registry.sqlite")
    study, _ = reg.open_study("curves", PINS, "study.yaml", {"policy": Policy().model_dump()})
    a, b = reg.add_round(study, 1, [(TrainParams(max_steps=200), "a"), (TrainParams(), "b")])
    at = {50: 60.0, 100: 70.0, 150: 75.0}
    curve = [
        Checkpoint(s, Metrics.model_validate(metrics(v, 0.99, 0.9)), [], "x") for s, v in at.items()
    ]
    reg.record_done(a, Metrics.model_validate(metrics(78.0, 0.99, 0.9)), [], curve)
    reg.record_done(b, Metrics.model_validate(metrics(50.0, 0.99, 0.9)), [])
    text = write_report(reg, "curves", tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Learning curves" in text and "![curves_round1.png](curves_round1.png)" in text
    assert (tmp_path / "curves_round1.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.step for p in reg.curve(a)] == [50, 100, 150] and reg.curve(b) == []


def test_constrained_runs_are_marked(tmp_path):
    from dataclasses import replace

    from sftgate.search.report import round_blocks

    reg = build_registry(tmp_path / "registry.sqlite")
    run = reg.runs("study0")[0]
    held = replace(run, eval_meta={"decoding": {"constrain": "json_schema"}})
    table = round_blocks(0, [run, held])[1].content[1]
    assert [row[1] for row in table] == ["done", "done (constrained)"]
    md = "\n".join(str(b.content) for b in build_blocks(reg, "golden", None))
    assert "['decode.constrain', '`none`']" in md
