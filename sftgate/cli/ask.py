"""`sftgate ask [--config STUDY.yaml | --index INDEX] [--model M] [--adapter A] "question"`."""

from __future__ import annotations

import argparse
import json
import sys

from rich import get_console

from sftgate.ask import Answer, ask, index_source, study_source
from sftgate.cli.console import quiet_libraries
from sftgate.errors import InputError, Problem
from sftgate.hashing import short
from sftgate.prompt import DEFAULT_PROMPT


def count(flags: list[bool]) -> str:
    return f"{sum(flags)} of {len(flags)}"


def print_answer(a: Answer) -> None:
    """The passages, the raw output verbatim, the parsed JSON and the checks."""
    out = sys.stdout
    by = a.model_id + (
        f" + adapter {a.adapter} ({'merged' if a.merged else 'unmerged'})" if a.adapter else ""
    )
    out.write(
        f"{by}; engine {a.engine}; index {short(a.index_version)}; "
        f"prompt sha256 {short(a.prompt_sha256)}\n"
    )
    out.write(f"passages ({len(a.passages)}):\n")
    for i, p in enumerate(a.passages, 1):
        text = " ".join(p["text"].split())
        out.write(f"  [{i}] {p['source_path']} (score {p['score']:g}): {text[:100]}\n")
    out.write(
        f"--- raw output: {a.completion_tokens} tokens ({a.finish_reason}), prompt "
        f"{a.prompt_tokens} tokens ---\n{a.output}\n--- end ---\n"
    )
    if a.parsed is None:
        out.write(f"schema: FAIL: {a.parse_error}\n")
        return
    out.write(json.dumps(a.parsed, ensure_ascii=False, indent=2) + "\n")
    if a.schema_errors:
        out.write("schema: FAIL: " + "; ".join(a.schema_errors) + "\n")
        return
    out.write(
        f"schema: ok; evidence quotes verbatim in the passages: {count(a.evidence_verbatim)}; "
        f"anchors found in the passage they cite: {count(a.anchors_grounded)}\n"
    )


def run(args: argparse.Namespace) -> int:
    get_console().stderr = True  # index building messages stay off the answer
    if args.config and args.index:
        raise InputError(
            Problem("command line", "", "--index", "give --config or --index, not both", "")
        )
    if args.config and (args.top_k or args.prompt):
        raise InputError(
            Problem(
                "command line",
                "",
                "--top-k" if args.top_k else "--prompt",
                "a study fixes its top_k and prompt",
                "drop the flag, or use --index instead of --config",
            )
        )
    if args.config:
        source = study_source(args.config)
    elif args.index:
        source = index_source(args.index, args.top_k or 3, args.prompt or DEFAULT_PROMPT)
    else:
        raise InputError(
            Problem(
                "command line",
                "",
                "--config",
                "ask retrieves the question's passages from an index",
                "pass --config STUDY.yaml (the study's index, top_k, prompt and model) or "
                "--index INDEX (from `sftgate index build`, with --top-k and --prompt)",
            )
        )
    with quiet_libraries():
        answer = ask(
            args.question,
            source,
            model=args.model,
            adapter=args.adapter,
            merge=args.merge,
            max_new_tokens=args.max_new_tokens,
            engine=args.engine,
            allow_mismatch=args.allow_mismatch,
        )
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False, indent=2))
    else:
        print_answer(answer)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ask",
        help="one question answered as evaluation would (retrieve, render, greedy-decode): the "
        "raw output, its JSON and the schema check",
    )
    p.add_argument("question", help="the question, in quotes")
    p.add_argument(
        "--config", help="study YAML: retrieve from its index at its top_k, with its prompt"
    )
    p.add_argument("--index", help="or an index folder from `sftgate index build`")
    p.add_argument("--top-k", type=int, help="with --index: passages per question (default 3)")
    p.add_argument("--prompt", help=f"with --index: the prompt file (default {DEFAULT_PROMPT})")
    p.add_argument(
        "--model",
        help="base model (default: the adapter's base, recorded in its sftgate_train.json, "
        "else the study's)",
    )
    p.add_argument("--adapter", help="adapter folder from `sftgate train` (or a run's adapter/)")
    p.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="merge the adapter before decoding (default: the study's decode.merge, true)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="generation stops here (default: the study's decode.max_new_tokens, 512)",
    )
    p.add_argument(
        "--engine",
        choices=["static", "hf", "vllm"],
        help="static: sftgate's decoder; hf: transformers generate; vllm: if installed (default: "
        "the study's decode.engine, static)",
    )
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="ask an adapter trained with another prompt, index or base model",
    )
    p.add_argument("--json", action="store_true", help="print the answer and checks as JSON")
    p.set_defaults(func=run)
