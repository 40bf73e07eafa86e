"""Kinematics of logged agents, shared by augmentation (targets) and evaluation (observations).

Everything here reads the privileged :class:`rap.scene.Scene`.

Frames and times:

* An agent's frame at a step is its rear-axle centre on the ground with x along its heading
  (``Scene.agent_pose``). Trajectories and histories are (x [m], y [m], heading [rad]) in the
  acting agent's frame at the step.
* Poses are looked up at absolute times ``timestamps[step] + k * interval_s``. A time within
  ``TIME_SNAP_S`` of a log step uses that step exactly; any other time is interpolated between
  the two bracketing log steps (positions linearly, heading along the shorter arc), and both
  must be valid. Times outside the log are never extrapolated: the lookup fails (None).
* The "window" of a sample is ``[t - history_num * history_interval_s, t + sampling.horizon_s]``
  around the step time ``t``; it is valid when every log step inside it, and the two log steps
  bracketing its ends, are valid (:func:`window_valid`).

Ego status (:func:`ego_status`): velocity is the rear axle's, ``v_centre - yaw_rate x r`` with
``r`` the axle-to-centre offset and the yaw rate from central differences of the logged heading;
acceleration is the central difference of that velocity over +-``ACCEL_HALF_WINDOW_S`` (one-sided
at the ends of the valid data). Both are rotated into the agent's frame at the step.

Driving command (:func:`driving_command`): the VAD/UniAD rule on the future's last pose, lateral
displacement ``y > +2 m`` -> LEFT, ``y < -2 m`` -> RIGHT, else STRAIGHT (a lane change counts as a
turn; a stopped agent goes STRAIGHT).
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum

import numpy as np

from rap import geometry
from rap.scene import Scene
from rap.trajectory import PoseIndex, Trajectory, TrajectorySampling

__all__ = [
    "TIME_SNAP_S",
    "ACCEL_HALF_WINDOW_S",
    "COMMAND_LATERAL_THRESHOLD_M",
    "DrivingCommand",
    "EgoStatus",
    "agent_poses_at",
    "window_valid",
    "future_target",
    "history_poses",
    "agent_velocity",
    "agent_acceleration",
    "yaw_rate",
    "driving_command",
    "ego_status",
]

TIME_SNAP_S = 1e-3  # [s] a query this close to a log step uses the step exactly
ACCEL_HALF_WINDOW_S = 0.2  # [s] half-width of the acceleration's central difference
COMMAND_LATERAL_THRESHOLD_M = 2.0  # [m] |y| of the last future pose beyond which LEFT / RIGHT


class DrivingCommand(IntEnum):
    """High-level command derived from the future (NAVSIM's one-hot order: left, straight, right)."""

    LEFT = 0
    STRAIGHT = 1
    RIGHT = 2


@dataclasses.dataclass(frozen=True)
class EgoStatus:
    """State of the acting agent at a step, in its own frame.

    Attributes:
        speed: [m/s] (>= 0).
        velocity: (2,) float (longitudinal, lateral) [m/s].
        acceleration: (2,) float (longitudinal, lateral) [m/s^2].
        command: the driving command derived from its future.
    """

    speed: float
    velocity: tuple[float, float]
    acceleration: tuple[float, float]
    command: DrivingCommand


def _bracket(
    timestamps: np.ndarray, valid: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log steps around query times.

    Args:
        timestamps: (T,) strictly increasing step times [s].
        valid: (T,) bool validity of the track.
        times: (K,) query times [s].

    Returns:
        ``lo, hi`` (K,) int step indices, ``w`` (K,) float weight of ``hi`` (value =
        ``(1 - w) * v[lo] + w * v[hi]``), ``ok`` (K,) bool: the time lies in the log and the
        steps used are valid. Snapped times have ``lo == hi``.
    """
    ts = timestamps
    t = np.asarray(times, dtype=np.float64)
    n = ts.shape[0]
    nearest = np.clip(np.searchsorted(ts, t), 0, n - 1)
    left = np.clip(nearest - 1, 0, n - 1)
    nearest = np.where(np.abs(ts[left] - t) < np.abs(ts[nearest] - t), left, nearest)
    snapped = np.abs(ts[nearest] - t) <= TIME_SNAP_S
    lo = np.clip(np.searchsorted(ts, t, side="right") - 1, 0, max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    inside = (t >= ts[0]) & (t <= ts[-1]) & (hi > lo)
    span = np.where(hi > lo, ts[hi] - ts[lo], 1.0)
    w = np.clip((t - ts[lo]) / span, 0.0, 1.0)
    lo = np.where(snapped, nearest, lo)
    hi = np.where(snapped, nearest, hi)
    w = np.where(snapped, 0.0, w)
    ok = (snapped | inside) & valid[lo] & valid[hi]
    return lo, hi, w, ok


def _rear_axle_world(scene: Scene, row: int) -> np.ndarray:
    """(T, 3) world (x, y, heading) of the agent's rear axle at every step (check validity)."""
    tr = scene.tracks
    h = tr.heading[row]
    back = float(tr.rear_axle_offset[row])
    return np.stack([tr.x[row] - back * np.cos(h), tr.y[row] - back * np.sin(h), h], axis=-1)


def _lerp_poses(poses: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(K, 3) poses interpolated between rows ``lo`` and ``hi`` of (T, 3) ``poses``."""
    a, b = poses[lo], poses[hi]
    out = a + w[:, None] * (b - a)
    dh = geometry.wrap_angle(b[:, PoseIndex.HEADING] - a[:, PoseIndex.HEADING])
    out[:, PoseIndex.HEADING] = geometry.wrap_angle(a[:, PoseIndex.HEADING] + w * dh)
    return out


def agent_poses_at(scene: Scene, row: int, times_s: np.ndarray) -> np.ndarray | None:
    """World poses of an agent's rear-axle frame at absolute times.

    Args:
        scene: The scene.
        row: Row of ``scene.tracks``.
        times_s: (K,) absolute times [s] (same clock as ``scene.timestamps``).

    Returns:
        (K, 3) float64 world (x [m], y [m], heading [rad]), or None if any time is outside the
        log or needs an invalid step (see the module docstring).
    """
    lo, hi, w, ok = _bracket(scene.timestamps, scene.tracks.valid[row], np.asarray(times_s, float))
    if not ok.all():
        return None
    return _lerp_poses(_rear_axle_world(scene, row), lo, hi, w)


def window_valid(
    scene: Scene,
    row: int,
    step: int,
    sampling: TrajectorySampling,
    history_num: int,
    history_interval_s: float,
) -> bool:
    """Whether an agent is valid over a sample's whole window.

    Args:
        scene: The scene.
        row: Row of ``scene.tracks``.
        step: Sample step.
        sampling: Future sampling (the window ends ``sampling.horizon_s`` after the step).
        history_num: Number of past poses.
        history_interval_s: Their spacing [s] (the window starts ``history_num *
            history_interval_s`` before the step).

    Returns:
        True when the window lies inside the log and every log step in it, plus the steps
        bracketing its ends, is valid.
    """
    ts = scene.timestamps
    valid = scene.tracks.valid[row]
    t0 = ts[step] - history_num * history_interval_s
    t1 = ts[step] + sampling.horizon_s
    if t0 < ts[0] - TIME_SNAP_S or t1 > ts[-1] + TIME_SNAP_S:
        return False
    first = max(int(np.searchsorted(ts, t0 + TIME_SNAP_S, side="right")) - 1, 0)
    last = min(int(np.searchsorted(ts, t1 - TIME_SNAP_S, side="left")), ts.shape[0] - 1)
    return bool(valid[first : last + 1].all())


def _poses_in_frame(scene: Scene, row: int, step: int, times_s: np.ndarray) -> np.ndarray | None:
    """(K, 3) poses at absolute times in the agent's own frame at ``step``; None if invalid."""
    if not scene.tracks.valid[row, step]:
        return None
    world = agent_poses_at(scene, row, times_s)
    if world is None:
        return None
    origin = scene.agent_pose(row, step)
    out = np.empty_like(world)
    out[:, : PoseIndex.HEADING] = geometry.to_frame(world[:, : PoseIndex.HEADING], origin[:2], origin[3])
    out[:, PoseIndex.HEADING] = geometry.heading_to_frame(world[:, PoseIndex.HEADING], origin[3])
    return out


def future_target(
    scene: Scene, row: int, step: int, sampling: TrajectorySampling
) -> Trajectory | None:
    """An agent's logged future in its own frame at ``step``.

    Args:
        scene: The scene.
        row: Row of ``scene.tracks``.
        step: Current step of the sample.
        sampling: Pose k (1-based) is at ``timestamps[step] + k * sampling.interval_s``.

    Returns:
        Trajectory of (num_poses, 3) (x, y, heading) [m, m, rad] of the rear-axle frame, or None
        if the agent is invalid at ``step`` or at any pose time (times between log steps are
        interpolated; see the module docstring).
    """
    poses = _poses_in_frame(scene, row, step, scene.timestamps[step] + sampling.times_s)
    return None if poses is None else Trajectory(poses, sampling)


def history_poses(
    scene: Scene, row: int, step: int, num: int, interval_s: float
) -> np.ndarray | None:
    """An agent's past poses in its own frame at ``step``.

    Args:
        scene: The scene.
        row: Row of ``scene.tracks``.
        step: Current step of the sample.
        num: Number of past poses H (0 gives an empty array).
        interval_s: Their spacing [s].

    Returns:
        (H, 3) float64 (x, y, heading) [m, m, rad] at ``timestamps[step] - k * interval_s`` for
        k = H .. 1 (oldest first; the current pose is not included), or None if any is invalid.
    """
    times = scene.timestamps[step] - np.arange(num, 0, -1, dtype=np.float64) * interval_s
    if num == 0:
        return np.zeros((0, 3)) if scene.tracks.valid[row, step] else None
    return _poses_in_frame(scene, row, step, times)


def _rear_axle_velocity_world(scene: Scene, row: int) -> np.ndarray:
    """(T, 2) world velocity of the rear axle at each step [m/s] (check validity).

    ``v_rear = v_centre - yaw_rate x r`` where ``r`` points from the rear axle to the box centre.
    """
    tr = scene.tracks
    valid = tr.valid[row]
    yaw_rate = geometry.finite_difference(tr.heading[row], scene.timestamps, valid, angle=True)  # (T,)
    h = tr.heading[row]
    back = float(tr.rear_axle_offset[row])
    # yaw_rate x (back * (cos h, sin h)) = yaw_rate * back * (-sin h, cos h).
    vx = tr.vx[row] + yaw_rate * back * np.sin(h)
    vy = tr.vy[row] - yaw_rate * back * np.cos(h)
    return np.stack([vx, vy], axis=-1)


def agent_velocity(scene: Scene, row: int, step: int) -> np.ndarray:
    """(2,) float64 rear-axle velocity (longitudinal, lateral) in the agent's frame [m/s].

    Raises:
        ValueError: The agent is not valid at ``step``.
    """
    heading = scene.agent_pose(row, step)[3]  # Raises if invalid.
    v_world = _rear_axle_velocity_world(scene, row)[step]
    return geometry.rotate(v_world, -heading)


def agent_acceleration(scene: Scene, row: int, step: int) -> np.ndarray:
    """(2,) float64 rear-axle acceleration (longitudinal, lateral) in the agent's frame [m/s^2].

    The world-frame velocity's central difference over +-``ACCEL_HALF_WINDOW_S`` (one-sided
    against the step itself when one side is not valid; zero when neither is), rotated into the
    agent's frame at ``step`` (so a turning agent shows its centripetal acceleration as lateral).

    Raises:
        ValueError: The agent is not valid at ``step``.
    """
    heading = scene.agent_pose(row, step)[3]
    ts = scene.timestamps
    vel = _rear_axle_velocity_world(scene, row)  # (T, 2)
    t = ts[step]
    times = np.array([t - ACCEL_HALF_WINDOW_S, t + ACCEL_HALF_WINDOW_S])
    lo, hi, w, ok = _bracket(ts, scene.tracks.valid[row], times)
    v_at = vel[lo] + w[:, None] * (vel[hi] - vel[lo])  # (2, 2)
    if ok.all():
        acc = (v_at[1] - v_at[0]) / (2.0 * ACCEL_HALF_WINDOW_S)
    elif ok[1]:
        acc = (v_at[1] - vel[step]) / ACCEL_HALF_WINDOW_S
    elif ok[0]:
        acc = (vel[step] - v_at[0]) / ACCEL_HALF_WINDOW_S
    else:
        acc = np.zeros(2)
    return geometry.rotate(acc, -heading)


def yaw_rate(scene: Scene, row: int, step: int) -> float:
    """Central-difference yaw rate of an agent at ``step`` [rad/s] (one-sided at the ends)."""
    valid = scene.tracks.valid[row]
    lo = step - 1 if step > 0 and valid[step - 1] else step
    hi = step + 1 if step + 1 < scene.num_steps and valid[step + 1] else step
    if hi == lo:
        return 0.0
    dh = float(geometry.wrap_angle(scene.tracks.heading[row, hi] - scene.tracks.heading[row, lo]))
    return dh / float(scene.timestamps[hi] - scene.timestamps[lo])


def driving_command(
    future: Trajectory, *, lateral_threshold_m: float = COMMAND_LATERAL_THRESHOLD_M
) -> DrivingCommand:
    """High-level command from a future trajectory (VAD / UniAD rule).

    Args:
        future: The agent's future in its own frame.
        lateral_threshold_m: |y| of the last pose beyond which the command is a turn [m].

    Returns:
        LEFT if the last pose's y > ``lateral_threshold_m``, RIGHT if y < -``lateral_threshold_m``,
        STRAIGHT otherwise.
    """
    y_end = float(future.poses[-1, PoseIndex.Y])
    if y_end > lateral_threshold_m:
        return DrivingCommand.LEFT
    if y_end < -lateral_threshold_m:
        return DrivingCommand.RIGHT
    return DrivingCommand.STRAIGHT


def ego_status(scene: Scene, row: int, step: int, future: Trajectory) -> EgoStatus:
    """State of the acting agent at ``step`` in its own frame.

    Args:
        scene: The scene.
        row: Row of ``scene.tracks`` of the acting agent.
        step: Sample step.
        future: Its future in its own frame (for the command, :func:`driving_command`).

    Returns:
        EgoStatus with the rear-axle speed [m/s], velocity [m/s] and acceleration [m/s^2]
        (longitudinal, lateral); see :func:`agent_velocity` and :func:`agent_acceleration`.

    Raises:
        ValueError: The agent is not valid at ``step``.
    """
    v = agent_velocity(scene, row, step)
    a = agent_acceleration(scene, row, step)
    return EgoStatus(
        speed=float(np.hypot(v[0], v[1])),
        velocity=(float(v[0]), float(v[1])),
        acceleration=(float(a[0]), float(a[1])),
        command=driving_command(future),
    )
