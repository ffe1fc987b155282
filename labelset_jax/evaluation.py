"""Evaluation of trained workdirs on a dataset split: per-case metrics and their summary.

Used by ``experiments/evaluate.py`` and the study drivers; importable from a notebook.
"""

from __future__ import annotations

import numpy as np

from labelset_jax import cli, input_pipeline, train
from labelset_jax.data import load_cases, read_manifest
from labelset_jax.inference import predict_volume
from labelset_jax.labelsets import FETAL_BRAIN_PROTOCOLS
from labelset_jax.metrics import bootstrap_ci, evaluate_case, volume_error


def evaluate(workdirs: list[str], *, manifest: str | None = None, tta: bool = False,
             best: bool = True) -> tuple[list[dict], list[dict]]:
    """Scores trained workdir(s) (several: an ensemble averaged on probabilities) case by case.

    Args:
      workdirs: training workdirs; more than one form an ensemble.
      manifest: a CSV manifest of the cases, or ``None`` for the validation cases of the first
        workdir's config.
      tta: left-right flip test-time augmentation.
      best: the best checkpoint by validation Dice (else the latest).

    Returns:
      ``(per_case, summary)``: one row per case (Dice, HD95 and soft/hard volume errors per tissue;
      tissues a partial protocol does not annotate are NaN), and one row per metric (mean, 95%
      bootstrap CI, number of finite values).
    """
    members = [train.load_trained(w, best=best) for w in workdirs]
    predict_fns = [m[0] for m in members]
    config, space = members[0][1], members[0][2]
    if manifest:
        cases = [input_pipeline._from_case(c) for c in load_cases(read_manifest(manifest))]
    else:
        cases = input_pipeline.create_datasets(config.data, seed=config.seed).val
    ev = config.get("eval", {})
    progress = cli.Progress(len(cases))
    rows = []
    for case in cases:
        probs, labels = predict_volume(
            predict_fns, case.image[None, ..., None], roi_size=tuple(ev.get("roi_size", config.patch_size)),
            sw_batch_size=ev.get("sw_batch_size", 2), overlap=ev.get("overlap", 0.5), tta=tta,
        )
        probs, pred = np.asarray(probs[0]), np.asarray(labels[0])
        protocol = FETAL_BRAIN_PROTOCOLS.get(case.protocol)
        annotated = protocol.annotated if protocol is not None and space.num_classes == 9 else range(space.num_classes)
        row = {"id": case.id, "protocol": case.protocol}
        row.update(evaluate_case(pred, case.labels, num_classes=space.num_classes, spacing=case.spacing,
                                 annotated=annotated, names=space.names))
        for c in range(1, space.num_classes):
            name = space.names[c]
            if c in annotated:
                err = volume_error(probs[..., c], case.labels == c, spacing=case.spacing)
                row[f"dvol_soft_{name}"], row[f"dvol_hard_{name}"] = err.soft, err.hard
            else:
                row[f"dvol_soft_{name}"] = row[f"dvol_hard_{name}"] = float("nan")
        rows.append(row)
        progress.update(case.id)
    summary = []
    for key in rows[0]:
        if key in ("id", "protocol"):
            continue
        values = np.array([r[key] for r in rows], np.float64)
        mean, lo, hi = bootstrap_ci(values)
        summary.append({"metric": key, "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(values).sum())})
    return rows, summary
