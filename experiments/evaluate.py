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

from pathlib import Path

from absl import app, flags

from labelset_jax import cli
from labelset_jax.evaluation import evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir, or comma-separated workdirs (an ensemble).")
_MANIFEST = flags.DEFINE_string("manifest", None, "CSV manifest of the cases to evaluate (default: validation cases).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default <first workdir>/eval).")
_TTA = flags.DEFINE_bool("tta", False, "Left-right flip test-time augmentation.")
_BEST = flags.DEFINE_bool("best", True, "Use the best checkpoint (else the latest).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    cli.start(argv)
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
    cli.write_atomic(output / "per_case.csv", cli.to_csv(rows))
    cli.write_atomic(output / "summary.csv", cli.to_csv(summary))
    md = ["| metric | mean | 95% CI | n |", "|---|---|---|---|"]
    md += [f"| {s['metric']} | {s['mean']:.3f} | [{s['ci_low']:.3f}, {s['ci_high']:.3f}] | {s['n']} |" for s in summary]
    cli.write_atomic(output / "summary.md", "\n".join(md) + "\n")
    print(f"wrote {output / 'per_case.csv'}, {output / 'summary.csv'}, {output / 'summary.md'}")


if __name__ == "__main__":
    app.run(main)
