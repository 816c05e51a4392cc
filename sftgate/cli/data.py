"""`sftgate data check` (leakage between training and evaluation sets, gate ⊆ full) and
`sftgate data convert` (Alpaca, ShareGPT, OpenAI messages -> a question set)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from sftgate.cli.console import stdout_console
from sftgate.convert import FORMATS, convert_file
from sftgate.hashing import short
from sftgate.leakage import NEAR_DUP_THRESHOLD, NGRAM, LeakageReport, check
from sftgate.questions import QuestionSet, load_questions


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def print_report(
    console: Console,
    report: LeakageReport,
    train: QuestionSet,
    evaluation: QuestionSet,
    gate_path: str | None,
) -> None:
    table = Table(title=f"data check: {train.path} (train) vs {evaluation.path} (eval)")
    table.add_column("check")
    table.add_column("eval questions", justify="right")
    table.add_column("fails --strict")
    n = report.eval_n
    rows: list[tuple[str, Sequence[tuple[Any, ...]], bool]] = [
        ("exact duplicate question", report.exact_duplicates, True),
        (
            f"near duplicate (char {NGRAM}-gram containment ≥ {NEAR_DUP_THRESHOLD})",
            report.near_duplicates,
            True,
        ),
        ("shares an evidence quote", report.shared_evidence, False),
        ("same answer and source_paths", report.shared_answer, False),
    ]
    for label, pairs, strict in rows:
        table.add_row(
            label, f"{len(pairs)} / {n} ({len(pairs) / n:.0%})", "yes" if strict else "no"
        )
    table.add_row("same id in both", f"{len(report.shared_ids)} / {n}", "yes")
    console.print(table)
    q_eval, q_train = evaluation.by_id, train.by_id
    for label, pairs, _ in rows:
        if pairs:
            console.print(f"{label}, e.g.:")
        for pair in pairs[:3]:
            console.print(
                f"  {pair[0]} 「{_clip(q_eval[pair[0]].question)}」 ← "
                f"{pair[1]} 「{_clip(q_train[pair[1]].question)}」"
            )
    if report.shared_ids:
        console.print(f"same id in both, e.g.: {', '.join(report.shared_ids[:5])}")
    if gate_path is not None:
        verdict = "[green]yes[/green]" if report.gate_ok else "[red]no[/red]"
        console.print(
            f"gate set {gate_path} ({report.gate_n} questions) is a subset of the full set: {verdict}"
        )
        console.print(
            f"  gate questions that repeat a training question (near duplicate or same id): "
            f"{len(report.gate_leaking)} / {report.gate_n}"
        )
        renamed = dict(report.gate_renamed)
        for qid in report.gate_not_in_full[:5]:
            hint = f" (same content as {renamed[qid]} there)" if qid in renamed else ""
            console.print(f"  not in the full set: {qid}{hint}")
        for qid in report.gate_changed[:5]:
            console.print(f"  differs from the full set's item with the same id: {qid}")
    if report.leaks:
        console.print(
            "[yellow]leakage:[/yellow] some evaluation questions repeat training questions; "
            "scores on them measure memorisation. Keep the gate set fixed (the seed's advice) or remove them."
        )


def run_check(args: argparse.Namespace) -> int:
    train, evaluation = load_questions(args.train), load_questions(args.eval)
    gate = load_questions(args.gate) if args.gate else None
    report = check(train, evaluation, gate)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        print_report(stdout_console(), report, train, evaluation, args.gate)
    failed = report.leaks or (gate is not None and not report.gate_ok)
    return 1 if args.strict and failed else 0


def run_convert(args: argparse.Namespace) -> int:
    done = convert_file(args.fmt, args.input, args.out, args.contexts)
    notes = []
    if done.index_version:
        notes.append(f"passages from index {short(done.index_version)}")
    if done.system_prompts_dropped:
        notes.append(f"{done.system_prompts_dropped} system prompt(s) dropped")
    stdout_console(highlight=False).print(
        f"{done.questions} questions from {args.input} ({args.fmt}) -> {done.out}, "
        f"eval_set_version {short(done.eval_set_version)}"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="question sets: leakage checks, conversion from other formats")
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
    v = dsub.add_parser(
        "convert",
        help="Alpaca, ShareGPT or OpenAI-messages records (answers already eval JSON v2) -> a "
        "question set (docs/question_sets.md)",
    )
    v.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="the records' format")
    v.add_argument("input", metavar="IN", help="JSONL (or a JSON list) of records")
    v.add_argument(
        "--out", required=True, help="the question-set file to write (JSON; must not exist)"
    )
    v.add_argument(
        "--contexts",
        help='a contexts file (JSONL: a {"_meta": {"index_version"}} header, then '
        '{"id", "passages"} lines) whose passages the items carry',
    )
    v.set_defaults(func=run_convert)
