"""Preprocessing and augmentation: normalisation, patches, flips, zooms, intensities; label ids stay valid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from labelset_jax.data import (
    AugmentConfig,
    augment_intensity,
    augment_patch,
    brain_mask,
    extract_patch,
    foreground_index,
    make_phantom,
    random_flip,
    random_zoom,
    sample_patch_centre,
    zscore,
)
from labelset_jax.labelsets import FETAL_BRAIN, FETAL_BRAIN_PROTOCOLS, LabelSpace

ALWAYS = AugmentConfig(flip_prob=1.0, zoom_prob=1.0, noise_prob=1.0, contrast_prob=1.0, gamma_prob=1.0)


@pytest.fixture(scope="module")
def partial_case():
    image, full = make_phantom(0, shape=(32, 32, 32))
    return image, FETAL_BRAIN_PROTOCOLS["plus_ecsf"].apply(full)


def test_zscore_inside_mask(partial_case):
    image, labels = partial_case
    mask = brain_mask(labels=labels)
    out = zscore(image, mask)
    assert out.dtype == np.float32
    assert abs(out[mask].mean()) < 1e-4 and abs(out[mask].std() - 1) < 1e-4
    assert np.all(out[~mask] == 0)
    thresholded = brain_mask(image=image, threshold=0.2)
    assert 0.5 < (thresholded & mask).sum() / mask.sum() <= 1.0
    with pytest.raises(ValueError):
        brain_mask()


def test_foreground_index_covers_every_id(partial_case):
    _, labels = partial_case
    index = foreground_index(labels, max_per_label=50)
    assert sorted(index) == [1, 2, 3, 4, 10]
    for label_id, coords in index.items():
        assert len(coords) <= 50
        assert np.all(labels[tuple(coords.T)] == label_id)


def test_extract_patch_without_zoom_is_a_slice():
    volume = np.random.default_rng(0).normal(size=(20, 21, 22)).astype(np.float32)
    patch = extract_patch(volume, (9.5, 10.0, 10.5), (8, 9, 10))
    np.testing.assert_array_equal(patch, volume[6:14, 6:15, 6:16])
    flipped = extract_patch(volume, (9.5, 10.0, 10.5), (8, 9, 10), flip=(0, 2))
    np.testing.assert_array_equal(flipped, volume[6:14, 6:15, 6:16][::-1, :, ::-1])
    padded = extract_patch(volume, (1.5, 10.0, 10.5), (8, 9, 10), cval=-7)
    assert np.all(padded[:2] == -7) and np.array_equal(padded[2:], volume[0:6, 6:15, 6:16])


def test_extract_patch_zoom_matches_scipy_zoom():
    volume = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(24, 24, 24)), 2).astype(np.float32)
    zoom = 1.1
    patch = extract_patch(volume, (11.5, 11.5, 11.5), (24, 24, 24), zoom=zoom)
    # the same sampling grid through scipy.ndimage.zoom's conventions is off by sub-voxel
    # shifts; compare to a direct map_coordinates of the definition instead
    k = (np.arange(24) - 11.5) / zoom + 11.5
    grid = np.meshgrid(k, k, k, indexing="ij")
    expected = ndimage.map_coordinates(volume, grid, order=1)
    np.testing.assert_allclose(patch, expected, atol=1e-5)


def test_random_flip_and_zoom_keep_shapes_and_ids(partial_case):
    image, labels = partial_case
    rng = np.random.default_rng(0)
    valid = set(np.unique(labels).tolist())
    for _ in range(5):
        x, y = random_flip(image, labels, rng, axes=(0, 1, 2), prob=0.5)
        assert x.shape == y.shape == labels.shape
        x, y = random_zoom(x, y, rng, zoom_range=(0.9, 1.1))
        assert x.shape == y.shape == labels.shape and y.dtype == np.int32
        assert set(np.unique(y).tolist()) <= valid


def test_flip_is_left_right_and_consistent(partial_case):
    image, labels = partial_case
    x, y = random_flip(image, labels, np.random.default_rng(0), prob=1.0)
    np.testing.assert_array_equal(y, labels[::-1])
    np.testing.assert_array_equal(x, image[::-1])


def test_intensity_augmentation_only_inside_the_mask(partial_case):
    image, labels = partial_case
    mask = labels != 0
    x = zscore(image, mask)
    out = augment_intensity(x, mask, np.random.default_rng(3), ALWAYS)
    np.testing.assert_array_equal(out[~mask], x[~mask])
    assert not np.allclose(out[mask], x[mask])
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(augment_intensity(x, mask, np.random.default_rng(3), AugmentConfig.none()), x)


@pytest.mark.parametrize("config", [AugmentConfig(), ALWAYS, None])
def test_augment_patch_keeps_label_ids_valid(partial_case, config):
    image, labels = partial_case
    x_full = zscore(image, labels != 0)
    allowed = set(np.unique(labels).tolist())
    for seed in range(10):
        x, y = augment_patch(x_full, labels, np.random.default_rng(seed), patch_size=(24, 20, 28), config=config)
        assert x.shape == y.shape == (24, 20, 28) and x.dtype == np.float32 and y.dtype == np.int32
        assert set(np.unique(y).tolist()) <= allowed
        FETAL_BRAIN.validate(y)
        assert np.all(np.isfinite(x))


def test_patch_larger_than_volume_is_padded(partial_case):
    image, labels = partial_case
    for seed in range(5):
        x, y = augment_patch(image, labels, np.random.default_rng(seed), patch_size=(40, 40, 40), config=None)
        assert x.shape == y.shape == (40, 40, 40)
        # the whole volume is inside the patch, the margin is background / zero intensity
        np.testing.assert_array_equal(np.bincount(y.ravel())[1:], np.bincount(labels.ravel())[1:])
        assert np.count_nonzero(x) == np.count_nonzero(image)


def test_augment_patch_is_deterministic(partial_case):
    image, labels = partial_case
    a = augment_patch(image, labels, np.random.default_rng(5), patch_size=(16, 16, 16), config=ALWAYS)
    b = augment_patch(image, labels, np.random.default_rng(5), patch_size=(16, 16, 16), config=ALWAYS)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_foreground_prob_biases_patches(partial_case):
    _, labels = partial_case
    index = foreground_index(labels)
    rng = np.random.default_rng(0)
    small_ids = {2, 3}  # ventricles and cerebellum: small structures
    hits = {0.0: 0, 1.0: 0}
    for prob in hits:
        for _ in range(200):
            c = sample_patch_centre(labels.shape, (8, 8, 8), rng, foreground_prob=prob, fg_index=index)
            start = (c - 3.5).astype(int)
            patch = labels[tuple(slice(s, s + 8) for s in start)]
            hits[prob] += bool(small_ids & set(np.unique(patch).tolist()))
    assert hits[1.0] > hits[0.0] + 40


def test_uniform_centres_keep_the_patch_inside():
    rng = np.random.default_rng(0)
    for _ in range(100):
        c = sample_patch_centre((20, 30, 40), (16, 16, 16), rng)
        start = c - 7.5
        assert np.all(start >= 0) and np.all(start + 16 <= np.array([20, 30, 40]))
        assert np.allclose(start, np.round(start))


def test_patches_are_centred_on_certain_foreground_only():
    """The ignore label and a set that holds the background may be background: the foreground index
    of a label space leaves them out; a set without the background is foreground."""
    space = LabelSpace.from_superset_map(3, {3: [1, 2], 4: [0, 2], 5: [0, 1, 2]}, ignore_id=5)
    assert space.foreground_ids == (1, 2, 3)
    labels = np.zeros((6, 6, 6), np.int32)
    labels[0], labels[1], labels[2], labels[3], labels[4] = 1, 3, 4, 5, 2
    assert sorted(foreground_index(labels)) == [1, 2, 3, 4, 5]  # without a space: every id but 0
    index = foreground_index(labels, foreground_ids=space.foreground_ids)
    assert sorted(index) == [1, 2, 3]
    rng = np.random.default_rng(0)
    for _ in range(50):
        centre = sample_patch_centre(labels.shape, (1, 1, 1), rng, foreground_prob=1.0, fg_index=index)
        assert labels[tuple(centre.astype(int))] in (1, 2, 3)
