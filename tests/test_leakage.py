from __future__ import annotations

import time

import pytest

from sftgate.leakage import MIN_NGRAMS, char_ngrams, check, jaccard, near_duplicates, similarity
from sftgate.questions import load_questions
from tests.conftest import make_question, write_json

REF_LEAVE = {
    "answer": "七日",
    "detailed_description": "滿一年七日。",
    "original_evidence": ["滿一年者七日"],
    "source_paths": ["hr/leave.md"],
}


def make_sets(tmp_path):
    train = [
        make_question("t1", question="VPN 帳號要怎麼申請？"),
        make_question("t2", question="特休假一年有幾天？", reference=REF_LEAVE),
        make_question(
            "t3",
            question="Where is the cafeteria?",
            reference={
                "answer": "B1",
                "detailed_description": "The cafeteria is on B1.",
                "original_evidence": ["cafeteria on B1"],
                "source_paths": ["fac/food.md"],
            },
        ),
    ]
    full = [
        make_question("e1", question="VPN 帳號要怎麼申請?"),  # exact after normalisation
        make_question("e2", question="VPN 帳號要怎麼申請呢？"),  # near duplicate (contained)
        make_question(
            "e3",
            question="How many days of annual leave after one year?",
            reference={**REF_LEAVE, "answer": "7", "detailed_description": "Seven days."},
        ),
        make_question(
            "e4",
            question="Who approves travel?",
            reference={
                "answer": "The manager.",
                "detailed_description": "Managers approve.",
                "original_evidence": ["managers approve travel"],
                "source_paths": ["fin/travel.md"],
            },
        ),
        make_question(
            "e5",
            question="WHERE can I eat lunch at the office?",
            reference={
                "answer": "b1 ",
                "detailed_description": "On B1.",
                "original_evidence": ["The staff cafeteria is on B1"],
                "source_paths": ["fac/food.md"],
            },
        ),
    ]
    gate_ok = full[2:]
    gate_bad = [full[3], make_question("zz", question="Not in full?")]
    return (
        write_json(tmp_path / "train.json", train),
        write_json(tmp_path / "full.json", full),
        write_json(tmp_path / "gate.json", gate_ok),
        write_json(tmp_path / "gate_bad.json", gate_bad),
    )


def test_ngrams_jaccard_and_similarity():
    assert char_ngrams("VPN 帳號?") == {"vpn", "pn帳", "n帳號"}
    assert char_ngrams("ab") == {"ab"} and char_ngrams("，") == frozenset()
    a, b = char_ngrams("VPN 帳號要怎麼申請？"), char_ngrams("VPN 帳號要怎麼申請呢？")
    assert jaccard(a, b) == pytest.approx(8 / 9) and similarity(a, b) == 1.0


# (eval question, train question, near duplicate?)
NEAR_CASES = [
    ("寄件單是哪一張？", "寄件單是哪一張？（請簡答）", True),  # Jaccard only 0.625
    ("訪客證在哪換？", "訪客證在哪換？（請簡答）", True),  # 4 grams: the shortest judged
    (
        "請一併回答：會議室要怎麼預約，以及極機密文件怎麼銷毀？",
        "會議室要怎麼預約？另外，極機密文件怎麼銷毀？",
        False,  # a known miss: 13 of 18 grams (0.72) survive the re-joined parts; when the
        # parts are also asked alone (as in the sample sets), those questions are caught
    ),
    ("Where do I report misconduct?", "where do i report MISCONDUCT", True),
    (
        "Which form is used for conflict of interest declarations?",
        "How do I declare a conflict of interest?",
        False,
    ),
    ("申請筆記型電腦配發需要哪個表單編號、誰要核准？", "申請筆記型電腦配發的步驟是什麼？", False),
    ("VPN?", "VPN 帳號要怎麼申請？", False),  # too short to judge by containment
    ("VPN?", "vpn", True),  # ...but an exact duplicate still is one
]


@pytest.mark.parametrize(("eval_q", "train_q", "expected"), NEAR_CASES)
def test_near_duplicate_cases(tmp_path, eval_q, train_q, expected):
    t = load_questions(write_json(tmp_path / "t.json", [make_question("t", question=train_q)]))
    e = load_questions(write_json(tmp_path / "e.json", [make_question("e", question=eval_q)]))
    assert bool(near_duplicates(t, e)) == expected
    assert MIN_NGRAMS == 4


def test_leakage_check_counts(tmp_path):
    train, full, gate, gate_bad = make_sets(tmp_path)
    r = check(load_questions(train), load_questions(full), load_questions(gate))
    assert r.exact_duplicates == (("e1", "t1"),)
    assert r.near_duplicates == (("e1", "t1", 1.0), ("e2", "t1", 1.0))
    assert {p[0] for p in r.shared_evidence} == {"e1", "e2", "e3"}
    # e5: same normalised answer and source_paths as t3, with a different quote and question
    assert r.shared_answer == (("e1", "t1"), ("e2", "t1"), ("e5", "t3"))
    assert r.shared_ids == ()
    assert r.gate_ok and r.leaks and r.gate_n == 3 and r.gate_leaking == ()
    d = r.to_dict()
    assert d["near_duplicates"] == 2 and d["examples"]["exact_duplicates"] == [["e1", "t1"]]


def test_gate_checks_by_id_and_content(tmp_path):
    train, full, _, gate_bad = make_sets(tmp_path)
    t, f = load_questions(train), load_questions(full)
    r = check(t, f, load_questions(gate_bad))
    assert r.gate_not_in_full == ("zz",) and not r.gate_ok
    changed = write_json(
        tmp_path / "g2.json", [make_question("e4", question="Who approves trips?")]
    )
    r = check(t, f, load_questions(changed))
    assert r.gate_changed == ("e4",) and not r.gate_ok
    renamed = write_json(
        tmp_path / "g3.json", [make_question("g-1", question="VPN 帳號要怎麼申請呢？")]
    )
    r = check(t, f, load_questions(renamed))
    assert r.gate_not_in_full == ("g-1",) and r.gate_renamed == (("g-1", "e2"),)
    leaky_gate = write_json(
        tmp_path / "g4.json", [make_question("e2", question="VPN 帳號要怎麼申請呢？")]
    )
    r = check(t, f, load_questions(leaky_gate))
    assert r.gate_ok and r.gate_leaking == ("e2",)


def test_shared_ids_are_leaks(tmp_path):
    a = write_json(tmp_path / "a.json", [make_question("x", question="停車位怎麼登記？")])
    b = write_json(
        tmp_path / "b.json", [make_question("x", question="Completely different words here")]
    )
    r = check(load_questions(a), load_questions(b))
    assert r.shared_ids == ("x",) and r.leaks and not r.near_duplicates


def test_unanswerable_items_do_not_share_answers(tmp_path):
    refusal = {"answer": "知識庫中沒有足夠資訊回答此問題。", "detailed_description": "沒有。"}
    a = write_json(
        tmp_path / "a.json", [make_question("a", question="餐廳菜單？", reference=refusal)]
    )
    b = write_json(
        tmp_path / "b.json", [make_question("b", question="停車費多少？", reference=refusal)]
    )
    r = check(load_questions(a), load_questions(b))
    assert r.shared_answer == () and not r.leaks


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_threshold_is_checked(tmp_path, threshold):
    train, full, _, _ = make_sets(tmp_path)
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates(load_questions(train), load_questions(full), threshold)


def test_near_duplicates_match_brute_force_and_are_fast(tmp_path):
    """1000 x 1000 questions from a small shared vocabulary: the inverted index finds exactly the
    pairs that comparing every pair finds, in well under a few seconds."""
    import random

    rng = random.Random(0)
    words = [*"申請核准表單主管天數假別特休病假加班費用報銷出差會議室停車", "VPN", "IT-07", "B1"]

    def sentence() -> str:
        return "".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + "？"

    train_q = [make_question(f"t{i}", question=sentence()) for i in range(1000)]
    eval_q = [make_question(f"e{i}", question=sentence()) for i in range(1000)]
    for i in range(0, 1000, 10):  # plant near copies: one extra character at the end
        eval_q[i]["question"] = train_q[i]["question"].rstrip("？") + "呢？"
    t = load_questions(write_json(tmp_path / "t.json", train_q))
    e = load_questions(write_json(tmp_path / "e.json", eval_q))
    start = time.perf_counter()
    found = near_duplicates(t, e)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    grams_t = [char_ngrams(q.question) for q in t]
    brute = set()
    for q in list(e)[:200]:  # the full brute force is 10^6 pairs; 200 rows keep the test quick
        g = char_ngrams(q.question)
        best = max(
            range(len(grams_t)),
            key=lambda i: (similarity(g, grams_t[i]), jaccard(g, grams_t[i]), -i),
        )
        if similarity(g, grams_t[best]) >= 0.8:
            brute.add((q.id, t.questions[best].id))
    assert {(a, b) for a, b, _ in found if int(a[1:]) < 200} == brute
    assert len([p for p in found if int(p[0][1:]) % 10 == 0]) >= 90
