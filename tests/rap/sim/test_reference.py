"""Tests for rap/sim/reference.py (PDM-Closed-style IDM candidates)."""

from __future__ import annotations

import numpy as np
import shapely

from rap.sim import StateIndex
from rap.sim.reference import Obstacles, ReferencePlannerConfig, idm_candidates


def _obstacles(boxes: list[tuple[float, float]], steps: int = 41, polygons=()) -> Obstacles:
    n = len(boxes)
    x = np.tile(np.array([b[0] for b in boxes], dtype=float)[:, None], (1, steps)).reshape(n, steps)
    y = np.tile(np.array([b[1] for b in boxes], dtype=float)[:, None], (1, steps)).reshape(n, steps)
    z = np.zeros((n, steps))
    return Obstacles(x, y, z, z, z, np.full(n, 4.5), np.full(n, 2.0), np.ones((n, steps), bool), tuple(polygons))


def _ego(speed: float) -> np.ndarray:
    e = np.zeros(11)
    e[StateIndex.VELOCITY_X] = speed
    return e


LINE = np.stack([np.arange(-10.0, 200.0), np.zeros(210)], axis=1)


def test_candidates_shape_and_free_road_speeds():
    cands = idm_candidates(_ego(10.0), LINE, _obstacles([]), speed_limit=10.0)
    cfg = ReferencePlannerConfig()
    assert cands.shape == (len(cfg.lateral_offsets) * len(cfg.speed_fractions), 40, 3)
    # Offsets are lateral, the fastest candidate keeps 10 m/s.
    np.testing.assert_allclose(np.unique(np.round(cands[:, -1, 1], 6)), [-1.0, 0.0, 1.0], atol=1e-6)
    assert cands[:, -1, 0].max() == np.float64(cands[4, -1, 0])
    assert 39.0 < cands[:, -1, 0].max() < 41.0


def test_brakes_for_a_stopped_car_and_a_red_light():
    car = idm_candidates(_ego(10.0), LINE, _obstacles([(30.0, 0.0)]), speed_limit=10.0)
    front = car[:, :, 0] + 4.049  # front bumper of the rear-axle poses
    assert front[:, -1].max() < 30.0 - 2.25  # stops behind the car's rear
    red = shapely.box(40.0, -2.0, 60.0, 2.0)
    stop = idm_candidates(_ego(10.0), LINE, _obstacles([], polygons=[red]), speed_limit=10.0)
    assert (stop[:, -1, 0] + 4.049).max() < 40.0


def test_obstacles_are_objects_by_steps_and_reject_other_shapes():
    obs = _obstacles([(30.0, 0.0), (60.0, 3.0)], steps=41)
    assert obs.x.shape == obs.valid.shape == (2, 41)
    import pytest

    with pytest.raises(ValueError, match=r"Obstacles.x: expected shape \(2, 41\)"):
        Obstacles(obs.x.T, obs.y, obs.heading, obs.vx, obs.vy, obs.length, obs.width, obs.valid)
    with pytest.raises(ValueError, match="Obstacles.length"):
        Obstacles(obs.x, obs.y, obs.heading, obs.vx, obs.vy, np.ones(41), obs.width, obs.valid)


def test_obstacle_ahead_in_lane_slows_the_candidates_only_while_it_is_there():
    """An obstacle valid only for the first second blocks only then: the (N, S) layout is read
    per object and step (a transposed read would mix objects and steps)."""
    free = idm_candidates(_ego(10.0), LINE, _obstacles([]), speed_limit=10.0)
    blocked = _obstacles([(25.0, 0.0)], steps=41)
    always = idm_candidates(_ego(10.0), LINE, blocked, speed_limit=10.0)
    valid = np.zeros((1, 41), bool)
    valid[:, :10] = True
    brief = idm_candidates(_ego(10.0), LINE, Obstacles(blocked.x, blocked.y, blocked.heading, blocked.vx, blocked.vy, blocked.length, blocked.width, valid), speed_limit=10.0)
    x_free, x_always, x_brief = (c[:, -1, StateIndex.X].max() for c in (free, always, brief))
    assert x_always < 25.0 < x_free
    assert x_always < x_brief <= x_free + 1e-9



def test_batched_candidates_equal_candidates_scene_by_scene():
    """idm_candidates_batch plans many scenes in one pass, each bit-identical to idm_candidates."""
    from rap.sim.reference import idm_candidates_batch

    rng = np.random.default_rng(2)
    egos, lines, obstacles, limits = [], [], [], []
    for i in range(7):
        e = _ego(float(rng.uniform(0.0, 15.0)))
        e[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]] = [rng.uniform(-5, 5), rng.uniform(-1, 1), rng.uniform(-0.1, 0.1)]
        curve = rng.uniform(-0.01, 0.01)
        s = np.arange(-10.0, 150.0 + 40 * i)
        line = np.stack([s, curve * s**2], axis=1)
        boxes = [(float(rng.uniform(5, 80)), float(rng.uniform(-3, 3))) for _ in range(int(rng.integers(0, 6)))]
        steps = 41 if i % 2 else 51
        obs = _obstacles(boxes, steps=steps, polygons=[shapely.box(40, -4, 43, 4)] if i % 3 == 0 else ())
        if boxes:  # some moving, some invalid for a while
            obs = Obstacles(obs.x + np.arange(steps) * 0.3, obs.y, obs.heading, obs.vx + 3.0, obs.vy, obs.length, obs.width,
                            obs.valid & (np.arange(steps) % 7 != 3), obs.polygons)  # fmt: skip
        egos.append(e)
        lines.append(line)
        obstacles.append(obs)
        limits.append(None if i == 4 else float(rng.uniform(5.0, 15.0)))
    batch = idm_candidates_batch(egos, lines, obstacles, limits)
    assert len(batch) == 7
    for i in range(7):
        assert np.array_equal(batch[i], idm_candidates(egos[i], lines[i], obstacles[i], limits[i]))
    assert idm_candidates_batch([], [], []) == []
