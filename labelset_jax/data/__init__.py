"""Data: NIfTI I/O, fetal brain phantoms, MNI152 tissue task, synthetic uncertainty, loaders."""

from labelset_jax.data.nifti import load_case, load_labels, load_nifti, save_nifti, spacing_of
from labelset_jax.data.phantoms import (
    MIN_PHANTOM_SIZE,
    PHANTOM_FOV_MM,
    make_phantom,
    phantom_affine,
    phantom_spacing,
)
