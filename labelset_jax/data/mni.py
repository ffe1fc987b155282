"""A 4-class brain tissue task with known expected volumes, from the MNI152 2009 template.

docs/theory.md §5, experiment 2. nilearn ships, inside its wheel (no download), the MNI152 2009 T1 template
and its grey- and white-matter probability maps at 1 mm (197×233×189). Per 1 mm voxel the class
probabilities of :data:`MNI_TISSUE` are

* outside the brain mask (nilearn's, T1 > 0.2): background with probability 1;
* inside: ``P(GM) = pgm``, ``P(WM) = pwm`` (rescaled when ``pgm + pwm > 1``), and
  ``P(CSF/rest) = 1 - pgm - pwm``.

Coarser grids (``voxel_size`` 2, 3, 4 mm ...) average the 1 mm probabilities over blocks, so a
coarse voxel is a mixture (it can even be partly background) and the expected volume of every
class is *exactly* preserved. Labels are drawn independently per voxel from these probabilities:
the label given the image is genuinely uncertain (partial volume), and the expected volume of each
class is ``v Σ_i probs[i, c]``, known exactly (:func:`expected_volumes_ml`).

:func:`mni_tissue_case` makes a cohort member: random spatial augmentation (small rotation, scale,
translation/crop, left-right flip) is applied to the image *and* the probability maps (linear
interpolation keeps them a partition of unity), then labels are drawn, then the intensities are
augmented (gamma, contrast, bias field, noise). The case keeps its transformed probabilities in
``case.metadata["probs"]``, so its expected volumes stay exact.

nilearn is an optional dependency: ``pip install 'labelset-jax[mni]'``.

>>> maps = mni152_tissue_maps(8)
>>> maps.probs.shape, maps.spacing
((25, 30, 24, 4), (8.0, 8.0, 8.0))
>>> bool(np.allclose(maps.probs.sum(-1), 1.0, atol=1e-5))
True
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from labelset_jax.data.case import Case
from labelset_jax.data.nifti import spacing_of
from labelset_jax.data.phantoms import rotation_matrix
from labelset_jax.data.transforms import extract_patch
from labelset_jax.labelsets import LabelSpace

__all__ = [
    "MNI_TISSUE",
    "MNITissueMaps",
    "mni152_tissue_maps",
    "mni_tissue_case",
    "mni_cohort",
    "expected_volumes_ml",
    "sample_labels",
    "MNI_LESION",
    "mni_lesion_case",
]

#: The label space of the MNI tissue task.
MNI_TISSUE = LabelSpace.leaves(["background", "csf", "gm", "wm"])


class MNITissueMaps(NamedTuple):
    """The MNI152 template and class probabilities on one grid (read-only arrays).

    Attributes:
      image: float32 ``[D, H, W]`` T1 intensities in [0, 1].
      probs: float32 ``[D, H, W, 4]`` probabilities of :data:`MNI_TISSUE`'s classes, summing to 1.
      affine: ``[4, 4]`` voxel-to-MNI-world matrix.
      spacing: voxel size in mm.
    """

    image: np.ndarray
    probs: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def expected_volumes_ml(probs: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Expected volume of each class (ml) of labels drawn from ``probs [..., C]``.

    >>> expected_volumes_ml(np.full((10, 10, 10, 2), 0.5), (2.0, 2.0, 2.0)).tolist()
    [4.0, 4.0]
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    flat = np.asarray(probs).reshape(-1, np.shape(probs)[-1])
    return flat.sum(axis=0, dtype=np.float64) * voxel_ml


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draws one label per voxel from the categorical distributions ``probs [..., C]`` (int32).

    >>> probs = np.zeros((2, 3)); probs[0, 1] = probs[1, 2] = 1.0
    >>> sample_labels(probs, np.random.default_rng(0)).tolist()
    [1, 2]
    """
    probs = np.asarray(probs, np.float32)
    u = rng.random(probs.shape[:-1], dtype=np.float32)
    cdf = np.cumsum(probs[..., :-1], axis=-1)
    labels = np.zeros(probs.shape[:-1], np.int32)
    for c in range(cdf.shape[-1]):
        labels += u >= cdf[..., c]
    return labels


def _read_only(*arrays):
    for a in arrays:
        a.setflags(write=False)


@functools.lru_cache(maxsize=1)
def _mni_1mm() -> MNITissueMaps:
    """The 1 mm template and class probabilities, from the files inside nilearn's wheel."""
    try:
        from nilearn import datasets  # imported lazily: nilearn is slow to import
    except ImportError as e:
        raise ImportError("the MNI152 data source needs nilearn: pip install 'labelset-jax[mni]'") from e

    t1 = datasets.load_mni152_template(resolution=1)
    image = t1.get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0
    gm, wm = np.clip(gm, 0.0, 1.0), np.clip(wm, 0.0, 1.0)
    total = gm + wm
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-12), 1.0)
    gm, wm = gm * scale * mask, wm * scale * mask
    probs = np.stack([1.0 - mask, np.clip(mask - gm - wm, 0.0, None), gm, wm], axis=-1).astype(np.float32)
    affine = np.asarray(t1.affine, np.float64)
    _read_only(image, probs, affine)
    return MNITissueMaps(image, probs, affine, spacing_of(affine))


@functools.lru_cache(maxsize=8)
def mni152_tissue_maps(voxel_size: int = 2) -> MNITissueMaps:
    """The MNI152 template and tissue class probabilities at ``voxel_size`` mm (cached).

    Coarse grids average ``voxel_size³`` blocks of 1 mm voxels (the volume is padded with
    background to a multiple of the block), which preserves the expected volumes exactly.
    Loading takes ~0.5 s the first time; the arrays are read-only and shared.

    Args:
      voxel_size: an integer number of mm: 1 (197×233×189), 2 (99×117×95), 4 (50×59×48), ...

    Returns:
      :class:`MNITissueMaps`.
    """
    f = int(voxel_size)
    if f != voxel_size or f < 1:
        raise ValueError(f"voxel_size must be a positive integer number of mm, got {voxel_size}")
    fine = _mni_1mm()
    if f == 1:
        return fine
    shape = np.asarray(fine.image.shape)
    pad = [(0, int(-s % f)) for s in shape]
    image = np.pad(fine.image, pad)
    probs = np.pad(fine.probs, pad + [(0, 0)])
    for axis, s in enumerate(shape):  # padded voxels are background
        index = [slice(None)] * 4
        index[axis] = slice(int(s), None)
        probs[tuple(index)] = (1.0, 0.0, 0.0, 0.0)
    coarse = tuple(int(s) // f for s in image.shape)
    image = image.reshape(coarse[0], f, coarse[1], f, coarse[2], f).mean(axis=(1, 3, 5), dtype=np.float64)
    probs = probs.reshape(coarse[0], f, coarse[1], f, coarse[2], f, 4).mean(axis=(1, 3, 5), dtype=np.float64)
    block = np.diag([f, f, f, 1.0])
    block[:3, 3] = (f - 1) / 2  # a coarse voxel's centre is the centre of its block
    affine = fine.affine @ block
    image, probs = image.astype(np.float32), probs.astype(np.float32)
    _read_only(image, probs, affine)
    return MNITissueMaps(image, probs, affine, (float(f),) * 3)


def _resample(volume, matrix, offset, shape, cval, order=1):
    return ndimage.affine_transform(volume, matrix, offset, output_shape=shape, order=order, cval=cval, prefilter=False)


def mni_tissue_case(
    seed: int,
    *,
    voxel_size: int = 2,
    shape: Sequence[int] | None = None,
    augment: bool = True,
    max_rotation_deg: float = 8.0,
    scale_range: tuple[float, float] = (0.95, 1.05),
    max_shift_mm: float = 6.0,
    flip_prob: float = 0.5,
    noise_std: tuple[float, float] = (0.0, 0.05),
    intensity: bool = True,
) -> Case:
    """One MNI tissue case: augmented template, augmented probabilities, labels drawn from them.

    Args:
      seed: seed of the augmentation and of the label draw.
      voxel_size: grid spacing in mm (see :func:`mni152_tissue_maps`); 4 is fast enough for CPU
        tests, 2 for experiments.
      shape: output shape (a centred crop or pad of the template grid, moved by the random shift);
        default the template grid's shape.
      augment: apply the spatial and intensity augmentation (else only crop/pad and draw labels).
      max_rotation_deg: largest rotation about each axis.
      scale_range: range of the isotropic scale factor (times a ±2% per-axis anisotropy).
      max_shift_mm: largest translation along each axis.
      flip_prob: probability of a left-right flip (array axis 0 is left-right in MNI space).
      noise_std: range of the standard deviation of the additive Gaussian noise.
      intensity: with ``augment``, also apply the gamma, contrast, brightness and bias-field
        augmentation (``False``: spatial augmentation and noise only).

    Returns:
      A :class:`~labelset_jax.data.case.Case` of :data:`MNI_TISSUE` with id ``mni_<seed>`` and the
      probabilities the labels were drawn from in ``case.metadata["probs"]`` (float32
      ``[D, H, W, 4]``): ``expected_volumes_ml(case.metadata["probs"], case.spacing)`` is exact.

    >>> case = mni_tissue_case(0, voxel_size=8)
    >>> case.id, case.image.shape, case.labels.shape, case.metadata["probs"].shape
    ('mni_00000', (25, 30, 24), (25, 30, 24), (25, 30, 24, 4))
    """
    maps = mni152_tissue_maps(voxel_size)
    rng = np.random.default_rng(seed)
    in_shape = np.asarray(maps.image.shape)
    out_shape = tuple(int(s) for s in (maps.image.shape if shape is None else shape))
    if len(out_shape) != 3 or min(out_shape) < 1:
        raise ValueError(f"shape must be 3 positive sizes, got {shape}")
    vs = float(voxel_size)
    if augment:
        rot = rotation_matrix(np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3)))
        scale = rng.uniform(*scale_range) * rng.uniform(0.98, 1.02, 3)
        flip = np.where(np.arange(3) == 0, np.where(rng.random() < flip_prob, -1.0, 1.0), 1.0)
        shift = rng.uniform(-max_shift_mm, max_shift_mm, 3) / vs
        matrix = (rot / scale[None, :]) * flip[None, :]  # output voxel axes -> input voxel axes
    else:
        matrix, shift = np.eye(3), np.zeros(3)
    c_in = (in_shape - 1) / 2 + shift
    c_out = (np.asarray(out_shape) - 1) / 2
    offset = c_in - matrix @ c_out  # input = matrix @ output + offset
    if not augment:
        offset = np.round(offset)  # an exact crop/pad
        c_in = offset + c_out
    if not augment:  # an exact crop/pad (a slice)
        image = extract_patch(maps.image, c_in, out_shape)
        probs = np.stack(
            [extract_patch(maps.probs[..., c], c_in, out_shape, cval=1.0 if c == 0 else 0.0) for c in range(4)],
            axis=-1,
        )
    else:
        image = _resample(maps.image, matrix, offset, out_shape, 0.0)
        probs = np.stack(
            [_resample(maps.probs[..., c], matrix, offset, out_shape, 1.0 if c == 0 else 0.0) for c in range(4)],
            axis=-1,
        )
        probs = np.clip(probs, 0.0, 1.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    labels = sample_labels(probs, rng)
    if augment:
        if intensity:
            image = np.clip(image, 0.0, None) ** rng.uniform(0.7, 1.5)  # gamma
            image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)  # contrast, brightness
            x = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in out_shape], indexing="ij",
                            sparse=True)
            image = image * np.exp(sum(rng.normal(0, 0.1) * x[a] for a in range(3)))  # bias field
        image = image + rng.normal(0, rng.uniform(*noise_std), out_shape)
    affine = np.diag([vs, vs, vs, 1.0])
    affine[:3, 3] = maps.affine[:3, :3] @ c_in + maps.affine[:3, 3] - vs * c_out
    return Case(f"mni_{int(seed):05d}", image.astype(np.float32), labels, (vs, vs, vs), affine=affine,
                metadata={"probs": probs.astype(np.float32)})


def mni_cohort(
    num_cases: int, *, first_seed: int = 0, voxel_size: int = 2, augment: bool = True, **kwargs
) -> list[Case]:
    """A cohort of MNI tissue cases: case ``i`` is ``mni_tissue_case(first_seed + i, ...)``.

    Args:
      num_cases: number of cases.
      first_seed: seed of the first case.
      voxel_size: grid spacing in mm.
      augment: apply the augmentation.
      **kwargs: more arguments of :func:`mni_tissue_case` (e.g. ``shape``).

    Returns:
      A list of :class:`~labelset_jax.data.case.Case`.
    """
    return [
        mni_tissue_case(first_seed + i, voxel_size=voxel_size, augment=augment, **kwargs)
        for i in range(int(num_cases))
    ]


#: The label space of the MNI lesion task: the tissues and a lesion.
MNI_LESION = LabelSpace.leaves(["background", "csf", "gm", "wm", "lesion"])


def mni_lesion_case(
    seed: int,
    *,
    voxel_size: int = 4,
    lesion: bool = True,
    radius_mm: tuple[float, float] = (6.0, 14.0),
    mass_effect_prob: float = 0.5,
    **kwargs,
) -> Case:
    """An MNI brain with crisp tissue labels and, optionally, a tumour-like lesion.

    The brain is :func:`mni_tissue_case` (random deformation and intensity changes); its labels are
    the most probable tissue of each voxel (no label noise). A lesion is a blob of radius drawn
    from ``radius_mm`` whose surface is roughened by smooth noise, centred on a random grey- or
    white-matter voxel; with probability ``mass_effect_prob`` it first pushes the surrounding
    tissue outward (a radial displacement that decays over one radius). Its intensity is its own:
    brighter or darker than white matter by a random factor, with a smooth texture and a
    partial-volume edge.

    Args:
      seed: seed of the brain and of the lesion.
      voxel_size: grid spacing in mm.
      lesion: add a lesion (else a healthy brain).
      radius_mm: range of the lesion radius.
      mass_effect_prob: probability of the mass effect.
      **kwargs: more arguments of :func:`mni_tissue_case`.

    Returns:
      A :class:`~labelset_jax.data.case.Case` of :data:`MNI_LESION` with id ``lesion_<seed>`` (or
      ``healthy_<seed>``); ``metadata`` holds ``lesion_ml`` (the lesion volume) and ``mass_effect``.

    >>> case = mni_lesion_case(3, voxel_size=8)
    >>> case.id, case.labels.shape, sorted(np.unique(case.labels).tolist()), case.metadata["lesion_ml"] > 0
    ('lesion_00003', (25, 30, 24), [0, 1, 2, 3, 4], True)
    """
    base = mni_tissue_case(seed, voxel_size=voxel_size, **kwargs)
    labels = np.argmax(base.metadata["probs"], axis=-1).astype(np.int32)
    image = base.image.astype(np.float64)
    meta = {"lesion_ml": 0.0, "mass_effect": False}
    if not lesion:
        return Case(f"healthy_{int(seed):05d}", image.astype(np.float32), labels, base.spacing, affine=base.affine,
                    metadata=meta)
    rng = np.random.default_rng([int(seed), 7])
    vs = float(voxel_size)
    radius = rng.uniform(*radius_mm) / vs  # voxels
    candidates = np.argwhere(ndimage.binary_erosion(np.isin(labels, (2, 3)), iterations=max(1, int(radius // 2))))
    if candidates.size == 0:
        candidates = np.argwhere(np.isin(labels, (2, 3)))
    centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    grid = np.indices(labels.shape, dtype=np.float64)
    offset = grid - centre[:, None, None, None]
    dist = np.sqrt((offset**2).sum(0))
    if rng.random() < mass_effect_prob:  # tissue at distance ρ comes from ρ − push(ρ): pushed outward
        push = rng.uniform(0.3, 0.8) * radius * np.exp(-np.maximum(dist - radius, 0.0) / radius)
        scale = np.maximum(dist - push, 0.0) / np.maximum(dist, 1e-6)
        source = centre[:, None, None, None] + offset * scale
        image = ndimage.map_coordinates(image, source, order=1, mode="nearest")
        labels = ndimage.map_coordinates(labels, source, order=0, mode="nearest").astype(np.int32)
        meta["mass_effect"] = True
    rough = ndimage.gaussian_filter(rng.normal(size=labels.shape), sigma=max(radius / 2, 1.0))
    rough /= np.abs(rough).max() + 1e-9
    level = dist / radius + 0.35 * rough  # < 1 inside the lesion
    inside = (level < 1.0) & (labels > 0)
    wm = image[labels == 3].mean() if np.any(labels == 3) else image[labels > 0].mean()
    factor = rng.uniform(1.3, 1.7) if rng.random() < 0.5 else rng.uniform(0.35, 0.6)
    texture = ndimage.gaussian_filter(rng.normal(size=labels.shape), sigma=1.0)
    texture *= 0.15 / (texture.std() + 1e-9)
    weight = np.clip((1.0 - level) / 0.3 + 0.5, 0.0, 1.0) * (labels > 0)  # a partial-volume edge
    image = (1 - weight) * image + weight * wm * factor * (1.0 + texture)
    labels = np.where(inside, 4, labels).astype(np.int32)
    meta["lesion_ml"] = float(inside.sum() * vs**3 / 1000.0)
    return Case(f"lesion_{int(seed):05d}", image.astype(np.float32), labels, base.spacing, affine=base.affine,
                metadata=meta)
