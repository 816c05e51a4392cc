"""The console each command prints its output on."""

from __future__ import annotations

from rich.console import Console

# Not a terminal (a pipe, a file, CI's log): rich would lay tables out for 80 columns and wrap
# their cells. With this width a table takes the width its cells need, and lines are not broken.
UNWRAPPED_WIDTH = 1000


def stdout_console(*, highlight: bool = True) -> Console:
    """A rich console on stdout: the terminal's width in a terminal, unwrapped output elsewhere."""
    console = Console(highlight=highlight)
    if console.is_terminal:
        return console
    return Console(highlight=highlight, width=UNWRAPPED_WIDTH, soft_wrap=True)
