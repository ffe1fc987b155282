"""Orientation and voxel spacing: what nnU-Net users expect of a dataset with several scanners.

Training, evaluation and prediction see every volume in one frame: its array axes reoriented to
the closest RAS+ order (a permutation and flips of the axes, exact, ``nibabel.as_closest_canonical``'s
rule) and resampled to one target spacing (``config.data.spacing``, by default the dataset's median
spacing). Images are resampled linearly and label maps by nearest neighbour (label ids, label sets
included, are never averaged). Predictions go back onto each input's own grid: the probabilities
are resampled linearly to the reoriented input shape, the argmax is taken there (never nearest
neighbour on labels before the argmax), and the axes are put back in the input's order, so that the
output has exactly the input's shape and affine.

The resampling keeps the volume's extent (``scipy.ndimage.zoom`` with ``grid_mode=True``): voxel
``i`` of the new grid covers ``[i·s', (i+1)·s')`` along an axis of the old extent, and
:func:`resampled_affine` gives the matching voxel-to-world matrix.

>>> volume = np.zeros((4, 6, 2)); volume[1:3, 2:4, :] = 1
>>> affine = np.diag([-2.0, 1.0, 3.0, 1.0])  # the first axis runs right to left
>>> frame = Frame.of(volume.shape, affine, target=(1.0, 1.0, 1.0))
>>> frame.shape, frame.spacing, frame.needs_resampling
((8, 6, 6), (1.0, 1.0, 1.0), True)
>>> back = frame.restore(frame.labels(volume.astype(int)).astype(float))
>>> bool(np.array_equal(back, volume))
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["Frame", "resampled_affine", "median_spacing"]


def resampled_affine(affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """The affine of a volume of ``shape`` resampled to ``new_shape`` over the same extent."""
    scale = np.asarray(shape, np.float64) / np.asarray(new_shape, np.float64)  # new voxel in old voxels
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0  # voxel centres: the corners of the extents coincide
    return np.asarray(affine, np.float64) @ step


def median_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """The per-axis median of the cases' voxel spacings (in the canonical axis order)."""
    return tuple(round(float(v), 6) for v in np.median(np.asarray(spacings, np.float64), axis=0))


@dataclasses.dataclass(frozen=True)
class Frame:
    """How one volume goes to the common frame and back.

    Attributes:
      input_shape: the volume's shape as stored.
      input_affine: its affine as stored.
      ornt: the ``nibabel.orientations`` transform from the stored axes to the canonical ones.
      canonical_shape: the shape after reorientation.
      canonical_affine: the affine after reorientation.
      shape: the shape in the common frame (after resampling).
      affine: the affine in the common frame.
      spacing: the spacing in the common frame.
    """

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    ornt: np.ndarray
    canonical_shape: tuple[int, int, int]
    canonical_affine: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def of(cls, shape: Sequence[int], affine: np.ndarray, *, target: Sequence[float] | None) -> Frame:
        """The frame of a volume of ``shape`` and ``affine`` for the target spacing (``None``: keep
        the volume's own spacing, reorient only)."""
        from labelset_jax.data.nifti import spacing_of

        shape = tuple(int(s) for s in shape[:3])
        affine = np.asarray(affine, np.float64)
        ornt = nib.orientations.io_orientation(affine)
        # stored axis i becomes canonical axis ornt[i, 0]
        canonical_shape = tuple(int(shape[i]) for i in np.argsort(ornt[:, 0]))
        # the axes permuted and flipped: voxel i of the canonical array is voxel T(i) of the stored one
        inverse = nib.orientations.inv_ornt_aff(ornt, shape)
        canonical_affine = affine @ inverse
        spacing = spacing_of(canonical_affine)
        if target is None:
            new_shape = canonical_shape
        else:
            new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(canonical_shape, spacing, target))
        new_affine = resampled_affine(canonical_affine, canonical_shape, new_shape)
        return cls(shape, affine, ornt, canonical_shape, canonical_affine, new_shape, new_affine,
                   spacing_of(new_affine))

    @property
    def needs_resampling(self) -> bool:
        return self.shape != self.canonical_shape

    @property
    def needs_reorienting(self) -> bool:
        return not np.array_equal(self.ornt, [[0, 1], [1, 1], [2, 1]])

    def _to_canonical(self, array: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(array, self.ornt) if self.needs_reorienting else array

    def _zoom(self, array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
        factors = [n / o for n, o in zip(shape, array.shape[:3])] + [1.0] * (array.ndim - 3)
        return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)

    def image(self, array: np.ndarray) -> np.ndarray:
        """An image (``[D, H, W]`` or channels last) in the common frame: linear resampling."""
        array = self._to_canonical(np.asarray(array, np.float32))
        return self._zoom(array, self.shape, 1).astype(np.float32) if self.needs_resampling else array

    def labels(self, array: np.ndarray) -> np.ndarray:
        """A label map in the common frame: nearest neighbour (ids are never averaged)."""
        array = self._to_canonical(np.asarray(array))
        return self._zoom(array, self.shape, 0) if self.needs_resampling else array

    def restore(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities ``[*shape, C]`` (or any float map) from the common frame back onto the
        input's grid: linear resampling to the reoriented input shape, then the input's axis order."""
        probs = np.asarray(probs, np.float32)
        if self.needs_resampling:
            probs = self._zoom(probs, self.canonical_shape, 1)
        if self.needs_reorienting:
            back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                   nib.orientations.io_orientation(self.input_affine))
            probs = nib.orientations.apply_orientation(probs, back)
        return np.ascontiguousarray(probs)
