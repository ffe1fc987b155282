r"""Where the time of our train step (or sliding-window inference) goes: the XLA ops of two
profiled calls, grouped by kind.

Builds the model and jitted step as ``bench_train.py`` does (same flags), runs two steps (or, with
``--volume``, two sliding-window inferences as ``bench_inference.py`` times them) under
``jax.profiler`` and prints the share of each kind of op (convolution, its gradients, fusions,
reductions, copies, ...) and the most expensive single ops, per step. This is the profile behind
the "what holds it back" notes of ``benchmarks/RESULTS.md``.

    python benchmarks/profile_step.py --preset=reference --patch=64 --batch=1
    python benchmarks/profile_step.py --top=30                      # the default (small) model
    python benchmarks/profile_step.py --volume=97,115,97            # its sliding-window inference
"""

from __future__ import annotations

import collections
import re
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

import bench_train
import speed
from labelset_jax.inference import sliding_window_inference

_TOP = flags.DEFINE_integer("top", 15, "how many single ops to list")
_VOLUME = flags.DEFINE_list("volume", [], "profile sliding-window inference over a volume D,H,W (not a train step)")
_ROI = flags.DEFINE_integer("roi", 64, "inference: cubic window size")
_SW_BATCH = flags.DEFINE_integer("sw_batch_size", 2, "inference: windows per model call")

# Op kinds by the name XLA:CPU gives the op (the HLO instruction or fusion name).
_KINDS = [
    ("YNNPACK library call (convolutions, matrix products)", r"^ynn|^xnn|onednn"),
    ("convolution in XLA's own loops", r"convolution"),
    ("matrix product (Eigen)", r"dot"),
    ("reduction", r"reduce"),
    ("scatter / gather / dynamic slice", r"scatter|gather|dynamic"),
    ("copy / transpose / pad / concatenate / slice", r"^(copy|transpose|pad|concatenate|slice)"),
    ("other fusion (element-wise)", r"fusion"),
]


def kind(name: str) -> str:
    for label, pattern in _KINDS:
        if re.search(pattern, name):
            return label
    return "other"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    speed.ensure_hugepages(bench_train._HUGEPAGES.value)
    config, model, trainer, state, mesh, _, images, labels, _ = bench_train.setup()
    print(speed.environment())
    with jax.set_mesh(mesh):
        if _VOLUME.value:  # one sliding-window inference of a random volume
            volume = tuple(int(v) for v in _VOLUME.value)
            image = np.random.default_rng(0).standard_normal((1, *volume, 1), dtype=np.float32)
            print(speed.describe(model, config) + f"; sliding window over {volume}, roi {_ROI.value}³, overlap 0.5, "
                  f"{_SW_BATCH.value} windows per call")

            def call():
                out = sliding_window_inference(trainer.predict, image, state, roi_size=(_ROI.value,) * 3,
                                               sw_batch_size=_SW_BATCH.value, overlap=0.5, mode="gaussian")
                jax.block_until_ready(out)
        else:
            print(speed.describe(model, config) + f"; train step, batch {config.batch_size} x {config.patch_size[0]}³")
            x = jax.device_put(images, trainer.data_sharding)
            y = jax.device_put(labels, trainer.data_sharding)
            holder = {"state": state}

            def call():
                holder["state"], _ = trainer.train_step(holder["state"], x, y)
                jax.block_until_ready(holder["state"])

        for _ in range(2):  # compile and warm up
            call()
        with tempfile.TemporaryDirectory() as folder:
            jax.profiler.start_trace(folder)
            start = time.perf_counter()
            for _ in range(2):
                call()
            step_s = (time.perf_counter() - start) / 2
            jax.profiler.stop_trace()
            trace = next(Path(folder).rglob("*.xplane.pb"))
            profile = jax.profiler.ProfileData.from_file(str(trace))
    per_op, calls = collections.Counter(), collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA") or "PjRt" in line.name:  # the threads running ops
                continue
            for event in line.events:
                if not event.name.startswith("ThunkExecutor"):
                    per_op[event.name] += event.duration_ns / 2e6  # ms per call
                    calls[event.name] += 1
    by_kind = collections.Counter()
    for name, ms in per_op.items():
        by_kind[kind(name)] += ms
    total = sum(by_kind.values())
    print(f"\n{step_s * 1e3:.0f} ms wall per call; {total:.0f} ms of op time per call "
          "(ops overlap on several threads)\n")
    print("| op kind | ms / call | share |\n|---|---|---|")
    for label, ms in by_kind.most_common():
        print(f"| {label} | {ms:.0f} | {ms / total:.0%} |")
    print("\n| top op | ms / call | runs / call |\n|---|---|---|")
    for name, ms in per_op.most_common(_TOP.value):
        print(f"| `{name[:90]}` | {ms:.1f} | {calls[name] // 2} |")


if __name__ == "__main__":
    app.run(main)
