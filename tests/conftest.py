"""Fixtures shared by the test modules (plain helpers are in ``tests/helpers.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from configs import default
from labelset_jax import train
from tests.helpers import ROOT, tiny


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """A finished one-step training run of the default config at the tiny scale, trained once per
    test process; tests only read it (evaluate, predict) or copy it."""
    path = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(tiny(default.get_config(), num_steps=1, eval_every=1), path)
    return path


@pytest.fixture(scope="session")
def multi_device():
    """The results of ``tests/multi_device_checks.py``: one process with 4 CPU devices for every
    multi-device check of the suite (tests that read it share an xdist group, so it runs once)."""
    out = subprocess.run([sys.executable, "-m", "tests.multi_device_checks"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4, result
    return result
