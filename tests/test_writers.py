"""Metric writers: JSON lines and TensorBoard event files readable without TensorFlow."""

import struct

import pytest

from labelset_jax import writers


def decode_varint(data, pos):
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_fields(data):
    """Minimal protobuf decoder: {field number: [values]} (bytes for length-delimited)."""
    fields, pos = {}, 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = decode_varint(data, pos)
        elif wire == 1:
            value, pos = struct.unpack("<d", data[pos : pos + 8])[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack("<f", data[pos : pos + 4])[0], pos + 4
        else:
            length, pos = decode_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        fields.setdefault(number, []).append(value)
    return fields


def test_crc32c_known_value():
    assert writers.crc32c(b"123456789") == 0xE3069283


def test_tensorboard_events_round_trip(tmp_path):
    with writers.MetricWriter(tmp_path) as w:
        w.write_scalars(7, {"train/loss": 0.25, "val/dice": 0.75})
    (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    records = list(writers.read_tfrecords(event_file))
    assert decode_fields(records[0])[3] == [b"brain.Event:2"]
    scalars = {}
    for record in records[1:]:
        event = decode_fields(record)
        value = decode_fields(decode_fields(event[5][0])[1][0])
        assert event[2] == [7]
        scalars[value[1][0].decode()] = value[2][0]
    assert scalars == pytest.approx({"train/loss": 0.25, "val/dice": 0.75})
    assert writers.read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 7, "train/loss": 0.25, "val/dice": 0.75}]


def test_corrupt_record_is_detected(tmp_path):
    path = tmp_path / "events"
    data = bytearray(writers.tfrecord(b"hello"))
    data[-6] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        list(writers.read_tfrecords(path))


def test_tensorboard_reads_our_files_when_installed(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with writers.MetricWriter(tmp_path) as w:
        for step in range(3):
            w.write_scalars(step, {"loss": 1.0 / (step + 1)})
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
