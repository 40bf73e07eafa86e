"""Tests for rap/metrics/pdm_areas.py: exact slab-indexed membership and ego-area flags."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import shapely.affinity

from rap.metrics import pdm_areas
from rap.metrics.pdm_areas import EgoAreaIndex, PreparedPolygons, SegmentGrid, bits_to_bool, ego_areas, index_bits, membership, membership_bits
from rap.metrics.pdm_collisions import ego_box
from rap.sim import StateIndex


def _polygons() -> list:
    t = np.linspace(0.0, 1.0, 40)
    polys = []
    for i in range(5):
        off = 3.5 * i
        left = np.stack([t * 60, off + 1.75 + 4 * np.sin(3 * t)], axis=1)
        right = np.stack([t * 60, off - 1.75 + 4 * np.sin(3 * t)], axis=1)
        polys.append(shapely.Polygon(np.concatenate([right, left[::-1]])))
    polys.append(shapely.Point(30, 5).buffer(12).difference(shapely.Point(30, 5).buffer(4)))  # with a hole
    polys.append(shapely.box(0, 0, 10, 10))
    polys.append(shapely.box(0, 0, 10, 10))  # duplicate: overlapping polygons
    polys.extend(shapely.box(70 + i, 0, 70.5 + i, 0.5) for i in range(60))  # > 64 polygons: two bit words
    return polys


@pytest.mark.parametrize("resolution", [0.05, 0.1, 0.37])
def test_membership_equals_shapely_contains(resolution, path):
    polys = _polygons()
    rng = np.random.default_rng(0)
    pts = rng.uniform([-5, -10], [135, 25], size=(20000, 2))
    # Points exactly on edges and vertices, and points very close to edges.
    edge_pts = np.concatenate([np.asarray(p.exterior.coords)[:, :2] for p in polys[:6]])
    pts = np.concatenate([pts, edge_pts, edge_pts + 1e-7, np.array([[0.0, 5.0], [5.0, 0.0]])])
    got = membership(PreparedPolygons.from_polygons(polys), pts, resolution)
    want = np.stack([shapely.contains_xy(p, pts[:, 0], pts[:, 1]) for p in polys], axis=1)
    assert got.shape == (len(pts), len(polys))
    np.testing.assert_array_equal(got, want)


def test_membership_empty_inputs():
    ps = PreparedPolygons.from_polygons([shapely.box(0, 0, 1, 1)])
    assert membership(ps, np.zeros((0, 2))).shape == (0, 1)
    assert membership(PreparedPolygons.from_polygons([]), np.zeros((3, 2))).shape == (3, 0)


def test_segment_grid_within_and_project_match_shapely():
    line_xy = np.stack([np.arange(100.0), 3 * np.sin(np.arange(100.0) / 15)], axis=1)
    line = shapely.LineString(line_xy)
    rng = np.random.default_rng(1)
    x = rng.uniform(-5, 105, 5000)
    pts = np.stack([x, np.interp(x, line_xy[:, 0], line_xy[:, 1]) + rng.uniform(-8, 8, x.size)], axis=1)
    near = SegmentGrid(line_xy, 0.5).within(pts[:, 0], pts[:, 1])
    np.testing.assert_array_equal(near, shapely.distance(shapely.points(pts), line) <= 0.5)
    arc = SegmentGrid(line_xy, 3.0, cell=3.0).project(pts[:, 0], pts[:, 1], line)
    np.testing.assert_allclose(arc, shapely.line_locate_point(line, shapely.points(pts)), atol=1e-9)


def _ego_at(x: float, y: float, heading: float = 0.0) -> np.ndarray:
    s = np.zeros((1, 1, 11))
    s[0, 0, [StateIndex.X, StateIndex.Y, StateIndex.HEADING]] = [x, y, heading]
    return s


def test_ego_area_flags_on_a_two_lane_road():
    lanes = PreparedPolygons.from_polygons([shapely.box(-50, -1.75, 50, 1.75), shapely.box(-50, 1.75, 50, 5.25)])
    drivable = PreparedPolygons.from_polygons([shapely.box(-50, -1.75, 50, 5.25)])
    on_route = np.array([True, False])
    cases = {
        "centred in the route lane": (_ego_at(0, 0), [False, False, False]),
        "straddling both lanes": (_ego_at(0, 1.5), [True, False, False]),
        "in the oncoming lane": (_ego_at(0, 3.5), [False, False, True]),
        "half off the road": (_ego_at(0, -1.5), [False, True, False]),
        "past the road's end (centre off every lane)": (_ego_at(49, 0), [False, True, True]),
    }
    for name, (state, want) in cases.items():
        corners, centers = ego_box(state)
        got = ego_areas(corners, centers, lanes, on_route, drivable)[0, 0]
        assert got.tolist() == want, name
        assert got.shape == (len(EgoAreaIndex),)


@pytest.fixture(params=["pairs", "raster"])
def path(request, monkeypatch):
    """Forces membership_bits onto one of its two paths (sparse pairs, dense raster)."""
    monkeypatch.setattr(pdm_areas, "_RASTER_MIN_DENSITY", np.inf if request.param == "pairs" else 0.0)
    return request.param


def _assert_membership_matches(polys, pts, **kwargs):
    got = membership(PreparedPolygons.from_polygons(polys, **kwargs), pts)
    want = np.stack([shapely.contains_xy(p, pts[:, 0], pts[:, 1]) for p in polys], axis=1)
    np.testing.assert_array_equal(got, want)


def test_query_index_of_the_polygons_near_the_points_answers_as_the_full_index():
    """The first query indexes only the polygons whose bounds meet its points (exact-only ones
    without slabs); it answers as the full index does, later queries inside its box reuse it and
    a query elsewhere indexes everything."""
    polys = _polygons()
    zone = shapely.buffer(shapely.LineString([(0, 0), (60, 5), (120, 0)]), 0.5)
    exact = lambda j, x, y: shapely.contains_xy(polys[j] if j < len(polys) else zone, x, y)
    only = np.arange(len(polys) + 1) == len(polys)
    rng = np.random.default_rng(4)
    near = rng.uniform([0, -5], [40, 10], size=(6000, 2))
    lazy = PreparedPolygons.from_polygons(polys + [zone], exact=exact, exact_only=only)
    full = PreparedPolygons.from_polygons(polys + [zone], exact=exact, exact_only=only)
    assert full.index.n_polygons == len(polys) + 1  # the full index, built now
    want = membership_bits(full, near[:10])
    np.testing.assert_array_equal(membership_bits(lazy, near[:10]), want)
    assert "index" not in lazy.__dict__
    first = lazy.index_for(near[:10, 0], near[:10, 1])
    assert first.n_polygons == len(polys) + 1 and first.edges.shape[0] < full.index.edges.shape[0]
    np.testing.assert_array_equal(membership_bits(lazy, near[:10]), want)
    far = rng.uniform([-5, -10], [135, 25], size=(20000, 2))
    np.testing.assert_array_equal(membership_bits(lazy, far), membership_bits(full, far))
    assert "index" in lazy.__dict__  # the second region indexed everything
    want = np.stack([shapely.contains_xy(p, far[:, 0], far[:, 1]) for p in polys + [zone]], axis=1)
    np.testing.assert_array_equal(membership(lazy, far), want)


def test_membership_exact_near_edges_far_from_the_origin(path):
    # UTM-sized coordinates and points within rounding of edges, on edges and on vertex ordinates:
    # the slab test must defer every uncertain case to shapely.
    offset = np.array([631_234.5, 5_412_345.25])
    polys = [shapely.affinity.translate(p, *offset) for p in _polygons()[:8]]
    rng = np.random.default_rng(2)
    verts = np.concatenate([shapely.get_coordinates(p) for p in polys])
    a, b = verts[:-1], verts[1:]
    t = rng.uniform(0, 1, (len(a), 1))
    on_edge = a + t * (b - a)
    normal = np.stack([-(b - a)[:, 1], (b - a)[:, 0]], axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    pts = np.concatenate([
        on_edge,
        on_edge + 1e-9 * normal,
        on_edge - 1e-9 * normal,
        on_edge + 1e-6 * normal,
        verts,
        np.stack([verts[:, 0] + rng.uniform(-3, 3, len(verts)), verts[:, 1]], axis=1),  # on vertex ordinates
        offset + rng.uniform([-5, -10], [135, 25], size=(5000, 2)),
    ])
    _assert_membership_matches(polys, pts)


def test_membership_relevant_masks_and_exact_only(path):
    polys = _polygons()
    rng = np.random.default_rng(3)
    pts = rng.uniform([-5, -10], [135, 25], size=(6000, 2))
    n = len(polys)
    calls = []

    def exact(j, x, y):
        calls.append(j)
        return shapely.contains_xy(polys[j], x, y)

    only = np.zeros(n, dtype=bool)
    only[[1, 66]] = True  # decided by the exact predicate alone (a hole-free lane, a box in word 1)
    prepared = PreparedPolygons.from_polygons(polys, exact=exact, exact_only=only)
    want = np.stack([shapely.contains_xy(p, pts[:, 0], pts[:, 1]) for p in polys], axis=1)
    # Three runs of points with their own masks (as score_states passes them), then arbitrary masks.
    masks = [index_bits(np.arange(0, 40), n), index_bits(np.array([1, 5, 66]), n), index_bits(np.arange(60, n), n)]
    run = np.repeat(np.arange(3), [2000, 2000, 2000])
    per_run = np.stack(masks)[run]
    random_masks = np.stack([index_bits(rng.uniform(size=n) < 0.5, n) for _ in range(len(pts))])
    for relevant in (per_run, random_masks):
        got = bits_to_bool(membership_bits(prepared, pts, relevant=relevant), n)
        rel = bits_to_bool(relevant, n)
        np.testing.assert_array_equal(got & rel, want & rel)
    if path == "pairs":
        assert {1, 66} <= set(calls)  # every candidate point of an exact-only polygon goes to it


@pytest.mark.parametrize("radius, quad_segs, resolution", [(10.0, 180, 0.1), (1.0, 4, 0.005)])
def test_exact_only_polygon_defers_to_its_predicate(path, radius, quad_segs, resolution):
    # A polygon approximating a disc (to 1e-3 m, or to 1.9 cm with raster cells of 5 mm: the
    # raster path must widen its uncertain band to the margin); the exact predicate is the disc.
    disc = shapely.Point(0, 0).buffer(radius, quad_segs=quad_segs)
    rng = np.random.default_rng(4)
    pts = rng.uniform(-1.2 * radius, 1.2 * radius, size=(30000, 2))
    ring = rng.uniform(0, 2 * np.pi, 4000)
    near = rng.uniform(radius - 0.03, radius + 0.03, (4000, 1))
    pts = np.concatenate([pts, np.stack([np.cos(ring), np.sin(ring)], axis=1) * near])
    truth = np.hypot(pts[:, 0], pts[:, 1]) <= radius
    assert (truth != shapely.contains_xy(disc, pts[:, 0], pts[:, 1])).any()  # the polygon alone is wrong
    prepared = PreparedPolygons.from_polygons([disc], exact=lambda j, x, y: np.hypot(x, y) <= radius, exact_only=[True])
    np.testing.assert_array_equal(membership(prepared, pts, resolution)[:, 0], truth)


