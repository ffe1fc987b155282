"""Losses through the public API: docs/theory.md §2.5 reference values, float64 NumPy references
(values and gradients), the axiom, autodiff, registries, edge cases and errors."""

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
from tests import reference_losses as ref

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
SPACE = LabelSpace.from_superset_map(5, {5: [3, 4], 6: [1, 2, 3, 4], 7: [0, 1, 2, 3, 4]}, ignore_id=7)
SETS = SPACE.to_superset_map()
IGNORE = SPACE.ignore_id


def one_hot_logits(predicted, num_classes, scale=1000.0):
    return scale * jax.nn.one_hot(jnp.asarray(predicted), num_classes)


def random_case(seed, shape=(2, 4, 5, 3), space=SPACE, with_sets=True):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=shape + (space.num_classes,)).astype(np.float32)
    high = space.num_ids if with_sets else space.num_classes
    labels = rng.integers(0, high, size=shape).astype(np.int32)
    return logits, labels


def soft_targets(seed, shape):
    """Random probability vectors over the last axis (some near-hard, some uniform-ish)."""
    rng = np.random.default_rng(seed + 100)
    return rng.dirichlet(np.full(shape[-1], 0.5), size=shape[:-1]).astype(np.float32)


def flat(logits, labels):
    b = logits.shape[0]
    return np.asarray(logits, np.float64).reshape(b, -1, logits.shape[-1]), np.asarray(labels).reshape(b, -1)


# ----------------------------------------------------------------------------- docs/theory.md §2.5
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
        self.check(ours, ref.leaf_dice(*flat(logits, labels), 5, SETS, ignore=IGNORE, **options))

    def test_marginal_dice(self, seed, options):
        logits, labels = random_case(seed)
        ours = losses.marginal_dice(logits, labels, label_space=SPACE, reduction="none", **options)
        self.check(ours, ref.marginal_dice(*flat(logits, labels), 5, SETS, ignore=IGNORE, **options))

    def test_soft_target_dice(self, seed, options):
        logits, labels = random_case(seed)
        ours = losses.soft_target_dice(logits, labels, label_space=SPACE, reduction="none", **options)
        self.check(ours, ref.soft_target_dice(*flat(logits, labels), 5, SETS, ignore=IGNORE, **options))

    def test_soft_dice_with_soft_targets(self, seed, options):
        logits, _ = random_case(seed, with_sets=False)
        targets = soft_targets(seed, logits.shape)
        ours = losses.soft_dice(logits, targets, reduction="none", **options)
        z, t = flat(logits, targets[..., 0])[0], targets.reshape(2, -1, 5).astype(np.float64)
        self.check(ours, ref.dice_loss(ref.softmax(z), t, **options))

    def test_dice_semimetric(self, seed, options):
        if "squared" in options:
            pytest.skip("the Dice semimetric loss has no squared form")
        logits, _ = random_case(seed, with_sets=False)
        targets = soft_targets(seed, logits.shape)
        ours = losses.dice_semimetric(logits, targets, reduction="none", **options)
        z, t = flat(logits, targets[..., 0])[0], targets.reshape(2, -1, 5).astype(np.float64)
        self.check(ours, ref.dice_semimetric_loss(ref.softmax(z), t, **options))


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
        np.testing.assert_allclose(ours, ref.marginal_cross_entropy(*flat(logits, labels), 5, SETS, ignore=IGNORE), rtol=1e-5)

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
        expected = ref.leaf_dice(*f, 5, SETS, ignore=IGNORE) + ref.marginal_cross_entropy(*f, 5, SETS, ignore=IGNORE)
        np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_cross_entropy_matches_optax():
    logits, labels = random_case(3, with_sets=False)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


# ----------------------------------------------------------------------------- marginalization
@pytest.mark.parametrize("options", [{}, {"squared": False, "batch_dice": True}], ids=["default", "linear,batch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_marginal_dice_equals_marginalized_soft_dice(seed, options):
    """The fused marginal Dice and the generic transform applied to soft_dice: values and gradients
    (on labels without the ignore id, which the fused loss excludes and the transform turns into a
    constant)."""
    logits, labels = random_case(seed)
    labels = np.where(labels == IGNORE, 0, labels)
    fused = functools.partial(losses.marginal_dice, labels=labels, label_space=SPACE, **options)
    generic = functools.partial(losses.marginalize(losses.soft_dice), labels=labels, label_space=SPACE,
                                **options)
    np.testing.assert_allclose(fused(logits), generic(logits), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(fused)(logits), jax.grad(generic)(logits), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_marginalized_cross_entropy_is_marginal_ce_plus_log_set_size(seed):
    logits, labels = random_case(seed)
    labels = np.where(labels == IGNORE, 0, labels)  # as above
    generic = losses.marginalize(losses.cross_entropy)(logits, labels, label_space=SPACE, reduction="none")
    marginal = losses.marginal_cross_entropy(logits, labels, label_space=SPACE, reduction="none")
    log_size = np.log(SPACE.set_sizes[labels]).reshape(2, -1).mean(-1)
    np.testing.assert_allclose(generic, marginal + log_size, rtol=1e-5)
    grad = lambda f: jax.grad(lambda z: f(z, labels, label_space=SPACE))(logits)
    np.testing.assert_allclose(grad(losses.marginal_cross_entropy),
                               grad(losses.marginalize(losses.cross_entropy)), rtol=1e-4, atol=1e-7)


def test_marginalize_names_and_checks():
    marginal_generalized = losses.marginalize(losses.generalized_dice)
    assert marginal_generalized.__name__ == "marginal_generalized_dice"
    logits, labels = random_case(3)
    with pytest.raises(ValueError, match=r"marginalize\(generalized_dice\).*channels"):
        marginal_generalized(logits[..., :4], labels, label_space=SPACE)


# ----------------------------------------------------------------------------- gradients vs float64
def weighted(per_sample):
    """A scalar that weights the two samples differently (tests the cotangent of each sample)."""
    return per_sample[0] + 3.0 * per_sample[1]


DICE_REFERENCES = {
    "soft_dice": (losses.soft_dice, lambda z, g, **o: ref.soft_dice(z, g, 5, **o)),
    "generalized_dice": (losses.generalized_dice, lambda z, g, **o: ref.generalized_dice_loss(
        ref.softmax(z), np.eye(5)[g], **o)),
    "leaf_dice": (losses.leaf_dice, lambda z, g, **o: ref.leaf_dice(z, g, 5, SETS, ignore=IGNORE, **o)),
    "marginal_dice": (losses.marginal_dice, lambda z, g, **o: ref.marginal_dice(z, g, 5, SETS, ignore=IGNORE, **o)),
    "soft_target_dice": (losses.soft_target_dice, lambda z, g, **o: ref.soft_target_dice(z, g, 5, SETS, ignore=IGNORE, **o)),
    "dice_semimetric": (losses.dice_semimetric, lambda z, g, **o: ref.dice_semimetric_loss(
        ref.softmax(z), np.eye(5)[g], **o)),
}
GRADIENT_OPTIONS = [
    {},
    {"squared": False},
    {"include_background": False, "smooth_nr": 1e-2},
    {"batch_dice": True},
    {"class_weights": [0.5, 1.0, 2.0, 1.0, 0.0]},
]


@pytest.mark.parametrize("options", GRADIENT_OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("name", sorted(DICE_REFERENCES))
def test_dice_gradients_match_float64_finite_differences(name, options):
    """The closed-form gradient of every Dice loss against central differences of its reference."""
    if name == "generalized_dice" and "class_weights" in options:
        pytest.skip("generalized_dice has no class weights")
    if name == "dice_semimetric" and "squared" in options:
        pytest.skip("the Dice semimetric loss has no squared form")
    loss, reference = DICE_REFERENCES[name]
    takes_sets = losses.takes_label_space(name)
    logits, labels = random_case(20, shape=(2, 3, 2), with_sets=takes_sets)
    kwargs = {"label_space": SPACE} if takes_sets else {}
    ours = jax.grad(lambda z: weighted(loss(z, labels, reduction="none", **kwargs, **options)))(logits)
    z, g = flat(logits, labels)
    want = ref.numerical_gradient(lambda z: weighted(reference(z, g, **options)), z)
    np.testing.assert_allclose(np.asarray(ours).reshape(want.shape), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"squared": False}, {"batch_dice": True}, {"include_background": False}],
                         ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("name", ["soft_dice", "generalized_dice", "dice_semimetric"])
def test_soft_target_gradients_match_float64_finite_differences(name, options):
    """With soft targets, both the logits' and the targets' gradients (e.g. for distillation)."""
    if name == "dice_semimetric" and "squared" in options:
        pytest.skip("the Dice semimetric loss has no squared form")
    loss = getattr(losses, name)
    reference = {"soft_dice": ref.dice_loss, "generalized_dice": ref.generalized_dice_loss,
                 "dice_semimetric": ref.dice_semimetric_loss}[name]
    logits, _ = random_case(21, shape=(2, 3, 2), with_sets=False)
    targets = soft_targets(21, logits.shape)
    d_logits, d_targets = jax.grad(lambda z, t: weighted(loss(z, t, reduction="none", **options)),
                                   argnums=(0, 1))(logits, targets)
    z, t = logits.reshape(2, -1, 5), targets.reshape(2, -1, 5)
    want_z = ref.numerical_gradient(lambda z: weighted(reference(ref.softmax(z), t.astype(np.float64), **options)), z)
    want_t = ref.numerical_gradient(lambda t: weighted(reference(ref.softmax(z), t, **options)), t)
    np.testing.assert_allclose(np.asarray(d_logits).reshape(want_z.shape), want_z, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(d_targets).reshape(want_t.shape), want_t, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [3.0, 30.0])
def test_marginal_cross_entropy_gradient_matches_float64_finite_differences(scale):
    logits, labels = random_case(22, shape=(2, 3, 2))
    logits = logits * (scale / 3.0)
    ours = jax.grad(lambda z: weighted(losses.marginal_cross_entropy(z, labels, label_space=SPACE,
                                                                     reduction="none")))(logits)
    z, g = flat(logits, labels)
    want = ref.numerical_gradient(lambda z: weighted(ref.marginal_cross_entropy(z, g, 5, SETS, ignore=IGNORE)), z)
    np.testing.assert_allclose(np.asarray(ours).reshape(want.shape), want, rtol=1e-4, atol=1e-6)


def test_marginal_cross_entropy_is_exact_for_huge_logits():
    """With logits of ±1e4 a set's probability underflows float32: log-sum-exp over the set."""
    logits, labels = random_case(2)
    logits = np.sign(logits) * 1e4
    ours = losses.marginal_cross_entropy(logits, labels, label_space=SPACE, reduction="none")
    np.testing.assert_allclose(ours, ref.marginal_cross_entropy(*flat(logits, labels), 5, SETS, ignore=IGNORE), rtol=1e-5)
    grads = jax.grad(lambda z: losses.marginal_cross_entropy(z, labels, label_space=SPACE))(logits)
    assert np.isfinite(grads).all()


def test_ignore_label_gives_zero_marginal_ce_loss_and_gradient():
    logits, labels = random_case(3, shape=(1, 37))
    labels[0, :20] = SPACE.ignore_id
    value = losses.marginal_cross_entropy(logits[:, :20], labels[:, :20], label_space=SPACE)
    assert float(value) == 0.0
    grad = jax.grad(lambda z: losses.marginal_cross_entropy(z, labels, label_space=SPACE))(logits)
    np.testing.assert_array_equal(np.asarray(grad[0, :20]), 0.0)
    assert np.abs(grad[0, 20:]).max() > 0


# ----------------------------------------------------------------------------- the Dice semimetric
@pytest.mark.parametrize("options", [{}, {"include_background": False}, {"batch_dice": True},
                                     {"class_weights": [0.5, 1.0, 2.0, 1.0, 0.0]}],
                         ids=lambda o: ",".join(o) or "default")
@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_dice_semimetric_is_linear_soft_dice_for_hard_labels(options, seed):
    logits, labels = random_case(seed, with_sets=False)
    a = losses.dice_semimetric(logits, labels, reduction="none", **options)
    b = losses.soft_dice(logits, labels, squared=False, reduction="none", **options)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    one_hot = np.eye(5, dtype=np.float32)[labels]  # the same as soft targets that are hard
    np.testing.assert_allclose(losses.dice_semimetric(logits, one_hot, reduction="none", **options), a,
                               rtol=1e-5, atol=1e-6)


def test_dice_semimetric_is_minimal_at_the_soft_targets():
    """Zero exactly when the prediction equals the soft targets (its minimum, as the loss is >= 0);
    the soft Dice is not minimised there: a gradient step away from the targets lowers it."""
    targets = soft_targets(4, (2, 6, 5))
    at_targets = np.log(targets)
    loss = lambda z: losses.dice_semimetric(z, targets, eps=0.0, smooth_nr=0.0)
    assert float(loss(at_targets)) == pytest.approx(0.0, abs=1e-6)
    grad = jax.grad(loss)(jnp.asarray(at_targets))
    rng = np.random.default_rng(5)
    for _ in range(5):
        assert float(loss(at_targets + 0.1 * rng.normal(size=targets.shape))) > 1e-4
    assert np.isfinite(np.asarray(grad)).all()
    soft = lambda z: losses.soft_dice(z, targets, squared=False, eps=0.0)
    soft_grad = jax.grad(soft)(jnp.asarray(at_targets))
    assert float(jnp.abs(soft_grad).max()) > 1e-3
    assert float(soft(at_targets - 0.5 * soft_grad)) < float(soft(at_targets)) - 1e-4


# ----------------------------------------------------------------------------- the axiom (hypothesis)
MARGINAL_LOSSES = {
    "marginal_cross_entropy": losses.marginal_cross_entropy,
    "marginal_dice": losses.marginal_dice,
    "marginal_focal": losses.marginal_focal,
    "marginal_generalized_dice": losses.marginalize(losses.generalized_dice),
}


@st.composite
def cases(draw, space=SPACE, shape=(2, 4, 3)):
    """Random logits and label ids of one fixed shape (a new shape would compile every op anew)."""
    labels = draw(hnp.arrays(np.int32, shape, elements=st.sampled_from([int(i) for i in np.flatnonzero(space.valid_ids)])))
    logits = draw(hnp.arrays(np.float32, shape + (space.num_classes,),
                             elements=st.floats(-8, 8, width=32, allow_nan=False)))
    seed = draw(st.integers(0, 2**31 - 1))
    return logits, labels, seed


ALL_LOSSES = {**losses.CLASSICAL_LOSSES, **losses.LABEL_SET_LOSSES, **losses.BASELINE_LOSSES}


def _weighted_loss(name, logits, labels):
    return jnp.sum(ALL_LOSSES[name](logits, labels, label_space=SPACE, reduction="none") * jnp.array([1.0, 2.0]))


@functools.lru_cache(maxsize=None)
def _jitted_weighted_loss(name):
    """Compiled once per loss (the labels are an argument, not a constant)."""
    return jax.jit(jax.value_and_grad(functools.partial(_weighted_loss, name)))


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
@SETTINGS
@given(logits=hnp.arrays(np.float32, (2, 4, 3, 5), elements=st.floats(-8, 8, width=32)),
       labels=hnp.arrays(np.int32, (2, 4, 3), elements=st.integers(-2, 10)))
def test_eager_and_jit_give_the_same_loss_and_gradient(name, logits, labels):
    """Any label map (leaves, set ids, the ignore id, unknown ids): one semantics, eager or jitted."""
    eager = jax.value_and_grad(_weighted_loss, argnums=1)(name, logits, labels)
    jitted = _jitted_weighted_loss(name)(logits, labels)
    np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager[1], jitted[1], rtol=1e-4, atol=1e-6)
    assert np.isfinite(eager[0]) and np.isfinite(eager[1]).all()


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


@pytest.mark.parametrize("name", sorted(MARGINAL_LOSSES))
@SETTINGS
@given(case=cases())
def test_axiom_marginal_losses(name, case):
    logits, labels, seed = case
    loss = MARGINAL_LOSSES[name]
    other = redistribute_inside_sets(logits, labels, SPACE, seed)
    a = loss(logits, labels, label_space=SPACE, reduction="none")
    b = loss(other, labels, label_space=SPACE, reduction="none")
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", sorted(losses.LABEL_SET_LOSSES))
@SETTINGS
@given(case=cases(), absent=st.sets(st.integers(1, 4), min_size=2, max_size=4))
def test_axiom_of_every_label_set_loss_with_missing_labels(name, case, absent):
    """Every registered label-set loss gives equal values for predictions differing inside sets
    that hold only leaves absent from the image (leaf-Dice's premise; the marginal losses satisfy
    the axiom without it, above)."""
    logits, labels, seed = case
    absent = sorted(absent)
    space, set_id = LabelSpace.leaves(5).with_set(absent)
    present = [c for c in range(5) if c not in absent]
    labels = np.where(np.isin(labels, present), labels, set_id).astype(np.int32)
    other = redistribute_inside_sets(logits, labels, space, seed)
    loss = losses.LABEL_SET_LOSSES[name]
    a = loss(logits, labels, label_space=space, reduction="none")
    b = loss(other, labels, label_space=space, reduction="none")
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
TAKES_SETS = sorted(n for n in ALL_LOSSES if losses.takes_label_space(n))


def call(name, logits, labels, **kw):
    if losses.takes_label_space(name):
        return ALL_LOSSES[name](logits, labels, label_space=SPACE, **kw)
    return ALL_LOSSES[name](logits, labels, **kw)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_jit_vmap_grad(name):
    logits, labels = random_case(6, with_sets=losses.takes_label_space(name))
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


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_finite_for_extreme_logits(name, scale):
    logits, labels = random_case(7, with_sets=losses.takes_label_space(name))
    logits = np.sign(logits) * scale
    value, grads = jax.value_and_grad(lambda z: call(name, z, labels))(jnp.asarray(logits))
    assert np.isfinite(value) and np.all(np.isfinite(grads))


@pytest.mark.parametrize("name", TAKES_SETS)
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


@pytest.mark.parametrize("name", ["leaf_dice", "marginal_dice", "marginal_cross_entropy"])
def test_bfloat16_logits_give_float32_loss_and_bf16_grads(name):
    logits, labels = random_case(11)
    z = jnp.asarray(logits, jnp.bfloat16)
    value, grads = jax.value_and_grad(lambda z: call(name, z, labels))(z)
    assert value.dtype == jnp.float32 and grads.dtype == jnp.bfloat16
    want = jax.grad(lambda z: call(name, z, labels))(jnp.asarray(z, jnp.float32))  # same logits in f32
    np.testing.assert_allclose(np.asarray(grads, np.float32), want, rtol=2e-2, atol=2e-2 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", ["leaf_dice", "marginal_dice", "marginal_cross_entropy", "soft_dice"])
def test_non_finite_logits_give_a_non_finite_loss(name, bad):
    """A diverged network must show up as a non-finite loss (training stops on it); a logit of
    -inf is a probability of 0, which is fine (test_finite_for_extreme_logits)."""
    logits, labels = random_case(14, with_sets=losses.takes_label_space(name))
    logits[0, 1, 2, 0, 1] = bad
    value = call(name, logits, labels, reduction="none")
    assert not np.isfinite(value[0]) and np.isfinite(value[1]), value


@pytest.mark.parametrize("num_classes", [2, 16, 17, 32])
def test_many_classes_against_float64(num_classes):
    space = LabelSpace.from_superset_map(num_classes, {num_classes: list(range(num_classes))})
    rng = np.random.default_rng(num_classes)
    logits = rng.normal(scale=3.0, size=(2, 300, num_classes)).astype(np.float32)
    labels = rng.integers(0, space.num_ids, size=(2, 300)).astype(np.int32)
    sets, z = space.to_superset_map(), logits.astype(np.float64)
    for name, want in [("leaf_dice", ref.leaf_dice(z, labels, num_classes, sets)),
                       ("marginal_dice", ref.marginal_dice(z, labels, num_classes, sets)),
                       ("marginal_cross_entropy", ref.marginal_cross_entropy(z, labels, num_classes, sets))]:
        ours = getattr(losses, name)(logits, labels, label_space=space, reduction="none")
        np.testing.assert_allclose(ours, want, rtol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------- errors
def test_classical_losses_exclude_ids_that_are_not_leaves():
    """Set ids, the ignore id and unknown ids: excluded from a classical loss, eagerly and under jit
    (the float64 references leave those voxels out); ``losses.validate`` is the explicit check."""
    logits, labels = random_case(12)
    labels[0, 0, 0, 0], labels[1, 0, 0, 0] = -3, 42  # unknown ids too
    z, g = flat(logits, labels)
    for name, want in [("soft_dice", ref.soft_dice(z, g, 5)), ("cross_entropy", ref.cross_entropy(z, g, 5)),
                       ("focal", ref.focal(z, g, 5, 2.0))]:
        fn = functools.partial(getattr(losses, name), label_space=SPACE, reduction="none")
        np.testing.assert_allclose(fn(logits, labels), want, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(jax.jit(fn)(logits, labels), want, rtol=1e-5, err_msg=name)
        # no gradient on the excluded voxels
        grad = jax.grad(lambda z: jnp.sum(fn(z, labels)))(logits)
        assert float(jnp.abs(grad[labels >= 5]).max()) == 0.0 and float(jnp.abs(grad[labels < 0]).max()) == 0.0
    with pytest.raises(ValueError, match="label-set id"):
        losses.validate(labels.clip(0, 7), label_space=SPACE, classical=True)
    with pytest.raises(ValueError, match=r"label value\(s\) \[-3, 42\] are neither"):
        losses.validate(labels, label_space=SPACE)
    losses.validate(labels.clip(0, 7), label_space=SPACE)  # set ids are fine for a label-set loss


def test_label_set_losses_exclude_the_ignore_id_and_unknown_ids():
    """Every label-set loss: a voxel with the ignore id or an unknown id counts as if it were absent,
    eagerly and under jit; its gradient is zero."""
    logits, labels = random_case(13)
    labels = np.where(labels == IGNORE, 0, labels)
    odd = labels.copy()
    odd[:, 0, :2] = IGNORE
    odd[:, 1, :1] = 99
    odd[:, 1, 1:2] = -1
    keep = (odd == labels)[..., None]  # the voxels of odd that count
    for name, fn in losses.LABEL_SET_LOSSES.items():
        if name == "marginal_focal":  # a marginalization: those voxels are a constant there
            continue
        f = functools.partial(fn, label_space=SPACE, reduction="none")
        eager, jitted = f(logits, odd), jax.jit(f)(logits, odd)
        np.testing.assert_allclose(eager, jitted, rtol=1e-6, err_msg=name)
        grad = jax.grad(lambda z: jnp.sum(f(z, odd)))(logits)
        assert float(jnp.abs(jnp.where(keep, 0.0, grad)).max()) == 0.0, name
    # leaf-Dice with excluded voxels equals leaf-Dice on the counted voxels alone
    z, g = flat(logits, odd)
    np.testing.assert_allclose(losses.leaf_dice(logits, odd, label_space=SPACE, reduction="none"),
                               ref.leaf_dice(z, np.where(g < 0, 7, np.where(g > 7, 7, g)), 5, SETS, ignore=IGNORE),
                               rtol=1e-5)


def test_shapes_dtypes_and_options_are_rejected():
    logits, labels = random_case(13)
    with pytest.raises(ValueError, match="labels shape"):
        losses.leaf_dice(logits, labels[:, :2], label_space=SPACE)
    with pytest.raises(ValueError, match="channels"):
        losses.leaf_dice(logits[..., :4], labels, label_space=SPACE)
    with pytest.raises(ValueError, match="reduction"):
        losses.leaf_dice(logits, labels, label_space=SPACE, reduction="max")
    with pytest.raises(ValueError, match="integer label ids"):
        losses.leaf_dice(logits, labels.astype(np.float32), label_space=SPACE)
    with pytest.raises(ValueError, match="class_weights"):
        losses.soft_dice(logits, np.minimum(labels, 4), class_weights=[1.0, 2.0])


def test_registries_get_loss_and_takes_label_space():
    assert "soft_target_dice" not in losses.LABEL_SET_LOSSES  # a baseline, not a label-set loss
    assert losses.get_loss("soft_target_dice") is losses.soft_target_dice
    assert losses.get_loss("marginal_dice") is losses.marginal_dice
    assert losses.get_loss("dice_semimetric") is losses.CLASSICAL_LOSSES["dice_semimetric"]
    names = [set(r) for r in (losses.CLASSICAL_LOSSES, losses.LABEL_SET_LOSSES, losses.BASELINE_LOSSES)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert all(losses.takes_label_space(n) for n in names[1] | names[2])
    assert not any(losses.takes_label_space(n) for n in names[0])
    assert all(hasattr(losses, n) for n in set.union(*names)) and not hasattr(losses, "marginal_dice_fused")
    for fn in (losses.get_loss, losses.takes_label_space):
        with pytest.raises(ValueError, match="unknown loss"):
            fn("dice")


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


@pytest.mark.parametrize("name", sorted(losses.LABEL_SET_LOSSES) + ["soft_target_dice"])
def test_reductions_over_the_batch(name):
    logits, labels = random_case(3)
    loss = losses.get_loss(name)
    per_sample = loss(logits, labels, label_space=SPACE, reduction="none")
    assert per_sample.shape == (logits.shape[0],)
    np.testing.assert_allclose(loss(logits, labels, label_space=SPACE, reduction="sum"), per_sample.sum(), rtol=1e-6)
    np.testing.assert_allclose(loss(logits, labels, label_space=SPACE), per_sample.mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'max'"):
        loss(logits, labels, label_space=SPACE, reduction="max")


def test_marginalized_losses_require_the_label_space_in_their_signature():
    import inspect

    signature = inspect.signature(losses.marginal_focal)
    assert list(signature.parameters)[:3] == ["logits", "labels", "label_space"]
    assert signature.parameters["label_space"].default is inspect.Parameter.empty  # required
    assert signature.parameters["gamma"].default == 2.0 and signature.parameters["reduction"].default == "mean"
    with pytest.raises(TypeError, match="label_space"):
        losses.marginal_focal(*random_case(0))


@pytest.mark.parametrize("name", ["soft_dice", "cross_entropy", "dice_semimetric"])
def test_soft_targets_are_checked_against_the_label_space(name):
    logits = jnp.zeros((1, 4, 3))
    targets = jnp.full((1, 4, 3), 1 / 3)
    with pytest.raises(ValueError, match="logits have 3 channels but label_space has 5 leaves"):
        losses.get_loss(name)(logits, targets, label_space=LabelSpace.leaves(5))


# ----------------------------------------------------------------------------- smoothing constants
DICE_LOSSES = {
    "soft_dice": losses.soft_dice, "generalized_dice": losses.generalized_dice,
    "dice_semimetric": losses.dice_semimetric, "dice_ce": losses.dice_ce,
    "leaf_dice": functools.partial(losses.leaf_dice, label_space=SPACE),
    "leaf_dice_ce": functools.partial(losses.leaf_dice_ce, label_space=SPACE),
    "marginal_dice": functools.partial(losses.marginal_dice, label_space=SPACE),
    "soft_target_dice": functools.partial(losses.soft_target_dice, label_space=SPACE),
}


@pytest.mark.parametrize("name", sorted(DICE_LOSSES))
def test_a_perfect_prediction_of_an_absent_class_scores_zero_by_default(name):
    """MONAI's and nnU-Net's constants: classes 3 and 4 are absent and predicted absent."""
    labels = jnp.array([[[0, 1, 1], [2, 2, 0]]])
    logits = one_hot_logits(labels, 5, scale=100.0)
    loss = DICE_LOSSES[name]
    assert float(loss(logits, labels)) == pytest.approx(0.0, abs=1e-5)
    assert float(jax.jit(loss)(logits, labels)) == pytest.approx(0.0, abs=1e-5)
    if name != "generalized_dice":  # the label-set paper's constants: each absent class costs 1/C
        assert float(loss(logits, labels, smooth_nr=0.0)) == pytest.approx(2 / 5, abs=1e-5)


def test_leaf_dice_gives_a_leaf_hidden_in_a_set_dice_zero_and_no_gradient():
    """Leaves 3 and 4 have no singleton voxel but lie in set 5: whatever ``smooth_nr``, their Dice is 0
    and they give no gradient (they may be present in the set voxels); leaf 2, absent from every
    label, gets the numerator constant."""
    labels = jnp.array([[[0, 1, 1], [5, 5, 0]]])
    logits = one_hot_logits(jnp.array([[[0, 1, 1], [3, 4, 0]]]), 5, scale=100.0)
    start = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 3, 5)), jnp.float32)
    for smooth_nr in (1e-5, 1e-2):  # with eps = smooth_nr, as MONAI: an absent class predicted absent has Dice 1
        options = dict(label_space=SPACE, smooth_nr=smooth_nr, eps=smooth_nr)
        assert float(losses.leaf_dice(logits, labels, **options)) == pytest.approx(2 / 5, abs=1e-4)
        hidden = lambda z: losses.leaf_dice(z, labels, class_weights=[0, 0, 0, 1, 1], **options)
        assert float(hidden(start)) == 1.0
        np.testing.assert_array_equal(jax.grad(hidden)(start), 0.0)
        absent = lambda z: losses.leaf_dice(z, labels, class_weights=[0, 0, 1, 0, 0], **options)
        assert float(absent(logits)) == pytest.approx(0.0, abs=1e-4)
        assert np.abs(jax.grad(absent)(start)).max() > 0
