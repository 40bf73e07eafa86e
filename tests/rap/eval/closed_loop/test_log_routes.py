"""Real-log-seeded closed-loop routes (``--routes womd:PATH``, :mod:`rap.eval.closed_loop.log_world`)
on the shipped WOMD scenario. Its logged ego (the SDC) waits at a red left-turn arrow for the
whole log; routes of moving logged vehicles (``ego_row``) exercise the moving case."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from typer.testing import CliRunner

from rap.cli import app
from rap.eval.closed_loop.config import ClosedLoopConfig
from rap.eval.closed_loop.infractions import box_polygons
from rap.eval.closed_loop.log_world import (
    LogRouteSpec,
    LogWorld,
    _load_scene,
    build_log_route,
    load_log_routes,
)
from rap.eval.closed_loop.runner import evaluate_closed_loop, load_routes, make_world
from rap.eval.closed_loop.world import WorldConfig
from rap.scene import StopSigns
from rap.sim.bicycle import PACIFICA

WOMD = Path(__file__).resolve().parents[4] / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"
MOVING = 22  # a logged vehicle driving 81.5 m straight at ~10 m/s, valid throughout
FOLLOWED = (1670, 1678)  # logged vehicles that drive through row 22's position behind it


@pytest.fixture(scope="module")
def scene():
    return _load_scene(str(WOMD), 0)


@pytest.fixture(scope="module")
def moving(scene) -> LogRouteSpec:
    return build_log_route(scene, 0, str(WOMD), 0, ego_row=MOVING)


def _config(**closed_loop) -> ClosedLoopConfig:
    cfg = ClosedLoopConfig()
    return cfg.model_copy(update={"closed_loop": cfg.closed_loop.model_copy(update={"report_media": False, **closed_loop})})


def test_womd_routes_one_per_scenario_the_sdc_waits_at_its_light(scene):
    specs = load_routes(f"womd:{WOMD}")
    assert [s.route_id for s in specs] == ["RouteScenario_0"]
    with pytest.warns(RuntimeWarning, match="skipped .*perception_frame.* not a Scenario proto"):  # the folder's other file
        assert load_log_routes(f"womd:{WOMD.parent}") == specs
    spec = specs[0]
    # the SDC stands on lane 548 for the whole log: a route of length 0 through its only successor
    assert spec.lanes[:2] == (548, 455) and spec.logged_lanes == 1 and spec.length == 0.0
    assert spec.scenario_name == "LogReplay_637f20cafde22ff8" and spec.abilities == ()
    w = LogWorld(spec)
    assert w.min_duration_s == pytest.approx(8.0, abs=0.01)
    row = w.signal_row[w.route_lanes[1]]
    assert w.light_states()[row] == 4 and w.light_states(100.0)[row] == 4  # ARROW_STOP read as STOP, held after the log


def test_the_route_follows_the_logged_path(scene, moving):
    w = LogWorld(moving)
    tr = scene.tracks
    xy = np.stack([tr.x[MOVING, 10:], tr.y[MOVING, 10:]], 1)
    pts, arcs = w.route_points()
    d = np.hypot(pts[None, :, 0] - xy[:, None, 0], pts[None, :, 1] - xy[:, None, 1])
    assert d.min(axis=1).max() < 1.0  # every logged box centre is on the route
    logged = float(np.hypot(*np.diff(xy, axis=0).T).sum())
    assert moving.length == pytest.approx(logged, abs=1.0)
    # the logged end projects onto route arc `length`; the route goes on past it
    assert arcs[int(np.argmin(d[-1]))] == pytest.approx(moving.length, abs=0.6)
    assert arcs[-1] > moving.length + 20.0  # (as far as the map goes: it ends 31 m on)
    assert np.allclose(w.route_pose(0.0)[0], xy[0], atol=1.0)


def test_the_ego_starts_at_its_logged_state(scene, moving):
    w = LogWorld(moving)
    tr = scene.tracks
    c, h, v = w.ego_box()
    assert np.allclose(c, [tr.x[MOVING, 10], tr.y[MOVING, 10]]) and h == pytest.approx(tr.heading[MOVING, 10])
    assert v == pytest.approx(np.hypot(tr.vx[MOVING, 10], tr.vy[MOVING, 10]), abs=0.05) and v > 9.0
    # its logged past is its history (box centres)
    past = w.history[-11:-1]
    assert np.allclose([f["x"][0] for f in past], tr.x[MOVING, 0:10]) and np.allclose([f["y"][0] for f in past], tr.y[MOVING, 0:10])
    snap = w.snapshot()
    assert snap.tracks.valid[:, snap.current_index].sum() == w.others()["valid"].sum() + 1
    assert snap.tracks.speed[0, snap.current_index] == pytest.approx(v)


def test_log_traffic_replays_the_logged_boxes_exactly(scene, moving):
    w = LogWorld(moving, traffic="log")
    tr = scene.tracks
    rows = w.rows
    for tick in range(81):
        o = w.others()
        k = 10 + tick
        assert np.array_equal(o["valid"], tr.valid[rows, k])
        ok = o["valid"]
        assert np.array_equal(o["x"][ok], tr.x[rows, k][ok]) and np.array_equal(o["y"][ok], tr.y[rows, k][ok])
        assert np.array_equal(o["heading"][ok], tr.heading[rows, k][ok])
        w.step()
    # after the log: standing agents hold their last pose, moving ones are gone
    o = w.others()
    last_speed = np.hypot(tr.vx[rows, 90], tr.vy[rows, 90])
    assert np.array_equal(o["valid"], tr.valid[rows, 90] & (last_speed < 0.5))
    assert np.array_equal(o["x"][o["valid"]], tr.x[rows, 90][o["valid"]])


def _contacts(world: LogWorld, ticks: int) -> tuple[set[int], dict[int, list[float]]]:
    hits, speeds = set(), {i: [] for i in FOLLOWED}
    for _ in range(ticks):
        world.step()  # no plan: the ego stands where it started
        o = world.others()
        c, h, _ = world.ego_box()
        ego = box_polygons(c[0], c[1], h, PACIFICA.length, PACIFICA.width)[0]
        idx = np.flatnonzero(o["valid"])
        hit = shapely.intersects(ego, box_polygons(o["x"][idx], o["y"][idx], o["heading"][idx], o["length"][idx], o["width"][idx]))
        hits |= {int(o["ids"][i]) for i in idx[hit]}
        for i in FOLLOWED:
            j = int(np.flatnonzero(o["ids"] == i)[0])
            speeds[i].append(float(np.hypot(o["vx"][j], o["vy"][j])))
    return hits, speeds


def test_idm_traffic_starts_at_the_logged_states_and_brakes_for_a_stopped_ego(scene, moving):
    tr = scene.tracks
    w = LogWorld(moving, traffic="idm")
    assert len(w.idm) >= 10
    o = w.others()
    cols = w.idm_cols
    rows = w.rows[cols]
    assert np.array_equal(w.idm.track_index, rows)
    gap = np.hypot(o["x"][cols] - tr.x[rows, 10], o["y"][cols] - tr.y[rows, 10])
    # on their lane's centerline at their logged arc (snapped sideways: up to half a wide lane)
    assert np.median(gap) < 0.5 and gap.max() < 2.5
    dh = np.abs((o["heading"][cols] - tr.heading[rows, 10] + np.pi) % (2 * np.pi) - np.pi)
    assert np.degrees(np.median(dh)) < 2.0 and np.degrees(dh).max() < 45.0  # (the lane's direction; two are mid-turn)
    h = tr.heading[rows, 10]
    assert np.allclose(w.idm.v, np.maximum(tr.vx[rows, 10] * np.cos(h) + tr.vy[rows, 10] * np.sin(h), 0.0))
    # the ego stops dead: log replay drives the followers through it, IDM stops them behind it
    replayed, _ = _contacts(LogWorld(moving, traffic="log"), 60)
    assert set(FOLLOWED) <= replayed
    reacting, speeds = _contacts(w, 80)
    assert not reacting
    # 1670 follows in the ego's lane: it comes to a stop behind the ego; 1678 changes into the
    # ego's lane as in the log (a lane change into a safe gap) and queues behind 1670
    assert min(speeds[1670]) < 0.1 and min(speeds[1678]) < 0.5
    o = w.others()
    c, h, _ = w.ego_box()
    f = np.array([np.cos(h), np.sin(h)])
    along = {}
    for tid in FOLLOWED:
        j = int(np.flatnonzero(o["ids"] == tid)[0])
        d = np.array([o["x"][j] - c[0], o["y"][j] - c[1]])
        along[tid] = float(d @ f)
        assert abs(float(d @ np.array([-f[1], f[0]]))) < 0.5  # in the ego's lane
    assert -15.0 < along[1670] < -0.5 * (PACIFICA.length + o["length"][int(np.flatnonzero(o["ids"] == 1670)[0])])
    assert along[1678] < along[1670] - 4.0


def test_the_expert_drives_the_shipped_route_and_results_come_out(tmp_path):
    out = tmp_path / "womd"
    report = evaluate_closed_loop("expert", f"womd:{WOMD}", out, config=_config())
    assert report["routes"] == 1 and report["driving_score"] == 100.0 and report["success_rate"] == 100.0
    records = json.loads((out / "results.json").read_text())["_checkpoint"]["records"]
    (rec,) = records
    assert rec["status"] == "Perfect" and rec["scenario_name"] == "LogReplay_637f20cafde22ff8"
    assert rec["town_name"] == "womd:womd_scenario_637f20cafde22ff8.tfrecord@0" and rec["meta"]["route_length"] == 0.0
    assert rec["meta"]["duration_game"] == pytest.approx(8.0)  # judged for the whole logged future
    assert not any(rec["infractions"].values())
    assert json.loads((out / "closed_loop_eval.json").read_text())["driving_score"] == 100.0


def test_the_expert_completes_a_moving_route_with_idm_traffic(moving):
    from rap.eval.closed_loop.runner import _Session, load_agent_spec, run_route

    cfg = _config(traffic="idm")
    session = _Session(load_agent_spec("expert"), cfg)
    try:
        result = run_route(session, moving, cfg)
    finally:
        session.close()
    rec = result["record"]
    assert rec["status"] in ("Completed", "Perfect") and rec["scores"]["score_composed"] == 100.0, result["timeline"]


def test_traffic_is_a_config_key():
    assert ClosedLoopConfig().closed_loop.traffic == "log"
    spec = load_routes(f"womd:{WOMD}")[0]
    assert make_world(spec, _config(traffic="idm")).traffic == "idm"
    with pytest.raises(ValueError, match="traffic"):
        ClosedLoopConfig.model_validate({"closed_loop": {"traffic": "replay"}})


def test_a_bad_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "none.tfrecord"
    with pytest.raises(ValueError, match=r"womd:.*none\.tfrecord.*no such file"):
        load_routes(f"womd:{missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no input scenes"):
        load_routes(f"womd:{empty}")
    junk = tmp_path / "junk.tfrecord"
    junk.write_bytes(b"not a tfrecord")
    with pytest.warns(RuntimeWarning, match="junk.tfrecord"), pytest.raises(ValueError, match="no route"):
        load_routes(f"womd:{junk}")
    result = CliRunner().invoke(app, ["eval", "closed-loop", "--agent", "constant_velocity", "--routes", f"womd:{missing}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "none.tfrecord" in result.output and "no such file" in result.output
    with pytest.raises(ValueError, match="traffic"):
        LogWorld(load_routes(f"womd:{WOMD}")[0], WorldConfig(), traffic="replay")


def test_vehicle_seats_add_a_route_per_moving_logged_vehicle(scene):
    """closed_loop.log_seats=vehicles: the ego's route first, then one from the seat of every
    other vehicle that drives >= 20 m of the log along its lanes (the shipped SDC stands still)."""
    from rap.eval.closed_loop.log_world import (
        MIN_SEAT_PATH_M,
        MIN_SEAT_ROUTE_M,
        _box_centres,
    )
    from rap.scene import AgentType

    ego_only = load_routes(f"womd:{WOMD}")
    specs = load_routes(f"womd:{WOMD}", "vehicles")
    assert specs[0] == ego_only[0] and [s.index for s in specs] == list(range(len(specs)))
    seats = [s.ego_row for s in specs[1:]]
    assert len(seats) >= 10 and seats == sorted(set(seats)) and MOVING in seats and scene.ego_index not in seats
    step = scene.current_index
    for spec in specs[1:]:
        assert int(scene.tracks.types[spec.ego_row]) == int(AgentType.VEHICLE) and scene.tracks.valid[spec.ego_row, step]
        xy, valid = _box_centres(scene, spec.ego_row)
        assert float(np.hypot(*np.diff(xy[step:][valid[step:]], axis=0).T).sum()) >= MIN_SEAT_PATH_M
        assert spec.length >= MIN_SEAT_ROUTE_M
        assert spec.scenario_name == f"LogReplay_637f20cafde22ff8_row{spec.ego_row}"
    # the driven vehicle starts where and as fast as it was logged
    w = make_world(specs[seats.index(MOVING) + 1], _config(log_seats="vehicles"))
    c, _, v = w.ego_box()
    logged = np.array([scene.tracks.x[MOVING, step], scene.tracks.y[MOVING, step]])
    assert np.hypot(*(c - logged)) < 0.5
    assert v == pytest.approx(float(np.hypot(scene.tracks.vx[MOVING, step], scene.tracks.vy[MOVING, step])), abs=0.05)
    with pytest.raises(ValueError, match="log_seats"):
        load_log_routes(f"womd:{WOMD}", "everyone")


def test_idm_vehicles_stop_at_a_stop_sign_of_their_route_then_go_on(scene, moving):
    """The shipped map has no stop sign on an IDM vehicle's way: one is added 25 m ahead of a
    moving vehicle, on the lane it will be driving there."""
    w = LogWorld(moving, traffic="idm")
    ids = w.others()["ids"][w.idm_cols]
    a = int(np.flatnonzero((w.idm.v > 5.0) & ~np.isin(ids, FOLLOWED))[0])
    arc = float(w.idm.s[a] + 0.5 * w.idm.length[a] + 25.0)
    lane = int(w.idm.routes.lane_at(np.full(len(w.idm), arc))[a])
    pos, _ = w.idm.routes.pose(np.full(len(w.idm), arc))
    signs = StopSigns(ids=np.array([900001]), positions=np.array([[pos[a, 0], pos[a, 1], 0.0]]), lane_ids=((int(scene.map.lanes.ids[lane]),),))
    signed = dataclasses.replace(scene, map=dataclasses.replace(scene.map, stop_signs=signs))
    w = LogWorld(moving, traffic="idm", scene=signed)
    assert len(w.idm_signs) >= 1
    stood, fronts = 0.0, []
    for _ in range(120):
        w.step()
        front = float(w.idm.s[a] + 0.5 * w.idm.length[a])
        fronts.append(front)
        if w.idm.v[a] < 0.1 and arc - 4.0 <= front <= arc + 1.0:
            stood += w.dt
    assert stood >= 1.0 - 1e-9  # stopped at the sign for a second
    assert max(fronts) > arc + 5.0  # and went on
    # without the sign it drives through at speed
    plain = LogWorld(moving, traffic="idm")
    for _ in range(40):
        plain.step()
        assert plain.idm.v[a] > 1.0 or plain.idm.s[a] + 0.5 * plain.idm.length[a] > arc
