"""Cases, cohorts with partial annotations, CSV manifests and the FeTA 2021 layout.

* :class:`CaseFile`: a case on disk, not loaded yet (a manifest row: its id, the name of its
  annotation protocol, and the paths of its files); :meth:`CaseFile.load` checks and loads it into
  a :class:`~labelset_jax.data.case.Case` of a given label space.
* :func:`phantom_cohort`: phantom cases annotated under the protocols of the reference study
  (docs/theory.md §4), e.g. a few full atlases and many partial ones; :func:`write_cohort` /
  :func:`read_cohort` store a cohort as NIfTI files plus a ``manifest.csv`` and the
  ``label_space.json`` of its label space.
* :func:`read_manifest` / :func:`write_manifest`: the CSV manifest ``id,image,label,protocol``
  (paths relative to the CSV's folder) describing any folder of NIfTI pairs; the folder's
  ``label_space.json`` (:meth:`~labelset_jax.labelsets.LabelSpace.to_json`) says what the ids mean
  (:func:`read_label_space`).
* :func:`feta_cases`: the FeTA 2021 data set, labels mapped onto
  :data:`~labelset_jax.labelsets.FETAL_BRAIN`.

Partial label maps are stored *already partial*: a case under the protocol ``wm_vent_cereb``
holds ids ``0, 1, 2, 3`` and the set id ``9``. What a case annotates comes from its label map, by
the rule of every data source (:meth:`~labelset_jax.labelsets.LabelSpace.annotation`); the
protocol is a name for reports, and ``full`` (the default) declares a map with no label set.

>>> cohort = phantom_cohort({"full": 1, "wm_vent_cereb": 1}, shape=(32, 32, 32))
>>> [(case.id, case.protocol) for case in cohort]
[('phantom_0000', 'full'), ('phantom_0001', 'wm_vent_cereb')]
>>> sorted(np.unique(cohort[1].labels).tolist())
[0, 1, 2, 3, 9]
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from labelset_jax import files
from labelset_jax.data.case import Case
from labelset_jax.data.nifti import load_case, load_labels, save_nifti
from labelset_jax.data.nnunet import label_space_from_json, read_json
from labelset_jax.data.phantoms import make_phantom, phantom_affine, phantom_spacing
from labelset_jax.labelsets import FETAL_BRAIN, FETAL_BRAIN_PROTOCOLS, AnnotationProtocol, LabelSpace, validate_labels

__all__ = [
    "CaseFile",
    "Cohort",
    "phantom_cohort",
    "write_cohort",
    "read_cohort",
    "read_manifest",
    "write_manifest",
    "read_label_space",
    "LABEL_SPACE_FILE",
    "load_cases",
    "feta_cases",
    "FETA_LABELS",
    "FETA_TO_FETAL_BRAIN",
    "MANIFEST_COLUMNS",
]

#: The FeTA 2021 label ids (0 is background).
FETA_LABELS = {
    0: "background",
    1: "external_csf",
    2: "grey_matter",
    3: "white_matter",
    4: "ventricles",
    5: "cerebellum",
    6: "deep_grey_matter",
    7: "brainstem",
}

#: FeTA label id -> :data:`~labelset_jax.labelsets.FETAL_BRAIN` label id. FeTA has no corpus
#: callosum label: its white matter (3) *includes* the corpus callosum, so with this mapping leaf 8
#: never occurs in FeTA label maps and the corpus callosum is learnt as white matter. Evaluate
#: leaf 8 only on data that segment it, or map FeTA's 3 to the label set {wm, corpus_callosum}
#: (``FETAL_BRAIN.with_set([1, 8])``) to treat FeTA's white matter as a partial annotation.
FETA_TO_FETAL_BRAIN: dict[int, int] = {0: 0, 1: 4, 2: 5, 3: 1, 4: 2, 5: 3, 6: 6, 7: 7}

#: The file that declares a label space (``LabelSpace.to_json``): next to a manifest, in a cohort
#: folder, and in a run's workdir.
LABEL_SPACE_FILE = "label_space.json"

#: Columns of a manifest; ``protocol`` may be left out (every case is then ``full``).
MANIFEST_COLUMNS = ("id", "image", "label", "protocol")
_REQUIRED_COLUMNS = ("id", "image", "label")


# ---------------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class CaseFile:
    """A case on disk, not loaded yet: what a manifest row says. :meth:`load` gives the
    :class:`~labelset_jax.data.case.Case`.

    Attributes:
      id: the case name.
      image_path: the image NIfTI file.
      label_path: the label NIfTI file.
      protocol: the annotation protocol's name (``"full"``: a label map without label sets).
      full_label_path: optional full segmentation (phantom cohorts), for evaluation.
      label_mapping: optional ``{file label: label id}`` applied when loading (e.g. FeTA's).
      source: where the case was described (``"manifest.csv:4"``), for error messages.
    """

    id: str
    image_path: Path
    label_path: Path
    protocol: str = "full"
    full_label_path: Path | None = None
    label_mapping: Mapping[int, int] | None = None
    source: str = ""

    def load(self, *, space: LabelSpace, canonical: bool = False, atol: float = 1e-3) -> Case:
        """Loads and checks the case (see :func:`~labelset_jax.data.nifti.load_case`).

        What the case annotates comes from its label map
        (:meth:`~labelset_jax.labelsets.LabelSpace.annotation`), as for every data source.

        Args:
          space: the label space of the label maps (from the data: :func:`read_label_space`, FeTA's
            :data:`~labelset_jax.labelsets.FETAL_BRAIN`; or from a trained run).
          canonical: reorient to RAS+.
          atol: affine tolerance between image and labels.

        Returns:
          A :class:`Case`.

        Raises:
          ValueError: any file error (naming the file), unmapped label values, label ids the space
            does not know, or a case declared ``full`` whose map holds a label set or the ignore label.
        """
        image, labels, affine, spacing = load_case(self.image_path, self.label_path, space=None, atol=atol,
                                                   canonical=canonical)
        if self.label_mapping:
            labels = _map_labels(labels, self.label_mapping, what=str(self.label_path))
        annotated, _, full = space.annotation(validate_labels(labels, space, what=str(self.label_path)).tolist())
        if self.protocol == "full" and not full:
            where = f" ({self.source})" if self.source else ""
            raise ValueError(f"{self.label_path}: the case is declared 'full'{where} but its label map holds label-set "
                             f"or ignore ids; name its protocol (any name but 'full')")
        full_labels = None
        if self.full_label_path is not None:
            full_labels, full_affine, _ = load_labels(self.full_label_path, canonical=canonical, space=space)
            if full_labels.shape != labels.shape or np.max(np.abs(full_affine - affine)) > atol:
                raise ValueError(f"{self.full_label_path}: shape or affine differs from {self.label_path}")
        return Case(self.id, image, labels, spacing, self.protocol, affine, full_labels,
                    annotated=None if full else annotated)


def _map_labels(labels: np.ndarray, mapping: Mapping[int, int], *, what: str) -> np.ndarray:
    """Applies ``{file value: label id}`` through a lookup table; unmapped values are an error."""
    values = np.unique(labels).tolist()
    unmapped = [v for v in values if v not in mapping]
    if unmapped:
        raise ValueError(f"{what}: label value(s) {unmapped} have no entry in the label mapping {dict(mapping)}")
    low = values[0]
    lut = np.zeros(values[-1] - low + 1, np.int32)
    for v in values:
        lut[v - low] = int(mapping[v])
    return lut[labels - low]


def load_cases(files: Iterable[CaseFile], **kwargs) -> list[Case]:
    """Loads every :class:`CaseFile` (keyword arguments go to :meth:`CaseFile.load`)."""
    return [f.load(**kwargs) for f in files]


# ---------------------------------------------------------------------------------- cohorts
@dataclasses.dataclass
class Cohort:
    """A list of cases and the label space they live in.

    Attributes:
      cases: the :class:`Case` records.
      space: their label space (with the protocols' sets).
    """

    cases: list[Case]
    space: LabelSpace

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __getitem__(self, index: int) -> Case:
        return self.cases[index]

    @property
    def manifest(self) -> list[dict[str, str]]:
        """One ``{"id", "protocol"}`` row per case."""
        return [{"id": c.id, "protocol": c.protocol} for c in self.cases]

    def by_protocol(self, name: str) -> list[Case]:
        """The cases annotated under the protocol ``name``."""
        return [c for c in self.cases if c.protocol == name]


def phantom_cohort(
    protocols: Mapping[str, int] | Sequence[str],
    *,
    first_seed: int = 0,
    shape: Sequence[int] = (48, 48, 48),
    spacing: Sequence[float] | None = None,
    protocol_table: Mapping[str, AnnotationProtocol] = FETAL_BRAIN_PROTOCOLS,
    keep_full: bool = True,
    abnormal: Mapping[str, int] | None = None,
) -> Cohort:
    """Phantom cases annotated under the given protocols.

    Case ``i`` is ``make_phantom(first_seed + i)``, its labels converted by its protocol
    (``protocol_table[name].apply``); ids are ``phantom_<seed>``. Abnormal cases (``abnormal``)
    are ``make_phantom(seed, ventriculomegaly=True, small_cerebellum=True)``; every case has
    ``metadata["abnormal"]``.

    Args:
      protocols: ``{protocol name: number of cases}`` (in order), or one name per case, e.g.
        ``{"full": 3, "wm_vent_cereb": 5, "plus_ecsf": 5, "plus_ecsf_cc": 5}``.
      first_seed: the seed of the first case.
      shape: phantom shape.
      spacing: voxel size in mm (default :func:`~labelset_jax.data.phantoms.phantom_spacing`).
      protocol_table: the protocols by name (default the phantoms' own: the fetal-brain protocols
        of docs/theory.md §4).
      keep_full: keep the full segmentation in ``Case.full_labels`` (for evaluation).
      abnormal: ``{protocol name: number of its cases that are abnormal}`` (the last ones of that
        protocol), e.g. ``{"full": 0, "wm_vent_cereb": 2}``; default none.

    Returns:
      A :class:`Cohort` over the protocols' label space.
    """
    if isinstance(protocols, Mapping):
        names = [name for name, count in protocols.items() for _ in range(int(count))]
    else:
        names = list(protocols)
    unknown = sorted(set(names) - set(protocol_table))
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown} (known: {sorted(protocol_table)})")
    abnormal = dict(abnormal or {})
    if any(not 0 <= int(n) <= names.count(name) for name, n in abnormal.items()):
        raise ValueError(f"abnormal must give each protocol at most its number of cases, got {abnormal}")
    spacing = phantom_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    cases = []
    for i, name in enumerate(names):
        seed = first_seed + i
        sick = names[i:].count(name) <= int(abnormal.get(name, 0))  # the protocol's last cases
        image, full = make_phantom(seed, shape=shape, spacing=spacing, ventriculomegaly=sick, small_cerebellum=sick)
        labels = protocol_table[name].apply(full)
        affine = phantom_affine(shape, spacing)
        protocol = protocol_table[name]
        cases.append(Case(f"phantom_{seed:04d}", image, labels, spacing, name, affine, full if keep_full else None,
                          metadata={"abnormal": sick}, annotated=None if protocol.is_full else protocol.annotated))
    spaces = {protocol_table[n].space for n in names}
    space = max(spaces, key=lambda s: s.num_ids) if spaces else FETAL_BRAIN
    return Cohort(cases, space)


def write_cohort(directory: str | os.PathLike, cohort: Cohort, *, overwrite: bool = False) -> Path:
    """Writes a cohort as NIfTI files, ``manifest.csv`` and ``label_space.json``, atomically.

    Everything is written into a temporary folder next to ``directory``, then renamed: readers
    see either no cohort or a complete one. Layout: ``images/<id>.nii.gz`` (float32),
    ``labels/<id>.nii.gz`` (int32, partial where the protocol is), ``full_labels/<id>.nii.gz``
    when the case has a full segmentation, ``manifest.csv`` with the columns
    ``id,image,label,protocol`` (and ``full_label`` when any case has one), and the cohort's label
    space in ``label_space.json``.

    Args:
      directory: the cohort folder to create.
      cohort: the :class:`Cohort` (its cases and label space).
      overwrite: replace an existing folder.

    Returns:
      The path of ``manifest.csv``.

    Raises:
      ValueError: the folder exists (without ``overwrite``) or two cases share an id.
    """
    directory = Path(directory)
    cases = list(cohort.cases)
    ids = [c.id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate case id(s) {duplicates}")
    with files.atomic_directory(directory, overwrite=overwrite) as tmp:
        entries = []
        for case in cases:
            image_path = tmp / "images" / f"{case.id}.nii.gz"
            label_path = tmp / "labels" / f"{case.id}.nii.gz"
            save_nifti(image_path, np.asarray(case.image, np.float32), case.affine)
            save_nifti(label_path, np.asarray(case.labels, np.int32), case.affine)
            full_path = None
            if case.full_labels is not None:
                full_path = tmp / "full_labels" / f"{case.id}.nii.gz"
                save_nifti(full_path, np.asarray(case.full_labels, np.int32), case.affine)
            entries.append(CaseFile(case.id, image_path, label_path, case.protocol, full_path))
        write_manifest(tmp / "manifest.csv", entries)
        files.write_json(tmp / LABEL_SPACE_FILE, cohort.space.to_json())
    return directory / "manifest.csv"


def read_label_space(manifest: str | os.PathLike) -> LabelSpace:
    """The label space of a manifest's label maps: ``label_space.json`` in the manifest's folder
    (:meth:`~labelset_jax.labelsets.LabelSpace.to_json`, the file a run and :func:`write_cohort`
    write).

    Raises:
      ValueError: the file is missing or not a label space (the message names it).
    """
    path = Path(manifest).parent / LABEL_SPACE_FILE
    if not path.is_file():
        raise ValueError(f"{path}: missing; a manifest's folder declares what its label ids mean in {LABEL_SPACE_FILE} "
                         '(e.g. {"labels": {"background": 0, "wm": 1, ...}, "label_sets": {...}}, as a run writes it)')
    return label_space_from_json(read_json(path), where=str(path))  # errors name the file


def read_cohort(directory: str | os.PathLike, *, canonical: bool = False) -> Cohort:
    """Loads a cohort written by :func:`write_cohort` (or any folder with a ``manifest.csv`` and a
    ``label_space.json``)."""
    manifest = Path(directory) / "manifest.csv"
    rows = read_manifest(manifest)
    space = read_label_space(manifest)
    return Cohort(load_cases(rows, space=space, canonical=canonical), space)


# ---------------------------------------------------------------------------------- manifests
def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> list[CaseFile]:
    """Reads a CSV manifest ``id,image,label[,protocol][,full_label]`` into :class:`CaseFile` s.

    Relative paths are relative to the CSV's folder. Extra columns are ignored; a missing
    ``protocol`` column or an empty cell means ``full``; any other name is a partially annotated
    case (loading reads what it annotates from its label map).

    Args:
      path: the CSV file.
      check_files: check that the image and label files exist.

    Returns:
      The cases in file order (nothing is loaded).

    Raises:
      ValueError: missing file, missing column, empty or duplicate id, or a missing image/label
        file; the message names the CSV file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest file")
    root = path.parent
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in _REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (header: {header}; need {list(MANIFEST_COLUMNS)})")
        files, seen = [], {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            row = {k: (v or "").strip() for k, v in row.items() if k is not None}
            case_id = row["id"]
            if not case_id:
                raise ValueError(f"{where}: empty id")
            if case_id in seen:
                raise ValueError(f"{where}: duplicate id {case_id!r} (first on line {seen[case_id]})")
            seen[case_id] = reader.line_num
            protocol = row.get("protocol") or "full"
            paths = {}
            for column in ("image", "label", "full_label"):
                value = row.get(column, "")
                if not value:
                    if column == "full_label":
                        paths[column] = None
                        continue
                    raise ValueError(f"{where}: empty {column} path")
                p = Path(value) if os.path.isabs(value) else root / value
                if check_files and not p.is_file():
                    raise ValueError(f"{where}: {column} file {p} not found")
                paths[column] = p
            files.append(CaseFile(case_id, paths["image"], paths["label"], protocol, paths["full_label"], source=where))
    return files


def _relative(p: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(Path(p).resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(Path(p).resolve())


def write_manifest(path: str | os.PathLike, entries: Iterable[CaseFile]) -> Path:
    """Writes a CSV manifest atomically, with paths relative to the CSV's folder.

    Args:
      path: the CSV file to write.
      entries: :class:`CaseFile` records (their files need not exist yet).

    Returns:
      ``path``.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_manifest(folder / "m.csv", [CaseFile("a", folder / "img/a.nii.gz", folder / "lab/a.nii.gz")])
    >>> print((folder / "m.csv").read_text().strip())
    id,image,label,protocol
    a,img/a.nii.gz,lab/a.nii.gz,full
    """
    path = Path(path)
    root = path.parent
    entries = list(entries)
    with_full = any(e.full_label_path is not None for e in entries)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(MANIFEST_COLUMNS) + (["full_label"] if with_full else []))
    for e in entries:
        row = [e.id, _relative(e.image_path, root), _relative(e.label_path, root), e.protocol]
        if with_full:
            row.append("" if e.full_label_path is None else _relative(e.full_label_path, root))
        writer.writerow(row)
    files.write_text(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------- FeTA
_FETA_IMAGE = re.compile(r"^(sub-[A-Za-z0-9]+)_rec-([A-Za-z0-9]+)_T2w\.nii(\.gz)?$")


def feta_cases(
    root: str | os.PathLike,
    *,
    reconstruction: str | None = None,
    label_mapping: Mapping[int, int] = FETA_TO_FETAL_BRAIN,
) -> list[CaseFile]:
    """The cases of a FeTA 2021 folder (BIDS-like), labels mapped onto the fetal brain table.

    Layout: ``<root>/sub-XXX/anat/sub-XXX_rec-{mial,irtk}_T2w.nii.gz`` with the segmentation
    ``sub-XXX_rec-..._dseg.nii.gz`` next to it. FeTA labels: 1 external CSF, 2 grey matter,
    3 white matter, 4 ventricles, 5 cerebellum, 6 deep grey matter, 7 brainstem. The default
    mapping (:data:`FETA_TO_FETAL_BRAIN`) sends them to the leaves of
    :data:`~labelset_jax.labelsets.FETAL_BRAIN`; FeTA has no corpus callosum label (its white
    matter includes it), so leaf 8 never occurs in the mapped label maps. The cases are ``full``.

    Args:
      root: the data set folder.
      reconstruction: ``"mial"`` or ``"irtk"`` to keep one super-resolution method, ``None`` for
        all.
      label_mapping: FeTA label -> label id, applied when loading; a FeTA value without an entry
        is an error naming the file.

    Returns:
      :class:`CaseFile` records sorted by id (``sub-XXX_rec-YYY``); call ``.load(space=FETAL_BRAIN)``.

    Raises:
      ValueError: ``root`` is not a folder, has no FeTA image, or an image has no segmentation.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    if reconstruction is not None and not re.fullmatch(r"[A-Za-z0-9]+", reconstruction):
        raise ValueError(f"bad reconstruction name {reconstruction!r}")
    files = []
    for image_path in sorted(root.glob("sub-*/anat/sub-*_rec-*_T2w.nii*")):
        match = _FETA_IMAGE.match(image_path.name)
        if match is None:
            continue
        subject, rec, gz = match.group(1), match.group(2), match.group(3) or ""
        if reconstruction is not None and rec != reconstruction:
            continue
        label_path = image_path.with_name(f"{subject}_rec-{rec}_dseg.nii{gz}")
        if not label_path.is_file():
            raise ValueError(f"{image_path}: no segmentation {label_path.name} next to it")
        files.append(
            CaseFile(
                f"{subject}_rec-{rec}",
                image_path,
                label_path,
                "full",
                label_mapping=dict(label_mapping),
                source=str(image_path),
            )
        )
    if not files:
        wanted = f"rec-{reconstruction}" if reconstruction else "rec-*"
        raise ValueError(f"{root}: no FeTA image sub-*/anat/sub-*_{wanted}_T2w.nii.gz found")
    return files
