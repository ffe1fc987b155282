"""The label-set comparison of Fidon et al. 2021 (docs/theory.md §4) on embedded phantoms: one method per run.

    python -m experiments.main --config=configs/partial_supervision.py:leaf_dice --workdir=runs/ps_leaf_dice
    python -m experiments.main --config=configs/partial_supervision.py:leaf_dice,paper --workdir=runs/ps_paper

The study design of the paper: a few fully segmented *normal* atlases, and a partially annotated
cohort under the three protocols (sets 9, 10, 11) of which half the brains are abnormal
(ventriculomegaly, a small cerebellum moved down and forward, as in open spina bifida), so that the
partial annotations show anatomy the atlases lack. The data are a function of ``config.data.seed``
alone (a data seed), so runs with different ``config.seed`` share the cohort. Every batch holds a
fraction ``config.data.full_fraction`` of atlas samples (balanced by default; ``None`` samples the
cases uniformly, as the paper did). ``config.study`` holds what the study driver
(``experiments/partial_supervision_study.py``) adds: run seeds and the held-out test set.

ARG is ``METHOD`` or ``METHOD,SCALE``. METHOD is one of:
  full_only      mean soft Dice on the fully segmented volumes only;
  naive          soft Dice on every volume, label-set voxels treated as background;
  soft_target    Dice of the raw softmax against the uniform set target Φ(g) (not a label-set loss);
  marginal_dice  marginal Dice (label-set loss);
  leaf_dice      leaf-Dice (label-set loss);
  leaf_dice_ce   leaf-Dice + marginal cross-entropy;
  marginal_ce    marginal cross-entropy.
SCALE is ``cpu`` (default: 40³ phantoms, a small U-Net, 1,500 steps, the number the committed pilot
chose (README, docs/results/partial_supervision_pilot); the study's 30 runs, 6 methods × 5 seeds,
took 80 minutes on 2 CPU cores, measured), ``paper`` (a GPU: 96³ phantoms, the reference U-Net, 6
atlases + 60 partial cases, 3,000 steps, 10 seeds) or ``smoke`` (seconds, for tests).
"""

import ml_collections

from configs import default

# method -> (loss, label transform)
METHODS = {
    "full_only": ("soft_dice", "full_only"),
    "naive": ("soft_dice", "naive"),
    "soft_target": ("soft_target_dice", "none"),
    "marginal_dice": ("marginal_dice", "none"),
    "leaf_dice": ("leaf_dice", "none"),
    "leaf_dice_ce": ("leaf_dice_ce", "none"),
    "marginal_ce": ("marginal_cross_entropy", "none"),
}

#: The methods the study compares by default (marginal_ce is available, not part of the paper's table).
STUDY_METHODS = ("full_only", "naive", "soft_target", "marginal_dice", "leaf_dice", "leaf_dice_ce")

SCALES = ("cpu", "paper", "smoke")


def get_config(arg: str = "leaf_dice") -> ml_collections.ConfigDict:
    method, _, scale = arg.partition(",")
    scale = scale or "cpu"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {list(SCALES)}")
    config = default.get_config()
    config.method = method
    config.loss, config.data.label_transform = METHODS[method]
    default.paper_dice_constants(config)

    data = config.data
    data.seed = 0  # the data seed: cohort, validation and test cases; config.seed is the run seed
    data.augment = True
    data.foreground_prob = 0.7
    data.full_fraction = 0.5  # balanced: one atlas and one partial case per batch of 2; None = uniform
    data.abnormal_fraction = 0.5  # of each partial protocol's cases; the atlases are normal
    if scale in ("cpu", "smoke"):
        data.shape = (40, 40, 40)
        # 2 normal atlases; 12 partial cases, 4 per protocol, of which 2 abnormal.
        data.protocols = ml_collections.ConfigDict(dict(full=2, wm_vent_cereb=4, plus_ecsf=4, plus_ecsf_cc=4))
        data.num_val = 4  # fully segmented validation phantoms for the convergence check, 2 of them abnormal
        data.val_abnormal = 2
        config.num_steps = 1500  # from the pilot: every method within 0.01 of its 2,000-step validation Dice
        config.batch_size = 2
        config.patch_size = (32, 32, 32)
        config.model.preset = "small"
        config.model.num_levels = 3
        config.model.base_features = 8
        config.model.max_features = 32
        config.checkpoint_every = 100
        config.eval_every = 100
        config.eval.roi_size = (32, 32, 32)
        config.eval.overlap = 0.25
        if scale == "smoke":
            data.shape = (32, 32, 32)
            data.protocols = ml_collections.ConfigDict(dict(full=1, wm_vent_cereb=1, plus_ecsf=1, plus_ecsf_cc=0))
            data.num_val, data.val_abnormal = 2, 1
            data.prefetch = 0
            config.eval_every = 1
            config.num_steps = 2
            config.patch_size = (16, 16, 16)
            config.model.num_levels, config.model.base_features, config.model.max_features = 2, 4, 8
            config.eval.roi_size = (16, 16, 16)
    else:
        data.shape = (96, 96, 96)
        data.protocols = ml_collections.ConfigDict(dict(full=6, wm_vent_cereb=20, plus_ecsf=20, plus_ecsf_cc=20))
        data.num_val = 4
        config.num_steps = 3000
        config.batch_size = 2
        config.patch_size = (64, 64, 64)
        config.learning_rate = 1e-3
        config.model.preset = "reference"
        config.checkpoint_every = 500
        config.eval_every = 1000
        config.eval.roi_size = (64, 64, 64)
        config.eval.overlap = 0.5
        config.eval.sw_batch_size = 4
    config.eval.tta = False

    # What the study driver adds to the runs: run seeds and the held-out, fully segmented test set
    # (seeds 1000 * data.seed + test_seed_offset + i; normal cases first).
    sizes = {"cpu": (5, 10), "paper": (10, 20), "smoke": (2, 1)}  # run seeds, test cases per group
    config.study = ml_collections.ConfigDict(dict(
        seeds=sizes[scale][0],
        num_test_normal=sizes[scale][1],
        num_test_abnormal=sizes[scale][1],
        test_seed_offset=200_000,
    ))
    return config
