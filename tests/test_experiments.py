"""End-to-end smoke tests of the command-line entry points: main, evaluate, predict and the study drivers."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from configs import default
from labelset_jax import train
from labelset_jax.data import make_phantom, phantom_affine, save_nifti
from tests.test_train import tiny

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = [
    "--config.num_steps=1", "--config.patch_size=(16,16,16)", "--config.checkpoint_every=1",
    "--config.eval_every=1", "--config.model.num_levels=2", "--config.model.base_features=4",
    "--config.model.max_features=8", "--config.eval.roi_size=(16,16,16)", "--config.data.shape=(32,32,32)",
    "--config.data.num_val=1", "--config.data.prefetch=0",
    "--config.data.protocols.full=1", "--config.data.protocols.wm_vent_cereb=1",
    "--config.data.protocols.plus_ecsf=0", "--config.data.protocols.plus_ecsf_cc=0",
]


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(tiny(default.get_config(), num_steps=1, eval_every=1), path)
    return path


def test_main_runs_one_step_and_writes_the_report(tmp_path):
    out = run("experiments.main", "--config=configs/default.py", f"--workdir={tmp_path}", *TINY_FLAGS)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("results.json", "report.md", "report.json", "slices.png", "metrics.jsonl"):
        assert (tmp_path / name).exists(), name
    assert "| wm |" in (tmp_path / "report.md").read_text()


def test_main_rejects_a_bad_config_with_exit_code_2(tmp_path):
    out = run("experiments.main", "--config=configs/default.py", f"--workdir={tmp_path}", "--config.loss=dice")
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
    out = run("experiments.evaluate", f"--workdir={tmp_path / 'nothing'}")
    assert out.returncode == 2 and "not a training workdir" in out.stderr


def test_predict_keeps_affine_shape_and_header(workdir, tmp_path):
    image, _ = make_phantom(7, shape=(24, 20, 16))
    affine = phantom_affine(image.shape, (1.5, 1.2, 2.0))
    affine[:3, 3] = [10.0, -20.0, 5.0]
    save_nifti(tmp_path / "in" / "case.nii.gz", image, affine)
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={tmp_path / 'in'}",
              f"--output={tmp_path / 'out'}", "--probabilities")
    assert out.returncode == 0, out.stderr[-3000:]
    seg = nib.load(tmp_path / "out" / "case_seg.nii.gz")
    probs = nib.load(tmp_path / "out" / "case_probs.nii.gz")
    assert seg.shape == image.shape and probs.shape == image.shape + (9,)
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)
    np.testing.assert_allclose(probs.get_fdata().sum(-1), 1.0, atol=1e-4)
    assert set(np.unique(seg.get_fdata()).astype(int)) <= set(range(9))


@pytest.mark.parametrize("content, message", [(None, "scan.nii.gz: no such file or folder"),
                                              (b"not a nifti", "scan.nii.gz: not a readable NIfTI file")])
def test_predict_bad_input_exits_2_with_one_line(workdir, tmp_path, content, message):
    path = tmp_path / "scan.nii.gz"
    if content is not None:
        path.write_bytes(content)
    out = run("experiments.predict", f"--workdir={workdir}", f"--input={path}", f"--output={tmp_path / 'out'}")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1
    assert message in out.stderr
    assert not (tmp_path / "out").exists()


def test_partial_supervision_study_runs_one_step_per_method(tmp_path):
    out = run("experiments.partial_supervision_study", "--steps=1", "--num_val=1", "--methods=leaf_dice,naive",
              f"--runs={tmp_path / 'runs'}", f"--results={tmp_path / 'results'}")
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "results" / "partial_supervision.md").read_text()
    assert "| leaf_dice |" in table and "| naive |" in table and "Wilcoxon" in table
    rows = list(csv.DictReader(open(tmp_path / "results" / "per_case.csv")))
    assert [r["method"] for r in rows] == ["leaf_dice", "naive"]
    assert (tmp_path / "results" / "partial_supervision.png").stat().st_size > 0
    assert not list((tmp_path / "results").glob("*.tmp"))


def test_volume_bias_study_runs_one_step_per_arm(tmp_path):
    out = run("experiments.volume_bias_study", "--steps=1", "--num_val=1", "--ps=0.8", "--arms=ce",
              f"--workdir={tmp_path / 'runs'}", f"--output={tmp_path / 'results'}")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "results" / "volume_bias.csv")))
    assert {(r["generator"], r["arm"]) for r in rows} == {
        ("ambiguous_blob", "ce"), ("ambiguous_blob", "dice"), ("boundary_noise", "ce")}
    assert "ΔV soft" in (tmp_path / "results" / "volume_bias.md").read_text()
    assert (tmp_path / "results" / "volume_bias.png").stat().st_size > 0


@pytest.mark.parametrize("module,args,message", [
    ("experiments.partial_supervision_study", ["--methods=leaf_dice,bogus"], "unknown method"),
    ("experiments.partial_supervision_study", ["--num_val=0"], "--num_val must be >= 1"),
    ("experiments.volume_bias_study", ["--arms=bogus"], "unknown arm"),
    ("experiments.volume_bias_study", ["--ps=1.5"], "--ps must lie in [0, 1]"),
])
def test_studies_reject_bad_flags_before_any_work(tmp_path, module, args, message):
    out = run(module, *args, f"--{'runs' if 'partial' in module else 'workdir'}={tmp_path / 'runs'}")
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
