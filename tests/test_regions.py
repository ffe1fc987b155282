"""Region datasets (BraTS-style labels): leaves inferred from the regions, trained on leaves, scored per region."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from configs import dataset as dataset_config
from labelset_jax import input_pipeline, train
from tests.helpers import tiny
from labelset_jax.data.nnunet import label_space_from_json, read_dataset, write_dataset
from labelset_jax.evaluation import EvalSettings, evaluate_cases

BRATS_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}


def nested_blob(seed: int, shape=(24, 24, 24)):
    """Three nested spheres: oedema (1) around a core of necrosis (2) around enhancing tumour (3)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(9, 15, 3)
    r = np.linalg.norm(np.indices(shape).transpose(1, 2, 3, 0) - centre, axis=-1)
    labels = np.select([r < 2.5, r < 4.5, r < 7.0], [3, 2, 1], 0).astype(np.int32)
    image = (np.array([0.0, 1.0, 2.0, 3.0])[labels] + rng.normal(0, 0.2, shape)).astype(np.float32)
    return SimpleNamespace(id=f"case_{seed:02d}", image=image, labels=labels, affine=np.eye(4))


def test_region_labels_infer_leaves_and_are_scored_per_region(tmp_path):
    space = label_space_from_json({"labels": BRATS_LABELS})
    assert space.names == ("background", "label_1", "label_2", "enhancing_tumor")
    assert [space.name_of(i) for i in space.region_ids] == ["whole_tumor", "tumor_core"]
    root = tmp_path / "Dataset010_Blobs"
    write_dataset(root, [nested_blob(i) for i in range(5)], space=space, channel_names=["T1"])
    dataset = read_dataset(root)
    assert dataset.space == space and all(c.is_full for c in dataset.training)  # regions are not partial labels

    config = tiny(dataset_config.get_config(str(root)), num_steps=2, checkpoint_every=2)
    config.data.num_val = 1
    result = train.train_and_evaluate(config, tmp_path / "run")
    assert np.isfinite(result["train/loss"])
    model = train.load_trained(tmp_path / "run")
    assert model.label_space == space  # the regions travel with the run
    val = input_pipeline.create_datasets(config.data, seed=0).val
    rows = evaluate_cases(model, val, EvalSettings.from_config(config))
    row = rows[0]
    for name in ("whole_tumor", "tumor_core"):
        assert 0.0 <= row[f"dice_{name}"] <= 1.0 and np.isfinite(row[f"hd95_{name}"])
        assert np.isfinite(row[f"dvol_soft_{name}"])
    assert "dice_label_1" in row and "dice_enhancing_tumor" in row


def test_region_dice_is_the_dice_of_the_union_of_its_leaves():
    from labelset_jax.data import Case
    from labelset_jax.evaluation import Prediction, score_case

    space = label_space_from_json({"labels": BRATS_LABELS})
    truth = nested_blob(1).labels
    pred = np.where(truth == 1, 2, truth)  # oedema called necrosis: whole tumour perfect, core over-segmented
    probs = np.eye(4, dtype=np.float32)[pred]
    case = Case("c", np.zeros(truth.shape, np.float32), truth, (1.0, 1.0, 1.0), "full", np.eye(4))
    row = score_case(case, Prediction(probs, pred), space, hd95=False)
    assert row["dice_whole_tumor"] == 1.0
    core_true, core_pred = np.isin(truth, [2, 3]).sum(), np.isin(pred, [2, 3]).sum()
    assert np.isclose(row["dice_tumor_core"], 2 * core_true / (core_true + core_pred))


def test_ct_channel_is_normalised_with_dataset_statistics_saved_with_the_run(tmp_path):
    """A channel named CT is clipped to the dataset's foreground 0.5-99.5 percentiles and z-scored with
    dataset statistics (nnU-Net's CT scheme); the statistics travel with the run to evaluation."""
    space = label_space_from_json({"labels": BRATS_LABELS})
    cases = []
    for i in range(4):
        case = nested_blob(i)
        hu = np.array([-1000.0, 40.0, 60.0, 120.0])[case.labels] + np.random.default_rng(i).normal(0, 5, case.labels.shape)
        cases.append(SimpleNamespace(id=case.id, image=hu.astype(np.float32), labels=case.labels, affine=case.affine))
    root = tmp_path / "Dataset011_CT"
    write_dataset(root, cases, space=space, channel_names=["CT"])
    config = tiny(dataset_config.get_config(str(root)), num_steps=1, eval_every=1)
    config.data.num_val = 1
    train.train_and_evaluate(config, tmp_path / "run")
    model = train.load_trained(tmp_path / "run")
    stats = model.config.data.intensity[0]
    foreground = np.concatenate([c.image[c.labels != 0] for c in cases])
    assert 20.0 < stats["low"] < 40.0 and 120.0 < stats["high"] < 140.0  # the foreground's, not the air's
    assert abs(stats["mean"] - foreground.mean()) < 3.0
    from labelset_jax.data import normalize_image

    normalised = normalize_image(cases[0].image, intensity=list(model.config.data.intensity))
    assert normalised.min() == (stats["low"] - stats["mean"]) / stats["std"]  # air clipped, not z-scored per image
    rows = evaluate_cases(model, input_pipeline.create_datasets(config.data, seed=0).val,
                          EvalSettings.from_config(model.config))
    assert np.isfinite(rows[0]["dice_whole_tumor"])
