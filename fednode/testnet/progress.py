"""The testnet's live progress: one refreshing line on a terminal, plain lines otherwise.

On a terminal (stderr is a TTY) the line is redrawn in place about once a second:

    [  42.1s] rounds 17/18/20 of 50 ▅▅▆▅▆▅▅▆ | acc med 0.944 min 0.921 | alive 8/8 | restarts 0 | ETA 1m12s

rounds min/median/max over the nodes, then (for at most 16 nodes) one bar character per node
(its rounds out of the total; ``x`` for a node that is down), the current test accuracy, and an
ETA from the rate at which the slowest node advanced over the last 30 s. When stderr is a file
or a pipe (CI logs), the same text is printed as a plain line every 5 s instead.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from collections import deque
from typing import TextIO

_BARS = "·▁▂▃▄▅▆▇█"
_ASCII_BARS = "_.:-=+*#%@"
MAX_BAR_NODES = 16
ETA_WINDOW_S = 30.0


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:  # unknown, NaN
        return "ETA -"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"ETA {seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"ETA {seconds // 60}m{seconds % 60:02d}s"
    return f"ETA {seconds}s"


class Progress:
    """Formats and prints progress; feed it with :meth:`update` from the launcher's monitor loop."""

    def __init__(self, total_rounds: int, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.total = max(1, int(total_rounds))
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        encoding = (getattr(self.stream, "encoding", None) or "").lower().replace("-", "")
        self.bars = _BARS if encoding.startswith("utf") else _ASCII_BARS
        self._samples: deque[tuple[float, int]] = deque()
        self._last_print = float("-inf")
        self._drawn = False

    @property
    def interval(self) -> float:
        return 1.0 if self.tty else 5.0

    def eta(self, now: float, slowest_done: int) -> float | None:
        """Seconds until the slowest node is done, from its rate over the last ETA_WINDOW_S seconds."""
        self._samples.append((now, slowest_done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= ETA_WINDOW_S:
            self._samples.popleft()
        t0, r0 = self._samples[0]
        if slowest_done >= self.total:
            return 0.0
        if now - t0 < 1e-6 or slowest_done <= r0:
            return None
        return (self.total - slowest_done) * (now - t0) / (slowest_done - r0)

    def line(self, elapsed: float, rounds: list[int], up: list[bool], accuracies: list[float],
             restarts: int, eta_s: float | None) -> str:
        """One progress line; ``rounds`` are rounds done per node, ``up`` whether each node is running."""
        done = rounds or [0]
        text = (f"[{elapsed:6.1f}s] rounds {min(done)}/{int(statistics.median(done))}/{max(done)} of {self.total}")
        if 0 < len(rounds) <= MAX_BAR_NODES:
            top = len(self.bars) - 1
            text += " " + "".join(self.bars[min(top, round(top * r / self.total))] if ok else "x"
                                  for r, ok in zip(rounds, up))
        if accuracies:
            text += f" | acc med {statistics.median(accuracies):.3f} min {min(accuracies):.3f}"
        else:
            text += " | acc -"
        text += f" | alive {sum(up)}/{len(up)} | restarts {restarts} | {format_eta(eta_s)}"
        return text

    def update(self, now: float, elapsed: float, rounds: list[int], up: list[bool], accuracies: list[float],
               restarts: int) -> None:
        """Print (or redraw) the line if the interval has passed."""
        eta_s = self.eta(now, min(rounds) if rounds else 0)
        if self.quiet or now - self._last_print < self.interval:
            return
        self._last_print = now
        text = self.line(elapsed, rounds, up, accuracies, restarts, eta_s)
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            print("\r" + text[:width].ljust(width), end="", file=self.stream, flush=True)
            self._drawn = True
        else:
            print(text, file=self.stream, flush=True)

    def finish(self) -> None:
        """End the refreshing line so that what follows starts on a line of its own."""
        if self._drawn:
            print(file=self.stream, flush=True)
            self._drawn = False
