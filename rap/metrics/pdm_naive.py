"""A naive, loop-based transcription of NAVSIM's PDM scorer, used as a cross-check and baseline.

It follows the structure of NAVSIM's ``PDMScorer`` (per time step, shapely polygons in STR-trees,
Python loops over intersecting pairs with per-proposal "collided ids" lists, per-polygon point
tests, per-point distances) on the same plain inputs as :mod:`rap.metrics.pdms`, scoring each
agent proposal together with the reference as NAVSIM scores [reference, agent]. It shares only the
comfort filters (:mod:`rap.metrics.comfort`, checked against scipy separately) and the rollout.

Not for production use: :func:`rap.metrics.pdms.score_scene` computes the same numbers about two
orders of magnitude faster. ``benchmarks/bench_score.py`` times both in the same run, and the tests
compare them proposal by proposal.
"""

from __future__ import annotations

import numpy as np
import shapely

from rap.metrics.comfort import extended_comfort, is_comfortable
from rap.metrics.pdm_inputs import AGENT_KINDS, ObjectKind, ScoringScene
from rap.metrics.pdm_collisions import ego_box
from rap.metrics.pdms import PDMScorerConfig, objects_clear_of_ego
from rap.sim.bicycle import StateIndex
from rap.sim.tracker import simulate
from rap.trajectory import NAVSIM_SAMPLING, TrajectorySampling

__all__ = ["naive_metrics", "naive_score_scene"]


def _angle(ego: np.ndarray, target: shapely.Point) -> float:
    v = np.array([target.x - ego[StateIndex.X], target.y - ego[StateIndex.Y]])
    u = np.array([np.cos(ego[StateIndex.HEADING]), np.sin(ego[StateIndex.HEADING])])
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.arccos(np.clip(np.dot(u, v / np.linalg.norm(v)), -1.0, 1.0)))


def naive_metrics(scene: ScoringScene, states: np.ndarray, config: PDMScorerConfig | None = None) -> dict[str, np.ndarray]:
    """Unnormalized sub-metrics of executed states (K, T, 11), one proposal at a time.

    Returns the same keys as :func:`rap.metrics.pdms.score_states` (history comfort with the
    scene's history, extended comfort against the scene's previous plan).
    """
    cfg = config if config is not None else PDMScorerConfig()
    veh = cfg.rollout.vehicle
    dt = cfg.rollout.dt
    ccfg = cfg.collision
    k_all, n_t = states.shape[:2]
    objs = scene.objects
    corners_all = objs.corners()
    trees, tokens = [], []
    for t in range(objs.num_steps):
        ids = np.nonzero(objs.valid[:, t])[0]
        tokens.append(ids)
        trees.append(shapely.STRtree(shapely.polygons(corners_all[ids, t]) if ids.size else []))
    first_speed = objs.first_valid_speed()
    lanes = [scene.lane_polygons[i] for i in sorted(scene.lane_polygons)]
    route = [scene.lane_polygons[i] for i in sorted(scene.lane_polygons) if i in scene.route_lane_ids]
    drivable = list(scene.drivable_area)
    inters = list(scene.intersections)
    line = shapely.LineString(scene.centerline[:, :2])
    red = [scene.red_light_polygons(t) for t in range(objs.num_steps)]
    out = {key: np.ones(k_all) for key in ("nc", "dac", "ddc", "tlc", "ttc", "ttc_v1", "lk")}
    out["progress"] = np.zeros(k_all)

    def in_any(polys: list, x: float, y: float) -> bool:
        return any(bool(shapely.contains_xy(p, x, y)) for p in polys)

    for k in range(k_all):
        st = states[k]
        h = st[:, StateIndex.HEADING]
        cx = st[:, StateIndex.X] + veh.rear_axle_to_center * np.cos(h)
        cy = st[:, StateIndex.Y] + veh.rear_axle_to_center * np.sin(h)
        polys, corners, multi, nondriv, oncoming, c_inter, r_inter = [], [], [], [], [], [], []
        for t in range(n_t):
            c, s = np.cos(h[t]), np.sin(h[t])
            loc = np.array([[veh.half_length, -veh.half_width], [veh.half_length, veh.half_width],
                            [-veh.half_length, veh.half_width], [-veh.half_length, -veh.half_width]])
            cr = np.stack([cx[t] + c * loc[:, 0] - s * loc[:, 1], cy[t] + s * loc[:, 0] + c * loc[:, 1]], axis=-1)
            corners.append(cr)
            polys.append(shapely.Polygon(cr))
            counts = [sum(bool(shapely.contains_xy(p, px, py)) for px, py in cr) for p in lanes]
            multi.append(sum(c_ > 0 for c_ in counts) > 1 and all(c_ != 4 for c_ in counts))
            nondriv.append(sum(in_any(drivable, px, py) for px, py in cr) < 4)
            oncoming.append(not in_any(route, cx[t], cy[t]))
            c_inter.append(in_any(inters, cx[t], cy[t]))
            r_inter.append(in_any(inters, st[t, StateIndex.X], st[t, StateIndex.Y]))
        # NC
        ignored: set[int] = set()
        for t in range(n_t):
            for g in trees[t].query(polys[t], predicate="intersects"):
                n = int(tokens[t][g])
                if n in ignored:
                    continue
                speed = np.hypot(st[t, StateIndex.VELOCITY_X], st[t, StateIndex.VELOCITY_Y])
                obj_poly = shapely.Polygon(corners_all[n, t])
                stopped = objs.kinds[n] == ObjectKind.STATIC_OBJECT or first_speed[n] <= ccfg.stopped_speed_threshold
                behind = _angle(st[t], obj_poly.centroid) > np.deg2rad(ccfg.behind_angle_deg)
                front = shapely.LineString([corners[t][0], corners[t][1]]).intersects(obj_poly)  # front-right, front-left
                if speed <= ccfg.stopped_speed_threshold:
                    kind = "stopped_ego"
                elif stopped:
                    kind = "stopped_track"
                elif behind:
                    kind = "rear"
                elif front:
                    kind = "front"
                else:
                    kind = "lateral"
                if kind in ("front", "stopped_track") or (kind == "lateral" and (multi[t] or nondriv[t])):
                    penalty = 0.0 if objs.kinds[n] in [int(a) for a in AGENT_KINDS] else ccfg.non_agent_penalty
                    out["nc"][k] = min(out["nc"][k], penalty)
                else:
                    ignored.add(n)
        out["dac"][k] = 0.0 if any(nondriv) else 1.0
        # DDC
        prog = np.zeros(n_t)
        prog[1:] = np.hypot(np.diff(cx), np.diff(cy))
        prog[~(np.array(oncoming) & ~np.array(c_inter))] = 0.0
        hz = int(cfg.driving_direction_horizon_s / dt)
        worst = max(prog[max(0, t - hz) : t + 1].sum() for t in range(n_t))
        out["ddc"][k] = 1.0 if worst < cfg.driving_direction_compliance_threshold else (0.5 if worst < cfg.driving_direction_violation_threshold else 0.0)
        # TLC
        out["tlc"][k] = 0.0 if any(p.intersects(polys[t]) for t in range(n_t) for p in red[t]) else 1.0
        # EP (raw)
        out["progress"][k] = max(line.project(shapely.Point(cx[-1], cy[-1])) - line.project(shapely.Point(cx[0], cy[0])), 0.0)
        # TTC (v1: all steps, v2: steps whose 0.9 s look-ahead is in the horizon)
        for key, last in (("ttc_v1", n_t - 1), ("ttc", n_t - 1 - cfg.ttc_v2_max_lookahead_steps)):
            ignored = set()
            for t in range(last + 1):
                speed = np.hypot(st[t, StateIndex.VELOCITY_X], st[t, StateIndex.VELOCITY_Y])
                for look in ccfg.ttc_lookahead_steps:
                    if t + look >= objs.num_steps:
                        continue
                    shift = np.array([np.cos(h[t]), np.sin(h[t])]) * speed * look * dt
                    moved = shapely.Polygon(corners[t] + shift)
                    for g in trees[t + look].query(moved, predicate="intersects"):
                        n = int(tokens[t + look][g])
                        if n in ignored or speed < ccfg.ttc_stopped_speed_threshold:
                            continue
                        ang = _angle(st[t], shapely.Polygon(corners_all[n, t + look]).centroid)
                        risky = multi[t] or nondriv[t] or r_inter[t]
                        if ang < np.deg2rad(ccfg.ahead_angle_deg) or (risky and not ang > np.deg2rad(ccfg.behind_angle_deg)):
                            out[key][k] = 0.0
                        else:
                            ignored.add(n)
        # LK
        run, need = 0, int(np.ceil(cfg.lane_keeping_horizon_s / dt))
        for t in range(n_t):
            if c_inter[t]:
                continue
            run = run + 1 if shapely.Point(cx[t], cy[t]).distance(line) > cfg.lane_keeping_deviation_limit else 0
            if run >= need:
                out["lk"][k] = 0.0
                break
    out["comfort"] = is_comfortable(states, dt, cfg.v1_comfort_filters, cfg.comfort_bounds, veh)
    hist = scene.history_state_array()
    if hist is not None:
        padded = np.concatenate([np.broadcast_to(hist, (k_all,) + hist.shape), states], axis=1)
        out["hc"] = is_comfortable(padded, dt, cfg.v2_comfort_filters, cfg.comfort_bounds, veh)
    else:
        out["hc"] = np.ones(k_all)
    if scene.previous_plan is not None:
        pp = scene.previous_plan
        prev = simulate(pp.poses[None], pp.sampling, pp.ego, cfg.rollout)[0]
        out["ec"] = extended_comfort(states, prev, int(round(pp.time_offset_s / dt)), dt, cfg.extended_comfort_bounds)
    else:
        out["ec"] = np.full(k_all, np.nan)
    return out


def naive_score_scene(
    scene: ScoringScene,
    proposals: np.ndarray,
    reference_states: np.ndarray,
    sampling: TrajectorySampling = NAVSIM_SAMPLING,
    config: PDMScorerConfig | None = None,
) -> dict[str, np.ndarray]:
    """PDMS v1 / EPDMS v2 (no human filter) of each proposal, scored one at a time as the pair
    [reference, proposal] (NAVSIM's loop). ``reference_states`` (41, 11) is the executed reference.
    v2 metrics are scored without the objects overlapping the ego at t = 0 (checked here with
    per-object shapely polygons), v1 metrics with every object.

    Returns a dict of (K,) arrays: the sub-metrics of :func:`naive_metrics` plus ``ep``, ``ep_v1``,
    ``pdms`` and ``epdms``.
    """
    cfg = config if config is not None else PDMScorerConfig()
    p = np.asarray(proposals, dtype=np.float64)
    # v2's log replay drops the tracks that overlap the ego at t = 0.
    ego_polygon = shapely.Polygon(ego_box(scene.ego.state_array(), cfg.rollout.vehicle)[0])
    objects = scene.objects
    keep = np.array([not (objects.valid[i, 0] and shapely.Polygon(objects.corners()[i, 0]).intersects(ego_polygon)) for i in range(len(objects))], dtype=bool)
    scene_v2 = scene if keep.all() else objects_clear_of_ego(scene, cfg.rollout.vehicle)
    rows = []
    for k in range(p.shape[0]):
        states = np.concatenate([reference_states[None], simulate(p[k : k + 1], sampling, scene.ego, cfg.rollout)])
        m1 = naive_metrics(scene, states, cfg)
        m = naive_metrics(scene_v2, states, cfg) if scene_v2 is not scene else m1
        res = {key: float(v[1]) for key, v in m.items()}
        ref = {key: float(v[0]) for key, v in m.items()}
        for key in ("nc", "dac", "ttc_v1", "comfort", "progress"):
            res[f"{key}_v1"] = float(m1[key][1])
        # v1: penalized progress over the pair's best penalized progress (0 if penalized and the
        # pair stands still); v2: raw progress over that best, clipped to [0, 1] (1 if still).
        mult = [np.prod([m1[key][i] for key in ("nc", "dac")]) for i in (0, 1)]
        pen = np.array([m1["progress"][0], m1["progress"][1]]) * np.array(mult)
        best = pen.max()
        res["ep_v1"] = pen[1] / best if best > cfg.progress_distance_threshold else (0.0 if mult[1] == 0 else 1.0)
        mult = [np.prod([m[key][i] for key in ("nc", "dac", "ddc", "tlc")]) for i in (0, 1)]
        pen = np.array([ref["progress"], res["progress"]]) * np.array(mult)
        best = pen.max()
        res["ep"] = min(max(res["progress"] / best, 0.0), 1.0) if best > cfg.progress_distance_threshold else 1.0
        w1 = cfg.v1_weights
        res["pdms"] = res["nc_v1"] * res["dac_v1"] * (w1[0] * res["ep_v1"] + w1[1] * res["ttc_v1_v1"] + w1[2] * res["comfort_v1"]) / w1.sum()
        res["ttc_v1"], res["comfort"] = res.pop("ttc_v1_v1"), res.pop("comfort_v1")
        for key in ("nc_v1", "dac_v1", "progress_v1"):
            res.pop(key)
        w2 = cfg.v2_weights.copy()
        terms = np.array([res["ep"], res["ttc"], res["lk"], res["hc"], res["ec"]])
        if np.isnan(terms[-1]):
            w2[-1], terms[-1] = 0.0, 0.0
        res["epdms"] = res["nc"] * res["dac"] * res["ddc"] * res["tlc"] * float((w2 * terms).sum() / w2.sum())
        rows.append(res)
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}
