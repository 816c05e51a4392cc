"""`sftgate ceiling --config STUDY.yaml`: is the study's gate reachable from its retrieval?"""

from __future__ import annotations

import argparse
import json

from rich import get_console
from rich.console import Console
from rich.table import Table

from sftgate.ceiling import KINDS
from sftgate.cli.console import stdout_console
from sftgate.hashing import short
from sftgate.reach import Reach
from sftgate.search.inputs import measure_reach, pin_inputs, prepare_contexts
from sftgate.search.study import load_study_config


def print_reach(reach: Reach, console: Console) -> None:
    c = reach.ceiling
    recall = "n/a" if c.context_recall is None else f"{c.context_recall:.3f}"
    console.print(
        f"[bold]ceiling {c.ceiling:.2f}[/bold] [95% CI {c.ci95[0]:.2f}-{c.ci95[1]:.2f}] on "
        f"{len(c.questions)} gate questions (index {short(reach.index_version)}), "
        f"context_recall {recall}; {len(c.missing_evidence)} question(s) miss some evidence"
    )
    verdict = "[green]reachable[/green]" if c.reachable else "[red]NOT reachable[/red]"
    console.print(
        f"gate {c.gate_score:g} + margin {c.margin:g}: {verdict} "
        f"(ceiling - gate = {c.headroom:+.2f} points)"
    )
    kinds = Table(title="ceiling by question kind")
    for col in ("kind", "questions", "ceiling", "context_recall", "missing evidence"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for kind in KINDS:
        if kind in c.by_kind:
            k = c.by_kind[kind]
            r = "n/a" if k["context_recall"] is None else f"{k['context_recall']:.3f}"
            kinds.add_row(kind, str(k["n"]), f"{k['ceiling']:.2f}", r, str(k["missing_evidence"]))
    console.print(kinds)
    budget = Table(title=f"prompt + completion tokens ({reach.tokenizer})")
    for col in ("set", "examples", "median", "p95", "max"):
        budget.add_column(col, justify="left" if col == "set" else "right")
    for m in reach.max_lengths:
        budget.add_column(f"over {m}", justify="right")
    for split, s in reach.lengths.items():
        budget.add_row(
            split,
            str(s["n"]),
            f"{s['median']:.0f}",
            f"{s['p95']:.0f}",
            str(s["max"]),
            *(f"{s['over'][str(m)]:.1%}" for m in reach.max_lengths),
        )
    console.print(budget)
    console.print(
        "An example over max_length loses passages in training (the end first) while evaluation "
        "shows all of them."
    )
    if not c.reachable:
        console.print(
            "Not even a perfect answer passes with this retrieval: `sftgate index tune --config "
            "STUDY.yaml` finds one with a higher ceiling that fits max_length (a new study)."
        )


def run(args: argparse.Namespace) -> int:
    if args.json:
        get_console().stderr = True  # index building messages stay off the JSON
    config = load_study_config(args.config)
    inputs = pin_inputs(config)
    prepare_contexts(config, inputs)  # the study's own index and contexts, built or reused
    reach = measure_reach(config, inputs)
    if args.json:
        print(json.dumps(reach.to_json(), indent=2, ensure_ascii=False))
    else:
        print_reach(reach, stdout_console(highlight=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ceiling",
        help="the best gate score the study's retrieval allows, and its token budget (CPU, seconds)",
    )
    p.add_argument("--config", required=True, help="study YAML (`kind: study`)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
