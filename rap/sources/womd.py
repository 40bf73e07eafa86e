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
import os
import warnings
from typing import Callable, Iterator

import numpy as np
import shapely
import shapely.ops
from google.protobuf.message import DecodeError
from waymo_open_dataset.protos import map_pb2, scenario_pb2

from rap import geometry
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
    StopLineType,
    StopSigns,
    TrafficLights,
)
from rap.sources.tfrecord import TFRecordError, iter_records

__all__ = [
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

_STATE_FIELDS = (
    "center_x", "center_y", "center_z", "length", "width", "height", "heading",
    "velocity_x", "velocity_y",
)  # fmt: skip


class _Where:
    """Formats error messages as '<path> record <n>: <field> <problem>'."""

    def __init__(self, path: str, record: int) -> None:
        self.prefix = f"{path} record {record}"

    def error(self, field: str, problem: str) -> ValueError:
        return ValueError(f"{self.prefix}: {field} {problem}")


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
        ValueError: Anything that cannot be converted; the message names the file, the record
            index and the field, e.g. ``"a.tfrecord record 0: tracks[12].states[40].heading is
            NaN"``.
    """
    path = os.fspath(path)
    where = _Where(path, record)
    if isinstance(scenario, (bytes, bytearray, memoryview)):
        try:
            scenario = scenario_pb2.Scenario.FromString(bytes(scenario))
        except DecodeError as e:
            raise where.error("payload", f"is not a Scenario proto ({e})") from None
    if not isinstance(scenario, scenario_pb2.Scenario):
        raise TypeError(f"expected a Scenario proto or bytes, got {type(scenario).__name__}")

    timestamps = np.asarray(scenario.timestamps_seconds, dtype=np.float64)
    num_steps = timestamps.shape[0]
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
    lights = _traffic_lights(scenario, num_steps, where)
    map_elements = dataclasses.replace(
        map_elements, stop_lines=_stop_lines(map_elements.lanes, map_elements.stop_signs, lights)
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
    values = {name: np.zeros((n, num_steps), dtype=np.float64) for name in _STATE_FIELDS}
    valid = np.zeros((n, num_steps), dtype=bool)
    ids = np.zeros(n, dtype=np.int64)
    types = np.zeros(n, dtype=np.int8)
    allowed_types = {int(t) for t in AgentType}
    for i, track in enumerate(scenario.tracks):
        states = track.states
        if len(states) != num_steps:
            raise where.error(
                f"tracks[{i}].states", f"has {len(states)} entries, expected {num_steps}"
            )
        if track.object_type not in allowed_types:
            raise where.error(f"tracks[{i}].object_type", f"{track.object_type} is unknown")
        ids[i] = track.id
        types[i] = track.object_type
        valid[i] = [s.valid for s in states]
        for name in _STATE_FIELDS:
            values[name][i] = [getattr(s, name) for s in states]
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


def _points(
    map_points, field: str, where: _Where, *, min_points: int = 1
) -> np.ndarray:  # map_points: repeated map_pb2.MapPoint
    """(n, 3) float64 array of MapPoints, checked finite and long enough."""
    pts = np.array([(p.x, p.y, p.z) for p in map_points], dtype=np.float64).reshape(-1, 3)
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
        w = _lane_width(pts, lane, boundaries)
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
    centerline: np.ndarray, lane: map_pb2.LaneCenter, boundaries: dict[int, np.ndarray]
) -> float | None:
    """Lane width from its boundary segments [m], or None when none can be used."""
    medians = []
    for side in (lane.left_boundaries, lane.right_boundaries):
        dists = []
        for seg in side:
            line = boundaries.get(seg.boundary_feature_id)
            if line is None:
                continue
            lo = max(0, seg.lane_start_index)
            hi = min(centerline.shape[0] - 1, seg.lane_end_index)
            if hi < lo:
                continue
            dists.append(geometry.point_polyline_distance(centerline[lo : hi + 1, :2], line[:, :2]))
        if dists:
            medians.append(float(np.median(np.concatenate(dists))))
    if not medians:
        return None
    width = sum(medians) if len(medians) == 2 else 2.0 * medians[0]
    return float(np.clip(width, MIN_LANE_WIDTH, MAX_LANE_WIDTH))


def _stop_lines(lanes: Lanes, stop_signs: StopSigns, lights: TrafficLights) -> LineSet:
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
        faces = list(shapely.ops.polygonize(noded))
        edge_zone = edges.buffer(_SNAP)
        lane_zone = lane_union.boundary.buffer(_SNAP)
        extra = []
        for face in faces:
            if face.area <= 0 or lane_union.contains(face.representative_point()):
                continue
            if not face.intersects(lane_zone):
                continue
            perimeter = face.exterior.length
            on_edge = face.exterior.intersection(edge_zone).length
            on_lane = face.exterior.intersection(lane_zone).length
            if on_edge < _FACE_EDGE_SHARE * perimeter or on_lane < _FACE_LANE_SHARE * perimeter:
                continue
            if face.area <= _FACE_MAX_AREA or 2.0 * face.area / perimeter <= _FACE_MAX_WIDTH:
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


def _traffic_lights(
    scenario: scenario_pb2.Scenario, num_steps: int, where: _Where
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
