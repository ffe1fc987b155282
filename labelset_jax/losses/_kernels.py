"""Optional fused XLA:CPU kernels for the Dice core and the marginal cross-entropy.

``_cpu_kernels.cc`` (compiled at install time by ``setup.py``; optional) evaluates the per-class
Dice sums, the Dice gradient, the marginal cross-entropy and its gradient in one pass over the
logits each, from the membership matrix of the :class:`~labelset_jax.labelsets.LabelSpace`. It is
called through :func:`jax.ffi.ffi_call` and used on CPU only: :func:`on_cpu` lowers the kernel on
CPU and the pure-JAX formulation on every other platform (``jax.lax.platform_dependent``), and
falls back to the pure-JAX formulation everywhere when the library was not built, when the logits
are not float32, or when ``C > 32``. Both paths compute the same values (tested against each other
and against float64 NumPy references).

Set the environment variable ``LABELSET_JAX_KERNELS=0`` (before the first loss call) or call
:func:`set_enabled` to use the pure-JAX path on CPU too. Only jax, numpy and the standard library
are imported here.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.machinery
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from labelset_jax.labelsets import LabelSpace

Array = jax.Array

MAX_CLASSES = 32  # kMaxClasses of the C++ source
_TARGETS = {  # C symbol -> XLA custom-call target name
    "LsDiceSums": "labelset_jax_dice_sums",
    "LsDiceGrad": "labelset_jax_dice_grad",
    "LsMceLoss": "labelset_jax_mce_loss",
    "LsMceGrad": "labelset_jax_mce_grad",
}
_state = {"enabled": os.environ.get("LABELSET_JAX_KERNELS", "1") != "0"}


def library_path() -> pathlib.Path | None:
    """The compiled kernel library next to this module, or ``None`` when it was not built."""
    here = pathlib.Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_cpu_kernels{suffix}"
        if candidate.exists():
            return candidate
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    """Loads the library and registers its handlers with XLA (once per process)."""
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
        for symbol, target in _TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        lib.LsKernelIsa.restype = ctypes.c_char_p
    except (OSError, AttributeError) as e:  # a stale or foreign build: keep the pure-JAX path
        import warnings

        warnings.warn(f"labelset_jax: CPU kernels at {path} not loaded ({e}); using pure JAX")
        return None
    return lib


def _load() -> bool:
    return _library() is not None


def instruction_set() -> str | None:
    """The code path the kernels run on this CPU (``"x86_64_v4"``: AVX-512, ``"x86_64_v3"``: AVX2,
    ``"portable"``), or ``None`` when they are not built. ``LABELSET_JAX_KERNEL_ISA`` (read when the
    first kernel runs) selects a lower one."""
    lib = _library()
    return lib.LsKernelIsa().decode() if lib is not None else None


def available() -> bool:
    """Whether the CPU kernels are built, loaded and enabled."""
    return _state["enabled"] and _load()


def set_enabled(enabled: bool) -> None:
    """Turns the CPU kernels on or off for losses traced from now on (jit caches keep old traces)."""
    _state["enabled"] = bool(enabled)


@contextlib.contextmanager
def disabled():
    """Context manager: the pure-JAX path on CPU too, for losses traced inside the block."""
    previous = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = previous


def usable(logits: Array) -> bool:
    """Static check: kernels available and the logits are float32 with ``1 <= C <= 32``."""
    return available() and logits.dtype == jnp.float32 and 1 <= logits.shape[-1] <= MAX_CLASSES


def on_cpu(kernel_fn, jax_fn, *args):
    """``kernel_fn(*args)`` when lowered for CPU, ``jax_fn(*args)`` elsewhere or when unusable.

    ``args[0]`` must be the logits.
    """
    if not usable(args[0]):
        return jax_fn(*args)
    return jax.lax.platform_dependent(*args, cpu=kernel_fn, default=jax_fn)


def _tables(space: LabelSpace) -> tuple[Array, Array]:
    return (jnp.asarray(space.membership, jnp.float32),
            jnp.asarray(np.asarray(space.set_sizes), jnp.float32))


def _flat(logits: Array, labels: Array) -> tuple[Array, Array]:
    batch, c = logits.shape[0], logits.shape[-1]
    return logits.reshape(batch, -1, c), labels.reshape(batch, -1).astype(jnp.int32)


def _call(target: str, out_shape, *operands, **attrs):
    attrs = {k: np.int32(v) for k, v in attrs.items()}
    return jax.ffi.ffi_call(_TARGETS[target], out_shape, vmap_method="sequential")(*operands, **attrs)


def dice_sums(logits: Array, labels: Array, space: LabelSpace, *, marginal: bool, leaf: bool,
              squared: bool) -> tuple[Array, Array, Array]:
    """Per-sample ``(S^pt, S^pp, S^tt)``, each float32 ``[B, C]`` (see ``dice.py``)."""
    z, g = _flat(logits, labels)
    out = jax.ShapeDtypeStruct((3, z.shape[0], z.shape[-1]), jnp.float32)
    sums = _call("LsDiceSums", out, z, g, *_tables(space), marginal=marginal, leaf=leaf,
                 squared=squared)
    return sums[0], sums[1], sums[2]


def dice_grad(logits: Array, labels: Array, space: LabelSpace, a: Array, b: Array, *,
              marginal: bool, leaf: bool, squared: bool) -> Array:
    """``∂L/∂logits`` from ``a = ∂L/∂S^pt`` and ``b = ∂L/∂S^pp`` (float32 ``[B, C]``)."""
    z, g = _flat(logits, labels)
    grad = _call("LsDiceGrad", jax.ShapeDtypeStruct(z.shape, jnp.float32), z, g, *_tables(space),
                 a.astype(jnp.float32), b.astype(jnp.float32), marginal=marginal, leaf=leaf,
                 squared=squared)
    return grad.reshape(logits.shape)


def marginal_ce_sum(logits: Array, labels: Array, space: LabelSpace) -> Array:
    """``Σ_i -log Σ_{c ∈ g_i} p_ic`` per sample, float32 ``[B]``."""
    z, g = _flat(logits, labels)
    return _call("LsMceLoss", jax.ShapeDtypeStruct((z.shape[0],), jnp.float32), z, g, *_tables(space))


def marginal_ce_grad(logits: Array, labels: Array, space: LabelSpace, scale: Array) -> Array:
    """``scale_b · ∂/∂logits Σ_i -log Σ_{c ∈ g_i} p_ic`` (``scale`` float32 ``[B]``)."""
    z, g = _flat(logits, labels)
    grad = _call("LsMceGrad", jax.ShapeDtypeStruct(z.shape, jnp.float32), z, g, *_tables(space),
                 scale.astype(jnp.float32))
    return grad.reshape(logits.shape)
