"""Metrics: Dice and HD95 conventions, volumes, calibration, statistics, partial ground truth."""

import itertools

import numpy as np
import pytest

from labelset_jax import metrics


def brute_force_hd95(a, b, spacing):
    """All pairwise distances between surface voxels (6-connected erosion), MONAI's convention."""
    def surface(m):
        s = m.copy()
        interior = m.copy()
        for axis in range(m.ndim):
            for shift in (1, -1):
                rolled = np.roll(m, shift, axis)
                edge = [slice(None)] * m.ndim
                edge[axis] = 0 if shift == 1 else -1
                rolled[tuple(edge)] = False
                interior &= rolled
        return s & ~interior

    pa = np.argwhere(surface(a)) * spacing
    pb = np.argwhere(surface(b)) * spacing
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


@pytest.mark.parametrize("seed", range(6))
def test_hd95_equals_brute_force_with_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 11, 7)
    a = rng.random(shape) < 0.3
    b = rng.random(shape) < 0.3
    a[2:6, 3:8, 2:5] = True  # a solid part, so surfaces differ from the masks
    spacing = np.array([0.5, 1.0, 2.0])
    assert metrics.hausdorff95(a, b, spacing=spacing) == pytest.approx(brute_force_hd95(a, b, spacing), rel=1e-9)


def test_hd95_conventions_for_empty_masks():
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    assert np.isnan(metrics.hausdorff95(empty, empty, spacing=(1, 1, 1)))
    assert metrics.hausdorff95(empty, full, spacing=(1, 2, 2)) == pytest.approx(np.sqrt(16 + 64 + 64))
    assert metrics.hausdorff95(full, empty, spacing=1.0, empty_cap=50.0) == 50.0
    assert metrics.hausdorff95(full, full, spacing=(1, 1, 1)) == 0.0
    with pytest.raises(ValueError, match="spacing"):
        metrics.hausdorff95(full, full, spacing=(1, 1))


def test_dice_conventions():
    pred = np.array([0, 1, 1, 2, 2])
    true = np.array([0, 1, 2, 2, 2])
    d = metrics.dice_score(pred, true, labels=[0, 1, 2, 3])
    np.testing.assert_allclose(d[:3], [1.0, 2 / 3, 0.8])
    assert np.isnan(d[3])
    assert metrics.dice_score(pred, true, labels=[3], empty=1.0)[0] == 1.0
    assert metrics.dice_score(np.zeros(3, int), np.ones(3, int), labels=[1])[0] == 0.0
    with pytest.raises(ValueError, match="shape"):
        metrics.dice_score(pred, true[:3], labels=[1])


def test_volume_error_soft_and_hard():
    true = np.zeros((10, 10, 10), bool)
    true[:5] = True  # 500 voxels of 2 mm³ = 1 ml
    probs = np.where(true, 0.8, 0.3)  # soft: 400 + 150 = 550 voxels -> 1.1 ml
    err = metrics.volume_error(probs, true, spacing=(1.0, 1.0, 2.0))
    assert err.true == pytest.approx(1.0)
    assert err.soft == pytest.approx(0.1) and err.hard == pytest.approx(0.0)
    assert err.relative_soft == pytest.approx(0.1)
    against_expected = metrics.volume_error(probs, 0.5, spacing=(1.0, 1.0, 2.0))
    assert against_expected.soft == pytest.approx(0.6)


def test_expected_calibration_error():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, size=200_000)
    labels = (rng.random(conf.size) > conf).astype(int)  # class 0 correct with probability conf
    probs = np.stack([conf, 1 - conf], -1)
    assert metrics.expected_calibration_error(probs, labels) < 0.01
    over = np.stack([np.minimum(conf + 0.2, 1.0), 1 - np.minimum(conf + 0.2, 1.0)], -1)
    assert metrics.expected_calibration_error(over, labels) > 0.1
    mean_conf, acc, count = metrics.reliability_curve(probs, labels, num_bins=10)
    assert count.sum() == conf.size and np.nanmax(np.abs(mean_conf - acc)) < 0.02


def test_bootstrap_ci_contains_the_mean_and_shrinks():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 1.0, 20)
    large = rng.normal(1.0, 1.0, 2000)
    est, lo, hi = metrics.bootstrap_ci(small, num_resamples=5000)
    est2, lo2, hi2 = metrics.bootstrap_ci(large, num_resamples=5000)
    assert lo < est < hi and lo2 < est2 < hi2
    assert (hi2 - lo2) < (hi - lo) / 5
    assert metrics.bootstrap_ci([np.nan, 2.0, 2.0])[0] == 2.0


def test_paired_wilcoxon():
    rng = np.random.default_rng(2)
    a = rng.normal(size=30)
    _, p = metrics.paired_wilcoxon(a + 1.0, a + rng.normal(0, 0.1, 30))
    assert p < 1e-4
    assert metrics.paired_wilcoxon(a, a)[1] == 1.0
    with pytest.raises(ValueError, match="one length"):
        metrics.paired_wilcoxon(a, a[:5])


def test_partial_ground_truth_ignores_non_annotated_leaves():
    """Under protocol 'annotated = {0, 1}' with set id 3 = {2}, ... the set voxels say only
    'not 0 and not 1': predictions among the non-annotated leaves there cannot change the scores."""
    rng = np.random.default_rng(3)
    true_full = rng.integers(0, 4, size=(6, 6, 6))
    partial = np.where(np.isin(true_full, [2, 3]), 4, true_full)  # set 4 = {2, 3}
    pred = true_full.copy()
    pred[rng.random(pred.shape) < 0.2] = 1
    swapped = pred.copy()
    inside = np.isin(pred, [2, 3])
    swapped[inside] = 5 - pred[inside]  # 2 <-> 3 inside the non-annotated leaves
    a = metrics.evaluate_case(pred, partial, num_classes=4, spacing=(1, 1, 1), annotated=[0, 1])
    b = metrics.evaluate_case(swapped, partial, num_classes=4, spacing=(1, 1, 1), annotated=[0, 1])
    assert a == pytest.approx(b, nan_ok=True)
    assert np.isnan(a["dice_label_2"]) and np.isnan(a["hd95_label_3"])
    assert a["dice_label_1"] == pytest.approx(metrics.dice_score(pred, true_full, labels=[1])[0])
