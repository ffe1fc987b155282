"""NIfTI input/output with checks: every error is a ``ValueError`` that names the file.

Volumes are 3D NumPy arrays in the voxel order of the file (or of the closest RAS+ orientation with
``canonical=True``). ``spacing`` is the voxel size in millimetres, taken from the affine (the norms
of its columns), so it follows any reorientation.

Example:

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "case.nii.gz")
>>> affine = np.diag([0.8, 0.8, 0.8, 1.0])
>>> save_nifti(path, np.zeros((4, 5, 6), np.float32), affine)
>>> array, affine2, spacing = load_nifti(path)
>>> array.shape, spacing
((4, 5, 6), (0.8, 0.8, 0.8))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from labelset_jax import files
from labelset_jax.labelsets import LabelSpace, validate_labels

__all__ = ["load_nifti", "load_header", "save_nifti", "load_labels", "load_case", "spacing_of", "check_finite"]

PathLike = str | os.PathLike


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """The voxel size (mm) along the three array axes: the norms of the affine's first 3 columns.

    >>> spacing_of(np.diag([2.0, 3.0, 4.0, 1.0]))
    (2.0, 3.0, 4.0)
    """
    affine = np.asarray(affine, dtype=np.float64)
    return tuple(round(float(v), 6) for v in np.linalg.norm(affine[:3, :3], axis=0))


def _open(path: PathLike, canonical: bool) -> nib.Nifti1Image:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, OSError...
        raise ValueError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    if canonical:
        img = nib.as_closest_canonical(img)
    return img


def _read(img: nib.Nifti1Image, path: PathLike, dtype: Any) -> np.ndarray:
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        pass
    elif len(shape) != 3:
        raise ValueError(
            f"{path}: expected a 3D volume (or 4D with a trailing singleton axis), got shape {shape}"
        )
    try:
        if dtype is None:
            array = np.asanyarray(img.dataobj)
        else:
            array = img.get_fdata(dtype=np.float64 if np.dtype(dtype).itemsize > 4 else np.float32)
    except Exception as e:  # truncated or corrupt data block
        raise ValueError(
            f"{path}: cannot read the voxel data, the file is corrupt or truncated ({type(e).__name__}: {e})"
        ) from e
    array = np.asarray(array)
    if array.ndim == 4:
        array = array[..., 0]
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array


def load_nifti(
    path: PathLike, *, canonical: bool = False, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Loads a 3D NIfTI volume.

    Args:
      path: a ``.nii`` or ``.nii.gz`` file.
      canonical: reorient to the closest RAS+ orientation (``nibabel.as_closest_canonical``):
        array axis 0 then runs left to right, axis 1 posterior to anterior, axis 2 inferior to
        superior. The returned affine is the reoriented one.
      dtype: the array dtype (intensity scaling of the header applied), or ``None`` for the
        on-disk type after scaling (integer label maps stay integers when not scaled).

    Returns:
      ``(array, affine, spacing)``: the 3D array, the float64 ``[4, 4]`` voxel-to-world affine and
      the voxel size in mm.

    Raises:
      ValueError: the file is missing, unreadable, corrupt or truncated, or not 3D (a 4D image is
        accepted only with a trailing singleton axis). The message starts with the path.
    """
    img = _open(path, canonical)
    array = _read(img, path, dtype)
    affine = np.asarray(img.affine, dtype=np.float64)
    return array, affine, spacing_of(affine)


def load_labels(
    path: PathLike, *, canonical: bool = False, space: LabelSpace | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Loads an integer label map as int32: like :func:`load_nifti`, plus label checks.

    Label maps stored as floats (common in public data sets) are accepted when every value is an
    integer.

    Args:
      path: the NIfTI file.
      canonical: reorient to RAS+ (nearest-neighbour: only axes are permuted/flipped).
      space: when given, every value must be a label id of ``space``.

    Returns:
      ``(labels int32, affine, spacing)``.

    Raises:
      ValueError: any error of :func:`load_nifti`, non-integer or non-finite values, or ids that
        are not in ``space``; the message names the file.
    """
    raw, affine, spacing = load_nifti(path, canonical=canonical, dtype=None)
    if not np.issubdtype(raw.dtype, np.integer) and raw.dtype != bool:
        raw = raw.astype(np.float64, copy=False)
        if not np.all(np.isfinite(raw)):
            raise ValueError(f"{path}: label map holds NaN or Inf values")
        rounded = np.rint(raw)
        if not np.array_equal(rounded, raw):
            bad = np.unique(raw[rounded != raw])[:5].tolist()
            raise ValueError(f"{path}: label map holds non-integer values, e.g. {bad}")
        raw = rounded
    if raw.size and (raw.min() < np.iinfo(np.int32).min or raw.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{path}: label values out of the int32 range")
    labels = raw.astype(np.int32)
    if space is not None:
        validate_labels(labels, space, what=str(path))
    return labels, affine, spacing


def check_finite(image: np.ndarray, path: str | os.PathLike) -> None:
    """Raises ``ValueError`` naming ``path`` and the count when ``image`` holds NaN or Inf values:
    the one intensity check of every reader (datasets, manifests, predict)."""
    finite = np.isfinite(image)
    if not finite.all():
        raise ValueError(f"{path}: image holds {int(finite.size - finite.sum())} NaN or Inf intensities")


def load_case(
    image_path: PathLike,
    label_path: PathLike,
    *,
    space: LabelSpace | None,
    atol: float = 1e-3,
    canonical: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Loads an image and its label map, checking that they match.

    Args:
      image_path: the intensity volume.
      label_path: the label map (label ids of ``space``).
      space: the label space the label map must belong to (``None`` skips the id check).
      atol: the largest absolute difference allowed between the two affines (mm).
      canonical: reorient both to RAS+ (see :func:`load_nifti`).

    Returns:
      ``(image float32, labels int32, affine, spacing)``, the affine and spacing of the image.

    Raises:
      ValueError: any error of :func:`load_nifti` / :func:`load_labels`, NaN or Inf intensities,
        image/label shape mismatch, affines differing by more than ``atol``, or label ids not in
        ``space``. The message names the offending file(s).
    """
    image, affine, spacing = load_nifti(image_path, canonical=canonical)
    check_finite(image, image_path)
    labels, label_affine, _ = load_labels(label_path, canonical=canonical, space=None)
    if labels.shape != image.shape:
        raise ValueError(
            f"{label_path}: label shape {labels.shape} differs from the image shape {image.shape} "
            f"of {image_path}"
        )
    diff = float(np.max(np.abs(label_affine - affine)))
    if diff > atol:
        raise ValueError(
            f"{label_path}: affine differs from the affine of {image_path} by up to {diff:.4g} "
            f"(tolerance {atol})"
        )
    if space is not None:
        validate_labels(labels, space, what=str(label_path))
    return image, labels, affine, spacing


def load_header(path: PathLike) -> tuple[tuple[int, int, int], np.ndarray, Any]:
    """The shape, affine and header of a 3D NIfTI file, read from its header alone (no voxels):
    the checks of :func:`load_nifti` that need no voxel data, for checking many files up front.

    Raises:
      ValueError: the file is missing, not a NIfTI image, or not 3D; the message starts with the path.
    """
    img = _open(path, canonical=False)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 3D volume (or 4D with a trailing singleton axis), got shape {shape}")
    return shape, np.asarray(img.affine, dtype=np.float64), img.header


def save_nifti(path: PathLike, array: np.ndarray, affine: np.ndarray, *, header: Any = None) -> None:
    """Writes a NIfTI file atomically (:func:`labelset_jax.files.atomic_path`).

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    The data type is the array's (use int32 for label maps, float32 for images); booleans are
    written as uint8.

    Args:
      path: the destination (``.nii`` or ``.nii.gz``: the suffix picks the compression).
      array: a 3D (or 4D) array.
      affine: the ``[4, 4]`` voxel-to-world matrix (sform and qform are both set, code 1).
      header: an optional NIfTI header to start from (e.g. the source image's); its sform and
        qform, with their codes, are then kept instead.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if header is None:
        img.set_sform(img.affine, code=1)
        img.set_qform(img.affine, code=1)
    else:  # the source's transforms keep their codes (e.g. 2 aligned, 4 MNI), as viewers read them
        img.set_sform(header.get_sform(), code=int(header["sform_code"]))
        img.set_qform(header.get_qform(), code=int(header["qform_code"]))
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    with files.atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
