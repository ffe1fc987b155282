"""Losses: SPEC §2.5 reference values, float64 NumPy references, axioms, autodiff, edge cases."""

from __future__ import annotations

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from labelset_jax import losses
from labelset_jax.labelsets import FETAL_BRAIN, LabelSpace
from labelset_jax.losses import dice as dice_module
from tests import reference_losses as ref

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
SPACE = LabelSpace.from_superset_map(5, {5: [3, 4], 6: [1, 2, 3, 4], 7: [0, 1, 2, 3, 4]}, ignore_id=7)
SETS = SPACE.to_superset_map()


def one_hot_logits(predicted, num_classes, scale=1000.0):
    return scale * jax.nn.one_hot(jnp.asarray(predicted), num_classes)


def random_case(seed, shape=(2, 4, 5, 3), space=SPACE, with_sets=True):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=shape + (space.num_classes,)).astype(np.float32)
    high = space.num_ids if with_sets else space.num_classes
    labels = rng.integers(0, high, size=shape).astype(np.int32)
    return logits, labels


def flat(logits, labels):
    b = logits.shape[0]
    return np.asarray(logits, np.float64).reshape(b, -1, logits.shape[-1]), np.asarray(labels).reshape(b, -1)


# ----------------------------------------------------------------------------- SPEC §2.5
class TestReferenceValues:
    space4 = LabelSpace.from_superset_map(4, {4: [2, 3]})
    labels4 = jnp.array([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 4, 4, 0], [0, 0, 0, 0]]])

    @pytest.mark.parametrize("set_prediction, expected", [(2, 0.5), (1, 0.58333), (None, 0.785714)])
    def test_leaf_dice(self, set_prediction, expected):
        if set_prediction is None:
            predicted = jnp.zeros_like(self.labels4)
        else:
            predicted = jnp.where(self.labels4 == 4, set_prediction, self.labels4)
        value = losses.leaf_dice(one_hot_logits(predicted, 4), self.labels4, label_space=self.space4)
        assert float(value) == pytest.approx(expected, abs=1e-5)

    space3 = LabelSpace.from_superset_map(3, {3: [1, 2], 4: [0, 1, 2]})
    labels3 = jnp.array([[[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0], [0, 0, 0, 0]]])

    def test_marginal_dice_perfect(self):
        predicted = jnp.where(self.labels3 >= 3, 2, self.labels3)
        value = losses.marginal_dice(one_hot_logits(predicted, 3), self.labels3, label_space=self.space3)
        assert float(value) == pytest.approx(0.0, abs=1e-5)

    def test_marginal_dice_clipped(self):
        predicted = jnp.minimum(jnp.where(self.labels3 >= 3, 2, self.labels3), 1)
        value = losses.marginal_dice(one_hot_logits(predicted, 3), self.labels3, label_space=self.space3)
        assert float(value) == pytest.approx(0.2831006, abs=1e-5)

    def test_marginal_dice_background(self):
        predicted = jnp.zeros_like(self.labels3)
        value = losses.marginal_dice(one_hot_logits(predicted, 3), self.labels3, label_space=self.space3)
        assert float(value) == pytest.approx(0.6027724, abs=1e-5)


# ----------------------------------------------------------------------------- NumPy references
DICE_OPTIONS = [
    {},
    {"squared": False},
    {"smooth_nr": 1e-3, "eps": 1e-3},
    {"include_background": False},
    {"batch_dice": True},
    {"class_weights": [0.5, 1.0, 2.0, 1.0, 0.0]},
]


@pytest.mark.parametrize("options", DICE_OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("seed", [0, 1])
class TestAgainstNumpy:
    def check(self, ours, theirs):
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-5)

    def test_soft_dice(self, seed, options):
        logits, labels = random_case(seed, with_sets=False)
        ours = losses.soft_dice(logits, labels, reduction="none", **options)
        self.check(ours, ref.soft_dice(*flat(logits, labels), 5, **options))

    def test_leaf_dice(self, seed, options):
        logits, labels = random_case(seed)
        ours = losses.leaf_dice(logits, labels, label_space=SPACE, reduction="none", **options)
        self.check(ours, ref.leaf_dice(*flat(logits, labels), 5, SETS, **options))

    def test_marginal_dice(self, seed, options):
        logits, labels = random_case(seed)
        ours = losses.marginal_dice(logits, labels, label_space=SPACE, reduction="none", **options)
        self.check(ours, ref.marginal_dice(*flat(logits, labels), 5, SETS, **options))

    def test_soft_target_dice(self, seed, options):
        logits, labels = random_case(seed)
        ours = losses.soft_target_dice(logits, labels, label_space=SPACE, reduction="none", **options)
        self.check(ours, ref.soft_target_dice(*flat(logits, labels), 5, SETS, **options))


@pytest.mark.parametrize("seed", [0, 1, 2])
class TestOtherLossesAgainstNumpy:
    def test_cross_entropy(self, seed):
        logits, labels = random_case(seed, with_sets=False)
        ours = losses.cross_entropy(logits, labels, reduction="none")
        np.testing.assert_allclose(ours, ref.cross_entropy(*flat(logits, labels), 5), rtol=1e-5)

    @pytest.mark.parametrize("gamma", [0.0, 2.0])
    def test_focal(self, seed, gamma):
        logits, labels = random_case(seed, with_sets=False)
        ours = losses.focal(logits, labels, gamma=gamma, reduction="none")
        np.testing.assert_allclose(ours, ref.focal(*flat(logits, labels), 5, gamma), rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("options", [{}, {"squared": True}, {"include_background": False}, {"batch_dice": True}])
    def test_generalized_dice(self, seed, options):
        logits, labels = random_case(seed, with_sets=False)
        ours = losses.generalized_dice(logits, labels, reduction="none", **options)
        expected = ref.generalized_dice_loss(ref.softmax(flat(logits, labels)[0]),
                                             np.eye(5)[flat(logits, labels)[1]], **options)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)

    def test_dice_ce(self, seed):
        logits, labels = random_case(seed, with_sets=False)
        ours = losses.dice_ce(logits, labels, dice_weight=0.7, ce_weight=0.3, reduction="none")
        f = flat(logits, labels)
        np.testing.assert_allclose(ours, 0.7 * ref.soft_dice(*f, 5) + 0.3 * ref.cross_entropy(*f, 5), rtol=1e-5)

    def test_marginal_cross_entropy(self, seed):
        logits, labels = random_case(seed)
        ours = losses.marginal_cross_entropy(logits, labels, label_space=SPACE, reduction="none")
        np.testing.assert_allclose(ours, ref.marginal_cross_entropy(*flat(logits, labels), 5, SETS), rtol=1e-5)

    @pytest.mark.parametrize("gamma", [0.0, 2.0])
    def test_marginal_focal(self, seed, gamma):
        logits, labels = random_case(seed)
        ours = losses.marginal_focal(logits, labels, label_space=SPACE, gamma=gamma, reduction="none")
        expected = ref.marginal_focal(*flat(logits, labels), 5, SETS, gamma)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)

    def test_leaf_dice_ce(self, seed):
        logits, labels = random_case(seed)
        ours = losses.leaf_dice_ce(logits, labels, label_space=SPACE, reduction="none")
        f = flat(logits, labels)
        expected = ref.leaf_dice(*f, 5, SETS) + ref.marginal_cross_entropy(*f, 5, SETS)
        np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_cross_entropy_matches_optax():
    logits, labels = random_case(3, with_sets=False)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


# ----------------------------------------------------------------------------- marginalization
def marginalize_generic(loss):
    """marginalize() through the generic path (log Φ_g(p), Φ(g)) instead of the fused one."""
    return losses.marginalize(loss, fused=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_marginal_dice_equals_generic_marginalize(seed):
    logits, labels = random_case(seed)
    fused = functools.partial(losses.marginal_dice, labels=labels, label_space=SPACE)
    generic = functools.partial(marginalize_generic(losses.soft_dice), labels=labels, label_space=SPACE)
    np.testing.assert_allclose(fused(logits), generic(logits), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(fused)(logits), jax.grad(generic)(logits), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_marginalized_cross_entropy_is_marginal_ce_plus_log_set_size(seed):
    logits, labels = random_case(seed)
    generic = marginalize_generic(losses.cross_entropy)(logits, labels, label_space=SPACE, reduction="none")
    fused = losses.marginalize(losses.cross_entropy)(logits, labels, label_space=SPACE, reduction="none")
    marginal = losses.marginal_cross_entropy(logits, labels, label_space=SPACE, reduction="none")
    log_size = np.log(SPACE.set_sizes[labels]).reshape(2, -1).mean(-1)
    np.testing.assert_allclose(generic, marginal + log_size, rtol=1e-5)
    np.testing.assert_allclose(fused, generic, rtol=1e-5)


def test_custom_vjp_matches_plain_autodiff():
    logits, labels = random_case(4)
    for prediction, target in [("softmax", "leaf"), ("marginal", "uniform"), ("softmax", "uniform")]:
        for batch_dice in (False, True):
            spec = dice_module._DiceSpec(space=SPACE, prediction=prediction, target=target,
                                         batch_dice=batch_dice, class_weights=(1, 2, 3, 4, 5))

            def plain(z, spec=spec):
                sums = dice_module._class_sums(*dice_module._voxel_maps(z, labels, spec), spec)
                return jnp.sum(dice_module._loss_from_sums(*sums, spec, 2) * jnp.array([1.0, 3.0]))

            def custom(z, spec=spec):
                return jnp.sum(dice_module._dice_core(z, labels, spec) * jnp.array([1.0, 3.0]))

            np.testing.assert_allclose(jax.grad(custom)(logits), jax.grad(plain)(logits), rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- the axiom (hypothesis)
LABEL_SET_LOSSES = {
    "marginal_cross_entropy": losses.marginal_cross_entropy,
    "marginal_dice": losses.marginal_dice,
    "marginal_focal": losses.marginal_focal,
    "marginal_generalized_dice": losses.marginalize(losses.generalized_dice),
}


@st.composite
def cases(draw, space=SPACE, max_side=4):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    labels = draw(hnp.arrays(np.int32, shape, elements=st.sampled_from([int(i) for i in np.flatnonzero(space.valid_ids)])))
    logits = draw(hnp.arrays(np.float32, shape + (space.num_classes,),
                             elements=st.floats(-8, 8, width=32, allow_nan=False)))
    seed = draw(st.integers(0, 2**31 - 1))
    return logits, labels, seed


def redistribute_inside_sets(logits, labels, space, seed):
    """Logits of another prediction that equals softmax(logits) outside each voxel's set and
    keeps the set's total mass, spread differently inside it."""
    rng = np.random.default_rng(seed)
    p = ref.softmax(logits)
    m = space.membership[labels]
    mass = (p * m).sum(-1, keepdims=True)
    spread = rng.dirichlet(np.ones(space.num_classes), size=labels.shape) * m
    spread = spread / spread.sum(-1, keepdims=True)
    q = np.where(m, mass * spread, p)
    return np.log(np.maximum(q, 1e-30)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(LABEL_SET_LOSSES))
@SETTINGS
@given(case=cases())
def test_axiom_marginal_losses(name, case):
    logits, labels, seed = case
    loss = LABEL_SET_LOSSES[name]
    other = redistribute_inside_sets(logits, labels, SPACE, seed)
    a = loss(logits, labels, label_space=SPACE, reduction="none")
    b = loss(other, labels, label_space=SPACE, reduction="none")
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@SETTINGS
@given(case=cases(), absent=st.sets(st.integers(1, 4), min_size=2, max_size=4))
def test_axiom_leaf_dice_with_missing_labels(case, absent):
    """Equal leaf-Dice for predictions differing inside sets that hold only leaves absent from
    the image."""
    logits, labels, seed = case
    absent = sorted(absent)
    space, set_id = LabelSpace.leaves(5).with_set(absent)
    present = [c for c in range(5) if c not in absent]
    labels = np.where(np.isin(labels, present), labels, set_id).astype(np.int32)
    other = redistribute_inside_sets(logits, labels, space, seed)
    a = losses.leaf_dice(logits, labels, label_space=space, reduction="none")
    b = losses.leaf_dice(other, labels, label_space=space, reduction="none")
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


GENERALISES = [
    ("marginal_dice", losses.marginal_dice, losses.soft_dice),
    ("leaf_dice", losses.leaf_dice, losses.soft_dice),
    ("marginal_cross_entropy", losses.marginal_cross_entropy, losses.cross_entropy),
    ("marginal_focal", losses.marginal_focal, losses.focal),
    ("leaf_dice_ce", losses.leaf_dice_ce, losses.dice_ce),
    ("marginal_generalized_dice", losses.marginalize(losses.generalized_dice), losses.generalized_dice),
]


@pytest.mark.parametrize("name, label_set_loss, classical", GENERALISES, ids=[g[0] for g in GENERALISES])
@SETTINGS
@given(case=cases(space=LabelSpace.leaves(5)))
def test_generalises_classical_loss_on_full_segmentations(name, label_set_loss, classical, case):
    logits, labels, _ = case
    a = label_set_loss(logits, labels, label_space=SPACE, reduction="none")
    b = classical(logits, labels, reduction="none")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_soft_target_dice_is_not_a_label_set_loss():
    logits, labels = random_case(5)
    other = redistribute_inside_sets(logits, labels, SPACE, 0)
    a = losses.soft_target_dice(logits, labels, label_space=SPACE)
    b = losses.soft_target_dice(other, labels, label_space=SPACE)
    assert abs(float(a) - float(b)) > 1e-3


# ----------------------------------------------------------------------------- autodiff and edge cases
ALL_LABEL_SET = {
    "leaf_dice": losses.leaf_dice,
    "marginal_dice": losses.marginal_dice,
    "marginal_cross_entropy": losses.marginal_cross_entropy,
    "marginal_focal": losses.marginal_focal,
    "leaf_dice_ce": losses.leaf_dice_ce,
    "soft_target_dice": losses.soft_target_dice,
}
ALL_CLASSICAL = {
    "cross_entropy": losses.cross_entropy,
    "focal": losses.focal,
    "soft_dice": losses.soft_dice,
    "generalized_dice": losses.generalized_dice,
    "dice_ce": losses.dice_ce,
}


def call(name, logits, labels, **kw):
    if name in ALL_LABEL_SET:
        return ALL_LABEL_SET[name](logits, labels, label_space=SPACE, **kw)
    return ALL_CLASSICAL[name](logits, labels, **kw)


@pytest.mark.parametrize("name", sorted(ALL_LABEL_SET) + sorted(ALL_CLASSICAL))
def test_jit_vmap_grad(name):
    logits, labels = random_case(6, with_sets=name in ALL_LABEL_SET)
    eager = call(name, logits, labels, reduction="none")
    jitted = jax.jit(lambda z, g: call(name, z, g, reduction="none"))(logits, labels)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
    # vmap over the batch: each sample as a batch of one.
    vmapped = jax.vmap(lambda z, g: call(name, z[None], g[None]))(logits, labels)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-5, atol=1e-6)
    grads = jax.jit(jax.grad(lambda z: call(name, z, labels)))(logits)
    assert grads.shape == logits.shape and np.all(np.isfinite(grads))
    # the gradient is the derivative: compare with a central difference along a random direction
    direction = np.random.default_rng(0).normal(size=logits.shape).astype(np.float32)
    f = lambda t: float(call(name, jnp.asarray(logits, jnp.float32) + t * direction, labels))
    fd = (f(1e-2) - f(-1e-2)) / 2e-2
    assert float(jnp.vdot(grads, direction)) == pytest.approx(fd, rel=2e-2, abs=2e-4)


@pytest.mark.parametrize("name", sorted(ALL_LABEL_SET) + sorted(ALL_CLASSICAL))
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_finite_for_extreme_logits(name, scale):
    logits, labels = random_case(7, with_sets=name in ALL_LABEL_SET)
    logits = np.sign(logits) * scale
    value, grads = jax.value_and_grad(lambda z: call(name, z, labels))(jnp.asarray(logits))
    assert np.isfinite(value) and np.all(np.isfinite(grads))


@pytest.mark.parametrize("name", sorted(ALL_LABEL_SET))
def test_image_of_one_set_and_empty_classes(name):
    logits, _ = random_case(8)
    labels = np.full(logits.shape[:-1], 6, np.int32)  # every voxel in {1, 2, 3, 4}; leaf 0 absent
    value, grads = jax.value_and_grad(lambda z: call(name, z, labels))(jnp.asarray(logits))
    assert np.isfinite(value) and np.all(np.isfinite(grads))
    ignored = np.full(logits.shape[:-1], 7, np.int32)  # the ignore label everywhere
    value = call(name, logits, ignored)
    assert np.isfinite(value)


def test_leaf_dice_gradient_is_zero_for_missing_classes():
    """A class without any singleton voxel contributes a constant Dice of 0: zero gradient."""
    logits, labels = random_case(9)
    labels = np.where(labels == 2, 5, labels)  # leaf 2 annotated nowhere (it is in no set either)
    for missing in (2,):
        weights = np.eye(5)[missing]
        grads = jax.grad(lambda z: losses.leaf_dice(z, labels, label_space=SPACE, class_weights=weights))(logits)
        np.testing.assert_array_equal(np.asarray(grads), 0.0)
    value = losses.leaf_dice(logits, labels, label_space=SPACE, class_weights=np.eye(5)[2], reduction="none")
    np.testing.assert_allclose(value, 1.0)


def test_leaf_dice_on_fetal_brain_space_sees_set_voxels_in_the_denominator():
    logits, labels = random_case(10, space=FETAL_BRAIN)
    # moving probability of leaf 1 (wm) onto a set voxel changes leaf-Dice through the denominator
    value = losses.leaf_dice(logits, labels, label_space=FETAL_BRAIN, reduction="none")
    expected = ref.leaf_dice(*flat(logits, labels), 9, FETAL_BRAIN.to_superset_map())
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_bfloat16_logits_give_float32_loss_and_bf16_grads():
    logits, labels = random_case(11)
    z = jnp.asarray(logits, jnp.bfloat16)
    value, grads = jax.value_and_grad(lambda z: losses.leaf_dice(z, labels, label_space=SPACE))(z)
    assert value.dtype == jnp.float32 and grads.dtype == jnp.bfloat16


# ----------------------------------------------------------------------------- errors
def test_classical_loss_rejects_set_ids():
    logits, labels = random_case(12)
    with pytest.raises(ValueError, match="label-set id"):
        losses.soft_dice(logits, labels, label_space=SPACE)
    with pytest.raises(ValueError, match="label-set id"):
        losses.cross_entropy(logits, labels, label_space=SPACE)


def test_unknown_ids_and_shapes_are_rejected():
    logits, labels = random_case(13)
    with pytest.raises(ValueError, match=r"label id\(s\) \[9\]"):
        losses.leaf_dice(logits, np.full_like(labels, 9), label_space=SPACE)
    with pytest.raises(ValueError, match="labels shape"):
        losses.leaf_dice(logits, labels[:, :2], label_space=SPACE)
    with pytest.raises(ValueError, match="channels"):
        losses.leaf_dice(logits[..., :4], labels, label_space=SPACE)
    with pytest.raises(ValueError, match="reduction"):
        losses.leaf_dice(logits, labels, label_space=SPACE, reduction="sum")
    with pytest.raises(ValueError, match="integer label ids"):
        losses.leaf_dice(logits, labels.astype(np.float32), label_space=SPACE)
    with pytest.raises(ValueError, match="class_weights"):
        losses.soft_dice(logits, np.minimum(labels, 4), class_weights=[1.0, 2.0])


def test_get_loss():
    assert losses.get_loss("marginal_dice") is losses.marginal_dice
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("dice")


def test_losses_module_imports_only_jax_and_numpy():
    import subprocess
    import sys

    code = (
        "import sys, jax, jax.numpy as jnp, labelset_jax.losses as L; "
        "from labelset_jax.labelsets import FETAL_BRAIN as S; "
        "jax.grad(lambda z: L.leaf_dice(z, jnp.zeros((1, 8), jnp.int32), label_space=S) "
        "+ L.marginal_cross_entropy(z, jnp.full((1, 8), 9), label_space=S))(jnp.ones((1, 8, 9))); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('flax', 'optax', 'orbax', 'nibabel', 'scipy', 'torch', 'ml_collections', 'absl')]; "
        "print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
