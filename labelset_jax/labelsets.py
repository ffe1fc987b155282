"""The label-set algebra: leaves, label sets, and how partial annotations are encoded.

A segmentation network outputs one logit per *leaf* label ``0..C-1``. A partial segmentation gives
each voxel a *label set* ``A ⊆ {0..C-1}``: the voxel belongs to one of the leaves of ``A``, and
nothing more is known. Integer label maps hold *label ids* (docs/theory.md §1): ids ``0..C-1`` are the
singleton leaves and ids ``>= C`` name label sets, each larger than all of its members.

Everything a label-set loss needs is one static boolean **membership matrix** ``M[K, C]``
(:attr:`LabelSpace.membership`), whose row ``k`` marks the leaves of label id ``k``; rows
``0..C-1`` are the identity. Losses gather rows of ``M`` by label id; nothing loops over sets.

Three notations for label sets are supported and round-trip through :class:`LabelSpace`:

* the **superset map** of the reference PyTorch package, ``{set_id: [leaf ids]}``
  (:meth:`LabelSpace.from_superset_map`, :meth:`LabelSpace.to_superset_map`);
* the **ignore label** (nnU-Net, MONAI ``ignore_index``): the set of *all* leaves;
* nnU-Net v2 **regions** (e.g. BraTS whole tumour ``[1, 2, 3]``), through the ``"labels"`` dict of
  a ``dataset.json`` (:meth:`LabelSpace.from_nnunet`, :meth:`LabelSpace.to_nnunet`).

Annotation protocols (:class:`AnnotationProtocol`) turn full segmentations into partial ones: every
voxel whose leaf was not annotated gets the set of the non-annotated leaves.

Example:

>>> space = LabelSpace.from_superset_map(4, {4: [2, 3]}, names=["bg", "a", "b", "c"])
>>> space.num_classes, space.num_ids
(4, 5)
>>> space.membership.astype(int)
array([[1, 0, 0, 0],
       [0, 1, 0, 0],
       [0, 0, 1, 0],
       [0, 0, 0, 1],
       [0, 0, 1, 1]])
>>> space.leaves_of(4)
(2, 3)
>>> space.id_of({2, 3}), space.id_of("b")
(4, 2)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "LabelSpace",
    "AnnotationProtocol",
    "validate_labels",
    "FETAL_BRAIN",
    "FETAL_BRAIN_PROTOCOLS",
]

IGNORE_NAME = "ignore"


def _leaf_tuple(members: Iterable[Any], *, context: str) -> tuple[int, ...]:
    try:
        leaves = tuple(sorted({int(m) for m in members}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{context}: members must be integer leaf ids, got {members!r}") from e
    return leaves


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class LabelSpace:
    """Leaves ``0..C-1`` and the label sets (ids ``>= C``) a label map may contain.

    Immutable and hashable: it can be a static argument of ``jax.jit`` or a closure constant.
    Construct it with :meth:`from_superset_map`, :meth:`from_nnunet` or :meth:`leaves`; the
    constructor validates its fields.

    Attributes:
      names: the leaf names, ``names[c]`` for leaf id ``c``.
      set_ids: the ids of the label sets, increasing, each ``>= num_classes``.
      set_members: ``set_members[j]`` is the sorted tuple of leaves of set ``set_ids[j]``.
      set_names: a name per label set.
      ignore_id: the id of the ignore label (the set of all leaves), or ``None``.
      region_ids: the set ids that are nnU-Net *regions* (structures made of several leaves, such as
        BraTS's whole tumour, scored as the union of their leaves), not partial annotations.
    """

    names: tuple[str, ...]
    set_ids: tuple[int, ...] = ()
    set_members: tuple[tuple[int, ...], ...] = ()
    set_names: tuple[str, ...] = ()
    ignore_id: int | None = None
    region_ids: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "set_ids", tuple(int(i) for i in self.set_ids))
        object.__setattr__(
            self, "set_members", tuple(_leaf_tuple(m, context="label set") for m in self.set_members)
        )
        object.__setattr__(self, "set_names", tuple(str(n) for n in self.set_names))
        object.__setattr__(self, "region_ids", tuple(sorted(int(i) for i in self.region_ids)))
        num_classes = len(self.names)
        if num_classes < 1:
            raise ValueError("a label space needs at least one leaf")
        if not (len(self.set_ids) == len(self.set_members) == len(self.set_names)):
            raise ValueError(
                "set_ids, set_members and set_names must have the same length, got "
                f"{len(self.set_ids)}, {len(self.set_members)}, {len(self.set_names)}"
            )
        all_names = list(self.names) + list(self.set_names)
        duplicates = sorted({n for n in all_names if all_names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate label name(s): {duplicates}")
        if len(set(self.set_ids)) != len(self.set_ids):
            raise ValueError(f"duplicate label-set id(s) in {list(self.set_ids)}")
        if list(self.set_ids) != sorted(self.set_ids):
            raise ValueError(f"set_ids must be increasing, got {list(self.set_ids)}")
        seen: dict[tuple[int, ...], int] = {}
        for set_id, members in zip(self.set_ids, self.set_members):
            if not members:
                raise ValueError(f"label set {set_id} is empty")
            unknown = [m for m in members if not 0 <= m < num_classes]
            if unknown:
                raise ValueError(
                    f"label set {set_id} has unknown member(s) {unknown}: leaves are 0..{num_classes - 1}"
                )
            if set_id < num_classes or set_id <= max(members):
                raise ValueError(
                    f"label set id {set_id} must be >= num_classes={num_classes} and larger than "
                    f"each of its members {list(members)}"
                )
            if len(members) == 1:
                raise ValueError(
                    f"label set {set_id} = {list(members)} is a single leaf: use the leaf id {members[0]}"
                )
            if members in seen:
                raise ValueError(
                    f"label sets {seen[members]} and {set_id} have the same members {list(members)}"
                )
            seen[members] = set_id
        bad_regions = [i for i in self.region_ids if i not in self.set_ids or i == self.ignore_id]
        if bad_regions:
            raise ValueError(f"region id(s) {bad_regions} must be label-set ids other than the ignore id")
        if self.ignore_id is not None:
            if self.ignore_id not in self.set_ids:
                raise ValueError(f"ignore_id {self.ignore_id} is not one of the set ids {list(self.set_ids)}")
            if self.leaves_of(self.ignore_id) != tuple(range(num_classes)):
                raise ValueError(f"the ignore label {self.ignore_id} must be the set of all leaves")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def leaves(cls, names: int | Sequence[str]) -> LabelSpace:
        """A space with only leaves (full segmentations): ``names`` or a number of classes."""
        if isinstance(names, int):
            names = [f"label_{c}" for c in range(names)]
        return cls(names=tuple(names))

    @classmethod
    def from_superset_map(
        cls,
        num_classes: int,
        superset_map: Mapping[int, Iterable[int]],
        names: Sequence[str] | None = None,
        *,
        set_names: Mapping[int, str] | None = None,
        ignore_id: int | None = None,
    ) -> LabelSpace:
        """Builds a space from the reference package's ``{set_id: [leaf ids]}`` map.

        Args:
          num_classes: the number of leaves ``C``.
          superset_map: label-set id -> its leaves. Each id is ``>= C`` and larger than its members.
          names: optional leaf names (default ``label_0 .. label_{C-1}``).
          set_names: optional names of the sets (default ``set_<id>``).
          ignore_id: optional id, in ``superset_map``, of the set of all leaves to mark as the
            ignore label.

        Returns:
          The :class:`LabelSpace`.

        Raises:
          ValueError: a set id not larger than its members, an empty set, an unknown member, a
            duplicate name, or names of the wrong length.
        """
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if names is None:
            names = [f"label_{c}" for c in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"got {len(names)} leaf names for num_classes={num_classes}: {list(names)}")
        set_names = dict(set_names or {})
        unknown = sorted(set(set_names) - {int(k) for k in superset_map})
        if unknown:
            raise ValueError(f"set_names names unknown set id(s) {unknown}")
        ids = sorted(int(k) for k in superset_map)
        by_id = {int(k): v for k, v in superset_map.items()}
        return cls(
            names=tuple(names),
            set_ids=tuple(ids),
            set_members=tuple(_leaf_tuple(by_id[i], context=f"label set {i}") for i in ids),
            set_names=tuple(set_names.get(i, IGNORE_NAME if i == ignore_id else f"set_{i}") for i in ids),
            ignore_id=ignore_id,
        )

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> LabelSpace:
        """The space a ``dataset.json`` (or :meth:`to_json`'s output) describes: the one reader of
        the JSON form (nnU-Net folders, merged datasets and each run's ``label_space.json``).

        Leaves and the ignore label come from ``labels`` (nnU-Net v2's rules, see
        :meth:`from_nnunet`); label sets from ``label_sets`` (``{name: {"id": <id in the label
        files>, "members": [<leaf ids or names>]}}``) with their ids; nnU-Net regions (list values
        of ``labels``, which no label file holds) become label sets numbered after every other id,
        in the order of ``labels``.

        Raises:
          ValueError: one line naming the field: a missing or malformed ``labels``, a set member
            that is not a leaf, a set id that collides with a leaf, the ignore id or another set.

        >>> space = LabelSpace.from_json({"labels": {"background": 0, "csf": 1, "gm": 2, "wm": 3, "ignore": 5},
        ...                               "label_sets": {"not_wm": {"id": 4, "members": ["csf", "gm"]}}})
        >>> space.leaves_of(4), space.ignore_id, LabelSpace.from_json(space.to_json()) == space
        ((1, 2), 5, True)
        """
        labels = spec.get("labels") if isinstance(spec, Mapping) else None
        if not isinstance(labels, Mapping) or not labels:
            raise ValueError(f"needs a 'labels' object mapping label names to ids, got {labels!r}")
        for name, value in labels.items():
            if isinstance(value, bool) or not (_is_int(value) or isinstance(value, list)):
                raise ValueError(f"labels[{name!r}] must be an integer id or a list of ids, got {value!r}")
        try:
            base = cls._from_nnunet_labels(labels)
        except ValueError as e:
            raise ValueError(f"labels: {e}") from e
        num_classes, names = base.num_classes, base.names
        leaf_text = ", ".join(f"{c}={n}" for c, n in enumerate(names))
        superset: dict[int, tuple[int, ...]] = {}
        set_names: dict[int, str] = {}
        if base.ignore_id is not None:
            superset[base.ignore_id] = tuple(range(num_classes))
            set_names[base.ignore_id] = IGNORE_NAME
        label_sets = spec.get("label_sets", {})
        if not isinstance(label_sets, Mapping):
            raise ValueError(f"'label_sets' must be an object {{name: {{id, members}}}}, got {label_sets!r}")
        for name, entry in label_sets.items():
            field = f"label_sets[{name!r}]"
            if not isinstance(entry, Mapping) or set(entry) != {"id", "members"}:
                raise ValueError(f"{field} must be {{\"id\": <int>, \"members\": [<leaves>]}}, got {entry!r}")
            set_id, members = entry["id"], entry["members"]
            if not _is_int(set_id) or set_id < 0:
                raise ValueError(f"{field}.id must be a non-negative integer, got {set_id!r}")
            set_id = int(set_id)
            if name in names or name == IGNORE_NAME or name in labels:
                raise ValueError(f"{field}: the name is already used in 'labels'")
            if set_id < num_classes:
                raise ValueError(
                    f"{field}.id {set_id} collides with the leaf {names[set_id]!r} (leaf ids are "
                    f"0..{num_classes - 1}: {leaf_text}); a set id must be >= {num_classes}"
                )
            if set_id in superset:
                raise ValueError(f"{field}.id {set_id} is already the id of {set_names[set_id]!r}")
            if not isinstance(members, list) or not members:
                raise ValueError(f"{field}.members must be a non-empty list of leaves, got {members!r}")
            leaves = []
            for m in members:
                if isinstance(m, str) and m in names:
                    leaves.append(names.index(m))
                elif _is_int(m) and 0 <= m < num_classes:
                    leaves.append(int(m))
                else:
                    raise ValueError(f"{field}.members: {m!r} is not a leaf (leaves: {leaf_text})")
            if len(set(leaves)) < 2:
                raise ValueError(f"{field}.members {members} name a single leaf: write that leaf's id instead of a set")
            superset[set_id] = tuple(sorted(set(leaves)))
            set_names[set_id] = str(name)
        next_id = max([num_classes - 1, *superset]) + 1
        region_ids = []
        for set_id, members, name in zip(base.set_ids, base.set_members, base.set_names):
            if set_id != base.ignore_id:  # an nnU-Net region
                if members in {tuple(m) for m in superset.values()}:
                    raise ValueError(f"region {name!r} has the members of a label set; name them once")
                superset[next_id], set_names[next_id] = members, name
                region_ids.append(next_id)
                next_id += 1
        space = cls.from_superset_map(num_classes, superset, names, set_names=set_names, ignore_id=base.ignore_id)
        return dataclasses.replace(space, region_ids=tuple(region_ids))

    def to_json(self) -> dict[str, Any]:
        """``{"labels": ..., "label_sets": ...}``, the inverse of :meth:`from_json`: leaves, regions
        (as lists) and the ignore label in ``labels``, every other set in ``label_sets`` with its
        id, so that ids round-trip exactly (a ``dataset.json``'s label part, a run's
        ``label_space.json``)."""
        labels: dict[str, Any] = {name: c for c, name in enumerate(self.names)}
        label_sets = {}
        for set_id, members, name in zip(self.set_ids, self.set_members, self.set_names):
            if set_id == self.ignore_id:
                labels[IGNORE_NAME] = set_id
            elif set_id in self.region_ids:  # nnU-Net's notation: a list of leaves in 'labels'
                labels[name] = list(members)
            else:
                label_sets[name] = {"id": set_id, "members": list(members)}
        out: dict[str, Any] = {"labels": labels}
        if label_sets:
            out["label_sets"] = label_sets
        return out

    @classmethod
    def from_nnunet(cls, labels: Mapping[str, int | Sequence[int]]) -> LabelSpace:
        """Builds a space from the ``"labels"`` dict of an nnU-Net v2 ``dataset.json``:
        ``from_json({"labels": labels})``.

        Integer values name leaves; list values are *regions*, i.e. label sets, which get the ids
        following the largest leaf or ignore id, in dict order (:attr:`region_ids`); the key
        ``"ignore"`` gives the id of the ignore label (the set of all leaves, nnU-Net requires it to
        be the largest id). The leaves are ``0..C-1``: a value that only regions cover is a leaf
        named ``label_<value>`` (BraTS-style ``labels`` name the regions and leave some leaves
        implicit); a value neither named nor covered is an error.

        >>> space = LabelSpace.from_nnunet(
        ...     {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3,
        ...      "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "ignore": 4})
        >>> space.ignore_id, space.id_of("whole_tumor"), space.leaves_of(6)
        (4, 5, (2, 3))
        >>> space.to_nnunet()["tumor_core"]
        [2, 3]
        >>> brats = LabelSpace.from_nnunet({"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
        ...                                 "enhancing_tumor": 3})
        >>> brats.names, [brats.name_of(i) for i in brats.region_ids]
        (('background', 'label_1', 'label_2', 'enhancing_tumor'), ['whole_tumor', 'tumor_core'])
        """
        try:
            return cls.from_json({"labels": labels})
        except ValueError as e:
            raise ValueError(f"nnU-Net {e}") from e

    @classmethod
    def _from_nnunet_labels(cls, labels: Mapping[str, int | Sequence[int]]) -> LabelSpace:
        """nnU-Net v2's rules for ``labels`` alone (leaves, ignore, regions after them)."""
        leaves: dict[int, str] = {}
        regions: list[tuple[str, tuple[int, ...]]] = []
        ignore_id = None
        for name, value in labels.items():
            if name == IGNORE_NAME:
                if not isinstance(value, (int, np.integer)):
                    raise ValueError(f"'ignore' must be an integer id, got {value!r}")
                ignore_id = int(value)
            elif isinstance(value, (int, np.integer)):
                if int(value) in leaves:
                    raise ValueError(
                        f"id {int(value)} is named twice ({leaves[int(value)]!r}, {name!r})"
                    )
                leaves[int(value)] = name
            elif isinstance(value, (list, tuple)):
                regions.append((name, _leaf_tuple(value, context=f"nnU-Net region {name!r}")))
            else:
                raise ValueError(f"{name!r} must be an int or a list of ints, got {value!r}")
        covered = {m for _, members in regions for m in members}
        num_classes = max([*leaves, *covered]) + 1 if leaves else 0
        for value in sorted(covered - set(leaves)):  # a leaf only the regions name (BraTS-style)
            leaves[value] = f"label_{value}"
            if leaves[value] in labels:
                raise ValueError(f"leaf {value} is unnamed but 'label_{value}' names something else")
        missing = sorted(set(range(num_classes)) - set(leaves))
        if missing or not leaves:
            raise ValueError(f"leaf ids must be 0..C-1 with no gap; missing {missing}")
        if ignore_id is not None and ignore_id < num_classes:
            raise ValueError(
                f"'ignore' id {ignore_id} must be larger than every leaf id (< {num_classes})"
            )
        sets: dict[int, tuple[str, tuple[int, ...]]] = {}
        if ignore_id is not None:
            sets[ignore_id] = (IGNORE_NAME, tuple(range(num_classes)))
        next_id = (num_classes if ignore_id is None else ignore_id + 1)
        region_ids = []
        for name, members in regions:
            unknown = [m for m in members if not 0 <= m < num_classes]
            if unknown:
                raise ValueError(f"region {name!r} names {unknown}, which are not leaf ids "
                                 f"(0..{num_classes - 1})")
            if len(members) == 1:
                raise ValueError(f"region {name!r} = [{members[0]}] is a single leaf; write "
                                 f"{members[0]} instead of a list")
            sets[next_id] = (name, members)
            region_ids.append(next_id)
            next_id += 1
        ids = sorted(sets)
        return cls(
            names=tuple(leaves[c] for c in range(num_classes)),
            set_ids=tuple(ids),
            set_members=tuple(sets[i][1] for i in ids),
            set_names=tuple(sets[i][0] for i in ids),
            ignore_id=ignore_id,
            region_ids=tuple(region_ids),
        )

    # ------------------------------------------------------------------ exports
    def to_superset_map(self) -> dict[int, list[int]]:
        """The ``{set_id: [leaf ids]}`` map of the reference package (inverse of
        :meth:`from_superset_map`)."""
        return {i: list(m) for i, m in zip(self.set_ids, self.set_members)}

    def to_nnunet(self) -> dict[str, int | list[int]]:
        """The nnU-Net v2 ``"labels"`` dict (inverse of :meth:`from_nnunet` for spaces whose region
        ids follow the leaves and the ignore id, as :meth:`from_nnunet` assigns them)."""
        out: dict[str, int | list[int]] = {name: c for c, name in enumerate(self.names)}
        for set_id, members, name in zip(self.set_ids, self.set_members, self.set_names):
            if set_id != self.ignore_id:
                out[name] = list(members)
        if self.ignore_id is not None:
            out[IGNORE_NAME] = self.ignore_id
        return out

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        """``C``: the number of leaves, i.e. of network output channels."""
        return len(self.names)

    @property
    def num_ids(self) -> int:
        """``K``: one more than the largest label id; the number of rows of :attr:`membership`."""
        return max(self.set_ids, default=self.num_classes - 1) + 1

    @functools.cached_property
    def membership(self) -> np.ndarray:
        """Boolean ``[K, C]``: ``membership[k, c]`` is true iff leaf ``c`` belongs to label id ``k``.

        Rows ``0..C-1`` are the identity; rows of ids that name nothing are all false.
        """
        m = np.zeros((self.num_ids, self.num_classes), dtype=bool)
        m[np.arange(self.num_classes), np.arange(self.num_classes)] = True
        for set_id, members in zip(self.set_ids, self.set_members):
            m[set_id, list(members)] = True
        m.setflags(write=False)
        return m

    @functools.cached_property
    def set_sizes(self) -> np.ndarray:
        """Int ``[K]``: the number of leaves of each label id (0 for ids that name nothing)."""
        sizes = self.membership.sum(axis=1).astype(np.int32)
        sizes.setflags(write=False)
        return sizes

    @functools.cached_property
    def valid_ids(self) -> np.ndarray:
        """Bool ``[K]``: which ids name a leaf or a label set."""
        valid = self.set_sizes > 0
        valid.setflags(write=False)
        return valid

    @property
    def has_sets(self) -> bool:
        return bool(self.set_ids)

    def annotation(self, values: Iterable[int]) -> tuple[tuple[int, ...], bool, bool]:
        """What a label map holding the ids ``values`` annotates, by the one rule of every data source:
        ``(annotated leaves, uses the ignore label, fully annotated)``.

        A voxel labelled with a set ``A`` (not the ignore label nor another set of every leaf) says
        the annotator did not delineate the leaves of ``A``; the annotated leaves are the leaves in
        no such set. The ignore label marks voxels whose label is unknown; it does not make a leaf
        unannotated. A map with neither a label set nor the ignore label is fully annotated.

        >>> space = LabelSpace.from_superset_map(4, {4: [2, 3], 5: [0, 1, 2, 3]}, ignore_id=5)
        >>> space.annotation([0, 1, 4]), space.annotation([0, 1, 2, 5]), space.annotation([0, 3])
        (((0, 1), False, False), ((0, 1, 2, 3), True, False), ((0, 1, 2, 3), False, True))
        """
        everything = tuple(range(self.num_classes))
        values = {int(v) for v in values}
        has_ignore = self.ignore_id is not None and self.ignore_id in values
        sets = [v for v in values if v >= self.num_classes and v != self.ignore_id]
        unannotated = {c for v in sets if self.leaves_of(v) != everything for c in self.leaves_of(v)}
        return tuple(c for c in everything if c not in unannotated), has_ignore, not sets and not has_ignore

    def annotation_name(self, annotated: Iterable[int], *, has_ignore: bool = False) -> str:
        """A name for what a label map annotates (reports): ``"full"`` for every leaf without the
        ignore label; else the annotated leaves joined by ``+`` (``"all"`` for every leaf), with
        ``+ignore`` when it uses the ignore label.

        >>> space = LabelSpace.leaves(["background", "wm", "gm"])
        >>> space.annotation_name([0, 1]), space.annotation_name([0, 1, 2]), space.annotation_name([0, 1, 2], has_ignore=True)
        ('background+wm', 'full', 'all+ignore')
        """
        annotated = tuple(sorted(int(c) for c in annotated))
        every = annotated == tuple(range(self.num_classes))
        if every and not has_ignore:
            return "full"
        name = "all" if every else "+".join(self.names[c] for c in annotated)
        return name + ("+ignore" if has_ignore else "")

    @functools.cached_property
    def foreground_ids(self) -> tuple[int, ...]:
        """The ids that certainly mark foreground: the leaves ``1..C-1`` (leaf 0 is the background)
        and the label sets without the background (a set with it, such as the ignore label, may be
        background). Foreground-biased patch sampling centres patches on these.

        >>> LabelSpace.from_superset_map(4, {4: [2, 3], 5: [0, 3]}).foreground_ids
        (1, 2, 3, 4)
        """
        return tuple(range(1, self.num_classes)) + tuple(
            i for i, members in zip(self.set_ids, self.set_members) if 0 not in members)

    # ------------------------------------------------------------------ lookups
    def id_of(self, key: str | int | Iterable[int]) -> int:
        """The label id of a name, of a leaf id, or of a set of leaves (a singleton gives the leaf).

        Raises:
          ValueError: no label has that name or those members.
        """
        if isinstance(key, str):
            if key in self.names:
                return self.names.index(key)
            if key in self.set_names:
                return self.set_ids[self.set_names.index(key)]
            raise ValueError(f"unknown label name {key!r}; known: {list(self.names + self.set_names)}")
        if isinstance(key, (int, np.integer)):
            key = int(key)
            if 0 <= key < self.num_ids and self.valid_ids[key]:
                return key
            raise ValueError(f"unknown label id {key}")
        members = _leaf_tuple(key, context="id_of")
        if len(members) == 1 and 0 <= members[0] < self.num_classes:
            return members[0]
        for set_id, m in zip(self.set_ids, self.set_members):
            if m == members:
                return set_id
        raise ValueError(f"no label set with members {list(members)}")

    def name_of(self, label_id: int) -> str:
        """The name of a leaf or set id."""
        label_id = self.id_of(int(label_id))
        if label_id < self.num_classes:
            return self.names[label_id]
        return self.set_names[self.set_ids.index(label_id)]

    def leaves_of(self, label_id: int) -> tuple[int, ...]:
        """The sorted leaves of a label id (a 1-tuple for a leaf)."""
        label_id = self.id_of(int(label_id))
        if label_id < self.num_classes:
            return (label_id,)
        return self.set_members[self.set_ids.index(label_id)]

    def with_set(self, members: Iterable[int], *, name: str | None = None) -> tuple[LabelSpace, int]:
        """Returns ``(space, id)``: this space with the label set ``members`` added, and its id.

        An existing set (or a single leaf) is returned unchanged with its id; a new set gets the
        id ``num_ids`` (larger than every existing id, hence than its members).
        """
        members = _leaf_tuple(members, context="with_set")
        try:
            return self, self.id_of(members)
        except ValueError:
            pass
        new_id = self.num_ids
        if members == tuple(range(self.num_classes)) and self.ignore_id is None and name == IGNORE_NAME:
            ignore_id = new_id
        else:
            ignore_id = self.ignore_id
        space = LabelSpace(
            names=self.names,
            set_ids=self.set_ids + (new_id,),
            set_members=self.set_members + (members,),
            set_names=self.set_names + (name or f"set_{new_id}",),
            ignore_id=ignore_id,
        )
        return space, new_id

    def with_ignore(self) -> tuple[LabelSpace, int]:
        """This space with an ignore label (the set of all leaves); returns ``(space, ignore_id)``."""
        if self.ignore_id is not None:
            return self, self.ignore_id
        members = tuple(range(self.num_classes))
        space, set_id = self.with_set(members, name=IGNORE_NAME)
        if space.ignore_id is None:  # the set of all leaves already existed under another name
            space = dataclasses.replace(space, ignore_id=set_id)
        return space, set_id

    def protocol(self, annotated: Iterable[int | str], *, name: str | None = None) -> AnnotationProtocol:
        """The annotation protocol that annotates the leaves ``annotated`` (ids or names)."""
        return AnnotationProtocol.create(self, annotated, name=name)

    def validate(self, labels: Any, *, what: str = "labels") -> None:
        """Raises ``ValueError`` when ``labels`` hold ids that name no leaf or set (host side)."""
        validate_labels(labels, self, what=what)

    def __repr__(self) -> str:
        sets = ", ".join(f"{i}: {list(m)}" for i, m in zip(self.set_ids, self.set_members))
        return f"LabelSpace(C={self.num_classes}, names={list(self.names)}, sets={{{sets}}}, ignore_id={self.ignore_id})"


def validate_labels(labels: Any, space: LabelSpace | int, *, what: str = "labels") -> np.ndarray:
    """Checks on the host that an integer label map holds only ids of ``space``: the one label-id
    check of the library (data readers, the loader, :func:`labelset_jax.losses.validate`).

    Call it on concrete arrays before training or evaluation (not inside ``jax.jit``: it reads the
    values).

    Args:
      labels: integer array-like of label ids.
      space: a :class:`LabelSpace`, or a number of classes for full segmentations.
      what: how to name the array in the error (e.g. a file name).

    Returns:
      The sorted distinct ids, int64.

    Raises:
      ValueError: non-integer dtype, or values that name no leaf or set; the message lists them.

    >>> validate_labels(np.array([0, 1, 4, 1]), LabelSpace.from_superset_map(4, {4: [2, 3]})).tolist()
    [0, 1, 4]
    >>> validate_labels(np.array([0, 7, -1]), 4)
    Traceback (most recent call last):
    ...
    ValueError: labels: label value(s) [-1, 7] are neither a leaf, a label set nor the ignore label (leaves 0..3)
    """
    if isinstance(space, (int, np.integer)):
        space = LabelSpace.leaves(int(space))
    arr = np.asarray(labels)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{what} must be an integer label map, got dtype {arr.dtype}")
    values = np.unique(arr).astype(np.int64)
    ok = (values >= 0) & (values < space.num_ids)
    ok[ok] = space.valid_ids[values[ok]]
    bad = values[~ok]
    if bad.size:
        shown = bad[:10].tolist()
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        valid = f"leaves 0..{space.num_classes - 1}"
        sets = [i for i in space.set_ids if i != space.ignore_id]
        if sets:
            valid += f", label sets {sets}"
        if space.ignore_id is not None:
            valid += f", ignore {space.ignore_id}"
        raise ValueError(f"{what}: label value(s) {shown}{more} are neither a leaf, a label set nor the ignore "
                         f"label ({valid})")
    return values


@dataclasses.dataclass(frozen=True)
class AnnotationProtocol:
    """Which leaves an annotator segmented; turns full segmentations into partial ones (docs/theory.md §1).

    Every voxel whose leaf is not annotated gets the label set of all non-annotated leaves
    ``L \\ A+``; annotated leaves stay singletons. The set is added to the space when needed.

    Attributes:
      space: the label space, including the protocol's set.
      annotated: the sorted annotated leaves ``A+``.
      set_id: the id written for non-annotated voxels, or ``None`` when the protocol annotates
        every leaf (or all but one, which is then known too).
      name: a name for reports and manifests.

    >>> p = FETAL_BRAIN.protocol(["background", "wm", "ventricles", "cerebellum"])
    >>> p.set_id, p.space.leaves_of(p.set_id)
    (9, (4, 5, 6, 7, 8))
    >>> p.apply(np.array([0, 1, 4, 5, 8])).tolist()
    [0, 1, 9, 9, 9]
    """

    space: LabelSpace
    annotated: tuple[int, ...]
    set_id: int | None
    name: str

    @classmethod
    def create(cls, space: LabelSpace, annotated: Iterable[int | str], *, name: str | None = None) -> AnnotationProtocol:
        leaves = []
        for a in annotated:
            label_id = space.id_of(a)
            if label_id >= space.num_classes:
                raise ValueError(f"annotated labels must be leaves, got the set {a!r}")
            leaves.append(label_id)
        annotated_t = tuple(sorted(set(leaves)))
        rest = tuple(c for c in range(space.num_classes) if c not in annotated_t)
        if len(rest) <= 1:
            set_id = None
        else:
            space, set_id = space.with_set(rest)
        if name is None:
            name = "full" if set_id is None else "+".join(space.names[c] for c in annotated_t)
        return cls(space=space, annotated=annotated_t, set_id=set_id, name=name)

    @functools.cached_property
    def lookup(self) -> np.ndarray:
        """Int32 ``[C]``: the label id written for each true leaf."""
        lut = np.arange(self.space.num_classes, dtype=np.int32)
        if self.set_id is not None:
            lut[[c for c in range(self.space.num_classes) if c not in self.annotated]] = self.set_id
        lut.setflags(write=False)
        return lut

    @property
    def is_full(self) -> bool:
        return self.set_id is None

    def apply(self, labels):
        """Maps a full segmentation (leaf ids) to the partial one. Pure: works on NumPy arrays and
        on JAX arrays (also under ``jax.jit``), returning the same kind of array."""
        if isinstance(labels, np.ndarray):
            if labels.size and (labels.min() < 0 or labels.max() >= self.space.num_classes):
                raise ValueError(
                    f"protocol {self.name!r} applies to full segmentations (leaf ids 0.."
                    f"{self.space.num_classes - 1}), got ids in [{labels.min()}, {labels.max()}]"
                )
            return self.lookup[labels]
        import jax.numpy as jnp  # local: the algebra itself needs only NumPy

        return jnp.asarray(self.lookup)[labels]


#: The fetal brain parcellation label space of docs/theory.md §4 with the three partial-annotation sets.
FETAL_BRAIN = LabelSpace.from_superset_map(
    9,
    {9: [4, 5, 6, 7, 8], 10: [5, 6, 7, 8], 11: [5, 6, 7]},
    names=[
        "background",
        "wm",
        "ventricles",
        "cerebellum",
        "ecsf",
        "cortical_gm",
        "deep_gm",
        "brainstem",
        "corpus_callosum",
    ],
)

#: The annotation protocols of the reference study (docs/theory.md §4), by name.
FETAL_BRAIN_PROTOCOLS: dict[str, AnnotationProtocol] = {
    "full": FETAL_BRAIN.protocol(range(9), name="full"),
    "wm_vent_cereb": FETAL_BRAIN.protocol([0, 1, 2, 3], name="wm_vent_cereb"),
    "plus_ecsf": FETAL_BRAIN.protocol([0, 1, 2, 3, 4], name="plus_ecsf"),
    "plus_ecsf_cc": FETAL_BRAIN.protocol([0, 1, 2, 3, 4, 8], name="plus_ecsf_cc"),
}
