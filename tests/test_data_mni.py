"""MNI152 tissue task: probabilities, exact expected volumes, sampling error, augmentation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from labelset_jax.data import (
    MNI_TISSUE,
    expected_volumes_ml,
    mni152_tissue_maps,
    mni_cohort,
    mni_tissue_case,
    sample_labels,
)


@pytest.fixture(scope="module")
def maps4():
    return mni152_tissue_maps(4)


def test_maps_are_probabilities_and_cached(maps4):
    assert maps4.probs.shape == maps4.image.shape + (4,)
    assert maps4.spacing == (4.0, 4.0, 4.0)
    np.testing.assert_allclose(maps4.probs.sum(-1), 1.0, atol=1e-5)
    assert maps4.probs.min() >= 0
    assert mni152_tissue_maps(4) is maps4  # lru_cache
    assert not maps4.probs.flags.writeable


def test_block_averaging_preserves_expected_volumes(maps4):
    fine = mni152_tissue_maps(1)
    v1 = expected_volumes_ml(fine.probs, fine.spacing)
    v4 = expected_volumes_ml(maps4.probs, maps4.spacing)
    np.testing.assert_allclose(v4[1:], v1[1:], rtol=1e-5)  # background grows with the padding
    # plausible adult tissue volumes (ml): GM > WM > CSF
    assert 800 < v1[2] < 1100 and 550 < v1[3] < 800 and 100 < v1[1] < 400


def test_coarse_affine_maps_block_centres(maps4):
    fine = mni152_tissue_maps(1)
    centre_of_first_block = fine.affine @ np.array([1.5, 1.5, 1.5, 1.0])
    np.testing.assert_allclose(maps4.affine @ np.array([0, 0, 0, 1.0]), centre_of_first_block)


def test_sampled_volumes_match_expected_within_sampling_error():
    case = mni_tissue_case(0, voxel_size=4, augment=False)
    counts = np.bincount(case.labels.ravel(), minlength=4)
    p = case.metadata["probs"].reshape(-1, 4).astype(np.float64)
    mean, std = p.sum(0), np.sqrt((p * (1 - p)).sum(0))
    assert np.all(np.abs(counts - mean) < 5 * std + 1e-9), (counts, mean, std)
    np.testing.assert_allclose(expected_volumes_ml(case.metadata["probs"], case.spacing), mean * 64 / 1000)


def test_sample_labels_frequencies():
    probs = np.broadcast_to(np.array([0.1, 0.2, 0.3, 0.4], np.float32), (200_000, 4))
    labels = sample_labels(probs, np.random.default_rng(1))
    freq = np.bincount(labels, minlength=4) / labels.size
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.005)


def test_augmented_cases_are_deterministic_and_varied():
    a = mni_tissue_case(5, voxel_size=4)
    b = mni_tissue_case(5, voxel_size=4)
    c = mni_tissue_case(6, voxel_size=4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.allclose(a.metadata["probs"], c.metadata["probs"])
    for case in (a, c):
        MNI_TISSUE.validate(case.labels)
        np.testing.assert_allclose(case.metadata["probs"].sum(-1), 1.0, atol=1e-5)
        assert np.all(np.isfinite(case.image))
        # small spatial augmentation: tissue volumes stay within ~20% of the template's
        template = expected_volumes_ml(mni152_tissue_maps(4).probs, (4, 4, 4))
        np.testing.assert_allclose(expected_volumes_ml(case.metadata["probs"], case.spacing)[1:], template[1:], rtol=0.2)


def test_crop_shape_and_cohort():
    cohort = mni_cohort(2, first_seed=3, voxel_size=4, shape=(40, 48, 40))
    assert len(cohort) == 2
    for case in cohort:
        assert case.image.shape == case.labels.shape == (40, 48, 40)
        assert case.metadata["probs"].shape == (40, 48, 40, 4)
    np.testing.assert_array_equal(cohort[1].labels, mni_tissue_case(4, voxel_size=4, shape=(40, 48, 40)).labels)


def test_unaugmented_centre_crop_is_exact(maps4):
    case = mni_tissue_case(0, voxel_size=4, augment=False, shape=(40, 49, 38))
    offset = [(s - o) // 2 for s, o in zip(maps4.image.shape, (40, 49, 38))]
    crop = tuple(slice(o, o + n) for o, n in zip(offset, (40, 49, 38)))
    np.testing.assert_array_equal(case.metadata["probs"], maps4.probs[crop])
    np.testing.assert_array_equal(case.image, maps4.image[crop])
    np.testing.assert_allclose(case.affine[:3, 3], maps4.affine[:3, :3] @ offset + maps4.affine[:3, 3])


def test_bad_voxel_size():
    with pytest.raises(ValueError, match="voxel_size"):
        mni152_tissue_maps(1.5)


def test_cases_are_named_by_seed():
    assert [case.id for case in mni_cohort(2, first_seed=7, voxel_size=8)] == ["mni_00007", "mni_00008"]


def test_missing_nilearn_names_the_extra():
    script = textwrap.dedent("""
        import sys
        sys.modules["nilearn"] = None  # as if it were not installed
        from labelset_jax.data import mni152_tissue_maps
        try:
            mni152_tissue_maps(8)
        except ImportError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert "pip install 'labelset-jax[mni]'" in out.stdout


def test_intensity_augmentation_can_be_left_out():
    full = mni_tissue_case(5, voxel_size=8)
    spatial = mni_tissue_case(5, voxel_size=8, intensity=False, noise_std=(0.0, 0.0))
    np.testing.assert_array_equal(spatial.labels, full.labels)  # same pose and label draw
    np.testing.assert_array_equal(spatial.metadata["probs"], full.metadata["probs"])
    assert not np.allclose(spatial.image, full.image)
    # without gamma, contrast and bias field the resampled template's intensities are kept
    template = mni152_tissue_maps(8).image
    assert spatial.image.max() <= template.max() + 1e-5 and spatial.image.min() >= 0.0
