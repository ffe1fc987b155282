"""Segmentation networks."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from labelset_jax.models.unet3d import UNet3D, count_params, reference_unet, small_unet

__all__ = ["UNet3D", "count_params", "reference_unet", "small_unet", "create_model"]

_FIELDS = ("num_levels", "base_features", "max_features", "norm", "activation", "upsample", "downsample",
           "deep_supervision", "remat", "conv_impl", "in_channels")


def create_model(model_config, *, num_classes: int, rngs: nnx.Rngs) -> UNet3D:
    """A U-Net from ``config.model``: ``preset`` ("small" or "reference") plus explicit fields
    (``num_levels``, ``base_features``, ``max_features``, ``norm``, ``activation``, ``upsample``,
    ``downsample``, ``deep_supervision``, ``remat``, ``conv_impl``, ``dtype`` as a name such as
    ``"bfloat16"``)."""
    preset = model_config.get("preset", "small")
    builders = {"small": small_unet, "reference": reference_unet}
    if preset not in builders:
        raise ValueError(f"config.model.preset must be one of {sorted(builders)}, got {preset!r}")
    overrides = {k: model_config[k] for k in _FIELDS if k in model_config}
    if "dtype" in model_config:
        try:
            overrides["dtype"] = jnp.dtype(model_config["dtype"])
        except TypeError as e:
            raise ValueError(f"config.model.dtype: unknown dtype {model_config['dtype']!r}") from e
    return builders[preset](num_classes, rngs=rngs, **overrides)
