"""Infractions of the ego, detected each tick of a closed-loop world (CARLA leaderboard 2.0
criteria as Bench2Drive runs them), and route progress.

* Collisions: the ego's box first touching another vehicle's box (``collisions_vehicle``), a
  pedestrian's (``collisions_pedestrian``), or the static layout (``collisions_layout``: a
  stop-sign pole, or the box centre leaving the drivable area, i.e. mounting the sidewalk where
  CARLA towns have curbs, poles and walls), while the ego
  drives at >= :data:`~rap.eval.driving_score.MIN_COLLISION_SPEED`; a contact that lasts counts
  once (and :func:`~rap.eval.driving_score.merge_repeats` merges repeats within 5 m / 5 s).
* ``red_light``: the ego's box centre crosses the stop line of a route connector whose light
  is STOP.
* ``stop_infraction`` (CARLA's RunningStopTest): each stop sign of the route (an all-way-stop
  junction's entry, the sign's stop line at the start of the route's connector) has a stop area,
  the front bumper from :data:`STOP_AREA_M` before the line to :data:`STOP_AREA_PAST_M` past it;
  the ego must drive slower than :data:`STOP_SPEED` at some tick with its front bumper in the
  area. Leaving the area past the line without that is one infraction ("Agent ran a stop with
  id={sign} at (x, y, z)" of the sign).
* ``yield_emergency_vehicle_infractions`` (CARLA's YieldToEmergencyVehicleTest): the
  ``emergency_vehicle`` event's vehicle's speed is logged every tick from when it appears
  (behind the ego) until its rear bumper has passed the ego's front bumper along the route (or
  it leaves, or the route ends); its mean over the log as a share of its target speed
  (:func:`emergency_vehicle_share`, rounded to 2 decimals as the leaderboard rounds it) below
  :data:`EV_SUCCESS_PCT` is one infraction, "Agent failed to yield to an emergency vehicle,
  slowing it to {X}% of its velocity)" (the leaderboard's text, stray parenthesis included; X as
  Python prints the rounded float, e.g. ``81.5``).
* ``outside_route_lanes``: metres driven with the box centre outside the route's lanes and
  their same-direction neighbours, as a share of the completed route (reported at the end);
  junctions are not checked (as the leaderboard's test skips them).
* Ends of a route: ``route_dev`` (more than ``deviation_m`` from the route), ``vehicle_blocked``
  (slower than 0.1 m/s for ``blocked_s``), ``route_timeout`` (``timeout_s``).
* ``min_speed_infractions`` (no penalty, the input of efficiency): at each of ``checkpoints``
  equal parts of the route, the ego's mean speed over that part as a share of the mean speed of
  the vehicles within 50 m over the same ticks.
* Progress: the route arc of the ego box centre's projection, searched near the last one;
  route completion RC = 100 x progress / length.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import shapely
from shapely.prepared import prep

from rap.eval.closed_loop.world import World
from rap.eval.driving_score import MIN_COLLISION_SPEED, Infraction
from rap.scene import AgentType, LightState
from rap.sim.bicycle import PACIFICA

__all__ = ["EV_SUCCESS_PCT", "EmergencyVehicleTest", "emergency_vehicle_share", "STOP_AREA_M", "STOP_AREA_PAST_M", "STOP_SPEED", "Monitor", "MonitorConfig", "box_polygons", "route_stop_signs"]

_NEIGHBOUR_RADIUS = 50.0  # [m] "surrounding traffic" of min-speed checkpoints
_BLOCKED_SPEED = 0.1  # [m/s]
_POLE_RADIUS = 0.3  # [m] stop-sign poles
STOP_AREA_M = 6.0  # [m] a stop sign's area starts this far before its stop line (front bumper) ...
STOP_AREA_PAST_M = 1.5  # [m] ... and ends this far past it
STOP_SPEED = 0.1  # [m/s] "stopped" at a stop sign (CARLA's RunningStopTest.SPEED_THRESHOLD)
EV_SUCCESS_PCT = 95.0  # [%] YieldToEmergencyVehicleTest.success_value
# ScenarioTimeoutTest: the events whose obstacle blocks the ego's lane (CARLA arms the test in its
# blocking-obstacle scenarios), the route arcs before / after the event's ``arc`` [m] where its
# clock starts (the scenario triggers) and stops (the ego is past the obstacle).
SCENARIO_TIMEOUT_EVENTS = ("parked",)
SCENARIO_TRIGGER_M = 30.0
SCENARIO_PASSED_M = 10.0


def emergency_vehicle_share(speeds, target_speed: float) -> float:
    """[%] the mean of ``speeds`` [m/s] as a share of ``target_speed`` [m/s], rounded to 2
    decimals (100 when nothing was logged), as YieldToEmergencyVehicleTest computes it."""
    speeds = np.asarray(speeds, dtype=np.float64)
    if not speeds.size:
        return 100.0
    return round(float(speeds.mean()) / float(target_speed) * 100.0, 2)


class EmergencyVehicleTest:
    """YieldToEmergencyVehicleTest of one route: :meth:`log` the emergency vehicle's speed while
    it is behind the ego, :meth:`close` once it has passed (or at the end): the infraction, if
    its mean speed was below :data:`EV_SUCCESS_PCT` % of ``target_speed``."""

    def __init__(self, target_speed: float) -> None:
        self.target_speed = float(target_speed)
        self.speeds: list[float] = []
        self.closed = False
        self.share: float | None = None

    def log(self, speed: float) -> None:
        """Logs one tick's speed [m/s] (ignored once closed)."""
        if not self.closed:
            self.speeds.append(float(speed))

    def close(self, time_s: float = 0.0, x: float = 0.0, y: float = 0.0) -> Infraction | None:
        """Ends the log (once; later calls return None): the infraction or None."""
        if self.closed:
            return None
        self.closed = True
        self.share = emergency_vehicle_share(self.speeds, self.target_speed)
        if self.share >= EV_SUCCESS_PCT:
            return None
        return Infraction(
            "yield_emergency_vehicle_infractions", f"Agent failed to yield to an emergency vehicle, slowing it to {self.share}% of its velocity)",
            time_s=time_s, x=x, y=y, percentage=self.share,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """Thresholds (leaderboard defaults).

    Attributes:
        deviation_m: [m] farther from the route ends it (``route_dev``).
        blocked_s: [s] slower than 0.1 m/s this long ends it (``vehicle_blocked``).
        seconds_per_m, initial_s: route timeout = ``initial_s + seconds_per_m x length``.
        checkpoints: min-speed checkpoints per route.
        scenario_timeout_s: [s] from a blocking event's trigger until the ego is past it, or
            ``scenario_timeouts`` (CARLA's scenarios default to 180 s).
    """

    deviation_m: float = 30.0
    blocked_s: float = 60.0
    seconds_per_m: float = 0.4
    initial_s: float = 60.0
    checkpoints: int = 4
    scenario_timeout_s: float = 180.0


def box_polygons(x, y, heading, length, width) -> np.ndarray:
    """(N,) shapely polygons of oriented boxes given (N,) centres, headings and sizes."""
    x, y, h, lng, wid = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (x, y, heading, length, width))
    c, s = np.cos(h), np.sin(h)
    corners = []
    for sl, sw in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
        corners.append(np.stack([x + sl * 0.5 * lng * c - sw * 0.5 * wid * s, y + sl * 0.5 * lng * s + sw * 0.5 * wid * c], -1))
    return shapely.polygons(np.stack(corners, 1))


def _where(x: float, y: float) -> str:
    return f"(x={x:.3f}, y={y:.3f}, z=0.000)"


def route_stop_signs(world: World) -> list[tuple[float, int, np.ndarray]]:
    """The stop signs along the world's route: (route arc [m] of the stop line, sign id, sign
    position (3,)) per route connector that a stop sign controls, in route order."""
    signs = world.map.stop_signs
    out = []
    for k, i in enumerate(world.route_lanes):
        lane_id = int(world.lane_ids[i])
        for s in range(len(signs.ids)):
            if lane_id in signs.lane_ids[s]:
                out.append((world.lane_arc(k), int(signs.ids[s]), np.asarray(signs.positions[s], dtype=np.float64)))
                break
    return out


class Monitor:
    """Watches one world (see the module docs)."""

    def __init__(self, world: World, config: MonitorConfig = MonitorConfig()) -> None:
        self.world = world
        self.config = config
        town, route = world.town, world.route_lanes
        allowed = set(route)
        for i in route:
            allowed.update(town.lanes[i].left + town.lanes[i].right)
        polys = [shapely.buffer(shapely.LineString(town.lanes[i].points), 0.5 * town.lanes[i].width, cap_style="flat") for i in sorted(allowed)]
        # junctions are not checked (as the leaderboard's OutsideRouteLanesTest skips them)
        polys += [shapely.Polygon(jn.polygon) for jn in town.junctions if len(jn.polygon) >= 3]
        self.route_area = prep(shapely.union_all(polys))
        self.drivable = prep(town.drivable)
        signs = world.map.stop_signs.positions[:, :2]
        self.poles = prep(shapely.union_all(shapely.buffer(shapely.points(signs), _POLE_RADIUS))) if len(signs) else None
        self.timeout_s = config.initial_s + config.seconds_per_m * world.length
        # stop lines of the route's signalized connectors: (route arc, light row, lane id)
        self.stops = [(world.lane_arc(k), world.signal_row[i], int(world.lane_ids[i])) for k, i in enumerate(route) if i in world.signal_row]
        # stop signs not yet passed: (stop line arc, sign id, position, stopped in the area)
        self.stop_signs = [[arc, sid, pos, False] for arc, sid, pos in route_stop_signs(world)]
        self.infractions: list[Infraction] = []
        self.ev_test = EmergencyVehicleTest(world.spec.event.speed) if getattr(world, "ev", -1) >= 0 else None
        event = getattr(world.spec, "event", None)  # log routes have none
        # a blocking event's clock: [arc, started at (None: not triggered), open]
        self.scenario_clock = [event.arc, None, True] if event is not None and event.kind in SCENARIO_TIMEOUT_EVENTS else None
        self.progress = 0.0
        self.contacts: set[int] = set()
        self.on_edge = False
        self.outside_m = 0.0
        self.slow_s = 0.0
        self.failure: str | None = None
        self.done = False
        self.checkpoint = 1
        self.speeds: list[float] = []
        self.traffic: list[float] = []
        self.last_xy = world.ego_box()[0]
        self.trace: list[tuple[float, float, float, float, float, float]] = []  # t, x, y, heading, ax, ay (comfort)
        self.yaw_rates: list[float] = []

    @property
    def route_completion(self) -> float:
        """RC [%]."""
        return 100.0 if self.progress >= self.world.length else 100.0 * max(self.progress, 0.0) / self.world.length

    def _add(self, name: str, message: str, x: float, y: float, other: int | None = None, percentage: float | None = None) -> None:
        self.infractions.append(Infraction(name, message, time_s=self.world.time_s, x=float(x), y=float(y), other=other, percentage=percentage))

    def _update_progress(self, c: np.ndarray) -> float:
        pts, arcs = self.world.route_points()
        spacing = self.world.path.spacing
        lo = int(max(0, (self.progress - 10.0 + self.world.offset) / spacing))
        hi = int(min(len(pts), (self.progress + 30.0 + self.world.offset) / spacing + 1))
        d = np.hypot(pts[lo:hi, 0] - c[0], pts[lo:hi, 1] - c[1])
        k = int(np.argmin(d))
        if d[k] < 4.0:
            self.progress = max(self.progress, float(arcs[lo + k]))
        return float(d.min()) if d.size else float("inf")

    def observe(self) -> None:
        """Checks the world's current tick (after :meth:`World.step`)."""
        w, cfg = self.world, self.config
        c, h, v = w.ego_box()
        self.trace.append((w.time_s, c[0], c[1], h, *w.ego_world_acceleration()))
        self.yaw_rates.append(float(w.ego[9]))
        prev_progress = self.progress
        dist = self._update_progress(c)
        # collisions
        o = w.others()
        ego_poly = box_polygons(c[0], c[1], h, PACIFICA.length, PACIFICA.width)[0]
        near = o["valid"] & (np.hypot(o["x"] - c[0], o["y"] - c[1]) < 12.0)
        touching: dict[int, int] = {}
        if near.any():
            idx = np.flatnonzero(near)
            hit = shapely.intersects(ego_poly, box_polygons(o["x"][idx], o["y"][idx], o["heading"][idx], o["length"][idx], o["width"][idx]))
            touching = {int(o["ids"][i]): int(o["types"][i]) for i in idx[hit]}
        for other in sorted(set(touching) - self.contacts):
            if abs(v) >= MIN_COLLISION_SPEED:
                if touching[other] == AgentType.PEDESTRIAN:
                    self._add("collisions_pedestrian", f"Agent collided against object with type=walker.pedestrian and id={other} at {_where(*c)}", c[0], c[1], other)
                else:
                    self._add("collisions_vehicle", f"Agent collided against object with type=vehicle and id={other} at {_where(*c)}", c[0], c[1], other)
        self.contacts = set(touching)
        off_road = not self.drivable.contains(shapely.Point(c[0], c[1]))
        pole = self.poles is not None and bool(self.poles.intersects(ego_poly))
        edge = off_road or pole
        if edge and not self.on_edge and abs(v) >= MIN_COLLISION_SPEED:
            what = "static.pole" if pole else "static.sidewalk"
            self._add("collisions_layout", f"Agent collided against object with type={what} and id=0 at {_where(*c)}", c[0], c[1])
        self.on_edge = edge
        # red lights
        states = w.light_states()
        for arc, row, lane_id in self.stops:
            if prev_progress < arc <= self.progress and states[row] == LightState.STOP:
                self._add("red_light", f"Agent ran a red light {lane_id} at {_where(*c)}", c[0], c[1])
        self._check_stop_signs(v)
        self._check_scenario_timeout(c)
        self._check_emergency_vehicle()
        # outside route lanes
        step_m = float(np.hypot(*(c - self.last_xy)))
        if not self.route_area.contains(shapely.Point(c[0], c[1])):
            self.outside_m += step_m
        self.last_xy = c
        # min speed checkpoints
        vehicles = o["valid"] & (o["types"] == AgentType.VEHICLE) & (np.hypot(o["x"] - c[0], o["y"] - c[1]) < _NEIGHBOUR_RADIUS) & (np.hypot(o["vx"], o["vy"]) > 0.0)
        self.speeds.append(abs(v))
        if vehicles.any():
            self.traffic.append(float(np.hypot(o["vx"], o["vy"])[vehicles].mean()))
        while self.checkpoint <= cfg.checkpoints and self.progress >= w.length * self.checkpoint / cfg.checkpoints:
            if self.traffic and np.mean(self.traffic) > 0.1:
                pct = 100.0 * float(np.mean(self.speeds)) / float(np.mean(self.traffic))
                self._add("min_speed_infractions", f"Average speed is {pct:.2f}% of the surrounding traffic's one", c[0], c[1], percentage=pct)
            self.speeds, self.traffic = [], []
            self.checkpoint += 1
        # ends
        self.slow_s = self.slow_s + w.dt if abs(v) < _BLOCKED_SPEED else 0.0
        if self.progress >= w.length:
            self.done = True
        elif dist > cfg.deviation_m:
            self._end("route_dev", f"Agent deviated from the route at {_where(*c)}", c)
        elif self.slow_s >= cfg.blocked_s:
            self._end("vehicle_blocked", f"Agent got blocked at {_where(*c)}", c)
        elif w.time_s >= self.timeout_s:
            self._end("route_timeout", "Route timeout.", c)

    def _check_scenario_timeout(self, c: np.ndarray) -> None:
        """ScenarioTimeoutTest: the blocking event's clock runs from the ego's progress reaching
        :data:`SCENARIO_TRIGGER_M` before the event until :data:`SCENARIO_PASSED_M` past it; past
        ``scenario_timeout_s`` it is one ``scenario_timeouts`` ("Agent timed out a scenario")."""
        clock = self.scenario_clock
        if clock is None or not clock[2]:
            return
        arc, started, _ = clock
        if started is None:
            if self.progress >= arc - SCENARIO_TRIGGER_M:
                clock[1] = self.world.time_s
            return
        if self.progress >= arc + SCENARIO_PASSED_M:
            clock[2] = False
        elif self.world.time_s - started > self.config.scenario_timeout_s + 1e-9:  # (ticks: float sums)
            clock[2] = False
            self._add("scenario_timeouts", "Agent timed out a scenario", c[0], c[1])

    def _check_stop_signs(self, v: float) -> None:
        """Stop signs: stopped in the area, or left it past the line without (see the module docs)."""
        front = self.progress + 0.5 * PACIFICA.length
        for entry in list(self.stop_signs):
            arc, sign_id, pos, stopped = entry
            if arc - STOP_AREA_M <= front <= arc + STOP_AREA_PAST_M and abs(v) < STOP_SPEED:
                entry[3] = stopped = True
            if front > arc + STOP_AREA_PAST_M:
                if not stopped:
                    self._add("stop_infraction", f"Agent ran a stop with id={sign_id} at {_where(pos[0], pos[1])}", pos[0], pos[1])
                self.stop_signs.remove(entry)

    def _check_emergency_vehicle(self) -> None:
        """Logs the emergency vehicle's speed from when it appears until its rear bumper passes
        the ego's front bumper along the route (see the module docs)."""
        test, w = self.ev_test, self.world
        if test is None or test.closed or not w.ev_started:
            return
        a, k = w.agents, w.ev
        passed = float(a.s[k]) - 0.5 * float(a.length[k]) - w.offset > self.progress + 0.5 * PACIFICA.length
        if a.active[k] and not passed:
            test.log(float(a.v[k]))
            return
        self._close_ev_test()

    def _close_ev_test(self) -> None:
        if self.ev_test is None or self.ev_test.closed:
            return
        a, k = self.world.agents, self.world.ev
        x, y = (float(c) for c in a.poses()[k, :2])
        inf = self.ev_test.close(self.world.time_s, x, y)
        if inf is not None:
            self.infractions.append(inf)

    def _end(self, failure: str, message: str, c: np.ndarray) -> None:
        self._add(failure, message, c[0], c[1])
        self.failure = failure
        self.done = True

    def final_infractions(self) -> list[Infraction]:
        """The route's infractions, with ``outside_route_lanes`` (when any) appended (and the
        emergency vehicle's judgement, when it is still behind the ego)."""
        self._close_ev_test()
        out = list(self.infractions)
        driven = max(self.progress, 0.0)
        if self.outside_m > 0.05 and driven > 0:
            pct = min(100.0, 100.0 * self.outside_m / driven)
            out.append(Infraction("outside_route_lanes", f"Agent went outside its route lanes for about {self.outside_m:.3f} meters ({pct:.2f}% of the completed route)", time_s=self.world.time_s, percentage=round(pct, 2)))
        return out

    def comfort(self) -> float:
        """Bench2Drive's smoothness of the driven trace (1 when shorter than 3 steps)."""
        from rap.eval.driving_score import smoothness

        tr = np.asarray(self.trace)
        if len(tr) < 3:
            return 1.0
        return float(smoothness(tr[:, 4:6], tr[:, 3], np.asarray(self.yaw_rates), dt=self.world.dt, segment_steps=int(round(2.0 / self.world.dt))))
