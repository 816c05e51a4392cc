"""Typed errors. Library code raises these; the CLI turns them into one line each and exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is, what is wrong, and what to do about it."""

    file: str
    item: str  # item id or index ("#3"), or "" for the file as a whole
    field: str  # dotted field path, or ""
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.item:
            where += f": item {self.item}"
        if self.field:
            where += f": field '{self.field}'"
        text = f"{where}: {self.message}"
        if self.fix:
            text += f" ({self.fix})"
        return text


class SftgateWarning(UserWarning):
    """Something the user should know that does not stop the work (examples left out)."""


class SftgateError(Exception):
    """Base class for errors the CLI reports without a traceback."""

    exit_code = 1


class InputError(SftgateError):
    """Bad user input: one or more problems, each naming file, item and field."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        if not self.problems:
            raise ValueError("InputError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))


class MismatchError(SftgateError):
    """Two things that must agree (prompt, index, eval set, base model) do not."""

    exit_code = 2


class UnreachableGate(SftgateError):
    """The study's ceiling is below its gate plus margin: not even a perfect answer passes."""

    exit_code = 2
