"""`sftgate validate CONFIG`: check a config file without running anything."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from sftgate.config import StrictModel, load_config, read_yaml
from sftgate.errors import InputError, Problem


def config_kinds() -> dict[str, type[StrictModel]]:
    """Every kind of config file, by the value of its top-level `kind:` key."""
    from sftgate.evaluate import EvalConfig
    from sftgate.search import StudyConfig
    from sftgate.train import TrainConfig

    return {"train": TrainConfig, "eval": EvalConfig, "study": StudyConfig}


def validate_file(path: str) -> StrictModel:
    kinds = config_kinds()
    kind: Any = read_yaml(path).get("kind")
    if kind not in kinds:
        raise InputError(
            Problem(
                path,
                "",
                "kind",
                f"unknown or missing config kind {kind!r}",
                f"start the file with 'kind: ' one of {sorted(kinds)}",
            )
        )
    return load_config(kinds[kind], path)


def run(args: argparse.Namespace) -> int:
    config = validate_file(args.config)
    Console().print(f"[green]ok[/green] {args.config}: a valid '{config.kind}' config")  # type: ignore[attr-defined]
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="check a config file (unknown keys and bad values are errors)"
    )
    p.add_argument("config", help="a YAML config file (its top-level `kind:` says which)")
    p.set_defaults(func=run)
