"""Synthetic binary tasks with *known* label uncertainty, for the soft-Dice volume-bias study.

docs/theory.md §5, experiment 1: the label of voxel ``i`` given the image is ``l_i ~ Bernoulli(q_i)``
with a known ``q``, so the expected foreground volume ``E[V] = v Σ_i q_i`` is known exactly (``v``
the voxel volume). Every generator returns a :class:`~labelset_jax.data.case.Case` of
:data:`SYNTHETIC_SPACE` with id ``synthetic_<seed>`` and ``q`` in ``case.metadata["q"]``:

* :func:`boundary_noise_case`: an ellipsoid whose boundary is blurred: every voxel is drawn
  independently with ``q = sigmoid((r - ρ) / τ)``, ``ρ`` the voxel's distance from the centre and
  ``r`` the radius (``q → 1`` inside, ``→ 0`` outside, ``1/2`` on the surface);
* :func:`ambiguous_blob_case`: a clear object plus one faint blob that is *entirely* foreground
  with probability ``p`` (one Bernoulli draw for the whole blob, or, ``stratified``, a fixed share
  ``p`` of consecutive seeds: :func:`blob_included`);
* :func:`independent_blobs_case`: a clear object plus ``K`` faint blobs, each included
  independently;
* :func:`noise_free_case`: the control, ``q ∈ {0, 1}``, where every loss is unbiased.

The image is a deterministic function of ``q``'s geometry plus small Gaussian noise: it shows the
boundary profile / the faint blobs whatever was drawn, so the best possible prediction from the
image is ``q`` itself. Labels are int32 ``{0, 1}``; ``q`` and the image are float32.

>>> case = boundary_noise_case(0, shape=(16, 16, 16), radius=5.0, tau=1.0)
>>> q = case.metadata["q"]
>>> case.id, case.labels.dtype, q.dtype, bool(q.max() > 0.9 and q.min() < 0.1)
('synthetic_00000', dtype('int32'), dtype('float32'), True)
>>> round(expected_volume_ml(case), 3)  # > the sphere's 0.524 ml: the boundary is curved
0.701
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelset_jax.data.case import Case
from labelset_jax.labelsets import LabelSpace

__all__ = [
    "SYNTHETIC_SPACE",
    "expected_volume_ml",
    "blob_included",
    "boundary_noise_case",
    "ambiguous_blob_case",
    "independent_blobs_case",
    "noise_free_case",
]


#: The label space of the synthetic binary tasks.
SYNTHETIC_SPACE = LabelSpace.leaves(["background", "object"])


def expected_volume_ml(case: Case) -> float:
    """``E[V] = v Σ_i q_i``: the expected foreground volume in ml of a synthetic case.

    >>> round(expected_volume_ml(noise_free_case(0, shape=(8, 8, 8), radius=2.0, spacing=(2, 2, 2))), 3)
    0.264
    """
    return float(np.sum(case.metadata["q"], dtype=np.float64)) * case.voxel_ml


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)


def _distance(shape, centre, radii) -> np.ndarray:
    """Approximate signed distance (voxels) to an ellipsoid surface, positive inside.

    Exact for a sphere: ``r - ρ``. For an ellipsoid, ``(1 - |(x - c)/radii|)`` scaled by the mean
    radius.
    """
    g = _grid(shape)
    radii = np.broadcast_to(np.asarray(radii, np.float32), (3,))
    norm = np.sqrt(sum(((g[a] - np.float32(centre[a])) / radii[a]) ** 2 for a in range(3)))
    return (1.0 - norm) * np.float32(radii.mean())


def _finish(seed, rng, q, intensity, noise, spacing, labels=None) -> Case:
    q = np.broadcast_to(q, intensity.shape).astype(np.float32)
    if labels is None:
        labels = (rng.random(q.shape, dtype=np.float32) < q).astype(np.int32)
    image = intensity + rng.normal(0.0, noise, q.shape).astype(np.float32) if noise > 0 else intensity
    return Case(f"synthetic_{int(seed):05d}", image.astype(np.float32), labels.astype(np.int32), spacing,
                metadata={"q": q})


def _check(shape, spacing):
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3 sides >= 4, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive sizes in mm, got {spacing}")
    return shape


def _jittered_centre(rng, shape, jitter):
    return (np.asarray(shape, np.float64) - 1) / 2 + rng.uniform(-jitter, jitter, 3)


def boundary_noise_case(
    seed: int,
    *,
    shape: Sequence[int] = (32, 32, 32),
    radius: float | Sequence[float] = 8.0,
    tau: float = 1.0,
    noise: float = 0.05,
    jitter: float = 2.0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Case:
    """An ellipsoid with independent boundary noise: ``q = sigmoid((r - ρ) / τ)``.

    Args:
      seed: seed of the centre jitter, the label draws and the image noise.
      shape: volume shape.
      radius: the radius in voxels: a float for a sphere, or three radii for an ellipsoid, where
        ``r - ρ`` becomes ``(1 - |(x - c) / radii|) · mean(radii)`` (exact on the axes of a
        sphere, approximate elsewhere).
      tau: the width of the uncertain boundary in voxels (``τ → 0`` gives the noise-free sphere).
      noise: standard deviation of the additive Gaussian image noise.
      jitter: the centre is moved by up to this many voxels along each axis.
      spacing: voxel size in mm (only for volumes).

    Returns:
      A :class:`~labelset_jax.data.case.Case`; the image is ``q`` plus noise (it shows the soft
      boundary).
    """
    shape = _check(shape, spacing)
    if tau <= 0:
        raise ValueError(f"tau must be > 0 (use noise_free_case for a hard boundary), got {tau}")
    rng = np.random.default_rng(seed)
    centre = _jittered_centre(rng, shape, jitter)
    q = _sigmoid(_distance(shape, centre, radius) / np.float32(tau))
    return _finish(seed, rng, q, q.astype(np.float32), noise, spacing)


def noise_free_case(
    seed: int,
    *,
    shape: Sequence[int] = (32, 32, 32),
    radius: float | Sequence[float] = 8.0,
    noise: float = 0.05,
    jitter: float = 2.0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Case:
    """The control: a sharp ellipsoid, ``q ∈ {0, 1}`` and ``labels == q`` (no inherent uncertainty).

    Same arguments as :func:`boundary_noise_case`, without ``tau``.

    >>> case = noise_free_case(0, shape=(12, 12, 12), radius=3.0)
    >>> bool(np.array_equal(case.labels, case.metadata["q"].astype(np.int32)))
    True
    """
    shape = _check(shape, spacing)
    rng = np.random.default_rng(seed)
    centre = _jittered_centre(rng, shape, jitter)
    inside = (_distance(shape, centre, radius) > 0).astype(np.float32)
    return _finish(seed, rng, inside, inside.copy(), noise, spacing, labels=inside.astype(np.int32))


def _place_spheres(rng, shape, radii, *, margin: float = 1.0, tries: int = 2000) -> list[np.ndarray]:
    """Random non-overlapping sphere centres inside the volume (rejection sampling)."""
    centres: list[np.ndarray] = []
    for r in radii:
        low, high = r + margin, np.asarray(shape, np.float64) - 1 - r - margin
        if np.any(high < low):
            raise ValueError(f"a sphere of radius {r} does not fit in shape {tuple(shape)}")
        for _ in range(tries):
            c = rng.uniform(low, high)
            if all(np.linalg.norm(c - c2) > r + r2 + 2 * margin for c2, r2 in zip(centres, radii)):
                centres.append(c)
                break
        else:
            raise ValueError(f"cannot place {len(radii)} non-overlapping spheres in shape {tuple(shape)}")
    return centres


def blob_included(seed: int, p: float) -> bool:
    r"""Stratified draw: whether case ``seed`` contains the ambiguous blob, for a share ``p``.

    .. math:: \mathrm{included}(s) = \lfloor (s + 1)\,p \rfloor > \lfloor s\,p \rfloor

    so any ``N`` consecutive seeds ``a .. a+N-1`` hold ``⌊(a+N)p⌋ − ⌊ap⌋`` blobs: ``⌊Np⌋`` or
    ``⌈Np⌉``, and exactly ``N·p`` when ``N·p`` and ``a·p`` are integers (e.g. ``N = 20`` seeds
    from a multiple of 100 for ``p`` in steps of 0.05). Independent draws would leave the realised
    share of a small training set far from ``p``.

    Args:
      seed: the case's seed (>= 0).
      p: the share in ``[0, 1]``.

    Returns:
      Whether the blob is labelled foreground in case ``seed``.

    >>> sum(blob_included(s, 0.45) for s in range(20)), sum(blob_included(s, 0.55) for s in range(20))
    (9, 11)
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    # rounded so that e.g. 3 * 0.3 counts as 0.9 and 20 * 0.45 as 9, not their binary neighbours
    return int(np.floor(round((int(seed) + 1) * p, 9))) > int(np.floor(round(int(seed) * p, 9)))


def _blob_case(seed, rng, shape, object_radius, blob_radii, blob_probs, blob_intensity, noise, spacing,
               included=None) -> Case:
    radii = ([object_radius] if object_radius > 0 else []) + list(blob_radii)
    centres = _place_spheres(rng, shape, radii)
    q = np.zeros(shape, np.float32)
    intensity = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    if object_radius > 0:
        inside = _distance(shape, centres[0], object_radius) > 0
        q[inside], intensity[inside], labels[inside] = 1.0, 1.0, 1
        centres = centres[1:]
    for j, (centre, r, p) in enumerate(zip(centres, blob_radii, blob_probs)):
        inside = _distance(shape, centre, r) > 0
        q[inside] = p
        intensity[inside] = blob_intensity
        drawn = rng.random() < p  # one draw for the whole blob (always made: the noise stays the same)
        labels[inside] = int(drawn if included is None else included[j])
    return _finish(seed, rng, q, intensity, noise, spacing, labels=labels)


def ambiguous_blob_case(
    seed: int,
    *,
    p: float,
    shape: Sequence[int] = (32, 32, 32),
    object_radius: float = 6.0,
    blob_radius: float = 4.0,
    blob_intensity: float = 0.4,
    noise: float = 0.05,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    stratified: bool = False,
) -> Case:
    """A clear object plus one faint blob that is all foreground with probability ``p``.

    The optimum of soft Dice includes the blob iff ``p > 0.5``, hence ``ΔV = (1[p > 0.5] - p) N``
    (docs/theory.md §5); cross-entropy's optimum predicts ``p`` on the blob (``ΔV ≈ 0``).

    Args:
      seed: seed of the positions, the draw and the image noise.
      p: probability that the blob is labelled foreground (one draw for all its voxels).
      shape: volume shape.
      object_radius: radius (voxels) of the clear object (``q = 1``, intensity 1); 0 for none.
      blob_radius: radius (voxels) of the faint blob (``q = p``).
      blob_intensity: the blob's intensity, shown whatever the draw. When cases with different
        ``p`` are mixed in one training set, make it a function of ``p`` so the image determines
        ``q``.
      noise: standard deviation of the additive Gaussian image noise.
      spacing: voxel size in mm.
      stratified: label the blob by :func:`blob_included` (``seed``, ``p``) instead of a random
        draw, so that ``N`` consecutive seeds hold the blob in ``N·p`` cases (to within one);
        the image, ``q`` and the geometry are those of the unstratified case.

    Returns:
      A :class:`~labelset_jax.data.case.Case`.

    >>> case = ambiguous_blob_case(0, p=0.3, shape=(24, 24, 24), object_radius=4, blob_radius=3)
    >>> sorted(np.unique(case.metadata["q"]).tolist())  # background, the blob, the object
    [0.0, 0.30000001192092896, 1.0]
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    shape = _check(shape, spacing)
    rng = np.random.default_rng(seed)
    included = [blob_included(seed, p)] if stratified else None
    return _blob_case(seed, rng, shape, object_radius, [blob_radius], [p], blob_intensity, noise, spacing, included)


def independent_blobs_case(
    seed: int,
    *,
    k: int,
    p: float | Sequence[float],
    shape: Sequence[int] = (48, 48, 48),
    object_radius: float = 6.0,
    blob_radius: float = 3.0,
    blob_intensity: float = 0.4,
    noise: float = 0.05,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    stratified: bool = False,
) -> Case:
    """A clear object plus ``k`` faint blobs, each foreground independently with probability ``p``.

    Args:
      seed: seed of the positions, the draws and the image noise.
      k: number of uncertain blobs.
      p: the inclusion probability, one for all blobs or one per blob.
      shape, object_radius, blob_radius, blob_intensity, noise, spacing: as in
        :func:`ambiguous_blob_case`.
      stratified: label blob ``j`` by :func:`blob_included` ``(seed·k + j, p_j)`` instead of a
        random draw: over consecutive seeds the share of included blobs is ``p`` (to within one
        blob), so a small training set shows ``p`` itself (independent draws over, say, 64 blobs
        miss ``p`` by ±0.06, enough to flip the soft-Dice optimum when ``p`` is near its
        threshold ``D*/2``).

    Returns:
      A :class:`~labelset_jax.data.case.Case`.

    Raises:
      ValueError: the blobs do not fit in the volume, or a bad ``p``.
    """
    probs = np.broadcast_to(np.asarray(p, np.float64), (int(k),))
    if np.any((probs < 0) | (probs > 1)):
        raise ValueError(f"p must be in [0, 1], got {p}")
    shape = _check(shape, spacing)
    rng = np.random.default_rng(seed)
    included = [blob_included(int(seed) * int(k) + j, float(q)) for j, q in enumerate(probs)] if stratified else None
    return _blob_case(seed, rng, shape, object_radius, [blob_radius] * int(k), probs.tolist(), blob_intensity, noise,
                      spacing, included)
