"""Tests of rap.eval.wod_e2e: predictions JSON in, per-frame and mean RFS / ADE out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rap.eval.wod_e2e import (
    EVAL_FILENAME,
    PREDICTIONS_FORMAT,
    PredictionsError,
    evaluate_wod_e2e,
    load_predictions,
)
from rap.sources.tfrecord import encode_record, write_records

TIMES = np.arange(1, 21) * 0.25  # 0.25 ... 5 s
LANE = np.column_stack([10.0 * TIMES, np.zeros(20)])  # logged future and best rater: 10 m/s along x
FAR = LANE + [0.0, -30.0]


def e2ed_frame(name: str, *, future: np.ndarray | None = LANE, raters=((LANE, 10.0), (LANE + [0.0, 3.5], 6.0)), speed: float = 10.0) -> bytes:
    """A serialized E2EDFrame without images (the evaluation does not need them)."""
    from waymo_open_dataset.protos import end_to_end_driving_data_pb2 as e2e

    msg = e2e.E2EDFrame()
    msg.frame.context.name = name
    past_t = (np.arange(16) - 15) * 0.25
    msg.past_states.pos_x.extend(speed * past_t)
    msg.past_states.pos_y.extend(np.zeros(16))
    msg.past_states.vel_x.extend(np.full(16, speed))
    msg.past_states.vel_y.extend(np.zeros(16))
    if future is not None:
        msg.future_states.pos_x.extend(future[:, 0])
        msg.future_states.pos_y.extend(future[:, 1])
    for traj, score in raters:
        pref = msg.preference_trajectories.add()
        pref.pos_x.extend(traj[:, 0])
        pref.pos_y.extend(traj[:, 1])
        pref.preference_score = score
    return msg.SerializeToString()


def write_predictions(path: Path, frames: dict) -> Path:
    path.write_text(json.dumps({"format": PREDICTIONS_FORMAT, "frames": frames}))
    return path


def entry(*trajs: np.ndarray, probs=None) -> dict:
    out = {"trajectories": [t.tolist() for t in trajs]}
    if probs is not None:
        out["probabilities"] = list(probs)
    return out


@pytest.fixture()
def frames_file(tmp_path) -> Path:
    path = tmp_path / "frames" / "val.tfrecord-00000"
    path.parent.mkdir()
    write_records(
        path,
        [
            e2ed_frame("on_lane"),  # rated, future
            e2ed_frame("mixed"),  # rated, future
            e2ed_frame("unrated", raters=()),  # future only
            e2ed_frame("test_split", future=None, raters=()),  # neither
            e2ed_frame("no_prediction"),
        ],
    )
    return path


def test_evaluate_per_frame_and_mean(tmp_path, frames_file):
    growing = LANE + np.column_stack([np.zeros(20), TIMES])  # lateral error t metres at t seconds
    preds = write_predictions(
        tmp_path / "preds.json",
        {
            "on_lane": entry(LANE),  # probability omitted: 1
            "mixed": entry(FAR, LANE, probs=[0.75, 0.25]),
            "unrated": entry(growing),
            "test_split": entry(np.column_stack([LANE, np.zeros(20)])),  # (x, y, heading) accepted
            "not_in_frames": entry(LANE),
        },
    )
    out_dir = tmp_path / "out"
    report = evaluate_wod_e2e(frames_file, preds, out_dir)

    frames = report["frames"]
    assert list(frames) == ["on_lane", "mixed", "unrated", "test_split"]
    assert frames["on_lane"]["rfs"] == 10.0 and frames["on_lane"]["in_trust_region"] == [True]
    assert frames["mixed"]["rfs_per_trajectory"] == [4.0, 10.0]  # far: floor 4; on the 10-rater: 10
    assert frames["mixed"]["rfs"] == pytest.approx(0.75 * 4.0 + 0.25 * 10.0)
    assert frames["unrated"]["rfs"] is None and frames["unrated"]["num_raters"] == 0
    assert frames["on_lane"]["initial_speed"] == pytest.approx(10.0)
    assert (frames["on_lane"]["path"], frames["mixed"]["record"]) == (str(frames_file), 1)

    # ADE of the most probable trajectory; min ADE over all of them.
    assert frames["on_lane"]["ade_3s"] == 0.0 and frames["on_lane"]["ade_5s"] == 0.0
    assert frames["mixed"]["ade_5s"] == pytest.approx(30.0) and frames["mixed"]["min_ade_5s"] == 0.0
    assert frames["unrated"]["ade_3s"] == pytest.approx(TIMES[:12].mean())  # 1.625 m
    assert frames["unrated"]["ade_5s"] == pytest.approx(TIMES.mean())  # 2.625 m
    assert frames["test_split"]["ade_3s"] is None and frames["test_split"]["rfs"] is None

    summary = report["summary"]
    assert summary["rfs"] == pytest.approx((10.0 + 5.5) / 2)
    assert summary["ade_3s"] == pytest.approx((0.0 + 30.0 + 1.625) / 3)
    assert summary["min_ade_5s"] == pytest.approx((0.0 + 0.0 + 2.625) / 3)
    assert summary["num_frames"] == 5 and summary["num_scored_frames"] == 4
    assert summary["num_rated_frames"] == 2 and summary["num_frames_with_future"] == 3
    assert summary["num_frames_without_prediction"] == 1 and report["frames_without_prediction"] == ["no_prediction"]
    assert summary["num_unused_predictions"] == 1 and report["unused_predictions"] == ["not_in_frames"]
    assert summary["num_skipped_records"] == 0

    written = out_dir / EVAL_FILENAME
    assert json.loads(written.read_text()) == report
    assert [p.name for p in out_dir.iterdir()] == [EVAL_FILENAME]  # no temporary left behind


def test_directory_of_shards_and_skipped_records(tmp_path, frames_file):
    shard2 = frames_file.parent / "val.tfrecord-00001"
    bad = bytearray(encode_record(e2ed_frame("corrupt")))
    bad[-1] ^= 0xFF
    shard2.write_bytes(bytes(bad) + encode_record(e2ed_frame("second_shard")))
    preds = write_predictions(tmp_path / "p.json", {"second_shard": entry(LANE), "on_lane": entry(LANE)})
    report = evaluate_wod_e2e(frames_file.parent, preds, tmp_path / "out")
    assert list(report["frames"]) == ["on_lane", "second_shard"]
    assert report["frames"]["second_shard"]["record"] == 1
    assert report["summary"]["num_skipped_records"] == 1
    assert "val.tfrecord-00001: record 0" in report["skipped_records"][0]


def test_no_matching_frame_and_duplicate_names_are_errors(tmp_path, frames_file):
    preds = write_predictions(tmp_path / "p.json", {"elsewhere": entry(LANE)})
    with pytest.raises(ValueError, match="none of the 1 predicted frames is among the 5 frames"):
        evaluate_wod_e2e(frames_file, preds, tmp_path / "out")
    dup = tmp_path / "dup.tfrecord"
    write_records(dup, [e2ed_frame("x"), e2ed_frame("x")])
    with pytest.raises(ValueError, match=r"dup.tfrecord: record 1: frame name 'x' already used by .*record 0"):
        evaluate_wod_e2e(dup, write_predictions(tmp_path / "q.json", {"x": entry(LANE)}), tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        evaluate_wod_e2e(tmp_path / "missing.tfrecord", preds, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "frame_entry, field, reason",
    [
        (entry(LANE, LANE[:19]), "trajectories[1]", "expected 20 poses"),
        (entry(LANE, probs=[0.5, 0.5]), "probabilities", "expected 1 values"),
        (entry(LANE, LANE, probs=[0.5, 0.6]), "probabilities", "must sum to 1"),
        (entry(LANE, LANE, probs=[-0.5, 1.5]), "probabilities", "non-negative"),
        ({"trajectories": []}, "trajectories", "non-empty list"),
        ({"trajectories": [[["a", "b"]] * 20]}, "trajectories[0]", "numbers"),
        ({"trajectories": [LANE.tolist()], "score": 1}, "score", "unknown field"),
        ({"probabilities": [1.0]}, "trajectories", "missing"),
    ],
)
def test_prediction_errors_name_file_frame_and_field(tmp_path, frame_entry, field, reason):
    path = write_predictions(tmp_path / "p.json", {"good": entry(LANE), "frame-7": frame_entry})
    with pytest.raises(PredictionsError) as info:
        load_predictions(path)
    err = info.value
    assert (err.path, err.frame, err.field) == (path, "frame-7", field)
    assert str(err).startswith(f"{path}: frame 'frame-7': field {field}: ") and reason in str(err)


def test_prediction_file_level_errors(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(PredictionsError, match="bad.json: not valid JSON"):
        load_predictions(bad_json)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "other/v9", "frames": {}}))
    with pytest.raises(PredictionsError, match="field format: expected 'rap.wod_e2e.predictions/v1'"):
        load_predictions(wrong)
    wrong.write_text(json.dumps({"frame": {}}))
    with pytest.raises(PredictionsError, match="field frame: unknown top-level key"):
        load_predictions(wrong)
    wrong.write_text(json.dumps({"frames": []}))
    with pytest.raises(PredictionsError, match="field frames: expected an object"):
        load_predictions(wrong)


def test_loaded_predictions(tmp_path):
    path = write_predictions(tmp_path / "p.json", {"a": entry(LANE, FAR, LANE), "b": entry(LANE, FAR, probs=[0.2, 0.8])})
    preds = load_predictions(path)
    assert list(preds) == ["a", "b"]
    assert preds["a"].trajectories.shape == (3, 20, 2)
    np.testing.assert_allclose(preds["a"].probabilities, [1 / 3] * 3)
    assert preds["a"].best_index == 0 and preds["b"].best_index == 1


def test_cli_eval_wod_e2e(tmp_path, frames_file):
    from typer.testing import CliRunner

    from rap.cli import app

    preds = write_predictions(tmp_path / "preds.json", {"on_lane": entry(LANE), "mixed": entry(FAR, LANE, probs=[0.75, 0.25])})
    result = CliRunner().invoke(app, ["eval", "wod-e2e", "--frames", str(frames_file), "--predictions", str(preds), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rfs"] == pytest.approx((10.0 + 5.5) / 2)
    assert summary["num_scored_frames"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": PREDICTIONS_FORMAT, "frames": {"on_lane": {"trajectories": [[[0, 0]]]}}}))
    result = CliRunner().invoke(app, ["eval", "wod-e2e", "--frames", str(frames_file), "--predictions", str(bad), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2
    assert "bad.json" in result.output and "on_lane" in result.output
