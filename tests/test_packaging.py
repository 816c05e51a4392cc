"""What a wheel carries and what the package depends on.

CI (`.ci/run`) installs the built wheel into a fresh venv and runs `sftgate demo` there; these
tests check the same things faster, from the source tree.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sftgate"
# Runtime dependencies the package needs without importing them itself, and why.
INDIRECT = {
    "accelerate": "transformers requires it for 4-bit (bitsandbytes) loading",
    "bitsandbytes": "transformers' BitsAndBytesConfig quantises to NF4 with it",
}
IMPORT_NAMES = {"pyyaml": "yaml"}


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match, requirement
    return match.group(0).lower()


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_runtime_dependency_is_used_by_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    imported = _imported_top_level_modules()
    unused = {
        d
        for d in declared - set(INDIRECT)
        if IMPORT_NAMES.get(d, d.replace("-", "_")) not in imported
    }
    assert not unused, f"runtime dependencies the package never imports: {sorted(unused)}"
    assert set(INDIRECT) <= declared
    # trl is only measured against (benchmarks/bench_train.py): an extra, not a dependency
    assert "trl" not in declared and "trl" not in imported
    assert project["optional-dependencies"]["bench"] == ["trl>=0.23"]


@pytest.mark.slow
def test_the_wheel_carries_the_sample_project(tmp_path):
    """Built from a copy of the tracked files, so the source tree gets no build/ folder."""
    tracked = subprocess.run(
        ["git", "ls-files", "pyproject.toml", "README.md", "sftgate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    src = tmp_path / "src"
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("sftgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sample = [rel for rel in tracked if rel.startswith("sftgate/sample/")]
    assert len(sample) > 50
    assert set(sample) <= names, sorted(set(sample) - names)[:5]
    assert "sftgate/resources/prompts/eval_json_v2.md" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)
