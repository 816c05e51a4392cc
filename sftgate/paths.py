"""Where sftgate keeps its data. One environment variable, SFTGATE_HOME, moves all of it."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SFTGATE_HOME"
DEFAULT_HOME = ".sftgate"


def data_dir() -> Path:
    """The data directory: $SFTGATE_HOME, or ./.sftgate in the current directory."""
    return Path(os.environ.get(ENV_VAR, DEFAULT_HOME)).expanduser()


def package_resource(*parts: str) -> Path:
    """A file shipped inside the package (sftgate/resources/...)."""
    return Path(__file__).parent.joinpath("resources", *parts)
