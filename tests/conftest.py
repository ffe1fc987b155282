"""Fixtures shared by the test modules (plain helpers are in ``tests/helpers.py``)."""

from __future__ import annotations

import pytest

from configs import default
from labelset_jax import train
from tests.helpers import tiny


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """A finished one-step training run of the default config at the tiny scale, trained once per
    test process; tests only read it (evaluate, predict) or copy it."""
    path = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(tiny(default.get_config(), num_steps=1, eval_every=1), path)
    return path
