"""Orientation and spacing (labelset_jax.data.resample): a common frame for training, and predictions
brought back exactly onto each input's grid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np

from configs import dataset as dataset_config
from labelset_jax import input_pipeline, train
from tests.helpers import tiny
from labelset_jax.data import make_phantom
from labelset_jax.data.nnunet import read_dataset, write_dataset
from labelset_jax.data.phantoms import rotation_matrix
from labelset_jax.data.resample import Frame
from labelset_jax.labelsets import LabelSpace

ROOT = Path(__file__).resolve().parents[1]


def oblique_affine(spacing=(3.0, 3.0, 4.0), degrees=(20.0, -10.0, 5.0)) -> np.ndarray:
    """An oblique affine with axes permuted and flipped: voxel sizes ``spacing`` along the array axes."""
    rotation = rotation_matrix(np.deg2rad(np.asarray(degrees)))
    columns = rotation @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = columns[:, [1, 2, 0]] * np.array([1.0, -1.0, 1.0])  # permuted, one axis flipped
    affine[:3, 3] = [12.0, -30.0, 7.5]
    return affine


def test_oblique_anisotropic_labels_round_trip_onto_their_grid():
    _, labels = make_phantom(4, shape=(32, 32, 32))
    labels = labels[:, :, 4:28]  # not a cube
    affine = oblique_affine()
    frame = Frame.of(labels.shape, affine, target=(2.0, 2.0, 2.0))
    assert frame.needs_resampling and frame.needs_reorienting
    assert np.allclose(frame.spacing, 2.0, atol=0.2)
    common = frame.labels(labels)
    assert common.shape == frame.shape and set(np.unique(common)) <= set(np.unique(labels))  # ids, not averages
    back = frame.restore(np.eye(9, dtype=np.float32)[common]).argmax(-1)
    assert back.shape == labels.shape
    assert (back == labels).mean() > 0.99
    # the common frame describes the same place in the world: the volume's centre stays put
    centre_in = affine @ np.r_[(np.array(labels.shape) - 1) / 2, 1.0]
    centre_out = frame.affine @ np.r_[(np.array(frame.shape) - 1) / 2, 1.0]
    assert np.allclose(centre_in, centre_out, atol=1e-6)


def test_dataset_with_mixed_spacing_trains_in_one_frame_and_predicts_on_each_input_grid(tmp_path):
    space = LabelSpace.leaves(["background", "wm", "ventricles", "cerebellum", "ecsf", "cortical_gm", "deep_gm",
                               "brainstem", "corpus_callosum"])
    cases = []
    for i, affine in enumerate([np.diag([2.0, 2.0, 2.0, 1.0]), np.diag([-2.0, -2.0, 2.0, 1.0]), oblique_affine()]):
        image, labels = make_phantom(10 + i, shape=(24, 24, 24))
        cases.append(SimpleNamespace(id=f"c{i}", image=image, labels=labels, affine=affine))
    root = tmp_path / "Dataset012_Mixed"
    write_dataset(root, cases, space=space, channel_names=["T1"])
    config = tiny(dataset_config.get_config(str(root)), num_steps=1, eval_every=0)
    config.data.num_val = 0
    datasets = input_pipeline.create_datasets(config.data, seed=0)
    assert datasets.spacing == (2.0, 2.0, 2.0) and datasets.resampled == 2  # the median; two cases moved
    assert all(np.allclose(c.spacing, 2.0, atol=0.2) for c in datasets.train)
    assert "2 of 3 cases reoriented and/or resampled" in train.startup_summary(config, datasets)[2]
    train.train_and_evaluate(config, tmp_path / "run")
    assert tuple(train.load_run_config(tmp_path / "run").data.spacing) == (2.0, 2.0, 2.0)

    source = read_dataset(root).case("c2").image_paths[0]
    out = subprocess.run([sys.executable, "-m", "experiments.predict", f"--workdir={tmp_path / 'run'}",
                          f"--input={source}", f"--output={tmp_path / 'seg'}"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    seg, given = nib.load(tmp_path / "seg" / "c2.nii.gz"), nib.load(source)
    assert seg.shape == given.shape and np.allclose(seg.affine, given.affine, atol=1e-6)
