r"""The label-set comparison of Fidon et al. 2021 (docs/theory.md §4) on embedded phantoms, with seeds and statistics.

    python -m experiments.partial_supervision_study --steps=1200 --run_seeds=1000 \
        --runs=runs/ps_pilot --results=docs/results/partial_supervision_pilot        # the pilot
    python -m experiments.partial_supervision_study --runs=runs/partial_supervision \
        --results=docs/results/partial_supervision                                   # the study
    python -m experiments.partial_supervision_study --run_seeds=31,32,33,34,35 --data_seed=7919 \
        --runs=runs/ps_rerun --results=runs/ps_rerun_results                         # an independent rerun
    python -m experiments.partial_supervision_study --scale=paper --runs=runs/ps_paper \
        --results=docs/results/partial_supervision_paper                             # a GPU

The design (``configs/partial_supervision.py``): normal, fully segmented atlases; a partially
annotated cohort under the three protocols, half of it abnormal (ventriculomegaly, a small
cerebellum moved down and forward); every batch half atlas, half partial case (``--full_fraction``).
The cohort, the validation phantoms and the held-out test set (``config.study``: fully segmented,
normal and abnormal) are a function of the data seed alone, so a run seed pairs the methods (same
initialisation and sampling). Each (method, seed) run is trained (or resumed) in
``--runs/<method>/seed_<k>``; it logs the validation Dice every ``eval_every`` steps (the
convergence check), and its test scores, validation curve and training time are kept in
``--results/runs/<method>_seed<k>.json`` (:mod:`labelset_jax.study`): a rerun, in this session or
from a fresh clone that holds the results, skips finished runs.

Endpoints: the mean Dice over the tissues the partial data annotate (WM, ventricles, cerebellum,
eCSF, corpus callosum) on abnormal brains (primary), the same on normal brains, and the mean Dice
over the never-annotated tissues (cortical GM, deep GM, brainstem; non-inferiority at
``--ni_margin``). **Primary inference is over training runs**: each run is summarised by its
case-mean Dice per endpoint, ``--reference`` (leaf-Dice) is paired with each other method by run
seed, and the mean difference gets a t confidence interval over the runs and a paired t-test
(:func:`labelset_jax.metrics.paired_runs`), Holm-corrected over the methods within each endpoint.
Secondary, and conditional on the trained models: 95% bootstrap CIs resampling seeds then cases and
Wilcoxon signed-rank tests over the test cases (seeds averaged). Convergence: the validation mean
Dice (foreground leaves, running mean of 3 evaluations) may gain less than ``--plateau_gain`` over
the last quarter of the steps. Written atomically into ``--results``:

* ``per_case.csv``: one row per method, seed, case and tissue (group, Dice, HD95, volume error);
* ``per_run.csv``: one row per method and seed: the endpoints, the convergence gains, the time;
* ``partial_supervision.md``: the command, the date, the design and the tables;
* ``partial_supervision.png``: the endpoints per run, box and strip plots;
* ``convergence.png``: the validation curves of every run.
"""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from configs import partial_supervision
from labelset_jax import cli, files, study
from labelset_jax.data import phantom_cohort
from labelset_jax.evaluation import EvalSettings, evaluate_cases
from labelset_jax.labelsets import FETAL_BRAIN, FETAL_BRAIN_PROTOCOLS
from labelset_jax.metrics import holm_adjust, nested_bootstrap_ci, paired_runs, paired_wilcoxon

_RUNS = flags.DEFINE_string("runs", "runs/partial_supervision", "Folder of the training runs.")
_RESULTS = flags.DEFINE_string("results", "docs/results/partial_supervision",
                               "Folder for the tables, plots and finished runs' records.")
_METHODS = flags.DEFINE_list("methods", list(partial_supervision.STUDY_METHODS), "Methods to compare.")
_REFERENCE = flags.DEFINE_string("reference", "leaf_dice", "The method the others are tested against.")
_SCALE = flags.DEFINE_enum("scale", "cpu", list(partial_supervision.SCALES),
                           "Scale of configs/partial_supervision.py.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Run seeds 0..seeds-1 (default: the config's study.seeds).")
_RUN_SEEDS = flags.DEFINE_list("run_seeds", None, "The run seeds, e.g. 31,32,33 (instead of --seeds).")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: the config's).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", None,
                                   "Validation every this many steps, 0 for none (default: the config's).")
_NUM_TEST = flags.DEFINE_integer("num_test", None, "Test cases per group, normal and abnormal (default: the config's).")
_DATA_SEED = flags.DEFINE_integer("data_seed", None, "The data seed (default: the config's data.seed).")
_FULL_FRACTION = flags.DEFINE_string("full_fraction", None,
                                     "Atlas share of each batch: in [0, 1], or 'uniform' (default: the config's).")
_NI_MARGIN = flags.DEFINE_float("ni_margin", 0.05, "Non-inferiority margin on the never-annotated tissues' Dice.")
_PLATEAU_GAIN = flags.DEFINE_float("plateau_gain", 0.005,
                                   "Converged: validation Dice gains less than this over the last quarter of the steps.")

TISSUES = list(FETAL_BRAIN.names[1:])
GROUPS = ("abnormal", "normal")
RECORDS = "runs"  # subfolder of --results with one record per finished run


# --------------------------------------------------------------------------- configuration


def run_config(method: str, seed: int):
    """The config of one run: ``configs/partial_supervision.py:METHOD,SCALE`` and the flags."""
    config = partial_supervision.get_config(f"{method},{_SCALE.value}")
    config.seed = int(seed)
    if _STEPS.value is not None:
        config.num_steps = _STEPS.value
    if _EVAL_EVERY.value is not None:
        config.eval_every = _EVAL_EVERY.value
    if _DATA_SEED.value is not None:
        config.data.seed = _DATA_SEED.value
    if _FULL_FRACTION.value is not None:
        config.data.full_fraction = None if _FULL_FRACTION.value == "uniform" else float(_FULL_FRACTION.value)
    config.checkpoint_every = min(config.checkpoint_every, max(config.num_steps, 1))
    return config


def tissue_groups(config) -> tuple[list[str], list[str]]:
    """The tissues some partial protocol of the cohort annotates, and the never-annotated ones."""
    annotated = set()
    for name, count in dict(config.data.protocols).items():
        if name != "full" and int(count) > 0:
            annotated |= {FETAL_BRAIN.names[c] for c in FETAL_BRAIN_PROTOCOLS[name].annotated}
    partial = [t for t in TISSUES if t in annotated]
    return partial, [t for t in TISSUES if t not in annotated]


def test_cases(config):
    """The held-out, fully segmented test phantoms: normal ones, then abnormal ones."""
    study = config.study
    n_normal = study.num_test_normal if _NUM_TEST.value is None else _NUM_TEST.value
    n_abnormal = study.num_test_abnormal if _NUM_TEST.value is None else _NUM_TEST.value
    first = 1000 * int(config.data.seed) + int(study.test_seed_offset)
    return phantom_cohort({"full": n_normal + n_abnormal}, first_seed=first, shape=tuple(config.data.shape),
                          abnormal={"full": n_abnormal}).cases


# --------------------------------------------------------------------------- runs


def record_path(method: str, seed: int) -> Path:
    return Path(_RESULTS.value) / RECORDS / f"{method}_seed{seed}.json"


def run(method: str, seed: int, cases, workdir: Path) -> dict:
    """Trains (or resumes) one run, scores it on the test cases and records it; reuses finished runs."""
    config = run_config(method, seed)
    ids = [c.id for c in cases]
    saved = study.load_record(record_path(method, seed), config, ids)
    if saved is not None:
        logging.info("%s seed %d: finished, reusing %s", method, seed, record_path(method, seed))
        return saved
    logging.info("%s seed %d: training in %s", method, seed, workdir)
    return study.train_and_record(config, workdir, record_path(method, seed), ids,
                                  lambda model: evaluate_cases(model, cases, EvalSettings.from_config(config)))


def long_rows(method: str, seed: int, rows: list[dict], groups: dict[str, str], partial: list[str]) -> list[dict]:
    """One row per case and tissue."""
    out = []
    for row in rows:
        for tissue in TISSUES:
            out.append({
                "method": method, "seed": seed, "case": row["id"], "group": groups[row["id"]], "tissue": tissue,
                "annotated_by_partial_data": tissue in partial, "dice": row[f"dice_{tissue}"],
                "hd95_mm": row[f"hd95_{tissue}"], "dvol_soft_ml": row[f"dvol_soft_{tissue}"],
            })
    return out


# --------------------------------------------------------------------------- analysis


def arrays(rows: list[dict], methods: list[str], metric: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """``{method: [seeds, cases, tissues]}`` of a metric, and the case ids in order."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    seeds = sorted({int(r["seed"]) for r in rows})
    out = {}
    for m in methods:
        a = np.full((len(seeds), len(cases), len(TISSUES)), np.nan)
        for r in rows:
            if r["method"] == m:
                a[seeds.index(int(r["seed"])), cases.index(r["case"]), TISSUES.index(r["tissue"])] = float(r[metric])
        out[m] = a
    return out, cases


def endpoint(dice: np.ndarray, tissues: list[str]) -> np.ndarray:
    """``[seeds, cases]`` mean Dice over ``tissues``."""
    return np.nanmean(dice[..., [TISSUES.index(t) for t in tissues]], axis=-1)


def analyse(rows: list[dict], methods: list[str], reference: str, partial: list[str], never: list[str],
            ni_margin: float) -> dict:
    """The endpoints per run, the run-level comparisons with the reference (primary), the
    case-level ones (secondary) and the per-tissue tables."""
    dice, cases = arrays(rows, methods, "dice")
    hd95, _ = arrays(rows, methods, "hd95_mm")
    group_of = {r["case"]: r["group"] for r in rows}
    index = {g: [i for i, c in enumerate(cases) if group_of[c] == g] for g in GROUPS}
    endpoints = {  # name -> (group, tissues)
        "partial tissues, abnormal": ("abnormal", partial),
        "partial tissues, normal": ("normal", partial),
        "never-annotated, abnormal": ("abnormal", never),
        "never-annotated, normal": ("normal", never),
    }
    # per_run[m][endpoint]: [seeds] case-mean Dice; per_case[m][endpoint]: [seeds, cases]
    per_case = {m: {name: endpoint(dice[m], tissues)[:, index[group]] for name, (group, tissues) in endpoints.items()}
                for m in methods}
    per_run = {m: {name: np.nanmean(v, axis=1) for name, v in per_case[m].items()} for m in methods}
    zero = {name: np.zeros_like(v) for name, v in per_run[methods[0]].items()}
    summary = {m: {name: paired_runs(v, zero[name]) for name, v in per_run[m].items()} for m in methods}  # t CI
    case_summary = {m: {name: nested_bootstrap_ci(v) for name, v in per_case[m].items()} for m in methods}
    baselines = [m for m in methods if m != reference]
    comparisons, case_comparisons = {}, {}
    if reference in methods and baselines:
        for name in endpoints:
            entries = [{"baseline": b, "test": t, "p_holm": p}
                       for b, t, p in study.compare_runs({m: v[name] for m, v in per_run.items()}, reference,
                                                         baselines)]
            for e in entries:
                if name.startswith("never"):
                    e["non_inferior"] = bool(e["test"].low > -ni_margin)
            comparisons[name] = entries
            ref = per_case[reference][name]
            entries = []
            for b in baselines:
                other = per_case[b][name]
                test = paired_wilcoxon(np.nanmean(ref, 0), np.nanmean(other, 0))  # per case, seeds averaged
                entries.append({"baseline": b, "diff": nested_bootstrap_ci(ref - other), "p": test.pvalue})
            for e, p in zip(entries, holm_adjust([e["p"] for e in entries])):
                e["p_holm"] = p
            case_comparisons[name] = entries
    per_tissue = {}
    for group in GROUPS:
        if not index[group]:
            continue
        run_mean = {m: np.nanmean(dice[m][:, index[group]], axis=1) for m in methods}  # [seeds, tissues]
        entries = []
        if reference in methods:
            for b in baselines:
                for k, tissue in enumerate(TISSUES):
                    entries.append({"baseline": b, "tissue": tissue,
                                    "test": paired_runs(run_mean[reference][:, k], run_mean[b][:, k])})
            for e, p in zip(entries, holm_adjust([e["test"].pvalue for e in entries])):
                e["p_holm"] = p
        per_tissue[group] = {
            "dice": {m: np.nanmean(run_mean[m], axis=0) for m in methods},
            "hd95": {m: np.nanmean(np.nanmean(hd95[m][:, index[group]], axis=1), axis=0) for m in methods},
            "tests": entries,
        }
    return {"summary": summary, "case_summary": case_summary, "comparisons": comparisons,
            "case_comparisons": case_comparisons, "per_tissue": per_tissue, "per_run": per_run,
            "endpoints": list(endpoints), "n": {g: len(index[g]) for g in GROUPS}}


def convergence(records: dict[tuple[str, int], dict], partial: list[str], never: list[str]) -> list[dict]:
    """One row per run: the plateau gains of the validation Dice (all foreground leaves, the
    partial tissues, the never-annotated ones) and the training time."""
    out = []
    for (method, seed), record in records.items():
        steps = int(record["config"]["num_steps"])
        out.append({"method": method, "seed": seed,
                    **{f"val_{int(100 * f)}pc": study.smoothed_at(record["curve"], TISSUES, steps, f)
                       for f in (0.5, 0.75, 1.0)},
                    **{f"gain_{name}": study.plateau_gain(record["curve"], tissues, steps)
                       for name, tissues in (("all", TISSUES), ("partial", partial), ("never", never))},
                    "train_seconds": record.get("seconds", float("nan"))})
    return out


def _p(p: float) -> str:
    return "–" if not np.isfinite(p) else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def _ci(estimate: float, low: float, high: float, sign: str = "") -> str:
    return f"{estimate:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def markdown(result: dict, methods: list[str], reference: str, partial: list[str], never: list[str], config,
             seeds: list[int], ni_margin: float, gains: list[dict], plateau: float) -> str:
    data = config.data
    atlases = int(data.protocols.get("full", 0))
    n_partial = sum(int(v) for k, v in dict(data.protocols).items() if k != "full")
    fraction = "uniform over the cases" if data.full_fraction is None else f"{data.full_fraction:g} atlas share"
    minutes = sum(g["train_seconds"] for g in gains if np.isfinite(g["train_seconds"])) / 60
    lines = [
        "# Partial supervision on phantoms: label-set losses against the baselines",
        "",
        f"Command: `{shlex.join(['python', '-m', 'experiments.partial_supervision_study', *sys.argv[1:]])}`  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        f"Design: {atlases} normal, fully segmented atlases; {n_partial} partially annotated cases "
        f"({', '.join(f'{v} {k}' for k, v in dict(data.protocols).items() if k != 'full')}), a fraction "
        f"{data.abnormal_fraction:g} of each protocol's cases abnormal; phantoms {tuple(data.shape)}; data seed "
        f"{data.seed}; batches {config.batch_size} ({fraction}); {config.num_steps} steps; {config.model.preset} "
        f"U-Net ({config.model.get('num_levels', '')} levels); run seeds {', '.join(map(str, seeds))}. "
        f"Test set: {result['n']['normal']} normal + {result['n']['abnormal']} abnormal fully segmented phantoms. "
        f"Training time: {minutes:.1f} min in all ({len(gains)} runs, 2-core CPU unless stated).",
        "",
        f"Tissues the partial data annotate: {', '.join(partial)}. Never annotated: {', '.join(never)}.",
        "",
        "## Convergence",
        "",
        f"Validation Dice (fully segmented validation phantoms, every {config.eval_every} steps; running mean of 3 "
        f"evaluations): gain over the last quarter of the steps. Converged: gain over all foreground leaves "
        f"< {plateau:g}.",
        "",
        "| method | val Dice at 1/2, 3/4, all steps (median) | gain, all leaves: median [max] | "
        "partial tissues: median | never-annotated: median | converged runs |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        g = [r for r in gains if r["method"] == m]
        if not g:
            continue
        all_ = np.array([r["gain_all"] for r in g])
        ok = int(np.sum(all_ < plateau))
        at = " / ".join(f"{np.median([r[f'val_{k}pc'] for r in g]):.3f}" for k in (50, 75, 100))
        lines.append(f"| {m} | {at} | {np.median(all_):+.4f} [{np.max(all_):+.4f}] | "
                     f"{np.median([r['gain_partial'] for r in g]):+.4f} | "
                     f"{np.median([r['gain_never'] for r in g]):+.4f} | {ok}/{len(g)} |")
    lines += [
        "",
        "## Endpoints per training run (primary): mean over runs of the case-mean Dice [95% t-CI over runs]",
        "",
        "| method | " + " | ".join(result["endpoints"]) + " |",
        "|---|" + "---|" * len(result["endpoints"]),
    ]
    for m in methods:
        cells = [_ci(r.diff, r.low, r.high) for r in result["summary"][m].values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if result["comparisons"]:
        lines += ["", f"## {reference} against each method, over training runs (primary)", "",
                  f"Difference {reference} − method of the runs' case-mean Dice, paired by run seed: mean over runs "
                  f"[95% t-CI], paired t-test over runs, Holm-corrected over the methods within each endpoint; "
                  f"'wins' counts the runs where {reference} is ahead. Never-annotated tissues: non-inferior when the "
                  f"CI's lower bound is above −{ni_margin:g}.", "",
                  "| endpoint | method | Δ Dice [95% CI] | p | p (Holm) | wins | non-inferior |",
                  "|---|---|---|---|---|---|---|"]
        for name, entries in result["comparisons"].items():
            for e in entries:
                t = e["test"]
                ni = ("yes" if e["non_inferior"] else "no") if "non_inferior" in e else ""
                lines.append(f"| {name} | {e['baseline']} | {_ci(t.diff, t.low, t.high, '+')} | {_p(t.pvalue)} | "
                             f"{_p(e['p_holm'])} | {t.wins}/{t.n} | {ni} |")
    lines += ["", "## Secondary, conditional on the trained models: over test cases", "",
              "Mean Dice per case (seeds averaged), mean over cases [95% CI resampling seeds, then cases]:", "",
              "| method | " + " | ".join(result["endpoints"]) + " |", "|---|" + "---|" * len(result["endpoints"])]
    for m in methods:
        cells = [_ci(*ci) for ci in result["case_summary"][m].values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if result["case_comparisons"]:
        lines += ["", f"Difference {reference} − method [95% CI, seeds then cases]; paired Wilcoxon signed-rank test "
                  f"over the cases (seeds averaged), Holm-corrected within each endpoint. These p-values hold the "
                  f"trained models fixed: they do not include the variation between training runs.", "",
                  "| endpoint | method | Δ Dice [95% CI] | p | p (Holm) |", "|---|---|---|---|---|"]
        for name, entries in result["case_comparisons"].items():
            for e in entries:
                lines.append(f"| {name} | {e['baseline']} | {_ci(*e['diff'], '+')} | {_p(e['p'])} | "
                             f"{_p(e['p_holm'])} |")
    for group, tables in result["per_tissue"].items():
        lines += ["", f"## Per tissue, {group} test brains", "", "Dice (mean over runs of the case means):", "",
                  "| method | " + " | ".join(TISSUES) + " |", "|---|" + "---|" * len(TISSUES)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in tables["dice"][m]) + " |")
        lines += ["", "HD95 (mm):", "", "| method | " + " | ".join(TISSUES) + " |", "|---|" + "---|" * len(TISSUES)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in tables["hd95"][m]) + " |")
        if tables["tests"]:
            lines += ["", f"Δ Dice ({reference} − method) per tissue over runs, paired t-test p Holm-corrected over "
                      f"all method × tissue tests of this group:", "",
                      "| method | " + " | ".join(TISSUES) + " |", "|---|" + "---|" * len(TISSUES)]
            for b in [m for m in methods if m != reference]:
                cells = [f"{e['test'].diff:+.3f} (p {_p(e['p_holm'])})" for e in tables["tests"] if e["baseline"] == b]
                lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, methods: list[str], path: Path) -> None:
    """The endpoints per training run, box and strip plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharey="row")
    rng = np.random.default_rng(0)
    for ax, name in zip(axes.ravel(), result["endpoints"]):
        values = [result["per_run"][m][name] for m in methods]
        ax.boxplot(values, showfliers=False)
        for k, v in enumerate(values, start=1):
            ax.plot(k + rng.uniform(-0.12, 0.12, len(v)), v, "o", ms=4, alpha=0.7, color="k")
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("case-mean Dice of a run")
    fig.tight_layout()
    files.save_figure(fig, path)


def plot_curves(records: dict[tuple[str, int], dict], methods: list[str], partial: list[str], never: list[str],
                path: Path) -> None:
    """The validation Dice of every run against the step, per tissue group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = (("all foreground leaves", TISSUES), ("partial tissues", partial), ("never-annotated", never))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharex=True)
    colours = plt.get_cmap("tab10")
    for ax, (title, tissues) in zip(axes, groups):
        for k, m in enumerate(methods):
            for (method, _), record in records.items():
                if method != m or not record["curve"]:
                    continue
                steps = [r["step"] for r in record["curve"]]
                values = [np.nanmean([r[f"val/dice_{t}"] for t in tissues]) for r in record["curve"]]
                label = m if (method, _) == next(key for key in records if key[0] == m) else None
                ax.plot(steps, values, color=colours(k), alpha=0.7, lw=1, label=label)
        ax.set_title(f"validation Dice, {title}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path)


# --------------------------------------------------------------------------- main


def main(argv):
    cli.start(argv)
    methods = list(_METHODS.value)
    cli.check_known(methods, partial_supervision.METHODS, what="method")
    if _REFERENCE.value not in partial_supervision.METHODS:
        cli.fail(f"--reference must be a method, got {_REFERENCE.value!r}")
    for flag in (_STEPS, _NUM_TEST):
        if flag.value is not None and flag.value < 1:
            cli.fail(f"--{flag.name} must be >= 1, got {flag.value}")
    try:
        seeds = study.run_seeds(_SEEDS.value, _RUN_SEEDS.value, run_config(_REFERENCE.value, 0).study.seeds)
    except ValueError as e:
        cli.fail(str(e))
    if _EVAL_EVERY.value is not None and _EVAL_EVERY.value < 0:
        cli.fail(f"--eval_every must be >= 0, got {_EVAL_EVERY.value}")
    if _DATA_SEED.value is not None and _DATA_SEED.value < 0:
        cli.fail(f"--data_seed must be >= 0, got {_DATA_SEED.value}")
    if _FULL_FRACTION.value not in (None, "uniform"):
        try:
            ok = 0.0 <= float(_FULL_FRACTION.value) <= 1.0
        except ValueError:
            ok = False
        if not ok:
            cli.fail(f"--full_fraction must be a number in [0, 1] or 'uniform', got {_FULL_FRACTION.value!r}")
    if _NI_MARGIN.value <= 0:
        cli.fail(f"--ni_margin must be > 0, got {_NI_MARGIN.value}")
    if _PLATEAU_GAIN.value <= 0:
        cli.fail(f"--plateau_gain must be > 0, got {_PLATEAU_GAIN.value}")

    config = run_config(_REFERENCE.value, 0)
    partial, never = tissue_groups(config)
    cases = test_cases(config)
    for method in methods:
        for seed in seeds:
            problem = study.check_record(record_path(method, seed), run_config(method, seed), [c.id for c in cases],
                                         Path(_RUNS.value) / method / f"seed_{seed}")
            if problem:
                cli.fail(problem)
    groups = {c.id: "abnormal" if c.metadata["abnormal"] else "normal" for c in cases}
    rows, records = [], {}
    for method in methods:
        for seed in seeds:
            records[method, seed] = run(method, seed, cases, Path(_RUNS.value) / method / f"seed_{seed}")
            rows += long_rows(method, seed, records[method, seed]["rows"], groups, partial)
    result = analyse(rows, methods, _REFERENCE.value, partial, never, _NI_MARGIN.value)
    gains = convergence(records, partial, never)
    out = Path(_RESULTS.value)
    files.write_csv(out / "per_case.csv", rows)
    order = sorted(seeds)  # the analysis's seed order
    files.write_csv(out / "per_run.csv", [
        {**g, **{name: float(result["per_run"][g["method"]][name][order.index(g["seed"])])
                 for name in result["endpoints"]}} for g in gains])
    md = markdown(result, methods, _REFERENCE.value, partial, never, run_config(_REFERENCE.value, seeds[0]), seeds,
                  _NI_MARGIN.value, gains, _PLATEAU_GAIN.value)
    files.write_text(out / "partial_supervision.md", md)
    plot(result, methods, out / "partial_supervision.png")
    plot_curves(records, methods, partial, never, out / "convergence.png")
    print(md)


if __name__ == "__main__":
    app.run(main)
