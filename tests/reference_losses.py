"""Float64 NumPy references of every loss, written from SPEC §2 independently of the library.

Shapes: logits ``[B, N, C]`` (spatial flattened), labels ``[B, N]``; ``sets`` is the superset map
``{set_id: [leaves]}``. Every function returns per-sample losses ``[B]``.
"""

from __future__ import annotations

import numpy as np


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def members(label, num_classes, sets):
    return [int(label)] if label < num_classes else list(sets[int(label)])


def membership_rows(labels, num_classes, sets):
    """m[b, i, c] = 1 if leaf c is in the label set of voxel i."""
    m = np.zeros(labels.shape + (num_classes,))
    for idx in np.ndindex(labels.shape):
        m[idx + (members(labels[idx], num_classes, sets),)] = 1.0
    return m


def dice_loss(pred, target, *, squared=True, eps=1e-5, smooth_nr=0.0, include_background=True,
              batch_dice=False, class_weights=None):
    power = 2 if squared else 1
    axes = (0, 1) if batch_dice else (1,)
    num = 2 * (pred * target).sum(axes) + smooth_nr
    den = (pred**power).sum(axes) + (target**power).sum(axes) + eps
    dice = np.atleast_2d(num / den)
    w = np.ones(pred.shape[-1]) if class_weights is None else np.asarray(class_weights, np.float64)
    if not include_background:
        dice, w = dice[:, 1:], w[1:]
    loss = 1 - (dice * w).sum(-1) / w.sum()
    return np.broadcast_to(loss, (pred.shape[0],))


def generalized_dice_loss(pred, target, *, squared=False, eps=1e-5, smooth_nr=0.0,
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


def cross_entropy(logits, labels, num_classes):
    p = softmax(logits)
    b, n = labels.shape
    return np.array([-np.mean([np.log(p[i, j, labels[i, j]]) for j in range(n)]) for i in range(b)])


def focal(logits, labels, num_classes, gamma):
    p = softmax(logits)
    t = np.eye(num_classes)[labels]
    return (-(t * (1 - p) ** gamma * np.log(p)).sum(-1)).mean(-1)


def soft_dice(logits, labels, num_classes, **options):
    return dice_loss(softmax(logits), np.eye(num_classes)[labels], **options)


def leaf_dice(logits, labels, num_classes, sets, **options):
    target = np.zeros(labels.shape + (num_classes,))
    for idx in np.ndindex(labels.shape):
        if labels[idx] < num_classes:
            target[idx + (labels[idx],)] = 1.0
    return dice_loss(softmax(logits), target, **options)


def marginal_maps(logits, labels, num_classes, sets):
    """(Φ_g(p), Φ(g)) voxel by voxel, as SPEC §2.3 defines them."""
    p = softmax(logits)
    phi_p, phi_t = p.copy(), np.zeros_like(p)
    for idx in np.ndindex(labels.shape):
        a = members(labels[idx], num_classes, sets)
        phi_p[idx + (a,)] = p[idx + (a,)].sum() / len(a)
        phi_t[idx + (a,)] = 1.0 / len(a)
    return phi_p, phi_t


def marginal_dice(logits, labels, num_classes, sets, **options):
    return dice_loss(*marginal_maps(logits, labels, num_classes, sets), **options)


def soft_target_dice(logits, labels, num_classes, sets, **options):
    _, phi_t = marginal_maps(logits, labels, num_classes, sets)
    return dice_loss(softmax(logits), phi_t, **options)


def marginal_cross_entropy(logits, labels, num_classes, sets):
    p = softmax(logits)
    out = np.zeros(labels.shape)
    for idx in np.ndindex(labels.shape):
        out[idx] = -np.log(p[idx + (members(labels[idx], num_classes, sets),)].sum())
    return out.mean(-1)


def marginal_focal(logits, labels, num_classes, sets, gamma):
    phi_p, phi_t = marginal_maps(logits, labels, num_classes, sets)
    return (-(phi_t * (1 - phi_p) ** gamma * np.log(phi_p)).sum(-1)).mean(-1)
