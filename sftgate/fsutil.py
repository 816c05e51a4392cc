"""Atomic file writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sftgate.errors import InputError, Problem


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_input_bytes(path: str | Path) -> bytes:
    """A user's input file's bytes; a path that is missing, a folder or unreadable is an
    InputError naming it."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        problem = Problem(str(path), "", "", "file not found", "check the path")
    except IsADirectoryError:
        problem = Problem(str(path), "", "", "is a folder, not a file", "give the file's path")
    except PermissionError:
        problem = Problem(str(path), "", "", "not readable (permission denied)", "check its mode")
    except OSError as e:
        problem = Problem(str(path), "", "", f"cannot be read: {e.strerror}", "check the path")
    raise InputError(problem)
