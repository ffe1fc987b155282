"""Your own dataset: an nnU-Net raw dataset folder, optionally with label sets (docs/theory.md §1).

    python -m experiments.main --config=configs/dataset.py:/path/to/DatasetXXX_Name \
        --workdir=runs/mine --config.loss=marginal_dice

The argument is the dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``; see
:mod:`labelset_jax.data.nnunet` and the README's "Bring your own data"). The label space comes from
``dataset.json`` and is saved with the run. Validation cases are fold ``data.fold`` of the folder's
``splits_final.json``/``splits.json`` when it has one, else ``data.num_val`` fully annotated cases
drawn with ``data.split_seed`` (``-1``: a fifth of them, at least one). Every other field is
``configs/default.py``'s, sized for a CPU; raise ``num_steps``, ``patch_size`` and the model for real
data (``configs/feta.py`` has the reference settings).
"""

import ml_collections

from configs import default


def get_config(path: str = "") -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data = ml_collections.ConfigDict()
    config.data.name = "nnunet"
    config.data.path = path
    config.data.fold = 0
    config.data.num_val = -1
    config.data.split_seed = 0
    config.data.label_transform = "none"  # "naive": label sets -> background; "full_only": drop partial cases
    config.data.augment = True
    config.data.foreground_prob = 0.5
    config.data.prefetch = 2
    return config
