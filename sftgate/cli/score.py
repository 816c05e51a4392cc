"""`sftgate score`: score a predictions file against a question set."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from rich.table import Table

from sftgate.artifacts import write_score_outputs
from sftgate.cli.console import stdout_console
from sftgate.contexts import load_contexts, resolve_passages
from sftgate.questions import load_questions
from sftgate.scoring import load_predictions, score_predictions


def metrics_table(metrics: Mapping[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    lo, hi = metrics["eval_score_ci95"]
    table.add_row(
        "eval_score_avg (0-100)", f"{metrics['eval_score_avg']:.2f}  [95% CI {lo:.2f}-{hi:.2f}]"
    )
    for key in (
        "schema_pass_rate",
        "answer_f1",
        "detailed_description_f1",
        "original_evidence",
        "grounding_avg",
        "context_recall",
    ):
        value = metrics[key]
        table.add_row(key, "n/a" if value is None else f"{value:.4f}")
    table.add_row("n", str(metrics["n"]))
    return table


def run(args: argparse.Namespace) -> int:
    questions = load_questions(args.questions)
    contexts = load_contexts(args.contexts) if args.contexts else None
    passages, _ = resolve_passages(questions, contexts)
    outputs = load_predictions(args.predictions, questions)
    metrics, scores = score_predictions(questions, passages, outputs)
    write_score_outputs(args.out, metrics, scores)
    console = stdout_console()
    console.print(metrics_table(metrics, f"{args.predictions} on {questions.describe()}"))
    failures = sum(not s.schema_ok for s in scores)
    if failures:
        console.print(
            f"{failures} schema failure(s); reasons in the 'schema_error' field of per_question.jsonl"
        )
    console.print(f"wrote {args.out}/metrics.json and {args.out}/per_question.jsonl")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", help="score raw model outputs (eval JSON v2) against a question set"
    )
    p.add_argument("--questions", required=True, help="question set (JSON or JSONL)")
    p.add_argument(
        "--predictions", required=True, help='JSONL lines {"id": ..., "output": "<raw model text>"}'
    )
    p.add_argument(
        "--contexts", help="contexts JSONL (from `sftgate index retrieve`) if the items carry none"
    )
    p.add_argument("--out", required=True, help="directory for metrics.json and per_question.jsonl")
    p.set_defaults(func=run)
