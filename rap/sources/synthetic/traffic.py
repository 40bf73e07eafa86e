"""Traffic of the synthetic world: IDM vehicles on lane-graph routes, signals, stop signs,
pedestrians on crosswalks, parked cars, and the expert ego driver.

Private helper of :mod:`rap.sources.synthetic.world` (the module docs there list the rules and the
IDM parameters). All per-step work is vectorized over agents with numpy, except the few
agents waiting at stop signs or crosswalks, which are handled one by one. The IDM itself (the
acceleration law, the leader search, routes along lanes) is :mod:`rap.sim.idm`; this module
adds the town's rules: signals, stop signs, blocked junctions, pedestrians, arrivals.

Internal frame conventions: a route agent's state is the arc position ``s`` [m] of its box
centre along its route polyline (the route's lanes concatenated, resampled every ``_DS`` m)
and its speed ``v`` [m/s]; its box is centred on the polyline and points along its tangent.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import shapely

from rap.scene import AgentType, LightState
from rap.sim.idm import (
    Boxes,
    IDMParameters,
    RoutePath,
    Routes,
    advance,
    idm_acceleration,
    path_hits,
    route_path,
)
from rap.sources.synthetic.roads import Town

__all__ = ["TrafficConfig", "TrafficLog", "simulate"]

_DS = 0.5  # [m] route resampling step.
_LOOK = 60  # Lookahead samples, 1 m apart, from the front bumper.
_BEHIND = 6  # Samples behind the front bumper used for speed limits (covers the body).
_MARGIN = 0.25  # [m] clearance the corridor check keeps to other agents' boxes.
_STOP_GAP = 1.0  # [m] standstill distance to a stop line.
_STOPPED = 0.1  # [m/s] below this a vehicle counts as stopped at a stop sign.
_SIGN_REACH = 4.0  # [m] max distance to the stop line of a "stopped at the sign" vehicle.
_PED_HORIZON = 2.5  # [s] vehicles keep clear of where a walking pedestrian will be.
_FAR = 1e6  # [m] where inactive agents' boxes are parked internally (never output).
_EXPERTS = 4  # Vehicles driven by the expert; the one that drives furthest becomes the ego.

EGO_SIZE = (5.176, 2.297, 1.777)  # [m] NAVSIM's ego vehicle: length, width, height.
REAR_AXLE_RATIO = 1.461 / 5.176  # Rear axle behind the box centre, per length (as womd.py).


@dataclasses.dataclass(frozen=True)
class TrafficConfig:
    """Traffic of the synthetic world. Ranges are sampled uniformly per agent.

    Attributes:
        vehicle_density: Vehicles placed at the start of the warm-up, per 100 m of lane
            outside junctions [1/100 m].
        entry_rate: Arrivals per lane entering the town from its border [vehicles/s].
        num_pedestrians: Pedestrians walking around junctions and crossing at crosswalks.
        num_cyclists: Cyclists riding in curb lanes.
        parked_fraction: Share of parking-strip spots holding a parked car.
        speed_factor: Background drivers' desired speed as a share of the speed limit.
        max_accel: Background IDM maximum acceleration [m/s^2].
        time_headway: Background IDM desired time headway [s].
        comfort_decel: IDM comfortable deceleration of every driver [m/s^2].
        min_gap: Background IDM standstill gap [m].
        lateral_accel: Background drivers' max lateral acceleration in curves [m/s^2].
        max_decel: Physical braking limit of every vehicle [m/s^2].
        yellow_decel: A background driver seeing yellow stops if it needs at most this
            deceleration, else it goes [m/s^2].
        expert_max_accel: Expert IDM maximum acceleration [m/s^2].
        expert_time_headway: Expert IDM desired time headway [s].
        expert_min_gap: Expert IDM standstill gap [m].
        expert_lateral_accel: Expert max lateral acceleration in curves [m/s^2].
        expert_yellow_decel: Expert's yellow-light threshold, as ``yellow_decel`` [m/s^2].
        cyclist_speed: Cyclists' desired speed [m/s].
        pedestrian_speed: Walking speed [m/s].
    """

    vehicle_density: float = 0.8
    entry_rate: float = 0.05
    num_pedestrians: int = 8
    num_cyclists: int = 1
    parked_fraction: float = 0.4
    speed_factor: tuple[float, float] = (0.85, 1.05)
    max_accel: tuple[float, float] = (1.2, 2.2)
    time_headway: tuple[float, float] = (1.0, 1.6)
    comfort_decel: float = 2.0
    min_gap: float = 2.0
    lateral_accel: float = 2.5
    max_decel: float = 8.0
    yellow_decel: float = 3.0
    expert_max_accel: float = 1.5
    expert_time_headway: float = 1.5
    expert_min_gap: float = 2.5
    expert_lateral_accel: float = 2.0
    expert_yellow_decel: float = 4.0
    cyclist_speed: tuple[float, float] = (4.5, 6.5)
    pedestrian_speed: tuple[float, float] = (1.1, 1.6)

    def __post_init__(self) -> None:
        for name in ("vehicle_density", "entry_rate", "parked_fraction"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrafficConfig.{name}: must be >= 0")
        if self.parked_fraction > 1:
            raise ValueError("TrafficConfig.parked_fraction: must be <= 1")
        for name in ("num_pedestrians", "num_cyclists"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrafficConfig.{name}: must be >= 0")
        for name in ("speed_factor", "max_accel", "time_headway", "cyclist_speed", "pedestrian_speed"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"TrafficConfig.{name}: need 0 < min <= max, got {(lo, hi)}")
        for name in (
            "comfort_decel", "min_gap", "lateral_accel", "max_decel", "yellow_decel",
            "expert_max_accel", "expert_time_headway", "expert_min_gap", "expert_lateral_accel",
            "expert_yellow_decel",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"TrafficConfig.{name}: must be > 0")
        if self.max_decel < max(self.comfort_decel, self.yellow_decel, self.expert_yellow_decel):
            raise ValueError("TrafficConfig.max_decel: must be >= the other decelerations")


@dataclasses.dataclass
class TrafficLog:
    """Simulated agents over all simulation steps; per-step arrays are (num_agents, num_steps).

    Rows ``experts`` are driven by the expert. Invalid entries hold 0.
    """

    types: np.ndarray  # (N,) int8 AgentType
    length: np.ndarray  # (N,) [m]
    width: np.ndarray  # (N,) [m]
    height: np.ndarray  # (N,) [m]
    rear_axle_offset: np.ndarray  # (N,) [m]
    x: np.ndarray  # (N, S) box centre [m]
    y: np.ndarray  # (N, S) [m]
    heading: np.ndarray  # (N, S) [rad]
    valid: np.ndarray  # (N, S) bool
    lane: np.ndarray  # (N, S) int64 town lane index under the box centre (-1: none)
    routes: list[list[int]]  # per agent, town lane indices of its route (empty: no route)
    experts: np.ndarray  # (E,) rows driven by the expert (candidates for the ego)


# ----------------------------------------------------------------------------------------------
# Routes.
# ----------------------------------------------------------------------------------------------


def _lane_lengths(town: Town) -> np.ndarray:
    return np.array(
        [float(np.linalg.norm(np.diff(lane.points, axis=0), axis=1).sum()) for lane in town.lanes]
    )


def _find_route(
    town: Town, lengths: np.ndarray, start: int, acc0: float, need: float, allow_exit: bool,
    rng: np.random.Generator,
) -> list[int] | None:  # fmt: skip
    """Random depth-first walk on the lane graph from ``start``.

    Returns lane indices whose length from the start position (``acc0`` [m] = length left on
    the first lane) reaches ``need`` [m], or that end at a lane leaving the town when
    ``allow_exit``; None if there is none.
    """
    budget = [4000]

    def rec(lane: int, acc: float) -> list[int] | None:
        if acc >= need:
            return [lane]
        budget[0] -= 1
        if budget[0] < 0:
            return None
        succ = town.lanes[lane].successors
        if not succ:
            return [lane] if allow_exit else None
        for k in rng.permutation(len(succ)):
            nxt = succ[int(k)]
            rest = rec(nxt, acc + lengths[nxt])
            if rest is not None:
                return [lane] + rest
        return None

    return rec(start, acc0)


ROUTE_SMOOTHING_M = 2.0  # [m] Gaussian sigma: lane-to-connector joins become curvature-continuous


def _build_route(
    town: Town, lanes: list[int], speed_factor: float, speed_cap: float, lateral_accel: float
) -> RoutePath:
    return route_path(
        [town.lanes[li].points for li in lanes], [town.lanes[li].speed_limit for li in lanes], lanes,
        spacing=_DS, smoothing=ROUTE_SMOOTHING_M, speed_factor=speed_factor, speed_cap=speed_cap,
        lateral_accel=lateral_accel,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Pedestrian paths.
# ----------------------------------------------------------------------------------------------


def _pedestrian_path(
    town: Town, rng: np.random.Generator, crossings: int
) -> tuple[np.ndarray, list[tuple[float, int]]] | None:
    """A walk around one junction: (n, 2) waypoints and (gate arc [m], crosswalk) pairs.

    The pedestrian starts on the sidewalk a few metres up an arm, walks to a crosswalk end,
    waits there for permission (gate), crosses, walks around the corner to the next crosswalk
    (or turns back when the corner has none) and so on.
    """
    cws = town.crosswalks
    if not cws:
        return None
    by_arm = {(c.junction, c.arm): k for k, c in enumerate(cws)}
    x = int(rng.integers(len(cws)))
    side = 1.0 if rng.random() < 0.5 else -1.0

    def end(k: int, s: float, o: float) -> np.ndarray:
        # Crossing from side s, o metres right of the crosswalk's middle (keep right).
        c = cws[k]
        return c.centre - s * o * c.along + s * c.half_length * c.across

    def offset(k: int) -> float:
        return float(rng.uniform(0.1, 0.35) * cws[k].width)

    o = offset(x)
    start = end(x, side, o) + rng.uniform(3.0, 10.0) * cws[x].along
    points = [start, end(x, side, o)]
    gates = []  # (waypoint index where the gate is, crosswalk)
    for _ in range(crossings):
        gates.append((len(points) - 1, x))
        points.append(end(x, side, o) - 2.0 * side * cws[x].half_length * cws[x].across)
        c = cws[x]
        # Landed on the -side end of arm a: the corner between a - 1 and a, where arm a - 1's
        # crosswalk starts at its +side end (and vice versa); crossing it keeps ``side``.
        nxt = by_arm.get((c.junction, (c.arm - 1) % 4 if side > 0 else (c.arm + 1) % 4))
        if nxt is None:
            side = -side  # Turn back.
            o = offset(x)
            points.append(end(x, side, o))
            continue
        x = nxt
        o = offset(x)
        points.append(end(x, side, o))
    pts = np.array(points)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    return pts, [(float(arc[i]), k) for i, k in gates]


# ----------------------------------------------------------------------------------------------
# Simulation.
# ----------------------------------------------------------------------------------------------


def simulate(
    town: Town, lights: np.ndarray, cfg: TrafficConfig, rng: np.random.Generator,
    num_steps: int, dt: float, min_expert_steps: int,
) -> TrafficLog:  # fmt: skip
    """Runs the traffic for ``num_steps`` steps of ``dt`` seconds.

    Args:
        town: The road network.
        lights: (K, num_steps) int8 states of ``town.signal_lanes`` at each step.
        cfg: Traffic settings.
        rng: Source of every random choice.
        num_steps: Steps to simulate (warm-up included).
        dt: Step [s].
        min_expert_steps: Expert-driven vehicles stay in the town this many steps (their
            routes are long enough to drive at the speed limit that long).

    Returns:
        The log of all agents at all steps.
    """
    return _Simulation(town, lights, cfg, rng, num_steps, dt, min_expert_steps).run()


class _Simulation:
    """State and rules of one simulation run (see :func:`simulate`)."""

    def __init__(
        self, town: Town, lights: np.ndarray, cfg: TrafficConfig, rng: np.random.Generator,
        num_steps: int, dt: float, min_expert_steps: int,
    ) -> None:  # fmt: skip
        self.town, self.lights, self.cfg, self.rng = town, lights, cfg, rng
        self.num_steps, self.dt = num_steps, dt
        self.lane_len = _lane_lengths(town)
        self.signal_row = {int(c): r for r, c in enumerate(town.signal_lanes)}
        self.max_limit = max(lane.speed_limit for lane in town.lanes)  # [m/s]
        self.road_lanes = [
            k for k, lane in enumerate(town.lanes) if not lane.is_connector and self.lane_len[k] > 25.0
        ]
        placed: list[np.ndarray] = []  # Centres of the vehicles placed so far.
        agents = self._place_experts(min_expert_steps, placed)
        agents += self._place_background(placed)
        agents += self._plan_arrivals()
        self._init_route_agents(agents)
        self._init_pedestrians()
        self._init_parked()

    # --- Setup ---------------------------------------------------------------------------------

    def _place_experts(self, min_steps: int, placed: list[np.ndarray]) -> list[dict]:
        """Expert-driven vehicles on long routes that never leave the town."""
        town, cfg, rng = self.town, self.cfg, self.rng
        need = min_steps * self.dt * self.max_limit * 1.05 + _LOOK + 20.0  # [m]
        length, width, height = EGO_SIZE
        agents = []
        for _ in range(_EXPERTS):
            for _ in range(50):
                li = self.road_lanes[int(rng.integers(len(self.road_lanes)))]
                s0 = float(rng.uniform(8.0, self.lane_len[li] - 5.0))
                p = self._lane_point(li, s0)
                if any(np.linalg.norm(p - q) < length + 6.0 for q in placed):
                    continue
                lanes = _find_route(town, self.lane_len, li, self.lane_len[li] - s0, need, False, rng)
                if lanes is not None:
                    placed.append(p)
                    agents.append(dict(
                        kind=AgentType.VEHICLE, lanes=lanes, s0=s0, L=length, W=width, H=height,
                        a=cfg.expert_max_accel, T=cfg.expert_time_headway, s_min=cfg.expert_min_gap,
                        factor=1.0, cap=np.inf, lat=cfg.expert_lateral_accel,
                        yellow=cfg.expert_yellow_decel, t0=0, placed=True, expert=True,
                    ))  # fmt: skip
                    break
        if not agents:  # pragma: no cover - every town has loops.
            raise RuntimeError("synthetic traffic: no route for the expert")
        return agents

    def _place_background(self, placed: list[np.ndarray]) -> list[dict]:
        """Background vehicles (by lane length) and cyclists (curb lanes) at the first step."""
        town, cfg, rng = self.town, self.cfg, self.rng
        need = self.num_steps * self.dt * self.max_limit + _LOOK + 20.0  # [m]
        total = sum(self.lane_len[k] for k in self.road_lanes)
        n_veh = int(rng.poisson(cfg.vehicle_density * total / 100.0))
        curb = [k for k in self.road_lanes if town.lanes[k].rank == town.lanes[k].lanes_in_direction - 1]
        weights = np.array([self.lane_len[k] for k in self.road_lanes])
        weights = weights / weights.sum()
        agents = []
        for kind in [AgentType.VEHICLE] * n_veh + [AgentType.CYCLIST] * cfg.num_cyclists:
            for _ in range(20):
                if kind == AgentType.CYCLIST:
                    li = curb[int(rng.integers(len(curb)))]
                else:
                    li = self.road_lanes[int(rng.choice(len(self.road_lanes), p=weights))]
                dims = self._dims(kind)
                lo, hi = 0.5 * dims[0] + 1.0, self.lane_len[li] - 0.5 * dims[0] - 1.0
                if hi <= lo:
                    continue
                s0 = float(rng.uniform(lo, hi))
                p = self._lane_point(li, s0)
                if any(np.linalg.norm(p - q) < 0.5 * dims[0] + EGO_SIZE[0] + 6.0 for q in placed):
                    continue
                lanes = _find_route(town, self.lane_len, li, self.lane_len[li] - s0, need, True, rng)
                if lanes is None:
                    continue
                placed.append(p)
                agents.append(self._background(kind, lanes, s0, dims, 0, placed=True))
                break
        return agents

    def _plan_arrivals(self) -> list[dict]:
        """Vehicles entering the town during the run: a Poisson process per entry lane."""
        town, cfg, rng = self.town, self.cfg, self.rng
        horizon = self.num_steps * self.dt  # [s]
        need = horizon * self.max_limit + _LOOK + 20.0  # [m]
        entries = [k for k, lane in enumerate(town.lanes) if not lane.predecessors and not lane.is_connector]
        agents = []
        for li in entries:
            t = 0.0
            while cfg.entry_rate > 0:
                t += float(rng.exponential(1.0 / cfg.entry_rate))
                if t >= horizon:
                    break
                dims = self._dims(AgentType.VEHICLE)
                lanes = _find_route(town, self.lane_len, li, self.lane_len[li], need, True, rng)
                if lanes is not None:
                    step = int(t / self.dt)
                    s0 = 0.5 * dims[0] + 0.2
                    agents.append(self._background(AgentType.VEHICLE, lanes, s0, dims, step, placed=False))
        return agents


    def _dims(self, kind: AgentType) -> tuple[float, float, float]:
        rng = self.rng
        if kind == AgentType.CYCLIST:
            return (rng.uniform(1.7, 1.9), rng.uniform(0.6, 0.8), rng.uniform(1.6, 1.8))
        if rng.random() < 0.2:  # Vans and large SUVs.
            return (rng.uniform(4.8, 5.6), rng.uniform(1.9, 2.1), rng.uniform(1.7, 2.1))
        return (rng.uniform(4.2, 5.0), rng.uniform(1.75, 2.0), rng.uniform(1.4, 1.7))

    def _background(self, kind: AgentType, lanes: list[int], s0: float, dims, t0: int, placed: bool) -> dict:
        cfg, rng = self.cfg, self.rng
        cyclist = kind == AgentType.CYCLIST
        return dict(
            kind=kind, lanes=lanes, s0=s0, L=dims[0], W=dims[1], H=dims[2],
            a=rng.uniform(*cfg.max_accel) * (0.6 if cyclist else 1.0),
            T=rng.uniform(*cfg.time_headway), s_min=cfg.min_gap,
            factor=rng.uniform(*cfg.speed_factor),
            cap=rng.uniform(*cfg.cyclist_speed) if cyclist else np.inf,
            lat=cfg.lateral_accel, yellow=cfg.yellow_decel, t0=t0, placed=placed, expert=False,
        )  # fmt: skip

    def _lane_point(self, lane: int, s: float) -> np.ndarray:
        p = self.town.lanes[lane].points
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
        return np.array([np.interp(s, arc, p[:, 0]), np.interp(s, arc, p[:, 1])])

    def _init_route_agents(self, agents: list[dict]) -> None:
        town = self.town
        v = len(agents)
        self.nv = v
        routes = [_build_route(town, a["lanes"], a["factor"], a["cap"], a["lat"]) for a in agents]
        self.routes = routes
        self.stacked = Routes.stack(routes)
        self.r_pts, self.r_vmax, self.r_len = self.stacked.points, self.stacked.vmax, self.stacked.length

        # Controlled stops along each route: connectors entering junctions.
        stops = []
        for i, r in enumerate(routes):
            rows = []
            for k, li in enumerate(r.lanes):
                lane = town.lanes[li]
                if lane.is_connector and r.lane_starts[k] > 1e-6:
                    end = r.lane_starts[k + 1] if k + 1 < len(r.lanes) else r.length
                    rows.append((r.lane_starts[k], end, li, lane.junction, self.signal_row.get(li, -1)))
            stops.append(rows)
        smax = max(1, max(len(s) for s in stops))
        self.st_arc = np.full((v, smax + 1), np.inf)
        self.st_end = np.full((v, smax + 1), np.inf)
        self.st_lane = np.full((v, smax + 1), -1, dtype=np.int64)
        self.st_junction = np.full((v, smax + 1), -1, dtype=np.int64)
        self.st_light = np.full((v, smax + 1), -1, dtype=np.int64)
        for i, rows in enumerate(stops):
            for k, (a, b, li, jn, row) in enumerate(rows):
                self.st_arc[i, k], self.st_end[i, k] = a, b
                self.st_lane[i, k], self.st_junction[i, k], self.st_light[i, k] = li, jn, row

        # Crosswalk crossings along each route: (agent, start arc, end arc) per crosswalk.
        self.cw_cross: list[list[tuple[int, float, float]]] = [[] for _ in town.crosswalks]
        lane_cw = self._lane_crosswalk_spans()
        for i, r in enumerate(routes):
            for k, li in enumerate(r.lanes):
                for cw, a, b in lane_cw.get(li, ()):
                    self.cw_cross[cw].append((i, r.lane_starts[k] + a, r.lane_starts[k] + b))

        def col(name, dtype=np.float64):
            return np.array([a[name] for a in agents], dtype=dtype)

        self.kind = col("kind", np.int8)
        self.L, self.W, self.H = col("L"), col("W"), col("H")
        self.a_max, self.T, self.s_min = col("a"), col("T"), col("s_min")
        self.b = np.full(v, self.cfg.comfort_decel)
        self.idm = IDMParameters(
            max_accel=self.a_max, comfort_decel=self.b, time_headway=self.T, min_gap=self.s_min,
            stop_gap=_STOP_GAP, exponent=4.0, max_decel=self.cfg.max_decel,
        )  # fmt: skip
        self.yellow = col("yellow")
        self.t0 = col("t0", np.int64)
        self.expert = col("expert", bool)
        self.s = col("s0")
        self.v = np.zeros(v)
        self.active = col("placed", bool)  # Placed at t = 0 ...
        self.pending = ~self.active  # ... or entering the town later.
        self.yellow_stop = np.full(v, -1, dtype=np.int64)  # Stop index decided at yellow ...
        self.yellow_go = np.zeros(v, dtype=bool)  # ... and whether it goes.
        self.sign_stopped = np.full(v, -1, dtype=np.int64)
        self.sign_time = np.zeros(v)
        self.sign_granted = np.full(v, -1, dtype=np.int64)

    def _lane_crosswalk_spans(self) -> dict[int, list[tuple[int, float, float]]]:
        """Arc ranges [m] of connectors over the crosswalks of their junction's arms."""
        town = self.town
        out: dict[int, list[tuple[int, float, float]]] = {}
        by_arm = {(c.junction, c.arm): k for k, c in enumerate(town.crosswalks)}
        for li, lane in enumerate(town.lanes):
            if not lane.is_connector:
                continue
            line = shapely.LineString(lane.points)
            for arm in {lane.entry_arm, lane.exit_arm}:
                cw = by_arm.get((lane.junction, arm))
                if cw is None:
                    continue
                part = line.intersection(shapely.Polygon(town.crosswalks[cw].ring))
                if part.is_empty:
                    continue
                pts = shapely.get_coordinates(part)
                arcs = line.project(shapely.points(pts))
                out.setdefault(li, []).append((cw, float(arcs.min()), float(arcs.max())))
        return out

    def _init_pedestrians(self) -> None:
        cfg, rng = self.cfg, self.rng
        paths, gates = [], []
        for _ in range(cfg.num_pedestrians):
            for _ in range(10):
                res = _pedestrian_path(self.town, rng, crossings=6)
                if res is None or all(np.linalg.norm(res[0][0] - q[0]) > 1.5 for q in paths):
                    break
            if res is None:
                break
            paths.append(res[0])
            gates.append(res[1])
        self.np_ = len(paths)
        p = self.np_
        m = max([q.shape[0] for q in paths], default=2)
        self.p_pts = np.zeros((p, m, 2))
        self.p_arc = np.zeros((p, m))
        self.p_len = np.zeros(p)
        for k, q in enumerate(paths):
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(q, axis=0), axis=1))])
            self.p_pts[k, : len(q)], self.p_pts[k, len(q) :] = q, q[-1]
            self.p_arc[k, : len(q)] = arc
            self.p_arc[k, len(q) :] = arc[-1] + 1e-3 * np.arange(1, m - len(q) + 1)
            self.p_len[k] = arc[-1]
        g = max([len(x) for x in gates], default=1)
        self.p_gate = np.full((p, g + 1), np.inf)
        self.p_land = np.full((p, g + 1), -np.inf)  # Arc where each crossing ends.
        self.p_gate_cw = np.full((p, g + 1), -1, dtype=np.int64)
        for k, rows in enumerate(gates):
            for j, (a, cw) in enumerate(rows):
                self.p_gate[k, j], self.p_gate_cw[k, j] = a, cw
                self.p_land[k, j] = a + 2.0 * self.town.crosswalks[cw].half_length
        self.p_next = np.zeros(p, dtype=np.int64)  # Next gate not yet passed.
        self.p_s = np.zeros(p)
        self.p_speed = rng.uniform(*cfg.pedestrian_speed, size=p)
        self.p_dims = np.stack(
            [rng.uniform(0.5, 0.7, p), rng.uniform(0.5, 0.7, p), rng.uniform(1.6, 1.9, p)], axis=1
        ).reshape(p, 3)
        # Signal rows a crosswalk must see red (vehicles entering from or going straight into
        # its arm) before pedestrians may start crossing.
        town = self.town
        self.cw_rows = []
        for c in town.crosswalks:
            rows = [
                self.signal_row[li] for li in town.junctions[c.junction].connectors
                if li in self.signal_row and (town.lanes[li].entry_arm == c.arm or (
                    town.lanes[li].exit_arm == c.arm and town.lanes[li].movement == "straight"))
            ]  # fmt: skip
            self.cw_rows.append(np.array(rows, dtype=np.int64))

    def _init_parked(self) -> None:
        spots = self.town.parking_spots
        take = self.rng.random(spots.shape[0]) < self.cfg.parked_fraction
        self.parked = spots[take]
        k = self.parked.shape[0]
        self.k_dims = np.array([self._dims(AgentType.VEHICLE) for _ in range(k)]).reshape(k, 3)

    # --- Per-step pieces -----------------------------------------------------------------------

    def _route_pose(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V, 2) positions and (V, 2) unit tangents of route agents at arcs ``s`` (V,)."""
        return self.stacked.pose(s)

    def _ped_pose(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P, 2) positions and (P, 2) walking directions at path arcs ``s`` (P,)."""
        p = self.np_
        if p == 0:
            return np.zeros((0, 2)), np.zeros((0, 2))
        m = self.p_pts.shape[1]
        seg = np.clip((self.p_arc <= s[:, None]).sum(axis=1) - 1, 0, m - 2)
        rows = np.arange(p)
        a, b = self.p_pts[rows, seg], self.p_pts[rows, seg + 1]
        la = self.p_arc[rows, seg + 1] - self.p_arc[rows, seg]
        w = np.clip((s - self.p_arc[rows, seg]) / np.maximum(la, 1e-9), 0.0, 1.0)[:, None]
        d = b - a
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
        return a + w * (b - a), d

    def _ped_limit(self) -> np.ndarray:
        """(P,) furthest arc each pedestrian may walk to now (its next unpassed gate)."""
        rows = np.arange(self.np_)
        return np.minimum(self.p_gate[rows, self.p_next], self.p_len)

    def _obstacles(self, pos, tan, ped_pos, ped_dir) -> Boxes:
        """(A,) boxes of every agent, moving along their axes.

        Order: route agents, pedestrians (box swept over their next ``_PED_HORIZON`` s on
        sidewalks, over the rest of the crossing on crosswalks), parked cars. Inactive route agents are moved far away.
        """
        c_v = np.where(self.active[:, None], pos, _FAR)
        if self.np_:
            ahead = np.minimum(self.p_s + self.p_speed * _PED_HORIZON, self._ped_limit())
            # On a crosswalk: the rest of the crossing (vehicles yield until it is clear).
            land = self.p_land[np.arange(self.np_), np.maximum(self.p_next - 1, 0)]
            crossing = (self.p_next > 0) & (self.p_s < land)
            ahead = np.maximum(np.where(crossing, land, ahead), self.p_s)
            fut, _ = self._ped_pose(ahead)
            sweep = np.linalg.norm(fut - ped_pos, axis=1)
            c_p = 0.5 * (ped_pos + fut)
            e_p = np.where(sweep[:, None] > 1e-6, (fut - ped_pos) / np.maximum(sweep, 1e-9)[:, None], ped_dir)
            hl_p = 0.5 * self.p_dims[:, 0] + 0.5 * sweep
            hw_p = 0.5 * self.p_dims[:, 1]
        else:
            c_p = e_p = np.zeros((0, 2))
            hl_p = hw_p = np.zeros(0)
        k = self.parked.shape[0]
        c_k = self.parked[:, :2]
        e_k = np.stack([np.cos(self.parked[:, 2]), np.sin(self.parked[:, 2])], axis=1).reshape(k, 2)
        centres = np.concatenate([c_v, c_p, c_k])
        axes = np.concatenate([tan, e_p, e_k])
        half_l = np.concatenate([0.5 * self.L, hl_p, 0.5 * self.k_dims[:, 0]])
        half_w = np.concatenate([0.5 * self.W, hw_p, 0.5 * self.k_dims[:, 1]])
        speed = np.concatenate([np.where(self.active, self.v, 0.0), np.zeros(self.np_ + k)])
        return Boxes(centres, axes, half_l, half_w, speed=speed)

    def _corridor(self, obstacles: Boxes) -> tuple[np.ndarray, np.ndarray]:
        """Nearest obstacle ahead of each route agent along its route: the first centreline
        sample (every 1 m for ``_LOOK`` m from the front bumper) closer than half the agent's
        width plus ``_MARGIN`` to a box (a bumper rounded to a half disk; conservative). When
        two route agents see each other, the one nearer the conflict goes first.

        Returns:
            (V,) gap from the front bumper to the obstacle [m] (inf: none within the
            lookahead) and (V,) the obstacle's speed along the route [m/s].
        """
        nv = self.nv
        gap = np.full(nv, np.inf)
        lead_v = np.zeros(nv)
        act = np.flatnonzero(self.active)
        if act.size == 0:
            return gap, lead_v
        front = self.s[act] + 0.5 * self.L[act]
        samples, tang, ok = self.stacked.lookahead(act, front, _LOOK)
        hits = path_hits(samples, tang, obstacles, 0.5 * self.W[act] + _MARGIN, sample_valid=ok, exclude=act)
        lead = hits.yield_mutual().nearest(act.size)
        has = lead.sample >= 0
        gap[act[has]] = lead.sample[has].astype(np.float64)
        lead_v[act[has]] = lead.speed[has]
        return gap, lead_v

    def _control(self, t: int, gap: np.ndarray, lead_v: np.ndarray) -> np.ndarray:
        """(V,) gap [m] from the front bumper to a stop line the agent must stop at (inf: none)."""
        nv = self.nv
        rows = np.arange(nv)
        front = self.s + 0.5 * self.L
        nxt = (self.st_arc < front[:, None]).sum(axis=1)
        sigma = self.st_arc[rows, nxt] - front
        light = self.st_light[rows, nxt]
        junction = self.st_junction[rows, nxt]
        near = self.active & np.isfinite(sigma) & (sigma < 120.0)
        stop = np.zeros(nv, dtype=bool)

        if self.lights.shape[0]:
            state = np.where(light >= 0, self.lights[np.maximum(light, 0), t], LightState.GO)
        else:
            state = np.full(nv, int(LightState.GO))
        signal = near & (light >= 0)
        stop |= signal & (state == LightState.STOP)
        caution = signal & (state == LightState.CAUTION)
        fresh = caution & (self.yellow_stop != nxt)
        need = self.v**2 / (2.0 * np.maximum(sigma, 0.01))
        self.yellow_go[fresh] = need[fresh] > self.yellow[fresh]
        self.yellow_stop[fresh] = nxt[fresh]
        stop |= caution & ~self.yellow_go

        sign = near & (light < 0) & (junction >= 0)
        waiting = sign & (self.sign_granted != nxt)
        arrived = waiting & (self.v < _STOPPED) & (sigma < _SIGN_REACH) & (self.sign_stopped != nxt)
        self.sign_stopped[arrived] = nxt[arrived]
        self.sign_time[arrived] = t
        if (waiting & (self.sign_stopped == nxt)).any():
            self._grant(nxt, waiting & (self.sign_stopped == nxt))
        stop |= sign & (self.sign_granted != nxt)

        # Do not enter a junction whose exit is blocked (or with someone on the crosswalk).
        finite = np.isfinite(sigma)
        conn_len = np.where(finite, self.st_end[rows, nxt], 0.0) - np.where(finite, self.st_arc[rows, nxt], 0.0)
        blocked = near & ~stop & (gap < sigma + conn_len + 2.0) & (lead_v < 1.0) & (sigma > 0.5)
        blocked &= self.v**2 / (2.0 * np.maximum(sigma, 0.01)) < 3.0
        stop |= blocked
        return np.where(stop, np.maximum(sigma, 0.0), np.inf)

    def _grant(self, nxt: np.ndarray, ready: np.ndarray) -> None:
        """First come, first served at all-way stops: grant waiting vehicles whose movement
        conflicts with nobody inside (or granted at) the junction."""
        town = self.town
        rows = np.arange(self.nv)
        lane = self.st_lane[rows, nxt]
        junction = self.st_junction[rows, nxt]
        front = self.s + 0.5 * self.L
        rear = self.s - 0.5 * self.L
        # Occupants: active agents whose body overlaps a connector of a stop-sign junction, or
        # that hold a grant they have not used yet.
        k = np.arange(self.st_arc.shape[1])[None]
        inside = (rear[:, None] < self.st_end) & (front[:, None] > self.st_arc)
        holding = (self.sign_granted[:, None] == k) & (front[:, None] <= self.st_arc)
        occ_i, occ_k = np.nonzero(self.active[:, None] & np.isfinite(self.st_arc) & (inside | holding))
        occupied: dict[int, list[int]] = {}
        for jn, c in zip(self.st_junction[occ_i, occ_k], self.st_lane[occ_i, occ_k]):
            occupied.setdefault(int(jn), []).append(int(c))
        for i in sorted(np.flatnonzero(ready), key=lambda i: (self.sign_time[i], i)):
            jn = town.junctions[int(junction[i])]
            local = {c: q for q, c in enumerate(jn.connectors)}
            mine = local[int(lane[i])]
            others = [local[c] for c in occupied.get(int(junction[i]), []) if c in local]
            if any(jn.conflicts[mine, o] for o in others):
                continue
            self.sign_granted[i] = nxt[i]
            occupied.setdefault(int(junction[i]), []).append(int(lane[i]))

    def _step_vehicles(self, t: int, gap: np.ndarray, lead_v: np.ndarray, stop_gap: np.ndarray) -> None:
        # Speed limits and curves: v0 at the body, and the deceleration needed for slower
        # limits ahead.
        v0, need = self.stacked.desired_speed(self.s, self.v, self.L, self.dt, behind=_BEHIND, ahead=_LOOK)
        # Gaps count as at least 0.1 m: detection is >= 0.4 m early (rounded bumper), see _corridor.
        acc = idm_acceleration(
            self.idm, self.v, v0, np.maximum(gap, 0.1), lead_v, stop_gap=np.maximum(stop_gap, 0.1), ceiling=need
        )  # fmt: skip
        s_new, v_new = advance(self.s, self.v, acc, self.dt)
        self.s = np.where(self.active, s_new, self.s)
        self.v = np.where(self.active, v_new, self.v)
        done = self.active & (self.s + 0.5 * self.L >= self.r_len - 0.5)
        done &= ~self.expert  # Experts' routes outlast the log.
        self.active &= ~done

    def _spawn(self, t: int, pos: np.ndarray) -> None:
        """Lets vehicles due at a town entry in, once the entry is clear."""
        due = np.flatnonzero(self.pending & (self.t0 <= t))
        for i in due:
            start = self.r_pts[i, 0]
            others = np.flatnonzero(self.active)
            if others.size:
                d = np.linalg.norm(pos[others] - start, axis=1) - 0.5 * self.L[others]
                if d.min() < 0.5 * self.L[i] + 12.0:
                    continue  # Entry occupied; try again next step.
            self.pending[i] = False
            self.active[i] = True
            self.v[i] = 0.6 * float(self.r_vmax[i, 0])

    def _permit(self, t: int, cw: int, speed: float) -> bool:
        """Whether a pedestrian may start crossing crosswalk ``cw`` now."""
        c = self.town.crosswalks[cw]
        duration = 2.0 * c.half_length / speed + 2.0
        rows = self.cw_rows[cw]
        if rows.size:
            t1 = min(self.lights.shape[1], t + int(math.ceil(duration / self.dt)) + 1)
            if (self.lights[rows, t:t1] != LightState.STOP).any():
                return False
        for i, a, b in self.cw_cross[cw]:
            if not self.active[i]:
                continue
            front = self.s[i] + 0.5 * self.L[i]
            rear = self.s[i] - 0.5 * self.L[i]
            if rear < b + 0.5 and front > a - 0.5:
                return False
            sigma = a - front
            v = self.v[i]
            if 0 < sigma < v * v / 3.0 + v + 1.0:
                return False
        return True

    def _step_pedestrians(self, t: int, pos: np.ndarray, tan: np.ndarray, ped_pos, ped_dir) -> None:
        if self.np_ == 0:
            return
        rows = np.arange(self.np_)
        gate = self.p_gate[rows, self.p_next]
        at_gate = np.flatnonzero(self.p_s >= gate - 1e-6)
        for k in at_gate:
            if self._permit(t, int(self.p_gate_cw[k, self.p_next[k]]), float(self.p_speed[k])):
                self.p_next[k] += 1
        limit = self._ped_limit()
        # Do not walk into a vehicle: check points 0.4-1.2 m ahead along the path.
        probe_s = np.minimum(self.p_s[:, None] + np.array([0.4, 0.8, 1.2])[None], self.p_len[:, None])
        probe = np.stack([self._ped_pose(probe_s[:, j])[0] for j in range(3)], axis=1)  # (P, 3, 2)
        act = np.flatnonzero(self.active)
        blocked = np.zeros(self.np_, dtype=bool)
        if act.size:
            rel = probe[:, :, None, :] - pos[act][None, None]  # (P, 3, a, 2)
            e = tan[act][None, None]
            lx = np.abs(rel[..., 0] * e[..., 0] + rel[..., 1] * e[..., 1]) - 0.5 * self.L[act]
            ly = np.abs(rel[..., 1] * e[..., 0] - rel[..., 0] * e[..., 1]) - 0.5 * self.W[act]
            near = (np.maximum(lx, 0) ** 2 + np.maximum(ly, 0) ** 2) < (0.3 + 0.5 * self.p_dims[:, 0, None, None]) ** 2
            blocked = near.any(axis=(1, 2))
        # Queue behind pedestrians ahead, unless they walk towards us (then keep right).
        rel = probe[:, :, None, :] - ped_pos[None, None]  # (P, 3, P, 2)
        close = (np.linalg.norm(rel, axis=-1) < 0.6).any(axis=1)  # (P, P)
        standing = self.p_s >= self._ped_limit() - 1e-6  # Waiting at a gate or done.
        same_way = (ped_dir @ ped_dir.T > -0.3) | standing[None, :]
        ahead = np.einsum("pqd,pd->pq", ped_pos[None] - ped_pos[:, None], ped_dir) > 0.1
        blocked |= (close & same_way & ahead).any(axis=1)
        step = np.where(blocked, 0.0, self.p_speed * self.dt)
        self.p_s = np.minimum(self.p_s + step, np.maximum(limit, self.p_s))

    # --- Main loop -----------------------------------------------------------------------------

    def run(self) -> TrafficLog:
        nv, npd, nk, n_steps = self.nv, self.np_, self.parked.shape[0], self.num_steps
        n = nv + npd + nk
        x = np.zeros((n, n_steps))
        y = np.zeros((n, n_steps))
        heading = np.zeros((n, n_steps))
        valid = np.zeros((n, n_steps), dtype=bool)
        lane = np.full((n, n_steps), -1, dtype=np.int64)

        pos, tan = self._route_pose(self.s)
        # Initial speeds: a fraction of the desired speed, low enough to stop for what is ahead.
        ped_pos, ped_dir = self._ped_pose(self.p_s)
        gap, lead_v = self._corridor(self._obstacles(pos, tan, ped_pos, ped_dir))
        front = self.s + 0.5 * self.L
        nxt = (self.st_arc < front[:, None]).sum(axis=1)
        sigma = np.minimum(gap, self.st_arc[np.arange(nv), nxt] - front)
        here = np.minimum((self.s / _DS).astype(np.int64), self.r_pts.shape[1] - 1)
        v_init = self.rng.uniform(0.4, 1.0, nv) * self.r_vmax[np.arange(nv), here]
        self.v = np.where(self.active, np.minimum(v_init, np.sqrt(2.0 * 2.0 * np.maximum(sigma - 4.0, 0.0))), 0.0)

        rear_offset = np.where(self.kind == AgentType.VEHICLE, REAR_AXLE_RATIO * self.L, 0.0)
        for t in range(n_steps):
            pos, tan = self._route_pose(self.s)
            self._spawn(t, pos)
            ped_pos, ped_dir = self._ped_pose(self.p_s)
            act = self.active
            # Log kinematically: the rear axle runs on the route and the body points along the
            # route there (a bicycle's rear axle never slips sideways), so trackers that model a
            # kinematic bicycle can follow the log through turns.
            rear_pos, rear_tan = self._route_pose(np.maximum(self.s - rear_offset, 0.0))
            centre = rear_pos + rear_offset[:, None] * rear_tan
            x[:nv, t] = np.where(act, centre[:, 0], 0.0)
            y[:nv, t] = np.where(act, centre[:, 1], 0.0)
            heading[:nv, t] = np.where(act, np.arctan2(rear_tan[:, 1], rear_tan[:, 0]), 0.0)
            valid[:nv, t] = act
            lane[:nv, t] = np.where(act, self.stacked.lane_at(self.s), -1)
            x[nv : nv + npd, t] = ped_pos[:, 0]
            y[nv : nv + npd, t] = ped_pos[:, 1]
            heading[nv : nv + npd, t] = np.arctan2(ped_dir[:, 1], ped_dir[:, 0])
            valid[nv : nv + npd, t] = True

            obstacles = self._obstacles(pos, tan, ped_pos, ped_dir)
            gap, lead_v = self._corridor(obstacles)
            stop_gap = self._control(t, gap, lead_v)
            self._step_vehicles(t, gap, lead_v, stop_gap)
            self._step_pedestrians(t, pos, tan, ped_pos, ped_dir)

        x[nv + npd :] = self.parked[:, 0, None]
        y[nv + npd :] = self.parked[:, 1, None]
        heading[nv + npd :] = self.parked[:, 2, None]
        valid[nv + npd :] = True

        kinds = np.concatenate([
            self.kind,
            np.full(npd, int(AgentType.PEDESTRIAN), dtype=np.int8),
            np.full(nk, int(AgentType.VEHICLE), dtype=np.int8),
        ])  # fmt: skip
        length = np.concatenate([self.L, self.p_dims[:, 0], self.k_dims[:, 0]])
        width = np.concatenate([self.W, self.p_dims[:, 1], self.k_dims[:, 1]])
        height = np.concatenate([self.H, self.p_dims[:, 2], self.k_dims[:, 2]])
        rear = np.where(kinds == AgentType.VEHICLE, REAR_AXLE_RATIO * length, 0.0)
        return TrafficLog(
            types=kinds,
            length=length,
            width=width,
            height=height,
            rear_axle_offset=rear,
            x=x,
            y=y,
            heading=heading,
            valid=valid,
            lane=lane,
            routes=[list(r.lanes) for r in self.routes] + [[] for _ in range(npd + nk)],
            experts=np.flatnonzero(self.expert),
        )
