"""`sftgate init`: lay out a new project, or copy the sample project.

A project is a folder with the prompt and the scoring spec it is pinned to, the three question
sets in the seed's layout, a knowledge base and a study config:

    docs/prompts/eval_json_v2.md              the prompt (copied byte for byte: prompt_sha256)
    docs/scoring/eval_json_v2.md              the scoring spec the gate is measured with
    docs/question_v1.json                     training set
    docs/question_v2.json                     full evaluation set
    docs/eval_sets/question_v2_dev100.json    gate set, a subset of question_v2.json
    kb/                                       the knowledge base (Markdown, text, HTML, ...)
    study.yaml                                the study config (`sftgate search --config study.yaml`)

The prompt and the scoring spec ship inside the package (sftgate/resources/), identical to the
repository's docs/ (a test compares them). The sample project (1.6 MB of generated data) lives
once, as package data in sftgate/sample/, so `init --sample` and `sftgate demo` work from an
installed wheel as from a clone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sftgate.errors import InputError, Problem
from sftgate.fsutil import atomic_write_bytes
from sftgate.paths import SAMPLE_DIR, package_resource

PROMPT_FILE = "docs/prompts/eval_json_v2.md"
SCORING_FILE = "docs/scoring/eval_json_v2.md"
# What `init --sample` copies: the sample's sources, never what a command wrote next to them (an
# index, a study's folder, a registry). tests/test_sample.py checks that this names every file
# the repository tracks under sftgate/sample.
SAMPLE_SOURCES = ("README.md", "study.yaml", "study_cpu.yaml", "docs", "kb", "baselines")
# The sample's study configs point at the package's copy of the prompt; in a copied project the
# prompt sits in the project's own docs/.
_PACKAGE_PROMPT_REF = "../resources/prompts/eval_json_v2.md"

EXAMPLE_DOC = """\
# 請假規定（範例文件）

這是一份範例文件：把你的知識庫（Markdown、純文字、HTML）放在 kb/ 資料夾，刪掉這份檔案。
問題集裡的 source_paths 是相對於 kb/ 的路徑，例如 handbook/leave.md。

## 特別休假

員工到職滿六個月以上未滿一年者，給予特別休假三日。

| 年資 | 特休日數 |
|---|---|
| 六個月以上未滿一年 | 3 日 |
| 一年以上未滿二年 | 7 日 |
"""

_EVIDENCE = "員工到職滿六個月以上未滿一年者，給予特別休假三日。"
_REFERENCE = {
    "answer": "到職滿六個月即可享有特別休假三日。",
    "detailed_description": (
        "依請假規定，員工到職滿六個月以上未滿一年者，給予特別休假三日；滿一年以上未滿二年為七日。"
    ),
    "original_evidence": [_EVIDENCE],
    "source_paths": ["handbook/leave.md"],
}
# One item per set, in the seed's layout; replace them with your own. The gate item is also in
# question_v2.json (the gate set is a subset of the full set); the training item asks about the
# same fact in other words, which `sftgate data check` reports as a shared evidence quote.
EXAMPLE_TRAIN = [
    {"id": "train-0001", "question": "新人要做滿多久才有特休？", "reference": _REFERENCE}
]
EXAMPLE_FULL = [
    {"id": "eval-0001", "question": "到職滿六個月的員工有幾天特別休假？", "reference": _REFERENCE}
]

STARTER_STUDY = """\
# The study config: `sftgate validate study.yaml` checks it, `sftgate search --config study.yaml` runs it.
# Paths are relative to this file. Every key below is explained in `sftgate validate --help` and
# in the README's "Planner rules"; only kind, name, prompt and the three question sets are required.
kind: study
name: my-first-study            # the registry key: the same name resumes, a new name starts anew
model: Qwen/Qwen3-4B            # hub id, local folder, .gguf file, or tiny-qwen3 (CPU smoke test)
quantization: auto              # auto: QLoRA (4-bit NF4) on CUDA, plain LoRA on a CPU
prompt: docs/prompts/eval_json_v2.md                     # pinned by its sha256
train_questions: docs/question_v1.json                   # training set
gate_questions: docs/eval_sets/question_v2_dev100.json   # the gate set (subset of the full set)
full_questions: docs/question_v2.json                    # evaluated only for a gate-passing run
retrieval:                      # build a BM25 index of kb/ and retrieve passages for the three sets
  corpus: kb
  top_k: 3                      # passages per question: more recall, longer prompts
# ...or bring your own retrieval's passages instead of `retrieval:` (one contexts file per set):
# contexts:
#   train: contexts/train.jsonl
#   gate: contexts/gate.jsonl
#   full: contexts/full.jsonl
# workdir: default $SFTGATE_HOME/studies/my-first-study
# registry: default $SFTGATE_HOME/registry.sqlite
# policy:                       # the seed's search rules; the defaults are the seed's values
#   thresholds:
#     gate_score: 95.0          # the gate: eval_score_avg >= 95 ...
#     gate_schema: 0.98         # ... and schema_pass_rate >= 0.98
"""

PROJECT_README = """\
# sftgate project

- `kb/`: the knowledge base; `source_paths` in the question sets are relative to it.
- `docs/question_v1.json` (training), `docs/question_v2.json` (full evaluation),
  `docs/eval_sets/question_v2_dev100.json` (the gate set, a subset of v2): one example item each,
  to be replaced. Format: id, question, reference {answer, detailed_description,
  original_evidence (verbatim quotes from kb/), source_paths}. A question the knowledge base
  cannot answer has the refusal answer from docs/scoring/eval_json_v2.md and empty
  original_evidence and source_paths.
- `docs/prompts/eval_json_v2.md`: the prompt, pinned by its SHA-256; `docs/scoring/eval_json_v2.md`:
  how answers are scored.
- `study.yaml`: the study config.

Next: `sftgate data check --train docs/question_v1.json --eval docs/question_v2.json
--gate docs/eval_sets/question_v2_dev100.json`, then `sftgate validate study.yaml` and
`sftgate search --config study.yaml`.
"""


def _json_bytes(items: Sequence[Mapping[str, Any]]) -> bytes:
    return (json.dumps(items, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _refuse_non_empty(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise InputError(
            Problem(str(target), "", "", "exists and is not a folder", "choose a new folder")
        )
    if target.is_dir() and any(target.iterdir()):
        raise InputError(
            Problem(
                str(target),
                "",
                "",
                "folder is not empty; init writes only into a new or empty folder",
                "choose a new folder, or empty this one",
            )
        )


def _shared_docs() -> dict[str, bytes]:
    return {
        PROMPT_FILE: package_resource("prompts", "eval_json_v2.md").read_bytes(),
        SCORING_FILE: package_resource("scoring", "eval_json_v2.md").read_bytes(),
    }


def scaffold_files() -> dict[str, bytes]:
    """Every file of a new, empty project, by its path in the project."""
    return {
        **_shared_docs(),
        "docs/question_v1.json": _json_bytes(EXAMPLE_TRAIN),
        "docs/question_v2.json": _json_bytes(EXAMPLE_FULL),
        "docs/eval_sets/question_v2_dev100.json": _json_bytes(EXAMPLE_FULL),
        "kb/handbook/leave.md": EXAMPLE_DOC.encode("utf-8"),
        "study.yaml": STARTER_STUDY.encode("utf-8"),
        "README.md": PROJECT_README.encode("utf-8"),
    }


def sample_files(sample_dir: Path = SAMPLE_DIR) -> dict[str, bytes]:
    """The sample project's files, with the prompt and scoring spec added so that it stands
    alone, and its study configs pointed at that prompt."""
    files: dict[str, bytes] = {}
    paths = [sample_dir / name for name in SAMPLE_SOURCES]
    for path in sorted(p for top in paths for p in (top, *top.rglob("*"))):
        if path.is_file():
            rel = path.relative_to(sample_dir).as_posix()
            data = path.read_bytes()
            if path.suffix == ".yaml" and path.parent == sample_dir:
                data = data.replace(_PACKAGE_PROMPT_REF.encode(), PROMPT_FILE.encode())
            files[rel] = data
    return {**files, **_shared_docs()}


def init_project(target: str | Path, *, sample: bool = False) -> list[Path]:
    """Write a new project into `target` (new or empty); returns the files written."""
    target = Path(target)
    _refuse_non_empty(target)
    files = sample_files() if sample else scaffold_files()
    written = []
    for rel, data in sorted(files.items()):
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        written.append(path)
    return written
