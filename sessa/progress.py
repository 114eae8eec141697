"""A small progress bar with rate and ETA: drawn on one line when stderr is a terminal, silent otherwise
(commands print their own log lines there, with the same ETA)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m', 192 -> '3m12s', 7.5 -> '8s'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """``Progress(total, "train")``; ``update(n, info)`` after each unit of work; ``write(msg)`` prints a line
    without breaking the bar; ``close()`` at the end. ``eta`` is the estimated time left, in seconds."""

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, done: int = 0) -> None:
        self.total, self.desc, self.done = max(int(total), 1), desc, done
        self.stream = stream if stream is not None else sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start, self.start_done, self._last_draw, self.info = time.monotonic(), done, 0.0, ""

    @property
    def eta(self) -> float | None:
        elapsed, progressed = time.monotonic() - self.start, self.done - self.start_done
        if progressed <= 0 or elapsed <= 0:
            return None
        return (self.total - self.done) * elapsed / progressed

    def eta_text(self) -> str:
        eta = self.eta
        return "eta ?" if eta is None else f"eta {format_duration(eta)}"

    def update(self, n: int = 1, info: str = "") -> None:
        self.done = min(self.done + n, self.total)
        self.info = info or self.info
        now = time.monotonic()
        if self.live and (now - self._last_draw > 0.2 or self.done == self.total):
            self._draw()
            self._last_draw = now

    def _draw(self) -> None:
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        line = f"{self.desc} [{bar}] {self.done}/{self.total} {self.eta_text()} {self.info}"
        self.stream.write("\r\033[K" + line[:160])
        self.stream.flush()

    def write(self, message: str, stream: TextIO | None = None) -> None:
        out = stream if stream is not None else sys.stdout
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
        print(message, file=out, flush=True)
        if self.live:
            self._draw()

    def close(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
