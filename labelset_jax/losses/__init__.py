"""Label-set loss functions (Fidon et al., MICCAI 2021) and the classical losses they generalise.

Pure functions of channels-last logits ``[B, *spatial, C]`` and integer label ids ``[B, *spatial]``
(leaves ``0..C-1`` and label-set ids ``>= C`` of a :class:`~labelset_jax.labelsets.LabelSpace`),
compatible with ``jax.jit``, ``jax.vmap`` and ``jax.grad``. Options are keyword-only;
``reduction="mean"`` returns the batch mean and ``"none"`` the ``[B]`` per-sample losses.

This package imports only ``jax`` and ``numpy``.

Classical losses (full segmentations; integer labels or soft targets):
  :func:`cross_entropy`, :func:`focal`, :func:`soft_dice`, :func:`generalized_dice`,
  :func:`dice_ce`.

Label-set losses (partial segmentations):
  :func:`marginalize` (the transform), :func:`marginal_cross_entropy`, :func:`marginal_focal`,
  :func:`marginal_dice`, :func:`leaf_dice`, :func:`leaf_dice_ce`; and the baseline
  :func:`soft_target_dice`, which is *not* a label-set loss.
"""

from labelset_jax.losses.classification import cross_entropy, focal
from labelset_jax.losses.combined import dice_ce, leaf_dice_ce
from labelset_jax.losses.dice import generalized_dice, leaf_dice, soft_dice, soft_target_dice
from labelset_jax.losses.marginal import (
    marginal_cross_entropy,
    marginal_dice,
    marginal_focal,
    marginalize,
)

__all__ = [
    "cross_entropy",
    "focal",
    "soft_dice",
    "generalized_dice",
    "dice_ce",
    "marginalize",
    "marginal_cross_entropy",
    "marginal_focal",
    "marginal_dice",
    "leaf_dice",
    "leaf_dice_ce",
    "soft_target_dice",
    "LABEL_SET_LOSSES",
    "CLASSICAL_LOSSES",
    "get_loss",
]

#: Classical losses by name (full segmentations only).
CLASSICAL_LOSSES = {
    "cross_entropy": cross_entropy,
    "focal": focal,
    "soft_dice": soft_dice,
    "generalized_dice": generalized_dice,
    "dice_ce": dice_ce,
}

#: Losses that take label sets, by name (``soft_target_dice`` is the non-label-set baseline).
LABEL_SET_LOSSES = {
    "marginal_cross_entropy": marginal_cross_entropy,
    "marginal_focal": marginal_focal,
    "marginal_dice": marginal_dice,
    "leaf_dice": leaf_dice,
    "leaf_dice_ce": leaf_dice_ce,
    "soft_target_dice": soft_target_dice,
}


def get_loss(name: str):
    """The loss function called ``name`` (a key of ``CLASSICAL_LOSSES`` or ``LABEL_SET_LOSSES``).

    >>> get_loss("leaf_dice").__name__
    'leaf_dice'
    """
    losses = {**CLASSICAL_LOSSES, **LABEL_SET_LOSSES}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(losses)}")
    return losses[name]
