"""Waymo Open Motion Dataset (WOMD) ``Scenario`` protos to :class:`rap.scene.Scene`.

Reads ``waymo_open_dataset.protos.scenario_pb2.Scenario`` messages (one per TFRecord record,
see waymo_open_dataset/protos/scenario.proto and map.proto) and converts them at this boundary;
every WOMD field name and convention stays in this module.

Field mapping:

* ``timestamps_seconds`` -> ``Scene.timestamps``; ``current_time_index`` ->
  ``Scene.current_index``; ``sdc_track_index`` -> ``Scene.ego_index``; ``scenario_id`` ->
  ``Scene.scene_id``; ``Scene.source`` is ``"womd:<path>@<record>"``.
* ``tracks[i]`` -> row i of ``AgentTracks``: ``id``, ``object_type`` (same values as
  ``AgentType``), and per state ``center_x/y/z``, ``length/width/height``, ``heading``,
  ``velocity_x/y`` and ``valid``. Values at invalid states are replaced by 0.
* Box convention: WOMD boxes are centred, and rap keeps box centres in ``AgentTracks``. An
  agent frame's origin is its rear axle on the ground (NAVSIM); WOMD gives no axle position, so
  ``rear_axle_offset`` (centre to rear axle) is set to ``REAR_AXLE_RATIO`` (0.282, NAVSIM's
  vehicle: rear axle 1.461 m behind the centre of a 5.176 m long box) times the median valid
  length of each vehicle track, and to 0 for pedestrians, cyclists and other agents.
* ``map_features``: ``lane`` -> ``Lanes`` (``polyline``, ``type``, ``speed_limit_mph`` converted to
  m/s with ``has_speed_limit`` = the field is set and > 0, ``entry_lanes`` -> predecessors,
  ``exit_lanes`` -> successors, ``left/right_neighbors[].feature_id`` -> neighbours,
  ``interpolating``); ``road_line`` / ``road_edge`` -> ``LineSet`` (types pass through);
  ``stop_sign`` -> ``StopSigns``; ``crosswalk`` / ``speed_bump`` / ``driveway`` ->
  ``PolygonSet`` (a repeated closing point is dropped). Ids are the feature ids. References to
  features that are not in the scenario are kept as ids and ignored by the derived geometry.
* ``dynamic_map_states[t].lane_states`` -> ``TrafficLights``: one row per lane that has a state at
  any step (in order of first appearance), ``state`` per step (UNKNOWN and ``valid`` False at steps
  where the lane has no state), ``stop_point`` from the lane's first state.

Limits (a valid record of a few MB can describe terabytes: 200 000 timestamps and 200 000 empty
tracks serialize to 2 MB and would need 298 GiB of (agents, steps) arrays). Refused with
:class:`WomdLimitError` (a ``ValueError`` naming the file, the record, the field, the value and
the limit) before anything is allocated:

* more than ``MAX_STEPS`` = 100 000 ``timestamps_seconds`` (WOMD has 91; 2.8 h at 10 Hz);
* dense arrays beyond the record's budget (:func:`record_budget`: max(64 MiB, 1000 x the
  record's size), at most ``MAX_DENSE_BYTES`` = 2 GiB): tracks x steps x 80 bytes (9 float64
  channels, ``valid``, temporaries), and lanes with a light state x steps x 2 bytes. Every
  track's ``states`` count is checked before the track arrays are made, so they never exceed
  what the record holds.

Derived geometry (WOMD maps have no lane widths, stop lines or drivable area):

1. Lane ``width``: for each side with ``left_boundaries`` / ``right_boundaries`` segments, the
   median distance from the segment's centerline points to the referenced road line / road edge
   polyline. Both sides known: the sum of the two medians; one side known: twice its median;
   clamped to [``MIN_LANE_WIDTH``, ``MAX_LANE_WIDTH``] = [2.5, 6] m. Without boundaries:
   ``DEFAULT_LANE_WIDTH`` = 3.7 m.
2. ``stop_lines`` (``StopLineType``; id = id of the controlled lane): a segment of the lane's width,
   perpendicular to the centerline, centred on each traffic-light ``stop_point`` (direction from the
   centerline segment nearest to it), and one at the first point of each lane a stop sign
   controls. A lane with both keeps the traffic-light one.
3. ``drivable_area`` (hole-free pieces, ids 0..; their union restores holes): see
   :func:`derive_drivable_area`. In short: non-bike lanes buffered by half their width with flat
   caps and unioned; plus the faces that road edges enclose together with that union's boundary
   when a face is bounded mostly by road edges, partly by the lanes, and is small or narrow
   (shoulders, parking strips, the kerb corners of intersections); plus driveways; holes under
   ``MAX_HOLE_AREA`` = 30 m2 are filled; outline z from the nearest map vertex. On the shipped
   scenario (data/waymo/womd_scenario_637f20cafde22ff8.tfrecord) all SDC box corners at all
   steps and 98.1 % of the valid box centres of moving vehicles lie inside (the rest belong to a
   vehicle turning into a parking lot, which WOMD does not map as road).
"""

from __future__ import annotations

import dataclasses
import operator
import os
import warnings
from typing import Callable, Iterator

import numpy as np
import shapely
import shapely.ops
from google.protobuf.message import DecodeError
from waymo_open_dataset.protos import map_pb2, scenario_pb2

from rap.scene import (
    AgentTracks,
    AgentType,
    Lanes,
    LaneType,
    LightState,
    LineSet,
    MapElements,
    PolygonSet,
    Polylines,
    RoadEdgeType,
    RoadLineType,
    Scene,
    StopSigns,
    TrafficLights,
)
from rap.sources.derived import (
    DEFAULT_LANE_WIDTH,
    MAX_HOLE_AREA,
    MAX_LANE_WIDTH,
    MIN_LANE_WIDTH,
    MPH_TO_MPS,
    REAR_AXLE_RATIO,
    derive_drivable_area,
    stop_lines,
)
from rap.sources.tfrecord import TFRecordError, iter_records

__all__ = [
    "MAX_STEPS",
    "MAX_DENSE_BYTES",
    "MIN_RECORD_BUDGET",
    "RECORD_BUDGET_FACTOR",
    "WomdLimitError",
    "record_budget",
    "REAR_AXLE_RATIO",
    "DEFAULT_LANE_WIDTH",
    "MIN_LANE_WIDTH",
    "MAX_LANE_WIDTH",
    "MAX_HOLE_AREA",
    "MPH_TO_MPS",
    "scene_from_womd",
    "iter_womd",
    "load_womd",
    "derive_drivable_area",
]

# Limits (see "Limits" in the module docs).
MAX_STEPS = 100_000  # steps of one scenario (2.8 h at 10 Hz; WOMD scenarios have 91)
MAX_DENSE_BYTES = 2 * 2**30  # [bytes] dense arrays of any record, however large
MIN_RECORD_BUDGET = 64 * 2**20  # [bytes] dense arrays allowed to any record, however small
RECORD_BUDGET_FACTOR = 1000  # dense-array bytes allowed per byte of the record
_TRACK_CELL_BYTES = 80  # [bytes] per (agent, step): 9 float64 channels, valid, temporaries
_LIGHT_CELL_BYTES = 2  # [bytes] per (lane, step): state and valid

_STATE_FIELDS = (
    "center_x", "center_y", "center_z", "length", "width", "height", "heading",
    "velocity_x", "velocity_y",
)  # fmt: skip


class WomdLimitError(ValueError):
    """A record implies arrays beyond a limit (see "Limits" in the module docs); refused before
    they are allocated.

    Attributes:
        path: The file.
        record: The record's index in it.
        field: The absurd field (``timestamps_seconds``, ``tracks``, ``dynamic_map_states``).
        value: What the record implies (steps, or bytes), as the message says.
        limit: The limit it exceeds, in the same unit.
    """

    def __init__(self, message: str, *, path: str, record: int, field: str, value: int, limit: int):
        super().__init__(message)
        self.path = path
        self.record = record
        self.field = field
        self.value = value
        self.limit = limit

    def __reduce__(self):  # Keep the attributes when pickled across processes.
        args = (str(self), self.path, self.record, self.field, self.value, self.limit)
        return (_limit_error, args)


def _limit_error(message: str, path: str, record: int, field: str, value: int, limit: int):
    return WomdLimitError(message, path=path, record=record, field=field, value=value, limit=limit)


def record_budget(record_size: int) -> int:
    """Bytes of dense arrays a record of ``record_size`` bytes may imply: ``max(MIN_RECORD_BUDGET,
    RECORD_BUDGET_FACTOR * record_size)``, at most ``MAX_DENSE_BYTES``."""
    return min(MAX_DENSE_BYTES, max(MIN_RECORD_BUDGET, RECORD_BUDGET_FACTOR * max(0, record_size)))


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


class _Where:
    """Formats error messages as '<path> record <n>: <field> <problem>'."""

    def __init__(self, path: str, record: int) -> None:
        self.path = path
        self.record = record
        self.prefix = f"{path} record {record}"

    def error(self, field: str, problem: str) -> ValueError:
        return ValueError(f"{self.prefix}: {field} {problem}")

    def limit(self, field: str, problem: str, value: int, limit: int) -> WomdLimitError:
        return WomdLimitError(
            f"{self.prefix}: {field} {problem}", path=self.path, record=self.record, field=field,
            value=value, limit=limit,
        )  # fmt: skip

    def check_dense(self, field: str, what: str, rows: int, steps: int, cell: int, budget: int):
        """Refuses (rows, steps) arrays of ``cell`` bytes per element beyond ``budget``."""
        need = rows * steps * cell
        if need > budget:
            raise self.limit(
                field,
                f"{rows} {what} x {steps} steps need {_gib(need)} of dense arrays, more than the "
                f"limit of {_gib(budget)} for this record (max({_gib(MIN_RECORD_BUDGET)}, "
                f"{RECORD_BUDGET_FACTOR} x its size), at most {_gib(MAX_DENSE_BYTES)})",
                need,
                budget,
            )


def scene_from_womd(
    scenario: scenario_pb2.Scenario | bytes,
    *,
    path: str | os.PathLike = "<memory>",
    record: int = 0,
) -> Scene:
    """Converts one WOMD Scenario into a Scene (world frame, box centres; see module docs).

    Args:
        scenario: A ``Scenario`` message, or its serialized bytes.
        path: File the scenario came from (for ``Scene.source`` and error messages).
        record: Index of the scenario's record in that file (same use).

    Returns:
        The validated Scene.

    Raises:
        WomdLimitError: More than ``MAX_STEPS`` timestamps, or dense (agents, steps) or (lanes,
            steps) arrays beyond :func:`record_budget` of the record's size; checked before they
            are allocated.
        ValueError: Anything that cannot be converted; the message names the file, the record
            index and the field, e.g. ``"a.tfrecord record 0: tracks[12].states[40].heading is
            NaN"``.
    """
    path = os.fspath(path)
    where = _Where(path, record)
    if isinstance(scenario, (bytes, bytearray, memoryview)):
        size = len(scenario)
        try:
            scenario = scenario_pb2.Scenario.FromString(bytes(scenario))
        except DecodeError as e:
            raise where.error("payload", f"is not a Scenario proto ({e})") from None
    elif isinstance(scenario, scenario_pb2.Scenario):
        size = scenario.ByteSize()
    else:
        raise TypeError(f"expected a Scenario proto or bytes, got {type(scenario).__name__}")
    budget = record_budget(size)

    num_steps = len(scenario.timestamps_seconds)
    if num_steps > MAX_STEPS:
        raise where.limit("timestamps_seconds",
                          f"has {num_steps} steps, more than the limit of {MAX_STEPS}",
                          num_steps, MAX_STEPS)  # fmt: skip
    num_tracks = len(scenario.tracks)
    where.check_dense("tracks", "tracks", num_tracks, num_steps, _TRACK_CELL_BYTES, budget)
    timestamps = np.asarray(scenario.timestamps_seconds, dtype=np.float64)
    if num_steps == 0:
        raise where.error("timestamps_seconds", "is empty")
    if not np.all(np.isfinite(timestamps)):
        raise where.error("timestamps_seconds", "has non-finite values")
    if np.any(np.diff(timestamps) <= 0):
        k = int(np.flatnonzero(np.diff(timestamps) <= 0)[0])
        raise where.error(f"timestamps_seconds[{k + 1}]", "is not after the previous timestamp")
    if not 0 <= scenario.current_time_index < num_steps:
        raise where.error(
            "current_time_index", f"{scenario.current_time_index} out of range [0, {num_steps})"
        )
    if not 0 <= scenario.sdc_track_index < len(scenario.tracks):
        raise where.error(
            "sdc_track_index", f"{scenario.sdc_track_index} out of range [0, {len(scenario.tracks)})"
        )

    tracks = _tracks(scenario, num_steps, where)
    map_elements = _map(scenario, where)
    lights = _traffic_lights(scenario, num_steps, where, budget)
    map_elements = dataclasses.replace(
        map_elements, stop_lines=stop_lines(map_elements.lanes, map_elements.stop_signs, lights)
    )
    try:
        return Scene(
            scene_id=str(scenario.scenario_id),
            source=f"womd:{path}@{record}",
            timestamps=timestamps,
            current_index=int(scenario.current_time_index),
            tracks=tracks,
            ego_index=int(scenario.sdc_track_index),
            map=map_elements,
            traffic_lights=lights,
        )
    except ValueError as e:
        raise ValueError(f"{where.prefix}: {e}") from e


def iter_womd(
    path: str | os.PathLike,
    *,
    skip_corrupt: bool = False,
    on_skip: Callable[[ValueError], None] | None = None,
) -> Iterator[Scene]:
    """Yields the Scenes of a WOMD scenario TFRecord file.

    Args:
        path: The TFRecord file (one serialized ``Scenario`` per record).
        skip_corrupt: Report and skip bad records (framing/CRC errors as ``TFRecordError``,
            conversion errors as ``ValueError``) instead of raising. See
            :func:`rap.sources.tfrecord.iter_records` for when reading has to stop.
        on_skip: Receives each skipped record's error; without it a ``RuntimeWarning`` is
            issued, so nothing is dropped silently.

    Yields:
        One Scene per good record; ``Scene.source`` carries the record's index in the file
        (skipped records count).

    Raises:
        TFRecordError, ValueError: A bad record, when not ``skip_corrupt``.
    """

    def report(err: ValueError) -> None:
        if on_skip is not None:
            on_skip(err)
        else:
            warnings.warn(f"skipped WOMD record: {err}", RuntimeWarning, stacklevel=3)

    for record, payload in _indexed_payloads(path, skip_corrupt, report):
        try:
            scene = scene_from_womd(payload, path=path, record=record)
        except ValueError as err:
            if not skip_corrupt:
                raise
            report(err)
        else:
            yield scene


def load_womd(path: str | os.PathLike, record: int = 0) -> Scene:
    """The Scene of record ``record`` of a WOMD scenario TFRecord file.

    Records before it whose payload CRC is bad are passed over (their framing is intact).

    Raises:
        TFRecordError: That record is corrupt, or the framing breaks before it.
        IndexError: The file has no such record.
        ValueError: The record cannot be converted.
    """
    errors: list[TFRecordError] = []
    for i, payload in _indexed_payloads(path, True, errors.append):
        if i == record:
            return scene_from_womd(payload, path=path, record=record)
        if i > record:
            break
    for err in errors:
        if err.record == record:
            raise err
    if errors and errors[-1].record < record:  # Reading stopped early: framing lost.
        raise errors[-1]
    raise IndexError(f"{os.fspath(path)}: no record {record}")


def _indexed_payloads(
    path: str | os.PathLike, skip_corrupt: bool, report: Callable[[TFRecordError], None]
) -> Iterator[tuple[int, bytes]]:
    """(record index in the file, payload) pairs; indices count skipped records too."""
    skipped: list[TFRecordError] = []

    def on_tf_skip(err: TFRecordError) -> None:
        skipped.append(err)
        report(err)

    record = 0
    for payload in iter_records(path, skip_corrupt=skip_corrupt, on_skip=on_tf_skip):
        record += len(skipped)  # CRC-bad records skipped just before this one.
        skipped.clear()
        yield record, payload
        record += 1


# ----------------------------------------------------------------------------------------------
# Tracks.
# ----------------------------------------------------------------------------------------------


def _tracks(scenario: scenario_pb2.Scenario, num_steps: int, where: _Where) -> AgentTracks:
    n = len(scenario.tracks)
    for i, track in enumerate(scenario.tracks):  # Before allocating: each state is in the record.
        if len(track.states) != num_steps:
            raise where.error(
                f"tracks[{i}].states", f"has {len(track.states)} entries, expected {num_steps}"
            )
    values = {name: np.zeros((n, num_steps), dtype=np.float64) for name in _STATE_FIELDS}
    valid = np.zeros((n, num_steps), dtype=bool)
    ids = np.zeros(n, dtype=np.int64)
    types = np.zeros(n, dtype=np.int8)
    allowed_types = {int(t) for t in AgentType}
    get_state = operator.attrgetter(*_STATE_FIELDS)  # one C call per state for every field
    for i, track in enumerate(scenario.tracks):
        states = track.states
        if track.object_type not in allowed_types:
            raise where.error(f"tracks[{i}].object_type", f"{track.object_type} is unknown")
        ids[i] = track.id
        types[i] = track.object_type
        valid[i] = [s.valid for s in states]
        rows = np.array([get_state(s) for s in states], dtype=np.float64).reshape(-1, len(_STATE_FIELDS))  # (T, fields)
        for k, name in enumerate(_STATE_FIELDS):
            values[name][i] = rows[:, k]
    for name in _STATE_FIELDS:  # WOMD fills invalid states with -1 or stale values.
        values[name][~valid] = 0.0
    for name in _STATE_FIELDS:
        bad = ~np.isfinite(values[name])
        if bad.any():
            i, t = (int(k) for k in np.argwhere(bad)[0])
            what = "NaN" if np.isnan(values[name][i, t]) else "not finite"
            raise where.error(f"tracks[{i}].states[{t}].{name}", f"is {what}")
    for name in ("length", "width", "height"):
        bad = valid & (values[name] < 0)
        if bad.any():
            i, t = (int(k) for k in np.argwhere(bad)[0])
            raise where.error(f"tracks[{i}].states[{t}].{name}", f"is negative ({values[name][i, t]})")
    if ids.size != np.unique(ids).size:
        raise where.error("tracks[].id", "has duplicates")

    # Rear axle offset: a fraction of the median valid length, vehicles only.
    lengths = np.where(valid, values["length"], np.nan)
    has_valid = valid.any(axis=1)
    median_length = np.zeros(n)
    if has_valid.any():
        median_length[has_valid] = np.nanmedian(lengths[has_valid], axis=1)
    rear_axle_offset = np.where(types == AgentType.VEHICLE, REAR_AXLE_RATIO * median_length, 0.0)

    return AgentTracks(
        ids=ids,
        types=types,
        x=values["center_x"],
        y=values["center_y"],
        z=values["center_z"],
        heading=values["heading"],
        vx=values["velocity_x"],
        vy=values["velocity_y"],
        length=values["length"],
        width=values["width"],
        height=values["height"],
        valid=valid,
        rear_axle_offset=rear_axle_offset,
    )


# ----------------------------------------------------------------------------------------------
# Map.
# ----------------------------------------------------------------------------------------------


_XYZ = operator.attrgetter("x", "y", "z")


def _points(
    map_points, field: str, where: _Where, *, min_points: int = 1
) -> np.ndarray:  # map_points: repeated map_pb2.MapPoint
    """(n, 3) float64 array of MapPoints, checked finite and long enough."""
    pts = np.array(list(map(_XYZ, map_points)), dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] < min_points:
        raise where.error(field, f"has {pts.shape[0]} points, need at least {min_points}")
    bad = ~np.isfinite(pts)
    if bad.any():
        k, c = (int(v) for v in np.argwhere(bad)[0])
        raise where.error(f"{field}[{k}].{'xyz'[c]}", "is not finite")
    return pts


def _point(map_point, field: str, where: _Where) -> np.ndarray:
    """(3,) float64 array of one MapPoint, checked finite."""
    pt = np.array([map_point.x, map_point.y, map_point.z], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(pt))
    if bad.size:
        raise where.error(f"{field}.{'xyz'[bad[0]]}", "is not finite")
    return pt


def _map(scenario: scenario_pb2.Scenario, where: _Where) -> MapElements:
    lanes: list[tuple[int, map_pb2.LaneCenter, str]] = []
    lines: dict[str, list] = {"road_line": [], "road_edge": []}
    polygons: dict[str, list] = {"crosswalk": [], "speed_bump": [], "driveway": []}
    signs: list = []
    seen_ids: set[int] = set()
    boundaries: dict[int, np.ndarray] = {}  # Road line / edge id -> (n, 3) points.

    for k, feature in enumerate(scenario.map_features):
        kind = feature.WhichOneof("feature_data")
        field = f"map_features[{k}] (id {feature.id}).{kind}"
        if feature.id in seen_ids:
            raise where.error(f"map_features[{k}].id", f"{feature.id} is a duplicate")
        seen_ids.add(feature.id)
        if kind == "lane":
            lanes.append((feature.id, feature.lane, field))
        elif kind in lines:
            msg = getattr(feature, kind)
            pts = _points(msg.polyline, f"{field}.polyline", where)
            enum = RoadLineType if kind == "road_line" else RoadEdgeType
            if msg.type not in {int(v) for v in enum}:
                raise where.error(f"{field}.type", f"{msg.type} is unknown")
            lines[kind].append((feature.id, pts, msg.type))
            boundaries[feature.id] = pts
        elif kind in polygons:
            pts = _points(getattr(feature, kind).polygon, f"{field}.polygon", where)
            if pts.shape[0] > 1 and np.array_equal(pts[0], pts[-1]):
                pts = pts[:-1]  # rap rings are open.
            if pts.shape[0] < 3:
                raise where.error(f"{field}.polygon", f"has {pts.shape[0]} distinct corners, need 3")
            polygons[kind].append((feature.id, pts))
        elif kind == "stop_sign":
            pos = _point(feature.stop_sign.position, f"{field}.position", where)
            signs.append((feature.id, pos, tuple(feature.stop_sign.lane)))
        elif kind is None:
            raise where.error(f"map_features[{k}] (id {feature.id})", "has no feature data")
        # Unknown future kinds are ignored on purpose (forward compatibility).

    lane_set = _lanes(lanes, boundaries, where)
    road_lines, road_edges = (
        LineSet(
            ids=np.array([i for i, _, _ in lines[kind]], dtype=np.int64),
            lines=Polylines.from_list([p for _, p, _ in lines[kind]]),
            types=np.array([t for _, _, t in lines[kind]], dtype=np.int8),
        )
        for kind in ("road_line", "road_edge")
    )
    crosswalks, speed_bumps, driveways = (
        PolygonSet(
            ids=np.array([i for i, _ in polygons[kind]], dtype=np.int64),
            rings=Polylines.from_list([p for _, p in polygons[kind]]),
        )
        for kind in ("crosswalk", "speed_bump", "driveway")
    )
    stop_signs = StopSigns(
        ids=np.array([i for i, _, _ in signs], dtype=np.int64),
        positions=np.array([p for _, p, _ in signs], dtype=np.float64).reshape(-1, 3),
        lane_ids=tuple(lane_ids for _, _, lane_ids in signs),
    )
    return MapElements(
        lanes=lane_set,
        road_lines=road_lines,
        road_edges=road_edges,
        stop_lines=LineSet.empty(),
        crosswalks=crosswalks,
        speed_bumps=speed_bumps,
        driveways=driveways,
        stop_signs=stop_signs,
        drivable_area=derive_drivable_area(lane_set, road_edges, driveways),
    )


def _lanes(
    lanes: list[tuple[int, map_pb2.LaneCenter, str]],
    boundaries: dict[int, np.ndarray],
    where: _Where,
) -> Lanes:
    n = len(lanes)
    centerlines = []
    types = np.zeros(n, dtype=np.int8)
    speed = np.zeros(n, dtype=np.float32)
    has_speed = np.zeros(n, dtype=bool)
    width = np.full(n, DEFAULT_LANE_WIDTH, dtype=np.float32)
    interpolating = np.zeros(n, dtype=bool)
    succ, pred, left, right = [], [], [], []
    allowed_types = {int(t) for t in LaneType}
    boundary_geoms: dict[int, shapely.Geometry] = {}
    for k, (_, lane, field) in enumerate(lanes):
        pts = _points(lane.polyline, f"{field}.polyline", where)
        centerlines.append(pts)
        if lane.type not in allowed_types:
            raise where.error(f"{field}.type", f"{lane.type} is unknown")
        types[k] = lane.type
        if lane.HasField("speed_limit_mph"):
            mph = lane.speed_limit_mph
            if not np.isfinite(mph) or mph < 0:
                raise where.error(f"{field}.speed_limit_mph", f"is invalid ({mph})")
            speed[k] = mph * MPH_TO_MPS
            has_speed[k] = mph > 0
        interpolating[k] = lane.interpolating
        succ.append(tuple(lane.exit_lanes))
        pred.append(tuple(lane.entry_lanes))
        left.append(tuple(dict.fromkeys(nb.feature_id for nb in lane.left_neighbors)))
        right.append(tuple(dict.fromkeys(nb.feature_id for nb in lane.right_neighbors)))
        w = _lane_width(pts, lane, boundaries, boundary_geoms)
        if w is not None:
            width[k] = w
    return Lanes(
        ids=np.array([i for i, _, _ in lanes], dtype=np.int64),
        centerlines=Polylines.from_list(centerlines),
        types=types,
        speed_limit=speed,
        has_speed_limit=has_speed,
        width=width,
        interpolating=interpolating,
        successors=tuple(succ),
        predecessors=tuple(pred),
        left_neighbors=tuple(left),
        right_neighbors=tuple(right),
    )


def _lane_width(
    centerline: np.ndarray, lane: map_pb2.LaneCenter, boundaries: dict[int, np.ndarray], geoms: dict[int, shapely.Geometry] | None = None
) -> float | None:
    """Lane width from its boundary segments [m], or None when none can be used. ``geoms``
    caches each boundary's shapely geometry across lanes (many lanes share boundaries)."""
    geoms = {} if geoms is None else geoms
    medians = []
    for side in (lane.left_boundaries, lane.right_boundaries):
        points, targets = [], []
        for seg in side:
            line = boundaries.get(seg.boundary_feature_id)
            if line is None:
                continue
            lo = max(0, seg.lane_start_index)
            hi = min(centerline.shape[0] - 1, seg.lane_end_index)
            if hi < lo:
                continue
            target = geoms.get(seg.boundary_feature_id)
            if target is None:
                target = shapely.LineString(line[:, :2]) if line.shape[0] >= 2 else shapely.Point(line[0, :2])
                geoms[seg.boundary_feature_id] = target
            points.append(centerline[lo : hi + 1, :2])
            targets.extend([target] * (hi + 1 - lo))
        if points:  # one vectorised distance call per side (the same GEOS distance per point)
            dists = shapely.distance(shapely.points(np.concatenate(points)), np.array(targets, dtype=object))
            medians.append(float(np.median(dists)))
    if not medians:
        return None
    width = sum(medians) if len(medians) == 2 else 2.0 * medians[0]
    return float(np.clip(width, MIN_LANE_WIDTH, MAX_LANE_WIDTH))


def _traffic_lights(
    scenario: scenario_pb2.Scenario, num_steps: int, where: _Where, budget: int
) -> TrafficLights:
    dynamic = scenario.dynamic_map_states
    if len(dynamic) == 0:
        return TrafficLights.empty(num_steps)
    if len(dynamic) != num_steps:
        raise where.error(
            "dynamic_map_states", f"has {len(dynamic)} steps, expected {num_steps}"
        )
    rows: dict[int, int] = {}
    stop_points: list[np.ndarray] = []
    entries: list[tuple[int, int, int]] = []  # (row, step, state)
    allowed = {int(s) for s in LightState}
    for t, step_state in enumerate(dynamic):
        for j, ls in enumerate(step_state.lane_states):
            field = f"dynamic_map_states[{t}].lane_states[{j}]"
            if ls.state not in allowed:
                raise where.error(f"{field}.state", f"{ls.state} is unknown")
            if ls.lane not in rows:
                rows[ls.lane] = len(rows)
                stop_points.append(_point(ls.stop_point, f"{field}.stop_point", where))
            entries.append((rows[ls.lane], t, ls.state))
    where.check_dense(
        "dynamic_map_states", "lanes", len(rows), num_steps, _LIGHT_CELL_BYTES, budget
    )
    states = np.zeros((len(rows), num_steps), dtype=np.int8)
    valid = np.zeros((len(rows), num_steps), dtype=bool)
    if entries:
        r, t, s = (np.array(v) for v in zip(*entries))
        states[r, t] = s
        valid[r, t] = True
    return TrafficLights(
        lane_ids=np.array(list(rows), dtype=np.int64),
        stop_points=np.array(stop_points, dtype=np.float64).reshape(-1, 3),
        states=states,
        valid=valid,
    )
