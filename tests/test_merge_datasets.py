"""Merging datasets that annotate different structures (labelset_jax.data.merge, experiments/merge_datasets.py)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import hypothesis.extra.numpy as hnp
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from labelset_jax.data import mni_tissue_case
from labelset_jax.data.merge import merge_datasets, plan_merge
from labelset_jax.data.nnunet import DatasetError, read_dataset, write_dataset
from labelset_jax.labelsets import LabelSpace
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
POOL = ["csf", "gm", "wm", "lesion", "vessel"]


def run(*args, in_process=False):
    return run_cli("experiments.merge_datasets", *args, in_process=in_process)


@st.composite
def sources(draw):
    """2-3 source label spaces over leaves drawn from POOL (background first), some with a label set
    or the ignore label, and a true merged-leaf map from which each source's label map is derived."""
    spaces = {}
    for k in range(draw(st.integers(2, 3))):
        leaves = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=4, unique=True))
        names = ["background", *leaves]
        superset, set_names = {}, {}
        if len(names) >= 3 and draw(st.booleans()):
            members = draw(st.lists(st.integers(0, len(names) - 1), min_size=2, max_size=len(names) - 1, unique=True))
            superset[len(names)] = sorted(members)
            # named per source: two sources' sets of the same leaf names can mean different merged
            # leaves (each source's background covers the leaves it does not declare), which the merge
            # rightly refuses as one name with two meanings
            set_names[len(names)] = f"s{k}_set_{'_'.join(names[m] for m in sorted(members))}"
        ignore = None
        if draw(st.booleans()):
            ignore = len(names) + len(superset)
            superset[ignore] = list(range(len(names)))
        spaces[f"s{k}"] = LabelSpace.from_superset_map(len(names), superset, names, set_names=set_names,
                                                       ignore_id=ignore)
    truth_leaves = ["background", *dict.fromkeys(n for s in spaces.values() for n in s.names[1:])]
    truth = draw(hnp.arrays(np.int32, (6, 5), elements=st.integers(0, len(truth_leaves) - 1)))
    coins = draw(hnp.arrays(np.int32, (len(spaces), 6, 5), elements=st.integers(0, 2)))
    return spaces, truth_leaves, truth, coins


def source_labels(space: LabelSpace, truth_leaves, truth, coins):
    """What the source would have written for the true leaves: its own leaf, or, by the coin, a set
    of its holding that leaf or the ignore label; leaves it does not declare are its background."""
    out = np.zeros(truth.shape, np.int32)
    for idx, t in np.ndenumerate(truth):
        name = truth_leaves[t]
        leaf = space.names.index(name) if name in space.names else 0
        choices = [leaf] + [i for i, m in zip(space.set_ids, space.set_members) if leaf in m]
        out[idx] = choices[min(coins[idx], len(choices) - 1)]
    return out


@settings(max_examples=60, deadline=None, derandomize=True)
@given(sources())
def test_every_merged_voxel_contains_its_true_leaf(case):
    spaces, truth_leaves, truth, coins = case
    plan = plan_merge(spaces)
    merged = plan.space
    assert merged.names[0] == "background" and set(merged.names) == set(truth_leaves)
    for k, (source, space) in enumerate(spaces.items()):
        labels = source_labels(space, truth_leaves, truth, coins[k])
        mapped = plan.lookup[source][labels]
        assert mapped.min() >= 0
        for idx, label_id in np.ndenumerate(mapped):
            true_leaf = merged.names.index(truth_leaves[truth[idx]])
            assert true_leaf in merged.leaves_of(int(label_id)), (source, idx)
        # a leaf the source declares and wrote stays that leaf: no information is lost
        for c, name in enumerate(space.names[1:], start=1):
            assert merged.leaves_of(int(plan.lookup[source][c])) == (merged.names.index(name),)


def test_merge_of_an_atlas_and_a_lesion_cohort():
    atlas = LabelSpace.leaves(["background", "csf", "gm", "wm"])
    lesions = LabelSpace.from_superset_map(3, {3: [0, 1]}, ["background", "tumour", "oedema"],
                                           set_names={3: "unsure"})
    plan = plan_merge({"atlas": atlas, "lesions": lesions}, [("lesions", "tumour", "lesion")])
    space = plan.space
    assert space.names == ("background", "csf", "gm", "wm", "lesion", "oedema")
    by_name = {n: space.leaves_of(i) for i, n in zip(space.set_ids, space.set_names)}
    assert by_name["background_in_atlas"] == (0, 4, 5)
    assert by_name["background_in_lesions"] == (0, 1, 2, 3)
    assert by_name["unsure"] == (0, 1, 2, 3, 4)  # {background, tumour} and what the source hid in its background
    assert plan.lookup["lesions"].tolist() == [space.id_of("background_in_lesions"), 4, 5, space.id_of("unsure")]


@pytest.mark.parametrize("spaces, renames, message", [
    ({"a": LabelSpace.from_superset_map(3, {3: [1, 2]}, ["background", "x", "y"], set_names={3: "z"}),
      "b": LabelSpace.leaves(["background", "z"])}, [], "'z' is a leaf in b but a label set in a"),
    ({"a": LabelSpace.from_superset_map(4, {4: [1, 2]}, ["background", "x", "y", "w"], set_names={4: "s"}),
      "b": LabelSpace.from_superset_map(4, {4: [2, 3]}, ["background", "x", "y", "w"], set_names={4: "s"})},
     [], "label set 's' means"),
    ({"a": LabelSpace.leaves(["background", "x"]), "b": LabelSpace.leaves(["bg", "y"])}, [],
     "use --rename=b:bg=background"),
    ({"a": LabelSpace.leaves(["background", "x", "y"]), "b": LabelSpace.leaves(["background", "z"])},
     [("a", "x", "y")], "several leaves are named 'y'"),
    ({"a": LabelSpace.leaves(["background", "x"]), "b": LabelSpace.leaves(["background", "z"])},
     [("a", "nope", "y")], "a has no label named 'nope'"),
])
def test_conflicts_stop_with_one_line(spaces, renames, message):
    with pytest.raises(DatasetError, match=message.replace("[", r"\[")) as info:
        plan_merge(spaces, renames)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- end to end


def _lesion_case(seed: int):
    """An MNI brain with a bright spherical 'lesion' in the white matter: labels annotate the lesion only."""
    case = mni_tissue_case(seed, voxel_size=8)
    rng = np.random.default_rng(seed)
    wm = np.argwhere(case.labels == 3)
    centre = wm[rng.integers(len(wm))]
    grid = np.indices(case.labels.shape).transpose(1, 2, 3, 0)
    lesion = np.linalg.norm(grid - centre, axis=-1) <= 2.0
    image = np.where(lesion, case.image.max() * 1.5, case.image).astype(np.float32)
    return SimpleNamespace(id=f"les{seed:02d}", image=image, labels=lesion.astype(np.int32), affine=case.affine)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    atlas = [SimpleNamespace(id=f"atl{i:02d}", image=c.image, labels=c.labels, affine=c.affine)
             for i, c in ((i, mni_tissue_case(i, voxel_size=8)) for i in range(3))]
    write_dataset(root / "Dataset001_atlas", atlas, space=LabelSpace.leaves(["background", "csf", "gm", "wm"]),
                  channel_names=["T1"])
    write_dataset(root / "Dataset002_lesions", [_lesion_case(10 + i) for i in range(3)],
                  space=LabelSpace.leaves(["background", "tumour"]), channel_names=["T1"],
                  test=[_lesion_case(50)])
    return root


def test_merge_command_writes_a_label_set_dataset(two_datasets, tmp_path):
    out = run(f"--input={two_datasets / 'Dataset001_atlas'}", f"--input={two_datasets / 'Dataset002_lesions'}",
              "--rename=lesions:tumour=lesion", f"--output={tmp_path / 'Dataset003_merged'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "label set background_in_lesions" in out.stdout
    dataset = read_dataset(tmp_path / "Dataset003_merged")
    space = dataset.space
    assert space.names == ("background", "csf", "gm", "wm", "lesion")
    assert [c.id for c in dataset.training] == [f"atlas_atl{i:02d}" for i in range(3)] + [
        f"lesions_les{10 + i:02d}" for i in range(3)]
    assert {c.source for c in dataset.training} == {"atlas", "lesions"}
    assert [c.id for c in dataset.test] == ["lesions_les50"] and dataset.test[0].label_path is not None
    atlas = dataset.case("atlas_atl00")
    assert atlas.annotated == (1, 2, 3) and not atlas.is_full  # the atlas never annotated lesions
    lesion = dataset.case("lesions_les10")
    assert lesion.annotated == (4,)
    # voxels: the lesion stays the lesion; the atlas's tissues stay tissues; images are unchanged
    original = nib.load(two_datasets / "Dataset002_lesions" / "labelsTr" / "les10.nii.gz").get_fdata()
    _, labels, _, _ = dataset.load(lesion)
    assert np.array_equal(labels == 4, original == 1)
    assert set(np.unique(labels[original == 0])) == {space.id_of("background_in_lesions")}
    image = nib.load(tmp_path / "Dataset003_merged" / "imagesTr" / "lesions_les10_0000.nii.gz")
    source = nib.load(two_datasets / "Dataset002_lesions" / "imagesTr" / "les10_0000.nii.gz")
    assert np.array_equal(image.get_fdata(), source.get_fdata()) and np.allclose(image.affine, source.affine)
    spec = json.loads((tmp_path / "Dataset003_merged" / "dataset.json").read_text())
    assert spec["sources"]["lesions"]["leaves"] == ["background", "lesion"]
    assert spec["labels"] == {"background": 0, "csf": 1, "gm": 2, "wm": 3, "lesion": 4}  # what nnU-Net reads
    # no fully annotated case: validation is drawn from each source in turn
    _, val = dataset.split(num_val=2)
    assert {c.source for c in val} == {"atlas", "lesions"}


def test_merge_command_refuses_bad_input_before_writing(two_datasets, tmp_path):
    a, b = two_datasets / "Dataset001_atlas", two_datasets / "Dataset002_lesions"
    for args, message in [
        ([f"--input={a}", f"--input={tmp_path / 'nothing'}"], "nothing: not a folder"),
        ([f"--input={a}", f"--input={b}", "--rename=lesions:tumor=lesion"], "lesions has no label named 'tumor'"),
        ([f"--input={a}", f"--input={b}", "--rename=x:tumour=lesion"], "no source named 'x'"),
        ([f"--input={a}", f"--input={a}"], "two sources are named 'atlas'"),
        ([f"--input={a}"], "at least two sources"),
    ]:
        out = run(*args, f"--output={tmp_path / 'merged'}", in_process=True)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (args, lines)
        assert not (tmp_path / "merged").exists()
    (tmp_path / "exists").mkdir()
    out = run(f"--input={a}", f"--input={b}", f"--output={tmp_path / 'exists'}", in_process=True)
    assert out.returncode == 2 and "already exists" in out.stderr


def test_merged_dataset_trains_and_evaluates_per_source(two_datasets, tmp_path):
    merged = tmp_path / "Dataset003_merged"
    merge_datasets([two_datasets / "Dataset001_atlas", two_datasets / "Dataset002_lesions"], merged,
                   renames=["lesions:tumour=lesion"])
    tiny = ["--config.num_steps=2", "--config.patch_size=(16,16,16)", "--config.checkpoint_every=2",
            "--config.eval_every=2", "--config.model.num_levels=2", "--config.model.base_features=4",
            "--config.model.max_features=8", "--config.eval.roi_size=(16,16,16)", "--config.data.prefetch=0",
            "--config.data.num_val=2", "--config.loss=leaf_dice"]
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "experiments.main", f"--config=configs/dataset.py:{merged}",
                          f"--workdir={workdir}", *tiny], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
                          f"--output={tmp_path / 'eval'}"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_case.csv")))
    assert {r["source"] for r in rows} == {"atlas", "lesions"}
    lesion_row = next(r for r in rows if r["source"] == "lesions")
    assert lesion_row["dice_wm"] == "nan" and lesion_row["dice_lesion"] != "nan"  # scored on what it annotates
    by_source = list(csv.DictReader(open(tmp_path / "eval" / "summary_by_source.csv")))
    assert {r["source"] for r in by_source} == {"atlas", "lesions"}
    assert "Source lesions (1 cases)" in (tmp_path / "eval" / "summary.md").read_text()


def test_merge_study_smoke_runs_scores_and_resumes(tmp_path):
    args = ["--scale=smoke", "--methods=leaf_dice,a_only", "--run_seeds=4,2", f"--workdir={tmp_path / 'w'}",
            f"--results={tmp_path / 'r'}"]
    out = subprocess.run([sys.executable, "-m", "experiments.merge_study", *args], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "r" / "merge_study.md").read_text()
    assert "Command: `python -m experiments.merge_study --scale=smoke" in table and "run seeds 4, 2" in table
    assert "| lesion Dice | a_only |" in table and "## Convergence" in table
    per_run = list(csv.DictReader(open(tmp_path / "r" / "per_run.csv")))
    assert {(r["method"], r["seed"]) for r in per_run} == {(m, s) for m in ("leaf_dice", "a_only") for s in "42"}
    for r in per_run:
        assert 0 <= float(r["lesion Dice"]) <= 1 and 0 <= float(r["tissue Dice"]) <= 1
    rows = list(csv.DictReader(open(tmp_path / "r" / "per_case.csv")))
    assert len(rows) == 2 * 2 * 2 and {r["source"] for r in rows} == {"lesions"}  # methods x seeds x test brains
    for name in ("merge_study.png", "test_brain.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    # the datasets went through the merge command's rules
    merged = read_dataset(tmp_path / "w" / "data" / "Dataset003_merged")
    assert merged.space.names == ("background", "csf", "gm", "wm", "lesion")
    assert {merged.space.name_of(i) for i in merged.space.set_ids} == {"background_in_atlases", "brain_tissue"}
    again = subprocess.run([sys.executable, "-m", "experiments.merge_study", *args], cwd=ROOT, capture_output=True,
                           text=True)
    assert again.returncode == 0 and again.stderr.count("reusing") == 4, again.stderr[-2000:]
    bad = run_cli("experiments.merge_study", *args[:-1], "--methods=bogus", f"--results={tmp_path / 'r2'}",
                  in_process=True)
    assert bad.returncode == 2 and "unknown method" in bad.stderr and not (tmp_path / "r2").exists()


def test_regions_stay_regions_after_merging():
    from labelset_jax.data.nnunet import label_space_from_json

    brats = label_space_from_json({"labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
                                              "enhancing_tumor": 3}})
    tissues = LabelSpace.leaves(["background", "csf", "gm", "wm"])
    space = plan_merge({"brats": brats, "atlas": tissues}).space
    assert sorted(space.name_of(i) for i in space.region_ids) == ["tumor_core", "whole_tumor"]
    assert space.leaves_of(space.id_of("tumor_core")) == (2, 3)
