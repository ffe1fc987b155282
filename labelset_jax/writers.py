"""Metric writers: JSON lines and TensorBoard event files, without TensorFlow.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecord-framed ``Event`` protocol buffers.
Scalars need only a handful of protobuf fields, so :class:`TensorBoardWriter` encodes them by
hand (varints, fixed64/fixed32, length-delimited) and frames them with masked CRC-32C, as the
TFRecord format specifies. :class:`MetricWriter` writes to both, from process 0 only.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     with MetricWriter(d) as w:
...         w.write_scalars(3, {"train/loss": 0.5})
...     [r["train/loss"] for r in read_jsonl(f"{d}/metrics.jsonl")]
[0.5]
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

# --------------------------------------------------------------------------- CRC-32C (Castagnoli)
_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (the checksum TFRecord uses)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- protobuf encoding
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def encode_scalar_event(step: int, tag: str, value: float, wall_time: float) -> bytes:
    """``Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple_value=2}}}``."""
    summary_value = _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(value))
    summary = _bytes_field(1, summary_value)
    return _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(int(step)) + _bytes_field(5, summary)


def encode_file_version_event(wall_time: float) -> bytes:
    """``Event{wall_time=1, file_version=3}``: the first record of every event file."""
    return _field(1, 1) + struct.pack("<d", wall_time) + _bytes_field(3, b"brain.Event:2")


def tfrecord(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked_crc32c(header)) + payload + struct.pack("<I", masked_crc32c(payload))


def read_tfrecords(path: str | os.PathLike) -> Iterator[bytes]:
    """Yields the payloads of a TFRecord file, checking both CRCs (raises ``ValueError``)."""
    data = Path(path).read_bytes()
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        payload = data[pos + 12 : pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        if header_crc != masked_crc32c(header) or payload_crc != masked_crc32c(payload):
            raise ValueError(f"{path}: corrupt TFRecord at byte {pos}")
        yield payload
        pos += 16 + length


class TensorBoardWriter:
    """Appends scalar summaries to a TensorBoard event file in ``logdir``."""

    def __init__(self, logdir: str | os.PathLike):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self.path = Path(logdir) / name
        self._file = open(self.path, "ab")
        self._file.write(tfrecord(encode_file_version_event(now)))
        self._file.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        now = time.time()
        for tag, value in scalars.items():
            self._file.write(tfrecord(encode_scalar_event(step, tag, value, now)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and TensorBoard files in ``workdir/tensorboard``.

    Only the process with ``jax.process_index() == 0`` writes (pass ``enabled``).
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")
        self._tb = TensorBoardWriter(Path(workdir) / "tensorboard")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        self._tb.write_scalars(step, scalars)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
