"""Map geometry that sources without it derive: stop lines and the drivable area.

Shared by every source whose maps lack these elements (Waymo Motion, ScenarioNet). Kept free of
any source's message classes so it imports without them. The methods are documented on
:func:`stop_lines` and :func:`derive_drivable_area` (and in :mod:`rap.sources.womd`).
"""

from __future__ import annotations

import numpy as np
import shapely
import shapely.ops

from rap import geometry
from rap.scene import Lanes, LaneType, LineSet, PolygonSet, Polylines, StopLineType, StopSigns, TrafficLights

REAR_AXLE_RATIO = 1.461 / 5.176  # ~0.282: NAVSIM vehicle, rear axle to box centre / length.
DEFAULT_LANE_WIDTH = 3.7  # [m] lanes without boundary information.
MIN_LANE_WIDTH = 2.5  # [m]
MAX_LANE_WIDTH = 6.0  # [m]
MAX_HOLE_AREA = 30.0  # [m^2] holes in the drivable area smaller than this are filled.
MPH_TO_MPS = 0.44704  # [m/s per mph]

# Drivable-area face selection (see derive_drivable_area).
_FACE_EDGE_SHARE = 0.5  # Min share of a face's perimeter lying on road edges ...
_FACE_LANE_SHARE = 0.1  # ... and on the lane union's boundary (not a curbed island).
_FACE_MAX_AREA = 400.0  # [m^2] faces up to this area are accepted ...
_FACE_MAX_WIDTH = 12.0  # [m] ... as are larger faces narrower than this (2 * area / perimeter).
_SNAP = 0.05  # [m] tolerance when matching face boundaries to road edges.


def stop_lines(lanes: Lanes, stop_signs: StopSigns, lights: TrafficLights) -> LineSet:
    """Derived stop lines (see module docs, item 2)."""
    segments: dict[int, tuple[np.ndarray, int]] = {}
    for lane_id, stop_point in zip(lights.lane_ids, lights.stop_points):
        try:
            k = lanes.index_of(int(lane_id))
        except KeyError:
            continue
        line = lanes.centerlines[k]
        if line.shape[0] < 2:
            continue
        # Direction of the centerline segment nearest to the stop point.
        seg = int(np.argmin(_segment_distances(stop_point[:2], line[:, :2])))
        direction = line[seg + 1, :2] - line[seg, :2]
        segments[int(lane_id)] = (
            _crossing(stop_point, direction, float(lanes.width[k])),
            StopLineType.TRAFFIC_LIGHT,
        )
    for lane_ids in stop_signs.lane_ids:
        for lane_id in lane_ids:
            if lane_id in segments:
                continue
            try:
                k = lanes.index_of(lane_id)
            except KeyError:
                continue
            line = lanes.centerlines[k]
            steps = np.diff(line[:, :2], axis=0)
            moving = np.flatnonzero(np.linalg.norm(steps, axis=1) > 0)
            if not moving.size:
                continue
            segments[lane_id] = (
                _crossing(line[0], steps[moving[0]], float(lanes.width[k])),
                StopLineType.STOP_SIGN,
            )
    if not segments:
        return LineSet.empty()
    return LineSet(
        ids=np.array(list(segments), dtype=np.int64),
        lines=Polylines.from_list([s for s, _ in segments.values()]),
        types=np.array([t for _, t in segments.values()], dtype=np.int8),
    )


def _segment_distances(point: np.ndarray, line: np.ndarray) -> np.ndarray:
    """(n - 1,) distances from a 2D point to each segment of an (n, 2) polyline."""
    a, ab = line[:-1], np.diff(line, axis=0)
    denom = np.einsum("sd,sd->s", ab, ab)
    t = np.clip(np.einsum("sd,sd->s", point - a, ab) / np.where(denom > 0, denom, 1.0), 0, 1)
    return np.linalg.norm(point - (a + t[:, None] * ab), axis=1)


def _crossing(center: np.ndarray, direction: np.ndarray, width: float) -> np.ndarray:
    """(2, 3) segment of length ``width`` through ``center``, perpendicular to ``direction``."""
    d = direction / max(np.linalg.norm(direction), 1e-12)
    normal = np.array([-d[1], d[0], 0.0])  # Left of the direction.
    return np.stack([center + 0.5 * width * normal, center - 0.5 * width * normal])


def derive_drivable_area(lanes: Lanes, road_edges: LineSet, driveways: PolygonSet) -> PolygonSet:
    """Drivable area from lanes, road edges and driveways (WOMD maps have none).

    Method:

    1. ``L`` = union of the non-bike lane centerlines buffered by half their width (flat caps,
       round joins).
    2. The road edges are noded together with the boundary of ``L`` and polygonized into faces.
       A face outside ``L`` is added when at least half of its perimeter runs along road edges
       and at least a tenth along the boundary of ``L`` (so it lies between lanes and curbs,
       and is not an island enclosed by curbs), and it is small (<= 400 m^2) or narrow (mean
       width 2 * area / perimeter <= 12 m). These are the strips between lanes and curbs
       (shoulders, parking lanes) and the rounded kerb corners of intersections that lane
       buffers miss, but not the blocks behind the curbs.
    3. Driveways are added, and holes smaller than ``MAX_HOLE_AREA`` are filled.
    4. Each outline vertex takes the z of the nearest lane, road edge or driveway vertex.

    Args:
        lanes: Lanes with widths [m].
        road_edges: Road edge polylines [m].
        driveways: Driveway polygons [m].

    Returns:
        Hole-free polygons whose union is the area: a part with holes (e.g. a block
        enclosed by streets) is cut into pieces along vertical lines through its holes, and
        ``PolygonSet.to_shapely(union=True)`` / ``MapElements.drivable_polygon`` restore the
        holes. Ids are 0, 1, ...
    """
    drivable = lanes.types != LaneType.BIKE_LANE
    buffers = []
    for k in np.flatnonzero(drivable):
        line = lanes.centerlines[k][:, :2]
        half = 0.5 * float(lanes.width[k])
        if line.shape[0] >= 2 and geometry.polyline_length(line) > 0:
            buffers.append(shapely.LineString(line).buffer(half, cap_style="flat"))
        elif line.shape[0] >= 1:
            buffers.append(shapely.Point(line[0]).buffer(half))
    lane_union = shapely.union_all(buffers) if buffers else shapely.Polygon()
    area = lane_union

    edge_lines = [shapely.LineString(e[:, :2]) for e in road_edges.lines if e.shape[0] >= 2]
    if edge_lines and not lane_union.is_empty:
        edges = shapely.union_all(edge_lines)
        noded = shapely.union_all([edges, lane_union.boundary])
        faces = np.array(list(shapely.ops.polygonize(noded)), dtype=object)
        edge_zone = edges.buffer(_SNAP)
        lane_zone = lane_union.boundary.buffer(_SNAP)
        for geom in (lane_union, edge_zone, lane_zone):
            shapely.prepare(geom)
        extra = []
        if faces.size:
            # Cheap tests first (size, position), the perimeter shares only for what is left.
            area_f = shapely.area(faces)
            perim = shapely.length(shapely.get_exterior_ring(faces))
            small_or_narrow = (area_f <= _FACE_MAX_AREA) | (2.0 * area_f <= _FACE_MAX_WIDTH * perim)
            keep = (area_f > 0) & small_or_narrow
            keep[keep] &= ~shapely.contains(lane_union, shapely.point_on_surface(faces[keep]))
            keep[keep] &= shapely.intersects(faces[keep], lane_zone)
            edge_clip, lane_clip = _RectClipper(edge_zone), _RectClipper(lane_zone)
            for k in np.flatnonzero(keep):
                face, perimeter = faces[k], perim[k]
                ring = face.exterior
                bounds = shapely.bounds(ring) + np.array([-_SNAP, -_SNAP, _SNAP, _SNAP])
                # The lane share only for faces that pass the edge share (the costlier clip).
                if ring.intersection(edge_clip(bounds)).length < _FACE_EDGE_SHARE * perimeter:
                    continue
                if ring.intersection(lane_clip(bounds)).length >= _FACE_LANE_SHARE * perimeter:
                    extra.append(face)
        if extra:
            area = shapely.union_all([area, *extra])
    if len(driveways):
        area = shapely.union_all([area, *driveways.polygons()])
    area = _fill_small_holes(area.buffer(0), MAX_HOLE_AREA)

    rings = [np.asarray(p.exterior.coords)[:-1, :2] for p in _hole_free_pieces(area)]
    rings = Polylines.from_list(rings)
    rings = rings.transformed(lambda p: _ground_height(p, lanes, road_edges, driveways))
    return PolygonSet(ids=np.arange(len(rings), dtype=np.int64), rings=rings)


class _RectClipper:
    """``shapely.clip_by_rect(geom, *bounds)`` for many rectangles, clipping only the parts of a
    multi-part ``geom`` whose envelopes meet the rectangle (in their order). GEOS clips a
    collection part by part, and a part whose envelope misses the rectangle gives nothing, so the
    result is the same geometry, at the cost of the parts near the rectangle instead of all."""

    def __init__(self, geom: shapely.Geometry) -> None:
        self.geom = geom
        self.parts = np.asarray(shapely.get_parts(geom), dtype=object) if isinstance(geom, shapely.MultiPolygon) else None
        self.tree = shapely.STRtree(self.parts) if self.parts is not None and len(self.parts) > 1 else None

    def __call__(self, bounds: np.ndarray) -> shapely.Geometry:
        geom = self.geom
        if self.tree is not None:
            hit = np.sort(self.tree.query(shapely.box(*bounds)))
            if len(hit) < len(self.parts):
                geom = shapely.multipolygons(self.parts[hit])
        return shapely.clip_by_rect(geom, *bounds)


def _ground_height(
    points: np.ndarray, lanes: Lanes, road_edges: LineSet, driveways: PolygonSet
) -> np.ndarray:
    """(P, 3) points with z set to the z of the nearest lane / road edge / driveway vertex."""
    sources = np.concatenate(
        [lanes.centerlines.points, road_edges.lines.points, driveways.rings.points]
    )
    out = points.copy()
    if not sources.shape[0] or not points.shape[0]:
        return out
    tree = shapely.STRtree(shapely.points(sources[:, :2]))
    nearest = tree.nearest(shapely.points(points[:, :2]))  # (P,) indices into sources.
    out[:, 2] = sources[nearest, 2]
    return out


def _hole_free_pieces(geom: shapely.Geometry) -> list[shapely.Polygon]:
    """Splits polygons with holes into hole-free pieces whose union is the input.

    A polygon with holes is cut by a vertical line through a point inside its first hole;
    repeated until no piece has a hole. ``PolygonSet`` rings cannot hold holes, and
    ``PolygonSet.to_shapely(union=True)`` restores them.
    """
    pending = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, shapely.Polygon)]
    out = []
    for _ in range(10_000):  # Each cut removes a hole; the bound only guards against bugs.
        if not pending:
            break
        poly = pending.pop()
        if poly.is_empty or poly.area <= 0:
            continue
        if not poly.interiors:
            if len(poly.exterior.coords) >= 4:
                out.append(poly)
            continue
        x = shapely.Polygon(poly.interiors[0]).representative_point().x
        _, ymin, _, ymax = poly.bounds
        cutter = shapely.LineString([(x, ymin - 1.0), (x, ymax + 1.0)])
        pieces = shapely.ops.split(poly, cutter)
        pending.extend(g for g in pieces.geoms if isinstance(g, shapely.Polygon))
    else:
        raise RuntimeError("drivable area: splitting polygons with holes did not terminate")
    return out


def _fill_small_holes(geom: shapely.Geometry, max_area: float) -> shapely.Geometry:
    polys = []
    for poly in getattr(geom, "geoms", [geom]):
        if not isinstance(poly, shapely.Polygon) or poly.is_empty:
            continue
        holes = [h for h in poly.interiors if shapely.Polygon(h).area >= max_area]
        polys.append(shapely.Polygon(poly.exterior, holes))
    return shapely.union_all(polys) if polys else shapely.Polygon()


# ----------------------------------------------------------------------------------------------
# Traffic lights.
# ----------------------------------------------------------------------------------------------


