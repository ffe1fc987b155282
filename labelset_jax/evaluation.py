"""The one evaluation path: predict a case, score it, summarise the scores.

Training-time validation (:mod:`labelset_jax.train`), the run report (:mod:`labelset_jax.report`),
``experiments/evaluate.py``, ``experiments/predict.py`` (prediction only) and the study drivers all
go through these functions:

* :meth:`EvalSettings.from_config`: the sliding-window and test-time-augmentation settings of a
  config (``config.eval``), read in this one place;
* :func:`predict_case`: one image through one model or an ensemble (probabilities averaged), by
  Gaussian-weighted sliding windows, optionally with left-right flip TTA
  (:func:`labelset_jax.inference.predict_volume`), after the library's normalisation
  (:func:`labelset_jax.data.normalize_image`);
* :func:`score_case`: Dice, HD95 and volume errors per tissue of one prediction
  (:mod:`labelset_jax.metrics`); partial ground truth is scored only on the leaves its protocol
  annotates;
* :func:`evaluate_cases`: both over a list of cases; :func:`summarize`: mean and 95% bootstrap CI
  of every metric over the cases.

A trained model is a :class:`TrainedModel`, e.g. from :func:`labelset_jax.train.load_trained`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from labelset_jax.data import Case, normalize_image
from labelset_jax.inference import predict_volume
from labelset_jax.labelsets import LabelSpace
from labelset_jax.metrics import bootstrap_ci, dice_score, evaluate_case, hausdorff95, volume_error

__all__ = ["EvalSettings", "TrainedModel", "Prediction", "predict_case", "score_case", "evaluate_cases",
           "summarize"]


class EvalSettings(NamedTuple):
    """How a volume is predicted.

    Attributes:
      roi_size: the sliding window ``(d, h, w)``.
      sw_batch_size: windows per call of the model.
      overlap: overlap of neighbouring windows, in ``[0, 1)``.
      mode: ``"gaussian"`` or ``"constant"`` window weights.
      tta: average the logits over a left-right flip.
    """

    roi_size: tuple[int, int, int]
    sw_batch_size: int = 2
    overlap: float = 0.5
    mode: str = "gaussian"
    tta: bool = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> EvalSettings:
        """The settings of ``config.eval`` (``roi_size, sw_batch_size, overlap, mode, tta``); a
        missing field takes the default above, a missing ``roi_size`` the training patch size.

        >>> config = ml_collections.ConfigDict({"patch_size": (32, 32, 32), "eval": {"overlap": 0.25}})
        >>> EvalSettings.from_config(config)
        EvalSettings(roi_size=(32, 32, 32), sw_batch_size=2, overlap=0.25, mode='gaussian', tta=False)
        """
        ev = config.get("eval") or {}
        defaults = cls(roi_size=tuple(config.patch_size))
        return cls(
            roi_size=tuple(int(r) for r in ev.get("roi_size", defaults.roi_size)),
            sw_batch_size=int(ev.get("sw_batch_size", defaults.sw_batch_size)),
            overlap=float(ev.get("overlap", defaults.overlap)),
            mode=str(ev.get("mode", defaults.mode)),
            tta=bool(ev.get("tta", defaults.tta)),
        )


class TrainedModel(NamedTuple):
    """A trained model, its weights explicit.

    Attributes:
      apply_fn: ``apply_fn(images [N, D, H, W, K], state) -> logits [N, D, H, W, C]`` (``K`` input
        channels; argument order of :func:`labelset_jax.inference.sliding_window_inference`'s ``apply_fn(x, *args)``);
        a jitted function, reused across calls.
      state: the model's parameters and other variables (a pytree of arrays).
      config: the training config.
      label_space: the label space of the outputs (``C = label_space.num_classes`` leaves).
    """

    apply_fn: Callable[..., Any]
    state: Any
    config: ml_collections.ConfigDict
    label_space: LabelSpace


class Prediction(NamedTuple):
    """The prediction of one volume: ``probs`` float32 ``[D, H, W, C]`` and their argmax ``labels``
    int32 ``[D, H, W]``."""

    probs: np.ndarray
    labels: np.ndarray


def predict_case(models: TrainedModel | Sequence[TrainedModel], image: np.ndarray,
                 settings: EvalSettings, *, progress: Callable[[int, int], None] | None = None) -> Prediction:
    """Predicts one volume with a model or an ensemble (probabilities averaged over the members).

    Args:
      models: a :class:`TrainedModel`, or several of one label space (an ensemble).
      image: ``[D, H, W]`` (or ``[D, H, W, K]``, ``K`` input channels) raw intensities (e.g.
        ``case.image``), normalised here by :func:`~labelset_jax.data.normalize_image` as in
        training (with the run's CT statistics, ``config.data.intensity``, when it has them).
      settings: the sliding-window and TTA settings.
      progress: ``progress(done, total)`` after each batch of windows (see
        :func:`~labelset_jax.inference.sliding_window_inference`).

    Returns:
      A :class:`Prediction`.
    """
    members = [models] if isinstance(models, TrainedModel) else list(models)
    if len({m.label_space.num_classes for m in members}) > 1:
        raise ValueError("the ensemble members predict different label spaces")
    stats = {json.dumps(m.config.get("data", {}).get("intensity")) for m in members}
    if len(stats) > 1:
        raise ValueError("the ensemble members normalise their inputs differently (config.data.intensity)")
    image = normalize_image(image, intensity=json.loads(stats.pop()))
    channels = 1 if image.ndim == 3 else image.shape[-1]
    # What a training config says (the model's default is 1); a bare config says nothing.
    expected = {int(m.config.model.get("in_channels", 1)) for m in members if "model" in m.config}
    if expected and expected != {channels}:
        raise ValueError(f"the image has {channels} input channel(s), the model takes {sorted(expected)}")
    probs, labels = predict_volume(
        [m.apply_fn for m in members], image.reshape(1, *image.shape[:3], channels),
        roi_size=settings.roi_size, sw_batch_size=settings.sw_batch_size, overlap=settings.overlap,
        mode=settings.mode, tta=settings.tta, member_args=[(m.state,) for m in members],
        progress=progress,
    )
    return Prediction(np.asarray(probs[0]), np.asarray(labels[0]))


def score_case(case: Case, prediction: Prediction, label_space: LabelSpace, *, hd95: bool = True,
               include_background: bool = False) -> dict[str, Any]:
    """Scores one prediction against the case's labels.

    A partially annotated case (``case.annotated``, the leaves its labels delineate) is scored only
    on the leaves it annotates (docs/theory.md §3); the other tissues are NaN. Voxels holding the ignore label
    are left out (counted as background in both maps, so only a background score sees them).

    Args:
      case: the case with its ground truth.
      prediction: from :func:`predict_case`.
      label_space: the leaves and their names.
      hd95: also compute the HD95 (the costly metric).
      include_background: also score leaf 0 (Dice and HD95).

    Returns:
      ``{"id", "protocol", ["source",] "dice_<leaf>", "hd95_<leaf>" (with ``hd95``), ...,
      "dvol_soft_<leaf>", "dvol_hard_<leaf>", ...}``: per tissue the Dice, the HD95 (mm) and the
      signed soft (sum of probabilities) and hard (``p > 0.5``) volume errors (ml); the same for
      each nnU-Net region of the space (the union of its leaves, e.g. ``dice_whole_tumor``; NaN
      unless the case annotates all its leaves). ``source`` is there for a case of a merged
      dataset (``case.metadata["source"]``).
    """
    space = label_space
    annotated = range(space.num_classes) if case.annotated is None else case.annotated
    labels = case.labels
    if space.ignore_id is not None and np.any(labels == space.ignore_id):
        # voxels of unknown label are left out, as nnU-Net does: background in truth and prediction
        keep = labels != space.ignore_id
        labels = np.where(keep, labels, 0)
        prediction = Prediction(prediction.probs * keep[..., None], np.where(keep, prediction.labels, 0))
    row: dict[str, Any] = {"id": case.id, "protocol": case.protocol}
    if "source" in case.metadata:  # a merged dataset's case: per-source tables
        row["source"] = case.metadata["source"]
    row.update(evaluate_case(prediction.labels, labels, num_classes=space.num_classes, spacing=case.spacing,
                             annotated=annotated, names=space.names, hd95=hd95,
                             include_background=include_background))
    for c in range(1, space.num_classes):
        name = space.names[c]
        if c in annotated:
            err = volume_error(prediction.probs[..., c], labels == c, spacing=case.spacing)
            row[f"dvol_soft_{name}"], row[f"dvol_hard_{name}"] = err.soft, err.hard
        else:
            row[f"dvol_soft_{name}"] = row[f"dvol_hard_{name}"] = float("nan")
    for region in space.region_ids:  # nnU-Net regions (BraTS's whole tumour, ...): the union of their leaves
        name, members = space.name_of(region), list(space.leaves_of(region))
        known = all(c in annotated for c in members)
        pred_mask, true_mask = np.isin(prediction.labels, members), np.isin(labels, members)
        row[f"dice_{name}"] = (float(dice_score(pred_mask.astype(np.int32), true_mask.astype(np.int32), labels=[1])[0])
                               if known else float("nan"))
        if hd95:
            row[f"hd95_{name}"] = (hausdorff95(pred_mask, true_mask, spacing=case.spacing) if known
                                   else float("nan"))
        if known:
            err = volume_error(prediction.probs[..., members].sum(-1), true_mask, spacing=case.spacing)
            row[f"dvol_soft_{name}"], row[f"dvol_hard_{name}"] = err.soft, err.hard
        else:
            row[f"dvol_soft_{name}"] = row[f"dvol_hard_{name}"] = float("nan")
    return row


def evaluate_cases(models: TrainedModel | Sequence[TrainedModel], cases: Sequence[Case], settings: EvalSettings,
                   *, on_case: Callable[[Case, Prediction, dict], None] | None = None,
                   **score_options) -> list[dict[str, Any]]:
    """:func:`predict_case` and :func:`score_case` on every case, in order.

    Args:
      models: a model or an ensemble (all of one label space).
      cases: the cases, with their ground truth.
      settings: the sliding-window and TTA settings.
      on_case: called as ``on_case(case, prediction, row)`` after each case (progress display,
        pictures, study-specific quantities added to ``row``).
      **score_options: keyword arguments of :func:`score_case`.

    Returns:
      One row per case (see :func:`score_case`).
    """
    space = (models if isinstance(models, TrainedModel) else models[0]).label_space
    rows = []
    for case in cases:
        prediction = predict_case(models, case.image, settings)
        row = score_case(case, prediction, space, **score_options)
        if on_case is not None:
            on_case(case, prediction, row)
        rows.append(row)
    return rows


def summarize(rows: Sequence[Mapping[str, Any]], *, exclude: Sequence[str] = ("id", "protocol", "source"),
              num_resamples: int = 10_000) -> list[dict[str, Any]]:
    """Mean and 95% bootstrap CI over the cases of every metric of the rows (NaNs left out).

    Args:
      rows: one row per case, e.g. from :func:`evaluate_cases`.
      exclude: keys that are not metrics.
      num_resamples: bootstrap resamples.

    Returns:
      One ``{"metric", "mean", "ci_low", "ci_high", "n"}`` per metric, in the rows' key order;
      ``n`` counts the finite values.

    >>> summarize([{"id": "a", "dice": 0.5}, {"id": "b", "dice": float("nan")}])
    [{'metric': 'dice', 'mean': 0.5, 'ci_low': 0.5, 'ci_high': 0.5, 'n': 1}]
    """
    summary = []
    for key in (rows[0] if rows else {}):
        if key in exclude:
            continue
        values = np.array([r[key] for r in rows], np.float64)
        mean, low, high = bootstrap_ci(values, num_resamples=num_resamples)
        summary.append({"metric": key, "mean": mean, "ci_low": low, "ci_high": high,
                        "n": int(np.isfinite(values).sum())})
    return summary
