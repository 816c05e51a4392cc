"""The search's live view: the study, the executor, the round, each active run with its stage and
progress, and an ETA, above the stage's own progress bar when runs execute in this process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich import get_console
from rich.console import Group, RenderableType
from rich.live import Live
from rich.rule import Rule
from rich.table import Table

from sftgate.search.runner import RunOutcome, RunSpec

# The global console: train's and evaluate's progress bars nest in the live view through it.
console = get_console()


def rule(title: str) -> None:
    """A horizontal rule with `title`: the terminal's width in a terminal; elsewhere (a log,
    where the CLI prints unwrapped) just wider than the title, not the whole unwrapped width."""
    console.print(Rule(title), width=None if console.is_terminal else len(title) + 8)


class LiveView:
    """The round, each active run with its stage, and an ETA, above the stage's own progress bar
    (train steps, eval questions) when runs execute in this process."""

    def __init__(self, study: str, seconds_per_run: list[float], enabled: bool, slots: int):
        self.study = study
        self.seconds_per_run = seconds_per_run
        self.enabled = enabled
        self.slots = slots
        self.round = "-"
        self.where = "this process"
        self.remaining = 0  # runs of the round not finished
        self.active: dict[str, tuple[str, float, str]] = {}  # run -> (stage, since, where)
        self.started: dict[str, float] = {}  # run -> when it started
        self.progress: dict[str, tuple[int, int]] = {}  # run -> (done, total) in its stage

    def set_round(self, round_: int | str, runs: int) -> None:
        self.round, self.remaining = str(round_), runs
        self.active.clear()

    def set_stage(self, run: str, stage: str, where: str = "") -> None:
        self.active[run] = (stage, time.monotonic(), where)
        self.started.setdefault(run, time.monotonic())
        self.progress.pop(run, None)

    def set_progress(self, run: str, done: int, total: int) -> None:
        self.progress[run] = (done, total)

    def finished(self, spec: RunSpec, outcome: RunOutcome) -> None:
        """A run's outcome is recorded: one line for it, and its time for the ETA."""
        self.active.pop(spec.run_id, None)
        self.remaining -= 1
        name = spec.run_id + (" (full set)" if spec.split == "full" else "")
        if outcome.status == "failed":
            self.log(f"[red]{name} {'lost' if outcome.lost else 'failed'}:[/red] {outcome.failure}")
        else:
            assert outcome.metrics is not None
            m = outcome.metrics
            self.log(
                f"{name}: eval_score_avg {m.eval_score_avg:.2f}, "
                f"schema_pass_rate {m.schema_pass_rate:.3f}, "
                f"grounding_avg {m.grounding_avg:.3f}" + time_split(outcome.timings)
            )
        if outcome.train_s and outcome.eval_s:
            self.seconds_per_run.append(outcome.train_s + outcome.eval_s)

    def eta(self) -> str:
        if not self.seconds_per_run or not self.remaining:
            return "after the first run"
        mean = sum(self.seconds_per_run) / len(self.seconds_per_run)
        waves = -(-self.remaining // min(self.slots, self.remaining))  # rounded up
        busy = [time.monotonic() - self.started[r] for r in self.active if r in self.started]
        left = max(0.0, mean * waves - min(max(busy, default=0.0), mean))
        return f"~{left / 60:.1f} min for this round's {self.remaining} run(s) left"

    def render(self) -> RenderableType:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("study", self.study)
        grid.add_row("executor", self.where)
        grid.add_row("round", self.round)
        now = time.monotonic()
        for run, (stage, since, where) in self.active.items():
            at = f" on {where}" if where else ""
            done = ""
            if run in self.progress:
                n, total = self.progress[run]
                unit = "steps" if stage == "training" else "questions"
                done = f" {n}/{total} {unit},"
            grid.add_row("run", f"{run}: {stage}{done} ({now - since:.0f} s){at}")
        queued = self.remaining - len(self.active)
        if queued > 0:
            grid.add_row("queued", f"{queued} run(s)")
        grid.add_row("ETA", self.eta())
        return Group(grid)

    def log(self, message: str) -> None:
        console.print(message)

    @contextmanager
    def shown(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with Live(
            console=console, get_renderable=self.render, refresh_per_second=2, transient=True
        ):
            yield


def time_split(timings: dict[str, float]) -> str:
    """· 41 s: train steps 30.1, decode 3.2, ...: where a run's time went, its parts that took
    any (`sftgate.search.runner.run_timings`)."""
    if not timings:
        return ""
    parts = ", ".join(
        f"{name.removesuffix('_s').replace('_', ' ')} {s:.1f}"
        for name, s in timings.items()
        if name != "total_s" and s >= 0.05
    )
    return f" · {timings['total_s']:.0f} s: {parts}"
