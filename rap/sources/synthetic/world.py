"""Synthetic world: seeded procedural towns and driving logs in rap's Scene model.

The embedded default source (``synthetic:SEED``): no data files, the same seed gives the same
arrays bit for bit, different seeds give different towns and traffic.

Road network (:mod:`rap.sources.synthetic.roads`):

* A grid of 2-3 x 2-3 junctions, 90-140 m apart, each moved up to 6 m off its grid position,
  so the roads between junctions are straight or S-curves (smoothstep lateral offset, radius
  >= 40 m, straight for 6 m beyond each stop line). Border junctions get roads leaving the
  town (50-80 m, possibly curved) with probability 0.6 per outward direction; inner roads are
  removed with probability 0.3 (when every junction keeps >= 3 arms and >= 2 inner roads and
  the grid stays connected), giving 4-way and T junctions. A default town spans about
  200-450 m per side (2-3 blocks) and has 4-9 junctions and 60-200 lanes.
* Streets (a grid row or column) share a cross-section: 1-3 lanes per direction (weights
  0.45 / 0.4 / 0.15), lane width 3.0-3.8 m, a 2.4 m parking strip on both curbs with
  probability 0.4, speed limit 25/30/35 mph (wider streets draw faster limits). A T junction's
  stem has at most twice the lanes of its bar.
* Junctions: a core where the two streets overlap, arm mouths, and curb corners rounded with
  radius 9-12 m (wide enough that a tracked rollout of the expert stays on the road). Each arm may have a crosswalk (p = 0.85, 3-4 m wide, 0.5 m beyond the curb
  corner); the stop line follows 1 m beyond it (2 m beyond the corner without one). Road lanes
  run stop line to stop line; connectors (``interpolating`` lanes) run from a stop line
  straight to the curb corner, through a Bezier turn (a quarter circle for equal offsets; right
  turns swing about 0.7 m wider at the apex, away from the curb corner, as drivers do) and
  straight on to the exit lane. Lane rules: every lane may go straight; the leftmost lane may
  turn left and the curb lane right; on a T's stem the left half of the lanes turns left and
  the rest right. Connectors take the narrower width of the lanes they join and the entry
  lane's speed limit.
* Signals (probability 0.7 per junction, at least one per town, else all-way stop): every
  connector of a signalized junction has a light. Movements are grouped (straight + right
  turns of one arm, left turns of one arm); groups join, greedily and in the order "through of
  one axis, its lefts, through of the other axis, its lefts", the first phase in which no
  connector conflicts (paths closer than 2.5 m, or the same exit lane). Phases are protected:
  green 10-16 s (5-8 s for left-turn-only phases), yellow (CAUTION) 3.5 s, all-red 1.5 s, with
  a random cycle offset per junction; so conflicting movements are never green together.
* Map elements: lanes (SURFACE_STREET, widths and speed limits set, successor / predecessor /
  left / right links), road lines (double yellow centre, broken white dividers, solid white
  parking edges), stop lines (id = approach lane id; TRAFFIC_LIGHT or STOP_SIGN), stop signs
  beside the right curb controlling the arm's connectors, crosswalks, drivable area (one
  polygon per road and per junction, overlapping) and road edges (its boundary, open where
  roads leave the town). Everything lies on z = 0.

Traffic (:mod:`rap.sources.synthetic.traffic`), simulated at 10 Hz, first for
``warmup_steps`` (not logged) and then for ``num_steps``:

* Vehicles (0.8 per 100 m of lane at the start, plus arrivals at the town entries at
  0.05 /s each) follow random routes on the lane graph (no lane changes). A route's path is the
  chain of lane centrelines smoothed with a 2 m Gaussian (curvature ramps in and out of turns,
  as a steered car's path does); vehicles move like kinematic bicycles on it: the rear axle on
  the path, the heading along it there. Longitudinal control is IDM: acceleration
  ``a_max (1 - (v / v0)^4 - (s* / s)^2)`` with ``s* = s0 + v T + v dv / (2 sqrt(a_max b))``;
  background drivers use a_max 1.2-2.2 m/s^2, b = 2 m/s^2, T 1.0-1.6 s, s0 = 2 m and
  v0 = 0.85-1.05 x the speed limit; braking is capped at 8 m/s^2. ``v0`` is also limited by
  curves (lateral acceleration 2.5 m/s^2) and the deceleration needed to meet slower limits
  ahead is enforced.
* Who is ahead: the route centreline is sampled every 1 m for 60 m ahead of the front bumper;
  the first sample closer than half the vehicle's width + 0.25 m to another agent's box
  (pedestrians: the box swept over their next 2.5 s on a sidewalk, over the rest of their
  crossing on a crosswalk) gives the leader and the gap. When two vehicles see each other
  (crossing or merging paths) the one nearer the conflict goes first.
* Signals: stop at STOP; at CAUTION stop if the needed deceleration is at most 3 m/s^2
  (decided once per approach), else go. All-way stops: come to a full stop (< 0.1 m/s) at the
  line, then first come, first served among conflicting movements. Nobody enters a junction
  whose exit is blocked (or whose crosswalk is in use).
* Pedestrians (8) walk around one junction's corners and cross its crosswalks (keeping
  right): they wait at the curb until the movements entering the road from that arm are red
  for the whole crossing (signalized junctions) and no approaching vehicle would have to brake
  hard; vehicles then keep clear of the rest of the crossing. Pedestrians queue behind one
  another and never step into a vehicle. Cyclists (1) ride in curb lanes at 4.5-6.5 m/s.
  Parked cars (40 % of the parking-strip spots) never move.
* The expert is a privileged rule-based driver with the same rules and more conservative
  settings: a_max 1.5 m/s^2, T 1.5 s, s0 2.5 m, exactly the speed limit as v0, 2 m/s^2 in
  curves, stops at yellow when at most 4 m/s^2 is needed; its routes never leave the town and
  it drives NAVSIM's ego box (5.176 x 2.297 x 1.777 m). Four vehicles are driven by it; the one
  that drives furthest during the log becomes the ego (``ego_index``), the others stay in the
  scene as traffic. Its log is the demonstration.

Scene conventions: ``source = "synthetic:<seed>"``, ``scene_id = "synthetic-<seed>"``,
timestamps 0.0, 0.1, ... s; the ego is valid at every step; box centres with
``z = height / 2``; velocities are central finite differences of the logged positions
(one-sided at the ends of a track); ``rear_axle_offset`` is 0.282 x length for vehicles, 0
otherwise (as in womd.py). Track ids are 1 + row. Agents that never appear during the logged
steps are dropped. One traffic light per signalized connector (``lane_ids`` = connector id,
stop point = its start on the stop line), valid at every step.

A default scene (200 steps after a 50-step warm-up, about 50-150 agents) takes about 0.3 s
on one CPU core (0.5 s at most over seeds 0-79).

Random streams: the town draws from the first child of ``numpy.random.SeedSequence(seed)``,
the traffic from the second, so a traffic setting never changes the town.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rap import geometry
from rap.scene import AgentTracks, Scene, TrafficLights
from rap.sources.synthetic.roads import TownConfig, Town, build_town, light_schedule, map_elements
from rap.sources.synthetic.traffic import TrafficConfig, TrafficLog, simulate

__all__ = [
    "DT",
    "SyntheticConfig",
    "SyntheticLog",
    "TownConfig",
    "TrafficConfig",
    "generate_scene",
    "generate_log",
    "load_synthetic",
]

DT = 0.1  # [s] log step (10 Hz).


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    Attributes:
        num_steps: Logged steps at 10 Hz (default 200 = 20 s).
        current_index: The "now" step; needs >= 15 steps (1.5 s) of history.
        warmup_steps: Steps simulated before the log starts, so traffic has settled (queues
            formed, vehicles entered) [steps of 0.1 s].
        town: Road network settings.
        traffic: Traffic settings.
    """

    num_steps: int = 200
    current_index: int = 20
    warmup_steps: int = 50
    town: TownConfig = dataclasses.field(default_factory=TownConfig)
    traffic: TrafficConfig = dataclasses.field(default_factory=TrafficConfig)

    def __post_init__(self) -> None:
        for name in ("num_steps", "current_index", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"SyntheticConfig.{name}: expected int, got {type(value).__name__}")
        if self.num_steps < 16:
            raise ValueError(f"SyntheticConfig.num_steps: need >= 16, got {self.num_steps}")
        if not 15 <= self.current_index < self.num_steps:
            raise ValueError(
                f"SyntheticConfig.current_index: need 15 <= current_index < num_steps "
                f"({self.num_steps}), got {self.current_index}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"SyntheticConfig.warmup_steps: need >= 0, got {self.warmup_steps}")
        if not isinstance(self.town, TownConfig) or not isinstance(self.traffic, TrafficConfig):
            raise ValueError("SyntheticConfig.town / .traffic: expected TownConfig / TrafficConfig")


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticLog:
    """A generated scene plus privileged facts the generator knows.

    Attributes:
        scene: The Scene.
        ego_route: Ids of the lanes the expert's route runs through, in order (it starts on the
            expert's lane at the first simulated step and goes on past the log's end).
        lane_ids: (num_agents, num_steps) int64 id of the lane under each route-following
            agent's box centre (0 where ``on_lane`` is False).
        on_lane: (num_agents, num_steps) bool, whether ``lane_ids`` holds a lane.
    """

    scene: Scene
    ego_route: tuple[int, ...]
    lane_ids: np.ndarray
    on_lane: np.ndarray


def generate_log(seed: int, config: SyntheticConfig | None = None) -> SyntheticLog:
    """Generates a town and a log of traffic in it (see the module docs).

    Args:
        seed: Non-negative integer; the only source of randomness.
        config: Settings; None means ``SyntheticConfig()``.

    Returns:
        The scene and the expert's route.

    Raises:
        ValueError: A negative or non-integer seed.
    """
    seed = _check_seed(seed)
    config = SyntheticConfig() if config is None else config
    town_seq, traffic_seq = np.random.SeedSequence(seed).spawn(2)
    town = build_town(config.town, np.random.default_rng(town_seq))
    total = config.warmup_steps + config.num_steps
    lights = light_schedule(town, np.arange(total) * DT)
    log = simulate(town, lights, config.traffic, np.random.default_rng(traffic_seq), total, DT, total)
    return _assemble(seed, config, town, lights, log)


def generate_scene(seed: int, config: SyntheticConfig | None = None) -> Scene:
    """The Scene of :func:`generate_log` (same arguments), with the expert's route as
    ``Scene.ego_route``."""
    log = generate_log(seed, config)
    return dataclasses.replace(log.scene, ego_route=log.ego_route)


def load_synthetic(seed: int | str, config: SyntheticConfig | None = None) -> Scene:
    """Source-registry entry point: ``synthetic:SEED`` -> Scene.

    Args:
        seed: The seed, as an int or a decimal string (the ``SEED`` of the source spec).
        config: Settings; None means ``SyntheticConfig()``.

    Raises:
        ValueError: The seed is not a non-negative integer.
        TypeError: ``config`` is not a ``SyntheticConfig``.
    """
    if config is not None and not isinstance(config, SyntheticConfig):
        raise TypeError(f"load_synthetic: config must be a SyntheticConfig, got {type(config).__name__}")
    if isinstance(seed, str):
        text = seed.strip()
        if not text.isdigit():
            raise ValueError(f"synthetic:{seed}: the seed must be a non-negative integer")
        seed = int(text)
    return generate_scene(seed, config)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _assemble(seed: int, config: SyntheticConfig, town: Town, lights: np.ndarray, log: TrafficLog) -> SyntheticLog:
    window = slice(config.warmup_steps, config.warmup_steps + config.num_steps)
    vx = geometry.fixed_step_rate(log.x, log.valid, DT)[:, window]
    vy = geometry.fixed_step_rate(log.y, log.valid, DT)[:, window]
    valid = log.valid[:, window]
    # The ego: the expert-driven vehicle that drives furthest during the log.
    dist = np.hypot(np.diff(log.x[log.experts][:, window]), np.diff(log.y[log.experts][:, window])).sum(axis=1)
    ego = int(log.experts[int(np.argmax(dist))])
    keep = valid.any(axis=1)
    keep[ego] = True
    rows = np.flatnonzero(keep)
    ego_index = int(np.searchsorted(rows, ego))
    valid = valid[rows]
    n, t = rows.size, config.num_steps

    def per_step(values: np.ndarray) -> np.ndarray:  # (N,) -> (n, t), 0 where invalid
        return np.where(valid, values[rows, None], 0.0)

    def logged(values: np.ndarray) -> np.ndarray:
        return np.where(valid, values[rows][:, window], 0.0)

    tracks = AgentTracks(
        ids=np.arange(1, n + 1, dtype=np.int64),
        types=log.types[rows],
        x=logged(log.x),
        y=logged(log.y),
        z=per_step(0.5 * log.height),
        heading=logged(log.heading),
        vx=np.where(valid, vx[rows], 0.0),
        vy=np.where(valid, vy[rows], 0.0),
        length=per_step(log.length),
        width=per_step(log.width),
        height=per_step(log.height),
        valid=valid,
        rear_axle_offset=log.rear_axle_offset[rows],
    )
    m = map_elements(town)
    signal = town.signal_lanes
    stop_points = np.array([town.lanes[c].points[0] for c in signal]).reshape(-1, 2)
    traffic_lights = TrafficLights(
        lane_ids=np.array([town.lanes[c].id for c in signal], dtype=np.int64),
        stop_points=np.concatenate([stop_points, np.zeros((len(signal), 1))], axis=1),
        states=lights[:, window],
        valid=np.ones((len(signal), t), dtype=bool),
    )
    scene = Scene(
        scene_id=f"synthetic-{seed}",
        source=f"synthetic:{seed}",
        timestamps=np.arange(t, dtype=np.float64) * DT,
        current_index=config.current_index,
        tracks=tracks,
        ego_index=ego_index,
        map=m,
        traffic_lights=traffic_lights,
    )
    lane_idx = log.lane[rows][:, window]
    on_lane = valid & (lane_idx >= 0)
    ids = np.array([lane.id for lane in town.lanes], dtype=np.int64)
    lane_ids = np.where(on_lane, ids[np.maximum(lane_idx, 0)], 0)
    return SyntheticLog(
        scene=scene,
        ego_route=tuple(int(town.lanes[k].id) for k in log.routes[ego]),
        lane_ids=lane_ids,
        on_lane=on_lane,
    )
