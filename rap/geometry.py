"""Planar and spatial geometry helpers: SE(2) frames, box corners, polylines.

Conventions (see docs/DESIGN.md): SI units, angles in radians wrapped to [-pi, pi), right-handed
frames with x forward, y left, z up. Frame changes here are rotations about z plus a translation
(SE(2) lifted to 3D): roll and pitch are never modelled.

Every function is vectorized over leading "batch" dimensions (written ``...``) with numpy
broadcasting; none of them loops over points in Python.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "wrap_angle",
    "rotate",
    "se2_matrix",
    "to_frame",
    "from_frame",
    "heading_to_frame",
    "heading_from_frame",
    "box_corners_2d",
    "box_corners_3d",
    "polyline_segment_lengths",
    "polyline_arc_length",
    "polyline_length",
    "resample_polyline",
    "point_polyline_distance",
    "finite_difference",
    "fixed_step_rate",
    "windowed_rate",
]

_TWO_PI = 2.0 * np.pi


def wrap_angle(angle: ArrayLike) -> np.ndarray:
    """Wraps angles to [-pi, pi).

    Args:
        angle: Angles of any shape [rad].

    Returns:
        float64 array of the same shape, every value in [-pi, pi) [rad].
    """
    a = np.asarray(angle, dtype=np.float64)
    wrapped = np.mod(a + np.pi, _TWO_PI) - np.pi
    # np.mod can round up to exactly 2*pi for tiny negative inputs, giving +pi.
    return np.where(wrapped >= np.pi, wrapped - _TWO_PI, wrapped)


def rotate(vectors: ArrayLike, angle: ArrayLike) -> np.ndarray:
    """Rotates 2D vectors (or the xy part of 3D vectors) counter-clockwise about z.

    Args:
        vectors: (..., 2) or (..., 3) vectors. A third (z) component passes through unchanged.
        angle: Rotation angle [rad], broadcastable to ``vectors.shape[:-1]``.

    Returns:
        float64 array shaped like ``vectors``.
    """
    v = np.asarray(vectors, dtype=np.float64)
    _check_point_dim(v, "vectors")
    a = np.asarray(angle, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    out = v.copy()
    out[..., 0] = c * v[..., 0] - s * v[..., 1]
    out[..., 1] = s * v[..., 0] + c * v[..., 1]
    return out


def se2_matrix(x: ArrayLike, y: ArrayLike, heading: ArrayLike) -> np.ndarray:
    """Homogeneous SE(2) matrices mapping frame coordinates to parent (world) coordinates.

    Args:
        x: Frame origin x in the parent frame [m], shape (...).
        y: Frame origin y in the parent frame [m], shape (...).
        heading: Frame x-axis direction in the parent frame [rad], shape (...).

    Returns:
        (..., 3, 3) float64 matrices ``[[cos, -sin, x], [sin, cos, y], [0, 0, 1]]``.
    """
    x, y, h = np.broadcast_arrays(
        np.asarray(x, dtype=np.float64),
        np.asarray(y, dtype=np.float64),
        np.asarray(heading, dtype=np.float64),
    )
    c, s = np.cos(h), np.sin(h)
    m = np.zeros(x.shape + (3, 3), dtype=np.float64)
    m[..., 0, 0] = c
    m[..., 0, 1] = -s
    m[..., 0, 2] = x
    m[..., 1, 0] = s
    m[..., 1, 1] = c
    m[..., 1, 2] = y
    m[..., 2, 2] = 1.0
    return m


def to_frame(points: ArrayLike, origin: ArrayLike, heading: ArrayLike) -> np.ndarray:
    """Expresses parent-frame points in a child frame (translation then rotation by -heading).

    Args:
        points: (..., 2) or (..., 3) points in the parent frame [m].
        origin: (..., 2) or (..., 3) child-frame origin in the parent frame [m], broadcastable
            against ``points``. With a 2-element origin, z passes through unchanged; with a
            3-element origin, z is shifted by ``-origin[2]`` (2D points ignore it).
        heading: Child-frame x-axis direction in the parent frame [rad], broadcastable to
            ``points.shape[:-1]``.

    Returns:
        float64 array shaped like ``points``, in the child frame [m].
    """
    p = np.asarray(points, dtype=np.float64)
    _check_point_dim(p, "points")
    o = np.asarray(origin, dtype=np.float64)
    _check_point_dim(o, "origin")
    shifted = p.copy()
    shifted[..., 0] = p[..., 0] - o[..., 0]
    shifted[..., 1] = p[..., 1] - o[..., 1]
    if p.shape[-1] == 3 and o.shape[-1] == 3:
        shifted[..., 2] = p[..., 2] - o[..., 2]
    return rotate(shifted, -np.asarray(heading, dtype=np.float64))


def from_frame(points: ArrayLike, origin: ArrayLike, heading: ArrayLike) -> np.ndarray:
    """Inverse of :func:`to_frame`: expresses child-frame points in the parent frame.

    Args:
        points: (..., 2) or (..., 3) points in the child frame [m].
        origin: (..., 2) or (..., 3) child-frame origin in the parent frame [m].
        heading: Child-frame x-axis direction in the parent frame [rad].

    Returns:
        float64 array shaped like ``points``, in the parent frame [m].
    """
    o = np.asarray(origin, dtype=np.float64)
    _check_point_dim(o, "origin")
    out = rotate(points, heading)
    out[..., 0] += o[..., 0]
    out[..., 1] += o[..., 1]
    if out.shape[-1] == 3 and o.shape[-1] == 3:
        out[..., 2] += o[..., 2]
    return out


def heading_to_frame(heading: ArrayLike, frame_heading: ArrayLike) -> np.ndarray:
    """Headings expressed in a child frame rotated by ``frame_heading``.

    Args:
        heading: Parent-frame headings [rad], shape (...).
        frame_heading: Child-frame heading in the parent frame [rad], broadcastable.

    Returns:
        float64 child-frame headings wrapped to [-pi, pi) [rad].
    """
    return wrap_angle(np.asarray(heading, dtype=np.float64) - np.asarray(frame_heading))


def heading_from_frame(heading: ArrayLike, frame_heading: ArrayLike) -> np.ndarray:
    """Inverse of :func:`heading_to_frame`.

    Args:
        heading: Child-frame headings [rad], shape (...).
        frame_heading: Child-frame heading in the parent frame [rad], broadcastable.

    Returns:
        float64 parent-frame headings wrapped to [-pi, pi) [rad].
    """
    return wrap_angle(np.asarray(heading, dtype=np.float64) + np.asarray(frame_heading))


def box_corners_2d(
    x: ArrayLike, y: ArrayLike, heading: ArrayLike, length: ArrayLike, width: ArrayLike
) -> np.ndarray:
    """Corners of oriented rectangles (bird's-eye-view boxes).

    Args:
        x: Box centre x [m], shape (...).
        y: Box centre y [m], shape (...).
        heading: Box x-axis (forward) direction [rad], shape (...).
        length: Extent along the heading [m], shape (...).
        width: Extent across the heading [m], shape (...).
        All arguments broadcast together.

    Returns:
        (..., 4, 2) float64 corners [m], front-right first then counter-clockwise:
        front-right, front-left, rear-left, rear-right.
    """
    x, y, h, length, width = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (x, y, heading, length, width))
    )
    # Unit-box signs, shape (4, 2): (+l/2, -w/2), (+l/2, +w/2), (-l/2, +w/2), (-l/2, -w/2).
    signs = np.array([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0]])
    local = np.empty(x.shape + (4, 2), dtype=np.float64)
    local[..., 0] = 0.5 * length[..., None] * signs[:, 0]
    local[..., 1] = 0.5 * width[..., None] * signs[:, 1]
    corners = rotate(local, h[..., None])
    corners[..., 0] += x[..., None]
    corners[..., 1] += y[..., None]
    return corners


def box_corners_3d(center: ArrayLike, size: ArrayLike, heading: ArrayLike) -> np.ndarray:
    """Corners of z-up 3D boxes rotated about z.

    Args:
        center: (..., 3) box centres [m].
        size: (..., 3) box extents (length, width, height) [m].
        heading: Box x-axis direction [rad], shape (...).

    Returns:
        (..., 8, 3) float64 corners [m]: indices 0-3 are the bottom face and 4-7 the top face,
        each in :func:`box_corners_2d` order (front-right, front-left, rear-left, rear-right).
    """
    c = np.asarray(center, dtype=np.float64)
    s = np.asarray(size, dtype=np.float64)
    if c.shape[-1:] != (3,) or s.shape[-1:] != (3,):
        raise ValueError(
            f"box_corners_3d: center and size must end in 3, got {c.shape} and {s.shape}"
        )
    c, s = np.broadcast_arrays(c, s)
    xy = box_corners_2d(c[..., 0], c[..., 1], heading, s[..., 0], s[..., 1])  # (..., 4, 2)
    out = np.empty(xy.shape[:-2] + (8, 3), dtype=np.float64)
    out[..., :4, :2] = xy
    out[..., 4:, :2] = xy
    out[..., :4, 2] = (c[..., 2] - 0.5 * s[..., 2])[..., None]
    out[..., 4:, 2] = (c[..., 2] + 0.5 * s[..., 2])[..., None]
    return out


def polyline_segment_lengths(points: ArrayLike) -> np.ndarray:
    """Lengths of the segments of polylines.

    Args:
        points: (..., N, D) polyline vertices [m], N >= 1.

    Returns:
        (..., N - 1) float64 segment lengths [m].
    """
    p = np.asarray(points, dtype=np.float64)
    return np.linalg.norm(np.diff(p, axis=-2), axis=-1)


def polyline_arc_length(points: ArrayLike) -> np.ndarray:
    """Cumulative arc length at each vertex of polylines.

    Args:
        points: (..., N, D) polyline vertices [m].

    Returns:
        (..., N) float64 arc length from the first vertex [m]; element 0 is 0.
    """
    seg = polyline_segment_lengths(points)
    out = np.zeros(seg.shape[:-1] + (seg.shape[-1] + 1,), dtype=np.float64)
    np.cumsum(seg, axis=-1, out=out[..., 1:])
    return out


def polyline_length(points: ArrayLike) -> np.ndarray:
    """Total length of polylines.

    Args:
        points: (..., N, D) polyline vertices [m].

    Returns:
        (...) float64 total lengths [m] (a 0-d array for a single polyline).
    """
    return polyline_segment_lengths(points).sum(axis=-1)


def resample_polyline(points: ArrayLike, spacing: float, *, keep_end: bool = True) -> np.ndarray:
    """Resamples a polyline at a fixed arc-length spacing (linear interpolation).

    Args:
        points: (N, D) polyline vertices [m], N >= 1.
        spacing: Arc length between consecutive output points [m], > 0.
        keep_end: Also emit the last input vertex when the length is not a multiple of
            ``spacing`` (so the output spans the whole polyline).

    Returns:
        (M, D) float64 points [m] at arc lengths 0, spacing, 2 * spacing, ... (plus the end point
        when ``keep_end``). A single point, or a polyline of zero length, gives its first vertex.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"resample_polyline: points must be (N, D) with N >= 1, got {p.shape}")
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"resample_polyline: spacing must be finite and > 0, got {spacing}")
    seg = polyline_segment_lengths(p)
    # Zero-length segments would make the arc-length samples non-increasing: drop repeats.
    keep = np.concatenate([[True], seg > 0])
    p = p[keep]
    s = polyline_arc_length(p)
    total = s[-1]
    if total == 0:
        return p[:1].copy()
    samples = np.arange(0.0, total, spacing)
    if keep_end and total - samples[-1] > 1e-9 * max(1.0, total):
        samples = np.append(samples, total)
    # Linear interpolation of each coordinate (a loop over the D columns, not the points).
    return np.stack([np.interp(samples, s, p[:, d]) for d in range(p.shape[1])], axis=-1)


def point_polyline_distance(points: ArrayLike, polyline: ArrayLike) -> np.ndarray:
    """Euclidean distance from each point to the nearest point of one polyline.

    Memory is O(N * M); meant for map-sized inputs (hundreds of points).

    Args:
        points: (N, D) query points [m].
        polyline: (M, D) polyline vertices [m], M >= 1.

    Returns:
        (N,) float64 distances [m].
    """
    q = np.asarray(points, dtype=np.float64)
    line = np.asarray(polyline, dtype=np.float64)
    if line.ndim != 2 or line.shape[0] < 1 or q.ndim != 2 or q.shape[1] != line.shape[1]:
        raise ValueError(
            f"point_polyline_distance: need (N, D) points and (M, D) polyline, got {q.shape} "
            f"and {line.shape}"
        )
    if line.shape[0] == 1:
        return np.linalg.norm(q - line[0], axis=-1)
    a = line[:-1]  # (S, D)
    ab = line[1:] - a  # (S, D)
    denom = np.einsum("sd,sd->s", ab, ab)  # (S,)
    ap = q[:, None, :] - a[None, :, :]  # (N, S, D)
    t = np.einsum("nsd,sd->ns", ap, ab) / np.where(denom > 0, denom, 1.0)
    t = np.clip(np.where(denom > 0, t, 0.0), 0.0, 1.0)  # (N, S)
    nearest = a[None] + t[..., None] * ab[None]  # (N, S, D)
    return np.linalg.norm(q[:, None, :] - nearest, axis=-1).min(axis=1)


def _check_point_dim(a: np.ndarray, name: str) -> None:
    if a.ndim < 1 or a.shape[-1] not in (2, 3):
        raise ValueError(f"{name} must have a last dimension of 2 or 3, got shape {a.shape}")


def finite_difference(values: np.ndarray, ts: np.ndarray, valid: np.ndarray, angle: bool = False) -> np.ndarray:
    """Per-step time derivative of (T, ...) ``values`` at (T,) times ``ts`` [s] from valid
    neighbours ((T,) bool ``valid``); returns (T, ...) float64.

    Central difference where both neighbours are valid, one-sided where one is, 0 elsewhere.
    With ``angle`` the differences are wrapped to [-pi, pi).
    """
    t = ts.shape[0]
    out = np.zeros_like(values, dtype=np.float64)
    if t < 2:
        return out
    diff = np.diff(values, axis=0)
    if angle:
        diff = wrap_angle(diff)
    dt = np.diff(ts).reshape((-1,) + (1,) * (values.ndim - 1))
    fwd = diff / dt  # (T - 1, ...) rate between j and j + 1.
    pair = valid[:-1] & valid[1:]  # (T - 1,)
    has_next = np.zeros(t, dtype=bool)
    has_prev = np.zeros(t, dtype=bool)
    has_next[:-1] = pair
    has_prev[1:] = pair
    nxt = np.zeros_like(out)
    prv = np.zeros_like(out)
    nxt[:-1] = fwd
    prv[1:] = fwd
    shape = (-1,) + (1,) * (values.ndim - 1)
    hn = has_next.reshape(shape)
    hp = has_prev.reshape(shape)
    both = hn & hp
    # Central difference over [j - 1, j + 1] is the time-weighted mean of the two one-sided rates.
    dt_prev = np.zeros(t)
    dt_next = np.zeros(t)
    dt_prev[1:] = np.diff(ts)
    dt_next[:-1] = np.diff(ts)
    span = np.where(both.reshape(-1), dt_prev + dt_next, 1.0).reshape(shape)
    central = (prv * dt_prev.reshape(shape) + nxt * dt_next.reshape(shape)) / span
    out = np.where(both, central, np.where(hn, nxt, np.where(hp, prv, 0.0)))
    return out


def windowed_rate(values: np.ndarray, times: np.ndarray, half_window_s: float) -> np.ndarray:
    """(K,) derivative of (K,) ``values`` at (K,) ``times`` [s] over about +-``half_window_s``
    (the median step decides the window in samples; one-sided at the ends): a smoothed rate of
    densely resampled signals."""
    k = values.shape[0]
    if k < 2:
        return np.zeros(k)
    dt = float(np.median(np.diff(times)))
    h = max(1, int(round(half_window_s / dt)))
    idx = np.arange(k)
    lo = np.clip(idx - h, 0, k - 1)
    hi = np.clip(idx + h, 0, k - 1)
    return (values[hi] - values[lo]) / (times[hi] - times[lo])


def fixed_step_rate(p: np.ndarray, valid: np.ndarray, dt: float) -> np.ndarray:
    """(N, S) rate of (N, S) ``p`` sampled every ``dt`` [s] along the last axis, over valid runs
    ((N, S) bool ``valid``): central where both neighbours are valid, one-sided where one is, 0
    elsewhere and where ``p`` is invalid (:func:`finite_difference` for uneven times)."""
    v = np.zeros_like(p)
    if p.shape[1] < 2:
        return v
    prev_ok = np.zeros_like(valid)
    next_ok = np.zeros_like(valid)
    prev_ok[:, 1:] = valid[:, 1:] & valid[:, :-1]
    next_ok[:, :-1] = valid[:, :-1] & valid[:, 1:]
    fwd = np.zeros_like(p)
    bwd = np.zeros_like(p)
    fwd[:, :-1] = (p[:, 1:] - p[:, :-1]) / dt
    bwd[:, 1:] = (p[:, 1:] - p[:, :-1]) / dt
    central = 0.5 * (fwd + bwd)
    v = np.where(prev_ok & next_ok, central, np.where(next_ok, fwd, np.where(prev_ok, bwd, 0.0)))
    return np.where(valid, v, 0.0)
