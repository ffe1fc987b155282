"""Segmentation networks, and the one place that picks a backend's form of the convolutions."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from labelset_jax.models import cpu_conv
from labelset_jax.models.unet3d import UNet3D, count_params, reference_unet, small_unet

__all__ = ["UNet3D", "count_params", "reference_unet", "small_unet", "create_model", "conv_for", "CONV_IMPLS"]

CONV_IMPLS = ("auto", "native", "folded")
"""``config.model.conv_impl``: ``"native"`` (``jax.lax.conv_general_dilated``), ``"folded"`` (the
CPU form, :mod:`labelset_jax.models.cpu_conv`) or ``"auto"`` (folded on CPU, native elsewhere)."""

_FIELDS = ("num_levels", "base_features", "max_features", "norm", "activation", "upsample", "downsample",
           "deep_supervision", "remat", "in_channels")


def conv_for(conv_impl: str = "auto", *, backend: str | None = None,
             dots_min_features: int = cpu_conv.DOTS_MIN_FEATURES) -> Callable:
    """The ``conv`` of :class:`UNet3D` for a :data:`CONV_IMPLS` entry on ``backend`` (default: JAX's
    default backend).

    >>> conv_for("auto", backend="gpu") is jax.lax.conv_general_dilated
    True
    >>> conv_for("auto", backend="cpu") is conv_for("folded")
    True
    """
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"config.model.conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if conv_impl == "auto":
        conv_impl = "folded" if (backend or jax.default_backend()) == "cpu" else "native"
    return cpu_conv.folded_conv(dots_min_features) if conv_impl == "folded" else jax.lax.conv_general_dilated


def create_model(model_config, *, num_classes: int, rngs: nnx.Rngs) -> UNet3D:
    """A U-Net from ``config.model``: ``preset`` ("small" or "reference") plus explicit fields
    (``num_levels``, ``base_features``, ``max_features``, ``norm``, ``activation``, ``upsample``,
    ``downsample``, ``deep_supervision``, ``remat``, ``dtype`` as a name such as ``"bfloat16"``),
    and the form of the convolutions for this backend (:func:`conv_for` of ``conv_impl``, default
    ``"auto"``, and ``dots_min_features``)."""
    preset = model_config.get("preset", "small")
    builders = {"small": small_unet, "reference": reference_unet}
    if preset not in builders:
        raise ValueError(f"config.model.preset must be one of {sorted(builders)}, got {preset!r}")
    overrides = {k: model_config[k] for k in _FIELDS if k in model_config}
    overrides["conv"] = conv_for(model_config.get("conv_impl", "auto"),
                                 dots_min_features=model_config.get("dots_min_features", cpu_conv.DOTS_MIN_FEATURES))
    if "dtype" in model_config:
        try:
            overrides["dtype"] = jnp.dtype(model_config["dtype"])
        except TypeError as e:
            raise ValueError(f"config.model.dtype: unknown dtype {model_config['dtype']!r}") from e
    return builders[preset](num_classes, rngs=rngs, **overrides)
