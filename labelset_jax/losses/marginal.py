r"""Marginalization (docs/theory.md §2.3): the unique conversion of a classical loss into a label-set loss.

For a voxel whose label set is ``A = g_i``,

* ``Φ_g(p)_ic = (1/|A|) Σ_{c'∈A} p_ic'`` for ``c ∈ A`` and ``p_ic`` otherwise: the probability of the
  set spread evenly over its leaves;
* ``Φ(g)_ic = 1/|A|`` for ``c ∈ A`` and 0 otherwise: the uniform target over the set.

The marginalized loss is ``ℒ_marg(p, g) = ℒ(Φ_g(p), Φ(g))``. It satisfies the label-set axiom (it
cannot tell apart predictions that differ only inside each voxel's set), equals ``ℒ`` on full
segmentations, and is the only label-set loss that agrees with ``ℒ`` on predictions already
uniform inside every set (Fidon et al. 2021, Theorem 1).

:func:`marginalize` is this theorem as a function transform: it works for any classical loss that
accepts soft targets. Two marginalized losses have fused implementations of their own, with the
same values: :func:`~labelset_jax.losses.marginal_dice` (the Dice core) and
:func:`marginal_cross_entropy` (``logsumexp`` over each set; ``marginalize(cross_entropy)`` equals it
plus a constant).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses import _common
from labelset_jax.losses.classification import focal

Array = jax.Array


def marginal_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    label_space: LabelSpace,
    reduction: str = "mean",
) -> Array:
    r"""Marginal cross-entropy: the negative log-likelihood of each voxel's label set.

    .. math::
      \mathcal{L} = -\frac{1}{N} \sum_i \log \sum_{c \in g_i} p_{ic}
        = -\frac{1}{N} \sum_i \left( \operatorname{logsumexp}_{c \in g_i} z_{ic}
          - \operatorname{logsumexp}_{c} z_{ic} \right)

    This is the *marginal-likelihood form* (zero for a perfect prediction). The marginalized
    cross-entropy ``marginalize(cross_entropy)`` equals it plus the constant
    ``(1/N) Σ_i log |g_i|``; both have the same gradient. Stable for any logits.

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer label ids ``[B, *spatial]`` (leaves and set ids of ``label_space``).
      label_space: the :class:`~labelset_jax.labelsets.LabelSpace`.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over the batch).

    Returns:
      The loss, a scalar or ``[B]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from labelset_jax.labelsets import LabelSpace
      >>> space = LabelSpace.from_superset_map(3, {3: [1, 2]})
      >>> logits = jnp.array([[[0.0, 5.0, -5.0]]])  # all the mass on leaf 1, inside the set 3
      >>> print(f"{marginal_cross_entropy(logits, jnp.array([[3]]), label_space=space):.4f}")
      0.0067

    References:
      L. Fidon et al., MICCAI 2021, arXiv:2107.03846 (marginalization);
      Y. Shi et al., *Marginal loss and exclusion loss for partially supervised multi-organ
      segmentation*, MedIA 2021.
    """
    label_space = _common.check_inputs(logits, labels, label_space, fn="marginal_cross_entropy")
    _common.check_reduction(reduction, fn="marginal_cross_entropy")
    return _common.reduce_loss(_marginal_ce_core(logits, labels, label_space), reduction,
                               fn="marginal_cross_entropy")


# The marginal cross-entropy has a closed-form gradient, ∂/∂z_c = p_c − 1[c ∈ g] p_c / Σ_{c'∈g} p_c'
# (the softmax minus the softmax restricted to the set), so, like the Dice core, it keeps only its
# inputs as residuals; on CPU both passes visit the voxels in chunks (``_common.execution``).
def _flat(logits: Array, labels: Array) -> tuple[Array, Array]:
    return _common.flatten_spatial(logits, channels=True), _common.flatten_spatial(labels, channels=False)


def _chunk_nll(z: Array, labels: Array, weight: Array | None, *, space: LabelSpace) -> tuple[Array, Array]:
    """``(Σ_i w_i (-log Σ_{c ∈ g_i} p_ic), Σ_i w_i)`` over the voxels of one chunk, each ``[B]``, with
    ``w_i`` 1 for the voxels that count (``_common.counted``)."""
    m, _ = _common.gather_sets(labels, space)
    w = _common.counted(labels, space, classical=False)
    if weight is not None:
        w = w * weight[:, 0]
    z = z.astype(jnp.float32)
    nll = jax.nn.logsumexp(z, axis=-1) - jax.nn.logsumexp(z, axis=-1, where=m > 0)
    return jnp.sum(jnp.where(w > 0, nll, 0.0) * w, axis=1), jnp.sum(w, axis=1)


def _chunk_nll_grad(z: Array, labels: Array, scale: Array, *, space: LabelSpace) -> Array:
    """``scale_b (p − 1[c ∈ g] p / Σ_{c' ∈ g} p_c')`` for one chunk, from the logits.

    The second term is ``exp(z − logsumexp over the set)``: finite for any logits. A voxel whose set
    holds every leaf (the ignore label) gets exactly zero.
    """
    m, size = _common.gather_sets(labels, space)
    w = _common.counted(labels, space, classical=False)[..., None]
    z = z.astype(jnp.float32)
    set_probs = jnp.where(m > 0, jnp.exp(z - _common.set_logsumexp(z, m)), 0.0)
    grad = jnp.where((size < z.shape[-1]) & (w > 0), _common.softmax(z) - set_probs, 0.0)
    return grad * scale[:, None, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _marginal_ce_core(logits: Array, labels: Array, space: LabelSpace) -> Array:
    """Per-sample marginal cross-entropy ``[B]``; closed-form VJP."""
    return _marginal_ce_fwd(logits, labels, space)[0]


def _marginal_ce_fwd(logits, labels, space):
    z, g = _flat(logits, labels)
    total, count = _common.sum_over_voxels(functools.partial(_chunk_nll, space=space), z, g)
    count = jnp.maximum(count, 1.0)  # the mean over the voxels that count (0 when none does)
    return total / count, (logits, labels, count)


def _marginal_ce_bwd(space, residuals, cotangent):
    logits, labels, count = residuals
    z, g = _flat(logits, labels)
    scale = cotangent.astype(jnp.float32) / count
    grad = _common.map_over_voxels(functools.partial(_chunk_nll_grad, scale=scale, space=space),
                                   jax.ShapeDtypeStruct(z.shape, logits.dtype), z, g)
    return grad.reshape(logits.shape), None


_marginal_ce_core.defvjp(_marginal_ce_fwd, _marginal_ce_bwd)


def marginalize(loss: Callable[..., Array]) -> Callable[..., Array]:
    r"""Turns a classical loss that accepts soft targets into a label-set loss.

    .. math::
      \mathcal{L}_{marg}(p, g) = \mathcal{L}\big(\Phi_g(p), \Phi(g)\big)

    The returned function has the label-set signature
    ``(logits, labels, *, label_space, reduction="mean", **options)`` and calls
    ``loss(log Φ_g(p), Φ(g), reduction=..., **options)``: ``log Φ_g(p)`` are valid logits (their
    softmax is ``Φ_g(p)``), computed stably with ``logsumexp`` over each set. The result is
    differentiated by plain autodiff; ``marginalize(soft_dice)`` has the values of
    :func:`~labelset_jax.losses.marginal_dice`, which computes them in one fused pass with a
    closed-form gradient, and ``marginalize(cross_entropy)`` is
    :func:`marginal_cross_entropy` plus the constant ``mean_i log |g_i|``.

    Args:
      loss: a classical loss ``loss(logits, targets, *, reduction, **options)`` accepting soft
        targets ``[B, *spatial, C]`` (all the classical losses of this package do).

    Returns:
      The marginalized label-set loss.

    Example:
      >>> import jax.numpy as jnp
      >>> from labelset_jax.labelsets import LabelSpace
      >>> from labelset_jax.losses import soft_dice
      >>> space = LabelSpace.from_superset_map(3, {3: [1, 2]})
      >>> marginal = marginalize(soft_dice)
      >>> labels = jnp.array([[0, 3, 3, 1]])
      >>> a = jnp.array([[[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [0, 9.0, 0]]])
      >>> b = a.at[0, 1].set(jnp.array([0, 0, 9.0]))  # changed only inside voxel 1's set
      >>> bool(jnp.allclose(marginal(a, labels, label_space=space),
      ...                   marginal(b, labels, label_space=space)))
      True

    References:
      L. Fidon et al., MICCAI 2021, arXiv:2107.03846, Theorem 1.
    """
    name = getattr(loss, "__name__", type(loss).__name__)

    def marginal_loss(logits, labels, *, label_space: LabelSpace, reduction: str = "mean", **options):
        label_space = _common.check_inputs(logits, labels, label_space, fn=f"marginalize({name})")
        _common.check_reduction(reduction, fn=f"marginalize({name})")
        m, size = _common.gather_sets(labels, label_space)
        # The voxels a label-set loss excludes (the ignore id, unknown ids) carry the set of all
        # leaves here: uniform Φ_g(p) and Φ(g), a constant with zero gradient (the classical loss,
        # fed soft targets, has no mask).
        w = _common.counted(labels, label_space, classical=False)[..., None]
        m = jnp.where(w > 0, m, 1.0)
        size = jnp.where(w > 0, size, float(label_space.num_classes))
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        marginal_logits = _common.marginal_log_probs(log_probs, m, size)
        targets = _common.uniform_targets(m, size)
        return loss(marginal_logits, targets, reduction=reduction, **options)

    marginal_loss.__name__ = marginal_loss.__qualname__ = f"marginal_{name}"
    marginal_loss.__doc__ = f"The marginalization of ``{name}`` (see :func:`marginalize`)."
    marginal_loss.__signature__ = _marginal_signature(loss)
    return marginal_loss


def _marginal_signature(loss: Callable[..., Array]) -> inspect.Signature:
    """``(logits, labels, *, label_space, <the loss's options>, reduction="mean")``: the label space
    is required, the loss's own options (``gamma``, ...) keep their defaults."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("logits", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Array),
              inspect.Parameter("labels", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Array),
              inspect.Parameter("label_space", kw, annotation=LabelSpace)]
    try:
        options = [p for p in inspect.signature(loss).parameters.values()
                   if p.kind is kw and p.name not in ("label_space", "reduction")]
    except (TypeError, ValueError):  # a callable without a signature: options are **kwargs
        options = []
    params += options + [inspect.Parameter("reduction", kw, default="mean", annotation=str)]
    return inspect.Signature(params, return_annotation=Array)


marginal_focal = marginalize(focal)
marginal_focal.__doc__ = r"""Marginal focal loss: ``marginalize(focal)``.

.. math::
  \mathcal{L} = -\frac{1}{N} \sum_i \sum_c \Phi(g)_{ic}\, (1 - \Phi_g(p)_{ic})^\gamma \log \Phi_g(p)_{ic}

Args:
  logits: ``[B, *spatial, C]``.
  labels: integer label ids ``[B, *spatial]``.
  label_space: the :class:`~labelset_jax.labelsets.LabelSpace`.
  gamma, alpha: as in :func:`~labelset_jax.losses.focal`.
  reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over the batch).

Returns:
  The loss, a scalar or ``[B]``.

Example:
  >>> import jax.numpy as jnp
  >>> from labelset_jax.labelsets import LabelSpace
  >>> space = LabelSpace.from_superset_map(3, {3: [1, 2]})
  >>> logits = jnp.array([[[0.0, 5.0, -5.0]]])
  >>> print(f"{marginal_focal(logits, jnp.array([[3]]), label_space=space, gamma=0.0):.4f}")
  0.7000
"""
