"""Helpers of the command-line entry points in ``experiments/`` (only they import this module, which
brings in ``absl.app``): the prelude of every ``main``, one-line errors, name checks and a progress
line. The library's file output is :mod:`labelset_jax.files`."""

from __future__ import annotations

import logging as py_logging
import sys
import time

from absl import app


def quiet_orbax() -> None:
    """Keeps orbax's INFO chatter out of the log (its warnings still show)."""

    class Filter(py_logging.Filter):
        def filter(self, record):
            return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname

    for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
        handler.addFilter(Filter())


def start(argv: list[str]) -> None:
    """The first line of every entry point's ``main``: quiets orbax and rejects positional arguments
    (``absl.app.UsageError``: absl prints the usage and exits)."""
    quiet_orbax()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def fail(message: str) -> None:
    """Prints one line ``error: ...`` to stderr and exits with status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_known(given, known, *, what: str) -> None:
    """:func:`fail` naming the entries of ``given`` not in ``known``: ``unknown {what}(s) [...]``."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        fail(f"unknown {what}(s) {unknown}; known: {sorted(known)}")


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
