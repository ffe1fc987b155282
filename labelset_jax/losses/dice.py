r"""The Dice losses: soft Dice, generalized Dice, the Dice semimetric loss, leaf-Dice, marginal Dice,
and the soft-target Dice baseline.

Every Dice variant is a function of three per-class sums over the voxels of a sample,

.. math::
  S^{pt}_c = \sum_i \iota(\hat p_{ic}, t_{ic}), \qquad
  S^{pp}_c = \sum_i \hat p_{ic}^\alpha, \qquad
  S^{tt}_c = \sum_i t_{ic}^\alpha,

where ``p̂`` is a per-voxel map of the softmax (the softmax itself, or ``Φ_g(p)`` for marginal
Dice), ``t`` a per-voxel target (the one-hot ``1[g_i = c]`` of leaf ids, which is zero on set voxels
and so is also leaf-Dice's target; the uniform set target ``Φ(g)``; or given soft targets), and the
intersection ``ι(p̂, t)`` is the product ``p̂ t`` (soft Dice) or ``min(p̂, t)`` (the Dice
semimetric). The Dice per class is ``(2 S^pt_c + smooth_nr) / (S^pp_c + S^tt_c + eps)``.

**Constants.** ``eps`` (MONAI's ``smooth_dr``) and ``smooth_nr`` are both ``1e-5`` by default, as
MONAI's ``DiceLoss`` and nnU-Net's soft Dice: a class absent from the target and predicted absent has
a Dice of about 1, so a perfect prediction scores about 0. Leaf-Dice keeps the label-set paper's rule
for a leaf that has no singleton voxel but lies inside some voxel's label set (it may be present
there): Dice 0 with zero gradient, whatever ``smooth_nr``. ``smooth_nr=0`` gives the constants of
the label-set paper's reference package (``eps`` in the denominator only), which the studies use.

**The Dice core** computes the three sums with a ``jax.custom_vjp`` whose backward pass is
closed-form: with ``a, b, c`` the derivatives of the loss with respect to ``S^pt, S^pp, S^tt``
(taken by ``jax.vjp`` on the tiny ``[B, C]`` sums),
``∂L/∂p̂_ic = a_c ∂ι/∂p̂ + b_c α p̂_ic^{α-1}``, mapped through ``Φ_g`` (its own adjoint) for marginal
Dice and through the softmax Jacobian to the logits. The residuals are the inputs and the sums;
the backward pass recomputes the softmax. Each pass is a dense computation from gathered
membership rows; on CPU both visit the voxels in chunks (``_common.execution``), so that value and
gradient need no temporary of the logits' size (benchmarks/RESULTS.md has the memory and timings).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses import _common

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _DiceSpec:
    """Static description of a Dice loss: which maps, which reducer, which options."""

    space: LabelSpace
    prediction: str  # "softmax" | "marginal"  (p̂ = p or Φ_g(p))
    target: str  # "onehot" | "uniform" | "soft"  (t = 1[g = c], Φ(g), or given soft targets)
    intersection: str = "product"  # "product" | "min"  (ι(p̂, t) = p̂ t or min(p̂, t))
    squared: bool = True
    eps: float = 1e-5
    smooth_nr: float = 1e-5
    include_background: bool = True
    batch_dice: bool = False
    class_weights: tuple[float, ...] | None = None
    generalized: bool = False
    count: str = "all"  # "all" (soft targets) | "leaves" (classical) | "sets" (label-set): _common.counted


def _loss_from_sums(s_pt: Array, s_pp: Array, s_tt: Array, spec: _DiceSpec, batch: int,
                    smooth: Array) -> Array:
    """Per-sample Dice loss ``[B]`` from the per-class sums (broadcast for batch Dice) and the
    numerator constant (``[B, C]``, or a scalar)."""
    num_classes = s_pt.shape[-1]
    first = 0 if spec.include_background else 1
    if spec.class_weights is not None:
        weights = jnp.asarray(spec.class_weights, jnp.float32)
    else:
        weights = jnp.ones((num_classes,), jnp.float32)
    weights = weights[first:]
    s_pt, s_pp, s_tt = s_pt[:, first:], s_pp[:, first:], s_tt[:, first:]
    if smooth.ndim:
        smooth = smooth[:, first:]
    if spec.generalized:
        # Sudre et al. 2017: w_c = 1 / (Σ_i t_ic)²; classes absent from the target get the largest
        # finite weight of the sample (MONAI's convention), so an empty class does not dominate.
        w = jnp.where(s_tt > 0, 1.0 / jnp.maximum(s_tt, 1e-30) ** 2, 0.0)
        w = jnp.where(s_tt > 0, w, jnp.max(w, axis=-1, keepdims=True)) * weights
        numer = 2.0 * jnp.sum(w * s_pt, axis=-1) + spec.smooth_nr
        denom = jnp.sum(w * (s_pp + s_tt), axis=-1) + spec.eps
        loss = 1.0 - numer / denom
    else:
        dice = (2.0 * s_pt + smooth) / (s_pp + s_tt + spec.eps)
        loss = 1.0 - jnp.sum(weights * dice, axis=-1) / jnp.sum(weights)
    return jnp.broadcast_to(loss, (batch,))


# ------------------------------------------------------------------------------- the Dice core
def _chunk_maps(z: Array, labels: Array, spec: _DiceSpec):
    """``(p, p̂, t, m, |g|, w)`` for one chunk of voxels (``m, |g|``: ``None`` unless gathered;
    ``w [..., 1]``: 1 where the voxel counts, ``None`` for soft targets, where every voxel does).
    An excluded voxel has ``p̂ = t = 0``."""
    probs = _common.softmax(z)
    if spec.target == "soft":
        return probs, probs, labels.astype(jnp.float32), None, None, None
    w = _common.counted(labels, spec.space, classical=spec.count == "leaves")[..., None]
    if spec.target == "onehot":
        return probs, probs * w, _common.leaf_targets(labels, z.shape[-1]) * w, None, None, w
    m, size = _common.gather_sets(labels, spec.space)
    pred = _common.marginal_probs(probs, m, size) if spec.prediction == "marginal" else probs
    return probs, pred * w, _common.uniform_targets(m, size) * w, m, size, w


def _power(x: Array, spec: _DiceSpec) -> Array:
    return x * x if spec.squared else x


def _chunk_sums(z: Array, labels: Array, weight: Array | None, *, spec: _DiceSpec):
    """``(S^pt, S^pp, S^tt)`` of one chunk, each ``[B, C]`` (``weight``: the voxels that count)."""
    _, pred, t, _, _, _ = _chunk_maps(z, labels, spec)
    inter = jnp.minimum(pred, t) if spec.intersection == "min" else pred * t
    terms = (inter, _power(pred, spec), _power(t, spec))
    if weight is not None:
        terms = tuple(x * weight for x in terms)
    return tuple(jnp.sum(x, axis=1) for x in terms)


def _d_intersection(x: Array, y: Array, spec: _DiceSpec) -> Array:
    """``∂ι(x, y)/∂x`` (for ``min``: 1 where ``x < y``, ½ at ties, as ``jnp.minimum``'s autodiff)."""
    if spec.intersection == "min":
        return jnp.where(x < y, 1.0, jnp.where(x == y, 0.5, 0.0))
    return y


def _chunk_grad(z: Array, labels: Array, a: Array, b: Array, *, spec: _DiceSpec) -> Array:
    r"""``∂L/∂z`` of one chunk from ``a = ∂L/∂S^pt`` and ``b = ∂L/∂S^pp`` (``[B, 1, C]``).

    * ``d = ∂L/∂p̂ = a ∂ι/∂p̂ + b α p̂^{α-1}`` per voxel;
    * marginal Dice: ``∂L/∂p = Φ_g(d)``, since ``Φ_g`` is a symmetric linear map (its own adjoint);
    * softmax Jacobian: ``∂L/∂z_c = p_c (d_c - Σ_{c'} p_{c'} d_{c'})``.
    """
    probs, pred, t, m, size, w = _chunk_maps(z, labels, spec)
    d = a * _d_intersection(pred, t, spec) + (2.0 * b * pred if spec.squared else b)
    if w is not None:  # p̂ = w · (p or Φ_g(p)): an excluded voxel gets no gradient
        d = d * w
    if spec.prediction == "marginal":
        d = _common.marginal_probs(d, m, size)
    return probs * (d - _common.channel_sum(probs * d))


def _chunk_target_grad(z: Array, t: Array, a: Array, c: Array, *, spec: _DiceSpec) -> Array:
    """``∂L/∂t`` of one chunk of soft targets from ``a`` and ``c = ∂L/∂S^tt`` (``[B, 1, C]``)."""
    probs = _common.softmax(z)
    t = t.astype(jnp.float32)
    return a * _d_intersection(t, probs, spec) + (2.0 * c * t if spec.squared else c)


def _numerator_constant(labels: Array, spec: _DiceSpec) -> Array:
    """``smooth_nr`` per sample and class: ``spec.smooth_nr``, except for leaf-Dice's *hidden* leaves
    (no singleton voxel, but inside some counted voxel's label set), which get 0 (``[B, C]``, or
    ``[1, C]`` for batch Dice); a scalar when no leaf can be hidden."""
    space = spec.space
    if not (spec.target == "onehot" and spec.count == "sets" and spec.smooth_nr and space.has_sets):
        return jnp.float32(spec.smooth_nr)
    flat = labels.reshape(labels.shape[0], -1)
    weight = _common.counted(flat, space, classical=False)
    index = jnp.clip(flat, 0, space.num_ids - 1)
    rows = jnp.arange(flat.shape[0])[:, None]
    per_id = jnp.zeros((flat.shape[0], space.num_ids), jnp.float32).at[rows, index].add(weight)
    if spec.batch_dice:
        per_id = jnp.sum(per_id, axis=0, keepdims=True)
    sets = jnp.asarray(space.membership[space.num_classes:], jnp.float32)
    in_set = per_id[:, space.num_classes:] @ sets > 0
    annotated = per_id[:, :space.num_classes] > 0
    return jnp.where(in_set & ~annotated, 0.0, spec.smooth_nr)


def _flat(logits: Array, labels: Array, spec: _DiceSpec) -> tuple[Array, Array]:
    z = _common.flatten_spatial(logits, channels=True)
    return z, _common.flatten_spatial(labels, channels=spec.target == "soft")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dice_core(logits: Array, labels: Array, spec: _DiceSpec) -> Array:
    """Per-sample Dice loss ``[B]`` of ``(p̂(logits, labels), t(labels))``; closed-form VJP."""
    return _dice_core_fwd(logits, labels, spec)[0]


def _dice_core_fwd(logits, labels, spec):
    sums = _common.sum_over_voxels(functools.partial(_chunk_sums, spec=spec), *_flat(logits, labels, spec))
    if spec.batch_dice:  # batch Dice adds the per-sample sums over the batch: [1, C]
        sums = tuple(jnp.sum(s, axis=0, keepdims=True) for s in sums)
    smooth = _numerator_constant(labels, spec)
    # Residuals: the inputs, the [B, C] sums and constants; the backward pass recomputes the softmax.
    return _loss_from_sums(*sums, spec, logits.shape[0], smooth), (logits, labels, sums, smooth)


def _dice_core_bwd(spec, residuals, g):
    """Closed-form VJP: ``(a, b, c)`` by ``jax.vjp`` on the ``[B, C]`` sums, then one chunked pass
    over the logits and labels that recomputes the maps and writes the gradient (and a second one
    for the gradient of soft targets)."""
    logits, labels, sums, smooth = residuals
    batch, num_classes = logits.shape[0], logits.shape[-1]
    _, sums_vjp = jax.vjp(lambda *s: _loss_from_sums(*s, spec, batch, smooth), *sums)
    a, b, c = (jnp.broadcast_to(x, (batch, num_classes))[:, None] for x in sums_vjp(g))
    z, flat_labels = _flat(logits, labels, spec)
    d_logits = _common.map_over_voxels(
        functools.partial(_chunk_grad, a=a, b=b, spec=spec),
        jax.ShapeDtypeStruct(z.shape, logits.dtype), z, flat_labels)
    d_labels = None
    if spec.target == "soft":
        d_labels = _common.map_over_voxels(
            functools.partial(_chunk_target_grad, a=a, c=c, spec=spec),
            jax.ShapeDtypeStruct(flat_labels.shape, labels.dtype), z, flat_labels).reshape(labels.shape)
    return d_logits.reshape(logits.shape), d_labels


_dice_core.defvjp(_dice_core_fwd, _dice_core_bwd)


# ------------------------------------------------------------------------------- front end
def _make_spec(space, prediction, target, *, intersection="product", squared, eps, smooth_nr,
               include_background, batch_dice, class_weights, generalized, fn, count="all") -> _DiceSpec:
    if class_weights is not None:
        if isinstance(class_weights, jax.core.Tracer):
            raise ValueError(f"{fn}: class_weights must be static (a sequence of floats), not traced")
        class_weights = tuple(float(w) for w in np.asarray(class_weights, np.float64).reshape(-1))
        if len(class_weights) != space.num_classes:
            raise ValueError(
                f"{fn}: class_weights has {len(class_weights)} entries for {space.num_classes} classes"
            )
        if min(class_weights) < 0 or sum(class_weights[0 if include_background else 1:]) <= 0:
            raise ValueError(f"{fn}: class_weights must be >= 0 with a positive sum, got {class_weights}")
    if not include_background and space.num_classes < 2:
        raise ValueError(f"{fn}: include_background=False needs at least 2 classes")
    return _DiceSpec(
        space=space, prediction=prediction, target=target, intersection=intersection,
        squared=bool(squared), eps=float(eps), smooth_nr=float(smooth_nr),
        include_background=bool(include_background), batch_dice=bool(batch_dice),
        class_weights=class_weights, generalized=generalized, count=count,
    )


def _dice_loss(logits, labels, *, label_space, reduction, fn, prediction, target, allow_sets,
               intersection="product", generalized=False, squared=True, eps=1e-5, smooth_nr=1e-5,
               include_background=True, batch_dice=False, class_weights=None):
    """Shared front end of the Dice losses: checks, static spec, core, reduction."""
    options = dict(intersection=intersection, squared=squared, eps=eps, smooth_nr=smooth_nr,
                   include_background=include_background, batch_dice=batch_dice,
                   class_weights=class_weights, generalized=generalized, fn=fn)
    if _common.is_soft(logits, labels):
        if allow_sets:
            raise ValueError(f"{fn}: takes integer label ids (label sets), not soft targets")
        _common.check_soft_targets(logits, labels, fn=fn, label_space=label_space)
        space = label_space or LabelSpace.leaves(logits.shape[-1])
        spec = _make_spec(space, "softmax", "soft", **options)
    else:
        space = _common.check_inputs(logits, labels, label_space, fn=fn)
        spec = _make_spec(space, prediction, target, count="sets" if allow_sets else "leaves", **options)
    _common.check_reduction(reduction, fn=fn)
    return _common.reduce_loss(_dice_core(logits, labels, spec), reduction, fn=fn)


def soft_dice(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace | None = None,
    squared: bool = True,
    eps: float = 1e-5,
    smooth_nr: float = 1e-5,
    include_background: bool = True,
    batch_dice: bool = False,
    class_weights: Sequence[float] | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Soft Dice loss of the softmax (mean over classes, per sample).

    .. math::
      \mathcal{L} = 1 - \frac{1}{\sum_c w_c} \sum_c w_c
        \frac{2 \sum_i t_{ic} p_{ic} + s_{nr}}{\sum_i p_{ic}^\alpha + \sum_i t_{ic}^\alpha + \epsilon},
      \qquad \alpha = 2 \text{ if squared else } 1

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer leaf ids ``[B, *spatial]`` or soft targets ``[B, *spatial, C]``.
      label_space: optional, checked against ``C``. Voxels whose id is not a leaf are excluded
        (the table in :mod:`labelset_jax.losses`); for partial segmentations use
        :func:`leaf_dice` or :func:`~labelset_jax.losses.marginal_dice`.
      squared: squared denominator terms (``α = 2``; MONAI's ``squared_pred``).
      eps: added to the denominator only (MONAI's ``smooth_dr``).
      smooth_nr: added to the numerator (MONAI's ``smooth_nr``); with ``smooth_nr <= eps`` (MONAI's
        and nnU-Net's ``1e-5`` for both) every class's Dice is at most 1, and a class absent from
        the target and predicted absent has a Dice of about 1. ``0``: the label-set paper's form.
      include_background: whether class 0 enters the mean.
      batch_dice: sum over the whole batch before dividing (nnU-Net's batch Dice); the single
        batch loss is then returned for every sample with ``reduction="none"``.
      class_weights: optional static per-class weights ``[C]`` of the mean over classes.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over the batch).

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax.numpy as jnp
      >>> labels = jnp.array([[0, 1, 1, 2]])
      >>> logits = 100.0 * jax.nn.one_hot(labels, 3)
      >>> print(f"{soft_dice(logits, labels):.5f}")
      0.00000

    References:
      F. Milletari et al., *V-Net*, 3DV 2016; MONAI ``DiceLoss``.
    """
    return _dice_loss(logits, labels, label_space=label_space, reduction=reduction, fn="soft_dice",
                      prediction="softmax", target="onehot", allow_sets=False, squared=squared,
                      eps=eps, smooth_nr=smooth_nr, include_background=include_background,
                      batch_dice=batch_dice, class_weights=class_weights)


def generalized_dice(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace | None = None,
    squared: bool = False,
    eps: float = 1e-5,
    smooth_nr: float = 1e-5,
    include_background: bool = True,
    batch_dice: bool = False,
    reduction: str = "mean",
) -> Array:
    r"""Generalized Dice loss (Sudre et al.): class weights ``w_c = 1 / (Σ_i t_ic)²``.

    .. math::
      \mathcal{L} = 1 - \frac{2 \sum_c w_c \sum_i t_{ic} p_{ic} + s_{nr}}
        {\sum_c w_c \left(\sum_i p_{ic}^\alpha + \sum_i t_{ic}^\alpha\right) + \epsilon}

    A class absent from a sample's target gets the largest weight of the present classes (as in
    MONAI's ``GeneralizedDiceLoss``).

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer leaf ids ``[B, *spatial]`` or soft targets ``[B, *spatial, C]``.
      label_space: as in :func:`soft_dice`.
      squared: squared denominator terms (default ``False``, as in the paper).
      eps, smooth_nr, include_background, batch_dice, reduction: as in :func:`soft_dice`.

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax.numpy as jnp
      >>> labels = jnp.array([[0, 0, 0, 1]])
      >>> print(f"{generalized_dice(jnp.zeros((1, 4, 2)), labels):.4f}")
      0.6250

    References:
      C. H. Sudre et al., *Generalised Dice overlap as a deep learning loss function for highly
      unbalanced segmentations*, DLMIA 2017.
    """
    return _dice_loss(logits, labels, label_space=label_space, reduction=reduction,
                      fn="generalized_dice", prediction="softmax", target="onehot",
                      allow_sets=False, generalized=True, squared=squared, eps=eps,
                      smooth_nr=smooth_nr, include_background=include_background,
                      batch_dice=batch_dice)


def leaf_dice(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace,
    squared: bool = True,
    eps: float = 1e-5,
    smooth_nr: float = 1e-5,
    include_background: bool = True,
    batch_dice: bool = False,
    class_weights: Sequence[float] | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Leaf-Dice: the label-set loss for partial segmentations with only *missing* labels.

    .. math::
      \mathcal{L} = 1 - \frac{1}{C} \sum_c
        \frac{2 \sum_i 1[g_i = \{c\}]\, p_{ic}}
             {\sum_i p_{ic}^\alpha + \sum_i 1[g_i = \{c\}] + \epsilon}

    The numerator counts only voxels annotated with the single leaf ``c``; the prediction term of
    the denominator sums over **all** voxels, set voxels included, so probability put on a leaf
    outside the voxels where it is annotated is penalised. A class without any singleton voxel in
    the sample that lies inside some voxel's label set (it may be present there) contributes a Dice
    of 0 with zero gradient; the mean still divides by ``C``. A class absent from every voxel's
    label gets ``smooth_nr`` as in :func:`soft_dice` (predicted absent: a Dice of about 1). It
    satisfies the label-set axiom when every set holds only leaves absent from the image, and
    equals :func:`soft_dice` on full segmentations.

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer label ids ``[B, *spatial]``: leaves ``< C`` and set ids of ``label_space``.
      label_space: the :class:`~labelset_jax.labelsets.LabelSpace` defining the sets.
      squared, eps, smooth_nr, include_background, batch_dice, class_weights, reduction: as in
        :func:`soft_dice`.

    Returns:
      The loss, a scalar or ``[B]``.

    Example (the reference values of docs/theory.md §2.5):
      >>> import jax.numpy as jnp
      >>> from labelset_jax.labelsets import LabelSpace
      >>> space = LabelSpace.from_superset_map(4, {4: [2, 3]})
      >>> labels = jnp.array([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 4, 4, 0], [0, 0, 0, 0]]])
      >>> predicted = jnp.where(labels == 4, 2, labels)
      >>> print(f"{leaf_dice(1000.0 * jax.nn.one_hot(predicted, 4), labels, label_space=space):.5f}")
      0.50000

    References:
      L. Fidon et al., *Label-set Loss Functions for Partial Supervision: Application to Fetal
      Brain 3D MRI Parcellation*, MICCAI 2021, arXiv:2107.03846.
    """
    return _dice_loss(logits, labels, label_space=label_space, reduction=reduction, fn="leaf_dice",
                      prediction="softmax", target="onehot", allow_sets=True, squared=squared,
                      eps=eps, smooth_nr=smooth_nr, include_background=include_background,
                      batch_dice=batch_dice, class_weights=class_weights)


def marginal_dice(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace,
    squared: bool = True,
    eps: float = 1e-5,
    smooth_nr: float = 1e-5,
    include_background: bool = True,
    batch_dice: bool = False,
    class_weights: Sequence[float] | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Marginal Dice: the soft Dice of ``(Φ_g(p), Φ(g))``, a label-set loss.

    .. math::
      \mathcal{L} = 1 - \frac{1}{C} \sum_c
        \frac{2 \sum_i \Phi(g)_{ic}\, \Phi_g(p)_{ic}}
             {\sum_i \Phi_g(p)_{ic}^\alpha + \sum_i \Phi(g)_{ic}^\alpha + \epsilon}

    where ``Φ_g(p)`` spreads the probability of each voxel's label set evenly over its leaves and
    ``Φ(g)`` is the uniform target over the set (docs/theory.md §2.3). It has the same values as
    ``marginalize(soft_dice)`` (:func:`~labelset_jax.losses.marginalize`), computed by the Dice
    core with its closed-form gradient. Equals :func:`soft_dice` on full segmentations.

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer label ids ``[B, *spatial]``: leaves ``< C`` and set ids of ``label_space``.
      label_space: the :class:`~labelset_jax.labelsets.LabelSpace` defining the sets.
      squared, eps, smooth_nr, include_background, batch_dice, class_weights, reduction: as in
        :func:`soft_dice`.

    Returns:
      The loss, a scalar or ``[B]``.

    Example (the reference values of docs/theory.md §2.5):
      >>> import jax.numpy as jnp
      >>> from labelset_jax.labelsets import LabelSpace
      >>> space = LabelSpace.from_superset_map(3, {3: [1, 2], 4: [0, 1, 2]})
      >>> labels = jnp.array([[[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0], [0, 0, 0, 0]]])
      >>> predicted = jnp.minimum(jnp.where(labels >= 3, 2, labels), 1)
      >>> print(f"{marginal_dice(1000.0 * jax.nn.one_hot(predicted, 3), labels, label_space=space):.5f}")
      0.28310

    References:
      L. Fidon et al., *Label-set Loss Functions for Partial Supervision: Application to Fetal
      Brain 3D MRI Parcellation*, MICCAI 2021, arXiv:2107.03846.
    """
    return _dice_loss(logits, labels, label_space=label_space, reduction=reduction,
                      fn="marginal_dice", prediction="marginal", target="uniform", allow_sets=True,
                      squared=squared, eps=eps, smooth_nr=smooth_nr,
                      include_background=include_background, batch_dice=batch_dice,
                      class_weights=class_weights)


def dice_semimetric(
    logits: Array,
    targets: Array,
    *,
    label_space: LabelSpace | None = None,
    eps: float = 1e-5,
    smooth_nr: float = 1e-5,
    include_background: bool = True,
    batch_dice: bool = False,
    class_weights: Sequence[float] | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Dice semimetric loss (Wang et al.): a soft Dice that is minimal at soft targets.

    .. math::
      \mathcal{L} = 1 - \frac{1}{\sum_c w_c} \sum_c w_c
        \frac{\|p_c\|_1 + \|t_c\|_1 - \|p_c - t_c\|_1 + s_{nr}}{\|p_c\|_1 + \|t_c\|_1 + \epsilon},
      \qquad \|x_c\|_1 = \sum_i |x_{ic}|

    with ``p = softmax(logits)``. Without the constants, each class contributes the semimetric
    ``‖p_c − t_c‖₁ / (‖p_c‖₁ + ‖t_c‖₁)``, which is zero if and only if ``p_c = t_c``: unlike the
    soft Dice, the loss is minimised by predicting soft targets exactly, not by rounding them.
    Since ``‖p‖₁ + ‖t‖₁ − ‖p − t‖₁ = 2 Σ_i min(p_i, t_i)`` for non-negative vectors, the numerator is
    the soft Dice's with the product ``p t`` replaced by ``min(p, t)``; the two agree when the
    targets are hard (0 or 1), so with integer labels this equals :func:`soft_dice` with
    ``squared=False``.

    Args:
      logits: ``[B, *spatial, C]``.
      targets: soft targets ``[B, *spatial, C]`` (probabilities over the classes, e.g. averaged
        annotations or a teacher's softmax), or integer leaf ids ``[B, *spatial]``.
      label_space: as in :func:`soft_dice`.
      eps: added to the denominator only.
      smooth_nr: added to the numerator.
      include_background, batch_dice, class_weights, reduction: as in :func:`soft_dice`.

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax.numpy as jnp
      >>> targets = jnp.array([[[0.7, 0.3], [0.2, 0.8]]])  # two voxels, soft labels
      >>> print(f"{dice_semimetric(jnp.log(targets), targets):.5f}")  # the prediction equals them
      0.00000
      >>> print(f"{soft_dice(jnp.log(targets), targets, squared=False):.5f}")  # soft Dice does not
      0.37374

    References:
      Z. Wang, T. Popordanoska, J. Bertels, R. Lemmens, M. B. Blaschko, *Dice Semimetric Losses:
      Optimizing the Dice Score with Soft Labels*, MICCAI 2023, arXiv:2303.16296.
    """
    return _dice_loss(logits, targets, label_space=label_space, reduction=reduction,
                      fn="dice_semimetric", prediction="softmax", target="onehot",
                      allow_sets=False, intersection="min", squared=False, eps=eps,
                      smooth_nr=smooth_nr, include_background=include_background,
                      batch_dice=batch_dice, class_weights=class_weights)


def soft_target_dice(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace,
    squared: bool = True,
    eps: float = 1e-5,
    smooth_nr: float = 1e-5,
    include_background: bool = True,
    batch_dice: bool = False,
    class_weights: Sequence[float] | None = None,
    reduction: str = "mean",
) -> Array:
    r"""Baseline "soft-target" Dice: the raw softmax against the uniform set target ``Φ(g)``.

    .. math::
      \mathcal{L} = 1 - \frac{1}{C} \sum_c
        \frac{2 \sum_i \Phi(g)_{ic}\, p_{ic}}{\sum_i p_{ic}^\alpha + \sum_i \Phi(g)_{ic}^\alpha + \epsilon}

    **Not a label-set loss**: it pushes predictions towards uniform probabilities inside each set
    (method 2 of the reference study). Provided for comparisons; prefer :func:`leaf_dice` or
    :func:`~labelset_jax.losses.marginal_dice`.

    Args: as :func:`leaf_dice`.

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from labelset_jax.labelsets import LabelSpace
      >>> space = LabelSpace.from_superset_map(3, {3: [1, 2]})
      >>> labels = jnp.array([[0, 3]])
      >>> uniform = jnp.log(jnp.array([[[1.0, 1e-9, 1e-9], [1e-9, 0.5, 0.5]]]))
      >>> print(f"{soft_target_dice(uniform, labels, label_space=space):.4f}")
      0.0000

    References:
      L. Fidon et al., MICCAI 2021 (baseline "soft-target" Dice).
    """
    return _dice_loss(logits, labels, label_space=label_space, reduction=reduction,
                      fn="soft_target_dice", prediction="softmax", target="uniform",
                      allow_sets=True, squared=squared, eps=eps, smooth_nr=smooth_nr,
                      include_background=include_background, batch_dice=batch_dice,
                      class_weights=class_weights)


