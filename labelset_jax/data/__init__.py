"""Data for label-set segmentation: NIfTI I/O, phantoms, MNI tissue task, synthetic uncertainty,
cohorts with partial annotations, augmentation and a deterministic loader.

Every data source returns :class:`~labelset_jax.data.case.Case` records (raw image, labels,
spacing, affine, id, protocol, metadata), which the loader, the evaluation and the report take.

Modules:

* :mod:`~labelset_jax.data.case`: the :class:`Case` record.
* :mod:`~labelset_jax.data.nifti`: checked NIfTI loading and atomic saving.
* :mod:`~labelset_jax.data.phantoms`: procedural fetal brain phantoms (the embedded data set).
* :mod:`~labelset_jax.data.mni`: the MNI152 4-class tissue task with known expected volumes
  (needs the optional ``mni`` extra: nilearn).
* :mod:`~labelset_jax.data.synthetic`: binary tasks with known label uncertainty ``q``.
* :mod:`~labelset_jax.data.datasets`: partially annotated cohorts, CSV manifests, FeTA.
* :mod:`~labelset_jax.data.nnunet`: nnU-Net raw dataset folders with label sets (your own data),
  checked before any work.
* :mod:`~labelset_jax.data.transforms`: the normalisation (:func:`normalize_image`), patches and
  augmentation.
* :mod:`~labelset_jax.data.loader`: the prefetching, resumable patch loader.

Arrays are channels-last NumPy arrays; label maps hold int32 label ids (docs/theory.md §1).
"""

from labelset_jax.data.case import Case, choose_validation
from labelset_jax.data.datasets import (
    FETA_LABELS,
    FETA_TO_FETAL_BRAIN,
    LABEL_SPACE_FILE,
    MANIFEST_COLUMNS,
    CaseFile,
    Cohort,
    feta_cases,
    load_cases,
    phantom_cohort,
    read_cohort,
    read_label_space,
    read_manifest,
    write_cohort,
    write_manifest,
)
from labelset_jax.data.loader import Loader
from labelset_jax.data.mni import (
    MNI_TISSUE,
    MNITissueMaps,
    expected_volumes_ml,
    MNI_LESION,
    mni152_tissue_maps,
    mni_cohort,
    mni_lesion_case,
    mni_tissue_case,
    sample_labels,
)
from labelset_jax.data.nifti import load_case, load_labels, load_nifti, save_nifti, spacing_of
from labelset_jax.data.phantoms import (
    MIN_PHANTOM_SIZE,
    PHANTOM_FOV_MM,
    make_phantom,
    phantom_affine,
    phantom_spacing,
)
from labelset_jax.data.synthetic import (
    SYNTHETIC_SPACE,
    ambiguous_blob_case,
    boundary_noise_case,
    expected_volume_ml,
    independent_blobs_case,
    noise_free_case,
)
from labelset_jax.data.transforms import (
    AugmentConfig,
    augment_intensity,
    augment_patch,
    brain_mask,
    extract_patch,
    foreground_index,
    normalize_image,
    random_flip,
    random_zoom,
    sample_patch_centre,
    zscore,
)

__all__ = [
    # case
    "Case", "choose_validation",
    # nifti
    "load_nifti", "save_nifti", "load_labels", "load_case", "spacing_of",
    # phantoms
    "make_phantom", "phantom_affine", "phantom_spacing", "PHANTOM_FOV_MM", "MIN_PHANTOM_SIZE",
    # mni
    "MNI_TISSUE", "MNITissueMaps", "mni152_tissue_maps", "mni_tissue_case", "mni_cohort",
    "MNI_LESION", "mni_lesion_case",
    "expected_volumes_ml", "sample_labels",
    # synthetic
    "SYNTHETIC_SPACE", "expected_volume_ml", "boundary_noise_case", "ambiguous_blob_case", "independent_blobs_case",
    "noise_free_case",
    # datasets
    "CaseFile", "Cohort", "phantom_cohort", "write_cohort", "read_cohort", "read_manifest",
    "write_manifest", "read_label_space", "load_cases", "feta_cases", "FETA_LABELS", "FETA_TO_FETAL_BRAIN",
    "MANIFEST_COLUMNS", "LABEL_SPACE_FILE",
    # transforms
    "AugmentConfig", "brain_mask", "zscore", "normalize_image", "foreground_index", "sample_patch_centre",
    "extract_patch", "random_flip", "random_zoom", "augment_intensity", "augment_patch",
    # loader
    "Loader",
]  # fmt: skip
