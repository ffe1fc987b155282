"""The one record of an image with its labels, returned by every data source of the library.

Phantom cohorts, synthetic cases, MNI tissue cases, manifests, FeTA folders and written cohorts all
give :class:`Case` records; the loader, the evaluation and the report take them. Images are stored
as acquired or generated (raw intensities): the loader and the evaluation normalise them with
:func:`~labelset_jax.data.transforms.normalize_image`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from labelset_jax.data.phantoms import phantom_affine

__all__ = ["Case"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One image and its (full or partial) label map, in memory.

    Attributes:
      id: a unique name (letters, digits, ``._-``), used as a file name.
      image: float ``[D, H, W]`` raw intensities, or ``[D, H, W, K]`` for ``K`` input channels
        (e.g. T1 and T2 of one subject, co-registered).
      labels: int ``[D, H, W]`` label ids (leaves, and set ids under a partial protocol).
      spacing: voxel size in mm.
      protocol: a name for how the labels were annotated (``"full"``: every leaf), for reports.
      affine: voxel-to-world ``[4, 4]``; default a diagonal one centred on the volume.
      full_labels: the full segmentation when known (phantom cohorts), else ``None``.
      metadata: quantities a data source knows exactly, by name: ``"q"`` (synthetic cases, the
        foreground probability of each voxel, float ``[D, H, W]``), ``"probs"`` (MNI tissue cases,
        the class probabilities the labels were drawn from, float ``[D, H, W, C]``), ``"source"``
        (a merged dataset's source of the case).
      annotated: the leaves the labels delineate, sorted; ``None`` for a full segmentation (every
        leaf). Every data source sets it (from the protocol, or from the label sets a label map
        uses); the loader's sampling and the evaluation read it.

    >>> case = Case("a", np.zeros((2, 3, 4)), np.zeros((2, 3, 4), np.int32), (1, 1, 2))
    >>> case.spacing, case.protocol, case.affine[:3, 3].tolist(), case.voxel_ml
    ((1.0, 1.0, 2.0), 'full', [-0.5, -1.0, -3.0], 0.002)
    """

    id: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    protocol: str = "full"
    affine: np.ndarray | None = None
    full_labels: np.ndarray | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    annotated: tuple[int, ...] | None = None

    def __post_init__(self):
        if not _SAFE_ID.match(self.id):
            raise ValueError(f"case id {self.id!r} must be letters, digits and ._- (it names files)")
        if np.shape(self.image)[:3] != np.shape(self.labels) or np.ndim(self.labels) != 3 \
                or np.ndim(self.image) not in (3, 4):
            raise ValueError(f"case {self.id}: need a 3D label map and an image of its shape (with channels "
                             f"last, if several), got {np.shape(self.image)} and {np.shape(self.labels)}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        if len(self.spacing) != 3:
            raise ValueError(f"case {self.id}: spacing must have 3 entries, got {self.spacing}")
        if self.affine is None:
            object.__setattr__(self, "affine", phantom_affine(np.shape(self.labels), self.spacing))
        if self.annotated is not None:
            object.__setattr__(self, "annotated", tuple(sorted(int(c) for c in self.annotated)))

    @property
    def is_full(self) -> bool:
        """Whether the labels are a full segmentation (no label set, no ignore label)."""
        return self.annotated is None

    @property
    def num_channels(self) -> int:
        """The number of input channels ``K`` (1 for a ``[D, H, W]`` image)."""
        return 1 if np.ndim(self.image) == 3 else int(np.shape(self.image)[3])

    @property
    def voxel_ml(self) -> float:
        """The volume of one voxel in ml."""
        return float(np.prod(self.spacing)) / 1000.0


def choose_validation(ids: Sequence[str], full: Sequence[bool], num_val: int, *, seed: int,
                      sources: Sequence[str] | None = None) -> set[str]:
    """The ids of ``num_val`` validation cases, the one draw of every dataset without a split file.

    Fully annotated cases when there are any (``numpy.random.default_rng(seed).choice`` among them,
    in the order given); otherwise every case may validate (each is scored on what it annotates),
    shuffled and then taken in turn from each source, so that a merged dataset validates on all of
    its sources. The caller checks that ``num_val`` is possible.

    >>> sorted(choose_validation(["a", "b", "c", "d"], [True, False, True, True], 2, seed=0))
    ['c', 'd']
    >>> sorted(choose_validation(["a1", "a2", "b1", "b2"], [False] * 4, 2, seed=0, sources=["a", "a", "b", "b"]))
    ['a1', 'b1']
    """
    rng = np.random.default_rng(seed)
    full_ids = [i for i, f in zip(ids, full) if f]
    if full_ids:
        return {full_ids[k] for k in rng.choice(len(full_ids), size=int(num_val), replace=False).tolist()}
    sources = list(sources) if sources is not None else [""] * len(ids)
    order = [(ids[k], sources[k]) for k in rng.permutation(len(ids))]
    rank = {i: [s for _, s in order[:k]].count(src) for k, (i, src) in enumerate(order)}
    return {i for i, _ in sorted(order, key=lambda o: rank[o[0]])[:int(num_val)]}
