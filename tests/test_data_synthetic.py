"""Synthetic uncertainty generators: q's sign convention, E[V], one draw per blob, the control."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from labelset_jax.data import (
    SYNTHETIC_SPACE,
    Case,
    ambiguous_blob_case,
    boundary_noise_case,
    expected_volume_ml,
    independent_blobs_case,
    noise_free_case,
)
from labelset_jax.metrics import volumes_ml


def q_of(case: Case) -> np.ndarray:
    return case.metadata["q"]


def volume_ml(case: Case) -> float:
    return volumes_ml(case.labels == 1, spacing=case.spacing)


def test_boundary_q_is_one_inside_zero_outside_half_on_the_surface():
    case = boundary_noise_case(0, shape=(32, 32, 32), radius=8.0, tau=1.0, jitter=0.0)
    centre = q_of(case)[15:17, 15:17, 15:17]
    assert centre.min() > 0.99 and q_of(case)[0, 0, 0] < 1e-3
    # at distance 8 from the centre (15.5, 15.5, 15.5) along axis 0: 7.5 + 0.5 -> q ≈ 1/2
    assert q_of(case)[15, 15, 15 + 8] == pytest.approx(0.5, abs=0.15)
    assert case.image.dtype == q_of(case).dtype == np.float32 and case.labels.dtype == np.int32
    assert set(np.unique(case.labels).tolist()) == {0, 1}
    SYNTHETIC_SPACE.validate(case.labels)


def test_boundary_labels_are_bernoulli_q():
    cases = [boundary_noise_case(s, shape=(24, 24, 24), radius=6.0, tau=1.5) for s in range(40)]
    volumes = np.array([volume_ml(c) for c in cases])
    expected = np.array([expected_volume_ml(c) for c in cases])
    residual = (volumes - expected) / np.sqrt([np.sum(q_of(c) * (1 - q_of(c))) / 1e6 for c in cases])
    assert abs(residual.mean()) < 4 / np.sqrt(len(cases))  # unbiased draw
    # where q is strictly between 0 and 1 the labels vary between draws of one geometry
    a = boundary_noise_case(1, shape=(24, 24, 24), radius=6.0, tau=1.5, jitter=0.0)
    b = boundary_noise_case(2, shape=(24, 24, 24), radius=6.0, tau=1.5, jitter=0.0)
    np.testing.assert_array_equal(q_of(a), q_of(b))
    assert not np.array_equal(a.labels, b.labels)


def test_determinism():
    a = boundary_noise_case(7, shape=(16, 16, 16), radius=4.0)
    b = boundary_noise_case(7, shape=(16, 16, 16), radius=4.0)
    for x, y in ((a.image, b.image), (a.labels, b.labels), (q_of(a), q_of(b))):
        np.testing.assert_array_equal(x, y)
    assert a.id == "synthetic_00007"


@pytest.mark.parametrize("p", [0.2, 0.4, 0.6, 0.8])
def test_ambiguous_blob_is_one_draw_and_always_visible(p):
    included = []
    for seed in range(60):
        case = ambiguous_blob_case(seed, p=p, shape=(24, 24, 24), object_radius=4, blob_radius=3)
        blob = np.isclose(q_of(case), p)
        assert blob.sum() > 50 and np.all(case.labels[q_of(case) == 1] == 1)
        values = np.unique(case.labels[blob])
        assert values.size == 1  # all or nothing
        included.append(values[0])
        assert case.image[blob].mean() > 0.3  # the faint blob shows whatever was drawn
    assert abs(np.mean(included) - p) < 4 * np.sqrt(p * (1 - p) / 60)


def test_independent_blobs():
    case = independent_blobs_case(3, k=6, p=[0.1, 0.3, 0.5, 0.7, 0.9, 0.5], shape=(48, 48, 48))
    assert set(np.unique(q_of(case)).astype(np.float64).round(3).tolist()) == {0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0}
    draws = []
    for seed in range(30):
        case = independent_blobs_case(seed, k=5, p=0.5, shape=(40, 40, 40), object_radius=4, blob_radius=3)
        blobs, n = ndimage.label(np.isclose(q_of(case), 0.5))
        assert n == 5
        draws.append([case.labels[blobs == i].max() for i in range(1, n + 1)])
        for i in range(1, n + 1):
            assert np.unique(case.labels[blobs == i]).size == 1
    draws = np.array(draws)
    assert 0.3 < draws.mean() < 0.7
    assert len({tuple(d) for d in draws}) > 10  # the blobs are drawn independently


def test_noise_free_control():
    case = noise_free_case(0, shape=(20, 20, 20), radius=5)
    np.testing.assert_array_equal(case.labels, q_of(case))
    assert volume_ml(case) == expected_volume_ml(case)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        boundary_noise_case(0, tau=0.0)
    with pytest.raises(ValueError, match="p must"):
        ambiguous_blob_case(0, p=1.5)
    with pytest.raises(ValueError, match="fit|place"):
        independent_blobs_case(0, k=50, p=0.5, shape=(16, 16, 16), blob_radius=4)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.45, 0.55, 0.7, 0.9])
def test_stratified_blob_share_is_p_over_consecutive_seeds(p):
    from labelset_jax.data.synthetic import blob_included

    for first in (0, 1000, 100_000):
        assert sum(blob_included(s, p) for s in range(first, first + 20)) == round(20 * p)
    for first, n in [(7, 13), (123, 10), (5, 3)]:  # any run of seeds: floor or ceil of n p
        assert abs(sum(blob_included(s, p) for s in range(first, first + n)) - n * p) < 1
    shape = dict(shape=(24, 24, 24), object_radius=4, blob_radius=3)
    for seed in range(6):
        plain = ambiguous_blob_case(seed, p=p, **shape)
        stratified = ambiguous_blob_case(seed, p=p, stratified=True, **shape)
        np.testing.assert_array_equal(stratified.image, plain.image)  # same geometry, image and q
        np.testing.assert_array_equal(q_of(stratified), q_of(plain))
        blob = np.isclose(q_of(stratified), p)
        assert np.all(stratified.labels[blob] == int(blob_included(seed, p)))
        np.testing.assert_array_equal(stratified.labels[~blob], plain.labels[~blob])


def test_stratified_independent_blobs_hold_the_share_p_over_consecutive_cases():
    from labelset_jax.data.synthetic import blob_included

    included = []
    for seed in range(8):
        plain = independent_blobs_case(seed, k=5, p=0.45, shape=(40, 40, 40), object_radius=4, blob_radius=3)
        case = independent_blobs_case(seed, k=5, p=0.45, shape=(40, 40, 40), object_radius=4, blob_radius=3,
                                      stratified=True)
        np.testing.assert_array_equal(case.image, plain.image)
        blobs, n = ndimage.label(np.isclose(q_of(case), 0.45))
        # blobs are numbered in placement order by _place_spheres, not by ndimage: compare as sets
        got = sorted(int(case.labels[blobs == i].max()) for i in range(1, n + 1))
        assert got == sorted(int(blob_included(seed * 5 + j, 0.45)) for j in range(5))
        included += got
    assert sum(included) == 18  # 40 blobs x 0.45
