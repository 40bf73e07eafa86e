"""The scene model: a driving log as frozen, validated numpy struct-of-arrays dataclasses.

Every source under ``rap/sources/`` converts its format into these types; nothing outside
``rap/sources/`` knows a source's keys or conventions.

Conventions (docs/DESIGN.md):

* SI units; angles in radians wrapped to [-pi, pi); right-handed frames, x forward, y left, z up.
* Per-step agent arrays are shaped ``(num_agents, num_steps)``; traffic-light arrays
  ``(num_lights, num_steps)``.
* Validity is an explicit boolean mask. There are no sentinel fill values: an invalid entry
  holds an arbitrary finite value (sources write 0) and must be ignored through its mask.
  NaN and inf are rejected everywhere.
* An agent's own frame (the "ego frame" for the ego) has its origin at the rear-axle centre on
  the ground, x along the heading (NAVSIM's convention). ``AgentTracks`` stores 3D box centres
  plus ``rear_axle_offset``, the distance from the box centre back to the rear axle, so the
  frame origin is ``centre - rear_axle_offset * (cos h, sin h)`` at height ``z - height / 2``.

Each dataclass is frozen and checks itself in ``__post_init__``: arrays are copied, coerced to
the documented dtype, checked for shape and finiteness, and made read-only. A failed check
raises ``ValueError`` whose message starts with ``Class.field``. Build modified copies with
``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import functools
from enum import IntEnum
from typing import Callable, Iterator, Sequence

import numpy as np
import shapely
from numpy.typing import ArrayLike

from rap import geometry

__all__ = [
    "AgentType",
    "LaneType",
    "RoadLineType",
    "RoadEdgeType",
    "StopLineType",
    "LightState",
    "LightColor",
    "light_color",
    "Polylines",
    "Lanes",
    "LineSet",
    "PolygonSet",
    "StopSigns",
    "MapElements",
    "TrafficLights",
    "AgentTracks",
    "Scene",
]

PointFn = Callable[[np.ndarray], np.ndarray]
"""Maps (P, 3) float64 points [m] to (P, 3) float64 points [m] (e.g. a rigid frame change)."""

IdTuples = tuple[tuple[int, ...], ...]


# ----------------------------------------------------------------------------------------------
# Enumerations. Values follow the Waymo Open Motion Dataset protos so that WOMD ids pass through
# unchanged: waymo_open_dataset/protos/scenario.proto (Track.ObjectType) and
# waymo_open_dataset/protos/map.proto (LaneCenter.LaneType, RoadLine.RoadLineType,
# RoadEdge.RoadEdgeType, TrafficSignalLaneState.State); see
# https://waymo.com/open/data/motion/ and https://github.com/waymo-research/waymo-open-dataset.
# ----------------------------------------------------------------------------------------------


class AgentType(IntEnum):
    """Agent class; values of WOMD ``Track.ObjectType`` (scenario.proto)."""

    UNSET = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    CYCLIST = 3
    OTHER = 4


class LaneType(IntEnum):
    """Lane class; values of WOMD ``LaneCenter.LaneType`` (map.proto)."""

    UNDEFINED = 0
    FREEWAY = 1
    SURFACE_STREET = 2
    BIKE_LANE = 3


class RoadLineType(IntEnum):
    """Painted line class; values of WOMD ``RoadLine.RoadLineType`` (map.proto)."""

    UNKNOWN = 0
    BROKEN_SINGLE_WHITE = 1
    SOLID_SINGLE_WHITE = 2
    SOLID_DOUBLE_WHITE = 3
    BROKEN_SINGLE_YELLOW = 4
    BROKEN_DOUBLE_YELLOW = 5
    SOLID_SINGLE_YELLOW = 6
    SOLID_DOUBLE_YELLOW = 7
    PASSING_DOUBLE_YELLOW = 8


class RoadEdgeType(IntEnum):
    """Road edge class; values of WOMD ``RoadEdge.RoadEdgeType`` (map.proto)."""

    UNKNOWN = 0
    BOUNDARY = 1
    MEDIAN = 2


class StopLineType(IntEnum):
    """What a stop line belongs to (rap's own enum; WOMD has no stop lines)."""

    UNKNOWN = 0
    TRAFFIC_LIGHT = 1
    STOP_SIGN = 2


class LightState(IntEnum):
    """Traffic signal state of one lane; values of WOMD ``TrafficSignalLaneState.State``."""

    UNKNOWN = 0
    ARROW_STOP = 1
    ARROW_CAUTION = 2
    ARROW_GO = 3
    STOP = 4
    CAUTION = 5
    GO = 6
    FLASHING_STOP = 7
    FLASHING_CAUTION = 8


class LightColor(IntEnum):
    """Colour a light state shows (what a rasterizer draws)."""

    UNKNOWN = 0
    RED = 1
    YELLOW = 2
    GREEN = 3


# Indexed by LightState value.
_STATE_TO_COLOR = np.array(
    [
        LightColor.UNKNOWN,  # UNKNOWN
        LightColor.RED,  # ARROW_STOP
        LightColor.YELLOW,  # ARROW_CAUTION
        LightColor.GREEN,  # ARROW_GO
        LightColor.RED,  # STOP
        LightColor.YELLOW,  # CAUTION
        LightColor.GREEN,  # GO
        LightColor.RED,  # FLASHING_STOP
        LightColor.YELLOW,  # FLASHING_CAUTION
    ],
    dtype=np.int8,
)


def light_color(states: ArrayLike) -> np.ndarray:
    """Maps light states to colours.

    Args:
        states: Integer array of any shape holding ``LightState`` values.

    Returns:
        int8 array of the same shape holding ``LightColor`` values: STOP, ARROW_STOP and
        FLASHING_STOP are RED; CAUTION, ARROW_CAUTION and FLASHING_CAUTION are YELLOW; GO and
        ARROW_GO are GREEN; UNKNOWN is UNKNOWN.

    Raises:
        ValueError: A value is not a ``LightState``.
    """
    s = np.asarray(states)
    if s.size and (not np.issubdtype(s.dtype, np.integer) or s.min() < 0 or s.max() > 8):
        raise ValueError(f"light_color: states must be LightState values 0..8, got {s.dtype}")
    return _STATE_TO_COLOR[s.astype(np.intp)]


# ----------------------------------------------------------------------------------------------
# Validation helpers.
# ----------------------------------------------------------------------------------------------


def _fail(owner: object, name: str, message: str) -> ValueError:
    return ValueError(f"{type(owner).__name__}.{name}: {message}")


def _set(owner: object, name: str, value: object) -> None:
    object.__setattr__(owner, name, value)


def _array(
    owner: object,
    name: str,
    dtype: type,
    shape: Sequence[int | None],
    *,
    finite: bool = True,
) -> np.ndarray:
    """Coerces ``owner.name`` to a read-only ``dtype`` copy of the given shape and stores it.

    ``None`` in ``shape`` matches any size. Float fields must be finite; integer fields may not
    be given non-integral floats.
    """
    value = getattr(owner, name)
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as e:  # Ragged nested lists and the like.
        raise _fail(owner, name, f"cannot be read as an array ({e})") from None
    if raw.dtype == object:
        raise _fail(owner, name, "cannot be read as a numeric array")
    target = np.dtype(dtype)
    if target.kind in "iu" and raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise _fail(owner, name, f"expected integers ({target}), got non-integral floats")
    if target.kind == "b" and raw.dtype.kind not in "bui" and raw.size:
        raise _fail(owner, name, f"expected bool, got {raw.dtype}")
    if target.kind == "b" and raw.dtype.kind in "ui" and raw.size and not np.isin(raw, (0, 1)).all():
        raise _fail(owner, name, "expected bool (0 or 1)")
    arr = np.array(raw, dtype=target, copy=True)
    if arr.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(arr.shape, shape)
    ):
        want_str = "(" + ", ".join("?" if w is None else str(w) for w in shape)
        want_str += ",)" if len(shape) == 1 else ")"
        raise _fail(owner, name, f"expected shape {want_str}, got {arr.shape}")
    if finite and target.kind == "f" and arr.size:
        bad = ~np.isfinite(arr)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise _fail(owner, name, f"non-finite value {arr[where]} at index {where}")
    arr.flags.writeable = False
    _set(owner, name, arr)
    return arr


def _id_tuples(owner: object, name: str, count: int) -> IdTuples:
    value = getattr(owner, name)
    try:
        out = tuple(tuple(int(i) for i in row) for row in value)
    except (TypeError, ValueError) as e:
        raise _fail(owner, name, f"expected a sequence of sequences of ints ({e})") from None
    if len(out) != count:
        raise _fail(owner, name, f"expected {count} entries, got {len(out)}")
    _set(owner, name, out)
    return out


def _enum_values(owner: object, name: str, arr: np.ndarray, enum: type[IntEnum]) -> None:
    allowed = np.array([int(m) for m in enum])
    bad = ~np.isin(arr, allowed)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise _fail(owner, name, f"value {arr[where]} at index {where} is not a {enum.__name__}")


def _unique_ids(owner: object, name: str, ids: np.ndarray) -> None:
    if ids.size != np.unique(ids).size:
        raise _fail(owner, name, "ids must be unique")


def _check_type(owner: object, name: str, cls: type) -> None:
    if not isinstance(getattr(owner, name), cls):
        raise _fail(owner, name, f"expected {cls.__name__}, got {type(getattr(owner, name))}")


def _points3(points: np.ndarray) -> np.ndarray:
    """Pads (n, 2) points to (n, 3) with z = 0."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise ValueError(f"expected (n, 2) or (n, 3) points, got shape {p.shape}")
    if p.shape[1] == 2:
        p = np.concatenate([p, np.zeros((p.shape[0], 1))], axis=1)
    return p


# ----------------------------------------------------------------------------------------------
# Map.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Polylines:
    """A ragged set of 3D polylines (or polygon rings), stored flat.

    Attributes:
        points: (P, 3) float64 vertices of all elements, concatenated [m].
        offsets: (M + 1,) int64 non-decreasing, ``offsets[0] == 0`` and ``offsets[-1] == P``;
            element i is ``points[offsets[i]:offsets[i + 1]]``.
    """

    points: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        points = _array(self, "points", np.float64, (None, 3))
        offsets = _array(self, "offsets", np.int64, (None,))
        if offsets.size < 1 or offsets[0] != 0 or offsets[-1] != points.shape[0]:
            raise _fail(
                self,
                "offsets",
                f"must start at 0 and end at the number of points ({points.shape[0]}), "
                f"got {offsets[:1].tolist()}..{offsets[-1:].tolist()}",
            )
        if np.any(np.diff(offsets) < 0):
            raise _fail(self, "offsets", "must be non-decreasing")

    @classmethod
    def from_list(cls, elements: Sequence[ArrayLike]) -> Polylines:
        """Builds from a list of (n_i, 2) or (n_i, 3) arrays [m]; 2D points get z = 0."""
        arrays = []
        for i, e in enumerate(elements):
            try:
                arrays.append(_points3(np.asarray(e)))
            except ValueError as err:
                raise ValueError(f"Polylines.from_list: element {i}: {err}") from None
        lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        points = np.concatenate(arrays, axis=0) if arrays else np.zeros((0, 3))
        return cls(points=points, offsets=offsets)

    @classmethod
    def empty(cls) -> Polylines:
        """A set with no elements."""
        return cls(points=np.zeros((0, 3)), offsets=np.zeros(1, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        """Element i as a read-only (n_i, 3) float64 view [m]."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"Polylines index {i} out of range for {n} elements")
        i = int(i) % n
        return self.points[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> np.ndarray:
        """(M,) int64 number of points of each element."""
        return np.diff(self.offsets)

    @property
    def element_index(self) -> np.ndarray:
        """(P,) int64 index of the element each point belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    @property
    def arc_lengths(self) -> np.ndarray:
        """(M,) float64 total 3D length of each element [m] (0 for fewer than 2 points)."""
        seg = geometry.polyline_segment_lengths(self.points)  # (P - 1,)
        same = np.diff(self.element_index) == 0  # Segments inside one element.
        seg_element = self.element_index[1:][same]
        return np.bincount(seg_element, weights=seg[same], minlength=len(self)).astype(np.float64)

    def transformed(self, fn: PointFn) -> Polylines:
        """A copy with ``fn`` applied to all points at once ((P, 3) -> (P, 3) [m])."""
        return Polylines(points=fn(self.points), offsets=self.offsets)

    def select(self, indices: ArrayLike) -> Polylines:
        """The elements at ``indices`` (int array or bool mask of length M), in that order."""
        idx = np.arange(len(self))[np.asarray(indices)]
        lengths = self.lengths[idx]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        starts = self.offsets[:-1][idx]
        # Flat point indices: start of each element plus the position inside it.
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        return Polylines(points=self.points[np.repeat(starts, lengths) + within], offsets=offsets)


@dataclasses.dataclass(frozen=True, eq=False)
class Lanes:
    """Lane centerlines with their attributes and topology.

    Attributes:
        ids: (L,) int64 unique lane ids.
        centerlines: Polylines with L elements [m].
        types: (L,) int8 ``LaneType`` values.
        speed_limit: (L,) float32 speed limit [m/s]; meaningful only where ``has_speed_limit``.
        has_speed_limit: (L,) bool, whether the source gave a speed limit.
        width: (L,) float32 lane width [m] (> 0; may be derived by the source).
        interpolating: (L,) bool, lanes that only connect others (WOMD: inside intersections).
        successors: L tuples of lane ids reachable from the end of each lane.
        predecessors: L tuples of lane ids leading into the start of each lane.
        left_neighbors: L tuples of lane ids adjacent on the left.
        right_neighbors: L tuples of lane ids adjacent on the right.
    """

    ids: np.ndarray
    centerlines: Polylines
    types: np.ndarray
    speed_limit: np.ndarray
    has_speed_limit: np.ndarray
    width: np.ndarray
    interpolating: np.ndarray
    successors: IdTuples
    predecessors: IdTuples
    left_neighbors: IdTuples
    right_neighbors: IdTuples

    def __post_init__(self) -> None:
        ids = _array(self, "ids", np.int64, (None,))
        _unique_ids(self, "ids", ids)
        n = ids.shape[0]
        _check_type(self, "centerlines", Polylines)
        if len(self.centerlines) != n:
            raise _fail(self, "centerlines", f"expected {n} elements, got {len(self.centerlines)}")
        _enum_values(self, "types", _array(self, "types", np.int8, (n,)), LaneType)
        speed = _array(self, "speed_limit", np.float32, (n,))
        if np.any(speed < 0):
            raise _fail(self, "speed_limit", "must be >= 0")
        _array(self, "has_speed_limit", np.bool_, (n,))
        width = _array(self, "width", np.float32, (n,))
        if np.any(width <= 0):
            raise _fail(self, "width", "must be > 0")
        _array(self, "interpolating", np.bool_, (n,))
        for name in ("successors", "predecessors", "left_neighbors", "right_neighbors"):
            _id_tuples(self, name, n)

    @classmethod
    def empty(cls) -> Lanes:
        """No lanes."""
        z = np.zeros(0)
        return cls(
            ids=z, centerlines=Polylines.empty(), types=z, speed_limit=z, has_speed_limit=z,
            width=z, interpolating=z, successors=(), predecessors=(), left_neighbors=(),
            right_neighbors=(),
        )  # fmt: skip

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @functools.cached_property
    def _index(self) -> dict[int, int]:
        return {int(i): k for k, i in enumerate(self.ids)}

    def index_of(self, lane_id: int) -> int:
        """Position of ``lane_id`` in the arrays; raises KeyError if absent."""
        return self._index[int(lane_id)]

    def transformed(self, fn: PointFn) -> Lanes:
        """A copy with ``fn`` applied to the centerline points."""
        return dataclasses.replace(self, centerlines=self.centerlines.transformed(fn))


@dataclasses.dataclass(frozen=True, eq=False)
class LineSet:
    """Typed polylines: road lines, road edges or stop lines.

    Attributes:
        ids: (M,) int64 unique ids.
        lines: Polylines with M elements [m].
        types: (M,) int8 class per line (``RoadLineType``, ``RoadEdgeType`` or
            ``StopLineType`` depending on which set this is).
    """

    ids: np.ndarray
    lines: Polylines
    types: np.ndarray

    def __post_init__(self) -> None:
        ids = _array(self, "ids", np.int64, (None,))
        _unique_ids(self, "ids", ids)
        _check_type(self, "lines", Polylines)
        if len(self.lines) != ids.shape[0]:
            raise _fail(self, "lines", f"expected {ids.shape[0]} elements, got {len(self.lines)}")
        _array(self, "types", np.int8, (ids.shape[0],))

    @classmethod
    def empty(cls) -> LineSet:
        """No lines."""
        return cls(ids=np.zeros(0), lines=Polylines.empty(), types=np.zeros(0))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def transformed(self, fn: PointFn) -> LineSet:
        """A copy with ``fn`` applied to all points."""
        return dataclasses.replace(self, lines=self.lines.transformed(fn))


@dataclasses.dataclass(frozen=True, eq=False)
class PolygonSet:
    """Polygons given by one open outer ring each: crosswalks, speed bumps, driveways, areas.

    Attributes:
        ids: (M,) int64 unique ids.
        rings: Polylines with M elements of >= 3 points each [m]; rings are open (the last point
            differs from the first) and may have either orientation.
    """

    ids: np.ndarray
    rings: Polylines

    def __post_init__(self) -> None:
        ids = _array(self, "ids", np.int64, (None,))
        _unique_ids(self, "ids", ids)
        _check_type(self, "rings", Polylines)
        rings = self.rings
        if len(rings) != ids.shape[0]:
            raise _fail(self, "rings", f"expected {ids.shape[0]} elements, got {len(rings)}")
        if len(rings):
            short = np.flatnonzero(rings.lengths < 3)
            if short.size:
                raise _fail(self, "rings", f"ring {short[0]} has fewer than 3 points")
            first = rings.points[rings.offsets[:-1]]
            last = rings.points[rings.offsets[1:] - 1]
            closed = np.flatnonzero(np.all(first == last, axis=1))
            if closed.size:
                raise _fail(self, "rings", f"ring {closed[0]} is closed (last point == first)")

    @classmethod
    def empty(cls) -> PolygonSet:
        """No polygons."""
        return cls(ids=np.zeros(0), rings=Polylines.empty())

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def transformed(self, fn: PointFn) -> PolygonSet:
        """A copy with ``fn`` applied to all points."""
        return dataclasses.replace(self, rings=self.rings.transformed(fn))

    def polygons(self) -> np.ndarray:
        """(M,) object array of valid 2D shapely geometries, one per ring (xy only).

        Self-intersecting rings are repaired with ``shapely.make_valid`` and reduced to their
        polygonal parts, so an element may be a Polygon, a MultiPolygon or (for a degenerate
        ring) an empty Polygon.
        """
        if not len(self):
            return np.empty(0, dtype=object)
        rings = shapely.linearrings(self.rings.points[:, :2], indices=self.rings.element_index)
        polys = shapely.polygons(rings)
        bad = ~shapely.is_valid(polys)
        if bad.any():
            polys[bad] = [_polygonal_part(g) for g in shapely.make_valid(polys[bad])]
        return polys

    def to_shapely(self, *, union: bool = False) -> shapely.MultiPolygon:
        """All rings as one 2D shapely MultiPolygon (xy only) [m].

        Args:
            union: Dissolve overlaps so the result is a valid MultiPolygon. Without it, each
                ring contributes its own part(s) and overlapping parts may make the collection
                invalid as a whole (each part is valid).

        Returns:
            A MultiPolygon (empty when there are no rings).
        """
        parts: list[shapely.Polygon] = []
        if union:
            merged = shapely.union_all(self.polygons()) if len(self) else shapely.Polygon()
            return _as_multipolygon(merged)
        for g in self.polygons():
            parts.extend(_as_multipolygon(g).geoms)
        return shapely.MultiPolygon(parts)


def _polygonal_part(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of a (repaired) geometry: Polygon, MultiPolygon or empty Polygon."""
    if isinstance(geom, (shapely.Polygon, shapely.MultiPolygon)):
        return geom
    if isinstance(geom, shapely.GeometryCollection):
        parts = [g for g in geom.geoms if isinstance(g, (shapely.Polygon, shapely.MultiPolygon))]
        if parts:
            return shapely.union_all(parts)
    return shapely.Polygon()


def _as_multipolygon(geom: shapely.Geometry) -> shapely.MultiPolygon:
    geom = _polygonal_part(geom)
    if isinstance(geom, shapely.MultiPolygon):
        return geom
    return shapely.MultiPolygon([geom] if not geom.is_empty else [])


@dataclasses.dataclass(frozen=True, eq=False)
class StopSigns:
    """Stop signs.

    Attributes:
        ids: (S,) int64 unique ids.
        positions: (S, 3) float64 sign positions [m].
        lane_ids: S tuples of the ids of the lanes each sign controls.
    """

    ids: np.ndarray
    positions: np.ndarray
    lane_ids: IdTuples

    def __post_init__(self) -> None:
        ids = _array(self, "ids", np.int64, (None,))
        _unique_ids(self, "ids", ids)
        _array(self, "positions", np.float64, (ids.shape[0], 3))
        _id_tuples(self, "lane_ids", ids.shape[0])

    @classmethod
    def empty(cls) -> StopSigns:
        """No stop signs."""
        return cls(ids=np.zeros(0), positions=np.zeros((0, 3)), lane_ids=())

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def transformed(self, fn: PointFn) -> StopSigns:
        """A copy with ``fn`` applied to the positions."""
        return dataclasses.replace(self, positions=fn(self.positions))


@dataclasses.dataclass(frozen=True, eq=False)
class MapElements:
    """The static map of a scene. Every member may be empty.

    Attributes:
        lanes: Lane centerlines and topology.
        road_lines: Painted lines (types are ``RoadLineType``).
        road_edges: Curbs and medians (types are ``RoadEdgeType``).
        stop_lines: Stop lines (types are ``StopLineType``; ids may repeat lane ids).
        crosswalks: Crosswalk polygons.
        speed_bumps: Speed bump polygons.
        driveways: Driveway polygons.
        stop_signs: Stop signs.
        drivable_area: Polygons whose union is where a vehicle may drive.
    """

    lanes: Lanes
    road_lines: LineSet
    road_edges: LineSet
    stop_lines: LineSet
    crosswalks: PolygonSet
    speed_bumps: PolygonSet
    driveways: PolygonSet
    stop_signs: StopSigns
    drivable_area: PolygonSet

    def __post_init__(self) -> None:
        _check_type(self, "lanes", Lanes)
        for name in ("road_lines", "road_edges", "stop_lines"):
            _check_type(self, name, LineSet)
        for name in ("crosswalks", "speed_bumps", "driveways", "drivable_area"):
            _check_type(self, name, PolygonSet)
        _check_type(self, "stop_signs", StopSigns)

    @classmethod
    def empty(cls) -> MapElements:
        """A map with nothing in it."""
        return cls(
            lanes=Lanes.empty(),
            road_lines=LineSet.empty(),
            road_edges=LineSet.empty(),
            stop_lines=LineSet.empty(),
            crosswalks=PolygonSet.empty(),
            speed_bumps=PolygonSet.empty(),
            driveways=PolygonSet.empty(),
            stop_signs=StopSigns.empty(),
            drivable_area=PolygonSet.empty(),
        )

    @functools.cached_property
    def drivable_polygon(self) -> shapely.MultiPolygon:
        """Union of ``drivable_area`` as one valid 2D MultiPolygon [m] (computed once)."""
        return self.drivable_area.to_shapely(union=True)

    def transformed(self, fn: PointFn) -> MapElements:
        """A copy with ``fn`` ((P, 3) -> (P, 3) points [m]) applied to every map point."""
        return MapElements(
            lanes=self.lanes.transformed(fn),
            road_lines=self.road_lines.transformed(fn),
            road_edges=self.road_edges.transformed(fn),
            stop_lines=self.stop_lines.transformed(fn),
            crosswalks=self.crosswalks.transformed(fn),
            speed_bumps=self.speed_bumps.transformed(fn),
            driveways=self.driveways.transformed(fn),
            stop_signs=self.stop_signs.transformed(fn),
            drivable_area=self.drivable_area.transformed(fn),
        )


# ----------------------------------------------------------------------------------------------
# Dynamic state.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TrafficLights:
    """Per-lane traffic signal states over time; arrays are (num_lights, num_steps).

    Attributes:
        lane_ids: (K,) int64 unique ids of the controlled lanes.
        stop_points: (K, 3) float64 where traffic on that lane stops [m].
        states: (K, T) int8 ``LightState`` values (UNKNOWN where not ``valid``).
        valid: (K, T) bool, whether the lane's state was observed at that step.
    """

    lane_ids: np.ndarray
    stop_points: np.ndarray
    states: np.ndarray
    valid: np.ndarray

    def __post_init__(self) -> None:
        ids = _array(self, "lane_ids", np.int64, (None,))
        _unique_ids(self, "lane_ids", ids)
        k = ids.shape[0]
        _array(self, "stop_points", np.float64, (k, 3))
        states = _array(self, "states", np.int8, (k, None))
        _enum_values(self, "states", states, LightState)
        _array(self, "valid", np.bool_, (k, states.shape[1]))

    @classmethod
    def empty(cls, num_steps: int) -> TrafficLights:
        """No lights, for a scene of ``num_steps`` steps."""
        return cls(
            lane_ids=np.zeros(0),
            stop_points=np.zeros((0, 3)),
            states=np.zeros((0, num_steps)),
            valid=np.zeros((0, num_steps), dtype=bool),
        )

    def __len__(self) -> int:
        return int(self.lane_ids.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.states.shape[1])

    @property
    def colors(self) -> np.ndarray:
        """(K, T) int8 ``LightColor`` of each state (check ``valid`` before use)."""
        return light_color(self.states)

    def transformed(self, fn: PointFn) -> TrafficLights:
        """A copy with ``fn`` applied to the stop points."""
        return dataclasses.replace(self, stop_points=fn(self.stop_points))


@dataclasses.dataclass(frozen=True, eq=False)
class AgentTracks:
    """Oriented 3D boxes of all agents over time; all per-step arrays are (num_agents, num_steps).

    Attributes:
        ids: (N,) int64 unique agent ids.
        types: (N,) int8 ``AgentType`` values.
        x: (N, T) float64 box centre x [m].
        y: (N, T) float64 box centre y [m].
        z: (N, T) float64 box centre z [m] (the box bottom is at ``z - height / 2``).
        heading: (N, T) float64 box x-axis direction [rad], wrapped to [-pi, pi) on construction.
        vx: (N, T) float64 velocity x, same frame as the positions [m/s].
        vy: (N, T) float64 velocity y [m/s].
        length: (N, T) float32 box extent along the heading [m].
        width: (N, T) float32 box extent across the heading [m].
        height: (N, T) float32 box extent along z [m].
        valid: (N, T) bool, whether the agent was observed at that step. Invalid entries hold
            arbitrary finite values (sources write 0).
        rear_axle_offset: (N,) float32 distance from the box centre back to the rear axle along
            the heading [m] (0 for agents whose frame origin is the box centre).
    """

    ids: np.ndarray
    types: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    heading: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    length: np.ndarray
    width: np.ndarray
    height: np.ndarray
    valid: np.ndarray
    rear_axle_offset: np.ndarray

    def __post_init__(self) -> None:
        ids = _array(self, "ids", np.int64, (None,))
        _unique_ids(self, "ids", ids)
        n = ids.shape[0]
        _enum_values(self, "types", _array(self, "types", np.int8, (n,)), AgentType)
        x = _array(self, "x", np.float64, (n, None))
        shape = (n, x.shape[1])
        for name in ("y", "z", "heading", "vx", "vy"):
            _array(self, name, np.float64, shape)
        heading = geometry.wrap_angle(self.heading)
        heading.flags.writeable = False
        _set(self, "heading", heading)
        valid = _array(self, "valid", np.bool_, shape)
        for name in ("length", "width", "height"):
            size = _array(self, name, np.float32, shape)
            bad = valid & (size < 0)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise _fail(self, name, f"negative value {size[where]} at index {where}")
        if np.any(_array(self, "rear_axle_offset", np.float32, (n,)) < 0):
            raise _fail(self, "rear_axle_offset", "must be >= 0")

    def __len__(self) -> int:
        return self.num_agents

    @property
    def num_agents(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.x.shape[1])

    @property
    def xy(self) -> np.ndarray:
        """(N, T, 2) float64 box centres [m]."""
        return np.stack([self.x, self.y], axis=-1)

    @property
    def xyz(self) -> np.ndarray:
        """(N, T, 3) float64 box centres [m]."""
        return np.stack([self.x, self.y, self.z], axis=-1)

    @property
    def speed(self) -> np.ndarray:
        """(N, T) float64 speed [m/s] (meaningless where not ``valid``)."""
        return np.hypot(self.vx, self.vy)

    def corners_2d(self, step: int | None = None) -> np.ndarray:
        """Bird's-eye-view box corners.

        Args:
            step: A step index, or None for all steps.

        Returns:
            (N, 4, 2) float64 corners [m] at ``step`` ((N, T, 4, 2) for all steps), front-right
            first then counter-clockwise (see ``geometry.box_corners_2d``). Check ``valid``.
        """
        sl = slice(None) if step is None else step
        return geometry.box_corners_2d(
            self.x[:, sl], self.y[:, sl], self.heading[:, sl],
            self.length[:, sl], self.width[:, sl],
        )  # fmt: skip

    def in_frame(self, origin: ArrayLike, heading: float) -> AgentTracks:
        """The tracks expressed in another frame (rotation about z plus translation).

        Args:
            origin: (3,) frame origin in the current frame [m].
            heading: Frame x-axis direction in the current frame [rad].

        Returns:
            New tracks; invalid entries are reset to 0.
        """
        centres = geometry.to_frame(self.xyz, origin, heading)  # (N, T, 3)
        vel = geometry.rotate(np.stack([self.vx, self.vy], axis=-1), -heading)  # (N, T, 2)
        hdg = geometry.heading_to_frame(self.heading, heading)
        v = self.valid
        return dataclasses.replace(
            self,
            x=np.where(v, centres[..., 0], 0.0),
            y=np.where(v, centres[..., 1], 0.0),
            z=np.where(v, centres[..., 2], 0.0),
            heading=np.where(v, hdg, 0.0),
            vx=np.where(v, vel[..., 0], 0.0),
            vy=np.where(v, vel[..., 1], 0.0),
        )


# ----------------------------------------------------------------------------------------------
# Scene.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """One driving log segment: agents over time, the static map and traffic lights.

    Attributes:
        scene_id: Source-given identifier.
        source: Where it came from, e.g. ``"womd:/path/file.tfrecord@3"``.
        timestamps: (T,) float64 strictly increasing times [s].
        current_index: Index of the "now" step (history before, future after).
        tracks: All agents, arrays (num_agents, T).
        ego_index: Row of ``tracks`` that is the ego vehicle.
        map: Static map elements.
        traffic_lights: Signal states, arrays (num_lights, T).
        ego_route: Lane ids of the ego's planned route in driving order, when the source knows
            it (the synthetic world does; logs do not: empty).
    """

    scene_id: str
    source: str
    timestamps: np.ndarray
    current_index: int
    tracks: AgentTracks
    ego_index: int
    map: MapElements
    traffic_lights: TrafficLights
    ego_route: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        try:
            _set(self, "ego_route", tuple(int(i) for i in self.ego_route))
        except (TypeError, ValueError):
            raise _fail(self, "ego_route", f"expected a sequence of lane ids, got {self.ego_route!r}") from None
        for name in ("scene_id", "source"):
            if not isinstance(getattr(self, name), str):
                raise _fail(self, name, f"expected str, got {type(getattr(self, name))}")
        ts = _array(self, "timestamps", np.float64, (None,))
        if ts.shape[0] < 1:
            raise _fail(self, "timestamps", "need at least one step")
        if np.any(np.diff(ts) <= 0):
            k = int(np.flatnonzero(np.diff(ts) <= 0)[0])
            raise _fail(
                self, "timestamps", f"must be strictly increasing ({ts[k]} then {ts[k + 1]})"
            )
        t = ts.shape[0]
        _check_type(self, "tracks", AgentTracks)
        _check_type(self, "map", MapElements)
        _check_type(self, "traffic_lights", TrafficLights)
        if self.tracks.num_steps != t:
            raise _fail(self, "tracks", f"have {self.tracks.num_steps} steps, expected {t}")
        if self.traffic_lights.num_steps != t:
            raise _fail(
                self, "traffic_lights", f"have {self.traffic_lights.num_steps} steps, expected {t}"
            )
        for name, bound in (("current_index", t), ("ego_index", self.tracks.num_agents)):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise _fail(self, name, f"expected int, got {type(value).__name__}")
            if not 0 <= value < bound:
                raise _fail(self, name, f"{value} out of range [0, {bound})")
            _set(self, name, int(value))

    @property
    def num_steps(self) -> int:
        return int(self.timestamps.shape[0])

    def agent_pose(self, agent_index: int, step: int | None = None) -> np.ndarray:
        """World pose of an agent's own frame: rear-axle centre on the ground.

        Args:
            agent_index: Row of ``tracks``.
            step: Step index; defaults to ``current_index``.

        Returns:
            (4,) float64 (x [m], y [m], z_ground [m], heading [rad]) with
            ``z_ground = z - height / 2``.

        Raises:
            ValueError: Index out of range, or the agent is not valid at ``step``.
        """
        step = self.current_index if step is None else step
        tr = self.tracks
        if not 0 <= agent_index < tr.num_agents:
            raise ValueError(f"agent_index {agent_index} out of range [0, {tr.num_agents})")
        if not 0 <= step < tr.num_steps:
            raise ValueError(f"step {step} out of range [0, {tr.num_steps})")
        if not tr.valid[agent_index, step]:
            raise ValueError(
                f"Scene {self.scene_id}: agent {agent_index} (id {tr.ids[agent_index]}) is not "
                f"valid at step {step}"
            )
        h = float(tr.heading[agent_index, step])
        back = float(tr.rear_axle_offset[agent_index])
        return np.array(
            [
                tr.x[agent_index, step] - back * np.cos(h),
                tr.y[agent_index, step] - back * np.sin(h),
                tr.z[agent_index, step] - 0.5 * float(tr.height[agent_index, step]),
                h,
            ]
        )

    def ego_pose(self, step: int | None = None) -> np.ndarray:
        """``agent_pose(ego_index, step)``: (4,) float64 (x, y, z_ground, heading)."""
        return self.agent_pose(self.ego_index, step)

    def in_agent_frame(self, agent_index: int, step: int | None = None) -> Scene:
        """The scene with every coordinate expressed in an agent's frame at one step.

        The frame's origin is the agent's rear-axle centre on the ground at ``step``, with x
        along its heading, y left and z up. Tracks (centres, headings, velocities), all map
        points, traffic-light stop points and stop-sign positions are transformed; ``ego_index``
        is kept.

        Args:
            agent_index: Row of ``tracks``.
            step: Step index; defaults to ``current_index``.

        Returns:
            A new Scene.

        Raises:
            ValueError: The agent is not valid at ``step``.
        """
        pose = self.agent_pose(agent_index, step)
        origin, heading = pose[:3], float(pose[3])

        def fn(points: np.ndarray) -> np.ndarray:
            return geometry.to_frame(points, origin, heading)

        return dataclasses.replace(
            self,
            tracks=self.tracks.in_frame(origin, heading),
            map=self.map.transformed(fn),
            traffic_lights=self.traffic_lights.transformed(fn),
        )

    def in_ego_frame(self, step: int | None = None) -> Scene:
        """``in_agent_frame(ego_index, step)``."""
        return self.in_agent_frame(self.ego_index, step)

    def with_ego(self, agent_index: int) -> Scene:
        """A copy whose ego is ``tracks`` row ``agent_index`` (coordinates unchanged)."""
        return dataclasses.replace(self, ego_index=agent_index)
