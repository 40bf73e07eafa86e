"""Tests for rap/sim/bicycle.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rap.sim import PACIFICA, BicycleConfig, StateIndex, VehicleParameters, propagate
from rap.sim.bicycle import ArcStateIndex, arc_step, next_speed


def _state(shape=(), **values) -> np.ndarray:
    s = np.zeros(shape + (len(StateIndex),))
    for name, v in values.items():
        s[..., StateIndex[name.upper()]] = v
    return s


@pytest.mark.parametrize("shape", [(), (2, 1), (5,)])
def test_straight_constant_speed_batch_shapes(shape):
    s = _state(shape, velocity_x=10.0, heading=0.5)
    out = propagate(s, np.zeros(shape), np.zeros(shape), 0.1)
    assert out.shape == s.shape
    np.testing.assert_allclose(out[..., StateIndex.X], np.cos(0.5))
    np.testing.assert_allclose(out[..., StateIndex.Y], np.sin(0.5))
    np.testing.assert_allclose(out[..., StateIndex.VELOCITY_X], 10.0)
    np.testing.assert_allclose(out[..., StateIndex.HEADING], 0.5)


def test_first_order_lags():
    s = _state(velocity_x=5.0)
    out = propagate(s, np.array(2.0), np.array(1.0), 0.1)
    # Acceleration lag 0.2 s: a = 0.1 / 0.3 * 2; steering lag 0.05 s on the 0.1 rad step.
    assert out[StateIndex.ACCELERATION_X] == pytest.approx(2.0 / 3.0)
    assert out[StateIndex.VELOCITY_X] == pytest.approx(5.0 + 0.1 * 2.0 / 3.0)
    assert out[StateIndex.STEERING_ANGLE] == pytest.approx(0.1 * 0.1 / 0.15)
    assert out[StateIndex.STEERING_RATE] == pytest.approx(0.1 / 0.15)
    assert out[StateIndex.ACCELERATION_Y] == 0.0 and out[StateIndex.VELOCITY_Y] == 0.0
    # Yaw rate from the new speed and steering angle; heading integrates the old ones (Euler).
    assert out[StateIndex.ANGULAR_VELOCITY] == pytest.approx(out[StateIndex.VELOCITY_X] * np.tan(out[StateIndex.STEERING_ANGLE]) / PACIFICA.wheel_base)
    assert out[StateIndex.HEADING] == 0.0


def test_steering_clip_and_heading_wrap():
    s = _state(velocity_x=20.0, steering_angle=1.0, heading=np.pi - 0.01)
    out = propagate(s, np.array(0.0), np.array(100.0), 0.1, config=BicycleConfig(steering_angle_time_constant=0.0))
    assert out[StateIndex.STEERING_ANGLE] == pytest.approx(np.pi / 3)
    assert -np.pi <= out[StateIndex.HEADING] < 0.0  # wrapped past pi


def test_vehicle_parameters():
    assert PACIFICA.length == pytest.approx(5.176)
    assert PACIFICA.rear_axle_to_center == pytest.approx(1.461)
    assert PACIFICA.width == pytest.approx(2.297)
    with pytest.raises(ValueError, match="wheel_base"):
        VehicleParameters(wheel_base=0.0)
    assert PACIFICA.max_steering_angle == math.radians(35.0)
    assert PACIFICA.max_curvature == math.tan(math.radians(35.0)) / 3.089
    with pytest.raises(ValueError, match="max_steering_angle"):
        VehicleParameters(max_steering_angle=np.pi / 2)
    with pytest.raises(ValueError):
        propagate(np.zeros(5), 0.0, 0.0, 0.1)


def _arc_state(x=0.0, y=0.0, heading=0.0, speed=0.0) -> np.ndarray:
    s = np.zeros(len(ArcStateIndex))
    s[[ArcStateIndex.X, ArcStateIndex.Y, ArcStateIndex.HEADING, ArcStateIndex.SPEED]] = x, y, heading, speed
    return s


def test_arc_step_follows_the_circle_exactly():
    kappa, v = 0.1, 10.0
    s = _arc_state(speed=v)
    for _ in range(20):  # 2 s at 0.1 s: 20 m along a circle of radius 10 m about (0, 10)
        s = arc_step(s, np.array(kappa), np.array(0.0), 0.1)
    angle = kappa * 20.0
    np.testing.assert_allclose(s[ArcStateIndex.X], np.sin(angle) / kappa, atol=1e-12)
    np.testing.assert_allclose(s[ArcStateIndex.Y], (1 - np.cos(angle)) / kappa, atol=1e-12)
    np.testing.assert_allclose(s[ArcStateIndex.HEADING], angle, atol=1e-12)  # not wrapped
    assert s[ArcStateIndex.SPEED] == v


def test_arc_step_straight_trapezoid_and_no_reversing():
    s = _arc_state(heading=0.5, speed=4.0)
    out = arc_step(s, np.array(0.0), np.array(2.0), 0.5)
    ds = 0.5 * (4.0 + 5.0) * 0.5
    np.testing.assert_allclose(out, [ds * np.cos(0.5), ds * np.sin(0.5), 0.5, 5.0])
    stopped = arc_step(s, np.array(0.0), np.array(-20.0), 0.5)  # would reverse: stops instead
    assert stopped[ArcStateIndex.SPEED] == 0.0 and stopped[ArcStateIndex.X] == pytest.approx(0.5 * 4.0 * 0.5 * np.cos(0.5))
    assert next_speed(np.array([1.0, 1.0]), np.array([-5.0, 5.0]), 0.1)[0] == pytest.approx(0.5)


def test_arc_step_batch_shapes():
    states = np.zeros((3, 2, 4))
    states[..., ArcStateIndex.SPEED] = 5.0
    out = arc_step(states, np.full((3, 2), 0.05), np.zeros((3, 2)), 0.1)
    assert out.shape == (3, 2, 4)
    np.testing.assert_allclose(out[0, 0], arc_step(states[0, 0], np.array(0.05), np.array(0.0), 0.1))
    with pytest.raises(ValueError, match="arc_step"):
        arc_step(np.zeros(11), np.array(0.0), np.array(0.0), 0.1)
