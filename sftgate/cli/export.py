"""`sftgate export`: a recorded study into a tracker, or a run's adapter for serving.

    sftgate export mlflow|tensorboard STUDY [--tracking-uri URI] [--experiment NAME]
    sftgate export RUN (--merged OUT | --adapter OUT) [--step K] [--max-lora-rank N]

The first word says which: a tracker's name, else a run id (or an adapter folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sftgate.cli.console import quiet_libraries, stdout_console
from sftgate.cli.study import registry
from sftgate.errors import InputError, Problem
from sftgate.export import (
    MERGED_DTYPES,
    VLLM_DEFAULT_MAX_LORA_RANK,
    VLLM_MAX_LORA_RANKS,
    AdapterSource,
    adapter_source,
    export_adapter,
    export_merged,
    run_adapter,
)
from sftgate.search.study import StudyConfig
from sftgate.search.tracking import sync_study
from sftgate.tracking import TrackingConfig, check_installed

TRACKERS = ("mlflow", "tensorboard")
USAGE = (
    "sftgate export mlflow|tensorboard STUDY [--tracking-uri URI] [--experiment NAME] "
    "[--registry FILE]\n       sftgate export RUN (--merged OUT [--dtype D] | --adapter OUT "
    "[--max-lora-rank N]) [--step K] [--registry FILE]"
)


def misuse(flag: str, message: str, fix: str) -> InputError:
    return InputError(Problem("command line", "", flag, message, fix))


def tracker_config(args: argparse.Namespace, recorded: TrackingConfig) -> TrackingConfig:
    """The study's own `tracking:` settings when it used this tracker, overridden by the flags."""
    base = recorded if recorded.kind == args.target else TrackingConfig(kind=args.target)
    update = {k: v for k, v in (("uri", args.tracking_uri), ("experiment", args.experiment)) if v}
    return base.model_copy(update=update)


def run_tracker_export(args: argparse.Namespace) -> int:
    if args.merged or args.adapter or args.step is not None:
        raise misuse(
            "--merged" if args.merged else "--adapter" if args.adapter else "--step",
            f"`export {args.target}` writes a study into the tracker; that flag exports a run",
            "use `sftgate export RUN --merged OUT` for a run",
        )
    if not args.study:
        raise misuse(
            "STUDY", f"`export {args.target}` needs the study", "name it: export mlflow STUDY"
        )
    with registry(args) as reg:  # an existing registry: it is only read
        study = reg.require_study(args.study)
        config = tracker_config(args, StudyConfig.recorded(study.config).tracking)
        check_installed(config)
        where = sync_study(reg, study.name, config)
    stdout_console().print(f"study {study.name} -> {args.target}: {where}")
    return 0


def source_of(args: argparse.Namespace) -> AdapterSource:
    """RUN as a folder holding an adapter, else as a run id in the registry."""
    if Path(args.target).is_dir():
        return adapter_source(args.target, step=args.step)
    with registry(args) as reg:
        return run_adapter(reg, args.target, args.step)


def run_adapter_export(args: argparse.Namespace) -> int:
    if args.study:
        raise misuse(
            args.study,
            f"`export {args.target}` takes one argument (a run id or an adapter folder)",
            "pass the output folder with --merged OUT or --adapter OUT",
        )
    if args.tracking_uri or args.experiment:
        raise misuse(
            "--tracking-uri", "tracker flags go with `export mlflow|tensorboard STUDY`", ""
        )
    if not (args.merged or args.adapter):
        raise misuse(
            "--merged",
            f"say what to export from {args.target}",
            "--merged OUT (a bf16 model folder) or --adapter OUT (the PEFT folder)",
        )
    source = source_of(args)
    what = f"run {source.run_id}" if source.run_id else str(source.path)
    if source.step is not None:
        what += f" at step {source.step}"
    console = stdout_console(highlight=False)
    if args.merged:
        with quiet_libraries():
            out = export_merged(source, args.merged, dtype=args.dtype)
        console.print(f"{what}: merged into {source.meta['model_id']} as {args.dtype} -> {out}")
    else:
        out = export_adapter(source, args.adapter, max_lora_rank=args.max_lora_rank)
        console.print(
            f"{what}: adapter -> {out} (vLLM's LoRA loader conditions hold for "
            f"--max-lora-rank {args.max_lora_rank})"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.target in TRACKERS:
        return run_tracker_export(args)
    return run_adapter_export(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        usage=USAGE,
        help="a recorded study into MLflow or TensorBoard, or a run's adapter as a merged bf16 "
        "model folder or a vLLM-ready PEFT folder",
        description="`export mlflow|tensorboard STUDY` back-fills a recorded study into a tracker "
        "(the registry stays the source of truth). `export RUN --merged OUT` writes the run's "
        "adapter merged into its base, as a bf16 model folder transformers and vLLM load; "
        "`export RUN --adapter OUT` copies its PEFT folder after checking vLLM's LoRA loader "
        "conditions. RUN is a run id (`sftgate runs`) or an adapter folder.",
    )
    p.add_argument(
        "target", metavar="mlflow|tensorboard|RUN", help="a tracker, or a run id or adapter folder"
    )
    p.add_argument(
        "study", nargs="?", metavar="STUDY", help="with a tracker: the study's name or id"
    )
    p.add_argument(
        "--registry", help="registry SQLite file (default $SFTGATE_HOME/registry.sqlite)"
    )
    t = p.add_argument_group("export mlflow|tensorboard STUDY")
    t.add_argument(
        "--tracking-uri",
        help="mlflow: tracking URI; tensorboard: log folder (default: the study's own "
        "`tracking:` settings, else $SFTGATE_HOME/mlflow.db or $SFTGATE_HOME/tensorboard)",
    )
    t.add_argument("--experiment", help="mlflow experiment (default: the study's name)")
    r = p.add_argument_group("export RUN")
    what = r.add_mutually_exclusive_group()
    what.add_argument(
        "--merged",
        metavar="OUT",
        help="write the adapter merged into its base (dequantised first if it was trained "
        "4-bit), saved as bf16 with the tokenizer: a model folder for transformers and vLLM",
    )
    what.add_argument(
        "--adapter",
        metavar="OUT",
        help="copy the PEFT adapter folder, refused unless vLLM's LoRA loader would take it: no "
        "modules_to_save, no DoRA, no bias, rank within --max-lora-rank, only the attention and "
        "MLP projections as target modules",
    )
    r.add_argument(
        "--dtype",
        choices=MERGED_DTYPES,
        default="bfloat16",
        help="with --merged: the saved weights' dtype; float32 keeps a CPU merge exact, at twice "
        "the size",
    )
    r.add_argument(
        "--step", type=int, metavar="K", help="a checkpoint of the run (ADAPTER/checkpoints/step-K)"
    )
    r.add_argument(
        "--max-lora-rank",
        type=int,
        choices=VLLM_MAX_LORA_RANKS,
        default=VLLM_DEFAULT_MAX_LORA_RANK,
        metavar="N",
        help="with --adapter: the --max-lora-rank vLLM will be started with (vLLM's default "
        f"{VLLM_DEFAULT_MAX_LORA_RANK}; one of {', '.join(map(str, VLLM_MAX_LORA_RANKS))})",
    )
    p.set_defaults(func=run)
