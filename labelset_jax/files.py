"""Atomic file output: every file and folder the library writes appears complete or not at all.

A file is written to a temporary name in its destination folder, then renamed over the destination
(``os.replace``, atomic on POSIX and Windows within one file system): a reader sees either the old
file or the new one, never a half-written one, and an interrupted write leaves at most a hidden
temporary file behind. Files get the permissions of any newly created file, ``0666`` minus the
process umask (``0644`` under the usual umask ``022``), and folders ``0777`` minus the umask.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> write_json(folder / "results.json", {"dice": 0.5})
>>> print((folder / "results.json").read_text())
{
  "dice": 0.5
}
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_directory", "write_bytes", "write_text", "write_json", "write_csv",
           "save_figure"]

PathLike = str | os.PathLike


def _temporary_name(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path: PathLike, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed to ``path`` when the block ends.

    The temporary file is created empty (with the permissions of a new file under the umask) so
    that its name is reserved; write it by name (e.g. ``nib.save(image, tmp)``). On an exception
    it is removed and ``path`` is untouched. Missing parent folders are created.

    Args:
      path: the destination.
      suffix: appended to the temporary name, for writers that infer the format from it
        (``".nii.gz"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temporary_name(path, suffix)
        try:  # O_EXCL: a name of our own; mode 0o666: the kernel applies the umask
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(directory: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder to fill; it replaces ``directory`` when the block ends.

    Readers see no folder, the old one or the complete new one. On an exception the temporary
    folder is removed and ``directory`` is untouched.

    Raises:
      ValueError: ``directory`` exists and ``overwrite`` is false (raised before anything is
        written).
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise ValueError(f"{directory}: already exists (pass overwrite=True to replace it)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(directory)
    os.mkdir(tmp, 0o777)  # the umask applies
    try:
        yield tmp
        if directory.exists():
            old = _temporary_name(directory, ".old")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, payload: Any, *, sort_keys: bool = False) -> None:
    """Writes ``payload`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys))


def write_csv(path: PathLike, rows: Sequence[dict], *, columns: Sequence[str] | None = None) -> None:
    """Writes ``rows`` as CSV to ``path`` atomically; the header is ``columns`` (default the first
    row's keys). Lines end with ``\\n``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns if columns is not None else rows[0]),
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_figure(fig, path: PathLike, *, dpi: int = 90) -> None:
    """Saves a matplotlib figure as PNG atomically and closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
