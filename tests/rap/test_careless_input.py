"""Careless paths and API values (issue 9): named pipes, devices and folders where a file is
expected, existing files where an output folder is expected, unknown source kinds, deeply nested
JSON, non-UTF-8 file names, and out-of-range values given to the aggregation and RFS functions.

Every CLI case ends in one line naming the file or argument and what is wrong, exit status 2,
never a traceback; every API case raises ValueError naming the argument. Commands that could block
on a named pipe run in a subprocess (or a thread) with a timeout, so a regression fails instead of
hanging the suite.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.eval.wod_e2e import PREDICTIONS_FORMAT, PredictionsError, load_predictions
from rap.metrics.pdms import aggregate_v1, aggregate_v2
from rap.metrics.rfs import rater_feedback_score
from rap.sources.registry import SourceSpec, list_units, load_scene, load_unit
from rap.sources.tfrecord import RecordIndex, index_records, iter_records, read_record_at, read_records, write_records

DATA = Path(__file__).resolve().parents[2] / "data" / "waymo"
WOMD = DATA / "womd_scenario_637f20cafde22ff8.tfrecord"
FRAME = DATA / "perception_frame_1024360143612057520.tfrecord"
KNOWN_KINDS = ("scenarionet", "synthetic", "womd")
TIMEOUT_S = 20  # a command that blocks on a FIFO fails the test instead of hanging the suite


def message(result) -> str:
    """stderr with rich's wrapping and box drawing removed (whitespace collapsed)."""
    text = re.sub(r"[\u2500-\u257f]", " ", result.stderr)
    return " ".join(text.split())


def assert_usage_error(result, *fragments: str) -> str:
    """Exit 2 with one ``error:`` line holding every fragment; no traceback."""
    text = message(result)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Error:" not in text.replace("error:", ""), result.output
    assert text.startswith("error:"), text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    return text


def rap_subprocess(*args: str) -> subprocess.CompletedProcess:
    """``rap ARGS`` in a fresh interpreter, killed after TIMEOUT_S (a hang fails the test)."""
    env = {**os.environ, "COLUMNS": "400"}
    try:
        return subprocess.run([sys.executable, "-m", "rap.cli", *args], capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rap {' '.join(args)} still running after {TIMEOUT_S} s (blocked on a named pipe?)")


def call_guarded(fn, fifo: Path):
    """Call ``fn()`` in a thread; if it is still blocked (opening ``fifo``) after TIMEOUT_S,
    unblock it by opening the FIFO's write end, and fail. Returns (value, exception)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if thread.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader sees EOF
        except OSError:
            pass
        thread.join(5)
        pytest.fail(f"blocked on the named pipe {fifo}")
    return box.get("value"), box.get("error")


@pytest.fixture()
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.tfrecord"
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


# --- 1. named pipes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, kind",
    [("render", "womd"), ("render", "scenarionet"), ("generate", "womd"), ("generate", "scenarionet")],
)
def test_cli_refuses_a_fifo_source(tmp_path, fifo, command, kind):
    proc = rap_subprocess(command, "--source", f"{kind}:{fifo}", "--out", str(tmp_path / "out"))
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{fifo}: is a named pipe (FIFO), not a regular file" in text, text
    assert not (tmp_path / "out").exists()


def test_registry_refuses_non_regular_files(fifo):
    for kind in ("womd", "scenarionet"):
        _, error = call_guarded(lambda: load_scene(SourceSpec(kind, str(fifo))), fifo)
        assert isinstance(error, ValueError) and "named pipe (FIFO)" in str(error) and str(fifo) in str(error), error
        with pytest.raises(ValueError, match="named pipe"):
            list_units(f"{kind}:{fifo}")
    with pytest.raises(ValueError, match="/dev/zero: is a character device, not a regular file"):
        list_units("womd:/dev/zero")
    with pytest.raises(ValueError, match="/dev/null: is a character device"):
        load_scene(SourceSpec("womd", "/dev/null"))


def test_folder_sources_list_only_regular_files(tmp_path):
    folder = tmp_path / "womd"
    folder.mkdir()
    (folder / "a.tfrecord").symlink_to(WOMD)
    os.mkfifo(folder / "b.tfrecord")
    units = list_units(f"womd:{folder}")
    assert [Path(u.path).name for u in units] == ["a.tfrecord"]

    sn = tmp_path / "sn"
    sn.mkdir()
    os.mkfifo(sn / "x.pkl")
    with pytest.raises(ValueError, match=re.escape(str(sn))):  # no scenarios in the folder
        list_units(f"scenarionet:{sn}")


def test_scenarionet_mapping_to_a_fifo_is_reported_not_opened(tmp_path):
    sn = tmp_path / "sn"
    sn.mkdir()
    os.mkfifo(sn / "a.pkl")
    with open(sn / "dataset_mapping.pkl", "wb") as f:
        pickle.dump({"a.pkl": ""}, f)
    units = list_units(f"scenarionet:{sn}")
    assert len(units) == 1
    _, error = call_guarded(lambda: load_unit(units[0]), sn / "a.pkl")
    assert isinstance(error, ValueError), error
    assert f"{sn / 'a.pkl'}: is a named pipe (FIFO), not a regular file" in str(error)
    _, error = call_guarded(lambda: load_scene(SourceSpec("scenarionet", str(sn))), sn / "a.pkl")
    assert isinstance(error, ValueError) and "named pipe (FIFO)" in str(error), error


def test_tfrecord_readers_refuse_a_fifo(fifo):
    for fn in (lambda: index_records(fifo), lambda: read_records(fifo), lambda: list(iter_records(fifo, skip_corrupt=True)), lambda: read_record_at(fifo, RecordIndex(0, 0, 0))):
        _, error = call_guarded(fn, fifo)
        assert isinstance(error, ValueError) and f"{fifo}: is a named pipe (FIFO), not a regular file" in str(error), error


# --- 5. devices and folders given to the TFRecord reader ----------------------------------------


def test_index_records_refuses_devices_and_folders(tmp_path):
    with pytest.raises(ValueError, match="/dev/zero: is a character device, not a regular file"):
        index_records("/dev/zero")
    with pytest.raises(ValueError, match="/dev/zero: is a character device"):
        next(iter_records("/dev/zero"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: is a directory, not a regular file")):
        index_records(tmp_path)
    with pytest.raises(ValueError, match="is a directory"):
        read_records(tmp_path)


# --- 2. folders where a file is expected, files where a folder is expected ----------------------


def test_render_womd_folder_source(runner, tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    result = runner.invoke(app, ["render", "--source", f"womd:{folder}", "--out", str(tmp_path / "out")])
    assert_usage_error(result, f"{folder}: is a directory", "womd:")


def test_check_projection_folder(runner, tmp_path):
    result = runner.invoke(app, ["check-projection", str(tmp_path), "--out", str(tmp_path / "out")])
    assert_usage_error(result, f"{tmp_path}: is a directory")


def test_check_projection_fifo(tmp_path, fifo):
    proc = rap_subprocess("check-projection", str(fifo), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{fifo}: is a named pipe (FIFO), not a regular file" in " ".join(proc.stderr.split())


def e2ed_frame(name: str) -> bytes:
    """A minimal serialized E2EDFrame: 10 m/s along x, a 5 s future, one rater."""
    from waymo_open_dataset.protos import end_to_end_driving_data_pb2 as e2e

    times = np.arange(1, 21) * 0.25
    msg = e2e.E2EDFrame()
    msg.frame.context.name = name
    past = (np.arange(16) - 15) * 0.25
    msg.past_states.pos_x.extend(10.0 * past)
    msg.past_states.pos_y.extend(np.zeros(16))
    msg.past_states.vel_x.extend(np.full(16, 10.0))
    msg.past_states.vel_y.extend(np.zeros(16))
    msg.future_states.pos_x.extend(10.0 * times)
    msg.future_states.pos_y.extend(np.zeros(20))
    pref = msg.preference_trajectories.add()
    pref.pos_x.extend(10.0 * times)
    pref.pos_y.extend(np.zeros(20))
    pref.preference_score = 10.0
    return msg.SerializeToString()


@pytest.fixture()
def wod_inputs(tmp_path) -> tuple[Path, Path]:
    frames = tmp_path / "frames.tfrecord"
    write_records(frames, [e2ed_frame("f0")])
    preds = tmp_path / "preds.json"
    traj = np.column_stack([10.0 * np.arange(1, 21) * 0.25, np.zeros(20)]).tolist()
    preds.write_text(json.dumps({"format": PREDICTIONS_FORMAT, "frames": {"f0": {"trajectories": [traj]}}}))
    return frames, preds


def test_wod_e2e_inputs_are_fine(runner, tmp_path, wod_inputs):
    frames, preds = wod_inputs
    result = runner.invoke(app, ["eval", "wod-e2e", "--frames", str(frames), "--predictions", str(preds), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output


def test_wod_e2e_predictions_folder(runner, tmp_path, wod_inputs):
    frames, _ = wod_inputs
    folder = tmp_path / "preds_dir"
    folder.mkdir()
    result = runner.invoke(app, ["eval", "wod-e2e", "--frames", str(frames), "--predictions", str(folder), "--out", str(tmp_path / "out")])
    assert_usage_error(result, f"{folder}: is a directory", "predictions JSON")
    with pytest.raises(PredictionsError, match="is a directory"):
        load_predictions(folder)


def test_wod_e2e_predictions_fifo(tmp_path, wod_inputs):
    frames, _ = wod_inputs
    pipe = tmp_path / "preds.json"
    pipe.unlink()
    os.mkfifo(pipe)
    proc = rap_subprocess("eval", "wod-e2e", "--frames", str(frames), "--predictions", str(pipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{pipe}: is a named pipe (FIFO), not a regular file" in " ".join(proc.stderr.split())


@pytest.fixture()
def a_file(tmp_path) -> Path:
    path = tmp_path / "taken"
    path.write_text("not a folder\n")
    return path


def test_render_out_is_a_file(runner, tmp_path, a_file):
    for out in (a_file, a_file / "sub"):
        result = runner.invoke(app, ["render", "--source", f"womd:{WOMD}", "--size", "32x18", "--out", str(out)])
        assert_usage_error(result, "--out", f"{a_file}: is a file, not a folder")
    assert a_file.read_text() == "not a folder\n"


def test_check_projection_out_is_a_file(runner, a_file):
    result = runner.invoke(app, ["check-projection", str(FRAME), "--out", str(a_file)])
    assert_usage_error(result, "--out", f"{a_file}: is a file, not a folder")


def test_eval_navsim_out_is_a_file(runner, a_file):
    result = runner.invoke(app, ["eval", "navsim", "--agent", "expert", "--scenes", "synthetic:1", "--max-scenes", "1", "--out", str(a_file)])
    assert_usage_error(result, "--out", f"{a_file}: is a file, not a folder")


def test_eval_wod_e2e_out_is_a_file(runner, wod_inputs, a_file):
    frames, preds = wod_inputs
    for out in (a_file, a_file / "sub"):
        result = runner.invoke(app, ["eval", "wod-e2e", "--frames", str(frames), "--predictions", str(preds), "--out", str(out)])
        assert_usage_error(result, "--out", f"{a_file}: is a file, not a folder")


# --- 3. deeply nested JSON ----------------------------------------------------------------------


def test_deeply_nested_predictions(runner, tmp_path, wod_inputs):
    frames, _ = wod_inputs
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    with pytest.raises(PredictionsError, match="nested too deeply") as info:
        load_predictions(deep)
    assert info.value.path == deep
    result = runner.invoke(app, ["eval", "wod-e2e", "--frames", str(frames), "--predictions", str(deep), "--out", str(tmp_path / "out")])
    assert_usage_error(result, f"{deep}: not valid JSON: nested too deeply")


# --- 4. non-UTF-8 file names --------------------------------------------------------------------


@pytest.fixture()
def non_utf8_womd(tmp_path) -> Path:
    if sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
        pytest.skip("needs a UTF-8 file system encoding")
    folder = os.fsencode(tmp_path) + b"/scenes\xff"
    os.mkdir(folder)
    link = folder + b"/womd\xff.tfrecord"
    try:
        os.symlink(os.fsencode(WOMD), link)
    except OSError as exc:  # pragma: no cover - file systems that refuse such names
        pytest.skip(f"cannot create a non-UTF-8 file name: {exc}")
    return Path(os.fsdecode(link))


def test_render_reads_a_non_utf8_file_name(runner, tmp_path, non_utf8_womd):
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", "--source", f"womd:{non_utf8_womd}", "--rig", "bev", "--size", "32x32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "render.json").read_text())
    assert os.fsencode(doc["source"].partition(":")[2]).endswith(b"/womd\xff.tfrecord@0")  # JSON escapes keep the name


def test_generate_reads_a_non_utf8_file_name(runner, tmp_path, non_utf8_womd):
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--source", f"womd:{non_utf8_womd.parent}", "--out", str(out), "size=[64,32]", "recovery.num_samples=1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] and not manifest["skipped"]


# --- 6. unknown source kinds --------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["render", "--source", "bogus:1"],
        ["generate", "--source", "bogus:1"],
        ["eval", "navsim", "--agent", "expert", "--scenes", "bogus:1"],
    ],
    ids=["render", "generate", "eval-navsim"],
)
def test_unknown_source_kind_is_named(runner, tmp_path, argv):
    result = runner.invoke(app, [*argv, "--out", str(tmp_path / "out")])
    text = assert_usage_error(result, "unknown kind 'bogus'", "known kinds: " + ", ".join(KNOWN_KINDS))
    assert "no such file" not in text
    with pytest.raises(ValueError, match="unknown kind 'bogus'; known kinds: scenarionet, synthetic, womd"):
        list_units("bogus:1")


# --- 7. API values ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1.5, -0.1])
def test_aggregate_v1_refuses_scores_outside_0_1(bad):
    with pytest.raises(ValueError, match=r"aggregate_v1: scores\[1\]"):
        aggregate_v1([0.5, bad])


def test_aggregate_v2_refuses_bad_values():
    ends = np.array([[0.0, 0.0], [5.0, 0.0]])
    second = [(np.array([0.5]), np.array([[0.0, 0.0]])), (np.array([1.0, 0.0]), np.array([[5.0, 0.0], [6.0, 0.0]]))]
    assert 0.0 <= aggregate_v2([1.0, 0.5], ends, second) <= 1.0  # the valid call
    cases = [
        (dict(first_stage_scores=[np.nan, 0.5]), "first_stage_scores"),
        (dict(first_stage_scores=[1.2, 0.5]), "first_stage_scores"),
        (dict(first_stage_endpoints=[[np.nan, 0.0], [5.0, 0.0]]), "first_stage_endpoints"),
        (dict(first_stage_endpoints=[[0.0, 0.0]]), "first_stage_endpoints"),
        (dict(second_stage=[second[0], (np.array([2.0, 0.0]), second[1][1])]), r"second_stage\[1\] scores"),
        (dict(second_stage=[second[0], (np.array([np.nan, 0.0]), second[1][1])]), r"second_stage\[1\] scores"),
        (dict(second_stage=[second[0], (second[1][0], np.array([[np.inf, 0.0], [6.0, 0.0]]))]), r"second_stage\[1\] start points"),
        (dict(second_stage=[second[0], (second[1][0], np.array([[5.0, 0.0]]))]), r"second_stage\[1\] start points"),
        (dict(kernel_variance=np.nan), "kernel_variance"),
        (dict(kernel_variance=0.0), "kernel_variance"),
        (dict(kernel_variance=-1.0), "kernel_variance"),
        (dict(kernel_variance=np.inf), "kernel_variance"),
    ]
    for change, name in cases:
        kwargs = dict(first_stage_scores=[1.0, 0.5], first_stage_endpoints=ends, second_stage=second, kernel_variance=0.1) | change
        with pytest.raises(ValueError, match=f"aggregate_v2: {name}"):
            aggregate_v2(**kwargs)
    with pytest.raises(ValueError, match="aggregate_v2: first_stage_scores"):
        aggregate_v2([np.inf])  # without second-stage scenes too
    with pytest.raises(ValueError, match="aggregate_v2: kernel_variance"):
        aggregate_v2([0.5], kernel_variance=np.nan)


def rfs_args(frames: int = 1) -> dict:
    t = np.arange(1, 21) * 0.25
    lane = np.column_stack([10.0 * t, np.zeros(20)])
    return dict(
        pred_trajs=np.broadcast_to(lane, (frames, 1, 20, 2)).copy(),
        pred_probs=np.ones((frames, 1)),
        rater_trajs=[[lane]] * frames,
        rater_scores=[np.array([10.0])] * frames,
        init_speed=np.full(frames, 10.0),
    )


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(frequency=-4, length_seconds=-5), "frequency"),  # IndexError before
        (dict(frequency=-1), "frequency"),
        (dict(frequency=0), "frequency"),
        (dict(frequency=4.5), "frequency"),
        (dict(frequency=np.nan), "frequency"),
        (dict(length_seconds=0), "length_seconds"),
        (dict(length_seconds=-5), "length_seconds"),
        (dict(config="defaults"), "config"),
    ],
)
def test_rater_feedback_score_refuses_bad_arguments(change, name):
    with pytest.raises(ValueError, match=name):
        rater_feedback_score(**(rfs_args() | change))


def test_rater_feedback_score_frame_counts_must_agree():
    args = rfs_args(2)
    assert rater_feedback_score(**args)["rater_feedback_score"].tolist() == [10.0, 10.0]
    with pytest.raises(ValueError, match="rater_trajs"):
        rater_feedback_score(**(args | dict(rater_trajs=args["rater_trajs"][:1], rater_scores=args["rater_scores"][:1])))
    assert rater_feedback_score(**(rfs_args() | dict(frequency=4.0, length_seconds=np.int64(5))))["rater_feedback_score"].tolist() == [10.0]
