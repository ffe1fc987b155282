r"""Evaluate trained workdir(s) on a dataset split: per-case and summary tables.

    python -m experiments.evaluate --workdir=runs/default
    python -m experiments.evaluate --workdir=runs/a,runs/b --tta --output=runs/ensemble_eval
    python -m experiments.evaluate --workdir=runs/default --manifest=data/test/manifest.csv
    python -m experiments.evaluate --workdir=runs/mine --split=test   # an nnU-Net dataset's imagesTs/labelsTs

Several comma-separated workdirs form an ensemble (probabilities averaged). Without
``--manifest`` the validation cases of the (first) workdir's config are used, or with
``--split=test`` the labelled held-out cases of its nnU-Net dataset (``imagesTs`` + ``labelsTs``). Partially annotated
cases (manifest ``protocol``) are scored only on the leaves their protocol annotates. The sliding
windows follow the first workdir's ``config.eval``; ``--tta``/``--notta`` override its ``tta``.

Writes ``per_case.csv``, ``summary.csv`` (mean, 95% bootstrap CI, n per metric),
``summary_by_source.csv`` for a merged dataset (``experiments/merge_datasets.py``: the same per
source) and ``summary.md`` into ``--output`` (default ``<first workdir>/eval``, ``eval_test`` for the test split),
each atomically.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from labelset_jax import cli, files, input_pipeline, train
from labelset_jax.data import load_cases, read_manifest
from labelset_jax.evaluation import EvalSettings, evaluate_cases, summarize

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir, or comma-separated workdirs (an ensemble).")
_MANIFEST = flags.DEFINE_string("manifest", None, "CSV manifest of the cases to evaluate (default: validation cases).")
_SPLIT = flags.DEFINE_enum("split", "val", ["val", "test"],
                           "Without --manifest: the run's validation cases, or its nnU-Net dataset's labelled "
                           "imagesTs.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder (default <first workdir>/eval).")
_TTA = flags.DEFINE_bool("tta", None, "Left-right flip test-time augmentation (default: the config's eval.tta).")
_BEST = flags.DEFINE_bool("best", True, "Use the best checkpoint (else the latest).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    cli.start(argv)
    workdirs = [w for w in _WORKDIR.value.split(",") if w]
    if not workdirs:
        cli.fail(f"--workdir={_WORKDIR.value!r} names no workdir")
    for w in workdirs:
        try:
            train.load_run_config(w)  # the one check that a folder is a training run
        except FileNotFoundError as e:
            cli.fail(str(e))
    if _MANIFEST.value and _SPLIT.value != "val":
        cli.fail("--split and --manifest both choose the cases: pass one of them")
    output = Path(_OUTPUT.value or Path(workdirs[0]) / ("eval" if _SPLIT.value == "val" else "eval_test"))
    cli.check_output_folder(output)  # before loading anything
    try:
        if _MANIFEST.value:
            manifest_rows = read_manifest(_MANIFEST.value)  # the rows and that their files exist
            if not manifest_rows:
                cli.fail(f"{_MANIFEST.value}: the manifest lists no case")
        models = [train.load_trained(w, best=_BEST.value) for w in workdirs]
        config = models[0].config
        if _MANIFEST.value:
            # the ids mean what they mean to the run; what each case annotates, from its label map
            cases = load_cases(manifest_rows, space=models[0].label_space)
        elif _SPLIT.value == "test":
            cases = input_pipeline.create_test_cases(config.data)
        else:
            cases = input_pipeline.run_validation_cases(config, workdirs[0])
        settings = EvalSettings.from_config(config)
        if _TTA.value is not None:
            settings = settings._replace(tta=_TTA.value)
        progress = cli.Progress(len(cases))
        rows = evaluate_cases(models, cases, settings, on_case=lambda case, *_: progress.update(case.id))
    except (ValueError, FileNotFoundError) as e:
        cli.fail(str(e))
    if not rows:
        cli.fail("no case to evaluate: the run has no validation case (data.num_val=0); pass --split=test for an "
                 "nnU-Net dataset's labelled imagesTs, or --manifest")
    summary = summarize(rows)
    files.write_csv(output / "per_case.csv", rows)
    files.write_csv(output / "summary.csv", summary)
    md = _table(summary)
    written = [output / "per_case.csv", output / "summary.csv"]
    sources = list(dict.fromkeys(r["source"] for r in rows if "source" in r))
    if sources:  # a merged dataset: the same tables per source
        by_source = []
        for source in sources:
            part = summarize([r for r in rows if r.get("source") == source])
            by_source += [{"source": source, **s} for s in part]
            md += ["", f"Source {source} ({sum(r.get('source') == source for r in rows)} cases):", ""] + _table(part)
        files.write_csv(output / "summary_by_source.csv", by_source)
        written.append(output / "summary_by_source.csv")
    files.write_text(output / "summary.md", "\n".join(md) + "\n")
    print(f"wrote {', '.join(map(str, written + [output / 'summary.md']))}")


def _table(summary: list[dict]) -> list[str]:
    md = ["| metric | mean | 95% CI | n |", "|---|---|---|---|"]
    return md + [f"| {s['metric']} | {s['mean']:.3f} | [{s['ci_low']:.3f}, {s['ci_high']:.3f}] | {s['n']} |"
                 for s in summary]


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
