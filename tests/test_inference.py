"""Sliding-window inference, flip TTA and ensembles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelset_jax import inference

rng = np.random.default_rng(0)
KERNEL = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 3)).astype(np.float32))
MIX = jnp.asarray(rng.normal(size=(2, 3)).astype(np.float32))


def pointwise(x):
    return jnp.tanh(x @ MIX)


def conv(x):
    """A translation-equivariant toy network: one 3x3x3 conv, zero 'SAME' padding."""
    return jax.lax.conv_general_dilated(x, KERNEL, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


IMAGE = jnp.asarray(rng.normal(size=(2, 20, 17, 13, 2)).astype(np.float32))


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("sw_batch_size", [1, 3, 7])
def test_pointwise_network_matches_whole_volume_everywhere(mode, sw_batch_size):
    out = inference.sliding_window_inference(pointwise, IMAGE, roi_size=(8, 8, 8), sw_batch_size=sw_batch_size,
                                             overlap=0.5, mode=mode)
    np.testing.assert_allclose(out, pointwise(IMAGE), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_conv_network_matches_whole_volume_away_from_window_borders(mode):
    """Each window sees the true neighbourhood of its interior voxels, and the image border
    padding matches, so the fusion equals the whole-volume output wherever every window that
    covers a voxel has it at least one voxel inside its border (or on the image border)."""
    roi = (8, 8, 8)
    out = np.asarray(inference.sliding_window_inference(conv, IMAGE, roi_size=roi, sw_batch_size=4, overlap=0.5, mode=mode))
    full = np.asarray(conv(IMAGE))
    ok = np.ones(IMAGE.shape[1:4], bool)
    for axis, (size, r) in enumerate(zip(IMAGE.shape[1:4], roi)):
        good = np.ones(size, bool)
        for s in inference.window_starts(size, r, 0.5):
            for edge in (s, s + r - 1):
                if 0 < edge < size - 1:
                    good[edge] = False
        shape = [1, 1, 1]
        shape[axis] = size
        ok &= good.reshape(shape)
    assert ok.sum() > 100
    np.testing.assert_allclose(out[:, ok], full[:, ok], rtol=1e-4, atol=1e-5)


def test_volume_smaller_than_the_window_is_padded_and_cropped():
    small = IMAGE[:, :5, :6, :7]
    out = inference.sliding_window_inference(pointwise, small, roi_size=(8, 8, 8), sw_batch_size=2)
    assert out.shape == small.shape[:-1] + (3,)
    np.testing.assert_allclose(out, pointwise(small), rtol=1e-5, atol=1e-6)


def test_extra_args_reach_the_network_without_recompiling():
    calls = []

    def scaled(x, scale):
        calls.append(1)  # runs only when traced
        return pointwise(x) * scale

    a = inference.sliding_window_inference(scaled, IMAGE, 2.0, roi_size=(8, 8, 8), sw_batch_size=4)
    b = inference.sliding_window_inference(scaled, IMAGE, 3.0, roi_size=(8, 8, 8), sw_batch_size=4)
    np.testing.assert_allclose(np.asarray(b) / 3.0, np.asarray(a) / 2.0, rtol=1e-5)
    traced = len(calls)
    inference.sliding_window_inference(scaled, IMAGE, 4.0, roi_size=(8, 8, 8), sw_batch_size=4)
    assert len(calls) == traced


def test_gaussian_importance_map():
    w = inference.importance_map((9, 9, 9), sigma_scale=0.125)
    assert w.max() == 1.0 and w[4, 4, 4] == 1.0 and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])


def test_flip_tta_of_a_flip_equivariant_function_is_the_function():
    f = lambda x: pointwise(x)  # pointwise networks commute with flips
    np.testing.assert_allclose(inference.flip_tta(f)(IMAGE), f(IMAGE), rtol=1e-6)
    assert inference.flip_tta(f) == inference.flip_tta(f) and hash(inference.flip_tta(f)) == hash(inference.flip_tta(f))
    # a non-equivariant function is averaged with its mirrored version
    g = lambda x: conv(x)
    expected = 0.5 * (conv(IMAGE) + jnp.flip(conv(jnp.flip(IMAGE, 1)), 1))
    np.testing.assert_allclose(inference.flip_tta(g)(IMAGE), expected, rtol=1e-5, atol=1e-6)


def test_ensemble_of_identical_members_is_one_member():
    probs, labels = inference.predict_volume([pointwise, pointwise], IMAGE, roi_size=(8, 8, 8), sw_batch_size=4)
    single, single_labels = inference.predict_volume(pointwise, IMAGE, roi_size=(8, 8, 8), sw_batch_size=4)
    np.testing.assert_allclose(probs, single, rtol=1e-6)
    np.testing.assert_array_equal(labels, single_labels)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(roi_size=(8, 8)), "roi_size"),
        (dict(roi_size=(8, 8, 8), sw_batch_size=0), "sw_batch_size"),
        (dict(roi_size=(8, 8, 8), overlap=1.0), "overlap"),
        (dict(roi_size=(8, 8, 8), mode="box"), "mode"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs.setdefault("sw_batch_size", 2)
    with pytest.raises(ValueError, match=message):
        inference.sliding_window_inference(pointwise, IMAGE, **kwargs)
