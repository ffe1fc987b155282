"""The multi-device checks of the suite (run as a script: importing it would give this process 4 devices), in one process with 4 CPU devices (``jax_num_cpu_devices``
must be set before JAX starts, so they cannot run in the test process): run by the session fixture
``multi_device`` of ``conftest.py``, which the tests read. Prints one JSON object.

* ``trajectory``: the training losses of 3 steps of the tiny default config, batch 4 over 4 devices;
* ``batch``: what ``train.validate_config`` says of batch sizes 4 and 3 on 4 devices;
* ``mesh``: per fused loss, value and gradient on a batch sharded over the devices against the
  unsharded ones, and the gradient's sharding.
"""

from __future__ import annotations

import json
import sys
import tempfile

import jax

if __name__ == "__main__":  # not when pytest imports the module to collect doctests
    jax.config.update("jax_num_cpu_devices", 4)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from configs import default  # noqa: E402
from labelset_jax import losses, train  # noqa: E402
from labelset_jax.labelsets import FETAL_BRAIN  # noqa: E402
from labelset_jax.losses import _common  # noqa: E402
from labelset_jax.writers import read_jsonl  # noqa: E402
from tests.helpers import tiny, trajectory_config  # noqa: E402


def main() -> None:
    out = {"devices": jax.device_count()}
    with tempfile.TemporaryDirectory() as workdir:
        train.train_and_evaluate(trajectory_config(), workdir)
        out["trajectory"] = [r["train/loss"] for r in read_jsonl(f"{workdir}/metrics.jsonl")]
    out["batch"] = {}
    for batch_size in (4, 3):
        try:
            train.validate_config(tiny(default.get_config(), batch_size=batch_size))
            out["batch"][batch_size] = "ok"
        except ValueError as e:
            out["batch"][batch_size] = str(e)
    # several chunks of the CPU form on a small batch
    _common.EXECUTION["cpu"] = _common.Execution(chunk_elements=2**12, unroll_channels=16)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(9)
    logits = rng.normal(scale=3.0, size=(4, 4_000, 9)).astype(np.float32)
    labels = rng.integers(0, FETAL_BRAIN.num_ids, size=(4, 4_000)).astype(np.int32)
    z = jax.device_put(logits, NamedSharding(mesh, P("data")))
    g = jax.device_put(labels, NamedSharding(mesh, P("data")))
    out["mesh"] = {}
    for name, options in [("leaf_dice", {}), ("marginal_dice", {"batch_dice": True}), ("marginal_cross_entropy", {})]:
        fn = lambda z, g, name=name, options=options: getattr(losses, name)(z, g, label_space=FETAL_BRAIN, **options)
        with jax.set_mesh(mesh):
            value, grad = jax.jit(jax.value_and_grad(fn))(z, g)
        want_value, want_grad = jax.jit(jax.value_and_grad(fn))(logits, labels)
        out["mesh"][name] = {
            "sharded_like_the_batch": grad.sharding.spec == P("data"),
            "value_rel_diff": float(abs(value - want_value) / abs(want_value)),
            "grad_max_diff": float(jnp.abs(grad - want_grad).max() / jnp.abs(want_grad).max()),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
