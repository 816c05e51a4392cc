"""`sftgate index build|query|retrieve|eval`."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from sftgate.index import (
    IndexSettings,
    build_index,
    evaluate_retrieval,
    load_index,
    retrieve_contexts,
)
from sftgate.questions import load_questions


def run_build(args: argparse.Namespace) -> int:
    settings = IndexSettings(
        chunk_chars=args.chunk_chars, overlap_chars=args.overlap_chars, k1=args.k1, b=args.b
    )
    index, skipped = build_index(
        args.corpus, args.out, settings, skip_bad=args.skip_bad, progress=True
    )
    console = Console()
    for problem in skipped:
        console.print(f"[yellow]skipped:[/yellow] {problem}")
    m = index.manifest
    console.print(
        f"index_version {index.version}\n{m['documents']} documents, {m['chunks']} chunks -> {args.out}"
    )
    return 0


def run_query(args: argparse.Namespace) -> int:
    index = load_index(args.index)
    hits = index.search([args.question], args.k)[0]
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], ensure_ascii=False, indent=2))
        return 0
    console = Console()
    for rank, h in enumerate(hits, 1):
        console.print(f"[bold]{rank}. {h.source_path}[/bold]  (score {h.score:.3f})")
        console.print(h.text, markup=False, highlight=False)
        console.print()
    if not hits:
        console.print("no passage shares a term with the question")
    return 0


def run_retrieve(args: argparse.Namespace) -> int:
    index = load_index(args.index)
    questions = load_questions(args.questions)
    retrieve_contexts(index, questions, args.top_k, args.out)
    Console().print(
        f"{len(questions)} questions x top {args.top_k} passages -> {args.out} (index_version {index.version[:12]})"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    index = load_index(args.index)
    questions = load_questions(args.questions)
    ks = [int(k) for k in args.k.split(",")]
    report = evaluate_retrieval(index, questions, ks)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title=f"retrieval on {questions.describe()} (index {index.version[:12]})")
    table.add_column("k", justify="right")
    table.add_column("recall@k (source_paths)", justify="right")
    table.add_column("evidence in top k", justify="right")
    for k in ks:
        table.add_row(
            str(k), f"{report['recall'][str(k)]:.3f}", f"{report['evidence_in_top_k'][str(k)]:.3f}"
        )
    console = Console()
    console.print(table)
    console.print(
        f"MRR {report['mrr']:.3f} over {report['n']} answerable questions ({report['unanswerable_excluded']} unanswerable left out)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, query and evaluate the knowledge-base index")
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)
    defaults = IndexSettings()
    b = isub.add_parser("build", help="ingest a corpus folder (or JSONL), chunk it, build BM25")
    b.add_argument(
        "--corpus",
        required=True,
        help="folder of .md/.txt/.rst/.html files, or a JSONL of {source_path, text}",
    )
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--chunk-chars", type=int, default=defaults.chunk_chars)
    b.add_argument("--overlap-chars", type=int, default=defaults.overlap_chars)
    b.add_argument("--k1", type=float, default=defaults.k1)
    b.add_argument("--b", type=float, default=defaults.b)
    b.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable or non-UTF-8 files and report them"
    )
    b.set_defaults(func=run_build)
    q = isub.add_parser("query", help="show the top passages for one question")
    q.add_argument("index")
    q.add_argument("question")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=run_query)
    r = isub.add_parser("retrieve", help="write a contexts file: top-k passages for every question")
    r.add_argument("--index", required=True)
    r.add_argument("--questions", required=True)
    r.add_argument("--top-k", type=int, default=3)
    r.add_argument("--out", required=True, help="contexts JSONL to write")
    r.set_defaults(func=run_retrieve)
    e = isub.add_parser("eval", help="recall@k and MRR of the reference source_paths")
    e.add_argument("--index", required=True)
    e.add_argument("--questions", required=True)
    e.add_argument("-k", default="1,3,5,10", help="comma-separated k values")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run_eval)
