"""The closed-loop world: a synthetic town stepped at a fixed rate around an ego that an agent
drives.

Per tick (``dt``, 0.1 s by default):

* Traffic lights follow the town's timed schedule (:func:`~rap.sources.synthetic.roads.light_schedule`);
  a ``red_light`` event holds the ego's light at STOP until the ego has waited at it.
* Background vehicles are :class:`rap.sim.idm.IDMAgents` (the IDM shared with the synthetic
  world) on random lane routes: they follow each other, brake for the ego and for parked cars
  in their path, and stop at red lights (at yellow when they need at most 3 m/s^2). At
  all-way stops they stop at the line, stand 1 s and go first come, first served (the ego,
  standing in its stop area, takes its turn too); at junction connectors without a light or a
  sign they yield to vehicles inside crossing connectors
  (:mod:`~rap.eval.closed_loop.junction_rules`; the emergency vehicle, which ignores signs,
  claims its way through junctions from before it appears, when the ego comes within 60 m of
  its appearance point, as if heard). A share of those starting on a road lane with a
  same-direction neighbour (``lane_change_fraction``) have routes that leave from the
  neighbour: they change lanes into a safe gap (:mod:`~rap.eval.closed_loop.lane_changes`,
  MOBIL's safety criterion, the ego included as a follower) or, finding none before the
  lane's end, keep their lane. One that has stood still for 30 s other than
  at a red light or a stop line leaves the world (gridlocks would otherwise block the ego for
  good).
* Event actors (see :mod:`rap.eval.closed_loop.routes`) are IDM agents too (the braking lead
  vehicle, the crossing vehicle, the merging traffic, the cut-in vehicle (standing in the
  neighbour lane until the ego comes close, then a forced lane change into the ego's lane
  ahead of it), the emergency vehicle: on the ego's route
  lanes up to the event lane, then straight on (:func:`~rap.eval.closed_loop.routes.ev_lanes`),
  at the event's constant ``speed`` (curves at up to 5 m/s^2), ignoring lights, with a
  short headway; it appears :data:`~rap.eval.closed_loop.routes.EV_BEHIND_M` behind the ego
  when the ego reaches the event's arc, and no background vehicle's route uses the lanes it
  drives before passing nor the event lane's neighbours), static boxes (parked vehicles) or
  pedestrians (:class:`~rap.eval.closed_loop.pedestrians.Walkers`: the ``ped_crossing``
  walker, which background vehicles brake for as for any box in their path).
* Background pedestrians cross the crosswalks of all-way-stop junctions (where every vehicle
  stops anyway; ``crosswalk_pedestrians_per_min`` per crosswalk, from either side at 1.2-1.6
  m/s): each steps out once its time has come and no vehicle's box centre (the ego's included)
  is within 3 m plus 3 s of its speed of the crosswalk, and walks across without stopping.
* The ego starts at the route's ``start_speed`` along the route (``standing_start``: at rest),
  its recorded past extrapolated backwards at that velocity (every other track's too: at their
  starting velocities).
* The ego executes the last plan: every query, the plan is turned into a 10 Hz rollout by the
  LQR tracker on the kinematic bicycle (:func:`rap.sim.tracker.simulate`) and the world takes
  one state of it per tick.

:meth:`World.snapshot` writes the state as a :class:`~rap.scene.Scene` (the past ``history_s``
as recorded, the next 5.1 s extrapolated at constant velocity, lights as scheduled), which the
observer renders and privileged agents plan on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import shapely

from rap import geometry
from rap.eval.closed_loop.junction_rules import EGO_CLAIM_S, STOPPED, JunctionRules
from rap.eval.closed_loop.lane_changes import LaneChange, blend_length, change_path, lane_change_window, ready_changes
from rap.eval.closed_loop.pedestrians import PEDESTRIAN_SIZE, Walkers, crossing_line, crosswalk_crossings, may_cross
from rap.eval.closed_loop.routes import EV_BEHIND_M, EV_LATERAL_ACCEL, RouteSpec, ev_lanes, route_town
from rap.scene import AgentTracks, AgentType, LightState, Scene, TrafficLights
from rap.sim.bicycle import PACIFICA, StateIndex
from rap.sim.idm import Boxes, IDMAgents, IDMParameters, Routes, route_path
from rap.sim.tracker import RolloutConfig, simulate
from rap.sources.synthetic.roads import light_schedule, map_elements
from rap.trajectory import Trajectory

__all__ = ["EV_SIZE", "FUTURE_STEPS", "ROUTE_AHEAD_M", "YELLOW_DECEL", "RouteWorld", "World", "WorldConfig", "light_stop_gaps", "light_track", "signal_stops", "track_arrays"]

FUTURE_STEPS = 51  # snapshot steps after now (5 s at 0.1 s), extrapolated at constant velocity
ROUTE_AHEAD_M = 200.0  # [m] of route in a snapshot's ego_route
_EGO_HEIGHT = 1.777  # [m]
_CAR = (4.6, 1.9, 1.5)  # [m] length, width, height of event and parked vehicles
_STOPPED = 0.5  # [m/s] "waiting at the light"
_STUCK_S = 30.0  # [s] a background vehicle standing this long, not at a red light, leaves (gridlock)
_LEAD_SPEED = 0.9  # lead vehicle's desired speed, share of the speed limit
_LEAD_TRIGGER_GAP = 40.0  # [m] bumper gap: the lead brakes once past the event's arc with the ego this close ...
_LEAD_ROOM_DECEL = 1.2  # [m/s^2] ... and able to stop behind it at this deceleration (or 60 m later in any case)
_PED_ROOM_DECEL = 2.5  # [m/s^2] the pedestrian steps out at the latest when the ego needs this much to stop before its line
_PED_MARGIN = 3.0  # [m] ... this far before it
_PED_CLEAR = 4.0  # [m] no parked car within this distance of the pedestrian's crossing line
EV_SIZE = (5.4, 2.0, 2.3)  # [m] length, width, height of the emergency vehicle (an ambulance)
_EV_HEARD_M = 60.0  # [m] the ego this far before the emergency vehicle's appearance: background traffic hears it
# the emergency vehicle's IDM driver: brisk, short headway
_EV_IDM = {"max_accel": 2.5, "comfort_decel": 3.0, "time_headway": 0.8}
_CUT_IN_IDM = {"max_accel": 2.5, "time_headway": 1.0}  # the cut-in vehicle pulls out briskly
_CUT_IN_MIN_GAP = 8.0  # [m] it pulls out at the latest when the ego's front bumper is this close to its rear
_LANE_CHANGE_STREAM = 7  # seeds the lane-change draws apart from the traffic's own stream
_CROSSWALK_STREAM = 11  # seeds the background pedestrians apart from the traffic's own stream
_CROSSWALK_HORIZON_S = 90.0  # [s] background pedestrians arrive up to this plus 0.4 s per route metre (past the route timeout)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """World settings.

    Attributes:
        dt: [s] simulation step.
        history_s: [s] past kept in snapshots.
        density: background vehicles per 100 m of road lane at the start.
        parked_fraction: share of parking-strip spots with a parked car.
        ego_clearance: [m] no background vehicle starts closer than this to the ego.
        lane_change_fraction: share of the background vehicles starting on a road lane with a
            same-direction neighbour whose route leaves from the neighbour
            (:mod:`~rap.eval.closed_loop.lane_changes`).
        crosswalk_pedestrians_per_min: background pedestrians arriving per minute at each
            crosswalk of an all-way-stop junction (0: none).
        standing_start: the ego starts at rest (else at the route's ``start_speed``).
    """

    dt: float = 0.1
    history_s: float = 2.0
    density: float = 0.6
    parked_fraction: float = 0.4
    ego_clearance: float = 25.0
    lane_change_fraction: float = 0.3
    crosswalk_pedestrians_per_min: float = 0.5
    standing_start: bool = False


class RouteWorld:
    """What every closed-loop world shares: the ego (a bicycle state executing the tracker's
    rollout of the agent's last plan), its route (``path``, ``offset``, ``route_lanes``,
    ``lane_ids``) and the clock (``tick``, ``dt``). Subclasses set those and provide
    ``others()``, ``step()`` and ``snapshot()``: :class:`World` (a synthetic town) and
    :class:`rap.eval.closed_loop.log_world.LogWorld` (a logged scenario)."""

    def route_pose(self, arc: float) -> tuple[np.ndarray, np.ndarray]:
        """Position (2,) and unit tangent (2,) at route arc ``arc`` [m]."""
        pts, tan = self.path.points, self.path.tangents
        f = np.clip((arc + self.offset) / self.path.spacing, 0, len(pts) - 1.000001)
        i = int(f)
        w = f - i
        p = pts[i] * (1 - w) + pts[i + 1] * w
        t = tan[i] * (1 - w) + tan[i + 1] * w
        return p, t / max(np.linalg.norm(t), 1e-9)

    def route_points(self) -> np.ndarray:
        """(M, 2) route samples and (M,) their route arcs [m]."""
        return self.path.points, np.arange(len(self.path.points)) * self.path.spacing - self.offset

    def lane_arc(self, k: int) -> float:
        """Route arc [m] where route lane ``k`` starts."""
        return float(self.path.lane_starts[k]) - self.offset

    def route_ahead(self, progress: float) -> tuple[int, ...]:
        """Lane ids of the route from the lane before the one at route arc ``progress`` to the
        last lane starting within :data:`ROUTE_AHEAD_M` of it (a route that comes back through
        a junction later must not show its later pass as the way on)."""
        starts = self.path.lane_starts[: len(self.route_lanes)] - self.offset
        k = int(np.searchsorted(starts, progress, side="right")) - 1
        end = int(np.searchsorted(starts, progress + ROUTE_AHEAD_M, side="right"))
        return tuple(int(self.lane_ids[i]) for i in self.route_lanes[max(k - 1, 0) : max(end, k + 1)])

    def progress_hint(self) -> float:
        """Route arc [m] of the ego box centre's projection (local search, for events)."""
        c, _, _ = self.ego_box()
        pts, arcs = self.route_points()
        return float(arcs[int(np.argmin(np.hypot(pts[:, 0] - c[0], pts[:, 1] - c[1])))])

    @property
    def time_s(self) -> float:
        """[s] simulated time."""
        return self.tick * self.dt

    def ego_box(self) -> tuple[np.ndarray, float, float, float]:
        """Ego box centre (2,) [m], heading [rad], speed [m/s] and (longitudinal) velocity."""
        h = float(self.ego[StateIndex.HEADING])
        c = self.ego[[StateIndex.X, StateIndex.Y]] + PACIFICA.rear_axle_to_center * np.array([np.cos(h), np.sin(h)])
        return c, h, float(self.ego[StateIndex.VELOCITY_X])

    def ego_world_velocity(self) -> np.ndarray:
        """(2,) [m/s]"""
        h = float(self.ego[StateIndex.HEADING])
        return geometry.rotate(self.ego[[StateIndex.VELOCITY_X, StateIndex.VELOCITY_Y]], h)

    def ego_world_acceleration(self) -> np.ndarray:
        """(2,) [m/s^2]"""
        h = float(self.ego[StateIndex.HEADING])
        return geometry.rotate(self.ego[[StateIndex.ACCELERATION_X, StateIndex.ACCELERATION_Y]], h)

    def execute(self, plan: Trajectory) -> None:
        """Executes ``plan`` (ego-frame poses at the rear axle) from now on: the tracker's rollout
        on the bicycle gives the ego's next states."""
        states = simulate(np.asarray(plan.poses, dtype=np.float64)[None], plan.sampling, self.ego.copy(), self.rollout)
        self.plan_states = states[0]
        self.plan_index = 0

    def _gap_boxes(self) -> dict[str, np.ndarray]:
        """Every box for lane-change gap checks (the ego first, then ``others()``'s rows): ``x, y, heading, length, v, valid``."""
        o = self.others()
        c, h, v = self.ego_box()
        return {
            "x": np.concatenate([[c[0]], o["x"]]), "y": np.concatenate([[c[1]], o["y"]]), "heading": np.concatenate([[h], o["heading"]]),
            "length": np.concatenate([[PACIFICA.length], o["length"]]), "v": np.concatenate([[max(v, 0.0)], np.hypot(o["vx"], o["vy"])]),
            "valid": np.concatenate([[True], o["valid"]]),
        }  # fmt: skip

    def _frame(self) -> dict[str, np.ndarray]:
        """One row per track (ego first): x, y, heading, vx, vy, valid (box centres)."""
        o = self.others()
        c, h, _ = self.ego_box()
        vw = self.ego_world_velocity()
        return {
            "x": np.concatenate([[c[0]], o["x"]]), "y": np.concatenate([[c[1]], o["y"]]), "heading": np.concatenate([[h], o["heading"]]),
            "vx": np.concatenate([[vw[0]], o["vx"]]), "vy": np.concatenate([[vw[1]], o["vy"]]), "valid": np.concatenate([[True], o["valid"]]),
        }  # fmt: skip


class World(RouteWorld):
    """One route's world (see the module docs).

    Args:
        spec: the route.
        config: world settings.
        seed: traffic seed (with ``spec.seed``).
    """

    def __init__(self, spec: RouteSpec, config: WorldConfig = WorldConfig(), seed: int = 0) -> None:
        self.spec = spec
        self.config = config
        self.dt = float(config.dt)
        self.rng = np.random.default_rng([int(spec.seed), int(seed)])
        self.seed = int(seed)
        self.town = route_town(spec.town_seed)
        self.map = map_elements(self.town)
        self.lane_ids = np.array([ln.id for ln in self.town.lanes], dtype=np.int64)
        self.limits = np.array([ln.speed_limit for ln in self.town.lanes])
        self.tick = 0
        self.rollout = RolloutConfig(dt=self.dt, horizon_s=round(4.0 / self.dt) * self.dt)
        self._route()
        self._lights_init()
        self._ego_init()
        self._walkers_init()
        self._crosswalk_walkers_init()
        self._statics_init()
        self._agents_init()
        self.past_steps = max(1, int(round(config.history_s / self.dt)))
        self._history_init()
        self.light_history = [self.light_states()] * (self.past_steps + 1)

    # --- set-up ---------------------------------------------------------------------------------

    def _lane_xy(self, i: int) -> np.ndarray:
        return self.town.lanes[i].points

    def _route(self) -> None:
        spec, town = self.spec, self.town
        lanes = list(spec.lanes)
        # extend past the route's end so lookahead and progress never run out
        ext = 0.0
        while ext < 80.0 and town.lanes[lanes[-1]].successors:
            nxt = min(town.lanes[lanes[-1]].successors, key=lambda i: abs(_turn(town, i)))
            lanes.append(int(nxt))
            ext += float(np.linalg.norm(np.diff(self._lane_xy(nxt), axis=0), axis=1).sum())
        self.route_lanes = lanes
        self.path = route_path([self._lane_xy(i) for i in lanes], [self.limits[i] for i in lanes], lanes, spacing=0.5, smoothing=2.0)
        self.offset = float(spec.start_arc)  # path arc of route arc 0
        self.length = float(spec.length)

    def _lights_init(self) -> None:
        self.signal_lanes = np.asarray(self.town.signal_lanes, dtype=np.int64)
        self.signal_row = {int(c): r for r, c in enumerate(self.signal_lanes)}
        self.hold_row = -1
        self.hold_waited = 0.0
        self._schedule = light_schedule(self.town, np.arange(1024) * self.dt) if len(self.signal_lanes) else np.zeros((0, 0), np.int8)
        if self.spec.event.kind == "red_light":
            self.hold_row = self.signal_row[self.spec.event.lane]

    def light_states(self, t: float | None = None) -> np.ndarray:
        """(K,) int8 LightState of the signalized connectors at time ``t`` (default now)."""
        t = self.tick * self.dt if t is None else t
        if not len(self.signal_lanes):
            return np.zeros(0, np.int8)
        k = int(round(t / self.dt))
        if k >= self._schedule.shape[1]:  # the schedule, tabulated at dt, grows in chunks
            steps = max(2 * self._schedule.shape[1], k + 1)
            self._schedule = light_schedule(self.town, np.arange(steps) * self.dt)
        states = self._schedule[:, k].copy()
        if self.hold_row >= 0:
            states[self.hold_row] = int(LightState.STOP)
        return states

    def _ego_init(self) -> None:
        p, t = self.route_pose(0.0)
        h = float(np.arctan2(t[1], t[0]))
        rear = p - PACIFICA.rear_axle_to_center * t
        self.ego = np.zeros(len(StateIndex))
        self.ego[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]] = (rear[0], rear[1], h)
        self.start_speed = 0.0 if self.config.standing_start else float(self.spec.start_speed)
        self.ego[StateIndex.VELOCITY_X] = self.start_speed
        self.plan_states: np.ndarray | None = None
        self.plan_index = 0

    def _walkers_init(self) -> None:
        """The ``ped_crossing`` walker: on the right sidewalk at the event's arc, crossing the
        whole road (:func:`~rap.eval.closed_loop.pedestrians.crossing_line`)."""
        self.walkers = Walkers.empty()
        self.ped_line: tuple[np.ndarray, np.ndarray] | None = None
        self.ped_lateral = 0.0
        ev = self.spec.event
        if ev.kind != "ped_crossing":
            return
        p, t = self.route_pose(ev.arc)
        start, goal, lateral = crossing_line(self.town.drivable, p, t)
        self.walkers = Walkers.create(start[None], goal[None], np.array([ev.speed]))
        self.ped_line = (start, goal)
        self.ped_lateral = lateral

    def _crosswalk_walkers_init(self) -> None:
        """Background pedestrians on the crosswalks of the all-way-stop junctions
        (:func:`~rap.eval.closed_loop.pedestrians.crosswalk_crossings`, drawn from a stream of
        their own), after the event's walker."""
        n = len(self.walkers)
        self.walk_times = np.full(n, np.inf)  # the event's walker goes by its own rule
        self.walk_zones: list = [None] * n
        rate = self.config.crosswalk_pedestrians_per_min
        crosswalks = [c for c in self.town.crosswalks if not self.town.junctions[c.junction].signalized]
        if rate <= 0 or not crosswalks:
            return
        rng = np.random.default_rng([int(self.spec.seed), self.seed, _CROSSWALK_STREAM])
        walkers, times, which = crosswalk_crossings(crosswalks, rng, rate, _CROSSWALK_HORIZON_S + 0.4 * self.length)
        zones = [shapely.Polygon(c.ring) for c in crosswalks]
        self.walkers = Walkers.concatenate([self.walkers, walkers])
        self.walk_times = np.concatenate([self.walk_times, times])
        self.walk_zones += [zones[k] for k in which]

    @staticmethod
    def _shifted(frame: dict[str, np.ndarray], dt: float) -> dict[str, np.ndarray]:
        """``frame`` moved ``dt`` [s] at its velocities."""
        return {**frame, "x": frame["x"] + frame["vx"] * dt, "y": frame["y"] + frame["vy"] * dt}

    def _statics_init(self) -> None:
        spots = self.town.parking_spots
        take = self.rng.random(spots.shape[0]) < self.config.parked_fraction
        poses = [tuple(s) for s in spots[take]]
        self.event_parked = -1
        ev = self.spec.event
        if ev.kind == "parked":
            p, t = self.route_pose(ev.arc)
            half_lane = 0.5 * self.town.lanes[ev.lane].width
            lateral = -(half_lane - ev.intrusion + 0.5 * _CAR[1])
            c = p + lateral * np.array([-t[1], t[0]])
            self.event_parked = len(poses)
            poses.append((c[0], c[1], float(np.arctan2(t[1], t[0]))))
        ego_xy = self.ego[[StateIndex.X, StateIndex.Y]]
        poses = [q for k, q in enumerate(poses) if k == self.event_parked or np.hypot(q[0] - ego_xy[0], q[1] - ego_xy[1]) > 6.0]
        if self.ped_line is not None:  # the pedestrian's way across stays free of parked cars
            line = shapely.LineString(self.ped_line)
            poses = [q for k, q in enumerate(poses) if k == self.event_parked or line.distance(shapely.Point(q[0], q[1])) > _PED_CLEAR]
        self.statics = np.array(poses, dtype=np.float64).reshape(-1, 3)
        if self.event_parked >= 0:
            self.event_parked = len(self.statics) - 1

    def _idm_route(self, lanes: list[int]):
        return route_path([self._lane_xy(i) for i in lanes], [self.limits[i] for i in lanes], lanes, spacing=0.5, smoothing=2.0)

    def _agents_init(self) -> None:
        town, rng, ev = self.town, self.rng, self.spec.event
        paths, s0, v0, obey, role = [], [], [], [], []
        bg_starts: list[tuple[int, float]] = []  # background vehicles: start lane and arc
        ego_xy = self.ego[[StateIndex.X, StateIndex.Y]]
        placed: list[np.ndarray] = [ego_xy]
        banned = {ev.lane} if ev.kind == "parked" else {ev.other_lane} if ev.kind == "cut_in" else set()
        if ev.kind == "emergency_vehicle":  # the emergency vehicle's way up to the ego, and the lane to move into, are free
            k = self.route_lanes.index(ev.lane)
            starts = self.path.lane_starts[: k + 1] - self.offset
            ends = np.append(starts[1:], np.inf)
            way = [self.route_lanes[j] for j in range(k + 1) if ends[j] >= ev.arc - EV_BEHIND_M - 10.0]
            banned = set(way) | set(town.lanes[ev.lane].left) | set(town.lanes[ev.lane].right)
        for i, ln in enumerate(town.lanes):
            if ln.is_connector:
                continue
            length = float(np.linalg.norm(np.diff(ln.points, axis=0), axis=1).sum())
            for a in np.sort(rng.uniform(3.0, max(length - 3.0, 3.5), rng.poisson(length * self.config.density / 100.0))):
                route = [int(j) for j in _lanes_from(town, i, float(a), 300.0, rng)]
                xy = _point_at(ln.points, float(a))
                if banned & set(route) or any(np.hypot(*(xy - q)) < (self.config.ego_clearance if k == 0 else 10.0) for k, q in enumerate(placed)):
                    continue
                placed.append(xy)
                bg_starts.append((i, float(a)))
                paths.append(self._idm_route(route))
                s0.append(float(a))
                v0.append(0.7 * self.limits[i])
                obey.append(True)
                role.append("background")
        self.lead = self.crossing = -1
        if ev.kind == "lead_brake":
            self.lead = len(paths)
            lanes = self.route_lanes  # the ego's route, driven at 90 % of the speed limit
            paths.append(route_path([self._lane_xy(i) for i in lanes], [self.limits[i] for i in lanes], lanes, spacing=0.5, smoothing=2.0, speed_factor=_LEAD_SPEED))
            s0.append(self.offset + 22.0)
            v0.append(self.start_speed)
            obey.append(True)
            role.append("lead")
        if ev.kind == "crossing":
            other = ev.other_lane
            pred = town.lanes[other].predecessors[0]
            route = [pred, other] + [int(j) for j in _lanes_from(town, town.lanes[other].successors[0], 0.0, 80.0, None)]
            path = self._idm_route(route)
            self.crossing = len(paths)
            self.crossing_start = max(float(path.lane_starts[1]) - 24.0, 0.0)
            paths.append(path)
            s0.append(self.crossing_start)
            v0.append(0.0)
            obey.append(False)
            role.append("crossing")
        if ev.kind == "turn_traffic":
            for c in town.lanes[ev.other_lane].predecessors:
                if c == ev.lane or not town.lanes[c].predecessors:
                    continue
                feeder = town.lanes[c].predecessors[0]
                flen = float(np.linalg.norm(np.diff(self._lane_xy(feeder), axis=0), axis=1).sum())
                for back in (12.0, 30.0, 48.0):
                    if back > flen - 3.0:
                        continue
                    route = [feeder, c] + [int(j) for j in _lanes_from(town, ev.other_lane, 0.0, 150.0, rng)]
                    paths.append(self._idm_route(route))
                    s0.append(flen - back)
                    v0.append(0.5 * self.limits[feeder])
                    obey.append(True)
                    role.append("merge_traffic")
        self.cutin = -1
        if ev.kind == "cut_in":  # waits in the neighbour lane beside the event's arc, standing
            self.cutin = len(paths)
            other = town.lanes[ev.other_lane]
            beside = shapely.LineString(other.points).project(shapely.Point(*self.route_pose(ev.arc)[0]))
            route = [ev.other_lane] + [int(j) for j in _lanes_from(town, int(other.successors[0]), 0.0, 150.0, None)] if other.successors else [ev.other_lane]
            paths.append(self._idm_route(route))
            s0.append(float(beside))
            v0.append(0.0)
            obey.append(True)
            role.append("cut_in")
            k = self.route_lanes.index(ev.lane)
            after = tuple(int(j) for j in self.route_lanes[k + 1 :])
            self.cutin_change = LaneChange((), ev.other_lane, ev.lane, after, (0.0, np.inf), forced=True)
        self.ev = -1
        if ev.kind == "emergency_vehicle":
            self.ev = len(paths)
            lanes = ev_lanes(town, self.route_lanes, ev.lane, beyond=150.0)
            paths.append(route_path([self._lane_xy(i) for i in lanes], [ev.speed] * len(lanes), lanes, spacing=0.5, smoothing=2.0, lateral_accel=EV_LATERAL_ACCEL))
            s0.append(0.0)
            v0.append(0.0)
            obey.append(False)
            role.append("emergency")
        n = len(paths)
        dims = np.array([(EV_SIZE if r == "emergency" else _CAR) if r != "background" else (rng.uniform(4.2, 5.0), rng.uniform(1.75, 2.0), rng.uniform(1.4, 1.7)) for r in role]).reshape(n, 3)
        active = np.ones(n, bool)
        if self.crossing >= 0:
            active[self.crossing] = False
        params = IDMParameters(
            max_accel=rng.uniform(1.2, 2.2, n) if n else 1.5, time_headway=rng.uniform(1.0, 1.6, n) if n else 1.5,
        )  # fmt: skip
        if self.cutin >= 0:
            params = _with_driver(params, n, self.cutin, _CUT_IN_IDM)
        if self.ev >= 0:
            active[self.ev] = False
            params = _with_driver(params, n, self.ev, _EV_IDM)
        self.agents = IDMAgents(Routes.stack(paths), np.array(s0), np.array(v0), dims[:, 0], dims[:, 1], params=params, active=active)
        self.agent_height = dims[:, 2]
        self.obeys_lights = np.array(obey, dtype=bool)
        self.roles = role
        self.is_background = np.array([r == "background" for r in role], dtype=bool)
        self.stalled = np.zeros(n)
        self.agent_stops = signal_stops(self.agents.routes, self.signal_row)
        self._rules_init()
        self.lead_phase, self.lead_wait = "drive", 0.0
        self.ev_started = False
        self.cutin_phase = "wait"
        self._lane_changes_init(bg_starts, banned)

    def _lane_changes_init(self, starts: list[tuple[int, float]], banned: set[int]) -> None:
        """Pending lane changes of background vehicles (the first ``len(starts)`` agents), drawn
        from a stream of their own (the routes and starts above do not depend on them)."""
        self.changes: dict[int, LaneChange] = {}
        frac = self.config.lane_change_fraction
        if frac <= 0:
            return
        rng = np.random.default_rng([int(self.spec.seed), self.seed, _LANE_CHANGE_STREAM])
        town = self.town
        for k, (i, a) in enumerate(starts):
            ln = town.lanes[i]
            side = [int(j) for j in ln.left + ln.right if int(j) not in banned and town.lanes[int(j)].successors]
            if not side or rng.random() >= frac:
                continue
            target = side[int(rng.integers(len(side)))]
            then = _lanes_from(town, int(rng.choice(town.lanes[target].successors)), 0.0, 250.0, rng)
            if banned & set(then):
                continue
            window = lane_change_window(0.0, float(np.linalg.norm(np.diff(ln.points, axis=0), axis=1).sum()))
            if window is None or window[1] - blend_length(0.0) < a + 1.0:
                continue
            self.changes[k] = LaneChange((), i, target, tuple(int(j) for j in then), (max(window[0], a + 1.0), window[1]))

    def _rules_init(self) -> None:
        """Stop signs and unprotected connectors for the IDM agents (:mod:`~rap.eval.closed_loop.junction_rules`),
        and the ego's stop lines (route arc, junction) for its turn at all-way stops."""
        index = {int(x): i for i, x in enumerate(self.lane_ids)}
        self.stop_lanes = {index[int(c)] for lanes in self.map.stop_signs.lane_ids for c in lanes if int(c) in index}
        r = self.agents.routes
        self.rules = JunctionRules(self.town, r.lane_ids, r.lane_starts, r.length, self.obeys_lights, self.stop_lanes, self.signal_lanes)
        self.ego_stop_lines = [(self.lane_arc(k), self.town.lanes[i].junction) for k, i in enumerate(self.route_lanes) if i in self.stop_lanes]
        self.ego_claims: dict[float, float] = {}  # stop line's route arc -> when the ego stood at it
        self.ego_claims_done: set[float] = set()

    def set_agents(self, agents: IDMAgents, obey: np.ndarray, heights: np.ndarray | None = None) -> None:
        """Replaces the IDM agents by ``agents`` (all background vehicles; ``obey``: (A,) bool,
        following lights and junction rules): for hand-built situations."""
        n = len(agents)
        self.agents = agents
        self.agent_height = np.full(n, _CAR[2]) if heights is None else np.asarray(heights, dtype=np.float64)
        self.obeys_lights = np.asarray(obey, dtype=bool)
        self.roles = ["background"] * n
        self.is_background = np.ones(n, bool)
        self.stalled = np.zeros(n)
        self.agent_stops = signal_stops(agents.routes, self.signal_row)
        self.lead = self.crossing = self.ev = self.cutin = -1
        self.changes = {}
        self._rules_init()
        self._history_init()

    def _history_init(self) -> None:
        """The recorded past: every track at its starting velocity (constant-velocity backwards)."""
        first = self._frame()
        self.history = [self._shifted(first, -j * self.dt) for j in range(self.past_steps, 0, -1)] + [first]

    def _ego_waiting(self) -> dict[int, float]:
        """Junction -> when the ego stood (< :data:`~rap.eval.closed_loop.junction_rules.STOPPED` m/s)
        with its front bumper within 6 m before a stop line of its route it has not crossed yet
        (for at most :data:`~rap.eval.closed_loop.junction_rules.EGO_CLAIM_S` s)."""
        if not self.ego_stop_lines:
            return {}
        front = self.progress_hint() + 0.5 * PACIFICA.length
        v = abs(self.ego_box()[2])
        out = {}
        for arc, j in self.ego_stop_lines:
            if arc in self.ego_claims_done:
                continue
            if arc in self.ego_claims:
                if front > arc or self.time_s - self.ego_claims[arc] > EGO_CLAIM_S:
                    del self.ego_claims[arc]
                    self.ego_claims_done.add(arc)
                    continue
            elif arc - 6.0 <= front <= arc and v < STOPPED:
                self.ego_claims[arc] = self.time_s
            if arc in self.ego_claims:
                out[j] = min(out.get(j, np.inf), self.ego_claims[arc])
        return out

    def _rule_gaps(self) -> np.ndarray:
        a = self.agents
        if not self.rules.any_rules:
            return np.full(len(a), np.inf)
        c, h, _ = self.ego_box()
        ego_poly = shapely.Polygon(geometry.box_corners_2d(c[0], c[1], h, PACIFICA.length, PACIFICA.width))
        s, v, active = a.s, a.v, a.active
        if self.ev >= 0 and not self.ev_started and self.progress_hint() >= self.spec.event.arc - _EV_HEARD_M:
            # the emergency vehicle is heard before it appears: from _EV_HEARD_M before its
            # appearance, it claims its way from where it would appear (right of way only)
            s, v, active = s.copy(), v.copy(), active.copy()
            s[self.ev] = max(self.progress_hint() + self.offset - EV_BEHIND_M, 0.5 * EV_SIZE[0])
            v[self.ev], active[self.ev] = self.spec.event.speed, True
        return self.rules.stop_gaps(self.time_s, s, v, a.length, active, ego_poly, self._ego_waiting())

    # --- state ------------------------------------------------------------------------------------

    def others(self) -> dict[str, np.ndarray]:
        """Every actor but the ego: ``x, y, heading, vx, vy, length, width, height, valid`` (N,)
        (agents first, then static vehicles, then pedestrians), ``types`` (N,) int8
        :class:`~rap.scene.AgentType` and ``ids`` (N,) (track ids, 2..N+1)."""
        poses = self.agents.poses()
        v = np.where(self.agents.active, self.agents.v, 0.0)
        n_s, n_w = len(self.statics), len(self.walkers)
        wp, wv = self.walkers.positions(), self.walkers.velocities()
        ped = np.ones(n_w)
        return {
            "x": np.concatenate([poses[:, 0], self.statics[:, 0], wp[:, 0]]), "y": np.concatenate([poses[:, 1], self.statics[:, 1], wp[:, 1]]),
            "heading": np.concatenate([poses[:, 2], self.statics[:, 2], self.walkers.headings()]),
            "vx": np.concatenate([v * np.cos(poses[:, 2]), np.zeros(n_s), wv[:, 0]]), "vy": np.concatenate([v * np.sin(poses[:, 2]), np.zeros(n_s), wv[:, 1]]),
            "length": np.concatenate([self.agents.length, np.full(n_s, _CAR[0]), PEDESTRIAN_SIZE[0] * ped]),
            "width": np.concatenate([self.agents.width, np.full(n_s, _CAR[1]), PEDESTRIAN_SIZE[1] * ped]),
            "height": np.concatenate([self.agent_height, np.full(n_s, _CAR[2]), PEDESTRIAN_SIZE[2] * ped]),
            "valid": np.concatenate([self.agents.active, np.ones(n_s, bool), np.ones(n_w, bool)]),
            "types": np.concatenate([np.full(len(self.agents) + n_s, int(AgentType.VEHICLE)), np.full(n_w, int(AgentType.PEDESTRIAN))]).astype(np.int8),
            "ids": np.arange(2, 2 + len(self.agents) + n_s + n_w, dtype=np.int64),
        }  # fmt: skip

    # --- stepping ---------------------------------------------------------------------------------

    def _stop_gaps(self, states: np.ndarray) -> np.ndarray:
        return light_stop_gaps(self.agents, self.agent_stops, states, self.obeys_lights)

    def step(self) -> None:
        """Advances the world by one tick."""
        dt = self.dt
        states = self.light_states()
        # ego: the next state of the executed plan (standing still without one)
        if self.plan_states is not None and self.plan_index + 1 < len(self.plan_states):
            self.plan_index += 1
            self.ego = self.plan_states[self.plan_index].copy()
        else:
            self.ego[[StateIndex.VELOCITY_X, StateIndex.VELOCITY_Y, StateIndex.ACCELERATION_X, StateIndex.ACCELERATION_Y]] = 0.0
        # background and event vehicles
        c, h, _ = self.ego_box()
        vw = self.ego_world_velocity()
        ego = Boxes.from_poses(np.array([c[0]]), np.array([c[1]]), np.array([h]), np.array([PACIFICA.length]), np.array([PACIFICA.width]), np.array([vw[0]]), np.array([vw[1]]))
        st = self.statics
        parts = [ego]
        if len(st):
            parts.append(Boxes.from_poses(st[:, 0], st[:, 1], st[:, 2], np.full(len(st), _CAR[0]), np.full(len(st), _CAR[1])))
        if len(self.walkers):  # background vehicles brake for pedestrians in their way
            wp, wv, n_w = self.walkers.positions(), self.walkers.velocities(), len(self.walkers)
            parts.append(Boxes.from_poses(wp[:, 0], wp[:, 1], self.walkers.headings(), np.full(n_w, PEDESTRIAN_SIZE[0]), np.full(n_w, PEDESTRIAN_SIZE[1]), wv[:, 0], wv[:, 1]))
        obstacles = Boxes.concatenate(parts)
        self._change_lanes()
        self._cut_in_trigger()
        prev = self.agents
        stop_gap = np.minimum(self._stop_gaps(states), self._rule_gaps())
        nxt = prev.step(dt, obstacles, stop_gap=stop_gap) if len(prev) else prev
        nxt = self._events(prev, nxt)
        self._walkers_update()
        # gridlock: background vehicles standing for _STUCK_S away from a red light leave
        self.stalled = np.where(nxt.active & (nxt.v < 0.1) & ~np.isfinite(stop_gap), self.stalled + dt, 0.0)
        stuck = (self.stalled >= _STUCK_S) & self.is_background
        if stuck.any():
            nxt = dataclasses.replace(nxt, active=nxt.active & ~stuck, v=np.where(stuck, 0.0, nxt.v))
        self.agents = nxt
        self.tick += 1
        self._hold_update()
        self.history.append(self._frame())
        self.light_history.append(self.light_states())
        keep = self.past_steps + 1
        if len(self.history) > keep:
            del self.history[:-keep], self.light_history[:-keep]

    def _change_lanes(self) -> None:
        """Starts the pending lane changes whose window is reached and whose gap is safe; drops
        those past their window."""
        if not self.changes:
            return
        for k in ready_changes(self.changes, self.agents, self.town, self._gap_boxes(), np.arange(len(self.agents)) + 1):
            self._switch_route(k, self.changes[k])

    def _cut_in_trigger(self) -> None:
        """The ``cut_in`` vehicle pulls out when the ego's front bumper comes within
        ``v^2 / (2 decel) + 2`` m (at least :data:`_CUT_IN_MIN_GAP`) of its rear; an ego already
        level with it misses the event."""
        if self.cutin < 0 or self.cutin_phase != "wait":
            return
        ev, k = self.spec.event, self.cutin
        v = max(self.ego_box()[2], 0.0)
        gap = ev.arc - self.progress_hint() - 0.5 * (PACIFICA.length + float(self.agents.length[k]))
        if gap < 0.0:
            self.cutin_phase = "missed"
        elif gap <= max(v * v / (2.0 * ev.decel) + 2.0, _CUT_IN_MIN_GAP):
            self._switch_route(k, self.cutin_change)
            self.cutin_phase = "go"

    def _switch_route(self, k: int, ch: LaneChange) -> None:
        """Agent ``k`` starts lane change ``ch`` now: its route becomes the change's path."""
        a = self.agents
        path = change_path(self.town, self.limits, ch, float(a.s[k]), float(a.v[k]))
        routes = a.routes.with_route(k, path)
        self.agents = dataclasses.replace(a, routes=routes)
        self.agent_stops = signal_stops(routes, self.signal_row)
        self.rules.reroute(k, routes.lane_ids[k], routes.lane_starts[k], float(routes.length[k]))
        self.changes.pop(k, None)

    def _events(self, prev: IDMAgents, nxt: IDMAgents) -> IDMAgents:
        ev, dt = self.spec.event, self.dt
        if self.lead >= 0:
            k = self.lead
            s, v = nxt.s.copy(), nxt.v.copy()
            lead_arc = prev.s[k] - self.offset
            if self.lead_phase == "drive" and lead_arc >= ev.arc:
                # brake once the ego could still stop behind the lead at _LEAD_ROOM_DECEL (or 60 m on)
                c, _, v_ego = self.ego_box()
                gap = float(np.hypot(*(prev.poses()[k, :2] - c))) - 0.5 * (prev.length[k] + PACIFICA.length) - 2.0
                room = gap + prev.v[k] ** 2 / (2.0 * ev.decel)
                need = max(v_ego, 0.0) ** 2 / (2.0 * max(room, 0.1))
                if (need <= _LEAD_ROOM_DECEL and gap <= _LEAD_TRIGGER_GAP) or lead_arc >= ev.arc + 60.0:
                    self.lead_phase = "brake"
            if self.lead_phase == "brake":
                v[k] = max(prev.v[k] - ev.decel * dt, 0.0)
                s[k] = prev.s[k] + 0.5 * (prev.v[k] + v[k]) * dt
                if v[k] == 0.0:
                    self.lead_phase = "wait"
            elif self.lead_phase == "wait":
                v[k], s[k] = 0.0, prev.s[k]
                self.lead_wait += dt
                if self.lead_wait >= 3.0:
                    self.lead_phase = "done"
            nxt = dataclasses.replace(nxt, s=s, v=v)
        if self.cutin >= 0 and self.cutin_phase != "go":  # standing until it pulls out
            s, v = nxt.s.copy(), nxt.v.copy()
            s[self.cutin], v[self.cutin] = prev.s[self.cutin], 0.0
            nxt = dataclasses.replace(nxt, s=s, v=v)
        if self.ev >= 0 and not self.ev_started and self.progress_hint() >= ev.arc:
            # the emergency vehicle appears EV_BEHIND_M behind the ego's box centre, at its speed
            self.ev_started = True
            s, v, active = nxt.s.copy(), nxt.v.copy(), nxt.active.copy()
            s[self.ev] = max(self.progress_hint() + self.offset - EV_BEHIND_M, 0.5 * EV_SIZE[0])
            v[self.ev], active[self.ev] = ev.speed, True
            nxt = dataclasses.replace(nxt, s=s, v=v, active=active)
        if self.crossing >= 0 and not nxt.active[self.crossing] and nxt.s[self.crossing] == self.crossing_start:
            if self.progress_hint() >= ev.arc - 38.0:
                active, v = nxt.active.copy(), nxt.v.copy()
                active[self.crossing], v[self.crossing] = True, 7.0
                nxt = dataclasses.replace(nxt, active=active, v=v)
        return nxt

    def _walkers_update(self) -> None:
        """Moves the pedestrians; the ``ped_crossing`` walker steps out when the ego, keeping its
        speed, would reach its line as it reaches the ego's lane centre, or at the latest when
        the ego needs :data:`_PED_ROOM_DECEL` to stop :data:`_PED_MARGIN` m before the line."""
        if not len(self.walkers):
            return
        walkers = self.walkers.step(self.dt)
        if self.ped_line is not None and not walkers.walking[0] and walkers.walked[0] == 0.0:
            ahead = self.spec.event.arc - self.progress_hint()  # [m] box centre to the line
            v = max(self.ego_box()[2], 0.0)
            front = ahead - 0.5 * PACIFICA.length
            if front > 0.0 and v > 0.5:
                meets = ahead / v <= self.ped_lateral / float(walkers.speed[0])
                late = v * v / (2.0 * max(front - _PED_MARGIN, 0.1)) >= _PED_ROOM_DECEL
                if meets or late:
                    walkers = walkers.started(np.arange(len(walkers)) == 0)
        due = ~walkers.walking & (walkers.walked == 0.0) & (self.walk_times <= self.time_s)
        if due.any():  # background pedestrians step onto their crosswalk when no vehicle is close
            c, _, v = self.ego_box()
            act = self.agents.active
            xy = np.concatenate([c[None], self.agents.poses()[act, :2]])
            speed = np.concatenate([[v], self.agents.v[act]])
            walkers = walkers.started(np.array([bool(due[i]) and may_cross(self.walk_zones[i], xy, speed) for i in range(len(walkers))]))
        self.walkers = walkers

    def _hold_update(self) -> None:
        if self.hold_row < 0:
            return
        arc = self.spec.event.arc
        here = self.progress_hint()
        if here > arc + 3.0:
            self.hold_row = -1  # the ego has passed
            return
        if arc - here < 25.0 and self.ego_box()[2] < _STOPPED:
            self.hold_waited += self.dt
        if self.hold_waited >= 4.0 or self.time_s >= 60.0:
            self.hold_row = -1

    # --- snapshots --------------------------------------------------------------------------------

    def snapshot(self, progress: float | None = None) -> Scene:
        """The world as a Scene: the recorded past (``history_s``), now (``current_index``) and
        the next :data:`FUTURE_STEPS` steps extrapolated at constant velocity; lights as
        scheduled; the ego is row 0, its route ahead (:meth:`route_ahead` of ``progress``, by
        default the ego's projection on the route) ``ego_route``."""
        arr, valid, t = track_arrays(self.history, self.dt)
        n, steps = valid.shape
        p = len(self.history)
        o = self.others()
        length = np.concatenate([[PACIFICA.length], o["length"]]).astype(np.float32)
        width = np.concatenate([[PACIFICA.width], o["width"]]).astype(np.float32)
        height = np.concatenate([[_EGO_HEIGHT], o["height"]]).astype(np.float32)
        tracks = AgentTracks(
            ids=np.concatenate([[1], o["ids"]]).astype(np.int64), types=np.concatenate([[int(AgentType.VEHICLE)], o["types"]]).astype(np.int8),
            x=arr["x"], y=arr["y"], z=np.broadcast_to(0.5 * height[:, None], (n, steps)).astype(np.float64), heading=arr["heading"],
            vx=arr["vx"], vy=arr["vy"], length=np.repeat(length[:, None], steps, 1), width=np.repeat(width[:, None], steps, 1),
            height=np.repeat(height[:, None], steps, 1), valid=valid,
            rear_axle_offset=np.concatenate([[PACIFICA.rear_axle_to_center], np.where(o["types"] == AgentType.VEHICLE, 0.282 * o["length"], 0.0)]).astype(np.float32),
        )  # fmt: skip
        states = light_track(self, t)
        k = len(self.signal_lanes)
        stop_points = np.array([self.town.lanes[c].points[0] for c in self.signal_lanes]).reshape(-1, 2)
        lights = TrafficLights(
            lane_ids=self.lane_ids[self.signal_lanes], stop_points=np.concatenate([stop_points, np.zeros((k, 1))], axis=1),
            states=states, valid=np.ones((k, steps), bool),
        )  # fmt: skip
        return Scene(
            scene_id=f"closed-loop-{self.spec.route_id}", source=self.spec.town_name,
            timestamps=(np.arange(steps) + self.tick - (p - 1)) * self.dt, current_index=p - 1, tracks=tracks, ego_index=0,
            map=self.map, traffic_lights=lights, ego_route=self.route_ahead(self.progress_hint() if progress is None else progress),
        )  # fmt: skip


YELLOW_DECEL = 3.0  # [m/s^2] IDM vehicles stop at CAUTION when this is enough


def signal_stops(routes: Routes, signal_row: dict[int, int]) -> list[tuple[int, float, int]]:
    """The signalized stop lines along IDM routes: (agent, route arc where the signalized lane
    starts, light row) for every route lane in ``signal_row`` (lane index -> light row)."""
    return [
        (a, float(start), signal_row[int(lane)])
        for a in range(routes.lane_ids.shape[0]) for lane, start in zip(routes.lane_ids[a], routes.lane_starts[a])
        if np.isfinite(start) and int(lane) in signal_row
    ]  # fmt: skip


def light_stop_gaps(agents: IDMAgents, stops, states: np.ndarray, obeys: np.ndarray | None = None) -> np.ndarray:
    """(N,) distance [m] from each IDM agent's front to the line it must stop at for a light
    (inf: none): the nearest of its ``stops`` (agent, route arc of the stop line, light row)
    within 60 m ahead (or 1 m behind) whose light in ``states`` is STOP, or CAUTION where it
    can still stop at :data:`YELLOW_DECEL`; agents with ``obeys[k]`` False ignore lights."""
    gap = np.full(len(agents), np.inf)
    front = agents.s + 0.5 * agents.length
    for k, arc, row in stops:
        if (obeys is not None and not obeys[k]) or arc < front[k] - 1.0 or arc - front[k] > 60.0 or arc - front[k] >= gap[k]:
            continue
        state = states[row]
        g = arc - front[k]
        if state == LightState.STOP or (state == LightState.CAUTION and agents.v[k] ** 2 / (2 * max(g - 1.0, 0.1)) <= YELLOW_DECEL):
            gap[k] = g
    return gap


def track_arrays(past: list[dict[str, np.ndarray]], dt: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A snapshot's track arrays from recorded frames ``past`` (``x, y, heading, vx, vy, valid``
    per track, the last one now): ``x, y, heading, vx, vy`` (N, P + :data:`FUTURE_STEPS`) with the
    future extrapolated at constant velocity, validity (N, P + FUTURE_STEPS) and the future's
    times (FUTURE_STEPS,) [s] after now (a world's :meth:`World.snapshot` and the log world's)."""
    p = len(past)
    n = len(past[-1]["x"])
    steps = p + FUTURE_STEPS
    arr = {k: np.zeros((n, steps)) for k in ("x", "y", "heading", "vx", "vy")}
    valid = np.zeros((n, steps), bool)
    for j, fr in enumerate(past):
        for k in arr:
            arr[k][:, j] = fr[k]
        valid[:, j] = fr["valid"]
    now = past[-1]
    t = np.arange(1, FUTURE_STEPS + 1) * dt
    for k in ("heading", "vx", "vy"):
        arr[k][:, p:] = now[k][:, None]
    arr["x"][:, p:] = now["x"][:, None] + now["vx"][:, None] * t
    arr["y"][:, p:] = now["y"][:, None] + now["vy"][:, None] * t
    valid[:, p:] = now["valid"][:, None]
    return arr, valid, t


def light_track(world, t: np.ndarray) -> np.ndarray:
    """(K, P + len(t)) int8 light states of a world's signalized lanes: as recorded
    (``light_history``), then ``light_states`` at the times ``t`` [s] after now."""
    k, p = len(world.signal_lanes), len(world.light_history)
    future = np.stack([world.light_states(world.time_s + dt) for dt in t], axis=1) if k else np.zeros((0, len(t)), np.int8)
    return np.concatenate([np.stack(world.light_history, axis=1).reshape(k, p), future], axis=1).astype(np.int8)


def _turn(town, i: int) -> float:
    p = town.lanes[i].points
    a, b = p[1] - p[0], p[-1] - p[-2]
    return float(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b))


def _with_driver(params: IDMParameters, n: int, row: int, values: dict[str, float]) -> IDMParameters:
    """``params`` of ``n`` agents with agent ``row``'s fields set to ``values``."""
    arrays = {f: np.broadcast_to(np.asarray(getattr(params, f), dtype=np.float64), (n,)).copy() for f in values}
    for f, x in values.items():
        arrays[f][row] = x
    return dataclasses.replace(params, **arrays)


def _point_at(points: np.ndarray, arc: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    return np.array([np.interp(arc, cum, points[:, 0]), np.interp(arc, cum, points[:, 1])])


def _lanes_from(town, start: int, start_arc: float, length: float, rng: np.random.Generator | None) -> list[int]:
    """Lane indices from ``start`` along successors for ``length`` m (random or straightest)."""
    out = [int(start)]
    total = float(np.linalg.norm(np.diff(town.lanes[start].points, axis=0), axis=1).sum()) - start_arc
    while total < length and town.lanes[out[-1]].successors and len(out) < 50:
        succ = town.lanes[out[-1]].successors
        nxt = int(succ[int(rng.integers(len(succ)))]) if rng is not None else int(min(succ, key=lambda i: abs(_turn(town, i))))
        out.append(nxt)
        total += float(np.linalg.norm(np.diff(town.lanes[nxt].points, axis=0), axis=1).sum())
    return out
