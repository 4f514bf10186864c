"""Progress bars on the driver: a tqdm bar on a terminal, periodic plain lines anywhere else.

Invariant: a bar is drawn only where :func:`baldro_ray.console.live` holds, as a carriage-return tqdm bar when
stderr is a terminal (and the libraries are quiet), otherwise as one plain line on stdout every
``PLAIN_FRACTION`` of the way or ``PLAIN_SECONDS`` (and at the end) — nothing a log file cannot hold. Lines a
bar's owner writes through :meth:`Bar.write` appear once, above a live bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from baldro_ray import console

PLAIN_FRACTION = 0.25
PLAIN_SECONDS = 30.0


class Bar(Protocol):
    def update_to(self, done: int, text: str = "") -> None:
        """``done`` of the total are finished; ``text`` describes the latest one (losses, ...)."""

    def write(self, line: str) -> None:
        """Print a line of the run's own (an epoch summary) without breaking the bar."""

    def close(self) -> None: ...


def open_bar(total: int, desc: str, unit: str, initial: int = 0) -> Bar:
    """The bar this process's console draws for ``total`` units, ``initial`` of them already done."""
    if not console.live():
        return _NoBar()
    if sys.stderr.isatty() and not console.verbose():
        return _TqdmBar(total, desc, unit, initial)
    return PlainBar(total, desc, unit, initial)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def plain_line(desc: str, done: int, total: int, unit: str, rate: float | None, text: str = "") -> str:
    """``desc done/total (pct%) text | rate unit/s, ETA t``; the rate part only once a rate is known."""
    percent = 100 * done / total if total else 100.0
    line = f"{desc} {done}/{total} ({percent:.0f}%)" + (f" {text}" if text else "")
    if rate:
        eta = (total - done) / rate
        line += f" | {rate:.2f} {unit}/s, ETA {format_duration(eta)}"
    return line


class PlainBar:
    """Progress as plain lines: one at every ``fraction`` of the total, after ``seconds`` without one, and at
    the end; the rate counts the units done since the bar opened."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        initial: int = 0,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        fraction: float = PLAIN_FRACTION,
        seconds: float = PLAIN_SECONDS,
    ) -> None:
        self.total, self.desc, self.unit, self.out, self.clock = total, desc, unit, out, clock
        self.fraction, self.seconds = fraction, seconds
        self.initial, self.started = initial, clock()
        self.shown, self.shown_at = initial, self.started

    def update_to(self, done: int, text: str = "") -> None:
        now = self.clock()
        due = (
            done >= self.total
            or done - self.shown >= self.fraction * self.total
            or now - self.shown_at >= self.seconds
        )
        if done > self.shown and due:
            elapsed = now - self.started
            rate = (done - self.initial) / elapsed if elapsed > 0 and done > self.initial else None
            self.write(plain_line(self.desc, done, self.total, self.unit, rate, text))
            self.shown, self.shown_at = done, now
        elif done < self.shown:  # a restarted worker resumed from an earlier checkpoint
            self.initial, self.started, self.shown, self.shown_at = done, now, done, now

    def write(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line printed is final."""


class _TqdmBar:
    def __init__(self, total: int, desc: str, unit: str, initial: int) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    def update_to(self, done: int, text: str = "") -> None:
        if text:
            self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(done - self.bar.n)

    def write(self, line: str) -> None:
        self.tqdm.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


class _NoBar:
    def update_to(self, done: int, text: str = "") -> None:
        pass

    def write(self, line: str) -> None:
        pass

    def close(self) -> None:
        pass
