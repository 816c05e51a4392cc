"""Provenance: the source hash identifies the code that ran, whatever git can say about it."""

from __future__ import annotations

import re
import shutil

from sftgate.provenance import PACKAGE, provenance, source_sha256


def tree(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


FILES = {"a.py": "x = 1\n", "sub/b.py": "y = 2\n", "data.json": "{}"}


def test_source_hash_follows_the_python_files_and_their_paths(tmp_path):
    one = source_sha256(tree(tmp_path / "one", FILES))
    # the same files written in another order: the same hash
    assert source_sha256(tree(tmp_path / "two", dict(reversed(FILES.items())))) == one
    # other data beside the code: the same hash
    assert source_sha256(tree(tmp_path / "three", {**FILES, "data.json": "[]"})) == one
    changed = source_sha256(tree(tmp_path / "four", {**FILES, "sub/b.py": "y = 3\n"}))
    moved = {"a.py": FILES["a.py"], "sub/c.py": FILES["sub/b.py"]}
    renamed = source_sha256(tree(tmp_path / "five", moved))
    # the bytes of two files run together the same way, split at another point
    split = source_sha256(tree(tmp_path / "six", {"a.py": "x = 1\ny", "sub/b.py": " = 2\n"}))
    assert len({one, changed, renamed, split}) == 4


def test_every_run_records_the_package_source_hash(tmp_path):
    recorded = provenance()["source_sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", recorded)
    assert recorded == source_sha256(PACKAGE)
    # a copy of the package (a tree without git history) hashes the same
    copy = tmp_path / "sftgate"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_sha256(copy) == recorded
