"""Orbax checkpointing of the training state, the loader state and the RNG.

Two ``CheckpointManager``s live in a workdir: ``checkpoints/`` keeps the last ``keep`` steps (for
resuming) and ``best/`` keeps the single step with the best validation Dice. Each checkpoint holds
the array state (``StandardSave``) and a JSON item with the step, the loader state and metrics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores ``(state, meta)`` pairs in ``workdir``.

    Args:
      workdir: the run's directory.
      keep: how many recent checkpoints to keep.
      best_metric: the metric (a key of the ``metrics`` given to :meth:`save`) that selects the
        best checkpoint, larger is better.
      create: create the folders (``False`` to read a run without writing in it).
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 2, best_metric: str = "val/dice_mean",
                 create: bool = True):
        workdir = Path(workdir).absolute()
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
        )
        # Reading (create=False) a run that never saved a best checkpoint: no best manager.
        self.best = None if not create and not (workdir / "best").is_dir() else ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=create, best_fn=lambda m: m[best_metric], best_mode="max"
            ),
        )

    @staticmethod
    def _args(state: Any, meta: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state: Any, meta: dict, *, metrics: dict | None = None) -> None:
        """Saves to ``checkpoints/``, and to ``best/`` when ``metrics`` has the best metric."""
        if self.latest.latest_step() != step:
            self.latest.save(step, args=self._args(state, meta))
        if metrics is not None and self.best_metric in metrics:
            if self.best.latest_step() != step:
                self.best.save(step, args=self._args(state, meta), metrics={k: float(v) for k, v in metrics.items()})

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state: Any, *, step: int | None = None, best: bool = False) -> tuple[Any, dict]:
        """Restores ``(state, meta)`` at ``step`` (default: the latest, or the best with ``best``),
        with the shardings of ``abstract_state`` (e.g. ``jax.tree.map(ocp.utils.to_shape_dtype_struct, state)``)."""
        manager = self.best if best else self.latest
        if step is None:
            step = manager.best_step() if best else manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {manager.directory}")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        for manager in (self.latest, self.best):
            if manager is not None:
                manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        for manager in (self.latest, self.best):
            if manager is not None:
                manager.close()


def abstract_like(tree: Any) -> Any:
    """``ShapeDtypeStruct``s (with shardings) of a pytree of arrays, to restore into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
