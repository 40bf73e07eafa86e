"""Tests of rap.sources.waymo_frame on the shipped real Waymo perception frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rap.sources.tfrecord import TFRecordError, read_records, write_records
from rap.sources.waymo_frame import (
    CAMERA_NAMES,
    WaymoFrameError,
    WaymoLabelType,
    frame_from_bytes,
    iter_frames,
    load_frame,
)

FRAME_FILE = Path(__file__).resolve().parents[3] / "data" / "waymo" / "perception_frame_1024360143612057520.tfrecord"


@pytest.fixture(scope="module")
def frame():
    return load_frame(FRAME_FILE)


@pytest.fixture(scope="module")
def payload() -> bytes:
    (record,) = read_records(FRAME_FILE)
    return record


def _frame_message(payload: bytes):
    from waymo_open_dataset import dataset_pb2

    msg = dataset_pb2.Frame()
    msg.ParseFromString(payload)
    return msg


def test_context_and_timestamp(frame):
    assert frame.name == "1024360143612057520_3580_000_3600_000"
    assert frame.timestamp_s == pytest.approx(1553735853.462203)
    assert frame.record == 0 and frame.path == FRAME_FILE
    assert frame.vehicle_pose.shape == (4, 4)
    rot = frame.vehicle_pose[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)


def test_five_cameras_with_sizes(frame):
    assert list(frame.cameras) == list(CAMERA_NAMES)
    sizes = {name: cam.size for name, cam in frame.cameras.items()}
    assert sizes == {
        "FRONT": (1920, 1280),
        "FRONT_LEFT": (1920, 1280),
        "FRONT_RIGHT": (1920, 1280),
        "SIDE_LEFT": (1920, 886),
        "SIDE_RIGHT": (1920, 886),
    }
    rig = frame.rig()
    assert rig.name == "waymo" and [c.name for c in rig] == list(CAMERA_NAMES)


def test_front_intrinsics_converted_to_pixel_centre_convention(frame):
    cam = frame.cameras["FRONT"]
    assert cam.fx == pytest.approx(2044.5083584358413)
    assert cam.fy == pytest.approx(2044.5083584358413)
    # Waymo's c_u, c_v (pixel-corner origin) minus half a pixel.
    assert cam.cx == pytest.approx(949.5746451352071 - 0.5)
    assert cam.cy == pytest.approx(633.2422462156501 - 0.5)
    np.testing.assert_allclose(cam.distortion, (0.040358363932006036, -0.33001662226602974, 0.0010402702690110032, -0.0015669020781401406, 0.0))


def test_extrinsics_in_opencv_axes_and_vehicle_frame_on_ground(frame):
    front = frame.cameras["FRONT"].cam_to_body
    # Optical axis (OpenCV z) looks along the vehicle's +x, image right (x) along -y, image down (y) along -z.
    np.testing.assert_allclose(front[:3, 2], [1, 0, 0], atol=0.01)
    np.testing.assert_allclose(front[:3, 0], [0, -1, 0], atol=0.01)
    np.testing.assert_allclose(front[:3, 1], [0, 0, -1], atol=0.01)
    np.testing.assert_allclose(front[:3, 3], [1.5386347086190375, -0.024394341231793928, 2.1150940771840068])
    side_left = frame.cameras["SIDE_LEFT"].cam_to_body
    np.testing.assert_allclose(side_left[:3, 2], [0, 1, 0], atol=0.03)
    # Origin on the ground at the rear axle: every camera sits ~2.1 m up, ~1.4-1.5 m ahead.
    for cam in frame.cameras.values():
        assert 2.0 < cam.cam_to_body[2, 3] < 2.2
        assert 1.3 < cam.cam_to_body[0, 3] < 1.6


def test_laser_labels(frame):
    boxes = frame.boxes
    assert len(boxes) == 75
    assert len(set(boxes.ids.tolist())) == 75
    counts = {t.name: int(np.sum(boxes.types == t)) for t in WaymoLabelType}
    assert counts == {"UNKNOWN": 0, "VEHICLE": 37, "PEDESTRIAN": 12, "SIGN": 25, "CYCLIST": 1}
    assert boxes.centers.shape == (75, 3) and boxes.sizes.shape == (75, 3) and boxes.headings.shape == (75,)
    assert np.all(boxes.headings >= -np.pi) and np.all(boxes.headings < np.pi)
    k = boxes.index("-uZgRjAOvgiK1-0dUx_4Sg")
    np.testing.assert_allclose(boxes.centers[k], [-25.852690630985308, -10.849918868696477, 2.3494061628945246])
    np.testing.assert_allclose(boxes.sizes[k], [0.12923822353497522, 0.58208972809431281, 0.539999999999992])
    assert boxes.types[k] == WaymoLabelType.SIGN
    corners = boxes.corners()
    assert corners.shape == (75, 8, 3)
    np.testing.assert_allclose(corners.mean(axis=1), boxes.centers, atol=1e-9)


def test_projected_boxes_ids_and_clipping(frame):
    counts = {name: len(v) for name, v in frame.projected_boxes.items()}
    assert counts == {"FRONT": 12, "FRONT_LEFT": 18, "FRONT_RIGHT": 12, "SIDE_LEFT": 6, "SIDE_RIGHT": 14}
    ids = set(frame.boxes.ids.tolist())
    for per_cam in frame.projected_boxes.values():
        assert set(per_cam) <= ids  # "<label id>_<CAMERA>" suffix removed
        for x0, y0, x1, y1 in per_cam.values():
            assert x0 <= x1 and y0 <= y1
    # Waymo clips to its image extent [0, W] x [0, H]; in rap's convention that is [-0.5, W - 0.5].
    # The USPS van next to the car is clipped on the left and bottom of FRONT_LEFT.
    x0, _, _, y1 = frame.projected_boxes["FRONT_LEFT"]["5_YGq0d2QUJaCZqDOqNZHw"]
    assert x0 == pytest.approx(-0.5) and y1 == pytest.approx(1279.5)
    _, _, x1, y1 = frame.projected_boxes["SIDE_LEFT"]["5_YGq0d2QUJaCZqDOqNZHw"]
    assert x1 == pytest.approx(1919.5) and y1 == pytest.approx(885.5)
    every = np.array([b for per_cam in frame.projected_boxes.values() for b in per_cam.values()])
    assert every[:, 0].min() == pytest.approx(-0.5) and every[:, 2].max() == pytest.approx(1919.5)


def test_analytic_projection_of_corners_matches_waymo_boxes(frame):
    checked = 0
    for cam_name, per_cam in frame.projected_boxes.items():
        cam = frame.cameras[cam_name]
        to_image_body = np.linalg.inv(frame.body_to_frame(cam_name))
        for label_id, waymo_box in per_cam.items():
            x0, y0, x1, y1 = waymo_box
            if not (x0 > -0.5 and y0 > -0.5 and x1 < cam.width - 0.5 and y1 < cam.height - 0.5):
                continue  # clipped by Waymo
            corners = frame.boxes.corners()[frame.boxes.index(label_id)]
            corners = corners @ to_image_body[:3, :3].T + to_image_body[:3, 3]
            uv, depth = cam.project(corners)
            assert np.all(depth > 0)
            ours = np.r_[uv.min(axis=0), uv.max(axis=0)]
            np.testing.assert_allclose(ours, waymo_box, atol=0.3, err_msg=f"{cam_name} {label_id}")
            checked += 1
    assert checked == 45


def test_images_decode_lazily(frame):
    assert set(frame.jpegs) == set(CAMERA_NAMES)
    assert frame.jpegs["FRONT"][:2] == b"\xff\xd8"
    front = frame.images["FRONT"]
    assert front.shape == (1280, 1920, 3) and front.dtype == np.uint8
    assert frame.images["FRONT"] is front  # cached
    assert not front.flags.writeable
    assert frame.images["SIDE_RIGHT"].shape == (886, 1920, 3)
    assert 20 < front.mean() < 235


def test_body_to_frame_is_image_pose_in_frame_vehicle(frame):
    for name in CAMERA_NAMES:
        rel = frame.body_to_frame(name)
        np.testing.assert_allclose(frame.vehicle_pose @ rel, frame.image_poses[name], atol=1e-6)
        # The vehicle is stationary: the pose barely changes between lidar and camera times.
        assert np.linalg.norm(rel[:3, 3]) < 1e-3
    assert frame.image_timestamps_s["FRONT"] == pytest.approx(1553735853.5146208)
    with pytest.raises(KeyError):
        frame.body_to_frame("REAR")


def test_truncated_record_names_the_file(tmp_path):
    data = FRAME_FILE.read_bytes()
    bad = tmp_path / "truncated.tfrecord"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(TFRecordError) as info:
        load_frame(bad)
    assert str(bad) in str(info.value) and info.value.record == 0
    skipped = []
    assert list(iter_frames(bad, skip_corrupt=True, on_skip=skipped.append)) == []
    assert len(skipped) == 1 and str(bad) in str(skipped[0])


def test_record_past_end(tmp_path):
    with pytest.raises(WaymoFrameError, match="holds 1 record") as info:
        load_frame(FRAME_FILE, record=1)
    assert str(FRAME_FILE) in str(info.value) and info.value.record == 1


def test_iter_frames_counts_and_skips_bad_records(tmp_path, payload):
    path = tmp_path / "three.tfrecord"
    write_records(path, [payload, payload, payload])
    raw = bytearray(path.read_bytes())
    record_size = 8 + 4 + len(payload) + 4
    raw[record_size + 100] ^= 0xFF  # corrupt the middle record's payload (CRC mismatch)
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="record 1"):
        list(iter_frames(path))
    skipped = []
    frames = list(iter_frames(path, skip_corrupt=True, on_skip=skipped.append))
    assert [f.record for f in frames] == [0, 2]
    assert len(skipped) == 1 and skipped[0].record == 1
    assert load_frame(path, record=2).record == 2


def test_malformed_message_names_file_record_field(tmp_path, payload):
    msg = _frame_message(payload)
    del msg.context.camera_calibrations[0].intrinsic[4:]
    path = tmp_path / "bad_intrinsic.tfrecord"
    write_records(path, [payload, msg.SerializeToString()])
    with pytest.raises(WaymoFrameError) as info:
        load_frame(path, record=1)
    err = info.value
    assert err.path == path and err.record == 1 and err.field == "context.camera_calibrations[0].intrinsic"
    assert str(path) in str(err) and "record 1" in str(err) and "intrinsic" in str(err)
    skipped = []
    assert [f.record for f in iter_frames(path, skip_corrupt=True, on_skip=skipped.append)] == [0]
    assert len(skipped) == 1 and isinstance(skipped[0], WaymoFrameError) and skipped[0].record == 1
    with pytest.warns(RuntimeWarning, match="record 1"):
        assert len(list(iter_frames(path, skip_corrupt=True))) == 1


def test_not_a_frame_message():
    with pytest.raises(WaymoFrameError, match=r"<bytes>: record 3"):
        frame_from_bytes(b"\x0a\x03abc", path="<bytes>", record=3)


def test_bad_jpeg_names_the_field(payload):
    msg = _frame_message(payload)
    msg.images[0].image = b"not a jpeg"
    frame = frame_from_bytes(msg.SerializeToString(), path="x.tfrecord", record=0)  # lazy: parses fine
    name = CAMERA_NAMES[msg.images[0].name - 1]
    with pytest.raises(WaymoFrameError, match=rf"x.tfrecord: record 0: field images\[{name}\]\.image"):
        frame.images[name]
