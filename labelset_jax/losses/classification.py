"""Voxel-wise classification losses: cross-entropy and focal loss.

Both accept integer label ids ``[B, *spatial]`` (full segmentations) or soft targets
``[B, *spatial, C]`` (what :func:`labelset_jax.losses.marginalize` feeds them). Their label-set
versions are :func:`~labelset_jax.losses.marginal_cross_entropy` and
:func:`~labelset_jax.losses.marginal_focal`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses import _common

Array = jax.Array


def _targets_and_log_probs(logits, labels, label_space, fn):
    """``(t, log p, w)``: targets, log-probabilities and the float ``[B, *spatial]`` mask of the
    voxels that count (integer labels: the leaves ``0..C-1``; soft targets: every voxel)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if _common.is_soft(logits, labels):
        _common.check_soft_targets(logits, labels, fn=fn, label_space=label_space)
        return labels.astype(jnp.float32), log_probs, jnp.ones(labels.shape[:-1], jnp.float32)
    space = _common.check_inputs(logits, labels, label_space, fn=fn)
    w = _common.counted(labels, space, classical=True)
    return jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32), log_probs, w


def _voxel_mean(per_voxel: Array, w: Array) -> Array:
    """Per sample, the mean of ``per_voxel`` over the voxels that count (0 when none does): ``[B]``."""
    per_voxel = _common.flatten_spatial(jnp.where(w > 0, per_voxel, 0.0), channels=False)
    count = jnp.sum(_common.flatten_spatial(w, channels=False), axis=1)
    return jnp.sum(per_voxel, axis=1) / jnp.maximum(count, 1.0)


def cross_entropy(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Softmax cross-entropy averaged over voxels, per sample.

    .. math::
      \mathrm{CE}(p, t) = -\frac{1}{N} \sum_i \sum_c t_{ic} \log p_{ic},
      \qquad p_i = \operatorname{softmax}(z_i)

    with ``t`` the one-hot of integer ``labels`` or the given soft targets.

    Args:
      logits: ``[B, *spatial, C]`` unnormalised scores.
      labels: integer leaf ids ``[B, *spatial]``, or soft targets ``[B, *spatial, C]``.
      label_space: optional, checked against ``C``. Voxels whose id is not a leaf (label-set ids,
        the ignore id, unknown ids) are excluded: no loss, no gradient, not in the mean (the table
        in :mod:`labelset_jax.losses`); use a label-set loss for partial segmentations.
      reduction: ``"mean"`` (scalar batch mean), ``"sum"`` or ``"none"`` (``[B]``).

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[[2.0, 0.0], [0.0, 2.0]]])  # B=1, two voxels, C=2
      >>> print(f"{cross_entropy(logits, jnp.array([[0, 1]])):.4f}")
      0.1269

    References:
      Equals ``optax.softmax_cross_entropy_with_integer_labels`` averaged over voxels.
    """
    targets, log_probs, w = _targets_and_log_probs(logits, labels, label_space, "cross_entropy")
    per_sample = _voxel_mean(-jnp.sum(targets * log_probs, axis=-1), w)
    return _common.reduce_loss(per_sample, reduction, fn="cross_entropy")


def focal(
    logits: Array,
    labels: Array,
    *,
    gamma: float = 2.0,
    alpha: Array | None = None,
    label_space: LabelSpace | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Multi-class focal loss averaged over voxels, per sample.

    .. math::
      \mathrm{FL}(p, t) = -\frac{1}{N} \sum_i \sum_c \alpha_c\, t_{ic} (1 - p_{ic})^\gamma \log p_{ic}

    ``gamma = 0`` and ``alpha = None`` give :func:`cross_entropy`.

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer leaf ids ``[B, *spatial]`` or soft targets ``[B, *spatial, C]``.
      gamma: focusing parameter ``γ >= 0``.
      alpha: optional per-class weights ``[C]``.
      label_space: as in :func:`cross_entropy`.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over the batch).

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[[2.0, 0.0], [0.0, 2.0]]])
      >>> print(f"{focal(logits, jnp.array([[0, 1]]), gamma=2.0):.6f}")
      0.001804

    References:
      T.-Y. Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017.
    """
    targets, log_probs, w = _targets_and_log_probs(logits, labels, label_space, "focal")
    modulator = (1.0 - jnp.exp(log_probs)) ** gamma
    weighted = targets * modulator * log_probs
    if alpha is not None:
        weighted = weighted * jnp.asarray(alpha, jnp.float32)
    per_sample = _voxel_mean(-jnp.sum(weighted, axis=-1), w)
    return _common.reduce_loss(per_sample, reduction, fn="focal")
