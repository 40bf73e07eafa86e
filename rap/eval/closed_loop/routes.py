"""Route suites of the closed-loop evaluator: seeded routes through synthetic towns, each with
one scenario event grouped by Bench2Drive's abilities.

A route is a chain of lanes of the synthetic town ``synthetic:<town_seed>`` (the same town
``rap generate --source synthetic:<seed>`` draws), 150-400 m long, starting on a road lane (not
a junction connector), plus one :class:`Event`:

============== ================= =========================================================
event          ability           what happens
============== ================= =========================================================
lead_brake     Emergency_Brake   a lead vehicle drives the ego's route ahead of it (90 % of the
                                 speed limit) and, past ``arc`` m with the ego within 40 m and
                                 able to stop behind it at 1.2 m/s^2 (or 60 m later in any
                                 case), brakes at ``decel`` (2.5-3) m/s^2 to a stop, waits 3 s
                                 and goes on
red_light      Traffic_Signs     the route crosses a signalized junction; the ego's light is
                                 held red until the ego has waited 4 s at the line (or 60 s)
parked         Overtaking        a parked vehicle intrudes ``intrusion`` m into the route's lane
                                 at ``arc`` m; pass it by shifting towards the adjacent lane
crossing       Give_Way          a vehicle on a conflicting junction movement drives through
                                 (ignoring its light) as the ego approaches; yield to it
turn_traffic   Merging           the route turns into another road at a junction; extra
                                 vehicles drive on the road it merges into
============== ================= =========================================================

Suites (:func:`load_routes`): ``bench:base`` (:data:`BASE_VERSION`: 45 routes, 9 per event,
towns 1000-1044), ``bench:dev10`` (a fixed 10-route subset of it, 2 per event) and
``synthetic:N`` (N routes with events drawn from the seed). Everything is a pure function of
the suite name: the same name gives the same routes.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from rap.sources.synthetic.roads import Town, TownConfig, build_town

__all__ = ["ABILITIES", "BASE_VERSION", "EVENT_ABILITY", "Event", "RouteSpec", "build_route", "load_routes", "route_town"]

BASE_VERSION = "bench-base-v1"
ABILITIES = ("Merging", "Overtaking", "Emergency_Brake", "Give_Way", "Traffic_Signs")
EVENT_ABILITY = {
    "turn_traffic": "Merging",
    "parked": "Overtaking",
    "lead_brake": "Emergency_Brake",
    "crossing": "Give_Way",
    "red_light": "Traffic_Signs",
}
EVENTS = tuple(EVENT_ABILITY)
MIN_LENGTH, MAX_LENGTH = 150.0, 400.0  # [m] route length
_BASE_TOWN0 = 1000
_BASE_PER_EVENT = 9
# bench:base order: 9 routes per event, in this order (route i is event i // 9, town 1000 + i)
EVENTS_BASE_ORDER = ("lead_brake", "red_light", "parked", "crossing", "turn_traffic")
# bench:dev10: two routes of each event out of bench:base (indices into it).
_DEV10 = (0, 1, 9, 10, 18, 19, 27, 28, 36, 37)


@dataclasses.dataclass(frozen=True)
class Event:
    """The scenario event of a route.

    Attributes:
        kind: one of ``lead_brake``, ``red_light``, ``parked``, ``crossing``, ``turn_traffic``.
        arc: [m] along the route where it happens (brake point, parked car centre, the
            junction connector's start).
        lane: index (into the town's lanes) of the lane it concerns: the signalized or turning
            connector, the parked car's lane, the route's connector the crossing vehicle cuts.
        other_lane: ``crossing``: the conflicting connector; ``turn_traffic``: the lane the
            route merges into; else -1.
        decel: [m/s^2] ``lead_brake`` deceleration.
        intrusion: [m] ``parked``: how far the parked car reaches into the lane from its right edge.
    """

    kind: str
    arc: float
    lane: int
    other_lane: int = -1
    decel: float = 0.0
    intrusion: float = 0.0

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
    """

    route_id: str
    index: int
    town_seed: int
    lanes: tuple[int, ...]
    start_arc: float
    length: float
    event: Event
    seed: int

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
    if kind in ("red_light", "crossing", "turn_traffic"):
        signal = set(int(i) for i in town.signal_lanes)
        for k, lane in enumerate(lanes):
            ln = town.lanes[lane]
            if not ln.is_connector or not 50.0 <= arcs[k] <= length - 40.0:
                continue
            if kind == "red_light" and lane in signal:
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
    # lead_brake / parked: a point on a straight-ish road lane, away from the lane's ends
    for k, lane in enumerate(lanes):
        ln = town.lanes[lane]
        lane_len = _lane_length(town, lane)
        lo, hi = max(arcs[k] + 20.0, 60.0), min(arcs[k] + lane_len - 20.0, length - 40.0)
        if ln.is_connector or hi < lo:
            continue
        arc = float(lo + (hi - lo) * rng.uniform(0.2, 0.6))
        if kind == "parked":
            return Event(kind, arc, lane, intrusion=float(rng.uniform(0.6, 0.9)))
        return Event(kind, arc, lane, decel=float(rng.uniform(2.5, 3.0)))
    return None


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
            return RouteSpec(f"RouteScenario_{index}", index, int(town_seed), tuple(lanes), start_arc, round(length, 3), event, int(seed) * 1000 + index)
    raise ValueError(f"route {index}: no {kind} route found in synthetic:{town_seed} after {tries} tries")


@functools.lru_cache(maxsize=4)
def _base() -> tuple[RouteSpec, ...]:
    routes = []
    for e, kind in enumerate(EVENTS_BASE_ORDER):
        for j in range(_BASE_PER_EVENT):
            index = e * _BASE_PER_EVENT + j
            routes.append(build_route(index, _BASE_TOWN0 + index, kind, seed=0))
    return tuple(routes)



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
        return [dataclasses.replace(base[i], index=k, route_id=f"RouteScenario_{k}") for k, i in enumerate(_DEV10)]
    if name == "synthetic":
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"--routes {spec}: synthetic:N needs a positive integer N")
        rng = np.random.default_rng(int(arg))
        out = []
        for k in range(int(arg)):
            kind = EVENTS[int(rng.integers(len(EVENTS)))]
            out.append(build_route(k, int(rng.integers(0, 1_000_000)), kind, seed=int(arg)))
        return out
    raise ValueError(f"--routes {spec}: unknown route suite; expected bench:base, bench:dev10 or synthetic:N")
