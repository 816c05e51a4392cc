from __future__ import annotations

import json

from sftgate.cli import main
from sftgate.contexts import ContextsLine, ContextsMeta, write_contexts
from sftgate.leakage import check
from sftgate.questions import load_questions
from tests.conftest import make_question, write_json

PASSAGE = {
    "source_path": "it/vpn.md#申請",
    "text": "員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。",
}


def perfect_output(q: dict) -> str:
    ref = q["reference"]
    return json.dumps(
        {
            "answer": ref["answer"],
            "detailed_description": ref["detailed_description"],
            "original_evidence": ref["original_evidence"],
            "anchors": [{"source_path": PASSAGE["source_path"], "text": "IT-07"}],
        },
        ensure_ascii=False,
    )


def setup_files(tmp_path):
    qs = [make_question("a"), make_question("b", question="How do I get VPN access?")]
    qpath = write_json(tmp_path / "q.json", qs)
    ctx = tmp_path / "ctx.jsonl"
    write_contexts(
        ctx,
        ContextsMeta(index_version="idx"),
        [ContextsLine(id=q["id"], passages=[PASSAGE]) for q in qs],
    )
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        json.dumps({"id": "a", "output": perfect_output(qs[0])}, ensure_ascii=False)
        + "\n"
        + json.dumps({"id": "b", "output": "```{}```"})
        + "\n",
        encoding="utf-8",
    )
    return qpath, ctx, preds


def test_score_writes_metrics_and_per_question(tmp_path, capsys):
    qpath, ctx, preds = setup_files(tmp_path)
    out = tmp_path / "out"
    assert (
        main(
            [
                "score",
                "--questions",
                str(qpath),
                "--predictions",
                str(preds),
                "--contexts",
                str(ctx),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["eval_score_avg"] == 50.0
        and metrics["schema_pass_rate"] == 0.5
        and metrics["n"] == 2
    )
    rows = [json.loads(x) for x in (out / "per_question.jsonl").read_text().splitlines()]
    assert rows[1]["schema_error"] == "wrapped in a code fence"
    assert "eval_score_avg" in capsys.readouterr().out


def test_score_bad_predictions_exit_2_and_write_nothing(tmp_path, capsys):
    qpath, ctx, _ = setup_files(tmp_path)
    preds = tmp_path / "bad.jsonl"
    preds.write_text(
        '{"id": "zzz", "output": "x"}\n{"id": "a"}\n{"id": "a", "output": "x"}\n', encoding="utf-8"
    )
    out = tmp_path / "out"
    code = main(
        [
            "score",
            "--questions",
            str(qpath),
            "--predictions",
            str(preds),
            "--contexts",
            str(ctx),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "item 'zzz' (line 1): field 'id': not in the question set" in err
    assert "item 'a' (line 2): field 'output': missing" in err
    assert "1 question(s)" in err and "'b'" not in err.split("no prediction")[0][-5:]
    assert not out.exists()


def test_score_without_passages_is_a_clear_error(tmp_path, capsys):
    qpath, _, preds = setup_files(tmp_path)
    assert (
        main(
            [
                "score",
                "--questions",
                str(qpath),
                "--predictions",
                str(preds),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no contexts file was given" in capsys.readouterr().err


def test_score_bad_question_file_exit_2(tmp_path, capsys):
    bad = tmp_path / "q.json"
    bad.write_text('[{"id": "a"}]', encoding="utf-8")
    assert (
        main(
            [
                "score",
                "--questions",
                str(bad),
                "--predictions",
                str(bad),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "field 'question': required field is missing" in err


def make_sets(tmp_path):
    train = [
        make_question("t1", question="VPN 帳號要怎麼申請？"),
        make_question(
            "t2",
            question="特休假一年有幾天？",
            reference={
                "answer": "七日",
                "detailed_description": "滿一年七日。",
                "original_evidence": ["滿一年者七日"],
                "source_paths": ["hr/leave.md"],
            },
        ),
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
        make_question(
            "e2", question="VPN 帳號要怎麼申請呢？"
        ),  # near duplicate (3-gram Jaccard 0.9)
        make_question(
            "e3",
            question="How many days of annual leave after one year?",
            reference={
                "answer": "7",
                "detailed_description": "Seven days.",
                "original_evidence": ["滿一年者七日"],
                "source_paths": ["hr/leave.md"],
            },
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
    ]
    gate_ok = full[2:]
    gate_bad = [full[3], make_question("zz", question="Not in full?")]
    return (
        write_json(tmp_path / "train.json", train),
        write_json(tmp_path / "full.json", full),
        write_json(tmp_path / "gate.json", gate_ok),
        write_json(tmp_path / "gate_bad.json", gate_bad),
    )


def test_leakage_check_counts(tmp_path):
    train, full, gate, gate_bad = make_sets(tmp_path)
    r = check(load_questions(train), load_questions(full), load_questions(gate))
    assert r.exact_duplicates == [("e1", "t1")]
    assert {p[0] for p in r.near_duplicates} == {"e1", "e2"}
    assert {p[0] for p in r.shared_evidence} == {"e1", "e2", "e3"}
    assert r.gate_ok and r.leaks
    r2 = check(load_questions(train), load_questions(full), load_questions(gate_bad))
    assert r2.gate_not_in_full == ["zz"]


def test_data_check_cli_strict(tmp_path, capsys):
    train, full, gate, _ = make_sets(tmp_path)
    args = ["data", "check", "--train", str(train), "--eval", str(full), "--gate", str(gate)]
    assert main(args) == 0
    assert "near duplicate" in capsys.readouterr().out
    assert main([*args, "--strict"]) == 1
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact_duplicates"] == 1 and report["gate_subset_of_full"] is True
    clean = write_json(
        tmp_path / "clean.json", [make_question("c1", question="完全不同的問題，關於停車位")]
    )
    assert main(["data", "check", "--train", str(train), "--eval", str(clean), "--strict"]) == 0
