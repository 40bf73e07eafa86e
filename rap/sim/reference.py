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
from collections.abc import Sequence

import numpy as np
import shapely

from rap.geometry import polyline_arc_length, wrap_angle
from rap.sim.bicycle import PACIFICA, StateIndex, VehicleParameters
from rap.sim.idm import Boxes, IDMParameters, idm_acceleration, path_hits

__all__ = ["ReferencePlannerConfig", "Obstacles", "idm_candidates", "idm_candidates_batch"]


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
    return idm_candidates_batch([ego], [centerline], [obstacles], [speed_limit], vehicle, config)[0]


def _interp_rows(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, last: np.ndarray) -> np.ndarray:
    """``np.interp(x[r], xp[r, :last[r] + 1], fp[r, :last[r] + 1])`` for every row r, bit for bit
    (numpy's formula: ``slope * (x - xp[j]) + fp[j]``, exact at knots, clamped outside).

    Args:
        x: (R, Q) query points.
        xp: (R, J) increasing knots, padded past ``last`` with +inf.
        fp: (R, J) values at the knots (padding ignored).
        last: (R,) int64 index of each row's last knot.
    """
    rows = np.arange(x.shape[0])[:, None]
    j = (xp[:, None, :] <= x[:, :, None]).sum(axis=-1) - 1  # xp[j] <= x < xp[j + 1]
    lo = np.clip(j, 0, last[:, None] - 1) if xp.shape[1] > 1 else np.zeros_like(j)
    hi = np.minimum(lo + 1, xp.shape[1] - 1)
    x0, x1 = xp[rows, lo], xp[rows, hi]
    f0, f1 = fp[rows, lo], fp[rows, hi]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (f1 - f0) / (x1 - x0)
        out = slope * (x - x0) + f0
    f_last = fp[rows[:, 0], last][:, None]
    out = np.where(x == x0, f0, out)
    out = np.where(j >= last[:, None], f_last, out)
    return np.where(j < 0, fp[:, :1], out)


def idm_candidates_batch(
    egos: Sequence[np.ndarray],
    centerlines: Sequence[np.ndarray],
    obstacles: Sequence[Obstacles],
    speed_limits: Sequence[float | None] | None = None,
    vehicle: VehicleParameters = PACIFICA,
    config: ReferencePlannerConfig | None = None,
) -> list[np.ndarray]:
    """:func:`idm_candidates` for several scenes at once (one vectorized leader search and IDM
    rollout for all of them); each scene's plans are bit-identical to ``idm_candidates`` of that
    scene alone.

    Args:
        egos, centerlines, obstacles: Per scene, as :func:`idm_candidates` takes them.
        speed_limits: Per scene [m/s] (``None`` entries, or ``None`` for all: the default).
        vehicle: Ego footprint.
        config: Planner constants.

    Returns:
        Per scene, (P, num_steps, 3) ego-frame plans.
    """
    cfg = config if config is not None else ReferencePlannerConfig()
    n = len(egos)
    if len(centerlines) != n or len(obstacles) != n or (speed_limits is not None and len(speed_limits) != n):
        raise ValueError("idm_candidates_batch: egos, centerlines, obstacles and speed_limits need one entry per scene")
    if n == 0:
        return []
    limits_in = [None] * n if speed_limits is None else list(speed_limits)
    n_steps = cfg.num_steps
    n_off, n_frac = len(cfg.lateral_offsets), len(cfg.speed_fractions)
    hw = vehicle.half_width
    # Per scene: the path samples along the centerline from the ego's projection.
    paths = []
    for ego, centerline, limit_in in zip(egos, centerlines, limits_in):
        limit = float(limit_in) if limit_in is not None else cfg.default_speed_limit
        e = np.asarray(ego, dtype=np.float64)
        ex, ey = e[StateIndex.X], e[StateIndex.Y]
        v_init = max(float(e[StateIndex.VELOCITY_X]), 0.0)
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
        # (n_off, J, 2) the laterally offset paths.
        offset_paths = np.stack([np.stack([px, py], axis=-1) + offset * normal for offset in cfg.lateral_offsets])
        paths.append((e, limit, v_init, tang, path_s, offset_paths))
    j_max = max(len(p[4]) for p in paths)

    # Blocking progress per (scene, offset, step): red-light polygons first (the first path
    # sample inside one), then the first path sample inside an obstacle box inflated by the ego
    # half-width (boxes per planned step, 0.1 s apart, step 0 = now; the forecast's last step holds).
    block = np.full((n, n_off, n_steps + 1), np.inf)
    v_lead = np.zeros((n, n_off, n_steps + 1))
    for i, (obs, (_, _, _, _, path_s, offset_paths)) in enumerate(zip(obstacles, paths)):
        for poly in obs.polygons:
            inside = shapely.contains_xy(poly, offset_paths[..., 0], offset_paths[..., 1])  # (n_off, J)
            for o in range(n_off):
                if inside[o].any():
                    block[i, o] = np.minimum(block[i, o], path_s[np.argmax(inside[o])])
    with_boxes = [i for i, obs in enumerate(obstacles) if np.size(obs.x)]
    if with_boxes:
        s_obj, speed = _first_box_hits([obstacles[i] for i in with_boxes], [paths[i] for i in with_boxes], j_max, n_steps, hw)
        sel = np.asarray(with_boxes)
        closer = s_obj < block[sel]
        v_lead[sel] = np.where(closer, speed, v_lead[sel])
        block[sel] = np.minimum(block[sel], s_obj)

    # IDM for every (scene, offset, speed fraction) at once; rows scene-major, then offset, then fraction.
    rows = n * n_off * n_frac
    block_r = np.repeat(block.reshape(n * n_off, n_steps + 1), n_frac, axis=0)  # (R, S)
    v_lead_r = np.repeat(v_lead.reshape(n * n_off, n_steps + 1), n_frac, axis=0)
    limits = np.array([p[1] for p in paths])
    target = np.maximum((np.asarray(cfg.speed_fractions)[None, None, :] * limits[:, None, None]).repeat(n_off, axis=1).reshape(rows), 0.1)
    s_cur = np.zeros(rows)
    v_cur = np.repeat(np.array([p[2] for p in paths]), n_off * n_frac)
    progress = np.empty((rows, n_steps))
    idm = cfg.idm
    for i in range(n_steps):
        gap = block_r[:, i] - (s_cur + vehicle.front_length)
        acc = idm_acceleration(idm, v_cur, target, gap, v_lead_r[:, i])
        v_next = np.maximum(v_cur + acc * cfg.dt, 0.0)
        s_cur = s_cur + 0.5 * (v_cur + v_next) * cfg.dt
        v_cur = v_next
        progress[:, i] = s_cur
    # Poses at the progress along each candidate's path (np.interp per row, bit for bit).
    xp = np.full((n, j_max), np.inf)
    fx = np.zeros((n, n_off, j_max))
    fy = np.zeros((n, n_off, j_max))
    fh = np.zeros((n, j_max))
    for i, (_, _, _, tang, path_s, offset_paths) in enumerate(paths):
        m = len(path_s)
        xp[i, :m] = path_s
        fx[i, :, :m] = offset_paths[..., 0]
        fy[i, :, :m] = offset_paths[..., 1]
        fh[i, :m] = np.unwrap(np.arctan2(tang[:, 1], tang[:, 0]))

    def per_row(a: np.ndarray) -> np.ndarray:  # (n, ...) -> (R, ...)
        return np.repeat(a, n_off * n_frac, axis=0)

    last = per_row(np.array([len(p[4]) - 1 for p in paths]))
    xp_r = per_row(xp)
    qx = _interp_rows(progress, xp_r, np.repeat(fx.reshape(n * n_off, j_max), n_frac, axis=0), last)
    qy = _interp_rows(progress, xp_r, np.repeat(fy.reshape(n * n_off, j_max), n_frac, axis=0), last)
    qh = _interp_rows(progress, xp_r, per_row(fh), last)
    ego = np.stack([p[0] for p in paths])
    ex, ey, eh = (per_row(ego[:, k])[:, None] for k in (StateIndex.X, StateIndex.Y, StateIndex.HEADING))
    c, s = np.cos(eh), np.sin(eh)
    dx, dy = qx - ex, qy - ey
    local = np.stack([c * dx + s * dy, -s * dx + c * dy, wrap_angle(qh - eh)], axis=-1)
    return list(local.reshape(n, n_off * n_frac, n_steps, 3))


def _first_box_hits(
    obstacles: Sequence[Obstacles], paths: Sequence[tuple], j_max: int, n_steps: int, half_width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Progress to the first sample of each (scene, offset) path inside an inflated obstacle box
    at each planned step (inf: none) and that box's speed along the path there: two
    (n, n_off, n_steps + 1) arrays. One :func:`~rap.sim.idm.path_hits` call covers every scene,
    offset and step (paths padded to ``j_max`` samples, boxes to the most objects of a scene)."""
    n = len(obstacles)
    n_off = paths[0][5].shape[0]
    s1 = n_steps + 1
    n_max = max(int(np.shape(o.x)[0]) for o in obstacles)
    shape = (n, s1, n_max)
    x, y, h, vx, vy = (np.zeros(shape) for _ in range(5))
    length, width = np.ones((n, n_max)), np.ones((n, n_max))
    valid = np.zeros(shape, dtype=bool)
    pts = np.empty((n, n_off, j_max, 2))
    tan = np.empty((n, n_off, j_max, 2))
    ok = np.zeros((n, j_max), dtype=bool)
    for i, (obs, (_, _, _, tang, path_s, offset_paths)) in enumerate(zip(obstacles, paths)):
        m = obs.x.shape[0]
        steps = np.minimum(np.arange(s1), obs.x.shape[1] - 1)
        for dst, src in ((x, obs.x), (y, obs.y), (h, obs.heading), (vx, obs.vx), (vy, obs.vy), (valid, obs.valid)):
            dst[i, :, :m] = src[:, steps].T
        length[i, :m] = obs.length
        width[i, :m] = obs.width
        j = len(path_s)
        pts[i, :, :j] = offset_paths
        pts[i, :, j:] = offset_paths[:, -1:]  # padding repeats the last sample (never a hit)
        tan[i, :, :j] = tang
        tan[i, :, j:] = tang[-1]
        ok[i, :j] = True
    # Rows (scene, offset, step): the step's boxes against the offset's path.
    rows = n * n_off * s1

    def per_step(a: np.ndarray) -> np.ndarray:  # (n, S, ...) -> (rows, ...), the same for every offset
        return np.broadcast_to(a[:, None], (n, n_off) + a.shape[1:]).reshape((rows,) + a.shape[2:])

    def size(a: np.ndarray) -> np.ndarray:  # (n, N) -> (rows, N)
        return np.broadcast_to(a[:, None, None], (n, n_off, s1, n_max)).reshape(rows, n_max)

    boxes = Boxes.from_poses(per_step(x), per_step(y), per_step(h), 1.0, 1.0, per_step(vx), per_step(vy), per_step(valid))
    boxes = dataclasses.replace(boxes, half_length=0.5 * size(length), half_width=0.5 * size(width) + half_width)
    sample_ok = np.broadcast_to(ok[:, None, None], (n, n_off, s1, j_max)).reshape(rows, j_max)
    # Every step's row of an offset path shares that path (and its pruning bounds).
    path_index = np.repeat(np.arange(n * n_off), s1)
    paths_xy, paths_tan = pts.reshape(n * n_off, j_max, 2), tan.reshape(n * n_off, j_max, 2)
    lead = path_hits(paths_xy, paths_tan, boxes, sample_valid=sample_ok, path_index=path_index).nearest(rows)
    path_s = np.zeros((n, j_max))
    for i, p in enumerate(paths):
        path_s[i, : len(p[4])] = p[4]
    s_row = np.broadcast_to(path_s[:, None, None], (n, n_off, s1, j_max)).reshape(rows, j_max)
    s_obj = np.where(lead.sample >= 0, s_row[np.arange(rows), np.maximum(lead.sample, 0)], np.inf)
    return s_obj.reshape(n, n_off, s1), lead.speed.reshape(n, n_off, s1)
