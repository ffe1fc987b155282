r"""Inference: Gaussian-weighted sliding windows, flip test-time augmentation, ensembles.

:func:`sliding_window_inference` follows MONAI's parameter names and semantics
(``monai.inferers.sliding_window_inference``) so settings map one to one, on channels-last arrays
``[B, D, H, W, C]``:

* a volume smaller than the window along an axis is padded symmetrically with ``pad_value``
  (``⌊(r − s)/2⌋`` voxels before, the rest after) and the output cropped back;
* windows of ``roi_size`` start every ``max(1, ⌊r · (1 − overlap)⌋)`` voxels along each axis, and
  the last one is moved back to end with the volume (:func:`window_starts`);
* every window's output is weighted by an importance map ``m`` (:func:`importance_map`): a
  Gaussian with standard deviation ``sigma_scale · roi_size`` centred in the window
  (``mode="gaussian"``) or ones (``mode="constant"``), and the fused output is

  .. math:: y(v) = \frac{\sum_w m(v - o_w)\, f(x_w)(v - o_w)}{\sum_w m(v - o_w)}

  over the windows ``w`` (origin ``o_w``) that contain the voxel ``v``;
* the windows go through ``apply_fn`` ``sw_batch_size`` at a time inside one jitted
  ``lax.scan``: only the output accumulators and one batch of windows are alive at once, so the
  memory is bounded for full-resolution volumes. The window origins are static (computed from the
  shapes), the last batch is filled up with copies of a window given zero weight.

Test-time augmentation (:class:`flip_tta`) averages *logits*; ensembles
(:func:`ensemble_probabilities`, :func:`predict_volume`) average *probabilities*.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["window_starts", "importance_map", "sliding_window_inference", "flip_tta",
           "ensemble_probabilities", "predict_volume"]


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis (MONAI's ``dense_patch_slices``).

    Windows start every ``stride = max(1, int(roi * (1 - overlap)))`` voxels until one reaches the
    end; that last one is moved back to ``size - roi``. A single window starts at 0 when
    ``size <= roi`` (the volume is then padded to ``roi``).

    >>> window_starts(20, 8, 0.5)
    [0, 4, 8, 12]
    >>> window_starts(21, 8, 0.5)
    [0, 4, 8, 12, 13]
    >>> window_starts(5, 8, 0.5)
    [0]
    """
    if size <= roi:
        return [0]
    stride = max(1, int(roi * (1.0 - overlap)))
    starts = list(range(0, size - roi + 1, stride))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def importance_map(roi_size: Sequence[int], *, mode: str = "gaussian",
                   sigma_scale: float | Sequence[float] = 0.125) -> np.ndarray:
    r"""The weights ``m [*roi_size]`` of a window's voxels, as MONAI's ``compute_importance_map``.

    ``mode="gaussian"``: with ``x_i = i − (r − 1)/2`` the offset from the window centre and
    ``σ = sigma_scale · r`` along each axis,

    .. math:: m(x) = \max\Big(\prod_{\text{axes}} e^{-x_i^2 / 2\sigma^2},\ 10^{-3}\Big)

    (the floor keeps every voxel's total weight positive); ``mode="constant"``: ones.

    Args:
      roi_size: the window size.
      mode: ``"gaussian"`` or ``"constant"``.
      sigma_scale: the standard deviation as a fraction of the window size, one number or one per
        axis.

    Returns:
      float32 ``[*roi_size]``.

    >>> [round(float(w), 3) for w in importance_map((5,), sigma_scale=0.5)]
    [0.726, 0.923, 1.0, 0.923, 0.726]
    >>> float(importance_map((8, 8, 8)).min())  # corners: exp(-3 · 3.5² / 2) < 1e-3
    0.001
    """
    roi_size = tuple(int(r) for r in roi_size)
    if mode == "constant":
        return np.ones(roi_size, np.float32)
    if mode != "gaussian":
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    scales = np.broadcast_to(np.asarray(sigma_scale, np.float64), (len(roi_size),))
    if np.any(scales <= 0):
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = np.ones((), np.float64)
    for r, scale in zip(roi_size, scales):
        x = np.arange(r) - (r - 1) / 2.0
        weights = np.multiply.outer(weights, np.exp(-(x ** 2) / (2.0 * (scale * r) ** 2)))
    return np.maximum(weights, 1e-3).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("apply_fn", "roi_size", "sw_batch_size", "overlap", "mode",
                                             "sigma_scale", "pad_value", "progress"))
def _sliding_window(image, args, *, apply_fn, roi_size, sw_batch_size, overlap, mode, sigma_scale, pad_value,
                    progress):
    batch, *spatial, in_channels = image.shape
    pads = [((r - s) // 2, r - s - (r - s) // 2) if s < r else (0, 0) for s, r in zip(spatial, roi_size)]
    image = jnp.pad(image, [(0, 0), *pads, (0, 0)], constant_values=pad_value)
    padded = image.shape[1:-1]

    # Static window origins (batch index, d, h, w), in batches of sw_batch_size; the last batch is
    # filled up with copies of the first window, whose weight is zero.
    starts = [window_starts(s, r, overlap) for s, r in zip(padded, roi_size)]
    origins = [(b, *o) for b in range(batch) for o in itertools.product(*starts)]
    num_windows = len(origins)
    sw_batch_size = min(sw_batch_size, num_windows)
    num_batches = -(-num_windows // sw_batch_size)
    filler = num_batches * sw_batch_size - num_windows
    origins = np.array(origins + [origins[0]] * filler, np.int32).reshape(num_batches, sw_batch_size, 4)
    live = np.array([1.0] * num_windows + [0.0] * filler, np.float32).reshape(num_batches, sw_batch_size)

    weights = jnp.asarray(importance_map(roi_size, mode=mode, sigma_scale=sigma_scale))[..., None]
    probe = jax.ShapeDtypeStruct((sw_batch_size, *roi_size, in_channels), image.dtype)
    out_channels = jax.eval_shape(lambda x: apply_fn(x, *args), probe).shape[-1]

    def window(volume, origin, channels):
        return jax.lax.dynamic_slice(volume, (*origin, 0), (1, *roi_size, channels))

    def add_window(volume, origin, update):
        current = window(volume, origin, update.shape[-1])
        return jax.lax.dynamic_update_slice(volume, current + update[None], (*origin, 0))

    def step(carry, xs):
        total, norm = carry  # Σ_w m f(x_w) and Σ_w m
        batch_index, batch_origins, batch_live = xs
        patches = jax.vmap(lambda o: window(image, o, in_channels)[0])(batch_origins)
        outputs = apply_fn(patches, *args).astype(jnp.float32)
        if progress is not None:  # on the host, once this batch's outputs exist
            jax.debug.callback(lambda i, _: progress(int(i) + 1, num_batches), batch_index, outputs[0, 0, 0, 0, 0])

        def add_output(j, carry):  # a loop, not unrolled: compile time independent of sw_batch_size
            total, norm = carry
            m = weights * batch_live[j]
            return add_window(total, batch_origins[j], m * outputs[j]), add_window(norm, batch_origins[j], m)

        return jax.lax.fori_loop(0, sw_batch_size, add_output, (total, norm)), None

    init = (jnp.zeros((batch, *padded, out_channels), jnp.float32), jnp.zeros((batch, *padded, 1), jnp.float32))
    xs = (jnp.arange(num_batches), jnp.asarray(origins), jnp.asarray(live))
    (total, norm), _ = jax.lax.scan(step, init, xs)
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pads, spatial))
    return (total / norm)[(slice(None), *crop, slice(None))]


def sliding_window_inference(
    apply_fn: Callable[..., Array],
    image: Array,
    *args,
    roi_size: Sequence[int],
    sw_batch_size: int,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    pad_value: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> Array:
    r"""Fuses the outputs of ``apply_fn`` on overlapping windows of ``image`` (MONAI's semantics).

    .. math:: y(v) = \frac{\sum_w m(v - o_w)\, f(x_w)(v - o_w)}{\sum_w m(v - o_w)}

    over the windows ``w`` (origin ``o_w``, placed by :func:`window_starts`) that contain the voxel
    ``v``, with ``m`` the :func:`importance_map`. See the module docstring for the padding and
    batching.

    Args:
      apply_fn: ``apply_fn(patches [N, *roi_size, C_in], *args) -> [N, *roi_size, K]``. It is a
        static argument of the compiled function (hashed by identity): pass the same callable
        each time (e.g. a model's jitted predict function) and put changing values such as the
        parameters in ``args``, or every call compiles anew.
      image: ``[B, D, H, W, C_in]``.
      *args: extra arguments of ``apply_fn`` (pytrees of arrays, e.g. the model state).
      roi_size: the window size ``(d, h, w)``.
      sw_batch_size: windows per call of ``apply_fn``.
      overlap: fraction of overlap between neighbouring windows, in ``[0, 1)``.
      mode: ``"gaussian"`` or ``"constant"`` (uniform) importance map.
      sigma_scale: the Gaussian's standard deviation as a fraction of ``roi_size`` (one number or
        one per axis).
      pad_value: the value padding volumes smaller than the window.
      progress: called on the host as ``progress(done, total)`` after each batch of windows (a
        progress display for large volumes). Like ``apply_fn`` it is static: pass the same
        callable each time.

    Returns:
      float32 ``[B, D, H, W, K]``.

    Raises:
      ValueError: on a bad shape or argument, naming it.

    Example:
      >>> import jax.numpy as jnp
      >>> image = jnp.arange(2 * 9 * 7 * 5, dtype=jnp.float32).reshape(1, 9, 7, 5, 2)
      >>> out = sliding_window_inference(lambda x: 2 * x, image, roi_size=(4, 4, 4), sw_batch_size=3)
      >>> out.shape, bool(jnp.allclose(out, 2 * image))
      ((1, 9, 7, 5, 2), True)
    """
    image = jnp.asarray(image)
    roi_size = tuple(int(r) for r in roi_size)
    if image.ndim != 5:
        raise ValueError(f"image must be [B, D, H, W, C], got shape {image.shape}")
    if len(roi_size) != 3 or min(roi_size) < 1:
        raise ValueError(f"roi_size must be 3 positive sizes, got {roi_size}")
    if int(sw_batch_size) < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    sigma_scale = tuple(float(s) for s in np.broadcast_to(np.asarray(sigma_scale, np.float64), (3,)))
    if min(sigma_scale) <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    return _sliding_window(image, tuple(args), apply_fn=apply_fn, roi_size=roi_size,
                           sw_batch_size=int(sw_batch_size), overlap=float(overlap), mode=mode,
                           sigma_scale=sigma_scale, pad_value=float(pad_value), progress=progress)


class flip_tta:  # noqa: N801  (used like a function transform)
    r"""Left-right flip test-time augmentation, averaged on logits.

    .. math:: \mathrm{flip\_tta}(f)(x) = \tfrac12\big(f(x) + F(f(F(x)))\big)

    with ``F`` the flip of the spatial ``axis``. In RAS+ volumes (e.g. NIfTI loaded with
    ``canonical=True`` by :mod:`labelset_jax.data.nifti`) the first voxel axis runs from left to
    right: ``axis=1`` of ``[B, D, H, W, C]``, the default. For volumes in another orientation, pass
    the axis that runs left-right. A function that commutes with the flip is unchanged.

    Instances compare equal when they wrap the same function and axis, so jitted callers that take
    them as static arguments (e.g. :func:`sliding_window_inference`) do not recompile.

    Args:
      apply_fn: ``apply_fn(x [B, D, H, W, C], *args) -> [B, D, H, W, K]`` logits.
      axis: the spatial axis to flip: 1, 2 or 3.

    >>> import jax.numpy as jnp
    >>> x = jnp.arange(8.0).reshape(1, 8, 1, 1, 1)
    >>> bool(jnp.allclose(flip_tta(lambda v: v + v[:, ::-1])(x), x + x[:, ::-1]))  # flip-equivariant
    True
    >>> flip_tta(lambda v: v * jnp.arange(8.0).reshape(1, 8, 1, 1, 1))(x)[0, :, 0, 0, 0].tolist()
    [0.0, 3.5, 7.0, 10.5, 14.0, 17.5, 21.0, 24.5]
    """

    def __init__(self, apply_fn: Callable[..., Array], axis: int = 1):
        if axis not in (1, 2, 3):
            raise ValueError(f"axis must be a spatial axis of [B, D, H, W, C] (1, 2 or 3), got {axis}")
        self.apply_fn, self.axis = apply_fn, axis

    def __call__(self, x: Array, *args) -> Array:
        mirrored = jnp.flip(self.apply_fn(jnp.flip(x, self.axis), *args), self.axis)
        return 0.5 * (self.apply_fn(x, *args) + mirrored)

    def __eq__(self, other) -> bool:
        return isinstance(other, flip_tta) and (self.apply_fn, self.axis) == (other.apply_fn, other.axis)

    def __hash__(self) -> int:
        return hash((flip_tta, self.apply_fn, self.axis))

    def __repr__(self) -> str:
        return f"flip_tta({self.apply_fn!r}, axis={self.axis})"


def ensemble_probabilities(logits: Sequence[Array]) -> Array:
    r"""The mean of the ensemble members' softmax probabilities.

    .. math:: p = \frac1M \sum_{m=1}^M \mathrm{softmax}(z_m)

    Averaging probabilities (not logits) keeps each member's confidence: a member sure of a class
    cannot be outvoted by a large logit of another member on a different class.

    Args:
      logits: the ``M`` members' logits ``[..., K]``, of one shape.

    Returns:
      float32 probabilities ``[..., K]``.

    >>> import jax.numpy as jnp
    >>> p = ensemble_probabilities([jnp.zeros((1, 2)), jnp.array([[0.0, jnp.log(3.0)]])])
    >>> p.round(3).tolist()
    [[0.375, 0.625]]
    """
    logits = list(logits)
    if not logits:
        raise ValueError("logits must hold at least one ensemble member")
    shapes = {jnp.shape(z) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"logits of the ensemble members must have one shape, got {sorted(shapes)}")
    return sum(jax.nn.softmax(jnp.asarray(z, jnp.float32), axis=-1) for z in logits) / len(logits)


def predict_volume(
    apply_fns: Callable[..., Array] | Sequence[Callable[..., Array]],
    image: Array,
    *args,
    roi_size: Sequence[int],
    sw_batch_size: int = 2,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    tta: bool = False,
    member_args: Sequence[tuple] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Array, Array]:
    """Probabilities and argmax labels of a volume: sliding windows, optional flip TTA (on
    logits), and an ensemble averaged on probabilities.

    For each member ``f_m``: ``z_m = sliding_window_inference(flip_tta(f_m) if tta else f_m)``;
    then ``p = mean_m softmax(z_m)`` (as :func:`ensemble_probabilities`, accumulated member by
    member so that one member's logits are alive at a time) and ``labels = argmax_k p``.

    Args:
      apply_fns: one model function, or a list or tuple of them (one per ensemble member).
      image: ``[B, D, H, W, C_in]``.
      *args: arguments of every ``apply_fn`` (ignored when ``member_args`` is given).
      roi_size, sw_batch_size, overlap, mode, sigma_scale: as in :func:`sliding_window_inference`.
      tta: average each member's logits over the left-right flip (:class:`flip_tta`, ``axis=1``).
      member_args: per-member ``args`` (e.g. each member's state).
      progress: as in :func:`sliding_window_inference`, for each member in turn.

    Returns:
      ``(probabilities float32 [B, D, H, W, K], labels int32 [B, D, H, W])``.

    >>> import jax.numpy as jnp
    >>> image = jnp.linspace(-1.0, 1.0, 6 * 5 * 4).reshape(1, 6, 5, 4, 1)
    >>> two_class = lambda x: jnp.concatenate([-x, x], axis=-1)
    >>> probs, labels = predict_volume(two_class, image, roi_size=(4, 4, 4), tta=True)
    >>> probs.shape, labels.shape, bool(jnp.all(labels == (image[..., 0] > 0)))
    ((1, 6, 5, 4, 2), (1, 6, 5, 4), True)
    """
    fns = list(apply_fns) if isinstance(apply_fns, (list, tuple)) else [apply_fns]
    if not fns:
        raise ValueError("apply_fns must hold at least one ensemble member")
    per_member = list(member_args) if member_args is not None else [args] * len(fns)
    if len(per_member) != len(fns):
        raise ValueError(f"{len(fns)} ensemble members but {len(per_member)} member_args")
    probs = None
    for fn, fn_args in zip(fns, per_member):
        logits = sliding_window_inference(flip_tta(fn) if tta else fn, image, *fn_args, roi_size=roi_size,
                                          sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
                                          sigma_scale=sigma_scale, progress=progress)
        member = jax.nn.softmax(logits, axis=-1)
        probs = member if probs is None else probs + member
    probs = probs / len(fns)
    return probs, jnp.argmax(probs, axis=-1).astype(jnp.int32)
