"""`sftgate index build|query|retrieve|eval`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from sftgate.cli.console import stdout_console

if TYPE_CHECKING:  # imported where used: they load the index and plotting libraries
    from sftgate.index.tune import TuneRow
    from sftgate.search.planner import Thresholds

from sftgate.config import validation_problems
from sftgate.contexts import write_contexts
from sftgate.errors import InputError, Problem
from sftgate.fsutil import atomic_write_json, atomic_write_text
from sftgate.hashing import short
from sftgate.index import (
    IndexSettings,
    build_index,
    evaluate_retrieval,
    load_index,
    retrieve_contexts,
)
from sftgate.index.tune import CHUNK_CHARS, TOP_KS
from sftgate.questions import load_questions


def _settings(args: argparse.Namespace) -> IndexSettings:
    values = {
        "chunk_chars": args.chunk_chars,
        "overlap_chars": args.overlap_chars,
        "retriever": args.retriever,
        "k1": args.k1,
        "b": args.b,
        "embedding_model": args.embedding_model,
        "rrf_k": args.rrf_k,
    }
    try:
        return IndexSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise InputError(validation_problems(e, "command line")) from None


def run_build(args: argparse.Namespace) -> int:
    index, corpus = build_index(
        args.corpus, args.out, _settings(args), skip_bad=args.skip_bad, progress=True
    )
    console = stdout_console(highlight=False)
    for problem in corpus.skipped:
        console.print(f"[yellow]skipped:[/yellow] {escape(str(problem))}")
    if corpus.ignored:
        console.print(
            f"ignored {len(corpus.ignored)} file(s) with other suffixes, e.g. {corpus.ignored[0]}"
        )
    m = index.manifest
    console.print(f"index_version {index.version}")
    console.print(f"{m['documents']} documents, {m['chunks']} chunks -> {args.out}")
    return 0


def run_query(args: argparse.Namespace) -> int:
    index = load_index(args.index)
    hits = index.search([args.question], args.k)[0]
    if args.json:
        print(json.dumps([asdict(h) for h in hits], ensure_ascii=False, indent=2))
        return 0
    console = stdout_console(highlight=False)
    for rank, h in enumerate(hits, 1):
        console.print(f"[bold]{rank}. {escape(h.source_path)}[/bold]  score {h.score:.3f}")
        console.print(h.text, markup=False)
        console.print()
    if not hits:
        console.print("no passage shares a term with the question")
    return 0


def run_retrieve(args: argparse.Namespace) -> int:
    questions = load_questions(args.questions)
    meta, rows = retrieve_contexts(args.index, questions, args.top_k)
    write_contexts(args.out, meta, rows)
    short_lists = sum(len(r.passages) < args.top_k for r in rows)
    stdout_console(highlight=False).print(
        f"{len(rows)} questions x top {args.top_k} passages -> {args.out} "
        f"(index_version {short(meta.index_version)}, eval_set_version "
        f"{short(questions.version)}; {short_lists} question(s) got fewer than {args.top_k})"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    index = load_index(args.index)
    questions = load_questions(args.questions)
    report = evaluate_retrieval(index, questions, args.k)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    table = Table(title=f"retrieval on {questions.describe()}, index {short(index.version)}")
    table.add_column("k", justify="right")
    table.add_column("recall@k (source_paths)", justify="right")
    table.add_column("evidence in top k", justify="right")
    for k in sorted(set(args.k)):
        recall, evidence = report["recall"][str(k)], report["evidence_in_top_k"][str(k)]
        table.add_row(
            str(k),
            "-" if recall is None else f"{recall:.3f}",
            "-" if evidence is None else f"{evidence:.3f}",
        )
    console = stdout_console(highlight=False)
    console.print(table)
    mrr = "-" if report["mrr"] is None else f"{report['mrr']:.3f}"
    console.print(
        f"MRR {mrr} over {report['answerable']} answerable questions "
        f"({report['unanswerable_excluded']} unanswerable left out; evidence share over "
        f"{report['with_evidence']} with evidence quotes); "
        f"{len(report['missed_at_max_k'])} with no matching chunk in the top {max(args.k)}"
    )
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from sftgate.budget import budget_tokenizer
    from sftgate.index.tune import choose, retrieval_block, retrievers_for, tune
    from sftgate.prompt import load_prompt
    from sftgate.search.study import load_study_config

    config = load_study_config(args.config)
    r = config.retrieval
    if r is None:
        raise InputError(
            Problem(
                args.config,
                "",
                "retrieval",
                "the study brings its own contexts files; there is no corpus to tune",
                "add a `retrieval:` block (corpus, top_k, settings) to the study config",
            )
        )
    policy = config.policy
    max_length = args.max_length or max(policy.round0.max_length, policy.long_max_length)
    tok = budget_tokenizer(config.model)
    console = stdout_console(highlight=False)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("tuning", total=None)
        rows = tune(
            corpus=r.corpus,
            gate=list(load_questions(config.gate_questions)),
            train=list(load_questions(config.train_questions)),
            template=load_prompt(config.prompt),
            tokenizer=tok.tokenizer,
            base=r.settings,
            current_top_k=r.top_k,
            gate_score=policy.thresholds.gate_score,
            margin=policy.thresholds.margin,
            top_ks=args.top_k,
            chunk_chars=args.chunk_chars,
            retrievers=retrievers_for(r.settings),
            on_setting=lambda what: bar.update(task, description=f"indexing: {what}"),
        )
    out = Path(args.out) if args.out else config.work / "tune"
    best = choose(rows, max_length)
    current = next(row for row in rows if row.current)
    _write_tune(out, rows, best, current, max_length, tok.description, policy.thresholds)
    console.print(_tune_table(rows, best, max_length, tok.description))
    console.print(f"table -> {out / 'tune.json'}, plot -> {out / 'tune.png'}")
    if best is None:
        console.print(
            f"[red]no setting's p95 prompt + completion fits max_length {max_length}[/red]"
        )
        return 1
    corpus = _config_relative(r.corpus, Path(args.config).resolve().parent)
    block = retrieval_block(corpus, best, r.settings, max_length)
    atomic_write_text(out / "retrieval.yaml", block)
    console.print(
        f"chosen: top_k {best.top_k}, chunk_chars {best.chunk_chars}, overlap_chars "
        f"{best.overlap_chars}: ceiling {current.ceiling_gate:.2f} -> {best.ceiling_gate:.2f} on "
        f"the gate set ({best.ceiling_gate - current.ceiling_gate:+.2f}), "
        f"{current.ceiling_train:.2f} -> {best.ceiling_train:.2f} on the training slice"
    )
    console.print(f"paste into a new study (-> {out / 'retrieval.yaml'}):\n")
    console.print(block, markup=False)
    return 0


def _write_tune(
    out: Path,
    rows: Sequence[TuneRow],
    best: TuneRow | None,
    current: TuneRow,
    max_length: int,
    tokenizer: str,
    thresholds: Thresholds,
) -> None:
    """tune.json (every setting measured, the chosen and the current one) and tune.png."""
    from sftgate.index.tune import plot_tune

    atomic_write_json(
        out / "tune.json",
        {
            "max_length": max_length,
            "tokenizer": tokenizer,
            "chosen": best.to_json() if best else None,
            "current": current.to_json(),
            "rows": [row.to_json() for row in rows],
        },
    )
    plot_tune(rows, best, thresholds.gate_score, thresholds.margin, max_length, out / "tune.png")


def _config_relative(path: str, base: Path) -> str:
    """A path as the study config would write it: relative to the config's folder when inside."""
    try:
        return Path(path).resolve().relative_to(base).as_posix()
    except ValueError:
        return path


def _tune_table(rows: list[Any], best: Any, max_length: int, tokenizer: str) -> Table:
    table = Table(
        title=f"retrieval settings (p95 tokens with {tokenizer}; max_length {max_length})"
    )
    for col in (
        "top_k",
        "chunk/\noverlap",
        "retriever",
        "ceiling\ngate",
        "ceiling\ntrain",
        "context\nrecall",
        "recall\n@k",
        "p95\ntokens",
        "",
    ):
        table.add_column(col, justify="right" if col not in ("retriever", "") else "left")
    for row in sorted(rows, key=lambda r: (r.retriever, r.chunk_chars, r.top_k)):
        mark = " ".join(
            m
            for m, on in (
                ("chosen", row is best),
                ("study", row.current),
                ("too long", row.length_p95 > max_length),
            )
            if on
        )
        table.add_row(
            str(row.top_k),
            f"{row.chunk_chars}/{row.overlap_chars}",
            row.retriever,
            f"{row.ceiling_gate:.2f}",
            f"{row.ceiling_train:.2f}",
            "-" if row.context_recall_gate is None else f"{row.context_recall_gate:.3f}",
            "-" if row.recall_at_k_gate is None else f"{row.recall_at_k_gate:.3f}",
            f"{row.length_p95:.0f}",
            mark,
            style="bold" if row is best else None,
        )
    return table


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _k_list(text: str) -> list[int]:
    return [_positive_int(part.strip()) for part in text.split(",")]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, query and evaluate the knowledge-base index")
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)
    _add_build(isub)

    q = isub.add_parser("query", help="show the top passages for one question")
    q.add_argument("index", help="index folder")
    q.add_argument("question")
    q.add_argument("-k", type=_positive_int, default=5, help="passages to show (default 5)")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.set_defaults(func=run_query)

    r = isub.add_parser(
        "retrieve", help="write a contexts file: the top-k passages of every question"
    )
    r.add_argument("--index", required=True, help="index folder")
    r.add_argument("--questions", required=True, help="question set (JSON or JSONL)")
    r.add_argument("--top-k", type=_positive_int, required=True, help="passages per question")
    r.add_argument("--out", required=True, help="contexts JSONL to write")
    r.set_defaults(func=run_retrieve)

    e = isub.add_parser("eval", help="recall@k, MRR and evidence share against the references")
    e.add_argument("--index", required=True, help="index folder")
    e.add_argument("--questions", required=True, help="question set with references")
    e.add_argument(
        "-k",
        type=_k_list,
        default=[1, 3, 5, 10],
        help="comma-separated k values (default 1,3,5,10)",
    )
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=run_eval)

    _add_tune(isub)


def _add_build(isub: argparse._SubParsersAction) -> None:
    fields = IndexSettings.model_fields
    b = isub.add_parser("build", help="ingest a corpus, chunk it, build the retriever")
    b.add_argument(
        "--corpus",
        required=True,
        help="folder of .md/.txt/.rst/.html files, or a JSONL of {source_path, text}",
    )
    b.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    b.add_argument(
        "--chunk-chars",
        type=_positive_int,
        help=f"{fields['chunk_chars'].description} (default {fields['chunk_chars'].default})",
    )
    b.add_argument(
        "--overlap-chars",
        type=int,
        help=f"{fields['overlap_chars'].description} (default {fields['overlap_chars'].default})",
    )
    b.add_argument(
        "--retriever",
        choices=["bm25", "dense", "hybrid"],
        help=f"{fields['retriever'].description} (default bm25)",
    )
    b.add_argument("--k1", type=float, help=f"BM25 k1 (default {fields['k1'].default})")
    b.add_argument("--b", type=float, help=f"BM25 b (default {fields['b'].default})")
    b.add_argument("--embedding-model", help=fields["embedding_model"].description)
    b.add_argument("--rrf-k", type=_positive_int, help=fields["rrf_k"].description)
    b.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable or non-UTF-8 files and list them, instead of stopping",
    )
    b.set_defaults(func=run_build)


def _add_tune(isub: argparse._SubParsersAction) -> None:
    t = isub.add_parser(
        "tune",
        help="try top_k and chunk sizes: the retrieval with the highest ceiling that fits max_length",
    )
    t.add_argument("--config", required=True, help="study YAML with a `retrieval:` block")
    t.add_argument(
        "--max-length",
        type=_positive_int,
        help="token budget for p95 prompt + completion (default: the largest max_length the "
        "study's policy can propose)",
    )
    t.add_argument(
        "--top-k",
        type=_k_list,
        default=list(TOP_KS),
        help=f"comma-separated top_k values (default {','.join(map(str, TOP_KS))})",
    )
    t.add_argument(
        "--chunk-chars",
        type=_k_list,
        default=list(CHUNK_CHARS),
        help=f"comma-separated chunk sizes, each with a fifth as overlap (default "
        f"{','.join(map(str, CHUNK_CHARS))}); the study's own setting is always measured",
    )
    t.add_argument(
        "--out", help="folder for tune.json, tune.png, retrieval.yaml (default WORKDIR/tune)"
    )
    t.set_defaults(func=run_tune)
