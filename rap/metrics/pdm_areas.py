"""Exact point-in-polygon membership for many points.

NAVSIM asks, for every corner and centre of every ego box (K proposals x 41 steps), which lane
polygons and which drivable-area polygons strictly contain it (``shapely`` "contains"). Done point
by point with shapely that is ~100 ns per point and polygon. Here the polygons are indexed
(:class:`PreparedPolygons`; on the first query only those whose bounds meet its points, as a
scoring call queries one region near the ego) and :func:`membership_bits` answers a whole query
on one of two paths (both exact; only their cost differs):

* *pairs* (sparse queries, e.g. 64 proposals): a uniform grid (cells of a few metres) lists the
  polygons whose bounding box overlaps each cell, and a point is paired with the polygons of its
  cell that matter for it. The distinct vertex ordinates of each polygon cut it into horizontal
  slabs, each crossed by a fixed short list of edges; a point's slab gives the edges a horizontal
  ray from it can cross, and the crossing count is its parity (odd = inside). A crossing compares
  the point's x with the edge's x at the point's y and counts only where the difference exceeds
  a bound on that computation's rounding error, so the parity equals GEOS's robust ray-crossing
  count. A compiled loop (:func:`rap.metrics.pdm_kernels.slab_membership`) visits each point's
  cell once, skips polygons whose bounds do not contain the point, and finds its slab by binary
  search among the polygon's slab keys.
* *raster* (dense queries, e.g. 1000 proposals): the polygons are rasterized on a grid (default
  0.2 m) that covers only the queried points, with three states per cell: inside, outside, or
  uncertain (an edge passes within about one cell; edges are sampled every half cell and the
  marks dilated by one cell, which is conservative).

Pairs and points the fast test cannot decide (a point on the ordinate of one of the polygon's
vertices or within rounding of an edge; a point in an uncertain cell) go to
``shapely.contains_xy``, or to a caller-supplied exact predicate.
"""

from __future__ import annotations

import dataclasses
import functools
from enum import IntEnum
from typing import Callable, Sequence

import numpy as np
import shapely

from rap.metrics.pdm_kernels import grid_cells, segment_nearest, slab_membership, slab_table

__all__ = ["EgoAreaIndex", "PreparedPolygons", "SegmentGrid", "membership_bits", "membership", "any_membership", "bits_to_bool", "index_bits", "area_flags", "ego_areas"]

ExactFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
"""(polygon index, x (P,), y (P,)) -> (P,) bool exact membership."""

_CROSS_ERROR = 2e-15
"""Crossing tests are certain when |px - x_edge(py)| > _CROSS_ERROR * (|xa| + 8 |dx|) (the
floating-point error of x_edge is below 1.2e-16 |xa| + 6.1e-16 |dx|; this leaves a margin)."""

_SLAB_WIDTH = 4
"""Crossing edges per slab kept in the dense table (more go to the overflow list)."""

EXACT_ONLY_MARGIN = 0.05
"""[m] how far an exact-only polygon may be from the region its exact predicate decides."""

_RASTER_MIN_DENSITY = 0.4
"""Queries with at least this many points per raster cell (over their bounding box) use the
raster path (cost ~ cells, shared by the points); sparser ones the slab pairs (cost ~ points)."""

_MAX_CELLS = 400_000
"""Raster path: the grid resolution coarsens so that it never has more cells than this."""

_MAX_GRID_ENTRIES = 40_000
"""Broad-phase grid size: cells grow from 2 m until the (cell, polygon) entries stay below this."""


class EgoAreaIndex(IntEnum):
    """Columns of :func:`ego_areas` (NAVSIM ``EgoAreaIndex``)."""

    MULTIPLE_LANES = 0
    NON_DRIVABLE_AREA = 1
    ONCOMING_TRAFFIC = 2


class _SlabIndex:
    """Edges of L polygons sorted into horizontal slabs, plus a broad-phase grid of their bounds.

    Slabs: ``ys`` are the distinct vertex ordinates of all polygons (U). A polygon's slab key is
    ``j * (U + 1) + rank`` of each of its own vertex ordinates (``keys``, sorted); slab ``g``
    spans from ``keys[g - 1]`` to ``keys[g]`` of the same polygon and is crossed by a fixed list
    of non-horizontal edges. Each crossing edge is stored as (x at its lower end, lower y, dx/dy,
    error bound): the first ``width`` of each slab in ``table`` (S + 1, width, 4), padded with
    edges at x = -inf that are never crossed, any further ones in ``extra`` (CSR by slab).
    The broad phase lists, per grid cell (``cell`` metres), the polygons whose bounds overlap it
    (``cell_poly[cell_start[c]:cell_start[c + 1]]``).
    """

    def __init__(self, edges: np.ndarray, edge_poly: np.ndarray, bounds: np.ndarray):
        self.edges, self.edge_owner = edges, edge_poly
        self.n_polygons = int(bounds.shape[0])
        x1, y1, x2, y2 = (np.ascontiguousarray(c) for c in edges.T)
        # Crossing test of an entry with a point (px, py) in its slab: the edge's x at py is
        # xa + (py - ya) * slope (|(py - ya) * slope| <= |dx|); its floating-point error is below
        # 1.2e-16 * |xa| + 6.1e-16 * |dx|, so px - x beyond ``bound`` has the exact sign.
        self.ys, self.keys, self.key_start, self.table, self.extra, self.extra_start = slab_table(
            x1, y1, x2, y2, np.ascontiguousarray(edge_poly, dtype=np.int64), self.n_polygons, _SLAB_WIDTH, _CROSS_ERROR
        )
        self.u1 = self.ys.size + 1
        self.keys_ext = np.append(self.keys, -1)  # keys[g] for g == len(keys)
        self._allowed_cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

        # Broad phase: (cell, polygon) entries for every cell a polygon's bounds overlap.
        ok = np.all(np.isfinite(bounds), axis=1)
        b = bounds[ok]
        poly_ids = np.flatnonzero(ok)
        if b.shape[0] == 0:
            self.cell, self.gx0, self.gy0, self.nx, self.ny = 1.0, 0.0, 0.0, 0, 0
            self.cell_start = np.zeros(1, dtype=np.int64)
            self.cell_poly = np.zeros(0, dtype=np.int64)
            return
        self.gx0, self.gy0 = float(b[:, 0].min()), float(b[:, 1].min())
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        cell = 2.0
        while float(((w / cell + 2) * (h / cell + 2)).sum()) > _MAX_GRID_ENTRIES:
            cell *= 2.0
        self.cell = cell
        self.nx = int((b[:, 2].max() - self.gx0) // cell) + 1
        self.ny = int((b[:, 3].max() - self.gy0) // cell) + 1
        cx0 = ((b[:, 0] - self.gx0) // cell).astype(np.int64)
        cx1 = np.minimum(((b[:, 2] - self.gx0) // cell).astype(np.int64), self.nx - 1)
        cy0 = ((b[:, 1] - self.gy0) // cell).astype(np.int64)
        cy1 = np.minimum(((b[:, 3] - self.gy0) // cell).astype(np.int64), self.ny - 1)
        self.cell_start, self.cell_poly = grid_cells(cx0, cx1, cy0, cy1, poly_ids.astype(np.int64), self.nx, self.ny)

    def cells(self, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The grid's (cell_start, cell_poly) restricted to the polygons with ``allowed[j]``
        (all when ``None``); kept per mask, as one scoring call asks with the same few masks."""
        if allowed is None:
            return self.cell_start, self.cell_poly
        cache_key = allowed.tobytes()
        if cache_key not in self._allowed_cache:
            keep = allowed[self.cell_poly]
            self._allowed_cache[cache_key] = (np.concatenate([[0], np.cumsum(keep)])[self.cell_start], self.cell_poly[keep])
        return self._allowed_cache[cache_key]


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedPolygons:
    """Shapely polygons prepared for fast exact membership queries (:func:`membership_bits`);
    build with :meth:`from_polygons`.

    Not a map element set: :class:`rap.scene.PolygonSet` holds a map's crosswalks, areas, ...
    as ids and open rings without holes; this is a query structure over any shapely polygons
    (holes included) with their edges, bounds and a slab index precomputed.

    Attributes:
        polygons: L shapely polygons (prepared).
        bounds: (L, 4) min x, min y, max x, max y [m].
        ring_edges, edge_owner: Every ring edge (x1, y1, x2, y2) and its polygon.
        exact: Optional exact predicate for undecided points; ``None`` uses ``shapely.contains_xy``.
        exact_only: Optional (L,) bool: polygons that only approximate their region (e.g. a
            buffered line for a distance test), to within :data:`EXACT_ONLY_MARGIN` of their
            edges; ``exact`` decides their points (the raster path of large queries trusts the
            polygon farther than the margin from its edges).
    """

    polygons: tuple
    bounds: np.ndarray
    ring_edges: np.ndarray = dataclasses.field(repr=False)  # (E, 4) x1, y1, x2, y2 of every ring edge
    edge_owner: np.ndarray = dataclasses.field(repr=False)  # (E,) polygon of each edge
    exact: ExactFn | None = None
    exact_only: np.ndarray | None = None

    @classmethod
    def from_polygons(cls, polygons: Sequence[shapely.Polygon], exact: ExactFn | None = None, exact_only: np.ndarray | None = None) -> PreparedPolygons:
        polys = tuple(polygons)
        arr = np.empty(len(polys), dtype=object)
        arr[:] = polys
        if len(polys):
            bad = np.flatnonzero(shapely.get_type_id(arr) != shapely.GeometryType.POLYGON)
            if bad.size:
                raise ValueError(f"PreparedPolygons: expected Polygon, got {type(polys[int(bad[0])]).__name__}")
        shapely.prepare(arr)
        rings, ring_poly = shapely.get_rings(arr, return_index=True)
        coords, ring_of = shapely.get_coordinates(rings, return_index=True)
        same = ring_of[1:] == ring_of[:-1]  # consecutive vertices of one (closed) ring
        edges = np.concatenate([coords[:-1][same], coords[1:][same]], axis=1)
        owner = ring_poly[ring_of[:-1][same]]
        bounds = shapely.bounds(arr).reshape(-1, 4)
        only = None if exact_only is None else np.asarray(exact_only, dtype=bool).reshape(len(polys))
        return cls(polys, bounds, edges, owner, exact, only)

    @functools.cached_property
    def index(self) -> _SlabIndex:
        """The slab index and broad-phase grid of every polygon (built on first use)."""
        return self._slab_index(np.ones(len(self.polygons), dtype=bool))

    def _slab_index(self, meets: np.ndarray) -> _SlabIndex:
        """The index of the polygons ``meets`` (L,) selects; the others keep their numbering (the
        slab keys) but get no grid cells. Exact-only polygons get grid cells but no slabs: the
        exact predicate decides all their pairs, so their crossings would never be read."""
        edges = meets[self.edge_owner]
        if self.exact_only is not None:
            edges &= ~self.exact_only[self.edge_owner]
        bounds = self.bounds if meets.all() else np.where(meets[:, None], self.bounds, np.nan)
        return _SlabIndex(self.ring_edges[edges], self.edge_owner[edges], bounds)

    def index_for(self, px: np.ndarray, py: np.ndarray) -> _SlabIndex:
        """A slab index that answers queries at points (px, py): the full :attr:`index` once
        built, else one of only the polygons whose bounds meet the points' bounding box (the
        others contain none of them), kept for later queries inside that box. Scoring queries
        one scene's rollouts once, near the ego, so indexing the rest of the map is wasted."""
        if "index" in self.__dict__:
            return self.index
        box = (float(px.min()), float(py.min()), float(px.max()), float(py.max()))
        cached = self.__dict__.get("_query_index")
        if cached is not None:
            (x0, y0, x1, y1), index = cached
            if x0 <= box[0] and y0 <= box[1] and box[2] <= x1 and box[3] <= y1:
                return index
            return self.index  # a second region: index everything once
        b = self.bounds
        meets = (b[:, 0] <= box[2]) & (b[:, 2] >= box[0]) & (b[:, 1] <= box[3]) & (b[:, 3] >= box[1])
        if meets.all():
            return self.index
        index = self._slab_index(meets)
        self.__dict__["_query_index"] = (box, index)
        return index

    @functools.cached_property
    def edges(self) -> tuple:
        """L arrays (E_l, 4) of ring edges x1, y1, x2, y2 [m] (exterior, then interior rings)."""
        counts = np.bincount(self.edge_owner, minlength=len(self.polygons))
        return tuple(np.split(self.ring_edges, np.cumsum(counts)[:-1]))

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

    def _nearest(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per point: the nearest segment within ``radius`` (-1: none; ties: the first) and its
        closest-point parameter (compiled loop over the segments of the point's cell)."""
        seg, t, _ = segment_nearest(x, y, self.x0, self.y0, self.cell, self.nx, self.ny, self.starts, self.segments, self.a, self.ab, self.den, self.radius)
        return seg, t

    def project(self, x: np.ndarray, y: np.ndarray, line: shapely.LineString) -> np.ndarray:
        """(P,) arc length of each point's closest point on the polyline, as
        ``shapely.line_locate_point`` (nearest segment, the first one on ties); points farther
        than ``radius`` from the polyline are passed to shapely with ``line`` (the same polyline)."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        y = np.ascontiguousarray(y, dtype=np.float64).reshape(-1)
        seg, t = self._nearest(x, y)
        found = seg >= 0
        out = np.full(x.shape[0], np.nan)
        s = seg[found]
        out[found] = self.arc[s] + t[found] * (self.arc[s + 1] - self.arc[s])
        missing = ~found
        if missing.any():
            out[missing] = shapely.line_locate_point(line, shapely.points(x[missing], y[missing]))
        return out

    def within(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(P,) bool: distance from (x, y) to the polyline <= radius."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        y = np.ascontiguousarray(y, dtype=np.float64).reshape(-1)
        return self._nearest(x, y)[0] >= 0


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


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Indices where each run of equal values in a sorted array starts (``np.unique``'s
    ``return_index``, without its cost)."""
    if sorted_values.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` via a sort (numpy 2's ``unique`` hashes, which is slow here)."""
    v = np.sort(values)
    return v[_run_starts(v)]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` cells (8-neighbourhood)."""
    for _ in range(max(steps, 0)):
        grown = mask.copy()
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown.copy()
        mask[1:, :] |= grown[:-1, :]
        mask[:-1, :] |= grown[1:, :]
    return mask


def _membership_raster(
    polys: PreparedPolygons, px: np.ndarray, py: np.ndarray, resolution: float, relevant: np.ndarray | None, n_words: int
) -> np.ndarray:
    """:func:`membership_bits` for dense queries: the polygons are rasterized on a grid over the
    points (three states per cell: inside, outside, uncertain near an edge) and only points in
    uncertain cells are tested exactly. An exact-only polygon is trusted only farther than
    :data:`EXACT_ONLY_MARGIN` from its edges."""
    out = np.zeros((px.size, n_words), dtype=np.uint64)
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
    only = polys.exact_only if polys.exact_only is not None else np.zeros(len(polys), dtype=bool)
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
        if only[j]:  # an approximate polygon: widen the uncertain band to the margin
            uncertain = _dilate(uncertain, int(np.ceil(EXACT_ONLY_MARGIN / res)) - 1)
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
            hit = shapely.contains_xy(polys.polygons[j], px[pi], py[pi])
        else:
            hit = np.asarray(polys.exact(j, px[pi], py[pi]), dtype=bool)
        if hit.any():
            out[pi[hit], j // 64] |= np.uint64(1) << np.uint64(j % 64)
    return out


def membership_bits(
    polys: PreparedPolygons, xy: np.ndarray, resolution: float = 0.2, relevant: np.ndarray | None = None
) -> np.ndarray:
    """Exact membership of each point as bit masks: bit ``j % 64`` of word ``j // 64`` is set when
    polygon j strictly contains the point (``shapely.contains_xy``, or the set's exact predicate).

    Args:
        polys: The polygons.
        xy: (P, 2) query points [m].
        resolution: Raster cell [m] for large queries (speed only; the answer never depends
            on it).
        relevant: Optional (P, W) or (W,) uint64 masks of the polygons that matter per point;
            bits outside them are not decided exactly (they may be wrong).

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
    span_x = float(px.max() - px.min()) + 4 * resolution  # (column reductions: (P, 2).max(axis=0) is slow)
    span_y = float(py.max() - py.min()) + 4 * resolution
    cells = min(span_x * span_y / (resolution * resolution), _MAX_CELLS)
    if p >= _RASTER_MIN_DENSITY * cells:  # dense: one raster serves many points per cell
        return _membership_raster(polys, px, py, resolution, relevant, n_words)
    # Runs of points that share their relevant mask (score_states passes three).
    per_point = None
    if relevant is None:
        blocks = [(0, p, None)]
    else:
        rel = np.asarray(relevant, dtype=np.uint64)
        if rel.ndim == 1:
            blocks = [(0, p, rel)]
        else:
            rel = np.broadcast_to(rel, (p, n_words))
            cuts = np.flatnonzero((rel[1:] != rel[:-1]).any(axis=1)) + 1
            if cuts.size < 16:
                edges = np.concatenate([[0], cuts, [p]])
                blocks = [(int(a), int(z), rel[a]) for a, z in zip(edges[:-1], edges[1:])]
            else:
                blocks, per_point = [(0, p, None)], rel
    index = polys.index_for(px, py)
    for a, z, mask in blocks:
        allowed = None if mask is None else bits_to_bool(mask, n_poly)
        if allowed is not None and not allowed.any():
            continue
        _membership_block(polys, index, px[a:z], py[a:z], allowed, None if per_point is None else per_point[a:z], out[a:z])
    return out


def _membership_block(
    polys: PreparedPolygons, index: _SlabIndex, px: np.ndarray, py: np.ndarray, allowed: np.ndarray | None, per_point: np.ndarray | None, out: np.ndarray
) -> None:
    """:func:`membership_bits` for a run of points (with ``index``, an index of ``polys`` that
    covers them), written into ``out`` (their rows)."""
    if index.nx == 0 or px.size == 0:
        return
    # Slab parity for every (point, polygon) pair of the grid (compiled); undecided pairs and
    # exact-only polygons come back for the exact test.
    cell_start, cell_poly = index.cells(allowed)
    only = polys.exact_only if polys.exact_only is not None else np.zeros(len(polys), dtype=bool)
    mask = per_point if per_point is not None else np.zeros((0, out.shape[1]), dtype=np.uint64)
    todo_p, todo_j = slab_membership(
        px, py, index.ys, index.gx0, index.gy0, 1.0 / index.cell, index.nx, index.ny, cell_start, cell_poly, polys.bounds,
        np.ascontiguousarray(mask), index.keys, index.key_start, index.keys_ext, index.u1, index.table, index.extra, index.extra_start, only, out,
    )
    if todo_p.size == 0:
        return
    order = np.argsort(todo_j, kind="stable")
    cut = np.flatnonzero(np.diff(todo_j[order])) + 1
    for group in np.split(order, cut):
        j = int(todo_j[group[0]])
        pi = todo_p[group]
        if polys.exact is None:
            hit = shapely.contains_xy(polys.polygons[j], px[pi], py[pi])
        else:
            hit = np.asarray(polys.exact(j, px[pi], py[pi]), dtype=bool)
        if hit.any():
            out[pi[hit], j >> 6] |= np.uint64(1) << np.uint64(j & 63)


def bits_to_bool(bits: np.ndarray, n: int) -> np.ndarray:
    """(..., W) uint64 bit masks -> (..., n) bool."""
    b = np.ascontiguousarray(bits)
    flat = np.unpackbits(b.view(np.uint8).reshape(b.shape[:-1] + (8 * b.shape[-1],)), axis=-1, bitorder="little")
    return flat[..., :n].astype(bool)


def index_bits(indices: np.ndarray, n: int) -> np.ndarray:
    """(W,) uint64 mask with the bits of boolean / index selection ``indices`` over n items set."""
    n_words = max((n + 63) // 64, 1)
    sel = np.zeros(64 * n_words, dtype=bool)
    sel[: n][np.asarray(indices)] = True
    return np.packbits(sel, bitorder="little").view("<u8").astype(np.uint64)


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
