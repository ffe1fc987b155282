"""The merge study: one network from a healthy-atlas dataset and a lesion-cohort dataset, merged.

    python -m experiments.merge_study --seeds=5 --workdir=runs/merge_study_6000 --results=docs/results/merge_study_6000

ARG is ``METHOD`` or ``METHOD,SCALE``; the driver (``experiments/merge_study.py``) writes the
datasets and sets ``config.data.path`` to the merged one. Every run goes through the ordinary
dataset path (``configs/dataset.py``). METHOD is one of:

  a_only         soft Dice on the atlases alone (they cannot know the lesion);
  naive          soft Dice on the merged data with every label set as background;
  marginal_ce    marginal cross-entropy (label-set loss);
  marginal_dice  marginal Dice (label-set loss);
  leaf_dice      leaf-Dice (label-set loss);
  leaf_dice_ce   leaf-Dice + marginal cross-entropy.

SCALE is ``cpu`` (default: MNI152 brains at 4 mm, 3 run seeds, 6,000 steps: 7-10 minutes a run on
2 CPU cores; the README's results are 5 run seeds, ``--seeds=5``) or ``smoke`` (seconds, for tests).
"""

import ml_collections

from configs import dataset, default

# method -> (loss, label transform, sources trained on; empty = all)
METHODS = {
    "a_only": ("soft_dice", "naive", ("atlases",)),
    "naive": ("soft_dice", "naive", ()),
    "marginal_ce": ("marginal_cross_entropy", "none", ()),
    "marginal_dice": ("marginal_dice", "none", ()),
    "leaf_dice": ("leaf_dice", "none", ()),
    "leaf_dice_ce": ("leaf_dice_ce", "none", ()),
}
SCALES = ("cpu", "smoke")


def get_config(arg: str = "leaf_dice") -> ml_collections.ConfigDict:
    method, _, scale = arg.partition(",")
    scale = scale or "cpu"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {list(SCALES)}")
    config = dataset.get_config("")
    config.method = method
    config.loss, config.data.label_transform, sources = METHODS[method]
    default.paper_dice_constants(config)
    config.data.sources = list(sources)
    config.data.num_val = 2  # drawn in turn from each source (no case of a merged dataset is fully annotated)
    config.data.foreground_prob = 0.5
    # The 2,000-step pilot (docs/results/merge_study_pilot) and the 3,000-step runs (docs/results/merge_study)
    # had not plateaued; the README's results are from 6,000 steps (docs/results/merge_study_6000).
    config.num_steps = 6000
    config.patch_size = (32, 32, 32)
    config.model.num_levels = 3
    config.model.base_features = 8
    config.model.max_features = 32
    config.checkpoint_every = 250
    config.eval_every = 100
    config.eval.roi_size = (32, 32, 32)
    config.eval.overlap = 0.25
    # What the driver adds: the data (MNI152 brains at voxel_size mm: atlases, lesion brains, test
    # brains) and the run seeds.
    voxel_size, num_atlases, num_lesion, num_test, seeds = {"cpu": (4, 6, 12, 10, 3), "smoke": (8, 2, 2, 2, 2)}[scale]
    config.study = ml_collections.ConfigDict(dict(voxel_size=voxel_size, num_atlases=num_atlases,
                                                  num_lesion=num_lesion, num_test=num_test, seeds=seeds, data_seed=0))
    if scale == "smoke":
        config.num_steps = 2
        config.patch_size = (16, 16, 16)
        config.model.num_levels, config.model.base_features, config.model.max_features = 2, 4, 8
        config.checkpoint_every = 2
        config.eval_every = 1
        config.eval.roi_size = (16, 16, 16)
        config.data.prefetch = 0
    return config
