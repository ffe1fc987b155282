r"""Evaluate trained workdir(s) on a dataset split: per-case and summary tables.

    python -m experiments.evaluate --workdir=runs/default
    python -m experiments.evaluate --workdir=runs/a,runs/b --tta --output=runs/ensemble_eval
    python -m experiments.evaluate --workdir=runs/default --manifest=data/test/manifest.csv

Several comma-separated workdirs form an ensemble (probabilities averaged). Without
``--manifest`` the validation cases of the (first) workdir's config are used. Partially annotated
cases (manifest ``protocol``) are scored only on the leaves their protocol annotates.

Writes ``per_case.csv``, ``summary.csv`` (mean, 95% bootstrap CI, n per metric) and
``summary.md`` into ``--output`` (default ``<first workdir>/eval``), each atomically.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
from absl import app, flags

from labelset_jax import cli, input_pipeline, train
from labelset_jax.data import load_cases, read_manifest
from labelset_jax.inference import predict_volume
from labelset_jax.labelsets import FETAL_BRAIN_PROTOCOLS
from labelset_jax.metrics import bootstrap_ci, evaluate_case, volume_error

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir, or comma-separated workdirs (an ensemble).")
_MANIFEST = flags.DEFINE_string("manifest", None, "CSV manifest of the cases to evaluate (default: validation cases).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default <first workdir>/eval).")
_TTA = flags.DEFINE_bool("tta", False, "Left-right flip test-time augmentation.")
_BEST = flags.DEFINE_bool("best", True, "Use the best checkpoint (else the latest).")
flags.mark_flags_as_required(["workdir"])


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def evaluate(workdirs: list[str], *, manifest: str | None, tta: bool, best: bool) -> tuple[list[dict], list[dict]]:
    """Returns ``(per_case rows, summary rows)``."""
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


def main(argv):
    cli.quiet_orbax()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdirs = [w for w in _WORKDIR.value.split(",") if w]
    for w in workdirs:
        if not (Path(w) / "config.json").exists():
            cli.fail(f"{w} is not a training workdir (no config.json)")
    try:
        rows, summary = evaluate(workdirs, manifest=_MANIFEST.value, tta=_TTA.value, best=_BEST.value)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(str(e))
    output = Path(_OUTPUT.value or Path(workdirs[0]) / "eval")
    output.mkdir(parents=True, exist_ok=True)
    write_atomic(output / "per_case.csv", to_csv(rows))
    write_atomic(output / "summary.csv", to_csv(summary))
    md = ["| metric | mean | 95% CI | n |", "|---|---|---|---|"]
    md += [f"| {s['metric']} | {s['mean']:.3f} | [{s['ci_low']:.3f}, {s['ci_high']:.3f}] | {s['n']} |" for s in summary]
    write_atomic(output / "summary.md", "\n".join(md) + "\n")
    print(f"wrote {output / 'per_case.csv'}, {output / 'summary.csv'}, {output / 'summary.md'}")


if __name__ == "__main__":
    app.run(main)
