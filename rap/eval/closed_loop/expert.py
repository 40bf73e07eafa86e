"""The closed-loop expert (``--agent expert``): :class:`rap.eval.agent.ExpertAgent`'s planner (the
PDM-Closed-style reference planner on the privileged scene, given the route ahead as its route
(:func:`reference_plan`) and only its own route's traffic lights (:func:`own_lights`)),
re-timed by a safety check (:func:`shield`).

Why a check: the reference planner's IDM brakes at most 3 m/s^2 and, closing in on a stopped
vehicle from speed, plans to stop inside its standstill gap; driven closed loop (replanned at
2 Hz, executed by the tracker with its lag) it rear-ends braking leaders. The check keeps the
reference plan's path and slows along it: the first vehicle box (now, and forecast at constant
velocity 1 s and 2 s ahead) that the ego's front bumper would come within half its width plus
-0.3 m of along the path (a box squarely in the way) is the leader (a pedestrian's box, grown by
:data:`_PED_MARGIN` on every side, is forecast every 0.5 s up to 4 s ahead: the whole stretch it
will walk across the path blocks it, as the reference planner would otherwise pass behind a
crossing pedestrian at speed); an IDM driver with firmer braking (:data:`SHIELD_IDM`,
the shared :func:`rap.sim.idm.idm_acceleration`), slowing for the path's curves to 2 m/s^2
lateral acceleration (the reference planner ignores curvature, and the tracker swings wide in
tight junction turns at speed), caps the progress at each planned pose.

Stop signs (:class:`StopSignKeeper`): the reference planner knows lights only; the expert gives
the next stop-sign connector of its route a red light until it has stood still (below 80 % of
:data:`~rap.eval.closed_loop.infractions.STOP_SPEED`) with its front bumper in the sign's stop
area, then lets it go (CARLA's rule: stop once, then proceed). Stop lines, of a held stop sign
and of the route's next red light (:func:`red_light_stop`), are also given to the check as
standing obstacles: the reference planner's own approach to a red connector creeps on at a few
cm/s and can end with the front bumper past the line.

Emergency vehicles (:func:`emergency_vehicle_behind`, :func:`yield_plan`): the scene has no
emergency type, so the expert recognises one by what it does: a vehicle behind the ego, heading
its way, faster than the ego and than 1.1 x the speed limit of the ego's lane (no other vehicle
of the closed-loop world drives above the limit), within :data:`_EV_LOOK_M` m and a cone behind
it (3 m plus 10 % of the distance to either side). While one is behind, the expert moves into a
same-direction neighbour of its lane (the right one where there is one; :func:`yield_plan`, a
path of its own in place of the reference planner's), slows to :data:`YIELD_SPEED` (at most :data:`_YIELD_DECEL`) and
stops :data:`_YIELD_END_M` before that lane's end if the vehicle has not passed by then; where
its lane has no neighbour (e.g. still in the junction before) it only slows. Once the vehicle
is ahead it takes its route again.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rap import geometry
from rap.eval.agent import ExpertAgent, Observation
from rap.eval.closed_loop.infractions import STOP_AREA_M, STOP_AREA_PAST_M, STOP_SPEED
from rap.eval.closed_loop.world import YELLOW_DECEL
from rap.scene import AgentType, LightState, Scene, TrafficLights
from rap.sim.bicycle import PACIFICA
from rap.sim.idm import Boxes, IDMParameters, idm_acceleration, path_hits
from rap.trajectory import Trajectory

__all__ = ["YIELD_SPEED", "EmergencyYield", "emergency_vehicle_behind", "yield_plan", "SHIELD_IDM", "ClosedLoopExpert", "StopSignKeeper", "own_lights", "red_light_stop", "reference_plan", "route_centerline", "route_lane_arcs", "shield", "with_stop_light"]

SHIELD_IDM = IDMParameters(max_accel=1.5, comfort_decel=3.0, time_headway=1.2, min_gap=2.5, max_decel=7.0)
_SPACING = 0.5  # [m] path samples
_FORECAST_S = (0.0, 1.0, 2.0)  # [s] obstacle forecasts checked
_PED_FORECAST_S = tuple(np.arange(0.0, 4.01, 0.5))  # [s] pedestrian forecasts checked
_PED_MARGIN = 0.5  # [m] pedestrian boxes grown by this on every side
_CLEARANCE = -0.3  # [m] beyond the ego's half width (negative: only boxes squarely in the way; a reference plan grazing a box, e.g. passing a parked car, is left alone)
_LATERAL_ACCEL = 2.0  # [m/s^2] in curves (as the synthetic world's expert drivers)
_CURVE_DECEL = 2.0  # [m/s^2] slowing down for a curve ahead
_DT = 0.1  # [s] IDM integration step
_STOP_LOOK_M = 80.0  # [m] stop signs farther ahead are left for later
_STOP_INSIDE_M = 1.0  # [m] a stop counts this far inside the stop area's far end (margin)
_COMMITTED_M = 0.5  # [m] a front bumper this far past a stop line goes on
YIELD_SPEED = 3.0  # [m/s] the expert's speed while an emergency vehicle is behind it
_YIELD_DECEL = 2.5  # [m/s^2] slowing down to it
_YIELD_END_M = 8.0  # [m] stop this far before the end of the lane it moved into
_YIELD_BLEND_S = 2.5  # [s] of driving at the current speed to move into the neighbour lane
_EV_LOOK_M = 150.0  # [m] emergency vehicles farther behind are ignored
_EV_OVER_LIMIT = 1.1  # an emergency vehicle drives faster than this share of the speed limit


def shield(plan: Trajectory, scene: Scene, step: int, speed: float, stop_at: float | None = None, speed_cap: float | None = None) -> Trajectory:
    """``plan`` slowed along its own path so that an IDM driver with :data:`SHIELD_IDM` would
    not run into the first vehicle box on it (see the module docs).

    Args:
        plan: ego-frame poses (rear axle) at ``plan.sampling``.
        scene, step: the privileged scene (ego = ``scene.ego_index``).
        speed: [m/s] the ego's current speed.
        stop_at: [m] a point to stop before (its distance from the front bumper along the
            path, e.g. a stop sign's line), approached as a standing obstacle; None: none.
        speed_cap: [m/s] slow down to this (at most :data:`_YIELD_DECEL`) and stay below it;
            None: none.
    """
    poses = np.vstack([[0.0, 0.0, 0.0], np.asarray(plan.poses)])
    seg = np.hypot(*np.diff(poses[:, :2], axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] < 0.5:
        return plan
    s = np.arange(0.0, arc[-1] + 1e-9, _SPACING)
    px, py = np.interp(s, arc, poses[:, 0]), np.interp(s, arc, poses[:, 1])
    heading = np.interp(s, arc, np.unwrap(poses[:, 2]))
    tan = np.stack([np.cos(heading), np.sin(heading)], axis=-1)
    front = np.stack([px, py], axis=-1) + PACIFICA.front_length * tan
    x0, y0, _, h0 = scene.ego_pose(step)
    tr = scene.tracks
    others = tr.valid[:, step] & (np.arange(tr.num_agents) != scene.ego_index)
    walkers = tr.types == AgentType.PEDESTRIAN
    gap, lead_v = np.inf, 0.0
    if others.any():
        parts = []
        for rows, times, grow in ((np.flatnonzero(others & ~walkers), _FORECAST_S, 0.0), (np.flatnonzero(others & walkers), _PED_FORECAST_S, 2 * _PED_MARGIN)):
            if not rows.size:
                continue
            vel = geometry.rotate(np.stack([tr.vx[rows, step], tr.vy[rows, step]], -1), -h0)
            for t in times:
                cx = tr.x[rows, step] + tr.vx[rows, step] * t
                cy = tr.y[rows, step] + tr.vy[rows, step] * t
                local = geometry.to_frame(np.stack([cx, cy], -1), (x0, y0), h0)
                rel = geometry.wrap_angle(tr.heading[rows, step] - h0)
                parts.append(Boxes.from_poses(local[:, 0], local[:, 1], rel, tr.length[rows, step] + grow, tr.width[rows, step] + grow, vel[:, 0], vel[:, 1]))
        hits = path_hits(front[None], tan[None], Boxes.concatenate(parts), PACIFICA.half_width + _CLEARANCE).nearest(1)
        if hits.sample[0] >= 0:
            gap, lead_v = float(s[hits.sample[0]]), float(hits.speed[0])
    if stop_at is not None and stop_at < gap:
        gap, lead_v = max(float(stop_at), 0.0), 0.0
    # curve speed: the path's curvature (heading change over +-2 m) at _LATERAL_ACCEL, reached
    # braking at _CURVE_DECEL from wherever the ego is
    w = max(1, int(round(2.0 / _SPACING)))
    pad = np.concatenate([np.full(w, heading[0]), heading, np.full(w, heading[-1])])
    kappa = np.abs(pad[2 * w :] - pad[: -2 * w]) / (2 * w * _SPACING)
    v_curve = np.sqrt(_LATERAL_ACCEL / np.maximum(kappa, 1e-6))
    curvy = bool(np.any(v_curve < max(speed, 1.0) + 3.0))
    if not np.isfinite(gap) and not curvy and speed_cap is None:
        return plan
    times = plan.sampling.times_s
    v0 = max(float(np.max(seg / plan.sampling.interval_s)), speed, 0.5)
    if speed_cap is not None:
        v0 = min(v0, max(speed_cap, 0.5))
    v, pos, lead = max(speed, 0.0), 0.0, gap
    cap = np.empty(len(times))
    t, k = 0.0, 0
    while k < len(times):
        acc = float(idm_acceleration(SHIELD_IDM, np.array([v]), np.array([v0]), np.array([lead - pos]), np.array([lead_v]))[0])
        ahead = s >= pos
        if curvy and ahead.any():
            allowed = float(np.min(np.sqrt(v_curve[ahead] ** 2 + 2.0 * _CURVE_DECEL * (s[ahead] - pos))))
            acc = min(acc, (allowed - v) / _DT) if v > allowed else acc
            acc = max(acc, -SHIELD_IDM.max_decel)
        if speed_cap is not None and v > speed_cap:
            acc = min(acc, max(-_YIELD_DECEL, (speed_cap - v) / _DT))
        v_new = max(v + acc * _DT, 0.0)
        pos += 0.5 * (v + v_new) * _DT
        v = v_new
        lead += lead_v * _DT
        t += _DT
        while k < len(times) and t >= times[k] - 1e-9:
            cap[k] = pos
            k += 1
    target = np.minimum(arc[1:], cap)
    target = np.maximum.accumulate(target)
    out = np.stack([np.interp(target, arc, poses[:, 0]), np.interp(target, arc, poses[:, 1]), np.interp(target, arc, np.unwrap(poses[:, 2]))], axis=1)
    out[:, 2] = geometry.wrap_angle(out[:, 2])
    return Trajectory(out, plan.sampling)


def route_centerline(scene: Scene) -> np.ndarray:
    """(M, 3) x, y, heading every 0.5 m along the centerlines of ``scene.ego_route``'s lanes."""
    lanes = scene.map.lanes
    pts = np.concatenate([lanes.centerlines[lanes.index_of(i)][:, :2] for i in scene.ego_route])
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.hypot(*np.diff(pts, axis=0).T) > 1e-3
    pts = geometry.resample_polyline(pts[keep], 0.5)
    d = np.gradient(pts, axis=0)
    return np.column_stack([pts, np.arctan2(d[:, 1], d[:, 0])])


def reference_plan(scene: Scene, step: int, sampling) -> Trajectory:
    """:func:`rap.eval.navsim_scene.expert_plan` (the reference planner's rollout, resampled)
    with the route given by ``scene.ego_route`` alone: its lanes (and their same-direction
    neighbours) are the route lanes and their chained centerline the path. (``expert_plan`` extends a route by lowest-id successors until
    it reaches 150 m ahead along the ego's current heading; on a route that turns, that chain
    loops round the block and can come back through the junction the ego is in, and the ego
    then follows the later pass.)"""
    from rap.eval.navsim_scene import reference_planner_plan, scoring_scene

    inputs = scoring_scene(scene, step, with_human=False)
    lanes = scene.map.lanes
    on_route = set(int(i) for i in scene.ego_route)
    for i in scene.ego_route:  # and their same-direction neighbours, as navsim_scene.route
        k = lanes.index_of(int(i))
        on_route.update(int(j) for j in lanes.left_neighbors[k] + lanes.right_neighbors[k])
    inputs = dataclasses.replace(inputs, centerline=route_centerline(scene), route_lane_ids=frozenset(on_route & set(inputs.lane_polygons)))
    return reference_planner_plan(inputs, sampling)


def with_stop_light(scene: Scene, lane_id: int) -> Scene:
    """``scene`` with a light held at STOP (every step) on lane ``lane_id`` (at its start)."""
    lights = scene.traffic_lights
    lanes = scene.map.lanes
    start = lanes.centerlines[lanes.index_of(int(lane_id))][0]
    keep = lights.lane_ids != int(lane_id)
    steps = scene.num_steps
    held = TrafficLights(
        lane_ids=np.concatenate([lights.lane_ids[keep], [int(lane_id)]]).astype(np.int64),
        stop_points=np.concatenate([lights.stop_points[keep], [[start[0], start[1], 0.0]]]),
        states=np.concatenate([lights.states[keep].reshape(-1, steps), np.full((1, steps), int(LightState.STOP))]).astype(np.int8),
        valid=np.concatenate([lights.valid[keep].reshape(-1, steps), np.ones((1, steps), bool)]),
    )  # fmt: skip
    return dataclasses.replace(scene, traffic_lights=held)


def route_lane_arcs(scene: Scene, step: int) -> list[tuple[int, float]]:
    """Each lane of ``scene.ego_route`` with the arc [m] along the route's chained centerlines
    from the ego's rear axle (projected on the chain's first three lanes) to the lane's start."""
    lanes = scene.map.lanes
    pts = [lanes.centerlines[lanes.index_of(int(i))][:, :2] for i in scene.ego_route]
    lengths = np.array([float(np.hypot(*np.diff(p, axis=0).T).sum()) if len(p) > 1 else 0.0 for p in pts])
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    x0, y0 = scene.ego_pose(step)[:2]
    best, ego_arc = np.inf, 0.0
    for k in range(min(3, len(pts))):
        p = pts[k]
        if len(p) < 2:
            continue
        a, b = p[:-1], p[1:]
        ab = b - a
        t = np.clip(((np.array([x0, y0]) - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
        d = np.hypot(*(a + t[:, None] * ab - np.array([x0, y0])).T)
        j = int(np.argmin(d))
        if d[j] < best:
            seg = np.hypot(*ab.T)
            best, ego_arc = float(d[j]), starts[k] + float(seg[:j].sum() + t[j] * seg[j])
    return [(int(i), float(s0 - ego_arc)) for i, s0 in zip(scene.ego_route, starts)]


def red_light_stop(scene: Scene, step: int, speed: float) -> float | None:
    """[m] from the front bumper, along the route, to the stop line of the route's next lane
    whose light is STOP at ``step`` (or CAUTION and reachable with :data:`~rap.eval.closed_loop.world.YELLOW_DECEL` (as the background traffic)); None:
    no such line ahead (a bumper less than :data:`_COMMITTED_M` past a line counts as before it)."""
    lights = scene.traffic_lights
    if not len(lights):
        return None
    state = {int(i): int(st) for i, st, ok in zip(lights.lane_ids, lights.states[:, step], lights.valid[:, step]) if ok}
    for lane_id, start_arc in route_lane_arcs(scene, step):
        if lane_id not in state:
            continue
        ahead = start_arc - PACIFICA.front_length
        if ahead < -_COMMITTED_M:
            continue
        st = state[lane_id]
        if st == LightState.STOP or (st == LightState.CAUTION and speed * speed / (2.0 * max(ahead - 1.0, 0.1)) <= YELLOW_DECEL):
            return ahead
        if ahead > 0:
            return None  # the next light ahead is green (or a yellow to go through)
    return None


class StopSignKeeper:
    """Which stop signs of its route the expert has served (stood still at), per route: the
    memory starts afresh when the scene id changes or the scene's time goes back."""

    def __init__(self) -> None:
        self.scene_id: str | None = None
        self.time_s = -np.inf
        self.served: set[int] = set()

    def apply(self, scene: Scene, step: int, speed: float) -> tuple[Scene, float | None]:
        """``scene`` with the next unserved stop-sign connector of ``scene.ego_route`` held red
        (:func:`with_stop_light`), and the distance [m] from the front bumper to its line (None
        when no sign is held); a sign is served once the ego (speed ``speed`` [m/s]) stands
        with its front bumper in the sign's stop area."""
        t = float(scene.timestamps[step])
        if scene.scene_id != self.scene_id or t < self.time_s:
            self.scene_id, self.served = scene.scene_id, set()
        self.time_s = t
        signs = scene.map.stop_signs
        controlled = {int(i) for group in signs.lane_ids for i in group}
        if not controlled & {int(i) for i in scene.ego_route}:
            return scene, None
        for lane_id, start_arc in route_lane_arcs(scene, step):
            if lane_id not in controlled or lane_id in self.served:
                continue
            ahead = start_arc - PACIFICA.front_length  # front bumper to the line, along the route
            if ahead < -STOP_AREA_PAST_M:
                self.served.add(lane_id)  # behind us
                continue
            if ahead > _STOP_LOOK_M:
                break
            if abs(speed) < 0.8 * STOP_SPEED and ahead <= STOP_AREA_M - _STOP_INSIDE_M:
                self.served.add(lane_id)
                continue
            return with_stop_light(scene, lane_id), ahead
        return scene, None


def _current_route_lane(scene: Scene, step: int) -> tuple[int, float] | None:
    """The lane of ``scene.ego_route`` under the ego's rear axle and the arc [m] from the rear
    axle to its end (None: none)."""
    arcs = route_lane_arcs(scene, step)
    lanes = scene.map.lanes
    for k, (lane_id, start) in enumerate(arcs):
        end = arcs[k + 1][1] if k + 1 < len(arcs) else start + float(np.hypot(*np.diff(lanes.centerlines[lanes.index_of(lane_id)][:, :2], axis=0).T).sum())
        if start <= 0.0 < end:
            return lane_id, end
    return None


def emergency_vehicle_behind(scene: Scene, step: int, speed: float) -> int | None:
    """Row of the nearest vehicle that is an emergency vehicle coming up behind the ego (see the
    module docs), or None."""
    tr, lanes = scene.tracks, scene.map.lanes
    here = _current_route_lane(scene, step)
    if here is None:
        return None
    k = lanes.index_of(here[0])
    limit = float(lanes.speed_limit[k]) if lanes.has_speed_limit[k] else np.inf
    x0, y0, _, h0 = scene.ego_pose(step)
    rows = np.flatnonzero(tr.valid[:, step] & (tr.types == AgentType.VEHICLE) & (np.arange(tr.num_agents) != scene.ego_index))
    if not rows.size or not np.isfinite(limit):
        return None
    v = np.hypot(tr.vx[rows, step], tr.vy[rows, step])
    local = geometry.to_frame(np.stack([tr.x[rows, step], tr.y[rows, step]], -1), (x0, y0), h0)
    same_way = np.abs(geometry.wrap_angle(tr.heading[rows, step] - h0)) < np.pi / 4
    # behind: in a cone (roads bend: 120 m back, the lane can be 8 m to the side)
    behind = (local[:, 0] < 0.0) & (local[:, 0] > -_EV_LOOK_M) & (np.abs(local[:, 1]) < 3.0 + 0.1 * np.abs(local[:, 0]))
    ev = behind & same_way & (v > _EV_OVER_LIMIT * limit) & (v > speed)
    if not ev.any():
        return None
    cand = np.flatnonzero(ev)
    return int(rows[cand[np.argmax(local[cand, 0])]])


def _along(line: np.ndarray, start: float, s: np.ndarray) -> np.ndarray:
    """(len(s), 2) points of polyline ``line`` at arcs ``start + s`` (clamped to its ends)."""
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(line, axis=0).T))])
    a = np.clip(start + s, 0.0, arc[-1])
    return np.stack([np.interp(a, arc, line[:, 0]), np.interp(a, arc, line[:, 1])], axis=-1)


def _project(line: np.ndarray, p: np.ndarray) -> float:
    """Arc [m] of the point of polyline ``line`` nearest to ``p`` (2,)."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    d = np.hypot(*(a + t[:, None] * ab - p).T)
    j = int(np.argmin(d))
    seg = np.hypot(*ab.T)
    return float(seg[:j].sum() + t[j] * seg[j])


def yield_plan(scene: Scene, step: int, sampling, speed: float) -> tuple[Trajectory, float] | None:
    """A plan that moves the ego into the same-direction neighbour of its lane (the right one
    where there is one): a path blending from the ego's rear axle to the neighbour's centerline
    over :data:`_YIELD_BLEND_S` s of driving (12-25 m), driven at the current speed (at least
    :data:`YIELD_SPEED`), and the distance [m] from the front bumper to :data:`_YIELD_END_M`
    before the end of the ego's lane (where to stop if the emergency vehicle has not passed by
    then); None where the ego's lane has no neighbour."""
    here = _current_route_lane(scene, step)
    if here is None:
        return None
    lanes = scene.map.lanes
    k = lanes.index_of(here[0])
    side = lanes.right_neighbors[k] or lanes.left_neighbors[k]
    if not side:
        return None
    x0, y0, _, h0 = scene.ego_pose(step)
    own = geometry.to_frame(lanes.centerlines[k][:, :2], (x0, y0), h0)
    other = geometry.to_frame(lanes.centerlines[lanes.index_of(int(side[0]))][:, :2], (x0, y0), h0)
    a0 = _project(own, np.zeros(2))
    c0 = _along(own, a0, np.zeros(1))[0]
    b0 = _project(other, c0)
    s = np.arange(0.0, 80.0, _SPACING)
    c, n = _along(own, a0, s), _along(other, b0, s)
    blend = float(np.clip(_YIELD_BLEND_S * max(speed, YIELD_SPEED), 12.0, 25.0))
    u = np.clip(s / blend, 0.0, 1.0)[:, None]
    w = u * u * (3.0 - 2.0 * u)
    path = c + (1.0 - w) * (-c0) + w * (n - c)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    d = max(speed, YIELD_SPEED) * sampling.times_s
    d = np.minimum(d, arc[-1])
    xy = np.stack([np.interp(d, arc, path[:, 0]), np.interp(d, arc, path[:, 1])], axis=-1)
    g = np.gradient(path, axis=0)
    heading = np.interp(d, arc, np.unwrap(np.arctan2(g[:, 1], g[:, 0])))
    plan = Trajectory(np.column_stack([xy, geometry.wrap_angle(heading)]), sampling)
    return plan, here[1] - PACIFICA.front_length - _YIELD_END_M


class EmergencyYield:
    """Which emergency vehicle the expert is yielding to, per route (by track id: once
    recognised, a vehicle stays one while it slows behind the ego); the memory starts afresh
    when the scene id changes or the scene's time goes back."""

    def __init__(self) -> None:
        self.scene_id: str | None = None
        self.time_s = -np.inf
        self.track_id: int | None = None

    def behind(self, scene: Scene, step: int, speed: float) -> bool:
        """Whether an emergency vehicle is behind the ego (not yet past its front bumper)."""
        t = float(scene.timestamps[step])
        if scene.scene_id != self.scene_id or t < self.time_s:
            self.scene_id, self.track_id = scene.scene_id, None
        self.time_s = t
        tr = scene.tracks
        if self.track_id is not None:
            rows = np.flatnonzero(tr.ids == self.track_id)
            if rows.size and tr.valid[rows[0], step]:
                r = int(rows[0])
                x0, y0, _, h0 = scene.ego_pose(step)
                local = geometry.to_frame(np.array([[tr.x[r, step], tr.y[r, step]]]), (x0, y0), h0)[0]
                if local[0] - 0.5 * float(tr.length[r, step]) < PACIFICA.front_length and local[0] > -_EV_LOOK_M:
                    return True
            self.track_id = None
        row = emergency_vehicle_behind(scene, step, speed)
        if row is None:
            return False
        self.track_id = int(tr.ids[row])
        return True


class ClosedLoopExpert(ExpertAgent):
    """``expert`` in closed loop: the reference planner on the route ahead
    (:func:`reference_plan`, with :func:`own_lights` and the stop signs of
    :class:`StopSignKeeper`) plus :func:`shield` (the same name, privileges and sensors as
    :class:`~rap.eval.agent.ExpertAgent`; another plan)."""

    def __init__(self) -> None:
        self.stop_signs = StopSignKeeper()
        self.emergency = EmergencyYield()

    def plan(self, observation: Observation) -> Trajectory:
        assert observation.scene is not None and observation.step is not None
        speed = observation.ego_status.speed
        scene, stop_at = self.stop_signs.apply(own_lights(observation.scene), observation.step, speed)
        red = red_light_stop(scene, observation.step, speed)
        if red is not None:
            stop_at = red if stop_at is None else min(stop_at, red)
        cap, plan = None, None
        if self.emergency.behind(scene, observation.step, speed):
            cap = YIELD_SPEED
            aside = yield_plan(scene, observation.step, observation.sampling, speed)
            if aside is not None:
                plan, end = aside
                stop_at = end if stop_at is None else min(stop_at, end)
        if plan is None:
            plan = reference_plan(scene, observation.step, observation.sampling)
        return shield(plan, scene, observation.step, speed, stop_at=stop_at, speed_cap=cap)


def own_lights(scene: Scene) -> Scene:
    """``scene`` with only the traffic lights of ``scene.ego_route``'s connectors.

    The reference planner brakes for every red lane of its route set, which it extends along
    successors (by lowest id) until it reaches 150 m ahead along the ego's heading; on a route
    that turns, that set grows to lanes of other movements, e.g. the red straight connector
    that starts where the ego's green left turn starts, and the expert would wait for good.
    """
    lights = scene.traffic_lights
    keep = np.isin(lights.lane_ids, np.asarray(scene.ego_route, dtype=np.int64))
    if keep.all():
        return scene
    own = TrafficLights(lane_ids=lights.lane_ids[keep], stop_points=lights.stop_points[keep], states=lights.states[keep], valid=lights.valid[keep])
    return dataclasses.replace(scene, traffic_lights=own)
