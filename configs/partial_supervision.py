"""The label-set comparison of Fidon et al. 2021 (docs/theory.md §4) on embedded phantoms: one method per run.

    python -m experiments.main --config=configs/partial_supervision.py:leaf_dice --workdir=runs/ps_leaf_dice

METHOD is one of:
  full_only      mean soft Dice on the fully segmented volumes only;
  naive          soft Dice on every volume, label-set voxels treated as background;
  soft_target    Dice of the raw softmax against the uniform set target Φ(g) (not a label-set loss);
  marginal_dice  marginal Dice (label-set loss);
  leaf_dice      leaf-Dice (label-set loss);
  leaf_dice_ce   leaf-Dice + marginal cross-entropy;
  marginal_ce    marginal cross-entropy.
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


def get_config(method: str = "leaf_dice") -> ml_collections.ConfigDict:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    config = default.get_config()
    config.method = method
    config.loss, config.data.label_transform = METHODS[method]
    # Few atlases, many partial volumes: the regime where the label-set losses matter.
    config.data.protocols = ml_collections.ConfigDict(
        dict(full=2, wm_vent_cereb=4, plus_ecsf=4, plus_ecsf_cc=4)
    )
    config.data.num_val = 4
    return config
