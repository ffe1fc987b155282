r"""The soft-Dice volume-bias study (Bertels et al.; docs/theory.md §5) on data with known uncertainty.

    python -m experiments.volume_bias_study --workdir=runs/volume_bias --output=docs/results/volume_bias

Every task of ``configs/volume_bias.py:study_config`` is fitted once per arm (CE, soft Dice per
image and per batch, squared Dice, CE + soft Dice, the Dice semimetric loss on the soft targets)
and scored on held-out cases whose per-voxel class probabilities are known:

(a) a per-voxel logistic regression (Bertels' own baseline) fitted to convergence by L-BFGS, on
    boundary noise (τ = 2, r = 5), independent blobs (q = 0.45), the noise-free control and the
    ambiguous blob;
(b) a small CNN (one level, 8 features, no normalisation) fitted full-batch with Adam on boundary
    noise (τ = 2, r = 4), independent blobs and the noise-free control;
(c) the ambiguous blob across ``p`` (one fit per ``p``), drawn stratified: exactly ``20·p`` of the
    20 training cases contain it;
(d) the MNI152 tissue task (CSF, GM, WM from the template's probability maps, 8 mm, spatial
    augmentation) with the small CNN.

Per case and foreground class: ``ΔV = V_pred − E[V]`` and ``V_pred − V_label`` for the soft volume
(sum of probabilities) and the thresholded one (``p > 0.5``), and the hard Dice; per task and arm
their means with 95% bootstrap CIs (10,000 resamples), next to the Dice-optimal oracle ``1[q ≥ t]``
computed from the known ``q`` (for the blob, the closed form ``(1[p > 1/2] − p)·V_blob``). CE is
judged by two one-sided tests of equivalence within ±5% of ``E[V]``, the Dice arms by a CI above 0
and their ratio to the oracle. The row ``ce_own_dice_threshold`` is the CE model's prediction
thresholded at the Dice optimum of its own probabilities (Nordström et al. 2022,
:func:`labelset_jax.volume_bias.threshold_at_own_optimum`): its Dice is to be read against the soft
Dice arm's, while the CE row's soft volume is the unbiased volume of the same model. Each fit's rows are kept in ``--workdir`` (a rerun skips them).
Written atomically into ``--output``: ``volume_bias.csv`` (per case), ``volume_bias.md`` (command,
date, tables), ``volume_bias.png`` (ΔV against ``p`` with the closed-form curve) and
``reliability.png`` (a reliability diagram per arm).
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from configs import volume_bias as volume_bias_config
from labelset_jax import cli, files
from labelset_jax import volume_bias as vb
from labelset_jax.data import MNI_TISSUE, mni_cohort, synthetic
from labelset_jax.metrics import bootstrap_ci, reliability_curve

_WORKDIR = flags.DEFINE_string("workdir", "runs/volume_bias", "Folder of the fitted arms' results (resume).")
_OUTPUT = flags.DEFINE_string("output", "docs/results/volume_bias", "Folder for the tables and plots.")
_SCALE = flags.DEFINE_enum("scale", "cpu", ["cpu", "smoke"], "Scale of configs/volume_bias.py:study_config.")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks to run (default: all of the study config).")
_ARMS = flags.DEFINE_list("arms", None, "Arms to run (default: each task's).")
_PS = flags.DEFINE_list("ps", None, "Blob probabilities p (default: the study config's).")
_STEPS = flags.DEFINE_integer("steps", None, "Adam steps of every CNN task (default: each task's; a convergence "
                              "pilot runs a task at several step counts).")

GENERATORS = {
    "boundary_noise": synthetic.boundary_noise_case,
    "ambiguous_blob": synthetic.ambiguous_blob_case,
    "independent_blobs": synthetic.independent_blobs_case,
    "noise_free": synthetic.noise_free_case,
}
BLOB_CURVE_TASKS = ("lr_blob", "cnn_blob")
#: The CE model thresholded at the Dice optimum of its own probabilities (Nordström et al.), a row of the tables.
THRESHOLDED = "ce_own_dice_threshold"
_CE_FITS: dict = {}  # (task, p) -> the CE logistic regression, the Dice arms' second start


# --------------------------------------------------------------------------- data and fits


def make_cases(task, first: int, count: int, p: float | None):
    """``count`` cases of a task from seed ``first`` on (the ambiguous blob drawn stratified)."""
    options = dict(task.options)
    if task.source == "mni":
        return mni_cohort(count, first_seed=first, shape=tuple(task.shape), **options)
    if task.source == "ambiguous_blob":
        options.update(p=p, stratified=True)
    return [GENERATORS[task.source](first + i, shape=tuple(task.shape), **options) for i in range(count)]


def names_of(task) -> list[str]:
    return list(MNI_TISSUE.names) if task.source == "mni" else list(synthetic.SYNTHETIC_SPACE.names)


def oracle_rows(task, cases, p: float | None) -> list[dict]:
    """The Dice-optimal prediction ``1[q ≥ t]`` of each case and class (for the blob: exact over
    its two outcomes, i.e. the closed form)."""
    rows = []
    names = names_of(task)
    for case in cases:
        probs = vb.class_probabilities(case)
        prediction = np.zeros_like(probs)
        for c in range(1, probs.shape[-1]):
            q = probs[..., c]
            labels = weights = None
            if task.source == "ambiguous_blob":
                blob = (q > 0) & (q < 1)
                with_blob, without = (q >= 1) | blob, q >= 1
                labels, weights = np.stack([with_blob, without]), [p, 1 - p]
            prediction[..., c] = vb.dice_optimal_oracle(q, voxel_ml=case.voxel_ml, labels=labels,
                                                        weights=weights).prediction(q)
        rows += vb.volume_rows(prediction, case, names=names)
    return rows


def fit_and_score(name: str, task, arm: str, p: float | None, study) -> dict:
    """Fits one arm on the task's training cases and scores it on its test cases."""
    train = make_cases(task, 0, task.num_train, p)
    test = make_cases(task, int(study.test_seed_offset), task.num_test, p)
    names = names_of(task)
    if task.model == "lr":
        def features(case):
            return vb.intensity_features(case.image, degree=study.lr.degree)

        soft = vb.ARMS[arm].soft_targets
        x = np.stack([features(c).reshape(-1, study.lr.degree) for c in train])
        t = np.stack([(c.metadata["q"] if soft else c.labels).reshape(-1) for c in train])
        fit = vb.fit_logistic_regression(x, t, arm=arm, max_steps=study.lr.max_steps)
        start = "prior"
        if arm != "ce":  # the Dice losses are not convex: also start from the CE fit, keep the better optimum
            key = (name, p)
            if key not in _CE_FITS:
                _CE_FITS[key] = vb.fit_logistic_regression(x, np.stack([c.labels.reshape(-1) for c in train]),
                                                           arm="ce", max_steps=study.lr.max_steps)
            warm = vb.fit_logistic_regression(x, t, arm=arm, max_steps=study.lr.max_steps, init=_CE_FITS[key])
            if warm.loss < fit.loss:
                fit, start = warm, "ce"
        info = {"steps": fit.steps, "loss": fit.loss, "grad_norm": fit.grad_norm, "converged": fit.converged,
                "start": start}
        predictions = []
        for c in test:
            q = vb.predict_logistic(fit, features(c))
            predictions.append(np.stack([1.0 - q, q], axis=-1))
    else:
        space = MNI_TISSUE if task.source == "mni" else synthetic.SYNTHETIC_SPACE
        fit = vb.fit_network(train, arm=arm, model_config=study.cnn.model, label_space=space, steps=task.steps,
                             learning_rate=study.cnn.learning_rate)
        info = {"steps": fit.steps, "loss": fit.loss, "grad_norm": fit.grad_norm, "loss_change": fit.loss_change}
        predictions = [vb.predict(fit.model, c).probs for c in test]
    rows = [r for probs, c in zip(predictions, test) for r in vb.volume_rows(probs, c, names=names)]
    extra = {}
    if arm == "ce":  # Nordström et al.: the same CE model, thresholded at its own Dice optimum
        extra["thresholded"] = [r for probs, c in zip(predictions, test)
                                for r in vb.volume_rows(vb.threshold_at_own_optimum(probs), c, names=names)]
    curve = reliability_curve(np.concatenate([pr.reshape(-1, pr.shape[-1]) for pr in predictions]),
                              np.concatenate([np.asarray(c.labels).ravel() for c in test]), num_bins=10)
    return {"rows": rows, "oracle": oracle_rows(task, test, p), "fit": info,
            "reliability": {k: getattr(curve, k).tolist() for k in ("confidence", "accuracy", "count")}, **extra}


def result_path(name: str, arm: str, p: float | None) -> Path:
    return Path(_WORKDIR.value) / (f"{name}_p{p:.2f}_{arm}.json" if p is not None else f"{name}_{arm}.json")


def run_one(name: str, task, arm: str, p: float | None, study) -> dict:
    """One fit, or its saved result when the settings are unchanged."""
    path = result_path(name, arm, p)
    settings = {"task": json.loads(task.to_json()), "arm": arm, "p": p, "lr": study.lr.to_dict(),
                "cnn": json.loads(study.cnn.to_json()), "test_seed_offset": study.test_seed_offset}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings and (arm != "ce" or "thresholded" in saved):
            logging.info("%s %s p=%s: reusing %s", name, arm, p, path)
            return saved
    logging.info("%s %s p=%s: fitting", name, arm, p)
    result = {"settings": settings, **fit_and_score(name, task, arm, p, study)}
    files.write_json(path, result)
    return result


# --------------------------------------------------------------------------- summaries


def _ci(values, study) -> tuple[float, float, float]:
    return tuple(bootstrap_ci(values, num_resamples=study.num_resamples))


def summarise(name: str, task, arm: str, p, result: dict, study) -> list[dict]:
    """Per foreground class: means with CIs, the oracle, and the verdict of the arm."""
    out = []
    for cls in dict.fromkeys(r["class"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["class"] == cls]
        oracle = [r for r in result["oracle"] if r["class"] == cls]
        expected = float(np.mean([r["expected_ml"] for r in rows]))
        entry = {"task": name, "model": task.model, "p": p, "arm": arm, "class": cls, "n": len(rows),
                 "expected_ml": expected, "dice": float(np.mean([r["dice"] for r in rows])),
                 "oracle_dv_ml": float(np.mean([r["dv_soft_expected_ml"] for r in oracle])),
                 "oracle_dice": float(np.mean([r["dice"] for r in oracle])), **result["fit"]}
        for key in ("dv_soft_expected_ml", "dv_hard_expected_ml", "dv_soft_realised_ml", "dv_hard_realised_ml"):
            entry[key], entry[key + "_lo"], entry[key + "_hi"] = _ci([r[key] for r in rows], study)
        tost = vb.tost_equivalence([r["dv_soft_expected_ml"] for r in rows], margin=study.margin * expected)
        entry["tost_p"], entry["equivalent"] = tost.pvalue, tost.equivalent
        entry["ci_above_0"] = bool(entry["dv_soft_expected_ml_lo"] > 0)
        entry["ratio_to_oracle"] = (entry["dv_soft_expected_ml"] / entry["oracle_dv_ml"]
                                    if abs(entry["oracle_dv_ml"]) > 1e-9 else float("nan"))
        out.append(entry)
    return out


def _fmt(s: dict, key: str) -> str:
    return f"{s[key]:+.3f} [{s[key + '_lo']:+.3f}, {s[key + '_hi']:+.3f}]"


def verdict(s: dict, study) -> str:
    if s["arm"] == THRESHOLDED:
        return f"Dice {s['dice']:.3f} (soft Dice arm: see dice rows); ΔV thr. {s['dv_hard_expected_ml']:+.3f}"
    if s["arm"] == "ce":
        return (f"TOST ±{100 * study.margin:g}% E[V]: {'equivalent' if s['equivalent'] else 'not shown'} "
                f"(p = {s['tost_p']:.2g})")
    if s["arm"].startswith("dice") and s["arm"] != "dice_semimetric":
        relative = s["dv_soft_expected_ml"] / s["expected_ml"]
        if abs(relative) < 0.005:
            return f"negligible ({100 * relative:+.1f}% of E[V])"
        ratio = "" if not np.isfinite(s["ratio_to_oracle"]) else f", {s['ratio_to_oracle']:.2f}× oracle"
        return f"CI above 0: {'yes' if s['ci_above_0'] else 'no'} ({100 * relative:+.1f}% of E[V]){ratio}"
    return f"TOST: {'equivalent' if s['equivalent'] else 'not shown'} (p = {s['tost_p']:.2g})"


def markdown(summaries: list[dict], tasks: dict, study) -> str:
    lines = [
        "# Soft-Dice volume bias: trained models against the Dice-optimal oracle",
        "",
        f"Command: `{shlex.join(['python', '-m', 'experiments.volume_bias_study', *sys.argv[1:]])}`  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        "ΔV in ml, mean over the test cases [95% bootstrap CI]; *vs E[V]*: against the expected volume "
        "`v Σ q`; *vs label*: against the drawn test label. Soft: sum of probabilities; thr.: `p > 0.5`. "
        "Oracle: the Dice-optimal `1[q ≥ t]` (the blob: `(1[p > 1/2] − p)·V_blob`). Fit: L-BFGS iterations "
        "(logistic regression; the Dice arms are fitted from the prior and from the CE fit, the lower loss kept) "
        "or Adam steps and the relative loss change over the last tenth (CNN).",
    ]
    order = sorted(tasks, key=lambda n: (tasks[n].model != "lr", n))
    for name in order:
        task = tasks[name]
        rows = [s for s in summaries if s["task"] == name]
        if not rows:
            continue
        options = ", ".join(f"{k}={v}" for k, v in dict(task.options).items())
        lines += ["", f"## {name}: {task.model}, {task.source} ({options}), {tuple(task.shape)}, "
                  f"{task.num_train} training / {task.num_test} test cases", "",
                  "| p | arm | class | E[V] | ΔV soft vs E[V] | ΔV thr. vs E[V] | ΔV soft vs label | ΔV thr. vs label "
                  "| Dice | oracle ΔV (Dice) | fit | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in rows:
            fit = (f"{s['steps']} it. from {s['start']}, {'conv.' if s.get('converged') else 'not conv.'}"
                   if task.model == "lr"
                   else f"{s['steps']} steps, Δ {s['loss_change']:.0e}")
            p = "" if s["p"] is None else f"{s['p']:g}"
            lines.append(
                f"| {p} | {s['arm']} | {s['class']} | {s['expected_ml']:.3f} | {_fmt(s, 'dv_soft_expected_ml')} | "
                f"{_fmt(s, 'dv_hard_expected_ml')} | {_fmt(s, 'dv_soft_realised_ml')} | "
                f"{_fmt(s, 'dv_hard_realised_ml')} | {s['dice']:.3f} | {s['oracle_dv_ml']:+.3f} "
                f"({s['oracle_dice']:.3f}) | {fit} | {verdict(s, study)} |")
    return "\n".join(lines) + "\n"


def plot_blob(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, k) for t in BLOB_CURVE_TASKS for k in ("dv_soft_expected_ml", "dv_hard_expected_ml")
              if any(s["task"] == t for s in summaries)]
    if not panels:
        panels = [(None, None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (task, key) in zip(axes[0], panels):
        rows = [s for s in summaries if s["task"] == task]
        if not rows:
            ax.set_axis_off()
            continue
        ps = sorted({s["p"] for s in rows})
        oracle = {s["p"]: s["oracle_dv_ml"] for s in rows}
        # the closed form (1[p > 1/2] − p)·V_blob, V_blob from the oracle: ΔV(p) = (1 − p)V or −pV
        v_blob = np.mean([oracle[p] / ((p > 0.5) - p) for p in ps if abs((p > 0.5) - p) > 1e-9])
        grid = np.linspace(0, 1, 401)
        ax.plot(grid, vb.toy_volume_error(grid, v_blob), color="grey", lw=1, label="(1[p > 1/2] − p)·V_blob")
        ax.axhline(0, color="k", lw=0.5)
        for arm, marker in zip(dict.fromkeys(s["arm"] for s in rows), "os^vDP"):
            pts = sorted((s["p"], s) for s in rows if s["arm"] == arm)
            y = np.array([s[key] for _, s in pts])
            err = np.array([[s[key] - s[key + "_lo"], s[key + "_hi"] - s[key]] for _, s in pts]).T
            ax.errorbar([p for p, _ in pts], y, yerr=err, fmt=marker, capsize=2, ms=4, label=arm)
        ax.set(xlabel="blob probability p", ylabel="ΔV vs E[V] (ml)",
               title=f"{task}: {'soft' if 'soft' in key else 'thresholded'} volume")
        ax.legend(fontsize=7)
    fig.tight_layout()
    files.save_figure(fig, path)


def plot_reliability(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("lr_boundary", "cnn_boundary", "cnn_mni") if any(k[0] == t for k in results)]
    arms = list(dict.fromkeys(k[1] for k in results if k[0] in tasks))
    if not tasks:
        tasks, arms = [None], [None]
    fig, axes = plt.subplots(len(tasks), len(arms), figsize=(2.6 * len(arms), 2.6 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j, arm in enumerate(arms):
            ax = axes[i, j]
            result = results.get((task, arm, None))
            if result is None:
                ax.set_axis_off()
                continue
            curve = result["reliability"]
            conf, acc, count = (np.array(curve[k], np.float64) for k in ("confidence", "accuracy", "count"))
            used = count > 0
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
            ax.plot(conf[used], acc[used], "o-", ms=3)
            ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{task}\n{arm}")
            ax.title.set_fontsize(8)
            if j == 0:
                ax.set_ylabel("accuracy")
            if i == len(tasks) - 1:
                ax.set_xlabel("confidence")
    fig.tight_layout()
    files.save_figure(fig, path)


# --------------------------------------------------------------------------- main


def main(argv):
    cli.start(argv)
    study = volume_bias_config.study_config(_SCALE.value)
    if _STEPS.value is not None:
        if _STEPS.value < 1:
            cli.fail(f"--steps must be >= 1, got {_STEPS.value}")
        for task in study.tasks.values():
            if task.model == "cnn":
                task.steps = _STEPS.value
    tasks = dict(study.tasks.items())
    if _TASKS.value is not None:
        cli.check_known(_TASKS.value, tasks, what="task")
        tasks = {n: tasks[n] for n in _TASKS.value}
    if _ARMS.value is not None:
        cli.check_known(_ARMS.value, vb.ARMS, what="arm")
    ps = None
    if _PS.value is not None:
        try:
            ps = [float(p) for p in _PS.value]
        except ValueError:
            cli.fail(f"--ps must be numbers, got {_PS.value}")
        if any(not 0.0 <= p <= 1.0 for p in ps):
            cli.fail(f"--ps must lie in [0, 1], got {ps}")
    results, summaries = {}, []
    for name in sorted(tasks, key=lambda n: (tasks[n].model != "lr", n)):
        task = tasks[name]
        arms = [a for a in task.arms if _ARMS.value is None or a in _ARMS.value]
        task_ps = [None] if not task.ps else (ps if ps is not None else list(task.ps))
        for p in task_ps:
            for arm in arms:
                result = run_one(name, task, arm, p, study)
                results[name, arm, p] = result
                summaries += summarise(name, task, arm, p, result, study)
                if "thresholded" in result:
                    summaries += summarise(name, task, THRESHOLDED, p, {**result, "rows": result["thresholded"]}, study)
    out = Path(_OUTPUT.value)
    rows = [{"task": name, "model": tasks[name].model, "p": "" if p is None else p, "arm": arm, **r}
            for (name, arm, p), result in results.items() for r in result["rows"]]
    if rows:
        files.write_csv(out / "volume_bias.csv", rows)
    md = markdown(summaries, tasks, study)
    files.write_text(out / "volume_bias.md", md)
    plot_blob(summaries, out / "volume_bias.png")
    plot_reliability(results, out / "reliability.png")
    print(md)


if __name__ == "__main__":
    app.run(main)
