r"""The label-set comparison of Fidon et al. 2021 (docs/theory.md §4) on embedded phantoms, with seeds and statistics.

    python -m experiments.partial_supervision_study --runs=runs/partial_supervision \
        --results=docs/results/partial_supervision
    python -m experiments.partial_supervision_study --scale=paper --runs=runs/ps_paper \
        --results=docs/results/partial_supervision_paper            # a GPU
    python -m experiments.partial_supervision_study --full_fraction=uniform \
        --runs=runs/ps_uniform --results=docs/results/partial_supervision_uniform   # sensitivity

The design (``configs/partial_supervision.py``): normal, fully segmented atlases; a partially
annotated cohort under the three protocols, half of it abnormal (ventriculomegaly, a small
cerebellum moved down and forward); every batch half atlas, half partial case (``--full_fraction``).
The cohort and the held-out test set (``config.study``: fully segmented, normal and abnormal) are a
function of the data seed alone, so the run seeds ``0 .. seeds-1`` pair across methods. Each
(method, seed) run is trained (or resumed) in ``--runs/<method>/seed_<k>`` and its test scores are
kept there (``test_scores.json``): a rerun skips finished runs.

Endpoints, per test case averaged over the seeds: the mean Dice over the tissues the partial data
annotate (WM, ventricles, cerebellum, eCSF, corpus callosum) on abnormal brains (primary), the same
on normal brains, and the mean Dice over the never-annotated tissues (cortical GM, deep GM,
brainstem; non-inferiority at ``--ni_margin``). ``--reference`` (leaf-Dice) is compared with each
other method by paired Wilcoxon signed-rank tests over the cases, per endpoint and per tissue,
Holm-corrected within each family; means and differences have 95% bootstrap CIs resampling the
seeds, then the cases (:func:`labelset_jax.metrics.nested_bootstrap_ci`). Written atomically into
``--results``:

* ``per_case.csv``: one row per method, seed, case and tissue (group, Dice, HD95, volume error);
* ``partial_supervision.md``: the command, the date, the design and the tables;
* ``partial_supervision.png``: the endpoints per case, box and strip plots by group.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from configs import partial_supervision
from labelset_jax import cli, files, train
from labelset_jax.data import phantom_cohort
from labelset_jax.evaluation import EvalSettings, evaluate_cases
from labelset_jax.labelsets import FETAL_BRAIN, FETAL_BRAIN_PROTOCOLS
from labelset_jax.metrics import holm_adjust, nested_bootstrap_ci, paired_wilcoxon

_RUNS = flags.DEFINE_string("runs", "runs/partial_supervision", "Folder of the training runs.")
_RESULTS = flags.DEFINE_string("results", "docs/results/partial_supervision", "Folder for the tables and plot.")
_METHODS = flags.DEFINE_list("methods", list(partial_supervision.STUDY_METHODS), "Methods to compare.")
_REFERENCE = flags.DEFINE_string("reference", "leaf_dice", "The method the others are tested against.")
_SCALE = flags.DEFINE_enum("scale", "cpu", list(partial_supervision.SCALES),
                           "Scale of configs/partial_supervision.py.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Run seeds 0..seeds-1 (default: the config's study.seeds).")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: the config's).")
_NUM_TEST = flags.DEFINE_integer("num_test", None, "Test cases per group, normal and abnormal (default: the config's).")
_DATA_SEED = flags.DEFINE_integer("data_seed", None, "The data seed (default: the config's data.seed).")
_FULL_FRACTION = flags.DEFINE_string("full_fraction", None,
                                     "Atlas share of each batch: in [0, 1], or 'uniform' (default: the config's).")
_NI_MARGIN = flags.DEFINE_float("ni_margin", 0.05, "Non-inferiority margin on the never-annotated tissues' Dice.")

TISSUES = list(FETAL_BRAIN.names[1:])
GROUPS = ("abnormal", "normal")
SCORES_FILE = "test_scores.json"


# --------------------------------------------------------------------------- configuration


def run_config(method: str, seed: int):
    """The config of one run: ``configs/partial_supervision.py:METHOD,SCALE`` and the flags."""
    config = partial_supervision.get_config(f"{method},{_SCALE.value}")
    config.seed = int(seed)
    if _STEPS.value is not None:
        config.num_steps = _STEPS.value
    if _DATA_SEED.value is not None:
        config.data.seed = _DATA_SEED.value
    if _FULL_FRACTION.value is not None:
        config.data.full_fraction = None if _FULL_FRACTION.value == "uniform" else float(_FULL_FRACTION.value)
    config.checkpoint_every = min(config.checkpoint_every, max(config.num_steps, 1))
    config.eval_every = 0  # the study scores its own test set
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


def check_workdir(method: str, seed: int, workdir: Path) -> None:
    """Fails (before any work) when ``workdir`` holds a run of another configuration."""
    previous = workdir / "config.json"
    expected = json.loads(run_config(method, seed).to_json_best_effort())
    if previous.exists() and json.loads(previous.read_text()) != expected:
        cli.fail(f"{workdir} holds a run of another configuration; use a new --runs folder")


def run(method: str, seed: int, cases, workdir: Path) -> list[dict]:
    """Trains (or resumes) one run and scores it on the test cases; reuses finished scores."""
    config = run_config(method, seed)
    scores = workdir / SCORES_FILE
    if scores.exists():
        saved = json.loads(scores.read_text())
        if saved["config"] == json.loads(config.to_json_best_effort()) and saved["cases"] == [c.id for c in cases]:
            logging.info("%s seed %d: finished, reusing %s", method, seed, scores)
            return saved["rows"]
    logging.info("%s seed %d: training in %s", method, seed, workdir)
    train.train_and_evaluate(config, workdir)
    model = train.load_trained(workdir, best=False)
    rows = evaluate_cases(model, cases, EvalSettings.from_config(config))
    files.write_json(scores, {"config": json.loads(config.to_json_best_effort()), "cases": [c.id for c in cases],
                              "rows": rows})
    return rows


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
    """The endpoints, the comparisons with the reference and the per-tissue tables."""
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
    summary = {m: {} for m in methods}
    for m in methods:
        for name, (group, tissues) in endpoints.items():
            summary[m][name] = nested_bootstrap_ci(endpoint(dice[m], tissues)[:, index[group]])
    baselines = [m for m in methods if m != reference]
    comparisons = {}
    if reference in methods and baselines:
        for name, (group, tissues) in endpoints.items():
            ref = endpoint(dice[reference], tissues)[:, index[group]]
            entries = []
            for b in baselines:
                other = endpoint(dice[b], tissues)[:, index[group]]
                test = paired_wilcoxon(np.nanmean(ref, 0), np.nanmean(other, 0))  # per case, seeds averaged
                entries.append({"baseline": b, "diff": nested_bootstrap_ci(ref - other), "p": test.pvalue})
            for e, p in zip(entries, holm_adjust([e["p"] for e in entries])):
                e["p_holm"] = p
                if name.startswith("never"):
                    e["non_inferior"] = bool(e["diff"].low > -ni_margin)
            comparisons[name] = entries
    per_tissue = {}
    for group in GROUPS:
        if not index[group]:
            continue
        case_mean = {m: np.nanmean(dice[m][:, index[group]], axis=0) for m in methods}  # [cases, tissues]
        entries = []
        if reference in methods:
            for b in baselines:
                for k, tissue in enumerate(TISSUES):
                    test = paired_wilcoxon(case_mean[reference][:, k], case_mean[b][:, k])
                    diff = np.nanmean(case_mean[reference][:, k] - case_mean[b][:, k])
                    entries.append({"baseline": b, "tissue": tissue, "diff": diff, "p": test.pvalue})
            for e, p in zip(entries, holm_adjust([e["p"] for e in entries])):
                e["p_holm"] = p
        per_tissue[group] = {
            "dice": {m: np.nanmean(case_mean[m], axis=0) for m in methods},
            "hd95": {m: np.nanmean(np.nanmean(hd95[m][:, index[group]], axis=0), axis=0) for m in methods},
            "tests": entries,
        }
    case_endpoints = {m: {name: np.nanmean(endpoint(dice[m], tissues)[:, index[group]], axis=0)
                          for name, (group, tissues) in endpoints.items()} for m in methods}
    return {"summary": summary, "comparisons": comparisons, "per_tissue": per_tissue, "cases": case_endpoints,
            "endpoints": list(endpoints), "n": {g: len(index[g]) for g in GROUPS}}


def _p(p: float) -> str:
    return "–" if not np.isfinite(p) else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def markdown(result: dict, methods: list[str], reference: str, partial: list[str], never: list[str], config,
             seeds: int, ni_margin: float) -> str:
    data = config.data
    atlases = int(data.protocols.get("full", 0))
    n_partial = sum(int(v) for k, v in dict(data.protocols).items() if k != "full")
    fraction = "uniform over the cases" if data.full_fraction is None else f"{data.full_fraction:g} atlas share"
    lines = [
        "# Partial supervision on phantoms: label-set losses against the baselines",
        "",
        f"Command: `{shlex.join(['python', '-m', 'experiments.partial_supervision_study', *sys.argv[1:]])}`  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        f"Design: {atlases} normal, fully segmented atlases; {n_partial} partially annotated cases "
        f"({', '.join(f'{v} {k}' for k, v in dict(data.protocols).items() if k != 'full')}), a fraction "
        f"{data.abnormal_fraction:g} of each protocol's cases abnormal; phantoms {tuple(data.shape)}; data seed {data.seed}; batches {config.batch_size} "
        f"({fraction}); {config.num_steps} steps; {config.model.preset} U-Net ({config.model.get('num_levels', '')} "
        f"levels); {seeds} run seeds. Test set: {result['n']['normal']} normal + {result['n']['abnormal']} abnormal "
        f"fully segmented phantoms.",
        "",
        f"Tissues the partial data annotate: {', '.join(partial)}. Never annotated: {', '.join(never)}.",
        "",
        "## Endpoints: mean Dice per case (averaged over seeds), mean over cases [95% CI, seeds then cases]",
        "",
        "| method | " + " | ".join(result["endpoints"]) + " |",
        "|---|" + "---|" * len(result["endpoints"]),
    ]
    for m in methods:
        cells = [f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]" for ci in result["summary"][m].values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if result["comparisons"]:
        lines += ["", f"## {reference} against each method (difference {reference} − method)", "",
                  f"Paired Wilcoxon signed-rank test over the cases (seeds averaged), Holm-corrected over the methods "
                  f"within each endpoint; CIs resample seeds then cases. Never-annotated tissues: non-inferior when "
                  f"the CI's lower bound is above −{ni_margin:g}.", "",
                  "| endpoint | method | Δ Dice [95% CI] | p | p (Holm) | non-inferior |", "|---|---|---|---|---|---|"]
        for name, entries in result["comparisons"].items():
            for e in entries:
                d = e["diff"]
                ni = ("yes" if e["non_inferior"] else "no") if "non_inferior" in e else ""
                lines.append(f"| {name} | {e['baseline']} | {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | "
                             f"{_p(e['p'])} | {_p(e['p_holm'])} | {ni} |")
    for group, tables in result["per_tissue"].items():
        lines += ["", f"## Per tissue, {group} test brains", "", "Dice (mean over cases of the seed means):", "",
                  "| method | " + " | ".join(TISSUES) + " |", "|---|" + "---|" * len(TISSUES)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in tables["dice"][m]) + " |")
        lines += ["", "HD95 (mm):", "", "| method | " + " | ".join(TISSUES) + " |", "|---|" + "---|" * len(TISSUES)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in tables["hd95"][m]) + " |")
        if tables["tests"]:
            lines += ["", f"Δ Dice ({reference} − method) per tissue, Wilcoxon p Holm-corrected over all "
                      f"method × tissue tests of this group:", "",
                      "| method | " + " | ".join(TISSUES) + " |", "|---|" + "---|" * len(TISSUES)]
            for b in [m for m in methods if m != reference]:
                cells = [f"{e['diff']:+.3f} (p {_p(e['p_holm'])})" for e in tables["tests"] if e["baseline"] == b]
                lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["endpoints"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharey="row")
    rng = np.random.default_rng(0)
    for ax, name in zip(axes.ravel(), [names[0], names[1], names[2], names[3]]):
        values = [result["cases"][m][name] for m in methods]
        ax.boxplot(values, showfliers=False)
        for k, v in enumerate(values, start=1):
            ax.plot(k + rng.uniform(-0.12, 0.12, len(v)), v, "o", ms=3, alpha=0.6, color="k")
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("mean Dice per case (seeds averaged)")
    fig.tight_layout()
    files.save_figure(fig, path)


# --------------------------------------------------------------------------- main


def main(argv):
    cli.start(argv)
    methods = list(_METHODS.value)
    cli.check_known(methods, partial_supervision.METHODS, what="method")
    if _REFERENCE.value not in partial_supervision.METHODS:
        cli.fail(f"--reference must be a method, got {_REFERENCE.value!r}")
    for flag in (_SEEDS, _STEPS, _NUM_TEST):
        if flag.value is not None and flag.value < 1:
            cli.fail(f"--{flag.name} must be >= 1, got {flag.value}")
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

    config = run_config(_REFERENCE.value, 0)
    seeds = config.study.seeds if _SEEDS.value is None else _SEEDS.value
    for method in methods:
        for seed in range(seeds):
            check_workdir(method, seed, Path(_RUNS.value) / method / f"seed_{seed}")
    partial, never = tissue_groups(config)
    cases = test_cases(config)
    groups = {c.id: "abnormal" if c.metadata["abnormal"] else "normal" for c in cases}
    rows = []
    for method in methods:
        for seed in range(seeds):
            scores = run(method, seed, cases, Path(_RUNS.value) / method / f"seed_{seed}")
            rows += long_rows(method, seed, scores, groups, partial)
    result = analyse(rows, methods, _REFERENCE.value, partial, never, _NI_MARGIN.value)
    out = Path(_RESULTS.value)
    files.write_csv(out / "per_case.csv", rows)
    md = markdown(result, methods, _REFERENCE.value, partial, never, config, seeds, _NI_MARGIN.value)
    files.write_text(out / "partial_supervision.md", md)
    plot(result, methods, out / "partial_supervision.png")
    print(md)


if __name__ == "__main__":
    app.run(main)
