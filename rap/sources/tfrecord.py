"""TFRecord files read and written without TensorFlow, with CRC checks.

A TFRecord file is a sequence of records, each framed as (all little-endian)::

    uint64 length
    uint32 masked_crc32c(length bytes)
    byte   payload[length]
    uint32 masked_crc32c(payload)

where ``masked_crc32c(b) = (((c >> 15) | (c << 17)) + 0xA282EAD8) mod 2**32`` with
``c = crc32c(b)`` (CRC-32C, Castagnoli). See tensorflow/core/lib/io/record_writer.cc and
tensorflow/tsl/lib/hash/crc32c.h. CRC-32C comes from the ``google-crc32c`` package.

Corruption is reported as :class:`TFRecordError`, naming the file, the record index and the
byte offset where that record starts. A path that is not a regular file (a folder, a named pipe,
a device such as ``/dev/zero``) is refused before anything is read, with
:class:`NotARegularFileError`: reading a FIFO would block forever and a device has no size.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
import warnings
from typing import BinaryIO, Callable, Iterable, Iterator

import google_crc32c

from rap.fileio import atomic_writer

__all__ = [
    "TFRecordError",
    "NotARegularFileError",
    "require_regular_file",
    "masked_crc32c",
    "encode_record",
    "iter_records",
    "read_records",
    "write_records",
]

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked CRC of the 8 length bytes.
_FOOTER = struct.Struct("<I")  # masked CRC of the payload.

PathLike = str | os.PathLike


class TFRecordError(ValueError):
    """A TFRecord file is corrupt or truncated.

    Attributes:
        path: The file, as given.
        record: Index of the record being read (0-based).
        offset: Byte offset of the start of that record in the file.
        reason: What is wrong, without the location prefix.
    """

    def __init__(self, path: PathLike, record: int, offset: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.record = record
        self.offset = offset
        self.reason = reason
        super().__init__(f"{self.path}: record {record} at byte {offset}: {reason}")

    def __reduce__(self):  # Keep the attributes when pickled across processes.
        return (type(self), (self.path, self.record, self.offset, self.reason))


class NotARegularFileError(ValueError):
    """A path given as an input file is a folder, a named pipe, a device or a socket.

    Attributes:
        path: The path, as given.
        what: What it is instead, e.g. ``"a named pipe (FIFO)"``.
    """

    def __init__(self, path: PathLike, what: str) -> None:
        self.path = os.fspath(path)
        self.what = what
        super().__init__(f"{self.path}: is {what}, not a regular file")

    def __reduce__(self):  # Keep the attributes when pickled across processes.
        return (type(self), (self.path, self.what))


_NON_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _non_regular(mode: int) -> str | None:
    """What a file of ``st_mode`` is when it is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _NON_REGULAR if test(mode)), "not a regular file")


def require_regular_file(path: PathLike) -> None:
    """Raise :class:`NotARegularFileError` unless ``path`` (links followed) is a regular file.

    Only ``stat``s the path: never opens it, so a named pipe cannot block.

    Raises:
        NotARegularFileError: a folder, a named pipe, a device or a socket.
        FileNotFoundError / OSError: the path does not exist or cannot be looked at.
    """
    what = _non_regular(os.stat(path).st_mode)
    if what is not None:
        raise NotARegularFileError(path, what)


def _open_regular(path: PathLike) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The file is opened non-blocking (a named pipe would otherwise block in ``open`` until a
    writer comes) and checked with ``fstat`` on the open descriptor, so the check and the read
    concern the same file.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | nonblock)
    try:
        what = _non_regular(os.fstat(fd).st_mode)
        if what is not None:
            raise NotARegularFileError(path, what)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data`` (an unsigned 32-bit int)."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(payload: bytes) -> bytes:
    """One framed record: header, payload and footer."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + payload
        + _FOOTER.pack(masked_crc32c(payload))
    )


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = f.read(n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def iter_records(
    path: PathLike,
    *,
    skip_corrupt: bool = False,
    on_skip: Callable[[TFRecordError], None] | None = None,
) -> Iterator[bytes]:
    """Yields the payloads of a TFRecord file in order, checking both CRCs of every record.

    Args:
        path: The TFRecord file.
        skip_corrupt: Instead of raising, report a bad record and go on: after a payload CRC
            mismatch (the framing is intact) reading continues with the next record; after a
            bad length CRC or a truncation the framing cannot be recovered and reading stops.
        on_skip: Called with each skipped record's :class:`TFRecordError`; when None, a
            ``RuntimeWarning`` carrying the error message is issued instead, so nothing is
            dropped silently.

    Yields:
        Each record's payload bytes.

    Raises:
        TFRecordError: A corrupt or truncated record (when not ``skip_corrupt``).
        NotARegularFileError: ``path`` is a folder, a named pipe or a device (also with
            ``skip_corrupt``: there is no record to skip).
        OSError: The file cannot be read.
    """

    def report(err: TFRecordError) -> None:
        if not skip_corrupt:
            raise err
        if on_skip is not None:
            on_skip(err)
        else:
            warnings.warn(f"skipped corrupt TFRecord record: {err}", RuntimeWarning, stacklevel=3)

    with _open_regular(path) as f:
        file_size = os.fstat(f.fileno()).st_size
        record = 0
        offset = 0
        while True:
            header = _read_exact(f, _HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                report(
                    TFRecordError(
                        path, record, offset,
                        f"truncated header ({len(header)} of {_HEADER.size} bytes)",
                    )
                )  # fmt: skip
                return
            length, length_crc = _HEADER.unpack(header)
            expected = masked_crc32c(header[:8])
            if length_crc != expected:
                report(
                    TFRecordError(
                        path, record, offset,
                        f"length CRC mismatch (expected {expected:#010x}, got {length_crc:#010x})",
                    )
                )  # fmt: skip
                return
            remaining = file_size - offset - _HEADER.size
            if length > remaining:
                report(
                    TFRecordError(
                        path, record, offset,
                        f"truncated payload ({remaining} of {length} bytes)",
                    )
                )  # fmt: skip
                return
            payload = _read_exact(f, length)
            if len(payload) < length:  # The file shrank while we read it.
                report(
                    TFRecordError(
                        path, record, offset, f"truncated payload ({len(payload)} of {length} bytes)"
                    )
                )
                return
            footer = _read_exact(f, _FOOTER.size)
            if len(footer) < _FOOTER.size:
                report(
                    TFRecordError(
                        path, record, offset,
                        f"truncated payload CRC ({len(footer)} of {_FOOTER.size} bytes)",
                    )
                )  # fmt: skip
                return
            (payload_crc,) = _FOOTER.unpack(footer)
            expected = masked_crc32c(payload)
            if payload_crc != expected:
                report(
                    TFRecordError(
                        path, record, offset,
                        f"payload CRC mismatch (expected {expected:#010x}, got {payload_crc:#010x})",
                    )
                )  # fmt: skip
            else:
                yield payload
            record += 1
            offset += _HEADER.size + length + _FOOTER.size


def read_records(path: PathLike) -> list[bytes]:
    """All payloads of a TFRecord file; raises :class:`TFRecordError` on any corruption."""
    return list(iter_records(path))


def write_records(path: PathLike, records: Iterable[bytes]) -> int:
    """Writes payloads as a TFRecord file, atomically.

    The data goes to a temporary file in the same directory, which is flushed, fsynced and then
    renamed over ``path`` with ``os.replace``: readers see the old file or the whole new one.

    Args:
        path: Destination file; its directory must exist.
        records: Payloads (bytes-like).

    Returns:
        The number of records written.
    """
    count = 0
    with atomic_writer(path) as f:
        for payload in records:
            f.write(encode_record(bytes(payload)))
            count += 1
    return count


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """Where one record sits in a TFRecord file (from :func:`index_records`)."""

    record: int
    offset: int  # [bytes] start of the record's header
    length: int  # [bytes] payload length


def index_records(path: PathLike) -> list[RecordIndex]:
    """Index a TFRecord file by reading only the headers (length CRCs checked, payloads skipped).

    Stops at the first unrecoverable framing error, which :func:`read_record_at` (or
    :func:`iter_records`) reports when that record is read.

    Raises:
        NotARegularFileError: ``path`` is a folder, a named pipe or a device (``/dev/zero``
            would otherwise index as an empty file).
        OSError: The file cannot be read.
    """
    entries = []
    with _open_regular(path) as f:
        file_size = os.fstat(f.fileno()).st_size
        offset, record = 0, 0
        while offset + _HEADER.size <= file_size:
            f.seek(offset)
            header = _read_exact(f, _HEADER.size)
            length, length_crc = _HEADER.unpack(header)
            end = offset + _HEADER.size + length + _FOOTER.size
            if length_crc != masked_crc32c(header[:8]) or end > file_size:
                entries.append(RecordIndex(record, offset, length))  # read_record_at reports it
                break
            entries.append(RecordIndex(record, offset, length))
            offset, record = end, record + 1
        else:
            if offset < file_size:  # trailing bytes shorter than a header
                entries.append(RecordIndex(record, offset, 0))
    return entries


def read_record_at(path: PathLike, entry: RecordIndex) -> bytes:
    """Read and check (both CRCs) the record ``entry`` points at.

    Raises:
        TFRecordError: naming the file, the record index and the byte offset.
        NotARegularFileError: ``path`` is a folder, a named pipe or a device.
    """
    with _open_regular(path) as f:
        file_size = os.fstat(f.fileno()).st_size
        f.seek(entry.offset)
        header = _read_exact(f, _HEADER.size)
        if len(header) < _HEADER.size:
            raise TFRecordError(path, entry.record, entry.offset, f"truncated header ({len(header)} of {_HEADER.size} bytes)")
        length, length_crc = _HEADER.unpack(header)
        expected = masked_crc32c(header[:8])
        if length_crc != expected:
            raise TFRecordError(path, entry.record, entry.offset, f"length CRC mismatch (expected {expected:#010x}, got {length_crc:#010x})")
        remaining = file_size - entry.offset - _HEADER.size
        if length + _FOOTER.size > remaining:
            raise TFRecordError(path, entry.record, entry.offset, f"truncated payload ({max(0, remaining - _FOOTER.size)} of {length} bytes)")
        payload = _read_exact(f, length)
        (payload_crc,) = _FOOTER.unpack(_read_exact(f, _FOOTER.size))
        expected = masked_crc32c(payload)
        if payload_crc != expected:
            raise TFRecordError(path, entry.record, entry.offset, f"payload CRC mismatch (expected {expected:#010x}, got {payload_crc:#010x})")
        return payload
