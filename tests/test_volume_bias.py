"""The volume-bias analysis: the closed-form toy, the Dice-optimal oracle, the logistic-regression arms
fitted to convergence, the small CNN fitted full-batch, the volume errors and the equivalence test."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
from scipy import stats

from labelset_jax import losses
from labelset_jax import volume_bias as vb
from labelset_jax.data import synthetic
from labelset_jax.metrics import volume_error

BLOB = dict(shape=(24, 24, 24), object_radius=5.0, blob_radius=3.5)


def _fit(cases, arm, **kwargs):
    x = np.stack([vb.intensity_features(c.image).reshape(-1, 3) for c in cases])
    targets = np.stack([(c.metadata["q"] if vb.ARMS[arm].soft_targets else c.labels).reshape(-1) for c in cases])
    return vb.fit_logistic_regression(x, targets, arm=arm, **kwargs)


def _predict(fit, case):
    return vb.predict_logistic(fit, vb.intensity_features(case.image))


def _row(probs, case):
    return vb.volume_row(probs, labels=case.labels, q=case.metadata["q"], spacing=case.spacing)


# --------------------------------------------------------------------------- theory


def test_toy_volume_error_is_the_closed_form():
    p = np.array([0.0, 0.1, 0.45, 0.5, 0.55, 0.9, 1.0])
    np.testing.assert_allclose(vb.toy_volume_error(p, 3.0), [0.0, -0.3, -1.35, -1.5, 1.35, 0.3, 0.0])
    assert vb.toy_volume_error(0.7, 10.0) == pytest.approx(3.0)


def _brute_force_oracle(q):
    """Every threshold of q, expected Dice as the ratio of expectations."""
    best = (-1.0, None)
    for t in sorted(set(q.tolist()) | {np.inf}, reverse=True):
        keep = q >= t
        denominator = keep.sum() + q.sum()
        dice = 2 * q[keep].sum() / denominator if denominator else 1.0
        if dice > best[0] + 1e-12:
            best = (dice, t)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_oracle_is_the_best_threshold(seed):
    rng = np.random.default_rng(seed)
    q = np.round(rng.beta(0.5, 0.8, 60), 2)  # ties included
    oracle = vb.dice_optimal_oracle(q, voxel_ml=0.5)
    dice, threshold = _brute_force_oracle(q)
    assert oracle.dice == pytest.approx(dice) and oracle.threshold == threshold
    assert oracle.volume_ml == pytest.approx(0.5 * (q >= threshold).sum())
    assert oracle.dv_ml == pytest.approx(oracle.volume_ml - 0.5 * q.sum())
    np.testing.assert_array_equal(oracle.prediction(q), q >= threshold)


def test_oracle_keeps_voxels_above_half_the_optimal_dice_and_over_segments():
    case = synthetic.boundary_noise_case(0, shape=(32, 32, 32), radius=5.0, tau=2.0)
    oracle = vb.dice_optimal_oracle(case.metadata["q"], voxel_ml=case.voxel_ml)
    assert oracle.threshold == pytest.approx(oracle.dice / 2, abs=0.01)  # t = D*/2 (docs/theory.md §5)
    assert oracle.threshold < 0.5 and oracle.dv_ml > 0.1 * oracle.expected_ml
    # the ratio of expectations agrees with the mean Dice over sampled label maps
    samples = np.random.default_rng(0).random((32, *case.metadata["q"].shape)) < case.metadata["q"]
    sampled = vb.dice_optimal_oracle(case.metadata["q"], voxel_ml=case.voxel_ml, labels=samples)
    assert sampled.threshold == pytest.approx(oracle.threshold, abs=0.02)
    assert sampled.dv_ml == pytest.approx(oracle.dv_ml, rel=0.1)
    # a sharper boundary relative to the radius gives a smaller relative bias
    sharp = synthetic.boundary_noise_case(0, shape=(32, 32, 32), radius=8.0, tau=1.0)
    sharp_oracle = vb.dice_optimal_oracle(sharp.metadata["q"])
    assert sharp_oracle.dv_ml / sharp_oracle.expected_ml < 0.06


@pytest.mark.parametrize("p", [0.3, 0.45, 0.55, 0.7])
def test_oracle_with_one_draw_per_blob_keeps_it_iff_p_above_half(p):
    case = synthetic.ambiguous_blob_case(0, p=p, **BLOB)
    blob = (case.metadata["q"] > 0) & (case.metadata["q"] < 1)
    inside, outside = case.labels.copy(), case.labels.copy()
    inside[blob], outside[blob] = 1, 0
    oracle = vb.dice_optimal_oracle(case.metadata["q"], voxel_ml=case.voxel_ml, labels=np.stack([inside, outside]),
                                    weights=[p, 1 - p])
    assert oracle.dv_ml == pytest.approx(vb.toy_volume_error(p, blob.sum() * case.voxel_ml))


def test_oracle_of_a_noise_free_case_is_exact_and_bad_inputs_fail():
    case = synthetic.noise_free_case(0, shape=(16, 16, 16), radius=4.0)
    oracle = vb.dice_optimal_oracle(case.metadata["q"], voxel_ml=case.voxel_ml)
    assert oracle.dice == pytest.approx(1.0) and oracle.dv_ml == pytest.approx(0.0)
    assert vb.dice_optimal_oracle(np.zeros(5)).threshold == np.inf
    with pytest.raises(ValueError, match="probabilities"):
        vb.dice_optimal_oracle(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="realisations"):
        vb.dice_optimal_oracle(np.array([0.5, 0.5]), labels=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="weights"):
        vb.dice_optimal_oracle(np.array([0.5, 0.5]), labels=np.zeros((2, 2)), weights=[1.0])


# --------------------------------------------------------------------------- losses of the arms


def test_every_arm_names_a_library_loss():
    for name, arm in vb.ARMS.items():
        assert vb.arm_loss(name).__name__ == losses.get_loss(arm.loss).__name__
    with pytest.raises(ValueError, match="unknown arm"):
        vb.arm_loss("bogus")


# --------------------------------------------------------------------------- logistic regression


@pytest.fixture(scope="module")
def blob_sets():
    return {p: ([synthetic.ambiguous_blob_case(s, p=p, stratified=True, **BLOB) for s in range(10)],
                [synthetic.ambiguous_blob_case(s, p=p, stratified=True, **BLOB) for s in range(100, 104)])
            for p in (0.3, 0.7)}


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_cross_entropy_predicts_the_blob_share_and_an_unbiased_volume(blob_sets, p):
    train, test = blob_sets[p]
    fit = _fit(train, "ce")
    assert fit.converged and fit.grad_norm <= 1e-4
    # the score equation of the intercept: the fitted soft volume equals the labelled volume
    train_soft = sum(_predict(fit, c).sum() for c in train)
    assert train_soft == pytest.approx(sum(c.labels.sum() for c in train), rel=1e-3)
    for case in test:
        probs = _predict(fit, case)
        blob = (case.metadata["q"] > 0) & (case.metadata["q"] < 1)
        assert probs[blob].mean() == pytest.approx(p, abs=0.03)
        row = _row(probs, case)
        assert abs(row["dv_soft_expected_ml"]) < 0.03 * row["expected_ml"]


@pytest.mark.parametrize("p", [0.3, 0.7])
@pytest.mark.parametrize("arm", ["dice", "dice_batch"])
def test_soft_dice_fills_or_drops_the_blob_as_the_toy_says(blob_sets, p, arm):
    train, test = blob_sets[p]
    fit = _fit(train, arm)
    assert fit.converged
    for case in test:
        blob = (case.metadata["q"] > 0) & (case.metadata["q"] < 1)
        row = _row(_predict(fit, case), case)
        toy = vb.toy_volume_error(p, blob.sum() * case.voxel_ml)
        assert row["dv_soft_expected_ml"] == pytest.approx(toy, rel=0.1)


@pytest.fixture(scope="module")
def boundary_sets():
    def make(seed):
        return synthetic.boundary_noise_case(seed, shape=(24, 24, 24), radius=5.0, tau=2.0, jitter=1.0)

    return [make(s) for s in range(8)], [make(100 + s) for s in range(6)]


def test_boundary_noise_ce_is_equivalent_to_unbiased_soft_dice_matches_the_oracle(boundary_sets):
    train, test = boundary_sets
    ce, dice = _fit(train, "ce"), _fit(train, "dice")
    assert ce.converged and dice.converged
    ce_dv = [_row(_predict(ce, c), c)["dv_soft_expected_ml"] for c in test]
    dice_dv = [_row(_predict(dice, c), c)["dv_soft_expected_ml"] for c in test]
    expected = np.mean([synthetic.expected_volume_ml(c) for c in test])
    oracle = np.mean([vb.dice_optimal_oracle(c.metadata["q"], voxel_ml=c.voxel_ml).dv_ml for c in test])
    assert vb.tost_equivalence(ce_dv, margin=0.05 * expected).equivalent
    assert np.min(dice_dv) > 0 and np.mean(dice_dv) == pytest.approx(oracle, rel=0.25)


def test_dice_semimetric_on_soft_targets_recovers_q(boundary_sets):
    train, test = boundary_sets
    fit = _fit(train, "dice_semimetric")
    assert fit.converged
    for case in test:
        row = _row(_predict(fit, case), case)
        assert abs(row["dv_soft_expected_ml"]) < 0.05 * row["expected_ml"]


def test_fit_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[B, N, F\]"):
        vb.fit_logistic_regression(np.zeros((2, 5, 3)), np.zeros((2, 4)), arm="ce")


# --------------------------------------------------------------------------- rows and statistics


def test_volume_row_uses_the_metrics_volumes():
    case = synthetic.boundary_noise_case(1, shape=(16, 16, 16), radius=4.0, tau=1.0, spacing=(1.0, 2.0, 0.5))
    probs = np.clip(case.metadata["q"] + 0.05, 0, 1)
    row = _row(probs, case)
    assert row["expected_ml"] == pytest.approx(synthetic.expected_volume_ml(case))
    assert row["realised_ml"] == pytest.approx(case.labels.sum() * case.voxel_ml)
    to_labels = volume_error(probs, case.labels, spacing=case.spacing)
    assert row["dv_soft_realised_ml"] == pytest.approx(to_labels.soft)
    assert row["dv_hard_realised_ml"] == pytest.approx(to_labels.hard)
    expected = synthetic.expected_volume_ml(case)
    assert row["dv_soft_expected_ml"] == pytest.approx(probs.sum() * case.voxel_ml - expected)
    assert row["soft_ml"] - row["expected_ml"] == pytest.approx(row["dv_soft_expected_ml"])
    assert 0 < row["dice"] <= 1


def test_tost_matches_the_two_t_tests_and_the_confidence_interval():
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.05, 0.09, 0.2):
        x = rng.normal(shift, 0.1, 30)
        result = vb.tost_equivalence(x, margin=0.1)
        t_low = (x.mean() + 0.1) / (x.std(ddof=1) / np.sqrt(30))
        t_high = (x.mean() - 0.1) / (x.std(ddof=1) / np.sqrt(30))
        assert result.pvalue == pytest.approx(max(stats.t.sf(t_low, 29), stats.t.cdf(t_high, 29)))
        assert result.equivalent == (result.pvalue < 0.05) == (-0.1 < result.low and result.high < 0.1)
    assert vb.tost_equivalence([0.0, 0.01, -0.01] * 10, margin=0.1).equivalent
    assert not vb.tost_equivalence(rng.normal(0.3, 0.1, 30), margin=0.1).equivalent
    assert np.isnan(vb.tost_equivalence([1.0], margin=0.1).pvalue)
    with pytest.raises(ValueError, match="margin"):
        vb.tost_equivalence([1.0, 2.0], margin=0.0)


def test_a_warm_start_must_come_from_the_same_features(boundary_sets):
    train, _ = boundary_sets
    ce = _fit(train, "ce")
    x = np.stack([vb.intensity_features(c.image).reshape(-1, 3) for c in train])
    y = np.stack([c.labels.reshape(-1) for c in train])
    warm = vb.fit_logistic_regression(x, y, arm="dice", init=ce)
    assert warm.converged
    with pytest.raises(ValueError, match="standardisation"):
        vb.fit_logistic_regression(2 * x, y, arm="dice", init=ce)


# --------------------------------------------------------------------------- small CNN


def test_class_probabilities_of_synthetic_and_mni_like_cases():
    case = synthetic.boundary_noise_case(0, shape=(12, 12, 12), radius=3.0, tau=1.0)
    probs = vb.class_probabilities(case)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(probs[..., 1], case.metadata["q"])
    mni_like = dataclasses.replace(case, metadata={"probs": np.stack([1 - probs[..., 1], probs[..., 1]], -1)})
    np.testing.assert_allclose(vb.class_probabilities(mni_like), probs)
    with pytest.raises(ValueError, match="no known probabilities"):
        vb.class_probabilities(dataclasses.replace(case, metadata={}))


def test_small_cnn_fitted_full_batch_ce_unbiased_dice_over_segments():
    def make(seed):
        return synthetic.boundary_noise_case(seed, shape=(20, 20, 20), radius=4.0, tau=2.0, jitter=1.0)

    train, test = [make(s) for s in range(3)], [make(100 + s) for s in range(4)]
    model = dict(preset="small", num_levels=1, base_features=8, max_features=8, norm="none")
    space = synthetic.SYNTHETIC_SPACE
    rows = {}
    for arm in ("ce", "dice"):
        fit = vb.fit_network(train, arm=arm, model_config=model, label_space=space, steps=300)
        assert np.isfinite(fit.loss) and abs(fit.loss_change) < 0.01  # settled
        rows[arm] = [r for c in test for r in vb.volume_rows(vb.predict(fit.model, c).probs, c, names=space.names)]
    expected = np.mean([r["expected_ml"] for r in rows["ce"]])
    oracle = np.mean([vb.dice_optimal_oracle(c.metadata["q"], voxel_ml=c.voxel_ml).dv_ml for c in test])
    ce = np.mean([r["dv_soft_expected_ml"] for r in rows["ce"]])
    dice = np.mean([r["dv_soft_expected_ml"] for r in rows["dice"]])
    assert abs(ce) < 0.05 * expected
    assert dice > 0.5 * oracle and dice > ce + 0.1 * expected
    assert {r["class"] for r in rows["ce"]} == {"object"} and len(rows["ce"]) == len(test)


def test_volume_rows_check_the_shape():
    case = synthetic.noise_free_case(0, shape=(8, 8, 8), radius=2.0)
    with pytest.raises(ValueError, match="differs"):
        vb.volume_rows(np.zeros((8, 8, 8, 3)), case)
