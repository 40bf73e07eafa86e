"""Road network of the synthetic world: a jittered street grid turned into rap map elements.

Private helper of :mod:`rap.sources.synthetic.world` (see its module docs for the overall layout).
Everything here is deterministic given the ``numpy.random.Generator`` passed in.

Geometry conventions used below:

* Arm directions at a junction are indexed E, N, W, S = 0, 1, 2, 3 (unit vectors ``_UNIT``);
  ``(a + 1) % 4`` is the arm to the left of arm ``a`` seen from the junction centre.
* A vehicle arriving from arm ``a`` travels along ``-u_a``; going straight it leaves through arm
  ``a + 2``, turning left through ``a + 3`` and turning right through ``a + 1``.
* Right-hand traffic: along a road drawn from node A to node B, A->B lanes lie right of the
  reference line (negative offsets), B->A lanes left of it. Lane ``k`` of a direction is the
  k-th lane counted from the centre line (k = 0 next to the centre line, ``lanes - 1`` at the
  curb).
* Along each arm, measured from the junction centre: the curb corner ends at ``d_curb``
  (= half-width of the crossing street + curb radius), a crosswalk may follow 0.5 m further,
  and the stop line (where approach lanes end and connectors begin) is at ``d_stop``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import shapely

from rap.scene import (
    Lanes,
    LaneType,
    LineSet,
    LightState,
    MapElements,
    PolygonSet,
    Polylines,
    RoadEdgeType,
    RoadLineType,
    StopLineType,
    StopSigns,
)

__all__ = ["TownConfig", "Town", "build_town", "map_elements", "light_schedule"]

MPH = 0.44704  # [m/s per mph]
_UNIT = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # E, N, W, S
_KAPPA = 0.5523  # Bezier control-arm ratio that approximates a quarter circle.
_KAPPA_RIGHT = 0.68  # right turns: apex ~0.7 m further from the curb corner than the circle
_CROSSWALK_GAP = 0.5  # [m] from the curb corner to the crosswalk.
_STOP_GAP = 1.0  # [m] from the crosswalk to the stop line.
_NO_CROSSWALK_STOP = 2.0  # [m] from the curb corner to the stop line without a crosswalk.
_STRAIGHT_AFTER_STOP = 6.0  # [m] straight road beyond the stop line before any curve.
_MIN_CURVE_RADIUS = 40.0  # [m] of road reference lines.
_CONFLICT_DISTANCE = 2.5  # [m] connectors closer than this (from different lanes) conflict.
_SIDEWALK_OFFSET = 1.0  # [m] pedestrian waiting points beyond the curb.
_SAMPLE = 1.0  # [m] spacing of generated polylines.


@dataclasses.dataclass(frozen=True)
class TownConfig:
    """Shape of the procedural towns (ranges are sampled uniformly, inclusive).

    Attributes:
        nodes_x: (min, max) number of junction columns (>= 2).
        nodes_y: (min, max) number of junction rows (>= 2).
        block_length: (min, max) distance between neighbouring junction centres [m].
        node_jitter: Max displacement of a junction from its grid position [m]; it bends the
            roads between junctions into S-curves (radius >= 40 m).
        stub_length: (min, max) length of the roads that leave the town at its border [m].
        stub_probability: Chance that a border junction has a road leaving the town in each
            outward direction (corners always keep at least one).
        t_junction_probability: Chance of removing each inner road (making T junctions), when
            every junction keeps >= 3 arms and >= 2 inner roads and the grid stays connected.
        lane_count_weights: Relative weights of 1, 2 and 3 lanes per direction on a street.
        lane_width: (min, max) lane width [m].
        parking_probability: Chance that a street has a parking strip on both curbs.
        parking_width: Width of a parking strip [m].
        speed_limits: Speed limits streets choose from [m/s] (25, 30, 35 mph); wider streets
            draw from the faster end.
        signal_probability: Chance that a junction is signalized (else it is an all-way stop);
            unless it is 0, at least one junction per town is signalized.
        crosswalk_probability: Chance of a crosswalk on each junction arm.
        curb_radius: (min, max) radius of the rounded curb corners [m] (>= 5).
        crosswalk_width: (min, max) crosswalk width along the road [m].
    """

    nodes_x: tuple[int, int] = (2, 3)
    nodes_y: tuple[int, int] = (2, 3)
    block_length: tuple[float, float] = (90.0, 140.0)
    node_jitter: float = 6.0
    stub_length: tuple[float, float] = (50.0, 80.0)
    stub_probability: float = 0.6
    t_junction_probability: float = 0.3
    lane_count_weights: tuple[float, float, float] = (0.45, 0.4, 0.15)
    lane_width: tuple[float, float] = (3.0, 3.8)
    parking_probability: float = 0.4
    parking_width: float = 2.4
    speed_limits: tuple[float, ...] = (25 * MPH, 30 * MPH, 35 * MPH)
    signal_probability: float = 0.7
    crosswalk_probability: float = 0.85
    curb_radius: tuple[float, float] = (9.0, 12.0)
    crosswalk_width: tuple[float, float] = (3.0, 4.0)

    def __post_init__(self) -> None:
        for name in ("nodes_x", "nodes_y"):
            lo, hi = getattr(self, name)
            if not 2 <= lo <= hi:
                raise ValueError(f"TownConfig.{name}: need 2 <= min <= max, got {(lo, hi)}")
        for name in ("block_length", "stub_length", "lane_width", "curb_radius", "crosswalk_width"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"TownConfig.{name}: need 0 < min <= max, got {(lo, hi)}")
        if self.block_length[0] < 80.0:
            raise ValueError("TownConfig.block_length: junctions must be >= 80 m apart")
        if self.curb_radius[0] < 5.0:
            raise ValueError("TownConfig.curb_radius: need >= 5 m (turning vehicles)")
        if self.lane_width[0] < 3.0:
            raise ValueError("TownConfig.lane_width: need >= 3 m")
        if len(self.lane_count_weights) != 3 or min(self.lane_count_weights) < 0 or sum(
            self.lane_count_weights
        ) <= 0:
            raise ValueError("TownConfig.lane_count_weights: three non-negative weights")
        if not self.speed_limits or min(self.speed_limits) <= 0:
            raise ValueError("TownConfig.speed_limits: need positive values")
        for name in (
            "stub_probability", "t_junction_probability", "parking_probability",
            "signal_probability", "crosswalk_probability",
        ):  # fmt: skip
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TownConfig.{name}: must be in [0, 1]")
        if self.node_jitter < 0 or self.parking_width <= 0:
            raise ValueError("TownConfig: node_jitter must be >= 0 and parking_width > 0")


# ----------------------------------------------------------------------------------------------
# Internal records (mutable while the town is built, read-only afterwards by convention).
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Street:
    """Cross-section shared by all roads of one grid row or column."""

    lanes: int  # per direction
    lane_width: float  # [m]
    parking: float  # [m] parking strip width on each curb (0: none)
    speed_limit: float  # [m/s]

    @property
    def half_width(self) -> float:
        """Centre line to curb [m]."""
        return self.lanes * self.lane_width + self.parking


@dataclasses.dataclass
class Lane:
    """A lane or a junction connector."""

    id: int
    points: np.ndarray  # (n, 2) [m]
    width: float  # [m]
    speed_limit: float  # [m/s]
    junction: int  # junction index for connectors, -1 for road lanes
    rank: int  # k: lanes from the centre line (connectors: rank of their entry lane)
    lanes_in_direction: int
    successors: list[int] = dataclasses.field(default_factory=list)  # lane indices
    predecessors: list[int] = dataclasses.field(default_factory=list)
    left: list[int] = dataclasses.field(default_factory=list)
    right: list[int] = dataclasses.field(default_factory=list)
    entry_arm: int = -1  # connectors: arm they come from
    exit_arm: int = -1  # connectors: arm they leave through
    movement: str = ""  # connectors: "straight", "left" or "right"

    @property
    def is_connector(self) -> bool:
        return self.junction >= 0


@dataclasses.dataclass
class Arm:
    street: Street
    road: int  # road index
    d_curb: float  # [m]
    d_stop: float  # [m]
    crosswalk: int  # crosswalk index or -1
    in_lanes: list[int] = dataclasses.field(default_factory=list)  # by rank
    out_lanes: list[int] = dataclasses.field(default_factory=list)  # by rank


@dataclasses.dataclass
class Junction:
    pos: np.ndarray  # (2,) [m]
    arms: list  # 4 entries, Arm or None
    signalized: bool
    radius: float  # curb radius [m]
    connectors: list[int] = dataclasses.field(default_factory=list)  # lane indices
    conflicts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), bool))
    phases: list[list[int]] = dataclasses.field(default_factory=list)  # local connector indices
    greens: list[float] = dataclasses.field(default_factory=list)  # [s] per phase
    yellow: float = 3.5  # [s]
    all_red: float = 1.5  # [s]
    offset: float = 0.0  # [s] cycle position at t = 0
    polygon: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def cycle(self) -> float:
        return float(sum(self.greens) + len(self.greens) * (self.yellow + self.all_red))


@dataclasses.dataclass
class Crosswalk:
    junction: int
    arm: int
    ring: np.ndarray  # (4, 2) [m]
    centre: np.ndarray  # (2,) crossing-line centre [m]
    along: np.ndarray  # (2,) unit vector along the arm (away from the junction)
    across: np.ndarray  # (2,) unit vector across the road (towards the arm's left, v_a)
    half_length: float  # [m] centre to each waiting point, across the road
    width: float  # [m] along the arm


@dataclasses.dataclass
class Road:
    street: Street
    start: tuple[int, int]  # (junction, arm)
    end: tuple[int, int] | None  # (junction, arm); None for a road leaving the town
    polygon: np.ndarray  # (n, 2) [m]
    ref_x: np.ndarray  # (m,) local x of reference samples [m]
    ref_points: np.ndarray  # (m, 2) [m]
    ref_normals: np.ndarray  # (m, 2) left unit normals
    x_lanes: tuple[float, float]  # lane extent in local x [m]
    end_segment: np.ndarray | None  # (2, 2) open end of a road leaving the town


@dataclasses.dataclass
class Town:
    """A generated town (internal; converted to ``MapElements`` by :func:`map_elements`)."""

    streets: list[Street]
    junctions: list[Junction]
    roads: list[Road]
    lanes: list[Lane]
    crosswalks: list[Crosswalk]
    parking_spots: np.ndarray  # (P, 3) x, y, heading [m, m, rad]
    road_lines: list[tuple[np.ndarray, int]]  # (points (n, 2), RoadLineType)
    road_edges: list[np.ndarray]  # (n, 2)
    drivable_pieces: list[np.ndarray]  # open rings (n, 2)
    drivable: shapely.Geometry
    signal_lanes: np.ndarray  # (K,) lane indices of the signalized connectors
    bounds: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax [m]


# ----------------------------------------------------------------------------------------------
# Topology.
# ----------------------------------------------------------------------------------------------


def _topology(cfg: TownConfig, rng: np.random.Generator, nx: int, ny: int) -> np.ndarray:
    """(nx, ny, 4) bool: which arms each junction has (inner roads and roads out of town)."""
    arms = np.ones((nx, ny, 4), dtype=bool)
    arms[-1, :, 0] = arms[0, :, 2] = arms[:, -1, 1] = arms[:, 0, 3] = False  # Border: no inner road.
    border = np.zeros((nx, ny, 4), dtype=bool)  # Outward arms.
    border[-1, :, 0] = border[0, :, 2] = border[:, -1, 1] = border[:, 0, 3] = True
    stubs = border & (rng.random((nx, ny, 4)) < cfg.stub_probability)
    for i in range(nx):
        for j in range(ny):
            outward = np.flatnonzero(border[i, j])
            while (arms[i, j] | stubs[i, j]).sum() < 3:
                stubs[i, j, outward[rng.integers(outward.size)]] = True
    arms |= stubs

    # Inner roads, each once: (i, j, direction E or N).
    roads = [(i, j, 0) for i in range(nx - 1) for j in range(ny)]
    roads += [(i, j, 1) for i in range(nx) for j in range(ny - 1)]
    order = rng.permutation(len(roads))
    remove = rng.random(len(roads)) < cfg.t_junction_probability
    for k in order:
        if not remove[k]:
            continue
        i, j, d = roads[k]
        i2, j2 = (i + 1, j) if d == 0 else (i, j + 1)
        inner = arms & ~border
        if arms[i, j].sum() <= 3 or arms[i2, j2].sum() <= 3:
            continue
        if inner[i, j].sum() <= 2 or inner[i2, j2].sum() <= 2:
            continue
        arms[i, j, d] = False
        arms[i2, j2, d + 2] = False
        if not _connected(arms & ~border):
            arms[i, j, d] = True
            arms[i2, j2, d + 2] = True
    return arms


def _connected(inner: np.ndarray) -> bool:
    nx, ny, _ = inner.shape
    seen = {(0, 0)}
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        for d in range(4):
            if inner[i, j, d]:
                n = (i + int(_UNIT[d, 0]), j + int(_UNIT[d, 1]))
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
    return len(seen) == nx * ny


def _streets(
    cfg: TownConfig, rng: np.random.Generator, arms: np.ndarray
) -> tuple[list[Street], list[Street]]:
    """Row (E-W) and column (N-S) streets. A T junction's stem has <= 2x the bar's lanes."""
    nx, ny, _ = arms.shape
    weights = np.asarray(cfg.lane_count_weights, dtype=np.float64)
    weights = weights / weights.sum()
    for _ in range(50):
        row_lanes = rng.choice(3, size=ny, p=weights) + 1
        col_lanes = rng.choice(3, size=nx, p=weights) + 1
        if _stems_ok(arms, row_lanes, col_lanes):
            break
    else:
        row_lanes = np.ones(ny, dtype=np.int64)
        col_lanes = np.ones(nx, dtype=np.int64)
    limits = np.sort(np.asarray(cfg.speed_limits, dtype=np.float64))

    def street(lanes: int) -> Street:
        # More lanes: a faster limit, drawn from the upper part of the sorted choices.
        lo = min(len(limits) - 1, (lanes - 1) * len(limits) // 3)
        return Street(
            lanes=int(lanes),
            lane_width=float(np.round(rng.uniform(*cfg.lane_width), 2)),
            parking=cfg.parking_width if rng.random() < cfg.parking_probability else 0.0,
            speed_limit=float(limits[rng.integers(lo, len(limits))]),
        )

    rows = [street(n) for n in row_lanes]
    cols = [street(n) for n in col_lanes]
    return rows, cols


def _stems_ok(arms: np.ndarray, row_lanes: np.ndarray, col_lanes: np.ndarray) -> bool:
    nx, ny, _ = arms.shape
    for i in range(nx):
        for j in range(ny):
            if arms[i, j].sum() != 3:
                continue
            missing = int(np.flatnonzero(~arms[i, j])[0])
            stem, bar = (row_lanes[j], col_lanes[i]) if missing in (0, 2) else (col_lanes[i], row_lanes[j])
            if stem > 2 * bar:
                return False
    return True


# ----------------------------------------------------------------------------------------------
# Geometry helpers.
# ----------------------------------------------------------------------------------------------


def _left(u: np.ndarray) -> np.ndarray:
    """Left unit normal(s) of (..., 2) directions."""
    return np.stack([-u[..., 1], u[..., 0]], axis=-1)


def _reference(
    start: np.ndarray, u: np.ndarray, end: np.ndarray, straight0: float, straight1: float,
    extra_x: tuple[float, ...] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Reference line from ``start`` (heading ``u``) to ``end`` (same heading).

    Straight for ``straight0`` m, then a smoothstep S-curve absorbing the lateral offset, then
    straight for ``straight1`` m. Sampled every ``_SAMPLE`` m of local x (plus ``extra_x``,
    and -0.05 / length + 0.05 for overlaps with the junction areas).

    Returns:
        (m,) local x [m], (m, 2) points [m], (m, 2) left unit normals.
    """
    v = _left(u)
    d = end - start
    length, delta = float(d @ u), float(d @ v)
    curve = max(length - straight0 - straight1, 1e-6)
    xs = np.unique(np.concatenate([np.arange(0.0, length, _SAMPLE), [-0.05, length, length + 0.05], extra_x]))
    tau = np.clip((xs - straight0) / curve, 0.0, 1.0)
    y = delta * (3 * tau**2 - 2 * tau**3)
    dy = np.where((tau > 0) & (tau < 1), delta * 6 * (tau - tau**2) / curve, 0.0)
    points = start + xs[:, None] * u + y[:, None] * v
    tangent = u + dy[:, None] * v
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    return xs, points, _left(tangent)


def _offset_range(road: Road, offset: float, x0: float, x1: float) -> np.ndarray:
    """(n, 2) points at lateral ``offset`` [m] of the road reference between local x0 <= x1."""
    keep = (road.ref_x >= x0 - 1e-9) & (road.ref_x <= x1 + 1e-9)
    return road.ref_points[keep] + offset * road.ref_normals[keep]


def _bezier(p0: np.ndarray, c0: np.ndarray, c1: np.ndarray, p1: np.ndarray) -> np.ndarray:
    approx = np.linalg.norm(c0 - p0) + np.linalg.norm(c1 - c0) + np.linalg.norm(p1 - c1)
    n = max(4, int(math.ceil(approx / 0.5)))
    t = np.linspace(0.0, 1.0, n + 1)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c0 + 3 * (1 - t) * t**2 * c1 + t**3 * p1


def _connector_points(
    p_in: np.ndarray, t_in: np.ndarray, lead_in: float, p_out: np.ndarray, t_out: np.ndarray, lead_out: float
) -> np.ndarray:
    """Stop line -> curb corner (straight), a Bezier turn, curb corner -> exit lane (straight)."""
    m0 = p_in + lead_in * t_in
    m1 = p_out - lead_out * t_out
    cross = t_in[0] * t_out[1] - t_in[1] * t_out[0]
    if abs(cross) < 1e-6:  # Straight through.
        c0, c1 = m0 + (m1 - m0) / 3.0, m0 + 2.0 * (m1 - m0) / 3.0
    else:  # Tangent lines meet at m0 + alpha t_in = m1 - beta t_out.
        a = np.stack([t_in, t_out], axis=1)
        alpha, beta = np.linalg.solve(a, m1 - m0)
        kappa = _KAPPA_RIGHT if cross < 0 else _KAPPA  # right turns swing wide of the curb corner
        c0, c1 = m0 + kappa * alpha * t_in, m1 - kappa * beta * t_out
    mid = _bezier(m0, c0, c1, m1)
    pts = np.concatenate([p_in[None], mid, p_out[None]])
    keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6])
    return pts[keep]


def _rect(centre: np.ndarray, u: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """(4, 2) rectangle [x0, x1] x [y0, y1] in the frame (centre, u, left(u)), CCW."""
    v = _left(u)
    return np.array([centre + x * u + y * v for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))])


# ----------------------------------------------------------------------------------------------
# Town.
# ----------------------------------------------------------------------------------------------


def build_town(cfg: TownConfig, rng: np.random.Generator) -> Town:
    """Generates a town: junction grid, roads, lanes, connectors, signals and map geometry."""
    nx = int(rng.integers(cfg.nodes_x[0], cfg.nodes_x[1] + 1))
    ny = int(rng.integers(cfg.nodes_y[0], cfg.nodes_y[1] + 1))
    arms = _topology(cfg, rng, nx, ny)
    rows, cols = _streets(cfg, rng, arms)
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(*cfg.block_length, size=nx - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(*cfg.block_length, size=ny - 1))])
    jitter = rng.uniform(-1.0, 1.0, size=(nx, ny, 2)) * cfg.node_jitter
    radius = rng.uniform(*cfg.curb_radius, size=(nx, ny))
    signalized = rng.random((nx, ny)) < cfg.signal_probability
    if not signalized.any() and cfg.signal_probability > 0:
        signalized[rng.integers(nx), rng.integers(ny)] = True
    has_cw = rng.random((nx, ny, 4)) < cfg.crosswalk_probability
    cw_width = rng.uniform(*cfg.crosswalk_width, size=(nx, ny, 4))
    stub_len = rng.uniform(*cfg.stub_length, size=(nx, ny, 4))
    stub_shift = rng.uniform(-1.0, 1.0, size=(nx, ny, 4))

    def street(i: int, j: int, a: int) -> Street:
        return rows[j] if a in (0, 2) else cols[i]

    # Junction arms: curb corner and stop-line distances.
    junctions: list[Junction] = []
    node_index = {}
    for i in range(nx):
        for j in range(ny):
            node_index[i, j] = len(junctions)
            jarms: list = [None] * 4
            for a in range(4):
                if not arms[i, j, a]:
                    continue
                cross = street(i, j, (a + 1) % 4)
                d_curb = cross.half_width + radius[i, j]
                d_stop = d_curb + (
                    _CROSSWALK_GAP + cw_width[i, j, a] + _STOP_GAP if has_cw[i, j, a] else _NO_CROSSWALK_STOP
                )
                jarms[a] = Arm(street=street(i, j, a), road=-1, d_curb=d_curb, d_stop=d_stop, crosswalk=-1)
            junctions.append(
                Junction(pos=np.zeros(2), arms=jarms, signalized=bool(signalized[i, j]), radius=float(radius[i, j]))
            )

    # Node positions: shrink the jitter until every inner road bends gently enough.
    for _ in range(8):
        pos = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1) + jitter
        if _curves_ok(pos, arms, junctions, node_index):
            break
        jitter = 0.5 * jitter
    else:
        pos = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)
    for (i, j), k in node_index.items():
        junctions[k].pos = pos[i, j].copy()

    roads: list[Road] = []
    lanes: list[Lane] = []
    road_lines: list[tuple[np.ndarray, int]] = []
    parking: list[np.ndarray] = []
    for i in range(nx):
        for j in range(ny):
            for a in range(4):
                if not arms[i, j, a]:
                    continue
                ja = node_index[i, j]
                arm = junctions[ja].arms[a]
                if a in (2, 3) and not (i == 0 and a == 2) and not (j == 0 and a == 3):
                    continue  # Inner road already built from its W/S end.
                if a in (0, 1):
                    ni, nj = i + int(_UNIT[a, 0]), j + int(_UNIT[a, 1])
                    inner = ni < nx and nj < ny
                else:
                    inner = False
                end = (node_index[ni, nj], (a + 2) % 4) if inner else None
                road = _build_road(
                    junctions, (ja, a), end, arm.street, stub_len[i, j, a], stub_shift[i, j, a]
                )
                roads.append(road)
                arm.road = len(roads) - 1
                if end is not None:
                    junctions[end[0]].arms[end[1]].road = len(roads) - 1
                _road_lanes(road, junctions, lanes, road_lines, parking, rng)

    crosswalks = _crosswalks(junctions, has_cw, cw_width, node_index)
    for k, junction in enumerate(junctions):
        _connectors(k, junction, lanes)
        _phases(junction, lanes, rng)
        junction.polygon = _junction_polygon(junction)

    # Lane ids: road lanes first, then connectors, in construction order.
    for k, lane in enumerate(lanes):
        lane.id = 1 + k
    signal_lanes = np.array(
        [c for jn in junctions if jn.signalized for c in jn.connectors], dtype=np.int64
    )

    pieces = [r.polygon for r in roads] + [jn.polygon for jn in junctions]
    drivable = shapely.union_all([shapely.Polygon(p) for p in pieces]).buffer(0)
    ends = [r.end_segment for r in roads if r.end_segment is not None]
    edges = _road_edges(drivable, ends)
    xmin, ymin, xmax, ymax = drivable.bounds
    return Town(
        streets=rows + cols,
        junctions=junctions,
        roads=roads,
        lanes=lanes,
        crosswalks=crosswalks,
        parking_spots=np.array(parking, dtype=np.float64).reshape(-1, 3),
        road_lines=road_lines,
        road_edges=edges,
        drivable_pieces=pieces,
        drivable=drivable,
        signal_lanes=signal_lanes,
        bounds=(xmin, ymin, xmax, ymax),
    )


def _curves_ok(pos: np.ndarray, arms: np.ndarray, junctions: list[Junction], node_index: dict) -> bool:
    nx, ny, _ = arms.shape
    for i in range(nx):
        for j in range(ny):
            for a in (0, 1):
                ni, nj = i + int(_UNIT[a, 0]), j + int(_UNIT[a, 1])
                if not arms[i, j, a] or ni >= nx or nj >= ny:
                    continue
                arm0 = junctions[node_index[i, j]].arms[a]
                arm1 = junctions[node_index[ni, nj]].arms[a + 2]
                d = pos[ni, nj] - pos[i, j]
                u = _UNIT[a]
                length = float(d @ u) - arm0.d_curb - arm1.d_curb
                curve = length - (arm0.d_stop - arm0.d_curb) - (arm1.d_stop - arm1.d_curb) - 2 * _STRAIGHT_AFTER_STOP
                delta = abs(float(d @ _left(u)))
                if curve <= 5.0 or (delta > 0 and curve**2 / (6.0 * delta) < _MIN_CURVE_RADIUS):
                    return False
    return True


def _build_road(
    junctions: list[Junction], start: tuple[int, int], end: tuple[int, int] | None, street: Street,
    stub_length: float, stub_shift: float,
) -> Road:  # fmt: skip
    ja, a = start
    u = _UNIT[a]
    arm0 = junctions[ja].arms[a]
    p0 = junctions[ja].pos + arm0.d_curb * u
    x0 = arm0.d_stop - arm0.d_curb
    straight0 = x0 + _STRAIGHT_AFTER_STOP
    if end is not None:
        jb, b = end
        arm1 = junctions[jb].arms[b]
        p1 = junctions[jb].pos + arm1.d_curb * _UNIT[b]
        x1_gap = arm1.d_stop - arm1.d_curb
        straight1 = x1_gap + _STRAIGHT_AFTER_STOP
    else:
        curve = stub_length - straight0 - 10.0
        delta = stub_shift * min(12.0, curve**2 / (6.0 * _MIN_CURVE_RADIUS)) if curve > 0 else 0.0
        p1 = p0 + stub_length * u + delta * _left(u)
        x1_gap = 0.0
        straight1 = 10.0
    length = float((p1 - p0) @ u)
    x_lanes = (x0, length - x1_gap)
    ref_x, ref_points, ref_normals = _reference(p0, u, p1, straight0, straight1, extra_x=x_lanes)
    hw = street.half_width
    keep = (ref_x >= -0.05 - 1e-9) & (ref_x <= length + (0.05 if end is not None else 0.0) + 1e-9)
    left = ref_points[keep] + hw * ref_normals[keep]
    right = ref_points[keep] - hw * ref_normals[keep]
    end_segment = None if end is not None else np.array([left[-1], right[-1]])
    return Road(
        street=street,
        start=start,
        end=end,
        polygon=np.concatenate([right, left[::-1]]),
        ref_x=ref_x,
        ref_points=ref_points,
        ref_normals=ref_normals,
        x_lanes=x_lanes,
        end_segment=end_segment,
    )


def _road_lanes(
    road: Road, junctions: list[Junction], lanes: list[Lane], road_lines: list, parking: list,
    rng: np.random.Generator,
) -> None:  # fmt: skip
    """Adds the road's lanes (both directions), painted lines and parking spots."""
    st = road.street
    x0, x1 = road.x_lanes
    ja, a = road.start
    by_dir = []
    for sign in (-1.0, 1.0):  # -1: A->B lanes (right of the reference); +1: B->A.
        first = len(lanes)
        for k in range(st.lanes):
            pts = _offset_range(road, sign * (k + 0.5) * st.lane_width, x0, x1)
            if sign > 0:
                pts = pts[::-1]
            lanes.append(
                Lane(id=0, points=pts, width=st.lane_width, speed_limit=st.speed_limit, junction=-1,
                     rank=k, lanes_in_direction=st.lanes)
            )  # fmt: skip
        idx = list(range(first, len(lanes)))
        for k in range(st.lanes):  # Left neighbour: towards the centre line.
            if k > 0:
                lanes[idx[k]].left.append(idx[k - 1])
            if k < st.lanes - 1:
                lanes[idx[k]].right.append(idx[k + 1])
        by_dir.append(idx)
    forward, backward = by_dir
    junctions[ja].arms[a].out_lanes = forward
    junctions[ja].arms[a].in_lanes = backward
    if road.end is not None:
        jb, b = road.end
        junctions[jb].arms[b].in_lanes = forward
        junctions[jb].arms[b].out_lanes = backward

    road_lines.append((_offset_range(road, 0.0, x0, x1), int(RoadLineType.SOLID_DOUBLE_YELLOW)))
    for sign in (-1.0, 1.0):
        for k in range(1, st.lanes):
            road_lines.append(
                (_offset_range(road, sign * k * st.lane_width, x0, x1), int(RoadLineType.BROKEN_SINGLE_WHITE))
            )
        if st.parking > 0:
            road_lines.append(
                (_offset_range(road, sign * st.lanes * st.lane_width, x0, x1), int(RoadLineType.SOLID_SINGLE_WHITE))
            )
    if st.parking > 0:
        lo = x0 + 8.0
        hi = x1 - (8.0 if road.end is not None else 6.0)
        spots = np.arange(lo, hi, 6.5)
        for sign in (-1.0, 1.0):
            offset = sign * (st.lanes * st.lane_width + 0.5 * st.parking)
            for x in spots:
                k = int(np.argmin(np.abs(road.ref_x - x)))
                p = road.ref_points[k] + offset * road.ref_normals[k]
                n = road.ref_normals[k]
                heading = math.atan2(-n[0], n[1])  # Direction of the reference line.
                if sign > 0:
                    heading += math.pi
                parking.append(np.array([p[0], p[1], _wrap(heading)]))


def _wrap(angle: float) -> float:
    return float((angle + math.pi) % (2 * math.pi) - math.pi)


def _crosswalks(
    junctions: list[Junction], has_cw: np.ndarray, cw_width: np.ndarray, node_index: dict
) -> list[Crosswalk]:
    out = []
    for (i, j), k in node_index.items():
        jn = junctions[k]
        for a in range(4):
            arm = jn.arms[a]
            if arm is None or not has_cw[i, j, a]:
                continue
            u = _UNIT[a]
            x0 = arm.d_curb + _CROSSWALK_GAP
            x1 = x0 + cw_width[i, j, a]
            hw = arm.street.half_width
            arm.crosswalk = len(out)
            out.append(
                Crosswalk(
                    junction=k,
                    arm=a,
                    ring=_rect(jn.pos, u, x0, x1, -hw, hw),
                    centre=jn.pos + 0.5 * (x0 + x1) * u,
                    along=u.copy(),
                    across=_left(u),
                    half_length=hw + _SIDEWALK_OFFSET,
                    width=float(cw_width[i, j, a]),
                )
            )
    return out


def _connectors(k: int, jn: Junction, lanes: list[Lane]) -> None:
    """Adds the junction's lane connectors (see module docs for the lane rules)."""
    for a in range(4):
        arm = jn.arms[a]
        if arm is None:
            continue
        n = len(arm.in_lanes)
        straight_arm = jn.arms[(a + 2) % 4]
        moves = []  # (in rank, out arm, out rank, movement)
        if straight_arm is not None:
            moves += [(r, (a + 2) % 4, r, "straight") for r in range(n)]
        left_arm, right_arm = (a + 3) % 4, (a + 1) % 4
        if jn.arms[left_arm] is not None:
            m = len(jn.arms[left_arm].out_lanes)
            ranks = [0] if straight_arm is not None else range(max(1, math.ceil(n / 2)))
            moves += [(r, left_arm, min(r, m - 1), "left") for r in ranks]
        if jn.arms[right_arm] is not None:
            m = len(jn.arms[right_arm].out_lanes)
            if straight_arm is not None or n == 1:
                ranks = [n - 1]
            else:
                ranks = range(math.ceil(n / 2), n)
            moves += [(r, right_arm, m - 1 - (n - 1 - r), "right") for r in ranks]
        for r, b, rb, movement in moves:
            lin = lanes[arm.in_lanes[r]]
            lout = lanes[jn.arms[b].out_lanes[rb]]
            p_in, p_out = lin.points[-1], lout.points[0]
            t_in = -_UNIT[a]
            t_out = _UNIT[b]
            pts = _connector_points(
                p_in, t_in, arm.d_stop - arm.d_curb, p_out, t_out, jn.arms[b].d_stop - jn.arms[b].d_curb
            )
            lanes.append(
                Lane(id=0, points=pts, width=min(lin.width, lout.width), speed_limit=lin.speed_limit,
                     junction=k, rank=r, lanes_in_direction=n, entry_arm=a, exit_arm=b, movement=movement)
            )  # fmt: skip
            c = len(lanes) - 1
            lanes[c].predecessors.append(arm.in_lanes[r])
            lanes[c].successors.append(jn.arms[b].out_lanes[rb])
            lin.successors.append(c)
            lout.predecessors.append(c)
            jn.connectors.append(c)
    lines = [shapely.LineString(lanes[c].points) for c in jn.connectors]
    m = len(lines)
    conflicts = np.zeros((m, m), dtype=bool)
    for p in range(m):
        for q in range(p + 1, m):
            lp, lq = lanes[jn.connectors[p]], lanes[jn.connectors[q]]
            if lp.successors == lq.successors:
                hit = True
            elif lp.predecessors == lq.predecessors:
                hit = False
            else:
                hit = lines[p].distance(lines[q]) < _CONFLICT_DISTANCE
            conflicts[p, q] = conflicts[q, p] = hit
    jn.conflicts = conflicts


def _phases(jn: Junction, lanes: list[Lane], rng: np.random.Generator) -> None:
    """Greedy protected phases: movement groups join the first phase they do not conflict with.

    Groups, in order: through (straight and right) from the two arms of one axis, their left
    turns, then the same for the other axis (which axis goes first is random).
    """
    first = int(rng.integers(2))
    groups = []
    for axis in (first, 1 - first):
        for kind in ("through", "left"):
            for a in (axis, axis + 2):
                members = [
                    p for p, c in enumerate(jn.connectors)
                    if lanes[c].entry_arm == a and (lanes[c].movement == "left") == (kind == "left")
                ]  # fmt: skip
                if members:
                    groups.append((kind, members))
    phases: list[list[int]] = []
    kinds: list[set[str]] = []
    for kind, members in groups:
        for p, phase in enumerate(phases):
            if not jn.conflicts[np.ix_(members, phase)].any():
                phase.extend(members)
                kinds[p].add(kind)
                break
        else:
            phases.append(list(members))
            kinds.append({kind})
    jn.phases = phases
    jn.greens = [
        float(rng.uniform(10.0, 16.0) if "through" in kinds[p] else rng.uniform(5.0, 8.0))
        for p in range(len(phases))
    ]
    jn.offset = float(rng.uniform(0.0, jn.cycle))


def _junction_polygon(jn: Junction) -> np.ndarray:
    """Core rectangle + arm mouths + rounded curb corners between perpendicular arms."""
    hw = [None if arm is None else arm.street.half_width for arm in jn.arms]
    # Half extents of the core along x (E-W) and y (N-S): the other axis' street half width.
    hx = next(h for a, h in enumerate(hw) if h is not None and a in (1, 3))
    hy = next(h for a, h in enumerate(hw) if h is not None and a in (0, 2))
    parts = [shapely.box(jn.pos[0] - hx, jn.pos[1] - hy, jn.pos[0] + hx, jn.pos[1] + hy)]
    core = (hx, hy, hx, hy)  # Core half extent along u_a for a = E, N, W, S.
    for a, arm in enumerate(jn.arms):
        if arm is None:
            continue
        parts.append(shapely.Polygon(_rect(jn.pos, _UNIT[a], core[a] - 0.05, arm.d_curb, -hw[a], hw[a])))
        b = (a + 1) % 4
        if jn.arms[b] is None:
            continue
        u, v = _UNIT[a], _UNIT[b]
        q = jn.pos + core[a] * u + hw[a] * v
        f = jn.pos + arm.d_curb * u + jn.arms[b].d_curb * v
        theta = np.linspace(-0.5 * np.pi, -np.pi, 13)
        arc = f + jn.radius * (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * v)
        parts.append(shapely.Polygon(np.concatenate([q[None], arc])))
    poly = shapely.simplify(shapely.union_all(parts, grid_size=1e-6), 1e-4)
    if isinstance(poly, shapely.MultiPolygon):  # Slivers from rounding; keep the junction.
        poly = max(poly.geoms, key=lambda g: g.area)
    return np.asarray(poly.exterior.coords)[:-1]


def _road_edges(drivable: shapely.Geometry, ends: list[np.ndarray]) -> list[np.ndarray]:
    """Boundary of the drivable area without the open ends of roads leaving the town."""
    boundary = drivable.boundary
    if ends:
        cut = shapely.union_all([shapely.LineString(e).buffer(0.2, cap_style="flat") for e in ends])
        boundary = boundary.difference(cut)
    merged = shapely.line_merge(boundary) if not boundary.is_empty else boundary
    geoms = getattr(merged, "geoms", [merged])
    return [np.asarray(g.coords)[:, :2] for g in geoms if not g.is_empty and g.length > 0.5]


# ----------------------------------------------------------------------------------------------
# Signals.
# ----------------------------------------------------------------------------------------------


def light_schedule(town: Town, times: np.ndarray) -> np.ndarray:
    """Signal states of the signalized connectors.

    Args:
        town: The town.
        times: (T,) simulation times [s].

    Returns:
        (K, T) int8 ``LightState`` (GO, CAUTION, STOP) of ``town.signal_lanes``: each junction
        cycles through its phases (green, yellow, all-red), starting at its random offset.
    """
    times = np.asarray(times, dtype=np.float64)
    row = {int(c): r for r, c in enumerate(town.signal_lanes)}
    out = np.full((len(row), times.shape[0]), int(LightState.STOP), dtype=np.int8)
    for jn in town.junctions:
        if not jn.signalized:
            continue
        pos = np.mod(times + jn.offset, jn.cycle)  # (T,)
        start = 0.0
        for p, phase in enumerate(jn.phases):
            green_end = start + jn.greens[p]
            yellow_end = green_end + jn.yellow
            rows = [row[jn.connectors[q]] for q in phase]
            go = (pos >= start) & (pos < green_end)
            caution = (pos >= green_end) & (pos < yellow_end)
            out[np.ix_(rows, np.flatnonzero(go))] = int(LightState.GO)
            out[np.ix_(rows, np.flatnonzero(caution))] = int(LightState.CAUTION)
            start = yellow_end + jn.all_red
    return out


# ----------------------------------------------------------------------------------------------
# Map elements.
# ----------------------------------------------------------------------------------------------


def _crossing(centre: np.ndarray, direction: np.ndarray, width: float) -> np.ndarray:
    d = direction / max(float(np.linalg.norm(direction)), 1e-12)
    n = _left(d)
    return np.stack([centre + 0.5 * width * n, centre - 0.5 * width * n])


def map_elements(town: Town) -> MapElements:
    """The town as rap map elements (z = 0 everywhere; ids documented in the synthetic module)."""
    lanes = town.lanes
    lane_set = Lanes(
        ids=np.array([lane.id for lane in lanes], dtype=np.int64),
        centerlines=Polylines.from_list([lane.points for lane in lanes]),
        types=np.full(len(lanes), int(LaneType.SURFACE_STREET), dtype=np.int8),
        speed_limit=np.array([lane.speed_limit for lane in lanes], dtype=np.float32),
        has_speed_limit=np.ones(len(lanes), dtype=bool),
        width=np.array([lane.width for lane in lanes], dtype=np.float32),
        interpolating=np.array([lane.is_connector for lane in lanes], dtype=bool),
        successors=tuple(tuple(lanes[s].id for s in lane.successors) for lane in lanes),
        predecessors=tuple(tuple(lanes[s].id for s in lane.predecessors) for lane in lanes),
        left_neighbors=tuple(tuple(lanes[s].id for s in lane.left) for lane in lanes),
        right_neighbors=tuple(tuple(lanes[s].id for s in lane.right) for lane in lanes),
    )
    road_lines = LineSet(
        ids=np.arange(len(town.road_lines), dtype=np.int64),
        lines=Polylines.from_list([p for p, _ in town.road_lines]),
        types=np.array([t for _, t in town.road_lines], dtype=np.int8),
    )
    road_edges = LineSet(
        ids=np.arange(len(town.road_edges), dtype=np.int64),
        lines=Polylines.from_list(town.road_edges),
        types=np.full(len(town.road_edges), int(RoadEdgeType.BOUNDARY), dtype=np.int8),
    )
    stop_ids, stop_lines, stop_types = [], [], []
    sign_ids, sign_pos, sign_lanes = [], [], []
    for jn in town.junctions:
        kind = StopLineType.TRAFFIC_LIGHT if jn.signalized else StopLineType.STOP_SIGN
        for a, arm in enumerate(jn.arms):
            if arm is None:
                continue
            for li in arm.in_lanes:
                lane = lanes[li]
                stop_ids.append(lane.id)
                stop_lines.append(_crossing(lane.points[-1], -_UNIT[a], lane.width))
                stop_types.append(int(kind))
            if not jn.signalized:
                u = _UNIT[a]
                pos = jn.pos + arm.d_stop * u + (arm.street.half_width + 0.8) * _left(u)
                sign_ids.append(len(sign_ids))
                sign_pos.append([pos[0], pos[1], 0.0])
                sign_lanes.append(
                    tuple(lanes[c].id for c in jn.connectors if lanes[c].entry_arm == a)
                )
    stop_line_set = LineSet(
        ids=np.array(stop_ids, dtype=np.int64),
        lines=Polylines.from_list(stop_lines),
        types=np.array(stop_types, dtype=np.int8),
    )
    crosswalks = PolygonSet(
        ids=np.arange(len(town.crosswalks), dtype=np.int64),
        rings=Polylines.from_list([c.ring for c in town.crosswalks]),
    )
    stop_signs = StopSigns(
        ids=np.array(sign_ids, dtype=np.int64),
        positions=np.array(sign_pos, dtype=np.float64).reshape(-1, 3),
        lane_ids=tuple(sign_lanes),
    )
    drivable = PolygonSet(
        ids=np.arange(len(town.drivable_pieces), dtype=np.int64),
        rings=Polylines.from_list(town.drivable_pieces),
    )
    return MapElements(
        lanes=lane_set,
        road_lines=road_lines,
        road_edges=road_edges,
        stop_lines=stop_line_set,
        crosswalks=crosswalks,
        speed_bumps=PolygonSet.empty(),
        driveways=PolygonSet.empty(),
        stop_signs=stop_signs,
        drivable_area=drivable,
    )
