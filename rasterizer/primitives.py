"""Primitive tessellation: polylines → ground ribbons, polygons → triangles, boxes → cuboids.

Everything here is vectorized numpy over whole sets of primitives and runs once per scene (static
geometry) or per frame (boxes, which the GPU expands from one unit cube by instancing). Nothing
here knows what a lane or a car is: primitives carry a ``class_id`` (an index into the renderer's
style table) and an ``instance_id`` (0 is reserved for the background).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import mapbox_earcut
import numpy as np

# Cuboid faces, in the order of a style's face colours (row index 1..6 in the style texture;
# row 0 is the class's flat colour).
FACE_NAMES = ("front", "back", "left", "right", "top", "bottom")
_MITER_LIMIT = 3.0


@dataclass(frozen=True)
class TriangleMesh:
    """Non-indexed triangles: every 3 consecutive vertices form one triangle.

    Attributes:
        positions: (V, 3) float32 vertex positions [m], V a multiple of 3.
        class_ids: (V,) uint32 style class per vertex (constant over a triangle).
        instance_ids: (V,) uint32 instance per vertex (constant over a triangle).
    """

    positions: np.ndarray
    class_ids: np.ndarray
    instance_ids: np.ndarray

    def __post_init__(self) -> None:
        pos = np.ascontiguousarray(self.positions, dtype=np.float32).reshape(-1, 3)
        cls = np.ascontiguousarray(self.class_ids, dtype=np.uint32).reshape(-1)
        ins = np.ascontiguousarray(self.instance_ids, dtype=np.uint32).reshape(-1)
        if len(pos) % 3 or len(cls) != len(pos) or len(ins) != len(pos):
            raise ValueError(
                f"TriangleMesh: need V % 3 == 0 vertices with one class and instance id each, "
                f"got {len(pos)} positions, {len(cls)} class ids, {len(ins)} instance ids"
            )
        if not np.all(np.isfinite(pos)):
            raise ValueError("TriangleMesh: positions contain non-finite values")
        object.__setattr__(self, "positions", pos)
        object.__setattr__(self, "class_ids", cls)
        object.__setattr__(self, "instance_ids", ins)

    @property
    def num_triangles(self) -> int:
        return len(self.positions) // 3

    @staticmethod
    def empty() -> "TriangleMesh":
        return TriangleMesh(np.zeros((0, 3), np.float32), np.zeros(0, np.uint32), np.zeros(0, np.uint32))

    def interleaved(self) -> np.ndarray:
        """(V, 5) 4-byte records (x, y, z, class, instance) as the renderer uploads them."""
        out = np.empty((len(self.positions), 5), dtype=np.float32)
        out[:, :3] = self.positions
        out[:, 3] = self.class_ids.view(np.float32)
        out[:, 4] = self.instance_ids.view(np.float32)
        return out


def concat_meshes(meshes: Sequence[TriangleMesh]) -> TriangleMesh:
    """Concatenate meshes in draw order."""
    meshes = [m for m in meshes if len(m.positions)]
    if not meshes:
        return TriangleMesh.empty()
    return TriangleMesh(
        np.concatenate([m.positions for m in meshes]),
        np.concatenate([m.class_ids for m in meshes]),
        np.concatenate([m.instance_ids for m in meshes]),
    )


def _per_element(values, count: int, dtype, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim == 0:
        arr = np.full(count, arr, dtype=dtype)
    if arr.shape != (count,):
        raise ValueError(f"{name} must be a scalar or have shape ({count},), got {arr.shape}")
    return arr


def ribbons(points: np.ndarray, offsets: np.ndarray, widths, class_ids, instance_ids) -> TriangleMesh:
    """Flat ribbons of metric width along 3D polylines (lines painted on the ground).

    Each vertex is pushed sideways in the xy plane by half the width along the mitred normal of
    its two segments (miter length limited to 3x), keeping its z. Repeated consecutive points are
    dropped; polylines with fewer than 2 distinct points produce nothing.

    Args:
        points: (P, 3) polyline vertices [m], all polylines concatenated.
        offsets: (M + 1,) int start index of each polyline in ``points`` (last = P).
        widths: scalar or (M,) ribbon widths [m].
        class_ids: scalar or (M,) style classes.
        instance_ids: scalar or (M,) instance ids.

    Returns:
        TriangleMesh with 2 triangles per segment.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    offsets = np.asarray(offsets, dtype=np.int64)
    num = len(offsets) - 1
    widths = _per_element(widths, num, np.float64, "widths")
    class_ids = _per_element(class_ids, num, np.uint32, "class_ids")
    instance_ids = _per_element(instance_ids, num, np.uint32, "instance_ids")
    if num <= 0 or len(points) < 2:
        return TriangleMesh.empty()
    element = np.repeat(np.arange(num), np.diff(offsets))
    # Drop consecutive duplicates within a polyline.
    same_elem = element[1:] == element[:-1]
    dup = np.zeros(len(points), dtype=bool)
    dup[1:] = same_elem & np.all(np.abs(points[1:, :2] - points[:-1, :2]) < 1e-6, axis=1)
    points, element = points[~dup], element[~dup]

    seg_valid = element[1:] == element[:-1]  # segment k joins point k and k + 1
    seg = points[1:, :2] - points[:-1, :2]
    seg_len = np.linalg.norm(seg, axis=1)
    seg_dir = np.zeros_like(seg)
    np.divide(seg, seg_len[:, None], out=seg_dir, where=(seg_len[:, None] > 0) & seg_valid[:, None])
    seg_normal = np.stack([-seg_dir[:, 1], seg_dir[:, 0]], axis=1)  # left normal

    num_pts = len(points)
    prev_n = np.zeros((num_pts, 2))
    next_n = np.zeros((num_pts, 2))
    prev_n[1:][seg_valid] = seg_normal[seg_valid]
    next_n[:-1][seg_valid] = seg_normal[seg_valid]
    normal = prev_n + next_n
    norm = np.linalg.norm(normal, axis=1)
    good = norm > 1e-9
    normal[good] /= norm[good, None]
    # Where the two segments fold back exactly, fall back to one segment's normal.
    fallback = ~good
    normal[fallback] = np.where(np.any(next_n[fallback] != 0, axis=1, keepdims=True), next_n[fallback], prev_n[fallback])
    ref = np.where(np.any(next_n != 0, axis=1, keepdims=True), next_n, prev_n)
    cos_half = np.clip(np.sum(normal * ref, axis=1), 1.0 / _MITER_LIMIT, 1.0)
    half = widths[element] / 2.0 / cos_half
    left = points.copy()
    right = points.copy()
    left[:, :2] += normal * half[:, None]
    right[:, :2] -= normal * half[:, None]

    k = np.nonzero(seg_valid)[0]
    l0, r0, l1, r1 = left[k], right[k], left[k + 1], right[k + 1]
    tris = np.stack([l0, r0, l1, r0, r1, l1], axis=1).reshape(-1, 3)
    elem = np.repeat(element[k], 6)
    return TriangleMesh(tris, class_ids[elem], instance_ids[elem])


def polygons(rings: Sequence[Sequence[np.ndarray]], class_ids, instance_ids) -> TriangleMesh:
    """Triangulate planar-ish polygons (ear clipping, holes supported).

    Args:
        rings: one entry per polygon: ``[exterior (n, 3), hole_1 (m, 3), ...]`` [m]; rings are
            open or closed (a repeated closing point is ignored). Triangulation uses xy; each
            vertex keeps its own z.
        class_ids: scalar or (num_polygons,) style classes.
        instance_ids: scalar or (num_polygons,) instance ids.

    Returns:
        TriangleMesh of all polygons, in input order.
    """
    num = len(rings)
    class_ids = _per_element(class_ids, num, np.uint32, "class_ids")
    instance_ids = _per_element(instance_ids, num, np.uint32, "instance_ids")
    parts, cls, ins = [], [], []
    for i, polygon in enumerate(rings):
        verts, ends = [], []
        for ring in polygon:
            ring = np.asarray(ring, dtype=np.float64).reshape(-1, 3)
            if len(ring) > 1 and np.allclose(ring[0], ring[-1]):
                ring = ring[:-1]
            if len(ring) < 3:
                if not verts:
                    break  # degenerate exterior: skip the polygon
                continue
            verts.append(ring)
            ends.append(sum(len(v) for v in verts))
        if not verts:
            continue
        v3 = np.concatenate(verts)
        idx = mapbox_earcut.triangulate_float64(v3[:, :2], np.asarray(ends, dtype=np.uint32))
        if len(idx) == 0:
            continue
        parts.append(v3[idx])
        cls.append(np.full(len(idx), class_ids[i], np.uint32))
        ins.append(np.full(len(idx), instance_ids[i], np.uint32))
    if not parts:
        return TriangleMesh.empty()
    return TriangleMesh(np.concatenate(parts), np.concatenate(cls), np.concatenate(ins))


@dataclass(frozen=True)
class Boxes:
    """Oriented 3D boxes (yaw only), drawn as cuboids with one colour per face.

    Attributes:
        centers: (N, 3) float box centres [m].
        sizes: (N, 3) float (length along heading, width, height) [m].
        yaws: (N,) float heading [rad], counter-clockwise from +x.
        class_ids: (N,) uint32 style classes.
        instance_ids: (N,) uint32 instance ids (0 is the background; use >= 1).
    """

    centers: np.ndarray
    sizes: np.ndarray
    yaws: np.ndarray
    class_ids: np.ndarray
    instance_ids: np.ndarray

    def __post_init__(self) -> None:
        centers = np.asarray(self.centers, dtype=np.float64).reshape(-1, 3)
        n = len(centers)
        sizes = np.asarray(self.sizes, dtype=np.float64).reshape(-1, 3)
        yaws = np.asarray(self.yaws, dtype=np.float64).reshape(-1)
        if len(sizes) != n or len(yaws) != n:
            raise ValueError(f"Boxes: centers ({n}), sizes ({len(sizes)}) and yaws ({len(yaws)}) must have equal length")
        for name, arr in (("centers", centers), ("sizes", sizes), ("yaws", yaws)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"Boxes: {name} contain non-finite values")
        if np.any(sizes < 0):
            raise ValueError("Boxes: sizes must be non-negative")
        object.__setattr__(self, "centers", centers)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "yaws", yaws)
        object.__setattr__(self, "class_ids", _per_element(self.class_ids, n, np.uint32, "Boxes.class_ids"))
        object.__setattr__(self, "instance_ids", _per_element(self.instance_ids, n, np.uint32, "Boxes.instance_ids"))

    def __len__(self) -> int:
        return len(self.centers)

    @staticmethod
    def empty() -> "Boxes":
        return Boxes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.uint32), np.zeros(0, np.uint32))

    @staticmethod
    def concat(boxes: Sequence["Boxes"]) -> "Boxes":
        boxes = [b for b in boxes if len(b)]
        if not boxes:
            return Boxes.empty()
        return Boxes(*(np.concatenate([getattr(b, f) for b in boxes]) for f in ("centers", "sizes", "yaws", "class_ids", "instance_ids")))

    def corners(self) -> np.ndarray:
        """(N, 8, 3) corners [m]: bottom face then top face, each front-right first, counter-clockwise."""
        unit = np.array([[0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])
        c, s = np.cos(self.yaws), np.sin(self.yaws)
        local = unit[None] * self.sizes[:, None, :2]  # (N, 4, 2)
        x = local[..., 0] * c[:, None] - local[..., 1] * s[:, None] + self.centers[:, None, 0]
        y = local[..., 0] * s[:, None] + local[..., 1] * c[:, None] + self.centers[:, None, 1]
        z_lo = self.centers[:, 2] - self.sizes[:, 2] / 2
        z_hi = self.centers[:, 2] + self.sizes[:, 2] / 2
        bottom = np.stack([x, y, np.repeat(z_lo[:, None], 4, 1)], -1)
        top = np.stack([x, y, np.repeat(z_hi[:, None], 4, 1)], -1)
        return np.concatenate([bottom, top], axis=1)

    def instance_records(self) -> np.ndarray:
        """(N, 9) 4-byte records (cx, cy, cz, length, width, height, yaw, class, instance)."""
        out = np.empty((len(self), 9), dtype=np.float32)
        out[:, :3] = self.centers
        out[:, 3:6] = self.sizes
        out[:, 6] = self.yaws
        out[:, 7] = self.class_ids.view(np.float32)
        out[:, 8] = self.instance_ids.view(np.float32)
        return out


def unit_cube() -> np.ndarray:
    """(36, 4) float32 records (x, y, z, face) of a unit cube centred at the origin.

    ``face`` is 1..6 in :data:`FACE_NAMES` order, stored as uint32 bits.
    """
    faces = [
        ((0.5, -0.5, -0.5), (0.5, 0.5, -0.5), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5)),  # front +x
        ((-0.5, 0.5, -0.5), (-0.5, -0.5, -0.5), (-0.5, -0.5, 0.5), (-0.5, 0.5, 0.5)),  # back -x
        ((0.5, 0.5, -0.5), (-0.5, 0.5, -0.5), (-0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # left +y
        ((-0.5, -0.5, -0.5), (0.5, -0.5, -0.5), (0.5, -0.5, 0.5), (-0.5, -0.5, 0.5)),  # right -y
        ((0.5, -0.5, 0.5), (0.5, 0.5, 0.5), (-0.5, 0.5, 0.5), (-0.5, -0.5, 0.5)),  # top +z
        ((-0.5, -0.5, -0.5), (-0.5, 0.5, -0.5), (0.5, 0.5, -0.5), (0.5, -0.5, -0.5)),  # bottom -z
    ]
    out = np.empty((36, 4), dtype=np.float32)
    for f, quad in enumerate(faces):
        q = np.asarray(quad, dtype=np.float32)
        out[f * 6 : f * 6 + 6, :3] = q[[0, 1, 2, 0, 2, 3]]
        out[f * 6 : f * 6 + 6, 3] = np.array([f + 1] * 6, dtype=np.uint32).view(np.float32)
    return out
