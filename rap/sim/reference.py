"""PDM-Closed-style reference planner: IDM along the route centerline (for NAVSIM's ego progress).

NAVSIM normalizes an agent's progress by the larger of its own and a reference planner's
(PDM-Closed, Dauner et al. 2023). PDM-Closed follows the route centerline shifted by a few lateral
offsets, runs an Intelligent Driver Model (IDM) at several fractions of the speed limit against
obstacles forecast at constant velocity, simulates each candidate, scores them and keeps the
best. This module builds those candidates; :mod:`rap.metrics.pdms` simulates, scores and picks.
The IDM law and the leader search are :mod:`rap.sim.idm`'s.

Simplifications against PDM-Closed (documented, the reference only feeds the EP denominator):
the leading obstacle is the first box (inflated by the ego half-width) or red-light polygon that
the candidate's path enters; obstacles are the objects at step 0 moved at constant velocity; no
emergency brake. For exact parity with a NAVSIM metric cache, pass its PDM-Closed trajectory as
``ScoringScene.reference_poses`` instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import shapely

from rap.geometry import polyline_arc_length, wrap_angle
from rap.sim.bicycle import PACIFICA, StateIndex, VehicleParameters
from rap.sim.idm import Boxes, IDMParameters, idm_acceleration, path_hits
from rap.trajectory import PoseIndex

__all__ = ["ReferencePlannerConfig", "Obstacles", "idm_candidates"]


@dataclasses.dataclass(frozen=True)
class ReferencePlannerConfig:
    """PDM-Closed defaults (``pdm_closed_planner.yaml``)."""

    speed_fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)  # of the speed limit
    lateral_offsets: tuple[float, ...] = (-1.0, 0.0, 1.0)  # [m] left positive
    default_speed_limit: float = 15.0  # [m/s] when the scene gives none
    min_gap: float = 1.0  # [m] IDM standstill gap
    headway_time: float = 1.5  # [s] IDM time headway
    accel_max: float = 1.5  # [m/s^2]
    decel_max: float = 3.0  # [m/s^2]
    exponent: float = 4.0  # IDM acceleration exponent
    horizon_s: float = 4.0  # [s]
    dt: float = 0.1  # [s]
    path_spacing: float = 1.0  # [m] sampling of the candidate paths

    @property
    def num_steps(self) -> int:
        """Planned poses after now (40)."""
        return int(round(self.horizon_s / self.dt))

    @property
    def idm(self) -> IDMParameters:
        """The IDM driver (``decel_max`` is both its comfortable deceleration and its limit)."""
        return IDMParameters(
            max_accel=self.accel_max, comfort_decel=self.decel_max, time_headway=self.headway_time,
            min_gap=self.min_gap, exponent=self.exponent, max_decel=self.decel_max,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class Obstacles:
    """What the IDM brakes for: boxes per 0.1 s step and static polygons (red lights); arrays
    are (num_objects, num_steps) like ``AgentTracks`` and ``ObjectTracks``.

    Attributes:
        x, y, heading: (N, S) box centres and headings, world frame [m, m, rad].
        vx, vy: (N, S) velocities, world frame [m/s].
        length, width: (N,) [m].
        valid: (N, S) bool.
        polygons: Static polygons the ego must not enter (e.g. red-light lane connectors).

    Raises:
        ValueError: an array's shape disagrees with ``valid`` (naming the field).
    """

    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    length: np.ndarray
    width: np.ndarray
    valid: np.ndarray
    polygons: tuple = ()

    def __post_init__(self) -> None:
        shape = np.shape(self.valid)
        if len(shape) != 2:
            raise ValueError(f"Obstacles.valid: expected (num_objects, num_steps), got shape {shape}")
        for name in ("x", "y", "heading", "vx", "vy"):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"Obstacles.{name}: expected shape {shape} (num_objects, num_steps) like valid, got {np.shape(getattr(self, name))}")
        for name in ("length", "width"):
            if np.shape(getattr(self, name)) != shape[:1]:
                raise ValueError(f"Obstacles.{name}: expected shape {shape[:1]} (num_objects,), got {np.shape(getattr(self, name))}")


def _extended_centerline(centerline: np.ndarray, needed: float) -> tuple[np.ndarray, np.ndarray]:
    """(M', 2) points and arc lengths, extended straight past the end to cover ``needed`` metres."""
    xy = np.asarray(centerline, dtype=np.float64)[:, :2]
    keep = np.concatenate([[True], np.linalg.norm(np.diff(xy, axis=0), axis=1) > 1e-9])
    xy = xy[keep]
    s = polyline_arc_length(xy)
    if s[-1] < needed:
        d = xy[-1] - xy[-2] if len(xy) > 1 else np.array([1.0, 0.0])
        d = d / max(np.linalg.norm(d), 1e-12)
        xy = np.vstack([xy, xy[-1] + d * (needed - s[-1] + 1.0)])
        s = polyline_arc_length(xy)
    return xy, s


def idm_candidates(
    ego: np.ndarray,
    centerline: np.ndarray,
    obstacles: Obstacles,
    speed_limit: float | None = None,
    vehicle: VehicleParameters = PACIFICA,
    config: ReferencePlannerConfig | None = None,
) -> np.ndarray:
    """IDM candidate plans along the laterally offset route centerline.

    Args:
        ego: (11,) current ego state (columns :class:`~rap.sim.bicycle.StateIndex`).
        centerline: (M, 2+) route centerline, world frame [m].
        obstacles: Boxes (forecast, 0.1 s steps, step 0 = now) and static polygons.
        speed_limit: [m/s]; ``None`` uses ``config.default_speed_limit``.
        vehicle: Ego footprint.
        config: Planner constants; ``None`` means ``ReferencePlannerConfig()``.

    Returns:
        (len(lateral_offsets) * len(speed_fractions), num_steps, 3) poses x, y, heading in the ego
        frame at now, every ``config.dt`` seconds after now.
    """
    cfg = config if config is not None else ReferencePlannerConfig()
    limit = float(speed_limit) if speed_limit is not None else cfg.default_speed_limit
    e = np.asarray(ego, dtype=np.float64)
    ex, ey, eh = e[StateIndex.X], e[StateIndex.Y], e[StateIndex.HEADING]
    v_init = max(float(e[StateIndex.VELOCITY_X]), 0.0)
    n_steps = cfg.num_steps
    reach = max(v_init, limit) * cfg.horizon_s + 0.5 * cfg.accel_max * cfg.horizon_s**2 + vehicle.front_length + 10.0

    line = shapely.LineString(np.asarray(centerline, dtype=np.float64)[:, :2])
    s_ego = float(shapely.line_locate_point(line, shapely.Point(ex, ey)))
    xy, arc = _extended_centerline(centerline, s_ego + reach)
    s_samples = s_ego + np.arange(0.0, reach, cfg.path_spacing)
    px = np.interp(s_samples, arc, xy[:, 0])
    py = np.interp(s_samples, arc, xy[:, 1])
    tang = np.stack([np.gradient(px), np.gradient(py)], axis=-1)
    tang /= np.maximum(np.linalg.norm(tang, axis=-1, keepdims=True), 1e-12)
    normal = np.stack([-tang[:, 1], tang[:, 0]], axis=-1)
    path_s = s_samples - s_ego  # progress along the path from the ego's projection [m]

    hw = vehicle.half_width
    # Obstacle boxes per planned step (0.1 s, step 0 = now; the forecast's last step holds),
    # inflated sideways by the ego half-width.
    boxes = None
    if np.size(obstacles.x):
        steps = np.minimum(np.arange(n_steps + 1), obstacles.x.shape[1] - 1)
        # Shape: (n_steps + 1, N), one row of boxes per planned step.
        boxes = Boxes.from_poses(
            obstacles.x[:, steps].T, obstacles.y[:, steps].T, obstacles.heading[:, steps].T, obstacles.length,
            obstacles.width, obstacles.vx[:, steps].T, obstacles.vy[:, steps].T, obstacles.valid[:, steps].T,
        )  # fmt: skip
        boxes = dataclasses.replace(boxes, half_width=0.5 * np.asarray(obstacles.width) + hw)
    plans = []
    for offset in cfg.lateral_offsets:
        path = np.stack([px, py], axis=-1) + offset * normal  # (J, 2)
        heading = np.arctan2(tang[:, 1], tang[:, 0])
        # Blocking progress per step: first path sample inside an inflated obstacle box.
        block = np.full(n_steps + 1, np.inf)
        v_lead = np.zeros(n_steps + 1)
        for poly in obstacles.polygons:
            inside = shapely.contains_xy(poly, path[:, 0], path[:, 1])
            if inside.any():
                s_red = path_s[np.argmax(inside)]
                block = np.minimum(block, s_red)
        # Objects: the first path sample inside an inflated box.
        if boxes is not None:
            lead = path_hits(path, tang, boxes).nearest(n_steps + 1)
            s_obj = np.where(lead.sample >= 0, path_s[np.maximum(lead.sample, 0)], np.inf)
            closer = s_obj < block
            v_lead = np.where(closer, lead.speed, v_lead)
            block = np.minimum(block, s_obj)
        plans.append((path, heading, block, v_lead))
    # IDM for every (offset, speed fraction) pair at once.
    n_off, n_frac = len(cfg.lateral_offsets), len(cfg.speed_fractions)
    block = np.repeat(np.stack([p[2] for p in plans]), n_frac, axis=0)  # (P, S)
    v_lead = np.repeat(np.stack([p[3] for p in plans]), n_frac, axis=0)
    target = np.maximum(np.tile(np.asarray(cfg.speed_fractions) * limit, n_off), 0.1)
    s_cur = np.zeros(n_off * n_frac)
    v_cur = np.full(n_off * n_frac, v_init)
    progress = np.empty((n_off * n_frac, n_steps))
    idm = cfg.idm
    for i in range(n_steps):
        gap = block[:, i] - (s_cur + vehicle.front_length)
        acc = idm_acceleration(idm, v_cur, target, gap, v_lead[:, i])
        v_next = np.maximum(v_cur + acc * cfg.dt, 0.0)
        s_cur = s_cur + 0.5 * (v_cur + v_next) * cfg.dt
        v_cur = v_next
        progress[:, i] = s_cur
    out = []
    for idx in range(n_off * n_frac):
        path, heading = plans[idx // n_frac][0], plans[idx // n_frac][1]
        qx = np.interp(progress[idx], path_s, path[:, 0])
        qy = np.interp(progress[idx], path_s, path[:, 1])
        qh = np.interp(progress[idx], path_s, np.unwrap(heading))
        out.append(np.stack([qx, qy, qh], axis=-1))
    world = np.stack(out)  # (P, N, 3)
    c, s = np.cos(eh), np.sin(eh)
    dx, dy = world[..., PoseIndex.X] - ex, world[..., PoseIndex.Y] - ey
    local = np.stack([c * dx + s * dy, -s * dx + c * dy, wrap_angle(world[..., PoseIndex.HEADING] - eh)], axis=-1)
    return local
