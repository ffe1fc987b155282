"""Procedural fetal brain phantoms: T2-like 3D volumes with the 9 labels of docs/theory.md §4.

The phantoms are the library's embedded data set: they need no download, are deterministic per
seed, and come at any size (32³ and 48³ for CPU tests, 128³ and more on a GPU). They are not
anatomically exact, but they have the features the label-set experiments rely on:

* the nesting of the fetal brain tissues: a brain envelope (a randomly posed and sized ellipsoid)
  lined by extra-axial CSF; a folded cortical grey-matter ribbon (its boundary folded by a sum of
  random sinusoids of the direction, a cheap stand-in for spherical harmonics) with the white
  matter inside; an interhemispheric fissure down to the corpus callosum, a thin arch between the
  hemispheres above two lateral ventricles; two deep grey-matter nuclei; a cerebellum
  (posterior-inferior ellipsoid in its own CSF sheath) and a brainstem leaving the brain
  inferiorly;
* fetal T2 contrast: CSF brightest, white matter bright-ish, cortical grey matter darkest, random
  per-case tissue intensities, partial-volume blur, a smooth multiplicative bias field and Rician
  noise;
* optional abnormal anatomy, as in open spina bifida (docs/theory.md §4): ``ventriculomegaly``
  enlarges the lateral ventricles (their cross-section ×1.6–2.1) and ``small_cerebellum`` shrinks
  the cerebellum (×0.55–0.7) and moves it down and forward. The severity is drawn per case from
  a generator of its own (:func:`draw_abnormality`), so a normal phantom is the same whether or
  not abnormal ones are made, and an abnormal phantom is the normal phantom of the same seed with
  only those structures changed.

Every label is present in every case for every shape with each side >= 32 (thin structures are
made at least ~1.25 voxels thick), which the tests check over many seeds.

Orientation: voxel axes are RAS+ (axis 0 left -> right, 1 posterior -> anterior, 2 inferior ->
superior), so a left-right flip is a flip of axis 0; :func:`phantom_affine` gives the matching
affine. The anatomy is defined relative to the field of view (default 96 mm): the shape sets the
resolution, not the brain size.

>>> image, labels = make_phantom(0, shape=(32, 32, 32))
>>> image.dtype, labels.dtype, image.shape
(dtype('float32'), dtype('int32'), (32, 32, 32))
>>> sorted(np.unique(labels).tolist())
[0, 1, 2, 3, 4, 5, 6, 7, 8]
>>> _, abnormal = make_phantom(0, shape=(32, 32, 32), ventriculomegaly=True, small_cerebellum=True)
>>> bool((abnormal == 2).sum() > (labels == 2).sum() and (abnormal == 3).sum() < (labels == 3).sum())
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from labelset_jax.labelsets import FETAL_BRAIN

__all__ = [
    "make_phantom", "phantom_affine", "phantom_spacing", "PHANTOM_FOV_MM", "MIN_PHANTOM_SIZE",
    "Abnormality", "NORMAL", "draw_abnormality",
]

#: Default field of view of a phantom (mm) along each axis: the spacing is ``FOV / shape``.
PHANTOM_FOV_MM = 96.0
#: The smallest side for which every label is guaranteed to be present.
MIN_PHANTOM_SIZE = 32

# Label ids (FETAL_BRAIN leaves).
BG, WM, VENT, CEREB, ECSF, CGM, DGM, BSTEM, CC = range(9)
assert FETAL_BRAIN.names[CC] == "corpus_callosum" and FETAL_BRAIN.names[ECSF] == "ecsf"

# Mean T2 intensity range per label (before the per-case gain, blur, bias field and noise).
_T2_INTENSITY = {
    BG: (0.0, 0.08),
    WM: (0.55, 0.70),
    VENT: (0.85, 1.0),
    CEREB: (0.42, 0.55),
    ECSF: (0.90, 1.0),
    CGM: (0.28, 0.38),
    DGM: (0.38, 0.48),
    BSTEM: (0.38, 0.50),
    CC: (0.35, 0.45),
}


class Abnormality(NamedTuple):
    """The abnormal anatomy of one phantom: scale factors and a displacement of two structures.

    Attributes:
      ventricle_scale: factor on the lateral ventricles' cross-section (left-right and
        inferior-superior radii; the anterior-posterior length grows by half as much). 1 = normal.
      cerebellum_scale: factor on the three radii of the cerebellum. 1 = normal.
      cerebellum_down: displacement of the cerebellum towards inferior, in units of the brain's
        half-axis (the brain envelope is about the unit sphere). 0 = normal.
      cerebellum_forward: displacement of the cerebellum towards anterior, same units. 0 = normal.
    """

    ventricle_scale: float = 1.0
    cerebellum_scale: float = 1.0
    cerebellum_down: float = 0.0
    cerebellum_forward: float = 0.0


#: The normal anatomy (no change).
NORMAL = Abnormality()

#: Ranges of the severities drawn by :func:`draw_abnormality`.
VENTRICLE_SCALE = (1.6, 2.1)
CEREBELLUM_SCALE = (0.55, 0.70)
CEREBELLUM_DOWN = (0.08, 0.18)
CEREBELLUM_FORWARD = (0.03, 0.08)

# Mixed into the case seed to make the severity generator: independent of the anatomy's draws.
_ABNORMALITY_STREAM = 0x5B1F


def draw_abnormality(seed: int, *, ventriculomegaly: bool = True, small_cerebellum: bool = True) -> Abnormality:
    """The severity of the abnormal anatomy of phantom ``seed``, from a generator of its own.

    The draws come from ``numpy.random.default_rng([seed, stream])`` with a fixed stream number,
    not from the phantom's own generator, so asking for abnormal anatomy never changes the other
    draws of the phantom. Severities are uniform in :data:`VENTRICLE_SCALE`,
    :data:`CEREBELLUM_SCALE`, :data:`CEREBELLUM_DOWN` and :data:`CEREBELLUM_FORWARD`; the
    cerebellum's size and displacement share one severity (a smaller cerebellum sits lower).

    Args:
      seed: the phantom's seed (non-negative).
      ventriculomegaly: enlarge the lateral ventricles.
      small_cerebellum: shrink the cerebellum and move it down and forward.

    Returns:
      An :class:`Abnormality`; :data:`NORMAL` when both options are off.

    >>> a = draw_abnormality(0)
    >>> 1.6 <= a.ventricle_scale <= 2.1 and 0.55 <= a.cerebellum_scale <= 0.7
    True
    >>> draw_abnormality(0, ventriculomegaly=False, small_cerebellum=False) == NORMAL
    True
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([int(seed), _ABNORMALITY_STREAM])
    ventricles, cerebellum = rng.uniform(0.0, 1.0, 2)  # always both draws: options stay independent
    out = NORMAL
    if ventriculomegaly:
        low, high = VENTRICLE_SCALE
        out = out._replace(ventricle_scale=float(low + (high - low) * ventricles))
    if small_cerebellum:
        out = out._replace(
            cerebellum_scale=float(CEREBELLUM_SCALE[1] - (CEREBELLUM_SCALE[1] - CEREBELLUM_SCALE[0]) * cerebellum),
            cerebellum_down=float(CEREBELLUM_DOWN[0] + (CEREBELLUM_DOWN[1] - CEREBELLUM_DOWN[0]) * cerebellum),
            cerebellum_forward=float(
                CEREBELLUM_FORWARD[0] + (CEREBELLUM_FORWARD[1] - CEREBELLUM_FORWARD[0]) * cerebellum
            ),
        )
    return out


def phantom_spacing(shape: Sequence[int], fov_mm: float = PHANTOM_FOV_MM) -> tuple[float, float, float]:
    """The default voxel size (mm) of a phantom: the field of view divided by the shape.

    >>> phantom_spacing((48, 48, 48))
    (2.0, 2.0, 2.0)
    """
    return tuple(float(fov_mm) / int(n) for n in shape)


def phantom_affine(shape: Sequence[int], spacing: Sequence[float] | None = None) -> np.ndarray:
    """The RAS+ affine of a phantom: diagonal ``spacing``, world origin at the volume centre.

    >>> phantom_affine((4, 4, 4), (2.0, 2.0, 2.0))[:3, 3].tolist()
    [-3.0, -3.0, -3.0]
    """
    spacing = phantom_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    affine = np.diag(list(spacing) + [1.0])
    affine[:3, 3] = -(np.asarray(shape, np.float64) - 1) / 2 * np.asarray(spacing)
    return affine


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """The rotation ``Rz @ Ry @ Rx`` by three angles (radians) about the x, y and z axes, ``[3, 3]``."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _direction_field(rng: np.random.Generator, n: tuple[np.ndarray, ...], terms: int, freq: tuple[float, float]):
    """A smooth random function of the unit direction ``n``, normalised to about [-1, 1].

    A sum of sinusoids of random projections ``w·n``: smooth on the sphere (no pole singularity),
    with an angular frequency set by ``freq``, like a band of spherical harmonics.
    """
    total = np.zeros_like(n[0])
    wave = np.empty_like(n[0])
    weights = rng.uniform(0.5, 1.0, terms)
    for k in range(terms):
        w = rng.normal(size=3)
        w *= rng.uniform(*freq) / np.linalg.norm(w)  # direction times angular frequency
        phase = rng.uniform(0, 2 * np.pi)
        # float32 in place: sin(w·n + phase) (Python floats keep numpy from promoting to float64)
        np.multiply(n[0], float(w[0]), out=wave)
        wave += float(w[1]) * n[1]
        wave += float(w[2]) * n[2]
        wave += float(phase)
        np.sin(wave, out=wave)
        wave *= float(weights[k])
        total += wave
    total *= float(2.0 / weights.sum())
    return total


def _ellipsoid(u, centre, radii) -> np.ndarray:
    """The normalised ellipsoid 'radius' ``|(u - centre) / radii|²`` (< 1 inside)."""
    return sum(((u[a] - centre[a]) / radii[a]) ** 2 for a in range(3))


def _labels(rng: np.random.Generator, shape: tuple[int, int, int], abnormality: Abnormality = NORMAL) -> np.ndarray:
    """The label map of one phantom (all geometry is drawn from ``rng`` in a fixed order).

    ``abnormality`` changes the drawn geometry of the ventricles and the cerebellum after the
    draws, so it never shifts the sequence of ``rng``.
    """
    # Normalised grid coordinates in (-1, 1) along each axis (the field of view).
    grids = [((np.arange(s, dtype=np.float32) - (s - 1) / 2) / (s / 2)) for s in shape]
    g = np.meshgrid(*grids, indexing="ij", sparse=True)

    # Pose and size of the brain envelope (outer surface of the extra-axial CSF).
    centre = rng.uniform(-0.03, 0.03, 3)
    radii = np.array([rng.uniform(0.74, 0.82), rng.uniform(0.84, 0.90), rng.uniform(0.74, 0.80)])
    rot = rotation_matrix(rng.uniform(-0.1, 0.1, 3)).astype(np.float32)
    # u: coordinates in the brain frame, the envelope being (about) the unit sphere.
    d = [g[a] - np.float32(centre[a]) for a in range(3)]
    u = [sum(rot[a, b] * d[b] for b in range(3)) / np.float32(radii[a]) for a in range(3)]
    u = [np.broadcast_to(x, shape).astype(np.float32) for x in u]
    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    n = [x / np.maximum(rho, 1e-6) for x in u]

    # Thickness floor: ~1.25 voxels of the coarsest axis, in brain-frame units.
    voxel = 2.0 / min(shape)
    floor = float(1.25 * voxel / radii.min())

    def thick(low, high):
        return max(rng.uniform(low, high), floor)

    maturity = rng.uniform(0.0, 1.0)  # older brains: deeper folds, smaller ventricles
    t_csf = thick(0.03, 0.06)
    t_gm = thick(0.05, 0.08)
    depth = (0.04 + 0.10 * maturity) * rng.uniform(0.8, 1.2) * min(1.0, min(shape) / 64)  # unresolved below
    r_out = 1.0 + 0.03 * _direction_field(rng, n, 4, (1.0, 2.5))
    fold = _direction_field(rng, n, 12, (8.0, 16.0))
    r_cortex = r_out - t_csf - depth * np.clip(0.5 * (fold + 1.0), 0.0, 1.0)
    r_wm = r_cortex - t_gm

    labels = np.zeros(shape, np.int32)
    labels[rho < r_out] = ECSF
    labels[rho < r_cortex] = CGM
    labels[rho < r_wm] = WM

    # Corpus callosum: an arch in the (y, z) plane, crossing the midline.
    cc_y, cc_z = rng.uniform(-0.02, 0.06), rng.uniform(0.02, 0.08)
    cc_a, cc_b = rng.uniform(0.34, 0.42), rng.uniform(0.18, 0.24)
    t_cc = thick(0.05, 0.07)
    cc_halfwidth = rng.uniform(0.24, 0.30)
    s = np.sqrt(((u[1] - cc_y) / cc_a) ** 2 + ((u[2] - cc_z) / cc_b) ** 2)
    cc = (np.abs(s - 1.0) * cc_b < t_cc / 2) & (u[2] > cc_z) & (np.abs(u[0]) < cc_halfwidth)

    # Interhemispheric fissure: CSF lined with cortex, from the top down to the callosal arch
    # (and a little deeper in front of and behind it).
    arch = np.where(
        np.abs(u[1] - cc_y) < cc_a,
        cc_z + cc_b * np.sqrt(np.clip(1.0 - ((u[1] - cc_y) / cc_a) ** 2, 0.0, None)) + t_cc / 2,
        cc_z - 0.05,
    )
    t_fissure = max(rng.uniform(0.015, 0.03), floor / 2)  # a half-width
    above = (u[2] > arch) & (rho < r_cortex)
    labels[above & (np.abs(u[0]) < t_fissure + t_gm)] = CGM
    labels[above & (np.abs(u[0]) < t_fissure)] = ECSF

    # Deep grey nuclei (two blobs), then the lateral ventricles (curved blobs) above them.
    dgm_c = (rng.uniform(0.24, 0.28), rng.uniform(-0.02, 0.08), rng.uniform(-0.20, -0.12))
    dgm_r = (thick(0.18, 0.21), thick(0.24, 0.29), thick(0.16, 0.19))
    vent_size = 1.15 - 0.3 * maturity
    vent_c = (rng.uniform(0.14, 0.17), rng.uniform(-0.06, 0.04), rng.uniform(0.05, 0.09))
    vent_r = (thick(0.10, 0.13) * vent_size, rng.uniform(0.32, 0.40), thick(0.12, 0.15) * vent_size)
    bend = rng.uniform(0.05, 0.12)
    if abnormality.ventricle_scale != 1.0:
        # Ventriculomegaly: a wider and taller cross-section (medial wall kept off the midline,
        # growing mostly upwards, towards the corpus callosum) and somewhat longer horns.
        f = abnormality.ventricle_scale
        grown = (vent_r[0] * f, vent_r[1] * (1.0 + (f - 1.0) / 2.0), vent_r[2] * f)
        vent_c = (vent_c[0] + grown[0] - vent_r[0], vent_c[1], vent_c[2] + (grown[2] - vent_r[2]) / 2.0)
        vent_r = grown
    for side in (-1.0, 1.0):
        labels[_ellipsoid(u, (side * dgm_c[0], dgm_c[1], dgm_c[2]), dgm_r) < 1.0] = DGM
        vu = (u[0], u[1], u[2] + bend * ((u[1] - vent_c[1]) / vent_r[1]) ** 2)  # horns curve down
        labels[_ellipsoid(vu, (side * vent_c[0], vent_c[1], vent_c[2]), vent_r) < 1.0] = VENT
    labels[cc] = CC

    # Brainstem: a slightly tilted cylinder with a rounded top, leaving the brain inferiorly, in a
    # CSF sheath where it is outside the brain envelope.
    bs_y, bs_top, tilt = rng.uniform(-0.24, -0.18), rng.uniform(-0.22, -0.14), rng.uniform(0.1, 0.25)
    bs_r = (thick(0.13, 0.16), thick(0.13, 0.16))
    axis_y = bs_y + tilt * (u[2] - bs_top)
    radial = (u[0] / bs_r[0]) ** 2 + ((u[1] - axis_y) / bs_r[1]) ** 2
    cap = np.maximum(u[2] - bs_top, 0.0) / bs_r[1]
    tube = radial + cap**2
    sheath = (1.0 + (t_csf + floor) / min(bs_r)) ** 2
    labels[(tube < sheath) & (labels == BG)] = ECSF
    labels[tube < 1.0] = BSTEM

    # Cerebellum: posterior-inferior, in its own CSF sheath, kept inside the envelope.
    cb_c = (0.0, rng.uniform(-0.52, -0.46), rng.uniform(-0.44, -0.36))
    cb_r = (rng.uniform(0.38, 0.46), thick(0.22, 0.27), thick(0.18, 0.23))
    if abnormality != NORMAL:
        # Small cerebellum pulled down and forward (towards the foramen magnum and the brainstem).
        cb_c = (cb_c[0], cb_c[1] + abnormality.cerebellum_forward, cb_c[2] - abnormality.cerebellum_down)
        cb_r = tuple(max(r * abnormality.cerebellum_scale, floor) for r in cb_r)
    e_cb = _ellipsoid(u, cb_c, cb_r)
    inside = rho < r_out - t_csf
    labels[(e_cb < (1.0 + t_csf / min(cb_r)) ** 2) & (rho < r_out)] = ECSF
    labels[(e_cb < 1.0) & inside] = CEREB
    return labels


def _image(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A T2-like image of ``labels``: tissue means, texture, blur, bias field, Rician noise."""
    shape = labels.shape
    means = np.array([rng.uniform(*_T2_INTENSITY[c]) for c in range(9)], np.float32)
    image = means[labels]
    # Smooth within-tissue texture (e.g. the layered fetal white matter).
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2.0)
    texture *= 0.04 / max(float(texture.std()), 1e-6)
    image += texture * (labels != BG)
    image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.0))  # partial-volume blur
    # Multiplicative bias field: exp of a random quadratic polynomial of the coordinates.
    x = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    log_bias = sum(rng.normal(0, 0.08) * x[a] for a in range(3))
    log_bias = log_bias + sum(rng.normal(0, 0.05) * x[a] * x[b] for a in range(3) for b in range(a, 3))
    image *= np.exp(log_bias) * rng.uniform(0.8, 1.25)
    # Rician noise: magnitude of the image plus complex Gaussian noise.
    sigma = rng.uniform(0.01, 0.04)
    real = image + rng.normal(0, sigma, shape).astype(np.float32)
    imag = rng.normal(0, sigma, shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def make_phantom(
    seed: int,
    *,
    shape: Sequence[int] = (48, 48, 48),
    spacing: Sequence[float] | None = None,
    ventriculomegaly: bool = False,
    small_cerebellum: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One procedural fetal brain phantom: a T2-like image and its full 9-label segmentation.

    Deterministic: the same ``(seed, shape, ventriculomegaly, small_cerebellum)`` gives identical
    arrays. Takes ~0.07 s at 64³ and ~0.5 s at 128³ on one CPU core.

    Args:
      seed: a non-negative integer seed (``numpy.random.default_rng(seed)``).
      shape: the volume shape ``(D, H, W)`` (RAS+ voxel axes); each side >= 16, and >= 32 for every
        label to be present.
      spacing: the voxel size in mm. It only annotates the volume (the anatomy spans the field of
        view whatever the spacing); the default :func:`phantom_spacing` gives a 96 mm field of view,
        a brain of about 200-300 ml like a third-trimester fetus. Pass it to
        :func:`phantom_affine` when writing NIfTI files.
      ventriculomegaly: enlarge the lateral ventricles (cross-section ×1.6–2.1).
      small_cerebellum: shrink the cerebellum (×0.55–0.7) and move it down and forward.
        The severities of both come from :func:`draw_abnormality` (``seed``); with both options
        off the phantom is the normal one, and with either on it is the normal phantom of the
        same seed with only the ventricles or the cerebellum changed (every label still present).

    Returns:
      ``(image, labels)``: float32 ``[D, H, W]`` intensities (about 0..1.3, not normalised) and
      int32 ``[D, H, W]`` leaf ids of :data:`~labelset_jax.labelsets.FETAL_BRAIN`.

    Raises:
      ValueError: a side smaller than 16, a negative seed, or a non-positive spacing.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"phantom shape must be 3 sides >= 16 (>= {MIN_PHANTOM_SIZE} for all labels), got {shape}")
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise ValueError(f"spacing must be 3 positive sizes in mm, got {spacing}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    abnormality = draw_abnormality(seed, ventriculomegaly=ventriculomegaly, small_cerebellum=small_cerebellum)
    rng = np.random.default_rng(int(seed))
    labels = _labels(rng, shape, abnormality)
    image = _image(rng, labels)
    return image, labels
