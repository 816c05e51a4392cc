"""The console each command prints its output on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import rich
from rich.console import Console

# Not a terminal (a pipe, a file, CI's log): rich would lay tables out for 80 columns and wrap
# their cells. With this width a table takes the width its cells need, and lines are not broken.
UNWRAPPED_WIDTH = 1000


def unwrapped(console: Console) -> bool:
    """Whether `console` should print unwrapped: not a terminal, and no COLUMNS set (rich
    honours COLUMNS itself: a width the user asked for is kept)."""
    return not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit()


def stdout_console(*, highlight: bool = True) -> Console:
    """A rich console on stdout: the terminal's width in a terminal (or COLUMNS), unwrapped
    output elsewhere."""
    console = Console(highlight=highlight)
    if not unwrapped(console):
        return console
    return Console(highlight=highlight, width=UNWRAPPED_WIDTH, soft_wrap=True)


def unwrap_global_console() -> None:
    """The same for rich's global console, which the search's live view and the train and eval
    progress bars print through."""
    if unwrapped(Console()):
        rich.reconfigure(width=UNWRAPPED_WIDTH, soft_wrap=True)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers' progress bars (loading weights, writing shards) beside sftgate's own would
    scroll the live view and the train/eval bars away: off while the command runs, as they were
    afterwards (a library caller's settings are its own). Library warnings are fixed at
    their cause or silenced one by one where they arise (sftgate/libwarnings.py)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
