"""Atomic file writes (a temporary file beside the target, fsync, rename, fsync the folder), file
digests, a full disk reported as such, and an exclusive lock on a file for one process.

A reader never sees a half-written file, and a crash leaves either the old file or the new one.
A write that fails on a full disk (ENOSPC, or EDQUOT over a quota) removes its temporary file and
raises :class:`DiskFullError` naming the file it was writing; the cleanup itself never raises.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """Writing ``filename`` failed: no space left on its filesystem (or over the user's quota)."""


class LockHeldError(BlockingIOError):
    """Another process holds the lock on ``filename`` (see :func:`exclusive_lock`)."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full filesystem (ENOSPC) or an exhausted quota (EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(exc: OSError, path: str | Path) -> DiskFullError:
    """``exc`` (a full-disk error) as a :class:`DiskFullError` naming ``path``, the file being
    written (low-level write errors name no file)."""
    return DiskFullError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def close_quietly(fh) -> None:
    """Close a file that is being thrown away; a failing flush (a full disk) is ignored."""
    with contextlib.suppress(Exception):
        fh.close()


def remove_quietly(path: str | Path) -> None:
    """Remove a temporary file if it is there; never raises."""
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, text: bool = False, fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. The file gets the
    usual permissions (0o666 minus the umask), not mkstemp's 0o600.

    Raises:
        DiskFullError: the disk (or quota) is full; names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, path) from exc
        raise
    fh = None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        fh = os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {}))
        yield fh
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
    except BaseException as exc:
        if fh is None:
            with contextlib.suppress(OSError):
                os.close(fd)
        else:
            close_quietly(fh)
        remove_quietly(tmp)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise disk_full_error(exc, path) from exc
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, fsync=fsync) as fh:
        fh.write(data)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The lock belongs to this process's open file: it is released when the block ends, and by the
    kernel when the process dies (even by ``kill -9``), so it never outlives its holder. The file
    itself stays. Child processes do not inherit it (the descriptor is close-on-exec).

    Raises:
        LockHeldError: another process (or another open of the file) holds the lock.
        DiskFullError: the lock file could not be created on a full disk.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, path) from exc
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(errno.EWOULDBLOCK, "locked by another process", str(path)) from None
        yield
    finally:
        os.close(fd)


def lock_is_held(path: str | Path) -> bool:
    """Whether another process holds :func:`exclusive_lock` on ``path`` (an existing file; it
    is opened read-only and never created)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the lock just taken
    return False
