"""Tests for rap/sim/bicycle.py."""

from __future__ import annotations

import numpy as np
import pytest

from rap.sim import PACIFICA, BicycleConfig, StateIndex, VehicleParameters, propagate


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
    with pytest.raises(ValueError):
        propagate(np.zeros(5), 0.0, 0.0, 0.1)
