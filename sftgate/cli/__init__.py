"""The `sftgate` command: parse, call the library, map errors to one line and an exit code.

Each subcommand lives in its own module here with a `register(subparsers)` function that adds
its parser and sets `func`; the work itself is done by library functions in `sftgate/`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from sftgate import __version__
from sftgate.cli import (
    ask,
    ceiling,
    data,
    eval,
    export,
    index,
    init,
    plan,
    prompt,
    score,
    study,
    train,
    validate,
)
from sftgate.cli.console import unwrap_global_console
from sftgate.errors import InputError, SftgateError

COMMANDS = [
    init,
    validate,
    score,
    data,
    index,
    ceiling,
    prompt,
    train,
    eval,
    ask,
    plan,
    study,
    export,
]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sftgate",
        description="Fine-tune a causal LM on retrieval-augmented QA until its JSON answers pass a gate.",
    )
    parser.add_argument("--version", action="version", version=f"sftgate {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every failure ends as one line on stderr and an exit code: 2 for bad
    input (InputError, MismatchError), 1 for a run or search that failed, or for anything
    unexpected; `sftgate --debug COMMAND` shows the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    unwrap_global_console()
    try:
        code = args.func(args)
    except InputError as e:
        if args.debug:
            raise
        for problem in e.problems:
            err_console.print(f"[red]error:[/red] {escape(str(problem))}", highlight=False)
        return e.exit_code
    except SftgateError as e:
        if args.debug:
            raise
        err_console.print(f"[red]error:[/red] {escape(' '.join(str(e).split()))}")
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 (the promise: no traceback without --debug)
        if args.debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        err_console.print(
            f"[red]error:[/red] {escape(type(e).__name__)}: {escape(first)} (unexpected; "
            "`sftgate --debug ...` shows the traceback)"
        )
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
