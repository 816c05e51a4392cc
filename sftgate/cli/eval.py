"""`sftgate eval --model M [--adapter A] --questions Q [--contexts C] --out DIR`."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from sftgate.cli.console import quiet_libraries, stdout_console
from sftgate.cli.score import metrics_table
from sftgate.cli.train import add_tracking_args, tracking_config
from sftgate.config import validation_problems
from sftgate.errors import InputError
from sftgate.evaluate import DecodeSettings, EvalConfig, evaluate
from sftgate.preflight import eval_problems, require
from sftgate.prompt import DEFAULT_PROMPT
from sftgate.tracking import run_from_eval, track_run


def run(args: argparse.Namespace) -> int:
    try:
        decode = DecodeSettings(
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            merge=args.merge,
            engine=args.engine,
            constrain=args.constrain,
        )
        config = EvalConfig(
            model=args.model,
            adapter=args.adapter,
            quantization=args.quantization,
            questions=args.questions,
            contexts=args.contexts,
            prompt=args.prompt,
            out=args.out,
            allow_mismatch=args.allow_mismatch,
            decode=decode,
        )
    except ValidationError as e:
        raise InputError(validation_problems(e, "command line")) from None
    require(eval_problems(config, "command line"))
    tracking = tracking_config(args)
    with quiet_libraries():
        result = evaluate(config)
    console = stdout_console()
    console.print(
        metrics_table(result.metrics, f"{config.adapter or config.model} on {config.questions}")
    )
    m = result.meta
    console.print(
        f"{m['generated_tokens']} tokens generated in {m['wall_time_s']} s ({m['tokens_per_s']} tokens/s) -> {result.out_dir}"
    )
    check = m["merge_check"]
    if check:
        console.print(
            f"merge check: merged and unmerged predictions identical on {check['exact_match_rate']:.0%} of {check['questions']} questions' answers"
        )
        if check["adapter_effect_lost"]:
            console.print(
                "[red]merge check: the merged model predicts like the base although the adapter changes the predictions; rerun with --no-merge[/red]"
            )
    where = track_run(run_from_eval(result.metrics, result.meta, result.out_dir), tracking, "eval")
    if where:
        console.print(f"tracking: {where}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = DecodeSettings()
    p = sub.add_parser("eval", help="greedy-decode a question set and score it (resumable)")
    p.add_argument(
        "--model", required=True, help="base model: hub id, local folder, .gguf file, or tiny-qwen3"
    )
    p.add_argument("--adapter", help="adapter folder from `sftgate train`")
    p.add_argument("--questions", required=True)
    p.add_argument("--contexts", help="contexts JSONL, unless the items carry contexts")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument(
        "--out",
        required=True,
        help="folder for predictions.jsonl, metrics.json, per_question.jsonl, eval_meta.json",
    )
    p.add_argument("--quantization", choices=["auto", "4bit", "none"], default="auto")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=d.merge,
        help="merge the adapter before decoding",
    )
    p.add_argument(
        "--engine",
        choices=["static", "hf", "vllm"],
        default=d.engine,
        help="static: static KV cache + CUDA graph per batch (fastest measured); hf: transformers generate; vllm: if installed",
    )
    p.add_argument(
        "--constrain",
        choices=["none", "json_schema"],
        default=d.constrain,
        help="json_schema: decode under the eval JSON v2 grammar (xgrammar; static and hf engines)",
    )
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="evaluate an adapter trained with another prompt/index/base (recorded)",
    )
    add_tracking_args(p)
    p.set_defaults(func=run)
