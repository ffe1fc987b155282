"""Helpers of the command-line entry points in ``experiments/`` (only they import this module, which
brings in ``absl.app``): the prelude of every ``main``, one-line errors, name checks and a progress
line. The library's file output is :mod:`labelset_jax.files`."""

from __future__ import annotations

import ast
import logging as py_logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from absl import flags


def quiet_orbax() -> None:
    """Keeps orbax's INFO chatter, and jax's INFO line about each platform it did not find, out of
    the log (their warnings still show), so that a bad-input error stays one line."""

    class Filter(py_logging.Filter):
        def filter(self, record):
            return record.levelno >= py_logging.WARNING or not (
                "orbax" in record.pathname or record.pathname.endswith("xla_bridge.py"))

    for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
        handler.addFilter(Filter())


def start(argv: list[str]) -> None:
    """The first line of every entry point's ``main``: quiets orbax and rejects positional arguments
    (one line, exit status 2: every option is a ``--flag``)."""
    quiet_orbax()
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]} (every option is a --flag=value; see --help)")


def fail(message: str) -> None:
    """Prints one line ``error: ...`` to stderr and exits with status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_flags(argv: list[str]) -> list[str]:
    """The flag parser of every entry point (``app.run(main, flags_parser=cli.parse_flags)``).

    A flag error is one line ``error: ...`` and exit status 2, with absl's or ml_collections'
    "did you mean" hint: an unknown flag or a bad value, a ``--config.field=value`` override of a
    field the config does not have (``--config.num_stepz=3``), and a config file that cannot be
    loaded (``--config=configs/missing.py``).
    """
    if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
        from absl import app

        _config_help(argv)  # the config's fields, then the module's usage and flags; exit status 0
        app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        fail(_one_line(e))
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config lacks
        text = str(e.args[0]) if e.args else str(e)
        if text[:1] in "'\"":
            try:
                text = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                pass
        fail(f"a --config.field override names no field of the config: {_one_line(text)}")
    except OSError as e:  # a config file that cannot be loaded, met while applying an override
        fail(f"config file: {_one_line(str(e).strip().splitlines()[-1])}")
    for name in list(flags.FLAGS):
        # ml_collections defers a config file's load error to the first use of the config; the
        # stand-in it returns keeps the error as ``_error``
        error = getattr(flags.FLAGS[name].value, "_error", None)
        if isinstance(error, OSError):
            fail(f"--{name}: cannot load the config file: {_one_line(str(error).strip().splitlines()[-1])}")
    return remaining


def _config_help(argv: list[str]) -> None:
    """With ``--help`` and a ``--config=FILE[:ARG]``: prints every field of that config with its
    default (``--config.<field>=<value>`` overrides any of them)."""
    config_arg = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if config_arg is None:
        return
    import importlib.util

    path, _, arg = config_arg.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_config_for_help", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # noqa: BLE001 - help must not fail on a bad config
        print(f"(cannot load {config_arg} to list its fields: {_one_line(e)})")
        return
    import json

    from labelset_jax.train import flatten_config

    fields = flatten_config(json.loads(config.to_json_best_effort()))
    print(f"Fields of --config={config_arg} (override with --config.<field>=<value>):")
    for name, value in fields.items():
        print(f"  --config.{name}={json.dumps(value)}")
    print()


def check_output_folder(path, *, what: str = "--output") -> None:
    """:func:`fail` unless ``path`` is a folder, or can be made one, that this process can write in
    (call it before any work: a file in the way or a read-only folder is bad input)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        fail(f"{what}={path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        fail(f"{what}={path}: cannot write in {existing} ({e.strerror or e})")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{what}={path}: {existing} is read-only")


def check_known(given, known, *, what: str) -> None:
    """:func:`fail` naming the entries of ``given`` not in ``known``: ``unknown {what}(s) [...]``."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        fail(f"unknown {what}(s) {unknown}; known: {sorted(known)}")


class Progress:
    """A one-line progress bar on stderr: ``[3/10] case_003 | 1.2 s/item | ETA 8 s``."""

    def __init__(self, total: int, *, stream=None):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.current = ""
        self.stream = stream or sys.stderr

    def windows(self, name: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` for the window batches of item ``name`` (the next one):
        ``[3/10] case_003 | windows 12/48``. One bound method per Progress, so compiled inference
        that takes it as a static argument is reused; ``name`` is held on the object."""
        self.current = name
        return self._windows

    def _windows(self, done: int, total: int) -> None:
        print(f"\r[{self.done + 1}/{self.total}] {self.current} | windows {done}/{total}", end="",
              file=self.stream, flush=True)

    def update(self, name: str) -> None:
        self.done += 1
        rate = (time.perf_counter() - self.start) / self.done
        eta = rate * (self.total - self.done)
        end = "\n" if self.done == self.total else ""
        print(f"\r[{self.done}/{self.total}] {name} | {rate:.1f} s/item | ETA {eta:.0f} s", end=end,
              file=self.stream, flush=True)
