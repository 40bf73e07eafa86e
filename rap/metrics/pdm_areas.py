"""Exact point-in-polygon membership for many points, accelerated by a raster.

NAVSIM asks, for every corner and centre of every ego box (K proposals x 41 steps), which lane
polygons and which drivable-area polygons strictly contain it (``shapely`` "contains"). Done point
by point against each polygon that is ~100 ms per 1000 proposals. Here the polygons are
rasterized on a grid (default 0.2 m) that covers only the queried points, with three cell states
per polygon:

* *inside*: the cell centre is inside and no polygon edge passes through the cell or its eight
  neighbours, so every point of the cell is inside;
* *outside*: likewise, every point of the cell is outside;
* *uncertain*: an edge passes within about one cell; such points are decided exactly by shapely
  (or by a caller-supplied exact predicate).

The result is therefore exact (it equals shapely's ``contains_xy``); the grid only decides how many
points need the exact test (those within roughly 0.2-0.4 m of an edge). Edges are marked by
sampling them every half cell and dilating the marks by one cell, which is conservative.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum
from typing import Callable, Sequence

import numpy as np
import shapely

__all__ = ["EgoAreaIndex", "PreparedPolygons", "SegmentGrid", "membership_bits", "membership", "any_membership", "bits_to_bool", "index_bits", "area_flags", "ego_areas"]

ExactFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
"""(polygon index, x (P,), y (P,)) -> (P,) bool exact membership."""

_MAX_CELLS = 400_000


class EgoAreaIndex(IntEnum):
    """Columns of :func:`ego_areas` (NAVSIM ``EgoAreaIndex``)."""

    MULTIPLE_LANES = 0
    NON_DRIVABLE_AREA = 1
    ONCOMING_TRAFFIC = 2


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedPolygons:
    """Shapely polygons prepared for fast exact membership queries (:func:`membership_bits`).

    Not a map element set: :class:`rap.scene.PolygonSet` holds a map's crosswalks, areas, ...
    as ids and open rings without holes; this is a query structure over any shapely polygons
    (holes included, e.g. buffered centerlines) with their edges and bounds precomputed.

    Attributes:
        polygons: L shapely polygons (prepared).
        edges: L arrays (E_l, 4) of ring edges x1, y1, x2, y2 [m] (all rings).
        bounds: (L, 4) min x, min y, max x, max y [m].
        exact: Optional exact predicate for uncertain cells; ``None`` uses ``shapely.contains_xy``.
    """

    polygons: tuple
    edges: tuple
    bounds: np.ndarray
    exact: ExactFn | None = None

    @classmethod
    def from_polygons(cls, polygons: Sequence[shapely.Polygon], exact: ExactFn | None = None) -> PreparedPolygons:
        polys = tuple(polygons)
        edges = []
        for p in polys:
            if not isinstance(p, shapely.Polygon):
                raise ValueError(f"PreparedPolygons: expected Polygon, got {type(p).__name__}")
            shapely.prepare(p)
            rings = [np.asarray(p.exterior.coords)[:, :2]] + [np.asarray(r.coords)[:, :2] for r in p.interiors]
            edges.append(np.concatenate([np.concatenate([r[:-1], r[1:]], axis=1) for r in rings], axis=0))
        bounds = np.array([p.bounds for p in polys], dtype=np.float64).reshape(-1, 4)
        return cls(polys, tuple(edges), bounds, exact)

    def __len__(self) -> int:
        return len(self.polygons)


class SegmentGrid:
    """Exact "within ``radius`` of a polyline" tests via a hash grid of its segments.

    Each segment is registered in every grid cell its bounding box, grown by ``radius``, overlaps;
    a point is then compared with the segments of its own cell only (any segment within
    ``radius`` of the point is registered there), so :meth:`within` equals
    ``shapely.distance(point, line) <= radius`` at a fraction of the cost.
    """

    def __init__(self, vertices: np.ndarray, radius: float, cell: float = 2.0):
        v = np.asarray(vertices, dtype=np.float64)[:, :2]
        if v.shape[0] < 2:
            raise ValueError("SegmentGrid: need >= 2 vertices")
        self.radius = float(radius)
        self.cell = float(cell)
        self.a = v[:-1]
        self.ab = v[1:] - v[:-1]
        self.den = (self.ab * self.ab).sum(axis=1)
        lo = np.minimum(v[:-1], v[1:]) - radius
        hi = np.maximum(v[:-1], v[1:]) + radius
        self.x0, self.y0 = lo[:, 0].min(), lo[:, 1].min()
        self.nx = int((hi[:, 0].max() - self.x0) // cell) + 1
        self.ny = int((hi[:, 1].max() - self.y0) // cell) + 1
        cx0 = ((lo[:, 0] - self.x0) // cell).astype(np.int64)
        cx1 = ((hi[:, 0] - self.x0) // cell).astype(np.int64)
        cy0 = ((lo[:, 1] - self.y0) // cell).astype(np.int64)
        cy1 = ((hi[:, 1] - self.y0) // cell).astype(np.int64)
        wx = cx1 - cx0 + 1
        wy = cy1 - cy0 + 1
        count = wx * wy
        seg = np.repeat(np.arange(len(lo)), count)
        local = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        gx = cx0[seg] + local % wx[seg]
        gy = cy0[seg] + local // wx[seg]
        cell_ids = gy * self.nx + gx
        order = np.argsort(cell_ids, kind="stable")
        self.segments = seg[order]
        counts = np.bincount(cell_ids, minlength=self.nx * self.ny)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.arc = np.concatenate([[0.0], np.cumsum(np.sqrt(self.den))])

    def _pairs(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        """Candidate (point, segment) pairs and their closest-point parameter and distance."""
        gx = np.floor((x - self.x0) / self.cell)
        gy = np.floor((y - self.y0) / self.cell)
        inside = (gx >= 0) & (gx < self.nx) & (gy >= 0) & (gy < self.ny)
        pi = np.nonzero(inside)[0]
        cid = (gy[pi] * self.nx + gx[pi]).astype(np.int64)
        n = self.starts[cid + 1] - self.starts[cid]
        rep = np.repeat(pi, n)
        offs = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        seg = self.segments[np.repeat(self.starts[cid], n) + offs]
        apx = x[rep] - self.a[seg, 0]
        apy = y[rep] - self.a[seg, 1]
        den = self.den[seg]
        t = np.clip((apx * self.ab[seg, 0] + apy * self.ab[seg, 1]) / np.where(den > 0, den, 1.0), 0.0, 1.0)
        dx = apx - t * self.ab[seg, 0]
        dy = apy - t * self.ab[seg, 1]
        return rep, seg, t, np.sqrt(dx * dx + dy * dy)

    def project(self, x: np.ndarray, y: np.ndarray, line: shapely.LineString) -> np.ndarray:
        """(P,) arc length of each point's closest point on the polyline, as
        ``shapely.line_locate_point`` (nearest segment, the first one on ties); points farther
        than ``radius`` from the polyline are passed to shapely with ``line`` (the same polyline)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        rep, seg, t, d = self._pairs(x, y)
        ok = d <= self.radius
        rep, seg, t, d = rep[ok], seg[ok], t[ok], d[ok]
        out = np.full(x.shape[0], np.nan)
        if rep.size:
            order = np.lexsort((seg, d, rep))
            first = order[np.unique(rep[order], return_index=True)[1]]
            out[rep[first]] = self.arc[seg[first]] + t[first] * (self.arc[seg[first] + 1] - self.arc[seg[first]])
        missing = np.isnan(out)
        if missing.any():
            out[missing] = shapely.line_locate_point(line, shapely.points(x[missing], y[missing]))
        return out

    def within(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(P,) bool: distance from (x, y) to the polyline <= radius."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        out = np.zeros(x.shape[0], dtype=bool)
        rep, _, _, d = self._pairs(x, y)
        out[rep[d <= self.radius]] = True
        return out


def _window_status(edges: np.ndarray, x0: float, y0: float, res: float, nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """One polygon on a grid window: (ny, nx) bool "cell centre inside" and (ny, nx) bool
    "uncertain" (an edge passes through the cell or one of its eight neighbours)."""
    x1, y1, x2, y2 = edges.T
    # Centre parity by scanlines: crossings of each row of cell centres with the edges.
    ymin, ymax = np.minimum(y1, y2), np.maximum(y1, y2)
    r_lo = np.clip(np.ceil((ymin - y0) / res - 0.5), 0, ny).astype(np.int64)
    r_hi = np.clip(np.ceil((ymax - y0) / res - 0.5), 0, ny).astype(np.int64)
    count = np.where(y1 != y2, r_hi - r_lo, 0)
    total = int(count.sum())
    parity = np.zeros((ny, nx), dtype=bool)
    if total:
        e = np.repeat(np.arange(len(edges)), count)
        rows = np.repeat(r_lo, count) + (np.arange(total) - np.repeat(np.cumsum(count) - count, count))
        yc = y0 + (rows + 0.5) * res
        xc = x1[e] + (yc - y1[e]) * (x2[e] - x1[e]) / (y2[e] - y1[e])
        cols = np.clip(np.ceil((xc - x0) / res - 0.5), 0, nx).astype(np.int64)
        hist = np.bincount(rows * (nx + 1) + cols, minlength=ny * (nx + 1)).reshape(ny, nx + 1)
        right = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # crossings at or right of column c
        parity = (right[:, 1:] & 1).astype(bool)
    # Cells an edge passes through: samples every half cell, then a one-cell dilation.
    length = np.hypot(x2 - x1, y2 - y1)
    n_s = np.ceil(length / (0.5 * res)).astype(np.int64) + 1
    e = np.repeat(np.arange(len(edges)), n_s)
    t = (np.arange(int(n_s.sum())) - np.repeat(np.cumsum(n_s) - n_s, n_s)) / np.repeat(np.maximum(n_s - 1, 1), n_s)
    ix = np.floor((x1[e] + t * (x2[e] - x1[e]) - x0) / res).astype(np.int64)
    iy = np.floor((y1[e] + t * (y2[e] - y1[e]) - y0) / res).astype(np.int64)
    keep = (ix >= -1) & (ix <= nx) & (iy >= -1) & (iy <= ny)
    mark = np.zeros((ny + 2, nx + 2), dtype=bool)  # padded by one cell on each side
    mark[iy[keep] + 1, ix[keep] + 1] = True
    dil = mark.copy()
    dil[:, 1:] |= mark[:, :-1]
    dil[:, :-1] |= mark[:, 1:]
    dil2 = dil.copy()
    dil2[1:, :] |= dil[:-1, :]
    dil2[:-1, :] |= dil[1:, :]
    return parity, dil2[1:-1, 1:-1]


def membership_bits(
    polys: PreparedPolygons, xy: np.ndarray, resolution: float = 0.2, relevant: np.ndarray | None = None
) -> np.ndarray:
    """Exact membership of each point as bit masks: bit ``j % 64`` of word ``j // 64`` is set when
    polygon j strictly contains the point (``shapely.contains_xy``, or the set's exact predicate).

    Args:
        polys: The polygons.
        xy: (P, 2) query points [m].
        resolution: Grid cell size [m] (speed only; the answer does not depend on it).
        relevant: Optional (P, W) or (W,) uint64 masks of the polygons that matter per point;
            bits outside them may be wrong (they are not decided exactly), saving exact tests.

    Returns:
        (P, W) uint64 with W = ceil(L / 64) (at least 1).
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    p, n_poly = pts.shape[0], len(polys)
    n_words = max((n_poly + 63) // 64, 1)
    out = np.zeros((p, n_words), dtype=np.uint64)
    if p == 0 or n_poly == 0:
        return out
    px, py = np.ascontiguousarray(pts[:, 0]), np.ascontiguousarray(pts[:, 1])
    lo = np.array([px.min(), py.min()])
    hi = np.array([px.max(), py.max()])
    res = float(resolution)
    area = (hi[0] - lo[0] + 4 * res) * (hi[1] - lo[1] + 4 * res)
    if area / (res * res) > _MAX_CELLS:
        res = float(np.sqrt(area / _MAX_CELLS))
    x0 = np.floor(lo[0] / res) * res - 2 * res
    y0 = np.floor(lo[1] / res) * res - 2 * res
    nx = int(np.ceil((hi[0] - x0) / res)) + 3
    ny = int(np.ceil((hi[1] - y0) / res)) + 3
    # Coordinates are >= 2 cells inside the grid, so truncation is floor (int32 casts are fast).
    ix = np.minimum(((px - x0) * (1.0 / res)).astype(np.int32), nx - 1)
    iy = np.minimum(((py - y0) * (1.0 / res)).astype(np.int32), ny - 1)
    gx1, gy1 = x0 + nx * res, y0 + ny * res
    b = polys.bounds
    touching = np.nonzero((b[:, 0] <= gx1) & (b[:, 2] >= x0) & (b[:, 1] <= gy1) & (b[:, 3] >= y0))[0]
    if touching.size == 0:
        return out
    cell = iy * nx + ix
    occupied = np.zeros(ny * nx, dtype=bool)
    occupied[cell] = True
    occupied = occupied.reshape(ny, nx)
    inside_bits = np.zeros((ny, nx, n_words), dtype=np.uint64)
    unsure_bits = np.zeros((ny, nx, n_words), dtype=np.uint64)
    for j in touching:
        # Window of the grid around the polygon's bounding box (one cell of margin).
        wx0 = max(int(np.floor((b[j, 0] - x0) / res)) - 1, 0)
        wx1 = min(int(np.floor((b[j, 2] - x0) / res)) + 2, nx)
        wy0 = max(int(np.floor((b[j, 1] - y0) / res)) - 1, 0)
        wy1 = min(int(np.floor((b[j, 3] - y0) / res)) + 2, ny)
        if wx1 <= wx0 or wy1 <= wy0:
            continue
        # Shrink the window to the cells that hold query points.
        occ = occupied[wy0:wy1, wx0:wx1]
        rows = np.flatnonzero(occ.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(occ.any(axis=0))
        wy0, wy1 = wy0 + int(rows[0]), wy0 + int(rows[-1]) + 1
        wx0, wx1 = wx0 + int(cols[0]), wx0 + int(cols[-1]) + 1
        parity, uncertain = _window_status(polys.edges[j], x0 + wx0 * res, y0 + wy0 * res, res, wx1 - wx0, wy1 - wy0)
        bit = np.uint64(1) << np.uint64(j % 64)
        word = j // 64
        win_in = inside_bits[wy0:wy1, wx0:wx1, word]
        np.bitwise_or(win_in, bit, out=win_in, where=parity)
        win_un = unsure_bits[wy0:wy1, wx0:wx1, word]
        np.bitwise_or(win_un, bit, out=win_un, where=uncertain)
    out = inside_bits.reshape(ny * nx, n_words)[cell]
    unsure = unsure_bits.reshape(ny * nx, n_words)[cell]
    out &= ~unsure  # uncertain cells are decided exactly below
    if relevant is not None:
        unsure &= np.asarray(relevant, dtype=np.uint64)
    rows = np.nonzero(unsure.any(axis=1))[0]
    if rows.size == 0:
        return out
    flags = np.unpackbits(unsure[rows].view(np.uint8), axis=1, bitorder="little")  # (R, 64 W)
    r_idx, j_idx = np.nonzero(flags)
    order = np.argsort(j_idx, kind="stable")
    r_idx, j_idx = r_idx[order], j_idx[order]
    js, starts = np.unique(j_idx, return_index=True)
    ends = np.append(starts[1:], j_idx.size)
    for j, a, z in zip(js, starts, ends):
        pi = rows[r_idx[a:z]]
        j = int(j)
        if polys.exact is None:
            hit = shapely.contains_xy(polys.polygons[j], pts[pi, 0], pts[pi, 1])
        else:
            hit = np.asarray(polys.exact(j, pts[pi, 0], pts[pi, 1]), dtype=bool)
        if hit.any():
            out[pi[hit], j // 64] |= np.uint64(1) << np.uint64(j % 64)
    return out


def bits_to_bool(bits: np.ndarray, n: int) -> np.ndarray:
    """(..., W) uint64 bit masks -> (..., n) bool."""
    b = np.ascontiguousarray(bits)
    flat = np.unpackbits(b.view(np.uint8).reshape(b.shape[:-1] + (8 * b.shape[-1],)), axis=-1, bitorder="little")
    return flat[..., :n].astype(bool)


def index_bits(indices: np.ndarray, n: int) -> np.ndarray:
    """(W,) uint64 mask with the bits of boolean / index selection ``indices`` over n items set."""
    sel = np.zeros(n, dtype=bool)
    sel[np.asarray(indices)] = True
    words = np.zeros(max((n + 63) // 64, 1), dtype=np.uint64)
    for j in np.nonzero(sel)[0]:
        words[j // 64] |= np.uint64(1) << np.uint64(j % 64)
    return words


def membership(polys: PreparedPolygons, xy: np.ndarray, resolution: float = 0.2) -> np.ndarray:
    """Which polygons strictly contain each point: (P, L) bool (see :func:`membership_bits`)."""
    return bits_to_bool(membership_bits(polys, xy, resolution), len(polys))


def any_membership(polys: PreparedPolygons, xy: np.ndarray, resolution: float = 0.2) -> np.ndarray:
    """(P,) bool: the point is strictly inside at least one polygon."""
    return _any_bit(membership_bits(polys, xy, resolution))


def _any_bit(bits: np.ndarray) -> np.ndarray:
    """(..., W) uint64 -> (...) bool: any bit set."""
    return bits[..., 0] != 0 if bits.shape[-1] == 1 else (bits != 0).any(axis=-1)


def _count_bits(bits: np.ndarray) -> np.ndarray:
    """(..., W) uint64 -> (...) number of set bits."""
    counts = np.bitwise_count(bits)
    return counts[..., 0] if bits.shape[-1] == 1 else counts.sum(axis=-1)


def area_flags(
    corner_bits: np.ndarray,
    center_bits: np.ndarray,
    lane_mask: np.ndarray,
    route_mask: np.ndarray,
    drivable_mask: np.ndarray,
) -> np.ndarray:
    """NAVSIM's ego-area flags from membership bit masks.

    Args:
        corner_bits: (K, T, 4, W) uint64 membership of the box corners.
        center_bits: (K, T, W) uint64 membership of the box centres.
        lane_mask, route_mask, drivable_mask: (W,) uint64 masks of the lane, on-route lane and
            drivable polygons.

    Returns:
        (K, T, 3) bool, columns :class:`EgoAreaIndex` (see :func:`ego_areas`).
    """
    lane_corners = corner_bits & lane_mask
    union = np.bitwise_or.reduce(lane_corners, axis=2)  # lanes holding at least one corner
    common = np.bitwise_and.reduce(lane_corners, axis=2)  # lanes holding all four
    multiple = (_count_bits(union) > 1) & ~_any_bit(common)
    corner_drivable = _any_bit(corner_bits & drivable_mask)
    non_drivable = ~corner_drivable.all(axis=-1)
    on_route = _any_bit(center_bits & route_mask)
    out = np.zeros(multiple.shape + (len(EgoAreaIndex),), dtype=bool)
    out[..., EgoAreaIndex.MULTIPLE_LANES] = multiple
    out[..., EgoAreaIndex.NON_DRIVABLE_AREA] = non_drivable
    out[..., EgoAreaIndex.ONCOMING_TRAFFIC] = ~on_route
    return out


def ego_areas(
    corners: np.ndarray,
    centers: np.ndarray,
    lanes: PreparedPolygons,
    on_route: np.ndarray,
    drivable: PreparedPolygons,
    resolution: float = 0.2,
) -> np.ndarray:
    """NAVSIM's ego-area flags per proposal and step.

    Args:
        corners: (K, T, 4, 2) ego box corners [m].
        centers: (K, T, 2) ego box centres [m].
        lanes: Lane and lane-connector polygons.
        on_route: (L,) bool, which of ``lanes`` are on the route.
        drivable: Roadblock / intersection / drivable-area / car-park polygons (not lanes).
        resolution: Raster cell [m] (speed only).

    Returns:
        (K, T, 3) bool, columns :class:`EgoAreaIndex`:
        MULTIPLE_LANES — corners lie in more than one lane and no lane holds all four;
        NON_DRIVABLE_AREA — a corner is in no drivable polygon;
        ONCOMING_TRAFFIC — the centre is in no on-route lane.
    """
    c = np.asarray(corners, dtype=np.float64)
    k, t = c.shape[:2]
    pts = np.concatenate([c.reshape(-1, 2), np.asarray(centers, dtype=np.float64).reshape(-1, 2)], axis=0)
    n_corner = k * t * 4
    lane_bits = membership_bits(lanes, pts, resolution)
    drivable_bits = membership_bits(drivable, pts[:n_corner], resolution)
    drivable_any = np.where((drivable_bits != 0).any(axis=1), np.uint64(1), np.uint64(0))
    # Pack "in some drivable polygon" into one spare word after the lane words.
    corner_bits = np.concatenate([lane_bits[:n_corner], drivable_any[:, None]], axis=1).reshape(k, t, 4, -1)
    center_bits = np.concatenate([lane_bits[n_corner:], np.zeros((k * t, 1), np.uint64)], axis=1).reshape(k, t, -1)
    n_words = lane_bits.shape[1]
    lane_mask = np.concatenate([np.full(n_words, np.iinfo(np.uint64).max, dtype=np.uint64), [np.uint64(0)]])
    route_mask = np.concatenate([index_bits(np.asarray(on_route, dtype=bool), len(lanes))[:n_words], [np.uint64(0)]])
    drivable_mask = np.concatenate([np.zeros(n_words, np.uint64), [np.uint64(1)]])
    return area_flags(corner_bits, center_bits, lane_mask, route_mask, drivable_mask)
