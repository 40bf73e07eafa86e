"""Route suites of the closed-loop evaluator: seeded routes through synthetic towns, each with
one scenario event grouped by Bench2Drive's abilities.

A route is a chain of lanes of the synthetic town ``synthetic:<town_seed>`` (the same town
``rap generate --source synthetic:<seed>`` draws), 150-400 m long, starting on a road lane (not
a junction connector) at ``start_speed`` (a moving start: 60-90 % of the first lane's speed
limit, low enough to stop at 2 m/s^2 before its stop line), plus one :class:`Event`:

================== ================= =====================================================
event              ability           what happens
================== ================= =====================================================
lead_brake         Emergency_Brake   a lead vehicle drives the ego's route ahead of it (90 % of
                                     the speed limit) and, past ``arc`` m with the ego within
                                     40 m and able to stop behind it at 1.2 m/s^2 (or 60 m
                                     later in any case), brakes at ``decel`` (2.5-3) m/s^2 to a
                                     stop, waits 3 s and goes on
cut_in             Emergency_Brake   a vehicle waits in a same-direction neighbour ``other_lane``
                                     of the route's road lane ``lane`` (as if in a jam), its
                                     box centre beside route arc ``arc``; when the ego's front
                                     bumper comes within ``v^2 / (2 decel) + 2`` m of its rear
                                     (``decel`` 2-2.5 m/s^2; at least 8 m), it pulls out into the
                                     ego's lane ahead of it (a forced lane change over 15 m,
                                     :mod:`~rap.eval.closed_loop.lane_changes`) and drives on
                                     along the route
ped_crossing       Emergency_Brake   a pedestrian waits on the right sidewalk at ``arc`` m and
                                     steps out across the road at ``speed`` (1.4-2) m/s when the
                                     ego (keeping its speed) would reach the crossing just as it
                                     reaches the ego's lane centre (and could still stop at
                                     2.5 m/s^2)
red_light          Traffic_Signs     the route crosses a signalized junction; the ego's light is
                                     held red until the ego has waited 4 s at the line (or 60 s)
stop_sign          Traffic_Signs     the route crosses an all-way-stop junction at ``arc`` m (the
                                     connector's start, the stop line); the ego must stop
                                     (< 0.1 m/s) with its front bumper within 6 m before the line
parked             Overtaking        a parked vehicle intrudes ``intrusion`` m into the route's
                                     lane at ``arc`` m; pass it by shifting towards the adjacent
                                     lane
crossing           Give_Way          a vehicle on a conflicting junction movement drives through
                                     (ignoring its light) as the ego approaches; yield to it
emergency_vehicle  Give_Way          an emergency vehicle comes up from behind on the ego's route
                                     at ``speed`` (1.25 x the speed limit of ``lane``, a road lane
                                     of >= 60 m with a same-direction neighbour ``other_lane``):
                                     it appears 120 m behind the ego's box centre when that
                                     reaches ``arc`` (5 m into ``lane``) and drives the route's
                                     lanes (ignoring lights); the ego must let it pass (move into
                                     the neighbour lane, slow down), judged as the leaderboard's
                                     YieldToEmergencyVehicleTest (its mean speed while behind the
                                     ego at least 95 % of ``speed``)
turn_traffic       Merging           the route turns into another road at a junction; extra
                                     vehicles drive on the road it merges into
================== ================= =====================================================

Suites (:func:`load_routes`): ``bench:base`` (:data:`BASE_VERSION` ``bench-base-v4``: 54 routes,
6 per event in the order of :data:`EVENTS_BASE_ORDER`; the routes of the five events of
``bench-base-v1`` are its first 6 routes of each (the same towns, lanes and events; v2 added the
moving start), the newer events are drawn in towns 1045 onwards, in that order, skipping towns
without such a route; v3 appends ``emergency_vehicle``, so the 42 routes of ``bench-base-v2``
keep their indices, towns, lanes and events; v4 appends ``cut_in`` and gives background
vehicles lane changes (``closed_loop.lane_change_fraction``) and the all-way stops crossing
pedestrians (``closed_loop.crosswalk_pedestrians_per_min``), so its first 48 routes are v3's
with livelier traffic), ``bench:dev10`` (a fixed 10-route subset of it, 2
per ability: :data:`DEV10_EVENTS`; v3 takes the first ``emergency_vehicle`` route instead of
v2's second ``crossing`` one) and ``synthetic:N`` (N routes with events drawn from the seed).
Everything is a pure function of the suite name: the same name gives the same routes.

=================== ================ ====== =========================================
ability             events           routes towns (bench:base)
=================== ================ ====== =========================================
Emergency_Brake     lead_brake,      18     1000-1005; first 6 with a route from 1045;
                    ped_crossing,           cut_in: first 6 with a route after the
                    cut_in                  emergency_vehicle towns
Traffic_Signs       red_light,       12     1009-1014; first 6 with a route after those
                    stop_sign
Overtaking          parked           6      1018-1023
Give_Way            crossing,        12     1027-1032; first 6 with a route after the
                    emergency_vehicle               stop_sign towns
Merging             turn_traffic     6      1036-1041
=================== ================ ====== =========================================
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from rap.sim.idm import route_path
from rap.sources.synthetic.roads import Town, TownConfig, build_town

__all__ = [
    "ABILITIES", "BASE_VERSION", "DEV10_EVENTS", "EV_BEHIND_M", "EV_LATERAL_ACCEL", "EV_LANE_M", "EV_SPEED_FACTOR", "EV_TRIGGER_M", "EVENTS_BASE_ORDER", "EVENT_ABILITY", "START_SPEED", "CUT_IN_DECEL", "Event", "RouteSpec",
    "build_route", "ev_lanes", "load_routes", "route_town",
]  # fmt: skip

BASE_VERSION = "bench-base-v4"
ABILITIES = ("Merging", "Overtaking", "Emergency_Brake", "Give_Way", "Traffic_Signs")
EVENT_ABILITY = {
    "turn_traffic": "Merging",
    "parked": "Overtaking",
    "lead_brake": "Emergency_Brake",
    "ped_crossing": "Emergency_Brake",
    "crossing": "Give_Way",
    "emergency_vehicle": "Give_Way",
    "red_light": "Traffic_Signs",
    "stop_sign": "Traffic_Signs",
    "cut_in": "Emergency_Brake",
}
EVENTS = tuple(EVENT_ABILITY)
MIN_LENGTH, MAX_LENGTH = 150.0, 400.0  # [m] route length
START_SPEED = (0.6, 0.9)  # moving starts: share of the first lane's speed limit (uniform)
_START_DECEL = 2.0  # [m/s^2] a moving start can still stop before the first lane's stop line at this
_START_MARGIN = 6.0  # [m] ... this far before it
_BASE_TOWN0 = 1000
_BASE_PER_EVENT = 6
# bench:base order: 6 routes per event, in this order
EVENTS_BASE_ORDER = ("lead_brake", "ped_crossing", "red_light", "stop_sign", "parked", "crossing", "turn_traffic", "emergency_vehicle", "cut_in")
# bench-base-v1's draws (town 1000 + draw, route drawn with index = draw) of its five events
_V1_DRAW0 = {"lead_brake": 0, "red_light": 9, "parked": 18, "crossing": 27, "turn_traffic": 36}
_NEW_DRAW0 = 45  # new events: draws from here on, in EVENTS_BASE_ORDER, skipping towns without the event
# bench:dev10: per event, which of its bench:base routes (0-5), in this order
DEV10_EVENTS = (
    ("lead_brake", 0), ("ped_crossing", 0), ("red_light", 0), ("stop_sign", 0), ("parked", 0), ("parked", 1),
    ("crossing", 0), ("emergency_vehicle", 0), ("turn_traffic", 0), ("turn_traffic", 1),
)  # fmt: skip
EV_SPEED_FACTOR = 1.25  # emergency vehicle: its speed, share of the speed limit of the event lane
EV_LATERAL_ACCEL = 5.0  # [m/s^2] its curve speed limit (the route is chosen so that it never binds before the event lane's end)
EV_BEHIND_M = 120.0  # [m] it appears this far behind the ego's box centre (along the route) ...
EV_TRIGGER_M = 5.0  # [m] ... when that is this far into the event lane
EV_LANE_M = 60.0  # [m] shortest event lane
CUT_IN_DECEL = (2.0, 2.5)  # [m/s^2] cut_in: the ego's deceleration to stop behind the vehicle when it pulls out
_CUT_IN_LANE_M = 75.0  # [m] shortest cut_in lane ...
_CUT_IN_BEFORE_M, _CUT_IN_AFTER_M = 20.0, 50.0  # [m] ... with this much of it before and after the vehicle


@dataclasses.dataclass(frozen=True)
class Event:
    """The scenario event of a route.

    Attributes:
        kind: one of :data:`EVENT_ABILITY`'s keys.
        arc: [m] along the route where it happens (brake point, parked car centre, the
            pedestrian's crossing, the junction connector's start).
        lane: index (into the town's lanes) of the lane it concerns: the signalized, stop-sign
            or turning connector, the parked car's or pedestrian's lane, the route's connector
            the crossing vehicle cuts, the road lane where the emergency vehicle passes.
        other_lane: ``crossing``: the conflicting connector; ``turn_traffic``: the lane the
            route merges into; ``emergency_vehicle``: a same-direction neighbour of ``lane``
            (the right one where there is one); else -1.
        decel: [m/s^2] ``lead_brake`` deceleration.
        intrusion: [m] ``parked``: how far the parked car reaches into the lane from its right edge.
        speed: [m/s] ``ped_crossing``: the pedestrian's walking speed; ``emergency_vehicle``: the
            emergency vehicle's target speed.
    """

    kind: str
    arc: float
    lane: int
    other_lane: int = -1
    decel: float = 0.0
    intrusion: float = 0.0
    speed: float = 0.0

    @property
    def ability(self) -> str:
        """The Bench2Drive ability the event exercises."""
        return EVENT_ABILITY[self.kind]


@dataclasses.dataclass(frozen=True)
class RouteSpec:
    """One route of a suite.

    Attributes:
        route_id: ``RouteScenario_<index>``.
        index: position in the suite.
        town_seed: the synthetic town (``synthetic:<town_seed>``'s road network).
        lanes: town lane indices in driving order.
        start_arc: [m] where the ego starts on the first lane.
        length: [m] route length from the start.
        event: the scenario event.
        seed: seeds the background traffic.
        start_speed: [m/s] the ego's speed at the start (``closed_loop.standing_start`` ignores it).
    """

    route_id: str
    index: int
    town_seed: int
    lanes: tuple[int, ...]
    start_arc: float
    length: float
    event: Event
    seed: int
    start_speed: float = 0.0

    @property
    def abilities(self) -> tuple[str, ...]:
        """The abilities the route exercises."""
        return (self.event.ability,)

    @property
    def scenario_name(self) -> str:
        """``<Ability>_<event>`` (results.json ``scenario_name``)."""
        return f"{self.event.ability}_{self.event.kind}"

    @property
    def town_name(self) -> str:
        """``synthetic:<town_seed>``."""
        return f"synthetic:{self.town_seed}"


@functools.lru_cache(maxsize=16)
def route_town(town_seed: int) -> Town:
    """The road network of ``synthetic:<town_seed>`` (cached)."""
    town_seq, _ = np.random.SeedSequence(int(town_seed)).spawn(2)
    return build_town(TownConfig(), np.random.default_rng(town_seq))


def _lane_length(town: Town, i: int) -> float:
    p = town.lanes[i].points
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())


def _turn_angle(town: Town, i: int) -> float:
    p = town.lanes[i].points
    a, b = p[1] - p[0], p[-1] - p[-2]
    return float(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b))


def _walk(town: Town, rng: np.random.Generator, start: int, start_arc: float, length: float) -> list[int] | None:
    lanes = [start]
    total = _lane_length(town, start) - start_arc
    while total < length:
        succ = town.lanes[lanes[-1]].successors
        if not succ:
            return None
        nxt = int(succ[int(rng.integers(len(succ)))])
        lanes.append(nxt)
        total += _lane_length(town, nxt)
    return lanes


def _arcs(town: Town, lanes: list[int], start_arc: float) -> np.ndarray:
    """Route arc [m] where each lane starts (the first lane's start is before 0)."""
    lengths = np.array([_lane_length(town, i) for i in lanes])
    return np.concatenate([[0.0], np.cumsum(lengths)[:-1]]) - start_arc


def _event(kind: str, town: Town, lanes: list[int], start_arc: float, length: float, rng: np.random.Generator) -> Event | None:
    arcs = _arcs(town, lanes, start_arc)
    if kind in ("red_light", "stop_sign", "crossing", "turn_traffic"):
        signal = set(int(i) for i in town.signal_lanes)
        for k, lane in enumerate(lanes):
            ln = town.lanes[lane]
            if not ln.is_connector or not 50.0 <= arcs[k] <= length - 40.0:
                continue
            if kind == "red_light" and lane in signal:
                return Event(kind, float(arcs[k]), lane)
            if kind == "stop_sign" and not town.junctions[ln.junction].signalized:
                return Event(kind, float(arcs[k]), lane)
            if kind == "turn_traffic" and ln.movement in ("left", "right"):
                return Event(kind, float(arcs[k]), lane, other_lane=int(ln.successors[0]))
            if kind == "crossing" and ln.movement == "straight":
                jn = town.junctions[ln.junction]
                me = jn.connectors.index(lane)
                others = [jn.connectors[q] for q in np.flatnonzero(jn.conflicts[me]) if town.lanes[jn.connectors[q]].movement == "straight"]
                others = [q for q in others if town.lanes[q].entry_arm != ln.entry_arm and town.lanes[q].successors != ln.successors]
                if others:
                    return Event(kind, float(arcs[k]), lane, other_lane=int(others[int(rng.integers(len(others)))]))
        return None
    if kind == "emergency_vehicle":
        return _ev_event(town, lanes, arcs, length)
    if kind == "cut_in":
        return _cut_in_event(town, lanes, arcs, length, rng)
    # lead_brake / parked / ped_crossing: a point on a road lane, away from the lane's ends
    for k, lane in enumerate(lanes):
        ln = town.lanes[lane]
        lane_len = _lane_length(town, lane)
        lo, hi = max(arcs[k] + 20.0, 60.0), min(arcs[k] + lane_len - 20.0, length - 40.0)
        if ln.is_connector or hi < lo:
            continue
        arc = float(lo + (hi - lo) * rng.uniform(0.2, 0.6))
        if kind == "parked":
            return Event(kind, arc, lane, intrusion=float(rng.uniform(0.6, 0.9)))
        if kind == "ped_crossing":
            return Event(kind, arc, lane, speed=round(float(rng.uniform(1.4, 2.0)), 3))
        return Event(kind, arc, lane, decel=float(rng.uniform(2.5, 3.0)))
    return None


def _straightest(town: Town, lane: int) -> int:
    return int(min(town.lanes[lane].successors, key=lambda i: abs(_turn_angle(town, i))))


def ev_lanes(town: Town, route_lanes, lane: int, beyond: float = 100.0) -> list[int]:
    """The emergency vehicle's lanes: ``route_lanes`` up to the event lane ``lane``, then on
    along the straightest successors for ``beyond`` m (it does not follow the ego's turns: a
    vehicle that has to slow for a turn ahead of it would be slowed by no fault of the ego)."""
    out = [int(i) for i in route_lanes[: list(route_lanes).index(lane) + 1]]
    total = 0.0
    while total < beyond and town.lanes[out[-1]].successors and len(out) < 60:
        out.append(_straightest(town, out[-1]))
        total += _lane_length(town, out[-1])
    return out


def _ev_event(town: Town, lanes: list[int], arcs: np.ndarray, length: float) -> Event | None:
    """The first road lane of the route with a same-direction neighbour where an emergency vehicle
    can come up from behind and pass: at least EV_LANE_M long, the trigger point (EV_TRIGGER_M
    into it) at least EV_BEHIND_M + 5 m into the route, the lane ending 30 m before the route's
    end, and the vehicle's way (:func:`ev_lanes`) straight enough that its curve limit
    (EV_LATERAL_ACCEL) stays above its speed from where it appears to 60 m past the lane's end."""
    for k, lane in enumerate(lanes):
        ln = town.lanes[lane]
        lane_len = _lane_length(town, lane)
        if ln.is_connector or not (ln.left or ln.right) or k < 1 or lane_len < EV_LANE_M:
            continue
        if not EV_BEHIND_M + 5.0 <= arcs[k] + EV_TRIGGER_M <= length - lane_len - 30.0 + EV_TRIGGER_M:
            continue
        speed = round(EV_SPEED_FACTOR * ln.speed_limit, 3)
        chain = ev_lanes(town, lanes, lane)
        path = route_path([town.lanes[i].points for i in chain], [speed] * len(chain), chain, spacing=0.5, smoothing=2.0, lateral_accel=EV_LATERAL_ACCEL)
        end = float(path.lane_starts[k]) + lane_len
        s = np.arange(len(path.vmax)) * path.spacing
        span = (s >= end - lane_len + EV_TRIGGER_M - EV_BEHIND_M - 5.0) & (s <= end + 60.0)
        if not span.any() or float(path.vmax[span].min()) < speed - 1e-6:
            continue
        other = int(ln.right[0]) if ln.right else int(ln.left[0])
        return Event("emergency_vehicle", float(arcs[k]) + EV_TRIGGER_M, lane, other_lane=other, speed=speed)
    return None


def _cut_in_event(town: Town, lanes: list[int], arcs: np.ndarray, length: float, rng: np.random.Generator) -> Event | None:
    """The first road lane of the route with a same-direction neighbour, at least
    ``_CUT_IN_LANE_M`` long, with room for the waiting vehicle ``_CUT_IN_BEFORE_M`` into it and
    ``_CUT_IN_AFTER_M`` before its end, 60 m into the route or later and 40 m before its end."""
    for k, lane in enumerate(lanes):
        ln = town.lanes[lane]
        lane_len = _lane_length(town, lane)
        if ln.is_connector or not (ln.left or ln.right) or lane_len < _CUT_IN_LANE_M:
            continue
        lo, hi = max(arcs[k] + _CUT_IN_BEFORE_M, 60.0), min(arcs[k] + lane_len - _CUT_IN_AFTER_M, length - 40.0)
        if hi < lo:
            continue
        other = int(ln.left[0]) if ln.left else int(ln.right[0])
        arc = float(lo + (hi - lo) * rng.uniform(0.0, 1.0))
        return Event("cut_in", round(arc, 3), lane, other_lane=other, decel=round(float(rng.uniform(*CUT_IN_DECEL)), 3))
    return None


def _start_speed(town: Town, start: int, start_arc: float, rng: np.random.Generator) -> float:
    """[m/s] a moving start: :data:`START_SPEED` of the lane's limit, capped so that the ego can
    stop at ``_START_DECEL`` ``_START_MARGIN`` m before the lane's end (a junction's stop line)."""
    lane = town.lanes[start]
    room = max(_lane_length(town, start) - start_arc - _START_MARGIN, 0.0)
    return round(min(float(rng.uniform(*START_SPEED)) * lane.speed_limit, float(np.sqrt(2.0 * _START_DECEL * room))), 3)


def build_route(index: int, town_seed: int, kind: str, seed: int, tries: int = 400) -> RouteSpec:
    """A route with event ``kind`` in town ``town_seed``, drawn from ``seed``.

    Raises:
        ValueError: an unknown event, or no route with that event in the town after ``tries``.
    """
    if kind not in EVENT_ABILITY:
        raise ValueError(f"route {index}: unknown event {kind!r}; expected one of {list(EVENT_ABILITY)}")
    town = route_town(town_seed)
    rng = np.random.default_rng([int(seed), int(town_seed), int(index)])
    starts = [i for i, ln in enumerate(town.lanes) if not ln.is_connector and ln.successors and _lane_length(town, i) >= 30.0]
    for _ in range(tries):
        start = starts[int(rng.integers(len(starts)))]
        start_arc = float(rng.uniform(2.0, min(15.0, _lane_length(town, start) - 10.0)))
        length = float(rng.uniform(MIN_LENGTH, MAX_LENGTH))
        lanes = _walk(town, rng, start, start_arc, length)
        if lanes is None:
            continue
        event = _event(kind, town, lanes, start_arc, length, rng)
        if event is not None:
            # the start speed from its own stream: the route's geometry does not depend on it
            speed = _start_speed(town, start, start_arc, np.random.default_rng([int(seed), int(town_seed), int(index), 1]))
            return RouteSpec(
                f"RouteScenario_{index}", index, int(town_seed), tuple(lanes), start_arc, round(length, 3), event, int(seed) * 1000 + index, speed,
            )  # fmt: skip
    raise ValueError(f"route {index}: no {kind} route found in synthetic:{town_seed} after {tries} tries")


def _renumbered(spec: RouteSpec, index: int) -> RouteSpec:
    return dataclasses.replace(spec, index=index, route_id=f"RouteScenario_{index}")


@functools.lru_cache(maxsize=4)
def _base() -> tuple[RouteSpec, ...]:
    per_event: dict[str, list[RouteSpec]] = {}
    draw = _NEW_DRAW0
    for kind in EVENTS_BASE_ORDER:
        if kind in _V1_DRAW0:
            d0 = _V1_DRAW0[kind]
            per_event[kind] = [build_route(d, _BASE_TOWN0 + d, kind, seed=0) for d in range(d0, d0 + _BASE_PER_EVENT)]
            continue
        found: list[RouteSpec] = []
        while len(found) < _BASE_PER_EVENT:
            if draw >= _NEW_DRAW0 + 100:
                raise ValueError(f"bench:base: fewer than {_BASE_PER_EVENT} towns with a {kind} route")
            try:
                found.append(build_route(draw, _BASE_TOWN0 + draw, kind, seed=0, tries=120))
            except ValueError:
                pass
            draw += 1
        per_event[kind] = found
    ordered = [spec for kind in EVENTS_BASE_ORDER for spec in per_event[kind]]
    return tuple(_renumbered(spec, k) for k, spec in enumerate(ordered))



def load_routes(spec: str) -> list[RouteSpec]:
    """The routes of a suite: ``bench:base``, ``bench:dev10`` or ``synthetic:N``.

    Raises:
        ValueError: an unknown suite or a bad N (the message names the spec).
    """
    name, _, arg = spec.partition(":")
    if spec == "bench:base":
        return list(_base())
    if spec == "bench:dev10":
        base = _base()
        return [_renumbered(base[EVENTS_BASE_ORDER.index(kind) * _BASE_PER_EVENT + j], k) for k, (kind, j) in enumerate(DEV10_EVENTS)]
    if name == "synthetic":
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"--routes {spec}: synthetic:N needs a positive integer N")
        rng = np.random.default_rng(int(arg))
        out = []
        for k in range(int(arg)):
            kind = EVENTS[int(rng.integers(len(EVENTS)))]
            for attempt in range(50):  # another town where this one has no such route (e.g. no all-way stop)
                try:
                    out.append(build_route(k, int(rng.integers(0, 1_000_000)), kind, seed=int(arg)))
                    break
                except ValueError:
                    if attempt == 49:
                        raise
        return out
    raise ValueError(f"--routes {spec}: unknown route suite; expected bench:base, bench:dev10 or synthetic:N")
