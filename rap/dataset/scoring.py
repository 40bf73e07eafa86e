"""A sample's scoring context: what rap's PDM scorer needs to score any plan of that sample.

A :class:`ScoringContext` is stored with every generated sample (shard member
``<key>.scoring.npz.zst``, see :mod:`rap.dataset.writer`) so that a trainer can score K proposal
trajectories of the acting agent online with NAVSIM's sub-scores (:meth:`ScoringContext.score`,
:func:`score_batch`). It is built from a scene and a sample plan by
:mod:`rap.augment.scoring_context` (which re-exports everything here); this module holds the
record, its bytes and the scoring, so that the dataset reader (``rap.dataset`` cannot import
``rap.augment``) can decode it.

Frame: everything is in the **acting agent's frame at the sample's step**: origin at the rear
axle of the acting pose (``SamplePlan.viewer_pose``, the perturbed pose of a recovery sample),
x forward, y left, SI units; the frame of the sample's target and of the proposals to score.

Contents (the scorer's :class:`~rap.metrics.pdm_inputs.ScoringScene`, cropped around the acting
pose; :meth:`ScoringContext.to_scoring_scene` rebuilds it):

* ``ego``: the acting agent's :class:`~rap.metrics.pdm_inputs.EgoState` (x = y = heading = 0).
* objects (:attr:`ScoringContext.objects`): every other road user (the logged ego too, for a
  cross-agent sample) as boxes over S steps at 0.1 s from the step (51: NAVSIM v1's TTC looks
  0.9 s past the 4 s rollout).
* the drivable area and the intersections (:class:`PolygonRings`), lane centerline pieces with
  their widths (the lane polygons are the centerlines buffered by half their width, flat caps,
  as in evaluation), the on-route lane ids and the route centerline of the acting agent's logged
  path, per object step the on-route lanes with a red light, the route speed limit at the pose.
* ``target``: the sample's target (T, 3) with its ``sampling``; the ego-progress (EP)
  reference is the target resampled every 0.1 s (:attr:`ScoringContext.reference_poses`). At
  training time EP is measured against the sample's own target, not against the PDM-Closed
  reference planner (none runs); the other scores are NAVSIM's. There is no history (history
  comfort is 1), no human filter and no previous plan (extended comfort is not scored).
* ``radius_m``: the map, objects and route are complete within this distance of the acting
  pose (:mod:`rap.augment.scoring_context` makes it grow with speed so that a 4 s plan stays
  inside; past it a proposal finds no drivable area).

Storage grid: coordinates and box sizes in whole millimetres, headings in 1e-4 rad, object
velocities in mm/s and only at each object's first valid step (the one value the scorer reads:
the "stopped" test of collisions), zeros where an object is invalid. A context holds these
integers (``*_xy``, ``*_heading`` ... fields, int64) and gives floats through its properties,
so :func:`encode` / :func:`decode` round-trip exactly and equal contexts give equal bytes.

Bytes (:func:`encode`): a deterministic ``.npz`` compressed with zstd level
:data:`ZSTD_LEVEL` (content size and checksum in the frame), readable with
``numpy.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(data)))``. Its arrays:

* ``format`` (1,) str: :data:`SCORING_FORMAT` (the version: another one is refused).
* ``floats`` float64: the 12 :class:`~rap.metrics.pdm_inputs.EgoState` fields in order,
  ``radius_m``, ``speed_limit`` (NaN: none), sampling ``num_poses`` and ``interval_s``, then
  the target (T, 3), then the lane widths (L, float32 values).
* ``ids`` int64: 14 counts (objects N, object steps S, lanes L, lane points, route ids,
  centerline points M, red-light ids, red-light steps, then points / rings / polygons of the
  drivable area and of the intersections), object ids (N), lane ids (L), route lane ids,
  red-light lane ids.
* ``stream`` (B, n) uint8: one integer stream as byte planes (B = 1 .. 4, the low byte first) of
  the zigzag-coded second differences of its values (decode: un-zigzag, two cumulative sums),
  in this order: object kinds (N), validity (N, S), sizes (length, width) and first-valid
  velocities (vx, vy) as (2, N) each, x, y, heading (N, S) each, lane sizes (L), lane x, y,
  centerline x, y, heading, red-light sizes, then for the drivable area and the intersections
  ring sizes, rings per polygon, x, y.

:func:`decode` refuses anything else with a :class:`ScoringFormatError` naming what is wrong
(truncated or damaged zstd, not an ``.npz`` of plain arrays, another format, a missing or
misshapen array, a count over the bounds or not matching the data, inconsistent contents) and
never allocates more than :data:`MAX_PAYLOAD_BYTES` for a crafted member.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import zipfile
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import shapely

from rap.metrics.pdm_inputs import EgoState, ObjectKind, ObjectTracks
from rap.trajectory import TrajectorySampling

__all__ = [
    "SCORING_FORMAT",
    "SCORING_FIELD",
    "SCORING_EXTENSION",
    "SCORE_KEYS",
    "POSITION_STEP_M",
    "ANGLE_STEP_RAD",
    "SPEED_STEP_MPS",
    "REFERENCE_DT_S",
    "ZSTD_LEVEL",
    "MAX_PAYLOAD_BYTES",
    "ScoringFormatError",
    "PolygonRings",
    "ScoringContext",
    "encode",
    "decode",
    "score_batch",
]

SCORING_FORMAT = "rap.scoring/1"
SCORING_FIELD = "scoring"  # member <key>.scoring.npz.zst
SCORING_EXTENSION = "npz.zst"
SCORE_KEYS = ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "comfort", "pdms", "epdms")

POSITION_STEP_M = 1e-3  # [m] storage grid of coordinates and box sizes
ANGLE_STEP_RAD = 1e-4  # [rad] storage grid of headings
SPEED_STEP_MPS = 1e-3  # [m/s] storage grid of object velocities
REFERENCE_DT_S = 0.1  # [s] EP reference spacing (the rollout step)
REFERENCE_HORIZON_S = 4.0  # [s]
ZSTD_LEVEL = 2  # fixed: part of the byte-identity contract (3 is 30 % slower for 1 % less)

# Bounds a context (and so a decoded member) respects: a crafted member cannot allocate more.
MAX_PAYLOAD_BYTES = 8 << 20  # decompressed .npz (a real context: 20 to 300 kB; decoding needs < 50x this)
MAX_ARRAYS = 16
MAX_OBJECTS = 1 << 14
MAX_STEPS = 1 << 10
MAX_POINTS = 1 << 22  # per point set
MAX_ELEMENTS = 1 << 20  # lanes, rings, polygons, ids
MAX_TICKS = (2**31 - 1) // 4  # |stored integer|: its zigzag-coded second differences fit uint32

_EGO_FIELDS = tuple(f.name for f in dataclasses.fields(EgoState))
_NUM_SCALARS = len(_EGO_FIELDS) + 4
_COUNTS = (
    "objects", "steps", "lanes", "lane_points", "route_ids", "centerline", "red_ids", "red_steps",
    "drivable_points", "drivable_rings", "drivable_polygons", "intersections_points", "intersections_rings", "intersections_polygons",
)  # fmt: skip
_KNOWN_KIND = np.isin(np.arange(max(ObjectKind) + 1), [int(k) for k in ObjectKind])  # lookup by value


class ScoringFormatError(ValueError):
    """Bytes that are not a scoring context of this format; the message says what is wrong.
    The dataset reader re-raises it as a ``ShardFormatError`` naming shard, sample and member."""


def _fail(owner: object, name: str, message: str) -> ValueError:
    return ValueError(f"{type(owner).__name__}.{name}: {message}")


def ticks(values: np.ndarray, step: float) -> np.ndarray:
    """Float values → int64 multiples of ``step`` (round half to even)."""
    return np.rint(np.asarray(values, dtype=np.float64) / step).astype(np.int64)


def _frozen(arr: np.ndarray) -> np.ndarray:
    """``arr`` read-only and C-contiguous: itself when it already is, else a copy (a caller's
    writeable array is never frozen in place)."""
    if arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, order="C")
        arr.flags.writeable = False
    return arr


def _ints(owner: object, name: str, shape: tuple[int | None, ...], lo: int | None = -MAX_TICKS, hi: int | None = MAX_TICKS) -> np.ndarray:
    """Field ``name`` as a read-only int64 array of ``shape`` with values in [lo, hi] (no
    range check when ``lo`` is None)."""
    arr = getattr(owner, name)
    if not (isinstance(arr, np.ndarray) and arr.dtype == np.int64):
        try:
            arr = np.asarray(arr)
            if arr.dtype.kind not in "iub" and arr.size:
                raise TypeError(f"dtype {arr.dtype}")
            arr = arr.astype(np.int64)
        except (TypeError, ValueError) as e:
            raise _fail(owner, name, f"expected integers ({e})") from None
    if arr.ndim != len(shape) or any(w is not None and g != w for g, w in zip(arr.shape, shape)):
        want = "(" + ", ".join("?" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise _fail(owner, name, f"expected shape {want}, got {arr.shape}")
    if lo is not None and arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise _fail(owner, name, f"values must lie in [{lo}, {hi}]")
    arr = _frozen(arr)
    object.__setattr__(owner, name, arr)
    return arr


def _unique(owner: object, name: str, arr: np.ndarray) -> None:
    s = np.sort(arr)
    if (s[1:] == s[:-1]).any():
        raise _fail(owner, name, "ids must be unique")


def _offsets(sizes: np.ndarray) -> np.ndarray:
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


def _polygon_parts(geom: object) -> list:
    """The non-empty polygons of a shapely geometry (collections flattened)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, shapely.Polygon):
        return [geom]
    if isinstance(geom, (shapely.MultiPolygon, shapely.GeometryCollection)):
        return [p for g in geom.geoms for p in _polygon_parts(g)]
    return []  # points and lines (a clip's degenerate leftovers) have no area


# ----------------------------------------------------------------------------------------------
# Polygons.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PolygonRings:
    """Polygons with holes as flat integer arrays.

    Attributes:
        xy: (2, P) int64 ring vertices in mm; every ring is closed (its last point repeats its
            first) and has >= 4 points.
        ring_sizes: (R,) int64 points per ring.
        polygon_sizes: (Q,) int64 rings per polygon (>= 1), the first one its exterior.
    """

    xy: np.ndarray
    ring_sizes: np.ndarray
    polygon_sizes: np.ndarray

    def __post_init__(self) -> None:
        xy = _ints(self, "xy", (2, None), None)  # range: checked by to_arrays
        rings = _ints(self, "ring_sizes", (None,), 4, MAX_POINTS)
        polys = _ints(self, "polygon_sizes", (None,), 1, MAX_ELEMENTS)
        if xy.shape[1] > MAX_POINTS or rings.shape[0] > MAX_ELEMENTS or polys.shape[0] > MAX_ELEMENTS:
            raise _fail(self, "xy", f"{xy.shape[1]} points, {rings.shape[0]} rings, {polys.shape[0]} polygons (at most {MAX_POINTS}, {MAX_ELEMENTS}, {MAX_ELEMENTS})")
        if int(rings.sum()) != xy.shape[1]:
            raise _fail(self, "ring_sizes", f"add up to {int(rings.sum())}, but there are {xy.shape[1]} points")
        if int(polys.sum()) != rings.shape[0]:
            raise _fail(self, "polygon_sizes", f"add up to {int(polys.sum())}, but there are {rings.shape[0]} rings")
        if rings.size:
            ends = _offsets(rings)
            if not np.array_equal(xy[:, ends[:-1]], xy[:, ends[1:] - 1]):
                raise _fail(self, "xy", "every ring must be closed (last point == first point)")

    @classmethod
    def _unchecked(cls, xy: np.ndarray, ring_sizes: np.ndarray, polygon_sizes: np.ndarray) -> PolygonRings:
        """Rings already in canonical form, without the checks (see ``ScoringContext._unchecked``)."""
        rings = object.__new__(cls)
        object.__setattr__(rings, "xy", xy)
        object.__setattr__(rings, "ring_sizes", ring_sizes)
        object.__setattr__(rings, "polygon_sizes", polygon_sizes)
        return rings

    @classmethod
    def empty(cls) -> PolygonRings:
        z = np.zeros(0, np.int64)
        return cls(np.zeros((2, 0), np.int64), z, z)

    @classmethod
    def from_geometry(cls, geom: object) -> PolygonRings:
        """The polygonal parts of a shapely geometry (its coordinates in metres)."""
        polys = np.array(_polygon_parts(geom), dtype=object)
        if not polys.size:
            return cls.empty()
        rings = shapely.get_rings(polys)  # exterior then holes, polygon after polygon
        return cls(ticks(shapely.get_coordinates(rings).T, POSITION_STEP_M), shapely.get_num_coordinates(rings), shapely.get_num_interior_rings(polys) + 1)

    def __len__(self) -> int:
        return int(self.polygon_sizes.shape[0])

    @property
    def points(self) -> np.ndarray:
        """(P, 2) float64 vertices [m]."""
        return np.ascontiguousarray(self.xy.T) * POSITION_STEP_M

    def to_polygons(self) -> tuple[shapely.Polygon, ...]:
        """The shapely polygons [m]."""
        if not len(self):
            return ()
        geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, self.points, (_offsets(self.ring_sizes), _offsets(self.polygon_sizes)))
        return tuple(geoms)


# ----------------------------------------------------------------------------------------------
# The context.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ScoringContext:
    """Everything :func:`rap.metrics.pdms.score_scene` needs about one sample, in the acting
    agent's frame, on the storage grid (see the module docstring). Fields are checked and made
    read-only; a bad one raises ``ValueError`` naming ``ScoringContext.field``. Two contexts are
    equal when they encode to the same bytes. Integer fields are in mm, 1e-4 rad and mm/s (their
    magnitude at most :data:`MAX_TICKS`, checked by :meth:`to_arrays`); the properties give
    floats in SI units.

    Attributes:
        ego: The acting agent's state (x = y = heading = 0).
        sampling: The sample target's sampling (the default sampling of proposals).
        target: (T, 3) float64 the sample's target x, y, heading (the EP reference).
        radius_m: Everything is complete within this distance of the acting pose [m].
        speed_limit: Route speed limit at the acting pose [m/s], or None.
        object_ids: (N,) int64 track ids.
        object_kinds: (N,) int64 ``ObjectKind`` values.
        object_valid: (N, S) bool, S >= 41 steps at 0.1 s from now.
        object_size: (2, N) length, width [mm].
        object_velocity: (2, N) vx, vy at each object's first valid step [mm/s].
        object_x, object_y: (N, S) box centres [mm] (0 where invalid).
        object_heading: (N, S) [1e-4 rad] (0 where invalid).
        lane_ids: (L,) int64.
        lane_widths: (L,) float32 [m].
        lane_sizes: (L,) points per lane centerline piece (>= 2).
        lane_xy: (2, P) centerline points [mm].
        route_lane_ids: (R,) int64, sorted.
        centerline: (3, M) route centerline x, y [mm] and heading [1e-4 rad], M >= 2.
        red_light_lane_ids: int64, the red-light lane ids of every object step, concatenated.
        red_light_sizes: (S,) ids per object step, or (0,) for no lights.
        drivable: Drivable-area polygons.
        intersections: Intersection polygons.
    """

    ego: EgoState
    sampling: TrajectorySampling
    target: np.ndarray
    radius_m: float
    speed_limit: float | None
    object_ids: np.ndarray
    object_kinds: np.ndarray
    object_valid: np.ndarray
    object_size: np.ndarray
    object_velocity: np.ndarray
    object_x: np.ndarray
    object_y: np.ndarray
    object_heading: np.ndarray
    lane_ids: np.ndarray
    lane_widths: np.ndarray
    lane_sizes: np.ndarray
    lane_xy: np.ndarray
    route_lane_ids: np.ndarray
    centerline: np.ndarray
    red_light_lane_ids: np.ndarray
    red_light_sizes: np.ndarray
    drivable: PolygonRings
    intersections: PolygonRings

    def __post_init__(self) -> None:
        if not isinstance(self.ego, EgoState):
            raise _fail(self, "ego", f"expected EgoState, got {type(self.ego).__name__}")
        if not isinstance(self.sampling, TrajectorySampling):
            raise _fail(self, "sampling", f"expected TrajectorySampling, got {type(self.sampling).__name__}")
        try:
            target = np.array(self.target, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise _fail(self, "target", f"cannot be read as floats ({e})") from None
        if target.shape != (self.sampling.num_poses, 3) or not np.all(np.isfinite(target)):
            raise _fail(self, "target", f"expected finite ({self.sampling.num_poses}, 3) poses, got {target.shape}")
        object.__setattr__(self, "target", _frozen(target))
        radius = float(self.radius_m)
        if not (math.isfinite(radius) and radius > 0):
            raise _fail(self, "radius_m", f"must be > 0, got {self.radius_m}")
        object.__setattr__(self, "radius_m", radius)
        if self.speed_limit is not None:
            limit = float(self.speed_limit)
            if not (math.isfinite(limit) and limit > 0):
                raise _fail(self, "speed_limit", f"must be > 0 m/s or None, got {self.speed_limit}")
            object.__setattr__(self, "speed_limit", limit)
        for name in ("drivable", "intersections"):
            if not isinstance(getattr(self, name), PolygonRings):
                raise _fail(self, name, f"expected PolygonRings, got {type(getattr(self, name)).__name__}")
        # Objects.
        ids = _ints(self, "object_ids", (None,), None)
        n = ids.shape[0]
        if n > MAX_OBJECTS:
            raise _fail(self, "object_ids", f"{n} objects (at most {MAX_OBJECTS})")
        _unique(self, "object_ids", ids)
        kinds = _ints(self, "object_kinds", (n,), 0, _KNOWN_KIND.size - 1)
        if not _KNOWN_KIND[kinds].all():
            raise _fail(self, "object_kinds", "values must be ObjectKind")
        object.__setattr__(self, "object_kinds", kinds)
        valid = np.asarray(self.object_valid)
        if valid.dtype != bool or valid.ndim != 2 or valid.shape[0] != n or not 41 <= valid.shape[1] <= MAX_STEPS:
            raise _fail(self, "object_valid", f"expected a bool ({n}, S) array with 41 <= S <= {MAX_STEPS}, got {valid.dtype} {valid.shape}")
        valid = _frozen(valid)
        object.__setattr__(self, "object_valid", valid)
        s = valid.shape[1]
        _ints(self, "object_size", (2, n), 1)
        _ints(self, "object_velocity", (2, n), None)
        per_step = [_ints(self, name, (n, s), None) for name in ("object_x", "object_y", "object_heading")]
        if not valid.all() and ((per_step[0] | per_step[1] | per_step[2]) & ~valid).any():
            raise _fail(self, "object_x", "object_x, object_y and object_heading must be 0 where the object is invalid")
        # Lanes and route.
        lane_ids = _ints(self, "lane_ids", (None,), None)
        num_lanes = lane_ids.shape[0]
        if num_lanes > MAX_ELEMENTS:
            raise _fail(self, "lane_ids", f"{num_lanes} lanes (at most {MAX_ELEMENTS})")
        _unique(self, "lane_ids", lane_ids)
        widths = np.asarray(self.lane_widths)
        if widths.dtype != np.float32 or widths.shape != (num_lanes,) or not np.all(np.isfinite(widths)) or (widths.size and widths.min() <= 0):
            raise _fail(self, "lane_widths", f"expected ({num_lanes},) float32 widths > 0, got {widths.dtype} {widths.shape}")
        object.__setattr__(self, "lane_widths", _frozen(widths))
        sizes = _ints(self, "lane_sizes", (num_lanes,), 2, MAX_POINTS)
        xy = _ints(self, "lane_xy", (2, None), None)
        if xy.shape[1] > MAX_POINTS or int(sizes.sum()) != xy.shape[1]:
            raise _fail(self, "lane_sizes", f"add up to {int(sizes.sum())}, there are {xy.shape[1]} lane points (at most {MAX_POINTS})")
        route = _ints(self, "route_lane_ids", (None,), None)
        if route.shape[0] > MAX_ELEMENTS or (route.size and not (np.diff(route) > 0).all()):
            raise _fail(self, "route_lane_ids", "must be sorted and unique")
        line = _ints(self, "centerline", (3, None), None)
        if not 2 <= line.shape[1] <= MAX_POINTS:
            raise _fail(self, "centerline", f"need 2 .. {MAX_POINTS} points, got {line.shape[1]}")
        red = _ints(self, "red_light_lane_ids", (None,), None)
        red_sizes = _ints(self, "red_light_sizes", (None,), 0, MAX_ELEMENTS)
        if red_sizes.shape[0] not in (0, s) or int(red_sizes.sum()) != red.shape[0] or red.shape[0] > MAX_POINTS:
            raise _fail(self, "red_light_sizes", f"expected 0 or {s} sizes adding up to {red.shape[0]} ids, got {red_sizes.shape[0]} adding up to {int(red_sizes.sum())}")
        object.__setattr__(self, "_cache", {})

    @classmethod
    def _unchecked(cls, **fields) -> ScoringContext:
        """A context from fields already in canonical form (int64 / bool / float32 read-only
        arrays of consistent shapes, sorted route ids, zeros where objects are invalid), without
        the checks: for :mod:`rap.augment.scoring_context`, which builds them so (its tests
        rebuild its contexts through the checked constructor). Everything else (decoding
        included) goes through the checks."""
        ctx = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(ctx, f.name, fields[f.name])
        object.__setattr__(ctx, "_cache", {})
        return ctx

    # -- identity and pickling ----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoringContext):
            return NotImplemented
        a, b = self.to_arrays(), other.to_arrays()
        return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_cache", None)  # the scoring scene is rebuilt on demand
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_cache", {})

    # -- float views --------------------------------------------------------------------------
    @property
    def num_objects(self) -> int:
        return int(self.object_ids.shape[0])

    @property
    def num_lanes(self) -> int:
        return int(self.lane_ids.shape[0])

    @property
    def objects(self) -> ObjectTracks:
        """The other road users as the scorer's :class:`~rap.metrics.pdm_inputs.ObjectTracks`
        (acting frame; velocities held at their first-valid value)."""
        got = self._cache.get("objects")
        if got is None:
            valid = self.object_valid
            vel = self.object_velocity * SPEED_STEP_MPS
            got = ObjectTracks(
                ids=self.object_ids, kinds=self.object_kinds, valid=valid,
                x=self.object_x * POSITION_STEP_M, y=self.object_y * POSITION_STEP_M, heading=self.object_heading * ANGLE_STEP_RAD,
                vx=np.where(valid, vel[0][:, None], 0.0), vy=np.where(valid, vel[1][:, None], 0.0),
                length=self.object_size[0] * POSITION_STEP_M, width=self.object_size[1] * POSITION_STEP_M,
            )  # fmt: skip
            self._cache["objects"] = got
        return got

    @property
    def lane_points(self) -> np.ndarray:
        """(P, 2) float64 lane centerline points [m] (lane after lane, ``lane_sizes`` each)."""
        return np.ascontiguousarray(self.lane_xy.T) * POSITION_STEP_M

    @property
    def centerline_poses(self) -> np.ndarray:
        """(M, 3) float64 route centerline x, y [m], heading [rad]."""
        return np.ascontiguousarray(self.centerline.T) * np.array([POSITION_STEP_M, POSITION_STEP_M, ANGLE_STEP_RAD])

    @property
    def reference_poses(self) -> np.ndarray:
        """(40, 3) EP reference: the target every 0.1 s from 0.1 s to 4 s (held after its end)."""
        from rap.sim.tracker import interpolate_poses

        steps = int(round(REFERENCE_HORIZON_S / REFERENCE_DT_S))
        return interpolate_poses(self.target[None], self.sampling, np.zeros(3), steps + 1, REFERENCE_DT_S)[0, 1:]

    def lane_polygons(self) -> dict[int, shapely.Polygon]:
        """Lane polygons by id: each centerline piece buffered by half its width (flat caps)."""
        if not self.num_lanes:
            return {}
        lines = shapely.linestrings(self.lane_points, indices=np.repeat(np.arange(self.num_lanes), self.lane_sizes))
        # quad_segs=16: what LineString.buffer uses (rap.eval.navsim_scene.lane_polygons).
        polys = shapely.buffer(lines, 0.5 * self.lane_widths.astype(np.float64), quad_segs=16, cap_style="flat")
        out = {}
        for lane_id, poly in zip(self.lane_ids.tolist(), polys):
            if poly is None or poly.is_empty:
                continue
            if not isinstance(poly, shapely.Polygon):  # never for a buffered line; guarded
                poly = max(shapely.get_parts(poly), key=lambda p: p.area)
            out[int(lane_id)] = poly
        return out

    def red_lights(self) -> tuple[frozenset, ...]:
        """Per object step, the lane ids with a red light (``()`` without lights)."""
        if not self.red_light_sizes.size:
            return ()
        ids = self.red_light_lane_ids.tolist()
        at = _offsets(self.red_light_sizes).tolist()
        return tuple(frozenset(ids[a:b]) for a, b in zip(at[:-1], at[1:]))

    # -- bytes --------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays (see the module docstring)."""
        got = self._cache.get("arrays")
        if got is None:
            got = _to_arrays(self)
            self._cache["arrays"] = got
        return got

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ScoringContext:
        """Inverse of :meth:`to_arrays`; raises :class:`ScoringFormatError` naming the array."""
        return _from_arrays(arrays)

    # -- scoring ------------------------------------------------------------------------------
    def to_scoring_scene(self):
        """The scorer's :class:`~rap.metrics.pdm_inputs.ScoringScene` in the acting frame (built
        once per context and kept; not part of equality or bytes)."""
        scene = self._cache.get("scene")
        if scene is None:
            from rap.metrics.pdm_inputs import ScoringScene

            inter = self.intersections.to_polygons()
            scene = ScoringScene(
                ego=self.ego,
                objects=self.objects,
                drivable_area=self.drivable.to_polygons(),
                lane_polygons=self.lane_polygons(),
                intersections=inter if inter else None,
                route_lane_ids=frozenset(self.route_lane_ids.tolist()),
                centerline=self.centerline_poses,
                red_light_lane_ids=self.red_lights(),
                ego_history=None,
                human_trajectory=None,
                previous_plan=None,
                reference_poses=self.reference_poses,
                speed_limit=self.speed_limit,
            )
            self._cache["scene"] = scene
        return scene

    def prepared(self, config=None):
        """``prepare_scene(self.to_scoring_scene(), config)``, kept for the last config used."""
        from rap.metrics.pdms import PDMScorerConfig, prepare_scene

        cfg = config if config is not None else PDMScorerConfig()
        got = self._cache.get("prepared")
        if got is None or got[0] != cfg:
            got = (cfg, prepare_scene(self.to_scoring_scene(), cfg))
            self._cache["prepared"] = got
        return got[1]

    def score(self, proposals, sampling: TrajectorySampling | None = None, config=None) -> dict[str, np.ndarray]:
        """Scores K proposals of the acting agent with rap's PDM scorer.

        Args:
            proposals: (K, T, 3) x, y, heading in the acting frame [m, m, rad] ((T, 3): K = 1),
                sampled per ``sampling``.
            sampling: Their sampling; default :attr:`sampling` (the sample target's).
            config: ``rap.metrics.pdms.PDMScorerConfig`` (default: NAVSIM's constants).

        Returns:
            :data:`SCORE_KEYS` → (K,) float64: ``nc``, ``dac``, ``ddc``, ``tlc``, ``ep``,
            ``ttc``, ``lk`` (EPDMS v2 sub-scores, NAVSIM's values except EP, which is against
            the sample's target), ``comfort`` (PDMS v1 comfort), ``pdms`` (v1, with the v1 NC,
            DAC, EP, TTC) and ``epdms`` (v2, without extended comfort; history comfort is 1).
        """
        from rap.metrics.pdms import score_scene

        smp = self.sampling if sampling is None else sampling
        return _score_dict(score_scene(self.to_scoring_scene(), np.asarray(proposals, dtype=np.float64), smp, config, self.prepared(config)))


def _score_dict(res) -> dict[str, np.ndarray]:
    got = {
        "nc": res.no_at_fault_collisions, "dac": res.drivable_area_compliance, "ddc": res.driving_direction_compliance,
        "tlc": res.traffic_light_compliance, "ep": res.ego_progress, "ttc": res.time_to_collision_within_bound,
        "lk": res.lane_keeping, "comfort": res.comfort, "pdms": res.pdms, "epdms": res.epdms,
    }  # fmt: skip
    return {k: np.array(v, dtype=np.float64) for k, v in got.items()}


def score_batch(contexts: Sequence[ScoringContext], proposals, sampling: TrajectorySampling | None = None, config=None) -> dict[str, np.ndarray]:
    """Scores a batch: ``proposals[b]`` (K, T, 3) of sample ``b`` against ``contexts[b]``.

    Uses ``rap.metrics.pdms.score_scenes`` (one batched rollout for all samples; results equal
    :meth:`ScoringContext.score` sample by sample) when the scorer has it and the samples share
    one sampling, else scores them one by one.

    Args:
        contexts: B contexts (e.g. ``collate(...)["scoring"]``).
        proposals: (B, K, T, 3) in each sample's acting frame (numpy or anything
            ``numpy.asarray`` reads, e.g. a CPU tensor).
        sampling: The proposals' sampling (default: each context's).
        config: Scorer constants.

    Returns:
        :data:`SCORE_KEYS` → (B, K) float64.

    Raises:
        ValueError: proposals not (B, K, T, 3), or a context that is None (a sample written
            without one) or not a ScoringContext.
    """
    from rap.metrics import pdms

    p = np.asarray(proposals, dtype=np.float64)
    if p.ndim != 4 or p.shape[0] != len(contexts) or p.shape[-1] != 3:
        raise ValueError(f"score_batch: proposals must be (B={len(contexts)}, K, T, 3), got {p.shape}")
    for b, ctx in enumerate(contexts):
        if not isinstance(ctx, ScoringContext):
            raise ValueError(f"score_batch: contexts[{b}] is {type(ctx).__name__}, not a ScoringContext (a sample written without one?)")
    if not len(contexts):
        return {key: np.zeros((0, p.shape[1])) for key in SCORE_KEYS}
    samplings = {ctx.sampling if sampling is None else sampling for ctx in contexts}
    many = getattr(pdms, "score_scenes", None)
    if many is not None and len(samplings) == 1:
        results = many([c.to_scoring_scene() for c in contexts], list(p), samplings.pop(), config, [c.prepared(config) for c in contexts])
        rows = [_score_dict(r) for r in results]
    else:
        rows = [ctx.score(p[b], sampling, config) for b, ctx in enumerate(contexts)]
    return {key: np.stack([r[key] for r in rows]) for key in SCORE_KEYS}


# ----------------------------------------------------------------------------------------------
# Bytes.
# ----------------------------------------------------------------------------------------------


def _stream(ctx: ScoringContext) -> list[np.ndarray]:
    """The integer stream's parts, in stored order."""
    parts = [
        ctx.object_kinds, ctx.object_valid, ctx.object_size, ctx.object_velocity, ctx.object_x, ctx.object_y, ctx.object_heading,
        ctx.lane_sizes, ctx.lane_xy, ctx.centerline, ctx.red_light_sizes,
    ]  # fmt: skip
    for r in (ctx.drivable, ctx.intersections):
        parts += [r.ring_sizes, r.polygon_sizes, r.xy]
    return parts


def _to_arrays(ctx: ScoringContext) -> dict[str, np.ndarray]:
    n, s = ctx.num_objects, ctx.object_valid.shape[1]
    counts = [n, s, ctx.num_lanes, ctx.lane_xy.shape[1], ctx.route_lane_ids.shape[0], ctx.centerline.shape[1], ctx.red_light_lane_ids.shape[0], ctx.red_light_sizes.shape[0]]
    for r in (ctx.drivable, ctx.intersections):
        counts += [r.xy.shape[1], r.ring_sizes.shape[0], r.polygon_sizes.shape[0]]
    stream = np.concatenate([a.ravel() for a in _stream(ctx)], dtype=np.int64)
    if stream.size and max(-int(stream.min()), int(stream.max())) > MAX_TICKS:
        raise ValueError(f"ScoringContext: a coordinate, velocity or size beyond the storage range ({MAX_TICKS} grid steps, {MAX_TICKS * POSITION_STEP_M / 1000:.0f} km)")
    d2 = stream.copy()
    d2[1:] -= stream[:-1]  # first differences ...
    d2[1:] -= d2[:-1].copy()  # ... then second ones
    zigzag = ((d2 << 1) ^ (d2 >> 63)).astype(np.uint32)  # |d2| <= 4 * MAX_TICKS < 2**31
    top = int(zigzag.max()) if zigzag.size else 0
    planes = 1 if top < 2**8 else 2 if top < 2**16 else 3 if top < 2**24 else 4
    e, smp = ctx.ego, ctx.sampling
    scalars = [getattr(e, name) for name in _EGO_FIELDS] + [ctx.radius_m, np.nan if ctx.speed_limit is None else ctx.speed_limit, smp.num_poses, smp.interval_s]
    return {
        "format": np.array([SCORING_FORMAT]),  # 1-d: npz_bytes stores arrays with ndim >= 1
        "floats": np.concatenate([scalars, ctx.target.ravel(), ctx.lane_widths], dtype=np.float64),
        "ids": np.concatenate([counts, ctx.object_ids, ctx.lane_ids, ctx.route_lane_ids, ctx.red_light_lane_ids], dtype=np.int64),
        "stream": np.ascontiguousarray(zigzag.astype("<u4").view(np.uint8).reshape(-1, 4).T[:planes]),
    }


def _get(arrays: Mapping[str, np.ndarray], name: str, dtypes: tuple[str, ...], shape: tuple) -> np.ndarray:
    arr = arrays.get(name)
    if arr is None:
        raise ScoringFormatError(f"no array {name!r} (it has {sorted(arrays)})")
    if arr.dtype not in [np.dtype(d) for d in dtypes] or arr.ndim != len(shape) or any(w is not None and g != w for g, w in zip(arr.shape, shape)):
        want = "(" + ", ".join("?" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ScoringFormatError(f"array {name!r}: expected {' or '.join(str(np.dtype(d)) for d in dtypes)} {want}, got {arr.dtype} {arr.shape}")
    return arr


def _from_arrays(arrays: Mapping[str, np.ndarray]) -> ScoringContext:
    ids = _get(arrays, "ids", ("<i8",), (None,))
    if ids.shape[0] < len(_COUNTS):
        raise ScoringFormatError(f"array 'ids': {ids.shape[0]} values, fewer than its {len(_COUNTS)} counts")
    c = dict(zip(_COUNTS, ids[: len(_COUNTS)].tolist()))
    for name, value in c.items():
        top = MAX_OBJECTS if name == "objects" else MAX_STEPS if name in ("steps", "red_steps") else MAX_POINTS
        if not 0 <= value <= top:
            raise ScoringFormatError(f"array 'ids': count of {name} = {value} is outside [0, {top}]")
    n, s, num_lanes = c["objects"], c["steps"], c["lanes"]
    id_sizes = [len(_COUNTS), n, num_lanes, c["route_ids"], c["red_ids"]]
    if ids.shape[0] != sum(id_sizes):
        raise ScoringFormatError(f"array 'ids': {ids.shape[0]} values, its counts say {sum(id_sizes)}")
    floats = _get(arrays, "floats", ("<f8",), (None,))
    if floats.shape[0] < _NUM_SCALARS:
        raise ScoringFormatError(f"array 'floats': {floats.shape[0]} values, need at least {_NUM_SCALARS}")
    k = len(_EGO_FIELDS)
    radius, limit, num_poses, interval = (float(v) for v in floats[k : k + 4])
    if not (1 <= num_poses <= MAX_POINTS and num_poses == int(num_poses) and interval > 0 and math.isfinite(interval)):
        raise ScoringFormatError(f"array 'floats': sampling ({num_poses}, {interval}) is not (num_poses >= 1, interval_s > 0)")
    t = 3 * int(num_poses)
    if floats.shape[0] != _NUM_SCALARS + t + num_lanes:
        raise ScoringFormatError(f"array 'floats': {floats.shape[0]} values, expected {_NUM_SCALARS + t + num_lanes} ({int(num_poses)}-pose target, {num_lanes} lane widths)")
    sizes = [n, n * s, 2 * n, 2 * n, n * s, n * s, n * s, num_lanes, 2 * c["lane_points"], 3 * c["centerline"], c["red_steps"]]
    for name in ("drivable", "intersections"):
        sizes += [c[f"{name}_rings"], c[f"{name}_polygons"], 2 * c[f"{name}_points"]]
    planes = _get(arrays, "stream", ("|u1",), (None, sum(sizes)))
    if not 1 <= planes.shape[0] <= 4:
        raise ScoringFormatError(f"array 'stream': {planes.shape[0]} byte planes (1 to 4)")
    raw = np.zeros((4, planes.shape[1]), dtype=np.uint8)
    raw[: planes.shape[0]] = planes
    zigzag = np.ascontiguousarray(raw.T).view("<u4").ravel().astype(np.int64)
    d2 = (zigzag >> 1) ^ -(zigzag & 1)
    stream = np.cumsum(np.cumsum(d2))
    if stream.size and int(np.abs(stream).max()) > MAX_TICKS:
        raise ScoringFormatError("array 'stream': values beyond the storage range")
    p = np.split(stream, np.cumsum(sizes)[:-1])
    if p[1].size and int(p[1].max()) > 1 or (p[1].size and int(p[1].min()) < 0):
        raise ScoringFormatError("array 'stream': object validity flags must be 0 or 1")
    id_parts = np.split(ids[len(_COUNTS) :], np.cumsum([n, num_lanes, c["route_ids"]]))
    lane_widths = floats[_NUM_SCALARS + t :].astype(np.float32)
    if not np.array_equal(lane_widths, floats[_NUM_SCALARS + t :]):
        raise ScoringFormatError("array 'floats': lane widths are not float32 values")
    try:
        rings = [PolygonRings(p[13 + 3 * i].reshape(2, -1), p[11 + 3 * i], p[12 + 3 * i]) for i in range(2)]
        return ScoringContext(
            ego=EgoState(*floats[:k].tolist()),
            sampling=TrajectorySampling(int(num_poses), interval),
            target=floats[_NUM_SCALARS : _NUM_SCALARS + t].reshape(-1, 3),
            radius_m=radius,
            speed_limit=None if math.isnan(limit) else limit,
            object_ids=id_parts[0],
            object_kinds=p[0],
            object_valid=p[1].reshape(n, s).astype(bool),
            object_size=p[2].reshape(2, n),
            object_velocity=p[3].reshape(2, n),
            object_x=p[4].reshape(n, s),
            object_y=p[5].reshape(n, s),
            object_heading=p[6].reshape(n, s),
            lane_ids=id_parts[1],
            lane_widths=lane_widths,
            lane_sizes=p[7],
            lane_xy=p[8].reshape(2, -1),
            route_lane_ids=id_parts[2],
            centerline=p[9].reshape(3, -1),
            red_light_lane_ids=id_parts[3],
            red_light_sizes=p[10],
            drivable=rings[0],
            intersections=rings[1],
        )
    except ValueError as err:
        raise ScoringFormatError(f"inconsistent contents: {err}") from None


def _npy(arr: np.ndarray) -> bytes:
    """A ``.npy`` (format 1.0, C order) of a plain array, as ``numpy.save`` lays it out."""
    arr = np.ascontiguousarray(arr)
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (arr.dtype.str, tuple(int(d) for d in arr.shape))
    pad = -(10 + len(header) + 1) % 64
    header = (header + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + arr.tobytes()


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A ``numpy.load``-able ``.npz`` with deterministic bytes: stored (uncompressed) entries in
    name order, fixed 1980-01-01 timestamps (the same layout as ``rap.dataset.codec.npz_bytes``
    writes, built directly: this runs once per generated sample)."""
    local, central = [], []
    offset = 0
    dos_time, dos_date = 0, (0 << 9) | (1 << 5) | 1  # 1980-01-01 00:00:00
    for name in sorted(arrays):
        data = _npy(arrays[name])
        fname = f"{name}.npy".encode("ascii")
        crc = zlib.crc32(data)
        head = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, dos_time, dos_date, crc, len(data), len(data), len(fname), 0)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 20, 20, 0, 0, dos_time, dos_date, crc, len(data), len(data), len(fname), 0, 0, 0, 0, 0o644 << 16, offset) + fname)
        local += [head, fname, data]
        offset += len(head) + len(fname) + len(data)
    cd = b"".join(central)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(cd), offset, 0)
    return b"".join(local) + cd + end


_zstd_cache: dict[int, Any] = {}


def _zstd():
    """(zstandard module, compressor, decompressor) of this process (contexts are not shared
    across forks)."""
    import zstandard

    got = _zstd_cache.get(os.getpid())
    if got is None:
        got = (zstandard, zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True, threads=0), zstandard.ZstdDecompressor())
        _zstd_cache.clear()
        _zstd_cache[os.getpid()] = got
    return got


def encode(ctx: ScoringContext) -> bytes:
    """The member bytes of a context: deterministic (equal contexts, equal bytes)."""
    if not isinstance(ctx, ScoringContext):
        raise TypeError(f"encode: expected ScoringContext, got {type(ctx).__name__}")
    _, cctx, _ = _zstd()
    raw = _npz(ctx.to_arrays())
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"encode: the context's arrays take {len(raw)} bytes, over the {MAX_PAYLOAD_BYTES} a reader accepts")
    return cctx.compress(raw)


def decode(data: bytes, where: str = "") -> ScoringContext:
    """A context from :func:`encode`'s bytes.

    Args:
        data: The member bytes.
        where: Prefix of error messages (e.g. the shard, sample and member).

    Raises:
        ScoringFormatError: not zstd, truncated, a payload over :data:`MAX_PAYLOAD_BYTES`, not
            an ``.npz`` of plain arrays, another format version, or an array that is missing,
            of the wrong type or size, or inconsistent (the message names it).
    """
    at = f"{where}: " if where else ""
    zstandard, _, dctx = _zstd()
    data = bytes(data)
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as err:
        raise ScoringFormatError(f"{at}not a zstd frame ({err}; {len(data)} bytes)") from None
    if size < 0:
        raise ScoringFormatError(f"{at}zstd frame without a content size (not written by rap)")
    if size > MAX_PAYLOAD_BYTES:
        raise ScoringFormatError(f"{at}payload of {size} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes")
    try:
        raw = dctx.decompress(data, max_output_size=MAX_PAYLOAD_BYTES, allow_extra_data=False)
    except zstandard.ZstdError as err:
        raise ScoringFormatError(f"{at}damaged zstd data ({err})") from None
    arrays = _read_npz(raw, at)
    fmt = arrays.get("format")
    if fmt is None or fmt.dtype.kind != "U" or fmt.shape != (1,):
        raise ScoringFormatError(f"{at}no 'format' array: not a scoring context")
    if str(fmt[0]) != SCORING_FORMAT:
        raise ScoringFormatError(f"{at}format {str(fmt[0])!r} is not {SCORING_FORMAT!r} (written by another rap version?)")
    try:
        return _from_arrays(arrays)
    except ScoringFormatError as err:
        raise ScoringFormatError(f"{at}{err}") from None


def _read_npz(raw: bytes, at: str) -> dict[str, np.ndarray]:
    """The arrays of a stored ``.npz``, each checked against its entry's size before it is read."""
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ARRAYS:
                raise ScoringFormatError(f"{at}{len(infos)} arrays (at most {MAX_ARRAYS})")
            for info in infos:
                name = info.filename
                if not name.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED or info.file_size > len(raw):
                    raise ScoringFormatError(f"{at}entry {name!r} is not a stored .npy")
                key = name[: -len(".npy")]
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ScoringFormatError(f"{at}array {key!r}: unsupported .npy version {version}")
                    if dtype.hasobject or fortran or dtype.kind not in "biufU":
                        raise ScoringFormatError(f"{at}array {key!r}: dtype {dtype} is not a plain C-order array")
                    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
                    if nbytes != info.file_size - fh.tell():
                        raise ScoringFormatError(f"{at}array {key!r}: its header says {shape} {dtype} ({nbytes} bytes), the entry holds {info.file_size - fh.tell()}")
                    buf = fh.read(nbytes)
                    if len(buf) != nbytes:
                        raise ScoringFormatError(f"{at}array {key!r} is truncated")
                out[key] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    except ScoringFormatError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # BadZipFile, ValueError, EOFError, struct.error, ...
        raise ScoringFormatError(f"{at}not a valid .npz ({type(err).__name__}: {err})") from None
    return out
