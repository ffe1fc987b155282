"""Fetal brain phantoms: determinism, every label present, plausible volumes, nesting, contrast."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from labelset_jax.data import make_phantom, phantom_affine, phantom_spacing
from labelset_jax.labelsets import FETAL_BRAIN

BG, WM, VENT, CEREB, ECSF, CGM, DGM, BSTEM, CC = range(9)


def test_same_seed_same_arrays_different_seed_different():
    a_image, a_labels = make_phantom(3, shape=(32, 32, 32))
    b_image, b_labels = make_phantom(3, shape=(32, 32, 32))
    c_image, c_labels = make_phantom(4, shape=(32, 32, 32))
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert not np.array_equal(a_labels, c_labels)
    assert not np.allclose(a_image, c_image)


@pytest.mark.parametrize("shape", [(32, 32, 32), (32, 40, 36), (48, 48, 48), (64, 56, 64)])
def test_every_label_in_every_case(shape):
    seeds = range(24) if max(shape) < 64 else range(6)
    for seed in seeds:
        image, labels = make_phantom(seed, shape=shape)
        assert image.shape == labels.shape == shape
        assert image.dtype == np.float32 and labels.dtype == np.int32
        assert np.all(np.isfinite(image))
        counts = np.bincount(labels.ravel(), minlength=9)
        assert counts.size == FETAL_BRAIN.num_classes, (seed, counts)
        assert np.all(counts > 0), f"seed {seed}, shape {shape}: missing labels {np.nonzero(counts == 0)[0]}"


@pytest.mark.parametrize("size", [32, 48])
def test_volume_fractions_are_plausible(size):
    for seed in range(20):
        _, labels = make_phantom(seed, shape=(size, size, size))
        brain = labels != BG
        assert 0.2 < brain.mean() < 0.7, seed
        tissue = np.bincount(labels[brain], minlength=9) / brain.sum()
        assert 0.25 < tissue[WM] < 0.7 and 0.1 < tissue[CGM] < 0.4 and 0.1 < tissue[ECSF] < 0.5
        assert np.all(tissue[[VENT, CEREB, DGM, BSTEM, CC]] < 0.1)
        if size >= 48:  # at 32³ the thin CSF and cortex layers (>= 1 voxel) take more room
            assert tissue.argmax() == WM


def test_anatomical_nesting():
    for seed in range(10):
        _, labels = make_phantom(seed, shape=(48, 48, 48))
        near_bg = ndimage.binary_dilation(labels == BG) & (labels != BG)
        assert set(np.unique(labels[near_bg]).tolist()) == {ECSF}  # the brain is wrapped in CSF
        gm = labels == CGM
        touching_csf = ndimage.binary_dilation(labels == ECSF) & gm
        assert touching_csf.sum() > 0.3 * gm.sum()  # the cortex lines the extra-axial CSF
        near_wm = labels[ndimage.binary_dilation(labels == WM) & (labels != WM)]
        assert BG not in near_wm and CGM in near_wm  # white matter is inside the cortex
        # the corpus callosum lies above the ventricles, the cerebellum behind and below the WM
        z = np.arange(48)
        assert z[np.nonzero(labels == CC)[2]].mean() > z[np.nonzero(labels == VENT)[2]].mean()
        cb, wm = np.argwhere(labels == CEREB).mean(0), np.argwhere(labels == WM).mean(0)
        assert cb[1] < wm[1] and cb[2] < wm[2]


def test_t2_contrast():
    for seed in range(10):
        image, labels = make_phantom(seed, shape=(48, 48, 48))
        mean = np.array([image[labels == c].mean() for c in range(9)])
        assert mean[ECSF] > mean[WM] > mean[CGM] > mean[BG]
        assert mean[VENT] > mean[WM]


def test_spacing_and_affine():
    assert phantom_spacing((48, 48, 48)) == (2.0, 2.0, 2.0)
    affine = phantom_affine((48, 48, 48))
    centre = affine @ np.array([23.5, 23.5, 23.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0)
    # spacing only annotates: the arrays do not depend on it
    a = make_phantom(1, shape=(32, 32, 32))
    b = make_phantom(1, shape=(32, 32, 32), spacing=(0.5, 0.5, 0.5))
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        make_phantom(0, shape=(8, 32, 32))
    with pytest.raises(ValueError, match="seed"):
        make_phantom(-1, shape=(32, 32, 32))


def test_generation_is_fast():
    make_phantom(0, shape=(64, 64, 64))
    start = time.perf_counter()
    for seed in range(3):
        make_phantom(seed, shape=(64, 64, 64))
    assert (time.perf_counter() - start) / 3 < 0.5
