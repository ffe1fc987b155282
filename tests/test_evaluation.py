"""The one evaluation path with stand-in models: settings from a config, ensembles averaged on
probabilities, the library's normalisation before the model, partial truth scored on its annotated
leaves only, the loop and the summary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from labelset_jax.data import Case, normalize_image, phantom_cohort
from labelset_jax.evaluation import (
    EvalSettings,
    Prediction,
    TrainedModel,
    evaluate_cases,
    predict_case,
    score_case,
    summarize,
)
from labelset_jax.labelsets import FETAL_BRAIN

SETTINGS = EvalSettings(roi_size=(8, 8, 8), overlap=0.25)


def constant_logits(images, state):
    """Logits ``state["bias"]`` everywhere (plus 0 · image, to keep the image's shape)."""
    return 0.0 * images + state["bias"]


def echo_image(images, state):
    """Channel 0: the image the model sees; channel 1: zeros."""
    return jnp.concatenate([images, jnp.zeros_like(images)], axis=-1) * state["scale"]


def model(apply_fn, state, space=FETAL_BRAIN):
    return TrainedModel(apply_fn, jax.tree.map(jnp.asarray, state), ml_collections.ConfigDict(), space)


def test_settings_come_from_config_eval_with_defaults():
    config = ml_collections.ConfigDict({"patch_size": (16, 16, 16)})
    assert EvalSettings.from_config(config) == EvalSettings((16, 16, 16), 2, 0.5, "gaussian", False)
    config.eval = {"roi_size": (8, 8, 4), "sw_batch_size": 4, "overlap": 0.25, "mode": "constant", "tta": True}
    assert EvalSettings.from_config(config) == EvalSettings((8, 8, 4), 4, 0.25, "constant", True)


def test_the_model_sees_the_normalised_image():
    image = np.random.default_rng(0).gamma(2.0, size=(12, 10, 9)).astype(np.float32)
    two = TrainedModel(echo_image, {"scale": jnp.ones(())}, ml_collections.ConfigDict(),
                       FETAL_BRAIN.leaves(["a", "b"]))
    prediction = predict_case(two, image, SETTINGS)
    z = normalize_image(image)
    np.testing.assert_allclose(prediction.probs[..., 1], 1.0 / (1.0 + np.exp(z)), atol=1e-5)
    np.testing.assert_array_equal(prediction.labels, (z < 0).astype(np.int32))


def test_an_ensemble_averages_probabilities():
    bias_a = np.zeros(9, np.float32)
    bias_a[1] = 4.0
    bias_b = np.zeros(9, np.float32)
    bias_b[2] = 1.0
    a, b = model(constant_logits, {"bias": bias_a}), model(constant_logits, {"bias": bias_b})
    image = np.ones((8, 8, 8), np.float32)
    both = predict_case([a, b], image, SETTINGS)
    expected = (jax.nn.softmax(bias_a) + jax.nn.softmax(bias_b)) / 2
    np.testing.assert_allclose(both.probs[2, 3, 4], expected, rtol=1e-5)
    assert np.all(both.labels == 1)  # a is sure of wm; b's preference for ventricles is mild
    with pytest.raises(ValueError, match="different label spaces"):
        predict_case([a, model(constant_logits, {"bias": bias_b[:2]}, FETAL_BRAIN.leaves(["x", "y"]))], image, SETTINGS)


def test_partial_truth_is_scored_on_its_annotated_leaves_only():
    full, partial = phantom_cohort(["full", "wm_vent_cereb"], shape=(32, 32, 32))
    for case in (full, partial):
        prediction = Prediction(np.eye(9, dtype=np.float32)[case.full_labels], case.full_labels)  # perfect
        row = score_case(case, prediction, FETAL_BRAIN)
        assert row["id"] == case.id and row["protocol"] == case.protocol
        annotated = {"wm", "ventricles", "cerebellum"} if case is partial else set(FETAL_BRAIN.names[1:])
        for name in FETAL_BRAIN.names[1:]:
            values = [row[f"{metric}_{name}"] for metric in ("dice", "hd95", "dvol_soft", "dvol_hard")]
            if name in annotated:
                assert values == [1.0, 0.0, 0.0, 0.0], name
            else:
                assert np.all(np.isnan(values)), name
    perfect = Prediction(np.eye(9, dtype=np.float32)[full.labels], full.labels)
    dice_only = score_case(full, perfect, FETAL_BRAIN, hd95=False, include_background=True)
    assert dice_only["dice_background"] == 1.0 and not any(k.startswith("hd95") for k in dice_only)


def test_evaluate_cases_visits_every_case_in_order_and_summarize():
    space = FETAL_BRAIN.leaves(["background", "object"])
    labels = np.zeros((8, 8, 8), np.int32)
    labels[2:6, 2:6, 2:6] = 1
    cases = [Case(f"c{k}", np.ones((8, 8, 8)), labels, (1, 1, 1)) for k in range(3)]
    seen = []

    def on_case(case, prediction, row):
        seen.append(case.id)
        row["extra"] = float(prediction.labels.sum())

    everything = model(constant_logits, {"bias": np.array([0.0, 1.0], np.float32)}, space)
    rows = evaluate_cases(everything, cases, SETTINGS, on_case=on_case)
    assert seen == [r["id"] for r in rows] == ["c0", "c1", "c2"]
    assert rows[0]["dice_object"] == pytest.approx(2 * 64 / (64 + 512))
    assert rows[0]["dvol_hard_object"] == pytest.approx((512 - 64) / 1000)
    assert rows[0]["extra"] == 512.0
    summary = summarize(rows)
    assert [s["metric"] for s in summary] == ["dice_object", "hd95_object", "dvol_soft_object", "dvol_hard_object",
                                              "extra"]
    assert summary[0] == {"metric": "dice_object", "mean": pytest.approx(rows[0]["dice_object"]),
                          "ci_low": pytest.approx(rows[0]["dice_object"]),
                          "ci_high": pytest.approx(rows[0]["dice_object"]), "n": 3}
