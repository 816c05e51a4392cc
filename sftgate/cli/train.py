"""`sftgate train --config TRAIN.yaml [overrides]`."""

from __future__ import annotations

import argparse
from typing import Any

from sftgate.cli.console import quiet_libraries, stdout_console
from sftgate.config import load_config
from sftgate.params import TrainParams
from sftgate.preflight import require, train_problems
from sftgate.tracking import TrackingConfig, check_installed, run_from_train_meta, track_run
from sftgate.train import TrainConfig, train

TOP_LEVEL = ("model", "quantization", "questions", "contexts", "prompt", "out", "kernels")
SWITCHES = (
    "gradient_checkpointing",
    "padding_free",
    "cuda_graphs",
)  # auto | on | off -> None | True | False


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {k: getattr(args, k) for k in TOP_LEVEL if getattr(args, k) is not None}
    out.update(
        {
            k: {"auto": None, "on": True, "off": False}[v]
            for k in SWITCHES
            if (v := getattr(args, k))
        }
    )
    if args.max_memory_gib is not None:
        out["max_memory_gib"] = args.max_memory_gib
    if args.num_epochs is not None:
        out["num_epochs"] = args.num_epochs
    out.update(
        {
            f"params.{k}": getattr(args, k)
            for k in TrainParams.model_fields
            if getattr(args, k, None) is not None
        }
    )
    return out


def tracking_config(args: argparse.Namespace) -> TrackingConfig:
    config = TrackingConfig(kind=args.tracking, uri=args.tracking_uri)
    check_installed(config)
    return config


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    fields = TrackingConfig.model_fields
    p.add_argument(
        "--tracking",
        choices=("none", "mlflow", "tensorboard"),
        default="none",
        help=str(fields["kind"].description),
    )
    p.add_argument("--tracking-uri", help=str(fields["uri"].description).replace("%", "%%"))


def run(args: argparse.Namespace) -> int:
    config = load_config(TrainConfig, args.config, overrides(args))
    require(train_problems(config, args.config))
    tracking = tracking_config(args)
    with quiet_libraries():
        result = train(config)
    m = result.metadata
    how = m["machinery"]
    peak = f", peak {m['peak_memory_gib']:.1f} GiB" if m["peak_memory_gib"] is not None else ""
    e = m["steps_from_epochs"]
    epochs = (
        f" ({e['num_epochs']:g} epochs x {e['examples']} examples / {e['examples_per_step']} per step)"
        if e
        else ""
    )
    stdout_console().print(
        f"adapter {m['adapter_id']} -> {result.adapter_dir}\n"
        f"{len(m['loss_per_step'])} steps{epochs}, loss {m['loss_per_step'][0]:.4f} -> "
        f"{m['loss_per_step'][-1]:.4f}, {m['tokens_per_s']} tokens/s{peak}, {m['examples']} "
        f"examples ({m['examples_shortened']} shortened, {len(m['examples_dropped'])} left out)\n"
        f"kernels {how['kernels']}, padding-free {how['padding_free']}, gradient checkpointing "
        f"{how['gradient_checkpointing']} ({how['gradient_checkpointing_reason']}), CUDA graphs "
        f"{how['cuda_graphs']} ({how['cuda_graphs_reason']})"
    )
    where = track_run(run_from_train_meta(m, result.adapter_dir), tracking, "train")
    if where:
        stdout_console().print(f"tracking: {where}")
    return 0


def _help(name: str) -> str:
    return str(TrainConfig.model_fields[name].description).replace("%", "%%")  # argparse formats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="QLoRA/LoRA fine-tune on eval JSON v2 targets; writes a PEFT adapter"
    )
    p.add_argument(
        "--config", required=True, help="YAML with `kind: train` (flags below override it)"
    )
    choices = {"quantization": ("auto", "4bit", "none"), "kernels": ("auto", "liger", "none")}
    for name in TOP_LEVEL:
        p.add_argument(f"--{name}", choices=choices.get(name), help=_help(name))
    for name in SWITCHES:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            choices=("auto", "on", "off"),
            help=_help(name),
        )
    p.add_argument("--max-memory-gib", type=float, help=_help("max_memory_gib"))
    p.add_argument("--num-epochs", type=float, help=_help("num_epochs"))
    for name, info in TrainParams.model_fields.items():
        kind = type(info.default) if info.default is not None else str
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            help=f"{info.description} (default {info.default})",
        )
    add_tracking_args(p)
    p.set_defaults(func=run)
