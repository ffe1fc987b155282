"""From a ``config.data`` to training and validation cases, and to a loader.

Data sources (``config.data.name``):

* ``"phantoms"``: embedded fetal brain phantoms (SPEC §4), a cohort annotated under the protocols
  ``config.data.protocols = {protocol: count}``; validation cases are fully segmented.
* ``"mni152"``: the MNI152 4-class tissue task with labels sampled from the tissue probabilities.
* ``"synthetic"``: binary tasks with known label uncertainty (SPEC §5, experiment 1),
  ``config.data.generator`` in ``boundary_noise, ambiguous_blob, independent_blobs, noise_free``.
* ``"feta"``: a FeTA 2021 folder ``config.data.root``.
* ``"manifest"``: a CSV manifest ``config.data.manifest`` (``id,image,label,protocol``).

``config.data.label_transform`` implements the baselines of the partial-supervision study:
``"none"``; ``"naive"`` (label-set voxels become background); ``"full_only"`` (partially annotated
training cases are dropped).

Images are normalised by :func:`normalize_image`, the same function at training and inference:
z-score inside an intensity mask, so no label is needed at test time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from labelset_jax import data as data_lib
from labelset_jax.labelsets import FETAL_BRAIN, LabelSpace

SYNTHETIC_SPACE = LabelSpace.leaves(["background", "object"])
VAL_SEED_OFFSET = 100_000  # validation cases never share a seed with training cases


@dataclasses.dataclass
class EvalCase:
    """A case for evaluation: normalised image, full labels, spacing, and optional extras."""

    id: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    protocol: str = "full"
    extras: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Datasets:
    train: list[EvalCase]
    val: list[EvalCase]
    label_space: LabelSpace


def normalize_image(image: np.ndarray, *, relative_threshold: float = 0.1) -> np.ndarray:
    """Z-score inside the mask ``image > relative_threshold · p99(image)`` (zero outside).

    The mask needs no labels, so training and inference normalise identically.
    """
    image = np.asarray(image, np.float32)
    threshold = relative_threshold * float(np.percentile(image, 99))
    return data_lib.zscore(image, data_lib.brain_mask(image=image, threshold=threshold))


def label_space_for(data: ml_collections.ConfigDict) -> LabelSpace:
    """The label space of a data config (without building the data)."""
    name = data.name
    if name in ("phantoms", "feta", "manifest"):
        return FETAL_BRAIN
    if name == "mni152":
        return data_lib.MNI_TISSUE
    if name == "synthetic":
        return SYNTHETIC_SPACE
    raise ValueError(f"config.data.name must be phantoms, mni152, synthetic, feta or manifest, got {name!r}")


def _apply_label_transform(cases: list[EvalCase], transform: str, space: LabelSpace) -> list[EvalCase]:
    if transform == "none":
        return cases
    if transform == "naive":
        return [dataclasses.replace(c, labels=np.where(c.labels >= space.num_classes, 0, c.labels).astype(np.int32))
                for c in cases]
    if transform == "full_only":
        kept = [c for c in cases if c.protocol == "full"]
        if not kept:
            raise ValueError("config.data.label_transform='full_only' but no training case is fully segmented")
        return kept
    raise ValueError(f"config.data.label_transform must be none, naive or full_only, got {transform!r}")


def _from_case(case: Any, *, full: bool = False) -> EvalCase:
    labels = case.full_labels if full and getattr(case, "full_labels", None) is not None else case.labels
    return EvalCase(case.id, normalize_image(case.image), np.asarray(labels, np.int32), tuple(case.spacing),
                    "full" if full else case.protocol)


def _synthetic_case(data, seed: int) -> EvalCase:
    generators = {
        "boundary_noise": data_lib.boundary_noise_case,
        "ambiguous_blob": data_lib.ambiguous_blob_case,
        "independent_blobs": data_lib.independent_blobs_case,
        "noise_free": data_lib.noise_free_case,
    }
    if data.generator not in generators:
        raise ValueError(f"config.data.generator must be one of {sorted(generators)}, got {data.generator!r}")
    kwargs = dict(data.get("generator_options", {}))
    case = generators[data.generator](seed, shape=tuple(data.shape), **kwargs)
    return EvalCase(f"synthetic_{seed:05d}", normalize_image(case.image), case.labels, tuple(case.spacing),
                    extras={"q": case.q})


def create_datasets(data: ml_collections.ConfigDict, *, seed: int) -> Datasets:
    """Builds the training and validation cases of ``config.data``.

    Raises:
      ValueError: an unknown source, generator or transform, or a problem with the files (the
        message names the file).
    """
    space = label_space_for(data)
    name = data.name
    first = 1000 * int(seed)
    if name == "phantoms":
        cohort = data_lib.phantom_cohort(dict(data.protocols), first_seed=first, shape=tuple(data.shape))
        val = data_lib.phantom_cohort({"full": data.num_val}, first_seed=first + VAL_SEED_OFFSET, shape=tuple(data.shape))
        train_cases = [_from_case(c) for c in cohort]
        val_cases = [_from_case(c, full=True) for c in val]
    elif name == "mni152":
        kwargs = dict(voxel_size=data.get("voxel_size", 2))
        if data.get("shape"):
            kwargs["shape"] = tuple(data.shape)
        train_cases = [_mni(c, i) for i, c in enumerate(data_lib.mni_cohort(data.num_train, first_seed=first, **kwargs))]
        val_cases = [_mni(c, i) for i, c in enumerate(
            data_lib.mni_cohort(data.num_val, first_seed=first + VAL_SEED_OFFSET, **kwargs))]
    elif name == "synthetic":
        train_cases = [_synthetic_case(data, first + i) for i in range(data.num_train)]
        val_cases = [_synthetic_case(data, first + VAL_SEED_OFFSET + i) for i in range(data.num_val)]
    elif name in ("feta", "manifest"):
        if name == "feta":
            if not data.get("root"):
                raise ValueError("config.data.root must name the FeTA folder (configs/feta.py:/path/to/feta)")
            files = data_lib.feta_cases(data.root, reconstruction=data.get("reconstruction") or None)
        else:
            if not data.get("manifest"):
                raise ValueError("config.data.manifest must name a CSV manifest")
            files = data_lib.read_manifest(data.manifest)
        cases = [_from_case(c) for c in data_lib.load_cases(files)]
        num_val = int(data.num_val)
        if len(cases) <= num_val:
            raise ValueError(f"{len(cases)} cases found, need more than config.data.num_val={num_val}")
        order = np.random.default_rng(seed).permutation(len(cases))
        val_cases = [cases[i] for i in order[:num_val] if cases[i].protocol == "full"]
        train_cases = [cases[i] for i in order[num_val:]]
    else:
        raise ValueError(f"unknown config.data.name {name!r}")
    train_cases = _apply_label_transform(train_cases, data.get("label_transform", "none"), space)
    return Datasets(train=train_cases, val=val_cases, label_space=space)


def _mni(case, i: int) -> EvalCase:
    return EvalCase(f"mni_{i:04d}", normalize_image(case.image), np.asarray(case.labels, np.int32),
                    tuple(case.spacing), extras={"probs": case.probs})


def create_loader(config: ml_collections.ConfigDict, cases: Sequence[EvalCase]) -> data_lib.Loader:
    """The training loader: this process's slice of each global batch, prefetched."""
    return data_lib.Loader(
        cases,
        batch_size=config.batch_size,
        patch_size=tuple(config.patch_size),
        seed=config.seed,
        augment=config.data.get("augment", True),
        foreground_prob=config.data.get("foreground_prob", 0.33),
        prefetch=config.data.get("prefetch", 2),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        normalize=False,  # normalize_image already ran
    )
