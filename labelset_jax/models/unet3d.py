"""A channels-last 3D U-Net in ``flax.nnx``.

The reference architecture of the label-set study (Fidon et al. 2021, SPEC §4), an nnU-Net-like
design:

* ``num_levels`` resolution levels with ``min(base · 2^l, max)`` features at level ``l``
  (30, 60, 120, 240, 320 for the reference);
* each level is two blocks ``conv 3³ → instance norm → LeakyReLU(0.01)``; downsampling is the
  stride-2 first convolution of levels ``l >= 1`` (as in nnU-Net, no pooling);
* the decoder upsamples by trilinear interpolation followed by a ``1³`` convolution to the skip
  level's width (or by a stride-2 transposed convolution), concatenates the skip connection and
  applies two blocks;
* a ``1³`` convolution head gives the logits; optional deep-supervision heads at the coarser
  decoder levels.

Parameters are float32; ``dtype`` sets the computation type (e.g. ``jnp.bfloat16``) while
normalisation statistics and the output logits stay float32. ``remat=True`` rematerialises each
block in the backward pass (``nnx.remat``) to save activation memory.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.01),
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
}
NORMS = ("instance", "group", "none")
UPSAMPLES = ("trilinear", "transpose")


class ConvBlock(nnx.Module):
    """``conv 3³ (stride s) → norm → activation``."""

    def __init__(self, in_features: int, out_features: int, *, stride: int, norm: str, activation: str,
                 dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_features, out_features, (3, 3, 3), strides=stride, padding="SAME",
                             use_bias=norm == "none", dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        if norm == "none":
            self.norm = None
        else:
            groups = out_features if norm == "instance" else min(8, out_features)
            while out_features % groups:
                groups -= 1
            self.norm = nnx.GroupNorm(out_features, num_groups=groups, epsilon=1e-5, dtype=jnp.float32,
                                      param_dtype=jnp.float32, rngs=rngs)
        self.activation = activation
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x.astype(jnp.float32)).astype(self.dtype)
        return ACTIVATIONS[self.activation](x)


class Stage(nnx.Module):
    """Two conv blocks; the first may downsample (stride 2)."""

    def __init__(self, in_features: int, out_features: int, *, stride: int, rngs: nnx.Rngs, remat: bool, **kw):
        self.first = ConvBlock(in_features, out_features, stride=stride, rngs=rngs, **kw)
        self.second = ConvBlock(out_features, out_features, stride=1, rngs=rngs, **kw)
        self.remat = remat

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.remat:
            return nnx.remat(lambda stage, y: stage.second(stage.first(y)))(self, x)
        return self.second(self.first(x))


class Upsample(nnx.Module):
    """×2 upsampling to ``out_features``: trilinear + ``1³`` conv, or a transposed conv."""

    def __init__(self, in_features: int, out_features: int, *, mode: str, dtype, rngs: nnx.Rngs):
        self.mode = mode
        if mode == "trilinear":
            self.proj = nnx.Conv(in_features, out_features, (1, 1, 1), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        else:
            self.proj = nnx.ConvTranspose(in_features, out_features, (2, 2, 2), strides=2, dtype=dtype,
                                          param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array, target_shape: tuple[int, ...]) -> jax.Array:
        if self.mode == "trilinear":
            x = jax.image.resize(x, (x.shape[0], *target_shape, x.shape[-1]), method="trilinear")
        return self.proj(x)


class UNet3D(nnx.Module):
    """3D U-Net: ``[B, D, H, W, C_in] -> [B, D, H, W, num_classes]`` float32 logits.

    Args:
      num_classes: output channels (leaves).
      in_channels: input channels.
      num_levels: resolution levels (``>= 1``); spatial sizes must be divisible by
        ``2^(num_levels-1)``.
      base_features: features of the first level.
      max_features: cap on the features of any level.
      norm: ``"instance"`` (default), ``"group"`` (8 groups) or ``"none"``.
      activation: ``"leaky_relu"`` (slope 0.01, default), ``"relu"`` or ``"gelu"``.
      upsample: ``"trilinear"`` (+ ``1³`` conv, the reference) or ``"transpose"``.
      deep_supervision: also return logits of the coarser decoder levels.
      remat: rematerialise each stage in the backward pass.
      dtype: computation dtype (parameters are always float32).
      rngs: ``nnx.Rngs`` for the initialisation.

    Returns (``__call__``):
      The logits; with ``deep_supervision`` a tuple of logits from the finest to the coarsest
      decoder level (``[B, D/2^k, H/2^k, W/2^k, num_classes]``).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> model = UNet3D(num_classes=3, num_levels=2, base_features=4, max_features=8, rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((1, 8, 8, 8, 1))).shape
      (1, 8, 8, 8, 3)
    """

    def __init__(self, *, num_classes: int, in_channels: int = 1, num_levels: int = 5, base_features: int = 30,
                 max_features: int = 320, norm: str = "instance", activation: str = "leaky_relu",
                 upsample: str = "trilinear", deep_supervision: bool = False, remat: bool = False,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        if base_features < 1 or max_features < base_features:
            raise ValueError(f"need 1 <= base_features <= max_features, got {base_features}, {max_features}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {upsample!r}")
        dtype = jnp.dtype(dtype)
        self.features = tuple(min(base_features * 2**level, max_features) for level in range(num_levels))
        self.num_levels = num_levels
        self.deep_supervision = deep_supervision
        self.dtype = dtype
        kw = dict(norm=norm, activation=activation, dtype=dtype, rngs=rngs, remat=remat)
        f = self.features
        self.encoder = nnx.List(
            [Stage(in_channels if l == 0 else f[l - 1], f[l], stride=1 if l == 0 else 2, **kw) for l in range(num_levels)]
        )
        self.upsamples = nnx.List(
            [Upsample(f[l + 1], f[l], mode=upsample, dtype=dtype, rngs=rngs) for l in range(num_levels - 1)]
        )
        self.decoder = nnx.List([Stage(2 * f[l], f[l], stride=1, **kw) for l in range(num_levels - 1)])
        head_levels = range(num_levels - 1) if deep_supervision else range(1)
        self.heads = nnx.List(
            [nnx.Conv(f[l], num_classes, (1, 1, 1), dtype=dtype, param_dtype=jnp.float32, rngs=rngs) for l in head_levels]
        )

    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
        divisor = 2 ** (self.num_levels - 1)
        if x.ndim != 5 or any(s % divisor for s in x.shape[1:4]):
            raise ValueError(
                f"input must be [B, D, H, W, C] with D, H, W divisible by {divisor} "
                f"(2^(num_levels-1)), got shape {x.shape}"
            )
        x = x.astype(self.dtype)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []
        for l in reversed(range(self.num_levels - 1)):
            skip = skips[l]
            x = self.upsamples[l](x, skip.shape[1:4])
            x = self.decoder[l](jnp.concatenate([skip, x], axis=-1))
            if l < len(self.heads):
                outputs.append(self.heads[l](x).astype(jnp.float32))
        if self.num_levels == 1:
            outputs.append(self.heads[0](x).astype(jnp.float32))
        outputs = outputs[::-1]  # finest first
        return tuple(outputs) if self.deep_supervision else outputs[0]


def count_params(model: nnx.Module) -> int:
    """The number of trainable parameters."""
    params = nnx.state(model, nnx.Param)
    return int(sum(p.size for p in jax.tree.leaves(params)))


def reference_unet(num_classes: int = 9, *, rngs: nnx.Rngs, **overrides) -> UNet3D:
    """The reference configuration (SPEC §4): 5 levels, 30→320 features, instance norm,
    LeakyReLU 0.01, trilinear upsampling + ``1³`` conv, no deep supervision (≈14.2 M parameters)."""
    kw = dict(num_levels=5, base_features=30, max_features=320, norm="instance", activation="leaky_relu",
              upsample="trilinear", deep_supervision=False)
    kw.update(overrides)
    return UNet3D(num_classes=num_classes, rngs=rngs, **kw)


def small_unet(num_classes: int, *, rngs: nnx.Rngs, **overrides) -> UNet3D:
    """A CPU-sized configuration: 4 levels, 8→64 features."""
    kw = dict(num_levels=4, base_features=8, max_features=64)
    kw.update(overrides)
    return UNet3D(num_classes=num_classes, rngs=rngs, **kw)
