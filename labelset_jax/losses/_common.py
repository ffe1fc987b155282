"""Shared plumbing of the loss functions: input checks, the label-set maps, reductions.

The label-set maps of SPEC §2.3 live here, once, as functions of the membership rows ``m = M[g]``
and set sizes ``|g|`` gathered per voxel; every loss module builds on them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from labelset_jax.labelsets import LabelSpace, validate_labels

Array = jax.Array


def is_concrete(x: Any) -> bool:
    """True for values that can be read on the host (not traced by ``jit``/``grad``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def check_inputs(
    logits: Array,
    labels: Array,
    label_space: LabelSpace | None,
    *,
    fn: str,
    allow_sets: bool,
) -> LabelSpace:
    """Validates shapes (statically) and, for concrete labels, their values; returns the space.

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer ``[B, *spatial]`` label ids.
      label_space: the space, or ``None`` for leaves ``0..C-1`` only.
      fn: the calling loss's name, for messages.
      allow_sets: whether set ids (``>= C``) are meaningful for the loss.

    Raises:
      ValueError: mismatched shapes, ``C`` not matching the space, float labels, or (outside
        ``jit``) ids that the space does not know or, for classical losses, set ids.
    """
    if logits.ndim < 2:
        raise ValueError(f"{fn}: logits must be [B, *spatial, C], got shape {logits.shape}")
    num_classes = logits.shape[-1]
    if label_space is None:
        label_space = LabelSpace.leaves(num_classes)
    if not isinstance(label_space, LabelSpace):
        raise ValueError(f"{fn}: label_space must be a LabelSpace, got {type(label_space).__name__}")
    if label_space.num_classes != num_classes:
        raise ValueError(
            f"{fn}: logits have {num_classes} channels but label_space has "
            f"{label_space.num_classes} leaves"
        )
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"{fn}: labels shape {labels.shape} must equal logits shape without channels "
            f"{logits.shape[:-1]}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{fn}: labels must hold integer label ids, got dtype {labels.dtype}")
    if is_concrete(labels):
        values = np.asarray(labels)
        if not allow_sets and label_space.has_sets and values.size and values.max() >= num_classes:
            bad = sorted(int(v) for v in np.unique(values[values >= num_classes])[:10])
            raise ValueError(
                f"{fn} is a classical loss: labels hold label-set id(s) {bad}; use a label-set "
                "loss (leaf_dice, marginal_dice, marginal_cross_entropy, ...)"
            )
        validate_labels(values, label_space, what=f"{fn}: labels")
    return label_space


def check_soft_targets(logits: Array, targets: Array, *, fn: str) -> None:
    """Static checks for soft targets ``[B, *spatial, C]`` matching ``logits``."""
    if targets.shape != logits.shape:
        raise ValueError(f"{fn}: soft targets shape {targets.shape} must equal logits shape {logits.shape}")


def is_soft(logits: Array, targets: Array) -> bool:
    """Whether ``targets`` are soft (float, one value per class) rather than integer label ids."""
    return jnp.issubdtype(targets.dtype, jnp.floating) and targets.ndim == logits.ndim


def reduce_loss(per_sample: Array, reduction: str, *, fn: str) -> Array:
    """``"mean"``: the batch mean (a scalar); ``"none"``: the ``[B]`` per-sample losses."""
    if reduction == "mean":
        return jnp.mean(per_sample)
    if reduction == "none":
        return per_sample
    raise ValueError(f"{fn}: reduction must be 'mean' or 'none', got {reduction!r}")


def flatten_spatial(x: Array, *, channels: bool) -> Array:
    """``[B, *spatial, (C)]`` -> ``[B, N, (C)]``."""
    if channels:
        return x.reshape(x.shape[0], -1, x.shape[-1])
    return x.reshape(x.shape[0], -1)


# --------------------------------------------------------------------------- the label-set maps
def gather_sets(labels: Array, space: LabelSpace) -> tuple[Array, Array]:
    """Per voxel, the membership row ``m = M[g]`` (float ``[..., C]``) and ``|g|`` (``[..., 1]``)."""
    m = jnp.asarray(space.membership, jnp.float32)[labels]
    size = jnp.asarray(space.set_sizes, jnp.float32)[labels][..., None]
    return m, size


def uniform_targets(m: Array, size: Array) -> Array:
    """``Φ(g)``: the uniform distribution over each voxel's label set (one-hot for leaves)."""
    return m / size


def leaf_targets(m: Array, size: Array) -> Array:
    """``1[g = {c}]``: one-hot on voxels annotated with a single leaf, zero on set voxels."""
    return m * (size == 1)


def channel_sum(x: Array) -> Array:
    """``Σ_c x[..., c]`` with keepdims, unrolled over the static channel axis.

    Same value as ``jnp.sum(x, axis=-1, keepdims=True)``; written as a sum of the ``C`` channel
    slices so that XLA emits one elementwise pass (a minor-axis reduce over a short axis is slow on
    XLA:CPU).
    """
    total = x[..., 0]
    for c in range(1, x.shape[-1]):
        total = total + x[..., c]
    return total[..., None]


def channel_logsumexp(z: Array) -> Array:
    """``log Σ_c exp(z_c)`` with keepdims, stable (max-shifted), unrolled like :func:`channel_sum`."""
    zmax = z[..., 0]
    for c in range(1, z.shape[-1]):
        zmax = jnp.maximum(zmax, z[..., c])
    zmax = jax.lax.stop_gradient(zmax[..., None])
    return zmax + jnp.log(channel_sum(jnp.exp(z - zmax)))


def marginal_probs(probs: Array, m: Array, size: Array) -> Array:
    """``Φ_g(p)``: the probability of each voxel's set spread evenly over its leaves.

    ``Φ_g`` is linear and symmetric (it averages inside the set, the identity outside), an
    orthogonal projection: it is its own adjoint, so the same function maps a gradient
    ``∂L/∂Φ_g(p)`` to ``∂L/∂p`` (used by the Dice core's closed-form backward pass).
    """
    set_mass = channel_sum(probs * m)
    return jnp.where(m > 0, set_mass / size, probs)


def marginal_log_probs(log_probs: Array, m: Array, size: Array) -> Array:
    """``log Φ_g(p)`` computed stably: ``logsumexp`` over the set minus ``log |g|`` in the set."""
    log_set_mass = jax.nn.logsumexp(log_probs, axis=-1, where=m > 0, keepdims=True)
    return jnp.where(m > 0, log_set_mass - jnp.log(size), log_probs)


def set_log_likelihood(logits: Array, m: Array) -> Array:
    """``log Σ_{c ∈ g} p_c`` = ``logsumexp`` of the logits over the set minus over all leaves."""
    z = logits.astype(jnp.float32)
    return jax.nn.logsumexp(z, axis=-1, where=m > 0) - jax.nn.logsumexp(z, axis=-1)
