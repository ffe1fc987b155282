"""Soft-Dice volume bias (Bertels et al., docs/theory.md §5): one training arm per run, on synthetic data
with known label uncertainty q.

    python -m experiments.main --config=configs/volume_bias.py:dice --workdir=runs/vb_dice
    python -m experiments.main --config=configs/volume_bias.py:ce --workdir=runs/vb_ce \
        --config.data.generator=ambiguous_blob --config.data.generator_options.p=0.4

LOSS is one of: ce (cross-entropy), dice (soft Dice per image), dice_batch (soft Dice over the
batch), dice_ce (soft Dice + CE), dice_squared (squared-denominator soft Dice).
"""

import ml_collections

from configs import default

ARMS = {
    "ce": ("cross_entropy", {}),
    "dice": ("soft_dice", {"squared": False}),
    "dice_batch": ("soft_dice", {"squared": False, "batch_dice": True}),
    "dice_ce": ("dice_ce", {"squared": False}),
    "dice_squared": ("soft_dice", {"squared": True}),
}


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
    config.data.generator_options = ml_collections.ConfigDict()
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
    config.eval = ml_collections.ConfigDict(  # the settings the study's evaluation has always used
        dict(roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=2, mode="gaussian", tta=False)
    )
    return config
