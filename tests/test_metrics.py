"""Metrics: Dice and HD95 conventions, volumes, calibration, statistics, partial ground truth."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from labelset_jax import metrics

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------- HD95


def brute_force_surface(mask):
    """Voxels of ``mask`` with a face neighbour outside the mask or outside the image."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = mask.copy()
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            neighbour = np.roll(padded, shift, axis)[(slice(1, -1),) * mask.ndim]
            interior &= neighbour
    return mask & ~interior


def brute_force_hd95(a, b, spacing):
    """All pairwise distances between the surface voxels; per-direction 95th percentile, then max."""
    pa = np.argwhere(brute_force_surface(a)) * spacing
    pb = np.argwhere(brute_force_surface(b)) * spacing
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


@st.composite
def mask_pairs(draw):
    shape = tuple(draw(st.integers(1, 9)) for _ in range(3))
    seed = draw(st.integers(0, 2**31))
    density_a, density_b = draw(st.floats(0.05, 0.9)), draw(st.floats(0.05, 0.9))
    rng = np.random.default_rng(seed)
    a, b = rng.random(shape) < density_a, rng.random(shape) < density_b
    a.flat[rng.integers(a.size)] = b.flat[rng.integers(b.size)] = True  # neither empty
    return a, b


@SETTINGS
@given(mask_pairs(), st.sampled_from([(0.5, 1.0, 2.0), (1.0, 1.0, 1.0), (3.0, 0.7, 1.1)]))
def test_hd95_equals_brute_force_with_anisotropic_spacing(masks, spacing):
    a, b = masks
    spacing = np.array(spacing)
    assert metrics.hausdorff95(a, b, spacing=spacing) == pytest.approx(brute_force_hd95(a, b, spacing), rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_of_solid_shapes_equals_brute_force_and_ignores_empty_surroundings(seed):
    """Solid blobs (whose surfaces differ from the masks), also embedded in a larger empty image:
    cropping to the bounding box must not change the result."""
    rng = np.random.default_rng(seed)
    a, b = np.zeros((12, 10, 8), bool), np.zeros((12, 10, 8), bool)
    for mask in (a, b):
        lo = rng.integers(0, 4, 3)
        hi = lo + rng.integers(3, 7, 3)
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        mask |= rng.random(mask.shape) < 0.05
    spacing = np.array([0.5, 1.0, 2.0])
    expected = brute_force_hd95(a, b, spacing)
    assert metrics.hausdorff95(a, b, spacing=spacing) == pytest.approx(expected, rel=1e-9)
    big_a, big_b = np.zeros((30, 25, 20), bool), np.zeros((30, 25, 20), bool)
    big_a[5:17, 7:17, 3:11], big_b[5:17, 7:17, 3:11] = a, b
    assert metrics.hausdorff95(big_a, big_b, spacing=spacing) == pytest.approx(expected, rel=1e-9)


def test_hd95_is_the_max_of_the_directed_percentiles_not_the_pooled_percentile():
    a = np.zeros((1, 1, 30), bool)
    b = np.zeros((1, 1, 30), bool)
    a[..., 0] = True
    b[..., 0] = b[..., 20] = True  # from b: distances {0, 20}; from a: {0}
    assert metrics.hausdorff95(a, b, spacing=1.0) == pytest.approx(np.percentile([0, 20], 95))  # 19, not 19 * 2/3
    assert metrics.hausdorff95(b, a, spacing=1.0) == metrics.hausdorff95(a, b, spacing=1.0)


def test_hd95_conventions_for_empty_masks():
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    assert np.isnan(metrics.hausdorff95(empty, empty, spacing=(1, 1, 1)))
    assert metrics.hausdorff95(empty, full, spacing=(1, 2, 2)) == pytest.approx(np.sqrt(16 + 64 + 64))
    assert metrics.hausdorff95(full, empty, spacing=1.0, empty_cap=50.0) == 50.0
    assert metrics.hausdorff95(full, full, spacing=(1, 1, 1)) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(spacing=(1, 1)), "spacing"),
        (dict(spacing=(1, 0, 1)), "spacing"),
        (dict(spacing=(1, 1, 1), true_mask=np.ones((4, 4, 3), bool)), "true_mask shape"),
        (dict(spacing=(1, 1, 1), pred_mask=np.full((4, 4, 4), 2)), "pred_mask must be a binary mask"),
    ],
)
def test_hd95_bad_arguments(kwargs, message):
    args = dict(pred_mask=np.ones((4, 4, 4), bool), true_mask=np.ones((4, 4, 4), bool)) | kwargs
    with pytest.raises(ValueError, match=message):
        metrics.hausdorff95(args.pop("pred_mask"), args.pop("true_mask"), **args)


# ----------------------------------------------------------------------------- Dice


def test_dice_conventions():
    pred = np.array([0, 1, 1, 2, 2])
    true = np.array([0, 1, 2, 2, 2])
    d = metrics.dice_score(pred, true, labels=[0, 1, 2, 3])
    np.testing.assert_allclose(d[:3], [1.0, 2 / 3, 0.8])
    assert np.isnan(d[3])  # absent from both: NaN, dropped by nanmean
    assert np.nanmean(d) == pytest.approx(np.mean(d[:3]))
    assert metrics.dice_score(pred, true, labels=[3], empty=1.0)[0] == 1.0
    assert metrics.dice_score(np.zeros(3, int), np.ones(3, int), labels=[1])[0] == 0.0  # only in true
    assert metrics.dice_score(np.ones(3, int), np.zeros(3, int), labels=[1])[0] == 0.0  # only in pred
    with pytest.raises(ValueError, match="shape"):
        metrics.dice_score(pred, true[:3], labels=[1])
    with pytest.raises(ValueError, match="pred must be an integer label map"):
        metrics.dice_score(pred.astype(float), true, labels=[1])


# ----------------------------------------------------------------------------- volumes


def test_volume_error_soft_and_hard():
    true = np.zeros((10, 10, 10), bool)
    true[:5] = True  # 500 voxels of 2 mm³ = 1 ml
    probs = np.where(true, 0.8, 0.3)  # soft: 400 + 150 = 550 voxels -> 1.1 ml; hard: the 500 true voxels
    err = metrics.volume_error(probs, true, spacing=(1.0, 1.0, 2.0))
    assert err.true == pytest.approx(1.0)
    assert err.soft == pytest.approx(0.1) and err.hard == pytest.approx(0.0)
    assert err.relative_soft == pytest.approx(0.1) and err.relative_hard == pytest.approx(0.0)
    against_expected = metrics.volume_error(probs, 0.5, spacing=(1.0, 1.0, 2.0))  # a reference volume in ml
    assert against_expected.soft == pytest.approx(0.6) and against_expected.relative_soft == pytest.approx(1.2)
    lower = metrics.volume_error(probs, true, spacing=(1.0, 1.0, 2.0), threshold=0.25)
    assert lower.hard == pytest.approx(1.0)  # every voxel: 2 ml predicted


def test_volume_of_a_ball():
    """A voxelised ball of radius 20 mm on a 0.5 × 1 × 2 mm grid: the hard volume is within 2 %
    of 4/3 π r³, the soft volume of a soft-edged version within 2 % too."""
    spacing = np.array([0.5, 1.0, 2.0])
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip((100, 50, 25), spacing)],
                                indexing="ij"))
    radius = np.sqrt((grid ** 2).sum(0))
    exact = 4 / 3 * np.pi * 20.0 ** 3 / 1000.0
    assert metrics.volumes_ml(radius <= 20.0, spacing=spacing) == pytest.approx(exact, rel=0.02)
    soft = np.clip(20.5 - radius, 0.0, 1.0)  # a 1 mm ramp centred on the sphere
    assert metrics.volumes_ml(soft, spacing=spacing) == pytest.approx(exact, rel=0.02)


def test_volume_error_edge_cases():
    err = metrics.volume_error(np.full((2, 2, 2), 0.5), np.zeros((2, 2, 2), bool), spacing=10.0)
    assert err.true == 0.0 and err.soft == pytest.approx(4.0) and np.isnan(err.relative_soft)
    with pytest.raises(ValueError, match="probabilities in"):
        metrics.volume_error(np.full((2, 2, 2), 2.0), np.zeros((2, 2, 2), bool), spacing=1.0)
    with pytest.raises(ValueError, match="true must be a binary mask"):
        metrics.volume_error(np.zeros((2, 2, 2)), np.full((2, 2, 2), 3), spacing=1.0)
    with pytest.raises(ValueError, match="spacing"):
        metrics.volume_error(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), bool), spacing=(1.0, 1.0))


# ----------------------------------------------------------------------------- calibration


def test_expected_calibration_error():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, size=200_000)
    labels = (rng.random(conf.size) > conf).astype(int)  # class 0 is right with probability conf
    probs = np.stack([conf, 1 - conf], -1)
    assert metrics.expected_calibration_error(probs, labels) < 0.01
    over_conf = np.minimum(conf + 0.2, 1.0)
    over = np.stack([over_conf, 1 - over_conf], -1)
    assert metrics.expected_calibration_error(over, labels) > 0.1
    curve = metrics.reliability_curve(probs, labels, num_bins=10)
    assert curve.count.sum() == conf.size and np.all(curve.count[:5] == 0)
    assert np.nanmax(np.abs(curve.confidence - curve.accuracy)) < 0.02
    np.testing.assert_allclose(curve.edges, np.linspace(0, 1, 11))


def test_reliability_curve_bins_and_mask():
    probs = np.array([[1.0, 0.0], [0.55, 0.45], [0.2, 0.8]])
    labels = np.array([0, 1, 2])  # the last voxel holds a set id: its leaf is unknown
    curve = metrics.reliability_curve(probs, labels, num_bins=4, mask=labels < 2)
    np.testing.assert_array_equal(curve.count, [0, 0, 1, 1])  # 0.55 -> [0.5, 0.75), 1.0 -> the last bin
    np.testing.assert_allclose(curve.accuracy[2:], [0.0, 1.0])
    assert metrics.expected_calibration_error(probs, labels, num_bins=4, mask=labels < 2) == pytest.approx(0.275)
    assert np.isnan(metrics.expected_calibration_error(probs, labels, mask=np.zeros(3, bool)))
    with pytest.raises(ValueError, match="class axis"):
        metrics.reliability_curve(probs, labels[:2])


# ----------------------------------------------------------------------------- partial ground truth


def partial_case(seed=3):
    """Leaves {0, 1, 2, 3}; the protocol annotates {0, 1}; set id 4 = {2, 3}."""
    rng = np.random.default_rng(seed)
    true_full = rng.integers(0, 4, size=(6, 6, 6))
    partial = np.where(np.isin(true_full, [2, 3]), 4, true_full)
    pred = true_full.copy()
    pred[rng.random(pred.shape) < 0.2] = 1
    return true_full, partial, pred


def test_partial_ground_truth_is_scored_on_annotated_leaves_only():
    true_full, partial, pred = partial_case()
    scores = metrics.evaluate_case(pred, partial, num_classes=4, spacing=(1, 2, 3), annotated=[0, 1])
    assert list(scores) == ["dice_label_1", "hd95_label_1", "dice_label_2", "hd95_label_2",
                            "dice_label_3", "hd95_label_3"]
    for c in (2, 3):
        assert np.isnan(scores[f"dice_label_{c}"]) and np.isnan(scores[f"hd95_label_{c}"])
    # On an annotated leaf, the partial truth scores as the full truth: a set voxel is not leaf 1.
    full = metrics.evaluate_case(pred, true_full, num_classes=4, spacing=(1, 2, 3))
    assert scores["dice_label_1"] == full["dice_label_1"] == metrics.dice_score(pred, true_full, labels=[1])[0]
    assert scores["hd95_label_1"] == full["hd95_label_1"]


def test_partial_ground_truth_ignores_the_choice_among_non_annotated_leaves():
    """Set voxels say only 'not 0 and not 1': swapping the predicted non-annotated leaves (2 <-> 3)
    changes no score, but predicting an annotated leaf in a set voxel is a false positive."""
    _, partial, pred = partial_case()
    kwargs = dict(num_classes=4, spacing=(1, 1, 1), annotated=[0, 1], include_background=True)
    base = metrics.evaluate_case(pred, partial, **kwargs)
    swapped = pred.copy()
    inside = np.isin(pred, [2, 3])
    swapped[inside] = 5 - pred[inside]
    assert metrics.evaluate_case(swapped, partial, **kwargs) == pytest.approx(base, nan_ok=True)

    spill = pred.copy()
    spill[(partial == 4) & (pred != 1)] = 1  # leaf 1 predicted in every set voxel
    spilled = metrics.evaluate_case(spill, partial, **kwargs)
    assert spilled["dice_label_1"] < base["dice_label_1"]
    tp = np.count_nonzero((spill == 1) & (partial == 1))
    predicted, annotated = np.count_nonzero(spill == 1), np.count_nonzero(partial == 1)
    assert spilled["dice_label_1"] == pytest.approx(2 * tp / (predicted + annotated))


def test_evaluate_case_names_background_and_bad_arguments():
    pred = np.array([[[0, 1, 1, 2]]])
    true = np.array([[[0, 1, 2, 2]]])
    out = metrics.evaluate_case(pred, true, num_classes=3, spacing=1.0, names=["bg", "a", "b"], include_background=True)
    assert list(out) == ["dice_bg", "hd95_bg", "dice_a", "hd95_a", "dice_b", "hd95_b"]
    assert out["dice_bg"] == 1.0 and out["dice_a"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pred must hold leaf ids"):
        metrics.evaluate_case(true + 1, true, num_classes=3, spacing=1.0)
    with pytest.raises(ValueError, match="names"):
        metrics.evaluate_case(pred, true, num_classes=3, spacing=1.0, names=["a"])
    with pytest.raises(ValueError, match="annotated"):
        metrics.evaluate_case(pred, true, num_classes=3, spacing=1.0, annotated=[0, 5])
    with pytest.raises(ValueError, match="spacing"):
        metrics.evaluate_case(pred, true, num_classes=3, spacing=(1.0, 1.0))


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_ci_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 1.0, 20)
    large = rng.normal(1.0, 1.0, 2000)
    est, lo, hi = metrics.bootstrap_ci(small, num_resamples=5000)
    est2, lo2, hi2 = metrics.bootstrap_ci(large, num_resamples=5000)
    assert est == pytest.approx(small.mean()) and est2 == pytest.approx(large.mean())
    assert lo < est < hi and lo2 < est2 < hi2
    assert (hi2 - lo2) < (hi - lo) / 5  # ~ 1/sqrt(n): 10x narrower
    # the 95 % interval of a mean is about ± 1.96 s / sqrt(n)
    assert hi2 - lo2 == pytest.approx(2 * 1.96 * large.std() / np.sqrt(large.size), rel=0.1)


def test_bootstrap_ci_nan_median_determinism_and_arguments():
    assert metrics.bootstrap_ci([np.nan, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(np.isnan(metrics.bootstrap_ci([np.nan, np.nan])))
    values = np.random.default_rng(2).exponential(size=50)
    med = metrics.bootstrap_ci(values, statistic=np.median, num_resamples=3000)
    assert med.estimate == pytest.approx(np.median(values)) and med.low < med.estimate < med.high
    assert metrics.bootstrap_ci(values, seed=4) == metrics.bootstrap_ci(values, seed=4)
    with pytest.raises(ValueError, match="confidence"):
        metrics.bootstrap_ci(values, confidence=95)
    with pytest.raises(ValueError, match="one-dimensional"):
        metrics.bootstrap_ci(values.reshape(5, 10))


def test_paired_wilcoxon():
    rng = np.random.default_rng(2)
    a = rng.normal(size=30)
    result = metrics.paired_wilcoxon(a + 1.0, a + rng.normal(0, 0.1, 30))
    assert result.pvalue < 1e-4 and result.statistic == 0.0  # every difference is positive
    assert metrics.paired_wilcoxon(a, a + rng.normal(0, 0.1, 30)).pvalue > 0.01
    assert metrics.paired_wilcoxon(a, a) == (0.0, 1.0)
    with_nan = metrics.paired_wilcoxon(np.append(a + 1.0, np.nan), np.append(a, 0.0))
    assert with_nan == metrics.paired_wilcoxon(a + 1.0, a)
    with pytest.raises(ValueError, match="a and b must be paired"):
        metrics.paired_wilcoxon(a, a[:5])


# ----------------------------------------------------------------------------- nested bootstrap, Holm


def test_nested_bootstrap_ci_widens_with_run_to_run_variation():
    rng = np.random.default_rng(0)
    cases = rng.normal(0.8, 0.05, 20)
    steady = np.stack([cases + rng.normal(0, 0.001, 20) for _ in range(3)])
    shaky = np.stack([cases + shift for shift in (-0.05, 0.0, 0.05)])
    est, lo, hi = metrics.nested_bootstrap_ci(steady, num_resamples=4000)
    assert est == pytest.approx(steady.mean()) and lo < est < hi
    _, lo2, hi2 = metrics.nested_bootstrap_ci(shaky, num_resamples=4000)
    assert hi2 - lo2 > 1.5 * (hi - lo)  # the seeds' spread enters the interval
    # one run: the case-level bootstrap of the means
    single = metrics.nested_bootstrap_ci(cases[None], num_resamples=4000, seed=1)
    flat = metrics.bootstrap_ci(cases, num_resamples=4000, seed=1)
    assert single.estimate == pytest.approx(flat.estimate)
    assert single.high - single.low == pytest.approx(flat.high - flat.low, rel=0.15)
    with_nan = steady.copy()
    with_nan[0, 0] = np.nan
    assert np.isfinite(metrics.nested_bootstrap_ci(with_nan, num_resamples=500).low)
    with pytest.raises(ValueError, match="runs, cases"):
        metrics.nested_bootstrap_ci(cases)


def test_holm_adjust_matches_the_step_down_definition():
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 9):
        p = rng.uniform(0, 0.2, m)
        order = np.argsort(p)
        expected = np.empty(m)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[i]))
            expected[i] = running
        np.testing.assert_allclose(metrics.holm_adjust(p), expected)
        assert np.all(metrics.holm_adjust(p) >= p)
    assert np.isnan(metrics.holm_adjust([np.nan, 0.5])[0]) and metrics.holm_adjust([np.nan, 0.5])[1] == 0.5
