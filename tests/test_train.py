"""The training system: one-step smoke tests of every config, resumption, determinism,
1 vs 4 devices, non-finite losses, overfitting one phantom, deep supervision."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import default, feta, partial_supervision, volume_bias
from labelset_jax import input_pipeline, train
from labelset_jax.evaluation import EvalSettings, predict_case
from labelset_jax.metrics import dice_score
from labelset_jax.models import create_model
from labelset_jax.writers import read_jsonl
from tests.helpers import tiny, trajectory_config

ROOT = Path(__file__).resolve().parents[1]




CONFIGS = [("default", default.get_config())]
CONFIGS += [(f"partial_supervision:{m}", partial_supervision.get_config(m)) for m in partial_supervision.METHODS]
CONFIGS += [(f"volume_bias:{a}", volume_bias.get_config(a)) for a in volume_bias.ARMS]


@pytest.mark.parametrize("name, config", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_one_step_smoke(name, config, tmp_path):
    result = train.train_and_evaluate(tiny(config, num_steps=1, eval_every=1), tmp_path)
    assert np.isfinite(result["train/loss"])
    assert 0.0 <= result["val/dice_mean"] <= 1.0
    assert (tmp_path / "results.json").exists() and (tmp_path / "checkpoints").exists()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert records[0]["step"] == 1 and "train/loss" in records[0]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_every_config_has_the_required_fields():
    for _, config in CONFIGS + [("feta", feta.get_config("/nowhere"))]:
        for field in train.REQUIRED_FIELDS:
            assert field in config, field


def test_feta_config_with_a_missing_folder_is_a_clear_error(tmp_path):
    config = tiny(default.get_config())
    config.data = feta.get_config(str(tmp_path / "missing")).data
    with pytest.raises(ValueError, match="missing: not a folder"):
        train.train_and_evaluate(config, tmp_path / "run")


def test_bad_config_fields_are_named(tmp_path):
    config = tiny(default.get_config(), loss="dice")
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        train.train_and_evaluate(config, tmp_path)
    with pytest.raises(ValueError, match=r"config.batch_size must be a positive integer, got 0"):
        train.train_and_evaluate(tiny(default.get_config(), batch_size=0), tmp_path / "zero")
    assert not (tmp_path / "zero").exists(), "rejected before any work"


@pytest.mark.xdist_group("multi_device")
def test_batch_size_must_split_evenly_over_the_devices(multi_device):
    assert multi_device["batch"] == {
        "4": "ok", "3": "config.batch_size=3 must be divisible by the number of devices (4)"}


def test_resume_gives_the_same_next_step_loss(tmp_path):
    config = tiny(default.get_config(), num_steps=3, checkpoint_every=2, eval_every=0)
    train.train_and_evaluate(config, tmp_path / "straight")
    straight = {r["step"]: r["train/loss"] for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl")}

    stopped = ml_collections.ConfigDict(config.to_dict())
    stopped.num_steps = 2
    train.train_and_evaluate(stopped, tmp_path / "resumed")
    train.train_and_evaluate(config, tmp_path / "resumed")  # resumes from step 2
    resumed = {r["step"]: r["train/loss"] for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")}
    assert resumed[3] == pytest.approx(straight[3], rel=1e-6)


def test_rerunning_a_finished_run_keeps_its_results(tmp_path):
    """`make run` twice: the second resumes at the last step and must not report a NaN loss."""
    config = tiny(default.get_config(), num_steps=2, eval_every=2, checkpoint_every=2)
    first = train.train_and_evaluate(config, tmp_path)
    again = train.train_and_evaluate(config, tmp_path)
    assert np.isfinite(first["train/loss"])
    assert again == first


def test_a_trained_run_is_never_overwritten_by_other_settings(tmp_path):
    config = tiny(default.get_config(), num_steps=2, eval_every=0, checkpoint_every=2)
    train.train_and_evaluate(config, tmp_path)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for field, value, shown in [("loss", "marginal_dice", "loss ('leaf_dice' -> 'marginal_dice')"),
                                ("patch_size", (16, 16, 32), "patch_size"),
                                ("seed", 5, "seed (0 -> 5)")]:
        other = ml_collections.ConfigDict(config.to_dict())
        other[field] = value
        with pytest.raises(ValueError, match=r"holds a trained run with other settings: " + re.escape(shown)):
            train.train_and_evaluate(other, tmp_path)
    other = ml_collections.ConfigDict(config.to_dict())
    other.data.shape = (40, 40, 40)  # other data: the model would silently train on it
    with pytest.raises(ValueError, match=r"data.shape"):
        train.train_and_evaluate(other, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == saved, "nothing rewritten"
    # The schedule may change when continuing; the old values are kept in config_history.jsonl.
    longer = ml_collections.ConfigDict(config.to_dict())
    longer.num_steps = 3
    train.train_and_evaluate(longer, tmp_path)
    history = read_jsonl(tmp_path / "config_history.jsonl")
    assert history[-1]["changed"] == {"num_steps": [2, 3]}
    assert json.loads((tmp_path / "config.json").read_text())["num_steps"] == 3


def test_zero_steps_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match=r"config.num_steps must be >= 1 \(got 0\)"):
        train.train_and_evaluate(tiny(default.get_config(), num_steps=0), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_no_validation_cases_skip_validation_without_nan(tmp_path, recwarn):
    config = tiny(default.get_config(), num_steps=2, eval_every=1, checkpoint_every=2)
    config.data.num_val = 0
    result = train.train_and_evaluate(config, tmp_path)
    assert set(result) == {"train/loss"} and np.isfinite(result["train/loss"])
    assert not [w for w in recwarn if "Mean of empty slice" in str(w.message)]
    assert not any(k.startswith("val/") for r in read_jsonl(tmp_path / "metrics.jsonl") for k in r)


def test_startup_summary_names_sources_spacing_and_sets():
    config = tiny(default.get_config())
    datasets = input_pipeline.create_datasets(config.data, seed=0)
    lines = train.startup_summary(config, datasets)
    assert lines[0] == "training cases: 4 (phantoms: 1 fully, 3 partially annotated)"
    assert lines[1] == "validation cases: 1"
    assert "(3.0, 3.0, 3.0) mm" in lines[2] and "loss leaf_dice" in lines[2]
    assert "set_11={cortical_gm, deep_gm, brainstem}" in lines[3]


def test_a_manifest_folder_trains_with_the_label_space_it_declares(tmp_path):
    """A cohort written as NIfTI files + manifest.csv + label_space.json is a data source: the space
    and what each case annotates come from the folder, the validation cases are fully annotated."""
    from labelset_jax import data as data_lib

    cohort = data_lib.phantom_cohort({"full": 2, "wm_vent_cereb": 2}, shape=(24, 24, 24))
    manifest = data_lib.write_cohort(tmp_path / "cohort", cohort)
    config = tiny(default.get_config())
    config.data = ml_collections.ConfigDict(dict(name="manifest", manifest=str(manifest), num_val=1, augment=False,
                                                 foreground_prob=0.5, prefetch=0, label_transform="none"))
    datasets = input_pipeline.create_datasets(config.data, seed=0)
    assert datasets.label_space == cohort.space
    assert [c.is_full for c in datasets.val] == [True] and len(datasets.train) == 3
    assert {c.annotated for c in datasets.train if not c.is_full} == {(0, 1, 2, 3)}
    # a run's recorded validation cases: only they are loaded
    only = input_pipeline.create_datasets(config.data, seed=0, train=False, val_ids=["phantom_0003"])
    assert [c.id for c in only.val] == ["phantom_0003"] and only.train == []
    with pytest.raises(ValueError, match="no case 'nope'"):
        input_pipeline.create_datasets(config.data, seed=0, train=False, val_ids=["nope"])
    (tmp_path / "cohort" / "label_space.json").unlink()
    with pytest.raises(ValueError, match=r"cohort/label_space\.json: missing"):
        input_pipeline.create_datasets(config.data, seed=0)


def test_load_trained_reads_without_writing(tmp_path):
    config = tiny(default.get_config(), num_steps=1, eval_every=0, checkpoint_every=1)
    train.train_and_evaluate(config, tmp_path / "run")
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "run").rglob("*"))
    train.load_trained(tmp_path / "run")  # no best/ checkpoint: the latest
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "run").rglob("*")) == before
    interrupted = tmp_path / "interrupted"  # stopped before its first checkpoint
    interrupted.mkdir()
    (interrupted / "config.json").write_text(config.to_json_best_effort())
    with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
        train.load_trained(interrupted)
    assert [p.name for p in interrupted.iterdir()] == ["config.json"]


def test_ctrl_c_keeps_the_checkpoint_and_says_where_to_resume(tmp_path, monkeypatch):
    config = tiny(default.get_config(), num_steps=4, eval_every=0, checkpoint_every=2)
    real = input_pipeline.create_loader

    def interrupting_loader(cfg, cases, space):
        loader = real(cfg, cases, space)
        count = {"n": 0}
        original_next = type(loader).__next__

        class Wrapped(type(loader)):
            def __next__(self):
                count["n"] += 1
                if count["n"] == 4:
                    raise KeyboardInterrupt
                return original_next(self)

        loader.__class__ = Wrapped
        return loader

    monkeypatch.setattr(input_pipeline, "create_loader", interrupting_loader)
    with pytest.raises(train.Interrupted, match="interrupted at step 3; rerun the same command to resume from step 2"):
        train.train_and_evaluate(config, tmp_path)
    monkeypatch.setattr(input_pipeline, "create_loader", real)
    result = train.train_and_evaluate(config, tmp_path)  # resumes from step 2
    assert np.isfinite(result["train/loss"])
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")][-1] == 4


def test_same_seed_same_trajectory(tmp_path):
    config = tiny(default.get_config(), num_steps=3, eval_every=0, checkpoint_every=10)
    a = train.train_and_evaluate(config, tmp_path / "a")
    b = train.train_and_evaluate(config, tmp_path / "b")
    assert a["train/loss"] == b["train/loss"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny(default.get_config(), num_steps=4, checkpoint_every=1, eval_every=0)
    config.learning_rate = 1e30  # diverges
    config.optimizer.grad_clip_norm = 0.0
    config.optimizer.schedule = "constant"
    config.optimizer.name = "sgd"
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        train.train_and_evaluate(config, tmp_path)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved, "the good steps were checkpointed"
    for record in read_jsonl(tmp_path / "metrics.jsonl"):
        assert np.isfinite(record["train/loss"]) or record["step"] > max(saved)


@pytest.mark.xdist_group("multi_device")
def test_one_and_four_devices_give_the_same_trajectory(multi_device, tmp_path):
    """The data-parallel loop over 4 devices (tests/multi_device_checks.py) follows the losses of
    this process's single device."""
    assert jax.device_count() == 1
    train.train_and_evaluate(trajectory_config(), tmp_path)
    single = [r["train/loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    np.testing.assert_allclose(multi_device["trajectory"], single, rtol=2e-4)


def test_tiny_model_overfits_one_phantom(tmp_path):
    """Dice > 0.9 on the training phantom itself within a small step budget."""
    config = tiny(default.get_config(), num_steps=150, eval_every=0, checkpoint_every=1000)
    config.loss = "soft_dice"
    config.learning_rate = 1e-2
    config.patch_size = (32, 32, 32)
    config.eval.roi_size = (32, 32, 32)
    config.model.num_levels = 3
    config.model.base_features = 8
    config.model.max_features = 16
    config.data.protocols = {"full": 1}
    config.data.augment = False
    config.data.foreground_prob = 0.0
    train.train_and_evaluate(config, tmp_path)
    model = train.load_trained(tmp_path, best=False)
    case = input_pipeline.create_datasets(config.data, seed=config.seed).train[0]
    prediction = predict_case(model, case.image, EvalSettings.from_config(model.config))
    scores = dice_score(prediction.labels, case.labels, labels=range(1, model.label_space.num_classes))
    assert np.nanmean(scores) > 0.9, scores


def test_deep_supervision_and_remat_train(tmp_path):
    config = tiny(default.get_config(), num_steps=1, eval_every=1)
    config.model.num_levels = 3
    config.model.deep_supervision = True
    config.model.remat = True
    result = train.train_and_evaluate(config, tmp_path)
    assert np.isfinite(result["train/loss"]) and 0.0 <= result["val/dice_mean"] <= 1.0


def test_deep_supervision_loss_weighs_the_heads_and_trains_the_auxiliary_head():
    """Loss = 2/3 ℒ(full-resolution head) + 1/3 ℒ(half-resolution head, labels subsampled by 2), and
    the parameters that only the auxiliary head uses get a gradient from it."""
    config = tiny(default.get_config())
    config.model.num_levels = 3
    config.model.deep_supervision = True
    datasets = input_pipeline.create_datasets(config.data, seed=0)
    images, labels = input_pipeline.create_loader(config, datasets.train, datasets.label_space).batch(0)
    model = create_model(config.model, num_classes=datasets.label_space.num_classes, rngs=nnx.Rngs(0))
    loss_fn = train.make_loss_fn(config, datasets.label_space)

    full, half = model(images)
    assert half.shape[1:4] == tuple(s // 2 for s in full.shape[1:4])
    main = float(loss_fn(full, labels))
    weighted = 2 / 3 * main + 1 / 3 * float(loss_fn(half, labels[:, ::2, ::2, ::2]))
    assert float(loss_fn((full, half), labels)) == pytest.approx(weighted, rel=1e-6)
    assert abs(weighted - main) > 1e-4  # the auxiliary head changes the loss

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def grads(use_all_heads):
        def objective(p):
            outputs = nnx.merge(graphdef, p, rest)(images)
            return loss_fn(outputs if use_all_heads else outputs[0], labels)

        return jax.tree.leaves(jax.grad(objective)(params))

    only_auxiliary = [i for i, g in enumerate(grads(False)) if not np.any(g)]  # no effect on the main head
    assert only_auxiliary, "the auxiliary head has parameters of its own"
    with_heads = grads(True)
    assert all(np.any(with_heads[i]) for i in only_auxiliary)


def test_bfloat16_model_trains_evaluates_and_predicts(tmp_path):
    """Mixed precision: ``config.model.dtype="bfloat16"`` computes the network in bfloat16 while the
    parameters, the optimiser state, the loss and the output probabilities stay float32."""
    config = tiny(default.get_config(), num_steps=2, eval_every=2)
    config.model.dtype = "bfloat16"
    result = train.train_and_evaluate(config, tmp_path)
    assert np.isfinite(result["train/loss"]) and 0.0 <= result["val/dice_mean"] <= 1.0
    trained = train.load_trained(tmp_path)
    assert {leaf.dtype for leaf in jax.tree.leaves(trained.state)} <= {np.dtype(np.float32), np.dtype(np.int32),
                                                                       np.dtype(np.uint32)}
    case = input_pipeline.create_datasets(config.data, seed=config.seed).val[0]
    prediction = predict_case(trained, case.image, EvalSettings.from_config(trained.config))
    assert prediction.probs.dtype == np.float32 and prediction.labels.shape == case.labels.shape
    np.testing.assert_allclose(prediction.probs.sum(-1), 1.0, atol=1e-3)
    logits = trained.apply_fn(jnp.zeros((1, 16, 16, 16, 1)), trained.state)
    assert logits.dtype == jnp.float32


def test_a_classical_loss_on_partially_annotated_cases_is_refused_before_any_work(tmp_path):
    """The losses never read label values; the training loop checks the dataset once instead."""
    config = tiny(default.get_config(), loss="soft_dice")  # phantoms with partial protocols
    with pytest.raises(ValueError, match=r"config.loss='soft_dice' is a classical loss.*label_transform='naive'"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    config.data.label_transform = "naive"
    train.validate_config(config)
