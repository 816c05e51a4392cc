"""The sample study as benchmarks rewrite it: its YAML with every input path made absolute (the
paths in a study are relative to its file), so the rewritten study can live anywhere; and the
environment of the `sftgate search` processes those benchmarks start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PATH_KEYS = ("prompt", "train_questions", "gate_questions", "full_questions")


def load_study(path: Path) -> dict[str, Any]:
    """The study file at `path` as a dict, its input paths absolute."""
    base = path.resolve().parent
    study = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in PATH_KEYS:
        study[key] = str((base / study[key]).resolve())
    if study.get("retrieval"):
        study["retrieval"]["corpus"] = str((base / study["retrieval"]["corpus"]).resolve())
    if study.get("contexts"):
        study["contexts"] = {k: str((base / v).resolve()) for k, v in study["contexts"].items()}
    return study


def source_env(src: Path, **extra: str) -> dict[str, str]:
    """This environment with `src` (a tree's root) first on PYTHONPATH; what PYTHONPATH held stays
    after it (libraries installed beside the environment, as on a machine that carries its
    wheels), an empty one adds nothing."""
    paths = [str(src), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}
