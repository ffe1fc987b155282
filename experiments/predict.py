r"""Segment NIfTI volumes with a trained workdir.

    python -m experiments.predict --workdir=runs/default --input=scan.nii.gz --output=out/
    python -m experiments.predict --workdir=runs/default --input=scans/ --output=out/ --probabilities

Writes nnU-Net's names: ``<case>.nii.gz`` (int16 leaf labels) and, with ``--probabilities``,
``<case>_probs.nii.gz`` (float32, 4D, one volume per leaf) with ``<case>_probs.json`` naming the
leaf of each volume, with the input's shape, affine, header and sform/qform codes, and ordinary
file permissions; then one line ``wrote N files to <output>``. ``<case>`` is the input's name
without its ending and, for nnU-Net's ``{case}_{channel:04d}`` files, without the channel suffix;
a model trained on several input channels takes a folder of such files (or one of them, which
brings its sibling channels). A single-channel model refuses files of a channel other than
``0000`` (a T2 segmented as if it were the T1). Before the model is loaded, the output folder is
checked (an existing output file is not overwritten without ``--overwrite``), then every input's
header, then every input's voxels one volume at a time; volumes are then predicted one at a time
(memory holds one volume, not the folder). Bad input (missing file, not a 3D NIfTI volume, NaN or
Inf intensities, an output path under a file or in a read-only folder, no workdir, a workdir with
no checkpoint yet) exits with status 2 and a one-line error, before anything is written; an
all-zero image is predicted with a warning. The sliding windows follow the workdir's
``config.eval``; ``--tta``/``--notta`` override its ``tta``. A run on an nnU-Net folder predicts in
its common frame (:mod:`labelset_jax.data.resample`: closest RAS+ axes, ``config.data.spacing``)
and brings the probabilities back onto each input's grid linearly before the argmax. Nothing is
written in the workdir.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from labelset_jax import cli, files, train
from labelset_jax.data import load_nifti, nnunet, resample, save_nifti
from labelset_jax.data.nifti import check_finite, load_header
from labelset_jax.evaluation import EvalSettings, predict_case

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.")
_INPUT = flags.DEFINE_string("input", None, "A NIfTI file or a folder of them.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
_PROBS = flags.DEFINE_bool("probabilities", False, "Also write the probability maps.")
_TTA = flags.DEFINE_bool("tta", None, "Left-right flip test-time augmentation (default: the config's eval.tta).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace output files that already exist.")
flags.mark_flags_as_required(["workdir", "input", "output"])


_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def input_cases(path: Path, channels: int) -> list[tuple[str, list[Path]]]:
    """``[(case name, [one file per input channel])]``: each file its own volume for a
    single-channel model (``{case}_0000`` named ``case``; another channel suffix is refused);
    nnU-Net's ``{case}_{channel:04d}`` files grouped per case otherwise. Headers are checked, no
    voxel is read."""
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
    out = []
    for file in files:
        load_header(file)
        stem = file.name.removesuffix(".gz").removesuffix(".nii")
        match = _CHANNEL.match(stem)
        if match and int(match["channel"]) > 0:
            raise ValueError(f"{file}: the model takes 1 input channel but this is channel {int(match['channel'])} "
                             f"of case {match['case']!r} (nnU-Net's naming); give only the _0000 files")
        out.append((match["case"] if match else stem, [file]))
    names = [name for name, _ in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path}: two inputs would both be written as {repeated[0]}.nii.gz")
    return out


def check_intensities(path: Path) -> None:
    """ValueError naming ``path`` when its intensities hold NaN or Inf; a warning when all zero."""
    image, _, _ = load_nifti(path)
    check_finite(image, path)
    if not image.any():
        logging.warning("%s: the image is all zeros; its segmentation will say little", path)


def outputs(name: str) -> list[str]:
    """The files written for the case ``name``."""
    return [f"{name}.nii.gz"] + ([f"{name}_probs.nii.gz", f"{name}_probs.json"] if _PROBS.value else [])


def main(argv):
    cli.start(argv)
    output = Path(_OUTPUT.value)
    cli.check_output_folder(output)
    try:
        channels = int(train.load_run_config(_WORKDIR.value).model.get("in_channels", 1))
        cases = input_cases(Path(_INPUT.value), channels)  # headers first: nothing loaded
        existing = [output / f for name, _ in cases for f in outputs(name) if (output / f).exists()]
        if existing and not _OVERWRITE.value:
            raise ValueError(f"{existing[0]}: already exists ({len(existing)} output file(s) would be replaced); "
                             f"choose another --output or pass --overwrite")
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
    order = {"channels": list(model.label_space.names),
             "note": "volume k of the 4th axis is the probability of leaf channels[k]"}
    spacing = model.config.data.get("spacing")  # a run on an nnU-Net folder: its common spacing
    for name, paths in cases:
        volumes = [load_nifti(path)[0] for path in paths]
        image = volumes[0] if channels == 1 else np.stack(volumes, axis=-1)
        shape, affine, header = load_header(paths[0])
        frame = resample.Frame.of(shape, affine, target=spacing) if spacing else None
        prediction = predict_case(model, image if frame is None else frame.image(image), settings,
                                  progress=progress.windows(name))
        probs = prediction.probs if frame is None else frame.restore(prediction.probs)  # linear, then argmax
        labels = prediction.labels if frame is None else np.argmax(probs, axis=-1)
        save_nifti(output / f"{name}.nii.gz", labels.astype(np.int16), affine, header=header)
        if _PROBS.value:
            save_nifti(output / f"{name}_probs.nii.gz", probs, affine, header=header)
            files.write_json(output / f"{name}_probs.json", order)
        progress.update(name)
    print(f"wrote {sum(len(outputs(name)) for name, _ in cases)} files to {output}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
