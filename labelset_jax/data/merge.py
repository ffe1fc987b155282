"""Merging nnU-Net datasets that annotate different structures into one label-set dataset.

Dataset A segments CSF, GM and WM; dataset B segments a lesion. Neither can train one network on
its own, and nnU-Net's ignore label cannot say "this voxel is background, CSF, GM or WM but not a
lesion". In the label-set view (docs/theory.md §1) the merge is exact:

* **Leaves are unified by name** (after ``renames``): the merged leaves are the union of the
  sources' leaves, ``background`` (every source's leaf 0) first, then in the order the sources
  declare them.
* **What a source does not annotate hides in its background.** A source that does not declare a
  leaf ``X`` labelled the voxels of ``X`` as something it does declare; with mutually exclusive
  leaves that is its background. So each of the source's ids that contains the background (its
  leaf 0, or one of its label sets with the background in it) becomes the label set of that id's
  leaves *plus* every merged leaf the source does not declare, e.g. B's background becomes
  ``background_in_B = {background, csf, gm, wm}``. Its other leaves stay leaves.
* The sources' own label sets keep their names and members (mapped onto the merged leaves), and
  nnU-Net regions stay regions (scored as the union of their leaves); the ignore label stays the
  ignore label (the set of all merged leaves).
* **Conflicts stop the merge** with one line: one name that is a leaf in one source and a label
  set in another, a label set whose members differ between sources, two leaves of one source
  renamed to one name, or sources whose leaf 0 (the background) has different names.

Case ids are prefixed with the source's name (``{source}_{case}``), and ``dataset.json`` records
each case's source (``case_sources``) and what each source annotates (``sources``), so that
evaluation can report per source. nnU-Net itself reads the merged ``labels`` (the leaves and the
ignore label) and ignores ``label_sets``, ``sources`` and ``case_sources``.

>>> from labelset_jax.labelsets import LabelSpace
>>> a = LabelSpace.leaves(["background", "csf", "gm", "wm"])
>>> b = LabelSpace.leaves(["background", "lesion"])
>>> plan = plan_merge({"atlas": a, "lesions": b})
>>> plan.space.names
('background', 'csf', 'gm', 'wm', 'lesion')
>>> plan.space.name_of(int(plan.lookup["lesions"][0])), plan.space.leaves_of(int(plan.lookup["lesions"][0]))
('background_in_lesions', (0, 1, 2, 3))
>>> plan.space.name_of(int(plan.lookup["atlas"][0])), plan.lookup["lesions"][1].item()
('background_in_atlas', 4)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from labelset_jax import files
from labelset_jax.data.nifti import load_labels
from labelset_jax.data.nnunet import DatasetError, NnunetDataset, read_dataset
from labelset_jax.labelsets import LabelSpace

__all__ = ["MergePlan", "plan_merge", "parse_rename", "source_name", "merge_datasets"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class MergePlan:
    """How the sources' label ids map onto the merged label space.

    Attributes:
      space: the merged label space.
      lookup: ``{source: int32 [source num_ids]}``, a source's label id -> the merged id.
      declared: ``{source: names of the leaves the source declares}``.
    """

    space: LabelSpace
    lookup: Mapping[str, np.ndarray]
    declared: Mapping[str, tuple[str, ...]]


def source_name(folder: str | os.PathLike) -> str:
    """A source's name from its folder: ``Dataset001_Atlas`` -> ``Atlas`` (nnU-Net's prefix dropped)."""
    name = Path(folder).name
    match = re.match(r"^Dataset\d{3}_(.+)$", name)
    return match.group(1) if match else name


def parse_rename(text: str, sources: Sequence[str]) -> tuple[str, str, str]:
    """``"B:tumour=lesion"`` -> ``("B", "tumour", "lesion")``; DatasetError naming the flag value."""
    source, colon, rest = text.partition(":")
    old, equal, new = rest.partition("=")
    if not (colon and equal and source and old and new):
        raise DatasetError(f"--rename={text}: expected SOURCE:OLD=NEW, e.g. B:tumour=lesion")
    if source not in sources:
        raise DatasetError(f"--rename={text}: no source named {source!r} (sources: {', '.join(sources)})")
    return source, old, new


def _check_renames(spaces: Mapping[str, LabelSpace], renames: Sequence[tuple[str, str, str]]
                   ) -> dict[str, dict[str, str]]:
    by_source: dict[str, dict[str, str]] = {s: {} for s in spaces}
    for source, old, new in renames:
        space = spaces[source]
        if old not in space.names and old not in space.set_names:
            raise DatasetError(f"--rename={source}:{old}={new}: {source} has no label named {old!r} "
                               f"(its labels: {', '.join(space.names + space.set_names)})")
        if old in by_source[source]:
            raise DatasetError(f"--rename={source}:{old}=...: {old!r} is renamed twice")
        by_source[source][old] = new
    return by_source


def plan_merge(spaces: Mapping[str, LabelSpace], renames: Sequence[tuple[str, str, str]] = ()) -> MergePlan:
    """The merged label space of the sources and how each source's ids map onto it.

    Args:
      spaces: ``{source name: its label space}``, in merge order.
      renames: ``(source, old name, new name)`` triples applied to that source's labels first.

    Returns:
      :class:`MergePlan`.

    Raises:
      DatasetError: a conflict (see the module docstring), in one line.
    """
    if len(spaces) < 2:
        raise DatasetError(f"merging needs at least two sources, got {len(spaces)}")
    renamed = _check_renames(spaces, renames)
    leaf_names, set_names = {}, {}  # per source, after renames
    for source, space in spaces.items():
        names = [renamed[source].get(n, n) for n in space.names]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DatasetError(f"{source}: several leaves are named {duplicates[0]!r} after --rename")
        leaf_names[source] = names
        set_names[source] = [renamed[source].get(n, n) for n in space.set_names]
    first = next(iter(spaces))
    for source in spaces:
        if leaf_names[source][0] != leaf_names[first][0]:
            raise DatasetError(
                f"{source}: leaf 0 (the background) is named {leaf_names[source][0]!r} but {leaf_names[first][0]!r} "
                f"in {first}; use --rename={source}:{leaf_names[source][0]}={leaf_names[first][0]}")
    merged = list(dict.fromkeys(n for source in spaces for n in leaf_names[source]))
    index = {n: c for c, n in enumerate(merged)}
    everything = frozenset(range(len(merged)))
    for source, space in spaces.items():
        for set_id, name in zip(space.set_ids, set_names[source]):
            if set_id != space.ignore_id and name in index:
                other = next(s for s in spaces if name in leaf_names[s])
                raise DatasetError(f"{name!r} is a leaf in {other} but a label set in {source}: one name, two "
                                   f"meanings; use --rename")

    sets: dict[frozenset[int], str] = {}  # merged label sets, in creation order
    named: dict[str, frozenset[int]] = {}
    regions: set[frozenset[int]] = set()  # sets that are nnU-Net regions in their source
    lookups: dict[str, list] = {}
    for source, space in spaces.items():
        hidden = everything - {index[n] for n in leaf_names[source]}  # leaves the source does not declare
        entries = []
        for label_id in range(space.num_ids):
            if not space.valid_ids[label_id]:
                entries.append(None)
                continue
            if label_id == space.ignore_id:
                entries.append("ignore")
                continue
            members = frozenset(index[leaf_names[source][c]] for c in space.leaves_of(label_id))
            if 0 in members:
                members = members | hidden
            if len(members) == 1:
                entries.append(next(iter(members)))
                continue
            if label_id < space.num_classes:  # the background, with the leaves the source does not declare
                name = f"{leaf_names[source][0]}_in_{source}"
            else:
                name = set_names[source][space.set_ids.index(label_id)]
                declared_members = frozenset(index[leaf_names[source][c]] for c in space.leaves_of(label_id))
                if name in named and named[name] != members and named[name] != declared_members:
                    raise DatasetError(
                        f"label set {name!r} means {sorted(merged[c] for c in named[name])} in one source but "
                        f"{sorted(merged[c] for c in members)} in {source}: one name, two meanings; use --rename")
            if members == everything:
                entries.append("ignore")  # the set of every leaf is the ignore label
                continue
            if members not in sets:
                if name in named:
                    name = f"{name}_{source}"
                sets[members] = name
                named[name] = members
            if label_id in space.region_ids:
                regions.add(members)
            entries.append(members)
        lookups[source] = entries

    num_classes = len(merged)
    superset = {num_classes + k: sorted(m) for k, m in enumerate(sets)}
    set_name_of = {num_classes + k: name for k, name in enumerate(sets.values())}
    ids = {m: num_classes + k for k, m in enumerate(sets)}
    needs_ignore = any("ignore" in e for e in lookups.values())
    ignore_id = None
    if needs_ignore:
        ignore_id = num_classes + len(sets)
        superset[ignore_id] = list(range(num_classes))
        set_name_of[ignore_id] = "ignore"
    try:
        space = LabelSpace.from_superset_map(num_classes, superset, merged, set_names=set_name_of,
                                             ignore_id=ignore_id)
        space = dataclasses.replace(space, region_ids=tuple(sorted(ids[m] for m in regions)))
    except ValueError as e:
        raise DatasetError(f"merged label space: {e}") from e
    lookup = {}
    for source, entries in lookups.items():
        table = np.full(len(entries), -1, np.int32)
        for label_id, entry in enumerate(entries):
            if entry is None:
                continue
            table[label_id] = ignore_id if entry == "ignore" else (ids[entry] if isinstance(entry, frozenset)
                                                                     else entry)
        lookup[source] = table
    return MergePlan(space, lookup, {s: tuple(leaf_names[s]) for s in spaces})


def _copy_image(source: Path, destination: Path) -> None:
    """A NIfTI image re-saved under another name (header, data type and scaling kept)."""
    img = nib.load(str(source))
    with files.atomic_path(destination, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def _write_labels(source: Path, destination: Path, table: np.ndarray) -> None:
    labels, _, _ = load_labels(source)
    img = nib.load(str(source))
    merged = table[labels]
    dtype = np.uint8 if int(merged.max(initial=0)) < 256 else np.int16
    out = nib.Nifti1Image(merged.astype(dtype), img.affine, header=img.header)
    out.set_data_dtype(dtype)
    out.header.set_slope_inter(1.0, 0.0)
    with files.atomic_path(destination, suffix=".nii.gz") as tmp:
        nib.save(out, tmp)


def merge_datasets(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                   renames: Sequence[str] = (), names: Sequence[str] | None = None) -> tuple[Path, MergePlan]:
    """Merges nnU-Net dataset folders into one label-set dataset folder, atomically.

    Every input is read and checked (:func:`~labelset_jax.data.nnunet.read_dataset`) and the merge
    planned (:func:`plan_merge`) before anything is written; the output folder then appears
    complete or not at all. Images are re-saved under their prefixed names with their headers;
    label maps are mapped through the plan. Split files are not carried over (the case ids change).

    Args:
      inputs: the dataset folders, in merge order.
      output: the merged dataset folder to create (must not exist).
      renames: ``"SOURCE:OLD=NEW"`` label renames.
      names: the sources' names (default :func:`source_name` of each folder); they prefix the
        case ids.

    Returns:
      ``(path of the merged dataset.json, the plan)``.

    Raises:
      DatasetError: a bad input, a conflict, or an existing output; one line.
    """
    output = Path(output)
    if output.exists():
        raise DatasetError(f"{output}: already exists; choose a new --output")
    names = list(names) if names is not None else [source_name(p) for p in inputs]
    if len(names) != len(inputs):
        raise DatasetError(f"--names gives {len(names)} names for {len(inputs)} inputs")
    for name in names:
        if not _NAME.match(name):
            raise DatasetError(f"source name {name!r} must be letters, digits, '_' or '-' (set it with --names)")
    if len(set(names)) != len(names):
        raise DatasetError(f"two sources are named {sorted({n for n in names if names.count(n) > 1})[0]!r}; "
                           f"set distinct names with --names")
    datasets: dict[str, NnunetDataset] = {n: read_dataset(p) for n, p in zip(names, inputs)}
    channels = {n: d.channel_names for n, d in datasets.items()}
    first = names[0]
    for n in names[1:]:
        if channels[n] != channels[first]:
            raise DatasetError(f"{datasets[n].root / 'dataset.json'}: channel_names {list(channels[n])} differ from "
                               f"{list(channels[first])} of {datasets[first].root}; merge datasets of the same inputs")
    plan = plan_merge({n: d.space for n, d in datasets.items()}, [parse_rename(r, names) for r in renames])

    case_sources: dict[str, str] = {}
    num_training = 0
    with files.atomic_directory(output) as tmp:
        for n, dataset in datasets.items():
            for split, cases in (("Tr", dataset.training), ("Ts", dataset.test)):
                for case in cases:
                    new_id = f"{n}_{case.id}"
                    if new_id in case_sources:
                        raise DatasetError(f"{case.image_paths[0]}: case id {new_id!r} occurs twice after prefixing")
                    case_sources[new_id] = n
                    num_training += split == "Tr"
                    for k, path in enumerate(case.image_paths):
                        _copy_image(path, tmp / f"images{split}" / f"{new_id}_{k:04d}.nii.gz")
                    if case.label_path is not None:
                        _write_labels(case.label_path, tmp / f"labels{split}" / f"{new_id}.nii.gz", plan.lookup[n])
        spec = {
            "name": output.name,
            "channel_names": {str(k): c for k, c in enumerate(channels[first])},
            **plan.space.to_json(),
            "numTraining": num_training,
            "file_ending": ".nii.gz",
            "sources": {n: {"folder": datasets[n].root.name, "leaves": list(plan.declared[n]),
                            "training_cases": len(datasets[n].training), "test_cases": len(datasets[n].test)}
                        for n in names},
            "case_sources": case_sources,
        }
        files.write_json(tmp / "dataset.json", spec)
    return output / "dataset.json", plan
