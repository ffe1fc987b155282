"""Multi-process data parallelism: two processes on localhost (``jax.distributed``, CPU collectives,
one device each) train the default config exactly as one process with two devices, and only
process 0 writes the run's outputs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# argv: mode ("multi" or "single"), workdir, file for this process's final parameters.
WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    mode, workdir, params_out = sys.argv[1:4]
    if mode == "single":
        jax.config.update("jax_num_cpu_devices", 2)
    else:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from configs import default
    from labelset_jax import train

    config = default.get_config()
    config.num_steps, config.batch_size, config.patch_size = 3, 4, (16, 16, 16)
    config.checkpoint_every, config.eval_every, config.log_every = 3, 0, 1
    config.data.shape, config.data.num_val, config.data.prefetch = (24, 24, 24), 1, 0
    config.data.protocols = {name: 1 for name in config.data.protocols}
    config.model.num_levels, config.model.base_features, config.model.max_features = 2, 4, 8
    train.train_and_evaluate(config, workdir)  # initialises jax.distributed from the environment
    state = train.load_trained(workdir, best=False).state
    assert jax.device_count() == 2, jax.devices()
    leaves = jax.tree_util.tree_leaves_with_path(state["params"])
    np.savez(params_out, **{jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
                            for path, leaf in leaves})
    print(json.dumps({"process": jax.process_index(), "local_devices": jax.local_device_count()}))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(mode: str, workdir: Path, params_out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, mode, str(workdir), str(params_out)], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def outputs(workdir: Path) -> list[str]:
    """The run's files relative to the workdir (TensorBoard's time stamps cut off), orbax's
    internal layout left out."""
    names = [str(p.relative_to(workdir)) for p in workdir.rglob("*")
             if p.is_file() and "checkpoints" not in p.relative_to(workdir).parts]
    return sorted(name.split("tfevents")[0] + "tfevents" if "tfevents" in name else name for name in names)


@pytest.mark.xdist_group("distributed")
def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    single = launch("single", tmp_path / "single", tmp_path / "single.npz", {})
    expected = finish(single, timeout=300)
    assert expected == {"process": 0, "local_devices": 2}

    port = free_port()
    procs = [launch("multi", tmp_path / "multi", tmp_path / f"multi{i}.npz",
                    {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
                     "JAX_PROCESS_ID": str(i)})
             for i in range(2)]
    reports = [finish(p, timeout=300) for p in procs]
    assert reports == [{"process": 0, "local_devices": 1}, {"process": 1, "local_devices": 1}]

    reference = np.load(tmp_path / "single.npz")
    for i in range(2):
        params = np.load(tmp_path / f"multi{i}.npz")
        assert sorted(params) == sorted(reference)
        for name in reference:
            np.testing.assert_allclose(params[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)

    # Only process 0 writes: the same files as the single-process run, each step logged once.
    assert outputs(tmp_path / "multi") == outputs(tmp_path / "single")
    steps = [json.loads(line)["step"] for line in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
