from __future__ import annotations

import json

import pytest

from sftgate.contexts import (
    ContextsLine,
    ContextsMeta,
    load_contexts,
    resolve_passages,
    write_contexts,
)
from sftgate.errors import InputError, MismatchError
from sftgate.questions import Passage, load_questions
from tests.conftest import make_question, write_json


def test_json_list_jsonl_and_object_forms_give_same_version(tmp_path):
    items = [make_question("a"), make_question("b", question="How do I reset my password?")]
    as_list = load_questions(write_json(tmp_path / "l.json", items))
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(dict(reversed(list(i.items()))), ensure_ascii=False) for i in reversed(items)
        )
        + "\n",
        encoding="utf-8",
    )
    as_jsonl = load_questions(jsonl)
    as_obj = load_questions(write_json(tmp_path / "o.json", {"label": "dev", "questions": items}))
    assert len(as_list) == 2
    assert as_list.version == as_jsonl.version == as_obj.version
    assert as_obj.label == "dev"
    assert as_obj.describe().startswith("dev (2 questions")


def test_version_changes_with_content(tmp_path):
    a = load_questions(write_json(tmp_path / "a.json", [make_question("a")]))
    b = load_questions(
        write_json(tmp_path / "b.json", [make_question("a", question="VPN 帳號要怎麼申請?")])
    )
    assert a.version != b.version


def test_every_problem_is_reported_at_once(tmp_path):
    bad = [
        make_question("dup"),
        make_question("dup"),
        {"id": "x", "question": "", "reference": {"answer": "a"}},
        "not an object",
        make_question(
            "t",
            reference={
                "answer": 3,
                "detailed_description": "d",
                "original_evidence": "oops",
                "source_paths": [],
            },
        ),
    ]
    with pytest.raises(InputError) as e:
        load_questions(write_json(tmp_path / "bad.json", bad))
    text = str(e.value)
    assert "bad.json: item 'dup' (#1): field 'id': duplicate id" in text
    assert "item 'x' (#2): field 'question'" in text
    assert "field 'reference.detailed_description': required field is missing" in text
    assert "item #3: each question must be a JSON object" in text
    assert "field 'reference.answer'" in text and "field 'reference.original_evidence'" in text
    assert len(e.value.problems) >= 6


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[", "not valid JSON"),
        (b"[]", "the question set is empty"),
        (b"\xff\xfe[]", "not UTF-8"),
        (b'{"items": []}', "needs a 'questions' list"),
    ],
)
def test_file_level_errors(tmp_path, content, message):
    path = tmp_path / "q.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_questions(path)


def test_jsonl_reports_each_bad_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(make_question("a")) + "\n{bad\n\n[1,\n", encoding="utf-8")
    with pytest.raises(InputError) as e:
        load_questions(path)
    assert [p.item for p in e.value.problems] == ["line 2", "line 4"]


def test_contexts_in_items_require_index_version(tmp_path):
    ctx = [{"source_path": "it/vpn.md", "text": "填寫 IT-07 遠端存取申請表"}]
    with pytest.raises(InputError, match="index_version"):
        load_questions(write_json(tmp_path / "q.json", [make_question("a", contexts=ctx)]))
    qs = load_questions(
        write_json(
            tmp_path / "q2.json",
            {"index_version": "own-1", "questions": [make_question("a", contexts=ctx)]},
        )
    )
    passages, index_version = resolve_passages(qs, None)
    assert index_version == "own-1"
    assert passages["a"] == (Passage(**ctx[0]),)


def test_contexts_file_round_trip_and_refusals(tmp_path):
    qs = load_questions(write_json(tmp_path / "q.json", [make_question("a"), make_question("b")]))
    path = tmp_path / "ctx.jsonl"
    rows = [
        ContextsLine(id=i, passages=[{"source_path": "it/vpn.md#x", "text": f"t{i}", "score": 1.5}])
        for i in ("a", "b")
    ]
    write_contexts(
        path, ContextsMeta(index_version="idx1", top_k=1, eval_set_version=qs.version), rows
    )
    ctx = load_contexts(path)
    passages, index_version = resolve_passages(qs, ctx)
    assert index_version == "idx1" and passages["b"][0].text == "tb"
    other = load_questions(write_json(tmp_path / "o.json", [make_question("a")]))
    with pytest.raises(MismatchError, match="eval_set_version"):
        resolve_passages(other, ctx)
    write_contexts(path, ContextsMeta(index_version="idx1"), rows[:1])
    with pytest.raises(InputError, match="1 question"):
        resolve_passages(qs, load_contexts(path))
    with pytest.raises(InputError, match="no contexts file was given"):
        resolve_passages(qs, None)
