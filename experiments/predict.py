r"""Segment NIfTI volumes with a trained workdir.

    python -m experiments.predict --workdir=runs/default --input=scan.nii.gz --output=out/
    python -m experiments.predict --workdir=runs/default --input=scans/ --output=out/ --probabilities

Writes ``<name>_seg.nii.gz`` (int16 leaf labels) and, with ``--probabilities``,
``<name>_probs.nii.gz`` (float32, 4D, one volume per leaf), with the input's shape, affine, header
and sform/qform codes, and ordinary file permissions. Before the model is loaded, the output
folder is checked, then every input's header, then every input's voxels one volume at a time;
volumes are then predicted one at a time (memory holds one volume, not the folder). Bad input
(missing file, not a 3D NIfTI volume, NaN or Inf intensities, an output path under a file or in
a read-only folder, no workdir) exits with status 2 and a one-line error, before anything is
written; an all-zero image is predicted with a warning. The sliding windows follow the workdir's
``config.eval``; ``--tta``/``--notta`` override its ``tta``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags, logging

from labelset_jax import cli, train
from labelset_jax.data import load_nifti, save_nifti
from labelset_jax.data.nifti import load_header
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


def check_intensities(path: Path) -> None:
    """ValueError naming ``path`` when its intensities hold NaN or Inf; a warning when all zero."""
    image, _, _ = load_nifti(path)
    finite = np.isfinite(image)
    if not finite.all():
        raise ValueError(f"{path}: image holds {int(finite.size - finite.sum())} NaN or Inf intensities")
    if not image.any():
        logging.warning("%s: the image is all zeros; its segmentation will say little", path)


def main(argv):
    cli.start(argv)
    output = Path(_OUTPUT.value)
    cli.check_output_folder(output)
    try:
        if not Path(_WORKDIR.value, "config.json").exists():
            raise ValueError(f"{_WORKDIR.value} is not a training workdir (no config.json)")
        files = input_files(Path(_INPUT.value))
        for path in files:  # headers first: every file readable and 3D, nothing loaded
            load_header(path)
        for path in files:  # then the voxels, one volume at a time
            check_intensities(path)
        model = train.load_trained(_WORKDIR.value)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(str(e))
    settings = EvalSettings.from_config(model.config)
    if _TTA.value is not None:
        settings = settings._replace(tta=_TTA.value)
    progress = cli.Progress(len(files))
    for path in files:
        image, affine, _ = load_nifti(path)
        header = load_header(path)[2]
        prediction = predict_case(model, image, settings, progress=progress.windows(path.name))
        save_nifti(output / f"{stem(path)}_seg.nii.gz", prediction.labels.astype(np.int16), affine, header=header)
        if _PROBS.value:
            save_nifti(output / f"{stem(path)}_probs.nii.gz", prediction.probs, affine, header=header)
        progress.update(path.name)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
