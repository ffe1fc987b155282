r"""The soft-Dice volume-bias study (Bertels et al.; docs/theory.md §5, experiment 1) on synthetic data.

    python -m experiments.volume_bias_study --workdir=runs/volume_bias --output=docs/results

Two parts, each a set of training runs of ``configs/volume_bias.py`` followed by evaluation on
held-out cases whose per-voxel foreground probability ``q`` is known:

1. *ambiguous blob*: a clear object plus one faint blob labelled foreground with probability
   ``p`` (one draw for the whole blob); arms ``ce`` and ``dice`` for each ``p`` in ``--ps``.
   Theory: soft Dice predicts the blob fully iff ``p > 0.5``, so ``ΔV_blob ≈ (1[p>0.5] − p)·V_blob``;
   cross-entropy predicts ``q``, so its soft volume is unbiased.
2. *boundary noise*: independent per-voxel boundary labels ``q = sigmoid((r − ρ)/τ)``; every arm of
   ``--arms``.

For each case, ``ΔV = V_pred − E[V]`` (ml) with ``E[V] = v Σ q``, for the soft volume (sum of
probabilities) and the thresholded one (``p > 0.5``); means with 95% bootstrap CIs (10,000
resamples) per arm, and the hard Dice. Writes ``volume_bias.md``, ``volume_bias.csv`` and
``volume_bias.png`` into ``--output`` atomically. Finished runs are reused (resumed) from
``--workdir``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags, logging

from configs import volume_bias
from labelset_jax import cli, files, input_pipeline, train
from labelset_jax.data import expected_volume_ml
from labelset_jax.evaluation import EvalSettings, evaluate_cases
from labelset_jax.metrics import bootstrap_ci, volume_error, volumes_ml

_WORKDIR = flags.DEFINE_string("workdir", "runs/volume_bias", "Folder of the training runs.")
_OUTPUT = flags.DEFINE_string("output", "docs/results", "Folder for the table and the plot.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per run.")
_PS = flags.DEFINE_list("ps", ["0.2", "0.4", "0.6", "0.8"], "Blob probabilities p.")
_ARMS = flags.DEFINE_list("arms", ["ce", "dice", "dice_batch", "dice_ce", "dice_squared"], "Arms of the boundary part.")
_NUM_VAL = flags.DEFINE_integer("num_val", 16, "Held-out cases per run.")


def run_arm(arm: str, generator: str, options: dict, workdir: Path, steps: int, num_val: int) -> list[dict]:
    """Trains (or resumes) one arm and returns one row per held-out case."""
    config = volume_bias.get_config(arm)
    config.num_steps = steps
    config.data.generator = generator
    config.data.generator_options = options
    config.data.num_val = num_val
    config.eval_every = steps
    train.train_and_evaluate(config, workdir)
    model = train.load_trained(workdir, best=False)
    rows = []

    def volume_row(case, prediction, scores):
        expected = expected_volume_ml(case)
        error = volume_error(prediction.probs[..., 1], expected, spacing=case.spacing)  # against E[V], not the draw
        rows.append({
            "arm": arm, "generator": generator, "p": options.get("p", ""), "case": case.id,
            "expected_ml": expected, "realised_ml": volumes_ml(case.labels == 1, spacing=case.spacing),
            "dv_soft_ml": error.soft, "dv_hard_ml": error.hard, "dice": scores["dice_object"],
        })

    cases = input_pipeline.create_datasets(model.config.data, seed=model.config.seed).val
    evaluate_cases(model, cases, EvalSettings.from_config(model.config), on_case=volume_row, hd95=False)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["generator"], r["p"], r["arm"]), []).append(r)
    out = []
    for (generator, p, arm), rs in groups.items():
        entry = {"generator": generator, "p": p, "arm": arm, "n": len(rs)}
        for key in ("dv_soft_ml", "dv_hard_ml", "dice"):
            mean, lo, hi = bootstrap_ci([r[key] for r in rs], num_resamples=10_000)
            entry[key], entry[key + "_lo"], entry[key + "_hi"] = mean, lo, hi
        entry["expected_ml"] = float(np.mean([r["expected_ml"] for r in rs]))
        out.append(entry)
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blob = [s for s in summary if s["generator"] == "ambiguous_blob"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm, marker in (("ce", "o"), ("dice", "s")):
        pts = sorted((float(s["p"]), s) for s in blob if s["arm"] == arm)
        if not pts:
            continue
        ps = [p for p, _ in pts]
        for ax, key in zip(axes, ("dv_soft_ml", "dv_hard_ml")):
            y = [s[key] for _, s in pts]
            err = [[s[key] - s[key + "_lo"] for _, s in pts], [s[key + "_hi"] - s[key] for _, s in pts]]
            ax.errorbar(ps, y, yerr=err, marker=marker, capsize=3, label=arm)
    for ax, title in zip(axes, ("soft volume", "thresholded volume (p̂ > 0.5)")):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("blob probability p")
        ax.set_ylabel("ΔV = V_pred − E[V] (ml)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    files.save_figure(fig, path)


def main(argv):
    cli.start(argv)
    cli.check_known(_ARMS.value, volume_bias.ARMS, what="arm")
    try:
        ps = [float(p) for p in _PS.value]
    except ValueError:
        cli.fail(f"--ps must be numbers, got {_PS.value}")
    if any(not 0.0 <= p <= 1.0 for p in ps):
        cli.fail(f"--ps must lie in [0, 1], got {ps}")
    root = Path(_WORKDIR.value)
    rows = []
    for p in ps:
        for arm in ("ce", "dice"):
            logging.info("ambiguous blob p=%.2f, arm %s", p, arm)
            rows += run_arm(arm, "ambiguous_blob", {"p": p}, root / f"blob_p{p:.2f}_{arm}", _STEPS.value, _NUM_VAL.value)
    for arm in _ARMS.value:
        logging.info("boundary noise, arm %s", arm)
        rows += run_arm(arm, "boundary_noise", {}, root / f"boundary_{arm}", _STEPS.value, _NUM_VAL.value)
    summary = summarise(rows)
    out = Path(_OUTPUT.value)
    files.write_csv(out / "volume_bias.csv", rows)
    lines = ["| data | p | arm | n | ΔV soft (ml) [95% CI] | ΔV thresholded (ml) [95% CI] | Dice | E[V] (ml) |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['generator']} | {s['p']} | {s['arm']} | {s['n']} | {s['dv_soft_ml']:+.3f} [{s['dv_soft_ml_lo']:+.3f}, "
            f"{s['dv_soft_ml_hi']:+.3f}] | {s['dv_hard_ml']:+.3f} [{s['dv_hard_ml_lo']:+.3f}, {s['dv_hard_ml_hi']:+.3f}] | "
            f"{s['dice']:.3f} | {s['expected_ml']:.3f} |"
        )
    files.write_text(out / "volume_bias.md", "\n".join(lines) + "\n")
    plot(summary, out / "volume_bias.png")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
