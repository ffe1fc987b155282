"""Real FeTA 2021 data (docs/theory.md §4) with the reference architecture and hyper-parameters.

    python -m experiments.main --config=configs/feta.py:/data/feta_2.1 --workdir=runs/feta \
        --config.loss=leaf_dice

The argument is the FeTA root folder (``sub-XXX/anat/sub-XXX_rec-{mial,irtk}_T2w.nii.gz`` and
``..._dseg.nii.gz``). Meant for a GPU: 5-level U-Net 30→320 (≈14 M parameters), patches
144×160×144, batch 3, Adam 1e-3, bf16 compute.
"""

import ml_collections

from configs import default


def get_config(root: str = "") -> ml_collections.ConfigDict:
    config = default.get_config()
    config.num_steps = 50_000
    config.batch_size = 3
    config.patch_size = (144, 160, 144)
    config.loss = "leaf_dice"
    config.learning_rate = 1e-3
    config.optimizer = ml_collections.ConfigDict(dict(name="adam", schedule="constant", grad_clip_norm=0.0))
    config.checkpoint_every = 1000
    config.eval_every = 2000
    config.log_every = 50

    config.data = ml_collections.ConfigDict()
    config.data.name = "feta"
    config.data.root = root
    config.data.reconstruction = ""  # "mial", "irtk" or "" for both
    config.data.num_val = 10
    config.data.label_transform = "none"
    config.data.augment = True
    config.data.foreground_prob = 0.5
    config.data.prefetch = 4

    config.model = ml_collections.ConfigDict()
    config.model.preset = "reference"  # 5 levels, 30→320, instance norm, LeakyReLU 0.01, trilinear
    config.model.dtype = "bfloat16"
    config.model.remat = True
    config.model.deep_supervision = False

    config.eval = ml_collections.ConfigDict(
        dict(roi_size=(144, 160, 144), overlap=0.5, sw_batch_size=2, mode="gaussian", tta=True)
    )
    return config
