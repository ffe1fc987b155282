"""Metric writers: JSON lines, and TensorBoard event files that TensorBoard itself reads back."""

import pytest
from tensorboard.backend.event_processing import event_accumulator

from labelset_jax import writers


def test_metrics_round_trip_through_jsonl_and_tensorboard(tmp_path):
    with writers.MetricWriter(tmp_path) as w:
        for step in range(3):
            w.write_scalars(step, {"loss": 1.0 / (step + 1), "val/dice": 0.25 * step})
    assert writers.read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 0, "loss": 1.0, "val/dice": 0.0},
        {"step": 1, "loss": 0.5, "val/dice": 0.25},
        {"step": 2, "loss": pytest.approx(1 / 3), "val/dice": 0.5},
    ]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [0, 1, 2]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [e.value for e in acc.Scalars("val/dice")] == pytest.approx([0.0, 0.25, 0.5])


def test_disabled_writer_writes_nothing(tmp_path):
    with writers.MetricWriter(tmp_path / "run", enabled=False) as w:
        w.write_scalars(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()
