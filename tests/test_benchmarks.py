"""Smoke tests of the speed benchmarks at a tiny size: each runs from the command line, checks that
our model and the PyTorch twin (and MONAI) compute the same thing, and prints its ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def check_ratio(output: str, name: str, ours: str, peer: str) -> None:
    """The printed ratio is the median of our timed calls over the median of the peer's, as listed on
    the "all times" line, with as many timed calls of each."""
    match = re.search(rf"^RATIO {name} ([0-9.]+)$", output, re.MULTILINE)
    assert match, output
    listed = re.search(r"^all times \(s\): (.*)$", output, re.MULTILINE)
    assert listed, output
    times = {k: [float(t) for t in v.split()] for k, v in (part.split(" ", 1) for part in listed.group(1).split("; "))}
    assert set(times) == {ours, peer} and len(times[ours]) == len(times[peer]) >= 1, times
    ours_s, peer_s = np.median(times[ours]), np.median(times[peer])
    expected = ours_s / peer_s
    # the listed times are rounded to 1 ms: at the tiny scale that alone moves the quotient by a few %
    rounding = expected * (5e-4 / ours_s + 5e-4 / peer_s)
    assert abs(float(match.group(1)) - expected) <= 0.02 * expected + rounding + 2e-3, (match.group(1), expected)


def test_bench_train_tiny():
    output = run("bench_train.py", "--patch=16", "--batch=1", "--reps=1", "--nomemory", "--downsample=stride")
    assert "332,065 parameters, downsample=stride" in output
    assert re.search(r"^check: .* loss ([0-9.]+) vs \1,", output, re.MULTILINE), output
    check_ratio(output, "train_step", "ours", "twin")


def test_bench_inference_tiny_with_memory():
    output = run("bench_inference.py", "--volume=18,20,16", "--roi=16", "--reps=1")
    assert "check: max |ours - MONAI|" in output
    assert re.search(r"^\| peak memory above set-up \(MiB\) \| \d+ \| \d+ \|", output, re.MULTILINE), output
    check_ratio(output, "sliding_window", "ours", "peer")


def test_profile_step_tiny():
    output = run("profile_step.py", "--patch=16", "--batch=1", "--top=5")
    kinds = {label: (float(ms), int(share)) for label, ms, share in
             re.findall(r"^\| ([^|`]+) \| (\d+) \| (\d+)% \|$", output, re.MULTILINE)}
    assert len(kinds) >= 3 and 95 <= sum(share for _, share in kinds.values()) <= 105, output
    ops = [(name, float(ms)) for name, ms in re.findall(r"^\| `([^`]+)` \| ([0-9.]+) \| \d+ \|$", output, re.MULTILINE)]
    assert len(ops) == 5, output
    assert [ms for _, ms in ops] == sorted((ms for _, ms in ops), reverse=True), ops  # the slowest first
    # On CPU the folded convolutions go through YNNPACK: the profile has ops of that kind (a kind
    # gets a row only when some op of the step is of it), and its row holds at least the time of
    # any such op among the slowest.
    assert "YNNPACK library call (convolutions, matrix products)" in kinds, output
    ynnpack = [ms for name, ms in ops if re.search(r"^ynn|^xnn|onednn", name)]
    assert kinds["YNNPACK library call (convolutions, matrix products)"][0] >= max(ynnpack, default=0) - 1, output
