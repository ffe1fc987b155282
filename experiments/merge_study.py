r"""Merging a healthy-atlas dataset with a lesion cohort: the use case of label-set losses, on MNI152 anatomy.

    python -m experiments.merge_study --workdir=runs/merge_study --results=docs/results/merge_study
    python -m experiments.merge_study --run_seeds=31,32,33 --workdir=runs/ms_rerun --results=runs/ms_rerun_results

Two sources, each written as its own nnU-Net dataset under ``--workdir/data`` and merged with
``experiments/merge_datasets.py``'s :func:`~labelset_jax.data.merge.merge_datasets`:

* **atlases** (``Dataset001_atlases``): healthy MNI152 brains (nilearn's template and tissue maps at
  ``voxel_size`` mm, random deformations and intensity changes), fully labelled background / CSF /
  GM / WM; they declare no lesion, so the merge gives their background the set {background, lesion}.
* **lesions** (``Dataset002_lesions``): brains with a tumour-like lesion
  (:func:`~labelset_jax.data.mni_lesion_case`: its own intensity and texture, random size and place
  in GM/WM, a mass effect in about half of them). Their label maps annotate the lesion and the
  background outside the brain; every other brain voxel carries the label set ``brain_tissue`` =
  {CSF, GM, WM}. Their held-out ``imagesTs``/``labelsTs`` are the test set: brains with lesions,
  fully labelled in 5 classes.

Each (method, seed) run (``configs/merge_study.py``) trains through the ordinary dataset path on the
merged folder, logs the validation Dice every ``eval_every`` steps, and is scored on the test set;
its record (:mod:`labelset_jax.study`) goes to ``--results/runs/<method>_seed<k>.json`` and is reused
by a rerun. Endpoints per run (means over the test brains): lesion Dice, lesion volume error (hard,
ml; and its absolute value), CSF/GM/WM Dice and their mean. ``--reference`` (leaf-Dice) is compared
with each other method over the runs, paired by run seed (mean difference, 95% t-CI, paired t-test,
Holm over the methods within each endpoint). Written atomically into ``--results``:
``merge_study.md`` (command, date, design, tables), ``per_case.csv``, ``per_run.csv``,
``merge_study.png`` (the endpoints per run) and ``test_brain.png`` (one test brain, every method).
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from absl import app, flags, logging

from configs import merge_study
from labelset_jax import cli, files, study
from labelset_jax.data import MNI_LESION, mni_lesion_case
from labelset_jax.data.merge import merge_datasets
from labelset_jax.data.nnunet import DatasetError, write_dataset
from labelset_jax.evaluation import EvalSettings, evaluate_cases
from labelset_jax.labelsets import LabelSpace

_WORKDIR = flags.DEFINE_string("workdir", "runs/merge_study", "Folder of the datasets and the training runs.")
_RESULTS = flags.DEFINE_string("results", "docs/results/merge_study",
                               "Folder for the tables, plots and finished runs' records.")
_METHODS = flags.DEFINE_list("methods", list(merge_study.METHODS), "Methods to compare.")
_REFERENCE = flags.DEFINE_string("reference", "leaf_dice", "The method the others are tested against.")
_SCALE = flags.DEFINE_enum("scale", "cpu", list(merge_study.SCALES), "Scale of configs/merge_study.py.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Run seeds 0..seeds-1 (default: the config's study.seeds).")
_RUN_SEEDS = flags.DEFINE_list("run_seeds", None, "The run seeds, e.g. 31,32,33 (instead of --seeds).")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: the config's).")

TISSUES = ("csf", "gm", "wm")
ENDPOINTS = ("lesion Dice", "lesion ΔV (ml)", "lesion abs ΔV (ml)", "tissue Dice", "csf Dice", "gm Dice", "wm Dice")
#: The lesion cohort's own label space: the five leaves and the set its brain voxels carry.
LESION_SOURCE = LabelSpace.from_superset_map(5, {5: [1, 2, 3]}, MNI_LESION.names, set_names={5: "brain_tissue"})
ATLAS_SOURCE = LabelSpace.leaves(MNI_LESION.names[:4])


# --------------------------------------------------------------------------- data


def data_settings() -> dict:
    return dict(merge_study.get_config(f"{_REFERENCE.value},{_SCALE.value}").study)


def build_data(root: Path) -> Path:
    """Writes the two source datasets and merges them (once; reused when the settings match)."""
    settings = data_settings()
    stamp = root / "data_settings.json"
    merged = root / "Dataset003_merged"
    if stamp.exists():
        if json.loads(stamp.read_text()) != settings:
            cli.fail(f"{root} holds datasets of other settings; use a new --workdir")
        return merged
    vs, first = int(settings["voxel_size"]), 1000 * int(settings["data_seed"])

    def atlases():
        for i in range(int(settings["num_atlases"])):
            case = mni_lesion_case(first + i, voxel_size=vs, lesion=False)
            yield SimpleNamespace(id=f"atlas_{i:03d}", image=case.image, labels=case.labels, affine=case.affine)

    def lesion_cases(offset, count, *, partial):
        for i in range(count):
            case = mni_lesion_case(first + offset + i, voxel_size=vs)
            labels = case.labels
            if partial:  # the lesion and the background outside the brain; the brain tissue as one set
                labels = np.where(np.isin(labels, (1, 2, 3)), 5, labels).astype(np.int32)
            yield SimpleNamespace(id=f"{'test' if not partial else 'case'}_{i:03d}", image=case.image,
                                  labels=labels, affine=case.affine)

    write_dataset(root / "Dataset001_atlases", atlases(), space=ATLAS_SOURCE, channel_names=["T1"], overwrite=True)
    write_dataset(root / "Dataset002_lesions", lesion_cases(100, int(settings["num_lesion"]), partial=True),
                  space=LESION_SOURCE, channel_names=["T1"], overwrite=True,
                  test=lesion_cases(500, int(settings["num_test"]), partial=False))
    if merged.exists():
        import shutil

        shutil.rmtree(merged)
    merge_datasets([root / "Dataset001_atlases", root / "Dataset002_lesions"], merged)
    files.write_json(stamp, settings)
    return merged


# --------------------------------------------------------------------------- runs


def run_config(method: str, seed: int, merged: Path):
    config = merge_study.get_config(f"{method},{_SCALE.value}")
    config.seed = int(seed)
    config.data.path = str(merged)
    if _STEPS.value is not None:
        config.num_steps = _STEPS.value
    config.checkpoint_every = min(config.checkpoint_every, max(config.num_steps, 1))
    return config


def record_path(method: str, seed: int) -> Path:
    return Path(_RESULTS.value) / "runs" / f"{method}_seed{seed}.json"


def run(method: str, seed: int, merged: Path, cases, figure_case: str) -> dict:
    config = run_config(method, seed, merged)
    ids = [c.id for c in cases]
    saved = study.load_record(record_path(method, seed), config, ids)
    if saved is not None:
        logging.info("%s seed %d: finished, reusing %s", method, seed, record_path(method, seed))
        return saved
    figure = {}

    def keep_slice(case, prediction, row):
        if case.id == figure_case:
            z = int(np.argwhere(case.labels == 4)[:, 2].mean())
            figure["z"], figure["labels"] = z, prediction.labels[:, :, z].astype(int).tolist()

    def score(model):
        return evaluate_cases(model, cases, EvalSettings.from_config(config), on_case=keep_slice)

    logging.info("%s seed %d: training", method, seed)
    workdir = Path(_WORKDIR.value) / "runs" / method / f"seed_{seed}"
    record = study.train_and_record(config, workdir, record_path(method, seed), ids, score)
    record["figure"] = figure
    files.write_json(record_path(method, seed), record)
    return record


# --------------------------------------------------------------------------- analysis


def run_endpoints(rows: list[dict]) -> dict[str, float]:
    """The endpoints of one run: means over its test brains."""
    col = lambda key: np.array([float(r[key]) for r in rows])  # noqa: E731
    tissue = np.stack([col(f"dice_{t}") for t in TISSUES], axis=1)
    return {
        "lesion Dice": float(np.nanmean(col("dice_lesion"))),
        "lesion ΔV (ml)": float(np.nanmean(col("dvol_hard_lesion"))),
        "lesion abs ΔV (ml)": float(np.nanmean(np.abs(col("dvol_hard_lesion")))),
        "tissue Dice": float(np.nanmean(tissue)),
        **{f"{t} Dice": float(np.nanmean(tissue[:, k])) for k, t in enumerate(TISSUES)},
    }


def _ci(t, sign="") -> str:
    return f"{t.diff:{sign}.3f} [{t.low:{sign}.3f}, {t.high:{sign}.3f}]"


def markdown(records, methods, seeds, per_run, comparisons, gains, config, lesion_ml) -> str:
    s = config.study
    minutes = sum(r["seconds"] for r in records.values()) / 60
    lines = [
        "# Merging an atlas dataset and a lesion cohort: label-set losses against the baselines",
        "",
        f"Command: `{shlex.join(['python', '-m', 'experiments.merge_study', *sys.argv[1:]])}`  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        f"Design: MNI152 brains at {s.voxel_size} mm; source *atlases*: {s.num_atlases} healthy brains labelled "
        f"background/CSF/GM/WM; source *lesions*: {s.num_lesion} brains with a lesion, labelled lesion + background "
        f"outside the brain + the set {{CSF, GM, WM}} elsewhere; merged with `merge_datasets`; test set: "
        f"{s.num_test} lesion brains fully labelled in 5 classes (lesions {np.min(lesion_ml):.1f}–"
        f"{np.max(lesion_ml):.1f} ml). {config.num_steps} steps, batches of {config.batch_size}, patches "
        f"{tuple(config.patch_size)}, {config.model.preset} U-Net ({config.model.num_levels} levels); run seeds "
        f"{', '.join(map(str, seeds))}. Training time {minutes:.1f} min in all ({len(records)} runs).",
        "",
        "## Convergence",
        "",
        f"Validation Dice (2 validation cases, one per source, every {config.eval_every} steps; running mean of 3): "
        f"gain over the last quarter of the steps.",
        "",
        "| method | gain: median [max] | runs with gain < 0.005 |",
        "|---|---|---|",
    ]
    for m in methods:
        g = np.array([gains[m, k] for k in seeds])
        lines.append(f"| {m} | {np.median(g):+.4f} [{np.max(g):+.4f}] | {int(np.sum(g < 0.005))}/{len(g)} |")
    lines += ["", "## Endpoints: mean over runs of the per-run means over the test brains [95% t-CI over runs]", "",
              "| method | " + " | ".join(ENDPOINTS) + " |", "|---|" + "---|" * len(ENDPOINTS)]
    zero = np.zeros(len(seeds))
    from labelset_jax.metrics import holm_adjust, paired_runs

    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_ci(paired_runs(per_run[m][e], zero)) for e in ENDPOINTS) + " |")
    if comparisons:
        lines += ["", f"## {_REFERENCE.value} against each method, over training runs", "",
                  f"Difference {_REFERENCE.value} − method, paired by run seed: mean [95% t-CI], paired t-test, Holm over "
                  f"the methods within each endpoint; 'wins': runs where {_REFERENCE.value} has the higher value.", "",
                  "| endpoint | method | Δ [95% CI] | p | p (Holm) | wins |", "|---|---|---|---|---|---|"]
        for e, entries in comparisons.items():
            for m, t, p in entries:
                lines.append(f"| {e} | {m} | {_ci(t, '+')} | {t.pvalue:.2g} | {p:.2g} | {t.wins}/{t.n} |")
    if "naive" in methods and "a_only" in methods:
        # the design's second expectation: the naive merge, told that the lesion brains' tissue is
        # background, segments the tissues worse than the atlases alone
        lines += ["", "## Does the naive merge erode the tissues? naive against a_only, over training runs", "",
                  "Difference naive − a_only, paired by run seed (Holm over the four tissue endpoints).", "",
                  "| endpoint | Δ [95% CI] | p | p (Holm) | naive higher |", "|---|---|---|---|---|"]
        tissue_endpoints = ("tissue Dice", "csf Dice", "gm Dice", "wm Dice")
        tests = [paired_runs(per_run["naive"][e], per_run["a_only"][e]) for e in tissue_endpoints]
        for e, t, p in zip(tissue_endpoints, tests, holm_adjust([t.pvalue for t in tests])):
            lines.append(f"| {e} | {_ci(t, '+')} | {t.pvalue:.2g} | {p:.2g} | {t.wins}/{t.n} |")
    return "\n".join(lines) + "\n"


def plots(per_run, methods, records, seeds, cases, figure_case, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, e in zip(axes, ("lesion Dice", "lesion ΔV (ml)", "tissue Dice")):
        values = [per_run[m][e] for m in methods]
        ax.boxplot(values, showfliers=False)
        for k, v in enumerate(values, start=1):
            ax.plot(np.full(len(v), k), v, "o", ms=4, alpha=0.7, color="k")
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20, fontsize=8)
        ax.set_title(f"{e} (one point per run)", fontsize=10)
    fig.tight_layout()
    files.save_figure(fig, out / "merge_study.png")

    case = next(c for c in cases if c.id == figure_case)
    z = records[methods[0], seeds[0]]["figure"]["z"]
    colours = ListedColormap(["black", "tab:blue", "tab:gray", "white", "tab:red"])
    panels = [("image", case.image[:, :, z], "gray"), ("truth", case.labels[:, :, z], colours)]
    panels += [(m, np.array(records[m, seeds[0]]["figure"]["labels"]), colours) for m in methods]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.8))
    for ax, (title, img, cmap) in zip(axes, panels):
        ax.imshow(img.T, cmap=cmap, origin="lower", **({} if cmap == "gray" else dict(vmin=0, vmax=4,
                                                                                       interpolation="nearest")))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"test brain {figure_case}, slice z={z}, run seed {seeds[0]}", fontsize=9)
    fig.tight_layout()
    files.save_figure(fig, out / "test_brain.png")


# --------------------------------------------------------------------------- main


def main(argv):
    cli.start(argv)
    methods = list(_METHODS.value)
    cli.check_known(methods, merge_study.METHODS, what="method")
    if _REFERENCE.value not in merge_study.METHODS:
        cli.fail(f"--reference must be a method, got {_REFERENCE.value!r}")
    if _STEPS.value is not None and _STEPS.value < 1:
        cli.fail(f"--steps must be >= 1, got {_STEPS.value}")
    try:
        seeds = study.run_seeds(_SEEDS.value, _RUN_SEEDS.value, int(data_settings()["seeds"]))
    except ValueError as e:
        cli.fail(str(e))
    cli.check_output_folder(_RESULTS.value, what="--results")

    root = Path(_WORKDIR.value) / "data"
    try:
        merged = build_data(root)
        from labelset_jax.input_pipeline import create_test_cases

        cases = create_test_cases(run_config(_REFERENCE.value, seeds[0], merged).data)
    except DatasetError as e:
        cli.fail(str(e))
    ids = [c.id for c in cases]
    for m in methods:
        for k in seeds:
            problem = study.check_record(record_path(m, k), run_config(m, k, merged), ids,
                                         Path(_WORKDIR.value) / "runs" / m / f"seed_{k}")
            if problem:
                cli.fail(problem)
    figure_case = ids[0]
    records, rows, gains = {}, [], {}
    for k in seeds:  # seed by seed, so that an interrupted study has whole seeds to show
        for m in methods:
            record = records[m, k] = run(m, k, merged, cases, figure_case)
            rows += [{"method": m, "seed": k, **r} for r in record["rows"]]
            gains[m, k] = study.plateau_gain(record["curve"], MNI_LESION.names[1:], int(record["config"]["num_steps"]))
    per_run = {m: {e: np.array([run_endpoints(records[m, k]["rows"])[e] for k in seeds]) for e in ENDPOINTS}
               for m in methods}
    comparisons = {}
    others = [m for m in methods if m != _REFERENCE.value]
    if _REFERENCE.value in methods and others:
        comparisons = {e: study.compare_runs({m: per_run[m][e] for m in methods}, _REFERENCE.value, others)
                       for e in ENDPOINTS}
    out = Path(_RESULTS.value)
    files.write_csv(out / "per_case.csv", rows)
    files.write_csv(out / "per_run.csv", [
        {"method": m, "seed": k, **run_endpoints(records[m, k]["rows"]), "plateau_gain": gains[m, k],
         "train_seconds": records[m, k]["seconds"]} for m in methods for k in seeds])
    lesion_ml = [float(np.sum(c.labels == 4) * np.prod(c.spacing) / 1000) for c in cases]
    md = markdown(records, methods, seeds, per_run, comparisons, gains, run_config(_REFERENCE.value, seeds[0], merged),
                  lesion_ml)
    files.write_text(out / "merge_study.md", md)
    plots(per_run, methods, records, seeds, cases, figure_case, out)
    print(md)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
