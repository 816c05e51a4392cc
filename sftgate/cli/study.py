"""`sftgate search`, `report`, `runs`, `show`, `compare` and `demo`."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from sftgate.cli.console import quiet_libraries, stdout_console
from sftgate.cli.validate import validate
from sftgate.errors import InputError, Problem
from sftgate.paths import SAMPLE_DIR, data_dir
from sftgate.preflight import check_registry_file
from sftgate.scoring import paired_comparison
from sftgate.search import SearchResult, history, search
from sftgate.search.planner import Policy, run_gap
from sftgate.search.registry import Registry, RunState, Study, comparable, default_path
from sftgate.search.report import write_report

DEMO_CONFIG = SAMPLE_DIR / "study_cpu.yaml"


@contextmanager
def registry(args: argparse.Namespace) -> Iterator[Registry]:
    """An existing registry for the read-only commands (runs, show, report, compare), closed
    after the command: a path with no registry is an error, never a new empty registry."""
    path = Path(args.registry) if args.registry else default_path()
    check_registry_file(path, "--registry" if args.registry else "")
    if not path.exists():
        raise InputError(
            Problem(
                str(path),
                "",
                "",
                "no registry here",
                "run `sftgate search` (or `sftgate demo`) first, or pass --registry FILE",
            )
        )
    reg = Registry(path)
    try:
        yield reg
    finally:
        reg.close()


def known_study(reg: Registry, name: str) -> Study:
    study = reg.study(name)
    if study is None:
        raise InputError(
            Problem(str(reg.path), name, "study", "no such study", "list them with `sftgate runs`")
        )
    return study


def run_search(args: argparse.Namespace) -> int:
    validate(args.config)  # every input checked before any work
    with quiet_libraries():
        result = search(args.config, retry_failed=args.retry_failed)
    return print_result(result)


def print_result(result: SearchResult) -> int:
    """The study's end; exit code 1 when it stopped on a failure."""
    console = stdout_console()
    console.print(f"[bold]{result.decision.action}[/bold]: {result.decision.reason}")
    if result.decision.new_study:
        block = yaml.safe_dump(result.decision.new_study, sort_keys=False).rstrip()
        console.print(
            "proposed: a new study, this config with these keys changed:\n" + block,
            markup=False,
        )
    console.print(f"report: {result.report} (and .html)\nregistry: {result.registry}")
    if result.failed:
        err_console = Console(stderr=True, highlight=False, soft_wrap=True)
        err_console.print(
            f"[red]error:[/red] study '{result.study.name}' stopped on a failure: "
            f"{result.failed} (fix it and rerun with --retry-failed to run the failed runs again)"
        )
        return 1
    return 0


def demo_overrides() -> dict[str, str]:
    """The demo keeps its registry and files apart from the user's studies, in
    $SFTGATE_HOME/demo (absolute, so never inside the source tree next to its config)."""
    home = data_dir() / "demo"
    return {"registry": str(home / "registry.sqlite"), "workdir": str(home / "study")}


def run_demo(args: argparse.Namespace) -> int:
    if args.fresh:
        shutil.rmtree(data_dir() / "demo", ignore_errors=True)
    with quiet_libraries():
        result = search(DEMO_CONFIG, overrides=demo_overrides())
    code = print_result(result)
    reach = result.study.reach or {}
    stdout_console().print(
        f"\nThe demo's retrieval (one passage per question) has a ceiling of "
        f"{reach.get('ceiling', float('nan')):.2f}: below the gate, so not even a perfect model "
        "could pass; its policy sets allow_unreachable: true so that the search goes on to show "
        "the flow."
    )
    stdout_console().print(
        "\nThe demo ran tiny-qwen3, a random model: it shows the flow and is not expected to pass "
        "the gate. Run `sftgate demo` again and the finished study is not redone (`--fresh` starts "
        "over). On a GPU, with Qwen/Qwen3-4B: `sftgate init --sample my-sample`, then "
        "`sftgate search --config my-sample/study.yaml`."
    )
    return code


def run_report(args: argparse.Namespace) -> int:
    with registry(args) as reg:
        study = known_study(reg, args.study)
        workdir = study.config.get("workdir") or str(data_dir() / "studies" / study.name)
        out = Path(args.out) if args.out else Path(workdir) / f"report.{args.format}"
        path = write_report(reg, args.study, out, args.format)
    stdout_console().print(f"report -> {path}")
    return 0


def run_runs(args: argparse.Namespace) -> int:
    with registry(args) as reg:
        table = Table(title=f"runs in {reg.path}")
        table.add_column("study", overflow="fold")
        table.add_column("run", no_wrap=True)
        for col in ("round", "status", "eval_score_avg", "schema", "grounding"):
            table.add_column(col, justify="right" if col != "status" else "left")
        table.add_column("params", overflow="fold")
        table.add_column("failure", overflow="fold")
        names = {s.id: s.name for s in reg.studies()}
        study = known_study(reg, args.study) if args.study else None
        for r in reg.runs(study.id if study else None):
            p, m = r.params, r.metrics
            table.add_row(
                names[r.study_id],
                r.id,
                str(r.round),
                r.status,
                f"{m.eval_score_avg:.2f}" if m else "–",
                f"{m.schema_pass_rate:.3f}" if m else "–",
                f"{m.grounding_avg:.3f}" if m else "–",
                f"steps={p.max_steps} lr={p.lr:g} len={p.max_length}",
                (r.failure or "")[:60],
            )
    stdout_console().print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    with registry(args) as reg:
        r = reg.run_json(args.run)
        if r is None:
            raise InputError(
                Problem(
                    str(reg.path), args.run, "run", "no such run", "list them with `sftgate runs`"
                )
            )
        study = next((s for s in reg.studies() if s.id == r["study_id"]), None)
        if study is not None and study.reach is not None:
            gate = Policy.model_validate(study.config.get("policy", {})).thresholds.gate_score
            r["gap"] = run_gap(history(reg, study), r["id"], gate)
    print(json.dumps(r, indent=2, ensure_ascii=False, default=str))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    with registry(args) as reg:
        a, b = reg.run(args.run_a), reg.run(args.run_b)
        for rid, r in ((args.run_a, a), (args.run_b, b)):
            if r is None or r.state is not RunState.DONE:
                raise InputError(
                    Problem(
                        str(reg.path),
                        rid,
                        "run",
                        "no finished run with this id",
                        "list them with `sftgate runs`",
                    )
                )
        assert a is not None and b is not None
        comparable(a, b)
        cmp = paired_comparison(reg.question_scores(a.id), reg.question_scores(b.id))
    stdout_console().print(
        f"{args.run_b} minus {args.run_a} on {cmp['n']} gate questions: {cmp['mean_diff']:+.2f} eval_score points "
        f"(95% paired-bootstrap CI {cmp['ci95'][0]:+.2f} to {cmp['ci95'][1]:+.2f}); {cmp['wins']} better, {cmp['losses']} worse, {cmp['ties']} equal"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def reg_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--registry", help="registry SQLite file (default $SFTGATE_HOME/registry.sqlite)"
        )

    p = sub.add_parser(
        "search", help="run (or resume) a study: plan, train, evaluate round after round"
    )
    p.add_argument("--config", required=True, help="study YAML (`kind: study`)")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="plan the study's failed runs again, on purpose (logged in the registry), after "
        "fixing what made them fail",
    )
    p.set_defaults(func=run_search)
    p = sub.add_parser(
        "demo", help="the whole search on the sample project with tiny-qwen3 on a CPU"
    )
    p.add_argument("--fresh", action="store_true", help="delete the demo's earlier results first")
    p.set_defaults(func=run_demo)
    p = sub.add_parser("report", help="write a study's report (Markdown or HTML) with plots")
    p.add_argument("study", help="study name or id")
    p.add_argument("--format", choices=["md", "html"], default="md")
    p.add_argument("--out", help="report file (default WORKDIR/report.FORMAT)")
    reg_arg(p)
    p.set_defaults(func=run_report)
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--study", help="only this study")
    reg_arg(p)
    p.set_defaults(func=run_runs)
    p = sub.add_parser("show", help="everything recorded about one run (JSON)")
    p.add_argument("run")
    reg_arg(p)
    p.set_defaults(func=run_show)
    p = sub.add_parser("compare", help="paired comparison of two runs on the same gate questions")
    p.add_argument("run_a")
    p.add_argument("run_b")
    reg_arg(p)
    p.set_defaults(func=run_compare)
