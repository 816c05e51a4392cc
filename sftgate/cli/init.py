"""`sftgate init DIR [--sample]`: lay out a new project, or copy the sample project."""

from __future__ import annotations

import argparse
from pathlib import Path

from sftgate.cli.console import stdout_console
from sftgate.project import init_project


def run(args: argparse.Namespace) -> int:
    written = init_project(args.dir, sample=args.sample)
    console = stdout_console(highlight=False)
    what = "the sample project" if args.sample else "a new project"
    console.print(f"wrote {what} to {args.dir} ({len(written)} files)")
    for path in written:
        if path.suffix == ".yaml" and path.parent == Path(args.dir):
            console.print(f"next: sftgate validate {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init", help="lay out a new project (prompt, scoring spec, question sets, kb/, study.yaml)"
    )
    p.add_argument("dir", help="the project folder: new, or empty")
    p.add_argument(
        "--sample",
        action="store_true",
        help="copy the sample project (a bilingual handbook, 1,000-question sets) instead",
    )
    p.set_defaults(func=run)
