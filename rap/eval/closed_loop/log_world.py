"""Real-log-seeded closed-loop routes (``--routes womd:PATH``): the world of one logged scenario
around an ego that an agent drives.

Routes (:func:`load_log_routes`, :class:`LogRouteSpec`): one per scenario of a WOMD scenario
TFRecord file, or of every ``*.tfrecord*`` file under a folder (:func:`rap.sources.registry.list_units`);
a record that cannot be read or has no route is skipped with a warning naming the file and
record (an error when no route is left).

* The ego starts at its logged state at the scenario's current step (a moving start: box
  centre, heading, speed, acceleration and yaw rate of the log; the ego is the product's
  Pacifica-sized bicycle, its box centred on the logged box centre); its logged past is its
  history (before the log's first step: extrapolated backwards at its first velocity, as every
  track).
* The route is the chain of lanes the logged ego drives from the current step to the end of
  the log (:class:`rap.eval.navsim_scene.LaneLookup`: the lanes under its rear axle, heading
  within 45 degrees), extended along the straightest successors by :data:`EXTEND_M` so that
  progress and lookahead never run out. Route arc 0 is the projection of the ego's starting
  box centre; the route length is the logged path measured along the route (the arc of the
  farthest projection of the logged box centres; 0 for an ego that moves less than
  :data:`MIN_LENGTH_M`).
* A log route never ends before the log does (:attr:`LogWorld.min_duration_s`, the logged
  future: 8 s in WOMD) unless it fails: the runner keeps judging a completed route until then,
  so a route whose ego stands for the whole log (waiting at a red light, as in the shipped
  scenario) is judged on those seconds (it must not run the light or hit anyone) instead of
  ending complete at its first tick.
* The log is read at its nominal step (WOMD: 0.1 s; its timestamps jitter), interpolated
  between steps when ``closed_loop.sim_hz`` is not a multiple of its rate.
* Traffic lights replay the log (the lights of lanes on the map), holding each light's last
  logged state after the log ends; an invalid logged state reads UNKNOWN. Arrow states are
  read as the plain ones (``ARROW_STOP`` is ``STOP``: the Monitor and the expert judge and
  stop for ``STOP``); flashing states stay as logged (never judged).
* ``traffic`` (``closed_loop.traffic``, default ``log``):

  - ``log``: every other agent replays its logged box (non-reactive), invalid where the log
    is invalid. After the log ends, an agent that stands at the log's last step (slower than
    :data:`HOLD_SPEED` and valid there: parked cars, a queue at a light) holds that pose; every
    other agent disappears (it would have driven on; a frozen moving car is a hazard the real
    world did not have).
  - ``idm``: the vehicles valid at the current step that are on a lane
    (:func:`rap.sim.idm.locate_on_lanes`) and move in the log (faster than :data:`HOLD_SPEED`
    at some logged step from now on) become :class:`rap.sim.idm.IDMAgents` (the IDM the
    synthetic world's traffic uses) from their logged speed, on their lane at their logged arc
    (boxes snapped onto the lane's centerline), along the lanes they drive in the log and then
    the straightest successors: they follow each other, brake for the ego and for the replayed
    agents, stop at the logged lights (at STOP; at CAUTION when they need at most
    3 m/s^2) and at the map's stop signs (stand 1 s, then go:
    :mod:`~rap.eval.closed_loop.stop_signs`). A vehicle that changes lanes in the log (its
    logged lanes move to a same-direction neighbour) changes lanes too, off the same lane, into
    the first safe gap (:mod:`~rap.eval.closed_loop.lane_changes`), and drives on along its
    logged lanes there; without a gap before the lane's end it keeps its lane. An agent whose
    route runs out leaves. The other agents (pedestrians, cyclists,
    parked vehicles, vehicles off the lanes or appearing later) replay their logs as with
    ``log``.
* The map is the scenario's: snapshots carry it (rendering, the expert's drivable area and
  lanes); the Monitor gets it through :class:`LogTown` (drivable area for layout collisions,
  the route lanes and their same-direction neighbours for ``outside_route_lanes``; no
  junction areas: WOMD maps mark none, and the route's junction lanes are route lanes), stop
  signs from the map.

The interface the runner, :class:`~rap.eval.closed_loop.infractions.Monitor`,
:class:`~rap.eval.closed_loop.media.RouteRecorder` and the observer use from a world (what
:class:`LogWorld` provides as :class:`~rap.eval.closed_loop.world.World` does):

* ``spec`` (``route_id``, ``index``, ``length``, ``scenario_name``, ``town_name``,
  ``abilities``), ``dt``, ``tick``, ``time_s``, ``length`` [m], ``offset`` [m],
  ``min_duration_s`` [s] (``LogWorld`` only; the runner reads it with a default of 0);
* ``ego`` (the bicycle state, :class:`~rap.sim.bicycle.StateIndex`), ``ego_box()``,
  ``ego_world_velocity()``, ``ego_world_acceleration()``;
* ``execute(plan)``, ``step()``, ``snapshot(progress)`` (a :class:`~rap.scene.Scene`, ego row
  0, ``ego_route`` the route ahead);
* ``route_pose(arc)``, ``route_points()``, ``lane_arc(k)``, ``path`` (``.spacing``),
  ``route_lanes`` (lane indices), ``lane_ids`` (index -> id), ``map`` (``stop_signs``),
  ``town`` (``lanes[i].points/.width/.left/.right``, ``junctions``, ``drivable``, ``bounds``,
  ``road_lines``, ``road_edges``);
* ``light_states(t)``, ``signal_lanes``, ``signal_row``, ``history`` (frames: ``x, y,
  heading, vx, vy, valid``, ego first), ``light_history``;
* ``others()`` (``x, y, heading, vx, vy, length, width, height, valid, types, ids``: agents,
  then statics, then pedestrians), and for the report's colours ``agents``, ``roles``,
  ``statics``, ``event_parked``, ``walkers`` (sized: ``LogWorld``'s ``agents`` are the
  non-pedestrian tracks, ``walkers`` the pedestrians, no statics).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path

import numpy as np

from rap import geometry
from rap.eval.closed_loop.lane_changes import LaneChange, blend_length, change_path, lane_change_window, ready_changes
from rap.eval.closed_loop.stop_signs import SignStops
from rap.eval.closed_loop.world import RouteWorld, WorldConfig, light_stop_gaps, light_track, signal_stops, track_arrays
from rap.scene import AgentTracks, AgentType, LightState, Scene, TrafficLights
from rap.sim.bicycle import PACIFICA, StateIndex
from rap.sim.idm import (
    Boxes,
    IDMAgents,
    IDMParameters,
    Routes,
    lane_route,
    locate_on_lanes,
    route_path,
)
from rap.sim.tracker import RolloutConfig

__all__ = [
    "EXTEND_M", "HOLD_SPEED", "LOG_SEATS", "MIN_LENGTH_M", "MIN_SEAT_PATH_M", "MIN_SEAT_ROUTE_M", "TRAFFIC_MODES", "LogRouteSpec", "LogTown", "LogWorld", "build_log_route",
    "load_log_routes",
]  # fmt: skip

TRAFFIC_MODES = ("log", "idm")  # closed_loop.traffic
LOG_SEATS = ("ego", "vehicles")  # closed_loop.log_seats
MIN_SEAT_PATH_M = 20.0  # [m] logged path of another vehicle whose seat makes a route (log_seats=vehicles) ...
MIN_SEAT_ROUTE_M = 10.0  # [m] ... if at least this much of it follows the route's lanes
EXTEND_M = 150.0  # [m] of route past the logged path (straightest successors)
MIN_LENGTH_M = 0.5  # [m] a logged path shorter than this is a standing ego: route length 0
HOLD_SPEED = 0.5  # [m/s] "standing" (held after the log; parked under idm)
_EGO_HEIGHT = 1.777  # [m] as World's
_DEFAULT_LIMIT = 13.4  # [m/s] lanes without a speed limit
_IDM_ROUTE_M = 300.0  # [m] IDM routes ahead of each vehicle
_NORMAL = {int(LightState.ARROW_STOP): int(LightState.STOP), int(LightState.ARROW_CAUTION): int(LightState.CAUTION), int(LightState.ARROW_GO): int(LightState.GO)}


# --- routes -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogRouteSpec:
    """One real-log-seeded route.

    Attributes:
        route_id: ``RouteScenario_<index>``.
        index: position in the suite.
        path: the scenario TFRecord file.
        record: the scenario's record in it.
        scene_id: the scenario id.
        lanes: lane ids of the route (the logged chain, then the extension).
        logged_lanes: how many of ``lanes`` the logged ego drives.
        length: [m] route length (the logged path along the route).
        ego_row: tracks row driven as the ego; -1: the log's ego (the SDC). Other rows make
            routes from other logged vehicles' paths (tests, experiments).
    """

    route_id: str
    index: int
    path: str
    record: int
    scene_id: str
    lanes: tuple[int, ...]
    logged_lanes: int
    length: float
    ego_row: int = -1
    seed: int = 0

    @property
    def abilities(self) -> tuple[str, ...]:
        """None: a logged scenario exercises no one Bench2Drive ability."""
        return ()

    @property
    def scenario_name(self) -> str:
        """``LogReplay_<scenario id>``, ``LogReplay_<scenario id>_row<r>`` from another vehicle's
        seat (results.json ``scenario_name``)."""
        return f"LogReplay_{self.scene_id}" + (f"_row{self.ego_row}" if self.ego_row >= 0 else "")

    @property
    def town_name(self) -> str:
        """``womd:<file name>@<record>``."""
        return f"womd:{Path(self.path).name}@{self.record}"


def _lane_xy(scene: Scene, i: int) -> np.ndarray:
    xy = scene.map.lanes.centerlines[i][:, :2].astype(np.float64)
    keep = np.concatenate([[True], np.hypot(*np.diff(xy, axis=0).T) > 1e-9])
    return xy[keep]


def _limits(scene: Scene) -> np.ndarray:
    lanes = scene.map.lanes
    given = lanes.speed_limit.astype(np.float64)
    return np.where(lanes.has_speed_limit & (given > 0), given, _DEFAULT_LIMIT)


def _successor_indices(scene: Scene, i: int) -> list[int]:
    lanes = scene.map.lanes
    out = []
    for lane_id in lanes.successors[i]:
        try:
            k = lanes.index_of(int(lane_id))
        except KeyError:
            continue
        if len(_lane_xy(scene, k)) > 1:
            out.append(k)
    return out


def _extend(scene: Scene, chain: list[int], metres: float) -> list[int]:
    """``chain`` (lane indices) extended along the straightest successors by ``metres``."""
    rest = lane_route(scene.map.lanes, chain[-1], metres + float(geometry.polyline_length(_lane_xy(scene, chain[-1]))))
    return chain + [int(i) for i in rest[1:]]


def _path(scene: Scene, chain: list[int], **kwargs):
    limits = _limits(scene)
    return route_path([_lane_xy(scene, i) for i in chain], [float(limits[i]) for i in chain], chain, spacing=0.5, smoothing=2.0, **kwargs)


def _box_centres(scene: Scene, row: int) -> tuple[np.ndarray, np.ndarray]:
    tr = scene.tracks
    return np.stack([tr.x[row], tr.y[row]], axis=1), tr.valid[row]


def _walk(points: np.ndarray, xy: np.ndarray, start: int) -> int:
    """The farthest path sample the positions ``xy`` (in order) project on, searched near the
    last one (10 m back, 30 m ahead at 0.5 m spacing), from sample ``start``."""
    k, best = start, start
    for q in xy:
        lo, hi = max(0, k - 20), min(len(points), k + 61)
        d = np.hypot(points[lo:hi, 0] - q[0], points[lo:hi, 1] - q[1])
        j = int(np.argmin(d))
        if d[j] < 4.0:
            k = lo + j
            best = max(best, k)
    return best


def build_log_route(scene: Scene, index: int = 0, path: str = "", record: int = 0, ego_row: int = -1) -> LogRouteSpec:
    """The route of ``scene``'s logged ego (or of tracks row ``ego_row``): see the module docs.

    Raises:
        ValueError: the ego is invalid at the current step or on no lane (naming the scene).
    """
    from rap.eval.navsim_scene import LaneLookup, lane_polygons

    row = scene.ego_index if ego_row < 0 else int(ego_row)
    step = scene.current_index
    where = f"{path or scene.source} record {record} (scenario {scene.scene_id})"
    if not scene.tracks.valid[row, step]:
        raise ValueError(f"{where}: the ego (row {row}) is not valid at the current step {step}")
    lanes = scene.map.lanes
    polys = lane_polygons(scene)
    seq = LaneLookup(scene, polys).traversed(row, step) if polys else []
    chain = [lanes.index_of(int(i)) for i in seq]
    if not chain:
        raise ValueError(f"{where}: the logged ego is on no lane from step {step} on (no route)")
    logged = len(chain)
    chain = _extend(scene, chain, EXTEND_M)
    rp = _path(scene, chain)
    xy, valid = _box_centres(scene, row)
    start = int(np.argmin(np.hypot(rp.points[:, 0] - xy[step, 0], rp.points[:, 1] - xy[step, 1])))
    future = xy[step:][valid[step:]]
    end = _walk(rp.points, future, start)
    length = (end - start) * rp.spacing
    if float(np.hypot(*np.diff(future, axis=0).T).sum()) < MIN_LENGTH_M or length < MIN_LENGTH_M:
        length = 0.0
    return LogRouteSpec(
        route_id=f"RouteScenario_{index}", index=index, path=str(path), record=int(record), scene_id=str(scene.scene_id),
        lanes=tuple(int(lanes.ids[i]) for i in chain), logged_lanes=logged, length=float(length), ego_row=int(ego_row),
    )  # fmt: skip


@functools.lru_cache(maxsize=4)
def _load_scene(path: str, record: int) -> Scene:
    from rap.sources.womd import load_womd

    return load_womd(path, record)


def _vehicle_seats(scene: Scene) -> list[int]:
    """Tracks rows of the vehicles other than the ego, valid at the current step, whose logged
    box centres travel at least :data:`MIN_SEAT_PATH_M` from it on (in row order)."""
    step, rows = scene.current_index, []
    for row in range(scene.tracks.num_agents):
        if row == scene.ego_index or int(scene.tracks.types[row]) != int(AgentType.VEHICLE) or not scene.tracks.valid[row, step]:
            continue
        xy, valid = _box_centres(scene, row)
        future = xy[step:][valid[step:]]
        if float(np.hypot(*np.diff(future, axis=0).T).sum()) >= MIN_SEAT_PATH_M:
            rows.append(row)
    return rows


def load_log_routes(spec: str, seats: str = "ego") -> list[LogRouteSpec]:
    """The routes of ``womd:PATH`` (a scenario TFRecord file or a folder of them): per
    scenario the logged ego's, and with ``seats="vehicles"`` also one from the seat of every
    other vehicle that drives at least :data:`MIN_SEAT_PATH_M` in the log, after the ego's in
    row order (one on no lane, or whose path follows its lanes for less than
    :data:`MIN_SEAT_ROUTE_M`, is left out).

    Raises:
        ValueError: not ``womd:PATH``, a missing or unreadable path, or no route in it (the
            message names the spec and the path).
    """
    from rap.sources.registry import list_units, load_unit

    if seats not in LOG_SEATS:
        raise ValueError(f"closed_loop.log_seats must be one of {', '.join(LOG_SEATS)}, got {seats!r}")
    kind, _, arg = spec.partition(":")
    if kind != "womd" or not arg:
        raise ValueError(f"--routes {spec}: expected womd:PATH (a WOMD scenario TFRecord file or a folder of them)")
    try:
        units = list_units(spec)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--routes {spec}: {exc}") from None
    out: list[LogRouteSpec] = []
    problems = []
    for unit in units:
        try:
            scene = load_unit(unit)
            out.append(build_log_route(scene, len(out), unit.path, unit.record))
        except (OSError, ValueError) as exc:
            problems.append(str(exc) if unit.path in str(exc) else f"{unit.path} record {unit.record}: {exc}")
            warnings.warn(f"--routes {spec}: skipped {problems[-1]}", RuntimeWarning, stacklevel=2)
            continue
        for row in _vehicle_seats(scene) if seats == "vehicles" else ():
            try:
                seat = build_log_route(scene, len(out), unit.path, unit.record, ego_row=row)
            except ValueError:  # a vehicle on no lane (a car park, a driveway): no route
                continue
            if seat.length >= MIN_SEAT_ROUTE_M:  # its logged path leaves the lanes it starts on early
                out.append(seat)
    if not out:
        raise ValueError(f"--routes {spec}: no route in {arg}" + (f" ({len(problems)} skipped: {problems[0]})" if problems else ""))
    return out


# --- the map as the Monitor and the report read it ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Lane:
    points: np.ndarray  # (n, 2)
    width: float
    left: list[int]  # lane indices
    right: list[int]
    successors: list[int]
    speed_limit: float


class LogTown:
    """A scenario map read as the synthetic :class:`~rap.sources.synthetic.roads.Town` is by the
    Monitor and the report: ``lanes`` (``points``, ``width``, ``left``/``right``/``successors``
    as lane indices, ``speed_limit``), ``junctions`` (none), ``drivable``, ``bounds``,
    ``road_lines`` ((points, RoadLineType)), ``road_edges``."""

    def __init__(self, scene: Scene) -> None:
        m = scene.map
        lanes = m.lanes
        limits = _limits(scene)

        def idx(ids) -> list[int]:
            out = []
            for i in ids:
                try:
                    out.append(lanes.index_of(int(i)))
                except KeyError:
                    pass
            return out

        self.lanes = [
            _Lane(_lane_xy(scene, i), float(lanes.width[i]), idx(lanes.left_neighbors[i]), idx(lanes.right_neighbors[i]), idx(lanes.successors[i]), float(limits[i]))
            for i in range(len(lanes))
        ]  # fmt: skip
        self.junctions: list = []
        self.drivable = m.drivable_polygon
        self.road_lines = [(m.road_lines.lines[k][:, :2], int(m.road_lines.types[k])) for k in range(len(m.road_lines))]
        self.road_edges = [m.road_edges.lines[k][:, :2] for k in range(len(m.road_edges))]
        pts = [ln.points for ln in self.lanes if len(ln.points)]
        allp = np.concatenate(pts) if pts else np.zeros((1, 2))
        b = self.drivable.bounds if not self.drivable.is_empty else (np.inf, np.inf, -np.inf, -np.inf)
        self.bounds = (min(b[0], allp[:, 0].min()), min(b[1], allp[:, 1].min()), max(b[2], allp[:, 0].max()), max(b[3], allp[:, 1].max()))


def _nominal_step(log_dt: float, dt: float) -> float:
    """The log's step [s], snapped to a whole multiple or fraction of the simulation step ``dt``
    when within 1 % of one (WOMD's timestamps jitter around 0.1 s: at 10 Hz a tick is then
    exactly one log step, and the replay hits the logged steps exactly)."""
    for ratio in (log_dt / dt, dt / log_dt):
        n = round(ratio)
        if n >= 1 and abs(ratio - n) < 0.01 * n:
            return dt * n if ratio == log_dt / dt else dt / n
    return log_dt


class _Sized:
    """A sized placeholder (the report counts agents, statics and walkers)."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return self.n


# --- the world --------------------------------------------------------------------------------


class LogWorld(RouteWorld):
    """One real-log-seeded route's world (see the module docs).

    Args:
        spec: the route.
        config: world settings (``dt``, ``history_s``; the synthetic traffic settings are unused).
        seed: unused (the log decides; kept for the World's signature).
        traffic: ``log`` (replay) or ``idm`` (the vehicles on lanes drive by IDM).
        scene: the scenario (default: loaded from ``spec.path`` / ``spec.record``).
    """

    def __init__(self, spec: LogRouteSpec, config: WorldConfig = WorldConfig(), seed: int = 0, traffic: str = "log", scene: Scene | None = None) -> None:
        if traffic not in TRAFFIC_MODES:
            raise ValueError(f"closed_loop.traffic must be one of {', '.join(TRAFFIC_MODES)}, got {traffic!r}")
        self.spec = spec
        self.config = config
        self.traffic = traffic
        self.dt = float(config.dt)
        log = _load_scene(spec.path, spec.record) if scene is None else scene
        if spec.ego_row >= 0:
            log = log.with_ego(spec.ego_row)
        self.log = log
        self.map = log.map
        self.town = LogTown(log)
        self.step0 = int(log.current_index)
        ts = log.timestamps
        self.log_dt = _nominal_step(float(np.median(np.diff(ts))) if len(ts) > 1 else 0.1, self.dt)
        self.log_steps = int(log.num_steps)
        self.min_duration_s = (self.log_steps - 1 - self.step0) * self.log_dt
        lanes = log.map.lanes
        self.lane_ids = np.asarray(lanes.ids, dtype=np.int64)
        self.limits = _limits(log)
        all_pts = [np.asarray(lanes.centerlines[i], dtype=np.float64) for i in range(len(lanes))]
        self._ground = np.concatenate(all_pts) if all_pts else np.zeros((1, 3))
        self.tick = 0
        self.rollout = RolloutConfig(dt=self.dt, horizon_s=round(4.0 / self.dt) * self.dt)
        self._route()
        self._lights_init()
        self._ego_init()
        self._tracks_init()
        self._cache: tuple[int, dict] | None = None
        self.past_steps = max(1, int(round(config.history_s / self.dt)))
        self.history = [self._frame_at(-j * self.dt) for j in range(self.past_steps, 0, -1)] + [self._frame()]
        self.light_history = [self.light_states(min(-j * self.dt, 0.0)) for j in range(self.past_steps, -1, -1)]

    # --- route --------------------------------------------------------------------------------

    def _route(self) -> None:
        lanes = self.log.map.lanes
        self.route_lanes = [lanes.index_of(int(i)) for i in self.spec.lanes]
        self.path = _path(self.log, self.route_lanes)
        row = self.log.ego_index
        c = np.array([self.log.tracks.x[row, self.step0], self.log.tracks.y[row, self.step0]])
        start = int(np.argmin(np.hypot(self.path.points[:, 0] - c[0], self.path.points[:, 1] - c[1])))
        self.offset = start * self.path.spacing
        self.length = float(self.spec.length)

    # --- lights -------------------------------------------------------------------------------

    def _lights_init(self) -> None:
        lights = self.log.traffic_lights
        lanes = self.log.map.lanes
        rows, idx = [], []
        for r, lane_id in enumerate(lights.lane_ids):
            try:
                i = lanes.index_of(int(lane_id))
            except KeyError:
                continue  # a light of a lane outside the map
            rows.append(r)
            idx.append(i)
        self.signal_lanes = np.array(idx, dtype=np.int64)
        self.signal_row = {int(c): k for k, c in enumerate(self.signal_lanes)}
        states = lights.states[rows].astype(np.int64).reshape(len(rows), -1)
        states = np.where(lights.valid[rows].reshape(len(rows), -1), states, int(LightState.UNKNOWN))
        for a, b in _NORMAL.items():
            states[states == a] = b
        self._light_table = states.astype(np.int8)  # (K, T) of the log
        self._stop_points = np.asarray(lights.stop_points[rows], dtype=np.float64).reshape(-1, 3)

    def _log_index(self, t: float) -> float:
        """Fractional log step at simulated time ``t`` [s] (exact steps snapped)."""
        f = self.step0 + t / self.log_dt
        r = round(f)
        return float(r) if abs(f - r) < 1e-6 else f

    def light_states(self, t: float | None = None) -> np.ndarray:
        """(K,) int8 LightState of the lights at time ``t`` (default now): the log's nearest
        step, the last one after the log (arrow states read as the plain ones)."""
        t = self.tick * self.dt if t is None else t
        if not len(self.signal_lanes):
            return np.zeros(0, np.int8)
        k = int(np.clip(round(self._log_index(t)), 0, self.log_steps - 1))
        return self._light_table[:, k].copy()

    # --- ego ----------------------------------------------------------------------------------

    def _ego_init(self) -> None:
        from rap.eval.navsim_scene import ego_state

        log, row, k = self.log, self.log.ego_index, self.step0
        tr = log.tracks
        h = float(tr.heading[row, k])
        t = np.array([np.cos(h), np.sin(h)])
        c = np.array([tr.x[row, k], tr.y[row, k]])
        rear = c - PACIFICA.rear_axle_to_center * t
        v = float(tr.vx[row, k] * t[0] + tr.vy[row, k] * t[1])
        e = ego_state(log, k)
        self.ego = np.zeros(len(StateIndex))
        self.ego[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]] = (rear[0], rear[1], h)
        self.ego[StateIndex.VELOCITY_X] = v
        self.ego[StateIndex.ACCELERATION_X] = e.ax
        self.ego[StateIndex.ANGULAR_VELOCITY] = e.yaw_rate
        self.ego[StateIndex.STEERING_ANGLE] = e.steering_angle
        self.start_speed = v
        self.plan_states: np.ndarray | None = None
        self.plan_index = 0

    # --- other agents ---------------------------------------------------------------------------

    def _tracks_init(self) -> None:
        log, k0 = self.log, self.step0
        tr = log.tracks
        others = [r for r in range(tr.num_agents) if r != log.ego_index]
        peds = [r for r in others if tr.types[r] == AgentType.PEDESTRIAN]
        self.rows = np.array([r for r in others if tr.types[r] != AgentType.PEDESTRIAN] + peds, dtype=np.int64)
        n = len(self.rows)
        self.agents = _Sized(n - len(peds))
        self.walkers = _Sized(len(peds))
        self.statics = np.zeros((0, 3))
        self.event_parked = -1
        self.roles = ["background"] * len(self.agents)
        # per row: its box size (the first valid step from now on, else any)
        valid = tr.valid[self.rows]
        first = np.where(valid[:, k0:].any(1), k0 + np.argmax(valid[:, k0:], 1), np.argmax(valid, 1))
        self.size = {name: getattr(tr, name)[self.rows, first].astype(np.float64) for name in ("length", "width", "height")}
        self.rear_offset = tr.rear_axle_offset[self.rows].astype(np.float64)
        last = self.log_steps - 1
        speed_last = np.hypot(tr.vx[self.rows, last], tr.vy[self.rows, last])
        self.hold = valid[:, last] & (speed_last < HOLD_SPEED)  # stays after the log
        self.idm_col = np.full(n, -1, np.int64)  # column -> IDM agent
        self.idm: IDMAgents | None = None
        if self.traffic == "idm":
            self._idm_init()

    def _idm_init(self) -> None:
        from rap.eval.navsim_scene import LaneLookup, lane_polygons

        log, k0 = self.log, self.step0
        tr, lanes = log.tracks, log.map.lanes
        cols = [j for j, r in enumerate(self.rows) if tr.types[r] == AgentType.VEHICLE and tr.valid[r, k0]]
        moving = []
        for j in cols:
            r = self.rows[j]
            ok = tr.valid[r, k0:]
            if ok.any() and np.hypot(tr.vx[r, k0:][ok], tr.vy[r, k0:][ok]).max() >= HOLD_SPEED:
                moving.append(j)
        rows = self.rows[moving]
        xy = np.stack([tr.x[rows, k0], tr.y[rows, k0]], -1)
        lane, arc = locate_on_lanes(lanes, xy, tr.heading[rows, k0])
        lookup = LaneLookup(log, lane_polygons(log))
        paths, s0, taken = [], [], []
        self.idm_changes: dict[int, LaneChange] = {}
        for j, r, li, a in zip(moving, rows, lane, arc):
            if li < 0:
                continue
            chain, after = [int(li)], []  # after: the lanes past its first logged lane change
            for lane_id in lookup.traversed(int(r), k0):  # the lanes it drives in the log, as a successor chain
                i = lanes.index_of(int(lane_id))
                last = after[-1] if after else chain[-1]
                if i in _successor_indices(log, last):
                    (after if after else chain).append(i)
                elif not after and i in self.town.lanes[chain[-1]].left + self.town.lanes[chain[-1]].right:
                    after.append(i)  # a lane change off chain[-1] into its neighbour i
            done = float(sum(geometry.polyline_length(_lane_xy(log, i)) for i in chain)) - float(a)
            full = _extend(log, chain, _IDM_ROUTE_M - done) if done < _IDM_ROUTE_M else chain
            path = _path(log, full)
            if path.length < 1.0 or a >= path.length - 1.0:
                continue
            if after:
                self._plan_change(len(paths), chain, after, float(a))
            paths.append(path)
            s0.append(float(a))
            taken.append(j)
        taken = np.array(taken, dtype=np.int64)
        r = self.rows[taken]
        h = tr.heading[r, k0]
        v = np.maximum(tr.vx[r, k0] * np.cos(h) + tr.vy[r, k0] * np.sin(h), 0.0)
        self.idm = IDMAgents(Routes.stack(paths), np.array(s0), v, self.size["length"][taken], self.size["width"][taken], params=IDMParameters(), track_index=r)
        self.idm_col[taken] = np.arange(len(taken))
        self.idm_cols = taken
        self.idm_stops = signal_stops(self.idm.routes, self.signal_row)
        self.idm_signs = SignStops(self.idm.routes.lane_ids, self.idm.routes.lane_starts, self.log.map.lanes, self.map.stop_signs)

    def _plan_change(self, k: int, chain: list[int], after: list[int], arc: float) -> None:
        """IDM agent ``k``'s logged lane change off ``chain[-1]`` into ``after[0]``, pending
        (:mod:`~rap.eval.closed_loop.lane_changes`) while its window on the source lane is
        ahead of (or around) its start ``arc``."""
        lengths = [float(geometry.polyline_length(_lane_xy(self.log, i))) for i in chain]
        window = lane_change_window(sum(lengths[:-1]), lengths[-1])
        if window is None or window[1] - blend_length(0.0) < arc:
            return
        then = _extend(self.log, list(after), _IDM_ROUTE_M)[1:]
        self.idm_changes[k] = LaneChange(tuple(chain[:-1]), chain[-1], after[0], tuple(then), (max(window[0], arc), window[1]))

    def _change_lanes(self) -> None:
        """Starts the IDM agents' logged lane changes when their gap is safe."""
        if not self.idm_changes:
            return
        for k in ready_changes(self.idm_changes, self.idm, self.town, self._gap_boxes(), self.idm_cols + 1):
            ch = self.idm_changes.pop(k)
            path = change_path(self.town, self.limits, ch, float(self.idm.s[k]), float(self.idm.v[k]))
            self.idm = dataclasses.replace(self.idm, routes=self.idm.routes.with_route(k, path))
            self.idm_stops = signal_stops(self.idm.routes, self.signal_row)
            self.idm_signs = self.idm_signs.rerouted(self.idm.routes.lane_ids, self.idm.routes.lane_starts, self.log.map.lanes, self.map.stop_signs)
            self._cache = None

    def _log_states(self, t: float) -> dict[str, np.ndarray]:
        """Every column's logged box at time ``t`` (interpolated between log steps; after the
        log: held where standing, else invalid; before it: extrapolated backwards)."""
        tr, rows = self.log.tracks, self.rows
        f = self._log_index(t)
        last = self.log_steps - 1
        if f < 0:  # before the log: the first step moved back at its velocity
            dt = f * self.log_dt
            out = {k: getattr(tr, k)[rows, 0].astype(np.float64) for k in ("x", "y", "heading", "vx", "vy")}
            out["x"] = out["x"] + out["vx"] * dt
            out["y"] = out["y"] + out["vy"] * dt
            out["valid"] = tr.valid[rows, 0].copy()
            return out
        if f > last:
            out = {k: getattr(tr, k)[rows, last].astype(np.float64) for k in ("x", "y", "heading")}
            out["vx"], out["vy"] = np.zeros(len(rows)), np.zeros(len(rows))
            out["valid"] = self.hold.copy()
            return out
        i = int(np.floor(f))
        w = f - i
        if w == 0.0:
            out = {k: getattr(tr, k)[rows, i].astype(np.float64) for k in ("x", "y", "heading", "vx", "vy")}
            out["valid"] = tr.valid[rows, i].copy()
            return out
        a, b = i, i + 1
        out = {k: (1 - w) * getattr(tr, k)[rows, a] + w * getattr(tr, k)[rows, b] for k in ("x", "y", "vx", "vy")}
        out["heading"] = geometry.wrap_angle(tr.heading[rows, a] + w * geometry.wrap_angle(tr.heading[rows, b] - tr.heading[rows, a]))
        out["valid"] = tr.valid[rows, a] & tr.valid[rows, b]
        return out

    def others(self) -> dict[str, np.ndarray]:
        """Every actor but the ego: ``x, y, heading, vx, vy, length, width, height, valid`` (N,)
        (non-pedestrians first, then pedestrians; logged or IDM-driven), ``types`` (N,) int8
        and ``ids`` (N,) (the log's track ids)."""
        if self._cache is not None and self._cache[0] == self.tick:
            return self._cache[1]
        o = self._log_states(self.time_s)
        if self.idm is not None and len(self.idm):
            cols = self.idm_cols
            poses = self.idm.poses()
            v = np.where(self.idm.active, self.idm.v, 0.0)
            o["x"][cols], o["y"][cols], o["heading"][cols] = poses[:, 0], poses[:, 1], poses[:, 2]
            o["vx"][cols], o["vy"][cols] = v * np.cos(poses[:, 2]), v * np.sin(poses[:, 2])
            o["valid"][cols] = self.idm.active
        tr = self.log.tracks
        o.update(
            length=self.size["length"], width=self.size["width"], height=self.size["height"],
            types=tr.types[self.rows].astype(np.int8), ids=tr.ids[self.rows].astype(np.int64),
        )  # fmt: skip
        self._cache = (self.tick, o)
        return o

    def _frame_at(self, t: float) -> dict[str, np.ndarray]:
        """A history frame at ``t`` <= 0 from the log (the ego's logged box too)."""
        o = self._log_states(t)
        row = self.log.ego_index
        tr = self.log.tracks
        f = self._log_index(t)
        k = int(np.clip(round(f), 0, self.log_steps - 1))
        dt = min(f, 0.0) * self.log_dt
        ex, ey = tr.x[row, k] + tr.vx[row, k] * dt, tr.y[row, k] + tr.vy[row, k] * dt
        return {
            "x": np.concatenate([[ex], o["x"]]), "y": np.concatenate([[ey], o["y"]]), "heading": np.concatenate([[tr.heading[row, k]], o["heading"]]),
            "vx": np.concatenate([[tr.vx[row, k]], o["vx"]]), "vy": np.concatenate([[tr.vy[row, k]], o["vy"]]), "valid": np.concatenate([[True], o["valid"]]),
        }  # fmt: skip

    # --- stepping -------------------------------------------------------------------------------

    def step(self) -> None:
        """Advances the world by one tick."""
        states = self.light_states()
        if self.plan_states is not None and self.plan_index + 1 < len(self.plan_states):
            self.plan_index += 1
            self.ego = self.plan_states[self.plan_index].copy()
        else:
            self.ego[[StateIndex.VELOCITY_X, StateIndex.VELOCITY_Y, StateIndex.ACCELERATION_X, StateIndex.ACCELERATION_Y]] = 0.0
        if self.idm is not None and len(self.idm):
            self._change_lanes()
            c, h, _ = self.ego_box()
            vw = self.ego_world_velocity()
            parts = [Boxes.from_poses(np.array([c[0]]), np.array([c[1]]), np.array([h]), np.array([PACIFICA.length]), np.array([PACIFICA.width]), np.array([vw[0]]), np.array([vw[1]]))]
            o = self.others()
            logged = o["valid"].copy()
            logged[self.idm_cols] = False
            if logged.any():
                j = np.flatnonzero(logged)
                parts.append(Boxes.from_poses(o["x"][j], o["y"][j], o["heading"][j], o["length"][j], o["width"][j], o["vx"][j], o["vy"][j]))
            idm = self.idm
            stop_gap = np.minimum(light_stop_gaps(idm, self.idm_stops, states), self.idm_signs.stop_gaps(self.dt, idm.s, idm.v, idm.length, idm.active))
            self.idm = idm.step(self.dt, Boxes.concatenate(parts), stop_gap=stop_gap)
        self.tick += 1
        self._cache = None
        self.history.append(self._frame())
        self.light_history.append(self.light_states())
        keep = self.past_steps + 1
        if len(self.history) > keep:
            del self.history[:-keep], self.light_history[:-keep]

    # --- snapshots --------------------------------------------------------------------------------

    def _ground_z(self, xy: np.ndarray) -> np.ndarray:
        """(N,) z [m] of the nearest lane centerline point (WOMD maps are not at z = 0)."""
        g = self._ground
        d = (xy[:, None, 0] - g[None, :, 0]) ** 2 + (xy[:, None, 1] - g[None, :, 1]) ** 2
        return g[np.argmin(d, axis=1), 2] if g.shape[1] > 2 else np.zeros(len(xy))

    def snapshot(self, progress: float | None = None) -> Scene:
        """The world as a Scene (as :meth:`World.snapshot <rap.eval.closed_loop.world.World.snapshot>`):
        the recorded past, now, and :data:`~rap.eval.closed_loop.world.FUTURE_STEPS` steps
        extrapolated at constant velocity (no logged future: the same information as the
        synthetic world's); the scenario's map; the lights as logged (their future too, held
        after the log); the ego is row 0, its route ahead ``ego_route``."""
        arr, valid, t = track_arrays(self.history, self.dt)
        n, steps = valid.shape
        p = len(self.history)
        now = self.history[-1]
        o = self.others()
        length = np.concatenate([[PACIFICA.length], o["length"]]).astype(np.float32)
        width = np.concatenate([[PACIFICA.width], o["width"]]).astype(np.float32)
        height = np.concatenate([[_EGO_HEIGHT], o["height"]]).astype(np.float32)
        ground = self._ground_z(np.stack([now["x"], now["y"]], 1))
        z = np.repeat((ground + 0.5 * height)[:, None], steps, 1)
        tracks = AgentTracks(
            ids=np.concatenate([[self.log.tracks.ids[self.log.ego_index]], o["ids"]]).astype(np.int64),
            types=np.concatenate([[int(AgentType.VEHICLE)], o["types"]]).astype(np.int8),
            x=arr["x"], y=arr["y"], z=z, heading=arr["heading"], vx=arr["vx"], vy=arr["vy"],
            length=np.repeat(length[:, None], steps, 1), width=np.repeat(width[:, None], steps, 1),
            height=np.repeat(height[:, None], steps, 1), valid=valid,
            rear_axle_offset=np.concatenate([[PACIFICA.rear_axle_to_center], self.rear_offset]).astype(np.float32),
        )  # fmt: skip
        states = light_track(self, t)
        k = len(self.signal_lanes)
        lights = TrafficLights(lane_ids=self.lane_ids[self.signal_lanes], stop_points=self._stop_points.copy(), states=states, valid=np.ones((k, steps), bool))
        return Scene(
            scene_id=f"closed-loop-{self.spec.route_id}", source=self.spec.town_name,
            timestamps=(np.arange(steps) + self.tick - (p - 1)) * self.dt, current_index=p - 1, tracks=tracks, ego_index=0,
            map=self.map, traffic_lights=lights, ego_route=self.route_ahead(self.progress_hint() if progress is None else progress),
        )  # fmt: skip

