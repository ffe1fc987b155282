"""Label-set loss functions (Fidon et al., MICCAI 2021) and the classical losses they generalise.

Pure functions of channels-last logits ``[B, *spatial, C]`` and integer label ids ``[B, *spatial]``
(leaves ``0..C-1`` and label-set ids ``>= C`` of a :class:`~labelset_jax.labelsets.LabelSpace`),
compatible with ``jax.jit``, ``jax.vmap`` and ``jax.grad``. Options are keyword-only. Every loss
is first a per-sample value (a mean over that sample's voxels, or a Dice over them); ``reduction``
then acts over the batch: ``"mean"`` (default; MONAI's and PyTorch's default), ``"sum"``, or
``"none"`` for the ``[B]`` per-sample losses (optax's losses return unreduced values and leave the
reduction to the caller: ``"none"`` is that form).

This package imports only ``jax`` and ``numpy``.

What a loss does with each label id is one rule, the same eagerly and under ``jit`` (the losses
never read label values on the host; :func:`validate` is the explicit check, for a dataset):

=================================  =====================================  ==========================================
label id                           classical losses (integer labels)      label-set losses and the baseline
=================================  =====================================  ==========================================
leaf ``0..C-1``                    its class                              its leaf
declared set id (``>= C``)         voxel excluded                         its set
ignore id (the set of all leaves)  voxel excluded                         voxel excluded [*]_
unknown id (negative, undeclared,  voxel excluded                         voxel excluded [*]_
``>= K``)
=================================  =====================================  ==========================================

An excluded voxel adds no loss and no gradient and is left out of the voxel mean (cross-entropy,
focal) or of the Dice sums; a sample with no counted voxel has loss 0 (cross-entropy) or the Dice
of empty sums. Soft targets count every voxel.

.. [*] The marginalization of a generic classical loss (:func:`marginalize`, e.g.
   :func:`marginal_focal`) gives those voxels the set of all leaves instead: a constant with zero
   gradient.

Classical losses (:data:`CLASSICAL_LOSSES`; full segmentations, integer labels or soft targets):
  :func:`cross_entropy`, :func:`focal`, :func:`soft_dice`, :func:`generalized_dice`,
  :func:`dice_ce`, :func:`dice_semimetric`.

Label-set losses (:data:`LABEL_SET_LOSSES`; partial segmentations):
  :func:`marginal_cross_entropy`, :func:`marginal_focal`, :func:`marginal_dice`, :func:`leaf_dice`,
  :func:`leaf_dice_ce`; and :func:`marginalize`, the transform that makes a label-set loss of any
  classical loss.

Baselines (:data:`BASELINE_LOSSES`; take label sets but are *not* label-set losses):
  :func:`soft_target_dice`.
"""

from labelset_jax.losses.classification import cross_entropy, focal
from labelset_jax.losses.combined import dice_ce, leaf_dice_ce
from labelset_jax.losses.dice import (
    dice_semimetric,
    generalized_dice,
    leaf_dice,
    marginal_dice,
    soft_dice,
    soft_target_dice,
)
from labelset_jax.losses._common import validate
from labelset_jax.losses.marginal import marginal_cross_entropy, marginal_focal, marginalize

__all__ = [
    "cross_entropy",
    "focal",
    "soft_dice",
    "generalized_dice",
    "dice_ce",
    "dice_semimetric",
    "marginalize",
    "marginal_cross_entropy",
    "marginal_focal",
    "marginal_dice",
    "leaf_dice",
    "leaf_dice_ce",
    "soft_target_dice",
    "CLASSICAL_LOSSES",
    "LABEL_SET_LOSSES",
    "BASELINE_LOSSES",
    "get_loss",
    "takes_label_space",
    "validate",
]

#: Classical losses by name: full segmentations (integer leaf ids) or soft targets.
CLASSICAL_LOSSES = {
    "cross_entropy": cross_entropy,
    "focal": focal,
    "soft_dice": soft_dice,
    "generalized_dice": generalized_dice,
    "dice_ce": dice_ce,
    "dice_semimetric": dice_semimetric,
}

#: Label-set losses by name: they satisfy the label-set axiom (docs/theory.md §2.2) and take a
#: ``label_space``.
LABEL_SET_LOSSES = {
    "marginal_cross_entropy": marginal_cross_entropy,
    "marginal_focal": marginal_focal,
    "marginal_dice": marginal_dice,
    "leaf_dice": leaf_dice,
    "leaf_dice_ce": leaf_dice_ce,
}

#: Baselines for comparisons: they take label sets and a ``label_space`` but are not label-set losses.
BASELINE_LOSSES = {
    "soft_target_dice": soft_target_dice,
}


def get_loss(name: str):
    """The loss function called ``name``, from any of the three registries.

    >>> get_loss("leaf_dice").__name__
    'leaf_dice'
    """
    losses = {**CLASSICAL_LOSSES, **LABEL_SET_LOSSES, **BASELINE_LOSSES}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(losses)}")
    return losses[name]


def takes_label_space(name: str) -> bool:
    """Whether the loss called ``name`` needs ``label_space=`` (it reads label-set ids).

    True for label-set losses and baselines; the classical losses take it only optionally (to
    check that its leaves match the logits).

    >>> takes_label_space("marginal_dice"), takes_label_space("soft_target_dice"), takes_label_space("soft_dice")
    (True, True, False)
    """
    get_loss(name)  # raises on an unknown name
    return name in LABEL_SET_LOSSES or name in BASELINE_LOSSES
