from __future__ import annotations

import json

import jsonschema
import pytest

from sftgate.questions import Passage, Reference
from sftgate.scoring import (
    REFUSAL_EN,
    REFUSAL_ZH,
    SCHEMA_PATH,
    aggregate,
    paired_comparison,
    parse_output,
    schema_errors,
    score_question,
    token_f1,
)
from sftgate.textnorm import tokens
from tests.conftest import PROMPT_PATH

ZH_REF = Reference(
    answer="填寫 IT-07 表單並經主管核准。",
    detailed_description="員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。",
    original_evidence=["填寫 IT-07 遠端存取申請表"],
    source_paths=["it/vpn.md"],
)
ZH_PASSAGES = [
    Passage(
        source_path="it/vpn.md#申請",
        text="員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。",
    ),
    Passage(source_path="hr/leave.md", text="特別休假三日。"),
]
EN_REF = Reference(
    answer="Every 90 days.",
    detailed_description="Passwords expire every 90 days and the last five cannot be reused.",
    original_evidence=[
        "Passwords expire every 90 days",
        "the last five passwords cannot be reused",
    ],
    source_paths=["it/accounts.md"],
)
EN_PASSAGES = [
    Passage(
        source_path="it/accounts.md#passwords",
        text="Passwords expire every 90 days. The last five passwords cannot be reused.",
    )
]


def answer(**kw) -> dict:
    base = {
        "answer": ZH_REF.answer,
        "detailed_description": ZH_REF.detailed_description,
        "original_evidence": list(ZH_REF.original_evidence),
        "anchors": [{"source_path": "it/vpn.md#申請", "text": "IT-07 遠端存取申請表"}],
    }
    base.update(kw)
    return base


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


PERFECT = dumps(answer())


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (PERFECT, None),
        ("  \n" + PERFECT + "\n ", None),
        ("```json\n" + PERFECT + "\n```", "wrapped in a code fence"),
        (PERFECT + "\n希望有幫助！", "text after the JSON object"),
        ("答案如下：" + PERFECT, "text before the JSON object"),
        ("<think>\n\n</think>\n\n" + PERFECT, "contains a <think> block"),
        ("<think>想一想</think>" + PERFECT, "contains a <think> block"),
        ("", "empty output"),
        ("[1, 2]", "text before the JSON object"),
        ('{"answer": "a",', "invalid JSON"),
        (PERFECT + PERFECT, "text after the JSON object"),
    ],
)
def test_parse(output, reason):
    obj, why = parse_output(output)
    if reason is None:
        assert why is None and obj is not None
    else:
        assert obj is None and why.startswith(reason)


SCHEMA_CASES = [
    (answer(), True),
    (answer(original_evidence=[], anchors=[]), True),
    (answer(answer=3), False),
    (answer(answer="  "), False),
    (answer(original_evidence="IT-07"), False),
    (answer(original_evidence=["a"] * 6), False),
    (answer(anchors=[{"source_path": "it/vpn.md"}]), False),
    (answer(anchors=[{"source_path": "x", "text": "y", "page": 1}]), False),
    (answer(extra="field"), False),
    ({k: v for k, v in answer().items() if k != "anchors"}, False),
    (answer(anchors=[{"source_path": "", "text": "IT-07"}]), False),
]


@pytest.mark.parametrize(("obj", "valid"), SCHEMA_CASES)
def test_schema_matches_jsonschema_library(obj, valid):
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    library_valid = jsonschema.Draft202012Validator(schema).is_valid(obj)
    assert library_valid == valid
    assert (not schema_errors(obj)) == valid


def test_tokens_cjk_and_latin():
    assert tokens("VPN 帳號，90 Days!") == ["vpn", "帳", "號", "90", "days"]
    assert tokens("ＶＰＮ（全形）") == ["vpn", "全", "形"]  # NFKC folds full-width forms


@pytest.mark.parametrize(
    ("pred", "ref", "f1"),
    [
        ("每 90 天", "每 90 天", 1.0),
        ("", "", 1.0),
        ("abc", "", 0.0),
        ("主管核准", "經主管核准", 2 * 1 * 0.8 / 1.8),
    ],
)
def test_token_f1(pred, ref, f1):
    assert token_f1(pred, ref) == pytest.approx(f1)


# (name, output, reference, passages, expected fields)
CASES = [
    (
        "zh perfect",
        PERFECT,
        ZH_REF,
        ZH_PASSAGES,
        {"eval_score": 100.0, "grounding": 1.0, "context_recall": 1.0},
    ),
    (
        "en perfect",
        dumps(
            {
                "answer": EN_REF.answer,
                "detailed_description": EN_REF.detailed_description,
                "original_evidence": [
                    "Passwords expire every 90 days",
                    "The last five passwords cannot be reused",
                ],
                "anchors": [{"source_path": "it/accounts.md#passwords", "text": "every 90 days"}],
            }
        ),
        EN_REF,
        EN_PASSAGES,
        {"eval_score": 100.0, "original_evidence": 1.0},
    ),
    (
        "fenced",
        "```json\n" + PERFECT + "\n```",
        ZH_REF,
        ZH_PASSAGES,
        {"schema_ok": False, "eval_score": 0.0, "answer_f1": 0.0, "grounding": 0.0},
    ),
    (
        "wrong type",
        dumps(answer(anchors="it/vpn.md")),
        ZH_REF,
        ZH_PASSAGES,
        {"schema_ok": False, "eval_score": 0.0},
    ),
    (
        "fabricated quote",
        dumps(answer(original_evidence=["填寫 IT-99 申請表"])),
        ZH_REF,
        ZH_PASSAGES,
        {"original_evidence": 0.0, "eval_score": 80.0},
    ),
    (
        "empty lists",
        dumps(answer(original_evidence=[], anchors=[])),
        ZH_REF,
        ZH_PASSAGES,
        {"original_evidence": 0.0, "grounding": 0.0, "eval_score": 60.0},
    ),
    (
        "anchor wrong source_path",
        dumps(
            answer(
                anchors=[
                    {"source_path": "hr/leave.md", "text": "IT-07 遠端存取申請表"},
                    {"source_path": "it/vpn.md#申請", "text": "資訊部開通"},
                ]
            )
        ),
        ZH_REF,
        ZH_PASSAGES,
        {"grounding": 0.5, "eval_score": 90.0},
    ),
    (
        "anchor path never given",
        dumps(answer(anchors=[{"source_path": "it/vpn.md", "text": "IT-07"}])),
        ZH_REF,
        ZH_PASSAGES,
        {"grounding": 0.0},
    ),
    (
        "retrieval miss",
        PERFECT,
        ZH_REF,
        ZH_PASSAGES[1:],
        {"context_recall": 0.0, "original_evidence": 0.0, "grounding": 0.0},
    ),
    (
        "quote with different whitespace still verbatim",
        dumps(answer(original_evidence=["填寫  IT-07\n遠端存取申請表"])),
        ZH_REF,
        ZH_PASSAGES,
        {"original_evidence": 1.0},
    ),
]


@pytest.mark.parametrize(
    ("name", "output", "ref", "passages", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_score_question(name, output, ref, passages, expected):
    s = score_question("q", output, ref, passages)
    for key, value in expected.items():
        assert getattr(s, key) == pytest.approx(value), key


UNANSWERABLE_ZH = Reference(answer=REFUSAL_ZH, detailed_description="手冊沒有提到員工餐廳的菜單。")


@pytest.mark.parametrize(
    ("pred", "score"),
    [
        (
            {
                "answer": REFUSAL_ZH,
                "detailed_description": "資料中沒有。",
                "original_evidence": [],
                "anchors": [],
            },
            100.0,
        ),
        (
            {
                "answer": REFUSAL_EN,
                "detailed_description": "Not in the passages.",
                "original_evidence": [],
                "anchors": [],
            },
            100.0,
        ),
        (
            {
                "answer": "週一供應牛肉麵。",
                "detailed_description": "見公告。",
                "original_evidence": ["特別休假三日"],
                "anchors": [],
            },
            0.0,
        ),
        (
            {
                "answer": REFUSAL_ZH,
                "detailed_description": "資料中沒有。",
                "original_evidence": ["特別休假三日"],
                "anchors": [],
            },
            80.0,
        ),
    ],
)
def test_unanswerable(pred, score):
    s = score_question("u", dumps(pred), UNANSWERABLE_ZH, ZH_PASSAGES)
    assert s.eval_score == pytest.approx(score)
    assert s.context_recall is None


def test_prompt_states_the_refusals():
    text = PROMPT_PATH.read_text(encoding="utf-8")
    assert REFUSAL_ZH in text and REFUSAL_EN in text


def test_aggregate_and_bootstrap():
    scores = [
        score_question(f"q{i}", PERFECT if i % 4 else "oops", ZH_REF, ZH_PASSAGES)
        for i in range(40)
    ]
    m = aggregate(scores)
    assert m["n"] == 40
    assert m["schema_pass_rate"] == pytest.approx(0.75)
    assert m["eval_score_avg"] == pytest.approx(75.0)
    lo, hi = m["eval_score_ci95"]
    assert lo < 75.0 < hi and hi - lo < 40
    assert aggregate(scores)["eval_score_ci95"] == m["eval_score_ci95"]  # seeded
    assert aggregate(scores, seed=1)["eval_score_ci95"] != m["eval_score_ci95"]


def test_paired_comparison():
    a = [
        score_question(f"q{i}", "oops" if i < 10 else PERFECT, ZH_REF, ZH_PASSAGES)
        for i in range(30)
    ]
    b = [score_question(f"q{i}", PERFECT, ZH_REF, ZH_PASSAGES) for i in range(30)]
    cmp = paired_comparison(a, b)
    assert cmp["mean_diff"] == pytest.approx(100 * 10 / 30)
    assert cmp["wins"] == 10 and cmp["ties"] == 20 and cmp["losses"] == 0
    assert 0 < cmp["ci95"][0] < cmp["mean_diff"] < cmp["ci95"][1]
    with pytest.raises(ValueError, match="same questions"):
        paired_comparison(a[:-1], b)
