"""The closed-loop world on its own: IDM traffic obeys the timed lights and the ego, snapshots
are valid scenes, the world is deterministic."""

from __future__ import annotations

import numpy as np
import shapely

from rap.eval.closed_loop.infractions import box_polygons
from rap.eval.closed_loop.routes import load_routes
from rap.eval.closed_loop.world import FUTURE_STEPS, World
from rap.scene import LightState
from rap.sim.bicycle import PACIFICA


def _world(k: int) -> World:
    return World(load_routes("bench:dev10")[k])


def test_background_traffic_never_passes_a_stop_line_on_red_and_never_hits_the_standing_ego():
    world = _world(7)  # without the light rule, its traffic passes stop lines on red 11 times
    c, h, _ = world.ego_box()
    ego = box_polygons(c[0], c[1], h, PACIFICA.length, PACIFICA.width)[0]
    passed_on_red = moving = 0
    for _ in range(400):
        before = world.agents.s + 0.5 * world.agents.length
        states = world.light_states()
        world.step()
        after = world.agents.s + 0.5 * world.agents.length
        moving += int(np.sum(world.agents.v > 1.0))
        for a, arc, row in world.agent_stops:
            # (after 5 s: vehicles spawned at speed right before a red line cannot stop)
            if world.time_s > 5.0 and world.obeys_lights[a] and before[a] < arc <= after[a] and states[row] == LightState.STOP:
                passed_on_red += 1
        o = world.others()
        assert not np.any(shapely.intersects(ego, box_polygons(o["x"], o["y"], o["heading"], o["length"], o["width"])) & o["valid"])
    assert moving > 0  # traffic flows
    assert passed_on_red == 0


def test_the_lead_vehicle_brakes_to_a_stop_and_drives_on():
    world = _world(0)
    assert world.spec.event.kind == "lead_brake"
    phases = set()
    # the ego stands still: the lead brakes 60 m past the event's point at the latest
    for _ in range(900):
        world.step()
        phases.add(world.lead_phase)
    assert {"brake", "wait", "done"} <= phases


def test_snapshot_is_a_scene_with_history_now_and_constant_velocity_future():
    world = _world(2)
    for _ in range(30):
        world.step()
    scene = world.snapshot()
    now = scene.current_index
    assert now == world.past_steps and scene.num_steps == now + 1 + FUTURE_STEPS
    assert scene.timestamps[now] == np.float64(world.time_s) or abs(scene.timestamps[now] - world.time_s) < 1e-9
    assert scene.ego_index == 0 and scene.ego_route[:2] == tuple(int(world.lane_ids[i]) for i in world.spec.lanes[:2])
    tr = scene.tracks
    moving = np.flatnonzero(tr.valid[:, now] & (np.hypot(tr.vx[:, now], tr.vy[:, now]) > 1.0))
    assert moving.size
    r = moving[0]
    np.testing.assert_allclose(tr.x[r, now + 10] - tr.x[r, now], tr.vx[r, now] * 1.0, atol=1e-9)
    assert len(scene.traffic_lights) == len(world.signal_lanes)


def test_same_seed_same_world():
    a, b = _world(6), _world(6)
    for _ in range(200):
        a.step()
        b.step()
    np.testing.assert_array_equal(a.agents.s, b.agents.s)
    np.testing.assert_array_equal(a.agents.active, b.agents.active)
