"""The data directory and the README's two set-up commands (issue 15, item 4).

$SFTGATE_HOME defaults to one folder per user, whatever the current directory; the demo's study
goes there, never into the source tree; `init --sample` copies the sample's sources only; the
read-only commands never create a registry. CI (`.ci/run`) runs the demo and then the tests on a
fresh clone and fails if the demo wrote anything into the clone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from sftgate.cli import main
from sftgate.cli.study import DEMO_CONFIG, demo_overrides
from sftgate.paths import data_dir
from sftgate.project import SAMPLE_DIR, SAMPLE_SOURCES, sample_files
from sftgate.search import load_study_config
from tests.conftest import REPO


def test_the_default_home_is_one_per_user_folder_wherever_you_are(tmp_path, monkeypatch):
    monkeypatch.delenv("SFTGATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    here = data_dir()
    assert here == tmp_path / "me" / ".sftgate"
    monkeypatch.chdir(REPO / "sftgate" / "sample")
    assert data_dir() == here  # not ./.sftgate of the current directory
    monkeypatch.setenv("SFTGATE_HOME", "relative/home")
    assert data_dir().is_absolute()


def test_the_demo_study_lives_in_the_home_not_in_the_source_tree(tmp_path, monkeypatch):
    monkeypatch.delenv("SFTGATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    config = load_study_config(DEMO_CONFIG, demo_overrides())
    home = tmp_path / "me" / ".sftgate" / "demo"
    assert Path(config.registry or "") == home / "registry.sqlite"
    assert config.work == home / "study"
    for path in (Path(config.registry or ""), config.work):
        assert not path.is_relative_to(REPO)


def test_init_sample_copies_the_sources_only(tmp_path):
    sample = tmp_path / "sample"
    shutil.copytree(SAMPLE_DIR, sample)
    # what commands may leave next to the sample: a study folder, an index, a registry
    for junk in (".sftgate/demo/registry.sqlite", "runs/index/manifest.json", "report.md"):
        (sample / junk).parent.mkdir(parents=True, exist_ok=True)
        (sample / junk).write_text("output", encoding="utf-8")
    files = sample_files(sample)
    assert not [f for f in files if f.startswith((".sftgate", "runs/", "report"))]
    assert set(files) >= {"study.yaml", "docs/question_v2.json", "kb/it/vpn.md"}


def test_sample_sources_name_every_tracked_file_of_the_sample():
    tracked = subprocess.run(
        ["git", "ls-files", "sftgate/sample"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert tracked
    tops = {Path(t).relative_to("sftgate/sample").parts[0] for t in tracked}
    assert tops == set(SAMPLE_SOURCES)
    copied = sample_files()
    assert {Path(t).relative_to("sftgate/sample").as_posix() for t in tracked} <= set(copied)


def test_read_only_commands_never_create_a_registry(tmp_path, capsys):
    home = data_dir()
    for argv in (["runs"], ["show", "x"], ["report", "s"], ["compare", "a", "b"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no registry here" in err and str(home / "registry.sqlite") in err
    assert not home.exists() or not any(home.iterdir())


def test_ci_runs_the_demo_then_the_tests_and_checks_the_clone_stays_clean():
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    demo, tests = script.index("sftgate demo"), script.index("make test")
    assert demo < tests
    assert "git status --porcelain" in script


def test_searches_started_at_once_each_get_tiny_qwen3(tmp_path):
    """tiny-qwen3 is built on first use into the data directory: processes that start together
    (two searches, or parallel runs) all load it, and no half-built folder is left."""
    code = "from sftgate.models import tiny_model_dir; print(tiny_model_dir())"
    env = {**os.environ, "SFTGATE_HOME": str(tmp_path / "home")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outs)) == 1
    models = tmp_path / "home" / "models"
    assert [p.name for p in models.iterdir()] == ["tiny-qwen3-seed0"]
    assert (models / "tiny-qwen3-seed0" / "config.json").exists()
