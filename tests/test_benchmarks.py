"""Smoke tests of the speed benchmarks at a tiny size: each runs from the command line, checks that
our model and the PyTorch twin (and MONAI) compute the same thing, and prints its ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def ratio(output: str, name: str) -> float:
    match = re.search(rf"^RATIO {name} ([0-9.]+)$", output, re.MULTILINE)
    assert match, output
    return float(match.group(1))


def test_bench_train_tiny():
    output = run("bench_train.py", "--patch=16", "--batch=1", "--reps=1", "--nomemory", "--downsample=stride")
    assert "332,065 parameters, downsample=stride" in output
    assert re.search(r"^check: .* loss ([0-9.]+) vs \1,", output, re.MULTILINE), output
    assert ratio(output, "train_step") > 0


def test_bench_inference_tiny_with_memory():
    output = run("bench_inference.py", "--volume=18,20,16", "--roi=16", "--reps=1")
    assert "check: max |ours - MONAI|" in output
    assert re.search(r"^\| peak memory above set-up \(MiB\) \| \d+ \| \d+ \|", output, re.MULTILINE), output
    assert ratio(output, "sliding_window") > 0


def test_profile_step_tiny():
    output = run("profile_step.py", "--patch=16", "--batch=1", "--top=5")
    assert "| YNNPACK library call (convolutions, matrix products) |" in output
    shares = [int(m) for m in re.findall(r"^\| [^|`]+ \| \d+ \| (\d+)% \|$", output, re.MULTILINE)]
    assert len(shares) >= 3 and 95 <= sum(shares) <= 105, output
    assert len(re.findall(r"^\| `", output, re.MULTILINE)) == 5, output
