"""Provenance recorded on every run: code version, library versions, machine."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "sftgate",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "bm25s",
    "liger-kernel",
    "vllm",
)


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    """{'commit': sha or None, 'dirty': bool or None} of the sftgate checkout (None outside git)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


PACKAGE = Path(__file__).resolve().parent


@functools.cache
def source_sha256(root: Path = PACKAGE) -> str:
    """sha256 over the package's Python files (each one's path under `root` and its bytes, in
    path order): the code that ran, also where the git state cannot say it (a copy of the tree
    without its history, uncommitted changes, an installed wheel)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()})"


def provenance() -> dict[str, Any]:
    return {
        "git": git_state(),
        "source_sha256": source_sha256(),
        "libraries": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_name(),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
