r"""Segment NIfTI volumes with a trained workdir.

    python -m experiments.predict --workdir=runs/default --input=scan.nii.gz --output=out/
    python -m experiments.predict --workdir=runs/default --input=scans/ --output=out/ --probabilities

Writes ``<name>_seg.nii.gz`` (int16 leaf labels) and, with ``--probabilities``,
``<name>_probs.nii.gz`` (float32, 4D, one volume per leaf), with the input's affine and header.
Bad input (missing file, not a NIfTI volume, NaN intensities, no workdir) exits with status 2 and
a one-line error, before anything is written. The sliding windows follow the workdir's
``config.eval``; ``--tta``/``--notta`` override its ``tta``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from absl import app, flags

from labelset_jax import cli, train
from labelset_jax.data import load_nifti, save_nifti
from labelset_jax.evaluation import EvalSettings, predict_case

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.")
_INPUT = flags.DEFINE_string("input", None, "A NIfTI file or a folder of them.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
_PROBS = flags.DEFINE_bool("probabilities", False, "Also write the probability maps.")
_TTA = flags.DEFINE_bool("tta", None, "Left-right flip test-time augmentation (default: the config's eval.tta).")
flags.mark_flags_as_required(["workdir", "input", "output"])


def input_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not files:
            raise ValueError(f"{path}: no .nii or .nii.gz file in the folder")
        return files
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    return [path]


def stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def main(argv):
    cli.start(argv)
    try:
        files = input_files(Path(_INPUT.value))
        volumes = [(f, *load_nifti(f)) for f in files]  # every file is checked before any work
        model = train.load_trained(_WORKDIR.value)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(str(e))
    settings = EvalSettings.from_config(model.config)
    if _TTA.value is not None:
        settings = settings._replace(tta=_TTA.value)
    output = Path(_OUTPUT.value)
    progress = cli.Progress(len(volumes))
    for path, image, affine, _ in volumes:
        header = nib.load(path).header
        prediction = predict_case(model, image, settings)
        save_nifti(output / f"{stem(path)}_seg.nii.gz", prediction.labels.astype(np.int16), affine, header=header)
        if _PROBS.value:
            save_nifti(output / f"{stem(path)}_probs.nii.gz", prediction.probs, affine, header=header)
        progress.update(path.name)


if __name__ == "__main__":
    app.run(main)
