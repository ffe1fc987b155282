r"""Write the embedded fetal phantoms or a FeTA 2021 folder as an nnU-Net dataset with label sets.

    python -m experiments.convert_dataset --source=phantoms --output=data/Dataset001_FetalPhantoms
    python -m experiments.convert_dataset --source=phantoms --output=data/Dataset001_FetalPhantoms \
        --protocols=full:4,wm_vent_cereb:6 --shape=64,64,64 --num_test=4
    python -m experiments.convert_dataset --source=feta --input=/data/feta_2.1 \
        --output=data/Dataset002_FeTA --reconstruction=mial

The output is the folder layout read by :mod:`labelset_jax.data.nnunet` (and by
``configs/dataset.py``): ``dataset.json`` with the fetal-brain leaves of docs/theory.md §4 and the
label sets of the partial annotation protocols, ``imagesTr/{case}_0000.nii.gz``,
``labelsTr/{case}.nii.gz`` and, for phantoms, held-out fully segmented cases in ``imagesTs`` /
``labelsTs``. Phantom training cases are annotated under ``--protocols`` (their label maps hold
the protocol's set id where a tissue was not annotated); FeTA labels are mapped onto the
fetal-brain leaves (FeTA has no corpus-callosum label, so that leaf never occurs).

The folder is written atomically (complete or not at all); bad input exits with status 2 and a
one-line error before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from labelset_jax import cli
from labelset_jax import data as data_lib
from labelset_jax.data.nnunet import DatasetError, write_dataset
from labelset_jax.labelsets import FETAL_BRAIN, FETAL_BRAIN_PROTOCOLS, LabelSpace

_SOURCE = flags.DEFINE_enum("source", None, ["phantoms", "feta"], "What to convert.")
_OUTPUT = flags.DEFINE_string("output", None, "The dataset folder to write, e.g. data/Dataset001_FetalPhantoms.")
_INPUT = flags.DEFINE_string("input", None, "FeTA: the FeTA root folder (sub-XXX/anat/...).")
_RECONSTRUCTION = flags.DEFINE_string("reconstruction", "", "FeTA: mial, irtk, or empty for both.")
_PROTOCOLS = flags.DEFINE_string(
    "protocols", "full:4,wm_vent_cereb:2,plus_ecsf:2,plus_ecsf_cc:2",
    "Phantoms: training cases per annotation protocol, protocol:count,...")
_SHAPE = flags.DEFINE_list("shape", ["48", "48", "48"], "Phantoms: volume shape D,H,W (each >= 32).")
_NUM_TEST = flags.DEFINE_integer("num_test", 2, "Phantoms: fully segmented held-out cases (imagesTs/labelsTs).",
                                lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Phantoms: the first training case's seed (test cases follow another range).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output folder.")
flags.mark_flags_as_required(["source", "output"])

#: Test phantoms never share a seed with training phantoms.
TEST_SEED_OFFSET = 100_000


def phantom_space() -> LabelSpace:
    """The fetal-brain space with its protocol sets named after the protocol that writes them."""
    names = {p.set_id: f"unannotated_{p.name}" for p in FETAL_BRAIN_PROTOCOLS.values() if p.set_id is not None}
    return LabelSpace.from_superset_map(FETAL_BRAIN.num_classes, FETAL_BRAIN.to_superset_map(), FETAL_BRAIN.names,
                                        set_names=names)


def parse_protocols(text: str) -> dict[str, int]:
    """``"full:4,wm_vent_cereb:2"`` -> ``{"full": 4, "wm_vent_cereb": 2}``; ValueError naming the entry."""
    counts: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, count = entry.partition(":")
        if name not in FETAL_BRAIN_PROTOCOLS:
            raise ValueError(f"--protocols: unknown protocol {name!r} (known: {sorted(FETAL_BRAIN_PROTOCOLS)})")
        if not count.isdigit():
            raise ValueError(f"--protocols: {entry!r} must be protocol:count with a count >= 0")
        counts[name] = counts.get(name, 0) + int(count)
    if sum(counts.values()) < 1:
        raise ValueError(f"--protocols={text!r} asks for no training case")
    return counts


def parse_shape(values: list[str]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"--shape={','.join(values)} must be three integers") from None
    if len(shape) != 3 or min(shape) < data_lib.MIN_PHANTOM_SIZE:
        raise ValueError(f"--shape={','.join(values)} must be three sizes >= {data_lib.MIN_PHANTOM_SIZE}")
    return shape


def convert_phantoms(output: Path, *, protocols: dict[str, int], shape, num_test: int, seed: int,
                     overwrite: bool) -> Path:
    """Writes a phantom cohort (training under ``protocols``, ``num_test`` full test cases)."""

    def training():  # one case in memory at a time
        first = seed
        for name, count in protocols.items():
            for i in range(count):
                yield from data_lib.phantom_cohort([name], first_seed=first + i, shape=shape, keep_full=False)
            first += count

    def test():
        for i in range(num_test):
            yield from data_lib.phantom_cohort(["full"], first_seed=seed + TEST_SEED_OFFSET + i, shape=shape)

    return write_dataset(
        output, training(), test=test(), space=phantom_space(), channel_names=["T2"], overwrite=overwrite,
        extra={"description": "Procedural fetal brain phantoms (labelset_jax), partially annotated "
                              f"under the protocols {protocols}; imagesTs/labelsTs are fully segmented"},
    )


def convert_feta(output: Path, *, root: str, reconstruction: str, overwrite: bool) -> Path:
    """Writes a FeTA folder with its labels mapped onto the fetal-brain leaves."""
    files = data_lib.feta_cases(root, reconstruction=reconstruction or None)  # checks the layout first
    return write_dataset(
        output, (f.load(space=FETAL_BRAIN) for f in files), space=phantom_space(), channel_names=["T2"], overwrite=overwrite,
        extra={"description": f"FeTA 2021 ({root}), labels mapped onto the fetal-brain leaves"},
    )


def main(argv):
    cli.start(argv)
    output = Path(_OUTPUT.value)
    try:
        if output.exists() and not _OVERWRITE.value:
            raise ValueError(f"{output}: already exists (pass --overwrite to replace it)")
        if output.parent.exists() and not output.parent.is_dir():
            raise ValueError(f"{output.parent}: not a folder")
        if _SOURCE.value == "phantoms":
            path = convert_phantoms(output, protocols=parse_protocols(_PROTOCOLS.value),
                                    shape=parse_shape(_SHAPE.value), num_test=_NUM_TEST.value, seed=_SEED.value,
                                    overwrite=_OVERWRITE.value)
        else:
            if not _INPUT.value:
                raise ValueError("--source=feta needs --input=/path/to/feta")
            path = convert_feta(output, root=_INPUT.value, reconstruction=_RECONSTRUCTION.value,
                                overwrite=_OVERWRITE.value)
    except (DatasetError, ValueError, OSError) as e:
        cli.fail(str(e))
    print(f"wrote {path.parent} ({path})")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
