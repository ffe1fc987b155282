"""Metric writers: JSON lines and TensorBoard event files (through ``tensorboardX``, no TensorFlow).

:class:`MetricWriter` writes every scalar to ``metrics.jsonl`` (one JSON object per step) and to a
TensorBoard event file, from process 0 only.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     with MetricWriter(d) as w:
...         w.write_scalars(3, {"train/loss": 0.5})
...     [r["train/loss"] for r in read_jsonl(f"{d}/metrics.jsonl")]
[0.5]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MetricWriter", "read_jsonl"]


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and TensorBoard files in ``workdir/tensorboard``.

    Only the process with ``jax.process_index() == 0`` writes (pass ``enabled``).
    ``metrics.jsonl`` is flushed after every :meth:`write_scalars`; the TensorBoard file every
    ``flush_secs`` and on :meth:`close`.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, flush_secs: float = 10.0):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # imported when needed: it also imports torch if installed

        Path(workdir).mkdir(parents=True, exist_ok=True)
        self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=flush_secs)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, value, int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
