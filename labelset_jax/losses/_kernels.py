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


def instruction_set() -> str | None:
    """The code path the kernels run on this CPU (``"x86_64_v4"``: AVX-512, ``"x86_64_v3"``: AVX2,
    ``"portable"``), or ``None`` when they are not built. ``LABELSET_JAX_KERNEL_ISA`` (read when the
    first kernel runs) selects a lower one."""
    lib = _library()
    return lib.LsKernelIsa().decode() if lib is not None else None


def available() -> bool:
    """Whether the CPU kernels are built, loaded and enabled."""
    return _state["enabled"] and _library() is not None


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


# Per kernel: the batch axis of each operand (None: a label-space table), the batch axis of the
# result, and the Shardy sharding rule. Every kernel is independent across samples, so under a
# device mesh it runs on each device's shard of the batch (custom_partitioning), and under vmap the
# mapped axis is folded into the batch axis (custom_vmap).
_LAYOUT = {
    "LsDiceSums": ((0, 0, None, None), 1, "b n c, b n, k c, k -> s b c"),
    "LsDiceGrad": ((0, 0, None, None, 0, 0), 0, "b n c, b n, k c, k, b c, b c -> b n c"),
    "LsMceLoss": ((0, 0, None, None), 0, "b n c, b n, k c, k -> b"),
    "LsMceGrad": ((0, 0, None, None, 0), 0, "b n c, b n, k c, k, b -> b n c"),
}


def _result_shape(target: str, z_shape) -> tuple[int, ...]:
    batch, n, c = z_shape
    return {"LsDiceSums": (3, batch, c), "LsMceLoss": (batch,)}.get(target, (batch, n, c))


@functools.cache
def _kernel(target: str, attrs: tuple[tuple[str, int], ...]):
    """The custom call ``target`` with static ``attrs``, batch-parallel under meshes and vmap."""
    from jax.experimental.custom_partitioning import custom_partitioning
    from jax.sharding import NamedSharding, PartitionSpec

    in_axes, out_axis, rule = _LAYOUT[target]

    def call(*operands):
        out = jax.ShapeDtypeStruct(_result_shape(target, operands[0].shape), jnp.float32)
        return jax.ffi.ffi_call(_TARGETS[target], out)(*operands, **{k: np.int32(v) for k, v in attrs})

    def sharded(mesh, rank, axis, batch_spec):
        spec = [None] * rank
        if axis is not None:
            spec[axis] = batch_spec
        return NamedSharding(mesh, PartitionSpec(*spec))

    def batch_spec(arg_shapes):  # the logits' sharding along the batch axis; the rest replicated
        spec = arg_shapes[0].sharding.spec
        return spec[0] if len(spec) else None

    def infer(mesh, arg_shapes, result_shape):
        return sharded(mesh, len(result_shape.shape), out_axis, batch_spec(arg_shapes))

    def partition(mesh, arg_shapes, result_shape):
        spec = batch_spec(arg_shapes)
        args = tuple(sharded(mesh, len(a.shape), axis, spec) for a, axis in zip(arg_shapes, in_axes))
        return mesh, call, sharded(mesh, len(result_shape.shape), out_axis, spec), args

    partitioned = custom_partitioning(call)
    partitioned.def_partition(partition=partition, infer_sharding_from_operands=infer,
                              sharding_rule=rule)
    batched = jax.custom_batching.custom_vmap(partitioned)

    @batched.def_vmap
    def _fold_mapped_axis(axis_size, in_batched, *operands):
        merged = []
        for x, is_batched, axis in zip(operands, in_batched, in_axes):
            if axis is None:
                if is_batched:
                    raise NotImplementedError("labelset_jax kernels: label-space tables cannot be vmapped")
                merged.append(x)
                continue
            if not is_batched:
                x = jnp.broadcast_to(x, (axis_size,) + x.shape)
            merged.append(x.reshape((axis_size * x.shape[1],) + x.shape[2:]))
        out = batched(*merged)
        shape = out.shape
        out = out.reshape(shape[:out_axis] + (axis_size, shape[out_axis] // axis_size) + shape[out_axis + 1:])
        return jnp.moveaxis(out, out_axis, 0), True

    return batched


def _call(target: str, *operands, **attrs):
    return _kernel(target, tuple(sorted(attrs.items())))(*operands)


def dice_sums(logits: Array, labels: Array, space: LabelSpace, *, marginal: bool, leaf: bool,
              squared: bool) -> tuple[Array, Array, Array]:
    """Per-sample ``(S^pt, S^pp, S^tt)``, each float32 ``[B, C]`` (see ``dice.py``)."""
    z, g = _flat(logits, labels)
    sums = _call("LsDiceSums", z, g, *_tables(space), marginal=marginal, leaf=leaf, squared=squared)
    return sums[0], sums[1], sums[2]


def dice_grad(logits: Array, labels: Array, space: LabelSpace, a: Array, b: Array, *,
              marginal: bool, leaf: bool, squared: bool) -> Array:
    """``∂L/∂logits`` from ``a = ∂L/∂S^pt`` and ``b = ∂L/∂S^pp`` (float32 ``[B, C]``)."""
    z, g = _flat(logits, labels)
    grad = _call("LsDiceGrad", z, g, *_tables(space), a.astype(jnp.float32), b.astype(jnp.float32),
                 marginal=marginal, leaf=leaf, squared=squared)
    return grad.reshape(logits.shape)


def marginal_ce_sum(logits: Array, labels: Array, space: LabelSpace) -> Array:
    """``Σ_i -log Σ_{c ∈ g_i} p_ic`` per sample, float32 ``[B]``."""
    z, g = _flat(logits, labels)
    return _call("LsMceLoss", z, g, *_tables(space))


def marginal_ce_grad(logits: Array, labels: Array, space: LabelSpace, scale: Array) -> Array:
    """``scale_b · ∂/∂logits Σ_i -log Σ_{c ∈ g_i} p_ic`` (``scale`` float32 ``[B]``)."""
    z, g = _flat(logits, labels)
    grad = _call("LsMceGrad", z, g, *_tables(space), scale.astype(jnp.float32))
    return grad.reshape(logits.shape)
