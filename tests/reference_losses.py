"""Float64 NumPy references of every loss, written from docs/theory.md §2 independently of the library.

Shapes: logits ``[B, N, C]`` (spatial flattened), labels ``[B, N]``; ``sets`` is the superset map
``{set_id: [leaves]}``; ``ignore`` the ignore id, if any. Every function returns per-sample losses
``[B]``. Excluded voxels (a classical loss: ids that are not leaves; a label-set loss: the ignore
id) are removed from the Dice sums and from the voxel means.
"""

from __future__ import annotations

import numpy as np


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def membership_table(num_classes, sets):
    """M[k, c] = 1 if leaf c belongs to label id k (rows 0..C-1: the leaves themselves)."""
    table = np.zeros((max([num_classes - 1, *sets]) + 1, num_classes))
    table[np.arange(num_classes), np.arange(num_classes)] = 1.0
    for set_id, leaves in sets.items():
        table[set_id, list(leaves)] = 1.0
    return table


def membership_rows(labels, num_classes, sets):
    """m[b, i, c] = 1 if leaf c is in the label set of voxel i."""
    return membership_table(num_classes, sets)[np.asarray(labels)]


def dice_loss(pred, target, *, squared=True, eps=1e-5, smooth_nr=1e-5, include_background=True,
              batch_dice=False, class_weights=None, unsmoothed=None):
    """``unsmoothed``: bool ``[B, C]`` (``[C]`` with batch Dice), classes whose numerator gets no
    ``smooth_nr``."""
    power = 2 if squared else 1
    axes = (0, 1) if batch_dice else (1,)
    if unsmoothed is not None:
        smooth_nr = np.where(unsmoothed, 0.0, smooth_nr)
    num = 2 * (pred * target).sum(axes) + smooth_nr
    den = (pred**power).sum(axes) + (target**power).sum(axes) + eps
    dice = np.atleast_2d(num / den)
    w = np.ones(pred.shape[-1]) if class_weights is None else np.asarray(class_weights, np.float64)
    if not include_background:
        dice, w = dice[:, 1:], w[1:]
    loss = 1 - (dice * w).sum(-1) / w.sum()
    return np.broadcast_to(loss, (pred.shape[0],))


def generalized_dice_loss(pred, target, *, squared=False, eps=1e-5, smooth_nr=1e-5,
                          include_background=True, batch_dice=False):
    power = 2 if squared else 1
    axes = (0, 1) if batch_dice else (1,)
    if not include_background:
        pred, target = pred[..., 1:], target[..., 1:]
    inter = np.atleast_2d((pred * target).sum(axes))
    pp = np.atleast_2d((pred**power).sum(axes))
    tt = np.atleast_2d((target**power).sum(axes))
    out = []
    for b in range(inter.shape[0]):
        w = np.array([1 / t**2 if t > 0 else 0.0 for t in tt[b]])
        w[tt[b] == 0] = w.max()
        out.append(1 - (2 * (w * inter[b]).sum() + smooth_nr) / ((w * (pp[b] + tt[b])).sum() + eps))
    return np.broadcast_to(np.array(out), (pred.shape[0],))


def dice_semimetric_loss(pred, target, *, eps=1e-5, smooth_nr=1e-5, include_background=True,
                         batch_dice=False, class_weights=None):
    """1 - mean_c (|x|_1 + |y|_1 - |x - y|_1 + smooth_nr) / (|x|_1 + |y|_1 + eps), per class c."""
    axes = (0, 1) if batch_dice else (1,)
    l1_pred, l1_target = np.abs(pred).sum(axes), np.abs(target).sum(axes)
    l1_diff = np.abs(pred - target).sum(axes)
    dice = np.atleast_2d((l1_pred + l1_target - l1_diff + smooth_nr) / (l1_pred + l1_target + eps))
    w = np.ones(pred.shape[-1]) if class_weights is None else np.asarray(class_weights, np.float64)
    if not include_background:
        dice, w = dice[:, 1:], w[1:]
    loss = 1 - (dice * w).sum(-1) / w.sum()
    return np.broadcast_to(loss, (pred.shape[0],))


def kept(labels, upper, ignore=None):
    """1.0 where a voxel counts: ``0 <= id < upper`` and not ``ignore``; ``[B, N, 1]``."""
    labels = np.asarray(labels)
    return ((labels >= 0) & (labels < upper) & (labels != ignore))[..., None].astype(np.float64)


def voxel_mean(per_voxel, w):
    return (per_voxel * w[..., 0]).sum(-1) / np.maximum(w[..., 0].sum(-1), 1.0)


def cross_entropy(logits, labels, num_classes):
    """Over the leaf voxels; other ids are excluded."""
    w = kept(labels, num_classes)
    safe = np.where(w[..., 0] > 0, labels, 0)
    nll = -np.log(np.take_along_axis(softmax(logits), np.asarray(safe)[..., None], -1)[..., 0])
    return voxel_mean(nll, w)


def focal(logits, labels, num_classes, gamma):
    w = kept(labels, num_classes)
    p = softmax(logits)
    t = leaf_targets(labels, num_classes)
    return voxel_mean(-(t * (1 - p) ** gamma * np.log(p)).sum(-1), w)


def soft_dice(logits, labels, num_classes, **options):
    w = kept(labels, num_classes)
    return dice_loss(softmax(logits) * w, leaf_targets(labels, num_classes), **options)


def leaf_targets(labels, num_classes):
    """1[g_i = {c}]: one-hot on voxels labelled with a leaf, zero on set voxels."""
    labels = np.asarray(labels)
    return (labels[..., None] == np.arange(num_classes)).astype(np.float64)


def leaf_dice(logits, labels, num_classes, sets, ignore=None, **options):
    """A leaf with no singleton voxel that lies in some counted voxel's set gets Dice 0 (no
    ``smooth_nr``)."""
    w = kept(labels, np.inf, ignore)
    labels = np.asarray(labels)
    singleton = leaf_targets(labels, num_classes) * w
    is_set = (labels >= num_classes) & (w[..., 0] > 0)
    in_set = membership_rows(np.where(is_set, labels, 0), num_classes, sets) * is_set[..., None]
    axes = (0, 1) if options.get("batch_dice") else (1,)
    hidden = (in_set.sum(axes) > 0) & (singleton.sum(axes) == 0)
    return dice_loss(softmax(logits) * w, singleton, unsmoothed=hidden, **options)


def marginal_maps(logits, labels, num_classes, sets):
    """(Φ_g(p), Φ(g)) voxel by voxel, as docs/theory.md §2.3 defines them."""
    p = softmax(logits)
    m = membership_rows(labels, num_classes, sets)
    size = m.sum(-1, keepdims=True)
    set_mass = (p * m).sum(-1, keepdims=True)
    return np.where(m > 0, set_mass / size, p), m / size


def marginal_dice(logits, labels, num_classes, sets, ignore=None, **options):
    w = kept(labels, np.inf, ignore)
    phi_p, phi_t = marginal_maps(logits, labels, num_classes, sets)
    return dice_loss(phi_p * w, phi_t * w, **options)


def soft_target_dice(logits, labels, num_classes, sets, ignore=None, **options):
    w = kept(labels, np.inf, ignore)
    _, phi_t = marginal_maps(logits, labels, num_classes, sets)
    return dice_loss(softmax(logits) * w, phi_t * w, **options)


def marginal_cross_entropy(logits, labels, num_classes, sets, ignore=None):
    """-mean_i log Σ_{c ∈ g_i} p_ic, with log-sum-exp over the set (exact for any logits)."""
    z = np.asarray(logits, np.float64)
    m = membership_rows(labels, num_classes, sets) > 0
    top = z.max(-1, keepdims=True)
    top_set = np.where(m, z, -np.inf).max(-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(z - top).sum(-1))
    lse_set = top_set[..., 0] + np.log(np.exp(np.where(m, z - top_set, -np.inf)).sum(-1))
    return voxel_mean(lse - lse_set, kept(labels, np.inf, ignore))


def marginal_focal(logits, labels, num_classes, sets, gamma):
    phi_p, phi_t = marginal_maps(logits, labels, num_classes, sets)
    return (-(phi_t * (1 - phi_p) ** gamma * np.log(phi_p)).sum(-1)).mean(-1)


def numerical_gradient(fn, x, *, step=1e-6):
    """Central differences of the float64 function ``fn`` (returning a scalar) at every entry of ``x``."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = step
        grad[idx] = (fn(x + e) - fn(x - e)) / (2 * step)
    return grad
