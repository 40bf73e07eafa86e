"""rap generate never loses or clobbers data: one writer per folder, never a folder rap did not
write, no resume under an unproven config, shards re-checked against their recorded sha256, and a
full disk ends in one clear line (partial files removed) that ``--resume`` continues from."""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import pickle
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rap.dataset.writer as writer_module
from rap.cli import app
from rap.config import load_config
from rap.dataset.manifest import read_manifest, verify_shards
import rap.fileio as fileio
from rap.fileio import LOCK_LEASE_S, DiskFullError, LockHeldError, exclusive_lock, write_bytes_atomic
from rap.generate import GenerateConfig, generate

DATA = Path(__file__).resolve().parents[2] / "data" / "waymo"
WOMD = DATA / "womd_scenario_637f20cafde22ff8.tfrecord"
SMALL = ["size=[128,64]", "recovery.num_samples=1"]
GENERATE = ["generate", "--source", f"womd:{WOMD}"]


def small_config(*extra: str) -> GenerateConfig:
    return load_config(GenerateConfig, None, SMALL + list(extra))


def digest(directory: Path) -> dict[str, str]:
    """sha256 of the manifest and every shard."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None), by path relative to ``directory``."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None) for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """Digest of an untouched run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    generate(f"womd:{WOMD}", out, small_config())
    return digest(out)


# -- 1: one writer per folder ----------------------------------------------------------------------
def test_a_second_writer_is_refused_while_a_run_holds_the_folder(tmp_path, reference):
    out = tmp_path / "out"
    seen = {}

    def second_writer(total: int, done: int) -> None:
        seen["before"] = snapshot(out)
        seen["resume"] = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL])
        seen["fresh"] = CliRunner().invoke(app, [*GENERATE, "--out", str(out), *SMALL])
        seen["after"] = snapshot(out)

    result = generate(f"womd:{WOMD}", out, small_config(), on_start=second_writer)
    for name in ("resume", "fresh"):
        run = seen[name]
        assert run.exit_code == 2, (name, run.output)
        assert str(out) in run.output and "another rap generate run is writing" in run.output, run.output
        assert "Traceback" not in run.output
    assert seen["after"] == seen["before"]  # the refused runs touched nothing
    assert result.exit_code == 0 and verify_shards(out) == [] and digest(out) == reference
    # The lock goes with the run: a resume afterwards is allowed (and has nothing left to do).
    again = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL])
    assert again.exit_code == 0, again.output
    assert digest(out) == reference


def _foreign_lease(lock: Path, age_s: float) -> None:
    """What a run on another machine leaves in the lock file: its lease, renewed ``age_s`` ago."""
    lock.write_text(json.dumps({"host": "other-machine.example", "pid": 4242, "since": time.time() - 3600}))
    os.utime(lock, (time.time() - age_s, time.time() - age_s))


def test_a_run_on_another_machine_holds_the_folder_while_its_lease_is_renewed(tmp_path, reference):
    """flock may not reach across machines on a shared filesystem: a live lease of another host
    refuses the run (naming host and pid); an expired one (the holder died) does not."""
    out = tmp_path / "out"
    generate(f"womd:{WOMD}", out, small_config())
    lock = out / ".units" / "lock"
    assert lock.read_text() == ""  # released: no lease left behind
    _foreign_lease(lock, age_s=5.0)
    before = snapshot(out)
    run = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL])
    assert run.exit_code == 2, run.output
    assert "another rap generate run is writing" in run.output and "other-machine.example pid 4242" in run.output, run.output
    assert snapshot(out) == before
    with pytest.raises(LockHeldError, match="other-machine.example pid 4242"):
        with exclusive_lock(lock):
            pass
    _foreign_lease(lock, age_s=LOCK_LEASE_S + 10.0)  # that run died: its lease expired
    again = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL])
    assert again.exit_code == 0, again.output
    assert digest(out) == reference and lock.read_text() == ""


def test_the_lock_holder_writes_and_renews_its_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "LOCK_RENEW_S", 0.05)
    lock = tmp_path / "lock"
    with exclusive_lock(lock):
        lease = json.loads(lock.read_text())
        assert lease["host"] == socket.gethostname() and lease["pid"] == os.getpid()
        os.utime(lock, (time.time() - 100, time.time() - 100))
        deadline = time.time() + 5
        while time.time() - lock.stat().st_mtime > 50 and time.time() < deadline:
            time.sleep(0.02)
        assert time.time() - lock.stat().st_mtime < 50, "the lease was not renewed"
    assert lock.read_text() == ""


# -- 2: never a folder rap did not write -----------------------------------------------------------
def test_resume_never_touches_a_folder_rap_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"the user's own archive")
    (out / "notes.txt").write_text("keep me\n")
    before = snapshot(out)
    result = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL])
    assert result.exit_code == 2, result.output
    assert str(out) in result.output and "not a rap generate output folder" in result.output, result.output
    assert snapshot(out) == before


def test_resume_into_a_new_or_empty_folder_starts_a_run(tmp_path, reference):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(app, [*GENERATE, "--out", str(empty), "--resume", *SMALL]).exit_code == 0
    assert digest(empty) == reference


# -- 3: no resume under a config that cannot be proven equal ----------------------------------------
def test_resume_without_the_saved_config_is_refused(tmp_path):
    out = tmp_path / "out"
    generate(f"womd:{WOMD}", out, small_config())
    config_record = out / ".units" / "config.json"
    saved = config_record.read_bytes()
    config_record.unlink()
    before = snapshot(out)
    result = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL, "seed=5"])
    assert result.exit_code == 2, result.output
    assert str(config_record) in result.output and "new folder" in result.output, result.output
    assert snapshot(out) == before and read_manifest(out).seed == 0
    # An unreadable saved config is refused the same way.
    config_record.write_bytes(saved[: len(saved) // 2])
    broken = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL])
    assert broken.exit_code == 2 and str(config_record) in broken.output and "new folder" in broken.output, broken.output


# -- 4: a finished shard is trusted only with its recorded bytes --------------------------------------
def test_resume_remakes_a_shard_whose_bytes_changed(tmp_path, reference):
    out = tmp_path / "out"
    generate(f"womd:{WOMD}", out, small_config())
    shard = out / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_shards(out) != []
    resumed = generate(f"womd:{WOMD}", out, small_config(), resume=True)
    assert resumed.units_done_before == 0
    assert digest(out) == reference
    assert verify_shards(out) == []


# -- 5: a full disk --------------------------------------------------------------------------------
class _Disk:
    """A filesystem with ``free`` bytes left; writes past it fail with ``code`` (ENOSPC, or EIO
    for a failing device)."""

    def __init__(self, free: float = float("inf")) -> None:
        self.free = free
        self.code = errno.ENOSPC
        self.log: list[tuple[str, int]] = []  # (file name, bytes) of every accepted write

    def take(self, name: str, n: int) -> None:
        if n > self.free:
            self.free = 0
            raise OSError(self.code, os.strerror(self.code))
        self.free -= n
        self.log.append((name, n))


class _FileOnDisk:
    """A writable file on a :class:`_Disk`: like a buffered file on a full filesystem, a refused
    write makes the later flush and close fail too."""

    def __init__(self, fh, name: str, disk: _Disk) -> None:
        self._fh, self._name, self._disk, self._refused = fh, name, disk, False

    def write(self, data) -> int:
        try:
            self._disk.take(self._name, memoryview(data).nbytes if not isinstance(data, str) else len(data.encode()))
        except OSError:
            self._refused = True
            raise
        return self._fh.write(data)

    def flush(self) -> None:
        if self._refused:
            raise OSError(self._disk.code, os.strerror(self._disk.code))
        self._fh.flush()

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            if self._refused:
                raise OSError(self._disk.code, os.strerror(self._disk.code))
        finally:
            self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _install_disk(mp: pytest.MonkeyPatch) -> _Disk:
    """Route the shard writer's ``open`` and the atomic writer's ``os.fdopen`` through a
    simulated disk (in-process runs only: ``workers=1``)."""
    the_disk = _Disk()
    real_fdopen = os.fdopen

    def fake_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)
        return _FileOnDisk(fh, Path(path).name, the_disk) if any(c in mode for c in "wax+") else fh

    def fake_fdopen(fd, mode="r", *args, **kwargs):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        fh = real_fdopen(fd, mode, *args, **kwargs)
        return _FileOnDisk(fh, name, the_disk) if any(c in mode for c in "wax+") else fh

    mp.setattr(writer_module, "open", fake_open, raising=False)
    mp.setattr(os, "fdopen", fake_fdopen)
    return the_disk


@pytest.fixture
def disk(monkeypatch) -> _Disk:
    return _install_disk(monkeypatch)


@pytest.fixture(scope="module")
def write_log(tmp_path_factory) -> list[tuple[str, int]]:
    """Every write of an untouched in-process run: (file name, bytes)."""
    mp = pytest.MonkeyPatch()
    try:
        the_disk = _install_disk(mp)
        generate(f"womd:{WOMD}", tmp_path_factory.mktemp("log") / "out", small_config())
    finally:
        mp.undo()
    return the_disk.log


def _free_before(log: list[tuple[str, int]], fragment: str, into: float = 0.0) -> int:
    """Bytes written before the first write to a file whose name contains ``fragment``, plus the
    fraction ``into`` of that file's own bytes."""
    first = next(i for i, (name, _) in enumerate(log) if fragment in name)
    own = sum(n for name, n in log if fragment in name)
    return sum(n for _, n in log[:first]) + int(own * into)


@pytest.mark.parametrize(
    "fragment, into, failed_file",
    [
        ("config.json", 0.0, ".units/config.json"),
        ("shard-000000.tar", 0.5, "shard-000000.tar"),
        ("unit-000000.json", 0.0, ".units/unit-000000.json"),
        ("manifest.json", 0.5, "manifest.json"),
    ],
)
def test_a_full_disk_is_one_clear_line_and_resume_continues(tmp_path, disk, write_log, reference, fragment, into, failed_file):
    out = tmp_path / "out"
    disk.free = _free_before(write_log, fragment, into)
    result = CliRunner().invoke(app, [*GENERATE, "--out", str(out), *SMALL])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1, result.output
    line = errors[0]
    assert str(out / failed_file) in line and "disk is full" in line and "--resume" in line, line
    assert not list(out.rglob("*.tmp")), sorted(out.rglob("*"))  # no partial file left
    assert not (out / "manifest.json").exists()
    disk.free = float("inf")  # space freed
    resumed = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL])
    assert resumed.exit_code == 0, resumed.output
    assert digest(out) == reference and verify_shards(out) == []


def test_an_io_error_writing_a_shard_stops_the_run_and_is_not_blamed_on_the_input(tmp_path, disk, write_log, reference):
    """A failing device (EIO) halfway through a shard: one clear line naming the shard, nothing
    recorded against the input (no unit record, so no "skipped"), and --resume finishes it."""
    out = tmp_path / "out"
    disk.code = errno.EIO
    disk.free = _free_before(write_log, "shard-000000.tar", 0.5)
    result = CliRunner().invoke(app, [*GENERATE, "--out", str(out), *SMALL])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1, result.output
    line = errors[0]
    assert str(out / "shard-000000.tar") in line and "EIO" in line and "--resume" in line, line
    assert not (out / ".units" / "unit-000000.json").exists()
    assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()
    disk.free = float("inf")
    resumed = CliRunner().invoke(app, [*GENERATE, "--out", str(out), "--resume", *SMALL])
    assert resumed.exit_code == 0, resumed.output
    assert digest(out) == reference and not read_manifest(out).skipped


def test_shard_writer_cleanup_never_raises_on_a_full_disk(tmp_path, disk):
    disk.free = 10_000
    shard = writer_module.ShardWriter(tmp_path / "shard-000000.tar", fsync=False)
    with pytest.raises(OSError) as caught:
        for i in range(100):
            shard.add_members(f"k{i}", [(f"k{i}.bin", b"x" * 1000)])
        shard.close()
    assert caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value, DiskFullError) and caught.value.filename == str(tmp_path / "shard-000000.tar")
    shard.abort()  # again: a no-op, never a second error
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, disk):
    disk.free = 100
    target = tmp_path / "doc.json"
    with pytest.raises(DiskFullError) as caught:
        write_bytes_atomic(target, b"y" * 1000)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_error_survives_pickling():
    """A worker process hands it back to the run that reports it."""
    exc = pickle.loads(pickle.dumps(DiskFullError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/d/shard-000001.tar")))
    assert isinstance(exc, DiskFullError) and exc.errno == errno.ENOSPC and exc.filename == "/d/shard-000001.tar"
