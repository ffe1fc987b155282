"""Segmentation metrics (SPEC §3), on the host with NumPy/SciPy.

Conventions:

* **Dice** per leaf on hard label maps, ``2TP / (2TP + FP + FN)``. Both masks empty → NaN (the
  leaf is absent and correctly predicted absent), excluded from means as MONAI's
  ``ignore_empty=True``.
* **HD95**: MONAI's convention — for each direction, the 95th percentile of the distances from the
  surface voxels of one mask to the nearest surface voxel of the other, in millimetres (voxel
  spacing of the header); the larger of the two. Surface voxels are the mask minus its erosion with
  the 6-connected structuring element. Both masks empty → NaN; exactly one empty → the image
  diagonal in millimetres (or ``empty_cap``).
* **Volumes** in ml (1 ml = 1000 mm³); soft volumes sum probabilities, hard volumes count voxels.
* **Partial ground truth** is evaluated only on the leaves its protocol annotates; the others are
  reported as NaN. A set voxel is *not* any annotated leaf (the set is the complement of the
  annotated leaves), so it counts as negative for every annotated leaf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "dice_score", "hausdorff95", "volumes_ml", "volume_error", "VolumeError",
    "expected_calibration_error", "reliability_curve", "evaluate_case", "bootstrap_ci", "paired_wilcoxon",
]


def _same_shape(a, b, names=("pred", "true")):
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{names[0]} shape {np.shape(a)} differs from {names[1]} shape {np.shape(b)}")


def _spacing(spacing, ndim) -> np.ndarray:
    spacing = np.broadcast_to(np.asarray(spacing, np.float64), (ndim,)) if np.ndim(spacing) == 0 else np.asarray(spacing, np.float64)
    if spacing.shape != (ndim,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be {ndim} positive sizes, got {spacing.tolist()}")
    return spacing


def dice_score(pred: np.ndarray, true: np.ndarray, *, labels: Iterable[int], empty: float = float("nan")) -> np.ndarray:
    """Per-leaf Dice ``2TP/(2TP+FP+FN)`` of two hard label maps.

    Args:
      pred, true: integer label maps of one shape.
      labels: the leaves to score.
      empty: the value when both masks are empty (NaN by default: excluded from ``nanmean``).

    Returns:
      float64 ``[len(labels)]``.

    >>> dice_score(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), labels=[1, 2, 3]).tolist()
    [0.6666666666666666, 0.6666666666666666, nan]
    """
    _same_shape(pred, true)
    pred, true = np.asarray(pred), np.asarray(true)
    out = []
    for c in labels:
        p, t = pred == c, true == c
        tp = np.count_nonzero(p & t)
        denom = np.count_nonzero(p) + np.count_nonzero(t)
        out.append(2.0 * tp / denom if denom else empty)
    return np.array(out, np.float64)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)


def hausdorff95(pred_mask: np.ndarray, true_mask: np.ndarray, *, spacing: Sequence[float] | float = 1.0,
                empty_cap: float | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in millimetres (MONAI's convention, above).

    Args:
      pred_mask, true_mask: boolean masks of one shape.
      spacing: voxel size in mm per axis (anisotropic allowed).
      empty_cap: the value when exactly one mask is empty (default: the image diagonal in mm).

    Returns:
      The distance in mm; NaN when both masks are empty.

    >>> a = np.zeros((1, 10), bool); a[0, 2:5] = True
    >>> b = np.zeros((1, 10), bool); b[0, 4:7] = True
    >>> hausdorff95(a, b, spacing=(1.0, 2.0))
    3.8
    """
    _same_shape(pred_mask, true_mask, ("pred_mask", "true_mask"))
    a, b = np.asarray(pred_mask, bool), np.asarray(true_mask, bool)
    spacing = _spacing(spacing, a.ndim)
    if not a.any() and not b.any():
        return float("nan")
    if not a.any() or not b.any():
        return float(empty_cap) if empty_cap is not None else float(np.linalg.norm(np.array(a.shape) * spacing))
    sa, sb = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return float(max(np.percentile(to_b[sa], 95), np.percentile(to_a[sb], 95)))


def volumes_ml(prediction: np.ndarray, *, spacing: Sequence[float]) -> float:
    """Volume in ml of a mask (voxel count) or of a probability map (sum of probabilities).

    >>> volumes_ml(np.full((10, 10, 10), 0.5), spacing=(1.0, 1.0, 2.0))
    1.0
    """
    prediction = np.asarray(prediction)
    spacing = _spacing(spacing, prediction.ndim)
    return float(np.sum(prediction, dtype=np.float64) * np.prod(spacing) / 1000.0)


@dataclasses.dataclass(frozen=True)
class VolumeError:
    """Signed volume errors ``V_pred − V_true`` in ml, and relative to ``V_true``."""

    soft: float
    hard: float
    relative_soft: float
    relative_hard: float
    true: float


def volume_error(probs: np.ndarray, true: np.ndarray | float, *, spacing: Sequence[float], threshold: float = 0.5) -> VolumeError:
    """Signed volume error of a probability map, soft (sum of probabilities) and hard
    (``probs > threshold``), against a reference mask or a reference volume in ml (e.g. the
    expected volume ``E[V]`` when ``q`` is known).

    >>> e = volume_error(np.array([[[0.9, 0.6, 0.2]]]), np.array([[[1, 0, 0]]]), spacing=(10, 10, 10))
    >>> round(e.soft, 3), round(e.hard, 3), round(e.relative_soft, 3)
    (0.7, 1.0, 0.7)
    """
    probs = np.asarray(probs, np.float64)
    if np.ndim(true) == 0:
        v_true = float(true)
    else:
        _same_shape(probs, true, ("probs", "true"))
        v_true = volumes_ml(np.asarray(true, bool), spacing=spacing)
    soft = volumes_ml(probs, spacing=spacing) - v_true
    hard = volumes_ml(probs > threshold, spacing=spacing) - v_true
    rel = (lambda d: d / v_true) if v_true > 0 else (lambda d: float("nan"))
    return VolumeError(soft, hard, rel(soft), rel(hard), v_true)


def reliability_curve(probs: np.ndarray, labels: np.ndarray, *, num_bins: int = 15):
    """Per confidence bin: ``(mean confidence, accuracy, count)`` of the top-label prediction.

    Args:
      probs: ``[..., K]`` probabilities.
      labels: ``[...]`` true leaves.
      num_bins: equal-width bins over ``[0, 1]``.

    Returns:
      Three ``[num_bins]`` arrays (NaN confidence/accuracy in empty bins).
    """
    probs = np.asarray(probs, np.float64)
    if probs.shape[:-1] != np.shape(labels):
        raise ValueError(f"probs {probs.shape} must be labels {np.shape(labels)} plus a class axis")
    confidence = probs.max(-1).ravel()
    correct = (probs.argmax(-1) == np.asarray(labels)).ravel()
    bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)
    count = np.bincount(bins, minlength=num_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, confidence, num_bins) / count
        accuracy = np.bincount(bins, correct, num_bins) / count
    return mean_conf, accuracy, count


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, num_bins: int = 15) -> float:
    r"""Top-label expected calibration error over voxels:
    ``ECE = Σ_b (n_b / n) |acc_b − conf_b|`` with equal-width confidence bins.

    >>> probs = np.array([[0.9, 0.1]] * 10)
    >>> labels = np.array([0] * 9 + [1])
    >>> round(expected_calibration_error(probs, labels), 6)
    0.0
    """
    conf, acc, count = reliability_curve(probs, labels, num_bins=num_bins)
    used = count > 0
    return float(np.sum(count[used] / count.sum() * np.abs(acc[used] - conf[used])))


def evaluate_case(pred: np.ndarray, true: np.ndarray, *, num_classes: int, spacing: Sequence[float],
                  annotated: Iterable[int] | None = None, names: Sequence[str] | None = None) -> dict[str, float]:
    """Dice and HD95 per leaf of one case, only on the leaves its ground truth annotates.

    Args:
      pred: predicted leaf map.
      true: ground-truth label ids (leaves, and set ids ``>= num_classes`` for partial truth).
      num_classes: ``C``.
      spacing: voxel size in mm.
      annotated: the annotated leaves (default all); the others get NaN.
      names: leaf names for the keys (default ``label_<c>``).

    Returns:
      ``{"dice_<name>": ..., "hd95_<name>": ...}`` for every leaf but the background.

    >>> out = evaluate_case(np.array([[[0, 1, 2, 2]]]), np.array([[[0, 1, 3, 3]]]), num_classes=3,
    ...                     spacing=(1, 1, 1), annotated=[0, 1])
    >>> out["dice_label_1"], out["dice_label_2"]
    (1.0, nan)
    """
    _same_shape(pred, true)
    names = list(names) if names is not None else [f"label_{c}" for c in range(num_classes)]
    annotated = set(range(num_classes) if annotated is None else annotated)
    pred, true = np.asarray(pred), np.asarray(true)
    out = {}
    for c in range(1, num_classes):
        if c in annotated:
            out[f"dice_{names[c]}"] = float(dice_score(pred, true, labels=[c])[0])
            out[f"hd95_{names[c]}"] = hausdorff95(pred == c, true == c, spacing=spacing)
        else:
            out[f"dice_{names[c]}"] = out[f"hd95_{names[c]}"] = float("nan")
    return out


def bootstrap_ci(values: Sequence[float], *, num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0,
                 statistic: Callable[..., np.ndarray] = np.mean) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the statistic and its percentile bootstrap interval (NaNs dropped).

    ``statistic`` must accept an ``axis`` argument (it is applied to a ``[num_resamples, n]``
    array of resamples at once).

    >>> est, lo, hi = bootstrap_ci(np.arange(10.0), num_resamples=2000)
    >>> est, lo < est < hi
    (4.5, True)
    """
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    samples = []
    for start in range(0, num_resamples, 2000):  # chunks bound the memory for long inputs
        idx = rng.integers(0, values.size, size=(min(2000, num_resamples - start), values.size))
        samples.append(statistic(values[idx], axis=1))
    samples = np.concatenate(samples)
    alpha = (1.0 - confidence) / 2.0
    return float(statistic(values)), float(np.quantile(samples, alpha)), float(np.quantile(samples, 1.0 - alpha))


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired Wilcoxon signed-rank test of ``a`` vs ``b``; returns ``(statistic, p)``.

    Pairs with a NaN are dropped; identical samples give ``p = 1``.

    >>> stat, p = paired_wilcoxon(np.arange(20.0) + 1.0, np.arange(20.0))
    >>> p < 1e-3
    True
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have one length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size == 0 or np.all(a == b):
        return 0.0, 1.0
    result = stats.wilcoxon(a, b)
    return float(result.statistic), float(result.pvalue)
