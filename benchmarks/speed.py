"""What the two speed benchmarks (``bench_train.py``, ``bench_inference.py``) share: building our
model and its jitted functions from a config through the public training API, timing two
functions interleaved in one process, and the peak memory of a fresh process."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from labelset_jax import input_pipeline, train
from labelset_jax.models import count_params, create_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(ROOT / "configs" / "default.py")


HUGEPAGES = "glibc.malloc.hugetlb=1"


def ensure_hugepages(enabled: bool) -> None:
    """Restarts this script with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` when ``enabled`` and not
    yet set (glibc reads it at start-up). glibc then asks for transparent huge pages for the large
    blocks it maps, such as XLA's per-step buffers; on this VM first-touch page faults otherwise
    cost about as much as the memory traffic (see benchmarks/RESULTS.md). Both frameworks run in
    the one process, so both get it."""
    if enabled and HUGEPAGES not in os.environ.get("GLIBC_TUNABLES", ""):
        tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), HUGEPAGES]))
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": tunables})


def model_config(config: ml_collections.ConfigDict, *, preset: str, downsample: str, conv_impl: str,
                 remat: bool, dots_min_features: int | None = None) -> ml_collections.ConfigDict:
    """``config`` with its model replaced by ``preset`` ("" keeps the config's model) and the
    given overrides ("" keeps the preset's), and the optimiser that the PyTorch twin reproduces:
    Adam at a constant learning rate after clipping the global gradient norm to 1."""
    config = ml_collections.ConfigDict(config.to_dict())
    if preset:
        config.model = ml_collections.ConfigDict({"preset": preset})
    if downsample:
        config.model.downsample = downsample
    if conv_impl:
        config.model.conv_impl = conv_impl
    if dots_min_features is not None:
        config.model.dots_min_features = int(dots_min_features)
    config.model.remat = bool(remat)
    config.optimizer = ml_collections.ConfigDict(dict(name="adam", schedule="constant", grad_clip_norm=1.0))
    return config


def build(config: ml_collections.ConfigDict):
    """``(model, trainer, state, label_space, mesh)`` through ``labelset_jax.train``."""
    label_space = input_pipeline.label_space_for(config.data)
    model = create_model(config.model, num_classes=label_space.num_classes, rngs=nnx.Rngs(config.seed))
    mesh = train.make_mesh()
    with jax.set_mesh(mesh):
        trainer, state = train.create_trainer(config, model, label_space, mesh)
    return model, trainer, state, label_space, mesh


def interleaved(fns: dict, reps: int) -> dict[str, list[float]]:
    """Wall times of ``reps`` calls of each function (each must block until its work is done),
    taken in turns, the order rotating each round so neither always follows the other."""
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(xs) -> float:
    return statistics.median(xs)


def rss_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Resets this process's peak resident set size to the current one (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def probe_memory(script: str, framework: str, argv: list[str]) -> dict:
    """Runs ``script --probe=framework`` in a fresh process; returns the JSON it prints last."""
    out = subprocess.run([sys.executable, script, f"--probe={framework}", *argv], capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"memory probe {framework} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def forwarded_flags(flag_values, names) -> list[str]:
    """``--name=value`` for each flag in ``names`` (to rerun the script with the same settings)."""
    values = {n: getattr(flag_values, n) for n in names}
    return [f"--{n}={','.join(map(str, v)) if isinstance(v, list) else v}" for n, v in values.items()]


def peer_device(name: str):
    """The PyTorch peer's ``torch.device`` for ``--peer_device`` (``cpu`` or ``cuda``); one clear
    error when CUDA is asked for and torch has none."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --peer_device=cuda but torch sees no CUDA device "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return torch.device(name)


def synced(fn, device):
    """``fn`` followed by ``torch.cuda.synchronize()`` on a CUDA device (kernels run asynchronously:
    a timing must wait for them), unchanged on the CPU."""
    if device.type != "cuda":
        return fn
    import torch

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def autocast(device, dtype: str):
    """``torch.autocast`` to bfloat16 on ``device`` when ``dtype == "bfloat16"`` (the peer's mixed
    precision, as ours computes the network in bfloat16 with float32 parameters), else a no-op."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def environment() -> str:
    import torch

    return (f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device(s)), torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
            f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, "
            f"load average {load_average()}")


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages: other work on the machine perturbs the timings."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def describe(model, config) -> str:
    return (f"{config.model.get('preset', 'small')} model, features {model.features}, {count_params(model):,} "
            f"parameters, downsample={model.downsample}, conv={conv_name(model)}, "
            f"remat={bool(config.model.get('remat', False))}, dtype={config.model.get('dtype', 'float32')}")


def conv_name(model) -> str:
    """How the model's convolutions are computed: ``native`` or ``folded(dots_min_features=N)``."""
    conv = model.encoder[0].first.conv.conv_general_dilated
    keywords = getattr(conv, "keywords", None)
    return f"folded(dots_min_features={keywords['dots_min_features']})" if keywords else "native"


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
