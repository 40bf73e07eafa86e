"""Background pedestrians on the crosswalks of all-way-stop junctions: their draws, when they
step out, and that the world's vehicles and the expert leave them unharmed."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from rap.eval.closed_loop.infractions import box_polygons
from rap.eval.closed_loop.pedestrians import CROSSWALK_SPEED, crosswalk_crossings, may_cross
from rap.eval.closed_loop.routes import load_routes, route_town
from rap.eval.closed_loop.world import World, WorldConfig


def _stop_sign_route():
    return [r for r in load_routes("bench:base") if r.event.kind == "stop_sign"][2]


def test_crossings_start_and_end_on_opposite_waiting_points_at_poisson_times():
    town = route_town(_stop_sign_route().town_seed)
    cws = [c for c in town.crosswalks if not town.junctions[c.junction].signalized]
    walkers, times, which = crosswalk_crossings(cws, np.random.default_rng(0), 1.0, 600.0)
    assert len(walkers) == len(times) == len(which) > 0
    assert (times > 0).all() and (times <= 600.0).all()
    for k in set(which):
        t = times[np.array(which) == k]
        assert (np.diff(t) > 0).all()
    # about one a minute per crosswalk over 10 minutes
    assert 0.5 * 10 * len(cws) <= len(walkers) <= 1.5 * 10 * len(cws)
    for i, k in enumerate(which):
        cw = cws[k]
        mid = 0.5 * (walkers.start[i] + walkers.goal[i])
        assert abs((mid - cw.centre) @ cw.across) < 1e-9 and abs((mid - cw.centre) @ cw.along) <= 0.25 * cw.width + 1e-9
        assert walkers.lengths[i] == pytest.approx(2 * cw.half_length)
    assert CROSSWALK_SPEED[0] <= walkers.speed.min() and walkers.speed.max() <= CROSSWALK_SPEED[1]
    again, t2, _ = crosswalk_crossings(cws, np.random.default_rng(0), 1.0, 600.0)
    np.testing.assert_array_equal(again.start, walkers.start)
    np.testing.assert_array_equal(t2, times)
    none, t0, _ = crosswalk_crossings(cws, np.random.default_rng(0), 0.0, 600.0)
    assert len(none) == 0 and t0.shape == (0,)


@pytest.mark.parametrize(
    "xy, speed, ok",
    [
        (np.zeros((0, 2)), np.zeros(0), True),
        (np.array([[0.0, -2.0]]), np.array([0.0]), False),  # a standing car's centre 2 m off: within 3 m
        (np.array([[0.0, -5.0]]), np.array([0.0]), True),  # 5 m off, standing (a car waiting at the stop line)
        (np.array([[0.0, -20.0]]), np.array([8.0]), False),  # 8 m/s, 20 m away: 27 m needed
        (np.array([[0.0, -40.0]]), np.array([8.0]), True),
    ],
)
def test_a_pedestrian_steps_out_only_with_no_vehicle_close_to_the_crosswalk(xy, speed, ok):
    zone = shapely.box(-4.0, 0.0, 4.0, 3.0)
    assert may_cross(zone, xy, speed) is ok


def test_background_pedestrians_cross_all_way_stops_and_no_vehicle_touches_them():
    spec = _stop_sign_route()
    world = World(spec)
    town = world.town
    bg = np.isfinite(world.walk_times)
    assert bg.sum() >= 3
    stops = [c for c in town.crosswalks if not town.junctions[c.junction].signalized]
    for p in world.walkers.start[bg]:  # every one waits at an all-way-stop crosswalk's end
        assert min(abs(np.hypot(*(p - c.centre)) - c.half_length) for c in stops) < 0.3 * max(c.width for c in stops)
    touched = 0
    for _ in range(900):
        world.step()
        a = world.agents
        act = np.flatnonzero(a.active)
        wp = world.walkers.positions()
        cars = box_polygons(a.poses()[act, 0], a.poses()[act, 1], a.poses()[act, 2], a.length[act], a.width[act])
        peds = box_polygons(wp[:, 0], wp[:, 1], world.walkers.headings(), np.full(len(wp), 0.6), np.full(len(wp), 0.6))
        touched += int(shapely.STRtree(cars).query(peds, predicate="intersects").shape[1])
    crossed = world.walkers.walked[bg] > 0
    assert crossed.sum() >= 2 and touched == 0
    due = world.walk_times[bg] <= world.time_s
    assert not (crossed & ~due).any()  # nobody before their time


def test_no_background_pedestrians_with_a_rate_of_0():
    spec = _stop_sign_route()
    assert len(World(spec, WorldConfig(crosswalk_pedestrians_per_min=0.0)).walkers) == 0
    ped = [r for r in load_routes("bench:base") if r.event.kind == "ped_crossing"][0]
    world = World(ped, WorldConfig(crosswalk_pedestrians_per_min=0.0))
    assert len(world.walkers) == 1 and world.walk_times[0] == np.inf
