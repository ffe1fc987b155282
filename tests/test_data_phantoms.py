"""Fetal brain phantoms: determinism, every label present, plausible volumes, nesting, contrast,
and the abnormal anatomy (ventriculomegaly, a small displaced cerebellum)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from labelset_jax.data import make_phantom, phantom_affine, phantom_spacing
from labelset_jax.data.phantoms import NORMAL, Abnormality, draw_abnormality
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


# Normal phantoms made by the generator before the abnormal options existed (commit acbd2b4):
# sha256 of the label bytes (first 16 hex digits) and the sum of the image.
NORMAL_BEFORE_ABNORMAL_OPTIONS = {
    (0, (32, 32, 32)): ("c687e891ac2b2024", 9381.18201585667),
    (1, (40, 40, 40)): ("18699445200384ab", 14984.082299699709),
    (7, (48, 48, 48)): ("6a8933eed4c0756a", 29754.19719240023),
    (3, (32, 40, 36)): ("78bc327348a5d84f", 10560.922984067118),
}


@pytest.mark.parametrize("seed, shape", list(NORMAL_BEFORE_ABNORMAL_OPTIONS))
def test_normal_phantoms_are_those_of_the_generator_without_abnormal_options(seed, shape):
    label_hash, image_sum = NORMAL_BEFORE_ABNORMAL_OPTIONS[seed, shape]
    image, labels = make_phantom(seed, shape=shape)
    assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == label_hash
    np.testing.assert_allclose(image.sum(dtype=np.float64), image_sum, rtol=1e-6)
    same = make_phantom(seed, shape=shape, ventriculomegaly=False, small_cerebellum=False)
    np.testing.assert_array_equal(same[0], image)
    np.testing.assert_array_equal(same[1], labels)


def test_severity_comes_from_its_own_generator():
    severities = [draw_abnormality(seed) for seed in range(200)]
    assert severities[3] == draw_abnormality(3)  # deterministic
    v = np.array([s.ventricle_scale for s in severities])
    c = np.array([s.cerebellum_scale for s in severities])
    assert 1.6 <= v.min() and v.max() <= 2.1 and np.ptp(v) > 0.4  # the whole range, per case
    assert 0.55 <= c.min() and c.max() <= 0.7 and np.ptp(c) > 0.12
    assert all(s.cerebellum_down > 0 and s.cerebellum_forward > 0 for s in severities)
    # one option does not change the other's severity
    assert draw_abnormality(5, small_cerebellum=False) == Abnormality(ventricle_scale=severities[5].ventricle_scale)
    assert draw_abnormality(5, ventriculomegaly=False)._replace(ventricle_scale=severities[5].ventricle_scale) \
        == severities[5]
    assert draw_abnormality(5, ventriculomegaly=False, small_cerebellum=False) == NORMAL
    with pytest.raises(ValueError, match="seed"):
        draw_abnormality(-1)


@pytest.mark.parametrize("shape", [(32, 32, 32), (32, 40, 36), (48, 48, 48)])
@pytest.mark.parametrize("options", [dict(ventriculomegaly=True), dict(small_cerebellum=True),
                                     dict(ventriculomegaly=True, small_cerebellum=True)])
def test_every_label_in_every_abnormal_case(shape, options):
    for seed in range(12):
        image, labels = make_phantom(seed, shape=shape, **options)
        assert image.shape == labels.shape == shape and np.all(np.isfinite(image))
        counts = np.bincount(labels.ravel(), minlength=9)
        assert np.all(counts > 0), f"seed {seed}, {options}: missing labels {np.nonzero(counts == 0)[0]}"


def test_abnormal_anatomy_changes_ventricles_and_cerebellum_only():
    for seed in range(8):
        _, normal = make_phantom(seed, shape=(48, 48, 48))
        _, vent_only = make_phantom(seed, shape=(48, 48, 48), ventriculomegaly=True)
        _, cereb_only = make_phantom(seed, shape=(48, 48, 48), small_cerebellum=True)
        _, both = make_phantom(seed, shape=(48, 48, 48), ventriculomegaly=True, small_cerebellum=True)
        # each option changes its own structure only
        np.testing.assert_array_equal(vent_only == CEREB, normal == CEREB)
        np.testing.assert_array_equal(cereb_only == VENT, normal == VENT)
        np.testing.assert_array_equal(both == VENT, vent_only == VENT)
        np.testing.assert_array_equal(both == CEREB, cereb_only == CEREB)
        # the brain envelope, the brainstem below the cerebellum's reach and the CC are untouched
        np.testing.assert_array_equal(both == BG, normal == BG)
        np.testing.assert_array_equal(both == CC, normal == CC)
        # ventriculomegaly: cross-section ×1.6-2.1 and longer horns -> volume ×~2.5-7
        assert 2.5 < (both == VENT).sum() / (normal == VENT).sum() < 8.0, seed
        # small cerebellum (×0.55-0.7 -> volume ×~0.17-0.34), moved down (-z) and forward (+y)
        assert 0.12 < (both == CEREB).sum() / (normal == CEREB).sum() < 0.4, seed
        shift = np.argwhere(both == CEREB).mean(0) - np.argwhere(normal == CEREB).mean(0)
        assert shift[2] < -1.0 and shift[1] > 0.5, (seed, shift)
        # the abnormal ventricles stay off the midline: still two lateral ventricles
        connected = np.ones((3, 3, 3))
        assert ndimage.label(both == VENT, connected)[1] == ndimage.label(normal == VENT, connected)[1] == 2, seed


def test_abnormal_phantom_keeps_the_t2_contrast_and_the_nesting():
    for seed in range(6):
        image, labels = make_phantom(seed, shape=(48, 48, 48), ventriculomegaly=True, small_cerebellum=True)
        mean = np.array([image[labels == c].mean() for c in range(9)])
        assert mean[ECSF] > mean[WM] > mean[CGM] > mean[BG] and mean[VENT] > mean[WM]
        near_bg = ndimage.binary_dilation(labels == BG) & (labels != BG)
        assert set(np.unique(labels[near_bg]).tolist()) == {ECSF}
