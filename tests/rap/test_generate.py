"""rap generate: all kinds on real data, determinism, resume after kill -9, bad inputs, Ray."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.config import load_config
from rap.dataset.manifest import read_manifest, verify_shards
from rap.generate import START_METHOD_ENV, GenerateConfig, GenerateError, generate, list_units, worker_start_method
from rap.sources.tfrecord import read_records, write_records
from rasterizer.context import contexts_created, create_context

DATA = Path(__file__).resolve().parents[2] / "data" / "waymo"
WOMD = DATA / "womd_scenario_637f20cafde22ff8.tfrecord"
SMALL = ["size=[128,64]", "recovery.num_samples=1"]


def small_config(*extra: str) -> GenerateConfig:
    return load_config(GenerateConfig, None, SMALL + list(extra))


def digest(directory: Path) -> dict[str, str]:
    """sha256 of the manifest and every shard."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def three_records(tmp_path_factory) -> Path:
    """The real scenario three times in one TFRecord file (three work units)."""
    path = tmp_path_factory.mktemp("womd") / "three.tfrecord"
    write_records(path, read_records(WOMD) * 3)
    return path


def test_real_scenario_yields_all_three_kinds(tmp_path):
    result = generate(f"womd:{WOMD}", tmp_path / "out", small_config())
    m = read_manifest(tmp_path / "out")
    assert m.counts["ego"] >= 3 and m.counts["recovery"] >= 10 and m.counts["cross_agent"] >= 10
    assert m.num_samples == sum(m.counts.values()) == result.samples
    assert m.rejected and all(v > 0 for v in m.rejected.values())
    assert verify_shards(tmp_path / "out") == []
    assert result.exit_code == 0 and not m.skipped
    assert m.config["size"] == [128, 64] and m.seed == 0


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate(f"womd:{WOMD}", tmp_path / "a", small_config())
    generate(f"womd:{WOMD}", tmp_path / "b", small_config())
    generate(f"womd:{WOMD}", tmp_path / "c", small_config("seed=7"))
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a["shard-000000.tar"] != c["shard-000000.tar"]  # recovery perturbations differ


@pytest.mark.parametrize("method", ["", "spawn"])
def test_two_workers_give_the_same_bytes_forked_or_spawned(tmp_path, three_records, method):
    """``rap generate --workers 2`` in a fresh process (no GL context there: its workers are
    forked by default) and with spawned workers writes what one in-process worker writes."""
    generate(f"womd:{three_records}", tmp_path / "one", small_config())
    env = {k: v for k, v in os.environ.items() if k != START_METHOD_ENV} | ({START_METHOD_ENV: method} if method else {})
    cmd = [sys.executable, "-m", "rap.cli", "generate", "--source", f"womd:{three_records}", "--out", str(tmp_path / "two"), "--workers", "2", *SMALL]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert len(read_manifest(tmp_path / "two").shards) == 3


def test_workers_fork_only_where_that_is_safe(monkeypatch):
    monkeypatch.delenv(START_METHOD_ENV, raising=False)
    main = threading.main_thread()
    lease = threading.Thread(target=lambda: None, name="lease .lock")  # the run's own lock lease
    monkeypatch.setattr(threading, "enumerate", lambda: [main, lease])
    with create_context():  # a GL context in this process: its driver state would not survive a fork
        pass
    assert contexts_created() and worker_start_method() == "spawn"
    monkeypatch.setattr("rasterizer.context._created", False)
    assert worker_start_method() == "fork"
    other = threading.Thread(target=lambda: None, name="someone else's thread")
    monkeypatch.setattr(threading, "enumerate", lambda: [main, lease, other])
    assert worker_start_method() == "spawn"  # a thread could hold a lock across the fork
    monkeypatch.setenv(START_METHOD_ENV, "forkserver")
    assert worker_start_method() == "forkserver"
    monkeypatch.setenv(START_METHOD_ENV, "teleport")
    with pytest.raises(GenerateError, match="RAP_START_METHOD='teleport': expected one of"):
        worker_start_method()


def test_resume_after_kill_9_matches_uninterrupted_run(tmp_path, three_records):
    reference = tmp_path / "reference"
    generate(f"womd:{three_records}", reference, small_config())
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rap.cli", "generate", "--source", f"womd:{three_records}", "--out", str(out), *SMALL]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_unit = out / ".units" / "unit-000000.json"
    deadline = time.monotonic() + 120
    while not first_unit.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    # Refuses to start over a partial run without --resume.
    again = CliRunner().invoke(app, ["generate", "--source", f"womd:{three_records}", "--out", str(out), *SMALL])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = generate(f"womd:{three_records}", out, small_config(), resume=True)
    assert resumed.units_done_before >= 1
    assert not list(out.glob("*.tmp"))
    assert digest(out) == digest(reference)


def test_resume_with_another_config_is_refused(tmp_path):
    generate(f"womd:{WOMD}", tmp_path / "out", small_config())
    result = CliRunner().invoke(app, ["generate", "--source", f"womd:{WOMD}", "--out", str(tmp_path / "out"), "--resume", *SMALL, "seed=5"])
    assert result.exit_code == 2 and "different source or config" in result.output


def test_truncated_and_nan_inputs_are_skipped_and_counted(tmp_path):
    from waymo_open_dataset.protos import scenario_pb2

    good = read_records(WOMD)[0]
    bad = scenario_pb2.Scenario.FromString(good)
    bad.scenario_id = "nan_heading"
    bad.tracks[5].states[20].heading = float("nan")
    path = tmp_path / "mixed.tfrecord"
    write_records(path, [good, bad.SerializeToString(), good])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # truncate the third record
    result = CliRunner().invoke(app, ["generate", "--source", f"womd:{path}", "--out", str(tmp_path / "out"), *SMALL])
    assert result.exit_code == 3, result.output
    m = read_manifest(tmp_path / "out")
    reasons = {s.record: s.reason for s in m.skipped}
    assert set(reasons) == {1, 2}
    assert "heading" in reasons[1] and "mixed.tfrecord" in reasons[1]
    assert "record 2" in reasons[2] and "truncated" in reasons[2]
    assert len(m.shards) == 1 and m.num_samples > 0  # the good record still made its shard
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == 2


def test_bad_pickle_in_scenarionet_folder_is_skipped(tmp_path):
    folder = tmp_path / "sn"
    folder.mkdir()
    (folder / "broken.pkl").write_bytes(b"\x80\x04\x95 not a pickle")
    result = generate(f"scenarionet:{folder}", tmp_path / "out", small_config())
    assert result.exit_code == 3
    assert "broken.pkl" in result.manifest.skipped[0].reason


def test_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    bad_key = runner.invoke(app, ["generate", "--source", f"womd:{WOMD}", "--out", str(tmp_path / "a"), "recovery.nmu_samples=3"])
    assert bad_key.exit_code == 2 and "recovery.nmu_samples" in bad_key.output
    missing = runner.invoke(app, ["generate", "--source", "womd:/no/such/file", "--out", str(tmp_path / "b")])
    assert missing.exit_code == 2 and "/no/such/file" in missing.output
    kind = runner.invoke(app, ["generate", "--source", f"nuplan:{WOMD}", "--out", str(tmp_path / "c")])
    assert kind.exit_code == 2 and "unknown kind" in kind.output
    assert len(list_units(f"womd:{WOMD}")) == 1
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["inspect", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "no dataset here" in empty.output


def test_ray_executor_on_a_local_instance(tmp_path, three_records):
    pytest.importorskip("ray")
    generate(f"womd:{three_records}", tmp_path / "local", small_config())
    generate(f"womd:{three_records}", tmp_path / "ray", small_config(), executor="ray", workers=2)
    assert digest(tmp_path / "ray") == digest(tmp_path / "local")


def test_a_scene_that_breaks_generation_is_skipped_not_the_run(tmp_path, three_records, monkeypatch):
    import rap.generate as gen

    real = gen.plan_scene
    calls = {"n": 0}

    def flaky(scene, config):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("synthetic failure in planning")
        return real(scene, config)

    monkeypatch.setattr(gen, "plan_scene", flaky)
    result = generate(f"womd:{three_records}", tmp_path / "out", small_config())
    assert result.exit_code == 3
    assert len(result.manifest.shards) == 2 and [s.record for s in result.manifest.skipped] == [1]
    assert "generation failed: RuntimeError: synthetic failure" in result.manifest.skipped[0].reason
    assert not list((tmp_path / "out").glob("*.tmp")) and not (tmp_path / "out" / "shard-000001.tar").exists()
