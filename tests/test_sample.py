"""The sample project (sftgate/sample), its generator and baselines, and `sftgate init`."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sftgate.cli import main
from sftgate.cli.validate import validate_file
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.errors import InputError
from sftgate.hashing import sha256_file
from sftgate.paths import package_resource
from sftgate.project import init_project
from sftgate.questions import QuestionSet, load_questions
from sftgate.scoring import load_predictions, score_predictions

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sftgate" / "sample"
KB = SAMPLE / "kb"
V1 = SAMPLE / "docs" / "question_v1.json"
V2 = SAMPLE / "docs" / "question_v2.json"
GATE = SAMPLE / "docs" / "eval_sets" / "question_v2_dev100.json"
REFUSAL_ZH = "知識庫中沒有足夠資訊回答此問題。"
REFUSAL_EN = "The knowledge base does not contain enough information to answer this question."
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def sets() -> dict[str, QuestionSet]:
    return {"v1": load_questions(V1), "v2": load_questions(V2), "gate": load_questions(GATE)}


def test_sizes(sets):
    assert 950 <= len(sets["v1"]) <= 1050
    assert len(sets["v2"]) == 1000
    assert len(sets["gate"]) == 100
    docs = sorted(KB.rglob("*.md"))
    assert 40 <= len(docs) <= 60
    kb_bytes = sum(p.stat().st_size for p in docs)
    assert 150_000 <= kb_bytes <= 400_000
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 3_000_000
    # some documents are in English, most in Chinese
    english = [p for p in docs if not CJK.search(p.read_text(encoding="utf-8"))]
    assert 3 <= len(english) < len(docs) / 2


def test_gate_is_a_fixed_subset_of_v2(sets):
    full = sets["v2"].by_id
    for q in sets["gate"]:
        assert full[q.id] == q


@pytest.mark.parametrize("name", ["v1", "v2", "gate"])
def test_every_evidence_quote_is_verbatim_in_its_sources(sets, name):
    texts: dict[str, str] = {}
    for q in sets[name]:
        ref = q.reference
        for rel in ref.source_paths:
            texts.setdefault(rel, (KB / rel).read_text(encoding="utf-8"))
        for quote in ref.original_evidence:
            assert any(quote in texts[rel] for rel in ref.source_paths), (q.id, quote)


@pytest.mark.parametrize("name", ["v1", "v2", "gate"])
def test_language_mix_and_refusals(sets, name):
    qs = list(sets[name])
    chinese = [q for q in qs if CJK.search(q.question)]
    assert len(chinese) >= len(qs) / 2
    unanswerable = [q for q in qs if not q.reference.source_paths]
    assert unanswerable, "every set has a few questions the handbook cannot answer"
    for q in unanswerable:
        expected = REFUSAL_ZH if CJK.search(q.question) else REFUSAL_EN
        assert q.reference.answer == expected
        assert q.reference.original_evidence == []


def test_variety(sets):
    for qset in sets.values():
        assert len({q.question for q in qset}) == len(qset), "a question repeats within a set"
    qs = list(sets["v2"])
    two_docs = [q for q in qs if len(q.reference.source_paths) == 2]
    assert len(two_docs) >= 20
    assert {len(q.reference.original_evidence) for q in qs} >= {0, 1, 2}
    # v1 and v2 ask about shared facts in other words: shared evidence, few identical questions
    v1_questions = {q.question for q in sets["v1"]}
    v1_evidence = {e for q in sets["v1"] for e in q.reference.original_evidence}
    assert sum(q.question in v1_questions for q in qs) == 0
    assert sum(bool(set(q.reference.original_evidence) & v1_evidence) for q in qs) > 900


def test_generator_reproduces_the_committed_files():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_sample.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_baselines_reproduce_and_score(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sample_baselines.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    committed = SAMPLE / "baselines"
    names = ["contexts_oracle.jsonl", "references.jsonl", "empty.jsonl", "first_passage.jsonl"]
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, committed, names, shallow=False)
    assert mismatch == errors == []
    gate = load_questions(GATE)
    contexts = load_contexts(committed / "contexts_oracle.jsonl")
    assert contexts.index_version == "oracle-paragraphs-v1"
    passages, _ = resolve_passages(gate, contexts)
    scores = {}
    for name in ("references", "empty", "first_passage"):
        outputs = load_predictions(committed / f"{name}.jsonl", gate)
        scores[name] = score_predictions(gate, passages, outputs)[0]["eval_score_avg"]
    assert scores["references"] == pytest.approx(100.0)
    assert scores["empty"] < scores["first_passage"] < 90.0


def test_package_copies_of_prompt_and_spec_are_identical():
    for resource, doc in (
        (package_resource("prompts", "eval_json_v2.md"), REPO / "docs/prompts/eval_json_v2.md"),
        (package_resource("scoring", "eval_json_v2.md"), REPO / "docs/scoring/eval_json_v2.md"),
    ):
        assert resource.read_bytes() == doc.read_bytes(), f"copy {doc} to {resource}"


def test_init_scaffolds_a_valid_project(tmp_path):
    target = tmp_path / "proj"
    assert main(["init", str(target)]) == 0
    prompt = target / "docs/prompts/eval_json_v2.md"
    assert sha256_file(prompt) == sha256_file(REPO / "docs/prompts/eval_json_v2.md")
    assert (target / "docs/scoring/eval_json_v2.md").is_file()
    v1 = load_questions(target / "docs/question_v1.json")
    v2 = load_questions(target / "docs/question_v2.json")
    gate = load_questions(target / "docs/eval_sets/question_v2_dev100.json")
    assert len(v1) == len(v2) == len(gate) == 1
    assert gate.by_id.items() <= v2.by_id.items()
    for q in (*v1, *v2):
        for quote in q.reference.original_evidence:
            for rel in q.reference.source_paths:
                assert quote in (target / "kb" / rel).read_text(encoding="utf-8")
    assert validate_file(str(target / "study.yaml")).kind == "study"


def test_init_sample_copies_a_standalone_project(tmp_path):
    target = tmp_path / "sample"
    init_project(target, sample=True)
    assert len(load_questions(target / "docs/question_v2.json")) == 1000
    assert len(list((target / "kb").rglob("*.md"))) == len(list(KB.rglob("*.md")))
    configs = sorted(target.glob("*.yaml"))
    assert configs
    for config in configs:
        assert validate_file(str(config)).kind == "study"
        assert "../../" not in config.read_text(encoding="utf-8")


def test_init_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match="not empty"):
        init_project(tmp_path)
    assert main(["init", str(tmp_path), "--sample"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "notes.txt"
    with pytest.raises(InputError, match="not a folder"):
        init_project(a_file)
    init_project(tmp_path / "empty_ok")  # a new folder is fine
    (tmp_path / "empty").mkdir()
    init_project(tmp_path / "empty")  # so is an existing empty one
