"""Shared plumbing of the loss functions: input checks, the label-set maps, voxel loops, reductions.

The label-set maps of docs/theory.md §1 and §2.3 live here, once, as functions of the membership
rows ``m = M[g]`` and set sizes ``|g|`` gathered per voxel; every loss module builds on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from labelset_jax.labelsets import LabelSpace, validate_labels

Array = jax.Array


def check_inputs(
    logits: Array,
    labels: Array,
    label_space: LabelSpace | None,
    *,
    fn: str,
) -> LabelSpace:
    """Validates shapes and dtypes (static, so the same eagerly and under ``jit``); returns the space.

    The label values are not read here (no host transfer): what each loss does with ids outside
    its space is one rule, the same eagerly and jitted (:func:`counted`); :func:`validate` checks
    the values explicitly.

    Args:
      logits: ``[B, *spatial, C]``.
      labels: integer ``[B, *spatial]`` label ids.
      label_space: the space, or ``None`` for leaves ``0..C-1`` only.
      fn: the calling loss's name, for messages.

    Raises:
      ValueError: mismatched shapes, ``C`` not matching the space, float labels.
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
    return label_space


def counted(labels: Array, space: LabelSpace, *, classical: bool) -> Array:
    """Float ``1`` where a voxel counts in the loss, ``0`` where it is excluded (no loss, no gradient,
    not in the voxel mean), by one rule for every loss, eagerly and under ``jit``:

    * a classical loss counts the leaves ``0..C-1`` and excludes every other id (set ids, the
      ignore id, ids the space does not know);
    * a label-set loss counts the leaves and the declared set ids, and excludes the ignore id and
      unknown ids (negative, undeclared, ``>= K``).
    """
    if classical:
        ok = (labels >= 0) & (labels < space.num_classes)
    else:
        ok = (labels >= 0) & (labels < space.num_ids)
        if space.ignore_id is not None:
            ok = ok & (labels != space.ignore_id)
        gaps = np.flatnonzero(~np.asarray(space.valid_ids, bool))
        if gaps.size:  # ids between the set ids that name nothing (comparisons, no gather, when none)
            ok = ok & jnp.asarray(np.asarray(space.valid_ids, bool))[jnp.clip(labels, 0, space.num_ids - 1)]
    return ok.astype(jnp.float32)


def validate(labels: Any, *, label_space: LabelSpace | None = None, num_classes: int | None = None,
             classical: bool = False, what: str = "labels") -> None:
    """Checks label values on the host, once per dataset rather than in every loss call.

    The losses never read label values (eager and jitted calls agree, and no call copies labels
    to the host): an id outside the space is excluded from the loss (:func:`counted`). This is the
    explicit check that none is there by mistake.

    Args:
      labels: integer array-like of label ids.
      label_space: the space; or ``num_classes`` for leaves only.
      classical: also reject set ids and the ignore id (which a classical loss excludes).
      what: how to name the array in the message.

    Raises:
      ValueError: ids the space does not know, or (``classical``) ids that are not leaves.
    """
    space = label_space if label_space is not None else LabelSpace.leaves(int(num_classes))
    values = validate_labels(labels, space, what=what)
    if classical:
        bad = values[values >= space.num_classes]
        if bad.size:
            raise ValueError(f"{what} hold label-set id(s) {bad[:10].tolist()}, which a classical loss excludes; "
                             "use a label-set loss (leaf_dice, marginal_dice, marginal_cross_entropy, ...)")


def check_soft_targets(logits: Array, targets: Array, *, fn: str, label_space: LabelSpace | None = None) -> None:
    """Static checks for soft targets ``[B, *spatial, C]`` matching ``logits`` (and, when given,
    the label space's ``C`` leaves)."""
    if targets.shape != logits.shape:
        raise ValueError(f"{fn}: soft targets shape {targets.shape} must equal logits shape {logits.shape}")
    if label_space is not None and label_space.num_classes != logits.shape[-1]:
        raise ValueError(f"{fn}: logits have {logits.shape[-1]} channels but label_space has "
                         f"{label_space.num_classes} leaves")


def is_soft(logits: Array, targets: Array) -> bool:
    """Whether ``targets`` are soft (float, one value per class) rather than integer label ids."""
    return jnp.issubdtype(targets.dtype, jnp.floating) and targets.ndim == logits.ndim


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, *, fn: str) -> None:
    """Raises unless ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"`` (called before any work)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def reduce_loss(per_sample: Array, reduction: str, *, fn: str) -> Array:
    """Over the batch of per-sample losses: ``"mean"`` (a scalar, as MONAI's and torch's default),
    ``"sum"`` (a scalar) or ``"none"`` (the ``[B]`` values, what an optax loss returns unreduced)."""
    check_reduction(reduction, fn=fn)
    if reduction == "none":
        return per_sample
    return jnp.mean(per_sample) if reduction == "mean" else jnp.sum(per_sample)


def flatten_spatial(x: Array, *, channels: bool) -> Array:
    """``[B, *spatial, (C)]`` -> ``[B, N, (C)]``."""
    if channels:
        return x.reshape(x.shape[0], -1, x.shape[-1])
    return x.reshape(x.shape[0], -1)


# --------------------------------------------------------------------------- the label-set maps
def gather_sets(labels: Array, space: LabelSpace) -> tuple[Array, Array]:
    """Per voxel, the membership row ``m = M[g]`` (float ``[..., C]``) and ``|g|`` (``[..., 1]``).

    Ids that name nothing get a finite row (an empty one, size 1, for gaps between set ids; a
    clipped index outside ``0..K-1``); :func:`counted` excludes those voxels.
    """
    index = jnp.clip(labels, 0, space.num_ids - 1)  # out-of-range ids: excluded by counted()
    m = jnp.asarray(space.membership, jnp.float32)[index]
    size = jnp.asarray(np.maximum(space.set_sizes, 1), jnp.float32)[index][..., None]
    return m, size


def uniform_targets(m: Array, size: Array) -> Array:
    """``Φ(g)``: the uniform distribution over each voxel's label set (one-hot for leaves)."""
    return m / size


def leaf_targets(labels: Array, num_classes: int) -> Array:
    """``1[g = {c}]`` as float ``[..., C]``: one-hot on leaf voxels, zero on set voxels.

    A comparison with the leaf ids, no gather: set ids are ``>= C`` and no label set is a single
    leaf, so ``g = c`` exactly when the voxel is annotated with the singleton ``{c}``.
    """
    return (labels[..., None] == jnp.arange(num_classes, dtype=labels.dtype)).astype(jnp.float32)


# ------------------------------------------------------------------ per-backend execution
# The one seam for the backend-specific forms of the fused losses; every backend computes the same
# values and gradients. XLA:CPU writes the inputs of its reductions to memory, so on CPU the fused
# losses visit the voxels in chunks of about `chunk_elements` logits in a sequential
# `lax.fori_loop` (per-voxel temporaries then exist for one chunk at a time: value and gradient
# need the arguments, the gradient and O(chunk) more memory), and reduce over up to
# `unroll_channels` channels as a chain of elementwise operations, which it fuses into their
# consumer. GPUs and TPUs fuse reductions themselves and run loops sequentially: there the losses
# are one dense expression, and the channel reductions are reductions (a graph whose size does
# not grow with the number of classes). The CPU constants are measured in benchmarks/RESULTS.md.


class Execution(NamedTuple):
    """How the fused losses are written for a backend: voxels per chunk of the sequential loop
    (``None``: one dense pass) and the widest channel axis whose reductions are unrolled."""

    chunk_elements: int | None
    unroll_channels: int


EXECUTION = {"cpu": Execution(chunk_elements=2**20, unroll_channels=16)}
"""The backends with their own :class:`Execution`; every other backend gets :data:`DENSE`."""

DENSE = Execution(chunk_elements=None, unroll_channels=0)


def execution() -> Execution:
    """The :class:`Execution` of JAX's default backend (decided when the loss is traced)."""
    return EXECUTION.get(jax.default_backend(), DENSE)


def channel_sum(x: Array) -> Array:
    """``Σ_c x[..., c]`` with keepdims: a reduction, or on CPU for few channels the sum of the ``C``
    channel slices (one elementwise expression that XLA:CPU fuses into its consumer)."""
    if x.shape[-1] > execution().unroll_channels:
        return jnp.sum(x, axis=-1, keepdims=True)
    total = x[..., 0]
    for c in range(1, x.shape[-1]):
        total = total + x[..., c]
    return total[..., None]


def _channel_max(x: Array) -> Array:
    """``max_c x[..., c]`` without keepdims, written as :func:`channel_sum` is."""
    if x.shape[-1] > execution().unroll_channels:
        return jnp.max(x, axis=-1)
    total = x[..., 0]
    for c in range(1, x.shape[-1]):
        total = jnp.maximum(total, x[..., c])
    return total


def set_logsumexp(z: Array, m: Array) -> Array:
    """``log Σ_{c ∈ g} exp(z_c)`` with keepdims, over the leaves of each voxel's set (``m > 0``).

    Stable (shifted by the set's largest logit); ``-inf`` for an empty row.
    """
    zs = jnp.where(m > 0, z, -jnp.inf)
    zmax = jax.lax.stop_gradient(_channel_max(zs)[..., None])
    zmax = jnp.where(zmax > -jnp.inf, zmax, 0.0)  # an empty row: log 0 = -inf, not NaN
    return zmax + jnp.log(channel_sum(jnp.exp(zs - zmax)))


def softmax(z: Array) -> Array:
    """``softmax(z)`` over the channels, in float32."""
    return jax.nn.softmax(z.astype(jnp.float32), axis=-1)


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
    return jnp.where(m > 0, set_logsumexp(log_probs, m) - jnp.log(size), log_probs)


# --------------------------------------------------------------------------- loops over voxels
def _chunking(batch: int, num_voxels: int, num_channels: int) -> tuple[int, int]:
    """``(n, k)``: voxels per chunk and number of chunks (the last one may overlap its predecessor);
    ``(num_voxels, 1)`` where the backend runs the loss densely (:func:`execution`)."""
    chunk_elements = execution().chunk_elements
    if chunk_elements is None:
        return num_voxels, 1
    n = max(1, min(num_voxels, chunk_elements // max(1, batch * num_channels)))
    return n, -(-num_voxels // n)


def _slice_voxels(operands: Sequence[Array], start, n: int) -> list[Array]:
    return [jax.lax.dynamic_slice_in_dim(x, start, n, axis=1) for x in operands]


def sum_over_voxels(fn: Callable[..., Any], *operands: Array) -> Any:
    """``Σ_chunks fn(*chunks, weight)`` for operands ``[B, N, ...]`` sliced along the voxel axis.

    ``fn`` returns a pytree of per-sample partial sums over the voxels of its chunk (shapes without
    the voxel axis). ``weight`` is ``None`` when every voxel of the chunk counts, else a float
    ``[n, 1]`` mask to multiply the per-voxel terms with (the last chunk is aligned to the end of
    the volume and overlaps its predecessor, whose voxels it must not count twice).
    """
    batch, num_voxels = operands[0].shape[:2]
    num_channels = operands[0].shape[2] if operands[0].ndim > 2 else 1
    n, k = _chunking(batch, num_voxels, num_channels)
    last_start = num_voxels - n
    overlap = (k - 1) * n - last_start
    weight = None if overlap == 0 else (jnp.arange(n) >= overlap).astype(jnp.float32)[:, None]
    last = fn(*_slice_voxels(operands, last_start, n), weight)
    if k == 1:
        return last

    def body(i, total):
        return jax.tree.map(jnp.add, total, fn(*_slice_voxels(operands, i * n, n), None))

    return jax.lax.fori_loop(0, k - 1, body, last)


def map_over_voxels(fn: Callable[..., Array], out: jax.ShapeDtypeStruct, *operands: Array) -> Array:
    """``fn(*chunks)`` for every chunk of the voxel axis, written into one ``out``-shaped array.

    ``operands`` are ``[B, N, ...]`` arrays sliced along the voxel axis; ``fn`` maps their chunks
    to a ``[B, n, ...]`` chunk of the result and must act voxel by voxel (the last chunk is aligned
    to the end of the volume and rewrites the voxels it shares with its predecessor, with the same
    values).
    """
    batch, num_voxels = operands[0].shape[:2]
    num_channels = operands[0].shape[2] if operands[0].ndim > 2 else 1
    n, k = _chunking(batch, num_voxels, num_channels)
    if k == 1:
        return fn(*operands).astype(out.dtype)

    def body(i, result):
        start = jnp.minimum(i * n, num_voxels - n)
        chunk = fn(*_slice_voxels(operands, start, n)).astype(out.dtype)
        return jax.lax.dynamic_update_slice_in_dim(result, chunk, start, axis=1)

    return jax.lax.fori_loop(0, k, body, jnp.zeros(out.shape, out.dtype))
