"""Where a run's wall time went: named parts and the rest, recorded in its metadata."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    """Wall time since it was made, split into named parts (a part may be timed more than once);
    `split()` gives each part, `other_s` (the time in no part) and `total_s`, in seconds."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.parts: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0

    def split(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        parts = {f"{name}_s": round(s, 3) for name, s in self.parts.items()}
        other = max(0.0, total - sum(self.parts.values()))
        return {**parts, "other_s": round(other, 3), "total_s": round(total, 3)}
