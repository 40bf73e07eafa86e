"""Tests for rap/sources/tfrecord.py."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import google_crc32c
import pytest

from rap.sources.tfrecord import (
    TFRecordError,
    encode_record,
    iter_records,
    masked_crc32c,
    read_records,
    write_records,
)

PAYLOADS = [b"first record", b"", b"x" * 1000, bytes(range(256))]
WOMD_FILE = Path(__file__).parents[3] / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"


def _offsets(payloads: list[bytes]) -> list[int]:
    out, pos = [], 0
    for p in payloads:
        out.append(pos)
        pos += 16 + len(p)
    return out


@pytest.fixture
def records_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.tfrecord"
    assert write_records(path, PAYLOADS) == len(PAYLOADS)
    return path


def test_masked_crc_definition():
    crc = google_crc32c.value(b"123456789")
    assert crc == 0xE3069283  # The CRC-32C check value.
    expected = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32
    assert masked_crc32c(b"123456789") == expected


def test_round_trip(records_file):
    assert read_records(records_file) == PAYLOADS
    assert list(iter_records(records_file)) == PAYLOADS
    assert os.path.getsize(records_file) == sum(16 + len(p) for p in PAYLOADS)
    assert [p.name for p in records_file.parent.iterdir()] == [records_file.name]  # No temp files.


def test_framing_layout(records_file):
    data = records_file.read_bytes()
    assert data[: 16 + len(PAYLOADS[0])] == encode_record(PAYLOADS[0])
    (length,) = struct.unpack("<Q", data[:8])
    assert length == len(PAYLOADS[0])


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tfrecord"
    assert write_records(path, []) == 0
    assert read_records(path) == []


def test_reads_real_tensorflow_written_file():
    (payload,) = read_records(WOMD_FILE)
    assert len(payload) == WOMD_FILE.stat().st_size - 16


def _corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_length_crc(records_file):
    off = _offsets(PAYLOADS)[2]
    _corrupt(records_file, off + 9)  # Inside record 2's length CRC.
    with pytest.raises(TFRecordError) as info:
        read_records(records_file)
    err = info.value
    assert (err.path, err.record, err.offset) == (str(records_file), 2, off)
    assert str(err).startswith(f"{records_file}: record 2 at byte {off}: length CRC mismatch")


def test_corrupt_length_bytes(records_file):
    _corrupt(records_file, 0)  # The length itself: its CRC no longer matches.
    with pytest.raises(TFRecordError, match="record 0 at byte 0: length CRC mismatch"):
        read_records(records_file)


def test_corrupt_payload_crc(records_file):
    off = _offsets(PAYLOADS)[3]
    _corrupt(records_file, off + 12 + 5)  # A payload byte of record 3.
    with pytest.raises(TFRecordError, match=r"data\.tfrecord: record 3 at byte \d+: payload CRC mismatch \(expected 0x[0-9a-f]{8}, got 0x[0-9a-f]{8}\)") as info:
        read_records(records_file)
    assert info.value.record == 3 and info.value.offset == off
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (5, "truncated header"),
        (12 + 3, "truncated payload"),
        (12 + 1000 + 2, "truncated payload CRC"),
    ],
)
def test_truncated_file(records_file, cut, reason):
    off = _offsets(PAYLOADS)[2]
    data = records_file.read_bytes()
    records_file.write_bytes(data[: off + cut])
    with pytest.raises(TFRecordError, match=rf"data\.tfrecord: record 2 at byte {off}: {reason}"):
        read_records(records_file)
    # Lazily, the good records come first.
    it = iter_records(records_file)
    assert [next(it), next(it)] == PAYLOADS[:2]
    with pytest.raises(TFRecordError):
        next(it)


def test_skip_corrupt_payload_continues(records_file):
    _corrupt(records_file, _offsets(PAYLOADS)[0] + 12)
    _corrupt(records_file, _offsets(PAYLOADS)[2] + 12)
    skipped: list[TFRecordError] = []
    got = list(iter_records(records_file, skip_corrupt=True, on_skip=skipped.append))
    assert got == [PAYLOADS[1], PAYLOADS[3]]
    assert [e.record for e in skipped] == [0, 2]
    assert all("payload CRC mismatch" in str(e) for e in skipped)


def test_skip_corrupt_stops_at_truncation(records_file):
    data = records_file.read_bytes()
    records_file.write_bytes(data[:-2])
    skipped: list[TFRecordError] = []
    got = list(iter_records(records_file, skip_corrupt=True, on_skip=skipped.append))
    assert got == PAYLOADS[:3]
    assert len(skipped) == 1 and skipped[0].record == 3 and "truncated" in skipped[0].reason


def test_skip_corrupt_stops_at_bad_length(records_file):
    _corrupt(records_file, _offsets(PAYLOADS)[1] + 1)
    skipped: list[TFRecordError] = []
    got = list(iter_records(records_file, skip_corrupt=True, on_skip=skipped.append))
    assert got == PAYLOADS[:1]
    assert [e.record for e in skipped] == [1]


def test_skip_corrupt_warns_without_callback(records_file):
    _corrupt(records_file, _offsets(PAYLOADS)[1] + 13)
    with pytest.warns(RuntimeWarning, match="record 1"):
        got = list(iter_records(records_file, skip_corrupt=True))
    assert len(got) == 3


def test_error_pickles():
    err = TFRecordError("a.tfrecord", 3, 1234, "payload CRC mismatch")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.record, copy.offset, str(copy)) == ("a.tfrecord", 3, 1234, str(err))


def test_write_is_atomic_on_failure(records_file):
    def bad_records():
        yield b"new"
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        write_records(records_file, bad_records())
    assert read_records(records_file) == PAYLOADS  # The old file is untouched.
    assert [p.name for p in records_file.parent.iterdir()] == [records_file.name]


def test_index_and_random_access(tmp_path):
    from rap.sources.tfrecord import TFRecordError, index_records, read_record_at, write_records

    payloads = [b"a" * 10, b"", b"xyz" * 100]
    path = tmp_path / "r.tfrecord"
    write_records(path, payloads)
    index = index_records(path)
    assert [e.record for e in index] == [0, 1, 2]
    assert [read_record_at(path, e) for e in reversed(index)] == payloads[::-1]
    data = bytearray(path.read_bytes())
    data[index[2].offset + 12] ^= 0xFF  # corrupt the last payload
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=r"r\.tfrecord.*record 2.*payload CRC"):
        read_record_at(path, index_records(path)[2])
    path.write_bytes(bytes(data[: index[2].offset + 20]))  # truncate inside record 2
    truncated = index_records(path)
    assert len(truncated) == 3
    with pytest.raises(TFRecordError, match="record 2.*truncated"):
        read_record_at(path, truncated[2])
