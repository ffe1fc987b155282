"""NIfTI I/O: round trips, reorientation, and a clear ValueError naming the file for each fault."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from labelset_jax.data import load_case, load_labels, load_nifti, save_nifti, spacing_of
from labelset_jax.labelsets import FETAL_BRAIN

AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.8, 0, 5.0], [0, 0, 1.2, 3.0], [0, 0, 0, 1]])


def write_pair(tmp_path, image=None, labels=None, label_affine=AFFINE):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 7, 5)).astype(np.float32) if image is None else image
    labels = rng.integers(0, 9, size=image.shape[:3]).astype(np.int32) if labels is None else labels
    save_nifti(tmp_path / "img.nii.gz", image, AFFINE)
    save_nifti(tmp_path / "lab.nii.gz", labels, label_affine)
    return tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8])
def test_round_trip_keeps_data_affine_and_dtype(tmp_path, suffix, dtype):
    data = (np.arange(6 * 7 * 5).reshape(6, 7, 5) % 200).astype(dtype)
    path = tmp_path / f"x{suffix}"
    save_nifti(path, data, AFFINE)
    array, affine, spacing = load_nifti(path, dtype=None)
    assert array.dtype == dtype
    np.testing.assert_array_equal(array, data)
    np.testing.assert_allclose(affine, AFFINE)
    assert spacing == (0.8, 0.8, 1.2)
    assert nib.load(str(path)).header.get_sform(coded=True)[1] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_save_replaces_existing_file_atomically(tmp_path):
    path = tmp_path / "x.nii.gz"
    save_nifti(path, np.zeros((2, 2, 2), np.float32), AFFINE)
    save_nifti(path, np.ones((3, 3, 3), np.float32), AFFINE)
    assert load_nifti(path)[0].shape == (3, 3, 3)
    assert len(list(tmp_path.iterdir())) == 1


def test_canonical_reorients_to_ras(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    las = np.diag([-2.0, 1.0, 1.0, 1.0])  # axis 0 runs right -> left
    save_nifti(tmp_path / "las.nii.gz", data, las)
    array, affine, spacing = load_nifti(tmp_path / "las.nii.gz", canonical=True)
    np.testing.assert_array_equal(array, data[::-1])
    assert affine[0, 0] == 2.0 and spacing == (2.0, 1.0, 1.0)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_4d_with_trailing_singleton_is_accepted(tmp_path):
    save_nifti(tmp_path / "x.nii.gz", np.ones((3, 4, 5, 1), np.float32), AFFINE)
    assert load_nifti(tmp_path / "x.nii.gz")[0].shape == (3, 4, 5)


def test_spacing_of_rotated_affine():
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.array([0.5, 0.7, 0.9])
    assert spacing_of(affine) == (0.5, 0.7, 0.9)


def test_load_case_returns_checked_pair(tmp_path):
    image_path, label_path = write_pair(tmp_path)
    image, labels, affine, spacing = load_case(image_path, label_path, space=FETAL_BRAIN)
    assert image.dtype == np.float32 and labels.dtype == np.int32 and image.shape == labels.shape
    assert spacing == (0.8, 0.8, 1.2)


def test_float_stored_integer_labels_are_accepted(tmp_path):
    save_nifti(tmp_path / "lab.nii.gz", np.full((3, 3, 3), 4.0, np.float32), AFFINE)
    labels, _, _ = load_labels(tmp_path / "lab.nii.gz", space=FETAL_BRAIN)
    assert labels.dtype == np.int32 and np.all(labels == 4)


# ---------------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.nii\.gz: no such file"):
        load_nifti(tmp_path / "nope.nii.gz")


def test_truncated_gzip(tmp_path):
    path = tmp_path / "cut.nii.gz"
    save_nifti(path, np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32), AFFINE)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.nii\.gz.*(corrupt|truncated|readable)"):
        load_nifti(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 3))
    with pytest.raises(ValueError, match=r"junk\.nii\.gz"):
        load_nifti(path)


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4, 2), (2, 2, 2, 1, 3)])
def test_wrong_dimensionality(tmp_path, shape):
    path = tmp_path / "dims.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
    with pytest.raises(ValueError, match=r"dims\.nii\.gz: expected a 3D volume"):
        load_nifti(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_image(tmp_path, bad):
    image = np.zeros((6, 7, 5), np.float32)
    image[1, 2, 3] = bad
    image_path, label_path = write_pair(tmp_path, image=image)
    with pytest.raises(ValueError, match=r"img\.nii\.gz: image holds 1 NaN or Inf"):
        load_case(image_path, label_path, space=FETAL_BRAIN)


def test_shape_mismatch(tmp_path):
    image_path, label_path = write_pair(tmp_path, labels=np.zeros((6, 7, 4), np.int32))
    with pytest.raises(ValueError, match=r"lab\.nii\.gz: label shape \(6, 7, 4\) differs.*img\.nii\.gz"):
        load_case(image_path, label_path, space=FETAL_BRAIN)


def test_affine_mismatch(tmp_path):
    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    image_path, label_path = write_pair(tmp_path, label_affine=moved)
    with pytest.raises(ValueError, match=r"lab\.nii\.gz: affine differs.*img\.nii\.gz.*0\.5"):
        load_case(image_path, label_path, space=FETAL_BRAIN)
    load_case(image_path, label_path, space=FETAL_BRAIN, atol=0.6)  # within a looser tolerance


def test_labels_outside_space(tmp_path):
    labels = np.zeros((6, 7, 5), np.int32)
    labels[0, 0, 0], labels[1, 1, 1] = 12, -1
    image_path, label_path = write_pair(tmp_path, labels=labels)
    with pytest.raises(ValueError, match=r"lab\.nii\.gz: label value\(s\) \[-1, 12\] are neither"):
        load_case(image_path, label_path, space=FETAL_BRAIN)


def test_non_integer_labels(tmp_path):
    save_nifti(tmp_path / "lab.nii.gz", np.full((3, 3, 3), 1.5, np.float32), AFFINE)
    with pytest.raises(ValueError, match=r"lab\.nii\.gz: label map holds non-integer values"):
        load_labels(tmp_path / "lab.nii.gz")
