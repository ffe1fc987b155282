"""Atomic writes: complete files or none, ordinary permissions, nothing left behind on failure."""

from __future__ import annotations

import csv
import json
import os
import stat

import numpy as np
import pytest

from labelset_jax import files
from labelset_jax.data import phantom_cohort, save_nifti, write_cohort


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writers_write_the_content(tmp_path):
    files.write_text(tmp_path / "a" / "b.txt", "héllo\n")
    files.write_json(tmp_path / "c.json", {"z": 1, "a": [0.5]}, sort_keys=True)
    files.write_csv(tmp_path / "d.csv", [{"id": "x", "dice": 0.5}, {"id": "y", "dice": 0.25}])
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "c.json").read_text().index('"a"') < (tmp_path / "c.json").read_text().index('"z"')
    assert json.loads((tmp_path / "c.json").read_text()) == {"z": 1, "a": [0.5]}
    assert list(csv.DictReader(open(tmp_path / "d.csv"))) == [{"id": "x", "dice": "0.5"}, {"id": "y", "dice": "0.25"}]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.txt", "c.json", "d.csv"]  # no temporary left


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_permissions_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    files.write_bytes(tmp_path / "f.bin", b"x")
    save_nifti(tmp_path / "v.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    write_cohort(tmp_path / "cohort", phantom_cohort({"full": 1}, shape=(32, 32, 32)))
    assert mode(tmp_path / "f.bin") == file_mode
    assert mode(tmp_path / "v.nii.gz") == file_mode
    assert mode(tmp_path / "cohort") == dir_mode
    assert mode(tmp_path / "cohort" / "manifest.csv") == file_mode
    assert {mode(p) for p in (tmp_path / "cohort" / "images").iterdir()} == {file_mode}


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.json"
    files.write_json(path, {"old": True})
    with pytest.raises(TypeError):
        files.write_json(path, {"bad": object()})  # fails while encoding
    with pytest.raises(RuntimeError), files.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_directory_replaces_or_refuses(tmp_path):
    target = tmp_path / "d"
    with files.atomic_directory(target) as tmp:
        (tmp / "one").write_text("1")
    with pytest.raises(ValueError, match="already exists"):
        with files.atomic_directory(target):
            pass
    with pytest.raises(RuntimeError), files.atomic_directory(target, overwrite=True) as tmp:
        (tmp / "two").write_text("2")
        raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["one"]
    with files.atomic_directory(target, overwrite=True) as tmp:
        (tmp / "two").write_text("2")
    assert [p.name for p in target.iterdir()] == ["two"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
