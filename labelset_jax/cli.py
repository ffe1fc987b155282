"""Helpers shared by the command-line entry points in ``experiments/``."""

from __future__ import annotations

import logging as py_logging
import sys
import time


def quiet_orbax() -> None:
    """Keeps orbax's INFO chatter out of the log (its warnings still show)."""

    class Filter(py_logging.Filter):
        def filter(self, record):
            return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname

    for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
        handler.addFilter(Filter())


def fail(message: str) -> None:
    """Prints one line ``error: ...`` to stderr and exits with status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class Progress:
    """A one-line progress bar on stderr: ``[3/10] case_003 | 1.2 s/item | ETA 8 s``."""

    def __init__(self, total: int, *, stream=None):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.stream = stream or sys.stderr

    def update(self, name: str) -> None:
        self.done += 1
        rate = (time.perf_counter() - self.start) / self.done
        eta = rate * (self.total - self.done)
        end = "\n" if self.done == self.total else ""
        print(f"\r[{self.done}/{self.total}] {name} | {rate:.1f} s/item | ETA {eta:.0f} s", end=end,
              file=self.stream, flush=True)
