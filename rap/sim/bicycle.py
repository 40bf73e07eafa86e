"""Kinematic bicycle models (rear-axle reference), vectorized over a batch: the one home of the
ego's bicycle kinematics and of the vehicle record (:class:`VehicleParameters`, :data:`PACIFICA`).

Two integrators share :class:`VehicleParameters`:

* :func:`propagate` — NAVSIM's lagged, steering-rate-controlled model on the 11-column state
  (:class:`StateIndex`), explicit Euler; what the PDM scorer's LQR rollout executes.
* :func:`arc_step` — the curvature-controlled model on a 4-column state (:class:`ArcStateIndex`:
  x, y, heading, speed), no lags, integrated exactly along a circular arc; what recovery
  targets are rolled out with (:mod:`rap.augment.recovery`). A vehicle's curvature limit is
  :attr:`VehicleParameters.max_curvature`.

:func:`propagate`: the model is nuPlan's ``KinematicBicycleModel`` as NAVSIM batches it
(``BatchKinematicBicycleModel``): a first-order lag on the commanded longitudinal acceleration
(time constant 0.2 s) and on the steering angle (0.05 s), then one Euler step of

    x' = v cos(h),  y' = v sin(h),  h' = v tan(delta) / wheel_base,  v' = a,  delta' = delta_rate

with the steering angle clipped to +-pi/3. Lateral velocity and acceleration are always zero
after a step (a kinematic model has no side slip).

A batch of vehicle states is a float64 array (..., len(StateIndex)) whose columns are named by
:class:`StateIndex` (the same column order as NAVSIM's ``StateIndex``, so arrays convert 1:1).
Positions and headings are in the world frame; velocities and accelerations in the vehicle's
own frame at the rear axle.
"""

from __future__ import annotations

import dataclasses
import math
from enum import IntEnum

import numpy as np

from rap.geometry import wrap_angle

__all__ = [
    "StateIndex",
    "CommandIndex",
    "ArcStateIndex",
    "VehicleParameters",
    "PACIFICA",
    "BicycleConfig",
    "propagate",
    "next_speed",
    "arc_step",
    "state_dim",
]


class StateIndex(IntEnum):
    """Columns of a vehicle state array (..., 11)."""

    X = 0  # [m] rear-axle x, world frame
    Y = 1  # [m] rear-axle y, world frame
    HEADING = 2  # [rad] world frame
    VELOCITY_X = 3  # [m/s] longitudinal, vehicle frame (rear axle)
    VELOCITY_Y = 4  # [m/s] lateral, vehicle frame (rear axle)
    ACCELERATION_X = 5  # [m/s^2] longitudinal, vehicle frame (rear axle)
    ACCELERATION_Y = 6  # [m/s^2] lateral, vehicle frame (rear axle)
    STEERING_ANGLE = 7  # [rad] front tyre angle
    STEERING_RATE = 8  # [rad/s]
    ANGULAR_VELOCITY = 9  # [rad/s] yaw rate
    ANGULAR_ACCELERATION = 10  # [rad/s^2] yaw acceleration


def state_dim() -> int:
    """Number of columns of a state array (11)."""
    return len(StateIndex)


class CommandIndex(IntEnum):
    """Columns of a controller command array (..., 2)."""

    ACCELERATION_X = 0  # [m/s^2]
    STEERING_RATE = 1  # [rad/s]


class ArcStateIndex(IntEnum):
    """Columns of a curvature-controlled bicycle state array (..., 4) (:func:`arc_step`)."""

    X = 0  # [m] rear-axle x
    Y = 1  # [m] rear-axle y
    HEADING = 2  # [rad] not wrapped (continuous along a rollout)
    SPEED = 3  # [m/s] along the heading, >= 0


@dataclasses.dataclass(frozen=True)
class VehicleParameters:
    """Ego footprint, wheel base and steering limit, relative to the rear axle (nuPlan
    ``VehicleParameters`` plus the steering limit).

    Defaults are nuPlan's Chrysler Pacifica (``get_pacifica_parameters``), which NAVSIM scores with.

    Attributes:
        wheel_base: Rear to front axle [m].
        width: [m].
        front_length: Rear axle to front bumper [m].
        rear_length: Rear axle to rear bumper [m].
        max_steering_angle: The vehicle's largest front-wheel angle [rad] (35 deg), in
            (0, pi/2); sets :attr:`max_curvature`. NAVSIM's motion model clips at its own
            ``BicycleConfig.max_steering_angle`` (pi/3, nuPlan's value) instead.
    """

    wheel_base: float = 3.089  # [m]
    width: float = 1.1485 * 2.0  # [m] (2.297)
    front_length: float = 4.049  # [m] rear axle to front bumper
    rear_length: float = 1.127  # [m] rear axle to rear bumper
    max_steering_angle: float = math.radians(35.0)  # [rad]

    def __post_init__(self) -> None:
        for name in ("wheel_base", "width", "front_length", "rear_length"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"VehicleParameters.{name} must be finite and > 0, got {value}")
        if not 0 < self.max_steering_angle < np.pi / 2:
            raise ValueError(f"VehicleParameters.max_steering_angle must be in (0, pi/2) rad, got {self.max_steering_angle}")

    @property
    def max_curvature(self) -> float:
        """Tightest turn of the rear axle, ``tan(max_steering_angle) / wheel_base`` [1/m]."""
        return math.tan(self.max_steering_angle) / self.wheel_base

    @property
    def length(self) -> float:
        """Bumper to bumper [m]."""
        return self.front_length + self.rear_length

    @property
    def half_length(self) -> float:
        """[m]"""
        return 0.5 * self.length

    @property
    def half_width(self) -> float:
        """[m]"""
        return 0.5 * self.width

    @property
    def rear_axle_to_center(self) -> float:
        """Distance from the rear axle forward to the box centre [m] (1.461 for the Pacifica)."""
        return self.half_length - self.rear_length


PACIFICA = VehicleParameters()


@dataclasses.dataclass(frozen=True)
class BicycleConfig:
    """Motion-model constants (NAVSIM ``BatchKinematicBicycleModel`` defaults)."""

    max_steering_angle: float = np.pi / 3  # [rad]
    accel_time_constant: float = 0.2  # [s] first-order lag on acceleration
    steering_angle_time_constant: float = 0.05  # [s] first-order lag on steering angle

    def __post_init__(self) -> None:
        if not self.max_steering_angle > 0:
            raise ValueError(f"BicycleConfig.max_steering_angle must be > 0, got {self.max_steering_angle}")
        if self.accel_time_constant < 0 or self.steering_angle_time_constant < 0:
            raise ValueError("BicycleConfig time constants must be >= 0 [s]")


def propagate(
    states: np.ndarray,
    accel_cmd: np.ndarray,
    steering_rate_cmd: np.ndarray,
    dt: float,
    vehicle: VehicleParameters = PACIFICA,
    config: BicycleConfig | None = None,
) -> np.ndarray:
    """One step of the lagged kinematic bicycle model.

    Args:
        states: (..., 11) float64 current states (columns :class:`StateIndex`).
        accel_cmd: (...) commanded longitudinal acceleration [m/s^2].
        steering_rate_cmd: (...) commanded steering rate [rad/s].
        dt: Step length [s], > 0.
        vehicle: Wheel base source.
        config: Lags and steering limit; ``None`` means ``BicycleConfig()``.

    Returns:
        (..., 11) float64 states ``dt`` later. Heading is wrapped to [-pi, pi); lateral velocity
        and acceleration are 0; ``ANGULAR_ACCELERATION`` is the finite difference of the yaw
        rate over the step; ``STEERING_RATE`` is the lagged (applied) steering rate.
    """
    cfg = config if config is not None else BicycleConfig()
    if not dt > 0:
        raise ValueError(f"propagate: dt must be > 0, got {dt}")
    s = np.asarray(states, dtype=np.float64)
    if s.shape[-1] != len(StateIndex):
        raise ValueError(f"propagate: states must end in {len(StateIndex)} columns, got {s.shape}")
    accel = s[..., StateIndex.ACCELERATION_X]
    steer = s[..., StateIndex.STEERING_ANGLE]
    v = s[..., StateIndex.VELOCITY_X]
    heading = s[..., StateIndex.HEADING]

    # First-order lag (low-pass filter) on the commands.
    ideal_steer = dt * np.asarray(steering_rate_cmd, dtype=np.float64) + steer
    new_accel = dt / (dt + cfg.accel_time_constant) * (np.asarray(accel_cmd, dtype=np.float64) - accel) + accel
    lagged_steer = dt / (dt + cfg.steering_angle_time_constant) * (ideal_steer - steer) + steer
    new_steer_rate = (lagged_steer - steer) / dt

    out = np.empty_like(s)
    # Euler step from the current pose, speed and steering angle.
    out[..., StateIndex.X] = s[..., StateIndex.X] + dt * v * np.cos(heading)
    out[..., StateIndex.Y] = s[..., StateIndex.Y] + dt * v * np.sin(heading)
    out[..., StateIndex.HEADING] = wrap_angle(heading + dt * v * np.tan(steer) / vehicle.wheel_base)
    new_v = v + dt * new_accel
    out[..., StateIndex.VELOCITY_X] = new_v
    out[..., StateIndex.VELOCITY_Y] = 0.0
    new_steer = np.clip(steer + dt * new_steer_rate, -cfg.max_steering_angle, cfg.max_steering_angle)
    out[..., StateIndex.STEERING_ANGLE] = new_steer
    yaw_rate = new_v * np.tan(new_steer) / vehicle.wheel_base
    out[..., StateIndex.ANGULAR_VELOCITY] = yaw_rate
    out[..., StateIndex.ACCELERATION_X] = new_accel
    out[..., StateIndex.ACCELERATION_Y] = 0.0
    out[..., StateIndex.ANGULAR_ACCELERATION] = (yaw_rate - s[..., StateIndex.ANGULAR_VELOCITY]) / dt
    out[..., StateIndex.STEERING_RATE] = new_steer_rate
    return out


def next_speed(speed: np.ndarray, accel: np.ndarray, dt: float) -> np.ndarray:
    """Speed ``dt`` later at constant acceleration, held at 0 (no reversing).

    Args:
        speed: (...) current speed [m/s].
        accel: (...) longitudinal acceleration [m/s^2].
        dt: Step length [s].

    Returns:
        (...) ``max(speed + accel * dt, 0)`` [m/s].
    """
    return np.maximum(speed + accel * dt, 0.0)


def arc_step(states: np.ndarray, curvature: np.ndarray, accel: np.ndarray, dt: float) -> np.ndarray:
    """One step of the curvature-controlled kinematic bicycle, integrated exactly.

    The controls are the rear axle's path curvature ``kappa`` (``tan(steering angle) /
    wheel_base``; limit it with :attr:`VehicleParameters.max_curvature`) and the longitudinal
    acceleration ``a``, both held over the step with no lag. The speed becomes
    ``v' = next_speed(v, a, dt)`` and the rear axle travels ``ds = (v + v') dt / 2`` along a
    circular arc of curvature ``kappa``:

        x' = x + c cos(h + kappa ds / 2),  y' = y + c sin(h + kappa ds / 2),  h' = h + kappa ds

    with the chord ``c = ds sin(kappa ds / 2) / (kappa ds / 2)`` (``c = ds`` on a straight step).

    Args:
        states: (..., 4) float64 states (columns :class:`ArcStateIndex`).
        curvature: (...) curvature over the step [1/m], left positive.
        accel: (...) longitudinal acceleration over the step [m/s^2].
        dt: Step length [s], > 0.

    Returns:
        (..., 4) float64 states ``dt`` later; the heading is not wrapped.
    """
    s = np.asarray(states, dtype=np.float64)
    if s.shape[-1] != len(ArcStateIndex):
        raise ValueError(f"arc_step: states must end in {len(ArcStateIndex)} columns, got {s.shape}")
    x, y = s[..., ArcStateIndex.X], s[..., ArcStateIndex.Y]
    heading, v = s[..., ArcStateIndex.HEADING], s[..., ArcStateIndex.SPEED]
    kappa = np.asarray(curvature, dtype=np.float64)
    v_new = next_speed(v, np.asarray(accel, dtype=np.float64), dt)
    ds = 0.5 * (v + v_new) * dt
    half = 0.5 * kappa * ds
    safe = np.abs(half) > 1e-9
    chord = ds * np.where(safe, np.sin(half) / np.where(safe, half, 1.0), 1.0)
    out = np.empty(np.broadcast_shapes(s.shape, kappa.shape + (len(ArcStateIndex),)))
    out[..., ArcStateIndex.X] = x + chord * np.cos(heading + half)
    out[..., ArcStateIndex.Y] = y + chord * np.sin(heading + half)
    out[..., ArcStateIndex.HEADING] = heading + kappa * ds
    out[..., ArcStateIndex.SPEED] = v_new
    return out
