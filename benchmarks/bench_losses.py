"""Value-and-gradient speed and peak memory of the Dice/CE losses, as ratios against peers.

Peers measured in the same run, on the same data:
  * the memory floor: ``np.copy`` of the logits, i.e. read the logits and write a *new* array of
    their size. Like every JAX function, a loss's gradient lands in a freshly allocated buffer,
    whose pages the OS maps in (and zeroes) on first write; on this 2-core VM that costs about as
    much as the copy itself, so the table also gives the ratio to a copy into an array allocated
    (and touched) beforehand, ``np.copyto`` (the floor of earlier versions of this script);
  * on CPU, the same losses through their pure-JAX path (the fused CPU kernels turned off);
  * a textbook leaf-Dice under ``jax.jit(jax.value_and_grad(...))`` (plain autodiff, no custom VJP);
  * MONAI ``DiceLoss(softmax=True, squared_pred=True)`` forward+backward, when torch and monai are
    importable (``pip install -e '.[bench]'``).

Run: ``python benchmarks/bench_losses.py --shape 2,96,96,96,9`` (default). Prints a Markdown table.
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
from labelset_jax.losses import _kernels
from labelset_jax.labelsets import FETAL_BRAIN

_SHAPE = flags.DEFINE_string("shape", "2,96,96,96,9", "logits shape B,D,H,W,C (C=9: fetal brain)")
_REPEATS = flags.DEFINE_integer("repeats", 7, "timed runs after warm-up (the median is reported)")
_SEED = flags.DEFINE_integer("seed", 0, "data seed")


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    return logits, labels


def main(argv):
    del argv
    shape = tuple(int(s) for s in _SHAPE.value.split(","))
    logits_np, labels_np = make_data(shape, _SEED.value)
    nbytes = logits_np.nbytes
    logits, labels = jnp.asarray(logits_np), jnp.asarray(labels_np)
    full_labels = jnp.asarray(np.minimum(labels_np, shape[-1] - 1))
    repeats = _REPEATS.value

    floor = median_time(lambda: np.copy(logits_np), repeats)
    dst = np.empty_like(logits_np)
    warm_floor = median_time(lambda: np.copyto(dst, logits_np), repeats)

    rows = []

    def bench(name, loss_fn, lbl):
        vg = jax.jit(jax.value_and_grad(loss_fn))
        compiled = vg.lower(logits, lbl).compile()
        t = median_time(lambda: jax.block_until_ready(compiled(logits, lbl)), repeats)
        rows.append((name, t, peak_bytes(compiled)))

    space = FETAL_BRAIN
    cases = [
        ("leaf_dice", lambda z, g: losses.leaf_dice(z, g, label_space=space), labels),
        ("marginal_dice", lambda z, g: losses.marginal_dice(z, g, label_space=space), labels),
        ("marginal_cross_entropy", lambda z, g: losses.marginal_cross_entropy(z, g, label_space=space), labels),
        ("soft_dice", lambda z, g: losses.soft_dice(z, g), full_labels),
    ]
    kernels = _kernels.available() and jax.devices()[0].platform == "cpu"
    for name, fn, lbl in cases:
        bench(name + (" (CPU kernel)" if kernels else ""), fn, lbl)
    if kernels:  # what the kernels bought: the same losses through the pure-JAX path
        with _kernels.disabled():
            for name, fn, lbl in cases:
                bench(name + " (pure JAX)", fn, lbl)
    bench("textbook leaf-Dice (plain autodiff)", textbook_leaf_dice, labels)

    monai_time = None
    try:
        import torch
        from monai.losses import DiceLoss

        torch.set_num_threads(os.cpu_count() or 1)
        x = torch.from_numpy(np.moveaxis(logits_np, -1, 1).copy()).requires_grad_(True)
        y = torch.from_numpy(np.moveaxis(np.eye(shape[-1], dtype=np.float32)[np.minimum(labels_np, shape[-1] - 1)], -1, 1).copy())
        dice = DiceLoss(softmax=True, squared_pred=True)

        def monai_step():
            x.grad = None
            dice(x, y).backward()

        monai_time = median_time(monai_step, repeats)
    except ImportError as e:
        print(f"(MONAI peer skipped: {e})")

    print(f"\nlogits {shape} float32 = {nbytes / 2**20:.1f} MiB; jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"memory floor (np.copy of the logits, new output array): {floor * 1e3:.1f} ms")
    print(f"copy into a preallocated array (np.copyto): {warm_floor * 1e3:.1f} ms")
    if monai_time is not None:
        print(f"MONAI DiceLoss(softmax, squared_pred) fwd+bwd: {monai_time * 1e3:.1f} ms")
    print("\n| loss (value+grad) | time (ms) | × floor | × np.copyto | MONAI ÷ this | peak memory ÷ logits |")
    print("|---|---|---|---|---|---|")
    for name, t, peak in rows:
        vs_monai = f"{monai_time / t:.1f}" if monai_time is not None else "n/a"
        print(f"| {name} | {t * 1e3:.1f} | {t / floor:.2f} | {t / warm_floor:.2f} | {vs_monai} | "
              f"{peak / nbytes:.2f} |")


if __name__ == "__main__":
    app.run(main)
