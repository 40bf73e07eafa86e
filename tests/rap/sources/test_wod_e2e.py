"""Tests of rap.sources.wod_e2e on E2EDFrame records built here with the official message classes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from rap.sources.tfrecord import TFRecordError, encode_record, write_records
from rap.sources.wod_e2e import (
    E2E_CAMERA_NAMES,
    E2EFrameError,
    E2EIntent,
    e2e_frame_from_bytes,
    iter_e2e_frames,
    load_e2e_frames,
)
from rap.trajectory import WOD_E2E_SAMPLING
from rasterizer.camera import OPENCV_FROM_FLU

PERCEPTION_FRAME = Path(__file__).resolve().parents[3] / "data" / "waymo" / "perception_frame_1024360143612057520.tfrecord"

# Image size and colour per camera id (1..8): small, solid, so JPEG round trips stay close.
SIZES = {1: (32, 24), 2: (32, 24), 3: (32, 24), 4: (40, 20), 5: (40, 20), 6: (24, 16), 7: (24, 16), 8: (24, 16)}
COLORS = {i: (30 * i, 255 - 25 * i, 100) for i in SIZES}
PAST_T = (np.arange(16) - 15) * 0.25  # -3.75 ... 0
FUTURE_T = np.arange(1, 21) * 0.25  # 0.25 ... 5


def jpeg(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def extrinsic(cam_id: int) -> list[float]:
    """Camera -> vehicle (Waymo camera axes x forward, y left, z up), yawed 45 deg per id."""
    yaw = (cam_id - 1) * np.pi / 4
    c, s = np.cos(yaw), np.sin(yaw)
    mat = np.array([[c, -s, 0, 1.5], [s, c, 0, 0.1 * cam_id], [0, 0, 1, 2.0], [0, 0, 0, 1.0]])
    return mat.ravel().tolist()


def make_frame(
    name: str = "seg_0001-042",
    *,
    cameras=tuple(SIZES),
    past_speed: float = 5.0,
    with_future: bool = True,
    prefs=((np.column_stack([5.0 * FUTURE_T, np.zeros(20)]), 9.0), (np.column_stack([4.0 * FUTURE_T, 0.1 * FUTURE_T**2]), 5.5)),
    unrated: int = 1,
    intent: int = 2,
):
    """An E2EDFrame proto: 8 cameras, 16 past states driving at ``past_speed`` along x, a future
    at 6 m/s, rated trajectories ``prefs`` and ``unrated`` trajectories with score -1."""
    from waymo_open_dataset.protos import end_to_end_driving_data_pb2 as e2e

    msg = e2e.E2EDFrame()
    msg.frame.context.name = name
    msg.frame.timestamp_micros = 1_700_000_000_250_000
    for cam_id in cameras:
        w, h = SIZES[cam_id]
        calib = msg.frame.context.camera_calibrations.add()
        calib.name = cam_id
        calib.width, calib.height = w, h
        calib.intrinsic.extend([20.0 + cam_id, 21.0 + cam_id, w / 2, h / 2, 0.01, -0.002, 0.0005, 0.0001, 0.0])
        calib.extrinsic.transform.extend(extrinsic(cam_id))
        image = msg.frame.images.add()
        image.name = cam_id
        image.image = jpeg((w, h), COLORS[cam_id])
        image.pose.transform.extend(np.eye(4).ravel().tolist())
    past = msg.past_states
    past.pos_x.extend(past_speed * PAST_T)
    past.pos_y.extend(np.zeros(16))
    past.pos_z.extend(np.zeros(16))
    past.vel_x.extend(np.full(16, past_speed))
    past.vel_y.extend(np.full(16, 0.5))
    past.accel_x.extend(np.zeros(16))
    past.accel_y.extend(np.zeros(16))
    if with_future:
        msg.future_states.pos_x.extend(6.0 * FUTURE_T)
        msg.future_states.pos_y.extend(0.2 * FUTURE_T)
        msg.future_states.pos_z.extend(np.zeros(20))
    msg.intent = intent
    for traj, score in prefs:
        pref = msg.preference_trajectories.add()
        pref.pos_x.extend(traj[:, 0])
        pref.pos_y.extend(traj[:, 1])
        pref.preference_score = score
    for _ in range(unrated):
        pref = msg.preference_trajectories.add()
        pref.pos_x.extend(np.ones(20))
        pref.pos_y.extend(np.zeros(20))
        pref.preference_score = -1.0
    return msg


@pytest.fixture()
def frames_file(tmp_path) -> Path:
    path = tmp_path / "val.tfrecord"
    write_records(path, [make_frame("a").SerializeToString(), make_frame("b", with_future=False, prefs=(), unrated=0, intent=1).SerializeToString()])
    return path


def test_message_classes_load_without_tensorflow():
    import subprocess
    import sys

    code = "import sys; from waymo_open_dataset.protos import end_to_end_driving_data_pb2; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_round_trip_frame_fields(frames_file):
    a, b = load_e2e_frames(frames_file)
    assert (a.name, a.record, a.path) == ("a", 0, frames_file)
    assert (b.name, b.record) == ("b", 1)
    assert a.timestamp_s == pytest.approx(1_700_000_000.25)
    assert a.intent is E2EIntent.GO_LEFT and b.intent is E2EIntent.GO_STRAIGHT
    assert list(a.cameras) == list(E2E_CAMERA_NAMES) == list(a.jpegs) == list(a.images)
    assert E2E_CAMERA_NAMES[5:] == ("REAR_LEFT", "REAR", "REAR_RIGHT")


def test_cameras_converted_like_perception_frames(frames_file):
    (frame, _) = load_e2e_frames(frames_file)
    for cam_id, name in enumerate(E2E_CAMERA_NAMES, start=1):
        cam = frame.cameras[name]
        w, h = SIZES[cam_id]
        assert cam.size == (w, h)
        assert (cam.fx, cam.fy) == (20.0 + cam_id, 21.0 + cam_id)
        assert (cam.cx, cam.cy) == (w / 2 - 0.5, h / 2 - 0.5)  # pixel-corner -> pixel-centre origin
        np.testing.assert_allclose(cam.distortion, (0.01, -0.002, 0.0005, 0.0001, 0.0))
        ext = np.array(extrinsic(cam_id)).reshape(4, 4)
        np.testing.assert_allclose(cam.cam_to_body[:3, :3], ext[:3, :3] @ OPENCV_FROM_FLU, atol=1e-12)
        np.testing.assert_allclose(cam.cam_to_body[:3, 3], ext[:3, 3])
    # The FRONT camera's optical axis (OpenCV z) looks along the vehicle's +x.
    np.testing.assert_allclose(frame.cameras["FRONT"].cam_to_body[:3, 2], [1, 0, 0], atol=1e-12)


def test_images_decode_lazily(frames_file):
    (frame, _) = load_e2e_frames(frames_file)
    assert "lazy" in repr(frame.images)
    for cam_id, name in enumerate(E2E_CAMERA_NAMES, start=1):
        rgb = frame.images[name]
        w, h = SIZES[cam_id]
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and not rgb.flags.writeable
        np.testing.assert_allclose(rgb.reshape(-1, 3).mean(axis=0), COLORS[cam_id], atol=3)
        assert frame.images[name] is rgb  # cached
    assert frame.jpegs["FRONT"][:2] == b"\xff\xd8"


def test_ego_states_and_initial_speed(frames_file):
    a, b = load_e2e_frames(frames_file)
    past = a.past_states
    assert len(past) == 16
    np.testing.assert_allclose(past.times_s, PAST_T)
    np.testing.assert_allclose(past.xy, np.column_stack([5.0 * PAST_T, np.zeros(16)]))
    np.testing.assert_allclose(past.velocity, np.tile([5.0, 0.5], (16, 1)))
    np.testing.assert_allclose(past.acceleration, 0.0)
    assert past.z.shape == (16,)
    assert a.initial_speed == pytest.approx(np.hypot(5.0, 0.5))
    fut = a.future_states
    np.testing.assert_allclose(fut.times_s, FUTURE_T)
    np.testing.assert_allclose(fut.xy, np.column_stack([6.0 * FUTURE_T, 0.2 * FUTURE_T]), rtol=1e-6)
    assert fut.velocity is None and fut.acceleration is None  # "only position fields are populated"
    assert b.future_states is None


def test_rater_trajectories_and_scores(frames_file):
    a, b = load_e2e_frames(frames_file)
    assert a.has_rater_feedback and not b.has_rater_feedback
    assert a.rater_scores.tolist() == [9.0, 5.5]
    assert a.num_skipped_rater_trajectories == 1  # the score -1 one
    assert [t.shape for t in a.rater_trajectories] == [(20, 2), (20, 2)]
    np.testing.assert_allclose(a.rater_trajectories[1], np.column_stack([4.0 * FUTURE_T, 0.1 * FUTURE_T**2]), rtol=1e-6)
    assert b.rater_scores.shape == (0,) and b.num_skipped_rater_trajectories == 0


def test_unscored_and_empty_preference_trajectories_are_skipped_and_counted():
    msg = make_frame(unrated=0)
    msg.preference_trajectories.add().pos_x.extend([1.0])  # no score
    msg.preference_trajectories[-1].pos_y.extend([0.0])
    msg.preference_trajectories.add().preference_score = 7.0  # no poses
    frame = e2e_frame_from_bytes(msg.SerializeToString())
    assert frame.rater_scores.tolist() == [9.0, 5.5] and frame.num_skipped_rater_trajectories == 2


def test_future_trajectory_for_training(frames_file):
    a, b = load_e2e_frames(frames_file)
    traj = a.future_trajectory()
    assert traj.sampling == WOD_E2E_SAMPLING and traj.poses.shape == (20, 3)
    np.testing.assert_allclose(traj.xy, a.future_states.xy)
    np.testing.assert_allclose(traj.heading, np.arctan2(0.2, 6.0), atol=1e-6)
    with pytest.raises(E2EFrameError, match=r"record 1: field future_states: need 20 future states, the frame has 0"):
        b.future_trajectory()


def test_future_trajectory_heading_when_standing_still():
    msg = make_frame()
    del msg.future_states.pos_x[:]
    del msg.future_states.pos_y[:]
    del msg.future_states.pos_z[:]
    # Still for 1 s (jitter below 5 cm), then left along +y.
    y = np.concatenate([np.full(4, 0.01), 0.01 + np.arange(1, 17) * 0.5])
    msg.future_states.pos_x.extend(np.zeros(20))
    msg.future_states.pos_y.extend(y)
    traj = e2e_frame_from_bytes(msg.SerializeToString()).future_trajectory()
    np.testing.assert_allclose(traj.heading[:4], 0.0)
    np.testing.assert_allclose(traj.heading[4:], np.pi / 2)


def test_embedded_real_perception_frame_gives_the_same_cameras():
    """Calibrations are those of the perception dataset: converted exactly as waymo_frame does."""
    from waymo_open_dataset.protos import end_to_end_driving_data_pb2 as e2e

    from rap.sources.tfrecord import read_records
    from rap.sources.waymo_frame import load_frame

    (payload,) = read_records(PERCEPTION_FRAME)
    msg = e2e.E2EDFrame()
    msg.frame.ParseFromString(payload)
    msg.past_states.pos_x.append(0.0)
    msg.past_states.pos_y.append(0.0)
    msg.past_states.vel_x.append(0.0)
    msg.past_states.vel_y.append(0.0)
    frame = e2e_frame_from_bytes(msg.SerializeToString())
    reference = load_frame(PERCEPTION_FRAME)
    assert list(frame.cameras) == list(reference.cameras)
    for name, cam in reference.cameras.items():
        got = frame.cameras[name]
        assert (got.size, got.fx, got.fy, got.cx, got.cy, got.distortion) == (cam.size, cam.fx, cam.fy, cam.cx, cam.cy, cam.distortion)
        np.testing.assert_array_equal(got.cam_to_body, cam.cam_to_body)
    assert frame.jpegs == reference.jpegs


def _break(msg, how: str):
    if how == "pos_y":
        msg.past_states.pos_y.append(1.0)
    elif how == "score":
        msg.preference_trajectories[1].preference_score = 11.0
    elif how == "calibration":
        del msg.frame.context.camera_calibrations[0]
    elif how == "name":
        msg.frame.context.name = ""
    elif how == "velocity":
        del msg.past_states.vel_x[:]
        del msg.past_states.vel_y[:]
    elif how == "vel_y":
        del msg.past_states.vel_y[:]
    elif how == "nan":
        msg.future_states.pos_x[3] = float("nan")
    elif how == "camera_id":
        msg.frame.images[2].name = 0  # CameraName.UNKNOWN (the enum is closed)
    elif how == "intrinsic":
        del msg.frame.context.camera_calibrations[4].intrinsic[-1]
    elif how == "extrinsic":
        msg.frame.context.camera_calibrations[1].extrinsic.transform[0] = 3.0
    return msg


@pytest.mark.parametrize(
    "how, field, reason",
    [
        ("pos_y", "past_states.pos_y", "17 values but pos_x has 16"),
        ("score", "preference_trajectories[1].preference_score", "outside [0, 10]"),
        ("calibration", "frame.images[0]", "has no calibration"),
        ("name", "frame.context.name", "empty"),
        ("velocity", "past_states.vel_x", "no velocities"),
        ("vel_y", "past_states.vel_y", "empty while vel_x has 16 values"),
        ("nan", "future_states.pos_x", "non-finite"),
        ("camera_id", "frame.images[2].name", "unknown camera id 0"),
        ("intrinsic", "frame.context.camera_calibrations[4].intrinsic", "expected 9 finite values"),
        ("extrinsic", "frame.context.camera_calibrations[1].extrinsic.transform", "not a rigid transform"),
    ],
)
def test_errors_name_file_record_and_field(tmp_path, how, field, reason):
    path = tmp_path / "bad.tfrecord"
    write_records(path, [make_frame("ok").SerializeToString(), _break(make_frame("bad"), how).SerializeToString()])
    with pytest.raises(E2EFrameError) as info:
        load_e2e_frames(path)
    err = info.value
    assert (err.path, err.record, err.field) == (path, 1, field)
    assert str(err).startswith(f"{path}: record 1: field {field}: ") and reason in str(err)


def test_errors_survive_pickling():
    import pickle

    err = E2EFrameError("f.tfrecord", 3, "past_states.pos_y", "too short")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.record, copy.field, copy.reason, str(copy)) == (err.path, 3, "past_states.pos_y", "too short", str(err))


def test_not_an_e2ed_frame():
    with pytest.raises(E2EFrameError, match="not a waymo_open_dataset.E2EDFrame message"):
        e2e_frame_from_bytes(b"\xff\xff\xff", path="x.tfrecord", record=3)
    with pytest.raises(E2EFrameError, match="record 0: field frame: missing"):
        e2e_frame_from_bytes(b"")


def test_image_size_mismatch_is_reported_on_decode():
    msg = make_frame()
    msg.frame.images[0].image = jpeg((10, 10), (0, 0, 0))
    frame = e2e_frame_from_bytes(msg.SerializeToString(), path="f.tfrecord", record=2)
    with pytest.raises(E2EFrameError, match=r"f.tfrecord: record 2: field frame.images\[0\].image: camera FRONT: JPEG header says the image is 10x10, calibration says 32x24; not decoded"):
        frame.images["FRONT"]
    msg.frame.images[1].image = b"not a jpeg"
    frame = e2e_frame_from_bytes(msg.SerializeToString())
    with pytest.raises(E2EFrameError, match="cannot decode JPEG"):
        frame.images["FRONT_LEFT"]


def test_bad_records_skipped_and_counted(tmp_path):
    path = tmp_path / "mixed.tfrecord"
    good = [make_frame(n).SerializeToString() for n in ("r0", "r2", "r3")]
    bad_message = _break(make_frame("r1"), "score").SerializeToString()
    bad_crc = bytearray(encode_record(make_frame("r4").SerializeToString()))
    bad_crc[-1] ^= 0xFF  # payload CRC mismatch, framing intact
    path.write_bytes(b"".join(encode_record(p) for p in (good[0], bad_message, good[1], good[2])) + bytes(bad_crc) + encode_record(make_frame("r5").SerializeToString()))

    with pytest.raises(E2EFrameError):
        load_e2e_frames(path)
    skipped: list[Exception] = []
    frames = load_e2e_frames(path, skip_corrupt=True, on_skip=skipped.append)
    assert [(f.name, f.record) for f in frames] == [("r0", 0), ("r2", 2), ("r3", 3), ("r5", 5)]
    assert [type(e) for e in skipped] == [E2EFrameError, TFRecordError]
    assert [e.record for e in skipped] == [1, 4]
    with pytest.warns(RuntimeWarning, match="skipped bad WOD-E2E record"):
        assert len(list(iter_e2e_frames(path, skip_corrupt=True))) == 4
