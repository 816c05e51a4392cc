"""`sftgate index tune`: the choice under a token budget, the command, and the sample's tuned study."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO

from sftgate.ceiling import compute_ceiling
from sftgate.cli import main
from sftgate.index import IndexSettings, build_index
from sftgate.index.tune import TuneRow, choose, grid_settings, retrieval_block, retrievers_for
from sftgate.questions import Passage, load_questions
from sftgate.search.study import RetrievalConfig, load_study_config


def row(top_k: int, chunk: int, train: float, p95: float, gate: float | None = None) -> TuneRow:
    return TuneRow(
        top_k=top_k,
        chunk_chars=chunk,
        overlap_chars=chunk // 5,
        retriever="bm25",
        ceiling_gate=train if gate is None else gate,
        ceiling_train=train,
        context_recall_gate=0.8,
        recall_at_k_gate=0.9,
        length_p95=p95,
        length_max=int(p95 * 1.2),
    )


ROWS = [
    row(3, 500, 98.2, 990),
    row(5, 500, 99.2, 1305),
    row(6, 400, 99.3, 1456),
    row(8, 400, 99.4, 1830, gate=99.9),  # the best ceiling, but too long for 1536
    row(6, 500, 99.3, 1460),  # ties with 6/400 on the ceiling, longer prompts
]


@pytest.mark.parametrize(
    ("max_length", "chosen"),
    [
        (4096, (8, 400)),  # everything fits: the highest ceiling
        (1536, (6, 400)),  # 8 is over; of the two 99.3 ties the shorter prompts win
        (1400, (5, 500)),
        (1000, (3, 500)),
        (1456, (6, 400)),  # p95 equal to max_length fits
    ],
)
def test_choose_takes_the_best_training_slice_ceiling_that_fits(max_length, chosen):
    best = choose(ROWS, max_length)
    assert best is not None and (best.top_k, best.chunk_chars) == chosen


def test_choose_uses_the_training_slice_not_the_gate():
    rows = [row(4, 500, 98.0, 1000, gate=99.5), row(5, 500, 98.5, 1100, gate=97.0)]
    best = choose(rows, 1536)
    assert best is not None and best.top_k == 5


def test_choose_returns_none_when_nothing_fits():
    assert choose(ROWS, 900) is None


def test_retrieval_block_is_a_valid_retrieval_config():
    block = retrieval_block("kb", row(6, 400, 99.25, 1456, gate=97.68), IndexSettings(), 1536)
    parsed = yaml.safe_load(block)["retrieval"]
    r = RetrievalConfig.model_validate(parsed)
    assert (r.top_k, r.settings.chunk_chars, r.settings.overlap_chars) == (6, 400, 80)
    assert "ceiling 97.68" in block and "within max_length 1536" in block


def test_grid_settings_keep_the_embedding_model_only_where_it_is_used():
    base = IndexSettings(retriever="hybrid", embedding_model="some/model", k1=1.2)
    assert retrievers_for(base) == ("bm25", "hybrid") and retrievers_for(IndexSettings()) == (
        "bm25",
    )
    bm25 = grid_settings(base, 300, 60, "bm25")
    assert (bm25.retriever, bm25.embedding_model, bm25.k1, bm25.chunk_chars) == (
        "bm25",
        None,
        1.2,
        300,
    )
    hybrid = grid_settings(base, 400, 80, "hybrid")
    assert (hybrid.embedding_model, hybrid.overlap_chars) == ("some/model", 80)


def test_tune_command_writes_table_plot_and_block(tmp_path, capsys):
    config = REPO / "sftgate/sample/study_cpu.yaml"
    out = tmp_path / "tune"
    code = main(
        ["index", "tune", "--config", str(config), "--top-k", "1,2", "--chunk-chars", "300"]
        + ["--max-length", "4096", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "tune.json").read_text(encoding="utf-8"))
    assert (out / "tune.png").stat().st_size > 10_000
    settings = {(r["top_k"], r["chunk_chars"], r["overlap_chars"]) for r in result["rows"]}
    # the grid (300/60 at top_k 1 and 2) and the study's own 300/50 at top_k 1 and 2
    assert settings == {(1, 300, 60), (2, 300, 60), (1, 300, 50), (2, 300, 50)}
    current = result["current"]
    assert (current["top_k"], current["chunk_chars"], current["overlap_chars"]) == (1, 300, 50)
    chosen = result["chosen"]
    assert chosen["ceiling_train"] == max(r["ceiling_train"] for r in result["rows"])
    assert chosen["top_k"] == 2  # two passages hold more of the evidence than one
    block = yaml.safe_load((out / "retrieval.yaml").read_text(encoding="utf-8"))
    assert block["retrieval"]["corpus"] == "kb" and block["retrieval"]["top_k"] == 2
    assert "paste into a new study" in printed


def test_tune_refuses_a_too_small_chunk(capsys):
    config = REPO / "sftgate/sample/study_cpu.yaml"
    assert main(["index", "tune", "--config", str(config), "--chunk-chars", "50"]) == 2
    assert "chunk_chars" in capsys.readouterr().err


def test_the_sample_study_is_reachable_and_lifts_the_ceiling(tmp_path):
    """sftgate/sample/study.yaml's tuned retrieval against the sample's first one (BM25, top_k 3,
    500/100-character chunks), as its comments say: at least 1.5 points higher, reachable."""
    config = load_study_config(REPO / "sftgate/sample/study.yaml")
    assert config.retrieval is not None
    gate = load_questions(config.gate_questions)

    def gate_ceiling(settings: IndexSettings, top_k: int, where) -> float:
        index, _ = build_index(config.retrieval.corpus, where, settings)
        hits = index.search([q.question for q in gate], top_k)
        passages = {
            q.id: [Passage(source_path=h.source_path, text=h.text) for h in hs]
            for q, hs in zip(gate, hits)
        }
        return compute_ceiling(list(gate), passages, gate_score=95.0, margin=2.0).ceiling

    before = gate_ceiling(IndexSettings(), 3, tmp_path / "before")
    after = gate_ceiling(config.retrieval.settings, config.retrieval.top_k, tmp_path / "after")
    assert before == pytest.approx(95.95, abs=0.01)
    assert after >= before + 1.5
    assert after >= config.policy.thresholds.gate_score + 2.0
