"""Fixtures shared by the test modules (plain helpers are in ``tests/helpers.py``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from configs import default
from labelset_jax import train
from tests.helpers import ROOT, tiny


def _once(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """A folder that ``make(folder)`` fills once per test session, shared by every pytest-xdist
    worker (they share the parent of their temporary folders; a file lock makes the others wait)."""
    if worker_id == "master":  # not distributed
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".done").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".done").touch()
    return folder


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, worker_id):
    """A finished one-step training run of the default config at the tiny scale, trained once per
    test session; tests only read it (evaluate, predict) or copy it."""
    def make(folder):
        train.train_and_evaluate(tiny(default.get_config(), num_steps=1, eval_every=1), folder / "run")
    return _once(tmp_path_factory, worker_id, "workdir", make) / "run"


@pytest.fixture(scope="session")
def multi_device(tmp_path_factory, worker_id):
    """The results of ``tests/multi_device_checks.py``: one process with 4 CPU devices for every
    multi-device check of the suite, run once per test session."""
    def make(folder):
        out = subprocess.run([sys.executable, "-m", "tests.multi_device_checks"], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        (folder / "result.json").write_text(out.stdout.strip().splitlines()[-1])
    result = json.loads((_once(tmp_path_factory, worker_id, "multi_device", make) / "result.json").read_text())
    assert result["devices"] == 4, result
    return result
