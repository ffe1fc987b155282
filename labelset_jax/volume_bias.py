r"""The soft-Dice volume bias (Bertels et al.; docs/theory.md §5): what a loss does to volumes.

Under inherent uncertainty the label of voxel ``i`` given the image is ``l_i ~ Bernoulli(q_i)``.
Cross-entropy is minimised by ``ŷ = q``, so its soft volume ``v Σ ŷ_i`` estimates
``E[V] = v Σ q_i`` without bias; soft Dice prefers binary outputs and shifts the volume. This
module holds the pieces of that analysis, shared by ``notebooks/03_volume_bias.ipynb`` and
``experiments/volume_bias_study.py``:

* :func:`toy_volume_error`: the closed form ``ΔV = (1[p > 1/2] − p)·V`` of one region that is
  foreground with probability ``p`` as a whole;
* :func:`dice_optimal_oracle`: the Dice-optimal prediction ``1[q ≥ t]`` computed from a known
  ``q`` (the bias a perfectly trained soft-Dice model shows), and its ``ΔV``;
  :func:`threshold_at_own_optimum`: the same computed from a model's own probabilities
  (Nordström et al.: a CE model thresholded after training);
* :data:`ARMS` and :func:`arm_loss`: the compared losses (CE, soft Dice per image and per batch,
  squared Dice, CE + soft Dice, the Dice semimetric loss on soft targets);
* :func:`fit_logistic_regression`: a per-voxel logistic regression (Bertels' own baseline) fitted
  to convergence with any arm's loss by L-BFGS, so that the loss and not the optimiser decides
  the volume;
* :func:`fit_network`: a small CNN (:mod:`labelset_jax.models`) fitted full-batch with an arm's
  loss, for a fixed number of Adam steps with the learning rate decayed to 0, predicting through
  :func:`labelset_jax.evaluation.predict_case`;
* :func:`volume_row` and :func:`volume_rows`: the signed volume errors of predictions against
  ``E[V]`` and against the realised label, and the hard Dice, per foreground class;
* :func:`tost_equivalence`: the two one-sided tests of equivalence within a margin (CE's volume
  is judged by equivalence to 0 within ±5 % of ``E[V]``).

Bootstrap confidence intervals, Wilcoxon tests, volume errors and reliability curves come from
:mod:`labelset_jax.metrics`.

>>> toy_volume_error(0.3, 10.0), toy_volume_error(0.7, 10.0)
(-3.0, 3.0)

References:
  J. Bertels, D. Robben, D. Vandermeulen, P. Suetens, *Optimization with soft Dice can lead to a
  volumetric bias*, BrainLes 2019, arXiv:1911.02278; *Theoretical analysis and experimental
  validation of volume bias of soft Dice optimized segmentation maps in the context of inherent
  uncertainty*, Medical Image Analysis 67 (2021) 101833.
  Z. Wang et al., *Dice Semimetric Losses: Optimizing the Dice Score with Soft Labels*, MICCAI 2023.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from labelset_jax import losses
from labelset_jax.data import Case, normalize_image
from labelset_jax.evaluation import EvalSettings, Prediction, TrainedModel, predict_case
from labelset_jax.labelsets import LabelSpace
from labelset_jax.metrics import dice_score, volume_error

__all__ = [
    "ARMS", "Arm", "arm_loss", "toy_volume_error", "Oracle", "dice_optimal_oracle",
    "intensity_features", "LogisticFit", "fit_logistic_regression", "predict_logistic",
    "class_probabilities", "NetworkFit", "fit_network", "whole_volume_settings", "predict", "volume_row",
    "volume_rows", "EquivalenceTest", "threshold_at_own_optimum",
    "tost_equivalence",
]


# --------------------------------------------------------------------------- the arms


class Arm(NamedTuple):
    """One compared loss.

    Attributes:
      loss: the name of a loss of :mod:`labelset_jax.losses` (:func:`~labelset_jax.losses.get_loss`).
      options: its keyword options.
      soft_targets: trained on the soft targets ``[1 − q, q]`` instead of the drawn labels.
    """

    loss: str
    options: dict
    soft_targets: bool = False


# Binary tasks: the foreground Dice, as Bertels et al., without a numerator constant (the papers' form).
_FOREGROUND = {"include_background": False, "smooth_nr": 0.0}

#: The arms of the volume-bias study, by name. The Dice arms score the foreground only
#: (``include_background=False``): on a binary task that is the soft Dice of the papers.
ARMS: dict[str, Arm] = {
    "ce": Arm("cross_entropy", {}),
    "dice": Arm("soft_dice", {"squared": False, **_FOREGROUND}),
    "dice_batch": Arm("soft_dice", {"squared": False, "batch_dice": True, **_FOREGROUND}),
    "dice_squared": Arm("soft_dice", {"squared": True, **_FOREGROUND}),
    "dice_ce": Arm("dice_ce", {"squared": False, **_FOREGROUND}),
    "dice_semimetric": Arm("dice_semimetric", dict(_FOREGROUND), soft_targets=True),
}


def arm_loss(arm: str | Arm) -> Callable[..., jax.Array]:
    """The loss of an arm as ``loss(logits, targets) -> scalar`` (batch mean).

    Args:
      arm: a key of :data:`ARMS` or an :class:`Arm`.

    Returns:
      A function of logits ``[B, *spatial, C]`` and integer labels ``[B, *spatial]`` (or soft
      targets ``[B, *spatial, C]`` for an arm with ``soft_targets``).

    >>> import jax.numpy as jnp
    >>> labels = jnp.array([[0, 1, 1, 0]])
    >>> float(arm_loss("dice")(100.0 * jax.nn.one_hot(labels, 2), labels)) < 1e-5
    True
    """
    if isinstance(arm, str):
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; known: {sorted(ARMS)}")
        arm = ARMS[arm]
    fn = losses.get_loss(arm.loss)
    options = dict(arm.options)

    def loss(logits, targets):
        return fn(logits, targets, **options)

    loss.__name__ = arm.loss
    return loss


# --------------------------------------------------------------------------- theory


def toy_volume_error(p: float | np.ndarray, volume: float | np.ndarray) -> float | np.ndarray:
    r"""``ΔV`` of the Dice-optimal prediction of one region that is foreground with probability ``p``.

    .. math:: \Delta V = (\mathbb{1}[p > 1/2] - p)\, V

    Soft Dice, in expectation over the region's one Bernoulli draw, is maximised by predicting the
    whole region when ``p > 1/2`` and none of it otherwise (docs/theory.md §5); cross-entropy
    predicts ``p`` everywhere in it, ``ΔV = 0``.

    Args:
      p: the probability that the region is foreground (scalar or array).
      volume: the region's volume ``V``.

    Returns:
      ``ΔV = V_pred − E[V]`` in the units of ``volume`` (a float for scalar inputs).

    >>> toy_volume_error(np.array([0.1, 0.5, 0.9]), 2.0).round(3).tolist()
    [-0.2, -1.0, 0.2]
    """
    p = np.asarray(p, np.float64)
    out = ((p > 0.5).astype(np.float64) - p) * np.asarray(volume, np.float64)
    return float(out) if out.ndim == 0 else out


class Oracle(NamedTuple):
    """The Dice-optimal threshold prediction ``1[q ≥ threshold]`` of a known ``q``.

    Attributes:
      threshold: the optimal ``t`` (``inf``: predict nothing).
      dice: the expected Dice of the prediction.
      volume_ml: its volume ``v·|{q ≥ t}|``.
      expected_ml: ``E[V] = v Σ q``.
      dv_ml: ``volume_ml − expected_ml``, the bias of a perfectly trained soft-Dice model.
    """

    threshold: float
    dice: float
    volume_ml: float
    expected_ml: float
    dv_ml: float

    def prediction(self, q: np.ndarray) -> np.ndarray:
        """The oracle's binary prediction ``q ≥ threshold``."""
        return np.asarray(q) >= self.threshold


def dice_optimal_oracle(q: np.ndarray, *, voxel_ml: float = 1.0, labels: np.ndarray | None = None,
                        weights: Sequence[float] | None = None) -> Oracle:
    r"""The prediction ``1[q ≥ t]`` with the highest expected Dice, and its volume error.

    Among the predictions that keep the ``k`` most probable voxels (every threshold ``t`` of
    ``q``, ties kept together), picks the one maximising the expected Dice with the random label
    map ``l``:

    * ``labels=None`` — independent voxels, ``l_i ~ Bernoulli(q_i)``; the expected Dice is taken
      as the ratio of expectations (exact as the number of uncertain voxels grows):

      .. math:: D(k) = \frac{2 \sum_{i \le k} q_{(i)}}{k + \sum_i q_i};

    * ``labels=[S, ...]`` — realisations of ``l`` (with optional probabilities ``weights``):
      ``D(k)`` is the weighted mean of the Dice with each realisation, exact for any dependence
      between voxels (e.g. one draw for a whole blob, where the optimum keeps the blob iff
      ``p > 1/2``).

    With many independent voxels the optimum keeps every voxel with ``q_i ≥ D*/2``, which is
    below 1/2: soft Dice over-estimates the volume (docs/theory.md §5).

    Args:
      q: the known foreground probabilities, any shape.
      voxel_ml: the volume of one voxel in ml.
      labels: optional ``[S, *q.shape]`` binary realisations of the label map.
      weights: optional ``[S]`` non-negative probabilities of the realisations (default equal).

    Returns:
      An :class:`Oracle`.

    >>> q = np.array([0.9, 0.9, 0.45, 0.45, 0.0])
    >>> o = dice_optimal_oracle(q)  # keeps the 0.45 voxels: 2·1.8/(2 + 2.7) < 2·2.7/(4 + 2.7)
    >>> o.threshold, round(o.dice, 4), round(o.dv_ml, 2)
    (0.45, 0.806, 1.3)
    >>> both = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])  # one region, p = 0.45: left out
    >>> o = dice_optimal_oracle(np.array([1, 1, 0.45, 0.45, 0]), labels=both, weights=[0.45, 0.55])
    >>> o.threshold, round(o.dv_ml, 2)
    (1.0, -0.9)
    """
    q = np.asarray(q, np.float64).ravel()
    if q.size == 0 or np.any((q < 0) | (q > 1)) or not np.all(np.isfinite(q)):
        raise ValueError("q must be a non-empty array of probabilities in [0, 1]")
    order = np.argsort(-q, kind="stable")
    sorted_q = q[order]
    # k = number of voxels kept: 0, and the end of each group of equal q (ties stay together)
    ks = np.concatenate([[0], np.nonzero(np.diff(sorted_q) < 0)[0] + 1, [q.size]])
    ks = np.unique(ks)
    total = sorted_q.sum()
    if labels is None:
        kept = np.concatenate([[0.0], np.cumsum(sorted_q)])[ks]
        denominator = ks + total
        dice = np.divide(2.0 * kept, denominator, out=np.ones_like(kept), where=denominator > 0)
    else:
        labels = np.asarray(labels)
        if labels.ndim < 1 or labels.shape[0] < 1 or labels[0].size != q.size:
            raise ValueError(f"labels must be [S, *q.shape] realisations, got shape {labels.shape} for q of size {q.size}")
        samples = labels.reshape(labels.shape[0], -1)[:, order].astype(np.float64)
        w = np.full(samples.shape[0], 1.0 / samples.shape[0]) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (samples.shape[0],) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {samples.shape[0]} non-negative numbers, got {weights}")
        w = w / w.sum()
        kept = np.concatenate([np.zeros((samples.shape[0], 1)), np.cumsum(samples, axis=1)], axis=1)[:, ks]
        denominator = ks[None, :] + samples.sum(1, keepdims=True)
        per_sample = np.divide(2.0 * kept, denominator, out=np.ones_like(kept), where=denominator > 0)
        dice = w @ per_sample
    best = int(np.argmax(dice))
    k = int(ks[best])
    threshold = float(sorted_q[k - 1]) if k > 0 else float("inf")
    return Oracle(threshold, float(dice[best]), k * voxel_ml, float(total) * voxel_ml, (k - float(total)) * voxel_ml)


def threshold_at_own_optimum(probs: np.ndarray) -> np.ndarray:
    r"""A model's probabilities thresholded where *they* put the expected Dice highest (Nordström et al.).

    Per foreground class ``c``, the model's own ``p_c`` is taken as the label probability and
    :func:`dice_optimal_oracle` picks the threshold ``t_c`` that maximises the expected Dice; the
    result is ``1[p_c ≥ t_c]``. For a calibrated model (cross-entropy) this is the soft-Dice
    optimum computed after training, so one CE model gives both an unbiased soft volume (its
    ``Σ p``) and a Dice-optimal segmentation. The background channel is ``1`` where no class is kept.

    Args:
      probs: ``[..., C]`` class probabilities.

    Returns:
      float32 ``[..., C]`` binary predictions, one channel per class.

    >>> p = np.array([[0.1, 0.9], [0.55, 0.45], [0.6, 0.4], [1.0, 0.0]])
    >>> threshold_at_own_optimum(p)[:, 1].tolist()  # keeps the 0.45 and 0.4 voxels, not only p > 1/2
    [1.0, 1.0, 1.0, 0.0]

    References:
      M. Nordström, H. Hult, F. Löfman, J. Söderberg, *On image segmentation with noisy labels:
      characterization and volume properties of the optimal solutions to accuracy and Dice*,
      NeurIPS 2022.
    """
    probs = np.asarray(probs, np.float64)
    out = np.zeros(probs.shape, np.float32)
    for c in range(1, probs.shape[-1]):
        q = np.clip(probs[..., c], 0.0, 1.0)
        out[..., c] = dice_optimal_oracle(q).prediction(q)
    out[..., 0] = 1.0 - out[..., 1:].max(axis=-1) if probs.shape[-1] > 1 else 1.0
    return out


# --------------------------------------------------------------------------- logistic regression


def intensity_features(image: np.ndarray, *, degree: int = 3) -> np.ndarray:
    """Per-voxel features of an image: the powers ``x, x², …, x^degree`` of its intensity.

    A polynomial of the intensity lets a logistic regression map the background, a faint blob and
    a clear object to three different probabilities (a linear logit cannot).

    Args:
      image: ``[...]`` intensities.
      degree: the highest power.

    Returns:
      float32 ``[..., degree]``.

    >>> intensity_features(np.array([2.0]), degree=3).tolist()
    [[2.0, 4.0, 8.0]]
    """
    if int(degree) < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    x = np.asarray(image, np.float32)[..., None]
    return x ** np.arange(1, int(degree) + 1, dtype=np.float32)


class LogisticFit(NamedTuple):
    """A fitted per-voxel logistic regression ``P(l = 1 | x) = σ(w·(x − μ)/s + b)``.

    Attributes:
      params: ``{"w": [F], "b": []}`` on standardised features.
      mean, scale: ``[F]`` feature standardisation (from the training voxels).
      loss: the final training loss.
      grad_norm: the final gradient norm.
      steps: L-BFGS iterations taken.
      converged: whether a stopping criterion (gradient norm or stalled loss) was met within
        ``max_steps``.
    """

    params: dict
    mean: np.ndarray
    scale: np.ndarray
    loss: float
    grad_norm: float
    steps: int
    converged: bool


_STALL = 20  # iterations over which a stalled loss counts as converged


def _logits(params: dict, features: jax.Array) -> jax.Array:
    z = features @ params["w"] + params["b"]
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)  # two-class logits: softmax = [1 − σ(z), σ(z)]


@functools.lru_cache(maxsize=32)
def _lbfgs_step(loss: str, options: tuple, memory_size: int):
    """The optimiser and one jitted L-BFGS step for a loss (cached: refits with the same arm and
    shapes reuse the compiled step)."""
    loss_fn = arm_loss(Arm(loss, dict(options)))
    opt = optax.lbfgs(memory_size=memory_size)

    @jax.jit
    def step(params, state, x, t):
        def objective(p):
            return loss_fn(_logits(p, x), t)

        value, grad = optax.value_and_grad_from_state(objective)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(params, updates), state, value, optax.tree_utils.tree_l2_norm(grad)

    return opt, step


def fit_logistic_regression(features: np.ndarray, targets: np.ndarray, *, arm: str | Arm,
                            max_steps: int = 500, tol: float = 1e-5, ftol: float = 1e-7,
                            memory_size: int = 10, init: LogisticFit | None = None) -> LogisticFit:
    r"""Fits a per-voxel logistic regression with an arm's loss, to convergence, by L-BFGS.

    The model is ``P(l_i = 1 | x_i) = σ(w·\tilde x_i + b)`` with standardised features
    ``\tilde x``, fed to the arm's loss as the two-class logits ``[0, w·\tilde x + b]`` of each
    image (so per-image and batch Dice mean what they mean for a network). Starting from
    ``w = 0`` and ``b = logit(mean target)``, L-BFGS with a zoom line search (``optax.lbfgs``)
    runs until the gradient norm is at most ``tol``, or until the loss has decreased by at most
    ``ftol·max(1, |loss|)`` over the last 20 iterations (the optimum of a loss with kinks, such as
    the Dice semimetric's ``|p − q|``, or the float32 resolution of the loss), or ``max_steps``
    iterations. With a few parameters and full-batch gradients this takes tens of iterations: the
    fitted model shows the optimum of the loss, not an artefact of an unfinished optimisation.
    The Dice losses are not convex in ``(w, b)``: a start elsewhere (``init``, e.g. the CE fit)
    can reach a better optimum, so compare the final losses of several starts.

    Args:
      features: ``[B, N, F]`` features of the ``N`` voxels of ``B`` training images.
      targets: ``[B, N]`` binary labels, or for an arm with ``soft_targets`` the foreground
        probabilities ``q`` in ``[0, 1]``.
      arm: a key of :data:`ARMS` or an :class:`Arm`.
      max_steps: the most L-BFGS iterations.
      tol: the gradient-norm tolerance.
      ftol: the relative loss-decrease tolerance over the last 20 iterations.
      memory_size: the L-BFGS memory.
      init: start from this fit's parameters (fitted on the same features, so that the
        standardisation agrees) instead of ``w = 0, b = logit(mean target)``.

    Returns:
      A :class:`LogisticFit`.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> x = rng.uniform(-3, 3, (4, 500, 1)).astype(np.float32)
      >>> y = (rng.random((4, 500)) < 1 / (1 + np.exp(-2 * x[..., 0]))).astype(np.int32)
      >>> fit = fit_logistic_regression(x, y, arm="ce")
      >>> fit.converged, bool(1.5 < float(fit.params["w"][0]) / fit.scale[0] < 2.5)
      (True, True)

    References:
      J. Bertels et al., Medical Image Analysis 67 (2021) 101833 (the logistic-regression model).
    """
    arm = ARMS[arm] if isinstance(arm, str) else arm
    features = np.asarray(features, np.float32)
    targets = np.asarray(targets)
    if features.ndim != 3 or targets.shape != features.shape[:2]:
        raise ValueError(f"features must be [B, N, F] and targets [B, N], got {features.shape} and {targets.shape}")
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    mean, scale = flat.mean(0), flat.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    x = jnp.asarray((features - mean) / scale, jnp.float32)
    if arm.soft_targets:
        q = jnp.asarray(targets, jnp.float32)
        t = jnp.stack([1.0 - q, q], axis=-1)
    else:
        t = jnp.asarray(targets, jnp.int32)
    prior = float(np.clip(np.mean(targets, dtype=np.float64), 1e-4, 1 - 1e-4))
    params = {"w": jnp.zeros(features.shape[-1], jnp.float32), "b": jnp.asarray(np.log(prior / (1 - prior)), jnp.float32)}
    if init is not None:
        if not (np.allclose(init.mean, mean, rtol=1e-5, atol=1e-6) and np.allclose(init.scale, scale, rtol=1e-5)):
            raise ValueError("init was fitted on other features (its standardisation differs)")
        params = {"w": jnp.asarray(init.params["w"], jnp.float32), "b": jnp.asarray(init.params["b"], jnp.float32)}
    opt, step = _lbfgs_step(arm.loss, tuple(sorted(arm.options.items())), int(memory_size))
    state = opt.init(params)
    history: list[float] = []
    grad_norm = float("nan")
    converged = False
    for _ in range(int(max_steps)):
        new_params, state, value, grad_norm = step(params, state, x, t)
        history.append(float(value))  # loss and gradient at ``params``
        grad_norm = float(grad_norm)
        stalled = len(history) > _STALL and history[-_STALL - 1] - history[-1] <= ftol * max(1.0, abs(history[-1]))
        if grad_norm <= tol or stalled:
            converged = True
            break
        params = new_params
    params = jax.tree.map(np.asarray, params)
    return LogisticFit(params, mean.astype(np.float32), scale.astype(np.float32), history[-1], grad_norm,
                       len(history), converged)


def predict_logistic(fit: LogisticFit, features: np.ndarray) -> np.ndarray:
    """The foreground probabilities ``σ(w·(x − μ)/s + b)`` of a fitted logistic regression.

    Args:
      fit: a :class:`LogisticFit`.
      features: ``[..., F]`` features (as given to :func:`fit_logistic_regression`).

    Returns:
      float64 ``[...]`` probabilities.
    """
    x = (np.asarray(features, np.float64) - fit.mean) / fit.scale
    z = x @ np.asarray(fit.params["w"], np.float64) + float(fit.params["b"])
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# --------------------------------------------------------------------------- small CNN


def class_probabilities(case: Case) -> np.ndarray:
    """The known class probabilities ``[..., C]`` of a case: ``metadata["probs"]`` (MNI tissue
    cases), or ``[1 − q, q]`` from ``metadata["q"]`` (synthetic binary cases).

    >>> from labelset_jax.data import noise_free_case
    >>> class_probabilities(noise_free_case(0, shape=(8, 8, 8), radius=2.0)).shape
    (8, 8, 8, 2)
    """
    if "probs" in case.metadata:
        return np.asarray(case.metadata["probs"], np.float32)
    if "q" in case.metadata:
        q = np.asarray(case.metadata["q"], np.float32)
        return np.stack([1.0 - q, q], axis=-1)
    raise ValueError(f"case {case.id} has no known probabilities (metadata 'probs' or 'q')")


class NetworkFit(NamedTuple):
    """A network fitted full-batch by :func:`fit_network`.

    Attributes:
      model: a :class:`~labelset_jax.evaluation.TrainedModel` (for
        :func:`~labelset_jax.evaluation.predict_case`).
      loss: the training loss at the last step.
      loss_change: the relative decrease of the loss over the last tenth of the steps (near 0
        once the fit has settled).
      grad_norm: the gradient norm at the last step.
      steps: the number of Adam steps.
    """

    model: TrainedModel
    loss: float
    loss_change: float
    grad_norm: float
    steps: int


def fit_network(cases: Sequence[Case], *, arm: str | Arm, model_config, label_space: LabelSpace, steps: int,
                learning_rate: float = 1e-2, seed: int = 0) -> NetworkFit:
    r"""Fits a network to whole training volumes with an arm's loss (full-batch Adam).

    Every step sees all training images at once (normalised by
    :func:`~labelset_jax.data.normalize_image`, as :func:`~labelset_jax.evaluation.predict_case`
    does), so the per-image and the batch Dice are those of the whole training set, and the loss
    decreases smoothly; the learning rate follows a cosine decay to 0 over ``steps``, so the fit
    settles at the end (:attr:`NetworkFit.loss_change`). Arms with ``soft_targets`` are trained
    on :func:`class_probabilities` instead of the drawn labels (the training system's loader
    yields integer labels only, hence this separate fit).

    Args:
      cases: the training cases, all of one shape.
      arm: a key of :data:`ARMS` or an :class:`Arm`.
      model_config: a ``config.model`` for :func:`labelset_jax.models.create_model` (e.g. one
        level, 8 features, no normalisation).
      label_space: the leaves (``C`` output channels).
      steps: the number of full-batch Adam steps.
      learning_rate: the initial learning rate.
      seed: seed of the initial weights.

    Returns:
      A :class:`NetworkFit`.
    """
    import ml_collections
    from flax import nnx

    from labelset_jax.models import create_model

    arm = ARMS[arm] if isinstance(arm, str) else arm
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    images = jnp.asarray(np.stack([normalize_image(c.image) for c in cases])[..., None])
    if arm.soft_targets:
        targets = jnp.asarray(np.stack([class_probabilities(c) for c in cases]))
    else:
        targets = jnp.asarray(np.stack([np.asarray(c.labels, np.int32) for c in cases]))
    model = create_model(model_config, num_classes=label_space.num_classes, rngs=nnx.Rngs(int(seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_fn = arm_loss(arm)
    optimizer = optax.adam(optax.cosine_decay_schedule(float(learning_rate), int(steps)))

    @jax.jit
    def step(params, opt_state):
        def objective(p):
            return loss_fn(nnx.merge(graphdef, p, rest)(images), targets)

        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, optax.global_norm(grads)

    opt_state = optimizer.init(params)
    history = []
    grad_norm = float("nan")
    for _ in range(int(steps)):
        params, opt_state, value, grad_norm = step(params, opt_state)
        history.append(value)
    history = np.asarray(jax.device_get(history), np.float64)
    tail = history[-max(2, len(history) // 10):]
    change = float((tail[0] - tail[-1]) / max(abs(tail[-1]), 1e-12))

    def apply_fn(x, state):
        return nnx.merge(graphdef, state["params"], state["rest"])(x)

    config = ml_collections.ConfigDict({"model": model_config, "loss": arm.loss})
    trained = TrainedModel(jax.jit(apply_fn), {"params": params, "rest": rest}, config, label_space)
    return NetworkFit(trained, float(history[-1]), change, float(grad_norm), int(steps))


def whole_volume_settings(shape: Sequence[int]) -> EvalSettings:
    """Prediction settings of one window covering the whole volume (no sliding, no TTA)."""
    return EvalSettings(roi_size=tuple(int(s) for s in shape), sw_batch_size=1, overlap=0.0, mode="constant",
                        tta=False)


# --------------------------------------------------------------------------- volumes of one case


def volume_row(probs: np.ndarray, *, labels: np.ndarray, q: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Signed volume errors of one foreground prediction, against ``E[V]`` and the realised label.

    Uses :func:`labelset_jax.metrics.volume_error` (soft volume: the sum of the probabilities;
    thresholded volume: the voxels with ``probs > 0.5``) and :func:`~labelset_jax.metrics.dice_score`
    of the thresholded prediction.

    Args:
      probs: ``[...]`` predicted foreground probabilities (or a binary prediction).
      labels: ``[...]`` the realised binary label map.
      q: ``[...]`` the known foreground probabilities.
      spacing: voxel size in mm.

    Returns:
      ``{"expected_ml", "realised_ml", "soft_ml", "hard_ml", "dv_soft_expected_ml",
      "dv_hard_expected_ml", "dv_soft_realised_ml", "dv_hard_realised_ml", "dice"}``.

    >>> row = volume_row(np.array([0.9, 0.6, 0.2]), labels=np.array([1, 0, 0]), q=np.array([1.0, 0.5, 0.0]),
    ...                  spacing=(10.0,))
    >>> round(row["dv_soft_expected_ml"], 3), round(row["dv_hard_realised_ml"], 3), round(row["dice"], 3)
    (0.002, 0.01, 0.667)
    """
    probs = np.asarray(probs, np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    expected = float(np.sum(q, dtype=np.float64)) * voxel_ml
    to_expected = volume_error(probs, expected, spacing=spacing)
    to_realised = volume_error(probs, np.asarray(labels).astype(bool), spacing=spacing)
    return {
        "expected_ml": expected,
        "realised_ml": to_realised.true,
        "soft_ml": expected + to_expected.soft,
        "hard_ml": expected + to_expected.hard,
        "dv_soft_expected_ml": to_expected.soft,
        "dv_hard_expected_ml": to_expected.hard,
        "dv_soft_realised_ml": to_realised.soft,
        "dv_hard_realised_ml": to_realised.hard,
        "dice": float(dice_score((probs > 0.5).astype(np.int32), np.asarray(labels).astype(np.int32), labels=[1],
                                 empty=1.0)[0]),
    }


def volume_rows(probs: np.ndarray, case: Case, *, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """:func:`volume_row` for every foreground class of a case with known probabilities.

    Args:
      probs: ``[..., C]`` predicted class probabilities (e.g. ``predict_case(...).probs``).
      case: the case; its known probabilities come from :func:`class_probabilities`.
      names: the ``C`` class names (default ``class_<c>``).

    Returns:
      One row per class ``c ≥ 1``: ``{"case", "class", **volume_row(...)}``.
    """
    truth = class_probabilities(case)
    probs = np.asarray(probs)
    if probs.shape != truth.shape:
        raise ValueError(f"probs shape {probs.shape} differs from the case's probabilities {truth.shape}")
    names = [f"class_{c}" for c in range(truth.shape[-1])] if names is None else list(names)
    return [{"case": case.id, "class": names[c],
             **volume_row(probs[..., c], labels=np.asarray(case.labels) == c, q=truth[..., c], spacing=case.spacing)}
            for c in range(1, truth.shape[-1])]


def predict(model: TrainedModel, case: Case) -> Prediction:
    """The prediction of a whole (small) volume in one window, by :func:`~labelset_jax.evaluation.predict_case`."""
    return predict_case(model, case.image, whole_volume_settings(case.image.shape))


# --------------------------------------------------------------------------- equivalence


class EquivalenceTest(NamedTuple):
    """The two one-sided tests (TOST) of ``|mean| < margin``.

    Attributes:
      estimate: the mean of the values.
      low, high: the ``1 − 2α`` t confidence interval of the mean (inside ``±margin`` iff
        equivalent).
      pvalue: the larger of the two one-sided p-values.
      equivalent: ``pvalue < α``.
      margin: the equivalence margin.
    """

    estimate: float
    low: float
    high: float
    pvalue: float
    equivalent: bool
    margin: float


def tost_equivalence(values: Sequence[float], *, margin: float, alpha: float = 0.05) -> EquivalenceTest:
    r"""Two one-sided t-tests that the mean of ``values`` lies within ``(−margin, margin)``.

    Tests ``H0: μ ≤ −m`` against ``μ > −m`` and ``H0: μ ≥ m`` against ``μ < m`` with one-sample
    t-tests; equivalence is declared when both reject at level ``α``, i.e. when the
    ``1 − 2α`` confidence interval of the mean lies inside ``(−m, m)``. NaN values are dropped.

    .. math:: p = \max\big(P(T > t_-),\ P(T < t_+)\big), \quad
              t_\pm = \frac{\bar x \mp m}{s/\sqrt n}

    Args:
      values: ``[n]`` per-case values (e.g. signed volume errors).
      margin: the equivalence margin ``m > 0`` (e.g. 5 % of ``E[V]``).
      alpha: the level of each one-sided test.

    Returns:
      An :class:`EquivalenceTest`; NaN (not equivalent) with fewer than two values.

    >>> r = tost_equivalence([0.01, -0.02, 0.0, 0.015, -0.005, 0.01], margin=0.1)
    >>> r.equivalent, r.pvalue < 1e-4
    (True, True)
    >>> tost_equivalence([0.3, 0.25, 0.35, 0.28], margin=0.1).equivalent
    False

    References:
      D. J. Schuirmann, *A comparison of the two one-sided tests procedure and the power approach
      for assessing the equivalence of average bioavailability*, J. Pharmacokinet. Biopharm. 1987.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    x = np.asarray(values, np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    x = x[~np.isnan(x)]
    if x.size < 2:
        nan = float("nan")
        return EquivalenceTest(float(np.mean(x)) if x.size else nan, nan, nan, nan, False, float(margin))
    mean = float(x.mean())
    se = float(x.std(ddof=1) / np.sqrt(x.size))
    if se == 0.0:
        inside = abs(mean) < margin
        return EquivalenceTest(mean, mean, mean, 0.0 if inside else 1.0, inside, float(margin))
    p_low = stats.ttest_1samp(x, -margin, alternative="greater").pvalue
    p_high = stats.ttest_1samp(x, margin, alternative="less").pvalue
    half = float(stats.t.ppf(1.0 - alpha, x.size - 1)) * se
    pvalue = float(max(p_low, p_high))
    return EquivalenceTest(mean, mean - half, mean + half, pvalue, pvalue < alpha, float(margin))
