"""Draws ``docs/figures/phantoms.png``: a normal phantom and the abnormal phantom of the same seed.

    python docs/figures/make_phantom_figure.py [--seed=0] [--size=96] [--output=docs/figures/phantoms.png]

The abnormal phantom has ventriculomegaly and a small cerebellum moved down and forward
(``make_phantom(..., ventriculomegaly=True, small_cerebellum=True)``, docs/theory.md §4). Both
rows use the same slices, chosen on the normal phantom: axial and coronal through the lateral
ventricles, sagittal beside the midline through the cerebellum.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from labelset_jax import files  # noqa: E402
from labelset_jax.data import make_phantom  # noqa: E402
from labelset_jax.data.phantoms import draw_abnormality  # noqa: E402
from labelset_jax.labelsets import FETAL_BRAIN  # noqa: E402

COLOURS = ["#000000", "#f2f2f2", "#3b8bd4", "#d62728", "#7fd3f0", "#8c564b", "#e377c2", "#ff7f0e", "#2ca02c"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--output", default="docs/figures/phantoms.png")
    args = parser.parse_args()
    if args.seed < 0 or args.size < 32:
        parser.error(f"--seed must be >= 0 and --size >= 32, got {args.seed} and {args.size}")

    shape = (args.size,) * 3
    normal = make_phantom(args.seed, shape=shape)
    abnormal = make_phantom(args.seed, shape=shape, ventriculomegaly=True, small_cerebellum=True)
    labels = normal[1]
    vent = np.argwhere(labels == 2).mean(0).round().astype(int)
    cereb = np.argwhere(labels == 3)
    x_sag = int(np.round(cereb[:, 0].mean() + 0.06 * args.size))  # beside the fissure
    views = [
        ("axial", lambda a: a[:, :, vent[2]].T),
        ("coronal", lambda a: a[:, vent[1], :].T),
        ("sagittal", lambda a: a[x_sag, :, :].T),
    ]
    severity = draw_abnormality(args.seed)
    titles = [
        "normal",
        f"abnormal: ventricles ×{severity.ventricle_scale:.2f}, cerebellum ×{severity.cerebellum_scale:.2f}, "
        f"moved {severity.cerebellum_down:.2f} down / {severity.cerebellum_forward:.2f} forward",
    ]
    cmap = ListedColormap(COLOURS)
    fig, axes = plt.subplots(2, 6, figsize=(15, 5.6))
    for row, ((image, seg), title) in enumerate(zip([normal, abnormal], titles)):
        for k, (name, cut) in enumerate(views):
            ax_image, ax_labels = axes[row, 2 * k], axes[row, 2 * k + 1]
            ax_image.imshow(cut(image), origin="lower", cmap="gray", vmin=0, vmax=1.2)
            ax_labels.imshow(cut(seg), origin="lower", cmap=cmap, vmin=-0.5, vmax=8.5, interpolation="nearest")
            for ax in (ax_image, ax_labels):
                ax.set_xticks([])
                ax.set_yticks([])
            if row == 0:
                ax_image.set_title(f"{name}: T2-like image", fontsize=9)
                ax_labels.set_title(f"{name}: labels", fontsize=9)
        axes[row, 0].set_ylabel(title.split(":")[0], fontsize=10)
    fig.suptitle(f"Phantom seed {args.seed}, {args.size}³ — {titles[1]}", fontsize=10)
    handles = [Patch(color=COLOURS[c], label=FETAL_BRAIN.names[c]) for c in range(1, 9)]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    files.save_figure(fig, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
