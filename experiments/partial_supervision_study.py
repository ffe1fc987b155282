r"""The label-set comparison of Fidon et al. 2021 (docs/theory.md §4) on embedded phantoms: every method, one table.

    python -m experiments.partial_supervision_study --runs=runs/partial_supervision --results=docs/results/partial_supervision

Trains (or resumes) one run of ``configs/partial_supervision.py:METHOD`` per method in
``--methods`` (2 fully segmented and 12 partially annotated phantoms), evaluates each on the same
held-out, fully segmented phantoms (last checkpoint, sliding windows), and writes atomically into
``--results``:

* ``per_case.csv``: method, case, Dice and HD95 per tissue;
* ``partial_supervision.md``: mean Dice per tissue and method, the mean over tissues with its 95%
  bootstrap CI over cases, and a paired Wilcoxon test of each method against ``--reference``
  over the (case, tissue) pairs;
* ``partial_supervision.png``: mean Dice per tissue, one bar per method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags, logging

from configs import partial_supervision
from labelset_jax import cli, files, input_pipeline, train
from labelset_jax.evaluation import EvalSettings, evaluate_cases
from labelset_jax.labelsets import FETAL_BRAIN
from labelset_jax.metrics import bootstrap_ci, paired_wilcoxon

_RUNS = flags.DEFINE_string("runs", "runs/partial_supervision", "Folder of the training runs (one per method).")
_RESULTS = flags.DEFINE_string("results", "docs/results/partial_supervision", "Folder for the tables and the plot.")
_METHODS = flags.DEFINE_list("methods", list(partial_supervision.METHODS), "Methods to compare.")
_REFERENCE = flags.DEFINE_string("reference", "leaf_dice", "Method the others are tested against.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: the config's).")
_NUM_VAL = flags.DEFINE_integer("num_val", None, "Held-out cases (default: the config's).")

TISSUES = FETAL_BRAIN.names[1:]


def run_method(method: str, workdir: Path) -> list[dict]:
    """Trains (or resumes) one method and returns its per-case rows on the held-out phantoms."""
    config = partial_supervision.get_config(method)
    if _STEPS.value is not None:
        config.num_steps = _STEPS.value
        config.eval_every = min(config.eval_every, _STEPS.value)
        config.checkpoint_every = min(config.checkpoint_every, _STEPS.value)
    if _NUM_VAL.value is not None:
        config.data.num_val = _NUM_VAL.value
    train.train_and_evaluate(config, workdir)
    model = train.load_trained(workdir, best=False)
    cases = input_pipeline.create_datasets(model.config.data, seed=model.config.seed).val
    rows = evaluate_cases(model, cases, EvalSettings.from_config(model.config))
    return [{"method": method, **row} for row in rows]


def table(rows: list[dict], methods: list[str], reference: str) -> str:
    """The Markdown table: mean Dice per tissue, mean over tissues [95% CI], Wilcoxon vs reference."""
    dice = {m: np.array([[r[f"dice_{t}"] for t in TISSUES] for r in rows if r["method"] == m], np.float64)
            for m in methods}
    header = "| method | " + " | ".join(TISSUES) + " | mean [95% CI] | vs " + reference + " (Wilcoxon p) |"
    lines = [header, "|" + "---|" * (len(TISSUES) + 3)]
    for m in methods:
        per_case = np.nanmean(dice[m], axis=1)
        ci = bootstrap_ci(per_case)
        if m == reference or reference not in dice:
            test = "–"
        else:
            w = paired_wilcoxon(dice[m].ravel(), dice[reference].ravel())
            diff = np.nanmean(dice[m] - dice[reference])
            test = f"{diff:+.3f} (p = {w.pvalue:.2g})"
        cells = " | ".join(f"{v:.3f}" for v in np.nanmean(dice[m], axis=0))
        lines.append(f"| {m} | {cells} | {ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}] | {test} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(methods)
    x = np.arange(len(TISSUES))
    for k, m in enumerate(methods):
        means = [np.nanmean([r[f"dice_{t}"] for r in rows if r["method"] == m]) for t in TISSUES]
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, means, width, label=m)
    ax.set_xticks(x, TISSUES, rotation=20)
    ax.set_ylabel("Dice (held-out phantoms)")
    ax.set_ylim(0, 1)
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path)


def main(argv):
    cli.start(argv)
    methods = list(_METHODS.value)
    cli.check_known(methods, partial_supervision.METHODS, what="method")
    if _STEPS.value is not None and _STEPS.value < 1:
        cli.fail(f"--steps must be >= 1, got {_STEPS.value}")
    if _NUM_VAL.value is not None and _NUM_VAL.value < 1:
        cli.fail(f"--num_val must be >= 1, got {_NUM_VAL.value}")
    rows = []
    for method in methods:
        logging.info("method %s", method)
        rows += run_method(method, Path(_RUNS.value) / method)
    out = Path(_RESULTS.value)
    files.write_csv(out / "per_case.csv", rows)
    md = table(rows, methods, _REFERENCE.value)
    files.write_text(out / "partial_supervision.md", md)
    plot(rows, methods, out / "partial_supervision.png")
    print(md)


if __name__ == "__main__":
    app.run(main)
