"""`sftgate export mlflow|tensorboard STUDY`: back-fill a recorded study into a tracker."""

from __future__ import annotations

import argparse

from rich.console import Console

from sftgate.cli.study import registry
from sftgate.search.study import StudyConfig
from sftgate.search.tracking import sync_study
from sftgate.tracking import TrackingConfig, check_installed

TRACKERS = ("mlflow", "tensorboard")


def tracker_config(args: argparse.Namespace, recorded: TrackingConfig) -> TrackingConfig:
    """The study's own `tracking:` settings when it used this tracker, overridden by the flags."""
    base = recorded if recorded.kind == args.target else TrackingConfig(kind=args.target)
    update = {k: v for k, v in (("uri", args.tracking_uri), ("experiment", args.experiment)) if v}
    return base.model_copy(update=update)


def run_tracker_export(args: argparse.Namespace) -> int:
    with registry(args) as reg:  # an existing registry: it is only read
        study = reg.require_study(args.study)
        config = tracker_config(args, StudyConfig.recorded(study.config).tracking)
        check_installed(config)
        where = sync_study(reg, study.name, config)
    Console().print(f"study {study.name} -> {args.target}: {where}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="back-fill a recorded study into MLflow or TensorBoard (the registry stays the "
        "source of truth)",
    )
    p.add_argument("target", choices=TRACKERS, help="the tracker")
    p.add_argument("study", help="study name or id")
    p.add_argument(
        "--tracking-uri",
        help="mlflow: tracking URI; tensorboard: log folder (default: the study's own "
        "`tracking:` settings, else $SFTGATE_HOME/mlflow.db or $SFTGATE_HOME/tensorboard)",
    )
    p.add_argument("--experiment", help="mlflow experiment (default: the study's name)")
    p.add_argument(
        "--registry", help="registry SQLite file (default $SFTGATE_HOME/registry.sqlite)"
    )
    p.set_defaults(func=run_tracker_export)
