"""The fused CPU kernels (jax.ffi) against the pure-JAX path and float64 NumPy references."""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelset_jax import losses
from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses import _kernels
from labelset_jax.losses import dice as dice_module
from labelset_jax.losses import marginal as marginal_module
from tests import reference_losses as ref

SETS = {5: [3, 4], 6: [1, 2, 3, 4], 7: [0, 1, 2, 3, 4]}
SPACE = LabelSpace.from_superset_map(5, SETS, ignore_id=7)
# 2 samples x 4270 voxels: two work chunks of 4096 voxels per sample and a partial last block of 14.
SHAPE = (2, 4270)

needs_kernels = pytest.mark.skipif(not _kernels.available(), reason="CPU kernels not built")


def case(seed, shape=SHAPE, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=shape + (SPACE.num_classes,)).astype(np.float32)
    labels = rng.integers(0, SPACE.num_ids, size=shape).astype(np.int32)
    return jnp.asarray(logits), jnp.asarray(labels)


def value_and_grad(fn, logits, labels, *, kernels: bool):
    """``fn``'s value and gradient, traced afresh with the kernels on or off."""
    weights = jnp.arange(1.0, logits.shape[0] + 1.0)
    run = jax.jit(jax.value_and_grad(lambda z: jnp.sum(fn(z, labels) * weights)))
    if kernels:
        return run(logits)
    with _kernels.disabled():
        return run(logits)


def lowered_text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


def test_kernels_are_built_where_a_compiler_exists():
    if platform.system() != "Linux" or shutil.which("c++") is None:
        pytest.skip("the kernels are only guaranteed on Linux with a C++ compiler")
    assert _kernels.library_path() is not None, "setup.py did not build labelset_jax/losses/_cpu_kernels"
    assert _kernels.available()


DICE_MODES = [("softmax", "onehot"), ("softmax", "leaf"), ("marginal", "uniform"), ("softmax", "uniform")]


@needs_kernels
@pytest.mark.parametrize("mode", DICE_MODES)
@pytest.mark.parametrize("squared,generalized,batch_dice", list(itertools.product([True, False], repeat=3)))
def test_dice_kernel_equals_pure_jax(mode, squared, generalized, batch_dice):
    prediction, target = mode
    logits, labels = case(0)
    if target == "onehot":
        labels = jnp.minimum(labels, SPACE.num_classes - 1)
    spec = dice_module._DiceSpec(space=SPACE, prediction=prediction, target=target, squared=squared,
                                 generalized=generalized, batch_dice=batch_dice,
                                 include_background=not generalized,
                                 class_weights=None if generalized else (1.0, 2.0, 0.5, 1.0, 3.0))

    def core(z, g):
        return dice_module._dice_core(z, g, spec)

    assert "labelset_jax_dice_grad" in lowered_text(jax.grad(lambda z: jnp.sum(core(z, labels))), logits)
    v_kernel, g_kernel = value_and_grad(core, logits, labels, kernels=True)
    v_jax, g_jax = value_and_grad(core, logits, labels, kernels=False)
    np.testing.assert_allclose(v_kernel, v_jax, rtol=1e-5)
    np.testing.assert_allclose(g_kernel, g_jax, rtol=1e-3, atol=1e-5 * float(jnp.abs(g_jax).max()))


@needs_kernels
@pytest.mark.parametrize("name", ["leaf_dice", "marginal_dice", "soft_target_dice"])
def test_dice_kernel_matches_float64_reference(name):
    logits, labels = case(1)
    got = getattr(losses, name)(logits, labels, label_space=SPACE, reduction="none")
    want = getattr(ref, name)(np.asarray(logits, np.float64), np.asarray(labels), SPACE.num_classes, SETS)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_marginal_ce_kernel_equals_pure_jax_and_float64(scale):
    """Also with logits of ±1e4, where a set's probability underflows float32 (the exact path)."""
    logits, labels = case(2, scale=scale)

    def mce(z, g):
        return losses.marginal_cross_entropy(z, g, label_space=SPACE, reduction="none")

    assert "labelset_jax_mce_grad" in lowered_text(jax.grad(lambda z: jnp.sum(mce(z, labels))), logits)
    v_kernel, g_kernel = value_and_grad(mce, logits, labels, kernels=True)
    v_jax, g_jax = value_and_grad(mce, logits, labels, kernels=False)
    assert np.isfinite(g_kernel).all()
    np.testing.assert_allclose(v_kernel, v_jax, rtol=1e-5)
    np.testing.assert_allclose(g_kernel, g_jax, rtol=1e-3, atol=1e-5 * float(jnp.abs(g_jax).max()))
    z, m = np.asarray(logits, np.float64), ref.membership_rows(np.asarray(labels), SPACE.num_classes, SETS)
    top, top_set = z.max(-1), np.where(m > 0, z, -np.inf).max(-1)
    lse = top + np.log(np.exp(z - top[..., None]).sum(-1))
    lse_set = top_set + np.log(np.exp(np.where(m > 0, z - top_set[..., None], -np.inf)).sum(-1))
    np.testing.assert_allclose(mce(logits, labels), (lse - lse_set).mean(-1), rtol=1e-5)
    if scale == 3.0:
        want = ref.marginal_cross_entropy(z, np.asarray(labels), SPACE.num_classes, SETS)
        np.testing.assert_allclose(mce(logits, labels), want, rtol=1e-5)


@needs_kernels
def test_ignore_label_gives_zero_marginal_ce_gradient():
    logits, labels = case(3, shape=(1, 37))
    labels = labels.at[0, :20].set(SPACE.ignore_id)
    grad = jax.grad(lambda z: losses.marginal_cross_entropy(z, labels, label_space=SPACE))(logits)
    np.testing.assert_allclose(grad[0, :20], 0.0, atol=1e-12)
    assert np.abs(grad[0, 20:]).max() > 0


@needs_kernels
def test_kernels_under_vmap_and_deterministic():
    logits, labels = case(4, shape=(3, 50))
    assert "labelset_jax_dice_grad" in lowered_text(
        jax.vmap(jax.grad(lambda z, g: losses.leaf_dice(z[None], g[None], label_space=SPACE))), logits, labels)

    def per_sample(z, g):
        return losses.leaf_dice(z[None], g[None], label_space=SPACE)

    mapped = jax.vmap(jax.value_and_grad(per_sample))(logits, labels)
    direct = jax.value_and_grad(lambda z: jnp.sum(losses.leaf_dice(z, labels, label_space=SPACE,
                                                                   reduction="none")))(logits)
    np.testing.assert_allclose(mapped[0].sum(), direct[0], rtol=1e-5)
    np.testing.assert_allclose(mapped[1], direct[1], rtol=1e-4, atol=1e-5 * float(jnp.abs(direct[1]).max()))
    again = jax.value_and_grad(lambda z: jnp.sum(losses.leaf_dice(z, labels, label_space=SPACE,
                                                                  reduction="none")))(logits)
    assert float(again[0]) == float(direct[0]) and np.array_equal(again[1], direct[1])


@needs_kernels
@pytest.mark.parametrize("num_classes", [2, 16, 17, 32])
def test_kernels_for_every_class_count_code_path(num_classes):
    """C <= 16 runs code specialised for C (AVX-512), larger C the generic loops, up to 32."""
    space = LabelSpace.from_superset_map(num_classes, {num_classes: list(range(num_classes))})
    rng = np.random.default_rng(num_classes)
    logits = jnp.asarray(rng.normal(scale=3.0, size=(2, 300, num_classes)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, space.num_ids, size=(2, 300)), jnp.int32)
    for name in ["leaf_dice", "marginal_dice", "marginal_cross_entropy"]:
        def loss(z, g):
            return getattr(losses, name)(z, g, label_space=space, reduction="none")

        v_kernel, g_kernel = value_and_grad(loss, logits, labels, kernels=True)
        v_jax, g_jax = value_and_grad(loss, logits, labels, kernels=False)
        np.testing.assert_allclose(v_kernel, v_jax, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(g_kernel, g_jax, rtol=1e-3, atol=1e-5 * float(jnp.abs(g_jax).max()),
                                   err_msg=name)


@needs_kernels
def test_pure_jax_path_where_the_kernels_do_not_apply():
    logits, labels = case(5, shape=(1, 8))

    def dice(z):
        return losses.leaf_dice(z, labels, label_space=SPACE)

    assert "labelset_jax_dice" in lowered_text(jax.grad(dice), logits)
    assert "labelset_jax_dice" not in lowered_text(jax.grad(dice), logits.astype(jnp.bfloat16))
    with _kernels.disabled():
        assert "labelset_jax_dice" not in lowered_text(jax.grad(dice), logits)
    wide = LabelSpace.leaves(_kernels.MAX_CLASSES + 1)
    z = jnp.zeros((1, 8, wide.num_classes))
    assert "labelset_jax" not in lowered_text(lambda z: losses.soft_dice(z, jnp.zeros((1, 8), jnp.int32)), z)


@needs_kernels
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["leaf_dice", "marginal_dice", "marginal_cross_entropy"])
def test_non_finite_logits_propagate_like_pure_jax(name, bad):
    """A diverged network must show up as a non-finite loss (training stops on it)."""
    logits, labels = case(7, shape=(2, 40))
    logits = logits.at[0, 3, 1].set(bad)

    def loss(z, g):
        return getattr(losses, name)(z, g, label_space=SPACE, reduction="none")

    v_kernel, g_kernel = value_and_grad(loss, logits, labels, kernels=True)
    v_jax, g_jax = value_and_grad(loss, logits, labels, kernels=False)
    assert np.array_equal(np.isfinite(v_kernel), np.isfinite(v_jax)), (v_kernel, v_jax)
    if not np.isfinite(v_jax):
        assert not np.isfinite(g_kernel).all()


ISA_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from labelset_jax import losses
    from labelset_jax.losses import _kernels
    from tests.test_kernels import SPACE, case
    assert _kernels.instruction_set() == sys.argv[1], _kernels.instruction_set()
    logits, labels = case(8, shape=(2, 4133))
    for name in ["leaf_dice", "marginal_dice", "soft_target_dice", "marginal_cross_entropy"]:
        fn = lambda z: jnp.sum(getattr(losses, name)(z, labels, label_space=SPACE, reduction="none")
                               * jnp.array([1.0, 2.0]))
        v1, g1 = jax.jit(jax.value_and_grad(fn))(logits)
        with _kernels.disabled():
            v2, g2 = jax.jit(jax.value_and_grad(fn))(logits)
        np.testing.assert_allclose(v1, v2, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(g1, g2, rtol=1e-3, atol=1e-5 * float(jnp.abs(g2).max()), err_msg=name)
    print("ok")
    """
)


@needs_kernels
@pytest.mark.parametrize("isa", ["portable", "x86_64_v3", "x86_64_v4"])
def test_every_instruction_set_variant_equals_pure_jax(isa):
    """Each compiled code path (chosen at run time by CPU) in a subprocess that forces it."""
    order = ["portable", "x86_64_v3", "x86_64_v4"]
    best = _kernels.instruction_set()
    if best not in order or order.index(isa) > order.index(best):
        pytest.skip(f"this CPU runs {best}")
    env = dict(os.environ, LABELSET_JAX_KERNEL_ISA=isa, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", ISA_SCRIPT, isa], env=env, cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]


MESH_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from labelset_jax import losses
    from labelset_jax.losses import _kernels
    from tests.test_kernels import SPACE, case
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    logits, labels = case(9, shape=(4, 600))
    z = jax.device_put(logits, NamedSharding(mesh, P("data")))
    g = jax.device_put(labels, NamedSharding(mesh, P("data")))
    for name, options in [("leaf_dice", {}), ("marginal_dice", {"batch_dice": True}),
                          ("marginal_cross_entropy", {})]:
        fn = lambda z, g: getattr(losses, name)(z, g, label_space=SPACE, **options)
        with jax.set_mesh(mesh):
            step = jax.jit(jax.value_and_grad(fn))
            hlo = step.lower(z, g).compile().as_text()
            value, grad = step(z, g)
        assert "labelset_jax" in hlo and "all-gather" not in hlo, name  # each device its shard
        assert grad.sharding.spec == P("data"), (name, grad.sharding)
        with _kernels.disabled():
            want_value, want_grad = jax.jit(jax.value_and_grad(fn))(logits, labels)
        np.testing.assert_allclose(value, want_value, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-3, atol=1e-5 * float(jnp.abs(want_grad).max()))
    print("ok")
    """
)


@needs_kernels
def test_kernels_run_per_device_shard_under_a_mesh():
    """Data-parallel training: the kernels see each device's slice of the batch (no all-gather)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]


def test_marginal_ce_custom_vjp_pure_jax_matches_autodiff():
    """The pure-JAX branch of the marginal CE core (used off CPU) against plain autodiff."""
    logits, labels = case(6, shape=(2, 33))
    with _kernels.disabled():
        got = jax.grad(lambda z: jnp.sum(marginal_module._marginal_ce_core(z, labels, SPACE)))(logits)
    want = jax.grad(lambda z: jnp.sum(marginal_module._marginal_ce_jax(z, labels, SPACE)))(logits)
    np.testing.assert_allclose(got, want, rtol=1e-6)
