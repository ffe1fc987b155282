"""From a ``config.data`` to training and validation cases, and to a loader.

Data sources (``config.data.name``), each giving :class:`~labelset_jax.data.Case` records:

* ``"phantoms"``: embedded fetal brain phantoms (docs/theory.md §4), a cohort annotated under the
  protocols ``config.data.protocols = {protocol: count}``; validation cases are fully segmented.
* ``"mni152"``: the MNI152 4-class tissue task with labels sampled from the tissue probabilities
  (needs the ``mni`` extra).
* ``"synthetic"``: binary tasks with known label uncertainty (docs/theory.md §5, experiment 1),
  ``config.data.generator`` in ``boundary_noise, ambiguous_blob, independent_blobs, noise_free``.
* ``"feta"``: a FeTA 2021 folder ``config.data.root``.
* ``"manifest"``: a CSV manifest ``config.data.manifest`` (``id,image,label,protocol``).
* ``"nnunet"``: an nnU-Net raw dataset folder ``config.data.path``, with label sets
  (:mod:`labelset_jax.data.nnunet`); the label space comes from its ``dataset.json``, the
  validation cases from its split file (fold ``config.data.fold``) or ``config.data.num_val``
  fully annotated cases drawn with ``config.data.split_seed``; ``config.data.sources`` (a merged
  dataset's source names) keeps only those sources' training cases. Every case is reoriented to the
  closest RAS+ axis order and resampled to ``config.data.spacing`` (default: the dataset's median
  spacing; :mod:`labelset_jax.data.resample`).

The label space comes from the data: the fetal-brain space of docs/theory.md §4 for the phantoms
and FeTA (its labels are mapped onto it), the ``label_space.json`` next to a manifest, an nnU-Net
folder's ``dataset.json``.

``config.data.label_transform`` implements the baselines of the partial-supervision study:
``"none"``; ``"naive"`` (label-set voxels become background); ``"full_only"`` (partially annotated
training cases are dropped).

The cases keep their raw images: the loader and the evaluation normalise them with the same
function, :func:`~labelset_jax.data.normalize_image`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from labelset_jax import data as data_lib
from labelset_jax.data import Case, nnunet, resample, transforms
from labelset_jax.labelsets import FETAL_BRAIN, LabelSpace

VAL_SEED_OFFSET = 100_000  # validation cases never share a seed with training cases

#: The case ids a run trained and validated on, in its workdir (``{"train": [...], "val": [...]}``).
SPLIT_FILE = "split.json"


@dataclasses.dataclass
class Datasets:
    """The training and validation cases, their label space, and for an nnU-Net folder the common
    voxel spacing they were brought to and how many cases were reoriented or resampled."""

    train: list[Case]
    val: list[Case]
    label_space: LabelSpace
    spacing: tuple[float, float, float] | None = None
    resampled: int = 0


def label_space_for(data: ml_collections.ConfigDict) -> LabelSpace:
    """The label space of a data config (without building the data; for ``"nnunet"``, from the
    folder's ``dataset.json``)."""
    name = data.name
    if name == "nnunet":
        return nnunet.read_label_space(_nnunet_path(data))
    if name in ("phantoms", "feta"):  # the fetal-brain phantoms, and FeTA mapped onto their leaves
        return FETAL_BRAIN
    if name == "manifest":
        if not data.get("manifest"):
            raise ValueError("config.data.manifest must name a CSV manifest")
        return data_lib.read_label_space(data.manifest)
    if name == "mni152":
        return data_lib.MNI_TISSUE
    if name == "synthetic":
        return data_lib.SYNTHETIC_SPACE
    raise ValueError(f"config.data.name must be phantoms, mni152, synthetic, feta, manifest or nnunet, got {name!r}")


def _nnunet_path(data: ml_collections.ConfigDict) -> str:
    if not data.get("path"):
        raise ValueError("config.data.path must name the dataset folder (configs/dataset.py:/path/to/DatasetXXX_Name)")
    return data.path


def target_spacing(data: ml_collections.ConfigDict, dataset: nnunet.NnunetDataset) -> tuple[float, float, float]:
    """``config.data.spacing``, else the median spacing of the dataset's training cases (in the
    canonical axis order, from the headers)."""
    if data.get("spacing"):
        spacing = tuple(float(v) for v in data.spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"config.data.spacing must be 3 positive sizes in mm, got {tuple(data.spacing)}")
        return spacing
    return resample.median_spacing([resample.Frame.of(c.shape, c.affine, target=None).spacing
                                    for c in dataset.training])


def to_common_frame(case: Case, spacing: Sequence[float]) -> tuple[Case, bool]:
    """``case`` reoriented to the closest RAS+ axis order and resampled to ``spacing``
    (:class:`~labelset_jax.data.resample.Frame`), and whether anything changed."""
    frame = resample.Frame.of(case.labels.shape, case.affine, target=spacing)
    if not (frame.needs_resampling or frame.needs_reorienting):
        return case, False
    return dataclasses.replace(case, image=frame.image(case.image), labels=frame.labels(case.labels),
                               spacing=frame.spacing, affine=frame.affine), True


def _nnunet_cases(data: ml_collections.ConfigDict, *, train: bool = True, val_ids: Sequence[str] | None = None
                  ) -> tuple[list[Case], list[Case], tuple, int]:
    """The training (unless ``train=False``) and validation cases of an nnU-Net dataset folder
    (every file checked first), in the common frame; the target spacing and the number of cases
    changed to reach it. With ``val_ids`` (and ``train=False``), the validation cases are those,
    and only their files are read."""
    load_train = train
    if val_ids is not None and not train and data.get("spacing"):
        dataset = nnunet.read_dataset(_nnunet_path(data), training_ids=val_ids, with_test=False)
        by_id = {c.id: c for c in dataset.training}
        train, val = [], [by_id[i] for i in val_ids]
    else:
        dataset = nnunet.read_dataset(_nnunet_path(data), keep_labels=train)  # training loads every map: read each once
        train, val = dataset.split(fold=int(data.get("fold", 0)), num_val=int(data.get("num_val", -1)),
                                   seed=int(data.get("split_seed", 0)))
    spacing = target_spacing(data, dataset)
    sources = list(data.get("sources") or [])  # train on these sources of a merged dataset only
    if sources and load_train:
        known = sorted({c.source for c in dataset.training} - {""})
        unknown = [s for s in sources if s not in known]
        if unknown:
            raise ValueError(f"config.data.sources: {dataset.root} has no source {unknown[0]!r} (sources: {known})")
        train = [c for c in train if c.source in sources]
    changed = 0
    out = []
    for group in (train if load_train else [], val):
        cases = []
        for c in group:
            case, moved = to_common_frame(dataset.load_case(c), spacing)
            cases.append(case)
            changed += moved
        out.append(cases)
    return out[0], out[1], spacing, changed


def split_record(datasets: Datasets) -> dict[str, list[str]]:
    """What a run writes to :data:`SPLIT_FILE`: the ids of its training and validation cases."""
    return {"train": [c.id for c in datasets.train], "val": [c.id for c in datasets.val]}


def run_validation_cases(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[Case]:
    """The validation cases of a trained run: the ones its :data:`SPLIT_FILE` records (of an
    nnU-Net folder or a manifest, only their files are read), else the draw of
    :func:`create_datasets` (a run saved before it recorded its split)."""
    path = Path(workdir) / SPLIT_FILE
    val_ids = json.loads(path.read_text())["val"] if path.exists() else None
    return create_datasets(config.data, seed=config.seed, train=False, val_ids=val_ids).val


def create_test_cases(data: ml_collections.ConfigDict) -> list[Case]:
    """The labelled held-out cases of an nnU-Net dataset: ``imagesTs`` images that have a
    ``labelsTs`` file (checked, then loaded).

    Raises:
      ValueError: the config's data are not an nnU-Net dataset, or it has no labelled test case.
    """
    if data.get("name") != "nnunet":
        raise ValueError(f"held-out test cases come from an nnU-Net dataset's imagesTs/labelsTs; this run's data "
                         f"are {data.get('name')!r} (pass --manifest instead)")
    # a run's config holds its spacing: then no training case need be read
    dataset = nnunet.read_dataset(_nnunet_path(data), training_ids=() if data.get("spacing") else None)
    labelled = [case for case in dataset.test if case.label_path is not None]
    if not labelled:
        raise ValueError(f"{dataset.root}: no labelled test case (imagesTs/ images with labelsTs/ label files)")
    spacing = target_spacing(data, dataset)
    return [to_common_frame(dataset.load_case(case), spacing)[0] for case in labelled]


def _apply_label_transform(cases: list[Case], transform: str, space: LabelSpace) -> list[Case]:
    if transform == "none":
        return cases
    if transform == "naive":
        return [dataclasses.replace(c, labels=np.where(c.labels >= space.num_classes, 0, c.labels).astype(np.int32))
                for c in cases]
    if transform == "full_only":
        kept = [c for c in cases if c.is_full]
        if not kept:
            raise ValueError("config.data.label_transform='full_only' but no training case is fully segmented")
        return kept
    raise ValueError(f"config.data.label_transform must be none, naive or full_only, got {transform!r}")


_GENERATORS = {
    "boundary_noise": data_lib.boundary_noise_case,
    "ambiguous_blob": data_lib.ambiguous_blob_case,
    "independent_blobs": data_lib.independent_blobs_case,
    "noise_free": data_lib.noise_free_case,
}


def _synthetic_cases(data: ml_collections.ConfigDict, first_seed: int, count: int) -> list[Case]:
    if data.generator not in _GENERATORS:
        raise ValueError(f"config.data.generator must be one of {sorted(_GENERATORS)}, got {data.generator!r}")
    kwargs = dict(data.get("generator_options", {}))
    return [_GENERATORS[data.generator](first_seed + i, shape=tuple(data.shape), **kwargs) for i in range(count)]


def create_datasets(data: ml_collections.ConfigDict, *, seed: int, train: bool = True,
                    val_ids: Sequence[str] | None = None) -> Datasets:
    """Builds the training and validation cases of ``config.data``.

    With ``train=False`` only the validation cases are built (``Datasets.train`` is empty): what
    evaluation and the run report score, without reading or generating the training set. With
    ``val_ids`` too (the validation cases a run recorded, :func:`run_validation_cases`), an nnU-Net
    folder or a manifest reads only those cases' files.

    The generated cases (phantoms, MNI, synthetic) are a function of ``config.data.seed`` when it
    is set (a data seed, so that runs with different ``seed`` share their data), else of ``seed``.
    For phantoms, ``config.data.abnormal_fraction`` (default 0) makes that fraction of each
    partially annotated protocol's cases abnormal (rounded half up; the fully segmented cases stay
    normal; :func:`~labelset_jax.data.phantom_cohort`), and ``config.data.val_abnormal`` (default 0)
    makes that many of the ``num_val`` fully segmented validation phantoms abnormal.

    Raises:
      ValueError: an unknown source, generator or transform, or a problem with the files (the
        message names the file).
    """
    space = label_space_for(data)
    name = data.name
    data_seed = data.get("seed")
    first = 1000 * int(seed if data_seed is None else data_seed)
    if name == "phantoms":
        shape = tuple(data.shape)
        fraction = float(data.get("abnormal_fraction") or 0.0)
        abnormal = {name: int(np.floor(fraction * int(n) + 0.5)) for name, n in dict(data.protocols).items()
                    if name != "full"}
        train_cases = data_lib.phantom_cohort(dict(data.protocols), first_seed=first, shape=shape,
                                              abnormal=abnormal).cases if train else []
        val_first = first + VAL_SEED_OFFSET
        val_abnormal = int(data.get("val_abnormal") or 0)  # the last ones of the validation phantoms
        if not 0 <= val_abnormal <= int(data.num_val):
            raise ValueError(f"config.data.val_abnormal must be in [0, num_val={data.num_val}], got {val_abnormal}")
        val_cases = data_lib.phantom_cohort({"full": data.num_val}, first_seed=val_first, shape=shape,
                                            abnormal={"full": val_abnormal}).cases
    elif name == "mni152":
        kwargs = dict(voxel_size=data.get("voxel_size", 2))
        if data.get("shape"):
            kwargs["shape"] = tuple(data.shape)
        train_cases = data_lib.mni_cohort(data.num_train, first_seed=first, **kwargs) if train else []
        val_cases = data_lib.mni_cohort(data.num_val, first_seed=first + VAL_SEED_OFFSET, **kwargs)
    elif name == "synthetic":
        train_cases = _synthetic_cases(data, first, data.num_train) if train else []
        val_cases = _synthetic_cases(data, first + VAL_SEED_OFFSET, data.num_val)
    elif name == "nnunet":
        train_cases, val_cases, spacing, resampled = _nnunet_cases(data, train=train, val_ids=val_ids)
    elif name in ("feta", "manifest"):
        if name == "feta":
            if not data.get("root"):
                raise ValueError("config.data.root must name the FeTA folder (configs/feta.py:/path/to/feta)")
            files = data_lib.feta_cases(data.root, reconstruction=data.get("reconstruction") or None)
        else:
            if not data.get("manifest"):
                raise ValueError("config.data.manifest must name a CSV manifest")
            files = data_lib.read_manifest(data.manifest)
        if val_ids is not None and not train:  # the run's recorded validation cases, and only they are read
            by_id = {f.id: f for f in files}
            missing = [i for i in val_ids if i not in by_id]
            if missing:
                raise ValueError(f"{data.get('manifest') or data.get('root')}: no case {missing[0]!r} "
                                 "(a validation case the run recorded)")
            train_cases, val_cases = [], data_lib.load_cases([by_id[i] for i in val_ids], space=space)
        else:
            num_val = int(data.num_val)
            if len(files) <= num_val:
                raise ValueError(f"{len(files)} cases found, need more than config.data.num_val={num_val}")
            full = [f.protocol == "full" for f in files]
            if 0 < sum(full) < num_val:
                raise ValueError(f"{num_val} validation case(s) requested but only {sum(full)} case(s) are fully "
                                 f"segmented; lower config.data.num_val")
            chosen = data_lib.choose_validation([f.id for f in files], full, num_val, seed=seed)
            val_cases = data_lib.load_cases([f for f in files if f.id in chosen], space=space) if chosen else []
            train_cases = data_lib.load_cases([f for f in files if f.id not in chosen], space=space) if train else []
    else:
        raise ValueError(f"unknown config.data.name {name!r}")
    if train:
        train_cases = _apply_label_transform(list(train_cases), data.get("label_transform", "none"), space)
    if name == "nnunet":
        return Datasets(train=train_cases, val=list(val_cases), label_space=space, spacing=spacing,
                        resampled=resampled)
    return Datasets(train=train_cases, val=list(val_cases), label_space=space)


def intensity_statistics(data: ml_collections.ConfigDict, cases: Sequence[Case]) -> list[dict | None] | None:
    """Per input channel, the dataset statistics of a channel named ``CT`` in an nnU-Net dataset's
    ``channel_names`` (:func:`~labelset_jax.data.transforms.ct_statistics`, as nnU-Net's CT
    normalisation), ``None`` for the other channels (per-image z-score); ``None`` when no channel
    is CT. Saved with the run as ``config.data.intensity`` and used by evaluation and prediction."""
    if data.get("name") != "nnunet" or not cases:
        return None
    channels = nnunet.read_channel_names(_nnunet_path(data))
    if not any(name.upper() == "CT" for name in channels):
        return None
    out = []
    for k, name in enumerate(channels):
        if name.upper() != "CT":
            out.append(None)
            continue
        images = (c.image if c.image.ndim == 3 else c.image[..., k] for c in cases)
        out.append(transforms.ct_statistics(images, (c.labels for c in cases)))
    return out


def create_loader(config: ml_collections.ConfigDict, cases: Sequence[Case], space: LabelSpace) -> data_lib.Loader:
    """The training loader: this process's slice of each global batch, prefetched; foreground patches
    are centred on the ``space``'s foreground ids (the labels were checked when the cases were read)."""
    return data_lib.Loader(
        cases,
        foreground_ids=space.foreground_ids,
        intensity=config.data.get("intensity"),
        batch_size=config.batch_size,
        patch_size=tuple(config.patch_size),
        seed=config.seed,
        augment=config.data.get("augment", True),
        foreground_prob=config.data.get("foreground_prob", 0.33),
        prefetch=config.data.get("prefetch", 2),
        full_fraction=config.data.get("full_fraction"),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
