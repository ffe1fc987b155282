r"""Marginalization (SPEC §2.3): the unique conversion of a classical loss into a label-set loss.

For a voxel whose label set is ``A = g_i``,

* ``Φ_g(p)_ic = (1/|A|) Σ_{c'∈A} p_ic'`` for ``c ∈ A`` and ``p_ic`` otherwise: the probability of the
  set spread evenly over its leaves;
* ``Φ(g)_ic = 1/|A|`` for ``c ∈ A`` and 0 otherwise: the uniform target over the set.

The marginalized loss is ``ℒ_marg(p, g) = ℒ(Φ_g(p), Φ(g))``. It satisfies the label-set axiom (it
cannot tell apart predictions that differ only inside each voxel's set), equals ``ℒ`` on full
segmentations, and is the only label-set loss that agrees with ``ℒ`` on predictions already
uniform inside every set (Fidon et al. 2021, Theorem 1).

:func:`marginalize` is this theorem as a function transform. The maps ``Φ_g`` and ``Φ`` are the
functions :func:`labelset_jax.losses._common.marginal_log_probs` and
:func:`~labelset_jax.losses._common.uniform_targets`, shared with the Dice core.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses import _common, _kernels
from labelset_jax.losses.classification import cross_entropy, focal
from labelset_jax.losses.dice import marginal_dice_fused, soft_dice

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
      reduction: ``"mean"`` or ``"none"``.

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
    label_space = _common.check_inputs(logits, labels, label_space, fn="marginal_cross_entropy",
                                       allow_sets=True)
    return _common.reduce_loss(_marginal_ce_core(logits, labels, label_space), reduction,
                               fn="marginal_cross_entropy")


def _marginal_ce_jax(logits: Array, labels: Array, space: LabelSpace) -> Array:
    """Per-sample marginal CE ``[B]`` in pure JAX (``logsumexp`` over the set and over all leaves)."""
    m, _ = _common.gather_sets(labels, space)
    per_voxel = -_common.set_log_likelihood(logits, m)
    return jnp.mean(_common.flatten_spatial(per_voxel, channels=False), axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _marginal_ce_core(logits: Array, labels: Array, space: LabelSpace) -> Array:
    """Per-sample marginal CE ``[B]``: the fused CPU kernel or pure JAX (see ``_kernels``)."""
    return _marginal_ce_fwd(logits, labels, space)[0]


def _marginal_ce_fwd(logits, labels, space):
    num_voxels = labels[0].size
    loss = _kernels.on_cpu(lambda z, g: _kernels.marginal_ce_sum(z, g, space) / num_voxels,
                           lambda z, g: _marginal_ce_jax(z, g, space), logits, labels)
    return loss, (logits, labels)


def _marginal_ce_bwd(space, residuals, g):
    """``∂/∂z_c = (g_b / N) (p_c − 1[c ∈ g_i] p_c / Σ_{c' ∈ g_i} p_c')``, recomputed from the logits."""
    logits, labels = residuals
    num_voxels = labels[0].size

    def by_autodiff(z, lab, cot):
        return jax.vjp(lambda zz: _marginal_ce_jax(zz, lab, space), z)[1](cot)[0]

    grad = _kernels.on_cpu(lambda z, lab, cot: _kernels.marginal_ce_grad(z, lab, space, cot / num_voxels),
                           by_autodiff, logits, labels, g)
    return grad.astype(logits.dtype), None


_marginal_ce_core.defvjp(_marginal_ce_fwd, _marginal_ce_bwd)


def _marginalized_cross_entropy(logits, labels, *, label_space, reduction="mean"):
    """``marginalize(cross_entropy)``: the marginal CE plus ``mean_i log |g_i|``."""
    _, size = _common.gather_sets(labels, label_space)
    log_size = jnp.mean(_common.flatten_spatial(jnp.log(size[..., 0]), channels=False), axis=1)
    per_sample = marginal_cross_entropy(logits, labels, label_space=label_space, reduction="none")
    return _common.reduce_loss(per_sample + log_size, reduction, fn="marginalize(cross_entropy)")


# Losses whose marginalization has a faster equivalent; tests check each against the generic path.
_FUSED: dict[Callable, Callable] = {
    cross_entropy: _marginalized_cross_entropy,
    soft_dice: marginal_dice_fused,
}


def marginalize(loss: Callable[..., Array], *, fused: bool = True) -> Callable[..., Array]:
    r"""Turns a classical loss that accepts soft targets into a label-set loss.

    .. math::
      \mathcal{L}_{marg}(p, g) = \mathcal{L}\big(\Phi_g(p), \Phi(g)\big)

    The returned function has the label-set signature
    ``(logits, labels, *, label_space, reduction="mean", **options)`` and calls
    ``loss(log Φ_g(p), Φ(g), reduction=..., **options)``: ``log Φ_g(p)`` are valid logits (their
    softmax is ``Φ_g(p)``), computed stably with ``logsumexp`` over each set.

    Args:
      loss: a classical loss ``loss(logits, targets, *, reduction, **options)`` accepting soft
        targets ``[B, *spatial, C]`` (all the classical losses of this package do).
      fused: use a known faster equivalent when there is one (the Dice core for
        :func:`~labelset_jax.losses.soft_dice`, ``logsumexp`` for
        :func:`~labelset_jax.losses.cross_entropy`); the result is the same up to rounding.

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

    @functools.wraps(loss)
    def marginal_loss(logits, labels, *, label_space: LabelSpace, reduction: str = "mean", **options):
        if fused and loss in _FUSED:
            return _FUSED[loss](logits, labels, label_space=label_space, reduction=reduction, **options)
        label_space = _common.check_inputs(logits, labels, label_space, fn=f"marginalize({name})",
                                           allow_sets=True)
        m, size = _common.gather_sets(labels, label_space)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        marginal_logits = _common.marginal_log_probs(log_probs, m, size)
        targets = _common.uniform_targets(m, size)
        return loss(marginal_logits, targets, reduction=reduction, **options)

    marginal_loss.__name__ = marginal_loss.__qualname__ = f"marginal_{name}"
    marginal_loss.__doc__ = f"The marginalization of ``{name}`` (see :func:`marginalize`)."
    return marginal_loss


marginal_focal = marginalize(focal)
marginal_focal.__doc__ = r"""Marginal focal loss: ``marginalize(focal)``.

.. math::
  \mathcal{L} = -\frac{1}{N} \sum_i \sum_c \Phi(g)_{ic}\, (1 - \Phi_g(p)_{ic})^\gamma \log \Phi_g(p)_{ic}

Args:
  logits: ``[B, *spatial, C]``.
  labels: integer label ids ``[B, *spatial]``.
  label_space: the :class:`~labelset_jax.labelsets.LabelSpace`.
  gamma, alpha: as in :func:`~labelset_jax.losses.focal`.
  reduction: ``"mean"`` or ``"none"``.

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

marginal_dice = marginalize(soft_dice)
marginal_dice.__doc__ = r"""Marginal Dice: ``marginalize(soft_dice)``, the soft Dice of ``(Φ_g(p), Φ(g))``.

.. math::
  \mathcal{L} = 1 - \frac{1}{C} \sum_c
    \frac{2 \sum_i \Phi(g)_{ic}\, \Phi_g(p)_{ic}}
         {\sum_i \Phi_g(p)_{ic}^\alpha + \sum_i \Phi(g)_{ic}^\alpha + \epsilon}

Computed by the Dice core (one pass, closed-form gradient). Equals
:func:`~labelset_jax.losses.soft_dice` on full segmentations.

Args:
  logits: ``[B, *spatial, C]``.
  labels: integer label ids ``[B, *spatial]``.
  label_space: the :class:`~labelset_jax.labelsets.LabelSpace`.
  squared, eps, smooth_nr, include_background, batch_dice, class_weights, reduction: as in
    :func:`~labelset_jax.losses.soft_dice`.

Returns:
  The loss, a scalar or ``[B]``.

Example (reference values of SPEC §2.5):
  >>> import jax, jax.numpy as jnp
  >>> from labelset_jax.labelsets import LabelSpace
  >>> space = LabelSpace.from_superset_map(3, {3: [1, 2], 4: [0, 1, 2]})
  >>> labels = jnp.array([[[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0], [0, 0, 0, 0]]])
  >>> predicted = jnp.where(labels >= 3, 2, labels)
  >>> print(f"{marginal_dice(1000.0 * jax.nn.one_hot(predicted, 3), labels, label_space=space):.5f}")
  0.00000

References:
  L. Fidon et al., MICCAI 2021, arXiv:2107.03846.
"""
