r"""Segment NIfTI volumes with a trained workdir.

    python -m experiments.predict --workdir=runs/default --input=scan.nii.gz --output=out/
    python -m experiments.predict --workdir=runs/default --input=scans/ --output=out/ --probabilities

Writes ``<name>_seg.nii.gz`` (int16 leaf labels) and, with ``--probabilities``,
``<name>_probs.nii.gz`` (float32, 4D, one volume per leaf), with the input's shape, affine, header
and sform/qform codes, and ordinary file permissions. A model trained on several input channels
takes nnU-Net's file names: ``--input`` is a folder of ``{case}_{channel:04d}.nii.gz`` files (or one
of them, which brings its sibling channels), and ``<name>`` is the case. Before the model is loaded, the output
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
from labelset_jax.data import load_nifti, nnunet, save_nifti
from labelset_jax.data.nifti import load_header
from labelset_jax.evaluation import EvalSettings, predict_case

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.")
_INPUT = flags.DEFINE_string("input", None, "A NIfTI file or a folder of them.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
_PROBS = flags.DEFINE_bool("probabilities", False, "Also write the probability maps.")
_TTA = flags.DEFINE_bool("tta", None, "Left-right flip test-time augmentation (default: the config's eval.tta).")
flags.mark_flags_as_required(["workdir", "input", "output"])


def input_cases(path: Path, channels: int) -> list[tuple[str, list[Path]]]:
    """``[(output name, [one file per input channel])]``: each file its own volume for a
    single-channel model; nnU-Net's ``{case}_{channel:04d}`` files grouped per case otherwise.
    Headers are checked, no voxel is read."""
    if channels > 1:
        return nnunet.channel_cases(path, channels)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not files:
            raise ValueError(f"{path}: no .nii or .nii.gz file in the folder")
    elif not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    else:
        files = [path]
    for file in files:
        load_header(file)
    return [(file.name.removesuffix(".gz").removesuffix(".nii"), [file]) for file in files]


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
        channels = int(train.load_run_config(_WORKDIR.value).model.get("in_channels", 1))
        cases = input_cases(Path(_INPUT.value), channels)  # headers first: nothing loaded
        for _, paths in cases:  # then the voxels, one volume at a time
            for path in paths:
                check_intensities(path)
        model = train.load_trained(_WORKDIR.value)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(str(e))
    settings = EvalSettings.from_config(model.config)
    if _TTA.value is not None:
        settings = settings._replace(tta=_TTA.value)
    progress = cli.Progress(len(cases))
    for name, paths in cases:
        volumes = [load_nifti(path)[0] for path in paths]
        image = volumes[0] if channels == 1 else np.stack(volumes, axis=-1)
        _, affine, header = load_header(paths[0])
        prediction = predict_case(model, image, settings, progress=progress.windows(name))
        save_nifti(output / f"{name}_seg.nii.gz", prediction.labels.astype(np.int16), affine, header=header)
        if _PROBS.value:
            save_nifti(output / f"{name}_probs.nii.gz", prediction.probs, affine, header=header)
        progress.update(name)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
