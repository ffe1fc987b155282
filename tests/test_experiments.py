"""End-to-end smoke tests of the command-line entry points: main, evaluate, predict and the study drivers."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from labelset_jax import train
from labelset_jax.data import make_phantom, phantom_affine, save_nifti
from labelset_jax.data.nnunet import label_space_from_json
from tests.helpers import MNI_SPACE, make_mni_dataset, run_cli

TINY_FLAGS = [
    "--config.num_steps=1", "--config.patch_size=(16,16,16)", "--config.checkpoint_every=1",
    "--config.eval_every=1", "--config.model.num_levels=2", "--config.model.base_features=4",
    "--config.model.max_features=8", "--config.eval.roi_size=(16,16,16)", "--config.data.shape=(32,32,32)",
    "--config.data.num_val=1", "--config.data.prefetch=0",
    "--config.data.protocols.full=1", "--config.data.protocols.wm_vent_cereb=1",
    "--config.data.protocols.plus_ecsf=0", "--config.data.protocols.plus_ecsf_cc=0",
]


run = run_cli


def error_run(module, *args):
    """A bad-input path, run in this process (it stops before any work; see ``run_cli``)."""
    return run_cli(module, *args, in_process=True)


def test_main_runs_one_step_and_writes_the_report(tmp_path):
    out = run("experiments.main", "--config=configs/default.py", f"--workdir={tmp_path}", *TINY_FLAGS)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("results.json", "report.md", "report.json", "slices.png", "metrics.jsonl"):
        assert (tmp_path / name).exists(), name
    assert "| wm |" in (tmp_path / "report.md").read_text()
    # The first step's time is mostly compilation: logged without a rate or an ETA.
    first = next(line for line in out.stderr.splitlines() if "step 1/1 loss" in line)
    assert "compilation included" in first and "ETA" not in first, first
    # The run ends by saying where its outputs are.
    for name in ("report.md", "slices.png", "results.json", "checkpoints", "tensorboard"):
        assert f"{tmp_path / name}" in out.stdout, out.stdout
    assert f"python -m experiments.evaluate --workdir={tmp_path}" in out.stdout


def test_main_help_lists_the_config_fields_and_defaults():
    out = run("experiments.main", "--config=configs/default.py", "--help")
    assert out.returncode == 0
    assert "--config.num_steps=400" in out.stdout and '--config.loss="leaf_dice"' in out.stdout
    assert "--workdir" in out.stdout  # and absl's flags after them


def test_main_rejects_a_bad_config_with_exit_code_2(tmp_path):
    out = error_run("experiments.main", "--config=configs/default.py", f"--workdir={tmp_path}", "--config.loss=dice")
    assert out.returncode == 2 and "unknown loss 'dice'" in out.stderr


def test_evaluate_writes_tables(workdir, tmp_path):
    out = run("experiments.evaluate", f"--workdir={workdir}", f"--output={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "per_case.csv")))
    assert len(rows) == 1 and "dice_wm" in rows[0] and "hd95_cortical_gm" in rows[0] and "dvol_soft_wm" in rows[0]
    summary = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert {"metric", "mean", "ci_low", "ci_high", "n"} <= set(summary[0])
    assert (tmp_path / "summary.md").read_text().startswith("| metric |")
    assert not list(tmp_path.glob("*.tmp"))


def test_evaluate_rejects_a_missing_workdir(tmp_path):
    out = error_run("experiments.evaluate", f"--workdir={tmp_path / 'nothing'}")
    assert out.returncode == 2 and "not a training workdir" in out.stderr


def test_predict_keeps_affine_shape_and_header(workdir, tmp_path):
    image, _ = make_phantom(7, shape=(24, 20, 16))
    affine = phantom_affine(image.shape, (1.5, 1.2, 2.0))
    affine[:3, 3] = [10.0, -20.0, 5.0]
    save_nifti(tmp_path / "in" / "case.nii.gz", image, affine)
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'in'}",
              f"--output={tmp_path / 'out'}", "--probabilities")
    assert out.returncode == 0, out.stderr[-3000:]
    seg = nib.load(tmp_path / "out" / "case.nii.gz")  # nnU-Net's name
    probs = nib.load(tmp_path / "out" / "case_probs.nii.gz")
    assert json.loads((tmp_path / "out" / "case_probs.json").read_text())["channels"][:2] == ["background", "wm"]
    assert f"wrote 3 files to {tmp_path / 'out'}" in out.stdout
    again = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'in'}",
                f"--output={tmp_path / 'out'}", "--probabilities")  # never overwrites silently
    assert again.returncode == 2 and "case.nii.gz: already exists" in again.stderr
    assert seg.shape == image.shape and probs.shape == image.shape + (9,)
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)
    np.testing.assert_allclose(probs.get_fdata().sum(-1), 1.0, atol=1e-4)
    assert set(np.unique(seg.get_fdata()).astype(int)) <= set(range(9))
    assert re.search(r"\[1/1\] case \| windows 1/\d+", out.stderr), out.stderr[-3000:]  # per window batch


@pytest.mark.parametrize("content, message", [(None, "scan.nii.gz: no such file or folder"),
                                              (b"not a nifti", "scan.nii.gz: not a readable NIfTI file")])
def test_predict_bad_input_exits_2_with_one_line(workdir, tmp_path, content, message):
    path = tmp_path / "scan.nii.gz"
    if content is not None:
        path.write_bytes(content)
    out = error_run("experiments.predict", f"--workdir={workdir}", f"--input={path}", f"--output={tmp_path / 'out'}")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1
    assert message in out.stderr
    assert not (tmp_path / "out").exists()


def test_partial_supervision_study_runs_scores_and_resumes(tmp_path):
    args = ["--scale=smoke", "--run_seeds=5,3", "--methods=leaf_dice,full_only", f"--runs={tmp_path / 'runs'}",
            f"--results={tmp_path / 'results'}"]
    out = run("experiments.partial_supervision_study", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "results" / "partial_supervision.md").read_text()
    assert "Command: `python -m experiments.partial_supervision_study --scale=smoke" in table
    assert "run seeds 5, 3." in table
    assert "| leaf_dice |" in table and "| full_only |" in table and "p (Holm)" in table
    assert "over training runs (primary)" in table and "conditional on the trained models" in table
    assert "partial tissues, abnormal" in table and "never-annotated, normal" in table
    assert "## Convergence" in table and "converged runs" in table
    rows = list(csv.DictReader(open(tmp_path / "results" / "per_case.csv")))
    assert len(rows) == 2 * 2 * 2 * 8  # methods x seeds x test cases (1 normal, 1 abnormal) x tissues
    assert {(r["method"], r["seed"], r["group"]) for r in rows} == {
        (m, s, g) for m in ("leaf_dice", "full_only") for s in ("5", "3") for g in ("normal", "abnormal")}
    assert {r["tissue"] for r in rows if r["annotated_by_partial_data"] == "True"} == {
        "wm", "ventricles", "cerebellum", "ecsf"}  # smoke cohort: protocols 9 and 10 only
    per_run = list(csv.DictReader(open(tmp_path / "results" / "per_run.csv")))
    assert {(r["method"], r["seed"]) for r in per_run} == {(m, s) for m in ("leaf_dice", "full_only") for s in "53"}
    for r in per_run:  # the smoke scale validates every step: the gains are defined
        assert np.isfinite(float(r["gain_all"])) and 0 <= float(r["val_100pc"]) <= 1
        assert 0 <= float(r["partial tissues, abnormal"]) <= 1 and float(r["train_seconds"]) > 0
    # The run-level endpoint is the mean over the test cases of that run.
    case_means = [np.nanmean([float(x["dice"]) for x in rows if x["method"] == "leaf_dice" and x["seed"] == "3"
                              and x["group"] == "abnormal" and x["annotated_by_partial_data"] == "True"])]
    leaf3 = next(r for r in per_run if r["method"] == "leaf_dice" and r["seed"] == "3")
    np.testing.assert_allclose(float(leaf3["partial tissues, abnormal"]), case_means[0], rtol=1e-6)
    for name in ("partial_supervision.png", "convergence.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0
    record = json.loads((tmp_path / "results" / "runs" / "leaf_dice_seed5.json").read_text())
    assert record["curve"][-1]["step"] == 2 and "val/dice_wm" in record["curve"][-1]
    # Finished runs are reused from their records, even without the training folders (a fresh clone).
    shutil.rmtree(tmp_path / "runs")
    again = run("experiments.partial_supervision_study", *args)
    assert again.returncode == 0 and again.stderr.count("reusing") == 4, again.stderr[-2000:]
    assert list(csv.DictReader(open(tmp_path / "results" / "per_case.csv"))) == rows
    assert not (tmp_path / "runs").exists()
    other = run("experiments.partial_supervision_study", *args[:-1], "--steps=3", "--methods=full_only",
                "--run_seeds=5", f"--results={tmp_path / 'other'}")
    assert other.returncode == 0, other.stderr[-2000:]  # a new results folder: trains anew
    assert "reusing" not in other.stderr and (tmp_path / "other" / "runs" / "full_only_seed5.json").exists()
    clash = error_run("experiments.partial_supervision_study", *args[:-2], "--steps=4", f"--runs={tmp_path / 'runs4'}",
                f"--results={tmp_path / 'results'}")
    assert clash.returncode == 2 and "records a run of another configuration" in clash.stderr
    assert list(csv.DictReader(open(tmp_path / "results" / "per_case.csv"))) == rows


def test_volume_bias_study_runs_its_parts_and_resumes(tmp_path):
    args = ["--scale=smoke", "--tasks=lr_boundary,lr_blob,cnn_boundary,cnn_mni", f"--workdir={tmp_path / 'runs'}",
            f"--output={tmp_path / 'results'}"]
    out = run("experiments.volume_bias_study", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "results" / "volume_bias.csv")))
    assert {(r["task"], r["arm"]) for r in rows} == {
        (t, a) for t in ("lr_boundary", "lr_blob", "cnn_boundary", "cnn_mni") for a in ("ce", "dice")}
    assert {r["class"] for r in rows if r["task"] == "cnn_mni"} == {"csf", "gm", "wm"}
    assert {r["p"] for r in rows if r["task"] == "lr_blob"} == {"0.45", "0.55"}
    assert {"dv_soft_expected_ml", "dv_hard_expected_ml", "dv_soft_realised_ml", "dv_hard_realised_ml"} <= set(rows[0])
    table = (tmp_path / "results" / "volume_bias.md").read_text()
    assert "Command: `python -m experiments.volume_bias_study --scale=smoke" in table
    assert "ΔV soft vs E[V]" in table and "TOST" in table and "oracle" in table
    assert "| ce_own_dice_threshold |" in table  # Nordström et al.: the CE model at its own Dice optimum
    for name in ("volume_bias.png", "reliability.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0
    again = run("experiments.volume_bias_study", *args)  # every fit is reused
    assert again.returncode == 0 and again.stderr.count("reusing") == 10, again.stderr[-2000:]
    assert list(csv.DictReader(open(tmp_path / "results" / "volume_bias.csv"))) == rows


@pytest.mark.parametrize("module,args,message", [
    ("experiments.partial_supervision_study", ["--methods=leaf_dice,bogus"], "unknown method"),
    ("experiments.partial_supervision_study", ["--num_test=0"], "--num_test must be >= 1"),
    ("experiments.partial_supervision_study", ["--full_fraction=1.5"], "--full_fraction must be a number in [0, 1]"),
    ("experiments.partial_supervision_study", ["--seeds=2", "--run_seeds=1,2"], "not both"),
    ("experiments.partial_supervision_study", ["--run_seeds=1,x"], "--run_seeds must be non-negative integers"),
    ("experiments.partial_supervision_study", ["--run_seeds=1,1"], "repeated seed"),
    ("experiments.volume_bias_study", ["--arms=bogus"], "unknown arm"),
    ("experiments.volume_bias_study", ["--tasks=lr_boundary,bogus"], "unknown task"),
    ("experiments.volume_bias_study", ["--ps=1.5"], "--ps must lie in [0, 1]"),
])
def test_studies_reject_bad_flags_before_any_work(tmp_path, module, args, message):
    out = error_run(module, *args, f"--{'runs' if 'partial' in module else 'workdir'}={tmp_path / 'runs'}")
    assert out.returncode == 2
    assert message in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("module,flags", [
    ("experiments.main", ["--config=configs/default.py", "--workdir={tmp}/w"]),
    ("experiments.evaluate", ["--workdir={tmp}/w"]),
    ("experiments.predict", ["--workdir={tmp}/w", "--input={tmp}/i", "--output={tmp}/o"]),
    ("experiments.partial_supervision_study", ["--runs={tmp}/w"]),
    ("experiments.volume_bias_study", ["--workdir={tmp}/w"]),
])
def test_entry_points_reject_positional_arguments(tmp_path, module, flags):
    out = run(module, *(f.format(tmp=tmp_path) for f in flags), "stray")
    assert out.returncode != 0
    assert "unexpected arguments: ['stray']" in out.stderr
    assert not any(tmp_path.iterdir()), "nothing is written"


# ------------------------------------------------------------------ your own data: nnU-Net format
NNUNET_TINY = [
    "--config.num_steps=2", "--config.patch_size=(16,16,16)", "--config.checkpoint_every=2",
    "--config.eval_every=2", "--config.model.num_levels=2", "--config.model.base_features=4",
    "--config.model.max_features=8", "--config.eval.roi_size=(16,16,16)", "--config.data.prefetch=0",
]


def _one_line_error(out, *fragments):
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def mni_dataset(tmp_path_factory):
    """The MNI152 dataset of tests/helpers.py, validated on a WM-only case and the case
    with the ignore label (splits_final.json), to see partial cases scored on what they annotate."""
    root = tmp_path_factory.mktemp("data") / "Dataset001_MNI"
    make_mni_dataset(root)
    splits = [{"train": ["mni_000", "mni_001", "mni_003"], "val": ["mni_002", "mni_004"]}]
    (root / "splits_final.json").write_text(json.dumps(splits))
    return root


def test_evaluation_reads_only_the_validation_cases_a_run_recorded(mni_dataset, tmp_path):
    from configs import dataset
    from labelset_jax import input_pipeline
    from labelset_jax.data.nnunet import DatasetError, read_dataset

    copy = tmp_path / "Dataset001_MNI"
    shutil.copytree(mni_dataset, copy)
    for case in ("mni_000", "mni_001", "mni_003"):  # training cases only: their label maps are broken
        (copy / "labelsTr" / f"{case}.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(DatasetError, match="mni_000"):
        read_dataset(copy)  # the full check reads every label map
    config = dataset.get_config(str(copy))
    config.data.spacing = (8.0, 8.0, 8.0)  # as a run's config holds it
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "split.json").write_text(json.dumps({"train": ["mni_000"], "val": ["mni_004", "mni_002"]}))
    cases = input_pipeline.run_validation_cases(config, tmp_path / "run")
    assert [c.id for c in cases] == ["mni_004", "mni_002"]
    assert [c.id for c in input_pipeline.create_test_cases(config.data)] == ["mni_test_000"]
    (tmp_path / "run" / "split.json").write_text(json.dumps({"train": [], "val": ["mni_009"]}))
    with pytest.raises(DatasetError, match="no case 'mni_009'"):
        input_pipeline.run_validation_cases(config, tmp_path / "run")


def test_nnunet_dataset_trains_predicts_and_evaluates_end_to_end(mni_dataset, tmp_path):
    workdir = tmp_path / "run"
    out = run("experiments.main", f"--config=configs/dataset.py:{mni_dataset}", f"--workdir={workdir}",
              "--config.loss=leaf_dice", *NNUNET_TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    # the label space travels with the run: evaluate and predict rebuild it from the workdir alone
    assert label_space_from_json(json.loads((workdir / "label_space.json").read_text())) == MNI_SPACE
    assert train.load_trained(workdir).label_space == MNI_SPACE

    # a held-out volume, its header with non-default codes (sform: MNI 152, qform: scanner)
    held_out = nib.load(mni_dataset / "imagesTs" / "mni_test_000_0000.nii.gz")
    image = nib.Nifti1Image(np.asarray(held_out.dataobj), held_out.affine, held_out.header)
    image.set_sform(held_out.affine, code=4)
    image.set_qform(held_out.affine, code=1)
    (tmp_path / "in").mkdir()
    nib.save(image, tmp_path / "in" / "held_out.nii.gz")
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'in' / 'held_out.nii.gz'}",
              f"--output={tmp_path / 'seg'}", "--probabilities")
    assert out.returncode == 0, out.stderr[-3000:]
    seg = nib.load(tmp_path / "seg" / "held_out.nii.gz")
    assert seg.shape == held_out.shape == (25, 30, 24)
    np.testing.assert_allclose(seg.affine, held_out.affine, atol=1e-5)
    assert (int(seg.header["sform_code"]), int(seg.header["qform_code"])) == (4, 1)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}
    assert nib.load(tmp_path / "seg" / "held_out_probs.nii.gz").shape == (25, 30, 24, 4)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "seg" / "held_out.nii.gz").stat().st_mode) == 0o666 & ~umask

    out = run("experiments.evaluate", f"--workdir={workdir}", f"--output={tmp_path / 'eval'}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "eval" / "per_case.csv"))}
    assert set(rows) == {"mni_002", "mni_004"}
    assert json.loads((workdir / "split.json").read_text()) == {"train": ["mni_000", "mni_001", "mni_003"],
                                                                "val": ["mni_002", "mni_004"]}
    wm_only, ignore = rows["mni_002"], rows["mni_004"]
    assert wm_only["protocol"] == "background+wm" and ignore["protocol"] == "all+ignore"
    assert wm_only["dice_csf"] == wm_only["dice_gm"] == wm_only["dvol_soft_gm"] == "nan"  # not annotated
    assert all(np.isfinite(float(wm_only[k])) for k in ("dice_wm", "hd95_wm", "dvol_soft_wm"))
    assert all(np.isfinite(float(ignore[f"dice_{name}"])) for name in ("csf", "gm", "wm"))

    out = run("experiments.evaluate", f"--workdir={workdir}", "--split=test")  # imagesTs + labelsTs
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(workdir / "eval_test" / "per_case.csv")))
    assert [r["id"] for r in rows] == ["mni_test_000"] and rows[0]["protocol"] == "full"
    _one_line_error(run("experiments.evaluate", f"--workdir={workdir}", "--split=test", "--manifest=x.csv"),
                    "--split and --manifest")
    # a manifest of cases for this (non-fetal) run: checked against the run's labels, not the fetal brain's
    (tmp_path / "cases.csv").write_text(f"id,image,label\nheld,{mni_dataset / 'imagesTs' / 'mni_test_000_0000.nii.gz'},"
                                        f"{mni_dataset / 'labelsTs' / 'mni_test_000.nii.gz'}\n")
    out = run("experiments.evaluate", f"--workdir={workdir}", f"--manifest={tmp_path / 'cases.csv'}",
              f"--output={tmp_path / 'eval_manifest'}")
    assert out.returncode == 0, out.stderr[-3000:]
    [row] = csv.DictReader(open(tmp_path / "eval_manifest" / "per_case.csv"))
    assert row["id"] == "held" and np.isfinite(float(row["dice_wm"]))


def test_multichannel_dataset_trains_and_predicts_nnunet_named_files(tmp_path):
    """Two input channels (T1 + a T2-like contrast): the network takes both, the run records it,
    predict groups {case}_{channel:04d} files and refuses a lone single-channel file."""
    root = tmp_path / "Dataset003_MNI2"
    make_mni_dataset(root, channels=2)
    workdir = tmp_path / "run"
    out = run("experiments.main", f"--config=configs/dataset.py:{root}", f"--workdir={workdir}", *NNUNET_TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["model"]["in_channels"] == 2
    assert train.load_trained(workdir).state is not None

    out = run("experiments.predict", f"--workdir={workdir}", f"--input={root / 'imagesTs'}",
              f"--output={tmp_path / 'seg'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["mni_test_000.nii.gz"]
    seg = nib.load(tmp_path / "seg" / "mni_test_000.nii.gz")
    assert seg.shape == nib.load(root / "imagesTs" / "mni_test_000_0001.nii.gz").shape

    (tmp_path / "one").mkdir()
    shutil.copy(root / "imagesTs" / "mni_test_000_0000.nii.gz", tmp_path / "one" / "mni_test_000_0000.nii.gz")
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'one' / 'mni_test_000_0000.nii.gz'}",
              f"--output={tmp_path / 'seg2'}")
    _one_line_error(out, "mni_test_000_0001.nii.gz: missing")
    assert not (tmp_path / "seg2").exists()


def test_nnunet_bad_dataset_fails_before_the_run_exists(mni_dataset, tmp_path):
    broken = tmp_path / "Dataset002_Broken"
    shutil.copytree(mni_dataset, broken)
    spec = json.loads((broken / "dataset.json").read_text())
    spec["label_sets"]["not_wm"]["members"] = [1, 7]
    (broken / "dataset.json").write_text(json.dumps(spec))
    workdir = tmp_path / "run"
    out = error_run("experiments.main", f"--config=configs/dataset.py:{broken}", f"--workdir={workdir}", *NNUNET_TINY)
    _one_line_error(out, "dataset.json", "label_sets['not_wm'].members: 7 is not a leaf")
    assert not (workdir / "config.json").exists() and not (workdir / "label_space.json").exists()
    _one_line_error(error_run("experiments.evaluate", f"--workdir={workdir}"), "not a training workdir")
    _one_line_error(error_run("experiments.main", "--config=configs/dataset.py", f"--workdir={workdir}"),
                    "config.data.path must name the dataset folder")


@pytest.mark.parametrize("args, fragments", [
    (["--config=configs/default.py", "--config.num_stepz=3"], ["num_stepz", 'Did you mean "num_steps"']),
    (["--config=configs/default.py", "--config.data.protocols.fulll=1"], ["fulll", 'Did you mean "full"']),
    (["--config=configs/missing.py"], ["--config", "configs/missing.py", "No such file"]),
    (["--config=configs/missing.py", "--config.num_steps=3"], ["configs/missing.py", "No such file"]),
    (["--config=configs/default.py", "--workdirr=x"], ["workdirr", "Did you mean: workdir"]),
    (["--config=configs/default.py", "--config.num_steps=abc"], ["--config.num_steps=abc"]),
])
def test_main_flag_errors_are_one_line_with_absl_hint(tmp_path, args, fragments):
    workdir_flag = [] if any(a.startswith("--workdirr") for a in args) else [f"--workdir={tmp_path / 'run'}"]
    _one_line_error(error_run("experiments.main", *args, *workdir_flag), *fragments)
    assert not any(tmp_path.iterdir())


def test_predict_rejects_nan_or_inf_intensities_and_writes_nothing(workdir, tmp_path):
    image, _ = make_phantom(3, shape=(16, 16, 16))
    save_nifti(tmp_path / "in" / "a_good.nii.gz", image, np.eye(4))
    image[3, 4, 5], image[0, 0, 0] = np.nan, np.inf
    save_nifti(tmp_path / "in" / "b_bad.nii.gz", image, np.eye(4))
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'in'}",
              f"--output={tmp_path / 'out'}")
    _one_line_error(out, "b_bad.nii.gz: image holds 2 NaN or Inf intensities")
    assert not (tmp_path / "out").exists()


def test_predict_warns_on_an_all_zero_image(workdir, tmp_path):
    save_nifti(tmp_path / "zeros.nii.gz", np.zeros((16, 16, 16), np.float32), np.eye(4))
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'zeros.nii.gz'}",
              f"--output={tmp_path / 'out'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "zeros.nii.gz: the image is all zeros" in out.stderr
    assert (tmp_path / "out" / "zeros.nii.gz").exists()


def test_predict_single_channel_model_takes_nnunet_names_and_refuses_other_channels(workdir, tmp_path):
    image, _ = make_phantom(3, shape=(16, 16, 16))
    save_nifti(tmp_path / "in" / "brain_0000.nii.gz", image, np.eye(4))
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'o'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["brain.nii.gz"]
    save_nifti(tmp_path / "in" / "brain_0001.nii.gz", image, np.eye(4))  # a second channel (T2, say)
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'p'}")
    _one_line_error(out, "brain_0001.nii.gz: the model takes 1 input channel but this is channel 1")
    assert not (tmp_path / "p").exists()


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a chmod 555 folder, or (as root, who ignores
    permissions) /sys where Linux lets nobody create files; skips where neither exists."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    pytest.skip("no folder this process cannot write in")


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
@pytest.mark.parametrize("module", ["experiments.predict", "experiments.evaluate"])
def test_outputs_that_cannot_be_written_fail_before_the_model_loads(workdir, tmp_path, module, where):
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        output, fragment = tmp_path / "a_file" / "out", "a_file is a file, not a folder"
    else:
        output, fragment = _read_only_folder(tmp_path) / "out", "cannot write in"
    save_nifti(tmp_path / "scan.nii.gz", np.ones((16, 16, 16), np.float32), np.eye(4))
    extra = [f"--input={tmp_path / 'scan.nii.gz'}"] if module.endswith("predict") else []
    # A copy of the run whose checkpoint files are garbage: reading them first would fail otherwise.
    broken = shutil.copytree(workdir, tmp_path / "run")
    for path in [*(broken / "checkpoints").rglob("*"), *(broken / "best").rglob("*")]:
        if path.is_file():
            path.write_bytes(b"not a checkpoint")
    out = error_run(module, f"--workdir={broken}", *extra, f"--output={output}")
    _one_line_error(out, f"--output={output}", fragment)


def test_evaluate_rejects_an_empty_workdir_list_and_an_empty_manifest(workdir, tmp_path):
    _one_line_error(run("experiments.evaluate", "--workdir=,"), "--workdir=',' names no workdir")
    (tmp_path / "empty.csv").write_text("id,image,label,protocol\n")
    out = run("experiments.evaluate", f"--workdir={workdir}", f"--manifest={tmp_path / 'empty.csv'}",
              f"--output={tmp_path / 'eval'}")
    _one_line_error(out, "empty.csv: the manifest lists no case")
    assert not (tmp_path / "eval").exists()
    out = run("experiments.evaluate", f"--workdir={workdir}", "--split=test", f"--output={tmp_path / 'eval'}")
    _one_line_error(out, "held-out test cases come from an nnU-Net dataset's imagesTs/labelsTs")  # phantom run
    assert not (tmp_path / "eval").exists()
