"""Tests of the 3D U-Net (`labelset_jax.models.unet3d`): shapes and dtypes, parameter counts,
training sanity, rematerialisation, the functional split/merge + jit style, argument checks.

All models here are tiny (<= 3 levels, <= 16 features, 8³ inputs) so the file runs in seconds on
a CPU; the reference U-Net is only built abstractly (``nnx.eval_shape``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from labelset_jax.models import UNet3D, conv_for, count_params, create_model, reference_unet, small_unet
from labelset_jax.models.cpu_conv import DOTS_MIN_FEATURES, folded_conv, folded_conv_general_dilated
from labelset_jax.models.unet3d import ConvBlock, lecun_normal, max_pool_2


def tiny(**overrides) -> UNet3D:
    kw = dict(num_classes=3, in_channels=1, num_levels=2, base_features=4, max_features=8, rngs=nnx.Rngs(0))
    kw.update(overrides)
    return UNet3D(**kw)


def forward(model: UNet3D, x: jax.Array):
    """The model under ``jax.jit`` in the functional style the training loop uses."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)


def expected_params(*, num_classes, in_channels, features, upsample="trilinear", norm="instance",
                    deep_supervision=False) -> int:
    """Closed-form parameter count of a `UNet3D` (independent of the implementation)."""
    def block(cin, cout):  # conv 3³ (bias only without norm) + norm scale and bias
        return 27 * cin * cout + (cout if norm == "none" else 2 * cout)

    total = 0
    for level, f in enumerate(features):
        cin = in_channels if level == 0 else features[level - 1]
        total += block(cin, f) + block(f, f)
    for fine, coarse in zip(features[:-1], features[1:]):
        total += (coarse * fine if upsample == "trilinear" else 8 * coarse * fine) + fine  # upsampling
        total += block(2 * fine, fine) + block(fine, fine)  # decoder stage
    heads = features[:max(len(features) - 1, 1)] if deep_supervision else features[:1]
    total += sum(f * num_classes + num_classes for f in heads)
    return total


# --- shapes and dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    dict(),
    dict(upsample="transpose"),
    dict(norm="group", activation="relu"),
    dict(norm="none", activation="gelu", upsample="transpose"),
    dict(num_levels=3, in_channels=2, num_classes=5, max_features=8),
    dict(num_levels=1),
    dict(downsample="stride"),
    dict(downsample="stride", conv=conv_for("native")),
])
def test_output_shape_and_dtype(config):
    model = tiny(**config)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8, model.in_channels))
    y = forward(model, x)
    assert y.shape == (2, 8, 8, 8, model.num_classes)
    assert y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))


def test_non_cubic_input():
    model = tiny(num_levels=3)
    assert forward(model, jnp.ones((1, 4, 8, 12, 1))).shape == (1, 4, 8, 12, 3)


@pytest.mark.parametrize("num_levels, sizes", [(3, [8, 4]), (2, [8]), (1, [8])])
def test_deep_supervision_shapes(num_levels, sizes):
    model = tiny(num_levels=num_levels, deep_supervision=True)
    x = jnp.ones((2, 8, 8, 8, 1))
    ys = forward(model, x)
    assert isinstance(ys, tuple)
    assert [y.shape for y in ys] == [(2, s, s, s, 3) for s in sizes]  # highest resolution first
    assert all(y.dtype == jnp.float32 for y in ys)


def test_deep_supervision_main_head_matches_plain_model():
    """The first deep-supervision output is the plain model's output (same parameters)."""
    plain = tiny(num_levels=3)
    supervised = tiny(num_levels=3, deep_supervision=True)
    nnx.update(supervised, nnx.state(plain))  # plain's parameters are a subset of supervised's
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8, 1))
    np.testing.assert_allclose(forward(supervised, x)[0], forward(plain, x), rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_float32_params_and_output():
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8, 1))
    model16 = tiny(dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(model16, nnx.Param))
    assert params and all(p.dtype == jnp.float32 for p in params)
    y16 = forward(model16, x)
    assert y16.dtype == jnp.float32
    # Same seed, so the same parameters: bf16 compute is close to float32 compute.
    y32 = forward(tiny(), x)
    assert float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32)) < 0.05


def test_deep_supervision_bfloat16_outputs_are_float32():
    ys = forward(tiny(deep_supervision=True, num_levels=3, dtype="bfloat16"), jnp.ones((1, 8, 8, 8, 1)))
    assert [y.dtype for y in ys] == [jnp.float32, jnp.float32]


# --- normalisation --------------------------------------------------------------------------


def test_instance_norm_normalises_each_sample_and_channel():
    block = ConvBlock(1, 4, stride=1, norm="instance", activation="relu", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = 3.0 + 5.0 * jax.random.normal(jax.random.key(1), (2, 6, 6, 6, 4))
    y = block.norm(x)  # scale 1, bias 0 at initialisation
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / jnp.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
    assert block.norm.epsilon == 1e-5 and block.norm.dtype == jnp.float32


def test_kernel_init_is_flax_default():
    key = jax.random.key(3)
    for shape in [(1, 1, 1, 4, 3), (5, 7)]:
        np.testing.assert_array_equal(lecun_normal(key, shape), jax.nn.initializers.lecun_normal()(key, shape))


def test_group_counts():
    model = nnx.eval_shape(lambda: tiny(norm="group", base_features=30, max_features=60))
    assert model.encoder[0].first.norm.num_groups == 6  # largest divisor of 30 that is <= 8
    assert model.encoder[1].first.norm.num_groups == 6  # of 60
    assert tiny().encoder[1].first.norm.num_groups == 8  # instance norm: one group per channel
    assert tiny(norm="none").encoder[0].first.norm is None


# --- downsampling and convolution formulations ---------------------------------------------


def test_max_pool_2_is_the_2x2x2_window_maximum():
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 8, 3))
    expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 2, 1), (1, 2, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(max_pool_2(x), expected)


def test_downsampling_modes_same_parameters_different_functions():
    pool, stride = tiny(num_levels=3), tiny(num_levels=3, downsample="stride")
    assert pool.downsample == "maxpool" and stride.downsample == "stride"
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
    assert shapes(pool) == shapes(stride)
    nnx.update(stride, nnx.state(pool))
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8, 1))
    assert not np.allclose(forward(pool, x), forward(stride, x), atol=1e-3)


@pytest.mark.parametrize("features", [4, DOTS_MIN_FEATURES])  # both kernel-gradient paths
@pytest.mark.parametrize("stride, padding, shape", [
    (1, "SAME", (2, 6, 5, 4, 3)),
    (2, ((1, 1), (1, 1), (1, 1)), (1, 8, 6, 4, 2)),
    (2, "SAME", (1, 7, 6, 5, 2)),
    (1, ((0, 2), (1, 0), (2, 1)), (1, 5, 5, 5, 2)),
])
def test_folded_convolution_matches_xla(stride, padding, shape, features):
    """Values and both gradients of the folded form against ``lax.conv_general_dilated``."""
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, shape[-1], features))
    dn = ("NDHWC", "DHWIO", "NDHWC")

    def loss(conv, x, w):
        y = conv(x, w, (stride,) * 3, padding, dimension_numbers=dn)
        return jnp.sum(jnp.sin(y)), y

    (_, y), grads = jax.value_and_grad(lambda *a: loss(folded_conv_general_dilated, *a), (0, 1), has_aux=True)(x, w)
    (_, y_ref), grads_ref = jax.value_and_grad(lambda *a: loss(jax.lax.conv_general_dilated, *a), (0, 1),
                                               has_aux=True)(x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_folded_convolution_1x1x1_and_fallbacks():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 4, 6))
    dn = ("NDHWC", "DHWIO", "NDHWC")
    for w_shape, kw in [((1, 1, 1, 6, 5), {}), ((3, 3, 3, 3, 4), dict(feature_group_count=2)),
                        ((3, 3, 3, 6, 5), dict(rhs_dilation=(2, 2, 2)))]:
        w = jax.random.normal(jax.random.key(1), w_shape)
        y = folded_conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=dn, **kw)
        ref = jax.lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=dn, **kw)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [
    dict(),
    dict(downsample="stride", upsample="transpose", norm="none", deep_supervision=True, num_levels=3),
    dict(base_features=DOTS_MIN_FEATURES, max_features=32),
])
def test_convolution_forms_same_outputs_and_gradients(config):
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8, 1))
    labels = jnp.zeros((2, 8, 8, 8), jnp.int32)
    results = []
    # native; folded (this backend's auto) with its default constant; folded with every kernel
    # gradient as matrix products
    for conv in (jax.lax.conv_general_dilated, conv_for("auto", backend="cpu"), folded_conv(1)):
        model = tiny(conv=conv, **config)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            out = nnx.merge(graphdef, p, rest)(x)
            return cross_entropy(out[0] if isinstance(out, tuple) else out, labels)

        results.append(jax.jit(jax.value_and_grad(loss))(params))
    (loss_n, grads_n) = results[0]
    for loss_i, grads_i in results[1:]:
        np.testing.assert_allclose(loss_i, loss_n, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads_i, grads_n)


# --- parameter counts -----------------------------------------------------------------------


def test_reference_unet_parameter_count():
    model = nnx.eval_shape(lambda: reference_unet(rngs=nnx.Rngs(0)))  # abstract: nothing allocated
    assert model.features == (30, 60, 120, 240, 320)
    assert model.downsample == "maxpool"  # the paper's U-Net
    assert count_params(model) == 14_242_019
    assert count_params(model) == expected_params(num_classes=9, in_channels=1, features=model.features)
    transpose = nnx.eval_shape(lambda: reference_unet(rngs=nnx.Rngs(0), upsample="transpose"))
    assert count_params(transpose) == 15_044_219


def test_small_unet_parameter_count():
    model = nnx.eval_shape(lambda: small_unet(9, rngs=nnx.Rngs(0)))
    assert model.features == (8, 16, 32, 64)
    assert count_params(model) == 332_065
    assert count_params(model) == expected_params(num_classes=9, in_channels=1, features=model.features)


@pytest.mark.parametrize("config", [
    dict(),
    dict(downsample="stride"),
    dict(upsample="transpose", norm="none"),
    dict(num_levels=3, deep_supervision=True, in_channels=2),
    dict(num_levels=1, deep_supervision=True),
])
def test_parameter_count_formula(config):
    model = tiny(**config)
    assert count_params(model) == expected_params(
        num_classes=3, in_channels=config.get("in_channels", 1), features=model.features,
        upsample=config.get("upsample", "trilinear"), norm=config.get("norm", "instance"),
        deep_supervision=config.get("deep_supervision", False))


# --- training -------------------------------------------------------------------------------


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_adam_steps_reduce_loss():
    """Functional training steps (``nnx.split`` + ``jax.jit`` + optax), as in the training loop."""
    model = tiny()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8, 1))
    labels = (x[..., 0] > 0).astype(jnp.int32) + (x[..., 0] > 1).astype(jnp.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-2)

    def loss_fn(params):
        return cross_entropy(nnx.merge(graphdef, params, rest)(x), labels)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(8):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


def test_remat_same_outputs_and_gradients():
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8, 1))
    labels = jnp.zeros((1, 8, 8, 8), jnp.int32)

    def loss_and_grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        fn = jax.value_and_grad(lambda p: cross_entropy(nnx.merge(graphdef, p, rest)(x), labels))
        return jax.jit(fn)(params), jax.make_jaxpr(fn)(params)

    (loss, grads), jaxpr = loss_and_grads(tiny())
    (loss_r, grads_r), jaxpr_r = loss_and_grads(tiny(remat=True))
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads_r, grads)
    # The remat primitive ("remat2" in jax 0.10, "checkpoint" in its printed form in some versions).
    is_remat = lambda jaxpr: any(name in str(jaxpr) for name in ("remat", "checkpoint"))
    assert is_remat(jaxpr_r) and not is_remat(jaxpr)


# --- jit styles -----------------------------------------------------------------------------


def test_functional_jit_and_nnx_jit_match_eager():
    model = tiny(num_levels=3, deep_supervision=True)
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8, 1))
    eager = model(x)
    graphdef, state = nnx.split(model)
    functional = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)
    transformed = nnx.jit(lambda model, x: model(x))(model, x)
    for a, b, c in zip(eager, functional, transformed, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)


# --- argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, field", [
    (dict(num_classes=0), "num_classes"),
    (dict(in_channels=0), "in_channels"),
    (dict(num_levels=0), "num_levels"),
    (dict(num_levels=2.5), "num_levels"),
    (dict(num_levels=True), "num_levels"),
    (dict(base_features=0), "base_features"),
    (dict(max_features=2), "max_features"),
    (dict(norm="batch"), "norm"),
    (dict(activation="tanh"), "activation"),
    (dict(upsample="nearest"), "upsample"),
    (dict(downsample="avgpool"), "downsample"),
    (dict(conv="fft"), "conv"),
    (dict(deep_supervision="yes"), "deep_supervision"),
    (dict(remat=None), "remat"),
    (dict(dtype=jnp.int32), "dtype"),
    (dict(dtype="not_a_dtype"), "dtype"),
])
def test_invalid_arguments(overrides, field):
    with pytest.raises(ValueError, match=field) as info:
        tiny(**overrides)
    bad = next(iter(overrides.values()))
    if not isinstance(bad, type):
        assert repr(bad) in str(info.value) or str(bad) in str(info.value)


def test_wrong_spatial_size():
    model = tiny(num_levels=3)  # sizes must be divisible by 4
    with pytest.raises(ValueError, match=r"\(1, 8, 6, 8, 1\) must be divisible by 4 = 2\^\(num_levels-1\)"):
        model(jnp.zeros((1, 8, 6, 8, 1)))


@pytest.mark.parametrize("shape, message", [
    ((8, 8, 8, 1), "5-D"),
    ((1, 8, 8, 8, 2), "in_channels=1"),
])
def test_wrong_rank_or_channels(shape, message):
    with pytest.raises(ValueError, match=message):
        tiny()(jnp.zeros(shape))


# --- presets and config ---------------------------------------------------------------------


def test_presets_accept_overrides():
    model = small_unet(4, rngs=nnx.Rngs(0), num_levels=2, max_features=16, upsample="transpose")
    assert model.features == (8, 16) and model.num_classes == 4
    assert forward(model, jnp.zeros((1, 8, 8, 8, 1))).shape == (1, 8, 8, 8, 4)


def test_create_model_from_config():
    config = ml_collections.ConfigDict(dict(preset="reference", num_levels=3, dtype="bfloat16"))
    model = nnx.eval_shape(lambda: create_model(config, num_classes=2, rngs=nnx.Rngs(0)))
    assert model.features == (30, 60, 120) and model.dtype == jnp.bfloat16 and model.num_classes == 2
    with pytest.raises(ValueError, match="preset"):
        create_model(ml_collections.ConfigDict(dict(preset="huge")), num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dtype"):
        create_model(ml_collections.ConfigDict(dict(dtype="float99")), num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="config.model.conv_impl"):
        create_model(ml_collections.ConfigDict(dict(conv_impl="fft")), num_classes=2, rngs=nnx.Rngs(0))


def test_the_builder_picks_the_convolution_form_per_backend():
    """The CPU form only on CPU (or when asked for); a model holds no backend test of its own."""
    assert conv_for("auto", backend="gpu") is jax.lax.conv_general_dilated
    assert conv_for("auto", backend="tpu") is jax.lax.conv_general_dilated
    assert conv_for("auto", backend="cpu") is folded_conv(DOTS_MIN_FEATURES) is conv_for("folded")
    assert conv_for("native", backend="cpu") is jax.lax.conv_general_dilated
    assert conv_for("folded", dots_min_features=8).keywords == {"dots_min_features": 8}
    config = ml_collections.ConfigDict(dict(num_levels=2, base_features=4, max_features=8, conv_impl="native"))
    model = create_model(config, num_classes=2, rngs=nnx.Rngs(0))
    assert model.encoder[0].first.conv.conv_general_dilated is jax.lax.conv_general_dilated
    config.conv_impl, config.dots_min_features = "folded", 8
    model = create_model(config, num_classes=2, rngs=nnx.Rngs(0))
    assert model.encoder[0].first.conv.conv_general_dilated is folded_conv(8)


def test_the_native_model_supports_forward_mode_differentiation():
    model = tiny(conv=conv_for("native"))
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 8, 1))
    _, tangent = jax.jvp(lambda x: model(x), (x,), (jnp.ones_like(x),))
    assert tangent.shape == (1, 8, 8, 8, 3) and bool(jnp.isfinite(tangent).all())
