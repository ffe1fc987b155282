"""Value-and-gradient time and peak memory of the losses, with ratios against peers.

Peers measured in the same run, on the same data:
  * the memory floor: ``np.copy`` of the logits, i.e. read the logits and write a *new* array of
    their size (every JAX function writes its gradient into a freshly allocated buffer), and a copy
    into an array allocated and touched beforehand, ``np.copyto``;
  * a textbook leaf-Dice under ``jax.jit(jax.value_and_grad(...))`` (plain autodiff, no custom VJP);
  * MONAI ``DiceLoss(softmax=True, squared_pred=True)`` forward+backward, when torch and monai are
    importable (``pip install -e '.[bench]'``); skipped otherwise.

Times are medians of ``--repeats`` runs: wall clock and process CPU time (all threads). Peak
memory is XLA's own account of the compiled value-and-gradient function (arguments + outputs +
temporaries − aliased), divided by the size of the logits.

Run: ``python benchmarks/bench_losses.py --shape 2,96,96,96,9`` (default). Prints a Markdown table.
``--losses`` selects rows (e.g. to time another checkout of the package on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from labelset_jax import losses
from labelset_jax.labelsets import FETAL_BRAIN

_SHAPE = flags.DEFINE_string("shape", "2,96,96,96,9", "logits shape B,D,H,W,C (C=9: fetal brain)")
_REPEATS = flags.DEFINE_integer("repeats", 7, "timed runs after warm-up (the median is reported)")
_SEED = flags.DEFINE_integer("seed", 0, "data seed")
_PEER_DEVICE = flags.DEFINE_enum("peer_device", "cpu", ["cpu", "cuda"],
                                 "where MONAI's DiceLoss runs (JAX runs on its default backend)")
_LOSSES = flags.DEFINE_list(
    "losses", "leaf_dice,marginal_dice,marginal_cross_entropy,soft_dice,dice_semimetric,textbook,monai",
    "rows to measure: loss names, 'textbook' (plain-autodiff leaf-Dice) and 'monai'")


def median_times(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of ``fn()`` (all threads; less sensitive than the
    wall clock to other jobs on the machine)."""
    fn()  # warm-up (compilation)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def median_time(fn, repeats: int) -> float:
    return median_times(fn, repeats)[0]


def textbook_leaf_dice(logits, labels):
    """Leaf-Dice written the obvious way, differentiated by plain autodiff (the peer)."""
    c = logits.shape[-1]
    probs = jax.nn.softmax(logits, axis=-1)
    target = jax.nn.one_hot(labels, c)  # set ids >= C give all-zero rows: the leaf target
    axes = tuple(range(1, logits.ndim - 1))
    num = 2 * jnp.sum(probs * target, axis=axes)
    den = jnp.sum(probs**2, axis=axes) + jnp.sum(target, axis=axes) + 1e-5
    return jnp.mean(1 - jnp.mean(num / den, axis=-1))


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def make_data(shape, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape).astype(np.float32) * 3
    labels = rng.integers(0, FETAL_BRAIN.num_ids, size=shape[:-1]).astype(np.int32)
    soft = rng.dirichlet(np.full(shape[-1], 0.5), size=shape[:-1]).astype(np.float32)
    return logits, labels, soft


def monai_time(logits_np, labels_np, repeats):
    """MONAI DiceLoss forward+backward on the same data, or None when torch/monai are missing."""
    try:
        import torch
        from monai.losses import DiceLoss
    except ImportError as e:
        print(f"(MONAI peer skipped: {e})")
        return None
    num_classes = logits_np.shape[-1]
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(_PEER_DEVICE.value)
    x = torch.from_numpy(np.moveaxis(logits_np, -1, 1).copy()).to(device).requires_grad_(True)
    one_hot = np.eye(num_classes, dtype=np.float32)[np.minimum(labels_np, num_classes - 1)]
    y = torch.from_numpy(np.moveaxis(one_hot, -1, 1).copy()).to(device)
    dice = DiceLoss(softmax=True, squared_pred=True)

    def step():
        x.grad = None
        dice(x, y).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return median_time(step, repeats)


def main(argv):
    del argv
    shape = tuple(int(s) for s in _SHAPE.value.split(","))
    logits_np, labels_np, soft_np = make_data(shape, _SEED.value)
    nbytes = logits_np.nbytes
    logits, labels, soft = jnp.asarray(logits_np), jnp.asarray(labels_np), jnp.asarray(soft_np)
    full_labels = jnp.asarray(np.minimum(labels_np, shape[-1] - 1))
    repeats = _REPEATS.value
    space = FETAL_BRAIN

    floor = median_time(lambda: np.copy(logits_np), repeats)
    dst = np.empty_like(logits_np)
    warm_floor = median_time(lambda: np.copyto(dst, logits_np), repeats)

    cases = {
        "leaf_dice": (lambda z, g: losses.leaf_dice(z, g, label_space=space), labels),
        "marginal_dice": (lambda z, g: losses.marginal_dice(z, g, label_space=space), labels),
        "marginal_cross_entropy": (
            lambda z, g: losses.marginal_cross_entropy(z, g, label_space=space), labels),
        "soft_dice": (lambda z, g: losses.soft_dice(z, g), full_labels),
        "dice_semimetric": (lambda z, t: losses.dice_semimetric(z, t), soft),
        "textbook": (textbook_leaf_dice, labels),
    }
    names = {"textbook": "textbook leaf-Dice (plain autodiff)",
             "dice_semimetric": "dice_semimetric (soft targets)"}
    rows = []
    for key in _LOSSES.value:
        if key not in cases:
            continue
        fn, second = cases[key]
        compiled = jax.jit(jax.value_and_grad(fn)).lower(logits, second).compile()
        t, cpu = median_times(lambda: jax.block_until_ready(compiled(logits, second)), repeats)
        rows.append((names.get(key, key), t, cpu, peak_bytes(compiled)))
    monai = monai_time(logits_np, labels_np, repeats) if "monai" in _LOSSES.value else None

    print(f"\nlogits {shape} float32 = {nbytes / 2**20:.1f} MiB; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; package {os.path.dirname(losses.__file__)}")
    print(f"memory floor (np.copy of the logits, new output array): {floor * 1e3:.1f} ms")
    print(f"copy into a preallocated array (np.copyto): {warm_floor * 1e3:.1f} ms")
    if monai is not None:
        print(f"MONAI DiceLoss(softmax, squared_pred) fwd+bwd: {monai * 1e3:.1f} ms")
    print("\n| loss (value+grad) | time (ms) | CPU time (ms) | × floor | × np.copyto | MONAI ÷ this "
          "| peak memory ÷ logits |")
    print("|---|---|---|---|---|---|---|")
    for name, t, cpu, peak in rows:
        vs_monai = f"{monai / t:.1f}" if monai is not None else "n/a"
        print(f"| {name} | {t * 1e3:.1f} | {cpu * 1e3:.0f} | {t / floor:.2f} | {t / warm_floor:.2f} | "
              f"{vs_monai} | {peak / nbytes:.2f} |")


if __name__ == "__main__":
    app.run(main)
