"""Atomic file writes: a crash never leaves a half-written file under the final name.

Files get the mode a plain `open()` would give them: 0666 less the umask for a new file (0644
under the usual umask 022), the old file's mode when one is replaced. `tempfile.mkstemp` would
make them 0600, readable by their owner only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sftgate.errors import InputError, Problem


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # open() keeps a replaced file's mode; a new file has the mode open() would give it
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file in `path`'s folder, opened for writing, created as `open()` creates
    files (mode 0666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):  # 64 random bits: a second name is practically never needed
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_modes(folder: str | Path, pattern: str = "*.safetensors") -> None:
    """Give the files matching `pattern` under `folder` the mode a new file gets from `open()`:
    safetensors >= 0.8 writes through a private temporary file, so its files come out 0600
    (safetensors issue #782), unreadable by a server running as another user (vLLM's LoRA
    loader then reports no adapter found)."""
    mode = 0o666 & ~current_umask()
    for f in Path(folder).rglob(pattern):
        if f.is_file() and not f.is_symlink():
            f.chmod(mode)


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
