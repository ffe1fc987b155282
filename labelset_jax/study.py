"""What the study drivers share: one record per finished training run, convergence, run-level tests.

A study trains many (method, seed) runs and compares them. Each finished run leaves a *record*, a
JSON file in the study's results folder holding the run's config, the ids of the test cases, the
per-case score rows, the validation curve and the training time. A rerun reuses a record whose
config and test cases match, so a study resumes from its committed results on any machine (the
training folders with the checkpoints are not needed then); a record of another configuration
stops the study before any work (:func:`check_record`).

Convergence is read off the validation curve that the training loop logs (``val/dice_<leaf>``
every ``config.eval_every`` steps): :func:`smoothed_at` is the validation Dice at a fraction of the
steps (running mean of 3 evaluations) and :func:`plateau_gain` its gain over the last quarter.

Comparisons are over training runs, the unit that varies when a study is rerun:
:func:`compare_runs` pairs a reference method with each other method by run seed
(:func:`labelset_jax.metrics.paired_runs`) and Holm-corrects within the family.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from labelset_jax import files
from labelset_jax.metrics import RunComparison, holm_adjust, paired_runs
from labelset_jax.writers import read_jsonl

__all__ = ["run_seeds", "config_json", "load_record", "check_record", "validation_curve", "train_and_record", "smoothed_at",
           "plateau_gain", "compare_runs"]


def config_json(config: ml_collections.ConfigDict) -> dict:
    """The config as the plain JSON object a record and ``config.json`` hold."""
    return json.loads(config.to_json_best_effort())


def run_seeds(seeds: int | None, run_seeds: Sequence[str] | None, default: int) -> list[int]:
    """The run seeds of a study from its ``--seeds`` (a count) or ``--run_seeds`` (a list) flag.

    Returns:
      ``run_seeds`` as integers, else ``0 .. seeds-1`` (``seeds`` defaulting to ``default``).

    Raises:
      ValueError: both flags given, a count below 1, a seed that is not a non-negative integer, or
        a repeated seed (one line naming the flag).

    >>> run_seeds(None, ["31", "32"], 5), run_seeds(3, None, 5), run_seeds(None, None, 2)
    ([31, 32], [0, 1, 2], [0, 1])
    """
    if seeds is not None and run_seeds:
        raise ValueError("give --seeds or --run_seeds, not both")
    if run_seeds:
        if not all(s.strip().isdigit() for s in run_seeds):
            raise ValueError(f"--run_seeds must be non-negative integers, got {','.join(run_seeds)}")
        out = [int(s) for s in run_seeds]
        if len(set(out)) != len(out):
            raise ValueError(f"--run_seeds has a repeated seed: {','.join(run_seeds)}")
        return out
    count = default if seeds is None else seeds
    if count < 1:
        raise ValueError(f"--seeds must be >= 1, got {count}")
    return list(range(count))


def load_record(path: str | os.PathLike, config: ml_collections.ConfigDict, case_ids: Sequence[str]) -> dict | None:
    """The record at ``path`` when it is of this config and these test cases, else ``None``."""
    path = Path(path)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    same = saved.get("config") == config_json(config) and saved.get("cases") == list(case_ids)
    return saved if same else None


def check_record(path: str | os.PathLike, config: ml_collections.ConfigDict, case_ids: Sequence[str],
                 workdir: str | os.PathLike) -> str | None:
    """Why this run cannot go ahead (one line), or ``None``: ``workdir`` or the record at ``path``
    holds a run of another configuration (or the record, of other test cases)."""
    from labelset_jax.train import DERIVED_FIELDS, flatten_config

    previous = Path(workdir) / "config.json"
    if previous.exists():
        saved, expected = flatten_config(json.loads(previous.read_text())), flatten_config(config_json(config))
        # the training loop adds what it derives from the data (input channels, spacing, CT statistics)
        if any(saved.get(k) != v for k, v in expected.items()) or set(saved) - set(expected) - set(DERIVED_FIELDS):
            return f"{workdir} holds a run of another configuration; use a new --runs folder"
    if Path(path).exists() and load_record(path, config, case_ids) is None:
        return f"{path} records a run of another configuration or test set; use a new --results folder"
    return None


def validation_curve(workdir: str | os.PathLike) -> list[dict]:
    """``[{"step": s, "val/dice_<leaf>": ..., ...}]`` from a run's ``metrics.jsonl``, the last
    record of each step (a resumed run may log a step twice)."""
    path = Path(workdir) / "metrics.jsonl"
    by_step = {}
    for record in read_jsonl(path) if path.exists() else []:
        if "val/dice_mean" in record:
            by_step[int(record["step"])] = {k: v for k, v in record.items() if k == "step" or k.startswith("val/")}
    return [by_step[s] for s in sorted(by_step)]


def train_and_record(config: ml_collections.ConfigDict, workdir: str | os.PathLike, path: str | os.PathLike,
                     case_ids: Sequence[str], score: Callable[[Any], list[dict]]) -> dict:
    """Trains (or resumes) a run in ``workdir``, scores its last checkpoint and writes its record.

    Args:
      config: the run's config.
      workdir: the training folder.
      path: the record to write.
      case_ids: the ids of the test cases ``score`` scores, in order.
      score: ``score(trained model) -> rows``, one per test case.

    Returns:
      The record: ``{"config", "cases", "rows", "curve", "seconds"}``.
    """
    from labelset_jax import train  # the training stack, only for a run that trains

    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    rows = score(train.load_trained(workdir, best=False))
    record = {"config": config_json(config), "cases": list(case_ids), "rows": rows,
              "curve": validation_curve(workdir), "seconds": round(seconds, 1)}
    files.write_json(path, record)
    return record


def smoothed_at(curve: Sequence[Mapping[str, float]], names: Sequence[str], num_steps: int, fraction: float) -> float:
    """The validation Dice (mean over the leaves ``names``, running mean of 3 evaluations) at the
    last evaluation at or before ``fraction × num_steps``.

    Returns:
      The value, or NaN when there is no evaluation there or the run did not validate at its last
      step (``num_steps``).

    >>> curve = [{"step": s, "val/dice_a": v} for s, v in [(25, 0.2), (50, 0.5), (75, 0.8), (100, 0.9)]]
    >>> round(smoothed_at(curve, ["a"], 100, 1.0), 3), round(smoothed_at(curve, ["a"], 100, 0.75), 3)
    (0.733, 0.5)
    """
    if not curve or curve[-1]["step"] != num_steps:
        return float("nan")
    steps = np.array([r["step"] for r in curve])
    values = np.array([np.nanmean([r[f"val/dice_{n}"] for n in names]) for r in curve])
    before = np.nonzero(steps <= fraction * num_steps + 1e-9)[0]
    if before.size == 0:
        return float("nan")
    i = before[-1]
    return float(values[max(0, i - 2):i + 1].mean())


def plateau_gain(curve: Sequence[Mapping[str, float]], names: Sequence[str], num_steps: int) -> float:
    """Gain of the smoothed validation Dice (:func:`smoothed_at`) over the last quarter of the steps."""
    return smoothed_at(curve, names, num_steps, 1.0) - smoothed_at(curve, names, num_steps, 0.75)


def compare_runs(per_run: Mapping[str, np.ndarray], reference: str, others: Sequence[str]
                 ) -> list[tuple[str, RunComparison, float]]:
    """``reference`` against each of ``others`` over paired runs, Holm-corrected over ``others``.

    Args:
      per_run: ``{method: [runs]}`` one summary per run, the runs in the same seed order.
      reference: the method compared with the others.
      others: the other methods (one family of tests).

    Returns:
      ``[(method, paired_runs(reference, method), Holm-adjusted p)]``.
    """
    tests = [paired_runs(per_run[reference], per_run[m]) for m in others]
    adjusted = holm_adjust([t.pvalue for t in tests]) if tests else []
    return [(m, t, float(p)) for m, t, p in zip(others, tests, adjusted)]
