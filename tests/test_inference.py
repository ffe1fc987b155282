"""Sliding-window inference, flip TTA and ensembles."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelset_jax import inference

rng = np.random.default_rng(0)
ROI = (8, 8, 8)
KERNEL = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 3)).astype(np.float32))
MIX = jnp.asarray(rng.normal(size=(2, 3)).astype(np.float32))
POSITION = jnp.asarray(rng.normal(size=(*ROI, 3)).astype(np.float32))
IMAGE = jnp.asarray(rng.normal(size=(2, 20, 17, 13, 2)).astype(np.float32))  # no axis a multiple of the stride


def pointwise(x):
    """A 1x1x1 network: every window agrees with the whole-volume output."""
    return jnp.tanh(x @ MIX)


def conv(x):
    """A translation-equivariant toy network: one 3x3x3 conv, zero 'SAME' padding."""
    return jax.lax.conv_general_dilated(x, KERNEL, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def position_dependent(x):
    """Not translation-equivariant: its output depends on the voxel's place in the window."""
    return pointwise(x) + POSITION


# ----------------------------------------------------------------------------- a reference in NumPy


def monai_starts(size, roi, overlap):
    """MONAI's ``_get_scan_interval`` + ``dense_patch_slices``, written out as MONAI does."""
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    num = math.ceil(size / interval)
    scan_dim = next((d for d in range(num) if d * interval + roi >= size), None)
    count = scan_dim + 1 if scan_dim is not None else 1
    return [i * interval - max(i * interval + roi - size, 0) for i in range(count)]


def monai_importance_map(roi, sigma_scale):
    weights = np.ones(())
    for r in roi:
        x = np.arange(-(r - 1) / 2.0, (r - 1) / 2.0 + 1)
        weights = np.multiply.outer(weights, np.exp(x ** 2 / (-2 * (r * sigma_scale) ** 2)))
    return np.maximum(weights, max(weights.min(), 1e-3))


def reference_sliding_window(fn, image, roi, overlap, mode, sigma_scale=0.125):
    """One window at a time, in float64: pad, weight, accumulate, normalise, crop."""
    image = np.asarray(image, np.float64)
    spatial = image.shape[1:4]
    pads = [((r - s) // 2, r - s - (r - s) // 2) if s < r else (0, 0) for s, r in zip(spatial, roi)]
    padded = np.pad(image, [(0, 0), *pads, (0, 0)])
    weights = monai_importance_map(roi, sigma_scale) if mode == "gaussian" else np.ones(roi)
    total, norm = None, np.zeros(padded.shape[:4] + (1,))
    for b in range(image.shape[0]):
        for o in itertools.product(*[monai_starts(s, r, overlap) for s, r in zip(padded.shape[1:4], roi)]):
            window = (b, *(slice(oi, oi + r) for oi, r in zip(o, roi)))
            out = np.asarray(fn(jnp.asarray(padded[window][None], jnp.float32))[0], np.float64)
            total = np.zeros(padded.shape[:4] + out.shape[-1:]) if total is None else total
            total[window] += weights[..., None] * out
            norm[window] += weights[..., None]
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, spatial))
    return (total / norm)[(slice(None), *crop)]


def test_window_starts_are_monai_s():
    for size, roi, overlap in itertools.product(range(1, 30), [1, 5, 8], [0.0, 0.25, 0.5, 0.8, 0.95]):
        padded = max(size, roi)
        assert inference.window_starts(padded, roi, overlap) == monai_starts(padded, roi, overlap), (size, roi, overlap)


@pytest.mark.parametrize("roi", [(8, 8, 8), (7, 6, 9), (1, 4, 5)])
def test_importance_map_is_monai_s(roi):
    np.testing.assert_allclose(inference.importance_map(roi, sigma_scale=0.125), monai_importance_map(roi, 0.125),
                               rtol=1e-6)
    np.testing.assert_array_equal(inference.importance_map(roi, mode="constant"), np.ones(roi))
    w = inference.importance_map((9, 9, 9), sigma_scale=0.25)
    assert w.max() == w[4, 4, 4] == 1.0 and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape, overlap, sw_batch_size",
    [((2, 20, 17, 13), 0.5, 3), ((1, 20, 17, 13), 0.25, 5), ((1, 5, 17, 6), 0.5, 2), ((1, 11, 9, 8), 0.0, 4)],
)
def test_fusion_matches_a_window_by_window_reference(mode, shape, overlap, sw_batch_size):
    """A position-dependent network makes the result depend on every window's place and weight."""
    image = IMAGE[: shape[0], : shape[1], : shape[2], : shape[3]]
    out = inference.sliding_window_inference(position_dependent, image, roi_size=ROI, sw_batch_size=sw_batch_size,
                                             overlap=overlap, mode=mode)
    assert out.shape == (*shape, 3) and out.dtype == jnp.float32
    expected = reference_sliding_window(position_dependent, image, ROI, overlap, mode)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- equivariant networks


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("sw_batch_size", [1, 3, 7, 1000])
def test_pointwise_network_matches_whole_volume_everywhere(mode, sw_batch_size):
    out = inference.sliding_window_inference(pointwise, IMAGE, roi_size=ROI, sw_batch_size=sw_batch_size,
                                             overlap=0.5, mode=mode)
    np.testing.assert_allclose(out, pointwise(IMAGE), rtol=1e-5, atol=1e-6)


def interior_mask(spatial, roi, overlap):
    """Voxels that every covering window holds at least one voxel inside its border, or that lie on
    the image border (where the window's zero padding is the image's)."""
    ok = np.ones(spatial, bool)
    for axis, (size, r) in enumerate(zip(spatial, roi)):
        good = np.ones(size, bool)
        for s in inference.window_starts(size, r, overlap):
            for edge in (s, s + r - 1):
                if 0 < edge < size - 1:
                    good[edge] = False
        shape = [1, 1, 1]
        shape[axis] = size
        ok &= good.reshape(shape)
    return ok


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_conv_network_matches_whole_volume_away_from_window_borders(mode):
    """A 3x3x3 conv sees the true neighbourhood of a window's interior voxels, so every covering
    window agrees with the whole-volume output there, and so does their weighted mean."""
    out = np.asarray(inference.sliding_window_inference(conv, IMAGE, roi_size=ROI, sw_batch_size=4, overlap=0.5,
                                                        mode=mode))
    full = np.asarray(conv(IMAGE))
    ok = interior_mask(IMAGE.shape[1:4], ROI, 0.5)
    assert 100 < ok.sum() < ok.size
    np.testing.assert_allclose(out[:, ok], full[:, ok], rtol=1e-4, atol=1e-5)
    assert not np.allclose(out[:, ~ok], full[:, ~ok], atol=1e-3)  # the window borders do differ


def test_volume_smaller_than_the_window_is_padded_and_cropped():
    small = IMAGE[:, :5, :6, :7]
    out = inference.sliding_window_inference(pointwise, small, roi_size=ROI, sw_batch_size=2)
    assert out.shape == small.shape[:-1] + (3,)
    np.testing.assert_allclose(out, pointwise(small), rtol=1e-5, atol=1e-6)
    # A 3x3x3 conv over the zero-padded window equals the whole-volume conv with zero 'SAME' padding.
    np.testing.assert_allclose(inference.sliding_window_inference(conv, small, roi_size=ROI, sw_batch_size=1),
                               conv(small), rtol=1e-4, atol=1e-5)


def test_extra_args_reach_the_network_without_recompiling():
    calls = []

    def scaled(x, scale):
        calls.append(1)  # runs only when traced
        return pointwise(x) * scale

    a = inference.sliding_window_inference(scaled, IMAGE, 2.0, roi_size=ROI, sw_batch_size=4)
    b = inference.sliding_window_inference(scaled, IMAGE, 3.0, roi_size=ROI, sw_batch_size=4)
    np.testing.assert_allclose(np.asarray(b) / 3.0, np.asarray(a) / 2.0, rtol=1e-5)
    traced = len(calls)
    inference.sliding_window_inference(scaled, IMAGE, 4.0, roi_size=ROI, sw_batch_size=4)
    assert len(calls) == traced


def test_progress_is_reported_after_every_window_batch_and_changes_nothing():
    seen = []
    windows = np.prod([len(inference.window_starts(s, r, 0.5)) for s, r in zip(IMAGE.shape[1:4], ROI)])
    batches = int(-(-IMAGE.shape[0] * windows // 3))
    out = inference.sliding_window_inference(pointwise, IMAGE, roi_size=ROI, sw_batch_size=3,
                                             progress=lambda done, total: seen.append((done, total)))
    jax.effects_barrier()
    assert sorted(seen) == [(i, batches) for i in range(1, batches + 1)]
    np.testing.assert_allclose(out, inference.sliding_window_inference(pointwise, IMAGE, roi_size=ROI,
                                                                      sw_batch_size=3), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(roi_size=(8, 8)), "roi_size"),
        (dict(sw_batch_size=0), "sw_batch_size"),
        (dict(overlap=1.0), "overlap"),
        (dict(mode="box"), "mode"),
        (dict(sigma_scale=0.0), "sigma_scale"),
        (dict(image=IMAGE[0]), "image"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = dict(image=IMAGE, roi_size=ROI, sw_batch_size=2) | kwargs
    with pytest.raises(ValueError, match=message):
        inference.sliding_window_inference(pointwise, kwargs.pop("image"), **kwargs)


# ----------------------------------------------------------------------------- TTA and ensembles


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_flip_tta(axis):
    # a pointwise network commutes with flips: TTA changes nothing
    np.testing.assert_allclose(inference.flip_tta(pointwise, axis)(IMAGE), pointwise(IMAGE), rtol=1e-6)
    # a conv does not: TTA averages it with its mirrored version
    expected = 0.5 * (conv(IMAGE) + jnp.flip(conv(jnp.flip(IMAGE, axis)), axis))
    np.testing.assert_allclose(inference.flip_tta(conv, axis)(IMAGE), expected, rtol=1e-5, atol=1e-6)
    # ... which is flip-equivariant
    tta = inference.flip_tta(conv, axis)
    np.testing.assert_allclose(tta(jnp.flip(IMAGE, axis)), jnp.flip(tta(IMAGE), axis), rtol=1e-5, atol=1e-5)


def test_flip_tta_is_hashable_by_value_and_checks_its_axis():
    assert inference.flip_tta(conv) == inference.flip_tta(conv, 1)
    assert hash(inference.flip_tta(conv)) == hash(inference.flip_tta(conv))
    assert inference.flip_tta(conv) != inference.flip_tta(conv, 2)
    with pytest.raises(ValueError, match="axis"):
        inference.flip_tta(conv, axis=4)


def test_ensemble_probabilities():
    logits = conv(IMAGE)
    np.testing.assert_allclose(inference.ensemble_probabilities([logits, logits, logits]),
                               jax.nn.softmax(logits, -1), rtol=1e-6)
    mixed = inference.ensemble_probabilities([logits, -logits])
    np.testing.assert_allclose(mixed, 0.5 * (jax.nn.softmax(logits, -1) + jax.nn.softmax(-logits, -1)), rtol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        inference.ensemble_probabilities([logits, logits[:1]])
    with pytest.raises(ValueError, match="at least one"):
        inference.ensemble_probabilities([])


def test_predict_volume_ensemble_of_identical_members_is_one_member():
    probs, labels = inference.predict_volume([pointwise, pointwise], IMAGE, roi_size=ROI, sw_batch_size=4)
    single, single_labels = inference.predict_volume(pointwise, IMAGE, roi_size=ROI, sw_batch_size=4)
    np.testing.assert_allclose(probs, single, rtol=1e-6)
    np.testing.assert_array_equal(labels, single_labels)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(labels, jnp.argmax(pointwise(IMAGE), -1))
    assert labels.dtype == jnp.int32


def test_predict_volume_with_member_args_and_tta():
    def scaled(x, scale):
        return conv(x) * scale

    probs, _ = inference.predict_volume([scaled, scaled], IMAGE, roi_size=ROI, sw_batch_size=4, tta=True,
                                        member_args=[(1.0,), (-1.0,)])
    members = [inference.sliding_window_inference(inference.flip_tta(scaled), IMAGE, s, roi_size=ROI, sw_batch_size=4)
               for s in (1.0, -1.0)]
    np.testing.assert_allclose(probs, inference.ensemble_probabilities(members), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="member_args"):
        inference.predict_volume([scaled, scaled], IMAGE, roi_size=ROI, member_args=[(1.0,)])
