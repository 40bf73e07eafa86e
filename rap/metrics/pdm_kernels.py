"""Compiled inner loops of the PDM scorer (numba).

Each kernel does per element what array code did with many passes, with the same floating-point
operations in the same order, so its results are bit-identical to that code's; what changes is
that the ~10^4-10^5 (point, polygon) pairs or (row, step, object) triples of a scoring call are
visited once in a loop instead of by ~100 array passes over temporaries. The exception is
:func:`savgol_rows`, whose edge sums replace BLAS products (last-bit differences; a row's bits
no longer depend on its batch). Compiled on first use
and cached on disk (``cache=True``: ``__pycache__`` beside this file, or numba's user cache).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["box_contacts", "comfort_rows", "grid_cells", "savgol_rows", "segment_nearest", "slab_membership", "slab_table"]

_JIT = dict(cache=True, nogil=True)


@numba.njit(**_JIT)
def _search_left(values: np.ndarray, key) -> int:
    """``np.searchsorted(values, key, side="left")`` for sorted ``values``."""
    lo, hi = 0, values.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(**_JIT)
def slab_membership(
    px, py, ys,
    gx0, gy0, inv_cell, nx, ny, cell_start, cell_poly, bounds,
    per_point, keys, key_start, keys_ext, u1, table, extra, extra_start, exact_only, out,
):
    """Ray-crossing parity of every (point, polygon) pair of the broad-phase grid.

    Args:
        px, py: (P,) points; ys: (U,) sorted distinct vertex ordinates of the polygons.
        gx0, gy0, inv_cell, nx, ny, cell_start, cell_poly: the grid (polygons per cell, CSR),
            already filtered to the allowed polygons; bounds: (L, 4) polygon bounds (a point
            outside them is not strictly inside; exact-only polygons are tested regardless).
        per_point: (P, W) uint64 polygons that matter per point, or (0, W) for all.
        keys, keys_ext, u1, table, extra, extra_start: the slab index (see ``_SlabIndex``);
            key_start: (L + 1,) first slab key of each polygon.
        exact_only: (L,) bool polygons always decided by the exact test.
        out: (P, W) uint64, bits of the pairs decided inside are OR-ed in.

    Returns:
        (point, polygon) int64 arrays of the pairs the crossing test cannot decide (a point on a
        vertex ordinate of the slab boundary, within rounding of an edge, or an exact-only
        polygon), in point order.
    """
    n = px.size
    cap = 64
    todo_p = np.empty(cap, np.int64)
    todo_j = np.empty(cap, np.int64)
    n_todo = 0
    width = table.shape[1]
    use_mask = per_point.shape[0] > 0
    for i in range(n):
        gx = np.floor((px[i] - gx0) * inv_cell)
        gy = np.floor((py[i] - gy0) * inv_cell)
        if not (gx >= 0 and gx < nx and gy >= 0 and gy < ny):
            continue
        cid = np.int64(gy * nx + gx)
        x, y = px[i], py[i]
        rank = _search_left(ys, y)  # the point's slab among the vertex ordinates
        on_vertex_y = rank < ys.size and ys[rank] == y
        for e in range(cell_start[cid], cell_start[cid + 1]):
            j = cell_poly[e]
            if use_mask and ((per_point[i, j >> 6] >> np.uint64(j & 63)) & np.uint64(1)) == 0:
                continue
            if not exact_only[j] and (x <= bounds[j, 0] or x >= bounds[j, 2] or y <= bounds[j, 1] or y >= bounds[j, 3]):
                continue
            key = j * u1 + rank
            g = key_start[j] + _search_left(keys[key_start[j] : key_start[j + 1]], key)
            unsure = on_vertex_y and keys_ext[g] == key
            inside = False
            for s in range(width):
                bound = table[g, s, 3]
                d = x - (table[g, s, 0] + (y - table[g, s, 1]) * table[g, s, 2])
                if d < -bound:
                    inside = not inside
                if abs(d) <= bound:
                    unsure = True
            for r in range(extra_start[g], extra_start[g + 1]):
                bound = extra[r, 3]
                d = x - (extra[r, 0] + (y - extra[r, 1]) * extra[r, 2])
                if d < -bound:
                    inside = not inside
                if abs(d) <= bound:
                    unsure = True
            if unsure or exact_only[j]:
                if n_todo == cap:
                    cap *= 2
                    grown_p = np.empty(cap, np.int64)
                    grown_j = np.empty(cap, np.int64)
                    grown_p[:n_todo] = todo_p[:n_todo]
                    grown_j[:n_todo] = todo_j[:n_todo]
                    todo_p, todo_j = grown_p, grown_j
                todo_p[n_todo] = i
                todo_j[n_todo] = j
                n_todo += 1
            elif inside:
                out[i, j >> 6] |= np.uint64(1) << np.uint64(j & 63)
    return todo_p[:n_todo], todo_j[:n_todo]


@numba.njit(**_JIT)
def box_contacts(
    ta, na, row_starts, obj_scene,
    cx, cy, vx, vy, cos_e, sin_e, mx, my, ego_r,
    ocx, ocy, obj_r,
    ox, oy, cos_o, sin_o, half_len, half_wid, circle_r,
    ok, looks, dt, hl, hw, box_r,
):
    """Exact ego-object box contacts of every active (step, object) pair with every row of the
    object's scene, per look-ahead: the ego box moved ahead at its speed and heading against the
    object's box at that step (bounding circles, then the separating-axis test of
    ``pdm_collisions.obb_overlap``; touching counts).

    Args:
        ta, na: (A,) active (ego step, object) pairs.
        row_starts: (G + 1,) first row of each scene; obj_scene: (N,) scene of each object.
        cx, cy, vx, vy, cos_e, sin_e: (Te, K) ego box centres, velocities, cos / sin of heading
            (step-major: the rows of one step are contiguous).
        mx, my, ego_r: (Te, K) circle the ego box sweeps over the look-aheads.
        ocx, ocy, obj_r: (Te, N) circle around the object's valid look-ahead boxes.
        ox, oy, cos_o, sin_o: (N, S) object centres and cos / sin of heading.
        half_len, half_wid, circle_r: (N,) object half length, half width, bounding radius.
        ok: (Te, D, N) bool, look-ahead d of (step, object) is valid.
        looks: (D,) look-ahead steps; dt: step [s]; hl, hw, box_r: ego half length, half
            width, bounding radius.

    Returns:
        (look index, row, step, object) int64 (4, C) of every contact, in (pair, row) order.
    """
    cap = 256
    hits = np.empty((4, cap), np.int64)
    count = 0
    n_looks = looks.size
    for a in range(ta.size):
        t, n = ta[a], na[a]
        g = obj_scene[n]
        reach_o = obj_r[t, n]
        # Room for every hit of this pair before its loops: an array reassigned inside the hot
        # loop costs numba reference counting on every access there (2x this kernel's time).
        need = count + (row_starts[g + 1] - row_starts[g]) * n_looks
        if need > cap:
            cap = max(2 * cap, need)
            grown = np.empty((4, cap), np.int64)
            grown[:, :count] = hits[:, :count]
            hits = grown
        for k in range(row_starts[g], row_starts[g + 1]):
            # Swept circles (conservative: every look-ahead contact lies inside them).
            ddx = mx[t, k] - ocx[t, n]
            ddy = my[t, k] - ocy[t, n]
            reach = ego_r[t, k] + reach_o
            if ddx * ddx + ddy * ddy > reach * reach * (1.0 + 1e-6) + 1e-3:
                continue
            for j in range(n_looks):
                if not ok[t, j, n]:
                    continue
                look = looks[j]
                shift = look * dt
                s = t + look
                dx = ox[n, s] - (cx[t, k] + vx[t, k] * shift)
                dy = oy[n, s] - (cy[t, k] + vy[t, k] * shift)
                r = box_r + circle_r[n]
                if not (dx * dx + dy * dy <= r * r + 1e-9):
                    continue
                # Separating axes of the two rectangles (pdm_collisions.obb_overlap).
                c1, s1, c2, s2 = cos_e[t, k], sin_e[t, k], cos_o[n, s], sin_o[n, s]
                a2, b2 = half_len[n], half_wid[n]
                cd = abs(c1 * c2 + s1 * s2)
                sd = abs(c1 * s2 - s1 * c2)
                if (
                    abs(dx * c1 + dy * s1) <= hl + a2 * cd + b2 * sd
                    and abs(dy * c1 - dx * s1) <= hw + a2 * sd + b2 * cd
                    and abs(dx * c2 + dy * s2) <= hl * cd + hw * sd + a2
                    and abs(dy * c2 - dx * s2) <= hl * sd + hw * cd + b2
                ):
                    hits[0, count] = j
                    hits[1, count] = k
                    hits[2, count] = t
                    hits[3, count] = n
                    count += 1
    return hits[:, :count]


@numba.njit(**_JIT)
def segment_nearest(x, y, x0, y0, cell, nx, ny, starts, segments, a, ab, den, radius):
    """For each point: the nearest polyline segment within ``radius`` among those registered in
    the point's grid cell (ties: the lowest segment index), its closest-point parameter and the
    distance (``SegmentGrid``'s candidate pairs reduced per point).

    Returns:
        seg (P,) int64 (-1: none within ``radius``), t (P,), d (P,).
    """
    n = x.size
    best_seg = np.full(n, -1, np.int64)
    best_t = np.zeros(n)
    best_d = np.full(n, np.inf)
    for i in range(n):
        gx = np.floor((x[i] - x0) / cell)
        gy = np.floor((y[i] - y0) / cell)
        if not (gx >= 0 and gx < nx and gy >= 0 and gy < ny):
            continue
        cid = np.int64(gy * nx + gx)
        for e in range(starts[cid], starts[cid + 1]):
            s = segments[e]
            apx = x[i] - a[s, 0]
            apy = y[i] - a[s, 1]
            dd = den[s] if den[s] > 0 else 1.0
            t = (apx * ab[s, 0] + apy * ab[s, 1]) / dd
            t = min(max(t, 0.0), 1.0)
            dx = apx - t * ab[s, 0]
            dy = apy - t * ab[s, 1]
            d = np.sqrt(dx * dx + dy * dy)
            if d <= radius and (d < best_d[i] or (d == best_d[i] and s < best_seg[i])):
                best_seg[i], best_t[i], best_d[i] = s, t, d
    return best_seg, best_t, best_d


@numba.njit(**_JIT)
def slab_table(x1, y1, x2, y2, edge_poly, n_polygons, width_max, cross_error):
    """The slabs of ``_SlabIndex`` from ring edges (x1, y1) -> (x2, y2) of polygons ``edge_poly``.

    Returns:
        ys (U,) distinct vertex ordinates; keys (sorted slab keys ``j * (U + 1) + rank``);
        key_start (L + 1,) first key of each polygon; table (S + 1, width, 4) the first
        ``width`` (<= ``width_max``) crossing edges of each slab as (xa, ya, slope, bound),
        padded with xa = -inf; extra (X, 4) the further ones, CSR by slab with extra_start.
        Edges appear in each slab in edge order.
    """
    ys = np.unique(y1)
    u1 = ys.size + 1
    n_edges = x1.size
    slab_keys = np.empty(n_edges, np.int64)
    rank1 = np.empty(n_edges, np.int64)
    rank2 = np.empty(n_edges, np.int64)
    for e in range(n_edges):
        rank1[e] = _search_left(ys, y1[e])
        rank2[e] = _search_left(ys, y2[e])
        slab_keys[e] = edge_poly[e] * u1 + rank1[e]
    keys = np.unique(slab_keys)
    key_start = np.empty(n_polygons + 1, np.int64)
    for j in range(n_polygons + 1):
        key_start[j] = _search_left(keys, j * u1)
    n_slabs = keys.size + 1
    # Slabs each slanted edge crosses: ga + 1 .. gb.
    ga = np.zeros(n_edges, np.int64)
    gb = np.zeros(n_edges, np.int64)
    per_slab = np.zeros(n_slabs, np.int64)
    for e in range(n_edges):
        if y1[e] == y2[e]:
            continue
        base = edge_poly[e] * u1
        lo, hi = (rank1[e], rank2[e]) if y2[e] > y1[e] else (rank2[e], rank1[e])
        ga[e] = _search_left(keys, base + lo)
        gb[e] = _search_left(keys, base + hi)
        for g in range(ga[e] + 1, gb[e] + 1):
            per_slab[g] += 1
    width = 1
    for g in range(n_slabs):
        width = max(width, per_slab[g])
    width = min(width, width_max)
    table = np.zeros((n_slabs, width, 4))
    table[:, :, 0] = -np.inf
    extra_start = np.zeros(n_slabs + 1, np.int64)
    for g in range(n_slabs):
        extra_start[g + 1] = extra_start[g] + max(per_slab[g] - width, 0)
    extra = np.zeros((extra_start[n_slabs], 4))
    filled = np.zeros(n_slabs, np.int64)
    for e in range(n_edges):
        if y1[e] == y2[e]:
            continue
        if y2[e] > y1[e]:
            xa, ya, dx, dy = x1[e], y1[e], x2[e] - x1[e], y2[e] - y1[e]
        else:
            xa, ya, dx, dy = x2[e], y2[e], x1[e] - x2[e], y1[e] - y2[e]
        slope = dx / dy
        bound = cross_error * (abs(xa) + 8.0 * abs(dx))
        for g in range(ga[e] + 1, gb[e] + 1):
            r = filled[g]
            filled[g] += 1
            row = table[g, r] if r < width else extra[extra_start[g] + r - width]
            row[0], row[1], row[2], row[3] = xa, ya, slope, bound
    return ys, keys, key_start, table, extra, extra_start


@numba.njit(**_JIT)
def _savgol_row(x, out, coeffs, i0, i1, head, tail, fit, evaluate, poly):
    """One signal ``x`` (n,) through a Savitzky-Golay plan into ``out`` (see :func:`savgol_rows`;
    ``poly`` is scratch of at least ``fit.shape[0]``)."""
    n = x.size
    if fit.shape[0] > 0:
        p1 = fit.shape[0]
        for q in range(p1):
            acc = 0.0
            for j in range(n):
                acc += fit[q, j] * x[j]
            poly[q] = acc
        for j in range(n):
            acc = 0.0
            for q in range(p1):
                acc += evaluate[j, q] * poly[q]
            out[j] = acc
        return
    window = coeffs.size
    half = window // 2
    for j in range(i0, i1):
        acc = 0.0
        for k in range(window):
            acc += coeffs[k] * x[j + half - k]
        out[j] = acc
    for j in range(half):
        acc = 0.0
        hacc = 0.0
        for w in range(window):
            acc += head[j, w] * x[w]
            hacc += tail[j, w] * x[n - window + w]
        out[j] = acc
        out[n - half + j] = hacc


@numba.njit(**_JIT)
def savgol_rows(x, coeffs, i0, i1, head, tail, fit, evaluate):
    """Savitzky-Golay filter of every row of ``x`` (R, n) (``comfort.savgol_filter``'s plan):
    outputs i0 .. i1-1 by convolution with ``coeffs`` (window,), the first / last ``half`` from
    the edge operators ``head`` / ``tail`` (half, window); with ``fit`` (p + 1, n) non-empty, the
    whole signal through ``evaluate @ fit`` instead. Each row's arithmetic is its own, in a fixed
    order, so a row gets the same bits in any batch."""
    rows, n = x.shape
    out = np.empty((rows, n))
    poly = np.empty(max(fit.shape[0], 1))
    for r in range(rows):
        _savgol_row(x[r], out[r], coeffs, i0, i1, head, tail, fit, evaluate, poly)
    return out


@numba.njit(**_JIT)
def _filtered(x, out, plan, poly):
    """``out`` = ``np.round(savgol(x), 8)`` with a plan tuple (coeffs, i0, i1, head, tail, fit, evaluate)."""
    _savgol_row(x, out, plan[0], plan[1], plan[2], plan[3], plan[4], plan[5], plan[6], poly)
    for j in range(out.size):
        out[j] = np.round(out[j], 8)


@numba.njit(**_JIT)
def _within(sig, lo, hi):
    for j in range(sig.size):
        if not (sig[j] > lo and sig[j] < hi):
            return False
    return True


@numba.njit(**_JIT)
def comfort_rows(ax, ay, mag, heading, acc, smooth, jerk, yaw_accel, yaw_rate, lo, hi, all_only=False):
    """nuPlan's six comfort checks of every row (``comfort.comfort_checks``): per row the smoothed
    lon / lat accelerations (``acc`` plan), the jerk of the smoothed acceleration magnitude and of
    the smoothed lon acceleration (``smooth`` then ``jerk``), the yaw acceleration and rate of the
    unwrapped heading (``yaw_accel``, ``yaw_rate``), each rounded to 1e-8 like the array code, then
    strictly within (lo[i], hi[i]) at every step. Plans are (coeffs, i0, i1, head, tail, fit,
    evaluate) tuples of ``comfort._savgol_plan``. Returns (R, 6) bool, columns ``ComfortIndex``;
    with ``all_only`` a row's checks stop at its first failure (the later columns stay False:
    only "every check passes" is then meaningful, and it is exact)."""
    rows, n = ax.shape
    out = np.zeros((rows, 6), dtype=np.bool_)
    a = np.empty(n)
    b = np.empty(n)
    poly = np.empty(8)
    for r in range(rows):
        _filtered(ax[r], a, acc, poly)
        out[r, 0] = _within(a, lo[0], hi[0])
        if all_only and not out[r, 0]:
            continue
        _filtered(ay[r], a, acc, poly)
        out[r, 1] = _within(a, lo[1], hi[1])
        if all_only and not out[r, 1]:
            continue
        _filtered(mag[r], a, smooth, poly)
        _filtered(a, b, jerk, poly)
        out[r, 2] = _within(b, lo[2], hi[2])
        if all_only and not out[r, 2]:
            continue
        _filtered(ax[r], a, smooth, poly)
        _filtered(a, b, jerk, poly)
        out[r, 3] = _within(b, lo[3], hi[3])
        if all_only and not out[r, 3]:
            continue
        _filtered(heading[r], a, yaw_accel, poly)
        out[r, 4] = _within(a, lo[4], hi[4])
        if all_only and not out[r, 4]:
            continue
        _filtered(heading[r], a, yaw_rate, poly)
        out[r, 5] = _within(a, lo[5], hi[5])
    return out


@numba.njit(**_JIT)
def grid_cells(cx0, cx1, cy0, cy1, poly_ids, nx, ny):
    """Broad-phase grid of ``_SlabIndex``: for every cell of an (ny, nx) grid the polygons whose
    cell range [cx0, cx1] x [cy0, cy1] covers it, in polygon order (CSR: cell_start, cell_poly)."""
    n_cells = nx * ny
    cell_start = np.zeros(n_cells + 1, np.int64)
    for j in range(cx0.size):
        for gy in range(cy0[j], cy1[j] + 1):
            for gx in range(cx0[j], cx1[j] + 1):
                cell_start[gy * nx + gx + 1] += 1
    for c in range(n_cells):
        cell_start[c + 1] += cell_start[c]
    filled = cell_start[:-1].copy()
    cell_poly = np.empty(cell_start[n_cells], np.int64)
    for j in range(cx0.size):
        for gy in range(cy0[j], cy1[j] + 1):
            for gx in range(cx0[j], cx1[j] + 1):
                c = gy * nx + gx
                cell_poly[filled[c]] = poly_ids[j]
                filled[c] += 1
    return cell_start, cell_poly
