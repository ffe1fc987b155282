"""The nnU-Net raw dataset format with label sets: label space, cases, splits, writing, and one
test per bad input (each a one-line DatasetError naming the culprit)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from experiments.convert_dataset import convert_feta
from labelset_jax.data import FETA_TO_FETAL_BRAIN, make_phantom, mni_tissue_case, save_nifti
from labelset_jax.data.nnunet import (
    DatasetError,
    label_space_from_json,
    read_dataset,
    write_dataset,
)
from labelset_jax.labelsets import FETAL_BRAIN, FETAL_BRAIN_PROTOCOLS, LabelSpace
from tests.helpers import MNI_JSON, MNI_SPACE, WITH_IGNORE, WM_ONLY, make_mni_dataset, run_cli

@pytest.fixture(scope="module")
def mni_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mni") / "Dataset001_MNI"
    return root, make_mni_dataset(root)


def test_label_space_from_dataset_json():
    assert label_space_from_json(MNI_JSON) == MNI_SPACE
    # member names work as well as ids
    by_name = {**MNI_JSON, "label_sets": {"not_wm": {"id": 4, "members": ["csf", "gm"]}}}
    assert label_space_from_json(by_name) == MNI_SPACE
    for space in (MNI_SPACE, LabelSpace.leaves(3)):
        assert label_space_from_json(space.to_json()) == space


def test_regions_are_numbered_after_every_other_id():
    labels = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3, "whole_tumor": [1, 2, 3], "ignore": 4}
    # without label sets: exactly LabelSpace.from_nnunet
    assert label_space_from_json({"labels": labels}) == LabelSpace.from_nnunet(labels)
    space = label_space_from_json({"labels": labels, "label_sets": {"core": {"id": 5, "members": [2, 3]}}})
    assert space.id_of("core") == 5 and space.leaves_of(5) == (2, 3)
    assert space.id_of("whole_tumor") == 6 and space.leaves_of(6) == (1, 2, 3)
    assert space.ignore_id == 4
    assert label_space_from_json(space.to_json()) == space


def test_reading_the_mni_dataset(mni_dataset):
    root, written = mni_dataset
    dataset = read_dataset(root)
    assert dataset.space == MNI_SPACE
    assert dataset.name == "MNI152 tissues" and dataset.channel_names == ("T1",) and dataset.file_ending == ".nii.gz"
    assert [c.id for c in dataset.training] == [f"mni_{i:03d}" for i in range(5)]
    for case in dataset.training:
        if case.id in WM_ONLY:
            assert (case.annotated, case.has_ignore, case.is_full) == ((0, 3), False, False)
            assert 4 in case.label_values
        elif case.id == WITH_IGNORE:
            assert (case.annotated, case.has_ignore, case.is_full) == ((0, 1, 2, 3), True, False)
        else:
            assert (case.annotated, case.has_ignore, case.is_full) == ((0, 1, 2, 3), False, True)
        assert case.shape == (25, 30, 24) and case.spacing == (8.0, 8.0, 8.0)
        image, labels, affine, spacing = dataset.load(case)
        assert image.shape == (25, 30, 24, 1) and image.dtype == np.float32
        np.testing.assert_array_equal(labels, written[case.id])
        np.testing.assert_allclose(affine, mni_tissue_case(int(case.id[-3:]), voxel_size=8).affine, atol=1e-5)
    [test] = dataset.test
    assert test.id == "mni_test_000" and test.label_path is not None and test.is_full
    np.testing.assert_array_equal(dataset.load(test.id)[1], written[test.id])
    # ordinary permissions, as the rest of the user's files
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o777 & ~_umask()
    for path in [root / "dataset.json", *root.glob("*/*.nii.gz")]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask(), path


def test_a_dataset_read_for_training_reads_each_label_map_once(mni_dataset, tmp_path):
    """keep_labels=True keeps the maps the check read: loading then needs no label file."""
    root, written = mni_dataset
    copy = tmp_path / "Dataset001_MNI"
    shutil.copytree(root, copy)
    dataset = read_dataset(copy, keep_labels=True)
    assert all(c.labels is not None for c in dataset.training) and dataset.test[0].labels is None
    for path in (copy / "labelsTr").iterdir():
        path.unlink()
    for case in dataset.training:
        labels = dataset.load(case)[1]
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(labels, written[case.id])
    assert read_dataset(root).training[0].labels is None  # by default the check keeps nothing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_split_draws_validation_from_fully_annotated_cases(mni_dataset, tmp_path):
    root, _ = mni_dataset
    dataset = read_dataset(root)
    train, val = dataset.split(num_val=2, seed=0)
    assert sorted(c.id for c in val) == ["mni_000", "mni_001"]  # the only fully annotated ones
    assert sorted(c.id for c in train) == ["mni_002", "mni_003", "mni_004"]
    train, val = dataset.split(seed=3)  # default: a fifth of the full cases, at least one
    assert len(val) == 1 and val[0].is_full and len(train) == 4
    assert dataset.split(seed=3) == (train, val)
    with pytest.raises(DatasetError, match="only 2 case"):
        dataset.split(num_val=3)
    # a splits file overrides, as in nnU-Net
    copy = tmp_path / "Dataset001_MNI"
    shutil.copytree(root, copy)
    folds = [{"train": ["mni_000", "mni_001"], "val": ["mni_002"]}, {"train": ["mni_002"], "val": ["mni_004"]}]
    (copy / "splits_final.json").write_text(json.dumps(folds))
    dataset = read_dataset(copy)
    train, val = dataset.split()
    assert [c.id for c in train] == ["mni_000", "mni_001"] and [c.id for c in val] == ["mni_002"]
    assert [c.id for c in dataset.split(fold=1)[1]] == ["mni_004"]
    with pytest.raises(DatasetError, match="fold 2 requested"):
        dataset.split(fold=2)


def test_multichannel_cases_are_stacked_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((6, 7, 8, 2), dtype=np.float32)
    labels = rng.integers(0, 3, (6, 7, 8))
    case = SimpleNamespace(id="c0", image=image, labels=labels, affine=np.diag([1.0, 2.0, 3.0, 1.0]))
    write_dataset(tmp_path / "D", [case], space=LabelSpace.leaves(3), channel_names=["T1", "FLAIR"])
    dataset = read_dataset(tmp_path / "D")
    assert dataset.channel_names == ("T1", "FLAIR")
    out, out_labels, _, spacing = dataset.load("c0")
    np.testing.assert_allclose(out, image)
    np.testing.assert_array_equal(out_labels, labels)
    assert spacing == (1.0, 2.0, 3.0)


def test_write_dataset_refuses_an_existing_folder_and_bad_labels(tmp_path):
    case = SimpleNamespace(id="c0", image=np.zeros((4, 4, 4)), labels=np.full((4, 4, 4), 7), affine=np.eye(4))
    with pytest.raises(DatasetError, match=r"\[7\]"):
        write_dataset(tmp_path / "D", [case], space=LabelSpace.leaves(3))
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    with pytest.raises(DatasetError, match="duplicate case id 'c0'"):
        good = SimpleNamespace(**{**vars(case), "labels": np.zeros((4, 4, 4), int)})
        write_dataset(tmp_path / "D", [good, good], space=LabelSpace.leaves(3))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "D").mkdir()
    with pytest.raises(DatasetError, match="already exists"):
        write_dataset(tmp_path / "D", [case], space=LabelSpace.leaves(3))


# ------------------------------------------------------------------------------ bad input
SMALL_JSON = {
    "channel_names": {"0": "T2", "1": "ADC"},
    "labels": {"background": 0, "a": 1, "b": 2, "c": 3, "ignore": 5},
    "label_sets": {"b_or_c": {"id": 4, "members": [2, 3]}},
    "numTraining": 2,
    "file_ending": ".nii.gz",
}


@pytest.fixture
def small(tmp_path):
    """A valid two-channel dataset of two 6³ cases; tests break it one way each."""
    rng = np.random.default_rng(1)
    space = label_space_from_json(SMALL_JSON)
    cases = []
    for i in range(2):
        labels = rng.integers(0, 4, (6, 6, 6))
        labels[0] = 4 if i else 5
        cases.append(SimpleNamespace(id=f"case_{i}", image=rng.random((6, 6, 6, 2)), labels=labels, affine=np.eye(4)))
    root = tmp_path / "Dataset002_Small"
    write_dataset(root, cases, space=space, channel_names=["T2", "ADC"])
    read_dataset(root)  # valid as written
    return root


def _edit_json(root: Path, **changes) -> None:
    spec = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    (root / "dataset.json").write_text(json.dumps(spec))


def _fails(root: Path, *fragments: str) -> str:
    with pytest.raises(DatasetError) as info:
        read_dataset(root)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_dataset_json_not_json(small):
    (small / "dataset.json").write_text('{"labels": {"background": 0,}')
    _fails(small, "dataset.json", "not valid JSON", "line 1")


def test_dataset_json_repeated_key(small):
    text = (small / "dataset.json").read_text()
    spec = json.loads(text)
    spec["label_sets"] = {"x": {"id": 8, "members": [1, 2]}}
    text = json.dumps(spec).replace('"label_sets": {', '"label_sets": {"x": {"id": 9, "members": [2, 3]}, ')
    (small / "dataset.json").write_text(text)  # JSON itself would keep the last "x" silently
    _fails(small, "dataset.json", "the key 'x' appears twice")


@pytest.mark.parametrize("key", ["labels", "channel_names"])
def test_dataset_json_lacks_a_key(small, key):
    _edit_json(small, **{key: None})
    _fails(small, "dataset.json", f"'{key}'")


def test_set_member_not_a_leaf(small):
    _edit_json(small, label_sets={"b_or_c": {"id": 4, "members": [2, 9]}})
    _fails(small, "dataset.json", "label_sets['b_or_c'].members", "9 is not a leaf")


def test_set_id_collides_with_a_leaf(small):
    _edit_json(small, label_sets={"b_or_c": {"id": 2, "members": [2, 3]}})
    _fails(small, "dataset.json", "label_sets['b_or_c'].id 2 collides with the leaf 'b'")


def test_set_id_collides_with_the_ignore_label(small):
    _edit_json(small, label_sets={"b_or_c": {"id": 5, "members": [2, 3]}})
    _fails(small, "label_sets['b_or_c'].id 5", "'ignore'")


def test_more_cases_declared_than_exist(small):
    _edit_json(small, numTraining=3)
    _fails(small, "numTraining is 3", "holds 2 case(s)")


def test_a_case_missing_a_channel(small):
    (small / "imagesTr" / "case_1_0001.nii.gz").unlink()
    _fails(small, "case_1_0001.nii.gz: missing", "channels 0..1")


def test_a_case_missing_its_label_file(small):
    (small / "labelsTr" / "case_0.nii.gz").unlink()
    _edit_json(small, numTraining=1)
    _fails(small, "labelsTr/case_0.nii.gz: missing", "label file")


def test_image_label_shape_mismatch(small):
    save_nifti(small / "labelsTr" / "case_1.nii.gz", np.zeros((6, 6, 5), np.uint8), np.eye(4))
    _fails(small, "case_1.nii.gz: shape (6, 6, 5) differs from (6, 6, 6)")


def test_image_label_affine_mismatch(small):
    save_nifti(small / "labelsTr" / "case_1.nii.gz", np.zeros((6, 6, 6), np.uint8), np.diag([1.0, 1.0, 1.2, 1.0]))
    _fails(small, "labelsTr/case_1.nii.gz: affine differs", "case_1_0000.nii.gz")


def test_channel_shape_mismatch(small):
    save_nifti(small / "imagesTr" / "case_0_0001.nii.gz", np.zeros((6, 6, 7), np.float32), np.eye(4))
    _fails(small, "case_0_0001.nii.gz: shape (6, 6, 7)")


def test_label_value_neither_leaf_set_nor_ignore(small):
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0, 0, 0] = 6
    save_nifti(small / "labelsTr" / "case_0.nii.gz", labels, np.eye(4))
    _fails(small, "labelsTr/case_0.nii.gz: label value(s) [6]", "label sets [4]", "ignore 5")


def test_images_are_checked_from_their_headers_labels_from_their_values(small):
    # a truncated image passes the header checks (its voxels are read only by load), then fails
    # with a one-line error naming it; a truncated label file fails read_dataset at once
    path = small / "imagesTr" / "case_0_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:-50])
    dataset = read_dataset(small)
    with pytest.raises(DatasetError, match="case_0_0000.nii.gz: cannot read the voxel data"):
        dataset.load("case_0")
    labels = small / "labelsTr" / "case_1.nii.gz"
    labels.write_bytes(labels.read_bytes()[:-12])
    _fails(small, "labelsTr/case_1.nii.gz: ")


def test_unsupported_file_ending_and_bad_splits(small):
    _edit_json(small, file_ending=".png")
    _fails(small, "file_ending '.png' is not supported")
    _edit_json(small, file_ending=".nii.gz")
    (small / "splits.json").write_text(json.dumps([{"train": ["case_0"], "val": ["case_9"]}]))
    _fails(small, "splits.json: fold 0 'val' names unknown case(s) ['case_9']")


def test_wrong_file_ending_hints_at_the_files_found(small):
    _edit_json(small, file_ending=".nii")
    _fails(small, "numTraining is 2 but", "holds 0 case(s) ending .nii", "'.nii.gz'")


def test_a_single_member_set_and_a_duplicate_set(small):
    _edit_json(small, label_sets={"b_only": {"id": 4, "members": [2]}})
    _fails(small, "label_sets['b_only'].members [2] name a single leaf")
    _edit_json(small, label_sets={"x": {"id": 4, "members": [2, 3]}, "y": {"id": 6, "members": [3, 2]}})
    _fails(small, "dataset.json", "same members")


# ------------------------------------------------------------------------------ conversion
def _run(*args, in_process=False):
    return run_cli("experiments.convert_dataset", *args, in_process=in_process)


def test_convert_phantoms_from_the_command_line(tmp_path):
    out = _run("--source=phantoms", f"--output={tmp_path / 'Dataset001_Phantoms'}", "--shape=32,32,32",
               "--protocols=full:1,wm_vent_cereb:1,plus_ecsf_cc:1", "--num_test=1")
    assert out.returncode == 0, out.stderr[-2000:]
    dataset = read_dataset(tmp_path / "Dataset001_Phantoms")
    assert dataset.space.names == FETAL_BRAIN.names
    assert dataset.space.to_superset_map() == FETAL_BRAIN.to_superset_map()
    assert dataset.space.name_of(9) == "unannotated_wm_vent_cereb"
    assert [(c.id, c.annotated, c.is_full) for c in dataset.training] == [
        ("phantom_0000", tuple(range(9)), True),
        ("phantom_0001", (0, 1, 2, 3), False),
        ("phantom_0002", (0, 1, 2, 3, 4, 8), False),
    ]
    [test] = dataset.test
    assert test.is_full and test.label_values == tuple(range(9))
    image, labels, _, _ = dataset.load(dataset.training[1])
    expected_image, full = make_phantom(1, shape=(32, 32, 32))
    np.testing.assert_allclose(image[..., 0], expected_image)
    np.testing.assert_array_equal(labels, FETAL_BRAIN_PROTOCOLS["wm_vent_cereb"].apply(full))


def test_convert_rejects_bad_input_with_exit_code_2_and_writes_nothing(tmp_path):
    for args, message in [
        (["--protocols=full:1,everything:2"], "unknown protocol 'everything'"),
        (["--shape=16,16,16"], "--shape=16,16,16 must be three sizes >= 32"),
        (["--source=feta", f"--input={tmp_path / 'nowhere'}"], "nowhere: not a folder"),
    ]:
        source = [] if any(a.startswith("--source") for a in args) else ["--source=phantoms"]
        out = _run(*source, *args, f"--output={tmp_path / 'Dataset009_X'}", in_process=True)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr[-2000:])
        assert len(out.stderr.strip().splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_convert_feta_maps_its_labels_onto_the_fetal_brain_leaves(tmp_path):
    rng = np.random.default_rng(0)
    feta_labels = {}
    for subject in ("sub-001", "sub-002"):
        anat = tmp_path / "feta" / subject / "anat"
        labels = rng.integers(0, 8, (8, 8, 8))
        feta_labels[subject] = labels
        save_nifti(anat / f"{subject}_rec-mial_T2w.nii.gz", rng.random((8, 8, 8), dtype=np.float32), np.eye(4))
        save_nifti(anat / f"{subject}_rec-mial_dseg.nii.gz", labels.astype(np.uint8), np.eye(4))
    convert_feta(tmp_path / "Dataset002_FeTA", root=str(tmp_path / "feta"), reconstruction="", overwrite=False)
    dataset = read_dataset(tmp_path / "Dataset002_FeTA")
    assert [c.id for c in dataset.training] == ["sub-001_rec-mial", "sub-002_rec-mial"]
    lut = np.array([FETA_TO_FETAL_BRAIN[v] for v in range(8)])
    np.testing.assert_array_equal(dataset.load("sub-002_rec-mial")[1], lut[feta_labels["sub-002"]])


def test_cases_are_scored_only_on_what_they_annotate(mni_dataset):
    from labelset_jax.evaluation import Prediction, score_case

    dataset = read_dataset(mni_dataset[0])
    rng = np.random.default_rng(0)

    def prediction(labels):
        probs = np.eye(4, dtype=np.float32)[labels]
        return Prediction(probs, labels)

    # WM only: CSF and GM are not scored, and what is predicted inside the set voxels among CSF/GM
    # changes nothing
    wm_only = dataset.load_case("mni_002")
    assert wm_only.protocol == "background+wm" and wm_only.annotated == (0, 3)
    full = mni_tissue_case(2, voxel_size=8).labels
    pred = np.where(rng.random(full.shape) < 0.8, full, rng.integers(0, 4, full.shape)).astype(np.int32)
    swapped = np.where(np.isin(pred, [1, 2]) & (wm_only.labels == 4), 3 - pred, pred)
    assert not np.array_equal(swapped, pred)
    row, row_swapped = (score_case(wm_only, prediction(p), dataset.space) for p in (pred, swapped))
    assert np.isnan(row["dice_csf"]) and np.isnan(row["dice_gm"]) and 0 < row["dice_wm"] < 1
    assert row == pytest.approx(row_swapped, nan_ok=True)
    # the ignore label: voxels of unknown label are left out, whatever is predicted there
    ignore = dataset.load_case(WITH_IGNORE)
    assert ignore.protocol == "all+ignore" and ignore.annotated == (0, 1, 2, 3)
    truth = np.where(ignore.labels == 5, 0, ignore.labels)
    other = np.where(ignore.labels == 5, rng.integers(0, 4, truth.shape), truth).astype(np.int32)
    row = score_case(ignore, prediction(other), dataset.space)
    assert [row[f"dice_{n}"] for n in ("csf", "gm", "wm")] == [1.0, 1.0, 1.0]
    assert row["dvol_soft_wm"] == pytest.approx(0.0, abs=1e-9)
