"""Malformed inputs of every kind, each refused the same way.

A table of malformed inputs (question sets, predictions, contexts, prompts, study, train and eval
configs, corpora, planner histories, registries), each given to the command that reads it. For
every one: exit code 2, exactly one line on stderr that names the file (and the item and field
where there is one), no traceback, nothing written anywhere (the case's folder, the shared
project, $SFTGATE_HOME), and not one byte of the existing registry or the study's folder changed.

The CLI's `main()` runs in this process (fast); a few cases also run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftgate.cli import main
from sftgate.params import TrainParams
from sftgate.search.inputs import pin_inputs
from sftgate.search.registry import Registry
from sftgate.search.study import load_study_config
from tests.conftest import PROMPT_PATH, REPO, make_question

EN = {
    "answer": "Apply in the HR portal three days ahead.",
    "detailed_description": "Annual leave is applied for in the HR portal at least three days ahead.",
    "original_evidence": ["Apply in the HR portal at least three days ahead."],
    "source_paths": ["hr/leave.md"],
}
KB = {
    "it/vpn.md": "# VPN\n\n## 申請\n\n員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。\n",
    "hr/leave.md": "# Leave\n\nApply in the HR portal at least three days ahead.\n",
}


def qset(prefix: str, n: int) -> list[dict]:
    return [
        make_question(f"{prefix}{i}", question=f"How do I apply for leave? ({i})", reference=EN)
        if i % 2
        else make_question(f"{prefix}{i}", question=f"VPN 帳號要怎麼申請？（{i}）")
        for i in range(n)
    ]


def contexts_lines(items: list[dict], index_version: str = "idx-1") -> list[Any]:
    return [{"_meta": {"index_version": index_version, "top_k": 1}}] + [
        {
            "id": q["id"],
            "passages": [{"source_path": "it/vpn.md", "text": "填寫 IT-07 遠端存取申請表"}],
        }
        for q in items
    ]


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


GOOD_OUTPUT = json.dumps(
    {
        "answer": "填寫 IT-07",
        "detailed_description": "填寫 IT-07 遠端存取申請表",
        "original_evidence": [],
        "anchors": [],
    },
    ensure_ascii=False,
)


@dataclass(frozen=True)
class Project:
    """The shared, valid inputs: a project, a registry holding its study, the study's folder."""

    root: Path
    study: dict[str, Any]  # the study config, as a mapping
    train: dict[str, Any]  # a train config
    evalc: dict[str, Any]  # an eval config
    history: dict[str, Any]

    def __getattr__(self, name: str) -> Path:  # p.gate -> root/gate.json, ...
        files = {
            "train_set": "train.json",
            "gate": "gate.json",
            "full": "full.json",
            "prompt": "prompt.md",
            "ctx_train": "ctx_train.jsonl",
            "ctx_gate": "ctx_gate.jsonl",
            "ctx_full": "ctx_full.jsonl",
            "predictions": "predictions.jsonl",
            "kb": "kb",
            "registry": "registry.sqlite",
            "work": "work",
            "adapter": "adapter",
        }
        if name in files:
            return self.root / files[name]
        raise AttributeError(name)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp("fuzz_project")
    for rel, text in KB.items():
        (root / "kb" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "kb" / rel).write_text(text, encoding="utf-8")
    sets = {"train": qset("t", 3), "gate": qset("g", 2), "full": qset("g", 2) + qset("f", 2)}
    for split, items in sets.items():
        name = "train_set" if split == "train" else split
        (root / f"{'train' if split == 'train' else split}.json").write_text(
            json.dumps(items, ensure_ascii=False), encoding="utf-8"
        )
        (root / f"ctx_{split}.jsonl").write_text(jsonl(contexts_lines(items)), encoding="utf-8")
        del name
    (root / "prompt.md").write_bytes(PROMPT_PATH.read_bytes())
    (root / "predictions.jsonl").write_text(
        jsonl([{"id": q["id"], "output": GOOD_OUTPUT} for q in sets["gate"]]), encoding="utf-8"
    )
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "sftgate_train.json").write_text("{}", encoding="utf-8")
    study = {
        "kind": "study",
        "name": "fuzz",
        "model": "tiny-qwen3",
        "prompt": "prompt.md",
        "train_questions": "train.json",
        "gate_questions": "gate.json",
        "full_questions": "full.json",
        "contexts": {
            "train": "ctx_train.jsonl",
            "gate": "ctx_gate.jsonl",
            "full": "ctx_full.jsonl",
        },
        "workdir": str(root / "work"),
        "registry": str(root / "registry.sqlite"),
        "policy": {"round0": {"max_steps": 1, "max_length": 4096}},
    }
    config_path = root / "study.yaml"
    config_path.write_text(yaml.safe_dump(study), encoding="utf-8")
    config = load_study_config(config_path)
    reg = Registry(root / "registry.sqlite")
    reg.open_study("fuzz", pin_inputs(config).pins, str(config_path), config.model_dump())
    reg.close()
    (root / "work" / "runs").mkdir(parents=True)
    (root / "work" / "report.md").write_text("# fuzz\n", encoding="utf-8")
    train = {
        "kind": "train",
        "model": "tiny-qwen3",
        "questions": str(root / "train.json"),
        "contexts": str(root / "ctx_train.jsonl"),
        "prompt": str(root / "prompt.md"),
        "out": str(root / "new-adapter"),
        "params": {"max_steps": 1, "max_length": 4096},
    }
    evalc = {
        "kind": "eval",
        "model": "tiny-qwen3",
        "questions": str(root / "gate.json"),
        "contexts": str(root / "ctx_gate.jsonl"),
        "prompt": str(root / "prompt.md"),
        "out": str(root / "eval-out"),
    }
    metrics = {
        "eval_score_avg": 50.0,
        "schema_pass_rate": 0.95,
        "grounding_avg": 0.5,
        "detailed_description_f1": 0.5,
        "original_evidence": 0.5,
    }
    params = TrainParams().seed_view()  # round 0's seven seed parameters
    history = {
        "rounds": [
            {
                "round": 0,
                "runs": [{"run_id": "r0", "params": params, "status": "done", "metrics": metrics}],
            }
        ]
    }
    return Project(root, study, train, evalc, history)


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every path under the roots with its bytes (None for a folder)."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = None if p.is_dir() else p.read_bytes()
    return out


# ---------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    # (project, the case's own folder) -> argv; writes the malformed input into the folder
    argv: Callable[[Project, Path], list[str]]
    expect: tuple[str, ...] = field(default=())  # besides the file: item, field, message words


CASES: list[Case] = []


def write(folder: Path, name: str, content: str | bytes | None) -> Path:
    """Write the malformed input; None makes a folder of that name, "<absent>" writes nothing."""
    path = folder / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content != "<absent>":
        path.write_text(content, encoding="utf-8")
    return path


def add(case_id: str, argv: Callable[[Project, Path], list[str]], *expect: str) -> None:
    CASES.append(Case(case_id, argv, tuple(expect)))


# -- question sets: given to `score` (as the questions) and to `data check` (as the train set)

Q = make_question("q1")
QUESTION_SETS: list[tuple[str, str | bytes | None, tuple[str, ...]]] = [
    ("empty-file", "", ()),
    ("empty-list", "[]", ("empty",)),
    ("bad-json", "[{", ("not valid JSON",)),
    ("object-without-questions", '{"label": "x"}', ("questions",)),
    ("a-string", '"just text"', ("list",)),
    ("numbers", "[1]", ("#0", "JSON object")),
    ("null-item", "[null]", ("#0",)),
    ("no-id", json.dumps([{k: v for k, v in Q.items() if k != "id"}]), ("#0", "id", "missing")),
    ("int-id", json.dumps([{**Q, "id": 3}]), ("#0", "id", "text")),
    ("empty-id", json.dumps([{**Q, "id": ""}]), ("#0", "id", "empty")),
    (
        "no-question",
        json.dumps([{k: v for k, v in Q.items() if k != "question"}]),
        ("q1", "question"),
    ),
    ("null-question", json.dumps([{**Q, "question": None}]), ("q1", "question")),
    ("list-question", json.dumps([{**Q, "question": ["a"]}]), ("q1", "question")),
    (
        "no-reference",
        json.dumps([{k: v for k, v in Q.items() if k != "reference"}]),
        ("reference",),
    ),
    ("string-reference", json.dumps([{**Q, "reference": "x"}]), ("reference", "mapping")),
    (
        "no-answer",
        json.dumps(
            [{**Q, "reference": {k: v for k, v in Q["reference"].items() if k != "answer"}}]
        ),
        ("reference.answer",),
    ),
    (
        "empty-answer",
        json.dumps([{**Q, "reference": {**Q["reference"], "answer": ""}}]),
        ("reference.answer",),
    ),
    (
        "int-description",
        json.dumps([{**Q, "reference": {**Q["reference"], "detailed_description": 5}}]),
        ("reference.detailed_description",),
    ),
    (
        "evidence-string",
        json.dumps([{**Q, "reference": {**Q["reference"], "original_evidence": "x"}}]),
        ("reference.original_evidence", "list"),
    ),
    (
        "evidence-empty-item",
        json.dumps([{**Q, "reference": {**Q["reference"], "original_evidence": [""]}}]),
        ("reference.original_evidence",),
    ),
    (
        "source-path-int",
        json.dumps([{**Q, "reference": {**Q["reference"], "source_paths": [1]}}]),
        ("reference.source_paths[0]",),
    ),
    ("unknown-key", json.dumps([{**Q, "questoin": "x"}]), ("questoin", "unknown key")),
    (
        "unknown-reference-key",
        json.dumps([{**Q, "reference": {**Q["reference"], "anwser": "x"}}]),
        ("reference.anwser",),
    ),
    ("duplicate-ids", json.dumps([Q, Q]), ("id", "duplicate")),
    (
        "contexts-no-index-version",
        json.dumps([{**Q, "contexts": [{"source_path": "a", "text": "b"}]}]),
        ("index_version",),
    ),
    (
        "contexts-a-string",
        json.dumps({"index_version": "i", "questions": [{**Q, "contexts": "x"}]}),
        ("contexts",),
    ),
    (
        "contexts-no-text",
        json.dumps(
            {"index_version": "i", "questions": [{**Q, "contexts": [{"source_path": "a"}]}]}
        ),
        ("contexts[0].text",),
    ),
    (
        "contexts-on-some",
        json.dumps(
            {
                "index_version": "i",
                "questions": [
                    {**Q, "contexts": [{"source_path": "a", "text": "b"}]},
                    make_question("q2"),
                ],
            }
        ),
        ("q2", "contexts"),
    ),
    ("jsonl-bad-line", json.dumps(Q) + "\n{oops\n", ("line 2", "not valid JSON")),
    ("jsonl-meta-not-object", json.dumps({"_meta": 3}) + "\n" + json.dumps(Q) + "\n", ("header",)),
    (
        "jsonl-meta-unknown-key",
        json.dumps({"_meta": {"lable": "x"}}) + "\n" + json.dumps(Q) + "\n",
        ("header", "lable"),
    ),
    ("object-label-int", json.dumps({"label": 5, "questions": [Q]}), ("header", "label")),
    ("questions-not-list", json.dumps({"questions": "x"}), ("list",)),
    ("not-utf8", b"\xff\xfe[\x00]", ("UTF-8",)),
    ("a-folder", None, ("folder",)),
    ("absent", "<absent>", ("not found",)),
]
for qid, content, expect in QUESTION_SETS:
    name = f"q_{qid}.jsonl" if qid.startswith("jsonl") else f"q_{qid}.json"

    def score_q(p: Project, d: Path, name: str = name, content: Any = content) -> list[str]:
        bad = write(d, name, content)
        out = d / "out"
        return [
            "score",
            "--questions",
            str(bad),
            "--predictions",
            str(p.predictions),
            "--out",
            str(out),
        ]

    def check_q(p: Project, d: Path, name: str = name, content: Any = content) -> list[str]:
        return ["data", "check", "--train", str(write(d, name, content)), "--eval", str(p.full)]

    add(f"questions/{qid}/score", score_q, *expect)
    add(f"questions/{qid}/data-check", check_q, *expect)

# -- predictions: given to `score`

P = {"id": "g0", "output": GOOD_OUTPUT}
P1 = {"id": "g1", "output": GOOD_OUTPUT}
PREDICTIONS: list[tuple[str, str | bytes | None, tuple[str, ...]]] = [
    ("bad-json", jsonl([P, P1]) + "{nope\n", ("line 3",)),
    ("a-list-line", jsonl([P, P1, [1]]), ("line 3", "JSON object")),
    ("no-id", jsonl([P, P1, {"output": "x"}]), ("line 3", "id")),
    ("int-id", jsonl([P, P1, {"id": 1, "output": "x"}]), ("line 3", "id")),
    ("empty-id", jsonl([P, P1, {"id": "", "output": "x"}]), ("line 3", "id")),
    ("no-output", jsonl([P, {"id": "g1"}]), ("g1", "output")),
    ("int-output", jsonl([P, {"id": "g1", "output": 3}]), ("g1", "output")),
    ("null-output", jsonl([P, {"id": "g1", "output": None}]), ("g1", "output")),
    ("duplicate-id", jsonl([P, P1, P1]), ("g1", "duplicate")),
    ("unknown-id", jsonl([P, P1, {"id": "zz", "output": "x"}]), ("zz",)),
    ("missing-question", jsonl([P]), ("g1",)),
    ("empty", "", ()),
    ("not-utf8", b"\xff\xfe\n", ("UTF-8",)),
    ("a-folder", None, ("folder",)),
    ("absent", "<absent>", ("not found",)),
]
for pid, content, expect in PREDICTIONS:

    def score_p(p: Project, d: Path, content: Any = content, pid: str = pid) -> list[str]:
        bad = write(d, f"pred_{pid}.jsonl", content)
        return [
            "score",
            "--questions",
            str(p.gate),
            "--predictions",
            str(bad),
            "--contexts",
            str(p.ctx_gate),
            "--out",
            str(d / "out"),
        ]

    add(f"predictions/{pid}", score_p, *expect)

# -- contexts files: given to `score`

GATE_IDS = ["g0", "g1"]
META = {"_meta": {"index_version": "idx-1"}}


def ctx_line(qid: str, **passage: Any) -> dict:
    return {"id": qid, "passages": [{"source_path": "it/vpn.md", "text": "x", **passage}]}


CONTEXTS: list[tuple[str, str | bytes | None, tuple[str, ...]]] = [
    ("no-header", jsonl([ctx_line("g0"), ctx_line("g1")]), ("index_version",)),
    (
        "header-no-index-version",
        jsonl([{"_meta": {"top_k": 1}}, ctx_line("g0"), ctx_line("g1")]),
        ("header", "index_version"),
    ),
    (
        "header-empty-index-version",
        jsonl([{"_meta": {"index_version": ""}}, ctx_line("g0"), ctx_line("g1")]),
        ("index_version",),
    ),
    (
        "header-top-k-text",
        jsonl(
            [{"_meta": {"index_version": "i", "top_k": "three"}}, ctx_line("g0"), ctx_line("g1")]
        ),
        ("top_k",),
    ),
    ("no-passages", jsonl([META, {"id": "g0"}, ctx_line("g1")]), ("line 2", "passages")),
    (
        "passages-not-list",
        jsonl([META, {"id": "g0", "passages": "x"}, ctx_line("g1")]),
        ("line 2", "passages"),
    ),
    (
        "passage-no-source",
        jsonl([META, {"id": "g0", "passages": [{"text": "x"}]}, ctx_line("g1")]),
        ("passages[0].source_path",),
    ),
    (
        "passage-empty-text",
        jsonl([META, ctx_line("g0", text=""), ctx_line("g1")]),
        ("passages[0].text",),
    ),
    (
        "passage-score-text",
        jsonl([META, ctx_line("g0", score="high"), ctx_line("g1")]),
        ("passages[0].score",),
    ),
    ("unknown-key", jsonl([META, {**ctx_line("g0"), "pasages": []}, ctx_line("g1")]), ("pasages",)),
    (
        "duplicate-id",
        jsonl([META, ctx_line("g0"), ctx_line("g1"), ctx_line("g1")]),
        ("g1", "duplicate"),
    ),
    ("missing-question", jsonl([META, ctx_line("g0")]), ("g1",)),
    (
        "other-eval-set",
        jsonl(
            [
                {"_meta": {"index_version": "i", "eval_set_version": "0" * 64}},
                ctx_line("g0"),
                ctx_line("g1"),
            ]
        ),
        ("eval_set_version",),
    ),
    ("bad-json", jsonl([META, ctx_line("g0")]) + "{\n", ("line 3",)),
    ("a-folder", None, ("folder",)),
    ("absent", "<absent>", ("not found",)),
]
for cid, content, expect in CONTEXTS:

    def score_c(p: Project, d: Path, content: Any = content, cid: str = cid) -> list[str]:
        bad = write(d, f"ctx_{cid}.jsonl", content)
        return [
            "score",
            "--questions",
            str(p.gate),
            "--predictions",
            str(p.predictions),
            "--contexts",
            str(bad),
            "--out",
            str(d / "out"),
        ]

    add(f"contexts/{cid}", score_c, *expect)

# -- prompts: named by a study config

PROMPT = PROMPT_PATH.read_text(encoding="utf-8")
PROMPTS: list[tuple[str, str | bytes | None, tuple[str, ...]]] = [
    ("no-front-matter", PROMPT.split("---", 2)[2], ("prompt_version",)),
    (
        "front-matter-not-yaml",
        PROMPT.replace("prompt_version:", "prompt_version: [", 1),
        ("prompt_version",),
    ),
    ("no-user-section", PROMPT.replace("## user", "## usr"), ("## user",)),
    ("no-question-placeholder", PROMPT.replace("{question}", "{q}"), ("{question}",)),
    ("not-utf8", b"\xff" + PROMPT.encode(), ("UTF-8",)),
    ("a-folder", None, ("folder",)),
]

# -- study configs: given to `validate` and to `search`


def study_with(p: Project, d: Path, change: Callable[[dict], Any] | str | bytes) -> Path:
    """The valid study config with one change (a function of the mapping, or the raw text),
    written into the case's folder; relative paths point into the shared project."""
    if isinstance(change, (str, bytes)):
        return write(d, "study.yaml", change)
    config = json.loads(json.dumps(p.study))
    for key in ("prompt", "train_questions", "gate_questions", "full_questions"):
        config[key] = str(p.root / config[key])
    config["contexts"] = {k: str(p.root / v) for k, v in config["contexts"].items()}
    change(config)
    return write(d, "study.yaml", yaml.safe_dump(config, allow_unicode=True))


def setter(path: str, value: Any) -> Callable[[dict], None]:
    def apply(config: dict) -> None:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        if value == "<delete>":
            del node[leaf]
        else:
            node[leaf] = value

    return apply


def _folder(d: Path, name: str, files: dict[str, str] | None = None) -> str:
    (d / name).mkdir()
    for rel, text in (files or {}).items():
        (d / name / rel).write_text(text, encoding="utf-8")
    return str(d / name)


STUDY_TEXT: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("not-yaml", "kind: study\nname: [x\n", ("line", "not valid YAML")),
    ("a-list", "- kind: study\n", ("mapping",)),
    ("no-kind", "name: x\n", ("kind",)),
    ("wrong-kind", "kind: stduy\nname: x\n", ("kind", "stduy")),
    ("not-utf8", b"kind: study\nname: \xff\n", ("UTF-8",)),
    ("two-documents", "kind: study\n---\nkind: study\n", ("not valid YAML",)),
    ("tab-indent", "kind: study\npolicy:\n\tround0: 1\n", ("not valid YAML",)),
]
# (id, change, expected words); a change is setter(...) or a function (project, folder) -> setter
STUDY_CHANGES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("no-name", setter("name", "<delete>"), ("name", "missing")),
    ("empty-name", setter("name", ""), ("name", "empty")),
    ("int-name", setter("name", 7), ("name", "text")),
    ("unknown-key", setter("nmae", "x"), ("nmae", "unknown key")),
    ("no-prompt", setter("prompt", "<delete>"), ("prompt", "missing")),
    ("no-full-set", setter("full_questions", "<delete>"), ("full_questions", "missing")),
    (
        "prompt-absent",
        lambda p, d: setter("prompt", str(d / "nope.md")),
        ("prompt", "does not exist"),
    ),
    ("prompt-a-folder", lambda p, d: setter("prompt", _folder(d, "p")), ("prompt", "folder")),
    (
        "train-set-absent",
        lambda p, d: setter("train_questions", str(d / "nope.json")),
        ("train_questions", "does not exist"),
    ),
    (
        "gate-set-a-folder",
        lambda p, d: setter("gate_questions", _folder(d, "g")),
        ("gate_questions", "folder"),
    ),
    ("full-set-absent", lambda p, d: setter("full_questions", "nope.json"), ("full_questions",)),
    ("quantization", setter("quantization", "8bit"), ("quantization", "'auto'")),
    (
        "gate-score-text",
        setter("policy.thresholds.gate_score", "high"),
        ("policy.thresholds.gate_score", "number"),
    ),
    (
        "thresholds-unknown",
        setter("policy.thresholds.gate_scor", 95),
        ("policy.thresholds.gate_scor", "unknown key"),
    ),
    ("thresholds-a-list", setter("policy.thresholds", [1]), ("policy.thresholds", "mapping")),
    ("max-steps-zero", setter("policy.round0.max_steps", 0), ("policy.round0.max_steps", "> 0")),
    (
        "max-steps-float",
        setter("policy.round0.max_steps", 1.5),
        ("policy.round0.max_steps", "whole"),
    ),
    ("lr-negative", setter("policy.round0.lr", -1), ("policy.round0.lr",)),
    (
        "max-length-tiny",
        setter("policy.round0.max_length", 32),
        ("policy.round0.max_length", ">= 64"),
    ),
    (
        "max-length-fits-nothing",
        setter("policy.round0.max_length", 64),
        ("policy.round0.max_length", "fits"),
    ),
    (
        "scheduler",
        setter("policy.round0.lr_scheduler", "exp"),
        ("policy.round0.lr_scheduler", "'linear'"),
    ),
    ("round1-reasons", setter("policy.round1_reasons", ["a"]), ("policy", "reason")),
    ("round1-lr-text", setter("policy.round1", [{"lr": "abc"}]), ("policy.round1[0].lr", "number")),
    ("round1-empty", setter("policy.round1", []), ("policy",)),
    (
        "max-rounds-zero",
        setter("policy.thresholds.max_rounds", 0),
        ("policy.thresholds.max_rounds",),
    ),
    ("decode-tokens-text", setter("decode.max_new_tokens", "x"), ("decode.max_new_tokens",)),
    ("decode-unknown", setter("decode.temperature", 0.7), ("decode.temperature", "unknown key")),
    ("decode-engine", setter("decode.engine", "fast"), ("decode.engine",)),
    ("executor-kind", setter("executor", "gpu"), ("executor", "'local'")),
    ("parallel-zero", setter("executor.parallel_runs", 0), ("executor.parallel_runs",)),
    ("gpus-text", setter("executor.gpus", "all"), ("executor.gpus", "list")),
    ("storage-and-workdir", setter("executor", {"kind": "ray", "storage": "/tmp/s"}), ("workdir",)),
    ("both-sources", setter("retrieval", {"corpus": "kb"}), ("retrieval", "contexts")),
    (
        "corpus-absent",
        lambda p, d: lambda c: (c.pop("contexts"), c.update(retrieval={"corpus": str(d / "kb")})),
        ("retrieval.corpus", "does not exist"),
    ),
    (
        "corpus-a-file",
        lambda p, d: (
            lambda c: (
                c.pop("contexts"),
                c.update(retrieval={"corpus": str(write(d, "kb.md", "# x\n"))}),
            )
        ),
        ("retrieval.corpus", "a file"),
    ),
    (
        "top-k-zero",
        lambda p, d: (
            lambda c: (c.pop("contexts"), c.update(retrieval={"corpus": str(p.kb), "top_k": 0}))
        ),
        ("retrieval.top_k",),
    ),
    (
        "chunk-small",
        lambda p, d: (
            lambda c: (
                c.pop("contexts"),
                c.update(retrieval={"corpus": str(p.kb), "settings": {"chunk_chars": 5}}),
            )
        ),
        ("retrieval.settings.chunk_chars",),
    ),
    (
        "contexts-gate-absent",
        lambda p, d: setter("contexts.gate", str(d / "nope.jsonl")),
        ("contexts.gate", "does not exist"),
    ),
    (
        "contexts-train-a-folder",
        lambda p, d: setter("contexts.train", _folder(d, "c")),
        ("contexts.train", "folder"),
    ),
    ("contexts-missing-split", setter("contexts.full", "<delete>"), ("contexts.full", "missing")),
    ("no-passages-anywhere", setter("contexts", "<delete>"), ("retrieval",)),
    (
        "contexts-two-indexes",
        lambda p, d: setter(
            "contexts.full",
            str(write(d, "ctx.jsonl", jsonl(contexts_lines(qset("g", 2) + qset("f", 2), "idx-2")))),
        ),
        ("index_version", "different"),
    ),
    (
        "registry-a-folder",
        lambda p, d: setter("registry", _folder(d, "reg")),
        ("registry", "folder"),
    ),
    (
        "registry-a-text-file",
        lambda p, d: setter("registry", str(write(d, "reg.sqlite", "hello"))),
        ("registry", "not an SQLite"),
    ),
    (
        "registry-under-a-file",
        lambda p, d: setter("registry", str(write(d, "f", "x") / "reg.sqlite")),
        ("registry", "is a file"),
    ),
    (
        "workdir-a-file",
        lambda p, d: setter("workdir", str(write(d, "w", "x"))),
        ("workdir", "file"),
    ),
    (
        "model-path-absent",
        lambda p, d: setter("model", str(d / "no" / "model")),
        ("model", "neither"),
    ),
    (
        "model-folder-no-config",
        lambda p, d: setter("model", _folder(d, "m", {"x.txt": "x"})),
        ("model", "config.json"),
    ),
    (
        "model-a-file",
        lambda p, d: setter("model", str(write(d, "model.bin", "x"))),
        ("model", "file"),
    ),
    ("model-bad-id", setter("model", "not a/valid id!"), ("model",)),
    (
        "model-gguf-absent",
        lambda p, d: setter("model", str(d / "m.gguf")),
        ("model", "does not exist"),
    ),
    (
        "checkpointing-text",
        setter("gradient_checkpointing", "maybe"),
        ("gradient_checkpointing", "true or false"),
    ),
    ("note-a-list", setter("note", ["a"]), ("note", "text")),
    (
        "changed-prompt-on-resume",
        lambda p, d: setter("prompt", str(write(d, "prompt.md", PROMPT + "\nmore\n"))),
        ("fuzz", "prompt_sha256"),
    ),
    (
        "train-set-bad-content",
        lambda p, d: setter("train_questions", str(write(d, "t.json", "[{"))),
        ("t.json", "not valid JSON"),
    ),
    (
        "gate-set-bad-item",
        lambda p, d: setter(
            "gate_questions", str(write(d, "g.json", json.dumps([{**Q, "id": 3}])))
        ),
        ("g.json", "#0", "id"),
    ),
]
for pid_, content, expect in PROMPTS:
    STUDY_CHANGES.append(
        (
            f"prompt-file-{pid_}",
            lambda p, d, c=content, n=pid_: setter("prompt", str(write(d, f"prompt-{n}.md", c))),
            expect,
        )
    )
DUPLICATES = [
    ("duplicate-name", "kind: study\nname: a\nname: b\n", ("line 3", "name", "twice")),
    (
        "duplicate-nested",
        "kind: study\nname: a\npolicy:\n  thresholds:\n    gate_score: 95\n    gate_score: 90\n",
        ("policy.thresholds.gate_score", "twice"),
    ),
    (
        "duplicate-in-list",
        "kind: study\nname: a\npolicy:\n  round1:\n    - {lr: 1, lr: 2}\n",
        ("policy.round1[0].lr", "twice"),
    ),
]
for sid, text, expect in [*STUDY_TEXT, *DUPLICATES]:
    for command in ("validate", "search"):

        def study_t(p: Project, d: Path, text: Any = text, command: str = command) -> list[str]:
            path = study_with(p, d, text)
            return (
                ["validate", str(path)]
                if command == "validate"
                else ["search", "--config", str(path)]
            )

        add(f"study/{sid}/{command}", study_t, *expect)
for sid, change, expect in STUDY_CHANGES:
    for command in ("validate", "search"):

        def study_c(p: Project, d: Path, change: Any = change, command: str = command) -> list[str]:
            apply = change if change.__name__ == "apply" else change(p, d)
            path = study_with(p, d, apply)
            return (
                ["validate", str(path)]
                if command == "validate"
                else ["search", "--config", str(path)]
            )

        add(f"study/{sid}/{command}", study_c, *expect)
add("study/config-absent/validate", lambda p, d: ["validate", str(d / "nope.yaml")], "not found")
add("study/config-a-folder/search", lambda p, d: ["search", "--config", str(d)], "folder")

# -- train configs: given to `validate` and to `train`


def train_with(p: Project, d: Path, change: Callable[[dict], Any]) -> Path:
    config = json.loads(json.dumps(p.train))
    change(config)
    return write(d, "train.yaml", yaml.safe_dump(config, allow_unicode=True))


TRAIN_CHANGES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("no-questions", setter("questions", "<delete>"), ("questions", "missing")),
    ("no-out", setter("out", "<delete>"), ("out", "missing")),
    ("out-a-file", lambda p, d: setter("out", str(write(d, "out", "x"))), ("out", "is a file")),
    (
        "out-exists",
        lambda p, d: setter("out", _folder(d, "out", {"a.txt": "mine"})),
        ("out", "already exists"),
    ),
    (
        "questions-a-folder",
        lambda p, d: setter("questions", _folder(d, "q")),
        ("questions", "folder"),
    ),
    (
        "contexts-absent",
        lambda p, d: setter("contexts", str(d / "nope.jsonl")),
        ("contexts", "does not exist"),
    ),
    ("prompt-absent", lambda p, d: setter("prompt", str(d / "nope.md")), ("prompt",)),
    ("steps-text", setter("params.max_steps", "ten"), ("params.max_steps", "whole")),
    ("params-unknown", setter("params.steps", 3), ("params.steps", "unknown key")),
    ("scheduler", setter("params.lr_scheduler", "exp"), ("params.lr_scheduler",)),
    ("dropout-one", setter("params.lora_dropout", 1.0), ("params.lora_dropout", "< 1")),
    ("kernels", setter("kernels", "fast"), ("kernels",)),
    ("memory-negative", setter("max_memory_gib", -1), ("max_memory_gib", "> 0")),
    ("model-path-absent", lambda p, d: setter("model", str(d / "models" / "mine")), ("model",)),
    ("quantization-int", setter("quantization", 4), ("quantization",)),
    ("padding-free-text", setter("padding_free", "yes please"), ("padding_free",)),
    ("params-a-list", setter("params", [1]), ("params", "mapping")),
]
for tid, change, expect in TRAIN_CHANGES:
    for command in ("validate", "train"):

        def train_c(p: Project, d: Path, change: Any = change, command: str = command) -> list[str]:
            apply = change if change.__name__ == "apply" else change(p, d)
            path = train_with(p, d, apply)
            return (
                ["validate", str(path)]
                if command == "validate"
                else ["train", "--config", str(path)]
            )

        add(f"train/{tid}/{command}", train_c, *expect)
add(
    "train/max-length-fits-nothing/validate",
    lambda p, d: ["validate", str(train_with(p, d, setter("params.max_length", 64)))],
    "params.max_length",
    "fits",
)

# -- eval configs (validate) and the eval command's flags


def eval_with(p: Project, d: Path, change: Callable[[dict], Any]) -> Path:
    config = json.loads(json.dumps(p.evalc))
    change(config)
    return write(d, "eval.yaml", yaml.safe_dump(config, allow_unicode=True))


EVAL_CHANGES: list[tuple[str, Any, tuple[str, ...]]] = [
    (
        "adapter-absent",
        lambda p, d: setter("adapter", str(d / "nope")),
        ("adapter", "does not exist"),
    ),
    (
        "adapter-no-metadata",
        lambda p, d: setter("adapter", _folder(d, "a", {"adapter_config.json": "{}"})),
        ("adapter", "sftgate_train.json"),
    ),
    ("out-a-file", lambda p, d: setter("out", str(write(d, "out", "x"))), ("out", "is a file")),
    ("engine", setter("decode.engine", "fast"), ("decode.engine",)),
    ("batch-zero", setter("decode.batch_size", 0), ("decode.batch_size",)),
    ("no-questions", setter("questions", "<delete>"), ("questions", "missing")),
    ("unknown-key", setter("temperature", 0), ("temperature", "unknown key")),
]
for eid, change, expect in EVAL_CHANGES:

    def eval_c(p: Project, d: Path, change: Any = change) -> list[str]:
        apply = change if change.__name__ == "apply" else change(p, d)
        return ["validate", str(eval_with(p, d, apply))]

    add(f"eval-config/{eid}", eval_c, *expect)


def eval_flags(p: Project, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        "tiny-qwen3",
        "--questions",
        str(p.gate),
        "--contexts",
        str(p.ctx_gate),
        *extra,
    ]


add(
    "eval/adapter-absent",
    lambda p, d: [*eval_flags(p, "--adapter", str(d / "x")), "--out", str(d / "o")],
    "adapter",
)
add("eval/out-a-file", lambda p, d: [*eval_flags(p), "--out", str(write(d, "o", "x"))], "out")
add(
    "eval/batch-zero",
    lambda p, d: [*eval_flags(p, "--batch-size", "0"), "--out", str(d / "o")],
    "batch_size",
)
add(
    "eval/model-absent",
    lambda p, d: [
        "eval",
        "--model",
        str(d / "m"),
        "--questions",
        str(p.gate),
        "--out",
        str(d / "o"),
    ],
    "model",
)

# -- corpora: given to `index build`

CORPORA: list[tuple[str, Callable[[Path], Path], tuple[str, ...]]] = [
    ("absent", lambda d: d / "kb", ("does not exist",)),
    ("a-markdown-file", lambda d: write(d, "kb.md", "# x\n"), ("neither",)),
    ("empty-folder", lambda d: Path(_folder(d, "kb")), ("no documents",)),
    ("only-images", lambda d: Path(_folder(d, "kb", {"a.png": "x"})), ("no documents",)),
    (
        "not-utf8-document",
        lambda d: (Path(_folder(d, "kb")) / "a.md").write_bytes(b"\xff\xfe") and d / "kb",
        ("a.md", "UTF-8"),
    ),
    (
        "jsonl-bad-line",
        lambda d: write(d, "kb.jsonl", '{"source_path": "a.md", "text": "x"}\n{\n'),
        ("line 2",),
    ),
    ("jsonl-no-text", lambda d: write(d, "kb.jsonl", '{"source_path": "a.md"}\n'), ("text",)),
    (
        "jsonl-path-int",
        lambda d: write(d, "kb.jsonl", '{"source_path": 3, "text": "x"}\n'),
        ("source_path",),
    ),
    (
        "jsonl-duplicate",
        lambda d: write(
            d,
            "kb.jsonl",
            '{"source_path": "a.md", "text": "x"}\n{"source_path": "a.md", "text": "y"}\n',
        ),
        ("duplicate",),
    ),
    ("jsonl-empty", lambda d: write(d, "kb.jsonl", ""), ("no documents",)),
]
for kid, make, expect in CORPORA:

    def build(p: Project, d: Path, make: Any = make) -> list[str]:
        return ["index", "build", "--corpus", str(make(d)), "--out", str(d / "index")]

    add(f"corpus/{kid}", build, *expect)

# -- planner histories: given to `plan --history`


def history_with(change: Callable[[dict], Any]) -> Callable[[Project, Path], list[str]]:
    def argv(p: Project, d: Path) -> list[str]:
        h = json.loads(json.dumps(p.history))
        change(h)
        return ["plan", "--history", str(write(d, "h.json", json.dumps(h)))]

    return argv


def run0(h: dict) -> dict:
    return h["rounds"][0]["runs"][0]


def second_round(h: dict, number: int = 1, run_id: str = "r1") -> dict:
    run = json.loads(json.dumps(run0(h)))
    run["run_id"] = run_id
    h["rounds"].append({"round": number, "runs": [run]})
    return h


HISTORIES: list[tuple[str, Callable[[dict], Any], tuple[str, ...]]] = [
    ("rounds-not-list", lambda h: h.update(rounds="x"), ("rounds", "list")),
    ("round-no-number", lambda h: h["rounds"][0].pop("round"), ("rounds[0].round", "missing")),
    (
        "round-number-text",
        lambda h: h["rounds"][0].update(round="zero"),
        ("rounds[0].round", "whole"),
    ),
    (
        "rounds-out-of-order",
        lambda h: h["rounds"].insert(0, second_round(h)["rounds"].pop()),
        ("rounds[0].round", "in order"),
    ),
    (
        "rounds-from-one",
        lambda h: h["rounds"][0].update(round=1),
        ("rounds[0].round", "expected 0"),
    ),
    ("rounds-repeated", lambda h: second_round(h, 0), ("rounds[1].round",)),
    ("round-skipped", lambda h: second_round(h, 2), ("rounds[1].round", "expected 1")),
    ("duplicate-run-ids", lambda h: second_round(h, 1, "r0"), ("r0", "run_id", "duplicate")),
    ("no-run-id", lambda h: run0(h).pop("run_id"), ("rounds[0].runs[0].run_id", "missing")),
    (
        "status-running",
        lambda h: run0(h).update(status="running"),
        ("rounds[0].runs[0].status", "'done'"),
    ),
    (
        "params-no-max-steps",
        lambda h: run0(h)["params"].pop("max_steps"),
        ("r0", "params.max_steps", "missing"),
    ),
    (
        "params-lr-text",
        lambda h: run0(h)["params"].update(lr="x"),
        ("rounds[0].runs[0].params.lr", "number"),
    ),
    (
        "params-unknown",
        lambda h: run0(h)["params"].update(steps=3),
        ("rounds[0].runs[0].params.steps", "unknown key"),
    ),
    ("params-a-list", lambda h: run0(h).update(params=[1]), ("rounds[0].runs[0].params",)),
    (
        "empty-metrics",
        lambda h: run0(h).update(metrics={}),
        ("r0", "no metrics"),
    ),
    (
        "metric-missing",
        lambda h: run0(h)["metrics"].pop("schema_pass_rate"),
        ("rounds[0].runs[0].metrics.schema_pass_rate", "missing"),
    ),
    (
        "score-nan",
        lambda h: run0(h)["metrics"].update(eval_score_avg=float("nan")),
        ("r0", "metrics.eval_score_avg", "finite"),
    ),
    (
        "score-infinite",
        lambda h: run0(h)["metrics"].update(eval_score_avg=float("inf")),
        ("r0", "metrics.eval_score_avg", "finite"),
    ),
    (
        "schema-text",
        lambda h: run0(h)["metrics"].update(schema_pass_rate="high"),
        ("rounds[0].runs[0].metrics.schema_pass_rate", "number"),
    ),
    (
        "score-bool",
        lambda h: run0(h)["metrics"].update(eval_score_avg=True),
        ("r0", "metrics.eval_score_avg", "finite"),
    ),
    (
        "per-question-nan",
        lambda h: run0(h).update(per_question={"q1": float("nan")}),
        ("r0", "per_question.q1", "finite"),
    ),
    (
        "per-question-list",
        lambda h: run0(h).update(per_question=[1]),
        ("rounds[0].runs[0].per_question",),
    ),
    (
        "thresholds-unknown",
        lambda h: h.update(thresholds={"gate": 1}),
        ("thresholds.gate", "unknown key"),
    ),
    (
        "thresholds-text",
        lambda h: h.update(thresholds={"gate_score": "x"}),
        ("thresholds.gate_score", "number"),
    ),
    ("thresholds-a-list", lambda h: h.update(thresholds=[1]), ("thresholds", "mapping")),
    ("full-eval-unknown", lambda h: h.update(full_eval_run="nobody"), ("full_eval_run", "nobody")),
    ("round-without-runs", lambda h: h["rounds"][0].update(runs=[]), ("rounds[0].runs", "no runs")),
    ("unknown-top-key", lambda h: h.update(round=[]), ("round", "unknown key")),
]
for hid, change, expect in HISTORIES:
    add(f"history/{hid}", history_with(change), *expect)
add(
    "history/bad-json",
    lambda p, d: ["plan", "--history", str(write(d, "h.json", "{"))],
    "not valid JSON",
)
add(
    "history/a-list",
    lambda p, d: ["plan", "--history", str(write(d, "h.json", "[]"))],
    "JSON object",
)
add("history/a-folder", lambda p, d: ["plan", "--history", str(d)], "folder")
add("history/absent", lambda p, d: ["plan", "--history", str(d / "h.json")], "not found")
add(
    "history/not-utf8",
    lambda p, d: ["plan", "--history", str(write(d, "h.json", b"\xff{}"))],
    "UTF-8",
)

# -- registries: given to the read-only commands


def other_sqlite(d: Path) -> Path:
    path = d / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    return path


REGISTRIES: list[tuple[str, Callable[[Path], Path], tuple[str, ...]]] = [
    ("absent", lambda d: d / "registry.sqlite", ("no registry",)),
    ("a-folder", lambda d: Path(_folder(d, "registry.sqlite")), ("folder",)),
    ("a-text-file", lambda d: write(d, "registry.sqlite", "hello"), ("not an SQLite",)),
    ("an-empty-file", lambda d: write(d, "registry.sqlite", ""), ("not an SQLite",)),
    (
        "corrupt",
        lambda d: write(d, "registry.sqlite", b"SQLite format 3\x00" + b"\x07" * 200),
        ("registry",),
    ),
    ("another-database", other_sqlite, ("not an sftgate registry",)),
]
for rid, make, expect in REGISTRIES:
    for command in (["runs"], ["show", "r0"], ["report", "fuzz"], ["compare", "a", "b"]):

        def reg_case(
            p: Project, d: Path, make: Any = make, command: list[str] = command
        ) -> list[str]:
            return [*command, "--registry", str(make(d))]

        add(f"registry/{rid}/{command[0]}", reg_case, *expect)
add(
    "registry/unknown-run/show",
    lambda p, d: ["show", "nope", "--registry", str(p.registry)],
    "nope",
    "run",
)
add(
    "registry/unknown-run/compare",
    lambda p, d: ["compare", "a", "b", "--registry", str(p.registry)],
    "run",
)
add(
    "registry/unknown-study/report",
    lambda p, d: ["report", "nope", "--registry", str(p.registry), "--out", str(d / "r.md")],
    "nope",
)
add(
    "registry/unknown-study/runs",
    lambda p, d: ["runs", "--study", "nope", "--registry", str(p.registry)],
    "nope",
)


# ---------------------------------------------------------------------- the test


def inputs_counted() -> int:
    """Distinct malformed inputs (a case's command variants counted once)."""
    return len({c.id.rsplit("/", 1)[0] if c.id.count("/") == 2 else c.id for c in CASES})


def test_the_table_is_large_and_covers_every_input_kind():
    assert inputs_counted() >= 150, inputs_counted()
    kinds = {c.id.split("/")[0] for c in CASES}
    assert kinds >= {
        "questions",
        "predictions",
        "contexts",
        "study",
        "train",
        "eval-config",
        "eval",
        "corpus",
        "history",
        "registry",
    }
    assert len({c.id for c in CASES}) == len(CASES)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_refused_cleanly(case, project, tmp_path, capsys):
    folder = tmp_path / "case"
    folder.mkdir()
    argv = case.argv(project, folder)
    home = Path(os.environ["SFTGATE_HOME"])
    before = snapshot(project.root, folder, home)
    code = main(argv)
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert code == 2, (code, line)
    assert "Traceback" not in captured.err + captured.out
    assert line.startswith("error: ")
    where = line.removeprefix("error: ").split(": ")[0]
    assert (
        where == "command line"
        or Path(where).is_relative_to(tmp_path)
        or Path(where).is_relative_to(project.root)
    ), f"no file named first in: {line}"
    for word in case.expect:
        assert word in line, f"{word!r} not in: {line}"
    assert snapshot(project.root, folder, home) == before, "something was written or changed"


SUBPROCESS_CASES = [
    "questions/int-id/score",
    "study/duplicate-name/search",
    "history/score-nan",
    "registry/absent/runs",
]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_malformed_input_in_a_real_process(case_id, project, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    folder = tmp_path / "case"
    folder.mkdir()
    argv = case.argv(project, folder)
    home = Path(os.environ["SFTGATE_HOME"])
    before = snapshot(project.root, folder, home)
    done = subprocess.run(
        [sys.executable, "-m", "sftgate", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"},
    )
    line = _one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for word in case.expect:
        assert word in line
    assert snapshot(project.root, folder, home) == before


def test_debug_shows_the_traceback(project, tmp_path):
    bad = write(tmp_path, "h.json", "[]")
    with pytest.raises(Exception, match="JSON object"):
        main(["--debug", "plan", "--history", str(bad)])
