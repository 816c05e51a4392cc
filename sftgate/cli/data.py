"""`sftgate data check`: leakage between training and evaluation sets, gate ⊆ full."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from sftgate.leakage import NEAR_DUP_THRESHOLD, check
from sftgate.questions import load_questions


def run_check(args: argparse.Namespace) -> int:
    train, evaluation = load_questions(args.train), load_questions(args.eval)
    gate = load_questions(args.gate) if args.gate else None
    report = check(train, evaluation, gate)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        console = Console()
        table = Table(title=f"data check: {args.train} (train) vs {args.eval} (eval)")
        table.add_column("check")
        table.add_column("eval questions", justify="right")
        table.add_column("example (eval id ← train id)")
        n = report.eval_n
        rows: list[tuple[str, Sequence[tuple[Any, ...]]]] = [
            ("exact duplicate question", report.exact_duplicates),
            (f"near duplicate (char-3gram Jaccard ≥ {NEAR_DUP_THRESHOLD})", report.near_duplicates),
            ("shares an evidence quote", report.shared_evidence),
        ]
        for label, pairs in rows:
            example = f"{pairs[0][0]} ← {pairs[0][1]}" if pairs else ""
            table.add_row(label, f"{len(pairs)} / {n} ({len(pairs) / n:.0%})", example)
        table.add_row(
            "same id in both", f"{len(report.shared_ids)} / {n}", ", ".join(report.shared_ids[:3])
        )
        console.print(table)
        if gate is not None:
            verdict = "[green]yes[/green]" if report.gate_ok else "[red]no[/red]"
            console.print(
                f"gate set {args.gate} ({report.gate_n} questions) is a subset of the full set: {verdict}"
            )
            for qid in report.gate_not_in_full[:5]:
                console.print(f"  not in the full set: {qid}")
            for qid in report.gate_changed[:5]:
                console.print(f"  differs from the full set's item: {qid}")
        if report.leaks:
            console.print(
                "[yellow]leakage:[/yellow] some evaluation questions repeat training questions; "
                "scores on them measure memorisation. Keep the gate set fixed (the seed's advice) or remove them."
            )
    failed = report.leaks or (gate is not None and not report.gate_ok)
    return 1 if args.strict and failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="checks on question sets")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    c = dsub.add_parser("check", help="leakage between train and eval sets; gate ⊆ full")
    c.add_argument("--train", required=True, help="training question set (question_v1.json)")
    c.add_argument("--eval", required=True, help="full evaluation set (question_v2.json)")
    c.add_argument(
        "--gate", help="gate set (question_v2_dev100.json), checked to be a subset of --eval"
    )
    c.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 on any leakage or a gate set outside the full set",
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run_check)
