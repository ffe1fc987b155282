"""The Dice core's fast paths: unrolled channel reductions and the closed-form VJP in every mode."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses import _common
from labelset_jax.losses import dice as dice_module

SPACE = LabelSpace.from_superset_map(5, {5: [3, 4], 6: [1, 2, 3, 4], 7: [0, 1, 2, 3, 4]})


def case(seed, shape):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=shape + (SPACE.num_classes,)).astype(np.float32)
    labels = rng.integers(0, SPACE.num_ids, size=shape).astype(np.int32)
    return logits, labels


def test_channel_reductions_match_jnp():
    x = jnp.asarray(np.random.default_rng(0).normal(scale=50.0, size=(3, 7, 5)), jnp.float32)
    np.testing.assert_allclose(_common.channel_sum(x), jnp.sum(x, -1, keepdims=True), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(_common.channel_logsumexp(x), jax.nn.logsumexp(x, -1, keepdims=True), rtol=1e-6)
    big = jnp.array([[1e4, -1e4, 0.0]])
    assert np.isfinite(_common.channel_logsumexp(big)).all()


MODES = [("softmax", "onehot"), ("softmax", "leaf"), ("marginal", "uniform"), ("softmax", "uniform")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("squared,generalized,include_background,batch_dice",
                         list(itertools.product([True, False], [False, True], [True, False], [False, True])))
def test_closed_form_vjp_matches_autodiff(mode, squared, generalized, include_background, batch_dice):
    prediction, target = mode
    shape = (2, 3, 4) if batch_dice else (2, 5)  # two spatial ranks
    logits, labels = case(1, shape)
    if target == "onehot":
        labels = np.minimum(labels, SPACE.num_classes - 1)
    spec = dice_module._DiceSpec(space=SPACE, prediction=prediction, target=target, squared=squared,
                                 include_background=include_background, batch_dice=batch_dice,
                                 generalized=generalized,
                                 class_weights=None if generalized else (1.0, 2.0, 0.5, 1.0, 3.0))
    weights = jnp.array([1.0, 3.0])

    def plain(z):
        sums = dice_module._class_sums(*dice_module._voxel_maps(z, labels, spec), spec)
        return jnp.sum(dice_module._loss_from_sums(*sums, spec, 2) * weights)

    def custom(z):
        return jnp.sum(dice_module._dice_core(z, labels, spec) * weights)

    np.testing.assert_allclose(custom(logits), plain(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.grad(custom)(logits), jax.grad(plain)(logits), rtol=1e-4, atol=1e-6)


def test_closed_form_vjp_bf16_and_vmap():
    logits, labels = case(2, (2, 4, 3))
    spec = dice_module._DiceSpec(space=SPACE, prediction="marginal", target="uniform")
    z16 = jnp.asarray(logits, jnp.bfloat16)
    grads = jax.grad(lambda z: jnp.sum(dice_module._dice_core(z, labels, spec)))(z16)
    assert grads.dtype == jnp.bfloat16 and np.isfinite(np.asarray(grads, np.float32)).all()
    per_sample = jax.vmap(lambda z, g: dice_module._dice_core(z[None], g[None], spec)[0])(logits, labels)
    np.testing.assert_allclose(per_sample, dice_module._dice_core(logits, labels, spec), rtol=1e-5)


def test_sums_by_id_matches_float64_on_a_large_volume():
    rng = np.random.default_rng(3)
    n = 3 * dice_module._ID_CHUNK + 17  # a partial last chunk
    values = rng.uniform(size=(2, n)).astype(np.float32)
    labels = rng.integers(-1, SPACE.num_ids + 1, size=(2, n)).astype(np.int32)  # out-of-range ids dropped
    got = dice_module._sums_by_id(jnp.asarray(values), jnp.asarray(labels), SPACE.num_ids)
    want = np.stack([[values[b][labels[b] == k].astype(np.float64).sum() for k in range(SPACE.num_ids)]
                     for b in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_leaf_path_equals_generic_path_at_96_cubed_scale():
    """The leaf-target path (sums grouped by label id) against the per-voxel maps on 64³ voxels."""
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(scale=3.0, size=(1, 64, 64, 64, SPACE.num_classes)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, SPACE.num_ids, size=(1, 64, 64, 64)), jnp.int32)
    spec = dice_module._DiceSpec(space=SPACE, prediction="softmax", target="leaf")
    sums = dice_module._class_sums(*dice_module._voxel_maps(logits, labels, spec), spec)
    plain = jax.value_and_grad(lambda z: jnp.sum(dice_module._loss_from_sums(
        *dice_module._class_sums(*dice_module._voxel_maps(z, labels, spec), spec), spec, 1)))
    custom = jax.value_and_grad(lambda z: jnp.sum(dice_module._dice_core(z, labels, spec)))
    (v0, g0), (v1, g1) = plain(logits), custom(logits)
    assert sums[0].shape == (1, SPACE.num_classes)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    np.testing.assert_allclose(g1, g0, rtol=1e-3, atol=1e-9)
