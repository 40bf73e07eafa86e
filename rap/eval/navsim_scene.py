"""A rap :class:`~rap.scene.Scene` at one step → the PDM scorer's plain inputs.

How the NAVSIM notions are derived from a scene model that has lanes but no roadblocks:

* Scoring steps: every 1 s with ≥ 1.5 s of history and 4 s of logged future (NAVSIM's window).
* Objects: every other agent over the next 5 s (51 steps at 0.1 s; PDMS v1's time-to-collision
  looks 0.9 s past the 4 s rollout), non-reactive log replay. Vehicles, pedestrians and cyclists
  keep their class; WOMD's "other"/"unset" objects count as static objects (NC 0.5).
* Drivable area: the map's drivable area (derived for Waymo maps, see ``rap.sources.derived``).
* Lane polygons: each non-bike lane centerline buffered by half its width (flat caps);
  intersections: the union of the polygons of lanes inside intersections (``interpolating``).
* Route: ``Scene.ego_route`` when the source knows it (synthetic world), else the lanes the
  logged ego's rear axle passes through (heading within 45°) from 1.5 s before now to the end of
  the log; plus their same-direction neighbours (NAVSIM's route is
  made of roadblocks, i.e. all parallel lanes); the route centerline chains the traversed lanes'
  centerlines in order and follows first successors until it reaches 150 m past the ego.
  :func:`route`, :func:`ego_state` and :func:`object_tracks` take ``row=`` to do the same for
  any agent's logged path (``rap.augment.scoring_context``: cross-agent samples); the source's
  ``ego_route`` belongs to the logged ego only.
* Red lights: per step, the lanes whose light state is red (stop / arrow stop / flashing stop).
* History: the logged ego states of the 1.5 s before now at 0.1 s; human plan: the logged
  future (EPDMS human filter).
"""

from __future__ import annotations

import numpy as np
import shapely

from rap import geometry
from rap.kinematics import agent_acceleration, agent_velocity, future_target, yaw_rate
from rap.metrics.pdm_inputs import EgoState, ObjectKind, ObjectTracks, ScoringScene
from rap.scene import AgentType, LaneType, LightColor, Scene
from rap.trajectory import NAVSIM_SAMPLING, Trajectory, TrajectorySampling

HISTORY_S = 1.5  # [s]
FUTURE_S = 4.0  # [s]
OBJECT_HORIZON_STEPS = 51  # 5 s at 0.1 s, step 0 = now
CENTERLINE_AHEAD_M = 150.0  # [m]
ROUTE_HEADING_TOLERANCE = np.deg2rad(45.0)

_KIND = {
    AgentType.VEHICLE: ObjectKind.VEHICLE,
    AgentType.PEDESTRIAN: ObjectKind.PEDESTRIAN,
    AgentType.CYCLIST: ObjectKind.CYCLIST,
    AgentType.OTHER: ObjectKind.STATIC_OBJECT,
    AgentType.UNSET: ObjectKind.STATIC_OBJECT,
}


def steps_for(scene: Scene, seconds: float) -> int:
    """Log steps spanning ``seconds`` (the median step; log timestamps jitter)."""
    dt = float(np.median(np.diff(scene.timestamps))) if scene.num_steps > 1 else 0.1
    n = seconds / dt
    return int(round(n)) if abs(n - round(n)) < 0.05 else int(np.ceil(n))


def scoring_steps(scene: Scene, spacing_s: float = 1.0) -> list[int]:
    """Steps at ``spacing_s`` (aligned with the current step) with 1.5 s of history and 4 s of
    future, where the ego is valid over the whole window."""
    back, ahead, stride = steps_for(scene, HISTORY_S), steps_for(scene, FUTURE_S), max(1, steps_for(scene, spacing_s))
    valid = scene.tracks.valid[scene.ego_index]
    out = []
    for s in range(back, scene.num_steps - ahead):
        if (s - scene.current_index) % stride == 0 and valid[s - back : s + ahead + 1].all():
            out.append(s)
    return out


def steering_for(yaw_rate_rps: float, speed_mps: float) -> float:
    """The tyre angle [rad] of a kinematic bicycle with NAVSIM's wheelbase that turns at
    ``yaw_rate_rps`` at longitudinal speed ``speed_mps`` (0 below 0.5 m/s; clipped to ±pi/3)."""
    from rap.sim.bicycle import VehicleParameters

    wheelbase = VehicleParameters().wheel_base
    steering = float(np.arctan(wheelbase * yaw_rate_rps / speed_mps)) if speed_mps > 0.5 else 0.0
    return float(np.clip(steering, -np.pi / 3, np.pi / 3))


def ego_state(scene: Scene, step: int, *, row: int | None = None) -> EgoState:
    """The ego's rear-axle state at ``step``: velocity and acceleration in its own frame, yaw
    rate, and the tyre angle of a kinematic bicycle with NAVSIM's wheelbase that turns at that
    rate (logs have no steering; starting a turn with the wheels straight would make the
    tracker swing wide). ``row``: another agent's state (default: the ego's)."""
    row = scene.ego_index if row is None else int(row)
    x, y, _, h = scene.agent_pose(row, step)
    v = agent_velocity(scene, row, step)
    a = agent_acceleration(scene, row, step)
    omega = yaw_rate(scene, row, step)
    steering = steering_for(omega, float(v[0]))
    return EgoState(x=x, y=y, heading=h, vx=v[0], vy=v[1], ax=a[0], ay=a[1], steering_angle=steering, yaw_rate=omega, time_s=float(scene.timestamps[step]))


def object_tracks(scene: Scene, step: int, num_steps: int = OBJECT_HORIZON_STEPS, *, row: int | None = None) -> ObjectTracks:
    """Every agent but the ego (or but ``row``; ``row=-1`` keeps every agent) over
    ``num_steps`` steps from ``step`` (invalid past the log)."""
    tr = scene.tracks
    acting = scene.ego_index if row is None else int(row)
    rows = np.flatnonzero(np.arange(tr.num_agents) != acting)
    idx = step + np.arange(num_steps)
    inside = idx < scene.num_steps
    clipped = np.minimum(idx, scene.num_steps - 1)
    valid = tr.valid[rows][:, clipped] & inside[None, :]  # (N, S)
    seen = valid.any(axis=1)
    rows, valid = rows[seen], valid[seen]

    def per_step(arr: np.ndarray) -> np.ndarray:
        return np.where(valid, arr[rows][:, clipped], 0.0)

    first = np.argmax(valid, axis=1)  # first valid step of each object in the window
    length = tr.length[rows, clipped[first]].astype(np.float64)
    width = tr.width[rows, clipped[first]].astype(np.float64)
    kinds = np.array([int(_KIND.get(AgentType(int(t)), ObjectKind.STATIC_OBJECT)) for t in tr.types[rows]], dtype=np.int8)
    return ObjectTracks(
        ids=tr.ids[rows], kinds=kinds, x=per_step(tr.x), y=per_step(tr.y), heading=per_step(tr.heading),
        vx=per_step(tr.vx), vy=per_step(tr.vy), length=np.maximum(length, 0.1), width=np.maximum(width, 0.1), valid=valid,
    )  # fmt: skip


def lane_polygons(scene: Scene) -> dict[int, shapely.Polygon]:
    """Non-bike lanes buffered by half their width (flat caps), by lane id (in map order; lanes
    of fewer than two points or no length are left out)."""
    lanes = scene.map.lanes
    lines = lanes.centerlines
    if not len(lanes):
        return {}
    pts = lines.points[:, :2]
    owner = lines.element_index
    seg = np.hypot(*np.diff(pts, axis=0).T)
    same = owner[1:] == owner[:-1]
    length = np.bincount(owner[1:][same], weights=seg[same], minlength=len(lanes))
    keep = np.flatnonzero((lanes.types != LaneType.BIKE_LANE) & (lines.lengths >= 2) & (length > 0))
    if not keep.size:
        return {}
    chosen = lines.select(keep)
    geoms = shapely.linestrings(chosen.points[:, :2], indices=chosen.element_index)
    # One vectorized call; the same GEOS buffer as LineString.buffer (quad_segs=16).
    polys = shapely.buffer(geoms, 0.5 * lanes.width[keep].astype(np.float64), quad_segs=16, cap_style="flat")
    return {int(lanes.ids[k]): poly for k, poly in zip(keep.tolist(), polys) if not poly.is_empty}


class LaneLookup:
    """The lanes under an agent's rear axle, per log step, computed once per (row, step).

    :func:`route` asks for every step from 1.5 s before now to the end of the log; a generation
    run asks for many steps and agents of one scene, so the per-step answers are kept.

    Args:
        scene: The scene.
        polys: :func:`lane_polygons` of ``scene``.
    """

    def __init__(self, scene: Scene, polys: dict[int, shapely.Polygon]) -> None:
        self.scene = scene
        self.polys = polys
        self.ids = np.array(list(polys))
        self.tree = shapely.STRtree(np.array([polys[i] for i in self.ids], dtype=object))
        self._hits: dict[tuple[int, int], list[tuple[int, float]]] = {}
        self._tails: dict[tuple, tuple[int, ...]] = {}  # (row, step, last lane) -> lanes that follow

    def candidates(self, row: int, step: int) -> list[tuple[int, float]]:
        """``(lane id, |heading error|)`` of the lanes whose polygon holds the agent's rear axle
        at ``step``, in the tree's order (every valid step of the row is looked up at once)."""
        got = self._hits.get((row, step))
        if got is None:
            self._look_up_row(row)
            got = self._hits.get((row, step), [])
        return got

    def traversed(self, row: int, start: int) -> list[int]:
        """Lane ids under the agent's rear axle from ``start`` to the end of the log, in order:
        at each valid step the lane it is already on when that one holds it (heading within
        45°), else the best-aligned one. What follows a step depends only on that step and the
        last lane, so those tails are kept and shared between starts."""
        valid = self.scene.tracks.valid[row]
        sequence: list[int] = []
        visited: list[tuple[tuple, int]] = []
        last = None
        for s in range(start, self.scene.num_steps):
            key = (row, s, last)
            tail = self._tails.get(key)
            if tail is not None:
                sequence.extend(tail)
                break
            visited.append((key, len(sequence)))
            if not valid[s]:
                continue
            best, best_err = None, ROUTE_HEADING_TOLERANCE
            for lane_id, err in self.candidates(row, s):
                # Prefer the lane we are already on, then the best-aligned one.
                if last is not None and lane_id == last and err < ROUTE_HEADING_TOLERANCE:
                    best = lane_id
                    break
                if err < best_err:
                    best, best_err = lane_id, err
            if best is not None and best != last:
                sequence.append(best)
                last = best
        for key, at in visited:
            self._tails[key] = tuple(sequence[at:])
        return sequence

    def _look_up_row(self, row: int) -> None:
        scene, lanes = self.scene, self.scene.map.lanes
        steps = [s for s in np.flatnonzero(scene.tracks.valid[row]).tolist() if (row, s) not in self._hits]
        if not steps:
            return
        poses = [scene.agent_pose(row, s) for s in steps]
        # One bulk query: its hits per point come in the order of a single-point query.
        where, hits = self.tree.query(shapely.points(np.array([p[:2] for p in poses])), predicate="within")
        xyh = np.array([(p[0], p[1], p[3]) for p in poses]).reshape(-1, 3)
        errs = np.empty(len(hits))
        # Heading error of each hit against the lane's direction at its nearest centerline point
        # (the first nearest; the last point uses the last segment), lane by lane.
        for j in np.unique(hits):
            sel = np.flatnonzero(hits == j)
            x, y, h = (xyh[where[sel], i] for i in range(3))
            pts = lanes.centerlines[lanes.index_of(int(self.ids[j]))][:, :2]
            seg = np.minimum(np.argmin(np.hypot(pts[None, :, 0] - x[:, None], pts[None, :, 1] - y[:, None]), axis=1), len(pts) - 2)
            d = pts[seg + 1] - pts[seg]
            errs[sel] = np.abs(geometry.wrap_angle(np.arctan2(d[:, 1], d[:, 0]) - h))
        per_step: list[list[tuple[int, float]]] = [[] for _ in steps]
        for k, j, err in zip(where.tolist(), hits.tolist(), errs.tolist()):
            per_step[k].append((int(self.ids[j]), err))
        for s, got in zip(steps, per_step):
            self._hits[(row, s)] = got


def _traversed_lanes(scene: Scene, polys: dict[int, shapely.Polygon], start: int, row: int | None = None, lookup: LaneLookup | None = None) -> list[int]:
    """Lane ids under the logged ego's (or ``row``'s) rear axle from ``start`` to the end, in
    order."""
    row = scene.ego_index if row is None else int(row)
    lookup = LaneLookup(scene, polys) if lookup is None else lookup
    return lookup.traversed(row, start)


def route(scene: Scene, step: int, polys: dict[int, shapely.Polygon], *, row: int | None = None, lookup: LaneLookup | None = None) -> tuple[frozenset, np.ndarray]:
    """(on-route lane ids, (M, 3) route centerline x, y, heading) for ``step``.

    Args:
        scene: The scene.
        step: The step.
        polys: :func:`lane_polygons` of ``scene``.
        row: The agent whose logged path makes the route (default: the ego). Only the ego
            follows ``scene.ego_route``.
        lookup: A :class:`LaneLookup` of ``scene`` and ``polys`` to reuse across calls.
    """
    lanes = scene.map.lanes
    row = scene.ego_index if row is None else int(row)
    start = max(0, step - steps_for(scene, HISTORY_S))
    sequence = _traversed_lanes(scene, polys, start, row, lookup)
    known = [int(i) for i in scene.ego_route if int(i) in polys] if row == scene.ego_index else []
    if known:  # the source knows the planned route: follow it from the lanes just traversed
        first = next((known.index(i) for i in sequence if i in known), 0)
        sequence = known[first:]
    x0, y0, _, h0 = scene.agent_pose(row, step)
    if not sequence:  # off every lane: a straight line along the ego's heading
        d = np.arange(-20.0, CENTERLINE_AHEAD_M, 1.0)
        line = np.stack([x0 + d * np.cos(h0), y0 + d * np.sin(h0), np.full_like(d, h0)], axis=1)
        return frozenset(), line
    # Keep the chain from the ego's lane to CENTERLINE_AHEAD_M ahead (a long known route may
    # come back near the start, where projections onto the centerline would jump), then extend
    # through successors until it reaches that far.
    chain: list[int] = []
    for lane_id in sequence:
        chain.append(lane_id)
        pts = np.concatenate([lanes.centerlines[lanes.index_of(i)][:, :2] for i in chain])
        travelled = np.cumsum(np.hypot(*np.diff(pts, axis=0).T))
        nearest = int(np.argmin(np.hypot(pts[:, 0] - x0, pts[:, 1] - y0)))
        if len(travelled) and travelled[-1] - (travelled[nearest - 1] if nearest > 0 else 0.0) >= CENTERLINE_AHEAD_M:
            break
    pts = np.concatenate([lanes.centerlines[lanes.index_of(i)][:, :2] for i in chain])
    for _ in range(50):
        ahead = float(np.max((pts[:, 0] - x0) * np.cos(h0) + (pts[:, 1] - y0) * np.sin(h0)))
        succ = [s for s in lanes.successors[lanes.index_of(chain[-1])] if s in polys]
        if ahead >= CENTERLINE_AHEAD_M or not succ:
            break
        chain.append(int(min(succ)))  # deterministic choice among successors
        pts = np.concatenate([pts, lanes.centerlines[lanes.index_of(chain[-1])][:, :2]])
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.hypot(*np.diff(pts, axis=0).T) > 1e-3
    pts = geometry.resample_polyline(pts[keep], 0.5) if keep.sum() >= 2 else pts[keep]
    d = np.gradient(pts, axis=0)
    centerline = np.column_stack([pts, np.arctan2(d[:, 1], d[:, 0])])
    on_route = set(chain)
    for lane_id in chain:
        k = lanes.index_of(lane_id)
        on_route.update(i for i in lanes.left_neighbors[k] + lanes.right_neighbors[k] if i in polys)
    return frozenset(int(i) for i in on_route), centerline


def red_light_lanes(scene: Scene, step: int, num_steps: int = OBJECT_HORIZON_STEPS) -> tuple[frozenset, ...]:
    """Per step from ``step``: the lane ids whose light is red (empty past the log)."""
    lights = scene.traffic_lights
    out = []
    for s in range(step, step + num_steps):
        if s >= scene.num_steps or not len(lights):
            out.append(frozenset())
            continue
        red = lights.valid[:, s] & (lights.colors[:, s] == LightColor.RED)
        out.append(frozenset(int(i) for i in lights.lane_ids[red]))
    return tuple(out)


def ego_history(scene: Scene, step: int) -> tuple[EgoState, ...]:
    """Logged ego states of the 1.5 s before ``step`` (oldest first, ``step`` excluded)."""
    back = steps_for(scene, HISTORY_S)
    return tuple(ego_state(scene, s) for s in range(step - back, step))


def scoring_scene(scene: Scene, step: int, *, previous_plan=None, with_human: bool = True) -> ScoringScene:
    """The PDM scorer's inputs for ``scene`` at ``step`` (see the module docstring)."""
    polys = lane_polygons(scene)
    lanes = scene.map.lanes
    inter = [polys[int(i)] for i, interp in zip(lanes.ids, lanes.interpolating) if interp and int(i) in polys]
    route_ids, centerline = route(scene, step, polys)
    human = future_target(scene, scene.ego_index, step, NAVSIM_SAMPLING) if with_human else None
    x, y = scene.ego_pose(step)[:2]
    limit = None
    for k in range(len(lanes)):
        if int(lanes.ids[k]) in route_ids and lanes.has_speed_limit[k] and polys[int(lanes.ids[k])].contains(shapely.Point(x, y)):
            limit = float(lanes.speed_limit[k])
            break
    return ScoringScene(
        ego=ego_state(scene, step),
        objects=object_tracks(scene, step),
        drivable_area=scene.map.drivable_polygon,
        lane_polygons=polys,
        intersections=shapely.union_all(inter) if inter else None,
        route_lane_ids=route_ids,
        centerline=centerline,
        red_light_lane_ids=red_light_lanes(scene, step),
        ego_history=ego_history(scene, step),
        human_trajectory=None if human is None else np.asarray(human.poses),
        human_sampling=NAVSIM_SAMPLING,
        previous_plan=previous_plan,
        speed_limit=limit,
    )


def expert_plan(scene: Scene, step: int, sampling: TrajectorySampling = NAVSIM_SAMPLING) -> Trajectory:
    """The PDM-Closed-style reference planner's plan at ``step``, at ``sampling``."""
    return reference_planner_plan(scoring_scene(scene, step, with_human=False), sampling)


def reference_planner_plan(inputs, sampling: TrajectorySampling = NAVSIM_SAMPLING) -> Trajectory:
    """The reference planner's rollout on scoring inputs (a :class:`rap.metrics.ScoringScene`),
    resampled at ``sampling`` in the ego frame."""
    from rap.metrics.pdms import score_scene
    from rap.sim.bicycle import StateIndex

    # Score a standing-still proposal: the result carries the reference planner's rollout.
    result = score_scene(inputs, np.zeros((1, NAVSIM_SAMPLING.num_poses, 3)), NAVSIM_SAMPLING)
    ref = np.asarray(result.reference_states)  # (41, 11) world frame at 0.1 s
    t_ref = np.arange(ref.shape[0]) * 0.1
    world = np.stack([np.interp(sampling.times_s, t_ref, ref[:, StateIndex.X]), np.interp(sampling.times_s, t_ref, ref[:, StateIndex.Y])], axis=1)
    heading = np.interp(sampling.times_s, t_ref, np.unwrap(ref[:, StateIndex.HEADING]))
    e = inputs.ego
    xy = geometry.to_frame(world, (e.x, e.y), e.heading)
    return Trajectory(np.column_stack([xy, geometry.wrap_angle(heading - e.heading)]), sampling)
