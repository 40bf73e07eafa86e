"""Compiled inner loop of :func:`rap.sim.idm.path_hits` (numba).

The same pruning tests and hit test as the array version, element by element, so the result is
bit-identical; compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["first_path_hits"]


@numba.njit(cache=True, nogil=True)
def first_path_hits(
    pb, path_of, px, py, qx, qy, ex, ey, hl, hw, reach, base, inside_only, sample_valid,
    first, length, fx, fy, fr, use_fine, per_coarse, gx, gy, gr, use_coarse,
):
    """The first sample of each (path row, box) pair that hits the box.

    Args:
        pb: (P,) row of each pair; path_of: (B,) path of each row; px, py: (M, K) path samples.
        qx, qy, ex, ey, hl, hw: (P,) box centre, unit axis, half length and width of each pair.
        reach: (P,) clearance of each pair's row; base: (P,) box radius + reach + slack.
        inside_only: hits are samples inside the box (else: closer than ``reach``).
        sample_valid: (B, K) bool samples that may hit.
        first, length: (S,) fine segments (first sample, sample count); fx, fy, fr: (M, S) their
            bounding circles; use_fine: prune by them.
        per_coarse: fine segments per coarse segment; gx, gy, gr: (M, C) coarse circles;
            use_coarse: prune by them first.

    Returns:
        (pairs, samples) int64 of the pairs that hit, in pair order.
    """
    n_pairs = pb.size
    out_pair = np.empty(n_pairs, np.int64)
    out_sample = np.empty(n_pairs, np.int64)
    count = 0
    n_fine = first.size
    n_coarse = gx.shape[1] if use_coarse else 1
    for p in range(n_pairs):
        b = pb[p]
        m = path_of[b]
        found = -1
        for c in range(n_coarse):
            if use_coarse:
                lim = base[p] + gr[m, c]
                dx, dy = gx[m, c] - qx[p], gy[m, c] - qy[p]
                if not (dx * dx + dy * dy <= lim * lim):
                    continue
                s_lo, s_hi = c * per_coarse, min(c * per_coarse + per_coarse, n_fine)
            else:
                s_lo, s_hi = 0, n_fine
            for s in range(s_lo, s_hi):
                if use_fine:
                    lim = base[p] + fr[m, s]
                    dx, dy = fx[m, s] - qx[p], fy[m, s] - qy[p]
                    if not (dx * dx + dy * dy <= lim * lim):
                        continue
                for i in range(first[s], first[s] + length[s]):
                    rx = px[m, i] - qx[p]
                    ry = py[m, i] - qy[p]
                    ax = abs(rx * ex[p] + ry * ey[p])
                    ay = abs(ry * ex[p] - rx * ey[p])
                    if inside_only:
                        hit = ax <= hl[p] and ay <= hw[p]
                    else:
                        lx = max(ax - hl[p], 0.0)
                        ly = max(ay - hw[p], 0.0)
                        hit = lx * lx + ly * ly < reach[p] * reach[p]
                    if hit and sample_valid[b, i]:
                        found = i
                        break
                if found >= 0:
                    break
            if found >= 0:
                break
        if found >= 0:
            out_pair[count] = p
            out_sample[count] = found
            count += 1
    return out_pair[:count], out_sample[:count]
