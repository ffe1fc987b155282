"""Batches per second of the patch loader with the default CPU training configuration.

Default: 8 fetal brain phantoms of 48³ (a mix of full and partial annotations), global batch 2,
patches 32³ (as ``configs/default.py``), default augmentation (flip, zoom 0.9-1.1, noise/contrast/gamma in the brain mask),
foreground-biased patches, prefetch 2 in a background thread. Then times the jitted train step of
``configs/default.py`` in the same run and prints the ratio: the loader must be >= 2x faster.

Run: ``python benchmarks/bench_loader.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import time

from labelset_jax.data import Loader, phantom_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8, help="number of phantom cases")
    parser.add_argument("--size", type=int, default=48, help="phantom side (voxels), as configs/default.py")
    parser.add_argument("--patch", type=int, default=32, help="patch side (voxels), as configs/default.py")
    parser.add_argument("--batch", type=int, default=2, help="global batch size")
    parser.add_argument("--batches", type=int, default=200, help="timed batches")
    parser.add_argument("--prefetch", type=int, default=2, help="prefetched batches (0: synchronous)")
    parser.add_argument("--no-augment", action="store_true", help="plain random patches")
    parser.add_argument("--train-steps", type=int, default=10, help="timed train steps of configs/default.py (0: skip)")
    args = parser.parse_args()

    n_full = max(1, args.cases // 4)
    rest = args.cases - n_full
    protocols = {
        "full": n_full,
        "wm_vent_cereb": rest - 2 * (rest // 3),
        "plus_ecsf": rest // 3,
        "plus_ecsf_cc": rest // 3,
    }
    start = time.perf_counter()
    cohort = phantom_cohort(protocols, shape=(args.size,) * 3)
    made = time.perf_counter() - start
    print(f"phantoms: {len(cohort)} x {args.size}^3 in {made:.2f} s ({made / len(cohort) * 1000:.0f} ms/case)")

    start = time.perf_counter()
    loader = Loader(
        cohort.cases,
        batch_size=args.batch,
        patch_size=(args.patch,) * 3,
        seed=0,
        augment=not args.no_augment,
        prefetch=args.prefetch,
    )
    print(f"loader set-up (normalisation, foreground index): {time.perf_counter() - start:.2f} s")
    with loader:
        for _ in range(5):  # warm-up: start the worker, fill the queue
            next(loader)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(loader)
        elapsed = time.perf_counter() - start
    rate = args.batches / elapsed
    print(
        f"loader: batch {args.batch}, patches {args.patch}^3 from {args.size}^3, "
        f"augment={not args.no_augment}, prefetch={args.prefetch}: {rate:.1f} batches/s "
        f"({rate * args.batch:.1f} samples/s)"
    )

    # The rate without the background thread: the cost of one batch on the consumer's core.
    sync = Loader(cohort.cases, batch_size=args.batch, patch_size=(args.patch,) * 3, seed=0,
                  augment=not args.no_augment, prefetch=0)  # fmt: skip
    start = time.perf_counter()
    for step in range(args.batches):
        sync.batch(step)
    sync_rate = args.batches / (time.perf_counter() - start)
    print(f"synchronous batch(): {sync_rate:.1f} batches/s")

    if args.train_steps:
        step_rate = train_step_rate(args.train_steps)
        print(f"default-config train step ({args.train_steps} timed steps): {step_rate:.2f} steps/s")
        print(f"loader rate / train-step rate: prefetching {rate / step_rate:.0f}x, synchronous {sync_rate / step_rate:.0f}x "
              "(target >= 2x)")


def train_step_rate(steps: int) -> float:
    """Steps/s of the jitted train step of ``configs/default.py`` on its own batches (compiled first)."""
    import jax
    import ml_collections
    from flax import nnx

    from configs import default
    from labelset_jax import input_pipeline, train
    from labelset_jax.models import create_model

    config = default.get_config()
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.protocols = {"full": 1, "wm_vent_cereb": 1}
    datasets = input_pipeline.create_datasets(data, seed=0)
    loader = input_pipeline.create_loader(config, datasets.train, datasets.label_space)
    model = create_model(config.model, num_classes=datasets.label_space.num_classes, rngs=nnx.Rngs(0))
    mesh = train.make_mesh()
    with jax.set_mesh(mesh), loader:
        trainer, state = train.create_trainer(config, model, datasets.label_space, mesh)
        batches = [train.shard_batch(next(loader), trainer.data_sharding) for _ in range(steps + 1)]
        state, out = trainer.train_step(state, *batches[0])  # compile
        jax.block_until_ready(out)
        start = time.perf_counter()
        for batch in batches[1:]:
            state, out = trainer.train_step(state, *batch)
        jax.block_until_ready(out)
        return steps / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
