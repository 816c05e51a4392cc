from __future__ import annotations

import json

import pytest

from sftgate.cli import main
from sftgate.contexts import ContextsLine, ContextsMeta, write_contexts
from sftgate.errors import InputError
from sftgate.questions import load_questions
from sftgate.scoring import load_predictions
from tests.conftest import make_question, write_json
from tests.test_leakage import make_sets

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
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4, lines  # one line per problem, all reported at once
    assert "item 'zzz' (line 1): field 'id': not in the question set" in lines[0]
    assert "item 'a' (line 2): field 'output': missing" in lines[1]
    assert "item 'a' (line 3): field 'id': duplicate prediction (also at line 2)" in lines[2]
    assert "item b: field 'id': 1 of the 2 question(s)" in lines[3]
    assert not out.exists()


PREDICTION_PROBLEMS = [
    (
        "not json",
        '{"id": "a", "output": "x"}\n{"id": "b", "output": \n',
        ["line 2", "not valid JSON"],
    ),
    (
        "not an object",
        '{"id": "a", "output": "x"}\n["b", "x"]\n',
        ["line 2", "must be a JSON object"],
    ),
    (
        "id not a string",
        '{"id": "a", "output": "x"}\n{"id": 2, "output": "x"}\n',
        ["line 2", "'id'"],
    ),
    (
        "output not a string",
        '{"id": "a", "output": "x"}\n{"id": "b", "output": {"answer": 1}}\n',
        ["'b' (line 2)", "'output'"],
    ),
    ("empty file", "", ["2 of the 2 question(s)", "a, b"]),
]


@pytest.mark.parametrize(
    ("name", "text", "needles"), PREDICTION_PROBLEMS, ids=[c[0] for c in PREDICTION_PROBLEMS]
)
def test_score_prediction_problems_exit_2(tmp_path, capsys, name, text, needles):
    qpath, ctx, _ = setup_files(tmp_path)
    preds = tmp_path / "bad.jsonl"
    preds.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    args = [
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
    assert main(args) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err
    assert not out.exists()


def test_load_predictions_reports_syntax_and_content_problems_together(tmp_path):
    qpath, _, _ = setup_files(tmp_path)
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        '{"id": "a", "output": "x", "latency_s": 1.5}\n{oops\n{"id": "zz", "output": "y"}\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError) as e:
        load_predictions(preds, load_questions(qpath))
    messages = [str(p) for p in e.value.problems]
    assert len(messages) == 3
    assert "line 2" in messages[0] and "'zz'" in messages[1] and "no prediction" in messages[2]


def test_load_predictions_extra_keys_and_blank_lines(tmp_path):
    qpath, _, _ = setup_files(tmp_path)
    preds = tmp_path / "p.txt"  # the suffix does not matter: predictions are always JSONL
    preds.write_text(
        '\n{"id": "b", "output": "y", "model": "m"}\n\n{"id": "a", "output": "x"}\n',
        encoding="utf-8",
    )
    assert load_predictions(preds, load_questions(qpath)) == {"a": "x", "b": "y"}


def test_score_non_utf8_predictions(tmp_path, capsys):
    qpath, ctx, _ = setup_files(tmp_path)
    preds = tmp_path / "p.jsonl"
    preds.write_bytes('{"id": "a", "output": "申請"}\n'.encode("big5"))
    out = tmp_path / "out"
    args = [
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
    assert main(args) == 2
    assert "not UTF-8" in capsys.readouterr().err and not out.exists()


def test_score_contexts_missing_a_question(tmp_path, capsys):
    qpath, _, preds = setup_files(tmp_path)
    ctx = tmp_path / "ctx1.jsonl"
    write_contexts(
        ctx, ContextsMeta(index_version="idx"), [ContextsLine(id="a", passages=[PASSAGE])]
    )
    out = tmp_path / "out"
    args = [
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
    assert main(args) == 2
    assert "have no passages here" in capsys.readouterr().err and not out.exists()


def test_score_with_the_items_own_contexts(tmp_path):
    q = make_question("a", contexts=[PASSAGE])
    qpath = write_json(tmp_path / "q.json", {"index_version": "mine", "questions": [q]})
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        json.dumps({"id": "a", "output": perfect_output(q)}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert (
        main(["score", "--questions", str(qpath), "--predictions", str(preds), "--out", str(out)])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["eval_score_avg"] == 100.0 and metrics["context_recall"] == 1.0


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


def test_data_check_bad_input_exit_2(tmp_path, capsys):
    train, full, _, _ = make_sets(tmp_path)
    dup = write_json(tmp_path / "dup.json", [make_question("x"), make_question("x")])
    assert main(["data", "check", "--train", str(train), "--eval", str(dup)]) == 2
    assert "duplicate id" in capsys.readouterr().err
    empty = write_json(tmp_path / "empty.json", [])
    assert main(["data", "check", "--train", str(empty), "--eval", str(full), "--strict"]) == 2
    assert "the question set is empty" in capsys.readouterr().err
    assert (
        main(["data", "check", "--train", str(train), "--eval", str(tmp_path / "nope.json")]) == 2
    )
    assert "file not found" in capsys.readouterr().err


def test_data_check_gate_outside_full_fails_strict(tmp_path, capsys):
    _, full, _, gate_bad = make_sets(tmp_path)
    clean_train = write_json(
        tmp_path / "t.json", [make_question("t9", question="停車位怎麼登記？")]
    )
    args = [
        "data",
        "check",
        "--train",
        str(clean_train),
        "--eval",
        str(full),
        "--gate",
        str(gate_bad),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "not in the full set: zz" in out
    assert main([*args, "--strict"]) == 1
