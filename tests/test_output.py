"""What a user sees and gets: no library warnings on stderr, tables at their own width when the
output is piped, files with ordinary modes, config paths relative to the config file."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from sftgate import libwarnings
from sftgate.config import load_config
from sftgate.evaluate import EvalConfig
from sftgate.fsutil import atomic_write_json, atomic_write_text, ordinary_modes
from sftgate.paths import SAMPLE_DIR
from sftgate.train import TrainConfig
from tests.conftest import PROMPT_PATH, REPO, make_question, write_json

NEAR_DUP_ROW = re.compile(r"│ near duplicate \(char \d-gram containment ≥ [\d.]+\) +│ +\d+ / 100 ")


def sftgate(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command in a real process, stdout and stderr pipes (not a terminal), umask 022."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PYTHONWARNINGS")}
    return subprocess.run(
        [sys.executable, "-m", "sftgate", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        umask=0o022,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_piped_tables_keep_their_width_and_columns_is_honoured(tmp_path):
    docs = SAMPLE_DIR / "docs"
    argv = ["data", "check", "--train", str(docs / "question_v1.json")]
    argv += ["--eval", str(docs / "eval_sets" / "question_v2_dev100.json")]
    piped = sftgate(*argv, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    # The row is 84 columns wide: rich's 80-column default for a pipe would wrap it.
    [row] = [line for line in piped.stdout.splitlines() if NEAR_DUP_ROW.search(line)]
    assert len(row) > 80
    assert f"data check: {docs / 'question_v1.json'} (train) vs" in piped.stdout  # the title
    narrow = sftgate(*argv, cwd=tmp_path, env={"COLUMNS": "60"})
    assert narrow.returncode == 0, narrow.stderr
    assert not NEAR_DUP_ROW.search(narrow.stdout)
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60


def train_project(root: Path) -> Path:
    """A train YAML in root/cfg whose paths are all relative to that folder."""
    cfg = root / "cfg"
    (cfg / "data").mkdir(parents=True)
    passages = [{"source_path": "it/vpn.md#申請", "text": "員工須填寫 IT-07 遠端存取申請表。"}]
    items = [make_question(f"q{i}", contexts=passages) for i in range(3)]
    write_json(cfg / "data" / "q.json", {"index_version": "idx", "questions": items})
    shutil.copy(PROMPT_PATH, cfg / "prompt.md")
    path = cfg / "train.yaml"
    path.write_text(
        "kind: train\nmodel: tiny-qwen3\nquestions: data/q.json\nprompt: prompt.md\n"
        "out: runs/adapter\nparams:\n  max_steps: 2\n  max_length: 4096\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_train_and_eval_in_real_processes_print_no_warnings(tmp_path):
    """`sftgate train` from another folder (the YAML's paths are relative to the YAML), then
    `sftgate eval` of its adapter: stderr stays empty (no FutureWarning from transformers or
    PEFT, no `past_key_values` deprecation from the decoder), the metrics table is not wrapped,
    and the adapter's files are readable by others as ordinary files are (0644 under umask 022)."""
    config = train_project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    trained = sftgate("train", "--config", str(config), cwd=elsewhere)
    assert trained.returncode == 0, trained.stderr
    assert trained.stderr == ""
    adapter = config.parent / "runs" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (elsewhere / "runs").exists()
    assert {p.name: mode(p) for p in adapter.iterdir()} == {
        "adapter_config.json": 0o644,
        "adapter_model.safetensors": 0o644,
        "sftgate_train.json": 0o644,
        "README.md": 0o644,
    }
    questions = config.parent / "data" / "q.json"
    argv = ["eval", "--model", "tiny-qwen3", "--adapter", str(adapter), "--questions"]
    argv += [str(questions), "--prompt", str(config.parent / "prompt.md"), "--out", "ev"]
    evaluated = sftgate(*argv, "--max-new-tokens", "8", cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stderr == ""
    assert f"{adapter} on {questions}" in evaluated.stdout  # the table's title, on one line
    assert json.loads((elsewhere / "ev" / "metrics.json").read_text())["n"] == 3


def test_train_yaml_paths_are_relative_to_the_file_flags_to_the_current_folder(
    tmp_path, monkeypatch
):
    config = train_project(tmp_path)
    (config.parent / "local-model").mkdir()
    text = config.read_text(encoding="utf-8").replace("tiny-qwen3", "local-model")
    config.write_text(text + "contexts: /abs/ctx.jsonl\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainConfig, Path("cfg") / "train.yaml", {"out": "mine"})
    base = config.parent
    assert Path(cfg.questions) == base / "data" / "q.json"
    assert Path(cfg.prompt) == base / "prompt.md"
    assert Path(cfg.model) == base / "local-model"  # a local folder beside the YAML
    assert cfg.contexts == "/abs/ctx.jsonl"  # absolute stays
    assert cfg.out == "mine"  # a flag: relative to the current folder
    # A hub id is not a path; an unset path keeps its default.
    config.write_text("kind: train\nmodel: Qwen/Qwen3-4B\nquestions: q.json\nout: o\n", "utf-8")
    cfg = load_config(TrainConfig, config)
    assert cfg.model == "Qwen/Qwen3-4B" and cfg.prompt == TrainConfig.model_fields["prompt"].default


def test_eval_yaml_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "eval.yaml"
    path.write_text(
        "kind: eval\nmodel: tiny-qwen3\nadapter: a\nquestions: q.json\nprompt: p.md\nout: ev\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(EvalConfig, "cfg/eval.yaml")
    base = tmp_path / "cfg"
    assert (cfg.model, cfg.contexts) == ("tiny-qwen3", None)
    assert [Path(p) for p in (cfg.adapter, cfg.questions, cfg.prompt, cfg.out)] == [
        base / "a",
        base / "q.json",
        base / "p.md",
        base / "ev",
    ]


def test_validate_checks_a_train_yaml_from_another_folder(tmp_path, monkeypatch, capsys):
    from sftgate.cli import main

    config = train_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(config.relative_to(tmp_path))]) == 0, capsys.readouterr().err


def test_atomic_writes_get_ordinary_modes(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
        atomic_write_json(tmp_path / "m.json", {})
        assert mode(tmp_path / "report.md") == mode(tmp_path / "m.json") == 0o644
        (tmp_path / "report.md").chmod(0o640)
        atomic_write_text(tmp_path / "report.md", "y")  # a replaced file keeps its mode
        assert mode(tmp_path / "report.md") == 0o640
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.md", "z")
        assert mode(tmp_path / "private.md") == 0o600
        (tmp_path / "w.safetensors").write_bytes(b"")
        (tmp_path / "w.safetensors").chmod(0o600)
        os.umask(0o002)
        ordinary_modes(tmp_path)
        assert mode(tmp_path / "w.safetensors") == 0o664
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_quiet_silences_only_the_listed_warnings():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with libwarnings.quiet():
            for q in libwarnings.QUIETED:
                text = q.message.replace("\\", "") + " and will be removed"
                warnings.warn_explicit(text, q.category, "x.py", 1, module=_module(q.module))
            warnings.warn_explicit(
                "`is_gradient_checkpointing` is deprecated", FutureWarning, "x.py", 1, module="me"
            )
            warnings.warn("another deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == [
        "`is_gradient_checkpointing` is deprecated",
        "another deprecation",
    ]


def _module(pattern: str) -> str:
    return pattern.replace("\\.", ".").removesuffix("\\Z")


def test_the_test_suite_uses_the_same_filters():
    """Tests that call PEFT themselves meet the QUIETED warnings outside libwarnings.quiet():
    pyproject.toml's filterwarnings must list each of them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = pyproject["tool"]["pytest"]["ini_options"]["filterwarnings"]
    for q in libwarnings.QUIETED:
        module = q.module.removesuffix("\\Z")
        assert f"ignore:{q.message}:{q.category.__name__}:{module}" in listed


def test_a_rule_in_a_log_is_as_wide_as_its_title(capsys):
    """The search's rule spans a terminal; in a log (unwrapped, 1000 columns) it would be a line
    of 1000 dashes."""
    from sftgate.cli.console import unwrap_global_console
    from sftgate.search.live import rule

    unwrap_global_console()
    rule("study s (new) · r.sqlite")
    assert capsys.readouterr().out == "─── study s (new) · r.sqlite ───\n"
