#!/usr/bin/env bash
# The GPU benchmarks, one script for one CUDA device (about 6 minutes on an H200). Needs jax with
# CUDA (pip install -U "jax[cuda12]"), a CUDA build of torch and MONAI (pip install -e '.[bench]').
# JAX runs on its default backend (the GPU); the PyTorch twin and MONAI run with --peer_device=cuda
# (torch.cuda.synchronize() after every timed call; bfloat16 under torch.autocast). Every output
# goes to $OUT (default runs/gpu_bench), one file per benchmark, plus a summary of the ratios.
#
#   bash benchmarks/gpu.sh              # then copy the tables into benchmarks/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu_bench}
mkdir -p "$OUT"
$PY -c "import jax, torch; assert jax.default_backend() == 'gpu', jax.devices(); assert torch.cuda.is_available()" \
  || { echo "error: needs jax on a GPU and torch with CUDA" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" || true

run() {  # name, command...
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local start=$SECONDS
  "$@" > "$OUT/$name.txt" 2>&1 || { echo "   FAILED (see $OUT/$name.txt)" | tee -a "$OUT/summary.txt"; return 0; }
  grep -E "^RATIO|steps/s|^\| " "$OUT/$name.txt" | tail -12 >> "$OUT/summary.txt" || true
  echo "   ($((SECONDS - start)) s)" >> "$OUT/summary.txt"
}

# Train step of the reference 14 M U-Net, 128³ patches, batch 2: ours against the eager twin.
run train_reference_fp32 $PY benchmarks/bench_train.py --preset=reference --patch=128 --batch=2 --reps=5 \
  --nomemory --peer_device=cuda
run train_reference_bf16 $PY benchmarks/bench_train.py --preset=reference --patch=128 --batch=2 --reps=5 \
  --nomemory --peer_device=cuda --dtype=bfloat16
# Sliding-window inference over an MNI-sized volume (182×218×182 at 1 mm), roi 128, against MONAI.
run sliding_window_reference $PY benchmarks/bench_inference.py --preset=reference --volume=182,218,182 --roi=128 \
  --reps=3 --nomemory --peer_device=cuda
# The losses, value and gradient on [2, 128³, 9], against MONAI's DiceLoss.
run losses $PY benchmarks/bench_losses.py --shape=2,128,128,128,9 --repeats=10 --peer_device=cuda
# The make-run config end to end (train 400 steps, evaluate): steps/s from its log.
rm -rf "$OUT/make_run"
run make_run $PY -m experiments.main --config=configs/default.py --workdir="$OUT/make_run"
cat "$OUT/summary.txt"
