"""The fused losses (closed-form gradients; on CPU, voxels visited in chunks) through the public API,
on volumes processed in many chunks (the chunk size is made small here): values against the
float64 references, gradients against plain autodiff of a textbook formulation and against float64
finite differences, the chunked and the dense forms against each other, a graph that does not grow
with the number of classes, vmap and a device mesh."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labelset_jax import losses
from labelset_jax.labelsets import LabelSpace
from labelset_jax.losses import _common
from labelset_jax.labelsets import FETAL_BRAIN
from tests import reference_losses as ref

SPACE = FETAL_BRAIN
SETS = SPACE.to_superset_map()
C = SPACE.num_classes
SHAPE = (2, 16, 16, 12)  # 110,592 logits: 28 chunks of 227 voxels, the last one overlapping
SMALL_CHUNKS = _common.Execution(chunk_elements=2**12, unroll_channels=16)


@pytest.fixture(autouse=True, scope="module")
def small_chunks():
    """The CPU execution with chunks of 4,096 logits, so that small volumes span many chunks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(_common.EXECUTION, "cpu", SMALL_CHUNKS)
        yield


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=SHAPE + (C,)).astype(np.float32)
    labels = rng.integers(0, SPACE.num_ids, size=SHAPE).astype(np.int32)
    targets = rng.dirichlet(np.full(C, 0.5), size=SHAPE).astype(np.float32)
    return logits, labels, targets


def flat(x):
    return np.asarray(x, np.float64).reshape(SHAPE[0], -1, *np.shape(x)[len(SHAPE):])


# Each case: the loss called on (logits, volume), and its float64 reference on flat arrays.
CASES = {
    "leaf_dice": (lambda z, v, **o: losses.leaf_dice(z, v[1], label_space=SPACE, **o),
                  lambda z, v, **o: ref.leaf_dice(z, flat(v[1]).astype(int), C, SETS, **o)),
    "marginal_dice": (lambda z, v, **o: losses.marginal_dice(z, v[1], label_space=SPACE, **o),
                      lambda z, v, **o: ref.marginal_dice(z, flat(v[1]).astype(int), C, SETS, **o)),
    "marginal_cross_entropy": (
        lambda z, v, **o: losses.marginal_cross_entropy(z, v[1], label_space=SPACE, **o),
        lambda z, v, **o: ref.marginal_cross_entropy(z, flat(v[1]).astype(int), C, SETS)),
    "soft_target_dice": (lambda z, v, **o: losses.soft_target_dice(z, v[1], label_space=SPACE, **o),
                         lambda z, v, **o: ref.soft_target_dice(z, flat(v[1]).astype(int), C, SETS, **o)),
    "soft_dice": (lambda z, v, **o: losses.soft_dice(z, np.minimum(v[1], C - 1), **o),
                  lambda z, v, **o: ref.soft_dice(z, np.minimum(flat(v[1]), C - 1).astype(int), C, **o)),
    "dice_semimetric": (lambda z, v, **o: losses.dice_semimetric(z, v[2], **o),
                        lambda z, v, **o: ref.dice_semimetric_loss(ref.softmax(z), flat(v[2]), **o)),
}
OPTIONS = {"marginal_cross_entropy": [{}]}


def options_of(name):
    return OPTIONS.get(name, [{}, {"batch_dice": True}])


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_match_float64(volume, name):
    loss, reference = CASES[name]
    for options in options_of(name):
        ours = loss(volume[0], volume, reduction="none", **options)
        np.testing.assert_allclose(ours, reference(flat(volume[0]), volume, **options), rtol=1e-5,
                                   err_msg=str(options))


@pytest.mark.parametrize("name", sorted(CASES))
def test_directional_derivatives_match_float64_finite_differences(volume, name):
    """⟨∇L, v⟩ against the float64 reference's central difference along random directions v (one
    dense, one on a few hundred random voxels), to 1 % of ‖∇L ⊙ v‖₂, the typical size of such a
    sum of random terms: a gradient wrong on one part of the volume (one chunk) changes it by about
    that much. (test_gradients_match_plain_autodiff_everywhere checks every entry.)"""
    loss, reference = CASES[name]
    rng = np.random.default_rng(1)
    z = flat(volume[0])
    sparse = np.zeros(volume[0].shape, np.float32)
    sparse.reshape(-1, C)[rng.choice(sparse.size // C, 300, replace=False)] = rng.normal(size=(300, C))
    for options in options_of(name):
        grad = jax.jit(jax.grad(lambda z: jnp.sum(loss(z, volume, reduction="none", **options)
                                                  * jnp.array([1.0, 3.0]))))(volume[0])
        for v in (rng.normal(size=volume[0].shape).astype(np.float32), sparse):
            f = lambda t: np.sum(reference(z + t * flat(v), volume, **options) * np.array([1.0, 3.0]))
            step = 1e-5  # small: the Dice semimetric has kinks where p = t
            want = (f(step) - f(-step)) / (2 * step)
            got = float(jnp.vdot(grad, v))
            scale = float(jnp.linalg.norm(grad * v))
            assert got == pytest.approx(want, rel=2e-4, abs=1e-2 * scale), (options, got, want, scale)


def textbook(name):
    """Plain-autodiff formulations (float32, the whole volume at once) of the fused losses."""
    membership = jnp.asarray(SPACE.membership, jnp.float32)
    sizes = jnp.asarray(SPACE.set_sizes, jnp.float32)

    def dice(p, t):
        axes = tuple(range(1, p.ndim - 1))
        num = 2 * jnp.sum(p * t, axis=axes)
        den = jnp.sum(p * p, axis=axes) + jnp.sum(t * t, axis=axes) + 1e-5
        return 1 - jnp.mean(num / den, axis=-1)

    def leaf(z, g):
        return dice(jax.nn.softmax(z), jax.nn.one_hot(g, C))  # set ids >= C: all-zero rows

    def soft(z, g):
        return dice(jax.nn.softmax(z), jax.nn.one_hot(jnp.minimum(g, C - 1), C))

    def soft_target(z, g):
        return dice(jax.nn.softmax(z), membership[g] / sizes[g][..., None])

    def semimetric(z, t):
        p, axes = jax.nn.softmax(z), tuple(range(1, z.ndim - 1))
        l1 = jnp.sum(p, axes) + jnp.sum(t, axes)
        return 1 - jnp.mean((l1 - jnp.sum(jnp.abs(p - t), axes)) / (l1 + 1e-5), axis=-1)

    def marginal(z, g):
        p, m, size = jax.nn.softmax(z), membership[g], sizes[g][..., None]
        p_hat = jnp.where(m > 0, jnp.sum(p * m, -1, keepdims=True) / size, p)
        return dice(p_hat, m / size)

    def marginal_ce(z, g):
        nll = jax.nn.logsumexp(z, -1) - jax.nn.logsumexp(z, -1, where=membership[g] > 0)
        return jnp.mean(nll.reshape(z.shape[0], -1), -1)

    return {"leaf_dice": leaf, "marginal_dice": marginal, "marginal_cross_entropy": marginal_ce,
            "soft_dice": soft, "soft_target_dice": soft_target, "dice_semimetric": semimetric}[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_plain_autodiff_everywhere(volume, name):
    weights = jnp.array([1.0, 3.0])
    second = volume[2] if name == "dice_semimetric" else volume[1]
    loss = CASES[name][0]
    ours = jax.jit(jax.value_and_grad(lambda z: jnp.sum(loss(z, volume, reduction="none") * weights)))(volume[0])
    plain = jax.jit(jax.value_and_grad(lambda z: jnp.sum(textbook(name)(z, second) * weights)))(volume[0])
    np.testing.assert_allclose(ours[0], plain[0], rtol=1e-5)
    scale = float(jnp.abs(plain[1]).max())
    np.testing.assert_allclose(ours[1], plain[1], rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["leaf_dice", "marginal_dice", "marginal_cross_entropy"])
def test_vmap_over_samples_equals_the_batch(volume, name):
    logits, labels, _ = volume

    def per_sample(z, g):
        return getattr(losses, name)(z[None], g[None], label_space=SPACE)

    mapped_value, mapped_grad = jax.jit(jax.vmap(jax.value_and_grad(per_sample)))(logits, labels)
    value, grad = jax.jit(jax.value_and_grad(lambda z: jnp.sum(
        getattr(losses, name)(z, labels, label_space=SPACE, reduction="none"))))(logits)
    np.testing.assert_allclose(jnp.sum(mapped_value), value, rtol=1e-5)
    np.testing.assert_allclose(mapped_grad, grad, rtol=1e-4, atol=1e-5 * float(jnp.abs(grad).max()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_chunked_and_dense_forms_give_the_same_values_and_gradients(volume, name, monkeypatch):
    """The CPU form (many chunks, unrolled channel sums) and the dense form of GPUs and TPUs (one
    pass, reductions over the channels)."""
    weights = jnp.array([1.0, 3.0])
    loss = CASES[name][0]
    results = []
    for execution in (SMALL_CHUNKS, _common.DENSE):
        monkeypatch.setitem(_common.EXECUTION, "cpu", execution)
        # a new function each time: jit traces it anew, under this execution
        results.append(jax.jit(jax.value_and_grad(
            lambda z: jnp.sum(loss(z, volume, reduction="none") * weights)))(volume[0]))
    (chunked, chunked_grad), (dense, dense_grad) = results
    np.testing.assert_allclose(chunked, dense, rtol=1e-5)
    np.testing.assert_allclose(chunked_grad, dense_grad, rtol=1e-4, atol=1e-6 * float(jnp.abs(dense_grad).max()))


@pytest.mark.parametrize("name", ["leaf_dice", "marginal_dice", "marginal_cross_entropy", "leaf_dice_ce"])
def test_the_graph_does_not_grow_with_the_number_of_classes(name):
    """Value and gradient with C = 117 (TotalSegmentator) lower to no more operations than with
    C = 9: nothing is unrolled over the classes beyond the CPU form's few channels."""
    sizes = {}
    for num_classes in (9, 117):
        space, _ = LabelSpace.leaves(num_classes).with_set(list(range(1, num_classes // 2)))
        z, g = jnp.zeros((1, 8, 8, 8, num_classes)), jnp.zeros((1, 8, 8, 8), jnp.int32)
        fn = getattr(losses, name)
        text = jax.jit(jax.value_and_grad(lambda z: fn(z, g, label_space=space))).lower(z).as_text()
        sizes[num_classes] = text.count("\n")
    assert sizes[117] <= sizes[9], sizes


@pytest.mark.xdist_group("multi_device")
@pytest.mark.parametrize("name", ["leaf_dice", "marginal_dice", "marginal_cross_entropy"])
def test_batch_sharded_under_a_device_mesh(multi_device, name):
    """Data-parallel training: value and gradient on a batch sharded over four (CPU) devices equal
    the single-device ones, and the gradient keeps the batch sharding (tests/multi_device_checks.py)."""
    result = multi_device["mesh"][name]
    assert result["sharded_like_the_batch"]
    assert result["value_rel_diff"] < 1e-5 and result["grad_max_diff"] < 1e-4, result
