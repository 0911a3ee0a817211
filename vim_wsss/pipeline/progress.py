"""Stage-by-stage progress display with a total ETA."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f'{seconds // 60:02d}:{seconds % 60:02d}'


class StageProgress:
    """Prints ``[k/n] stage ... elapsed / ETA`` lines.

    The ETA scales the expected seconds of the remaining stages by how the finished stages compared with
    their own expectations (cached stages count as instant and are left out of that ratio). The ratio starts
    from ``prior_seconds`` of stages that ran exactly as expected, so a few short stages cannot swing it.

    Args:
        plan: ordered ``(label, expected_seconds)`` for every stage of the run.
        stream: where to print (stderr by default, so stdout stays clean for the report path).
        prior_seconds: weight of the initial ratio of 1.
    """

    def __init__(self, plan: list[tuple[str, float]], stream: TextIO | None = None, prior_seconds: float = 60.0):
        self.plan = plan
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.done = 0
        self.spent_expected = prior_seconds
        self.spent_actual = prior_seconds

    def eta(self) -> float:
        remaining = sum(sec for _, sec in self.plan[self.done:])
        return remaining * self.spent_actual / max(self.spent_expected, 1e-9)

    def begin(self, label: str) -> float:
        elapsed = time.perf_counter() - self.start
        print(f'[{self.done + 1}/{len(self.plan)}] {label} ... (elapsed {_clock(elapsed)}, ETA {_clock(self.eta())})',
              file=self.stream, flush=True)
        return time.perf_counter()

    def note(self, text: str) -> None:
        """An indented detail line under the current stage."""
        print(f'      {text}', file=self.stream, flush=True)

    def end(self, label: str, started: float, cached: bool) -> None:
        seconds = time.perf_counter() - started
        expected = self.plan[self.done][1] if self.done < len(self.plan) else 0.0
        if not cached:
            self.spent_actual += seconds
            self.spent_expected += expected
        self.done += 1
        state = 'cached' if cached else f'{seconds:.1f}s'
        print(f'      {label}: {state}', file=self.stream, flush=True)
