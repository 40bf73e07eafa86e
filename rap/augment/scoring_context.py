"""A sample's scoring context, built from its scene and plan: what rap's PDM scorer needs to
score any proposal of the sample's acting agent, stored with the sample.

The record, its bytes and the scoring live in :mod:`rap.dataset.scoring` (the dataset reader
decodes it, and ``rap.dataset`` cannot import ``rap.augment``); they are re-exported here:
:data:`SCORING_FORMAT`, :class:`ScoringContext` (``to_scoring_scene()``, ``score()``),
:func:`encode`, :func:`decode`, :func:`score_batch`.

How a context is derived (:class:`ScoringContextBuilder`), with the scene → scorer-input rules of
evaluation (:mod:`rap.eval.navsim_scene`) applied to the sample's **acting agent**
(``plan.agent_row``: the logged ego of an ``ego`` sample, another vehicle of a ``cross_agent``
sample, either of them for a ``recovery`` sample) in its frame at ``plan.viewer_pose`` (the
perturbed pose of a recovery sample):

* ego state: ``navsim_scene.ego_state(row=...)`` (velocity, acceleration, yaw rate, the tyre
  angle that turns at that rate); a recovery sample's velocity and acceleration are its
  perturbed status (``plan.ego_status``) and its yaw rate the logged one times the speed scale
  (the logged path's curvature).
* objects: ``navsim_scene.object_tracks(row=...)``: every track but the acting one (the logged
  ego is an object of a cross-agent sample), 51 steps at 0.1 s (PDMS v1's TTC looks 0.9 s past
  the 4 s rollout), those that come within ``radius + 10 m`` of the crop centre at a valid step.
* crop: a 4 s plan stays within ``crop_radius(speed) = 40 m + 4 s * speed``
  (:data:`REACH_BASE_M`, :data:`REACH_TIME_S`; 32 m of it for accelerating at 4 m/s²). The crop
  of an agent at a step is made once around its logged pose, with the radius of 1.3 times its
  logged speed plus 1.5 m (:data:`RECOVERY_SPEED_FACTOR`, :data:`RECOVERY_OFFSET_M`), and shared
  by its logged sample and its recovery samples (a perturbed start that it does not cover gets a
  crop of its own); ``ScoringContext.radius_m`` is what remains of it around the sample's pose.
  Drivable area and intersections are clipped to the square of half-side ``radius + 10 m``
  (:data:`MAP_MARGIN_M`); lanes keep their centerline from the first to the last segment within
  ``radius + 10 m``; the route centerline the points within ``2 * radius + 10 m`` (every point of
  the line a reachable point projects onto). Lane centerlines and the area outlines drop the
  vertices within 2 mm of the line through their neighbours (:data:`MAP_SIMPLIFY_M`, Douglas-
  Peucker): a 2 mm change of the geometry, 3 to 4 times fewer vertices on logged maps.
* route: ``navsim_scene.route(row=...)`` — the lanes of the acting agent's logged path (the
  source's known route for the logged ego only), on-route ids restricted to the kept lanes.
* red lights: ``navsim_scene.red_light_lanes``, on-route kept lanes only; speed limit: the first
  on-route lane (map order) with a limit whose polygon holds the acting pose.
* EP reference: the sample's target, resampled every 0.1 s up to 4 s (no reference planner
  runs: EP measures progress against the sample's own target). No history, no human filter,
  no previous plan.

Per-scene work (lane polygons, the lanes under each agent per step, routes and crops per
(agent, step), object windows and red lights per step, the simplified map) is done once per
:class:`ScoringContextBuilder`, i.e. once per scene in ``rap generate``; a sample only carries
its crop into its own frame.

A context that cannot be built is ``None`` with a reason (:data:`REJECT_REASONS`), counted by
``rap generate`` under ``rejected`` as ``scoring_context_<reason>``; the sample is still written,
without a scoring member.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import shapely
import shapely.errors

from rap import geometry
from rap.dataset.sample import SampleKind, SamplePlan
from rap.dataset.scoring import (
    ANGLE_STEP_RAD,
    MAX_ELEMENTS,
    MAX_OBJECTS,
    MAX_PAYLOAD_BYTES,
    MAX_POINTS,
    POSITION_STEP_M,
    SCORE_KEYS,
    SCORING_FORMAT,
    SPEED_STEP_MPS,
    PolygonRings,
    ScoringContext,
    ScoringFormatError,
    _polygon_parts,
    decode,
    encode,
    score_batch,
    ticks,
)
from rap.eval import navsim_scene as ns
from rap.metrics.pdm_inputs import EgoState
from rap.scene import Scene

__all__ = [
    "SCORING_FORMAT",
    "SCORE_KEYS",
    "REACH_BASE_M",
    "REACH_TIME_S",
    "MAP_MARGIN_M",
    "MAP_SIMPLIFY_M",
    "RECOVERY_SPEED_FACTOR",
    "RECOVERY_OFFSET_M",
    "REJECT_REASONS",
    "ScoringContext",
    "ScoringFormatError",
    "ScoringContextBuilder",
    "scoring_context",
    "crop_radius",
    "encode",
    "decode",
    "score_batch",
]

REACH_BASE_M = 40.0  # [m] crop radius at standstill
REACH_TIME_S = 4.0  # [s] plus this long at the current speed
MAP_MARGIN_M = 10.0  # [m] map and objects kept beyond the radius (box sizes, lane widths)
MAP_SIMPLIFY_M = 0.002  # [m] lane centerlines and area outlines drop vertices this close to the line through their neighbours
REJECT_REASONS = ("invalid_agent", "too_large", "invalid")
# The crop around an agent's logged pose at a step is shared by its recovery samples: it is made
# for RECOVERY_SPEED_FACTOR times the logged speed and RECOVERY_OFFSET_M of offset (both recovery
# presets stay within: speed +-30 %, x, y +-1 m); a start outside gets a crop of its own.
RECOVERY_SPEED_FACTOR = 1.3
RECOVERY_OFFSET_M = 1.5  # [m]


def crop_radius(speed_mps: float) -> float:
    """Crop radius [m] of a context whose acting agent drives at ``speed_mps``."""
    return REACH_BASE_M + REACH_TIME_S * max(0.0, float(speed_mps))


class ScoringContextBuilder:
    """Builds the scoring contexts of one scene's samples, sharing the per-scene work.

    Args:
        scene: The scene the plans come from (not re-centred: ``plan.agent_row`` is a row of
            its tracks).
        num_steps: Object steps at 0.1 s (51: NAVSIM v1's TTC horizon; >= 41).
        keep_all_steps: keep the per-step work (crops, routes, object windows) of every step
            seen, for plans that come in any order (online training); by default only the
            current step's is kept, as plans come step by step when generating.
    """

    def __init__(self, scene: Scene, num_steps: int = ns.OBJECT_HORIZON_STEPS, keep_all_steps: bool = False) -> None:
        if num_steps < 41:
            raise ValueError(f"ScoringContextBuilder: num_steps must be >= 41, got {num_steps}")
        self.scene = scene
        self.num_steps = int(num_steps)
        self.keep_all_steps = bool(keep_all_steps)
        self._polys: dict[int, shapely.Polygon] | None = None
        self._lookup: ns.LaneLookup | None = None
        self._routes: dict[tuple[int, int], tuple[list[int], np.ndarray]] = {}
        self._red: dict[int, tuple[frozenset, ...]] = {}
        self._windows: dict[int, object] = {}
        self._crops: dict[tuple[int, int], tuple[_Crop, EgoState]] = {}
        self._intersections: object = None
        self._drivable_area: object = None
        self._segments: tuple | None = None
        self._step: int | None = None  # the step the per-step caches hold

    # -- per-scene caches ---------------------------------------------------------------------
    @property
    def polys(self) -> dict[int, shapely.Polygon]:
        """``navsim_scene.lane_polygons(scene)`` (world frame)."""
        if self._polys is None:
            self._polys = ns.lane_polygons(self.scene)
        return self._polys

    def _route(self, row: int, step: int) -> tuple[list[int], np.ndarray]:
        """(on-route lane ids in map order, world centerline) of the agent's logged path."""
        key = (row, step)
        got = self._routes.get(key)
        if got is None:
            if self._lookup is None:
                self._lookup = ns.LaneLookup(self.scene, self.polys)
            ids, line = ns.route(self.scene, step, self.polys, row=row, lookup=self._lookup)
            lanes = self.scene.map.lanes
            got = (sorted((int(i) for i in ids), key=lanes.index_of), line)
            self._routes[key] = got
        return got

    def _window(self, step: int):
        """Every agent over the object steps from ``step`` (``navsim_scene.object_tracks``,
        the acting agent included: each sample leaves out its own)."""
        got = self._windows.get(step)
        if got is None:
            got = ns.object_tracks(self.scene, step, self.num_steps, row=-1)
            self._windows[step] = got
        return got

    def _red_lights(self, step: int) -> tuple[frozenset, ...]:
        got = self._red.get(step)
        if got is None:
            got = ns.red_light_lanes(self.scene, step, self.num_steps)
            self._red[step] = got
        return got

    def _intersection_union(self) -> object:
        """The union of the intersection lanes' polygons (as evaluation), simplified."""
        if self._intersections is None:
            lanes = self.scene.map.lanes
            inter = [self.polys[int(i)] for i, interp in zip(lanes.ids, lanes.interpolating) if interp and int(i) in self.polys]
            union = shapely.union_all(inter) if inter else shapely.Polygon()
            self._intersections = shapely.simplify(union, MAP_SIMPLIFY_M, preserve_topology=True)
        return self._intersections

    def _drivable(self) -> object:
        """The map's drivable area, simplified."""
        if self._drivable_area is None:
            self._drivable_area = shapely.simplify(self.scene.map.drivable_polygon, MAP_SIMPLIFY_M, preserve_topology=True)
        return self._drivable_area

    def _lane_segments(self) -> tuple:
        """Per scene: the kept lanes' ids, widths, concatenated centerline points (P, 2), the
        lane of each segment (-1 across lanes), segment midpoints and half lengths."""
        if self._segments is None:
            lanes = self.scene.map.lanes
            ids = np.array(list(self.polys), dtype=np.int64)
            index = np.array([lanes.index_of(int(i)) for i in ids], dtype=np.int64)
            chosen = lanes.centerlines.select(index)
            lines = shapely.linestrings(chosen.points[:, :2], indices=chosen.element_index) if index.size else np.zeros(0, dtype=object)
            simple = shapely.simplify(lines, MAP_SIMPLIFY_M, preserve_topology=False)
            pts, owner = shapely.get_coordinates(simple, return_index=True)
            seg_owner = np.where(owner[:-1] == owner[1:], owner[:-1], -1) if len(pts) > 1 else np.zeros(0, np.int64)
            a, b = pts[:-1], pts[1:]
            mid = 0.5 * (a + b)
            half = 0.5 * np.hypot(*(b - a).T) if len(pts) > 1 else np.zeros(0)
            widths = lanes.width[index].astype(np.float32)
            self._segments = (ids, widths, pts, seg_owner, mid, half)
        return self._segments

    def _crop(self, row: int, step: int, cx: float, cy: float, radius: float) -> _Crop:
        """What a context needs around ``(cx, cy)``, world frame: complete within ``radius``
        (objects and map within ``radius + MAP_MARGIN_M``)."""
        scene = self.scene
        reach = radius + MAP_MARGIN_M
        # Objects: every track but the acting one that comes within reach at a valid step.
        win = self._window(step)
        dx, dy = win.x - cx, win.y - cy
        keep = (win.ids != int(scene.tracks.ids[row])) & (win.valid & (dx * dx + dy * dy < reach * reach)).any(axis=1)
        if int(keep.sum()) > MAX_OBJECTS:
            raise _TooLarge
        valid = win.valid[keep]
        n = valid.shape[0]
        first = np.argmax(valid, axis=1)
        rows = np.arange(n)
        # Lanes: centerline pieces between the first and last segment within reach.
        ids, widths, pts, seg_owner, mid, half = self._lane_segments()
        near = (seg_owner >= 0) & (np.hypot(mid[:, 0] - cx, mid[:, 1] - cy) - half < reach)
        idx = np.flatnonzero(near)
        if idx.size:
            own = seg_owner[idx]
            new_lane = np.empty(idx.size, dtype=bool)
            new_lane[0] = True
            np.not_equal(own[1:], own[:-1], out=new_lane[1:])
            heads = np.flatnonzero(new_lane)  # first near segment of each lane
            tails = np.append(heads[1:] - 1, idx.size - 1)  # its last near segment
            firsts, lasts, lane_k = idx[heads], idx[tails], own[heads]
            sizes = lasts - firsts + 2
            starts = np.cumsum(sizes) - sizes
            gather = np.repeat(firsts - starts, sizes) + np.arange(int(sizes.sum()))
            lane_ids, lane_widths, lane_pts = ids[lane_k], widths[lane_k], pts[gather]
        else:
            sizes = np.zeros(0, np.int64)
            lane_ids, lane_widths, lane_pts = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 2))
        if lane_pts.shape[0] > MAX_POINTS or lane_ids.shape[0] > MAX_ELEMENTS:
            raise _TooLarge
        kept = set(lane_ids.tolist())
        # Route of the acting agent's logged path; its centerline within twice the radius.
        route_ids, line = self._route(row, step)
        inside = np.flatnonzero(np.hypot(line[:, 0] - cx, line[:, 1] - cy) < 2.0 * radius + MAP_MARGIN_M)
        if inside.size >= 2:
            line = line[inside[0] : inside[-1] + 1]
        on_route = [i for i in route_ids if i in kept]
        lanes = scene.map.lanes
        limited = [(i, lanes.index_of(i)) for i in route_ids]
        speed_limits = tuple((self.polys[i], float(lanes.speed_limit[k])) for i, k in limited if lanes.has_speed_limit[k])
        center_limit = next((value for poly, value in speed_limits if shapely.contains_xy(poly, cx, cy)), None)
        # Red lights on kept on-route lanes, per object step.
        route_set = set(on_route)
        memo: dict[frozenset, list[int]] = {}
        red = [memo[r] if r in memo else memo.setdefault(r, sorted(i for i in r if i in route_set)) for r in self._red_lights(step)]
        # Map polygons clipped to the square around the centre.
        box = (cx - reach, cy - reach, cx + reach, cy + reach)
        drivable = _rings_world(shapely.clip_by_rect(self._drivable(), *box))
        union = self._intersection_union()
        inter = _rings_world(shapely.clip_by_rect(union, *box) if not union.is_empty else None)
        if max(drivable[0].shape[0], inter[0].shape[0]) > MAX_POINTS:
            raise _TooLarge
        # Every point and heading to carry into a sample's frame, in one array each.
        point_sets = [np.stack([win.x[keep].ravel(), win.y[keep].ravel()], axis=-1), lane_pts, line[:, :2], drivable[0], inter[0]]
        return _Crop.frozen(
            cx=cx, cy=cy, radius=radius,
            points=np.concatenate(point_sets), point_ends=np.cumsum([len(a) for a in point_sets]),
            headings=np.concatenate([win.heading[keep].ravel(), line[:, 2]]),
            object_ids=win.ids[keep], object_kinds=win.kinds[keep].astype(np.int64), object_valid=valid,
            object_size=np.stack([ticks(win.length[keep], POSITION_STEP_M), ticks(win.width[keep], POSITION_STEP_M)]),
            object_velocity=np.stack([win.vx[keep][rows, first], win.vy[keep][rows, first]]),
            lane_ids=lane_ids, lane_widths=lane_widths, lane_sizes=sizes,
            speed_limits=speed_limits, center_speed_limit=center_limit, on_route=np.array(sorted(on_route), dtype=np.int64),
            red_ids=np.array([i for r in red for i in r], dtype=np.int64), red_sizes=np.array([len(r) for r in red], dtype=np.int64),
            drivable=drivable[1:], intersections=inter[1:],
        )  # fmt: skip

    def _logged(self, row: int, step: int) -> tuple[_Crop, EgoState]:
        """The crop around the agent's logged pose at ``step`` (generous enough for its
        recovery samples, see ``RECOVERY_SPEED_FACTOR``) and its logged state, kept."""
        key = (row, step)
        got = self._crops.get(key)
        if got is None:
            x, y, _, _ = self.scene.agent_pose(row, step)
            state = ns.ego_state(self.scene, step, row=row)
            speed = float(np.hypot(state.vx, state.vy))
            radius = crop_radius(RECOVERY_SPEED_FACTOR * speed) + RECOVERY_OFFSET_M
            got = (self._crop(row, step, float(x), float(y), radius), state)
            self._crops[key] = got
        return got

    # -- one sample ---------------------------------------------------------------------------
    def build(self, plan: SamplePlan) -> tuple[ScoringContext | None, str | None]:
        """The context of one sample, or ``(None, reason)`` (:data:`REJECT_REASONS`)."""
        scene, tr = self.scene, self.scene.tracks
        row, step = int(plan.agent_row), int(plan.step)
        if not (0 <= row < tr.num_agents and 0 <= step < scene.num_steps and tr.valid[row, step]):
            return None, "invalid_agent"
        if step != self._step and not self.keep_all_steps:  # plans come step by step: drop what only other steps use
            for cache in (self._crops, self._routes):
                for key in [k for k in cache if k[1] != step]:
                    del cache[key]
            for cache in (self._windows, self._red):
                for key in [k for k in cache if k != step]:
                    del cache[key]
            self._step = step
        try:
            ctx = self._build(plan, row, step)
            arrays = ctx.to_arrays()  # encodable (kept: encode reuses it) and not too large to read
            if sum(a.nbytes for a in arrays.values()) > MAX_PAYLOAD_BYTES - (1 << 16):
                raise _TooLarge
            return ctx, None
        except _TooLarge:
            return None, "too_large"
        except (ValueError, shapely.errors.ShapelyError):  # data the scorer's inputs refuse (named in REJECT_REASONS)
            return None, "invalid"

    def _build(self, plan: SamplePlan, row: int, step: int) -> ScoringContext:
        pose = np.asarray(plan.viewer_pose, dtype=np.float64)
        ox, oy, oh = float(pose[0]), float(pose[1]), float(pose[3])
        status = plan.ego_status
        crop, logged = self._logged(row, step)
        offset = math.hypot(ox - crop.cx, oy - crop.cy)
        if crop_radius(status.speed) + offset > crop.radius:  # a start the shared crop does not cover
            crop, offset = self._crop(row, step, ox, oy, crop_radius(status.speed)), 0.0

        # Ego: the acting agent's (perturbed) state at the origin of its frame.
        if plan.kind == SampleKind.RECOVERY and plan.perturbation is not None:
            vx, vy = (float(v) for v in status.velocity)
            ax, ay = (float(v) for v in status.acceleration)
            omega = float(logged.yaw_rate) * float(plan.perturbation.speed_scale)
            ego = EgoState(x=0.0, y=0.0, heading=0.0, vx=vx, vy=vy, ax=ax, ay=ay, steering_angle=ns.steering_for(omega, vx), yaw_rate=omega)
        else:
            ego = dataclasses.replace(logged, x=0.0, y=0.0, heading=0.0, time_s=0.0)

        # Every point and heading of the crop into the acting frame, on the storage grid.
        c, s = math.cos(oh), math.sin(oh)
        dx, dy = crop.points[:, 0] - ox, crop.points[:, 1] - oy
        xy_all = _readonly(ticks(np.stack([c * dx + s * dy, c * dy - s * dx]), POSITION_STEP_M))  # (2, P)
        hs = ticks(geometry.wrap_angle(crop.headings - oh), ANGLE_STEP_RAD)
        e = [0, *crop.point_ends.tolist()]
        xy = lambda i: xy_all[:, e[i] : e[i + 1]]  # noqa: E731  (views)
        valid = crop.object_valid
        n, num_steps = valid.shape
        ns_ = n * num_steps
        vel = crop.object_velocity

        # Speed limit: the first on-route lane (map order) with one whose polygon holds the pose.
        if offset == 0.0:  # at the crop's centre (a logged pose, or a crop of its own)
            limit = crop.center_speed_limit
        else:
            limit = next((value for poly, value in crop.speed_limits if shapely.contains_xy(poly, ox, oy)), None)

        target = np.array(plan.target.poses, dtype=np.float64)
        if target.shape != (plan.target.sampling.num_poses, 3) or not np.all(np.isfinite(target)):
            raise ValueError(f"ScoringContext.target: expected finite ({plan.target.sampling.num_poses}, 3) poses, got {target.shape}")
        return ScoringContext._unchecked(  # canonical by construction (the tests rebuild them checked)
            ego=ego,
            sampling=plan.target.sampling,
            target=_readonly(target),
            radius_m=crop.radius - offset,
            speed_limit=limit,
            object_ids=crop.object_ids,
            object_kinds=crop.object_kinds,
            object_valid=valid,
            object_size=crop.object_size,
            object_velocity=_readonly(ticks(np.stack([c * vel[0] + s * vel[1], c * vel[1] - s * vel[0]]), SPEED_STEP_MPS)),
            object_x=_readonly(np.where(valid, xy_all[0, :ns_].reshape(n, num_steps), 0)),
            object_y=_readonly(np.where(valid, xy_all[1, :ns_].reshape(n, num_steps), 0)),
            object_heading=_readonly(np.where(valid, hs[:ns_].reshape(n, num_steps), 0)),
            lane_ids=crop.lane_ids,
            lane_widths=crop.lane_widths,
            lane_sizes=crop.lane_sizes,
            lane_xy=xy(1),
            route_lane_ids=crop.on_route,
            centerline=_readonly(np.concatenate([xy(2), hs[None, ns_:]])),
            red_light_lane_ids=crop.red_ids,
            red_light_sizes=crop.red_sizes,
            drivable=PolygonRings._unchecked(xy(3), *crop.drivable),
            intersections=PolygonRings._unchecked(xy(4), *crop.intersections),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class _Crop:
    """The world-frame pieces of the contexts around one centre (see ``_crop``): ``points``
    holds, in this order, the objects' box centres (N * S), lane points, route centerline,
    drivable-area and intersection ring points (each ending at ``point_ends``); ``headings`` the
    objects' headings (N * S), then the centerline's."""

    cx: float
    cy: float
    radius: float
    points: np.ndarray
    point_ends: np.ndarray
    headings: np.ndarray
    object_ids: np.ndarray
    object_kinds: np.ndarray
    object_valid: np.ndarray
    object_size: np.ndarray
    object_velocity: np.ndarray
    lane_ids: np.ndarray
    lane_widths: np.ndarray
    lane_sizes: np.ndarray
    speed_limits: tuple  # (lane polygon, limit [m/s]) of the on-route lanes with one, map order
    center_speed_limit: float | None  # the speed limit at (cx, cy)
    on_route: np.ndarray
    red_ids: np.ndarray
    red_sizes: np.ndarray
    drivable: tuple
    intersections: tuple

    @classmethod
    def frozen(cls, **fields) -> _Crop:
        """A crop whose arrays are read-only (contexts then share them without copies)."""
        for value in fields.values():
            for arr in value if isinstance(value, tuple) else (value,):
                if isinstance(arr, np.ndarray):
                    arr.flags.writeable = False
        return cls(**fields)


def _readonly(arr: np.ndarray) -> np.ndarray:
    """``arr`` (a fresh array) made read-only: the context keeps it without a copy."""
    arr.flags.writeable = False
    return arr


def _rings_world(geom: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (P, 2), ring sizes, rings per polygon) of the polygonal parts of ``geom``."""
    polys = np.array(_polygon_parts(geom), dtype=object)
    if not polys.size:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    rings = shapely.get_rings(polys)
    return shapely.get_coordinates(rings), shapely.get_num_coordinates(rings).astype(np.int64), shapely.get_num_interior_rings(polys).astype(np.int64) + 1


class _TooLarge(Exception):
    pass



_last: ScoringContextBuilder | None = None  # the builder of the last scene asked about


def _builder_for(scene: Scene) -> ScoringContextBuilder:
    """The builder of ``scene``: the one kept for the last scene asked about, or a new one (which
    is then kept, with its scene, until another scene is asked about)."""
    global _last
    if _last is None or _last.scene is not scene:
        _last = ScoringContextBuilder(scene)
    return _last


def scoring_context(scene: Scene, plan: SamplePlan, *, builder: ScoringContextBuilder | None = None, rejects: collections.Counter | None = None) -> ScoringContext | None:
    """The scoring context of one sample, or None when it cannot be built.

    Args:
        scene: The scene the plan comes from.
        plan: The sample plan (its acting agent, step, pose, status and target).
        builder: A :class:`ScoringContextBuilder` of ``scene`` to share per-scene work (default:
            one kept for the last scene asked about).
        rejects: Counter that gets ``scoring_context_<reason>`` += 1 when it cannot be built.
    """
    if builder is None or builder.scene is not scene:
        builder = _builder_for(scene)
    ctx, reason = builder.build(plan)
    if reason is not None and rejects is not None:
        rejects[f"scoring_context_{reason}"] += 1
    return ctx
