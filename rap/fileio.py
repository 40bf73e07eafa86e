"""Atomic file writes (a temporary file beside the target, fsync, rename, fsync the folder), file
digests, a full disk reported as such, and an exclusive lock on a file for one run, also across
machines that share the folder.

A reader never sees a half-written file, and a crash leaves either the old file or the new one.
A write that fails on a full disk (ENOSPC, or EDQUOT over a quota) removes its temporary file and
raises :class:`DiskFullError` naming the file it was writing; the cleanup itself never raises.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Iterator

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# flock excludes processes of one machine (and of machines whose shared filesystem forwards it);
# across machines a lock also carries a lease: the holder's host and pid, renewed (the file's
# mtime) every LOCK_RENEW_S. A lease of another host renewed within LOCK_LEASE_S holds the lock.
LOCK_LEASE_S = 120.0  # [s]
LOCK_RENEW_S = 30.0  # [s]
LEASE_THREAD_PREFIX = "lease "  # the name of the thread that renews a lock's lease starts so


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


def _foreign_lease(fd: int) -> str | None:
    """The holder of a live lease of another machine in the open lock file (``"host pid P,
    renewed N s ago"``), or None: no lease, this machine's (flock decides there), or expired."""
    try:
        age = time.time() - os.fstat(fd).st_mtime
        data = os.pread(fd, 4096, 0)
        lease = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    if not isinstance(lease, dict) or lease.get("host") in (None, socket.gethostname()) or age > LOCK_LEASE_S:
        return None
    return f"{lease.get('host')} pid {lease.get('pid')}, renewed {max(age, 0.0):.0f} s ago"


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    An ``flock`` on the file: it belongs to this process's open file, is released when the block
    ends and by the kernel when the process dies (even by ``kill -9``), and child processes do not
    inherit it (the descriptor is close-on-exec). Because a shared filesystem may not carry flock
    between machines, the holder also writes a lease into the file (its host and pid, renewed
    every ``LOCK_RENEW_S`` by a thread) and empties it on release: a live lease of another
    machine (renewed within ``LOCK_LEASE_S``) holds the lock too. A killed holder's lease expires
    after ``LOCK_LEASE_S``. The file itself stays.

    Raises:
        LockHeldError: another process, or a run on another machine, holds the lock (the message
            names that machine and process when known).
        DiskFullError: the lock file could not be created on a full disk.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, path) from exc
        raise
    stop = threading.Event()
    renewer = None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(errno.EWOULDBLOCK, "locked by another process", str(path)) from None
        holder = _foreign_lease(fd)
        if holder is not None:
            raise LockHeldError(errno.EWOULDBLOCK, f"locked by a run on {holder}", str(path))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode(), 0)

        def renew() -> None:
            while not stop.wait(LOCK_RENEW_S):
                with contextlib.suppress(OSError):
                    os.utime(fd)

        renewer = threading.Thread(target=renew, name=f"{LEASE_THREAD_PREFIX}{Path(path).name}", daemon=True)
        renewer.start()
        yield
    finally:
        stop.set()
        if renewer is not None:
            renewer.join()
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: no lease left for other machines to honour
        os.close(fd)


def lock_holder(path: str | Path) -> str | None:
    """Who holds :func:`exclusive_lock` on ``path`` (an existing file; it is opened read-only and
    never created): ``"locked by another process"`` (this machine), ``"locked by a run on HOST
    pid P, renewed N s ago"`` (another machine's live lease), or None when nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "locked by another process"
    except OSError:
        return None
    else:
        holder = _foreign_lease(fd)
        return None if holder is None else f"locked by a run on {holder}"
    finally:
        os.close(fd)  # also drops the lock just taken

