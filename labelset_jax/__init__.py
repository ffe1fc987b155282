"""labelset_jax: label-set loss functions and 3D segmentation for partial supervision, in JAX."""

__version__ = "0.1.0"
