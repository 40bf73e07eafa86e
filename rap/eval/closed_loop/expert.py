"""The closed-loop expert (``--agent expert``): :class:`rap.eval.agent.ExpertAgent`'s planner (the
PDM-Closed-style reference planner on the privileged scene, given the route ahead as its route
(:func:`reference_plan`) and only its own route's traffic lights (:func:`own_lights`)),
re-timed by a safety check (:func:`shield`).

Why a check: the reference planner's IDM brakes at most 3 m/s^2 and, closing in on a stopped
vehicle from speed, plans to stop inside its standstill gap; driven closed loop (replanned at
2 Hz, executed by the tracker with its lag) it rear-ends braking leaders. The check keeps the
reference plan's path and slows along it: the first vehicle box (now, and forecast at constant
velocity 1 s and 2 s ahead) that the ego's front bumper would come within half its width plus
-0.3 m of along the path (a box squarely in the way) is the leader; an IDM driver with firmer braking (:data:`SHIELD_IDM`,
the shared :func:`rap.sim.idm.idm_acceleration`), slowing for the path's curves to 2 m/s^2
lateral acceleration (the reference planner ignores curvature, and the tracker swings wide in
tight junction turns at speed), caps the progress at each planned pose.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rap import geometry
from rap.eval.agent import ExpertAgent, Observation
from rap.scene import Scene, TrafficLights
from rap.sim.bicycle import PACIFICA
from rap.sim.idm import Boxes, IDMParameters, idm_acceleration, path_hits
from rap.trajectory import Trajectory

__all__ = ["SHIELD_IDM", "ClosedLoopExpert", "own_lights", "reference_plan", "route_centerline", "shield"]

SHIELD_IDM = IDMParameters(max_accel=1.5, comfort_decel=3.0, time_headway=1.2, min_gap=2.5, max_decel=7.0)
_SPACING = 0.5  # [m] path samples
_FORECAST_S = (0.0, 1.0, 2.0)  # [s] obstacle forecasts checked
_CLEARANCE = -0.3  # [m] beyond the ego's half width (negative: only boxes squarely in the way; a reference plan grazing a box, e.g. passing a parked car, is left alone)
_LATERAL_ACCEL = 2.0  # [m/s^2] in curves (as the synthetic world's expert drivers)
_CURVE_DECEL = 2.0  # [m/s^2] slowing down for a curve ahead
_DT = 0.1  # [s] IDM integration step


def shield(plan: Trajectory, scene: Scene, step: int, speed: float) -> Trajectory:
    """``plan`` slowed along its own path so that an IDM driver with :data:`SHIELD_IDM` would
    not run into the first vehicle box on it (see the module docs).

    Args:
        plan: ego-frame poses (rear axle) at ``plan.sampling``.
        scene, step: the privileged scene (ego = ``scene.ego_index``).
        speed: [m/s] the ego's current speed.
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
    rows = np.flatnonzero(tr.valid[:, step] & (np.arange(tr.num_agents) != scene.ego_index))
    gap, lead_v = np.inf, 0.0
    if rows.size:
        parts = []
        for t in _FORECAST_S:
            cx = tr.x[rows, step] + tr.vx[rows, step] * t
            cy = tr.y[rows, step] + tr.vy[rows, step] * t
            local = geometry.to_frame(np.stack([cx, cy], -1), (x0, y0), h0)
            vel = geometry.rotate(np.stack([tr.vx[rows, step], tr.vy[rows, step]], -1), -h0)
            parts.append(Boxes.from_poses(local[:, 0], local[:, 1], geometry.wrap_angle(tr.heading[rows, step] - h0), tr.length[rows, step], tr.width[rows, step], vel[:, 0], vel[:, 1]))
        hits = path_hits(front[None], tan[None], Boxes.concatenate(parts), PACIFICA.half_width + _CLEARANCE).nearest(1)
        if hits.sample[0] >= 0:
            gap, lead_v = float(s[hits.sample[0]]), float(hits.speed[0])
    # curve speed: the path's curvature (heading change over +-2 m) at _LATERAL_ACCEL, reached
    # braking at _CURVE_DECEL from wherever the ego is
    w = max(1, int(round(2.0 / _SPACING)))
    pad = np.concatenate([np.full(w, heading[0]), heading, np.full(w, heading[-1])])
    kappa = np.abs(pad[2 * w :] - pad[: -2 * w]) / (2 * w * _SPACING)
    v_curve = np.sqrt(_LATERAL_ACCEL / np.maximum(kappa, 1e-6))
    curvy = bool(np.any(v_curve < max(speed, 1.0) + 3.0))
    if not np.isfinite(gap) and not curvy:
        return plan
    times = plan.sampling.times_s
    v0 = max(float(np.max(seg / plan.sampling.interval_s)), speed, 0.5)
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


class ClosedLoopExpert(ExpertAgent):
    """``expert`` in closed loop: the reference planner on the route ahead
    (:func:`reference_plan`, with :func:`own_lights`) plus :func:`shield` (the same name,
    privileges and sensors as :class:`~rap.eval.agent.ExpertAgent`; another plan)."""

    def plan(self, observation: Observation) -> Trajectory:
        assert observation.scene is not None and observation.step is not None
        scene = own_lights(observation.scene)
        plan = reference_plan(scene, observation.step, observation.sampling)
        return shield(plan, scene, observation.step, observation.ego_status.speed)


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
