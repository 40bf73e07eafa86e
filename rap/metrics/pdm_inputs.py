"""Plain inputs of the PDM scorer (NAVSIM PDMS v1 / EPDMS v2): no Scene object, no nuPlan types.

Everything the scorer reads about one scoring scene is here, as frozen dataclasses of numpy arrays
and shapely geometry, all in one world frame (x forward east, y left north, SI units, radians):

* :class:`EgoState` — the current ego state at the rear axle.
* :class:`ObjectTracks` — the other road users and static obstacles as boxes per 0.1 s step.
* :class:`PreviousPlan` — the agent's plan from 0.5 s earlier (for extended comfort, EC).
* :class:`ScoringScene` — map polygons, route, traffic lights, optional history / human plan.

Arrays are copied, checked and made read-only in ``__post_init__``; a bad field (wrong shape,
NaN / inf values or polygon vertices) raises ``ValueError`` naming ``Class.field``.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum
from typing import Mapping

import numpy as np
import shapely

from rap.geometry import box_corners_2d
from rap.sim.bicycle import StateIndex
from rap.trajectory import NAVSIM_SAMPLING, TrajectorySampling

__all__ = ["ObjectKind", "AGENT_KINDS", "EgoState", "ObjectTracks", "PreviousPlan", "ScoringScene"]


class ObjectKind(IntEnum):
    """Object classes the scorer distinguishes (nuPlan's tracked-object types, grouped)."""

    VEHICLE = 0
    PEDESTRIAN = 1
    CYCLIST = 2
    STATIC_OBJECT = 3  # cones, barriers, construction-zone signs, generic static objects


AGENT_KINDS = (ObjectKind.VEHICLE, ObjectKind.PEDESTRIAN, ObjectKind.CYCLIST)
"""Kinds whose at-fault collision sets NC to 0 (others give 0.5); nuPlan's ``AGENT_TYPES``."""


def _fail(owner: object, name: str, message: str) -> ValueError:
    return ValueError(f"{type(owner).__name__}.{name}: {message}")


_TRACK_AXES = "(num_objects, num_steps)"
_KNOWN_KIND = np.isin(np.arange(max(ObjectKind) + 1), [int(k) for k in ObjectKind])  # lookup by value


def _float_array(owner: object, name: str, shape: tuple[int | None, ...], axes: str = "") -> np.ndarray:
    try:
        arr = np.array(getattr(owner, name), dtype=np.float64, copy=True)
    except (TypeError, ValueError) as e:
        raise _fail(owner, name, f"cannot be read as a float array ({e})") from None
    if arr.ndim != len(shape) or any(w is not None and g != w for g, w in zip(arr.shape, shape)):
        want = "(" + ", ".join("?" if w is None else str(w) for w in shape) + ")"
        hint = f" {axes}" if axes else ""
        if axes and arr.ndim == len(shape) and all(w is None or g == w for g, w in zip(arr.shape[::-1], shape)):
            hint += " (this looks transposed)"
        raise _fail(owner, name, f"expected shape {want}{hint}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise _fail(owner, name, "contains non-finite values")
    arr.flags.writeable = False
    object.__setattr__(owner, name, arr)
    return arr


@dataclasses.dataclass(frozen=True)
class EgoState:
    """The ego vehicle at one instant, referenced to the rear-axle centre (NAVSIM's convention).

    Attributes:
        x, y: Rear-axle position, world frame [m].
        heading: World heading [rad].
        vx, vy: Velocity at the rear axle in the ego frame (x forward, y left) [m/s].
        ax, ay: Acceleration at the rear axle in the ego frame [m/s^2].
        steering_angle: Front tyre angle [rad].
        steering_rate: [rad/s].
        yaw_rate: [rad/s].
        yaw_acceleration: [rad/s^2].
        time_s: Timestamp [s] (informational).
    """

    x: float
    y: float
    heading: float
    vx: float = 0.0
    vy: float = 0.0
    ax: float = 0.0
    ay: float = 0.0
    steering_angle: float = 0.0
    steering_rate: float = 0.0
    yaw_rate: float = 0.0
    yaw_acceleration: float = 0.0
    time_s: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise _fail(self, f.name, f"expected a float, got {value!r}") from None
            if not np.isfinite(value):
                raise _fail(self, f.name, f"must be finite, got {value}")
            object.__setattr__(self, f.name, value)

    def state_array(self) -> np.ndarray:
        """(11,) float64 state (columns :class:`rap.sim.StateIndex`)."""
        s = np.zeros(len(StateIndex))
        s[StateIndex.X], s[StateIndex.Y], s[StateIndex.HEADING] = self.x, self.y, self.heading
        s[StateIndex.VELOCITY_X], s[StateIndex.VELOCITY_Y] = self.vx, self.vy
        s[StateIndex.ACCELERATION_X], s[StateIndex.ACCELERATION_Y] = self.ax, self.ay
        s[StateIndex.STEERING_ANGLE] = self.steering_angle
        s[StateIndex.STEERING_RATE] = self.steering_rate
        s[StateIndex.ANGULAR_VELOCITY] = self.yaw_rate
        s[StateIndex.ANGULAR_ACCELERATION] = self.yaw_acceleration
        return s

    @classmethod
    def from_state_array(cls, state: np.ndarray, time_s: float = 0.0) -> EgoState:
        """Inverse of :meth:`state_array` for an (11,) array."""
        s = np.asarray(state, dtype=np.float64)
        if s.shape != (len(StateIndex),):
            raise ValueError(f"EgoState.from_state_array: expected (11,), got {s.shape}")
        return cls(
            x=s[StateIndex.X], y=s[StateIndex.Y], heading=s[StateIndex.HEADING],
            vx=s[StateIndex.VELOCITY_X], vy=s[StateIndex.VELOCITY_Y],
            ax=s[StateIndex.ACCELERATION_X], ay=s[StateIndex.ACCELERATION_Y],
            steering_angle=s[StateIndex.STEERING_ANGLE], steering_rate=s[StateIndex.STEERING_RATE],
            yaw_rate=s[StateIndex.ANGULAR_VELOCITY], yaw_acceleration=s[StateIndex.ANGULAR_ACCELERATION],
            time_s=time_s,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectTracks:
    """Other objects as oriented boxes over S steps 0.1 s apart, step 0 = now.

    All per-step arrays are (num_objects, num_steps) = (N, S), object-major like
    :class:`rap.scene.AgentTracks`; an (S, N) array is rejected naming the field. Give S >= 41
    (4 s). PDMS v1's time-to-collision looks up to 0.9 s past the last simulated step, so NAVSIM
    v1 scores against S = 51; with fewer steps those look-aheads are skipped.

    Attributes:
        ids: (N,) int64 unique object ids.
        kinds: (N,) int8 :class:`ObjectKind`.
        x, y: (N, S) box centres, world frame [m].
        heading: (N, S) box headings, world frame [rad].
        vx, vy: (N, S) velocities, world frame [m/s]. An object is "stopped" (collision
            classification) when its speed at its first valid step is <= 0.05 m/s, as nuPlan
            reads the tracked object it first saw; STATIC_OBJECT is always stopped.
        length, width: (N,) box extents [m] (> 0).
        valid: (N, S) bool; an object is absent at steps where it is False.
    """

    ids: np.ndarray
    kinds: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    length: np.ndarray
    width: np.ndarray
    valid: np.ndarray

    def __post_init__(self) -> None:
        try:
            ids = np.array(self.ids, dtype=np.int64, copy=True).reshape(-1)
        except (TypeError, ValueError) as e:
            raise _fail(self, "ids", f"expected integers ({e})") from None
        n = ids.shape[0]
        sorted_ids = np.sort(ids)
        if (sorted_ids[1:] == sorted_ids[:-1]).any():
            raise _fail(self, "ids", "ids must be unique")
        ids.flags.writeable = False
        object.__setattr__(self, "ids", ids)
        kinds = np.array(self.kinds, dtype=np.int64, copy=True).reshape(-1)
        if kinds.shape != (n,):
            raise _fail(self, "kinds", f"expected shape ({n},), got {kinds.shape}")
        if kinds.size and not (kinds.min() >= 0 and kinds.max() < _KNOWN_KIND.size and _KNOWN_KIND[kinds].all()):
            raise _fail(self, "kinds", "values must be ObjectKind")
        kinds = kinds.astype(np.int8)
        kinds.flags.writeable = False
        object.__setattr__(self, "kinds", kinds)
        x = _float_array(self, "x", (n, None), _TRACK_AXES)
        s = x.shape[1]
        for name in ("y", "heading", "vx", "vy"):
            _float_array(self, name, (n, s), _TRACK_AXES)
        for name in ("length", "width"):
            arr = _float_array(self, name, (n,))
            if np.any(arr <= 0):
                raise _fail(self, name, "must be > 0")
        valid = np.array(self.valid, copy=True)
        if valid.shape != (n, s) or valid.dtype.kind not in "bui":
            raise _fail(self, "valid", f"expected a ({n}, {s}) bool array {_TRACK_AXES}, got {valid.dtype} {valid.shape}")
        valid = valid.astype(bool)
        valid.flags.writeable = False
        object.__setattr__(self, "valid", valid)

    @classmethod
    def empty(cls, num_steps: int = 41) -> ObjectTracks:
        """No objects."""
        z = np.zeros((0, num_steps))
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int8), z, z, z, z, z, np.zeros(0), np.zeros(0), z.astype(bool))

    @property
    def num_steps(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def corners(self) -> np.ndarray:
        """(N, S, 4, 2) box corners [m] (front-right, front-left, rear-left, rear-right)."""
        return box_corners_2d(self.x, self.y, self.heading, self.length[:, None], self.width[:, None])

    def first_valid_speed(self) -> np.ndarray:
        """(N,) speed at each object's first valid step [m/s] (0 for never-valid objects)."""
        first = np.argmax(self.valid, axis=1)
        rows = np.arange(len(self))
        return np.hypot(self.vx[rows, first], self.vy[rows, first])

    def constant_velocity_forecast(self, num_steps: int, dt: float = 0.1) -> ObjectTracks:
        """Step 0 extrapolated at constant velocity (what PDM-Closed sees at planning time)."""
        t = (np.arange(num_steps) * dt)[None, :]
        rep = lambda a: np.repeat(a[:, :1], num_steps, axis=1)  # noqa: E731
        return ObjectTracks(
            self.ids, self.kinds, self.x[:, :1] + t * self.vx[:, :1], self.y[:, :1] + t * self.vy[:, :1],
            rep(self.heading), rep(self.vx), rep(self.vy), self.length, self.width, rep(self.valid),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class PreviousPlan:
    """The plan the agent made ``time_offset_s`` before now (EPDMS extended comfort, EC).

    Attributes:
        ego: The ego state at that earlier time (world frame).
        poses: (T, 3) x, y, heading of that plan in that earlier ego frame [m, m, rad].
        sampling: Sampling of ``poses``.
        time_offset_s: How long before now it was made [s] (NAVSIM: 0.5).
    """

    ego: EgoState
    poses: np.ndarray
    sampling: TrajectorySampling = NAVSIM_SAMPLING
    time_offset_s: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.ego, EgoState):
            raise _fail(self, "ego", f"expected EgoState, got {type(self.ego).__name__}")
        _float_array(self, "poses", (self.sampling.num_poses, 3))
        if not 0 < self.time_offset_s < 0.55:
            raise _fail(self, "time_offset_s", f"must be in (0, 0.55) s as NAVSIM asserts, got {self.time_offset_s}")


def _polygon_parts(owner: object, name: str, geom: object) -> tuple[shapely.Polygon, ...]:
    if geom is None:
        return ()
    if isinstance(geom, (list, tuple)):
        parts: list[shapely.Polygon] = []
        for g in geom:
            parts.extend(_polygon_parts(owner, name, g))
        return tuple(parts)
    if not isinstance(geom, shapely.Geometry):
        raise _fail(owner, name, f"expected shapely geometry, got {type(geom).__name__}")
    if geom.is_empty:
        return ()
    if isinstance(geom, shapely.Polygon):
        return (geom,)
    if isinstance(geom, (shapely.MultiPolygon, shapely.GeometryCollection)):
        return tuple(p for g in geom.geoms for p in _polygon_parts(owner, name, g))
    raise _fail(owner, name, f"expected polygonal geometry, got {geom.geom_type}")


def _check_finite_vertices(owner: object, name: str, parts: tuple, label: str) -> None:
    """ValueError naming ``Class.name`` (and ``label`` with the part) when a vertex of one of
    ``parts`` (exterior or hole) is NaN or infinite."""
    if not parts:
        return
    coords, which = shapely.get_coordinates(list(parts), return_index=True)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        x, y = (float(v) for v in coords[i])
        where = label.format(part=int(which[i]))
        raise _fail(owner, name, f"{where} has a non-finite vertex ({x}, {y}); polygon coordinates must be finite")


@dataclasses.dataclass(frozen=True, eq=False)
class ScoringScene:
    """Everything the PDM scorer needs about one scene, in the world frame.

    Attributes:
        ego: Current ego state.
        objects: Other objects, S >= 41 steps at 0.1 s (see :class:`ObjectTracks`).
        drivable_area: Polygonal geometry (Polygon, MultiPolygon, collection or a sequence of
            polygons) of the roadblock, intersection, drivable-area and car-park polygons. Lane
            polygons do not count. A point is drivable when strictly inside one of its parts.
        lane_polygons: Lane and lane-connector polygons by id.
        intersections: Polygonal geometry of intersections (may be ``None``).
        route_lane_ids: Ids of on-route lanes and lane connectors (keys of ``lane_polygons``).
        centerline: (M, 3) route centerline x, y, heading, world frame [m, m, rad], M >= 2.
        red_light_lane_ids: S frozensets of lane-connector ids whose light is red at each step,
            or ``()`` for no traffic lights. Only on-route ids count (NAVSIM).
        ego_history: Past ego states 0.1 s apart, oldest first, excluding now (EPDMS history
            comfort), prepended as given to the 41 executed states. NAVSIM samples its 1.5 s
            logged past every 0.1 s from its start and drops the last sample; pass the states
            that gives. ``None``: history comfort is 1.
        human_trajectory: (T, 3) logged human plan in the ego frame, sampled per
            ``human_sampling`` (EPDMS human filter; NAVSIM applies it to original, not synthetic,
            scenes). ``None``: no filter.
        human_sampling: Sampling of ``human_trajectory``.
        previous_plan: The agent's plan 0.5 s earlier (EPDMS extended comfort). ``None``: EC is
            not scored and its weight drops out of EPDMS (as NAVSIM does without a previous frame).
        reference_poses: (N, 3) reference plan in the ego frame at 0.1 s, 0.2 s, ... after now
            (e.g. NAVSIM's cached PDM-Closed trajectory without its initial state) for ego
            progress; ``None`` runs the built-in PDM-Closed-style planner
            (:mod:`rap.sim.reference`).
        speed_limit: Route speed limit [m/s] for the built-in reference planner (``None``: the
            planner's default).
    """

    ego: EgoState
    objects: ObjectTracks
    drivable_area: object
    lane_polygons: Mapping[int, shapely.Polygon]
    intersections: object
    route_lane_ids: frozenset
    centerline: np.ndarray
    red_light_lane_ids: tuple = ()
    ego_history: tuple | None = None
    human_trajectory: np.ndarray | None = None
    human_sampling: TrajectorySampling = NAVSIM_SAMPLING
    previous_plan: PreviousPlan | None = None
    reference_poses: np.ndarray | None = None
    speed_limit: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ego, EgoState):
            raise _fail(self, "ego", f"expected EgoState, got {type(self.ego).__name__}")
        if not isinstance(self.objects, ObjectTracks):
            raise _fail(self, "objects", f"expected ObjectTracks, got {type(self.objects).__name__}")
        if self.objects.num_steps < 41:
            raise _fail(self, "objects", f"need >= 41 steps (4 s at 0.1 s), got {self.objects.num_steps}")
        for name in ("drivable_area", "intersections"):
            parts = _polygon_parts(self, name, getattr(self, name))
            _check_finite_vertices(self, name, parts, "polygon {part}")
            object.__setattr__(self, name, parts)
        lanes: dict[int, shapely.Polygon] = {}
        for key, poly in dict(self.lane_polygons).items():
            parts = _polygon_parts(self, "lane_polygons", poly)
            if len(parts) != 1:
                raise _fail(self, "lane_polygons", f"lane {key} must be one polygon, got {len(parts)} parts")
            _check_finite_vertices(self, "lane_polygons", parts, f"lane {key}")
            lanes[int(key)] = parts[0]
        object.__setattr__(self, "lane_polygons", lanes)
        object.__setattr__(self, "route_lane_ids", frozenset(int(i) for i in self.route_lane_ids))
        line = _float_array(self, "centerline", (None, 3))
        if line.shape[0] < 2:
            raise _fail(self, "centerline", f"need >= 2 points, got {line.shape[0]}")
        lights = tuple(frozenset(int(i) for i in step) for step in self.red_light_lane_ids)
        if lights and len(lights) < self.objects.num_steps:
            raise _fail(self, "red_light_lane_ids", f"need one set per object step ({self.objects.num_steps}) or none, got {len(lights)}")
        object.__setattr__(self, "red_light_lane_ids", lights)
        if self.ego_history is not None:
            hist = tuple(self.ego_history)
            if not all(isinstance(h, EgoState) for h in hist):
                raise _fail(self, "ego_history", "expected a sequence of EgoState")
            object.__setattr__(self, "ego_history", hist)
        if self.human_trajectory is not None:
            _float_array(self, "human_trajectory", (self.human_sampling.num_poses, 3))
        if self.previous_plan is not None and not isinstance(self.previous_plan, PreviousPlan):
            raise _fail(self, "previous_plan", f"expected PreviousPlan, got {type(self.previous_plan).__name__}")
        if self.reference_poses is not None:
            ref = _float_array(self, "reference_poses", (None, 3))
            if ref.shape[0] < 2:
                raise _fail(self, "reference_poses", "need >= 2 poses")
        if self.speed_limit is not None and not (np.isfinite(self.speed_limit) and self.speed_limit > 0):
            raise _fail(self, "speed_limit", f"must be > 0 m/s, got {self.speed_limit}")

    @property
    def route_lane_polygons(self) -> dict[int, shapely.Polygon]:
        """On-route lane and lane-connector polygons by id."""
        return {i: p for i, p in self.lane_polygons.items() if i in self.route_lane_ids}

    def red_light_polygons(self, step: int) -> tuple[shapely.Polygon, ...]:
        """Polygons of on-route lane connectors with a red light at ``step``."""
        if not self.red_light_lane_ids or step >= len(self.red_light_lane_ids):
            return ()
        ids = sorted(i for i in self.red_light_lane_ids[step] if i in self.route_lane_ids and i in self.lane_polygons)
        return tuple(self.lane_polygons[i] for i in ids)

    def history_state_array(self) -> np.ndarray | None:
        """(H, 11) past ego states (columns :class:`rap.sim.StateIndex`), or ``None``."""
        if not self.ego_history:
            return None
        return np.stack([h.state_array() for h in self.ego_history])

