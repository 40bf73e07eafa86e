"""The Intelligent Driver Model (IDM): the acceleration law, the leader search along a path, lane
routes, and reactive agents that drive any :class:`~rap.scene.Scene`'s lanes.

One implementation for every IDM driver of the toolkit: the synthetic world's traffic
(:mod:`rap.sources.synthetic.traffic`), the PDM-Closed-style reference planner
(:mod:`rap.sim.reference`) and background agents of a closed-loop simulation
(:class:`IDMAgents`).

The law (Treiber, Hennecke & Helbing 2000)::

    a = a_max * (1 - (v / v0)^delta - (s* / s)^2),   s* = s0 + max(0, v T + v dv / (2 sqrt(a_max b)))

with ``s`` the gap to the leader (bumper to bumper) and ``dv = v - v_lead`` the approach speed.
All functions are vectorized over agents: parameters, speeds and gaps broadcast together.

Leaders: an agent's path ahead is sampled (``(K, 2)`` points with unit tangents, e.g. every
1 m from the front bumper); the leader is the first sample that comes within ``clearance`` of an
obstacle box (a rounded bumper of half the agent's width plus a margin), or that lies inside a
box when ``clearance`` is None (callers then inflate the boxes by the agent's half width). The
gap is that sample's distance along the path; the leader's speed is its velocity along the
path's tangent there (never negative). :func:`path_hits` finds every (path, obstacle) contact
at once, :meth:`PathHits.nearest` keeps the first per path.

Reactive agents: a route is a chain of lanes along their successors, concatenated into one
polyline, resampled every ``spacing`` metres and smoothed (:func:`route_path`); its desired
speed ``vmax`` is the lane's speed limit (times a driver's factor) capped by curvature. An
agent's state is its route, the arc position ``s`` [m] of its box centre along it and its speed
``v`` [m/s]; its box is centred on the route and points along its tangent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from rap.geometry import polyline_length, wrap_angle
from rap.scene import AgentType, Lanes, Scene
from rap.sim.path_kernels import first_path_hits

__all__ = [
    "Boxes",
    "IDMAgents",
    "IDMParameters",
    "Leaders",
    "PathHits",
    "RoutePath",
    "Routes",
    "advance",
    "desired_gap",
    "idm_acceleration",
    "interaction",
    "lane_change_line",
    "lane_route",
    "locate_on_lanes",
    "path_hits",
    "route_path",
]


# ----------------------------------------------------------------------------------------------
# The acceleration law.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class IDMParameters:
    """IDM driver parameters. Each may be a float or an (N,) array (one value per agent).

    Attributes:
        max_accel: a_max, maximum acceleration [m/s^2].
        comfort_decel: b, comfortable deceleration (in the desired gap) [m/s^2].
        time_headway: T, desired time headway [s].
        min_gap: s0, standstill gap to a leader [m].
        stop_gap: Standstill gap to a stop point (stop line) [m].
        exponent: delta, free-road acceleration exponent.
        max_decel: Braking limit the acceleration is clipped to [m/s^2].
    """

    max_accel: ArrayLike = 1.5  # [m/s^2]
    comfort_decel: ArrayLike = 2.0  # [m/s^2]
    time_headway: ArrayLike = 1.5  # [s]
    min_gap: ArrayLike = 2.0  # [m]
    stop_gap: ArrayLike = 1.0  # [m]
    exponent: float = 4.0
    max_decel: ArrayLike = 8.0  # [m/s^2]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim > 1 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
                raise ValueError(f"IDMParameters.{f.name}: need finite values > 0 (float or (N,)), got {value!r}")
            if arr.ndim == 1:
                object.__setattr__(self, f.name, arr)


def desired_gap(params: IDMParameters, v: ArrayLike, dv: ArrayLike, min_gap: ArrayLike | None = None) -> np.ndarray:
    """IDM desired gap ``s* = s0 + max(0, v T + v dv / (2 sqrt(a_max b)))``.

    Args:
        params: Driver parameters.
        v: (N,) speeds [m/s].
        dv: (N,) approach speeds ``v - v_lead`` [m/s].
        min_gap: s0 [m]; None uses ``params.min_gap``.

    Returns:
        (N,) desired gaps [m].
    """
    s0 = params.min_gap if min_gap is None else min_gap
    root = 2.0 * np.sqrt(params.max_accel * params.comfort_decel)
    return s0 + np.maximum(0.0, v * params.time_headway + v * dv / root)


def interaction(
    params: IDMParameters, v: ArrayLike, gap: ArrayLike, dv: ArrayLike, min_gap: ArrayLike | None = None
) -> np.ndarray:
    """IDM interaction term ``(s* / s)^2``.

    Args:
        params: Driver parameters.
        v: (N,) speeds [m/s].
        gap: (N,) gaps to the obstacle [m]; inf: none (term 0), <= 0: overlap (term inf).
        dv: (N,) approach speeds [m/s].
        min_gap: s0 [m]; None uses ``params.min_gap``.

    Returns:
        (N,) the term, >= 0.
    """
    g = np.asarray(gap, dtype=np.float64)
    s_star = desired_gap(params, v, dv, min_gap)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(g), np.where(g > 0, (s_star / g) ** 2, np.inf), 0.0)


def idm_acceleration(
    params: IDMParameters,
    v: ArrayLike,
    v0: ArrayLike,
    gap: ArrayLike = np.inf,
    lead_v: ArrayLike = 0.0,
    *,
    stop_gap: ArrayLike | None = None,
    ceiling: ArrayLike | None = None,
) -> np.ndarray:
    """IDM acceleration, clipped to ``[-max_decel, max_accel]``.

    Args:
        params: Driver parameters.
        v: (N,) speeds [m/s].
        v0: (N,) desired speeds [m/s], > 0.
        gap: (N,) gaps from the front bumper to the leader [m] (inf: none; <= 0: full braking).
        lead_v: (N,) leaders' speeds along the path [m/s].
        stop_gap: (N,) gaps to a point to stop at [m] (inf: none), approached with standstill
            gap ``params.stop_gap``; the more restrictive of leader and stop point counts.
        ceiling: (N,) upper bound applied before clipping [m/s^2] (e.g. the deceleration
            needed to meet a slower speed limit ahead).

    Returns:
        (N,) accelerations [m/s^2].
    """
    free = 1.0 - (v / v0) ** params.exponent
    inter = interaction(params, v, gap, v - lead_v)
    if stop_gap is not None:
        inter = np.maximum(inter, interaction(params, v, stop_gap, v, min_gap=params.stop_gap))
    acc = params.max_accel * (free - inter)
    if ceiling is not None:
        acc = np.minimum(acc, ceiling)
    return np.clip(acc, -params.max_decel, params.max_accel)


def advance(s: ArrayLike, v: ArrayLike, acc: ArrayLike, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """One step of constant acceleration that stops at standstill (never reverses).

    Args:
        s: (N,) arc positions [m].
        v: (N,) speeds [m/s], >= 0.
        acc: (N,) accelerations [m/s^2].
        dt: Step [s].

    Returns:
        (N,) new arc positions [m] and (N,) new speeds [m/s].
    """
    v_new = v + acc * dt
    stopping = v_new < 0
    ds = np.where(stopping, v**2 / (2.0 * np.maximum(-acc, 1e-9)), v * dt + 0.5 * acc * dt * dt)
    return s + np.maximum(ds, 0.0), np.maximum(v_new, 0.0)


# ----------------------------------------------------------------------------------------------
# Leaders along a path.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Boxes:
    """Oriented boxes an IDM driver brakes for. Arrays are (N,) or, with one row of boxes per
    path of a batch (e.g. obstacles forecast per time step), (B, N).

    Attributes:
        centre: (..., N, 2) box centres [m].
        axis: (..., N, 2) unit vectors along the box lengths.
        half_length: (..., N) [m].
        half_width: (..., N) [m].
        speed: (..., N) speeds along ``axis`` [m/s], or None.
        velocity: (..., N, 2) velocities [m/s] (used when ``speed`` is None); neither: static.
        valid: (..., N) bool, or None (all valid).
    """

    centre: np.ndarray
    axis: np.ndarray
    half_length: np.ndarray
    half_width: np.ndarray
    speed: np.ndarray | None = None
    velocity: np.ndarray | None = None
    valid: np.ndarray | None = None

    def __len__(self) -> int:
        return int(np.shape(self.centre)[-2])

    @classmethod
    def from_poses(
        cls, x: ArrayLike, y: ArrayLike, heading: ArrayLike, length: ArrayLike, width: ArrayLike,
        vx: ArrayLike = 0.0, vy: ArrayLike = 0.0, valid: ArrayLike | None = None,
    ) -> Boxes:  # fmt: skip
        """Boxes from centre poses and world-frame velocities ((..., N) [m, rad, m/s]) and sizes
        ((N,) [m]), in the inputs' float type."""
        x, y, h, vx, vy = np.broadcast_arrays(*(np.asarray(a) for a in (x, y, heading, vx, vy)))
        shape = x.shape
        return cls(
            centre=np.stack([x, y], -1),
            axis=np.stack([np.cos(h), np.sin(h)], -1),
            half_length=np.broadcast_to(0.5 * np.asarray(length), shape[-1:]),
            half_width=np.broadcast_to(0.5 * np.asarray(width), shape[-1:]),
            velocity=np.stack([vx, vy], -1),
            valid=None if valid is None else np.broadcast_to(np.asarray(valid, dtype=bool), shape),
        )

    def velocities(self) -> np.ndarray:
        """(..., N, 2) world-frame velocities [m/s]."""
        if self.speed is not None:
            return np.asarray(self.speed)[..., None] * self.axis
        if self.velocity is not None:
            return np.asarray(self.velocity, dtype=np.float64)
        return np.zeros(np.shape(self.centre))

    @staticmethod
    def concatenate(parts: Sequence[Boxes]) -> Boxes:
        """All boxes of ``parts`` (at least one; each (N_i,), unbatched), in order."""
        if not parts:
            raise ValueError("Boxes.concatenate: no parts")
        parts = [p for p in parts if len(p)] or list(parts[:1])
        speed_mode = all(p.speed is not None for p in parts)

        def cat(get):
            return np.concatenate([np.asarray(get(p)) for p in parts])

        return Boxes(
            centre=cat(lambda p: p.centre),
            axis=cat(lambda p: p.axis),
            half_length=cat(lambda p: p.half_length),
            half_width=cat(lambda p: p.half_width),
            speed=cat(lambda p: p.speed) if speed_mode else None,
            velocity=None if speed_mode else cat(lambda p: p.velocities()),
            valid=cat(lambda p: np.ones(len(p), bool) if p.valid is None else p.valid),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Leaders:
    """The first obstacle along each path.

    Attributes:
        sample: (B,) int64 index of the first path sample that hits (-1: none).
        obstacle: (B,) int64 index of the box hit there (the lowest on ties; -1: none).
        speed: (B,) its speed along the path's tangent there [m/s], >= 0 (0: none).
    """

    sample: np.ndarray
    obstacle: np.ndarray
    speed: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class PathHits:
    """Every (path, obstacle) contact found by :func:`path_hits`, in (row, obstacle) order.

    Attributes:
        row: (P,) int64 path (batch row) index.
        obstacle: (P,) int64 box index.
        sample: (P,) int64 first sample of the path that hits the box.
        speed: (P,) the box's speed along the path's tangent at that sample [m/s], >= 0.
        row_ids: (B,) int64 each row's own box index (``exclude``; -1: none).
    """

    row: np.ndarray
    obstacle: np.ndarray
    sample: np.ndarray
    speed: np.ndarray
    row_ids: np.ndarray

    def select(self, keep: np.ndarray) -> PathHits:
        """The contacts where ``keep`` (P,) bool is true."""
        return PathHits(self.row[keep], self.obstacle[keep], self.sample[keep], self.speed[keep], self.row_ids)

    def yield_mutual(self) -> PathHits:
        """Resolves mutual sightings: when row a's path hits b's box and row b's path hits a's
        (crossing or merging paths; ids from ``row_ids``), the one nearer the conflict goes
        first (drops its contact; on a tie the lower id goes first)."""
        ids = self.row_ids[self.row]
        keep = np.ones(self.row.size, dtype=bool)
        seen = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(ids, self.obstacle))}
        for k, (a, b) in enumerate(zip(ids, self.obstacle)):
            r = seen.get((int(b), int(a)))
            if r is None:
                continue
            if self.sample[k] < self.sample[r] or (self.sample[k] == self.sample[r] and a < b):
                keep[k] = False
        return self.select(keep)

    def nearest(self, num_rows: int) -> Leaders:
        """The first contact along each of ``num_rows`` paths."""
        sample = np.full(num_rows, -1, dtype=np.int64)
        obstacle = np.full(num_rows, -1, dtype=np.int64)
        speed = np.zeros(num_rows)
        if self.row.size:
            order = np.lexsort((self.sample, self.row))  # Stable: ties keep the lower box.
            row = self.row[order]
            firsts = order[np.concatenate([[True], row[1:] != row[:-1]])]
            sample[self.row[firsts]] = self.sample[firsts]
            obstacle[self.row[firsts]] = self.obstacle[firsts]
            speed[self.row[firsts]] = self.speed[firsts]
        return Leaders(sample=sample, obstacle=obstacle, speed=speed)


_SLACK = 1e-3  # [m] added to the conservative pruning distances (rounding).

_COARSE_SEGMENTS = 6
"""Fine pruning segments per coarse segment in :func:`path_hits` (testing every fine segment of
every (path, box) pair costs more than the samples they save)."""


def _segments(px: np.ndarray, py: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Runs of ``size`` samples of (M, K) paths: (S,) first sample and sample count, and (M, S)
    centre (the middle sample) and radius (the farthest sample of the run from it)."""
    k = px.shape[1]
    first = np.arange(0, k, size)
    length = np.minimum(first + size, k) - first
    mid = first + (length - 1) // 2
    cols = np.minimum(first[:, None] + np.arange(size), (first + length - 1)[:, None])  # (S, size), short runs repeat their last
    mx, my = px[:, mid], py[:, mid]
    radius = np.sqrt(((px[:, cols] - mx[..., None]) ** 2 + (py[:, cols] - my[..., None]) ** 2).max(axis=-1))
    return first, length, mx, my, radius


def path_hits(
    points: ArrayLike,
    tangents: ArrayLike,
    boxes: Boxes,
    clearance: ArrayLike | None = None,
    *,
    sample_valid: ArrayLike | None = None,
    exclude: ArrayLike | None = None,
    stride: int = 4,
    path_index: ArrayLike | None = None,
) -> PathHits:
    """Where sampled paths run into boxes: the first hit sample of every (path, box) pair.

    A sample hits a box when it is closer than ``clearance`` to it, or, with ``clearance`` None,
    when it lies inside it (boundary included). Pairs and samples are pruned coarse to fine
    (bounding circle of the path, then those of its coarse segments of ``6 * stride`` samples
    and of the ``stride``-sample segments in the near ones; only the samples of the segments
    near the box are tested) with exact bounds, so the result is the same as testing every
    sample against every box.

    Args:
        points: (B, K, 2) path samples [m], or (K, 2) one path shared by all rows of ``boxes``;
            with ``path_index``, (M, K, 2) distinct paths.
        tangents: Unit path tangents, shaped as ``points``.
        boxes: (N,) boxes shared by all paths, or (B, N) one row per path.
        clearance: (B,) or scalar distance that counts as a hit [m] (e.g. half the driver's
            width plus a margin); None: inside the box.
        sample_valid: (B, K) or (K,) bool, samples that may hit (e.g. before the path's end).
        exclude: (B,) int64 box each path ignores (its own agent; -1: none); becomes
            ``PathHits.row_ids``.
        stride: Pruning segment length [samples]; <= 1 skips the segment stage.
        path_index: Optional (B,) int64: row b follows path ``points[path_index[b]]`` (rows that
            share a path, e.g. one path against the boxes of many time steps, share its pruning
            bounds instead of repeating them per row).

    Returns:
        The contacts, ordered by row then box.
    """
    pts = np.asarray(points, dtype=np.float64)
    tan = np.asarray(tangents, dtype=np.float64)
    centre = np.asarray(boxes.centre, dtype=np.float64)
    k, n = pts.shape[-2], centre.shape[-2]
    if pts.ndim == 2:  # one path shared by every row
        pts, tan = pts[None], tan[None]
        path_index = None if centre.ndim == 2 else np.zeros(centre.shape[0], dtype=np.int64)
    if path_index is None:
        b = max([a.shape[0] for a in (pts, centre) if a.ndim == 3], default=1)
        path_of = np.arange(b) if pts.shape[0] == b else np.zeros(b, dtype=np.int64)
    else:
        path_of = np.asarray(path_index, dtype=np.int64).reshape(-1)
        b = path_of.size
    if exclude is None:
        row_ids = np.full(b, -1, dtype=np.int64)
    else:
        row_ids = np.broadcast_to(np.asarray(exclude, dtype=np.int64), (b,))
    empty = np.zeros(0, dtype=np.int64)
    if b == 0 or k == 0 or n == 0:
        return PathHits(empty, empty, empty, np.zeros(0), row_ids)

    def pair(a: ArrayLike, tail: int, pb: np.ndarray, pn: np.ndarray) -> np.ndarray:
        """A box field ((N,) + tail shared, or (B, N) + tail per row) at pairs (pb, pn)."""
        a = np.asarray(a)
        return a[pn] if a.ndim == 1 + tail else np.broadcast_to(a, (b, n) + a.shape[2:])[pb, pn]

    px, py = np.ascontiguousarray(pts[..., 0]), np.ascontiguousarray(pts[..., 1])  # (M, K)
    reach = np.zeros(b) if clearance is None else np.broadcast_to(np.asarray(clearance, dtype=np.float64), (b,))
    hl, hw = np.asarray(boxes.half_length, dtype=np.float64), np.asarray(boxes.half_width, dtype=np.float64)
    radius = np.hypot(hl, hw)  # (N,) or (B, N)
    cx, cy = centre[..., 0], centre[..., 1]  # (N,) or (B, N)

    # (1) Box centre within the path's bounding circle (about its middle sample) + box radius.
    mx, my = px[:, k // 2], py[:, k // 2]  # (M,)
    span = np.sqrt(((px - mx[:, None]) ** 2 + (py - my[:, None]) ** 2).max(axis=1))  # (M,)
    bound = (span[path_of] + reach + _SLACK)[:, None] + radius
    cand = (cx - mx[path_of, None]) ** 2 + (cy - my[path_of, None]) ** 2 <= bound * bound  # (B, N)
    if boxes.valid is not None:
        cand &= np.asarray(boxes.valid, dtype=bool)
    own = np.flatnonzero(row_ids >= 0)
    cand[own, row_ids[own]] = False
    pb, pn = np.nonzero(cand)
    # (2) Box centre within the bounding circle (about its middle sample) of a coarse segment
    # (_COARSE_SEGMENTS segments), then of a segment of ``stride`` samples in it, + box radius +
    # reach: a sample can only hit the box when its segments' centres are that near, so (3)
    # tests only the samples of the near segments.
    seg = int(stride) if stride > 1 else k
    if pb.size == 0:
        return PathHits(empty, empty, empty, np.zeros(0), row_ids)
    first, length, fx, fy, fr = _segments(px, py, seg)
    use_fine = seg < k
    coarse = seg * _COARSE_SEGMENTS
    use_coarse = use_fine and coarse < k
    gx, gy, gr = _segments(px, py, coarse)[2:] if use_coarse else (fx, fy, fr)
    # (3) The samples of the near segments against the box, in the box's frame, in order; the
    # first hit of each pair (compiled loop over pairs, segments and samples).
    axis = pair(np.asarray(boxes.axis, dtype=np.float64), 1, pb, pn)
    valid = np.ones((1, 1), dtype=bool) if sample_valid is None else np.asarray(sample_valid, dtype=bool)
    valid = np.broadcast_to(valid if valid.ndim == 2 else valid[None], (b, k))
    reach_p = reach[pb]
    hit_pairs, first_hit = first_path_hits(
        pb, path_of, px, py, pair(cx, 0, pb, pn), pair(cy, 0, pb, pn),
        np.ascontiguousarray(axis[:, 0]), np.ascontiguousarray(axis[:, 1]), pair(hl, 0, pb, pn), pair(hw, 0, pb, pn),
        reach_p, pair(radius, 0, pb, pn) + reach_p + _SLACK, clearance is None, valid,
        first, length, fx, fy, fr, use_fine, _COARSE_SEGMENTS, gx, gy, gr, use_coarse,
    )
    pb, pn, axis = pb[hit_pairs], pn[hit_pairs], axis[hit_pairs]
    tk = tan[path_of[pb], first_hit]
    if boxes.speed is not None:
        sp = pair(boxes.speed, 0, pb, pn) * np.einsum("pd,pd->p", axis, tk)
    elif boxes.velocity is not None:
        sp = (pair(np.asarray(boxes.velocity, dtype=np.float64), 1, pb, pn) * tk).sum(-1)
    else:
        sp = np.zeros(pb.size)
    return PathHits(pb, pn, first_hit.astype(np.int64), np.maximum(sp, 0.0), row_ids)


# ----------------------------------------------------------------------------------------------
# Routes along lanes.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class RoutePath:
    """One route: a chain of lanes as a smoothed polyline sampled every ``spacing`` metres.

    Attributes:
        lanes: Indices of the route's lanes, in driving order.
        points: (M, 2) samples [m], ``spacing`` apart along the unsmoothed chain.
        tangents: (M, 2) unit tangents.
        vmax: (M,) desired speed at each sample [m/s]: speed limit x driver factor, capped by
            the driver's speed cap and by the lateral acceleration limit in curves.
        length: Arc length of the last sample [m].
        lane_starts: (R,) arc where each lane starts [m].
        spacing: Sample spacing [m].
    """

    lanes: tuple[int, ...]
    points: np.ndarray
    tangents: np.ndarray
    vmax: np.ndarray
    length: float
    lane_starts: np.ndarray
    spacing: float


def _smooth_path(points: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed (N, 2) path (ends held; ``sigma`` in samples), so curvature ramps in
    and out of turns like a steered car's path instead of jumping where a straight lane meets a
    circular connector."""
    if sigma <= 0 or len(points) < 3:
        return points
    half = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.repeat(points[:1], half, 0), points, np.repeat(points[-1:], half, 0)])
    out = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(2)], axis=1)
    out[0], out[-1] = points[0], points[-1]
    return out


def route_path(
    centerlines: Sequence[np.ndarray],
    speed_limits: Sequence[float],
    lanes: Sequence[int] = (),
    *,
    spacing: float = 0.5,
    smoothing: float = 2.0,
    speed_factor: float = 1.0,
    speed_cap: float = np.inf,
    lateral_accel: float = 2.5,
    curvature_window: float = 2.0,
) -> RoutePath:
    """Concatenates lane centerlines (each starting where the previous ends) into a route.

    Args:
        centerlines: Per lane, (n_i, 2+) points [m] (x, y used); lane i > 0 drops its first
            point (the previous lane's last).
        speed_limits: Per lane [m/s].
        lanes: Per lane, an index to record (e.g. into ``scene.map.lanes``).
        spacing: Sample spacing [m].
        smoothing: Gaussian sigma of the path smoothing [m] (0: none).
        speed_factor: Desired speed as a share of the speed limit.
        speed_cap: Desired speed cap [m/s].
        lateral_accel: Lateral acceleration limit in curves [m/s^2].
        curvature_window: Curvature is the heading change over +- this [m].

    Returns:
        The route (at least one sample).
    """
    pts, limits, starts = [], [], []
    acc = 0.0
    for k, line in enumerate(centerlines):
        line = np.asarray(line, dtype=np.float64)[:, :2]
        p = line[1:] if k > 0 else line
        starts.append(acc)
        seg = np.linalg.norm(np.diff(line, axis=0), axis=1).sum()
        acc += float(seg)
        pts.append(p)
        limits.append(speed_limits[k])
    raw = np.concatenate(pts)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(raw, axis=0), axis=1))])
    samples = np.arange(0.0, arc[-1] + 1e-9, spacing)
    points = np.stack([np.interp(samples, arc, raw[:, 0]), np.interp(samples, arc, raw[:, 1])], axis=1)
    points = _smooth_path(points, smoothing / spacing)
    if len(points) > 1:
        d = np.gradient(points, axis=0)
    else:
        d = raw[-1:] - raw[:1] if len(raw) > 1 else np.array([[1.0, 0.0]])
    tangents = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    theta = np.unwrap(np.arctan2(tangents[:, 1], tangents[:, 0]))
    w = max(1, round(curvature_window / spacing))
    pad = np.concatenate([np.full(w, theta[0]), theta, np.full(w, theta[-1])])
    kappa = np.abs(pad[2 * w :] - pad[: -2 * w]) / (2 * w * spacing)
    lane_starts = np.array(starts)
    which = np.clip(np.searchsorted(lane_starts, samples, side="right") - 1, 0, len(starts) - 1)
    limit = np.array(limits)[which] * speed_factor
    vmax = np.minimum(np.minimum(limit, speed_cap), np.sqrt(lateral_accel / np.maximum(kappa, 1e-6)))
    return RoutePath(
        lanes=tuple(int(i) for i in lanes),
        points=points,
        tangents=tangents,
        vmax=vmax,
        length=float(samples[-1]),
        lane_starts=lane_starts,
        spacing=float(spacing),
    )


def _arc_points(line: np.ndarray, arcs: np.ndarray) -> np.ndarray:
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
    a = np.clip(arcs, 0.0, cum[-1])
    return np.stack([np.interp(a, cum, line[:, 0]), np.interp(a, cum, line[:, 1])], axis=1)


def lane_change_line(source: np.ndarray, target: np.ndarray, start: float, blend: float, spacing: float = 0.5) -> np.ndarray:
    """A lane change as one polyline: ``source`` (n, 2+) up to its arc ``start`` [m], then a
    smoothstep blend over ``blend`` m of driving into ``target`` (m, 2+; a neighbouring lane
    of the same direction, matched by projecting the source's point at ``start`` on it), then
    the rest of ``target``. The part before ``start`` keeps the source's own vertices, so an
    agent's arc on a route built from the source is the same on one built from this line.

    Raises:
        ValueError: ``blend`` not positive, or ``start`` outside the source.
    """
    src, dst = np.asarray(source, dtype=np.float64)[:, :2], np.asarray(target, dtype=np.float64)[:, :2]
    seg = np.linalg.norm(np.diff(src, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if blend <= 0 or not 0.0 <= start <= cum[-1]:
        raise ValueError(f"lane_change_line: need blend > 0 and 0 <= start <= {cum[-1]:.2f} (the source's length); got blend={blend}, start={start}")
    p0 = _arc_points(src, np.array([start]))[0]
    a, b = dst[:-1], dst[1:]
    ab = b - a
    t = np.clip(((p0 - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    j = int(np.argmin(np.linalg.norm(a + t[:, None] * ab - p0, axis=1)))
    dcum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(ab, axis=1))])
    d0 = float(dcum[j] + t[j] * np.linalg.norm(ab[j]))
    u = np.arange(spacing, blend + 1e-9, spacing)
    w = (u / blend) ** 3 * (10.0 - 15.0 * (u / blend) + 6.0 * (u / blend) ** 2)  # quintic smoothstep: no curvature jumps
    mid = (1.0 - w)[:, None] * _arc_points(src, start + u) + w[:, None] * _arc_points(dst, d0 + u)
    rest = dst[dcum > d0 + blend + 1e-6]
    head = src[cum < start - 1e-6]
    return np.concatenate([head, p0[None], mid, rest])


@dataclasses.dataclass(frozen=True, eq=False)
class Routes:
    """The routes of A agents stacked into padded arrays (each padded with its last sample).

    Attributes:
        points: (A, M, 2) samples [m], ``spacing`` apart.
        tangents: (A, M, 2) unit tangents.
        vmax: (A, M) desired speeds [m/s].
        length: (A,) route lengths [m].
        lane_starts: (A, R) arc where each route lane starts [m] (inf: padding).
        lane_ids: (A, R) int64 lane indices (0: padding).
        spacing: Sample spacing [m].
    """

    points: np.ndarray
    tangents: np.ndarray
    vmax: np.ndarray
    length: np.ndarray
    lane_starts: np.ndarray
    lane_ids: np.ndarray
    spacing: float

    @classmethod
    def stack(cls, paths: Sequence[RoutePath]) -> Routes:
        """Stacks routes that share one spacing."""
        v = len(paths)
        spacing = paths[0].spacing if paths else 0.5
        m = max((r.points.shape[0] for r in paths), default=1)
        pts, tan, vmax = np.zeros((v, m, 2)), np.zeros((v, m, 2)), np.zeros((v, m))
        for i, r in enumerate(paths):
            k = r.points.shape[0]
            pts[i, :k], pts[i, k:] = r.points, r.points[-1]
            tan[i, :k], tan[i, k:] = r.tangents, r.tangents[-1]
            vmax[i, :k], vmax[i, k:] = r.vmax, r.vmax[-1]
        lane_starts = np.full((v, max((len(r.lanes) for r in paths), default=1)), np.inf)
        lane_ids = np.zeros(lane_starts.shape, dtype=np.int64)
        for i, r in enumerate(paths):
            lane_starts[i, : len(r.lanes)] = r.lane_starts
            lane_ids[i, : len(r.lanes)] = r.lanes
        return cls(pts, tan, vmax, np.array([r.length for r in paths]), lane_starts, lane_ids, spacing)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def with_route(self, row: int, path: RoutePath) -> Routes:
        """These routes with agent ``row``'s replaced by ``path`` (same spacing; the arrays grow
        when it is longer or has more lanes than the padding holds)."""
        if abs(path.spacing - self.spacing) > 1e-12:
            raise ValueError(f"Routes.with_route: spacing {path.spacing} differs from {self.spacing}")
        m = max(self.points.shape[1], path.points.shape[0])
        r = max(self.lane_starts.shape[1], len(path.lanes))

        def grown(a: np.ndarray, width: int, fill) -> np.ndarray:
            if a.shape[1] == width:
                return a.copy()
            pad = np.repeat(a[:, -1:], width - a.shape[1], axis=1) if fill is None else np.full((a.shape[0], width - a.shape[1], *a.shape[2:]), fill, a.dtype)
            return np.concatenate([a, pad], axis=1)

        pts, tan, vmax = grown(self.points, m, None), grown(self.tangents, m, None), grown(self.vmax, m, None)
        starts, ids = grown(self.lane_starts, r, np.inf), grown(self.lane_ids, r, 0)
        k = path.points.shape[0]
        pts[row, :k], pts[row, k:] = path.points, path.points[-1]
        tan[row, :k], tan[row, k:] = path.tangents, path.tangents[-1]
        vmax[row, :k], vmax[row, k:] = path.vmax, path.vmax[-1]
        starts[row], ids[row] = np.inf, 0
        starts[row, : len(path.lanes)], ids[row, : len(path.lanes)] = path.lane_starts, path.lanes
        length = self.length.copy()
        length[row] = path.length
        return Routes(pts, tan, vmax, length, starts, ids, self.spacing)

    def pose(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A, 2) positions [m] and (A, 2) unit tangents at arcs ``s`` (A,) [m] (clamped)."""
        m = self.points.shape[1]
        f = np.clip(s / self.spacing, 0.0, m - 1.000001)
        i0 = f.astype(np.int64)
        w = (f - i0)[:, None]
        rows = np.arange(len(self))
        pos = self.points[rows, i0] * (1 - w) + self.points[rows, i0 + 1] * w
        tan = self.tangents[rows, i0] * (1 - w) + self.tangents[rows, i0 + 1] * w
        tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9)
        return pos, tan

    def lane_at(self, s: np.ndarray) -> np.ndarray:
        """(A,) int64 lane index at arcs ``s`` (A,) [m] (the first lane before the start)."""
        which = (self.lane_starts <= s[:, None]).sum(axis=1) - 1
        return self.lane_ids[np.arange(len(self)), np.maximum(which, 0)]

    def lookahead(self, rows: np.ndarray, front: np.ndarray, count: int, step: float = 1.0):
        """Samples ahead of the front bumpers of agents ``rows`` (a,).

        Args:
            rows: (a,) agent indices.
            front: (a,) arcs of their front bumpers [m].
            count: Samples per agent, ``step`` apart from the front bumper.
            step: [m], a multiple of ``spacing`` (samples are the nearest route samples behind).

        Returns:
            (a, count, 2) points [m], (a, count, 2) unit tangents, (a, count) bool, samples
            before the route's end.
        """
        arcs = front[:, None] + np.arange(count, dtype=np.float64)[None] * step
        ok = arcs <= self.length[rows, None]
        idx = np.minimum((arcs / self.spacing).astype(np.int64), self.points.shape[1] - 1)
        return self.points[rows[:, None], idx], self.tangents[rows[:, None], idx], ok

    def desired_speed(
        self, s: np.ndarray, v: np.ndarray, length: np.ndarray, dt: float,
        behind: int = 6, ahead: int = 60, min_speed: float = 0.5,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Speed limits and curves, read every 1 m from ``behind`` m behind to ``ahead`` m ahead
        of the front bumpers.

        Args:
            s: (A,) arcs of the box centres [m].
            v: (A,) speeds [m/s].
            length: (A,) box lengths [m].
            dt: Step [s] (the distance covered in it is not left for braking).
            behind: Samples behind the front bumper (cover the body).
            ahead: Samples ahead of the front bumper.
            min_speed: Lower bound of the desired speed [m/s].

        Returns:
            (A,) desired speed v0 (the lowest ``vmax`` under the body) [m/s] and (A,) the
            deceleration needed to meet every slower ``vmax`` ahead [m/s^2] (+inf: none).
        """
        front = s + 0.5 * length
        offs = np.arange(-behind, ahead, dtype=np.float64)
        arcs = front[:, None] + offs[None]
        idx = np.clip((arcs / self.spacing).astype(np.int64), 0, self.points.shape[1] - 1)
        vmax = self.vmax[np.arange(len(self))[:, None], idx]
        body = (offs[None] <= 0) & (arcs >= s[:, None] - 0.5 * length[:, None])
        v0 = np.where(body, vmax, np.inf).min(axis=1)
        fwd = offs[None] > 0
        dist = np.maximum(offs[None] - v[:, None] * dt, 0.1)
        need = (vmax**2 - v[:, None] ** 2) / (2.0 * dist)
        need = np.where(fwd & (vmax < v[:, None]), need, np.inf).min(axis=1)
        return np.maximum(v0, min_speed), need


# ----------------------------------------------------------------------------------------------
# Reactive agents on a Scene's lanes.
# ----------------------------------------------------------------------------------------------


def _lane_xy(lanes: Lanes, i: int) -> np.ndarray:
    """(n, 2) centerline of lane ``i`` without repeated points [m]."""
    xy = lanes.centerlines[i][:, :2]
    keep = np.concatenate([[True], np.linalg.norm(np.diff(xy, axis=0), axis=1) > 1e-9])
    return xy[keep]


def locate_on_lanes(
    lanes: Lanes, xy: ArrayLike, heading: ArrayLike, max_heading: float = np.pi / 4, max_offset: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """The lane each pose drives on: the nearest centerline segment heading the same way.

    Args:
        lanes: The map's lanes.
        xy: (N, 2) positions [m].
        heading: (N,) headings [rad].
        max_heading: Largest heading difference to a lane [rad].
        max_offset: Largest distance beyond half the lane's width [m].

    Returns:
        (N,) int64 lane index (-1: none) and (N,) arc along that lane's centerline [m].
    """
    q = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    h = np.asarray(heading, dtype=np.float64).reshape(-1)
    lane = np.full(len(q), -1, dtype=np.int64)
    arc = np.zeros(len(q))
    segs = []
    for i in range(len(lanes)):
        p = _lane_xy(lanes, i)
        if len(p) < 2:
            continue
        seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
        segs.append((p[:-1], p[1:], np.full(len(seg), i), np.concatenate([[0.0], np.cumsum(seg)[:-1]])))
    if not segs or not len(q):
        return lane, arc
    a, b, which, start = (np.concatenate(x) for x in zip(*segs))
    ab = b - a
    ab2 = np.einsum("sd,sd->s", ab, ab)
    seg_heading = np.arctan2(ab[:, 1], ab[:, 0])
    half_width = 0.5 * np.asarray(lanes.width, dtype=np.float64)[which]
    for lo in range(0, len(q), 64):  # Chunks bound the (n, S) temporaries.
        qq, hh = q[lo : lo + 64], h[lo : lo + 64]
        t = np.clip(np.einsum("nsd,sd->ns", qq[:, None] - a[None], ab) / ab2, 0.0, 1.0)
        dist = np.linalg.norm(qq[:, None] - (a[None] + t[..., None] * ab[None]), axis=-1)
        ok = (np.abs(wrap_angle(hh[:, None] - seg_heading[None])) <= max_heading) & (dist <= half_width + max_offset)
        dist = np.where(ok, dist, np.inf)
        best = dist.argmin(axis=1)
        found = np.isfinite(dist[np.arange(len(qq)), best])
        lane[lo : lo + 64] = np.where(found, which[best], -1)
        arc[lo : lo + 64] = np.where(found, start[best] + t[np.arange(len(qq)), best] * np.sqrt(ab2[best]), 0.0)
    return lane, arc


def lane_route(
    lanes: Lanes, start: int, min_length: float, start_arc: float = 0.0, rng: np.random.Generator | None = None
) -> list[int]:
    """Lane indices from ``start`` along successors until ``min_length`` [m] past ``start_arc``
    (or a lane without successors in the map).

    Args:
        lanes: The map's lanes.
        start: Index of the first lane.
        min_length: Route length wanted beyond ``start_arc`` [m].
        start_arc: Position on the first lane [m].
        rng: Picks among successors uniformly; None picks the straightest one.

    Returns:
        Lane indices in driving order.
    """
    route = [int(start)]
    total = float(polyline_length(_lane_xy(lanes, start))) - start_arc
    while total < min_length and len(route) < 10_000:
        succ = []
        for lane_id in lanes.successors[route[-1]]:
            try:
                i = lanes.index_of(lane_id)
            except KeyError:  # A successor outside the map.
                continue
            if len(_lane_xy(lanes, i)) > 1:
                succ.append(i)
        if not succ:
            break
        if rng is not None:
            nxt = succ[int(rng.integers(len(succ)))]
        else:
            end = _lane_xy(lanes, route[-1])
            h_end = np.arctan2(*(end[-1] - end[-2])[::-1]) if len(end) > 1 else 0.0
            turn = [abs(float(wrap_angle(np.arctan2(*(_lane_xy(lanes, i)[1] - _lane_xy(lanes, i)[0])[::-1]) - h_end))) for i in succ]
            nxt = succ[int(np.argmin(turn))]
        route.append(nxt)
        total += float(polyline_length(_lane_xy(lanes, nxt)))
    return route


@dataclasses.dataclass(frozen=True, eq=False)
class IDMAgents:
    """Reactive background vehicles: IDM along lane routes, braking for each other and for
    given obstacles (the ego, non-reactive agents). No signals or stop signs (pass a red light
    as a static box) and no lane changes of their own: a caller changes an agent's lane by
    giving it a route through :func:`lane_change_line` (:meth:`Routes.with_route`). An agent whose route runs out (the map's edge, or its
    ``route_length``) leaves: it becomes inactive and its box no longer counts.

    Attributes:
        routes: The agents' routes (``lane_ids`` index ``scene.map.lanes``).
        s: (A,) arc of each box centre along its route [m].
        v: (A,) speeds [m/s].
        length: (A,) box lengths [m].
        width: (A,) box widths [m].
        params: IDM parameters (floats or (A,) arrays).
        active: (A,) bool, still on its route.
        track_index: (A,) int64 row of the source scene's tracks (-1: none).
        lookahead: Samples, 1 m apart from the front bumper, searched for a leader.
        margin: Clearance kept to other boxes beside the path [m].
    """

    routes: Routes
    s: np.ndarray
    v: np.ndarray
    length: np.ndarray
    width: np.ndarray
    params: IDMParameters = IDMParameters()
    active: np.ndarray | None = None
    track_index: np.ndarray | None = None
    lookahead: int = 60
    margin: float = 0.25

    def __post_init__(self) -> None:
        n = len(self.routes)
        for name in ("s", "v", "length", "width"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"IDMAgents.{name}: expected shape ({n},), got {arr.shape}")
            object.__setattr__(self, name, arr)
        active = np.ones(n, bool) if self.active is None else np.asarray(self.active, dtype=bool)
        track = np.full(n, -1, np.int64) if self.track_index is None else np.asarray(self.track_index, dtype=np.int64)
        object.__setattr__(self, "active", active)
        object.__setattr__(self, "track_index", track)

    def __len__(self) -> int:
        return len(self.routes)

    @classmethod
    def from_scene(
        cls,
        scene: Scene,
        step: int | None = None,
        agents: ArrayLike | None = None,
        params: IDMParameters | None = None,
        *,
        route_length: float = 300.0,
        default_speed_limit: float = 13.4,
        lateral_accel: float = 2.5,
        rng: np.random.Generator | None = None,
    ) -> IDMAgents:
        """Puts a scene's vehicles on its lanes at one step.

        Args:
            scene: The scene (any source).
            step: Time step; None: ``scene.current_index``.
            agents: Rows of ``scene.tracks`` to drive; None: every vehicle valid at ``step``
                except the ego. Agents on no lane (heading more than 45 degrees off, or farther
                than 0.5 m beyond the lane's half width) are left out (``track_index`` says
                which rows were taken).
            params: IDM parameters (floats, or arrays over the agents taken); None: defaults.
            route_length: Route wanted ahead of each agent [m].
            default_speed_limit: [m/s] on lanes without a speed limit.
            lateral_accel: Curve speed limit [m/s^2].
            rng: Picks routes at forks uniformly; None: the straightest successor.

        Returns:
            The agents at ``step``, speeds along their headings (>= 0).
        """
        t = scene.current_index if step is None else int(step)
        tr, lanes = scene.tracks, scene.map.lanes
        if agents is None:
            rows = np.flatnonzero(tr.valid[:, t] & (tr.types == AgentType.VEHICLE))
            rows = rows[rows != scene.ego_index]
        else:
            rows = np.asarray(agents, dtype=np.int64).reshape(-1)
        xy = np.stack([tr.x[rows, t], tr.y[rows, t]], -1)
        lane, arc = locate_on_lanes(lanes, xy, tr.heading[rows, t])
        given = lanes.speed_limit.astype(np.float64)
        limits = np.where(lanes.has_speed_limit & (given > 0), given, default_speed_limit)
        paths, taken, s0 = [], [], []
        for r, li, a in zip(rows, lane, arc):
            if li < 0:
                continue
            route = lane_route(lanes, int(li), route_length, float(a), rng)
            path = route_path(
                [_lane_xy(lanes, i) for i in route], [float(limits[i]) for i in route], route,
                lateral_accel=lateral_accel,
            )  # fmt: skip
            if path.length < 1.0:
                continue
            paths.append(path)
            taken.append(int(r))
            s0.append(float(a))
        taken = np.array(taken, dtype=np.int64)
        h = tr.heading[taken, t]
        v = np.maximum(tr.vx[taken, t] * np.cos(h) + tr.vy[taken, t] * np.sin(h), 0.0)
        return cls(
            routes=Routes.stack(paths),
            s=np.array(s0),
            v=v,
            length=tr.length[taken, t].astype(np.float64),
            width=tr.width[taken, t].astype(np.float64),
            params=IDMParameters() if params is None else params,
            track_index=taken,
        )

    def poses(self) -> np.ndarray:
        """(A, 3) box centre x, y [m] and heading [rad] (inactive agents: where they left)."""
        pos, tan = self.routes.pose(self.s)
        return np.concatenate([pos, np.arctan2(tan[:, 1], tan[:, 0])[:, None]], axis=1)

    def lanes(self) -> np.ndarray:
        """(A,) int64 lane index (into ``scene.map.lanes``) under each box centre."""
        return self.routes.lane_at(self.s)

    def boxes(self) -> Boxes:
        """(A,) the agents' boxes, moving along their routes (inactive ones invalid)."""
        pos, tan = self.routes.pose(self.s)
        return Boxes(pos, tan, 0.5 * self.length, 0.5 * self.width, speed=np.where(self.active, self.v, 0.0), valid=self.active)

    def step(self, dt: float, obstacles: Boxes | None = None, stop_gap: np.ndarray | None = None) -> IDMAgents:
        """The agents ``dt`` seconds later.

        Args:
            dt: Step [s].
            obstacles: (N,) further boxes to brake for (e.g. the ego and log-replayed agents).
            stop_gap: (A,) gaps from the front bumpers to a point to stop at (a red light's
                stop line) [m], inf: none; None: no stop points.

        Returns:
            The new state (routes and parameters shared).
        """
        n = len(self)
        own = self.boxes()
        boxes = own if obstacles is None else Boxes.concatenate([own, obstacles])
        gap = np.full(n, np.inf)
        lead_v = np.zeros(n)
        act = np.flatnonzero(self.active)
        if act.size:
            front = self.s[act] + 0.5 * self.length[act]
            pts, tan, ok = self.routes.lookahead(act, front, self.lookahead)
            hits = path_hits(pts, tan, boxes, 0.5 * self.width[act] + self.margin, sample_valid=ok, exclude=act)
            lead = hits.yield_mutual().nearest(act.size)
            has = lead.sample >= 0
            gap[act[has]] = lead.sample[has].astype(np.float64)
            lead_v[act[has]] = lead.speed[has]
        v0, need = self.routes.desired_speed(self.s, self.v, self.length, dt, ahead=self.lookahead)
        acc = idm_acceleration(self.params, self.v, v0, gap, lead_v, stop_gap=stop_gap, ceiling=need)
        s_new, v_new = advance(self.s, self.v, acc, dt)
        s_new = np.where(self.active, s_new, self.s)
        v_new = np.where(self.active, v_new, 0.0)
        active = self.active & (s_new + 0.5 * self.length < self.routes.length - 0.5)
        return dataclasses.replace(self, s=s_new, v=v_new, active=active)
