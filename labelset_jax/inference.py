"""Inference: Gaussian-weighted sliding windows, flip test-time augmentation, ensembles.

:func:`sliding_window_inference` follows MONAI's parameter names and semantics
(``monai.inferers.sliding_window_inference``) so settings map one to one, on channels-last arrays:

* windows of ``roi_size`` start every ``max(1, int(roi · (1 − overlap)))`` voxels along each axis,
  the last one aligned with the end of the volume; a volume smaller than the window is padded
  symmetrically with ``pad_value`` and the output cropped back;
* every window's output is weighted by an importance map — a Gaussian with standard deviation
  ``sigma_scale · roi_size`` centred in the window (``mode="gaussian"``) or uniform
  (``mode="constant"``) — and the fused output is ``Σ_w m_w · f(x_w) / Σ_w m_w``;
* windows go through ``apply_fn`` ``sw_batch_size`` at a time inside one jitted ``lax.scan``, so
  only the output accumulator and one batch of windows are alive at once (memory is bounded for
  full-resolution volumes).
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
    """Start indices of the windows along one axis (MONAI's scan intervals).

    >>> window_starts(20, 8, 0.5)
    [0, 4, 8, 12]
    >>> window_starts(21, 8, 0.5)
    [0, 4, 8, 12, 13]
    """
    if size <= roi:
        return [0]
    stride = max(1, int(roi * (1.0 - overlap)))
    starts = list(range(0, size - roi + 1, stride))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def importance_map(roi_size: Sequence[int], *, mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """The window weights ``[*roi_size]``: a Gaussian (max 1) or ones.

    >>> [round(float(w), 3) for w in importance_map((5,), sigma_scale=0.5)]
    [0.726, 0.923, 1.0, 0.923, 0.726]
    """
    if mode == "constant":
        return np.ones(tuple(roi_size), np.float32)
    if mode != "gaussian":
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    weights = np.ones((), np.float64)
    for n in roi_size:
        sigma = max(sigma_scale * n, 1e-6)
        x = np.arange(n) - (n - 1) / 2.0
        weights = np.multiply.outer(weights, np.exp(-0.5 * (x / sigma) ** 2))
    weights = weights / weights.max()
    return np.maximum(weights, np.finfo(np.float32).tiny).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("apply_fn", "roi_size", "sw_batch_size", "overlap", "mode",
                                             "sigma_scale", "pad_value"))
def _sliding_window(image, args, *, apply_fn, roi_size, sw_batch_size, overlap, mode, sigma_scale, pad_value):
    batch, *spatial, in_channels = image.shape
    pads = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(spatial, roi_size)]
    image = jnp.pad(image, [(0, 0), *pads, (0, 0)], constant_values=pad_value)
    padded = image.shape[1:-1]

    starts = [window_starts(s, r, overlap) for s, r in zip(padded, roi_size)]
    origins = [(b, *o) for b in range(batch) for o in itertools.product(*starts)]
    num_windows = len(origins)
    num_batches = -(-num_windows // sw_batch_size)
    valid = np.zeros(num_batches * sw_batch_size, np.float32)
    valid[:num_windows] = 1.0
    origins = origins + [origins[0]] * (num_batches * sw_batch_size - num_windows)  # weight-0 filler
    origins = jnp.asarray(np.array(origins, np.int32).reshape(num_batches, sw_batch_size, 4))
    valid = jnp.asarray(valid.reshape(num_batches, sw_batch_size))

    weights = jnp.asarray(importance_map(roi_size, mode=mode, sigma_scale=sigma_scale))[..., None]
    probe = jax.ShapeDtypeStruct((sw_batch_size, *roi_size, in_channels), image.dtype)
    out_channels = jax.eval_shape(lambda x: apply_fn(x, *args), probe).shape[-1]
    acc = jnp.zeros((batch, *padded, out_channels), jnp.float32)
    norm = jnp.zeros((batch, *padded, 1), jnp.float32)

    def crop(volume, origin, channels):
        return jax.lax.dynamic_slice(volume, (*origin, 0), (1, *roi_size, channels))[0]

    def add(volume, origin, update):
        current = jax.lax.dynamic_slice(volume, (*origin, 0), (1, *roi_size, update.shape[-1]))
        return jax.lax.dynamic_update_slice(volume, current + update[None], (*origin, 0))

    def step(carry, xs):
        acc, norm = carry
        batch_origins, batch_valid = xs
        patches = jax.vmap(lambda o: crop(image, o, in_channels))(batch_origins)
        outputs = apply_fn(patches, *args).astype(jnp.float32)
        for j in range(sw_batch_size):
            w = weights * batch_valid[j]
            acc = add(acc, batch_origins[j], outputs[j] * w)
            norm = add(norm, batch_origins[j], w)
        return (acc, norm), None

    (acc, norm), _ = jax.lax.scan(step, (acc, norm), (origins, valid))
    out = acc / norm
    crops = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, spatial))
    return out[(slice(None), *crops, slice(None))]


def sliding_window_inference(
    apply_fn: Callable[..., Array],
    image: Array,
    *args,
    roi_size: Sequence[int],
    sw_batch_size: int,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    pad_value: float = 0.0,
) -> Array:
    r"""Fuses the outputs of ``apply_fn`` on overlapping windows of ``image``.

    .. math::
      y(v) = \frac{\sum_w m(v - o_w)\, f(x_w)(v - o_w)}{\sum_w m(v - o_w)}

    over the windows ``w`` (origin ``o_w``) that contain voxel ``v``, with ``m`` the importance map.

    Args:
      apply_fn: ``apply_fn(patches [N, *roi_size, C_in], *args) -> [N, *roi_size, K]``. It is a
        static argument of the compiled function: pass the same callable (e.g. a jitted model
        function) and put changing values such as parameters in ``args`` to avoid recompiling.
      image: ``[B, D, H, W, C_in]``.
      *args: extra arguments of ``apply_fn`` (pytrees of arrays, e.g. the model state).
      roi_size: the window size ``(d, h, w)``.
      sw_batch_size: windows per call of ``apply_fn``.
      overlap: fraction of overlap between neighbouring windows, in ``[0, 1)``.
      mode: ``"gaussian"`` or ``"constant"`` importance map.
      sigma_scale: Gaussian standard deviation as a fraction of ``roi_size``.
      pad_value: value used to pad volumes smaller than the window.

    Returns:
      float32 ``[B, D, H, W, K]``.

    Example:
      >>> import jax.numpy as jnp
      >>> image = jnp.arange(2 * 9 * 7 * 5, dtype=jnp.float32).reshape(1, 9, 7, 5, 2)
      >>> out = sliding_window_inference(lambda x: 2 * x, image, roi_size=(4, 4, 4), sw_batch_size=3)
      >>> out.shape, bool(jnp.allclose(out, 2 * image))
      ((1, 9, 7, 5, 2), True)
    """
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
    return _sliding_window(jnp.asarray(image), tuple(args), apply_fn=apply_fn, roi_size=roi_size,
                           sw_batch_size=int(sw_batch_size), overlap=float(overlap), mode=mode,
                           sigma_scale=float(sigma_scale), pad_value=float(pad_value))


class flip_tta:  # noqa: N801  (used like a function transform)
    """Left-right flip test-time augmentation, averaged on logits.

    ``flip_tta(apply_fn, axis)(x, *args) = ½ (f(x) + flip(f(flip(x))))``. In RAS-canonical
    volumes the first voxel axis is left-right: ``axis=1`` of ``[B, D, H, W, C]`` (default).
    Instances compare equal when they wrap the same function and axis, so jitted callers that
    take them as static arguments do not recompile.

    >>> import jax.numpy as jnp
    >>> x = jnp.arange(8.0).reshape(1, 8, 1, 1, 1)
    >>> bool(jnp.allclose(flip_tta(lambda v: v + v[:, ::-1])(x), x + x[:, ::-1]))
    True
    """

    def __init__(self, apply_fn: Callable[..., Array], axis: int = 1):
        self.apply_fn, self.axis = apply_fn, axis

    def __call__(self, x: Array, *args) -> Array:
        flipped = jnp.flip(self.apply_fn(jnp.flip(x, self.axis), *args), self.axis)
        return 0.5 * (self.apply_fn(x, *args) + flipped)

    def __eq__(self, other) -> bool:
        return isinstance(other, flip_tta) and (self.apply_fn, self.axis) == (other.apply_fn, other.axis)

    def __hash__(self) -> int:
        return hash((flip_tta, self.apply_fn, self.axis))


def ensemble_probabilities(logits: Sequence[Array]) -> Array:
    """Averages the softmax probabilities of ensemble members' logits ``[..., K]``.

    >>> import jax.numpy as jnp
    >>> p = ensemble_probabilities([jnp.zeros((1, 2)), jnp.array([[0.0, jnp.log(3.0)]])])
    >>> p.round(3).tolist()
    [[0.375, 0.625]]
    """
    if not logits:
        raise ValueError("ensemble_probabilities needs at least one member")
    return sum(jax.nn.softmax(jnp.asarray(z, jnp.float32), axis=-1) for z in logits) / len(logits)


def predict_volume(
    apply_fns: Callable[..., Array] | Sequence[Callable[..., Array]],
    image: Array,
    *args,
    roi_size: Sequence[int],
    sw_batch_size: int = 2,
    overlap: float = 0.5,
    mode: str = "gaussian",
    tta: bool = False,
    member_args: Sequence[tuple] | None = None,
) -> tuple[Array, Array]:
    """Probabilities and argmax labels of a volume: sliding windows, optional flip TTA (on
    logits), and an ensemble averaged on probabilities.

    Args:
      apply_fns: one model function or one per ensemble member.
      image: ``[B, D, H, W, C_in]``.
      *args: arguments of every ``apply_fn`` (ignored when ``member_args`` is given).
      roi_size, sw_batch_size, overlap, mode: as in :func:`sliding_window_inference`.
      tta: average each member's logits over the left-right flip.
      member_args: per-member ``args`` (e.g. each member's state).

    Returns:
      ``(probabilities [B, D, H, W, K], labels [B, D, H, W] int32)``.
    """
    fns = list(apply_fns) if isinstance(apply_fns, (list, tuple)) else [apply_fns]
    per_member = list(member_args) if member_args is not None else [args] * len(fns)
    if len(per_member) != len(fns):
        raise ValueError(f"{len(fns)} ensemble members but {len(per_member)} member_args")
    logits = []
    for fn, fn_args in zip(fns, per_member):
        fn = flip_tta(fn) if tta else fn
        logits.append(sliding_window_inference(fn, image, *fn_args, roi_size=roi_size, sw_batch_size=sw_batch_size,
                                               overlap=overlap, mode=mode))
    probs = ensemble_probabilities(logits)
    return probs, jnp.argmax(probs, axis=-1).astype(jnp.int32)
