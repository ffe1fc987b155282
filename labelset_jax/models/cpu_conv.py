r"""The CPU forms of the U-Net's convolutions (XLA:CPU), kept out of the model.

XLA:CPU runs 3-D convolutions, and above all the gradients of strided ones, in generic loops, but
hands 2-D convolutions to a library (YNNPACK). :func:`folded_conv_general_dilated` computes a
``k³`` convolution as one 2-D convolution over ``(H, W)`` with the depth folded into the batch: in
the forward pass of a depth-stride-1 convolution the ``k`` depth taps are its output channels
(summed over shifted depth slices afterwards), in the gradients and for depth strides they are
stacked on its input channels; a ``1³`` convolution is a matrix product, and for wide layers the
kernel gradient is a sum of matrix products. On CPU this makes a training step several
times faster (benchmarks/RESULTS.md); GPU libraries have 3-D convolutions, and there the model
keeps ``jax.lax.conv_general_dilated``. :func:`labelset_jax.models.create_model` is the one place
that chooses (``config.model.conv_impl``).

The result is a drop-in for ``nnx.Conv(conv_general_dilated=...)``: same parameters, same values
and gradients up to float rounding. One limit: the custom kernel gradient is a ``jax.custom_vjp``,
so forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) of a model built with it fails;
build the model with ``conv_impl="native"`` for that.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

DOTS_MIN_FEATURES = 24
"""The default ``dots_min_features``: from this many output channels on, the kernel gradient is
``k_h · k_w`` matrix products rather than XLA's transposed convolution (measured on CPU: 1.5-4×
faster for the reference U-Net's layers, slower for the narrow first levels of the small one)."""


@functools.lru_cache(maxsize=None)
def folded_conv(dots_min_features: int = DOTS_MIN_FEATURES) -> Callable[..., jax.Array]:
    """:func:`folded_conv_general_dilated` with its tuning constant bound: the ``conv`` argument of
    :class:`~labelset_jax.models.UNet3D`. The same object for the same constant (a model's graph
    definition, and so jit's cache, stays the same across builds)."""
    return functools.partial(folded_conv_general_dilated, dots_min_features=int(dots_min_features))


def folded_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                dimension_numbers=None, feature_group_count=1, precision=None, *,
                                dots_min_features: int = DOTS_MIN_FEATURES, **kwargs) -> jax.Array:
    r"""``jax.lax.conv_general_dilated`` for channels-last 3-D convolutions, computed as one 2-D
    convolution (drop-in for ``nnx.Conv(conv_general_dilated=...)``).

    With ``x [B, D, H, W, C]`` padded along ``D`` as the convolution pads it, a kernel
    ``w [k_d, k_h, k_w, C, F]`` and depth stride ``s``,

    .. math:: y[b, i] = \sum_{t < k_d} \mathrm{conv2d}_{(H, W)}\big(x[b, s i + t],\ w[t]\big)
              = \mathrm{conv2d}_{(H, W)}\big(\Vert_t\, x[b, s i + t],\ \Vert_t\, w[t]\big)

    (``Vert_t`` stacks along the channels): the depth taps become ``k_d · C`` input channels and
    the output depth joins the batch, so XLA sees a 2-D convolution (and its gradients, 2-D
    convolutions too). With depth stride 1 the forward pass uses the first form instead, with the
    taps as ``k_d · F`` output channels of one 2-D convolution over every padded depth slice,
    summed over the shifted slices (forward 1.2-2x faster on CPU); its gradients are the stacked
    form's. A ``1³`` kernel with stride 1 is a matrix product over the channels.
    Anything else (other ranks or layouts, dilations, feature groups) goes to
    ``jax.lax.conv_general_dilated`` unchanged. From ``dots_min_features`` output channels on, the
    kernel gradient is a sum of matrix products (``_conv2d``) rather than XLA's transposed
    convolution.

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> x = jax.random.normal(jax.random.key(0), (1, 6, 5, 4, 2))
    >>> w = jax.random.normal(jax.random.key(1), (3, 3, 3, 2, 3))
    >>> dn = ("NDHWC", "DHWIO", "NDHWC")
    >>> for stride in [(1, 1, 1), (2, 2, 2)]:
    ...     y = folded_conv_general_dilated(x, w, stride, "SAME", dimension_numbers=dn)
    ...     ref = jax.lax.conv_general_dilated(x, w, stride, "SAME", dimension_numbers=dn)
    ...     print(y.shape, np.allclose(y, ref, atol=1e-4))
    (1, 6, 5, 4, 3) True
    (1, 3, 3, 2, 3) True
    """
    def native():
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision, **kwargs)

    if lhs.ndim != 5:
        return native()
    dnums = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    channels_last = (dnums.lhs_spec == (0, 4, 1, 2, 3) and dnums.rhs_spec == (4, 3, 0, 1, 2)
                     and dnums.out_spec == (0, 4, 1, 2, 3))
    plain = (feature_group_count == 1 and all(d == 1 for d in (lhs_dilation or (1,)))
             and all(d == 1 for d in (rhs_dilation or (1,))) and not kwargs.get("preferred_element_type"))
    if not (channels_last and plain):
        return native()
    batch, depth, height, width, channels = lhs.shape
    k_d, k_h, k_w, _, features = rhs.shape
    strides = tuple(window_strides)
    pads = (jax.lax.padtype_to_pads(lhs.shape[1:4], rhs.shape[:3], strides, padding)
            if isinstance(padding, str) else [tuple(p) for p in padding])
    if rhs.shape[:3] == (1, 1, 1) and strides == (1, 1, 1) and all(p == (0, 0) for p in pads):
        y = jax.lax.dot_general(lhs, rhs.reshape(channels, features), (((4,), (0,)), ((), ())), precision=precision)
        return y
    pads = tuple(tuple(int(q) for q in p) for p in pads)
    if strides[0] == 1 and k_d > 1:
        return _taps_out(lhs, rhs, strides, pads, precision, int(dots_min_features))
    return _taps_in(lhs, rhs, strides, pads, precision, int(dots_min_features))


def _taps_in(x, w, strides, pads, precision, dots_min_features):
    """The depth taps stacked on the input channels: one 2-D convolution ``k_d·C → F``."""
    batch, _, height, width, channels = x.shape
    k_d, k_h, k_w, _, features = w.shape
    x = jnp.pad(x, [(0, 0), pads[0], (0, 0), (0, 0), (0, 0)])
    out_depth = (x.shape[1] - k_d) // strides[0] + 1
    taps = [jax.lax.slice_in_dim(x, t, t + strides[0] * (out_depth - 1) + 1, strides[0], axis=1) for t in range(k_d)]
    x = jnp.concatenate(taps, axis=-1) if k_d > 1 else taps[0]
    x = x.reshape(batch * out_depth, height, width, k_d * channels)
    kernel = jnp.moveaxis(w, 0, 2).reshape(k_h, k_w, k_d * channels, features)
    y = _conv2d(x, kernel, strides[1:], pads[1:], precision, dots_min_features)
    return y.reshape(batch, out_depth, *y.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _taps_out(x, w, strides, pads, precision, dots_min_features):
    r"""Depth stride 1, forward: the depth taps as output channels. One 2-D convolution ``C → k_d·F``
    over every padded depth slice gives ``z[b, d, t] = conv2d(x̃[b, d], w[t])``, and
    ``y[b, i] = Σ_t z[b, i + t, t]``. Forward 1.2-2x faster on CPU than :func:`_taps_in` (it
    writes ``k_d·F`` channels instead of copying ``k_d·C``); the gradients are :func:`_taps_in`'s,
    faster than this form's own in the wide layers (benchmarks/RESULTS.md)."""
    batch, _, height, width, channels = x.shape
    k_d, k_h, k_w, _, features = w.shape
    x = jnp.pad(x, [(0, 0), pads[0], (0, 0), (0, 0), (0, 0)])
    padded_depth = x.shape[1]
    out_depth = padded_depth - k_d + 1
    kernel = jnp.moveaxis(w, 0, 3).reshape(k_h, k_w, channels, k_d * features)
    z = _conv2d_nhwc(x.reshape(batch * padded_depth, height, width, channels), kernel, strides[1:], pads[1:], precision)
    z = z.reshape(batch, padded_depth, *z.shape[1:3], k_d, features)
    return functools.reduce(jnp.add, [z[:, t:t + out_depth, :, :, t] for t in range(k_d)])


def _taps_out_fwd(x, w, strides, pads, precision, dots_min_features):
    return _taps_out(x, w, strides, pads, precision, dots_min_features), (x, w)


def _taps_out_bwd(strides, pads, precision, dots_min_features, residuals, g):
    _, vjp = jax.vjp(lambda x, w: _taps_in(x, w, strides, pads, precision, dots_min_features), *residuals)
    return vjp(g)


_taps_out.defvjp(_taps_out_fwd, _taps_out_bwd)


def _conv2d_nhwc(x, kernel, strides, pads, precision):
    return jax.lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv2d(x, kernel, strides, pads, precision, dots_min_features):
    r"""A 2-D channels-last convolution whose kernel gradient, for wide layers, is a sum of matrix
    products over the shifted inputs: with ``x̃`` the padded input and ``g`` the output gradient,

    .. math:: \partial w[i, j] = \sum_{n, h, w} \tilde x[n, s_h h + i, s_w w + j]^\top\, g[n, h, w]

    (XLA writes it as a convolution with the whole image as its window, which its CPU backend
    runs several times slower for these shapes)."""
    return _conv2d_nhwc(x, kernel, strides, pads, precision)


def _conv2d_fwd(x, kernel, strides, pads, precision, dots_min_features):
    return _conv2d_nhwc(x, kernel, strides, pads, precision), (x, kernel)


def _conv2d_bwd(strides, pads, precision, dots_min_features, residuals, g):
    x, kernel = residuals
    if kernel.shape[-1] < dots_min_features:
        _, vjp = jax.vjp(lambda x, k: _conv2d_nhwc(x, k, strides, pads, precision), x, kernel)
        return vjp(g)
    _, vjp_x = jax.vjp(lambda x: _conv2d_nhwc(x, kernel, strides, pads, precision), x)
    (dx,) = vjp_x(g)
    k_h, k_w, channels, features = kernel.shape
    n, out_h, out_w, _ = g.shape
    span = (strides[0] * (out_h - 1) + 1, strides[1] * (out_w - 1) + 1)
    # Materialised once: otherwise XLA fuses the padding (and the depth folding before it) into
    # each shifted slice below, recomputing them with per-element index arithmetic.
    padded = jax.lax.optimization_barrier(jnp.pad(x, [(0, 0), pads[0], pads[1], (0, 0)]))
    g = g.reshape(-1, features)

    def tap(_, offset):  # one shifted input at a time (a scan, not k_h · k_w live copies)
        shifted = jax.lax.dynamic_slice(padded, (0, offset[0], offset[1], 0), (n, *span, channels))
        shifted = shifted[:, ::strides[0], ::strides[1]].reshape(-1, channels)
        return None, jax.lax.dot_general(shifted, g, (((0,), (0,)), ((), ())), precision=precision,
                                         preferred_element_type=jnp.float32)

    offsets = jnp.array([(i, j) for i in range(k_h) for j in range(k_w)], jnp.int32)
    _, taps = jax.lax.scan(tap, None, offsets)
    dkernel = taps.reshape(k_h, k_w, channels, features).astype(kernel.dtype)
    return dx, dkernel


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
