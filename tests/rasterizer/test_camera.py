import json

import numpy as np
import pytest

from rasterizer.camera import OPENCV_FROM_FLU, OrthoCamera, PinholeCamera, load_rig_json, look_at_flu, pose_matrix


def forward_camera(**kw):
    args = dict(name="cam", width=200, height=100, fx=100.0, fy=100.0, cx=99.5, cy=49.5, cam_to_body=look_at_flu((0.0, 0.0, 1.5), 0.0))
    args.update(kw)
    return PinholeCamera(**args)


def test_project_hand_computed_points():
    cam = forward_camera()
    # 10 m ahead at camera height: the principal point. 2 m to the left and 1 m lower: u = cx - 100*2/10.
    uv, depth = cam.project(np.array([[10.0, 0.0, 1.5], [10.0, 2.0, 0.5], [5.0, -1.0, 2.5]]))
    np.testing.assert_allclose(uv, [[99.5, 49.5], [79.5, 59.5], [119.5, 29.5]], atol=1e-9)
    np.testing.assert_allclose(depth, [10.0, 10.0, 5.0])


def test_look_at_yaw_and_pitch():
    left = forward_camera(cam_to_body=look_at_flu((0, 0, 0), np.pi / 2))
    uv, depth = left.project(np.array([[0.0, 7.0, 0.0]]))
    np.testing.assert_allclose(uv, [[99.5, 49.5]], atol=1e-9)
    assert depth[0] == pytest.approx(7.0)
    down = forward_camera(cam_to_body=look_at_flu((0, 0, 10), 0.0, pitch=np.pi / 2))
    uv, depth = down.project(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert depth[0] == pytest.approx(10.0)
    assert uv[1, 1] < uv[0, 1]  # forward is up in the image when looking down


def test_distortion_round_trip_and_known_value():
    cam = forward_camera(distortion=(-0.3, 0.1, 0.001, -0.002, 0.01))
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.6, 0.6, (500, 2))
    back, ok = cam.undistort_normalized(cam.distort_normalized(xy))
    assert ok.all()
    np.testing.assert_allclose(back, xy, atol=1e-8)
    # Pure radial k1 on the x axis: x_d = x (1 + k1 x^2).
    radial = forward_camera(distortion=(-0.2, 0, 0, 0, 0))
    np.testing.assert_allclose(radial.distort_normalized(np.array([0.5, 0.0])), [0.5 * (1 - 0.2 * 0.25), 0.0])


def test_resized_keeps_field_of_view():
    cam = forward_camera()
    small = cam.resized(100, 50)
    p = np.array([[10.0, 3.0, 0.2]])
    uv_big, _ = cam.project(p)
    uv_small, _ = small.project(p)
    # Pixel-edge coordinates scale exactly by the size ratio.
    np.testing.assert_allclose((uv_small + 0.5) * 2, uv_big + 0.5, atol=1e-9)


def test_bad_camera_arguments():
    with pytest.raises(ValueError, match="size must be positive"):
        forward_camera(width=0)
    with pytest.raises(ValueError, match="rotation"):
        forward_camera(cam_to_body=np.diag([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="5 coefficients"):
        forward_camera(distortion=(0.1, 0.2))


def test_ortho_projection_layout():
    bev = OrthoCamera("bev", 100, 200, extent_x=40.0, extent_y=20.0, center=(10.0, 0.0))
    uv, _ = bev.project(np.array([[10.0, 0.0, 0.0], [30.0, 0.0, 0.0], [10.0, 10.0, 0.0]]))
    np.testing.assert_allclose(uv, [[49.5, 99.5], [49.5, -0.5], [-0.5, 99.5]])


def test_load_rig_json(tmp_path):
    rot = OPENCV_FROM_FLU
    doc = {"image_size": [640, 480], "cameras": {"F": {"intrinsics": [[500, 0, 320], [0, 500, 240], [0, 0, 1]], "distortion_k1k2p1p2k3": [0.1, 0, 0, 0, 0], "sensor2lidar_rotation": rot.tolist(), "sensor2lidar_translation": [1.0, 0.0, 1.5]}}}
    path = tmp_path / "rig.json"
    path.write_text(json.dumps(doc))
    rig = load_rig_json(path, mount_offset=(-2.0, 0.0, 0.8))
    cam = rig.cameras[0]
    assert (cam.width, cam.height, cam.fx, cam.cx) == (640, 480, 500.0, 320.0)
    np.testing.assert_allclose(cam.cam_to_body, pose_matrix(rot, [-1.0, 0.0, 2.3]))
    del doc["cameras"]["F"]["intrinsics"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"rig.json: camera F: missing"):
        load_rig_json(path)
    with pytest.raises(ValueError, match="no camera 'X'"):
        load_rig_json(path, names=["X"])
