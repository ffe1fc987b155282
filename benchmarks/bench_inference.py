r"""Sliding-window inference speed: ours against MONAI's with the architecture-identical PyTorch twin.

Ours: ``labelset_jax.inference.sliding_window_inference`` with the jitted predict function of
``labelset_jax.train.create_trainer`` for the model of ``--config`` (``configs/default.py``: the
small preset; ``--preset=reference`` for the 14 M-parameter reference). The peer:
``monai.inferers.sliding_window_inference`` with the PyTorch twin (``torch_twin.py``; parameter
counts asserted equal, our weights copied in, the fused outputs checked equal before timing) under
``torch.inference_mode()``. Both: the same volume, window, overlap, window batch and Gaussian
weighting (``sigma_scale`` 0.125), float32.

Timing: one process, the two alternating ``--reps`` times after a warm-up; the medians and their
ratio are printed, with our compile time (first call minus the median) and, from fresh processes
(``--memory``), the peak resident memory above the process's size after set-up (over the 2nd and
3rd calls).

Run (needs ``pip install -e '.[test]'`` for torch and MONAI):

    python benchmarks/bench_inference.py                          # small model, 97×115×97, roi 64³
    python benchmarks/bench_inference.py --preset=reference --roi=96
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
import torch
from absl import app, flags
from ml_collections import config_flags
from monai.inferers import sliding_window_inference as monai_sliding_window_inference

import speed
import torch_twin
from labelset_jax.inference import sliding_window_inference
from labelset_jax.models import cpu_conv

_CONFIG = config_flags.DEFINE_config_file("config", speed.DEFAULT_CONFIG, "Python config file (get_config()).")
_PRESET = flags.DEFINE_enum("preset", "", ["", "small", "reference"], "model preset ('' = the config's model)")
_VOLUME = flags.DEFINE_list("volume", ["97", "115", "97"], "volume size D,H,W")
_ROI = flags.DEFINE_integer("roi", 64, "cubic window size")
_OVERLAP = flags.DEFINE_float("overlap", 0.5, "window overlap")
_SW_BATCH = flags.DEFINE_integer("sw_batch_size", 2, "windows per model call")
_REPS = flags.DEFINE_integer("reps", 5, "timed calls of each framework (after a warm-up call)")
_DOWNSAMPLE = flags.DEFINE_enum("downsample", "", ["", "maxpool", "stride"], "override ('' = the preset's)")
_CONV_IMPL = flags.DEFINE_enum("conv_impl", "", ["", "auto", "native", "folded"], "override ('' = the model's)")
_MEMORY = flags.DEFINE_bool("memory", True, "also measure peak memory (two extra processes)")
_HUGEPAGES = flags.DEFINE_bool("hugepages", True, "run with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (both frameworks)")
_DOTS_MIN = flags.DEFINE_integer("dots_min_features", cpu_conv.DOTS_MIN_FEATURES,
                                 "kernel gradients as matrix products from this many output channels on")
_PEER_DEVICE = flags.DEFINE_enum("peer_device", "cpu", ["cpu", "cuda"],
                                  "where MONAI and the PyTorch twin run (JAX runs on its default backend)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "computation type of both models (ours: config.model.dtype; the twin: autocast)")
_PROBE = flags.DEFINE_enum("probe", "", ["", "jax", "torch"], "internal: memory probe of one framework")

FORWARDED = ("preset", "volume", "roi", "overlap", "sw_batch_size", "downsample", "conv_impl", "hugepages",
             "dots_min_features", "peer_device", "dtype")


def setup():
    config = speed.model_config(_CONFIG.value, preset=_PRESET.value, downsample=_DOWNSAMPLE.value,
                                conv_impl=_CONV_IMPL.value, remat=False, dots_min_features=_DOTS_MIN.value)
    config.model.dtype = _DTYPE.value
    start = time.perf_counter()
    model, trainer, state, _, mesh = speed.build(config)
    build_s = time.perf_counter() - start
    device = speed.peer_device(_PEER_DEVICE.value)
    twin = torch_twin.matched_twin(model).eval().to(device)
    volume = tuple(int(s) for s in _VOLUME.value)
    image = np.random.default_rng(0).standard_normal((1, *volume, 1), dtype=np.float32)
    roi = (_ROI.value,) * 3

    def ours():
        out = sliding_window_inference(trainer.predict, image, state, roi_size=roi, sw_batch_size=_SW_BATCH.value,
                                       overlap=_OVERLAP.value, mode="gaussian")
        return jax.block_until_ready(out)

    x = torch.from_numpy(image).permute(0, 4, 1, 2, 3).contiguous().to(device)

    def peer():
        with torch.inference_mode(), speed.autocast(device, _DTYPE.value):
            return monai_sliding_window_inference(x, roi, _SW_BATCH.value, twin, overlap=_OVERLAP.value,
                                                  mode="gaussian").float()

    return config, model, mesh, ours, speed.synced(peer, device), build_s


def probe(framework: str) -> None:
    _, _, mesh, ours, peer, _ = setup()
    base = speed.rss_mib("VmRSS")
    fn = ours if framework == "jax" else peer
    with jax.set_mesh(mesh):
        fn()
        speed.reset_peak()
        fn()
        fn()
    print(json.dumps({"peak_mib": speed.rss_mib("VmHWM") - base}))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    speed.ensure_hugepages(_HUGEPAGES.value)
    if _PROBE.value:
        return probe(_PROBE.value)
    config, model, mesh, ours, peer, build_s = setup()
    print(speed.environment())
    print(f"{speed.describe(model, config)}; volume {'×'.join(_VOLUME.value)}, roi {_ROI.value}³, overlap "
          f"{_OVERLAP.value}, sw_batch_size {_SW_BATCH.value}, Gaussian weights")
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        ours_out = ours()
        first_s = time.perf_counter() - start
        peer_out = peer().permute(0, 2, 3, 4, 1).cpu().numpy()
        diff = speed.rel_diff(ours_out, peer_out)
        print(f"check: max |ours - MONAI| / max |MONAI| = {diff:.1e}")
        tol = 1e-3 if _DTYPE.value == "float32" else 3e-2  # bfloat16 rounding on both sides
        assert diff < tol, "our sliding-window output and MONAI's with the twin disagree"
        times = speed.interleaved({"ours": ours, "peer": peer}, _REPS.value)

    ours_s, peer_s = speed.median(times["ours"]), speed.median(times["peer"])
    rows = [("sliding-window inference (median, s)", f"{ours_s:.3f}", f"{peer_s:.3f}", f"{ours_s / peer_s:.2f}×"),
            ("compile (first call - median, s)", f"{first_s - ours_s:.1f}", "–", ""),
            ("model + state build (s)", f"{build_s:.1f}", "", "")]
    if _MEMORY.value:
        argv_fwd = speed.forwarded_flags(flags.FLAGS, FORWARDED)
        mem_ours = speed.probe_memory(__file__, "jax", argv_fwd)["peak_mib"]
        mem_peer = speed.probe_memory(__file__, "torch", argv_fwd)["peak_mib"]
        rows.append(("peak memory above set-up (MiB)", f"{mem_ours:.0f}", f"{mem_peer:.0f}",
                     f"{mem_ours / max(mem_peer, 1e-9):.2f}×"))
    print("\nall times (s): " + "; ".join(f"{k} " + " ".join(f"{t:.3f}" for t in v) for k, v in times.items()))
    print(f"\n{_REPS.value} interleaved repetitions; ours = JAX/XLA, peer = MONAI with the PyTorch twin\n")
    print("| | ours | MONAI + twin | ours ÷ MONAI |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average at the end: {speed.load_average()}")
    print(f"\nRATIO sliding_window {ours_s / peer_s:.3f}")


if __name__ == "__main__":
    app.run(main)
