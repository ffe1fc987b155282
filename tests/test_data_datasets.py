"""Cohorts with partial annotations, manifests (and their errors), the FeTA layout."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from labelset_jax.data import (
    FETA_TO_FETAL_BRAIN,
    Case,
    CaseFile,
    Cohort,
    feta_cases,
    load_cases,
    make_phantom,
    phantom_cohort,
    read_cohort,
    read_label_space,
    read_manifest,
    save_nifti,
    write_cohort,
    write_manifest,
)
from labelset_jax.labelsets import FETAL_BRAIN, FETAL_BRAIN_PROTOCOLS, LabelSpace

SHAPE = (32, 32, 32)
EXPECTED_IDS = {
    "full": set(range(9)),
    "wm_vent_cereb": {0, 1, 2, 3, 9},
    "plus_ecsf": {0, 1, 2, 3, 4, 10},
    "plus_ecsf_cc": {0, 1, 2, 3, 4, 8, 11},
}


@pytest.fixture(scope="module")
def cohort():
    return phantom_cohort({"full": 2, "wm_vent_cereb": 1, "plus_ecsf": 1, "plus_ecsf_cc": 1}, shape=SHAPE)


def test_protocols_produce_exactly_the_expected_ids(cohort):
    assert [c.protocol for c in cohort] == ["full", "full", "wm_vent_cereb", "plus_ecsf", "plus_ecsf_cc"]
    for case in cohort:
        assert set(np.unique(case.labels).tolist()) == EXPECTED_IDS[case.protocol], case.protocol
        np.testing.assert_array_equal(case.labels, FETAL_BRAIN_PROTOCOLS[case.protocol].apply(case.full_labels))
        # annotated leaves are untouched, the others all become the protocol's set
        for leaf in range(9):
            where = case.full_labels == leaf
            expected = leaf if leaf in EXPECTED_IDS[case.protocol] else max(EXPECTED_IDS[case.protocol])
            assert np.all(case.labels[where] == expected)
    assert cohort.space == FETAL_BRAIN
    assert cohort.manifest[2] == {"id": "phantom_0002", "protocol": "wm_vent_cereb"}
    assert [c.id for c in cohort.by_protocol("full")] == ["phantom_0000", "phantom_0001"]


def test_cohort_is_deterministic_and_follows_make_phantom(cohort):
    again = phantom_cohort(["full"] * 2, shape=SHAPE)
    np.testing.assert_array_equal(again[1].image, cohort[1].image)
    np.testing.assert_array_equal(make_phantom(3, shape=SHAPE)[1], cohort[3].full_labels)


def test_write_read_cohort_round_trip(tmp_path, cohort):
    manifest = write_cohort(tmp_path / "cohort", cohort)
    assert manifest == tmp_path / "cohort" / "manifest.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no temporary folder left
    rows = list(csv.DictReader(open(manifest)))
    assert [r["protocol"] for r in rows] == [c.protocol for c in cohort]
    assert rows[0]["image"] == "images/phantom_0000.nii.gz"  # relative paths
    loaded = read_cohort(tmp_path / "cohort")
    assert loaded.space == cohort.space == read_label_space(manifest)  # the space comes with the data
    for a, b in zip(cohort, loaded):
        assert (a.id, a.protocol, a.spacing, a.annotated) == (b.id, b.protocol, b.spacing, b.annotated)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.full_labels, b.full_labels)
        np.testing.assert_allclose(a.image, b.image)
        np.testing.assert_allclose(a.affine, b.affine)


def test_write_cohort_refuses_to_clobber_unless_asked(tmp_path, cohort):
    write_cohort(tmp_path / "c", Cohort(cohort.cases[:1], cohort.space))
    with pytest.raises(ValueError, match="already exists"):
        write_cohort(tmp_path / "c", Cohort(cohort.cases[:2], cohort.space))
    write_cohort(tmp_path / "c", Cohort(cohort.cases[1:3], cohort.space), overwrite=True)
    assert [f.id for f in read_manifest(tmp_path / "c" / "manifest.csv")] == ["phantom_0001", "phantom_0002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    with pytest.raises(ValueError, match="duplicate"):
        write_cohort(tmp_path / "d", Cohort([cohort[0], cohort[0]], cohort.space))
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------- manifests
@pytest.fixture()
def pair(tmp_path, cohort):
    case = cohort[2]  # wm_vent_cereb
    save_nifti(tmp_path / "data" / "a_img.nii.gz", case.image, case.affine)
    save_nifti(tmp_path / "data" / "a_lab.nii.gz", case.labels, case.affine)
    return case


def write_csv(path, text):
    path.write_text(text)
    return path


def test_manifest_round_trip_with_relative_paths(tmp_path, pair):
    entries = [CaseFile("a", tmp_path / "data/a_img.nii.gz", tmp_path / "data/a_lab.nii.gz", "wm_vent_cereb")]
    write_manifest(tmp_path / "lists" / "train.csv", entries)
    text = (tmp_path / "lists" / "train.csv").read_text()
    assert "../data/a_img.nii.gz" in text
    (files,) = [read_manifest(tmp_path / "lists" / "train.csv")]
    case = files[0].load(space=FETAL_BRAIN)
    np.testing.assert_array_equal(case.labels, pair.labels)
    assert case.protocol == "wm_vent_cereb" and files[0].source.endswith("train.csv:2")
    assert case.annotated == (0, 1, 2, 3)  # from the label map, the rule of every data source


def test_manifest_without_protocol_column_means_full(tmp_path, pair):
    path = write_csv(tmp_path / "m.csv", "id,image,label\nb,data/a_img.nii.gz,data/a_lab.nii.gz\n")
    (f,) = read_manifest(path)
    assert f.protocol == "full"
    # but the labels are partial: loading says so, naming the file
    with pytest.raises(ValueError, match=r"a_lab\.nii\.gz: the case is declared 'full' \(.*m\.csv:2\) but its label map"):
        f.load(space=FETAL_BRAIN)
    with pytest.raises(ValueError, match=r"a_lab\.nii\.gz: label value\(s\) \[9\] are neither a leaf"):
        f.load(space=LabelSpace.leaves(FETAL_BRAIN.names))


def test_a_manifest_folder_declares_its_label_space(tmp_path, pair):
    path = write_csv(tmp_path / "m.csv", "id,image,label,protocol\nb,data/a_img.nii.gz,data/a_lab.nii.gz,wm\n")
    with pytest.raises(ValueError, match=r"label_space\.json: missing"):
        read_label_space(path)
    (tmp_path / "label_space.json").write_text('{"labels": {"background": 0, "wm": 1, "wm": 2}}')
    with pytest.raises(ValueError, match=r"label_space\.json: the key 'wm' appears twice"):
        read_label_space(path)
    (tmp_path / "label_space.json").write_text('{"labels": {"background": 0}, "label_sets": {"x": {"id": 3, "members": [0, 7]}}}')
    with pytest.raises(ValueError, match=r"label_space\.json: "):
        read_label_space(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,image,protocol\na,data/a_img.nii.gz,full\n", r"m\.csv: missing column\(s\) \['label'\]"),
        (
            "id,image,label,protocol\na,data/a_img.nii.gz,data/a_lab.nii.gz,full\nb,data/nope.nii.gz,data/a_lab.nii.gz,full\n",
            r"m\.csv:3: image file .*nope\.nii\.gz not found",
        ),
        (
            "id,image,label\na,data/a_img.nii.gz,data/a_lab.nii.gz\na,data/a_img.nii.gz,data/a_lab.nii.gz\n",
            r"m\.csv:3: duplicate id 'a' \(first on line 2\)",
        ),
        ("id,image,label\n,data/a_img.nii.gz,data/a_lab.nii.gz\n", r"m\.csv:2: empty id"),
        ("id,image,label\na,data/a_img.nii.gz,\n", r"m\.csv:2: empty label path"),
    ],
)
def test_bad_manifests(tmp_path, pair, text, message):
    with pytest.raises(ValueError, match=message):
        read_manifest(write_csv(tmp_path / "m.csv", text))


def test_missing_manifest(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.csv: no such manifest"):
        read_manifest(tmp_path / "nothere.csv")


def test_case_ids_must_be_file_names():
    with pytest.raises(ValueError, match="case id"):
        Case("../evil", np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.int32), (1.0, 1.0, 1.0))


# ---------------------------------------------------------------------------------- FeTA
def make_feta(root, subjects, cohort):
    feta_of = {v: k for k, v in FETA_TO_FETAL_BRAIN.items()}  # fetal brain leaf -> FeTA label
    for i, (subject, rec) in enumerate(subjects):
        case = cohort[i]
        full = case.full_labels.copy()
        full[full == 8] = 1  # FeTA's white matter includes the corpus callosum
        feta = np.vectorize(feta_of.get)(full).astype(np.float32)  # FeTA stores floats
        anat = root / subject / "anat"
        save_nifti(anat / f"{subject}_rec-{rec}_T2w.nii.gz", case.image, case.affine)
        save_nifti(anat / f"{subject}_rec-{rec}_dseg.nii.gz", feta, case.affine)


def test_feta_reader_maps_labels(tmp_path, cohort):
    make_feta(tmp_path, [("sub-001", "mial"), ("sub-041", "irtk")], cohort)
    (tmp_path / "participants.tsv").write_text("participant_id\n")
    files = feta_cases(tmp_path)
    assert [f.id for f in files] == ["sub-001_rec-mial", "sub-041_rec-irtk"]
    assert [f.id for f in feta_cases(tmp_path, reconstruction="irtk")] == ["sub-041_rec-irtk"]
    case = load_cases(files[:1], space=FETAL_BRAIN)[0]
    expected = cohort[0].full_labels.copy()
    expected[expected == 8] = 1
    np.testing.assert_array_equal(case.labels, expected)
    assert 8 not in case.labels and case.protocol == "full"


def test_feta_errors(tmp_path, cohort):
    with pytest.raises(ValueError, match="no FeTA image"):
        feta_cases(tmp_path)
    make_feta(tmp_path, [("sub-002", "mial")], cohort)
    with pytest.raises(ValueError, match=r"unmapped|no entry"):
        feta_cases(tmp_path, label_mapping={0: 0, 1: 4})[0].load(space=FETAL_BRAIN)
    (tmp_path / "sub-002" / "anat" / "sub-002_rec-mial_dseg.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"sub-002_rec-mial_T2w\.nii\.gz: no segmentation"):
        feta_cases(tmp_path)


def test_phantom_cohort_abnormal_cases_are_the_last_of_their_protocol():
    cohort = phantom_cohort({"full": 2, "wm_vent_cereb": 3}, shape=SHAPE, abnormal={"wm_vent_cereb": 2})
    assert [c.metadata["abnormal"] for c in cohort.cases] == [False, False, False, True, True]
    normal = phantom_cohort({"full": 2, "wm_vent_cereb": 3}, shape=SHAPE)
    for a, b in zip(cohort.cases[:3], normal.cases[:3]):  # the normal cases are unchanged
        np.testing.assert_array_equal(a.full_labels, b.full_labels)
    sick = cohort.cases[-1]
    _, expected = make_phantom(4, shape=SHAPE, ventriculomegaly=True, small_cerebellum=True)
    np.testing.assert_array_equal(sick.full_labels, expected)
    assert (sick.full_labels == 2).sum() > (normal.cases[-1].full_labels == 2).sum()  # enlarged ventricles
    with pytest.raises(ValueError, match="abnormal"):
        phantom_cohort({"full": 1}, shape=SHAPE, abnormal={"full": 2})
