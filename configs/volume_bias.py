"""Soft-Dice volume bias (Bertels et al., docs/theory.md §5): one arm per training run, and the study's settings.

One arm through the training system (patches, checkpoints, report), on synthetic data with known
label uncertainty q:

    python -m experiments.main --config=configs/volume_bias.py:dice --workdir=runs/vb_dice
    python -m experiments.main --config=configs/volume_bias.py:ce --workdir=runs/vb_ce \
        --config.data.generator=ambiguous_blob --config.data.generator_options.p=0.45 \
        --config.data.generator_options.stratified=True

ARM is one of the arms of :data:`labelset_jax.volume_bias.ARMS` trained on drawn labels: ce
(cross-entropy), dice (soft Dice per image), dice_batch (soft Dice over the batch), dice_squared
(squared-denominator soft Dice), dice_ce (soft Dice + CE); the Dice arms score the foreground
only. The Dice semimetric arm trains on soft targets, which the training system's loader does not
yield: the study fits it with :func:`labelset_jax.volume_bias.fit_network`.

:func:`study_config` holds the settings of ``experiments/volume_bias_study.py``: the tasks, their
sizes, the models (per-voxel logistic regression, a small CNN) and the arms, at the ``cpu`` scale
(about 25 minutes on 2 CPU cores) or the ``smoke`` scale (seconds, for tests).
"""

import ml_collections

from configs import default
from labelset_jax import volume_bias

#: Arms trainable by the training system (drawn integer labels): name -> (loss, options).
ARMS = {name: (arm.loss, dict(arm.options)) for name, arm in volume_bias.ARMS.items() if not arm.soft_targets}


def get_config(loss: str = "dice") -> ml_collections.ConfigDict:
    if loss not in ARMS:
        raise ValueError(f"unknown arm {loss!r}; choose one of {sorted(ARMS)}")
    config = default.get_config()
    config.arm = loss
    config.loss, options = ARMS[loss]
    config.loss_options = ml_collections.ConfigDict(options)
    config.num_steps = 300
    config.batch_size = 4
    config.patch_size = (32, 32, 32)
    config.learning_rate = 3e-3
    config.checkpoint_every = 100
    config.eval_every = 100

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic"
    config.data.generator = "boundary_noise"
    config.data.generator_options = ml_collections.ConfigDict(dict(radius=5.0, tau=2.0))
    config.data.shape = (32, 32, 32)
    config.data.num_train = 16
    config.data.num_val = 8
    config.data.label_transform = "none"
    config.data.augment = False
    config.data.foreground_prob = 0.0
    config.data.prefetch = 2

    config.model.num_levels = 3
    config.model.base_features = 8
    config.model.max_features = 32
    config.eval = ml_collections.ConfigDict(
        dict(roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=2, mode="gaussian", tta=False)
    )
    return config


def _task(model, source, options, shape, num_train, num_test, arms, *, steps=0, ps=()):
    return ml_collections.ConfigDict(dict(model=model, source=source, options=options, shape=shape,
                                          num_train=num_train, num_test=num_test, arms=list(arms), steps=steps,
                                          ps=list(ps)))


def study_config(scale: str = "cpu") -> ml_collections.ConfigDict:
    """The volume-bias study: tasks x arms for a logistic regression (``lr``) and a small CNN (``cnn``).

    Each task: ``model`` (``lr`` or ``cnn``), ``source`` (a generator of
    :mod:`labelset_jax.data.synthetic`, or ``mni`` for :func:`labelset_jax.data.mni_cohort`), its
    ``options``, the volume ``shape``, ``num_train`` / ``num_test`` cases (training seeds
    ``0..``, test seeds from ``test_seed_offset``), the ``arms``, the CNN's Adam ``steps``, and for
    the ambiguous blob the probabilities ``ps`` (one fit per ``p``). Blobs are drawn stratified
    (:func:`labelset_jax.data.synthetic.blob_included`): ``N = 20`` training seeds hold the
    ambiguous blob in exactly ``20·p`` cases, and the independent blobs of the training cases are
    included in the share ``p`` (to within one blob), so that the training data show ``p``. The
    independent-blob geometry keeps ``p = 0.45`` well above the soft-Dice threshold ``D*/2``
    (about 0.36 here) so that the optimum includes the blobs.
    """
    if scale not in ("cpu", "smoke"):
        raise ValueError(f"unknown scale {scale!r}; choose cpu or smoke")
    all_arms = list(volume_bias.ARMS)
    ps = [0.1, 0.3, 0.45, 0.55, 0.7, 0.9]
    boundary5 = dict(radius=5.0, tau=2.0, jitter=1.0)
    boundary4 = dict(radius=4.0, tau=2.0, jitter=1.0)
    config = ml_collections.ConfigDict()
    config.test_seed_offset = 100_000
    config.num_resamples = 10_000
    config.margin = 0.05  # CE's equivalence margin, a fraction of E[V]
    config.lr = ml_collections.ConfigDict(dict(degree=3, max_steps=500))
    config.cnn = ml_collections.ConfigDict(dict(
        model=dict(preset="small", num_levels=1, base_features=8, max_features=8, norm="none"),
        learning_rate=1e-2,
    ))
    config.tasks = ml_collections.ConfigDict(dict(
        # (a) logistic regression, every arm, converged by L-BFGS
        lr_boundary=_task("lr", "boundary_noise", boundary5, (24, 24, 24), 20, 10, all_arms),
        lr_blobs=_task("lr", "independent_blobs", dict(k=8, p=0.45, object_radius=4.0, stratified=True),
                       (48, 48, 48), 8, 8, all_arms),
        lr_noise_free=_task("lr", "noise_free", dict(radius=5.0, jitter=1.0), (24, 24, 24), 20, 10, all_arms),
        lr_blob=_task("lr", "ambiguous_blob", dict(object_radius=5.0, blob_radius=3.5), (24, 24, 24), 20, 10,
                      all_arms, ps=ps),
        # (b) the small CNN: boundary noise, independent blobs, the noise-free control
        cnn_boundary=_task("cnn", "boundary_noise", boundary4, (20, 20, 20), 4, 16, all_arms, steps=600),
        cnn_blobs=_task("cnn", "independent_blobs",
                        dict(k=4, p=0.45, object_radius=3.0, blob_radius=3.0, stratified=True), (24, 24, 24), 4, 16,
                        all_arms, steps=600),
        cnn_noise_free=_task("cnn", "noise_free", dict(radius=4.0, jitter=1.0), (20, 20, 20), 4, 16,
                             ["ce", "dice"], steps=600),
        # (c) the ambiguous blob, stratified, across p
        cnn_blob=_task("cnn", "ambiguous_blob", dict(object_radius=3.0, blob_radius=2.5), (16, 16, 16), 20, 10,
                       ["ce", "dice"], steps=400, ps=ps),
        # (d) MNI152 tissues (4 classes), spatial augmentation only, 8 mm; 3,200 steps: the pilots at
        # 1,600 and 3,200 steps (docs/results/volume_bias_mni_*) moved every arm's Dice by < 0.015 and
        # CE's volumes by < 3 ml, but the Dice arms' CSF volume still falls (README)
        cnn_mni=_task("cnn", "mni", dict(voxel_size=8, intensity=False), (25, 30, 24), 8, 16, all_arms, steps=3200),
    ))
    if scale == "smoke":
        for name, task in config.tasks.items():
            task.num_train, task.num_test = (2, 2) if not task.ps else (4, 2)
            task.steps = min(task.steps, 2)
            task.arms = task.arms[:2]
            task.ps = task.ps[2:4]
        config.tasks.lr_blobs.shape = (32, 32, 32)
        config.tasks.lr_blobs.options = dict(k=3, p=0.45, stratified=True)
        config.lr.max_steps = 3
        config.num_resamples = 200
    return config
