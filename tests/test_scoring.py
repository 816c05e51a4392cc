from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from sftgate.artifacts import read_per_question
from sftgate.errors import MismatchError
from sftgate.questions import Passage, Reference
from sftgate.scoring import (
    REFUSAL_EN,
    REFUSAL_ZH,
    SCHEMA_PATH,
    SCORING_VERSION,
    WEIGHTS,
    aggregate,
    bootstrap_ci,
    is_unanswerable,
    paired_comparison,
    parse_output,
    schema_errors,
    score_question,
    token_f1,
)
from sftgate.textnorm import tokens
from tests.conftest import PROMPT_PATH, REPO

SPEC_PATH = REPO / "docs" / "scoring" / "eval_json_v2.md"

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
        "The last five passwords cannot be reused",
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
EN_PERFECT = dumps(
    {
        "answer": EN_REF.answer,
        "detailed_description": EN_REF.detailed_description,
        "original_evidence": [
            "Passwords expire every 90 days",
            "The last five passwords cannot be reused",
        ],
        "anchors": [{"source_path": "it/accounts.md#passwords", "text": "every 90 days"}],
    }
)


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
        ("[1, 2]", "not a JSON object (a JSON list)"),
        ('"just a string"', "not a JSON object (a JSON str)"),
        ("I cannot answer that.", "no JSON object"),
        ('{"answer": "a",', "invalid JSON"),
        (PERFECT + PERFECT, "text after the JSON object"),
        (EN_PERFECT, None),
        ("\t" + EN_PERFECT + "\r\n", None),
        ("```\n" + EN_PERFECT + "\n```", "wrapped in a code fence"),
        ("Here is the JSON:\n" + EN_PERFECT, "text before the JSON object"),
        (EN_PERFECT + "\nLet me know if you need more.", "text after the JSON object"),
        ("<think></think>" + EN_PERFECT, "contains a <think> block"),
        ("</think>\n" + EN_PERFECT, "contains a <think> block"),
        (EN_PERFECT + "<think>\n</think>", "contains a <think> block"),
        # A tag inside a string value is text of the answer, not a block around the object.
        (dumps(answer(detailed_description="標籤 <think> 只是文字。")), None),
        (
            '{"answer": "a", "answer": "b", "detailed_description": "d", "original_evidence": [], '
            '"anchors": []}',
            "duplicate key 'answer'",
        ),
        ("\ufeff" + PERFECT, "text before the JSON object"),
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
    (answer(anchors=[{"source_path": "it/vpn.md", "text": "\n "}]), False),
    (answer(anchors=[{"source_path": "x", "text": "y"}] * 5), True),
    (answer(anchors=[{"source_path": "x", "text": "y"}] * 6), False),
    (answer(original_evidence=["a"] * 5), True),
    (answer(original_evidence=[""]), False),
    (answer(original_evidence=[1]), False),
    (answer(detailed_description=None), False),
    (answer(anchors=["it/vpn.md"]), False),
    ([answer()], False),
    ({}, False),
]


@pytest.mark.parametrize(("obj", "valid"), SCHEMA_CASES)
def test_schema_matches_jsonschema_library(obj, valid):
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    library_valid = jsonschema.Draft202012Validator(schema).is_valid(obj)
    assert library_valid == valid
    errors = schema_errors(obj)
    assert (not errors) == valid
    assert all(isinstance(e, str) and ": " in e for e in errors)


def test_schema_limits_are_the_ones_the_spec_states():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    props = schema["properties"]
    assert props["original_evidence"]["maxItems"] == props["anchors"]["maxItems"] == 5
    assert "minItems" not in props["original_evidence"]  # empty lists: the unanswerable case
    spec = SPEC_PATH.read_text(encoding="utf-8")
    assert "0 to 5 non-blank strings" in spec and "0 to 5 objects" in spec
    assert f"scoring_version: {SCORING_VERSION}" in spec


def test_schema_error_names_the_field():
    (error,) = schema_errors(answer(answer=3))
    assert error.startswith("answer: ")
    s = score_question("q", dumps(answer(answer=3)), ZH_REF, ZH_PASSAGES)
    assert not s.schema_ok and s.schema_error is not None and s.schema_error.startswith("answer: ")


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
        EN_PERFECT,
        EN_REF,
        EN_PASSAGES,
        {"eval_score": 100.0, "original_evidence": 1.0, "context_recall": 1.0},
    ),
    (
        "en case and punctuation do not matter for F1",
        EN_PERFECT.replace("Every 90 days.", "every 90 DAYS"),
        EN_REF,
        EN_PASSAGES,
        {"answer_f1": 1.0, "eval_score": 100.0},
    ),
    (
        "en one of two reference quotes",
        dumps(
            {
                **json.loads(EN_PERFECT),
                "original_evidence": ["Passwords expire every 90 days"],
            }
        ),
        EN_REF,
        EN_PASSAGES,
        # ref quote 1 fully covered; ref quote 2 only by the pooled token "passwords" (1 of 7)
        {"original_evidence": (1 + 1 / 7) / 2, "eval_score": 100 - 20 * (1 - 4 / 7)},
    ),
    (
        "en fabricated quote (not in the passages, case changed)",
        dumps(
            {
                **json.loads(EN_PERFECT),
                "original_evidence": [
                    "passwords expire every 90 days",
                    "The last five passwords cannot be reused",
                ],
            }
        ),
        EN_REF,
        EN_PASSAGES,
        # the lower-cased quote is not verbatim and is dropped; quote 2 covers ref quote 2 and
        # "passwords" (1 of 5 tokens) of ref quote 1
        {"original_evidence": (1 / 5 + 1) / 2},
    ),
    (
        "en anchor from a passage that was not given",
        dumps(
            {
                **json.loads(EN_PERFECT),
                "anchors": [{"source_path": "it/other.md", "text": "every 90 days"}],
            }
        ),
        EN_REF,
        EN_PASSAGES,
        {"grounding": 0.0, "eval_score": 80.0},
    ),
    (
        "en trailing text",
        EN_PERFECT + " Hope this helps!",
        EN_REF,
        EN_PASSAGES,
        {"schema_ok": False, "eval_score": 0.0, "original_evidence": 0.0, "context_recall": 1.0},
    ),
    (
        "en think block",
        "<think>\n\n</think>\n\n" + EN_PERFECT,
        EN_REF,
        EN_PASSAGES,
        {"schema_ok": False, "eval_score": 0.0},
    ),
    (
        "en too many anchors",
        dumps(
            {
                **json.loads(EN_PERFECT),
                "anchors": [{"source_path": "it/accounts.md#passwords", "text": "every 90 days"}]
                * 6,
            }
        ),
        EN_REF,
        EN_PASSAGES,
        {"schema_ok": False, "eval_score": 0.0, "grounding": 0.0},
    ),
    (
        "en wrong answer, grounded evidence",
        EN_PERFECT.replace("Every 90 days.", "Never."),
        EN_REF,
        EN_PASSAGES,
        {"answer_f1": 0.0, "eval_score": 65.0},
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
        "trailing text",
        PERFECT + "\n以上。",
        ZH_REF,
        ZH_PASSAGES,
        {"schema_ok": False, "eval_score": 0.0, "detailed_description_f1": 0.0},
    ),
    (
        "think block",
        "<think>\n\n</think>\n\n" + PERFECT,
        ZH_REF,
        ZH_PASSAGES,
        {"schema_ok": False, "eval_score": 0.0},
    ),
    (
        "too many quotes",
        dumps(answer(original_evidence=["填寫 IT-07 遠端存取申請表"] * 6)),
        ZH_REF,
        ZH_PASSAGES,
        {"schema_ok": False, "eval_score": 0.0},
    ),
    (
        "repeated quote counts once",
        dumps(answer(original_evidence=["填寫 IT-07 遠端存取申請表"] * 5)),
        ZH_REF,
        ZH_PASSAGES,
        {"original_evidence": 1.0, "eval_score": 100.0},
    ),
    (
        "half the answer",
        dumps(answer(answer="填寫 IT-07 表單。")),
        ZH_REF,
        ZH_PASSAGES,
        # pred tokens 填 寫 it 07 表 單 (6), ref adds 並 經 主 管 核 准 (12): F1 = 2*6/(6+12)
        {"answer_f1": 2 / 3, "eval_score": 100 - 35 / 3},
    ),
    (
        "refusal on an answerable question is scored against the reference",
        dumps(answer(answer=REFUSAL_ZH, original_evidence=[], anchors=[])),
        ZH_REF,
        ZH_PASSAGES,
        {"original_evidence": 0.0, "grounding": 0.0},
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
UNANSWERABLE_EN = Reference(
    answer=REFUSAL_EN, detailed_description="The handbook does not mention the cafeteria menu."
)


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
        (
            {
                "answer": REFUSAL_ZH,
                "detailed_description": "資料中沒有。",
                "original_evidence": [],
                "anchors": [{"source_path": "hr/leave.md", "text": "特別休假三日"}],
            },
            80.0,
        ),
        (
            {
                "answer": "知識庫中沒有足夠資訊回答此問題",  # punctuation aside, the refusal
                "detailed_description": "資料中沒有。",
                "original_evidence": [],
                "anchors": [],
            },
            100.0,
        ),
        (
            {
                "answer": "知識庫中沒有足夠資訊。",  # a different sentence is not the refusal
                "detailed_description": "資料中沒有。",
                "original_evidence": [],
                "anchors": [],
            },
            0.0,
        ),
    ],
)
def test_unanswerable_zh(pred, score):
    s = score_question("u", dumps(pred), UNANSWERABLE_ZH, ZH_PASSAGES)
    assert s.schema_ok
    assert s.eval_score == pytest.approx(score)
    assert s.context_recall is None


@pytest.mark.parametrize(
    ("answer_text", "evidence", "score"),
    [
        (REFUSAL_EN, [], 100.0),
        (REFUSAL_EN.upper().rstrip("."), [], 100.0),
        ("Passwords expire every 90 days.", ["Passwords expire every 90 days"], 0.0),
        ("I don't know.", [], 0.0),
    ],
)
def test_unanswerable_en(answer_text, evidence, score):
    pred = {
        "answer": answer_text,
        "detailed_description": "The passages say nothing about it.",
        "original_evidence": evidence,
        "anchors": [],
    }
    s = score_question("u", dumps(pred), UNANSWERABLE_EN, EN_PASSAGES)
    assert s.eval_score == pytest.approx(score)


def test_unanswerable_schema_failure_scores_zero():
    s = score_question("u", "```json\n{}\n```", UNANSWERABLE_EN, EN_PASSAGES)
    assert (s.schema_ok, s.eval_score, s.answer_f1, s.grounding) == (False, 0.0, 0.0, 0.0)


def test_unanswerable_reference_needs_empty_evidence_and_the_refusal():
    assert is_unanswerable(UNANSWERABLE_ZH) and is_unanswerable(UNANSWERABLE_EN)
    assert not is_unanswerable(ZH_REF)
    with_evidence = Reference(
        answer=REFUSAL_EN, detailed_description="x", original_evidence=["some quote"]
    )
    assert not is_unanswerable(with_evidence)


def test_prompt_states_the_refusals():
    text = PROMPT_PATH.read_text(encoding="utf-8")
    assert REFUSAL_ZH in text and REFUSAL_EN in text


def test_perfect_reference_output_scores_100_in_both_languages():
    for ref, passages, anchor in (
        (ZH_REF, ZH_PASSAGES, {"source_path": "it/vpn.md#申請", "text": "經直屬主管核准"}),
        (EN_REF, EN_PASSAGES, {"source_path": "it/accounts.md#passwords", "text": "90 days"}),
    ):
        out = dumps(
            {
                "answer": ref.answer,
                "detailed_description": ref.detailed_description,
                "original_evidence": list(ref.original_evidence),
                "anchors": [anchor],
            }
        )
        assert score_question("q", out, ref, passages).eval_score == pytest.approx(100.0)


def test_each_field_weighs_its_share_of_the_score():
    """A perfect answer scores 100; losing one field entirely costs exactly its weight."""
    assert score_question("q", PERFECT, ZH_REF, ZH_PASSAGES).eval_score == pytest.approx(100.0)
    lose = {
        "answer_f1": {"answer": "zzz"},
        "detailed_description_f1": {"detailed_description": "zzz"},
        "original_evidence": {"original_evidence": []},
        "grounding": {"anchors": []},
    }
    for field, change in lose.items():
        s = score_question("q", dumps(answer(**change)), ZH_REF, ZH_PASSAGES)
        assert getattr(s, field) == 0.0
        assert s.eval_score == pytest.approx(100 * (1 - WEIGHTS[field])), field


def test_to_row_is_json_and_round_trips(tmp_path):
    s = score_question("q1", PERFECT, ZH_REF, ZH_PASSAGES)
    row = s.to_row()
    assert set(row) == {
        "id",
        "schema_ok",
        "schema_error",
        "answer_f1",
        "detailed_description_f1",
        "original_evidence",
        "grounding",
        "context_recall",
        "eval_score",
    }
    path = tmp_path / "per_question.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert read_per_question(path) == [s]


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
    assert set(m) == {
        "eval_score_avg",
        "eval_score_ci95",
        "schema_pass_rate",
        "grounding_avg",
        "detailed_description_f1",
        "original_evidence",
        "answer_f1",
        "context_recall",
        "n",
        "scoring_version",
    }
    assert m["scoring_version"] == SCORING_VERSION
    assert m["grounding_avg"] == pytest.approx(0.75) and m["answer_f1"] == pytest.approx(0.75)
    assert m["context_recall"] == pytest.approx(1.0)  # failures keep their retrieval measure


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_interval_covers_the_mean_and_narrows_with_n(seed):
    rng = np.random.default_rng(100 + seed)
    small = list(rng.uniform(0, 100, size=25))
    large = list(rng.uniform(0, 100, size=400))
    for values in (small, large):
        lo, hi = bootstrap_ci(values, n_bootstrap=1000, seed=seed)
        assert lo < float(np.mean(values)) < hi
    width = lambda v: np.subtract(*bootstrap_ci(v, n_bootstrap=1000, seed=seed)[::-1])  # noqa: E731
    assert width(large) < width(small)
    assert bootstrap_ci([7.0] * 10, n_bootstrap=50, seed=seed) == [7.0, 7.0]


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_bootstrap"):
        bootstrap_ci([1.0], n_bootstrap=0, seed=0)
    with pytest.raises(ValueError):
        aggregate([])


def test_aggregate_context_recall_is_null_without_answerable_questions():
    refusal = dumps(
        {
            "answer": REFUSAL_EN,
            "detailed_description": "No.",
            "original_evidence": [],
            "anchors": [],
        }
    )
    m = aggregate([score_question("u", refusal, UNANSWERABLE_EN, EN_PASSAGES)])
    assert m["context_recall"] is None and m["eval_score_avg"] == 100.0
    json.dumps(m, allow_nan=False)  # metrics.json must be strict JSON


def test_paired_comparison():
    a = [
        score_question(f"q{i}", "oops" if i < 10 else PERFECT, ZH_REF, ZH_PASSAGES)
        for i in range(30)
    ]
    b = [score_question(f"q{i}", PERFECT, ZH_REF, ZH_PASSAGES) for i in range(30)]
    cmp = paired_comparison(a, b)
    assert cmp["mean_diff"] == pytest.approx(100 * 10 / 30)
    assert cmp["mean_b"] - cmp["mean_a"] == pytest.approx(cmp["mean_diff"])
    assert cmp["wins"] == 10 and cmp["ties"] == 20 and cmp["losses"] == 0 and cmp["n"] == 30
    assert 0 < cmp["ci95"][0] < cmp["mean_diff"] < cmp["ci95"][1]
    assert paired_comparison(a, b) == cmp  # seeded
    back = paired_comparison(b, a)
    assert back["mean_diff"] == pytest.approx(-cmp["mean_diff"]) and back["losses"] == 10
    # order of the inputs does not matter, only the ids
    assert paired_comparison(list(reversed(a)), b)["ci95"] == cmp["ci95"]
    with pytest.raises(MismatchError, match="same questions"):
        paired_comparison(a[:-1], b)
    with pytest.raises(MismatchError, match="more than once"):
        paired_comparison([*a, a[0]], b)


def test_paired_comparison_identical_sets_is_zero():
    a = [score_question(f"q{i}", PERFECT if i % 2 else "x", ZH_REF, ZH_PASSAGES) for i in range(10)]
    cmp = paired_comparison(a, a)
    assert cmp["mean_diff"] == 0.0 and cmp["ci95"] == [0.0, 0.0] and cmp["ties"] == 10


def test_spec_states_what_the_code_does():
    spec = SPEC_PATH.read_text(encoding="utf-8")
    formula = " + ".join(f"{w:.2f}·{k}" for k, w in WEIGHTS.items())
    assert f"100 × ({formula})" in spec
    assert REFUSAL_ZH in spec and REFUSAL_EN in spec
    for output, _ in [
        ("", None),
        ("<think></think>{}", None),
        ("```json\n{}\n```", None),
        ("[1]", None),
        ("x {}", None),
        ("x", None),
        ("{", None),
        ('{"a": 1, "a": 2}', None),
        ("{} x", None),
    ]:
        _, reason = parse_output(output)
        assert reason is not None
        stem = reason.split(":")[0].split(" '")[0].split(" (")[0]
        assert f"`{stem}" in spec, reason
