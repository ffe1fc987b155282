r"""Training-step speed of our U-Net against an architecture-identical PyTorch twin.

Ours: the model of ``--config`` (``configs/default.py``: the small preset; ``--preset=reference``
for the 14 M-parameter reference) and the jitted, state-donating train step of
``labelset_jax.train.create_trainer`` with the config's loss (leaf-Dice). The peer: the same
network written in plain PyTorch (``torch_twin.py``; parameter counts asserted equal, our initial
weights copied in and the logits and loss checked equal before timing), squared soft Dice, i.e.
the same loss on fully labelled volumes. Both: Adam at a constant learning rate after clipping the
global gradient norm to 1, the same random batch, float32, eager PyTorch.

Timing: one process, the two steps alternating ``--reps`` times after warm-up; the medians and
their ratio are printed, with our compile time (first call minus the median step) and, from
fresh processes (``--memory``), the peak resident memory above the process's size after imports
and data (steady state: measured over steps 2-3).

Run (needs ``pip install -e '.[test]'`` for torch and MONAI):

    python benchmarks/bench_train.py                                   # small model, 32³, batch 2
    python benchmarks/bench_train.py --preset=reference --patch=64 --batch=1
    python benchmarks/bench_train.py --conv_impl=native --downsample=stride   # the old network
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
import torch
from absl import app, flags
from ml_collections import config_flags

import speed
import torch_twin
from labelset_jax.models import cpu_conv

_CONFIG = config_flags.DEFINE_config_file("config", speed.DEFAULT_CONFIG, "Python config file (get_config()).")
_PRESET = flags.DEFINE_enum("preset", "", ["", "small", "reference"], "model preset ('' = the config's model)")
_PATCH = flags.DEFINE_integer("patch", 32, "cubic patch size")
_BATCH = flags.DEFINE_integer("batch", 2, "batch size")
_REPS = flags.DEFINE_integer("reps", 7, "timed steps of each framework (after 2 warm-up steps)")
_DOWNSAMPLE = flags.DEFINE_enum("downsample", "", ["", "maxpool", "stride"], "override ('' = the preset's)")
_CONV_IMPL = flags.DEFINE_enum("conv_impl", "", ["", "auto", "native", "folded"], "override ('' = the model's)")
_REMAT = flags.DEFINE_bool("remat", False, "rematerialise each stage in our backward pass")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "our model's computation type (config.model.dtype; parameters and loss stay float32)")
_MEMORY = flags.DEFINE_bool("memory", True, "also measure peak memory (two extra processes)")
_HUGEPAGES = flags.DEFINE_bool("hugepages", True, "run with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (both frameworks)")
_DOTS_MIN = flags.DEFINE_integer("dots_min_features", cpu_conv.DOTS_MIN_FEATURES,
                                 "kernel gradients as matrix products from this many output channels on")
_PEER_DEVICE = flags.DEFINE_enum("peer_device", "cpu", ["cpu", "cuda"],
                                  "where the PyTorch twin runs (JAX runs on its default backend)")
_PROBE = flags.DEFINE_enum("probe", "", ["", "jax", "torch"], "internal: memory probe of one framework")

FORWARDED = ("preset", "patch", "batch", "downsample", "conv_impl", "remat", "dtype", "hugepages",
             "dots_min_features", "peer_device")


def make_batch(batch: int, patch: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, patch, patch, patch, 1), dtype=np.float32)
    labels = rng.integers(0, num_classes, (batch, patch, patch, patch), dtype=np.int32)
    return images, labels


def setup():
    config = speed.model_config(_CONFIG.value, preset=_PRESET.value, downsample=_DOWNSAMPLE.value,
                                conv_impl=_CONV_IMPL.value, remat=_REMAT.value, dots_min_features=_DOTS_MIN.value)
    config.batch_size, config.patch_size = _BATCH.value, (_PATCH.value,) * 3
    config.model.dtype = _DTYPE.value
    start = time.perf_counter()
    model, trainer, state, space, mesh = speed.build(config)
    build_s = time.perf_counter() - start
    images, labels = make_batch(_BATCH.value, _PATCH.value, space.num_classes)
    twin = torch_twin.matched_twin(model)
    return config, model, trainer, state, mesh, twin, images, labels, build_s


def torch_step_fn(twin, images, labels, lr, device, dtype):
    """The twin's eager train step on ``device`` (bfloat16 autocast when ``dtype`` says so), synced."""
    twin.to(device)
    x = torch.from_numpy(images).permute(0, 4, 1, 2, 3).contiguous().to(device)
    y = torch.from_numpy(labels).long().to(device)
    opt = torch.optim.Adam(twin.parameters(), lr=lr)

    def step():
        opt.zero_grad(set_to_none=True)
        with speed.autocast(device, dtype):
            logits = twin(x)
        loss = torch_twin.soft_dice_loss(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        opt.step()
        return float(loss)

    return speed.synced(step, device), x


def probe(framework: str) -> None:
    """Fresh-process memory: steady-state peak over steps 2-3 above the size after set-up."""
    config, model, trainer, state, mesh, twin, images, labels, _ = setup()
    base = speed.rss_mib("VmRSS")
    result = {}
    if framework == "jax":
        del twin
        with jax.set_mesh(mesh):
            x = jax.device_put(images, trainer.data_sharding)
            y = jax.device_put(labels, trainer.data_sharding)
            state, _ = trainer.train_step(state, x, y)
            jax.block_until_ready(state)
            speed.reset_peak()
            for _ in range(2):
                state, out = trainer.train_step(state, x, y)
                jax.block_until_ready(state)
            peak = speed.rss_mib("VmHWM")
            analysis = trainer.train_step.lower(state, x, y).compile().memory_analysis()
            result["xla_plan_mib"] = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                      + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes) / 2**20
    else:
        del state, trainer
        step, _ = torch_step_fn(twin, images, labels, config.learning_rate, speed.peer_device(_PEER_DEVICE.value),
                                _DTYPE.value)
        step()
        speed.reset_peak()
        for _ in range(2):
            step()
        peak = speed.rss_mib("VmHWM")
    result["peak_mib"] = peak - base
    print(json.dumps(result))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    speed.ensure_hugepages(_HUGEPAGES.value)
    if _PROBE.value:
        return probe(_PROBE.value)
    config, model, trainer, state, mesh, twin, images, labels, build_s = setup()
    print(speed.environment())
    print(f"{speed.describe(model, config)}; batch {_BATCH.value} x {_PATCH.value}³; loss {config.loss}; "
          f"Adam lr {config.learning_rate} + clip 1.0")

    device = speed.peer_device(_PEER_DEVICE.value)
    torch_step, x_torch = torch_step_fn(twin, images, labels, config.learning_rate, device, _DTYPE.value)
    with jax.set_mesh(mesh):
        x = jax.device_put(images, trainer.data_sharding)
        y = jax.device_put(labels, trainer.data_sharding)
        # The same function: logits and loss from the same weights, then the loss after one step.
        logits = trainer.predict(x, state)
        with torch.no_grad():
            with speed.autocast(device, _DTYPE.value):
                twin_logits = twin(x_torch).float().permute(0, 2, 3, 4, 1).cpu().numpy()
        logit_diff = speed.rel_diff(logits, twin_logits)

        holder = {"state": state}

        def ours():
            holder["state"], out = trainer.train_step(holder["state"], x, y)
            jax.block_until_ready(holder["state"])
            return float(out["loss"])

        start = time.perf_counter()
        loss0 = ours()
        first_s = time.perf_counter() - start
        twin_loss0 = torch_step()
        loss1, twin_loss1 = ours(), torch_step()
        print(f"check: max |logits - twin| / max |twin| = {logit_diff:.1e}; loss {loss0:.6f} vs {twin_loss0:.6f}, "
              f"after one step {loss1:.6f} vs {twin_loss1:.6f}")
        # bfloat16 (ours) against the float32 twin: the same function up to bfloat16 rounding
        tol = 1.0 if _DTYPE.value == "float32" else 30.0
        assert logit_diff < 1e-3 * tol and abs(loss0 - twin_loss0) < 1e-4 * tol and \
            abs(loss1 - twin_loss1) < 1e-3 * tol, "our model and the PyTorch twin disagree"
        times = speed.interleaved({"ours": ours, "twin": torch_step}, _REPS.value)

    ours_s, twin_s = speed.median(times["ours"]), speed.median(times["twin"])
    rows = [("train step (median, s)", f"{ours_s:.3f}", f"{twin_s:.3f}", f"{ours_s / twin_s:.2f}×")]
    rows.append(("compile (first step - median, s)", f"{first_s - ours_s:.1f}", "–", ""))
    rows.append(("model + state build (s)", f"{build_s:.1f}", "", ""))
    if _MEMORY.value:
        argv_fwd = speed.forwarded_flags(flags.FLAGS, FORWARDED)
        mem_ours = speed.probe_memory(__file__, "jax", argv_fwd)
        mem_twin = speed.probe_memory(__file__, "torch", argv_fwd)
        rows.append(("peak memory above set-up (MiB)", f"{mem_ours['peak_mib']:.0f} (XLA plan "
                     f"{mem_ours['xla_plan_mib']:.0f})", f"{mem_twin['peak_mib']:.0f}",
                     f"{mem_ours['peak_mib'] / max(mem_twin['peak_mib'], 1e-9):.2f}×"))
    print("\nall times (s): " + "; ".join(f"{k} " + " ".join(f"{t:.3f}" for t in v) for k, v in times.items()))
    print(f"\n{_REPS.value} interleaved repetitions; ours = JAX/XLA, peer = PyTorch twin\n")
    print("| | ours | PyTorch twin | ours ÷ twin |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average at the end: {speed.load_average()}")
    print(f"\nRATIO train_step {ours_s / twin_s:.3f}")


if __name__ == "__main__":
    app.run(main)
