r"""Dice losses: soft Dice, generalized Dice, leaf-Dice, and the soft-target Dice baseline.

Every Dice variant is a function of three per-class sums over the voxels of a sample,

.. math::
  S^{pt}_c = \sum_i \hat p_{ic} t_{ic}, \qquad
  S^{pp}_c = \sum_i \hat p_{ic}^\alpha, \qquad
  S^{tt}_c = \sum_i t_{ic}^\alpha,

where ``p̂`` is a per-voxel map of the softmax (the softmax itself, or ``Φ_g(p)`` for marginal Dice)
and ``t`` a per-voxel target (one-hot, the leaf indicator ``1[g_i = {c}]`` for leaf-Dice, or the
uniform set target ``Φ(g)``). The soft Dice per class is
``(2 S^pt_c + smooth_nr) / (S^pp_c + S^tt_c + eps)``.

**The Dice core** (:func:`_dice_core`) computes the sums in one pass over the logits and has a
``jax.custom_vjp``: the gradient with respect to ``p̂`` is closed-form,
``∂L/∂p̂_ic = a_c t_ic + b_c α p̂_ic^{α-1}`` with ``a = ∂L/∂S^pt`` and ``b = ∂L/∂S^pp`` taken on the
tiny ``[B, C]`` sums, and the per-voxel maps are recomputed from the logits in the backward pass
instead of being stored. Value and gradient then cost two reads of the logits and one write, and
no ``[B, *spatial, C]`` intermediate outlives a pass.

On CPU both passes run as fused kernels (:mod:`labelset_jax.losses._kernels`: one C++ loop per
pass over the logits, evaluating the same maps from the membership matrix); on other platforms,
or when the kernels are not built, as the pure-JAX functions below, which XLA fuses. Both paths
are tested against each other and against float64 NumPy references (``benchmarks/RESULTS.md``
has the timings).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses import _common, _kernels

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _DiceSpec:
    """Static description of a Dice loss: which maps, which reducer, which options."""

    space: LabelSpace
    prediction: str  # "softmax" | "marginal"  (p̂ = p or Φ_g(p))
    target: str  # "onehot" | "leaf" | "uniform"  (t = one-hot, 1[g={c}], Φ(g))
    squared: bool = True
    eps: float = 1e-5
    smooth_nr: float = 0.0
    include_background: bool = True
    batch_dice: bool = False
    class_weights: tuple[float, ...] | None = None
    generalized: bool = False


def _targets(m: Array, size: Array, spec: _DiceSpec) -> Array:
    """``t`` from the membership rows: the leaf indicator or ``Φ(g)`` (one-hot on leaves)."""
    if spec.target == "leaf":
        return _common.leaf_targets(m, size)
    return _common.uniform_targets(m, size)  # "onehot" (labels are leaves) or "uniform"


def _voxel_maps(logits: Array, labels: Array, spec: _DiceSpec) -> tuple[Array, Array]:
    """``(p̂, t)``, both float32 ``[B, N, C]``, from the label-set maps of ``_common``."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    m, size = _common.gather_sets(labels, spec.space)
    if spec.prediction == "marginal":
        probs = _common.marginal_probs(probs, m, size)
    targets = _targets(m, size, spec)
    return _common.flatten_spatial(probs, channels=True), _common.flatten_spatial(targets, channels=True)


def _class_sums(pred: Array, targets: Array, spec: _DiceSpec) -> tuple[Array, Array, Array]:
    """The per-class sums ``S^pt, S^pp, S^tt``: ``[B, C]``, or ``[1, C]`` for batch Dice."""
    axes = (0, 1) if spec.batch_dice else (1,)
    power = (lambda x: x * x) if spec.squared else (lambda x: x)
    s_pt = jnp.sum(pred * targets, axis=axes)
    s_pp = jnp.sum(power(pred), axis=axes)
    s_tt = jnp.sum(power(targets), axis=axes)
    if spec.batch_dice:
        s_pt, s_pp, s_tt = s_pt[None], s_pp[None], s_tt[None]
    return s_pt, s_pp, s_tt


def _loss_from_sums(s_pt: Array, s_pp: Array, s_tt: Array, spec: _DiceSpec, batch: int) -> Array:
    """Per-sample Dice loss ``[B]`` from the per-class sums (broadcast for batch Dice)."""
    num_classes = s_pt.shape[-1]
    first = 0 if spec.include_background else 1
    if spec.class_weights is not None:
        weights = jnp.asarray(spec.class_weights, jnp.float32)
    else:
        weights = jnp.ones((num_classes,), jnp.float32)
    weights = weights[first:]
    s_pt, s_pp, s_tt = s_pt[:, first:], s_pp[:, first:], s_tt[:, first:]
    if spec.generalized:
        # Sudre et al. 2017: w_c = 1 / (Σ_i t_ic)²; classes absent from the target get the largest
        # finite weight of the sample (MONAI's convention), so an empty class does not dominate.
        w = jnp.where(s_tt > 0, 1.0 / jnp.maximum(s_tt, 1e-30) ** 2, 0.0)
        w = jnp.where(s_tt > 0, w, jnp.max(w, axis=-1, keepdims=True)) * weights
        numer = 2.0 * jnp.sum(w * s_pt, axis=-1) + spec.smooth_nr
        denom = jnp.sum(w * (s_pp + s_tt), axis=-1) + spec.eps
        loss = 1.0 - numer / denom
    else:
        dice = (2.0 * s_pt + spec.smooth_nr) / (s_pp + s_tt + spec.eps)
        loss = 1.0 - jnp.sum(weights * dice, axis=-1) / jnp.sum(weights)
    return jnp.broadcast_to(loss, (batch,))


def _core_maps(logits: Array, labels: Array, spec: _DiceSpec):
    """``(p, p̂, t, m, size)`` as ``[B, N, C]`` / ``[B, N, 1]`` arrays for the Dice core."""
    z = _common.flatten_spatial(logits, channels=True).astype(jnp.float32)
    m, size = _common.gather_sets(_common.flatten_spatial(labels, channels=False), spec.space)
    probs = jnp.exp(z - _common.channel_logsumexp(z))
    pred = _common.marginal_probs(probs, m, size) if spec.prediction == "marginal" else probs
    return probs, pred, _targets(m, size, spec), m, size


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dice_core(logits: Array, labels: Array, spec: _DiceSpec) -> Array:
    """Per-sample Dice loss ``[B]`` of ``(p̂(logits, labels), t(labels))``; closed-form VJP."""
    return _dice_core_fwd(logits, labels, spec)[0]


def _kernel_mode(spec: _DiceSpec) -> dict:
    """The CPU kernels' flags for ``spec`` (one-hot and uniform targets are both ``m / |g|``)."""
    return dict(marginal=spec.prediction == "marginal", leaf=spec.target == "leaf", squared=spec.squared)


def _sums_kernel(logits, labels, *, spec):
    return _kernels.dice_sums(logits, labels, spec.space, **_kernel_mode(spec))


def _sums_jax(logits, labels, *, spec):
    """Per-sample ``(S^pt, S^pp, S^tt)``, each ``[B, C]``, in pure JAX."""
    if _is_leaf_target(spec):
        return _leaf_sums(logits, labels, spec)
    _, pred, targets, _, _ = _core_maps(logits, labels, spec)
    return _class_sums(pred, targets, dataclasses.replace(spec, batch_dice=False))


def _batch_sums(sums, spec):
    """Batch Dice adds the per-sample sums over the batch (``[1, C]``)."""
    if spec.batch_dice:
        return tuple(jnp.sum(s, axis=0, keepdims=True) for s in sums)
    return sums


def _dice_core_fwd(logits, labels, spec):
    sums = _kernels.on_cpu(functools.partial(_sums_kernel, spec=spec),
                           functools.partial(_sums_jax, spec=spec), logits, labels)
    sums = _batch_sums(sums, spec)
    # Residuals: the inputs and the [B, C] sums; the backward pass recomputes the softmax.
    return _loss_from_sums(*sums, spec, logits.shape[0]), (logits, labels, sums)


def _sums_vjp(spec, residuals, g):
    """``(a, b) = (∂L/∂S^pt, ∂L/∂S^pp)``, each ``[B, C]`` (batch Dice: the same row per sample)."""
    logits, _, (s_pt, s_pp, s_tt) = residuals
    batch, num_classes = logits.shape[0], logits.shape[-1]
    _, sums_vjp = jax.vjp(lambda pt, pp: _loss_from_sums(pt, pp, s_tt, spec, batch), s_pt, s_pp)
    a, b = sums_vjp(g)
    return jnp.broadcast_to(a, (batch, num_classes)), jnp.broadcast_to(b, (batch, num_classes))


def _grad_kernel(logits, labels, a, b, *, spec):
    return _kernels.dice_grad(logits, labels, spec.space, a, b, **_kernel_mode(spec))


def _grad_jax(logits, labels, a, b, *, spec):
    r"""Closed-form ``∂L/∂logits`` in pure JAX, from ``a, b`` (``[B, C]``).

    * ``d = ∂L/∂p̂ = a t + b α p̂^{α-1}`` per voxel;
    * marginal Dice: ``∂L/∂p = Φ_g(d)``, since ``Φ_g`` is a symmetric linear map (its own adjoint);
    * softmax Jacobian: ``∂L/∂z_c = p_c (d_c - Σ_{c'} p_{c'} d_{c'})``.
    """
    a, b = a[:, None], b[:, None]
    if _is_leaf_target(spec):
        return _leaf_grad(logits, labels, a, b, spec)
    probs, pred, targets, m, size = _core_maps(logits, labels, spec)
    d = a * targets + (2.0 * b * pred if spec.squared else b)
    if spec.prediction == "marginal":
        d = _common.marginal_probs(d, m, size)
    d_logits = probs * (d - _common.channel_sum(probs * d))
    return d_logits.reshape(logits.shape)


def _dice_core_bwd(spec, residuals, g):
    r"""Closed-form VJP of the Dice core: ``a = ∂L/∂S^pt`` and ``b = ∂L/∂S^pp`` by ``jax.vjp`` on
    the tiny ``[B, C]`` sums, then one pass over the logits and labels (the fused CPU kernel, or
    :func:`_grad_jax`) recomputes the softmax and writes the gradient; no ``[B, N, C]`` array is
    kept from the forward pass.
    """
    logits, labels, _ = residuals
    a, b = _sums_vjp(spec, residuals, g)
    d_logits = _kernels.on_cpu(functools.partial(_grad_kernel, spec=spec),
                               functools.partial(_grad_jax, spec=spec), logits, labels, a, b)
    return d_logits.astype(logits.dtype), None


# ------------------------------------------------------------- the leaf-target path of the core
# For one-hot and leaf targets (soft Dice, leaf-Dice and the losses built on them) the target of a
# voxel is the indicator of its label id, t_ic = 1[g_i = c] (set ids >= C never equal a leaf), so
#   S^pt_c = Σ_{i: g_i = c} p_{i g_i},   S^tt_c = #{i: g_i = c},
# sums of *one scalar per voxel* grouped by label id. Computing them that way, instead of as
# [B, N, C] products reduced over voxels, avoids materialising a target map (XLA:CPU's reduction
# fusions need their inputs in memory when they contain compares or gathers): 1.7× faster and
# 30 % less peak memory on this CPU (benchmarks/RESULTS.md). Same values as the generic path (tested).

_ID_CHUNK = 4096  # voxels per float32 partial sum in `_sums_by_id` (bounds rounding error)


def _is_leaf_target(spec: _DiceSpec) -> bool:
    return spec.prediction == "softmax" and spec.target in ("onehot", "leaf")


def _sums_by_id(values: Array, labels: Array, num_ids: int) -> Array:
    """``Σ_{i: g_i = k} values_i`` per sample: ``[B, N]`` -> ``[B, num_ids]``.

    A segment sum into one bin per (sample, chunk of ``_ID_CHUNK`` voxels, id), then a tree sum over
    the chunks, so that no float32 accumulator adds up more than ``_ID_CHUNK`` terms in sequence.
    Ids outside ``[0, num_ids)`` land in a spare bin that is dropped.
    """
    batch, n = values.shape
    chunks = -(-n // _ID_CHUNK)
    pad = chunks * _ID_CHUNK - n
    bins = num_ids + 1
    labels = jnp.where((labels >= 0) & (labels < num_ids), labels, num_ids)
    if pad:
        values = jnp.pad(values, ((0, 0), (0, pad)))
        labels = jnp.pad(labels, ((0, 0), (0, pad)), constant_values=num_ids)
    offsets = bins * jnp.arange(batch * chunks, dtype=labels.dtype).reshape(batch, chunks, 1)
    ids = labels.reshape(batch, chunks, _ID_CHUNK) + offsets
    sums = jax.ops.segment_sum(values.reshape(-1), ids.reshape(-1), num_segments=batch * chunks * bins)
    return jnp.sum(sums.reshape(batch, chunks, bins), axis=1)[:, :num_ids]


def _leaf_maps(logits: Array, labels: Array):
    """``(z, g, lse, q)``: flat logits and labels, the per-voxel lse and ``q_i = p_{i g_i}`` (0 on set
    voxels), ``[B, N, C]`` / ``[B, N]``.

    ``lse`` is a true reduction here (not the unrolled :func:`_common.channel_logsumexp`), which
    XLA:CPU keeps in memory instead of re-deriving it inside every consumer (measured faster).
    """
    z = _common.flatten_spatial(logits, channels=True).astype(jnp.float32)
    g = _common.flatten_spatial(labels, channels=False)
    num_classes = z.shape[-1]
    lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    z_g = jnp.take_along_axis(z, jnp.clip(g, 0, num_classes - 1)[..., None], axis=-1)[..., 0]
    q = jnp.where(g < num_classes, jnp.exp(z_g - lse[..., 0]), 0.0)
    return z, g, lse, q


def _leaf_sums(logits, labels, spec):
    """Per-sample sums ``[B, C]`` of the leaf-target path."""
    z, g, lse, q = _leaf_maps(logits, labels)
    num_classes = logits.shape[-1]
    p = jnp.exp(z - lse)
    s_pp = jnp.sum(p * p if spec.squared else p, axis=1)
    s_pt = _sums_by_id(q, g, spec.space.num_ids)[:, :num_classes]
    s_tt = _sums_by_id(jnp.ones_like(q), g, spec.space.num_ids)[:, :num_classes]  # t^α = t
    return s_pt, s_pp, s_tt


def _leaf_grad(logits, labels, a, b, spec):
    r"""``∂L/∂z = p ⊙ (d − Σ_c p_c d_c)`` with ``d_c = α b_c p_c^{α-1} + a_c 1[g = c]``, where
    ``Σ_c p_c d_c = α Σ_c b_c p_c^α + a_g q`` (``a, b``: ``[B, 1, C]``).
    """
    z, g, lse, q = _leaf_maps(logits, labels)
    num_classes = logits.shape[-1]
    a_g = jnp.take_along_axis(a[:, 0], jnp.clip(g, 0, num_classes - 1), axis=1)
    p = jnp.exp(z - lse)
    s = _common.channel_sum(2.0 * b * p * p if spec.squared else b * p) + (a_g * q)[..., None]
    d_pred = 2.0 * b * p if spec.squared else b
    hit = g[..., None] == jnp.arange(num_classes, dtype=g.dtype)
    d_logits = p * (d_pred + jnp.where(hit, a, 0.0) - s)
    return d_logits.reshape(logits.shape)


_dice_core.defvjp(_dice_core_fwd, _dice_core_bwd)


def _soft_target_dice_core(logits: Array, targets: Array, spec: _DiceSpec) -> Array:
    """Dice of ``softmax(logits)`` against given soft targets (plain autodiff)."""
    pred = _common.flatten_spatial(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), channels=True)
    t = _common.flatten_spatial(targets.astype(jnp.float32), channels=True)
    return _loss_from_sums(*_class_sums(pred, t, spec), spec, logits.shape[0])


def _make_spec(space, prediction, target, *, squared, eps, smooth_nr, include_background,
               batch_dice, class_weights, generalized, fn) -> _DiceSpec:
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
        space=space, prediction=prediction, target=target, squared=bool(squared), eps=float(eps),
        smooth_nr=float(smooth_nr), include_background=bool(include_background),
        batch_dice=bool(batch_dice), class_weights=class_weights, generalized=generalized,
    )


def _dice_loss(logits, labels, *, label_space, reduction, fn, prediction, target, allow_sets,
               generalized=False, squared=True, eps=1e-5, smooth_nr=0.0, include_background=True,
               batch_dice=False, class_weights=None):
    """Shared front end of the Dice losses: checks, static spec, core, reduction."""
    if _common.is_soft(logits, labels):
        if allow_sets:
            raise ValueError(f"{fn}: takes integer label ids (label sets), not soft targets")
        _common.check_soft_targets(logits, labels, fn=fn)
        space = label_space or LabelSpace.leaves(logits.shape[-1])
        spec = _make_spec(space, prediction, target, squared=squared, eps=eps, smooth_nr=smooth_nr,
                          include_background=include_background, batch_dice=batch_dice,
                          class_weights=class_weights, generalized=generalized, fn=fn)
        return _common.reduce_loss(_soft_target_dice_core(logits, labels, spec), reduction, fn=fn)
    space = _common.check_inputs(logits, labels, label_space, fn=fn, allow_sets=allow_sets)
    spec = _make_spec(space, prediction, target, squared=squared, eps=eps, smooth_nr=smooth_nr,
                      include_background=include_background, batch_dice=batch_dice,
                      class_weights=class_weights, generalized=generalized, fn=fn)
    return _common.reduce_loss(_dice_core(logits, labels, spec), reduction, fn=fn)


def soft_dice(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace | None = None,
    squared: bool = True,
    eps: float = 1e-5,
    smooth_nr: float = 0.0,
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
      label_space: optional; concrete labels holding set ids are rejected (use
        :func:`leaf_dice` or :func:`~labelset_jax.losses.marginal_dice`).
      squared: squared denominator terms (``α = 2``; MONAI's ``squared_pred``).
      eps: added to the denominator only (MONAI's ``smooth_dr``).
      smooth_nr: added to the numerator (MONAI's ``smooth_nr``).
      include_background: whether class 0 enters the mean.
      batch_dice: sum over the whole batch before dividing (nnU-Net's batch Dice); the single
        batch loss is then returned for every sample with ``reduction="none"``.
      class_weights: optional static per-class weights ``[C]`` of the mean over classes.
      reduction: ``"mean"`` or ``"none"``.

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
    smooth_nr: float = 0.0,
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
    smooth_nr: float = 0.0,
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
    the sample contributes a Dice of 0 with zero gradient; the mean still divides by ``C``. It
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

    Example (the reference values of SPEC §2.5):
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
                      prediction="softmax", target="leaf", allow_sets=True, squared=squared,
                      eps=eps, smooth_nr=smooth_nr, include_background=include_background,
                      batch_dice=batch_dice, class_weights=class_weights)


def soft_target_dice(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace,
    squared: bool = True,
    eps: float = 1e-5,
    smooth_nr: float = 0.0,
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


def marginal_dice_fused(logits, labels, *, label_space, reduction="mean", **options) -> Array:
    """``marginalize(soft_dice)`` through the Dice core (used by :func:`marginalize`)."""
    return _dice_loss(logits, labels, label_space=label_space, reduction=reduction,
                      fn="marginal_dice", prediction="marginal", target="uniform",
                      allow_sets=True, **options)
