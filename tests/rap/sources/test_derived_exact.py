"""The drivable-area derivation's shortcuts give exactly the geometry of the plain method.

``derive_drivable_area`` clips the road-edge and lane-boundary zones around each candidate face
through ``_RectClipper`` (only the parts near the face) and skips the lane share of faces that fail
the edge share; the rasters depend on every coordinate, so the rings must be equal bit for bit to
those of clipping the whole zones for every face.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import shapely

from rap.scene import LineSet, PolygonSet
from rap.sources import derived
from rap.sources.synthetic.world import load_synthetic
from rap.sources.womd import load_womd

WOMD = Path(__file__).resolve().parents[3] / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"


def _plain(geom):
    return lambda bounds: shapely.clip_by_rect(geom, *bounds)


def _same(a: PolygonSet, b: PolygonSet) -> bool:
    return np.array_equal(a.ids, b.ids) and np.array_equal(a.rings.points, b.rings.points) and np.array_equal(a.rings.offsets, b.rings.offsets)


def _maps():
    womd = load_womd(WOMD).map
    yield "womd", womd.lanes, womd.road_edges, womd.driveways
    rng = np.random.default_rng(14)
    for k in range(3):  # random sub-maps: other faces, other parts of the zones
        pick = np.sort(rng.choice(len(womd.lanes), size=len(womd.lanes) * 2 // 3, replace=False))
        # Only what the derivation reads of the lanes.
        lanes = SimpleNamespace(types=womd.lanes.types[pick], centerlines=womd.lanes.centerlines.select(pick), width=womd.lanes.width[pick])
        keep = np.sort(rng.choice(len(womd.road_edges), size=len(womd.road_edges) // 2, replace=False))
        edges = LineSet(ids=womd.road_edges.ids[keep], lines=womd.road_edges.lines.select(keep), types=womd.road_edges.types[keep])
        yield f"womd-sub{k}", lanes, edges, womd.driveways
    for seed in (0, 1):
        m = load_synthetic(seed).map
        yield f"synthetic:{seed}", m.lanes, m.road_edges, m.driveways


@pytest.mark.parametrize("name, lanes, edges, driveways", list(_maps()), ids=lambda v: v if isinstance(v, str) else "")
def test_drivable_area_equals_the_plain_method_bit_for_bit(monkeypatch, name, lanes, edges, driveways):
    fast = derived.derive_drivable_area(lanes, edges, driveways)
    monkeypatch.setattr(derived, "_RectClipper", _plain)
    plain = derived.derive_drivable_area(lanes, edges, driveways)
    assert len(plain) > 0
    assert _same(fast, plain), name


def test_rect_clipper_equals_clip_by_rect():
    rng = np.random.default_rng(3)
    blobs = [shapely.Point(rng.uniform(0, 100, 2)).buffer(rng.uniform(1, 8)) for _ in range(40)]
    zone = shapely.union_all(blobs)
    assert isinstance(zone, shapely.MultiPolygon)
    clip = derived._RectClipper(zone)
    for _ in range(200):
        x, y = rng.uniform(-10, 110, 2)
        bounds = np.array([x, y, x + rng.uniform(0.1, 30), y + rng.uniform(0.1, 30)])
        ring = shapely.box(*bounds).exterior
        got, want = clip(bounds), shapely.clip_by_rect(zone, *bounds)
        assert ring.intersection(got).length == ring.intersection(want).length
        assert shapely.equals_exact(shapely.normalize(got), shapely.normalize(want), tolerance=0) or (got.is_empty and want.is_empty)
