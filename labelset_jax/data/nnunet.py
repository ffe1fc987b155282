"""The nnU-Net v2 raw dataset format, extended with label sets: the library's one dataset reader.

A dataset is a folder ``DatasetXXX_Name/`` laid out as nnU-Net v2 expects::

    DatasetXXX_Name/
      dataset.json
      imagesTr/{case}_{channel:04d}{file_ending}   one file per input channel
      labelsTr/{case}{file_ending}                 label ids (leaves, label sets, ignore)
      imagesTs/{case}_{channel:04d}{file_ending}   optional, unlabelled
      labelsTs/{case}{file_ending}                 optional, labels of the test images
      splits_final.json or splits.json             optional, [{"train": [...], "val": [...]}, ...]

``dataset.json`` holds nnU-Net's keys ``channel_names`` (``{"0": "T2"}``), ``labels`` (name ->
id; a list value is an nnU-Net *region*; the label named ``ignore`` is the ignore label, the set of
all leaves, docs/theory.md §1), ``numTraining`` and ``file_ending``, plus one key nnU-Net does not
read, ``label_sets``: ``{"<name>": {"id": <value written in the label files>, "members": [<leaf
ids or names>]}}``. A label file may then hold leaf ids, label-set ids and the ignore id.

>>> space = label_space_from_json({
...     "labels": {"background": 0, "csf": 1, "gm": 2, "wm": 3, "ignore": 5},
...     "label_sets": {"not_wm": {"id": 4, "members": [1, 2]}}})
>>> space
LabelSpace(C=4, names=['background', 'csf', 'gm', 'wm'], sets={4: [1, 2], 5: [0, 1, 2, 3]}, ignore_id=5)
>>> label_space_from_json(space.to_json()) == space
True

**What a case annotates.** A case whose label map uses a label set ``A`` (other than the ignore
label or another set of every leaf) did not delineate the leaves of ``A``: its *annotated leaves*
are the leaves in no such set (:attr:`DatasetCase.annotated`; the one rule of every data source,
:meth:`~labelset_jax.labelsets.LabelSpace.annotation`), and it is scored only on those. The
ignore label marks voxels whose label is unknown; it does not make a leaf unannotated. A case with
neither a label set nor the ignore label is *fully annotated*.

**Validation before any work.** :func:`read_dataset` checks ``dataset.json``, that every declared
case has all its channels and its label file, that the channels and the label map agree in shape
and affine (from the NIfTI headers, without reading voxels) and that every label value is a leaf, a
set id or the ignore id (reading the label maps once). Every problem raises :class:`DatasetError`
with one line naming the file, field or value.

**Splits.** :meth:`NnunetDataset.split` takes fold ``k`` of ``splits_final.json`` (or
``splits.json``) when the folder has one, as nnU-Net does; otherwise it draws ``num_val``
validation cases from the fully annotated cases with a seeded generator.

**Use.** :meth:`NnunetDataset.load_case` gives a labelled case as the library's
:class:`~labelset_jax.data.Case` (``Case.annotated`` holds its annotated leaves, which the
evaluation honours); :meth:`NnunetDataset.load` gives the arrays, channels last.
:func:`read_label_space` reads the label space alone, :meth:`LabelSpace.to_json` writes one in
``dataset.json``'s notation (a training run saves its space so), and :func:`write_dataset` writes
cases in this format, atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelset_jax import files
from labelset_jax.data.case import Case, choose_validation
from labelset_jax.data.nifti import check_finite, load_header, load_labels, load_nifti, save_nifti, spacing_of
from labelset_jax.labelsets import LabelSpace, validate_labels

__all__ = [
    "DatasetError",
    "DatasetCase",
    "NnunetDataset",
    "read_dataset",
    "read_label_space",
    "read_channel_names",
    "channel_cases",
    "read_json",
    "write_dataset",
    "label_space_from_json",
    "SPLITS_FILES",
]

IGNORE_NAME = "ignore"
#: The split files looked for in the dataset folder, in this order (nnU-Net's names).
SPLITS_FILES = ("splits_final.json", "splits.json")
_FILE_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class DatasetError(ValueError):
    """A problem with a dataset folder; the message is one line naming the file, field or value."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------- label space
def label_space_from_json(spec: Mapping[str, Any], *, where: str = "dataset.json") -> LabelSpace:
    """:meth:`LabelSpace.from_json` of a parsed ``dataset.json`` (or ``label_space.json``), with a
    problem raised as a :class:`DatasetError` naming ``where`` (e.g. the file path)."""
    try:
        return LabelSpace.from_json(spec)
    except ValueError as e:
        raise DatasetError(f"{where}: {e}") from e


# ---------------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class DatasetCase:
    """One case of a dataset folder, checked but not loaded.

    Attributes:
      id: the case identifier (the file name without channel suffix and ending).
      image_paths: one file per input channel, in channel order.
      label_path: the label file, or ``None`` for an unlabelled test image.
      shape: the volume shape ``(D, H, W)``.
      affine: the ``[4, 4]`` voxel-to-world matrix of the first channel.
      label_values: the label ids present in the label map (empty without labels).
      annotated: the leaves the case is scored on (see the module docstring).
      has_ignore: the label map holds the ignore label.
      is_full: labelled, with neither a label set (sets of every leaf aside) nor the ignore label.
      source: the source dataset of a merged dataset's case (``dataset.json``'s ``case_sources``,
        written by :func:`labelset_jax.data.merge.merge_datasets`), else ``""``.
      labels: the label map the check read, kept (in its smallest integer type) when
        :func:`read_dataset` was asked to, so that loading the case does not read it again.
    """

    id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    shape: tuple[int, int, int]
    affine: np.ndarray = dataclasses.field(repr=False)
    label_values: tuple[int, ...] = ()
    annotated: tuple[int, ...] = ()
    has_ignore: bool = False
    is_full: bool = False
    source: str = ""
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)


@dataclasses.dataclass(frozen=True)
class NnunetDataset:
    """A checked dataset folder (see the module docstring). Nothing but label maps has been read.

    Attributes:
      root: the dataset folder.
      name: ``dataset.json``'s ``name`` (default the folder name).
      space: the label space.
      channel_names: the input channel names, in channel order.
      file_ending: e.g. ``".nii.gz"``.
      training: the cases of ``imagesTr``/``labelsTr``, sorted by id.
      test: the images of ``imagesTs`` (labelled when ``labelsTs`` has their label file).
      splits: the folds of the split file, or ``None``.
      splits_path: that file, or ``None``.
    """

    root: Path
    name: str
    space: LabelSpace
    channel_names: tuple[str, ...]
    file_ending: str
    training: tuple[DatasetCase, ...]
    test: tuple[DatasetCase, ...] = ()
    splits: tuple[dict[str, tuple[str, ...]], ...] | None = None
    splits_path: Path | None = None

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def case(self, case_id: str) -> DatasetCase:
        for case in self.training + self.test:
            if case.id == case_id:
                return case
        raise DatasetError(f"{self.root}: no case {case_id!r}")

    def split(self, *, fold: int = 0, num_val: int | None = None, seed: int = 0
              ) -> tuple[list[DatasetCase], list[DatasetCase]]:
        """``(train, val)`` training cases.

        With a split file, fold ``fold`` of it. Otherwise ``num_val`` fully annotated cases drawn
        with ``numpy.random.default_rng(seed)`` are the validation cases and every other case
        trains (default ``num_val``: a fifth of the fully annotated cases, at least one). A dataset
        with no fully annotated case (a merged one, say) validates on partially annotated cases
        drawn in turn from each source (``case_sources``); each is scored on the leaves it annotates.

        Raises:
          DatasetError: a fold out of range, no fully annotated case to validate on, or a
            ``num_val`` that leaves no training case.
        """
        by_id = {c.id: c for c in self.training}
        if self.splits is not None:
            if not 0 <= int(fold) < len(self.splits):
                raise DatasetError(
                    f"{self.splits_path}: fold {fold} requested, the file has folds 0..{len(self.splits) - 1}")
            entry = self.splits[int(fold)]
            return [by_id[i] for i in entry["train"]], [by_id[i] for i in entry["val"]]
        full = [c for c in self.training if c.is_full]
        # A merged dataset may have no fully annotated case: then every case may validate (each is
        # scored on the leaves it annotates), drawn in turn from each source.
        pool = full or list(self.training)
        if num_val is None or int(num_val) < 0:
            num_val = max(1, round(len(pool) / 5))
        num_val = int(num_val)
        if num_val > len(pool):
            raise DatasetError(
                f"{self.root}: {num_val} validation case(s) requested but only {len(full)} case(s) are fully "
                f"annotated (no label set, no ignore label); lower num_val or add a {SPLITS_FILES[-1]}"
            )
        if num_val >= len(self.training):
            raise DatasetError(
                f"{self.root}: num_val={num_val} leaves no training case ({len(self.training)} in total)")
        val_ids = choose_validation([c.id for c in self.training], [c.is_full for c in self.training], num_val,
                                    seed=seed, sources=[c.source for c in self.training])
        return ([c for c in self.training if c.id not in val_ids], [c for c in self.training if c.id in val_ids])

    def load(self, case: DatasetCase | str
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[float, float, float]]:
        """Reads a case's voxels.

        Returns:
          ``(image, labels, affine, spacing)``: float32 ``[D, H, W, num_channels]`` intensities
          (channels last), int32 ``[D, H, W]`` label ids (``None`` without a label file), the
          ``[4, 4]`` affine and the voxel size in mm.

        Raises:
          DatasetError: an unreadable file or NaN/Inf intensities (naming the file).
        """
        if isinstance(case, str):
            case = self.case(case)
        channels = []
        for path in case.image_paths:
            try:
                image, _, _ = load_nifti(path)
                check_finite(image, path)
            except ValueError as e:
                raise DatasetError(str(e)) from e
            channels.append(image)
        labels = None
        if case.labels is not None:  # read and checked by read_dataset(keep_labels=True)
            labels = case.labels.astype(np.int32)
        elif case.label_path is not None:
            try:
                labels, _, _ = load_labels(case.label_path, space=self.space)
            except ValueError as e:
                raise DatasetError(str(e)) from e
        return np.stack(channels, axis=-1), labels, case.affine, case.spacing


    def protocol_name(self, case: DatasetCase) -> str:
        """A name for what ``case`` annotates (:meth:`~labelset_jax.labelsets.LabelSpace.annotation_name`),
        e.g. ``"full"``, ``"background+wm"`` or ``"all+ignore"``."""
        return self.space.annotation_name(case.annotated, has_ignore=case.has_ignore)

    def load_case(self, case: DatasetCase | str) -> Case:
        """Loads a labelled case as the library's :class:`~labelset_jax.data.Case` (image
        ``[D, H, W]`` for one channel, ``[D, H, W, K]`` for ``K``).

        ``protocol`` is :meth:`protocol_name`; ``annotated`` holds the leaves the case is scored on
        (``None`` when fully annotated); ``metadata["source"]`` a merged dataset's source.

        Raises:
          DatasetError: the case has no label file, or any error of :meth:`load`.
        """
        if isinstance(case, str):
            case = self.case(case)
        if case.label_path is None:
            raise DatasetError(f"{case.image_paths[0]}: case {case.id!r} has no label file")
        image, labels, affine, spacing = self.load(case)
        return Case(case.id, image[..., 0] if self.num_channels == 1 else image, labels, spacing,
                    self.protocol_name(case), affine, metadata={"source": case.source} if case.source else {},
                    annotated=None if case.is_full else case.annotated)


# ---------------------------------------------------------------------------------- reading
def read_json(path: str | os.PathLike) -> Any:
    """Parses a JSON file; :class:`DatasetError` naming the file (and the line) when it cannot."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e
    def unique_keys(pairs):
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:  # json keeps the last one silently
            raise DatasetError(f"{path}: the key {repeated[0]!r} appears twice in one object")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e


def _channel_names(spec: Mapping[str, Any], where: Path) -> tuple[str, ...]:
    names = spec.get("channel_names", spec.get("modality"))  # nnU-Net v1 called it "modality"
    if not isinstance(names, Mapping) or not names:
        raise DatasetError(f"{where}: needs a 'channel_names' object such as {{\"0\": \"T1\"}}, got {names!r}")
    keys = sorted(str(k) for k in names)
    expected = [str(i) for i in range(len(names))]
    if sorted(keys, key=lambda k: (len(k), k)) != expected:
        raise DatasetError(f"{where}: channel_names keys must be \"0\"..\"{len(names) - 1}\", got {list(names)}")
    return tuple(str(names[str(i)]) for i in range(len(names)))


def _header(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine from the NIfTI header (no voxel data read)."""
    try:
        shape, affine, _ = load_header(path)
    except ValueError as e:
        raise DatasetError(str(e)) from e
    return shape, affine


def _list_cases(folder: Path, ending: str, *, channels: bool) -> dict[str, dict[int, Path]] | dict[str, Path]:
    out: dict = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending) or not path.is_file():
            continue
        stem = path.name[: -len(ending)]
        if channels:
            match = _CHANNEL_FILE.match(stem)
            if match is None:
                raise DatasetError(f"{path}: image files must be named {{case}}_{{channel:04d}}{ending}")
            out.setdefault(match["case"], {})[int(match["channel"])] = path
        else:
            out[stem] = path
    return out


def channel_cases(path: str | os.PathLike, num_channels: int, *,
                  atol: float = 1e-3) -> list[tuple[str, list[Path]]]:
    """The cases of a folder of multi-channel images named as nnU-Net names them
    (``{case}_{channel:04d}.nii.gz``), or the one case of such a file and its sibling channels:
    ``[(case id, [channel 0 file, ..., channel K-1 file])]``, headers checked (every channel present,
    one shape and affine per case), no voxel read.

    Raises:
      DatasetError: no such file or folder, a file not named so, a missing channel, or channels
        whose shape or affine differ; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    names = [path.name] if path.is_file() else [p.name for p in folder.iterdir()]
    ending = ".nii.gz" if any(n.endswith(".nii.gz") for n in names) else ".nii"
    cases = _list_cases(folder, ending, channels=True)
    if path.is_file():
        match = _CHANNEL_FILE.match(path.name[: -len(ending)]) if path.name.endswith(ending) else None
        if match is None:
            raise DatasetError(f"{path}: the model takes {num_channels} input channels; name the files "
                               f"{{case}}_{{channel:04d}}{ending}, one per channel")
        cases = {match["case"]: cases[match["case"]]}
    if not cases:
        raise DatasetError(f"{path}: no {{case}}_{{channel:04d}}{ending} image in the folder")
    for case_id, channel_files in cases.items():
        _check_case(case_id, channel_files, None, num_channels, folder, ending, atol)
    return [(case_id, [channel_files[k] for k in range(num_channels)]) for case_id, channel_files in cases.items()]


def _count_other_endings(folder: Path, ending: str) -> str:
    if not folder.is_dir():
        return f" ({folder.name}/ does not exist)"
    others = sorted({p.name[p.name.find("."):] for p in folder.iterdir()
                     if not p.name.startswith(".") and not p.name.endswith(ending) and "." in p.name})
    return f" (found files ending {others}; is file_ending right?)" if others else ""


def _check_case(case_id: str, channel_files: Mapping[int, Path], label_path: Path | None, num_channels: int,
                folder: Path, ending: str, atol: float) -> tuple[tuple[int, int, int], np.ndarray]:
    missing = [k for k in range(num_channels) if k not in channel_files]
    if missing:
        wanted = folder / f"{case_id}_{missing[0]:04d}{ending}"
        raise DatasetError(f"{wanted}: missing (case {case_id!r} needs channels 0..{num_channels - 1})")
    extra = sorted(k for k in channel_files if k >= num_channels)
    if extra:
        raise DatasetError(f"{channel_files[extra[0]]}: channel {extra[0]}, but channel_names declares only "
                           f"{num_channels} channel(s) (0..{num_channels - 1})")
    files = [channel_files[k] for k in range(num_channels)] + ([label_path] if label_path is not None else [])
    shape, affine = _header(files[0])
    for path in files[1:]:
        other_shape, other_affine = _header(path)
        if other_shape != shape:
            raise DatasetError(f"{path}: shape {other_shape} differs from {shape} of {files[0].name}")
        diff = float(np.max(np.abs(other_affine - affine)))
        if diff > atol:
            raise DatasetError(
                f"{path}: affine differs from that of {files[0].name} by up to {diff:.4g} (tolerance {atol})")
    return shape, affine


def _label_values(path: Path, space: LabelSpace) -> tuple[tuple[int, ...], np.ndarray]:
    """The ids of a label map (checked against ``space``), and the map in its smallest integer type."""
    try:
        labels, _, _ = load_labels(path)
        values = validate_labels(labels, space, what=str(path))
    except ValueError as e:
        raise DatasetError(str(e)) from e
    return tuple(int(v) for v in values), labels.astype(_label_dtype(labels), copy=False)


def _read_splits(root: Path, case_ids: Sequence[str]) -> tuple[tuple | None, Path | None]:
    for name in SPLITS_FILES:
        path = root / name
        if path.is_file():
            break
    else:
        return None, None
    folds = read_json(path)
    if not isinstance(folds, list) or not folds:
        raise DatasetError(f"{path}: must be a non-empty list of {{\"train\": [...], \"val\": [...]}}")
    known = set(case_ids)
    out = []
    for k, fold in enumerate(folds):
        if not isinstance(fold, Mapping) or not {"train", "val"} <= set(fold):
            raise DatasetError(f"{path}: fold {k} must be {{\"train\": [...], \"val\": [...]}}")
        entry = {}
        for part in ("train", "val"):
            ids = fold[part]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise DatasetError(f"{path}: fold {k} {part!r} must be a list of case ids")
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise DatasetError(f"{path}: fold {k} {part!r} names unknown case(s) {unknown[:5]}")
            entry[part] = tuple(ids)
        both = sorted(set(entry["train"]) & set(entry["val"]))
        if both:
            raise DatasetError(f"{path}: fold {k} has case(s) {both[:5]} in both train and val")
        if not entry["train"]:
            raise DatasetError(f"{path}: fold {k} has no training case")
        out.append(entry)
    return tuple(out), path


def read_channel_names(root: str | os.PathLike) -> tuple[str, ...]:
    """The input channel names of a dataset folder, from its ``dataset.json`` alone."""
    json_path = Path(root) / "dataset.json"
    spec = read_json(json_path)
    if not isinstance(spec, Mapping):
        raise DatasetError(f"{json_path}: must hold a JSON object, got {type(spec).__name__}")
    return _channel_names(spec, json_path)


def read_label_space(root: str | os.PathLike) -> LabelSpace:
    """The label space of a dataset folder, from its ``dataset.json`` alone (nothing else read).

    Raises:
      DatasetError: a missing or invalid ``dataset.json`` (see :func:`label_space_from_json`).
    """
    json_path = Path(root) / "dataset.json"
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: not a folder (expected a DatasetXXX_Name folder with dataset.json)")
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: missing (every dataset folder needs a dataset.json)")
    spec = read_json(json_path)
    if not isinstance(spec, Mapping):
        raise DatasetError(f"{json_path}: must hold a JSON object, got {type(spec).__name__}")
    return label_space_from_json(spec, where=str(json_path))


def read_dataset(root: str | os.PathLike, *, atol: float = 1e-3, keep_labels: bool = False,
                 training_ids: Collection[str] | None = None, with_test: bool = True) -> NnunetDataset:
    """Reads and checks a dataset folder (see the module docstring); loads no image.

    Args:
      root: the ``DatasetXXX_Name`` folder.
      atol: the largest difference allowed between the affines of a case's files.
      keep_labels: keep each training case's label map, which the check reads anyway, in
        :attr:`DatasetCase.labels` (for a caller that loads every case next: each map is then read
        once); the test cases' maps are never kept.
      training_ids: check and list only these training cases (``None``: all), e.g. the validation
        cases a run recorded, for a caller that scores only them: the other cases' files are not
        read (their names are still listed, for ``numTraining`` and the split file), and
        :meth:`NnunetDataset.split` would draw from these cases only.
      with_test: check and list the ``imagesTs`` cases.

    Returns:
      :class:`NnunetDataset`.

    Raises:
      DatasetError: the first problem found, in one line naming the file, field or value.
    """
    root = Path(root)
    json_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected a DatasetXXX_Name folder with dataset.json)")
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: missing (every dataset folder needs a dataset.json)")
    spec = read_json(json_path)
    if not isinstance(spec, Mapping):
        raise DatasetError(f"{json_path}: must hold a JSON object, got {type(spec).__name__}")
    channel_names = _channel_names(spec, json_path)
    space = label_space_from_json(spec, where=str(json_path))
    ending = spec.get("file_ending", ".nii.gz")
    if ending not in _FILE_ENDINGS:
        raise DatasetError(f"{json_path}: file_ending {ending!r} is not supported (use one of {list(_FILE_ENDINGS)})")
    declared = spec.get("numTraining")
    if declared is not None and (not _is_int(declared) or declared < 0):
        raise DatasetError(f"{json_path}: numTraining must be a non-negative integer, got {declared!r}")

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    images = _list_cases(images_dir, ending, channels=True)
    labels = _list_cases(labels_dir, ending, channels=False)
    for case_id in sorted(images):
        if case_id not in labels:
            raise DatasetError(f"{labels_dir / (case_id + ending)}: missing (the label file of case {case_id!r})")
    for case_id in sorted(labels):
        if case_id not in images:
            raise DatasetError(
                f"{images_dir / (case_id + '_0000' + ending)}: missing (case {case_id!r} has a label file but no image)")
    if declared is not None and declared != len(labels):
        hint = _count_other_endings(labels_dir, ending) if declared > len(labels) else ""
        raise DatasetError(
            f"{json_path}: numTraining is {declared} but {labels_dir} holds {len(labels)} case(s) ending {ending}{hint}")
    if not labels:
        raise DatasetError(f"{labels_dir}: no case ending {ending}{_count_other_endings(labels_dir, ending)}")

    listed = sorted(labels)
    if training_ids is not None:
        unknown = [i for i in training_ids if i not in labels]
        if unknown:
            raise DatasetError(f"{labels_dir}: no case {unknown[0]!r} (a case the run recorded)")
        labels = {i: labels[i] for i in labels if i in set(training_ids)}
    num_channels = len(channel_names)
    checked = {}
    for case_id in sorted(labels):
        checked[case_id] = _check_case(case_id, images[case_id], labels[case_id], num_channels, images_dir, ending,
                                       atol)
    test_images = _list_cases(root / "imagesTs", ending, channels=True) if with_test else {}
    test_labels = _list_cases(root / "labelsTs", ending, channels=False) if with_test else {}
    test_checked = {}
    for case_id in sorted(test_images):
        test_checked[case_id] = _check_case(case_id, test_images[case_id], test_labels.get(case_id), num_channels,
                                            root / "imagesTs", ending, atol)
    for case_id in sorted(set(test_labels) - set(test_images)):
        raise DatasetError(f"{test_labels[case_id]}: a test label file without its image in imagesTs")
    splits, splits_path = _read_splits(root, listed)
    sources = spec.get("case_sources", {})
    if not isinstance(sources, Mapping) or not all(isinstance(v, str) for v in sources.values()):
        raise DatasetError(f"{json_path}: case_sources must map case ids to source names, got {sources!r}")

    def make(case_id, channel_files, label_path, shape, affine, keep=False):
        paths = tuple(channel_files[k] for k in range(num_channels))
        source = sources.get(case_id, "")
        if label_path is None:
            return DatasetCase(case_id, paths, None, shape, affine, source=source)
        values, label_map = _label_values(label_path, space)
        annotated, has_ignore, full = space.annotation(values)
        return DatasetCase(case_id, paths, label_path, shape, affine, values, annotated, has_ignore, full, source,
                           label_map if keep else None)

    training = tuple(make(i, images[i], labels[i], *checked[i], keep=keep_labels) for i in sorted(labels))
    test = tuple(make(i, test_images[i], test_labels.get(i), *test_checked[i]) for i in sorted(test_images))
    name = spec.get("name") or root.name
    return NnunetDataset(root, str(name), space, channel_names, ending, training, test, splits, splits_path)


# ---------------------------------------------------------------------------------- writing
def _label_dtype(labels: np.ndarray) -> type:
    top = int(labels.max()) if labels.size else 0
    low = int(labels.min()) if labels.size else 0
    if low >= 0 and top < 256:
        return np.uint8
    if np.iinfo(np.int16).min <= low and top <= np.iinfo(np.int16).max:
        return np.int16
    return np.int32


def _channels(image: np.ndarray, num_channels: int, case_id: str) -> list[np.ndarray]:
    image = np.asarray(image, np.float32)
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4 or image.shape[-1] != num_channels:
        raise DatasetError(f"case {case_id!r}: image shape {image.shape} is not [D, H, W] or [D, H, W, {num_channels}]")
    return [image[..., k] for k in range(num_channels)]


def write_dataset(
    root: str | os.PathLike,
    training: Iterable[Any],
    *,
    space: LabelSpace,
    channel_names: Sequence[str] = ("image",),
    test: Iterable[Any] = (),
    name: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes cases as a dataset folder in the format of :func:`read_dataset`, atomically.

    Everything is written into a temporary folder next to ``root`` and renamed at the end: a
    reader sees no dataset or a complete one.

    Args:
      root: the ``DatasetXXX_Name`` folder to create.
      training: cases with attributes ``id``, ``image`` (``[D, H, W]`` or ``[D, H, W, channels]``),
        ``labels`` (label ids of ``space``) and ``affine``; any iterable, consumed one case at a
        time (a generator that loads each case keeps one in memory).
      space: the label space, written to ``dataset.json`` with :meth:`LabelSpace.to_json`.
      channel_names: one name per input channel.
      test: cases for ``imagesTs`` (their ``labels``, when not ``None``, go to ``labelsTs``).
      name: ``dataset.json``'s ``name`` (default the folder name).
      extra: more ``dataset.json`` keys (e.g. ``description``, ``reference``).
      overwrite: replace an existing folder.

    Returns:
      The path of ``dataset.json``.

    Raises:
      DatasetError: the folder exists (without ``overwrite``), duplicate case ids, a label id not
        in ``space``, or image/label shapes that differ.
    """
    root = Path(root)
    if root.exists() and not overwrite:
        raise DatasetError(f"{root}: already exists (pass overwrite to replace it)")
    num_channels = len(channel_names)
    seen: set[str] = set()
    num_training = 0
    with files.atomic_directory(root, overwrite=overwrite) as tmp:
        for folder, cases in (("Tr", training), ("Ts", test)):
            for case in cases:  # one at a time: a generator may load each case when asked
                if case.id in seen:
                    raise DatasetError(f"duplicate case id {case.id!r}")
                seen.add(case.id)
                num_training += folder == "Tr"
                channels = _channels(case.image, num_channels, case.id)
                for k, image in enumerate(channels):
                    save_nifti(tmp / f"images{folder}" / f"{case.id}_{k:04d}.nii.gz", image, case.affine)
                labels = getattr(case, "labels", None)
                if labels is None:
                    if folder == "Tr":
                        raise DatasetError(f"case {case.id!r}: a training case needs labels")
                    continue
                labels = np.asarray(labels)
                if labels.shape != channels[0].shape:
                    raise DatasetError(
                        f"case {case.id!r}: label shape {labels.shape} differs from image shape {channels[0].shape}")
                try:
                    space.validate(labels, what=f"case {case.id!r}: labels")
                except ValueError as e:
                    raise DatasetError(str(e)) from e
                save_nifti(tmp / f"labels{folder}" / f"{case.id}.nii.gz", labels.astype(_label_dtype(labels)),
                           case.affine)
        spec = {
            "name": name or root.name,
            "channel_names": {str(k): str(n) for k, n in enumerate(channel_names)},
            **space.to_json(),
            "numTraining": num_training,
            "file_ending": ".nii.gz",
        }
        spec.update(extra or {})
        files.write_json(tmp / "dataset.json", spec)
    return root / "dataset.json"
