"""Tests for rap/metrics/pdm_collisions.py: box tests, NC and TTC on hand-built scenes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from rap.geometry import box_corners_2d
from rap.metrics.pdm_collisions import (
    CollisionConfig,
    boxes_intersect,
    find_contacts,
    no_at_fault_collisions,
    obb_overlap,
    relative_angle,
    segment_intersects_box,
    time_to_collision,
)
from rap.metrics.pdm_inputs import ObjectKind
from rap.sim import StateIndex


def test_box_tests_agree_with_shapely():
    rng = np.random.default_rng(0)
    n = 4000
    a = (rng.uniform(-3, 3, (n, 2)), rng.uniform(-np.pi, np.pi, n), rng.uniform(0.5, 3, (n, 2)))
    b = (rng.uniform(-3, 3, (n, 2)), rng.uniform(-np.pi, np.pi, n), rng.uniform(0.5, 3, (n, 2)))
    ca = box_corners_2d(a[0][:, 0], a[0][:, 1], a[1], a[2][:, 0], a[2][:, 1])
    cb = box_corners_2d(b[0][:, 0], b[0][:, 1], b[1], b[2][:, 0], b[2][:, 1])
    want = shapely.intersects(shapely.polygons(ca), shapely.polygons(cb))
    np.testing.assert_array_equal(boxes_intersect(ca, cb), want)
    d = b[0] - a[0]
    got = obb_overlap(d[:, 0], d[:, 1], a[1], a[2][:, 0] / 2, a[2][:, 1] / 2, b[1], b[2][:, 0] / 2, b[2][:, 1] / 2)
    np.testing.assert_array_equal(got, want)
    seg = shapely.linestrings(ca[:, :2])
    np.testing.assert_array_equal(segment_intersects_box(ca[:, 0], ca[:, 1], cb), shapely.intersects(seg, shapely.polygons(cb)))


def test_relative_angle():
    ego = np.array([[0.0, 0.0]])
    assert relative_angle(ego, np.array([0.0]), np.array([[5.0, 0.0]]))[0] == pytest.approx(0.0)
    assert relative_angle(ego, np.array([0.0]), np.array([[-5.0, 0.1]]))[0] > np.deg2rad(150)
    assert np.isnan(relative_angle(ego, np.array([0.0]), ego))[0]


def _drive(speed: float, steps: int = 41, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
    """(1, T, 11) ego states at constant speed along +x."""
    s = np.zeros((1, steps, 11))
    s[0, :, StateIndex.X] = x0 + speed * 0.1 * np.arange(steps)
    s[0, :, StateIndex.Y] = y0
    s[0, :, StateIndex.VELOCITY_X] = speed
    return s


def _areas(k: int = 1, t: int = 41, multiple: bool = False) -> np.ndarray:
    a = np.zeros((k, t, 3), dtype=bool)
    a[..., 0] = multiple
    return a


def test_nc_stopped_vehicle_ahead_is_at_fault(objects_factory):
    make_objects = objects_factory
    objs = make_objects([dict(x=20.0)])
    nc, when = no_at_fault_collisions(_drive(10.0), _areas(), objs)
    assert nc[0] == 0.0 and when[0] > 0


def test_nc_static_object_costs_half(objects_factory):
    make_objects = objects_factory
    objs = make_objects([dict(x=20.0, length=0.5, width=0.5, kind=ObjectKind.STATIC_OBJECT)])
    nc, _ = no_at_fault_collisions(_drive(10.0), _areas(), objs)
    assert nc[0] == 0.5


def test_nc_rear_ended_or_standing_ego_is_not_at_fault(objects_factory):
    make_objects = objects_factory
    rear = make_objects([dict(x=-12.0, vx=15.0)])  # a faster car from behind
    assert no_at_fault_collisions(_drive(5.0), _areas(), rear)[0][0] == 1.0
    oncoming = make_objects([dict(x=20.0, vx=-8.0, heading=np.pi)])
    assert no_at_fault_collisions(_drive(0.0), _areas(), oncoming)[0][0] == 1.0  # stopped ego


def test_nc_lateral_collision_depends_on_ego_area(objects_factory):
    make_objects = objects_factory
    # A car cutting in from the left at the ego's flank, both moving.
    objs = make_objects([dict(x=-1.0, y=3.5, vx=10.0, vy=-1.5, heading=-0.15)])
    ego = _drive(10.0)
    free = no_at_fault_collisions(ego, _areas(), objs)[0][0]
    weaving = no_at_fault_collisions(ego, _areas(multiple=True), objs)[0][0]
    assert free == 1.0 and weaving == 0.0


def test_ttc_object_ahead_fails_and_standing_ego_is_skipped(objects_factory):
    make_objects = objects_factory
    # A slower car 12 m ahead: not hit within 4 s at 9 m/s vs 6 m/s... but within TTC's 0.9 s look-ahead.
    objs = make_objects([dict(x=14.0, vx=6.0)])
    ttc, when = time_to_collision(_drive(9.0), _areas(), np.zeros((1, 41), bool), objs, 40)
    assert ttc[0] == 0.0 and when[0] >= 0
    assert no_at_fault_collisions(_drive(9.0, steps=8), _areas(t=8), objs)[0][0] == 1.0
    ttc0, _ = time_to_collision(_drive(0.0), _areas(), np.zeros((1, 41), bool), make_objects([dict(x=5.5)]), 40)
    assert ttc0[0] == 1.0
    # v2 stops at step 31; v1 checks all steps (a car that only gets close at the end).
    late = make_objects([dict(x=50.0)], num_steps=51)
    (v1, _), (v2, _) = time_to_collision(_drive(10.0), _areas(), np.zeros((1, 41), bool), late, (40, 31))
    assert v1[0] == 0.0 and v2[0] == 1.0


def test_contacts_batch_shapes(objects_factory):
    make_objects = objects_factory
    objs = make_objects([dict(x=20.0), dict(x=-30.0, y=3.5, vx=12.0)])
    states = np.concatenate([_drive(10.0), _drive(0.0), _drive(5.0, y0=3.5)])
    c = find_contacts(states, objs, 40, config=CollisionConfig())
    assert len(c.k) == len(CollisionConfig().ttc_lookahead_steps)
    assert set(c.k[0].tolist()) == {0, 2}


def test_stacked_contacts_equal_each_scenes_own(objects_factory):
    """find_contacts over several scenes' rows and stacked objects (scenes of 41 and 51 steps)
    finds exactly each scene's own contacts, NC and TTC."""
    from rap.metrics.pdm_collisions import StackedObjects

    make_objects = objects_factory
    rng = np.random.default_rng(5)
    scenes = []
    for g in range(4):
        specs = [dict(x=float(rng.uniform(5, 60)), y=float(rng.choice([0.0, 0.8, 3.5, -3.5])), vx=float(rng.uniform(-8, 8)),
                      heading=float(rng.uniform(-0.3, 0.3)), kind=int(rng.integers(0, 4))) for _ in range(int(rng.integers(0, 7)))]  # fmt: skip
        objs = make_objects(specs, num_steps=51 if g % 2 else 41)
        rows = np.concatenate([_drive(float(v), y0=float(y)) for v, y in zip(rng.uniform(0, 16, 5), rng.choice([0.0, 1.0, 3.5], 5))])
        scenes.append((objs, rows))
    stacked = StackedObjects.stack([o for o, _ in scenes])
    states = np.concatenate([r for _, r in scenes])
    row_scene = np.repeat(np.arange(4), [len(r) for _, r in scenes])
    areas = _areas(len(states), multiple=True)
    rear = np.zeros((len(states), 41), bool)
    together = find_contacts(states, stacked, 40, row_scene=row_scene)
    nc_all, _ = no_at_fault_collisions(states, areas, stacked, contacts=together)
    (v1_all, _), (v2_all, _) = time_to_collision(states, areas, rear, stacked, (40, 31), contacts=together)
    total = 0
    for g, (objs, rows) in enumerate(scenes):
        lo, o0 = 5 * g, int(stacked.starts[g])
        alone = find_contacts(rows, objs, 40)
        for j in range(len(alone.k)):
            mine = (together.k[j] >= lo) & (together.k[j] < lo + 5)
            got = set(zip(together.k[j][mine] - lo, together.t[j][mine], together.n[j][mine] - o0))
            assert got == set(zip(alone.k[j], alone.t[j], alone.n[j]))
            total += len(got)
        nc, _ = no_at_fault_collisions(rows, areas[:5], objs, contacts=alone)
        (v1, _), (v2, _) = time_to_collision(rows, areas[:5], rear[:5], objs, (40, 31), contacts=alone)
        assert np.array_equal(nc_all[lo : lo + 5], nc) and np.array_equal(v1_all[lo : lo + 5], v1) and np.array_equal(v2_all[lo : lo + 5], v2)
    assert total > 10  # not a trivial case
