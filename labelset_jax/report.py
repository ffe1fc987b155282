"""Pictures and tables of a run: slices of the predicted parcellation next to the ground truth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from labelset_jax import files, input_pipeline, train
from labelset_jax.evaluation import EvalSettings, evaluate_cases
from labelset_jax.labelsets import LabelSpace

# A qualitative colour per leaf (background transparent); extended by cycling for larger spaces.
_COLOURS = np.array(
    [
        [0, 0, 0], [245, 245, 220], [0, 160, 255], [255, 165, 0], [120, 220, 120],
        [220, 40, 40], [160, 80, 200], [255, 220, 0], [255, 105, 180], [0, 200, 200],
        [120, 120, 255], [150, 100, 50],
    ],
    dtype=np.float32,
) / 255.0


def label_colours(num_classes: int) -> np.ndarray:
    """RGB colours ``[num_classes, 3]`` for leaves ``0..C-1``."""
    return _COLOURS[np.arange(num_classes) % len(_COLOURS)]


def overlay(image2d: np.ndarray, labels2d: np.ndarray, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """An RGB picture of a grey image with leaf labels blended on top; set ids (``>= C``) are hatched
    grey, so partial annotations stay visible."""
    lo, hi = np.percentile(image2d, [1, 99])
    grey = np.clip((image2d - lo) / max(hi - lo, 1e-6), 0, 1)[..., None].repeat(3, -1)
    colours = label_colours(num_classes)
    out = grey.copy()
    leaf = (labels2d > 0) & (labels2d < num_classes)
    out[leaf] = (1 - alpha) * grey[leaf] + alpha * colours[labels2d[leaf]]
    is_set = labels2d >= num_classes
    hatch = (np.add.outer(np.arange(labels2d.shape[0]), np.arange(labels2d.shape[1])) % 4) < 2
    out[is_set & hatch] = 0.5
    return np.clip(out, 0.0, 1.0)


def save_slices_png(path: str | os.PathLike, image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                    label_space: LabelSpace, *, title: str = "") -> None:
    """Writes a PNG of three orthogonal central slices: image, ground truth, prediction.

    Args:
      path: the PNG to write (atomically).
      image: ``[D, H, W]`` intensities.
      truth, pred: ``[D, H, W]`` label maps.
      label_space: for the number of leaves and the legend.
      title: a figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    c = label_space.num_classes
    centre = [s // 2 for s in image.shape]
    views = [(lambda a, k=k: np.take(a, centre[k], axis=k)) for k in range(3)]
    fig, axes = plt.subplots(3, 3, figsize=(9, 9.6))
    for row, view in enumerate(views):
        axes[row, 0].imshow(np.rot90(view(image)), cmap="gray")
        axes[row, 1].imshow(np.rot90(overlay(view(image), view(truth), c), axes=(0, 1)))
        axes[row, 2].imshow(np.rot90(overlay(view(image), view(pred), c), axes=(0, 1)))
    for ax, name in zip(axes[0], ["image", "ground truth", "prediction"]):
        ax.set_title(name)
    for ax in axes.ravel():
        ax.axis("off")
    handles = [Patch(color=label_colours(c)[k], label=label_space.names[k]) for k in range(1, c)]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    files.save_figure(fig, path, dpi=80)


def write_run_report(workdir: str | os.PathLike, *, num_cases: int | None = None) -> dict[str, float]:
    """Evaluates a trained workdir on its validation cases and writes ``report.md`` (per-leaf Dice
    and HD95, mean ± std over cases) and ``slices.png`` (first case), atomically.

    Returns:
      The mean metrics ``{"dice_<leaf>": ..., "hd95_<leaf>": ...}``.
    """
    workdir = Path(workdir)
    model = train.load_trained(workdir)
    config, space = model.config, model.label_space
    cases = input_pipeline.run_validation_cases(config, workdir)
    cases = cases[:num_cases] if num_cases else cases

    def first_case_slices(case, prediction, row):
        if case is cases[0]:
            image = case.image if case.num_channels == 1 else case.image[..., 0]  # the first channel
            save_slices_png(workdir / "slices.png", image, case.labels, prediction.labels, space,
                            title=f"{config.get('loss')} — {case.id}")

    rows = evaluate_cases(model, cases, EvalSettings.from_config(config), on_case=first_case_slices)
    rows = [{k: v for k, v in row.items() if k.startswith(("dice_", "hd95_"))} for row in rows]
    keys = list(rows[0]) if rows else []
    summary = {key: float(np.nanmean([r[key] for r in rows])) for key in keys}
    lines = [f"# {workdir.name}: {config.get('loss')} on {config.data.name}", "",
             f"{len(rows)} validation cases; mean ± std over cases.", "",
             "| tissue | Dice | HD95 (mm) |", "|---|---|---|"]
    for c in range(1, space.num_classes):
        name = space.names[c]
        d = np.array([r[f"dice_{name}"] for r in rows])
        h = np.array([r[f"hd95_{name}"] for r in rows])
        lines.append(f"| {name} | {np.nanmean(d):.3f} ± {np.nanstd(d):.3f} | {np.nanmean(h):.2f} ± {np.nanstd(h):.2f} |")
    files.write_text(workdir / "report.md", "\n".join(lines) + "\n")
    files.write_json(workdir / "report.json", summary)
    return summary


def outputs_summary(workdir: str | os.PathLike) -> str:
    """The lines that end a training run: where its report, figures, metrics and checkpoints are
    (those that exist), and how to evaluate or predict with it."""
    workdir = Path(workdir)
    items = [("report", "report.md"), ("figure", "slices.png"), ("results", "results.json"),
             ("metrics", "metrics.jsonl"), ("TensorBoard", "tensorboard"), ("checkpoints", "checkpoints"),
             ("best checkpoint", "best")]
    lines = [f"Run finished in {workdir}:"]
    lines += [f"  {name + ':':<17}{workdir / path}" for name, path in items if (workdir / path).exists()]
    lines += [f"  {'evaluate:':<17}python -m experiments.evaluate --workdir={workdir}",
              f"  {'predict:':<17}python -m experiments.predict --workdir={workdir} --input=IMAGE_OR_FOLDER "
              "--output=FOLDER"]
    return "\n".join(lines)
