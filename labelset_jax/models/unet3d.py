"""A channels-last 3D U-Net in ``flax.nnx``.

The reference architecture of the label-set study (Fidon et al., MICCAI 2021, see
docs/theory.md §4) is a 3D U-Net, which :class:`UNet3D` implements with a few switches:

* ``num_levels`` resolution levels with ``min(base_features · 2^l, max_features)`` features at
  level ``l`` (30, 60, 120, 240, 320 for the reference);
* every level of the encoder is a *stage* of two blocks ``conv 3³ → norm → activation``;
  levels ``l >= 1`` first halve the resolution, either by ``2³`` max pooling before the stage
  (``downsample="maxpool"``, the U-Net of the paper) or by giving the stage's first convolution
  stride 2 (``downsample="stride"``, as in nnU-Net); the two have the same parameters. The
  coarsest level sees the input at ``1/2^(num_levels-1)`` of its size;
* the decoder upsamples ×2 either by trilinear interpolation followed by a ``1³`` convolution to
  the skip level's width (``upsample="trilinear"``, the reference) or by a ``2³`` stride-2
  transposed convolution (``upsample="transpose"``), concatenates the skip connection
  (``[skip, upsampled]`` along channels) and applies a stage of two blocks;
* a ``1³`` convolution head gives the logits. With ``deep_supervision=True`` every decoder level
  has its own head, and the model returns one logits array per decoder level.

Normalisation is instance norm by default (per sample and channel over the spatial axes, with a
learnable scale and bias, ``eps = 1e-5``), implemented as ``nnx.GroupNorm`` with one group per
channel. The convolutions followed by a normalisation have no bias (it would be cancelled by the
mean subtraction); with ``norm="none"`` they do.

Initialisation: flax's defaults (LeCun truncated normal kernels, zero biases, unit norm scales),
with the kernel draw made on the flat array (:func:`lecun_normal`: same values, much faster to
compile on CPU).

Precision: parameters are always float32; ``dtype`` sets the computation type (e.g.
``jnp.bfloat16``). Normalisation statistics are computed in float32 whatever ``dtype`` is, and the
output logits are always float32.

Convolutions: every ``nnx.Conv`` of the model calls ``conv`` (a ``jax.lax.conv_general_dilated``
drop-in, the default); the model builder (:func:`labelset_jax.models.create_model`) passes the CPU
form of :mod:`labelset_jax.models.cpu_conv` on CPU. Parameters and results do not depend on it.

Memory: ``remat=True`` rematerialises each stage (its two conv blocks) in the backward pass with
``nnx.remat``, so only the stage inputs are kept for the backward pass. Outputs and gradients are
unchanged.

Spatial sizes: each of ``D, H, W`` must be divisible by ``2^(num_levels-1)`` (checked when the
model is called, with a ``ValueError``).

Parameter counts (``count_params``, the same for both ``downsample`` modes):
:func:`reference_unet` with 9 classes has 14,242,019 parameters (15,044,219 with
``upsample="transpose"``); :func:`small_unet` with 9 classes has 332,065.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.01),
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
}
"""The activations by name; ``"leaky_relu"`` has negative slope 0.01 (nnU-Net)."""

NORMS = ("instance", "group", "none")
"""The normalisations: instance norm, group norm (up to 8 groups), or none."""

UPSAMPLES = ("trilinear", "transpose")
"""The ×2 upsampling modes of the decoder."""

DOWNSAMPLES = ("maxpool", "stride")
"""The ×½ downsampling modes of the encoder: ``2³`` max pooling, or stride 2 in the first conv."""

GROUP_NORM_GROUPS = 8
"""Groups of ``norm="group"``: the largest divisor of the width that is at most this."""


def lecun_normal(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
    """Flax's default kernel initialiser, ``jax.nn.initializers.lecun_normal()`` (truncated normal,
    variance ``1 / fan_in`` with ``fan_in = prod(shape[:-1])`` for ``[..., in, out]`` kernels), with
    the random draw made on the flattened kernel.

    The values are bitwise those of ``lecun_normal()`` (the threefry counters are the row-major
    element indices either way), but with jax's default partitionable threefry, XLA on CPU takes
    seconds to compile the draw for each 5-D kernel shape and ~0.1 s for a flat one: building the
    reference U-Net goes from ~30 s to a few seconds.
    """
    fan_in = math.prod(shape[:-1])
    # 0.8796... is the standard deviation of a standard normal truncated to (-2, 2).
    stddev = jnp.sqrt(jnp.array(1.0 / fan_in, dtype)) / jnp.array(0.87962566103423978, dtype)
    flat = jax.random.truncated_normal(key, -2, 2, (math.prod(shape),), dtype)
    return (flat * stddev).reshape(shape)


def max_pool_2(x: jax.Array) -> jax.Array:
    """``2³`` max pooling with stride 2 of ``[B, D, H, W, C]`` (even ``D, H, W``).

    Written as a reshape and a maximum over the window axes, so that the gradient is an
    elementwise mask (XLA fuses it) rather than a ``select_and_scatter``; a window with tied
    maxima shares the gradient equally among them.

    >>> import jax.numpy as jnp
    >>> max_pool_2(jnp.arange(8.0).reshape(1, 2, 2, 2, 1)).ravel().tolist()
    [7.0]
    """
    b, d, h, w, c = x.shape
    return x.reshape(b, d // 2, 2, h // 2, 2, w // 2, 2, c).max(axis=(2, 4, 6))


def _num_groups(norm: str, features: int) -> int:
    """Channel groups of the normalisation of a ``features``-wide layer."""
    if norm == "instance":
        return features
    groups = min(GROUP_NORM_GROUPS, features)
    while features % groups:
        groups -= 1
    return groups


class ConvBlock(nnx.Module):
    """``conv 3³ (stride 1 or 2, one voxel of zero padding per side) → norm → activation``.

    The padding keeps the size at stride 1 and halves even sizes at stride 2, with output voxel
    ``i`` centred on input voxel ``2i`` (as PyTorch's ``padding=1``).
    """

    def __init__(self, in_features: int, out_features: int, *, stride: int, norm: str, activation: str,
                 dtype: jnp.dtype, rngs: nnx.Rngs, conv: Callable = jax.lax.conv_general_dilated):
        self.conv = nnx.Conv(in_features, out_features, (3, 3, 3), strides=stride, padding=1,
                             use_bias=norm == "none", kernel_init=lecun_normal, dtype=dtype,
                             param_dtype=jnp.float32, conv_general_dilated=conv, rngs=rngs)
        if norm == "none":
            self.norm = None
        else:
            # Statistics in float32 (``dtype``), two-pass variance for accuracy on large volumes.
            self.norm = nnx.GroupNorm(out_features, num_groups=_num_groups(norm, out_features), epsilon=1e-5,
                                      use_fast_variance=False, dtype=jnp.float32, param_dtype=jnp.float32,
                                      rngs=rngs)
        self.activation = activation
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x.astype(jnp.float32)).astype(self.dtype)
        return ACTIVATIONS[self.activation](x)


def _stage_forward(stage: Stage, x: jax.Array) -> jax.Array:
    """The two blocks of a stage (a function of the module, so that ``nnx.remat`` can wrap it)."""
    return stage.second(stage.first(x))


_stage_forward_remat = nnx.remat(_stage_forward)


class Stage(nnx.Module):
    """Two conv blocks at one resolution level. ``downsample`` halves the resolution first:
    ``"maxpool"`` (``2³`` max pooling before the blocks), ``"stride"`` (the first conv has
    stride 2) or ``None``."""

    def __init__(self, in_features: int, out_features: int, *, downsample: str | None, norm: str,
                 activation: str, dtype: jnp.dtype, remat: bool, conv: Callable, rngs: nnx.Rngs):
        kw = dict(norm=norm, activation=activation, dtype=dtype, conv=conv, rngs=rngs)
        self.first = ConvBlock(in_features, out_features, stride=2 if downsample == "stride" else 1, **kw)
        self.second = ConvBlock(out_features, out_features, stride=1, **kw)
        self.pool = downsample == "maxpool"
        self.remat = remat

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool:
            x = max_pool_2(x)
        return (_stage_forward_remat if self.remat else _stage_forward)(self, x)


class Upsample(nnx.Module):
    """×2 upsampling to ``out_features`` channels.

    ``"trilinear"``: linear interpolation along each spatial axis with half-pixel centres
    (PyTorch's ``align_corners=False``), then a ``1³`` convolution; ``"transpose"``: a ``2³``
    transposed convolution with stride 2.
    """

    def __init__(self, in_features: int, out_features: int, *, mode: str, dtype: jnp.dtype, conv: Callable,
                 rngs: nnx.Rngs):
        self.mode = mode
        if mode == "trilinear":
            self.proj = nnx.Conv(in_features, out_features, (1, 1, 1), kernel_init=lecun_normal, dtype=dtype,
                                 param_dtype=jnp.float32, conv_general_dilated=conv, rngs=rngs)
        else:
            self.proj = nnx.ConvTranspose(in_features, out_features, (2, 2, 2), strides=2,
                                          kernel_init=lecun_normal, dtype=dtype, param_dtype=jnp.float32,
                                          rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mode == "trilinear":
            batch, d, h, w, c = x.shape
            x = jax.image.resize(x, (batch, 2 * d, 2 * h, 2 * w, c), method="trilinear")
        return self.proj(x)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


class UNet3D(nnx.Module):
    """3D U-Net: ``[B, D, H, W, in_channels] -> [B, D, H, W, num_classes]`` float32 logits.

    See the module docstring for the architecture. ``D, H, W`` must be divisible by
    ``2^(num_levels-1)``.

    Args:
      num_classes: output channels (the leaf labels).
      in_channels: input channels.
      num_levels: resolution levels (``>= 1``; 1 is a plain two-block CNN without downsampling).
      base_features: features of the first (finest) level; level ``l`` has
        ``min(base_features · 2^l, max_features)``.
      max_features: cap on the features of any level (``>= base_features``).
      norm: ``"instance"`` (default), ``"group"`` (the largest divisor of the width up to 8
        groups) or ``"none"``.
      activation: ``"leaky_relu"`` (negative slope 0.01, default), ``"relu"`` or ``"gelu"``.
      upsample: ``"trilinear"`` (interpolation + ``1³`` conv, the reference, default) or
        ``"transpose"`` (stride-2 transposed conv).
      downsample: ``"maxpool"`` (``2³`` max pooling before the stage, the reference, default)
        or ``"stride"`` (stride 2 in the stage's first conv); same parameters.
      conv: the ``jax.lax.conv_general_dilated`` of every convolution (default: that function);
        :func:`labelset_jax.models.create_model` passes the CPU form on CPU
        (:mod:`labelset_jax.models.cpu_conv`). Same parameters and results.
      deep_supervision: add a logits head to every decoder level (see Returns).
      remat: rematerialise each stage in the backward pass (less memory, same results).
      dtype: computation dtype, a floating type (parameters are always float32).
      rngs: ``nnx.Rngs`` for the initialisation.

    Returns (``__call__``):
      Without deep supervision, the float32 logits ``[B, D, H, W, num_classes]``. With it, a tuple
      of ``max(num_levels - 1, 1)`` float32 logits arrays, highest resolution first: entry ``k``
      has shape ``[B, D/2^k, H/2^k, W/2^k, num_classes]`` (entry 0 is the usual output).

    Raises:
      ValueError: on an invalid argument (the message names it), and at call time on an input
        that is not ``[B, D, H, W, in_channels]`` with ``D, H, W`` divisible by
        ``2^(num_levels-1)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model = UNet3D(num_classes=3, num_levels=2, base_features=4, max_features=8, rngs=nnx.Rngs(0))
      >>> model.features
      (4, 8)
      >>> y = model(jnp.zeros((1, 8, 8, 8, 1)))
      >>> y.shape, y.dtype
      ((1, 8, 8, 8, 3), dtype('float32'))
    """

    def __init__(self, *, num_classes: int, in_channels: int = 1, num_levels: int = 5, base_features: int = 30,
                 max_features: int = 320, norm: str = "instance", activation: str = "leaky_relu",
                 upsample: str = "trilinear", downsample: str = "maxpool", deep_supervision: bool = False,
                 remat: bool = False, conv: Callable = jax.lax.conv_general_dilated, dtype: DTypeLike = jnp.float32,
                 rngs: nnx.Rngs):
        _check_int("num_classes", num_classes, 1)
        _check_int("in_channels", in_channels, 1)
        _check_int("num_levels", num_levels, 1)
        _check_int("base_features", base_features, 1)
        _check_int("max_features", max_features, base_features)
        _check_choice("norm", norm, NORMS)
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("upsample", upsample, UPSAMPLES)
        _check_choice("downsample", downsample, DOWNSAMPLES)
        if not callable(conv):
            raise ValueError(f"conv must be a conv_general_dilated callable, got {conv!r}")
        _check_choice("deep_supervision", deep_supervision, (False, True))
        _check_choice("remat", remat, (False, True))
        try:
            dtype = jnp.dtype(dtype)
        except TypeError as e:
            raise ValueError(f"dtype must be a floating dtype, got {dtype!r}") from e
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")

        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.num_levels = int(num_levels)
        self.features = tuple(int(min(base_features * 2**level, max_features)) for level in range(num_levels))
        self.deep_supervision = bool(deep_supervision)
        self.downsample = downsample
        self.dtype = dtype

        f = self.features
        kw = dict(norm=norm, activation=activation, dtype=dtype, remat=bool(remat), conv=conv, rngs=rngs)
        # encoder[l]: level l (downsampled from level 1 on); encoder[-1] is the bottleneck.
        self.encoder = nnx.List(
            [Stage(in_channels if l == 0 else f[l - 1], f[l], downsample=None if l == 0 else downsample, **kw)
             for l in range(num_levels)]
        )
        # upsamples[l]: level l+1 -> level l; decoder[l]: the stage at level l after the concatenation.
        self.upsamples = nnx.List(
            [Upsample(f[l + 1], f[l], mode=upsample, dtype=dtype, conv=conv, rngs=rngs)
             for l in range(num_levels - 1)]
        )
        self.decoder = nnx.List([Stage(2 * f[l], f[l], downsample=None, **kw) for l in range(num_levels - 1)])
        # heads[l]: logits at level l (only level 0 without deep supervision).
        num_heads = max(num_levels - 1, 1) if deep_supervision else 1
        self.heads = nnx.List(
            [nnx.Conv(f[l], num_classes, (1, 1, 1), kernel_init=lecun_normal, dtype=dtype, param_dtype=jnp.float32,
                      conv_general_dilated=conv, rngs=rngs)
             for l in range(num_heads)]
        )

    @property
    def divisor(self) -> int:
        """What each spatial size of the input must be divisible by: ``2^(num_levels-1)``."""
        return 2 ** (self.num_levels - 1)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Raises ``ValueError`` unless ``shape`` is ``[B, D, H, W, in_channels]`` with ``D, H, W``
        divisible by :attr:`divisor`."""
        shape = tuple(shape)
        if len(shape) != 5:
            raise ValueError(f"input must be 5-D [B, D, H, W, C] (channels last), got shape {shape}")
        if shape[-1] != self.in_channels:
            raise ValueError(f"input has {shape[-1]} channels (last axis of shape {shape}), "
                             f"the model expects in_channels={self.in_channels}")
        if any(s % self.divisor for s in shape[1:4]):
            raise ValueError(f"spatial sizes {shape[1:4]} of input shape {shape} must be divisible by "
                             f"{self.divisor} = 2^(num_levels-1) with num_levels={self.num_levels}")

    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
        self.check_input_shape(x.shape)
        x = x.astype(self.dtype)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []  # coarsest first
        for l in reversed(range(self.num_levels - 1)):
            x = self.upsamples[l](x)
            x = self.decoder[l](jnp.concatenate([skips[l], x], axis=-1))
            if l < len(self.heads):
                outputs.append(self.heads[l](x).astype(jnp.float32))
        if self.num_levels == 1:
            outputs.append(self.heads[0](x).astype(jnp.float32))
        outputs.reverse()  # highest resolution first
        return tuple(outputs) if self.deep_supervision else outputs[0]


def count_params(model: nnx.Module) -> int:
    """The number of parameters (``nnx.Param`` entries) of ``model``; also works on an abstract
    model from ``nnx.eval_shape``."""
    params = nnx.state(model, nnx.Param)
    return int(sum(p.size for p in jax.tree.leaves(params)))


def reference_unet(num_classes: int = 9, *, rngs: nnx.Rngs, **overrides) -> UNet3D:
    """The reference configuration (docs/theory.md §4): 5 levels with 30, 60, 120, 240, 320
    features, ``2³`` max pooling, instance norm, LeakyReLU 0.01, trilinear upsampling + ``1³``
    conv, no deep supervision.

    ``overrides`` are :class:`UNet3D` arguments replacing the reference ones. With 9 classes and
    one input channel the model has 14,242,019 parameters (the paper's "≈14 M").

    Example:
      >>> from flax import nnx
      >>> abstract = nnx.eval_shape(lambda: reference_unet(9, rngs=nnx.Rngs(0)))  # no allocation
      >>> count_params(abstract), abstract.features
      (14242019, (30, 60, 120, 240, 320))
    """
    kw = dict(num_levels=5, base_features=30, max_features=320, norm="instance", activation="leaky_relu",
              upsample="trilinear", downsample="maxpool", deep_supervision=False)
    kw.update(overrides)
    return UNet3D(num_classes=num_classes, rngs=rngs, **kw)


def small_unet(num_classes: int, *, rngs: nnx.Rngs, **overrides) -> UNet3D:
    """A CPU-sized configuration: 4 levels with 8, 16, 32, 64 features, otherwise as the
    reference (332,065 parameters with 9 classes). Patches must be divisible by 8 (e.g. 32³, 48³).

    ``overrides`` are :class:`UNet3D` arguments replacing these.
    """
    kw = dict(num_levels=4, base_features=8, max_features=64)
    kw.update(overrides)
    return UNet3D(num_classes=num_classes, rngs=rngs, **kw)
