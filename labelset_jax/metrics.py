"""Segmentation metrics (docs/theory.md §3), on the host with NumPy/SciPy.

Conventions:

* **Dice** per leaf on hard label maps, ``2TP / (2TP + FP + FN)``. Both masks empty → NaN by
  default (the leaf is absent and correctly predicted absent; nothing to score), so the case drops
  out of ``np.nanmean``, like MONAI's ``DiceMetric(ignore_empty=True)``; ``empty=1.0`` scores it
  as perfect instead.
* **HD95** follows MONAI's ``compute_hausdorff_distance(percentile=95, directed=False)``: surface
  voxels are the mask minus its binary erosion with the **6-connected** (face-neighbour)
  structuring element, voxels on the image border included; for each direction, the 95th
  percentile (linear interpolation) of the distances in millimetres from the surface voxels of one
  mask to the nearest surface voxel of the other; the larger of the two directed values. Both masks
  empty → NaN; exactly one empty → the image diagonal in millimetres (or ``empty_cap``).
* **Volumes** in ml (1 ml = 1000 mm³): a soft volume sums probabilities, a hard volume counts the
  voxels of a mask.
* **Calibration**: top-label expected calibration error over voxels with equal-width bins.
* **Partial ground truth** is scored only on the leaves its protocol annotates; the others are
  reported as NaN. A voxel with a set id (``>= num_classes``) is negative for every annotated
  leaf: an annotation protocol delineates each annotated leaf completely and gives the remaining
  voxels the set of the *non-annotated* leaves, so a set voxel is known not to be any annotated
  leaf. Predicting an annotated leaf there is a false positive; which non-annotated leaf is
  predicted there (or anywhere) does not affect the scores.
* **Statistics** over cases: percentile bootstrap confidence intervals and the paired Wilcoxon
  signed-rank test; both drop NaN values (cases where a metric is undefined). Over training runs
  (the unit that varies when a study is rerun): the paired t-interval and t-test of
  :func:`paired_runs`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "dice_score", "hausdorff95", "volumes_ml", "volume_error", "VolumeError",
    "reliability_curve", "ReliabilityCurve", "expected_calibration_error", "evaluate_case",
    "bootstrap_ci", "ConfidenceInterval", "paired_wilcoxon", "WilcoxonResult", "nested_bootstrap_ci",
    "holm_adjust", "paired_runs", "RunComparison",
]


# --------------------------------------------------------------------------- argument checks


def _check_same_shape(a, b, names: tuple[str, str]) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{names[0]} shape {np.shape(a)} differs from {names[1]} shape {np.shape(b)}")


def _label_map(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise ValueError(f"{name} must be an integer label map, got dtype {x.dtype}")
    return x


def _binary_mask(x, name: str) -> np.ndarray:
    """A boolean mask from a boolean array or one holding only 0 and 1."""
    x = np.asarray(x)
    if x.dtype != bool:
        if x.size and not np.all((x == 0) | (x == 1)):
            raise ValueError(f"{name} must be a binary mask (bool or 0/1), got values outside {{0, 1}}")
        x = x.astype(bool)
    return x


def _spacing(spacing, ndim: int) -> np.ndarray:
    """Voxel sizes in mm, one per axis; a scalar means isotropic voxels."""
    spacing = np.asarray(spacing, np.float64)
    if spacing.ndim == 0:
        spacing = np.full(ndim, float(spacing))
    if spacing.shape != (ndim,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"spacing must be one positive voxel size per axis ({ndim}), got {spacing.tolist()}")
    return spacing


# --------------------------------------------------------------------------- overlap and distance


def dice_score(pred: np.ndarray, true: np.ndarray, *, labels: Iterable[int], empty: float = float("nan")) -> np.ndarray:
    r"""Per-leaf Dice of two hard label maps.

    .. math:: \mathrm{Dice}_c = \frac{2\,TP_c}{2\,TP_c + FP_c + FN_c}
              = \frac{2\,|P_c \cap T_c|}{|P_c| + |T_c|},
              \quad P_c = \{pred = c\},\ T_c = \{true = c\}.

    Args:
      pred: integer label map.
      true: integer label map of the same shape.
      labels: the leaves to score.
      empty: the value when both masks are empty; NaN by default, so that the leaf drops out of
        ``np.nanmean`` (MONAI's ``ignore_empty=True``). ``1.0`` scores it as perfect.

    Returns:
      float64 ``[len(labels)]``.

    Raises:
      ValueError: if the shapes differ or a map is not integer.

    >>> dice_score(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), labels=[1, 2, 3]).tolist()
    [0.6666666666666666, 0.6666666666666666, nan]
    >>> dice_score(np.array([0, 1]), np.array([0, 1]), labels=[3], empty=1.0).tolist()
    [1.0]
    """
    pred, true = _label_map(pred, "pred"), _label_map(true, "true")
    _check_same_shape(pred, true, ("pred", "true"))
    empty = float(empty)
    scores = []
    for c in labels:
        p, t = pred == c, true == c
        denominator = np.count_nonzero(p) + np.count_nonzero(t)
        scores.append(2.0 * np.count_nonzero(p & t) / denominator if denominator else empty)
    return np.array(scores, np.float64)


def _surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` with a face neighbour outside it (or outside the image)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)  # 6-connected in 3D
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The smallest box holding ``mask``, grown by ``margin`` voxels and clipped to the image."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _directed_percentile(source: np.ndarray, target: np.ndarray, spacing: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of the distances from the voxels of ``source`` to the nearest
    voxel of ``target``, in mm."""
    distance_to_target = ndimage.distance_transform_edt(~target, sampling=spacing)
    return float(np.percentile(distance_to_target[source], q))


def hausdorff95(pred_mask: np.ndarray, true_mask: np.ndarray, *, spacing: Sequence[float] | float,
                empty_cap: float | None = None) -> float:
    r"""95th-percentile Hausdorff distance between two masks, in millimetres (MONAI's convention).

    With ``∂A`` the surface voxels of ``A`` (``A`` minus its 6-connected erosion; voxels on the
    image border are surface voxels) and ``d(x, S) = min_{y ∈ S} ‖(x − y) ⊙ spacing‖₂``:

    .. math:: \mathrm{HD95}(A, B) = \max\big(P_{95}\{d(x, ∂B) : x ∈ ∂A\},\;
              P_{95}\{d(y, ∂A) : y ∈ ∂B\}\big)

    i.e. the percentile of each directed distance set, then the larger of the two (MONAI), not
    the percentile of the pooled sets. Percentiles interpolate linearly (``np.percentile``).

    Args:
      pred_mask: boolean (or 0/1) mask.
      true_mask: boolean (or 0/1) mask of the same shape.
      spacing: voxel size in mm per axis (anisotropic allowed), or one number for isotropic voxels.
      empty_cap: the value when exactly one mask is empty; by default the image diagonal in mm,
        ``‖shape ⊙ spacing‖₂``, the largest distance within the image.

    Returns:
      The distance in mm; NaN when both masks are empty.

    Raises:
      ValueError: if the shapes differ, a mask is not binary or ``spacing`` does not give one
        positive size per axis.

    >>> a = np.zeros((1, 10), bool); a[0, 2:5] = True
    >>> b = np.zeros((1, 10), bool); b[0, 4:7] = True
    >>> hausdorff95(a, b, spacing=(1.0, 2.0))
    3.8
    >>> hausdorff95(a, np.zeros_like(a), spacing=(1.0, 2.0), empty_cap=100.0)
    100.0
    """
    a, b = _binary_mask(pred_mask, "pred_mask"), _binary_mask(true_mask, "true_mask")
    _check_same_shape(a, b, ("pred_mask", "true_mask"))
    spacing = _spacing(spacing, a.ndim)
    a_empty, b_empty = not a.any(), not b.any()
    if a_empty and b_empty:
        return float("nan")
    if a_empty or b_empty:
        return float(empty_cap) if empty_cap is not None else float(np.linalg.norm(np.array(a.shape) * spacing))
    # All surface voxels lie in the bounding box of A ∪ B; one voxel of margin keeps the erosion
    # exact, and the distance transform of the crop is exact since it holds every target voxel.
    box = _bounding_box(a | b, margin=1)
    surface_a, surface_b = _surface(a[box]), _surface(b[box])
    return max(_directed_percentile(surface_a, surface_b, spacing, 95.0),
               _directed_percentile(surface_b, surface_a, spacing, 95.0))


# --------------------------------------------------------------------------- volumes


def volumes_ml(prediction: np.ndarray, *, spacing: Sequence[float] | float) -> float:
    r"""Volume in ml of a mask (voxel count) or of a probability map (sum of probabilities).

    .. math:: V = \frac{\prod_i s_i}{1000} \sum_v p_v \quad [\mathrm{ml}],
              \ s = \text{spacing in mm}

    Args:
      prediction: a boolean mask, or probabilities of one class in ``[0, 1]``.
      spacing: voxel size in mm per axis, or one number for isotropic voxels.

    Returns:
      The volume in ml.

    >>> volumes_ml(np.full((10, 10, 10), 0.5), spacing=(1.0, 1.0, 2.0))
    1.0
    >>> volumes_ml(np.ones((10, 10, 10), bool), spacing=1.0)
    1.0
    """
    prediction = np.asarray(prediction)
    spacing = _spacing(spacing, prediction.ndim)
    if prediction.dtype != bool and prediction.size and (prediction.min() < 0 or prediction.max() > 1):
        raise ValueError("prediction must be a boolean mask or probabilities in [0, 1]")
    return float(np.sum(prediction, dtype=np.float64) * np.prod(spacing) / 1000.0)


@dataclasses.dataclass(frozen=True)
class VolumeError:
    """Volume errors of a prediction, in ml.

    Attributes:
      true: the reference volume ``V_true``.
      soft: ``V_soft − V_true``, with ``V_soft`` the sum of the probabilities.
      hard: ``V_hard − V_true``, with ``V_hard`` the volume of ``probs > threshold``.
      relative_soft: ``soft / V_true`` (NaN when ``V_true = 0``).
      relative_hard: ``hard / V_true`` (NaN when ``V_true = 0``).
    """

    true: float
    soft: float
    hard: float
    relative_soft: float
    relative_hard: float


def volume_error(probs: np.ndarray, true: np.ndarray | float, *, spacing: Sequence[float] | float,
                 threshold: float = 0.5) -> VolumeError:
    """Signed volume errors ``V_pred − V_true`` of one class's probability map, soft and hard.

    The soft volume sums the probabilities (the expected volume under the model); the hard volume
    counts the voxels with ``probs > threshold``. For a probability map from a softmax over
    several leaves, pass ``probs[..., c]``; the argmax mask ``labels == c`` can be scored as a
    hard prediction by passing it as ``probs``.

    Args:
      probs: probabilities of one class in ``[0, 1]``, or a binary mask.
      true: the reference: a binary mask of the same shape, or a volume in ml (e.g. the expected
        volume of a synthetic case whose voxel-wise probabilities are known).
      spacing: voxel size in mm per axis, or one number for isotropic voxels.
      threshold: the probability above which a voxel belongs to the hard prediction.

    Returns:
      A :class:`VolumeError`.

    >>> e = volume_error(np.array([[[0.9, 0.6, 0.2]]]), np.array([[[1, 0, 0]]]), spacing=(10, 10, 10))
    >>> round(e.true, 3), round(e.soft, 3), round(e.hard, 3), round(e.relative_soft, 3)
    (1.0, 0.7, 1.0, 0.7)
    """
    probs = np.asarray(probs)
    if np.ndim(true) == 0:
        v_true = float(true)
    else:
        _check_same_shape(probs, true, ("probs", "true"))
        v_true = volumes_ml(_binary_mask(true, "true"), spacing=spacing)
    soft = volumes_ml(probs, spacing=spacing) - v_true
    hard = volumes_ml(probs > threshold, spacing=spacing) - v_true
    def relative(error: float) -> float:
        return error / v_true if v_true > 0 else float("nan")

    return VolumeError(true=v_true, soft=soft, hard=hard, relative_soft=relative(soft), relative_hard=relative(hard))


# --------------------------------------------------------------------------- calibration


class ReliabilityCurve(NamedTuple):
    """Reliability-diagram data: one entry per equal-width confidence bin of ``[0, 1]``.

    Attributes:
      confidence: mean top-label confidence of the voxels in the bin (NaN when empty).
      accuracy: fraction of those voxels whose top label is right (NaN when empty).
      count: number of voxels in the bin.
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def edges(self) -> np.ndarray:
        """The ``num_bins + 1`` bin edges."""
        return np.linspace(0.0, 1.0, len(self.count) + 1)


def reliability_curve(probs: np.ndarray, labels: np.ndarray, *, num_bins: int = 15,
                      mask: np.ndarray | None = None) -> ReliabilityCurve:
    """Top-label reliability diagram over voxels.

    Each voxel's confidence is ``max_k p_k`` and it is correct when ``argmax_k p_k == label``.
    Bin ``b`` holds the confidences in ``[b/n, (b+1)/n)`` (the last bin includes 1).

    Args:
      probs: ``[..., K]`` probabilities.
      labels: ``[...]`` true leaves.
      num_bins: the number ``n`` of equal-width bins over ``[0, 1]``.
      mask: ``[...]`` voxels to include (default all); e.g. ``labels < num_classes`` to leave out
        the set voxels of a partial ground truth, whose leaf is unknown.

    Returns:
      A :class:`ReliabilityCurve` of ``[num_bins]`` arrays.

    >>> curve = reliability_curve(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]), np.array([0, 1, 1]),
    ...                           num_bins=2)
    >>> curve.confidence.tolist(), curve.accuracy.tolist(), curve.count.tolist()
    ([nan, 0.8], [nan, 0.6666666666666666], [0.0, 3.0])
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim < 1 or probs.shape[:-1] != labels.shape:
        raise ValueError(f"probs shape {probs.shape} must be the labels shape {labels.shape} plus a class axis")
    if int(num_bins) < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    confidence = probs.max(-1).astype(np.float64)
    correct = probs.argmax(-1) == labels
    if mask is not None:
        mask = _binary_mask(mask, "mask")
        _check_same_shape(mask, labels, ("mask", "labels"))
        confidence, correct = confidence[mask], correct[mask]
    confidence, correct = confidence.ravel(), correct.ravel()
    bins = np.clip((confidence * num_bins).astype(np.int64), 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, confidence, num_bins) / count
        accuracy = np.bincount(bins, correct, num_bins) / count
    return ReliabilityCurve(mean_confidence, accuracy, count)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, num_bins: int = 15,
                               mask: np.ndarray | None = None) -> float:
    r"""Top-label expected calibration error over voxels, with equal-width confidence bins.

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{N}\,\lvert \mathrm{acc}_b - \mathrm{conf}_b \rvert

    with the bins of :func:`reliability_curve`.

    Args:
      probs: ``[..., K]`` probabilities.
      labels: ``[...]`` true leaves.
      num_bins: the number of equal-width bins over ``[0, 1]``.
      mask: ``[...]`` voxels to include (default all).

    Returns:
      The ECE in ``[0, 1]``; NaN when no voxel is included.

    >>> probs = np.array([[0.9, 0.1]] * 10)
    >>> round(expected_calibration_error(probs, np.array([0] * 9 + [1])), 6)  # 90 % right at 0.9
    0.0
    >>> round(expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)), 6)  # 50 % right at 0.9
    0.4
    """
    curve = reliability_curve(probs, labels, num_bins=num_bins, mask=mask)
    total = curve.count.sum()
    if total == 0:
        return float("nan")
    used = curve.count > 0
    return float(np.sum(curve.count[used] / total * np.abs(curve.accuracy[used] - curve.confidence[used])))


# --------------------------------------------------------------------------- one case


def evaluate_case(pred: np.ndarray, true: np.ndarray, *, num_classes: int, spacing: Sequence[float] | float,
                  annotated: Iterable[int] | None = None, names: Sequence[str] | None = None,
                  hd95: bool = True, include_background: bool = False) -> dict[str, float]:
    """Dice and HD95 per leaf of one case, scored only on the leaves its ground truth annotates.

    For an annotated leaf ``c`` the true mask is ``true == c``: a voxel with a set id is negative
    for ``c``, since a partial annotation gives the set of the non-annotated leaves to every voxel
    whose leaf it does not delineate. Predicting ``c`` in a set voxel is therefore a false positive,
    while the choice among non-annotated leaves never changes a score. Leaves outside
    ``annotated`` are reported as NaN (their true masks are unknown).

    Args:
      pred: predicted leaf map (ids ``0..num_classes-1``).
      true: ground-truth label ids: leaves, and set ids ``>= num_classes`` for a partial truth.
      num_classes: the number of leaves ``C``.
      spacing: voxel size in mm per axis (for HD95).
      annotated: the leaves the ground truth annotates (default all).
      names: the ``C`` leaf names used in the keys (default ``label_<c>``).
      hd95: also compute the HD95 (``False``: Dice only, much cheaper).
      include_background: also score leaf 0.

    Returns:
      ``{"dice_<name>": ..., "hd95_<name>": ...}`` (no ``hd95_`` keys without ``hd95``) for every
      leaf (but the background unless ``include_background``), in leaf order; NaN where a leaf is not annotated or, following
      :func:`dice_score` and :func:`hausdorff95`, absent from both maps.

    Raises:
      ValueError: on mismatched shapes, ids out of range or a wrong number of names.

    >>> out = evaluate_case(np.array([[[0, 1, 2, 2]]]), np.array([[[0, 1, 3, 3]]]), num_classes=3,
    ...                     spacing=(1, 1, 1), annotated=[0, 1])
    >>> out
    {'dice_label_1': 1.0, 'hd95_label_1': 0.0, 'dice_label_2': nan, 'hd95_label_2': nan}
    """
    pred, true = _label_map(pred, "pred"), _label_map(true, "true")
    _check_same_shape(pred, true, ("pred", "true"))
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"pred must hold leaf ids in [0, {num_classes}), got [{pred.min()}, {pred.max()}]")
    if true.size and true.min() < 0:
        raise ValueError(f"true must hold non-negative label ids, got {true.min()}")
    names = [f"label_{c}" for c in range(num_classes)] if names is None else list(names)
    if len(names) != num_classes:
        raise ValueError(f"names must give the {num_classes} leaves a name each, got {len(names)}")
    annotated = set(range(num_classes)) if annotated is None else {int(c) for c in annotated}
    if not annotated <= set(range(num_classes)):
        raise ValueError(f"annotated must be leaves in [0, {num_classes}), got {sorted(annotated)}")
    spacing = _spacing(spacing, pred.ndim)
    out = {}
    for c in range(0 if include_background else 1, num_classes):
        out[f"dice_{names[c]}"] = float(dice_score(pred, true, labels=[c])[0]) if c in annotated else float("nan")
        if hd95:
            out[f"hd95_{names[c]}"] = (hausdorff95(pred == c, true == c, spacing=spacing) if c in annotated
                                       else float("nan"))
    return out


# --------------------------------------------------------------------------- statistics over cases


class ConfidenceInterval(NamedTuple):
    """A statistic and its confidence interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(values: Sequence[float], *, num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0,
                 statistic: Callable[..., np.ndarray] = np.mean) -> ConfidenceInterval:
    """A statistic of per-case values and its percentile bootstrap confidence interval.

    NaN values (cases where the metric is undefined) are dropped. The ``num_resamples`` resamples
    of the ``n`` values (drawn with replacement) are evaluated at once, in chunks of at most
    ``2**22`` drawn values, so ``statistic`` must accept an ``axis`` argument (``np.mean``,
    ``np.median``, ...). With ``α = 1 − confidence``, the interval is the ``α/2`` and
    ``1 − α/2`` quantiles of the resampled statistics.

    Args:
      values: ``[n]`` per-case values.
      num_resamples: the number of bootstrap resamples.
      confidence: the coverage of the interval, in ``(0, 1)``.
      seed: seed of the NumPy generator (the result is deterministic).
      statistic: ``statistic(x, axis=...)``, reducing the given axis.

    Returns:
      ``ConfidenceInterval(estimate, low, high)`` with ``estimate = statistic(values)``; all NaN
      when no value is left.

    >>> est, lo, hi = bootstrap_ci(np.arange(10.0), num_resamples=2000)
    >>> est, lo < est < hi
    (4.5, True)
    >>> bootstrap_ci([np.nan, 2.0, 2.0])
    ConfidenceInterval(estimate=2.0, low=2.0, high=2.0)
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {values.shape}")
    if int(num_resamples) < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = values[~np.isnan(values)]
    if values.size == 0:
        return ConfidenceInterval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**22 // values.size)  # resamples per chunk: bounds the memory for long inputs
    resampled = [
        statistic(values[rng.integers(0, values.size, size=(min(chunk, num_resamples - start), values.size))], axis=1)
        for start in range(0, num_resamples, chunk)
    ]
    alpha = 1.0 - confidence
    low, high = np.quantile(np.concatenate(resampled), [alpha / 2.0, 1.0 - alpha / 2.0])
    return ConfidenceInterval(float(statistic(values)), float(low), float(high))


class WilcoxonResult(NamedTuple):
    """The Wilcoxon signed-rank statistic and its two-sided p-value."""

    statistic: float
    pvalue: float


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> WilcoxonResult:
    """Two-sided paired Wilcoxon signed-rank test of ``a`` against ``b`` (``scipy.stats.wilcoxon``).

    The statistic is the smaller of the rank sums of the positive and of the negative differences
    ``a_i − b_i`` (zero differences dropped, SciPy's default ``zero_method="wilcox"``). Pairs with
    a NaN are dropped first.

    Args:
      a: ``[n]`` per-case values of one method.
      b: ``[n]`` per-case values of the other, in the same case order.

    Returns:
      ``WilcoxonResult(statistic, pvalue)``; ``(0, 1)`` when every difference is zero and
      ``(NaN, NaN)`` when no complete pair is left.

    Raises:
      ValueError: if ``a`` and ``b`` are not two sequences of the same length.

    >>> result = paired_wilcoxon(np.arange(20.0) + 1.0, np.arange(20.0) + [0.0, 0.5] * 10)
    >>> result.pvalue < 1e-3
    True
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be paired: one-dimensional with one length, got shapes {a.shape} and {b.shape}")
    complete = ~(np.isnan(a) | np.isnan(b))
    a, b = a[complete], b[complete]
    if a.size == 0:
        return WilcoxonResult(float("nan"), float("nan"))
    if np.all(a == b):
        return WilcoxonResult(0.0, 1.0)
    result = stats.wilcoxon(a, b)
    return WilcoxonResult(float(result.statistic), float(result.pvalue))


def nested_bootstrap_ci(values: np.ndarray, *, num_resamples: int = 10_000, confidence: float = 0.95,
                        seed: int = 0) -> ConfidenceInterval:
    """The mean of ``[S, N]`` values (runs × cases) and its two-level percentile bootstrap CI.

    Each resample draws ``S`` rows (e.g. training seeds) with replacement, then ``N`` columns
    (cases) with replacement, and takes the mean of the drawn block; the interval is the
    ``α/2`` and ``1 − α/2`` quantiles of these means (``α = 1 − confidence``). Both sources of
    variation, the training run and the case, enter the interval. NaN entries are left out of
    each mean (a resample with no value left counts as NaN and is dropped).

    Args:
      values: ``[S, N]`` per-run, per-case values (e.g. paired differences of two methods).
      num_resamples: the number of resamples.
      confidence: the coverage, in ``(0, 1)``.
      seed: seed of the NumPy generator (the result is deterministic).

    Returns:
      ``ConfidenceInterval(estimate, low, high)``, ``estimate`` the mean of all values.

    >>> est, lo, hi = nested_bootstrap_ci(np.arange(12.0).reshape(3, 4), num_resamples=2000)
    >>> est, bool(lo < est < hi)
    (5.5, True)
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"values must be [runs, cases] with both > 0, got shape {values.shape}")
    if int(num_resamples) < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if np.all(np.isnan(values)):
        return ConfidenceInterval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    s, n = values.shape
    means = np.empty(int(num_resamples))
    chunk = max(1, 2**22 // (s * n))
    for start in range(0, int(num_resamples), chunk):
        k = min(chunk, int(num_resamples) - start)
        rows = rng.integers(0, s, size=(k, s, 1))
        cols = rng.integers(0, n, size=(k, 1, n))
        block = values[rows, cols]  # [k, S, N]
        with warnings.catch_warnings():  # a resample of NaNs only gives NaN, dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            means[start:start + k] = np.nanmean(block.reshape(k, -1), axis=1)
    means = means[~np.isnan(means)]
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return ConfidenceInterval(float(np.nanmean(values)), float(low), float(high))


def holm_adjust(pvalues: Sequence[float]) -> np.ndarray:
    r"""Holm's step-down adjustment of a family of p-values (family-wise error control).

    With the ``m`` p-values sorted increasingly, ``p_(1) ≤ … ≤ p_(m)``, the adjusted values are

    .. math:: \tilde p_{(i)} = \min\Big(1, \max_{j \le i} (m - j + 1)\, p_{(j)}\Big),

    returned in the input order; rejecting where ``\tilde p < α`` controls the family-wise error
    rate at ``α``. NaN p-values are left out of the family and stay NaN.

    Args:
      pvalues: ``[m]`` p-values.

    Returns:
      float64 ``[m]`` adjusted p-values.

    References:
      S. Holm, *A simple sequentially rejective multiple test procedure*, Scand. J. Statist. 1979.

    >>> holm_adjust([0.01, 0.04, 0.03, np.nan]).round(3).tolist()
    [0.03, 0.06, 0.06, nan]
    """
    p = np.asarray(pvalues, np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    out = np.full(p.shape, np.nan)
    valid = np.nonzero(~np.isnan(p))[0]
    if valid.size == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


class RunComparison(NamedTuple):
    """Two methods compared over paired training runs (:func:`paired_runs`)."""

    diff: float  #: mean over the runs of ``a − b``
    low: float  #: lower bound of the t confidence interval of ``diff``
    high: float  #: upper bound
    pvalue: float  #: two-sided paired t-test of ``diff = 0``
    wins: int  #: runs with ``a > b``
    n: int  #: complete pairs


def paired_runs(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> RunComparison:
    r"""Paired comparison of two methods over training runs, the unit of inference of a study.

    ``a_i`` and ``b_i`` are one summary per run (e.g. the case-mean Dice on the test set) of two
    methods trained with the same run seed ``i`` (same initialisation and sampling). With the
    differences :math:`d_i = a_i - b_i`, :math:`\bar d` their mean and :math:`s` their standard
    deviation over the :math:`n` runs, the interval is :math:`\bar d \pm t_{n-1,1-\alpha/2}\, s/\sqrt n`
    and the p-value that of the paired t-test (``scipy.stats.ttest_rel``). Pairs with a NaN are
    dropped first. Variation between runs enters the interval; the test cases are fixed (their
    mean is the run's summary).

    Args:
      a: ``[n]`` per-run values of one method.
      b: ``[n]`` per-run values of the other, in the same run (seed) order.
      confidence: the coverage of the interval, in ``(0, 1)``.

    Returns:
      :class:`RunComparison`; the interval and p are NaN with fewer than 2 pairs, and with every
      difference equal the interval has zero width and ``p`` is 1 when it is zero, else 0.

    Raises:
      ValueError: ``a`` and ``b`` are not paired sequences, or ``confidence`` is outside ``(0, 1)``.

    >>> r = paired_runs([0.90, 0.80, 0.85, 0.88, 0.86], [0.70, 0.65, 0.72, 0.60, 0.71])
    >>> round(r.diff, 3), r.wins, r.n, r.pvalue < 0.01, bool(r.low < r.diff < r.high)
    (0.182, 5, 5, True, True)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be paired: one-dimensional with one length, got shapes {a.shape} and {b.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    n = int(d.size)
    wins = int(np.sum(d > 0))
    if n == 0:
        return RunComparison(float("nan"), float("nan"), float("nan"), float("nan"), 0, 0)
    mean = float(np.mean(d))
    if n < 2:
        return RunComparison(mean, float("nan"), float("nan"), float("nan"), wins, n)
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        return RunComparison(mean, mean, mean, 1.0 if mean == 0.0 else 0.0, wins, n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / np.sqrt(n)
    pvalue = float(stats.ttest_rel(a[~(np.isnan(a) | np.isnan(b))], b[~(np.isnan(a) | np.isnan(b))]).pvalue)
    return RunComparison(mean, mean - half, mean + half, pvalue, wins, n)
