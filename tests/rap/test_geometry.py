"""Tests for rap/geometry.py."""

from __future__ import annotations

import numpy as np
import pytest

from rap import geometry

BATCH_SHAPES = [(), (2, 1), (4,)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_wrap_angle_range_and_values(rng):
    a = rng.uniform(-50, 50, size=1000)
    w = geometry.wrap_angle(a)
    assert np.all(w >= -np.pi) and np.all(w < np.pi)
    np.testing.assert_allclose(np.cos(w), np.cos(a), atol=1e-9)
    np.testing.assert_allclose(np.sin(w), np.sin(a), atol=1e-9)
    assert geometry.wrap_angle(np.pi) == -np.pi
    assert geometry.wrap_angle(-np.pi) == -np.pi
    assert geometry.wrap_angle(3 * np.pi / 2) == pytest.approx(-np.pi / 2)
    assert geometry.wrap_angle(0.0) == 0.0
    # Tiny negative angles must not round to +pi.
    assert geometry.wrap_angle(-1e-20) < np.pi


@pytest.mark.parametrize("batch", BATCH_SHAPES)
@pytest.mark.parametrize("dim", [2, 3])
def test_to_frame_from_frame_round_trip(rng, batch, dim):
    points = rng.normal(size=batch + (7, dim)) * 50
    origin = rng.normal(size=batch + (1, 3)) * 100
    heading = rng.uniform(-4, 4, size=batch + (1,))
    local = geometry.to_frame(points, origin, heading)
    assert local.shape == points.shape
    back = geometry.from_frame(local, origin, heading)
    np.testing.assert_allclose(back, points, atol=1e-9)
    # Rigid: pairwise distances are preserved.
    d_world = np.linalg.norm(points[..., :, None, :] - points[..., None, :, :], axis=-1)
    d_local = np.linalg.norm(local[..., :, None, :] - local[..., None, :, :], axis=-1)
    np.testing.assert_allclose(d_local, d_world, atol=1e-9)


def test_to_frame_axes():
    origin = np.array([10.0, 5.0, 2.0])
    heading = np.pi / 2  # Frame x points world +y.
    ahead = geometry.to_frame([10.0, 8.0, 2.0], origin, heading)
    np.testing.assert_allclose(ahead, [3.0, 0.0, 0.0], atol=1e-12)
    left = geometry.to_frame([7.0, 5.0, 3.0], origin, heading)  # World -x is frame left (+y).
    np.testing.assert_allclose(left, [0.0, 3.0, 1.0], atol=1e-12)
    # A 2-element origin leaves z alone.
    np.testing.assert_allclose(geometry.to_frame([10.0, 8.0, 2.0], origin[:2], heading), [3, 0, 2], atol=1e-12)


def test_se2_matrix_matches_from_frame(rng):
    pts = rng.normal(size=(5, 2))
    m = geometry.se2_matrix(3.0, -2.0, 0.7)
    homog = np.concatenate([pts, np.ones((5, 1))], axis=1)
    np.testing.assert_allclose((homog @ m.T)[:, :2], geometry.from_frame(pts, [3.0, -2.0], 0.7))
    assert geometry.se2_matrix(np.zeros((2, 3)), 0.0, 0.0).shape == (2, 3, 3, 3)


def test_headings_and_rotate(rng):
    h = rng.uniform(-3, 3, size=10)
    f = 2.5
    np.testing.assert_allclose(
        geometry.heading_from_frame(geometry.heading_to_frame(h, f), f), geometry.wrap_angle(h)
    )
    v = geometry.rotate([1.0, 0.0, 7.0], np.pi / 2)
    np.testing.assert_allclose(v, [0.0, 1.0, 7.0], atol=1e-12)


def test_box_corners_2d_order():
    corners = geometry.box_corners_2d(0.0, 0.0, 0.0, 4.0, 2.0)
    np.testing.assert_allclose(corners, [[2, -1], [2, 1], [-2, 1], [-2, -1]])
    # Counter-clockwise: positive shoelace area = length * width.
    x, y = corners[:, 0], corners[:, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) == pytest.approx(8.0)
    # Rotated by 90 degrees and shifted: front-right is now at +x (right of a north-facing box).
    rot = geometry.box_corners_2d(10.0, 20.0, np.pi / 2, 4.0, 2.0)
    np.testing.assert_allclose(rot, [[11, 22], [9, 22], [9, 18], [11, 18]], atol=1e-12)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_box_corners_batched(rng, batch):
    x, y, h = (rng.normal(size=batch) for _ in range(3))
    c = geometry.box_corners_2d(x, y, h, 4.0, 2.0)
    assert c.shape == batch + (4, 2)
    np.testing.assert_allclose(c.mean(axis=-2), np.stack([x, y], axis=-1), atol=1e-12)
    c3 = geometry.box_corners_3d(rng.normal(size=batch + (3,)), np.array([4.0, 2.0, 1.5]), h)
    assert c3.shape == batch + (8, 3)


def test_box_corners_3d_faces():
    c = geometry.box_corners_3d([1.0, 2.0, 3.0], [4.0, 2.0, 1.0], 0.0)
    np.testing.assert_allclose(c[:4, :2], geometry.box_corners_2d(1.0, 2.0, 0.0, 4.0, 2.0))
    np.testing.assert_allclose(c[4:, :2], c[:4, :2])
    np.testing.assert_allclose(c[:4, 2], 2.5)
    np.testing.assert_allclose(c[4:, 2], 3.5)


def test_arc_length_and_length():
    line = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 10.0]])
    np.testing.assert_allclose(geometry.polyline_arc_length(line), [0, 5, 11])
    assert geometry.polyline_length(line) == pytest.approx(11.0)
    np.testing.assert_allclose(geometry.polyline_length(np.stack([line, line])), [11.0, 11.0])


def test_resample_polyline():
    line = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 1.0], [10.0, 0.5, 1.0]])
    out = geometry.resample_polyline(line, 1.0)
    assert out.shape == (12, 3)  # 0, 1, ..., 10 plus the end at 10.5.
    np.testing.assert_allclose(out[0], line[0])
    np.testing.assert_allclose(out[-1], line[-1])
    np.testing.assert_allclose(out[5], [5.0 * 10 / np.hypot(10, 1), 0, 5.0 / np.hypot(10, 1)])
    steps = np.linalg.norm(np.diff(out, axis=0), axis=1)
    np.testing.assert_allclose(steps[:-1], 1.0, atol=1e-9)
    assert geometry.resample_polyline(line, 1.0, keep_end=False).shape == (11, 3)


def test_resample_polyline_edge_cases():
    # Repeated vertices are harmless; a single point or zero-length line gives one point.
    line = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(geometry.resample_polyline(line, 1.0), [[0, 0], [1, 0], [2, 0]])
    np.testing.assert_allclose(geometry.resample_polyline([[1.0, 2.0]], 1.0), [[1, 2]])
    np.testing.assert_allclose(geometry.resample_polyline([[1.0, 2.0], [1.0, 2.0]], 1.0), [[1, 2]])
    with pytest.raises(ValueError, match="spacing"):
        geometry.resample_polyline(line, 0.0)
    with pytest.raises(ValueError, match="points"):
        geometry.resample_polyline(np.zeros((0, 2)), 1.0)


def test_point_polyline_distance():
    line = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    pts = np.array([[5.0, 3.0], [-3.0, -4.0], [12.0, 5.0], [10.0, 10.0]])
    np.testing.assert_allclose(geometry.point_polyline_distance(pts, line), [3, 5, 2, 0])
    np.testing.assert_allclose(geometry.point_polyline_distance(pts[:1], line[:1]), [np.hypot(5, 3)])


def test_bad_point_dimension():
    with pytest.raises(ValueError, match="last dimension"):
        geometry.to_frame(np.zeros((3, 4)), [0, 0], 0.0)


# -- finite differences ------------------------------------------------------------------------
def test_finite_difference_central_one_sided_and_invalid():
    ts = np.array([0.0, 0.1, 0.3, 0.4, 0.5])
    x = 2.0 * ts**2  # rate 4 t
    valid = np.array([True, True, True, False, True])
    rate = geometry.finite_difference(x, ts, valid)
    # Central over uneven steps is the time-weighted mean of the one-sided rates.
    assert rate[1] == pytest.approx((0.2 * 0.1 + 0.8 * 0.2) / 0.3)
    assert rate[0] == pytest.approx(0.02 / 0.1)  # forward only
    assert rate[2] == pytest.approx((0.18 - 0.02) / 0.2)  # backward only: its next step is invalid
    assert rate[3] == 0.0 and rate[4] == 0.0  # no valid neighbour pair


def test_finite_difference_wraps_angles():
    ts = np.array([0.0, 1.0, 2.0])
    heading = np.array([np.pi - 0.1, -np.pi + 0.1, -np.pi + 0.3])
    rate = geometry.finite_difference(heading, ts, np.ones(3, bool), angle=True)
    np.testing.assert_allclose(rate, [0.2, 0.2, 0.2], atol=1e-12)


def test_fixed_step_rate_matches_finite_difference_on_even_steps():
    rng = np.random.default_rng(0)
    p = np.cumsum(rng.normal(size=(3, 12)), axis=1)
    valid = rng.random((3, 12)) > 0.2
    fixed = geometry.fixed_step_rate(p, valid, 0.1)
    ts = np.arange(12) * 0.1
    for row in range(3):
        general = geometry.finite_difference(p[row], ts, valid[row])
        np.testing.assert_allclose(fixed[row], np.where(valid[row], general, 0.0), atol=1e-9)


def test_windowed_rate_of_a_line_is_its_slope():
    t = np.arange(0.0, 5.0, 0.1)
    rate = geometry.windowed_rate(3.0 * t + 1.0, t, half_window_s=0.5)
    np.testing.assert_allclose(rate, 3.0, rtol=1e-9)
