"""Preprocessing and augmentation on the host (NumPy/SciPy), driven by a NumPy ``Generator``.

docs/theory.md §4: z-score normalisation inside the brain mask (:func:`normalize_image`, the one
normalisation of the library: loader, evaluation and prediction); random patches (uniform, or centred on a
foreground label with some probability); left-right flip; random zoom 0.9-1.1; additive noise,
contrast and gamma *inside the mask*. Label maps are only ever resampled by nearest neighbour
(and padded with background), so they keep valid label ids, label sets included.

The spatial part is one resampling per array: :func:`extract_patch` reads a patch of
``patch_size`` output voxels around a centre, zoomed and flipped, straight from the volume
(linear for images, nearest for labels), which is the same as zooming the whole volume, flipping
it and cropping/padding to the patch, at the cost of the patch only. Without zoom it is a plain
slice (with padding where the patch leaves the volume).

Every random function takes the ``Generator`` as an argument and draws from it in a fixed order,
so a pipeline seeded identically produces identical outputs.

>>> rng = np.random.default_rng(0)
>>> image = rng.normal(size=(20, 20, 20)).astype(np.float32)
>>> labels = np.zeros((20, 20, 20), np.int32); labels[5:15, 5:15, 5:15] = 9
>>> x, y = augment_patch(normalize_image(image), labels, rng, patch_size=(16, 16, 16))
>>> x.shape, y.dtype, set(np.unique(y).tolist()) <= {0, 9}
((16, 16, 16), dtype('int32'), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "AugmentConfig",
    "brain_mask",
    "zscore",
    "normalize_image",
    "ct_statistics",
    "foreground_index",
    "sample_patch_centre",
    "extract_patch",
    "random_flip",
    "random_zoom",
    "augment_intensity",
    "augment_patch",
]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentations (defaults after nnU-Net / Fidon et al.).

    Attributes:
      flip_prob: probability of flipping each axis in ``flip_axes``.
      flip_axes: the axes that may be flipped (0 = left-right for RAS+ volumes, as the phantoms).
      zoom_prob: probability of a random zoom.
      zoom_range: range of the zoom factor (> 1 magnifies).
      noise_prob, noise_std: probability and range of the std of additive Gaussian noise.
      contrast_prob, contrast_range: probability and range of the contrast factor (about the mean).
      gamma_prob, gamma_range: probability and range of the gamma exponent (mean and std kept).
    """

    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] = (0,)
    zoom_prob: float = 0.3
    zoom_range: tuple[float, float] = (0.9, 1.1)
    noise_prob: float = 0.15
    noise_std: tuple[float, float] = (0.0, 0.1)
    contrast_prob: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_prob: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)

    @classmethod
    def none(cls) -> AugmentConfig:
        """A configuration that changes nothing (patches only)."""
        return cls(flip_prob=0.0, zoom_prob=0.0, noise_prob=0.0, contrast_prob=0.0, gamma_prob=0.0)


# ---------------------------------------------------------------------------------- preprocessing
def brain_mask(
    *, labels: np.ndarray | None = None, image: np.ndarray | None = None, threshold: float | None = None
) -> np.ndarray:
    """The brain mask: ``labels != 0`` (training), or ``image > threshold`` (no labels at hand).

    Any label id other than background counts as brain, label sets included (docs/theory.md §1: background
    stays annotated under every protocol).

    >>> brain_mask(labels=np.array([0, 1, 9])).tolist()
    [False, True, True]
    >>> brain_mask(image=np.array([0.0, 0.5, 2.0]), threshold=0.1).tolist()
    [False, True, True]
    """
    if (labels is None) == (image is None):
        raise ValueError("give either labels or image (with a threshold)")
    if labels is not None:
        return np.asarray(labels) != 0
    if threshold is None:
        raise ValueError("an image mask needs a threshold")
    return np.asarray(image) > threshold


def zscore(image: np.ndarray, mask: np.ndarray, *, outside: float = 0.0, eps: float = 1e-8) -> np.ndarray:
    """Normalises ``image`` to zero mean and unit std over the voxels of ``mask``.

    Args:
      image: the intensities.
      mask: boolean mask of the same shape (e.g. :func:`brain_mask`); the whole image if it is
        empty.
      outside: the value written outside the mask (0, the mean of the brain, by default).
      eps: floor of the std.

    Returns:
      float32 array of the image's shape.

    >>> zscore(np.array([1.0, 2.0, 3.0, 50.0]), np.array([True, True, True, False])).round(3).tolist()
    [-1.225, 0.0, 1.225, 0.0]
    """
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask, bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the image shape {image.shape}")
    values = image[mask] if mask.any() else image.ravel()
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    out = (image - np.float32(mean)) / np.float32(max(std, eps))
    if mask.any():
        out[~mask] = outside
    return out


def normalize_image(image: np.ndarray, *, relative_threshold: float = 0.1,
                    intensity: Sequence[dict | None] | None = None) -> np.ndarray:
    """The library's intensity normalisation: z-score inside ``image > relative_threshold · p99``.

    :func:`zscore` over the intensity mask :func:`brain_mask` ``(image=..., threshold=...)`` with
    the threshold a fraction of the 99th percentile; zero (the mean) outside. The mask needs no
    labels, so training (the loader), evaluation and prediction on new scans normalise every
    image identically. A channel with dataset statistics in ``intensity`` (CT, as nnU-Net does it:
    :func:`ct_statistics`) is instead clipped to ``[low, high]`` and z-scored with the dataset's
    ``mean`` and ``std``.

    Args:
      image: ``[D, H, W]`` or ``[D, H, W, K]`` (channels last, each normalised on its own).
      relative_threshold: the intensity mask's threshold, a fraction of the 99th percentile.
      intensity: optional, one entry per channel: ``None`` (per-image z-score) or
        ``{"low", "high", "mean", "std"}``.

    >>> image = np.array([0.0, 0.0, 1.0, 2.0, 3.0])
    >>> normalize_image(image).round(3).tolist()
    [0.0, 0.0, -1.225, 0.0, 1.225]
    >>> normalize_image(np.array([-1000.0, 40.0, 3000.0]),
    ...                 intensity=[{"low": -100.0, "high": 200.0, "mean": 50.0, "std": 10.0}]).tolist()
    [-15.0, -1.0, 15.0]
    """
    image = np.asarray(image, np.float32)
    if image.ndim == 4:  # channels last: each channel on its own
        return np.stack([normalize_image(image[..., k], relative_threshold=relative_threshold,
                                         intensity=None if intensity is None else [intensity[k]])
                         for k in range(image.shape[-1])], axis=-1)
    stats = intensity[0] if intensity else None
    if stats:
        clipped = np.clip(image, float(stats["low"]), float(stats["high"]))
        return ((clipped - float(stats["mean"])) / max(float(stats["std"]), 1e-8)).astype(np.float32)
    threshold = relative_threshold * float(np.percentile(image, 99))
    return zscore(image, brain_mask(image=image, threshold=threshold))


def ct_statistics(images: Iterable[np.ndarray], labels: Iterable[np.ndarray], *,
                  max_samples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """nnU-Net's CT normalisation statistics of one channel: over the foreground voxels (label
    ``!= 0``) of the training cases, at most ``max_samples`` drawn per case, the 0.5 and 99.5
    percentiles (``low``, ``high``) and the mean and std of the intensities clipped to them.

    >>> stats = ct_statistics([np.arange(1000.0).reshape(10, 10, 10)], [np.ones((10, 10, 10), int)])
    >>> round(stats["low"], 1), round(stats["high"], 1), round(stats["mean"], 1)
    (5.0, 994.0, 499.5)
    """
    rng = np.random.default_rng(seed)
    samples = []
    for image, label in zip(images, labels):
        values = np.asarray(image, np.float64)[np.asarray(label) != 0]
        if values.size > max_samples:
            values = rng.choice(values, max_samples, replace=False)
        samples.append(values)
    values = np.concatenate(samples) if samples else np.zeros(0)
    if values.size == 0:
        raise ValueError("CT normalisation needs foreground voxels (label != 0) in the training cases")
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    return {"low": float(low), "high": float(high), "mean": float(clipped.mean()), "std": float(clipped.std())}


# ---------------------------------------------------------------------------------- patches
def foreground_index(
    labels: np.ndarray, *, max_per_label: int = 10_000, seed: int = 0, foreground_ids: Sequence[int] | None = None
) -> dict[int, np.ndarray]:
    """Voxel coordinates of every foreground label id, for foreground-biased patch sampling.

    At most ``max_per_label`` coordinates are kept per id (a fixed random subset), as nnU-Net does,
    to bound the memory on large volumes.

    Args:
      labels: a label map.
      max_per_label: the most coordinates kept per id.
      seed: the seed of the subsets.
      foreground_ids: the ids that count as foreground
        (:attr:`~labelset_jax.labelsets.LabelSpace.foreground_ids`: not a label set that may be
        background, such as the ignore label); ``None``: every id other than 0.

    Returns:
      ``{label id: int32 [n, 3] voxel coordinates}`` for every foreground id present.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    bounds = list(starts[1:]) + [flat.size]
    index = {}
    keep = None if foreground_ids is None else {int(i) for i in foreground_ids}
    for label_id, start, stop in zip(ids.tolist(), starts.tolist(), bounds):
        if label_id == 0 or (keep is not None and label_id not in keep):
            continue
        chosen = order[start:stop]
        if chosen.size > max_per_label:
            chosen = np.sort(rng.choice(chosen, max_per_label, replace=False))
        index[int(label_id)] = np.stack(np.unravel_index(chosen, labels.shape), axis=-1).astype(np.int32)
    return index


def _extent(patch_size, zoom) -> np.ndarray:
    """Extent, in input voxels, between the first and last output voxel centres."""
    return (np.asarray(patch_size, np.float64) - 1) / zoom


def sample_patch_centre(
    shape: Sequence[int],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    *,
    zoom: float = 1.0,
    foreground_prob: float = 0.0,
    fg_index: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """A random patch centre (float voxel coordinates).

    With probability ``foreground_prob`` (and a non-empty ``fg_index``) the centre is a random
    voxel of a random foreground label id (ids drawn uniformly, so small structures are seen
    as often as large ones); otherwise it is uniform over the positions where the patch fits in
    the volume. The centre is then moved so that the patch stays inside the volume when it fits.
    Without zoom the patch starts on an integer voxel (a plain slice).

    Returns:
      float64 ``[3]``.
    """
    shape = np.asarray(shape, np.float64)
    half = _extent(patch_size, zoom) / 2
    low, high = half, shape - 1 - half  # centres whose patch fits; low > high: it cannot fit
    lo, hi = np.minimum(low, high), np.maximum(low, high)
    use_fg = rng.random() < foreground_prob
    if use_fg and fg_index:
        ids = sorted(fg_index)
        coords = fg_index[ids[rng.integers(len(ids))]]
        centre = coords[rng.integers(len(coords))].astype(np.float64)
        centre = np.clip(centre, lo, hi)
    else:
        centre = rng.uniform(lo, hi)
    if zoom == 1.0:  # start the patch on a voxel: extraction is then a slice
        centre = np.floor(centre - half + 0.5) + half
    return centre


def extract_patch(
    volume: np.ndarray,
    centre: Sequence[float],
    patch_size: Sequence[int],
    *,
    zoom: float = 1.0,
    flip: Sequence[int] = (),
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Reads a ``patch_size`` patch around ``centre`` of ``volume`` zoomed by ``zoom``, then flips.

    Output voxel ``k`` samples the input at ``centre + (k - (P - 1) / 2) / zoom``: ``zoom > 1``
    magnifies. Points outside the volume get ``cval``.

    Args:
      volume: a 3D array.
      centre: patch centre in input voxel coordinates.
      patch_size: output shape.
      zoom: zoom factor.
      flip: axes of the patch to reverse.
      order: interpolation order: 1 (linear) for images, 0 (nearest) for label maps.
      cval: padding value (0: background for labels, the mean for z-scored images).

    Returns:
      An array of shape ``patch_size`` and the volume's dtype.

    >>> v = np.arange(27).reshape(3, 3, 3)
    >>> extract_patch(v, (1, 1, 1), (3, 3, 3), flip=(0,))[0, 0].tolist()
    [18, 19, 20]
    >>> extract_patch(v, (0, 0, 0), (2, 2, 2), order=0)[:, 0, 0].tolist()  # padded with cval
    [0, 0]
    """
    volume = np.asarray(volume)
    patch_size = tuple(int(p) for p in patch_size)
    start = np.asarray(centre, np.float64) - _extent(patch_size, zoom) / 2
    integral = np.allclose(start, np.round(start), atol=1e-6)
    if zoom == 1.0 and integral:
        start_i = np.round(start).astype(int)
        out = np.full(patch_size, cval, dtype=volume.dtype)
        src, dst = [], []
        for a in range(3):
            s0, s1 = max(start_i[a], 0), min(start_i[a] + patch_size[a], volume.shape[a])
            if s1 <= s0:
                break
            src.append(slice(s0, s1))
            dst.append(slice(s0 - start_i[a], s1 - start_i[a]))
        else:
            out[tuple(dst)] = volume[tuple(src)]
    else:
        out = ndimage.affine_transform(
            volume,
            np.full(3, 1.0 / zoom),
            start,
            output_shape=patch_size,
            order=order,
            mode="constant",
            cval=cval,
            prefilter=False,
        )
    if flip:
        out = np.ascontiguousarray(np.flip(out, axis=tuple(flip)))
    return out


def random_flip(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, axes: Sequence[int] = (0,), prob: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Flips image and labels together along each of ``axes`` with probability ``prob``."""
    flip = tuple(a for a in axes if rng.random() < prob)
    if not flip:
        return image, labels
    return np.ascontiguousarray(np.flip(image, flip)), np.ascontiguousarray(np.flip(labels, flip))


def random_zoom(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    zoom_range: tuple[float, float] = (0.9, 1.1),
) -> tuple[np.ndarray, np.ndarray]:
    """Zooms image (linear) and labels (nearest) about the centre, keeping the shape.

    Equivalent to ``scipy.ndimage.zoom`` followed by a centred crop (zoom > 1) or zero/background
    padding (zoom < 1) back to the input shape.

    >>> labels = np.zeros((9, 9, 9), np.int32); labels[3:6, 3:6, 3:6] = 11
    >>> _, zoomed = random_zoom(np.zeros((9, 9, 9)), labels, np.random.default_rng(0))
    >>> zoomed.shape, sorted(np.unique(zoomed).tolist())
    ((9, 9, 9), [0, 11])
    """
    zoom = float(rng.uniform(*zoom_range))
    centre = (np.asarray(image.shape, np.float64) - 1) / 2
    return (
        extract_patch(image, centre, image.shape, zoom=zoom, order=1),
        extract_patch(labels, centre, labels.shape, zoom=zoom, order=0),
    )


# ---------------------------------------------------------------------------------- intensities
def augment_intensity(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """Additive Gaussian noise, contrast and gamma, each with its probability, inside ``mask``.

    Voxels outside the mask are left unchanged. Gamma is applied to the intensities rescaled to
    [0, 1] over the mask, and the mask's mean and std are restored afterwards (nnU-Net's
    ``retain_stats``).

    Returns:
      A new float32 array.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    mask = np.asarray(mask, bool)
    do_noise = rng.random() < config.noise_prob
    noise_std = rng.uniform(*config.noise_std)
    do_contrast = rng.random() < config.contrast_prob
    factor = rng.uniform(*config.contrast_range)
    do_gamma = rng.random() < config.gamma_prob
    gamma = rng.uniform(*config.gamma_range)
    n = int(mask.sum())
    noise = rng.normal(0.0, noise_std, n).astype(np.float32) if do_noise else None
    if n == 0:
        return out
    values = out[mask]
    if do_noise:
        values += noise
    if do_contrast:
        mean = values.mean()
        values = (values - mean) * np.float32(factor) + mean
    if do_gamma:
        mean, std = values.mean(), values.std()
        lo, hi = values.min(), values.max()
        span = max(float(hi - lo), 1e-7)
        values = ((values - lo) / span) ** np.float32(gamma) * span + lo
        values = (values - values.mean()) / max(float(values.std()), 1e-7) * std + mean
    out[mask] = values
    return out


def augment_patch(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    patch_size: Sequence[int],
    config: AugmentConfig | None = AugmentConfig(),
    foreground_prob: float = 0.33,
    mask: np.ndarray | None = None,
    fg_index: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The training pipeline for one sample: patch + zoom + flip, then intensities inside the mask.

    Args:
      image: the (already normalised, e.g. :func:`zscore`) image, float ``[D, H, W]`` or, with
        ``K`` channels, ``[D, H, W, K]`` (one spatial transform; intensities per channel).
      labels: int label ids ``[D, H, W]``.
      rng: the sample's ``Generator``.
      patch_size: output shape.
      config: the augmentation settings; ``None`` for patches only.
      foreground_prob: probability of centring the patch on a foreground voxel.
      mask: the brain mask for the intensity augmentation; default ``labels != 0``.
      fg_index: :func:`foreground_index` of ``labels`` (computed here when missing).

    Returns:
      ``(image float32 patch_size (+ [K]), labels int32 patch_size)``.
    """
    image = np.asarray(image)
    config = AugmentConfig.none() if config is None else config
    zoom = float(rng.uniform(*config.zoom_range)) if rng.random() < config.zoom_prob else 1.0
    flip = tuple(a for a in config.flip_axes if rng.random() < config.flip_prob)
    if fg_index is None and foreground_prob > 0:
        fg_index = foreground_index(labels, max_per_label=1000)
    centre = sample_patch_centre(
        labels.shape, patch_size, rng, zoom=zoom, foreground_prob=foreground_prob, fg_index=fg_index
    )
    channels = [image] if image.ndim == 3 else [image[..., k] for k in range(image.shape[-1])]
    xs = [extract_patch(c, centre, patch_size, zoom=zoom, flip=flip, order=1).astype(np.float32, copy=False)
          for c in channels]
    y = extract_patch(labels, centre, patch_size, zoom=zoom, flip=flip, order=0).astype(np.int32, copy=False)
    if mask is None:
        patch_mask = y != 0
    else:
        patch_mask = extract_patch(mask.astype(np.uint8), centre, patch_size, zoom=zoom, flip=flip, order=0) != 0
    xs = [augment_intensity(x, patch_mask, rng, config) for x in xs]
    return (xs[0] if image.ndim == 3 else np.stack(xs, axis=-1)), y
