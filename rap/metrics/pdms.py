"""NAVSIM's PDM Score (PDMS, v1) and Extended PDM Score (EPDMS, v2), vectorized over proposals.

Entry points:

* :func:`score_scene` — executes K proposals (LQR tracker + kinematic bicycle, 4 s at 10 Hz) and
  scores the executed rollouts on one :class:`~rap.metrics.pdm_inputs.ScoringScene`; returns a
  :class:`PDMResult` of (K,) arrays for every sub-metric plus ``pdms`` and ``epdms``.
* :func:`aggregate_v1` / :func:`aggregate_v2` — dataset-level scores.
* The sub-metrics as pure functions over batched arrays (each testable alone):
  :func:`drivable_area_compliance`, :func:`driving_direction_compliance`,
  :func:`traffic_light_compliance`, :func:`lane_keeping`, :func:`ego_progress`,
  :func:`raw_progress`, and in sibling modules NC / TTC (:mod:`rap.metrics.pdm_collisions`),
  comfort / EC (:mod:`rap.metrics.comfort`), ego areas (:mod:`rap.metrics.pdm_areas`).

Scores (per scene, per proposal):

* v1:  ``PDMS = NC * DAC * (5 EP + 5 TTC + 2 C) / 12``
* v2:  ``EPDMS = NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16``; without a
  previous plan EC is not scored and its weight drops out (/ 14), as NAVSIM does for frames without
  a predecessor. With a logged human trajectory, every v2 sub-metric the human scores 0 on is set
  to 1 for the agent (human filter) before the product and weighted mean are formed; the human is
  scored alone, so its EP is always 1 and EP is never filtered.

EP (NAVSIM scores [reference, agent] as a pair): v1 divides the proposal's *penalized* progress
(times NC * DAC) by the larger of its own and the reference's penalized progress, 1 if that
maximum is <= 5 m (0 where the proposal's penalty product is 0). v2 (navsim >= 2.0.1) divides the
proposal's *raw* progress by the larger penalized progress (times NC * DAC * DDC * TLC) of the
pair, clipped to [0, 1], and is 1 if that maximum is <= 5 m.

Objects: v2's log replay drops the tracks whose box overlaps the ego at t = 0 before scoring
(:func:`objects_clear_of_ego`); v1 keeps them.

Tracker: the default velocity fit reproduces NAVSIM's batch LQR exactly, including its
regularizer matrix (see :mod:`rap.sim.tracker`); ``LQRConfig(velocity_regularizer="nuplan")``
(``tracker.velocity_regularizer=nuplan`` in ``rap eval navsim``) is the only option that departs
from the official scorer.

Exactness: area membership (an exact per-point test for sparse queries, a raster with an exact
fallback for dense ones), lane-keeping distances, box
contacts (separating axes) and progress projections reproduce shapely's answers exactly;
:mod:`rap.metrics.pdm_naive` (a loop-based transcription of NAVSIM's scorer) agrees proposal by
proposal in the tests.

The one deviation from NAVSIM's code (``autonomousvision/navsim`` main; PDMS v1 as in v1.1):

* "Behind" (active-rear collisions) and "ahead" (TTC) are nuPlan's bearing of the object centre
  from the ego rear axle, as in NAVSIM's code. rap clips the bearing's cosine to [-1, 1]; nuPlan
  gets NaN there when rounding pushes it past 1 at UTM-size coordinates, and then ignores the
  object.

Inputs the caller must match for parity (not differences in the scorer):

* Reference: NAVSIM takes PDM-Closed's trajectory from its metric cache. Without one, rap runs
  :mod:`rap.sim.reference` (PDM-Closed-like, not PDM-Closed); pass the cached trajectory as
  ``ScoringScene.reference_poses`` for parity.
* PDMS v1's TTC looks 0.9 s past the last simulated step (NAVSIM v1 observes 5 s of objects):
  give ``ObjectTracks`` 51 steps; with 41, those look-aheads are skipped.
* Plan endpoints for the two-stage aggregation (:func:`aggregate_v2`, kernel
  exp(-d^2 / (2 * 0.1)) on the endpoint's x and y) are the caller's.

Numerics: heading errors in the tracker wrap with a modulo ([-pi, pi)) where NAVSIM uses arctan2
((-pi, pi]); the two differ only at exactly +-pi.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum
from typing import Sequence

import numpy as np
import shapely
from numpy.typing import ArrayLike

from rap.metrics.comfort import (
    V1_FILTERS,
    V2_FILTERS,
    ComfortBounds,
    ComfortFilters,
    ExtendedComfortBounds,
    extended_comfort,
    is_comfortable,
)
from rap.metrics.pdm_areas import EgoAreaIndex, PreparedPolygons, SegmentGrid, _any_bit, area_flags, index_bits, membership_bits
from rap.metrics.pdm_collisions import CollisionConfig, ego_box, find_contacts, no_at_fault_collisions, time_to_collision
from rap.metrics.pdm_inputs import ObjectTracks, ScoringScene
from rap.sim.bicycle import StateIndex
from rap.sim.reference import Obstacles, ReferencePlannerConfig, idm_candidates
from rap.sim.tracker import RolloutConfig, interpolate_poses, track
from rap.trajectory import NAVSIM_SAMPLING, TrajectorySampling

__all__ = [
    "MultiMetricIndex",
    "WeightedMetricIndex",
    "PDMScorerConfig",
    "PDMResult",
    "PreparedScene",
    "prepare_scene",
    "ego_box",
    "drivable_area_compliance",
    "driving_direction_compliance",
    "traffic_light_compliance",
    "lane_keeping",
    "raw_progress",
    "ego_progress",
    "ego_progress_v2",
    "objects_clear_of_ego",
    "weighted_score",
    "score_states",
    "score_scene",
    "aggregate_v1",
    "aggregate_v2",
]


class MultiMetricIndex(IntEnum):
    """Multiplicative v2 metrics (v1 uses the first two)."""

    NO_COLLISION = 0
    DRIVABLE_AREA = 1
    DRIVING_DIRECTION = 2
    TRAFFIC_LIGHT = 3


class WeightedMetricIndex(IntEnum):
    """Weighted v2 metrics."""

    PROGRESS = 0
    TTC = 1
    LANE_KEEPING = 2
    HISTORY_COMFORT = 3
    EXTENDED_COMFORT = 4


@dataclasses.dataclass(frozen=True)
class PDMScorerConfig:
    """Scorer constants (NAVSIM ``PDMScorerConfig`` values; units in comments)."""

    # v1 weights (PDMS)
    v1_progress_weight: float = 5.0
    v1_ttc_weight: float = 5.0
    v1_comfort_weight: float = 2.0
    # v2 weights (EPDMS)
    progress_weight: float = 5.0
    ttc_weight: float = 5.0
    lane_keeping_weight: float = 2.0  # (hydraMDP++)
    history_comfort_weight: float = 2.0
    extended_comfort_weight: float = 2.0
    # thresholds
    driving_direction_horizon_s: float = 1.0  # [s] (nuPlan)
    driving_direction_compliance_threshold: float = 2.0  # [m] (nuPlan)
    driving_direction_violation_threshold: float = 6.0  # [m] (nuPlan)
    progress_distance_threshold: float = 5.0  # [m]
    lane_keeping_deviation_limit: float = 0.5  # [m] (hydraMDP++)
    lane_keeping_horizon_s: float = 2.0  # [s] (hydraMDP++)
    ttc_v2_max_lookahead_steps: int = 9  # v2 checks TTC at steps 0 .. T - 1 - 9 (all look-aheads in the horizon)
    human_penalty_filter: bool = True  # v2: apply the human filter when the scene has a human trajectory
    area_resolution: float = 0.1  # [m] raster cell of the area lookups (speed only, results are exact)
    collision: CollisionConfig = dataclasses.field(default_factory=CollisionConfig)
    comfort_bounds: ComfortBounds = dataclasses.field(default_factory=ComfortBounds)
    v1_comfort_filters: ComfortFilters = V1_FILTERS
    v2_comfort_filters: ComfortFilters = V2_FILTERS
    extended_comfort_bounds: ExtendedComfortBounds = dataclasses.field(default_factory=ExtendedComfortBounds)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    reference: ReferencePlannerConfig = dataclasses.field(default_factory=ReferencePlannerConfig)

    @property
    def v1_weights(self) -> np.ndarray:
        """(3,) EP, TTC, C."""
        return np.array([self.v1_progress_weight, self.v1_ttc_weight, self.v1_comfort_weight])

    @property
    def v2_weights(self) -> np.ndarray:
        """(5,) weights, rows :class:`WeightedMetricIndex`."""
        return np.array([self.progress_weight, self.ttc_weight, self.lane_keeping_weight, self.history_comfort_weight, self.extended_comfort_weight])


@dataclasses.dataclass(frozen=True, eq=False)
class PDMResult:
    """Per-proposal scores of one scene; every array is (K,) float64.

    v2 sub-metrics (EPDMS): ``no_at_fault_collisions`` (NC), ``drivable_area_compliance`` (DAC),
    ``driving_direction_compliance`` (DDC), ``traffic_light_compliance`` (TLC), ``ego_progress``
    (EP), ``time_to_collision_within_bound`` (TTC), ``lane_keeping`` (LK), ``history_comfort``
    (HC), ``extended_comfort`` (EC, NaN without a previous plan). These are the agent's values
    after the human filter when it applied (``human_filtered``).
    v1 (PDMS): NC, DAC as above (unfiltered: ``v1_no_at_fault_collisions``,
    ``v1_drivable_area_compliance``), ``ego_progress_v1``, ``time_to_collision_within_bound_v1``,
    ``comfort``.

    Attributes also hold ``raw_progress`` (K,) [m], ``reference_progress`` [m] (reference raw
    progress times its v2 penalty product), ``states`` (K, 41, 11) executed states and
    ``reference_states`` (41, 11).
    """

    no_at_fault_collisions: np.ndarray
    drivable_area_compliance: np.ndarray
    driving_direction_compliance: np.ndarray
    traffic_light_compliance: np.ndarray
    ego_progress: np.ndarray
    time_to_collision_within_bound: np.ndarray
    lane_keeping: np.ndarray
    history_comfort: np.ndarray
    extended_comfort: np.ndarray
    v1_no_at_fault_collisions: np.ndarray
    v1_drivable_area_compliance: np.ndarray
    ego_progress_v1: np.ndarray
    time_to_collision_within_bound_v1: np.ndarray
    comfort: np.ndarray
    pdms: np.ndarray
    epdms: np.ndarray
    raw_progress: np.ndarray
    reference_progress: float
    human_filtered: bool
    states: np.ndarray
    reference_states: np.ndarray

    def __len__(self) -> int:
        return int(self.pdms.shape[0])


# ----------------------------------------------------------------------------------------------
# Scene preparation.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedScene:
    """Scene geometry prepared once for any number of :func:`score_states` calls.

    All map layers go into one :class:`~rap.metrics.pdm_areas.PreparedPolygons` (one membership
    pass per call); the masks are (W,) uint64 bit masks selecting each layer from its membership
    bits. The lane-keeping zone is an exact-only polygon: the distance test decides its points.
    """

    scene: ScoringScene
    areas: PreparedPolygons
    lane_mask: np.ndarray
    route_mask: np.ndarray
    drivable_mask: np.ndarray
    intersection_mask: np.ndarray
    lane_keeping_mask: np.ndarray  # zone within the deviation limit of the centerline
    centerline: shapely.LineString
    centerline_grid: SegmentGrid  # fast exact projections onto the centerline
    red_lights: tuple  # per object step: tuple of polygons


def prepare_scene(scene: ScoringScene, config: PDMScorerConfig | None = None) -> PreparedScene:
    """Builds the polygon set, layer masks and centerline :func:`score_states` needs."""
    cfg = config if config is not None else PDMScorerConfig()
    lane_ids = sorted(scene.lane_polygons)
    lanes = [scene.lane_polygons[i] for i in lane_ids]
    line_xy = scene.centerline[:, :2]
    line = shapely.LineString(line_xy)
    shapely.prepare(line)
    limit = cfg.lane_keeping_deviation_limit
    # Lane keeping is "distance to the centerline <= limit", decided exactly by the segment grid;
    # the buffered line (within 3 mm of that zone) bounds the points to test and serves the
    # raster path of large queries away from its edges.
    near_line = SegmentGrid(line_xy, limit)
    zone = shapely.buffer(line, limit, quad_segs=8)
    zone_parts = [zone] if isinstance(zone, shapely.Polygon) else list(zone.geoms)
    layers = [lanes, list(scene.drivable_area), list(scene.intersections), zone_parts]
    polys = [p for layer in layers for p in layer]
    bounds = np.cumsum([0] + [len(layer) for layer in layers])
    lk_start = int(bounds[3])

    def exact(j: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if j >= lk_start:
            return near_line.within(x, y)  # == shapely.distance(point, line) <= limit
        return shapely.contains_xy(polys[j], x, y)

    n = len(polys)
    mask = lambda a, b: index_bits(np.arange(a, b), n)  # noqa: E731
    route = [i for i, lane in enumerate(lane_ids) if lane in scene.route_lane_ids]
    red_by_ids: dict[frozenset, tuple] = {}  # steps with the same red lights share one tuple
    red_lights = []
    for t in range(scene.objects.num_steps):
        ids = scene.red_light_lane_ids[t] if t < len(scene.red_light_lane_ids) else frozenset()
        if ids not in red_by_ids:
            red_by_ids[ids] = scene.red_light_polygons(t)
        red_lights.append(red_by_ids[ids])
    return PreparedScene(
        scene=scene,
        areas=PreparedPolygons.from_polygons(polys, exact=exact, exact_only=np.arange(n) >= lk_start),
        lane_mask=mask(bounds[0], bounds[1]),
        route_mask=index_bits(np.asarray(route, dtype=np.int64), n),
        drivable_mask=mask(bounds[1], bounds[2]),
        intersection_mask=mask(bounds[2], bounds[3]),
        lane_keeping_mask=mask(bounds[3], bounds[4]),
        centerline=line,
        centerline_grid=SegmentGrid(line_xy, 5.0, cell=5.0),
        red_lights=tuple(red_lights),
    )


# ----------------------------------------------------------------------------------------------
# Sub-metrics as pure functions.
# ----------------------------------------------------------------------------------------------


def drivable_area_compliance(non_drivable: np.ndarray) -> np.ndarray:
    """DAC (K,) float64: 0 if any step has a corner off the drivable area.

    Args:
        non_drivable: (K, T) bool (``EgoAreaIndex.NON_DRIVABLE_AREA``).
    """
    return np.where(np.asarray(non_drivable, dtype=bool).any(axis=-1), 0.0, 1.0)


def driving_direction_compliance(
    centers: np.ndarray,
    oncoming: np.ndarray,
    in_intersection: np.ndarray,
    dt: float,
    config: PDMScorerConfig | None = None,
) -> np.ndarray:
    """DDC (K,) float64 in {0, 0.5, 1}.

    The centre's displacement into step t counts while the centre is in no on-route lane and not
    in an intersection; summed over a trailing 1 s window (steps t-10 .. t), maximized over t:
    < 2 m -> 1, < 6 m -> 0.5, else 0.

    Args:
        centers: (K, T, 2) box centres [m].
        oncoming: (K, T) bool (``EgoAreaIndex.ONCOMING_TRAFFIC``).
        in_intersection: (K, T) bool, centre inside an intersection.
        dt: Step [s].
    """
    cfg = config if config is not None else PDMScorerConfig()
    c = np.asarray(centers, dtype=np.float64)
    step = np.zeros(c.shape[:2])
    step[:, 1:] = np.linalg.norm(np.diff(c, axis=1), axis=-1)
    step = np.where(np.asarray(oncoming, bool) & ~np.asarray(in_intersection, bool), step, 0.0)
    horizon = int(cfg.driving_direction_horizon_s / dt)
    csum = np.concatenate([np.zeros((step.shape[0], 1)), np.cumsum(step, axis=1)], axis=1)
    idx = np.arange(step.shape[1])
    window = csum[:, idx + 1] - csum[:, np.maximum(idx - horizon, 0)]
    worst = window.max(axis=1) if step.shape[1] else np.zeros(step.shape[0])
    return np.where(
        worst < cfg.driving_direction_compliance_threshold,
        1.0,
        np.where(worst < cfg.driving_direction_violation_threshold, 0.5, 0.0),
    )


def traffic_light_compliance(
    corners: np.ndarray,
    red_light_polygons: Sequence[Sequence[shapely.Polygon]],
) -> np.ndarray:
    """TLC (K,) float64: 0 if the ego box intersects a red-light polygon at any step.

    Args:
        corners: (K, T, 4, 2) ego box corners [m].
        red_light_polygons: Per step t < T, the polygons of on-route lane connectors with a red
            light (shorter sequences mean no red lights at later steps).
    """
    c = np.asarray(corners, dtype=np.float64)
    k, t = c.shape[:2]
    out = np.ones(k)
    if k == 0:
        return out
    active: dict[int, tuple[shapely.Polygon, list[int]]] = {}
    for step, polys in enumerate(red_light_polygons[:t]):
        for poly in polys:
            active.setdefault(id(poly), (poly, []))[1].append(step)
    if not active:
        return out
    lo = c.min(axis=2)  # (K, T, 2)
    hi = c.max(axis=2)
    for poly, steps in active.values():
        minx, miny, maxx, maxy = poly.bounds
        steps_arr = np.asarray(steps)
        near = (lo[:, steps_arr, 0] <= maxx) & (hi[:, steps_arr, 0] >= minx) & (lo[:, steps_arr, 1] <= maxy) & (hi[:, steps_arr, 1] >= miny)
        kk, si = np.nonzero(near & (out[:, None] > 0))
        if kk.size == 0:
            continue
        boxes = shapely.polygons(c[kk, steps_arr[si]])
        hit = shapely.intersects(boxes, poly)
        out[kk[hit]] = 0.0
    return out


def lane_keeping(
    deviates: np.ndarray,
    in_intersection: np.ndarray,
    dt: float,
    config: PDMScorerConfig | None = None,
) -> np.ndarray:
    """LK (K,) float64: 0 if the centre is farther than 0.5 m from the centerline for >= 2 s in a
    row; steps in an intersection are skipped (they neither count nor break a run).

    Args:
        deviates: (K, T) bool, centre-to-centerline distance > the limit.
        in_intersection: (K, T) bool, centre inside an intersection.
        dt: Step [s].
    """
    cfg = config if config is not None else PDMScorerConfig()
    need = int(np.ceil(cfg.lane_keeping_horizon_s / dt))
    dev = np.asarray(deviates, dtype=bool)
    skip = np.asarray(in_intersection, dtype=bool)
    k, t = dev.shape
    counted = dev & ~skip
    breaks = ~dev & ~skip
    run_id = np.cumsum(breaks, axis=1)  # runs are separated by non-deviating, non-skipped steps
    flat = (np.arange(k)[:, None] * (t + 1) + run_id).ravel()
    lengths = np.bincount(flat, weights=counted.ravel().astype(np.float64), minlength=k * (t + 1))
    longest = lengths.reshape(k, t + 1).max(axis=1)
    return np.where(longest >= need, 0.0, 1.0)


def raw_progress(
    centerline: shapely.LineString, start: np.ndarray, end: np.ndarray, grid: SegmentGrid | None = None
) -> np.ndarray:
    """Progress along the centerline [m] (K,): arc position of ``end`` minus that of ``start``
    (both (K, 2) box centres), clipped at 0 (``shapely.line_locate_point``; ``grid``, a
    :class:`~rap.metrics.pdm_areas.SegmentGrid` of the same line, computes the same faster)."""
    start = np.asarray(start, dtype=np.float64).reshape(-1, 2)
    end = np.asarray(end, dtype=np.float64).reshape(-1, 2)
    uniq, inverse = np.unique(start, axis=0, return_inverse=True)  # proposals share the start
    pts = np.concatenate([uniq, end])
    if grid is None:
        arc = shapely.line_locate_point(centerline, shapely.points(pts))
    else:
        arc = grid.project(pts[:, 0], pts[:, 1], centerline)
    s0 = arc[: len(uniq)][inverse.reshape(-1)]
    return np.clip(arc[len(uniq) :] - s0, 0.0, None)


def ego_progress(
    progress: np.ndarray,
    multiplicative: np.ndarray,
    reference: float,
    threshold: float = 5.0,
) -> np.ndarray:
    """EP (K,) float64 for proposals each scored against one reference (NAVSIM scores
    [reference, agent] as a pair).

    Args:
        progress: (K,) raw progress [m].
        multiplicative: (K,) product of the multiplicative penalties.
        reference: Reference progress times its own penalty product [m].
        threshold: [m] below or at which the pair's best progress counts as standing still.

    Returns:
        penalized / max(penalized, reference) where that maximum exceeds ``threshold``; else 1
        (0 where ``multiplicative`` is 0).
    """
    pen = np.asarray(progress, dtype=np.float64) * np.asarray(multiplicative, dtype=np.float64)
    best = np.maximum(pen, float(reference))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = pen / best
    fallback = np.where(np.asarray(multiplicative) == 0.0, 0.0, 1.0)
    return np.where(best > threshold, ratio, fallback)


def ego_progress_v2(
    progress: np.ndarray,
    multiplicative: np.ndarray,
    reference: float,
    threshold: float = 5.0,
) -> np.ndarray:
    """EPDMS's EP (K,) float64 (NAVSIM >= 2.0.1): each proposal's *raw* progress over the largest
    *penalized* progress of its pair [reference, proposal], clipped to [0, 1].

    Args:
        progress: (K,) raw progress [m].
        multiplicative: (K,) product of the v2 multiplicative penalties (NC, DAC, DDC, TLC).
        reference: Reference progress times its own v2 penalty product [m].
        threshold: [m] at or below which the pair's best penalized progress gives EP = 1.

    Returns:
        clip(progress / max(penalized, reference), 0, 1) where that maximum exceeds
        ``threshold``; else 1 (a penalized proposal keeps EP; its score is zeroed by the product).
    """
    raw = np.asarray(progress, dtype=np.float64)
    pen = raw * np.asarray(multiplicative, dtype=np.float64)
    best = np.maximum(pen, float(reference))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.clip(raw / best, 0.0, 1.0)
    return np.where(best > threshold, ratio, 1.0)


def weighted_score(multiplicative: np.ndarray, weighted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``prod(multiplicative) * sum(w * weighted) / sum(w)``; NaN weighted metrics drop out with
    their weight (NAVSIM's treatment of a missing EC).

    Args:
        multiplicative: (M, K) multiplicative metrics.
        weighted: (W, K) weighted metrics (NaN = not scored).
        weights: (W,) weights.

    Returns:
        (K,) float64 scores.
    """
    w = np.asarray(weights, dtype=np.float64)[:, None] * ~np.isnan(weighted)
    num = (w * np.nan_to_num(weighted)).sum(axis=0)
    return np.prod(multiplicative, axis=0) * num / w.sum(axis=0)


# ----------------------------------------------------------------------------------------------
# Scoring.
# ----------------------------------------------------------------------------------------------


def score_states(
    prep: PreparedScene,
    states: np.ndarray,
    config: PDMScorerConfig | None = None,
    history: np.ndarray | None = None,
    previous: np.ndarray | None = None,
    previous_offset_steps: int = 5,
    v1_only: bool = False,
) -> dict[str, np.ndarray]:
    """Unnormalized sub-metrics of executed rollouts (no EP normalization, no aggregation).

    Args:
        prep: Prepared scene.
        states: (K, T, 11) executed states at ``config.rollout.dt``, row 0 = now.
        config: Scorer constants.
        history: (H, 11) past ego states for HC, or ``None`` (HC = 1).
        previous: (T, 11) executed states of the previous plan for EC, or ``None`` (EC = NaN).
        previous_offset_steps: Steps between the previous plan and now.
        v1_only: Compute only what PDMS v1 needs (NC, DAC, progress, TTC v1, C); the v2-only
            entries are then 1 (EC NaN).

    Returns:
        Dict of (K,) float64 arrays: ``nc``, ``dac``, ``ddc``, ``tlc``, ``progress`` [m],
        ``ttc`` (v2), ``ttc_v1``, ``lk``, ``comfort`` (v1), ``hc``, ``ec``.
    """
    cfg = config if config is not None else PDMScorerConfig()
    scene = prep.scene
    vehicle = cfg.rollout.vehicle
    dt = cfg.rollout.dt
    s = np.asarray(states, dtype=np.float64)
    k, t = s.shape[:2]
    if t > scene.objects.num_steps:
        raise ValueError(f"score_states: {t} steps but the scene's objects cover {scene.objects.num_steps}")
    corners, centers = ego_box(s, vehicle)
    rear = s[..., [StateIndex.X, StateIndex.Y]]
    # One exact membership pass for corners, centres and rear axles against every map layer.
    n_c, n_p = k * t * 4, k * t
    pts = np.concatenate([corners.reshape(-1, 2), centers.reshape(-1, 2), rear.reshape(-1, 2)])
    relevant = np.empty((pts.shape[0], prep.lane_mask.shape[0]), dtype=np.uint64)
    relevant[:n_c] = prep.lane_mask | prep.drivable_mask
    relevant[n_c : n_c + n_p] = prep.route_mask | prep.intersection_mask | prep.lane_keeping_mask
    relevant[n_c + n_p :] = prep.intersection_mask
    bits = membership_bits(prep.areas, pts, cfg.area_resolution, relevant)
    corner_bits = bits[:n_c].reshape(k, t, 4, -1)
    center_bits = bits[n_c : n_c + n_p].reshape(k, t, -1)
    areas = area_flags(corner_bits, center_bits, prep.lane_mask, prep.route_mask, prep.drivable_mask)
    center_in_inter = _any_bit(center_bits & prep.intersection_mask)
    rear_in_inter = _any_bit(bits[n_c + n_p :] & prep.intersection_mask).reshape(k, t)
    within = _any_bit(center_bits & prep.lane_keeping_mask)

    contacts = find_contacts(s, scene.objects, t - 1, vehicle, cfg.collision, dt)
    nc, _ = no_at_fault_collisions(s, areas, scene.objects, vehicle, cfg.collision, contacts)
    dac = drivable_area_compliance(areas[..., EgoAreaIndex.NON_DRIVABLE_AREA])
    progress = raw_progress(prep.centerline, centers[:, 0], centers[:, -1], prep.centerline_grid)
    c_v1 = is_comfortable(s, dt, cfg.v1_comfort_filters, cfg.comfort_bounds, vehicle)
    ones = np.ones(k)
    if v1_only:
        ttc_v1, _ = time_to_collision(s, areas, rear_in_inter, scene.objects, t - 1, vehicle, cfg.collision, dt, contacts)
        return {
            "nc": nc, "dac": dac, "ddc": ones, "tlc": ones, "progress": progress,
            "ttc": ones, "ttc_v1": ttc_v1, "lk": ones, "comfort": c_v1, "hc": ones, "ec": np.full(k, np.nan),
        }
    ddc = driving_direction_compliance(centers, areas[..., EgoAreaIndex.ONCOMING_TRAFFIC], center_in_inter, dt, cfg)
    tlc = traffic_light_compliance(corners, prep.red_lights)
    last_v2 = t - 1 - cfg.ttc_v2_max_lookahead_steps
    (ttc_v1, _), (ttc_v2, _) = time_to_collision(
        s, areas, rear_in_inter, scene.objects, (t - 1, last_v2), vehicle, cfg.collision, dt, contacts
    )
    lk = lane_keeping(~within, center_in_inter, dt, cfg)
    if history is not None and len(history):
        padded = np.concatenate([np.broadcast_to(history, (k,) + np.shape(history)), s], axis=1)
        hc = is_comfortable(padded, dt, cfg.v2_comfort_filters, cfg.comfort_bounds, vehicle)
    else:
        hc = ones
    if previous is not None:
        ec = extended_comfort(s, previous, previous_offset_steps, dt, cfg.extended_comfort_bounds)
    else:
        ec = np.full(k, np.nan)
    return {
        "nc": nc, "dac": dac, "ddc": ddc, "tlc": tlc, "progress": progress,
        "ttc": ttc_v2, "ttc_v1": ttc_v1, "lk": lk, "comfort": c_v1, "hc": hc, "ec": ec,
    }


def _v1_pdms(m: dict[str, np.ndarray], ep: np.ndarray, cfg: PDMScorerConfig) -> np.ndarray:
    return weighted_score(np.stack([m["nc"], m["dac"]]), np.stack([ep, m["ttc_v1"], m["comfort"]]), cfg.v1_weights)


def _reference_candidates(scene: ScoringScene, cfg: PDMScorerConfig, prep: PreparedScene) -> tuple[np.ndarray, TrajectorySampling, ObjectTracks | None]:
    """Reference plans (P, N, 3) in the ego frame, their sampling, and the objects to select among
    them with (``None`` when the scene supplies its own single reference)."""
    if scene.reference_poses is not None:
        poses = scene.reference_poses
        return poses[None], TrajectorySampling(poses.shape[0], cfg.rollout.dt), None
    rcfg = cfg.reference
    forecast = scene.objects.constant_velocity_forecast(scene.objects.num_steps, cfg.rollout.dt)
    obstacles = Obstacles(
        forecast.x, forecast.y, forecast.heading, forecast.vx, forecast.vy,
        forecast.length, forecast.width, forecast.valid, prep.red_lights[0] if prep.red_lights else (),
    )
    cands = idm_candidates(scene.ego.state_array(), scene.centerline, obstacles, scene.speed_limit, cfg.rollout.vehicle, rcfg)
    return cands, TrajectorySampling(cands.shape[1], rcfg.dt), forecast


def _select_reference(prep: PreparedScene, states: np.ndarray, forecast: ObjectTracks, cfg: PDMScorerConfig) -> int:
    """PDM-Closed's choice among simulated candidates: best v1 PDMS against the constant-velocity
    forecast, EP normalized among the candidates."""
    fprep = dataclasses.replace(prep, scene=dataclasses.replace(prep.scene, objects=forecast))
    m = score_states(fprep, states, cfg, v1_only=True)
    mult = m["nc"] * m["dac"]
    pen = m["progress"] * mult
    best = pen.max()
    ep = pen / best if best > cfg.progress_distance_threshold else np.where(mult == 0.0, 0.0, 1.0)
    return int(np.argmax(_v1_pdms(m, ep, cfg)))


def objects_clear_of_ego(scene: ScoringScene, vehicle=None) -> ScoringScene:
    """The scene without the objects whose box overlaps the ego's at t = 0 (NAVSIM v2's log
    replay drops such tracks before scoring; v1 keeps them). Returns ``scene`` itself when no
    object overlaps.

    Args:
        scene: The scoring scene.
        vehicle: Ego vehicle parameters (default :data:`rap.sim.bicycle.PACIFICA`).
    """
    from rap.sim.bicycle import PACIFICA

    objects = scene.objects
    if not len(objects):
        return scene
    corners, _ = ego_box(scene.ego.state_array(), PACIFICA if vehicle is None else vehicle)
    ego_polygon = shapely.Polygon(corners)
    now = objects.valid[:, 0]
    boxes = shapely.polygons(objects.corners()[:, 0])  # (N,) boxes at t = 0
    overlap = now & shapely.intersects(boxes, ego_polygon)
    if not overlap.any():
        return scene
    keep = ~overlap
    per_step = {name: getattr(objects, name)[keep] for name in ("x", "y", "heading", "vx", "vy", "valid")}
    kept = dataclasses.replace(objects, ids=objects.ids[keep], kinds=objects.kinds[keep], length=objects.length[keep], width=objects.width[keep], **per_step)
    return dataclasses.replace(scene, objects=kept)


def score_scene(
    scene: ScoringScene,
    proposals: ArrayLike,
    sampling: TrajectorySampling = NAVSIM_SAMPLING,
    config: PDMScorerConfig | None = None,
    prepared: PreparedScene | None = None,
) -> PDMResult:
    """Scores K proposals on one scene with NAVSIM's PDMS (v1) and EPDMS (v2).

    Args:
        scene: Plain scene inputs (:class:`~rap.metrics.pdm_inputs.ScoringScene`).
        proposals: (K, T, 3) planned x, y, heading [m, m, rad] in the ego frame at now (rear
            axle), sampled per ``sampling``; (T, 3) is read as K = 1.
        sampling: Proposal sampling (NAVSIM: 8 poses every 0.5 s).
        config: Scorer constants; ``None`` means ``PDMScorerConfig()``.
        prepared: ``prepare_scene(scene, config)`` of this same scene, to reuse across calls.

    Returns:
        :class:`PDMResult` with (K,) arrays.
    """
    cfg = config if config is not None else PDMScorerConfig()
    p = np.asarray(proposals, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[2] != 3 or p.shape[1] != sampling.num_poses:
        raise ValueError(f"score_scene: proposals must be (K, {sampling.num_poses}, 3), got {p.shape}")
    if p.shape[0] == 0 or not np.all(np.isfinite(p)):
        raise ValueError("score_scene: proposals must be non-empty and finite")
    prep = prepared if prepared is not None else prepare_scene(scene, cfg)
    rollout = cfg.rollout
    ego = scene.ego.state_array()
    origin = ego[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]]

    # One rollout for everything: reference candidates, human plan, previous plan, proposals.
    ref_plans, ref_sampling, forecast = _reference_candidates(scene, cfg, prep)
    groups = [(ref_plans, ref_sampling, ego)]
    use_human = cfg.human_penalty_filter and scene.human_trajectory is not None
    if use_human:
        groups.append((scene.human_trajectory[None], scene.human_sampling, ego))
    offset = 5
    if scene.previous_plan is not None:
        pp = scene.previous_plan
        groups.append((pp.poses[None], pp.sampling, pp.ego.state_array()))
        offset = int(round(pp.time_offset_s / rollout.dt))
    groups.append((p, sampling, ego))
    refs, inits = [], []
    for plans, smp, init in groups:
        o = init[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]] if init is not ego else origin
        refs.append(interpolate_poses(plans, smp, o, rollout.num_steps, rollout.dt))
        inits.append(np.broadcast_to(init, (plans.shape[0], init.shape[0])))
    all_states = track(np.concatenate(refs), np.concatenate(inits), rollout)
    sizes = [g[0].shape[0] for g in groups]
    parts = np.split(all_states, np.cumsum(sizes)[:-1])
    cand_states = parts[0]
    human_states = parts[1] if use_human else None
    previous = parts[1 + int(use_human)][0] if scene.previous_plan is not None else None
    agent_states = parts[-1]

    best = 0 if forecast is None else _select_reference(prep, cand_states, forecast, cfg)
    ref_states = cand_states[best : best + 1]
    rows = [ref_states] + ([human_states] if use_human else []) + [agent_states]
    stacked = np.concatenate(rows)
    m = score_states(prep, stacked, cfg, scene.history_state_array(), previous, offset)
    # v2 replays the log without the tracks that overlap the ego at t = 0 (v1 keeps them).
    clear = objects_clear_of_ego(scene, cfg.rollout.vehicle)
    if clear is scene:
        m2 = m
    else:
        m2 = score_states(prepare_scene(clear, cfg), stacked, cfg, scene.history_state_array(), previous, offset)
    n_pre = len(rows) - 1
    agent = {key: v[n_pre:] for key, v in m.items()}
    ref = {key: v[0] for key, v in m.items()}
    agent2 = {key: v[n_pre:] for key, v in m2.items()}
    ref2 = {key: v[0] for key, v in m2.items()}
    thr = cfg.progress_distance_threshold
    # v1: NC * DAC penalties, EP = penalized / best penalized of the pair.
    mult_v1 = agent["nc"] * agent["dac"]
    ep_v1 = ego_progress(agent["progress"], mult_v1, ref["progress"] * ref["nc"] * ref["dac"], thr)
    pdms = _v1_pdms(agent, ep_v1, cfg)
    # v2: NC * DAC * DDC * TLC penalties, EP = raw / best penalized of the pair.
    mult_v2 = agent2["nc"] * agent2["dac"] * agent2["ddc"] * agent2["tlc"]
    ref_v2 = float(ref2["progress"] * ref2["nc"] * ref2["dac"] * ref2["ddc"] * ref2["tlc"])
    ep = ego_progress_v2(agent2["progress"], mult_v2, ref_v2, thr)

    v2 = {"nc": agent2["nc"].copy(), "dac": agent2["dac"].copy(), "ddc": agent2["ddc"].copy(), "tlc": agent2["tlc"].copy(),
          "ep": ep, "ttc": agent2["ttc"].copy(), "lk": agent2["lk"].copy(), "hc": agent2["hc"].copy()}
    if use_human:
        # NAVSIM scores the human alone: its EP is against itself, always 1 under the v2 formula
        # (so EP is never filtered), and it has no history (HC = 1).
        h = {key: float(v[1]) for key, v in m2.items()}
        h["ep"] = 1.0
        h["hc"] = 1.0
        for key in v2:
            if h[key] == 0.0:
                v2[key] = np.ones_like(v2[key])
    mult = np.stack([v2["nc"], v2["dac"], v2["ddc"], v2["tlc"]])
    weighted = np.stack([v2["ep"], v2["ttc"], v2["lk"], v2["hc"], agent2["ec"]])
    epdms = weighted_score(mult, weighted, cfg.v2_weights)
    return PDMResult(
        no_at_fault_collisions=v2["nc"],
        drivable_area_compliance=v2["dac"],
        driving_direction_compliance=v2["ddc"],
        traffic_light_compliance=v2["tlc"],
        ego_progress=v2["ep"],
        time_to_collision_within_bound=v2["ttc"],
        lane_keeping=v2["lk"],
        history_comfort=v2["hc"],
        extended_comfort=agent2["ec"],
        v1_no_at_fault_collisions=agent["nc"],
        v1_drivable_area_compliance=agent["dac"],
        ego_progress_v1=ep_v1,
        time_to_collision_within_bound_v1=agent["ttc_v1"],
        comfort=agent["comfort"],
        pdms=pdms,
        epdms=epdms,
        raw_progress=agent["progress"],
        reference_progress=ref_v2,
        human_filtered=use_human,
        states=agent_states,
        reference_states=ref_states[0],
    )


# ----------------------------------------------------------------------------------------------
# Dataset aggregation.
# ----------------------------------------------------------------------------------------------


def _finite_array(values: ArrayLike, func: str, name: str) -> np.ndarray:
    """``values`` as float64, or a ValueError naming the argument when they are not numbers or
    not finite."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{func}: {name} must be numbers: {exc}") from None
    bad = ~np.isfinite(arr.reshape(-1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{func}: {name} must be finite; value {i} (flat index) is {float(arr.reshape(-1)[i])}")
    return arr


def _unit_scores(values: ArrayLike, func: str, name: str) -> np.ndarray:
    """Flat float64 scores, each finite and in [0, 1], or a ValueError naming the argument and
    the first bad index."""
    try:
        s = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{func}: {name} must be numbers: {exc}") from None
    bad = ~(np.isfinite(s) & (s >= 0.0) & (s <= 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{func}: {name}[{i}] is {float(s[i])}; scores must be finite and in [0, 1] ({int(bad.sum())} such value(s))")
    return s


def _points(values: ArrayLike, count: int, func: str, name: str) -> np.ndarray:
    """(count, 2) finite points, or a ValueError naming the argument."""
    arr = _finite_array(values, func, name)
    if arr.size != 2 * count:
        raise ValueError(f"{func}: {name} must have shape ({count}, 2), got {arr.shape}")
    return arr.reshape(count, 2)


def aggregate_v1(scores: ArrayLike) -> float:
    """Dataset PDMS: the mean of per-scene scores (S,).

    Raises:
        ValueError: no scores, or a score that is not finite or outside [0, 1] (named by index).
    """
    s = _unit_scores(scores, "aggregate_v1", "scores")
    if s.size == 0:
        raise ValueError("aggregate_v1: no scores")
    return float(s.mean())


def aggregate_v2(
    first_stage_scores: ArrayLike,
    first_stage_endpoints: ArrayLike | None = None,
    second_stage: Sequence[tuple[ArrayLike, ArrayLike]] | None = None,
    kernel_variance: float = 0.1,
) -> float:
    """Dataset EPDMS with NAVSIM v2's two-stage (pseudo closed-loop) aggregation.

    Args:
        first_stage_scores: (M,) scores of the original (first-stage) scenes, in [0, 1].
        first_stage_endpoints: (M, 2) world x, y where each first-stage agent plan ends [m].
        second_stage: For each first-stage scene, (scores (n_i,) in [0, 1], start points
            (n_i, 2)) of its second-stage (synthetic, 4 s later) scenes; ``None`` or all-empty
            means none.
        kernel_variance: sigma^2 of the weight kernel exp(-d^2 / (2 sigma^2)) [m^2]; finite, > 0.

    Returns:
        With second-stage scenes: mean over first-stage scenes of (first-stage score +
        kernel-weighted mean of its second-stage scores) / 2, the second-stage weights of a scene
        normalized to sum to 1 (a scene without second-stage scenes counts its first-stage score
        for both halves). Without any: the plain mean of the first-stage scores.

    Raises:
        ValueError: naming the argument: no first-stage scores; a score not finite or outside
            [0, 1]; endpoints or start points not finite or of the wrong shape; a
            ``kernel_variance`` that is not a finite number > 0; second-stage groups that do not
            match the first-stage scenes; second-stage scenes without endpoints.
    """
    func = "aggregate_v2"
    first = _unit_scores(first_stage_scores, func, "first_stage_scores")
    if first.size == 0:
        raise ValueError("aggregate_v2: no first-stage scores")
    try:
        variance = float(kernel_variance)
    except (TypeError, ValueError):
        raise ValueError(f"aggregate_v2: kernel_variance must be a number [m^2], got {kernel_variance!r}") from None
    if not (np.isfinite(variance) and variance > 0.0):
        raise ValueError(f"aggregate_v2: kernel_variance must be finite and > 0 [m^2], got {variance}")
    ends = None if first_stage_endpoints is None else _points(first_stage_endpoints, first.size, func, "first_stage_endpoints")
    groups = []
    for i, group in enumerate(second_stage or ()):
        try:
            sc, starts = group
        except (TypeError, ValueError):
            raise ValueError(f"aggregate_v2: second_stage[{i}] must be a pair (scores, start points)") from None
        sc = _unit_scores(sc, func, f"second_stage[{i}] scores")
        groups.append((sc, _points(starts, sc.size, func, f"second_stage[{i}] start points")))
    if not groups or all(sc.size == 0 for sc, _ in groups):
        return float(first.mean())
    if len(groups) != first.size:
        raise ValueError(f"aggregate_v2: {len(groups)} second-stage groups for {first.size} first-stage scenes")
    if ends is None:
        raise ValueError("aggregate_v2: first_stage_endpoints are needed with second-stage scenes")
    total = 0.0
    for i, (sc, starts) in enumerate(groups):
        if sc.size == 0:
            total += first[i]
            continue
        d2 = ((starts - ends[i]) ** 2).sum(axis=1)
        w = np.exp(-d2 / (2.0 * variance))
        w = w / w.sum() if w.sum() > 0 else np.full(sc.size, 1.0 / sc.size)
        total += 0.5 * (first[i] + float((w * sc).sum()))
    return float(total / first.size)
