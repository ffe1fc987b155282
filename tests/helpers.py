"""Helpers shared by the test modules (imported as ``tests.helpers``; fixtures are in ``conftest.py``):
a tiny config, the MNI152 nnU-Net dataset writer, and a runner of the command-line entry points,
in a subprocess or, for the bad-input paths, in this process."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import ml_collections
import numpy as np

from labelset_jax.data import mni_tissue_case
from labelset_jax.data.nnunet import label_space_from_json, write_dataset
from labelset_jax.labelsets import LabelSpace

ROOT = Path(__file__).resolve().parents[1]


def tiny(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
    """Shrinks a config to seconds on a CPU: 16³ patches, a 2-level 4-feature U-Net, 2 steps."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.num_steps = overrides.pop("num_steps", 2)
    config.batch_size = overrides.pop("batch_size", 2)
    config.patch_size = (16, 16, 16)
    config.checkpoint_every = overrides.pop("checkpoint_every", 1)
    config.eval_every = overrides.pop("eval_every", 2)
    config.log_every = 1
    config.model.preset = "small"
    config.model.num_levels = 2
    config.model.base_features = 4
    config.model.max_features = 8
    config.model.remat = False
    config.model.dtype = "float32"
    config.eval.roi_size = (16, 16, 16)
    config.eval.tta = False
    data = config.data
    if data.name == "phantoms":
        data.shape = (32, 32, 32)
        data.protocols = {name: 1 for name in data.protocols}
        data.num_val = 1
        if "val_abnormal" in data:
            data.val_abnormal = min(int(data.val_abnormal), 1)
    elif data.name == "synthetic":
        data.shape = (16, 16, 16)
        data.num_train, data.num_val = 2, 1
    data.prefetch = 0
    for key, value in overrides.items():
        config[key] = value
    return config


def trajectory_config() -> ml_collections.ConfigDict:
    """3 steps of the tiny default config with batch 4 and batch Dice: its losses must not depend on
    the number of devices (tests/multi_device_checks.py and test_train.py)."""
    from configs import default

    config = tiny(default.get_config(), num_steps=3, batch_size=4, eval_every=0, checkpoint_every=10)
    config.loss_options = {"batch_dice": True}
    return config


# The MNI tissue task as a dataset with label sets: leaves of labelset_jax.data.MNI_TISSUE, the set
# {csf, gm} written by the cases that annotate only white matter, and the ignore label.
MNI_JSON = {
    "labels": {"background": 0, "csf": 1, "gm": 2, "wm": 3, "ignore": 5},
    "label_sets": {"not_wm": {"id": 4, "members": [1, 2]}},
}
MNI_SPACE = LabelSpace.from_superset_map(
    4, {4: [1, 2], 5: [0, 1, 2, 3]}, ["background", "csf", "gm", "wm"],
    set_names={4: "not_wm", 5: "ignore"}, ignore_id=5,
)
WM_ONLY = ("mni_002", "mni_003")
WITH_IGNORE = "mni_004"


def make_mni_dataset(root, *, voxel_size: int = 8, num_test: int = 1, channels: int = 1) -> dict[str, np.ndarray]:
    """Writes ``root`` (a dataset folder) from nilearn's MNI152 template and tissue maps.

    Five augmented training cases: ``mni_000``/``mni_001`` fully annotated, ``mni_002``/``mni_003``
    annotating only white matter (CSF and GM become the set ``not_wm`` = 4), ``mni_004`` fully
    annotated but with a slab of ignore label (5); ``num_test`` test images with ``labelsTs``.
    ``channels=2`` adds a second input channel, a T2-like inverted contrast (CSF bright).

    Returns:
      The label map written for each case id.
    """
    space = label_space_from_json(MNI_JSON)
    training, written = [], {}
    for i in range(5):
        case = mni_tissue_case(i, voxel_size=voxel_size)
        labels = case.labels.copy()
        case_id = f"mni_{i:03d}"
        if case_id in WM_ONLY:
            labels[np.isin(labels, [1, 2])] = 4
        if case_id == WITH_IGNORE:
            labels[:, :, : labels.shape[2] // 3] = 5
        written[case_id] = labels
        training.append(SimpleNamespace(id=case_id, image=_channels(case.image, channels), labels=labels,
                                        affine=case.affine))
    test = []
    for i in range(num_test):
        case = mni_tissue_case(100 + i, voxel_size=voxel_size)
        test.append(SimpleNamespace(id=f"mni_test_{i:03d}", image=_channels(case.image, channels), labels=case.labels,
                                    affine=case.affine))
        written[test[-1].id] = case.labels
    write_dataset(root, training, space=space, channel_names=["T1", "T2"][:channels], test=test,
                  name="MNI152 tissues")
    return written


def _channels(t1: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return t1
    inverted = np.where(t1 > 0.1 * t1.max(), t1.max() - t1, 0.0)  # inside the head: dark WM, bright CSF
    return np.stack([t1, inverted], axis=-1).astype(np.float32)


def _registered(flag_values, flag) -> bool:
    """Whether ``flag`` is the flag registered under its name."""
    return flag.name in flag_values and flag_values[flag.name] is flag


def run_cli(module: str, *args: str, in_process: bool = False) -> subprocess.CompletedProcess:
    """Runs ``python -m module *args`` from the repository root and returns its exit status, stdout
    and stderr.

    ``in_process=True`` runs the module as ``__main__`` in this process instead (``runpy``), which
    saves the interpreter start and the imports (seconds per call): for the bad-input paths, which
    stop before any work. What it captures matches the subprocess: ``print`` to either stream and
    every log record (absl's handler writes to the real stderr; a handler on the root logger copies
    each record into the captured stderr). The flags that the module defined are removed afterwards,
    so that the next run defines them afresh.
    """
    if not in_process:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)
    from absl import app, flags

    app.define_help_flags()  # absl's own flags, defined once per process: not the module's to remove
    # Flags of entry points imported by a test module (``from experiments.x import f``) step aside
    # while the module defines its own, and come back afterwards.
    imported = {f.name: (owner, f) for owner, owned in flags.FLAGS.flags_by_module_dict().items()
                if owner.startswith("experiments.") or f"{os.sep}experiments{os.sep}" in owner for f in owned
                if _registered(flags.FLAGS, f)}
    for name in imported:
        delattr(flags.FLAGS, name)
    known = set(flags.FLAGS)
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(message)s"))
    root = logging.getLogger()
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [module, *args]
    root.addHandler(handler)
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        root.removeHandler(handler)
        os.chdir(cwd)
        sys.argv = argv
        for name in sorted(set(flags.FLAGS) - known):
            if name in flags.FLAGS:
                delattr(flags.FLAGS, name)
        for name, (owner, flag) in imported.items():
            flags.FLAGS[name] = flag
            flags.FLAGS.register_flag_by_module(owner, flag)
        flags.FLAGS.unparse_flags()
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())
