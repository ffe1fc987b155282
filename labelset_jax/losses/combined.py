"""Sums of a Dice loss and a cross-entropy: the combinations used in practice (nnU-Net's Dice+CE)."""

from __future__ import annotations

import jax

from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses.classification import cross_entropy
from labelset_jax.losses.dice import leaf_dice, soft_dice
from labelset_jax.losses.marginal import marginal_cross_entropy

Array = jax.Array


def dice_ce(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace | None = None,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    reduction: str = "mean",
    **dice_options,
) -> Array:
    r"""``dice_weight · soft_dice + ce_weight · cross_entropy`` (full segmentations).

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer leaf ids ``[B, *spatial]`` or soft targets ``[B, *spatial, C]``.
      label_space: as in :func:`~labelset_jax.losses.soft_dice`.
      dice_weight, ce_weight: the weights of the two terms.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over the batch).
      **dice_options: options of :func:`~labelset_jax.losses.soft_dice` (``squared``, ``eps``, ...).

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> labels = jnp.array([[0, 1, 1, 2]])
      >>> print(f"{dice_ce(100.0 * jax.nn.one_hot(labels, 3), labels):.5f}")
      0.00000

    References:
      F. Isensee et al., *nnU-Net*, Nature Methods 2021.
    """
    dice = soft_dice(logits, labels, label_space=label_space, reduction=reduction, **dice_options)
    ce = cross_entropy(logits, labels, label_space=label_space, reduction=reduction)
    return dice_weight * dice + ce_weight * ce


def leaf_dice_ce(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    reduction: str = "mean",
    **dice_options,
) -> Array:
    r"""``dice_weight · leaf_dice + ce_weight · marginal_cross_entropy``: a label-set Dice+CE.

    Both terms are label-set losses, so the sum is one; on full segmentations it equals
    :func:`dice_ce`.

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer label ids ``[B, *spatial]`` (leaves and set ids).
      label_space: the :class:`~labelset_jax.labelsets.LabelSpace`.
      dice_weight, ce_weight: the weights of the two terms.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over the batch).
      **dice_options: options of :func:`~labelset_jax.losses.leaf_dice`.

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from labelset_jax.labelsets import LabelSpace
      >>> space = LabelSpace.from_superset_map(3, {3: [1, 2]})
      >>> labels = jnp.array([[0, 1, 3, 1]])
      >>> print(f"{leaf_dice_ce(100.0 * jax.nn.one_hot(jnp.minimum(labels, 1), 3), labels, label_space=space):.5f}")
      0.40000

    References:
      L. Fidon et al., MICCAI 2021, arXiv:2107.03846.
    """
    dice = leaf_dice(logits, labels, label_space=label_space, reduction=reduction, **dice_options)
    ce = marginal_cross_entropy(logits, labels, label_space=label_space, reduction=reduction)
    return dice_weight * dice + ce_weight * ce
