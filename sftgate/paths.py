"""Where sftgate keeps its data. One environment variable, SFTGATE_HOME, moves all of it.

Without it, the data directory is one folder per user, `~/.sftgate`, whatever the current
directory: every command (search, demo, runs, show, report, the tiny model's cache) finds the
same registry, and nothing is ever written into a source tree by default.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SFTGATE_HOME"
DEFAULT_HOME = "~/.sftgate"
# The sample project: package data, so a wheel carries it (`sftgate demo`, `sftgate init --sample`).
SAMPLE_DIR = Path(__file__).parent / "sample"


def data_dir() -> Path:
    """The data directory, an absolute path: $SFTGATE_HOME (relative to the current directory
    if relative), or ~/.sftgate."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_HOME).expanduser().absolute()


def package_resource(*parts: str) -> Path:
    """A file shipped inside the package (sftgate/resources/...)."""
    return Path(__file__).parent.joinpath("resources", *parts)
