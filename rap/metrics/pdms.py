"""NAVSIM's PDM Score (PDMS, v1) and Extended PDM Score (EPDMS, v2), vectorized over proposals.

Entry points:

* :func:`score_scene` — executes K proposals (LQR tracker + kinematic bicycle, 4 s at 10 Hz) and
  scores the executed rollouts on one :class:`~rap.metrics.pdm_inputs.ScoringScene`; returns a
  :class:`PDMResult` of (K,) arrays for every sub-metric plus ``pdms`` and ``epdms``.
* :func:`score_scenes` — the same for many scenes at once (training-time scoring): one tracker
  pass, one reference-planner pass and one pass of the per-step metrics for all of them; each
  scene's result is bit-identical to :func:`score_scene` of that scene alone.
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
from rap.geometry import box_corners_2d
from rap.metrics.pdm_collisions import (
    CollisionConfig,
    Contacts,
    StackedObjects,
    ego_box,
    find_contacts,
    no_at_fault_collisions,
    time_to_collision,
)
from rap.metrics.pdm_inputs import ObjectTracks, ScoringScene
from rap.sim.bicycle import PACIFICA, StateIndex, VehicleParameters
from rap.sim.reference import Obstacles, ReferencePlannerConfig, idm_candidates_batch
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
    "score_scenes",
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


_V1_WEIGHTS = ("v1_progress_weight", "v1_ttc_weight", "v1_comfort_weight")
_V2_WEIGHTS = ("progress_weight", "ttc_weight", "lane_keeping_weight", "history_comfort_weight", "extended_comfort_weight")


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

    def __post_init__(self) -> None:
        """Rejects weights and thresholds that would make every score NaN or meaningless,
        naming the field: weights must be finite numbers >= 0, each score's weights (v2's without
        the extended-comfort weight, which drops out without a previous plan) not all 0;
        thresholds finite, horizons, limits and the area resolution > 0."""

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"PDMScorerConfig.{name} must be a number, got {value!r}")
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"PDMScorerConfig.{name} must be finite, got {value}")
            return value

        for names in (_V1_WEIGHTS, _V2_WEIGHTS):
            for name in names:
                if number(name) < 0:
                    raise ValueError(f"PDMScorerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not any(float(getattr(self, n)) > 0 for n in _V1_WEIGHTS):
            raise ValueError(f"PDMScorerConfig: the v1 weights ({', '.join(_V1_WEIGHTS)}) are all 0; PDMS would be 0 / 0")
        if not any(float(getattr(self, n)) > 0 for n in _V2_WEIGHTS[:-1]):
            raise ValueError(
                f"PDMScorerConfig: the v2 weights ({', '.join(_V2_WEIGHTS[:-1])}) are all 0; EPDMS would be 0 / 0 "
                "whenever extended comfort is not scored"
            )
        for name in ("driving_direction_horizon_s", "lane_keeping_deviation_limit", "lane_keeping_horizon_s", "area_resolution"):
            if not number(name) > 0:
                raise ValueError(f"PDMScorerConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("driving_direction_compliance_threshold", "driving_direction_violation_threshold", "progress_distance_threshold"):
            if number(name) < 0:
                raise ValueError(f"PDMScorerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.driving_direction_compliance_threshold > self.driving_direction_violation_threshold:
            raise ValueError(
                "PDMScorerConfig.driving_direction_compliance_threshold must not exceed driving_direction_violation_threshold, "
                f"got {self.driving_direction_compliance_threshold} > {self.driving_direction_violation_threshold}"
            )
        steps = self.ttc_v2_max_lookahead_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"PDMScorerConfig.ttc_v2_max_lookahead_steps must be an integer >= 0, got {steps!r}")

    @property
    def v1_weights(self) -> np.ndarray:
        """(3,) EP, TTC, C."""
        return np.array([float(getattr(self, n)) for n in _V1_WEIGHTS])

    @property
    def v2_weights(self) -> np.ndarray:
        """(5,) weights, rows :class:`WeightedMetricIndex`."""
        return np.array([float(getattr(self, n)) for n in _V2_WEIGHTS])


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
    if start.shape[0] and bool((start == start[0]).all()):  # proposals share the start
        uniq, inverse = start[:1], np.zeros(start.shape[0], dtype=np.intp)
    else:
        uniq, inverse = np.unique(start, axis=0, return_inverse=True)
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


@dataclasses.dataclass(frozen=True, eq=False)
class _AreaFeatures:
    """What executed rollouts (K rows) do on the map, objects aside: the ego boxes, their area
    flags, intersection / lane-keeping-zone membership and their progress."""

    corners: np.ndarray  # (K, T, 4, 2) ego box corners [m]
    centers: np.ndarray  # (K, T, 2) box centres [m]
    areas: np.ndarray  # (K, T, 3) bool, columns EgoAreaIndex
    center_in_inter: np.ndarray  # (K, T) bool
    rear_in_inter: np.ndarray  # (K, T) bool, rear axle in an intersection
    within: np.ndarray  # (K, T) bool, centre within the lane-keeping deviation limit
    progress: np.ndarray  # (K,) raw progress [m]

    def take(self, rows: np.ndarray) -> _AreaFeatures:
        return _AreaFeatures(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))

    @staticmethod
    def concatenate(parts: Sequence[_AreaFeatures]) -> _AreaFeatures:
        return _AreaFeatures(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(_AreaFeatures)))


def _area_features(prep: PreparedScene, states: np.ndarray, cfg: PDMScorerConfig, corners: np.ndarray | None = None, centers: np.ndarray | None = None) -> _AreaFeatures:
    """Map features of (K, T, 11) executed states (``corners`` / ``centers``: their ego boxes,
    when already computed)."""
    if corners is None or centers is None:
        corners, centers = ego_box(states, cfg.rollout.vehicle)
    k, t = states.shape[:2]
    rear = states[..., [StateIndex.X, StateIndex.Y]]
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
    return _AreaFeatures(
        corners=corners,
        centers=centers,
        areas=area_flags(corner_bits, center_bits, prep.lane_mask, prep.route_mask, prep.drivable_mask),
        center_in_inter=_any_bit(center_bits & prep.intersection_mask),
        rear_in_inter=_any_bit(bits[n_c + n_p :] & prep.intersection_mask).reshape(k, t),
        within=_any_bit(center_bits & prep.lane_keeping_mask),
        progress=raw_progress(prep.centerline, centers[:, 0], centers[:, -1], prep.centerline_grid),
    )


def _object_metrics(
    states: np.ndarray,
    feats: _AreaFeatures,
    objects: ObjectTracks | StackedObjects,
    cfg: PDMScorerConfig,
    v1_only: bool = False,
    contacts: Contacts | None = None,
    row_scene: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Contacts]:
    """NC, TTC v1 and TTC v2 (``None`` with ``v1_only``) of executed states against ``objects``
    (stacked objects of several scenes with ``row_scene``, see :func:`find_contacts`), and the
    box contacts they came from (found here unless given)."""
    vehicle, dt = cfg.rollout.vehicle, cfg.rollout.dt
    t = states.shape[1]
    if contacts is None:
        contacts = find_contacts(states, objects, t - 1, vehicle, cfg.collision, dt, row_scene=row_scene)
    nc, _ = no_at_fault_collisions(states, feats.areas, objects, vehicle, cfg.collision, contacts)
    if v1_only:
        ttc_v1, _ = time_to_collision(states, feats.areas, feats.rear_in_inter, objects, t - 1, vehicle, cfg.collision, dt, contacts)
        return nc, ttc_v1, None, contacts
    last_v2 = t - 1 - cfg.ttc_v2_max_lookahead_steps
    (ttc_v1, _), (ttc_v2, _) = time_to_collision(
        states, feats.areas, feats.rear_in_inter, objects, (t - 1, last_v2), vehicle, cfg.collision, dt, contacts
    )
    return nc, ttc_v1, ttc_v2, contacts


def _contacts_without(contacts: Contacts, keep: np.ndarray) -> Contacts:
    """The contacts with the objects ``keep`` (N,) selects, renumbered as in the kept subset
    (what :func:`find_contacts` finds against those objects alone: each pair is tested alone)."""
    new_index = np.cumsum(keep) - 1
    sel = [keep[n] for n in contacts.n]
    return Contacts(
        tuple(k[s] for k, s in zip(contacts.k, sel)),
        tuple(t[s] for t, s in zip(contacts.t, sel)),
        tuple(new_index[n[s]] for n, s in zip(contacts.n, sel)),
    )


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
    feats = _area_features(prep, s, cfg)
    nc, ttc_v1, ttc_v2, _ = _object_metrics(s, feats, scene.objects, cfg, v1_only)
    dac = drivable_area_compliance(feats.areas[..., EgoAreaIndex.NON_DRIVABLE_AREA])
    c_v1 = is_comfortable(s, dt, cfg.v1_comfort_filters, cfg.comfort_bounds, vehicle)
    ones = np.ones(k)
    if v1_only:
        return {
            "nc": nc, "dac": dac, "ddc": ones, "tlc": ones, "progress": feats.progress,
            "ttc": ones, "ttc_v1": ttc_v1, "lk": ones, "comfort": c_v1, "hc": ones, "ec": np.full(k, np.nan),
        }
    ddc = driving_direction_compliance(feats.centers, feats.areas[..., EgoAreaIndex.ONCOMING_TRAFFIC], feats.center_in_inter, dt, cfg)
    tlc = traffic_light_compliance(feats.corners, prep.red_lights)
    lk = lane_keeping(~feats.within, feats.center_in_inter, dt, cfg)
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
        "nc": nc, "dac": dac, "ddc": ddc, "tlc": tlc, "progress": feats.progress,
        "ttc": ttc_v2, "ttc_v1": ttc_v1, "lk": lk, "comfort": c_v1, "hc": hc, "ec": ec,
    }


def _v1_pdms(m: dict[str, np.ndarray], ep: np.ndarray, cfg: PDMScorerConfig) -> np.ndarray:
    return weighted_score(np.stack([m["nc"], m["dac"]]), np.stack([ep, m["ttc_v1"], m["comfort"]]), cfg.v1_weights)


def _select_reference(m: dict[str, np.ndarray], cfg: PDMScorerConfig) -> int:
    """PDM-Closed's choice among simulated candidates from their v1 metrics ``m`` against the
    constant-velocity forecast: best v1 PDMS, EP normalized among the candidates."""
    mult = m["nc"] * m["dac"]
    pen = m["progress"] * mult
    best = pen.max()
    ep = pen / best if best > cfg.progress_distance_threshold else np.where(mult == 0.0, 0.0, 1.0)
    return int(np.argmax(_v1_pdms(m, ep, cfg)))


def _overlapping_objects(scenes: Sequence[ScoringScene], vehicle: VehicleParameters) -> list[np.ndarray | None]:
    """Per scene, (N,) bool: the objects whose box overlaps the ego's at t = 0; ``None`` when
    none does (one shapely pass for all scenes)."""
    counts = np.array([len(sc.objects) for sc in scenes], dtype=np.int64)
    if not counts.sum():
        return [None] * len(scenes)
    corners, _ = ego_box(np.stack([sc.ego.state_array() for sc in scenes]), vehicle)
    ego_polygons = shapely.polygons(corners)  # (S,)
    have = [sc.objects for sc in scenes if len(sc.objects)]
    boxes = shapely.polygons(np.concatenate([
        box_corners_2d(o.x[:, 0], o.y[:, 0], o.heading[:, 0], o.length, o.width) for o in have
    ]))  # (N,) boxes at t = 0  # fmt: skip
    now = np.concatenate([o.valid[:, 0] for o in have])
    overlap = now & shapely.intersects(boxes, ego_polygons[np.repeat(np.arange(len(scenes)), counts)])
    out: list[np.ndarray | None] = []
    for part in np.split(overlap, np.cumsum(counts)[:-1]):
        out.append(part if part.any() else None)
    return out


def objects_clear_of_ego(scene: ScoringScene, vehicle=None) -> ScoringScene:
    """The scene without the objects whose box overlaps the ego's at t = 0 (NAVSIM v2's log
    replay drops such tracks before scoring; v1 keeps them). Returns ``scene`` itself when no
    object overlaps.

    Args:
        scene: The scoring scene.
        vehicle: Ego vehicle parameters (default :data:`rap.sim.bicycle.PACIFICA`).
    """
    overlap = _overlapping_objects([scene], PACIFICA if vehicle is None else vehicle)[0]
    if overlap is None:
        return scene
    objects = scene.objects
    keep = ~overlap
    per_step = {name: getattr(objects, name)[keep] for name in ("x", "y", "heading", "vx", "vy", "valid")}
    kept = dataclasses.replace(objects, ids=objects.ids[keep], kinds=objects.kinds[keep], length=objects.length[keep], width=objects.width[keep], **per_step)
    return dataclasses.replace(scene, objects=kept)


def _proposal_array(proposals: ArrayLike, sampling: TrajectorySampling, what: str) -> np.ndarray:
    """(K, T, 3) float64 proposals, or a ValueError starting with ``what``."""
    p = np.asarray(proposals, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[2] != 3 or p.shape[1] != sampling.num_poses:
        raise ValueError(f"{what} must be (K, {sampling.num_poses}, 3), got {p.shape}")
    if p.shape[0] == 0 or not np.all(np.isfinite(p)):
        raise ValueError(f"{what} must be non-empty and finite")
    return p


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
    p = _proposal_array(proposals, sampling, "score_scene: proposals")
    _check_steps(scene, cfg, "score_states")
    return _score_batch([scene], [p], sampling, cfg, [prepared])[0]


def _check_steps(scene: ScoringScene, cfg: PDMScorerConfig, what: str) -> None:
    """ValueError when the scene's objects cover fewer steps than the rollout."""
    t = cfg.rollout.num_steps
    if t > scene.objects.num_steps:
        raise ValueError(f"{what}: {t} steps but the scene's objects cover {scene.objects.num_steps}")


def score_scenes(
    scenes: Sequence[ScoringScene],
    proposals: Sequence[ArrayLike],
    sampling: TrajectorySampling = NAVSIM_SAMPLING,
    config: PDMScorerConfig | None = None,
    prepared: Sequence[PreparedScene | None] | None = None,
) -> list[PDMResult]:
    """:func:`score_scene` for many scenes at once (training-time scoring): the plans of a batch
    of scenes are tracked in one LQR pass, their reference candidates planned in one IDM pass,
    and comfort, the per-step metrics, box contacts, NC and TTC computed in one pass over all of
    them; only area membership and progress (each scene's own polygons and route) run scene by
    scene. Each result equals ``score_scene`` of its scene alone, array for array and bit for bit.
    About 2-2.5x faster per scene than a loop over ``score_scene`` at K = 64 (``rap bench-score
    --scenes N``; see docs/benchmarks.md).

    Args:
        scenes: S scoring scenes.
        proposals: S arrays (K_s, T, 3) of proposals (K may differ per scene), as
            :func:`score_scene` takes them.
        sampling: Proposal sampling, shared by all scenes.
        config: Scorer constants; ``None`` means ``PDMScorerConfig()``.
        prepared: ``None``, or S entries ``prepare_scene(scene, config)`` (or ``None`` to prepare
            that scene here).

    Returns:
        S :class:`PDMResult`, in the order of ``scenes``.

    Raises:
        ValueError: ``proposals`` / ``prepared`` do not have one entry per scene, a scene's
            proposals are malformed, or its objects cover fewer steps than the rollout (named by
            index).
    """
    cfg = config if config is not None else PDMScorerConfig()
    scenes = list(scenes)
    if isinstance(proposals, np.ndarray) and proposals.ndim == 4:
        proposals = list(proposals)
    proposals = list(proposals)
    if len(proposals) != len(scenes):
        raise ValueError(f"score_scenes: {len(proposals)} proposal arrays for {len(scenes)} scenes")
    preps = [None] * len(scenes) if prepared is None else list(prepared)
    if len(preps) != len(scenes):
        raise ValueError(f"score_scenes: {len(preps)} prepared scenes for {len(scenes)} scenes")
    for i, scene in enumerate(scenes):
        if not isinstance(scene, ScoringScene):
            raise ValueError(f"score_scenes: scenes[{i}] must be a ScoringScene, got {type(scene).__name__}")
    arrays = [_proposal_array(p, sampling, f"score_scenes: proposals[{i}]") for i, p in enumerate(proposals)]
    for i, scene in enumerate(scenes):
        _check_steps(scene, cfg, f"score_scenes: scenes[{i}]")
    # Batches of about _BATCH_ROWS proposals (a scene's result does not depend on its batch).
    results: list[PDMResult] = []
    start = 0
    while start < len(scenes):
        stop, rows = start, 0
        while stop < len(scenes) and (stop == start or rows + arrays[stop].shape[0] <= _BATCH_ROWS):
            rows += arrays[stop].shape[0]
            stop += 1
        results.extend(_score_batch(scenes[start:stop], arrays[start:stop], sampling, cfg, preps[start:stop]))
        start = stop
    return results


_BATCH_ROWS = 1024
"""Proposals per internal :func:`_score_batch` pass of :func:`score_scenes`: large enough to share
the per-pass work among many scenes, small enough to keep the pass's arrays in cache-friendly sizes."""


def _interpolate_groups(groups: Sequence[tuple[np.ndarray, TrajectorySampling, np.ndarray]], rollout: RolloutConfig) -> list[np.ndarray]:
    """World reference poses at the rollout step for each (plans (K, T, 3), sampling, initial
    state (11,)) group, one :func:`interpolate_poses` call per distinct sampling."""
    buckets: dict[tuple, list[int]] = {}
    for g, (_, smp, _) in enumerate(groups):
        buckets.setdefault((smp.num_poses, float(smp.interval_s)), []).append(g)
    out: list = [None] * len(groups)
    xyh = [StateIndex.X, StateIndex.Y, StateIndex.HEADING]
    for members in buckets.values():
        plans = np.concatenate([groups[g][0] for g in members])
        origins = np.concatenate([np.broadcast_to(groups[g][2][xyh], (groups[g][0].shape[0], 3)) for g in members])
        refs = interpolate_poses(plans, groups[members[0]][1], origins, rollout.num_steps, rollout.dt)
        for g, part in zip(members, np.split(refs, np.cumsum([groups[g][0].shape[0] for g in members])[:-1])):
            out[g] = part
    return out


@dataclasses.dataclass(eq=False)
class _Job:
    """One scene of a :func:`_score_batch` call and where its rows are."""

    scene: ScoringScene
    prep: PreparedScene
    proposals: np.ndarray
    ego: np.ndarray
    cands: np.ndarray | None = None  # (P, N, 3) reference plans, ego frame
    cand_sampling: TrajectorySampling | None = None
    forecast: ObjectTracks | None = None  # objects to select among the candidates with
    use_human: bool = False
    offset: int = 5  # steps between the previous plan and now
    states: np.ndarray | None = None  # (P + h + p + K, T, 11) this scene's executed rows
    previous: np.ndarray | None = None  # (T, 11) executed previous plan
    scored: np.ndarray | None = None  # rows of ``states`` that are scored (all but the previous plan)
    feats: _AreaFeatures | None = None  # of the scored rows
    best: int = 0  # chosen candidate
    final: np.ndarray | None = None  # rows of ``scored``: reference, human, proposals


def _score_batch(
    scenes: Sequence[ScoringScene],
    proposals: Sequence[np.ndarray],
    sampling: TrajectorySampling,
    cfg: PDMScorerConfig,
    prepared: Sequence[PreparedScene | None],
) -> list[PDMResult]:
    """:func:`score_scenes` on checked inputs. Every array operation below either works row by
    row (the same arithmetic for a row whatever else is in the batch) or runs per scene; the
    matrix products (tracker fits, comfort filters) are grouped per scene exactly as scoring
    one scene groups them, so that each scene's result is bit-identical to scoring it alone."""
    rollout = cfg.rollout
    dt, vehicle = rollout.dt, rollout.vehicle
    jobs = [
        _Job(scene=s, prep=p if p is not None else prepare_scene(s, cfg), proposals=props, ego=s.ego.state_array())
        for s, props, p in zip(scenes, proposals, prepared)
    ]

    # Reference candidates: the scene's own reference, or one IDM pass over all other scenes.
    planned = []
    for job in jobs:
        if job.scene.reference_poses is not None:
            poses = job.scene.reference_poses
            job.cands, job.cand_sampling = poses[None], TrajectorySampling(poses.shape[0], rollout.dt)
        else:
            job.forecast = job.scene.objects.constant_velocity_forecast(job.scene.objects.num_steps, rollout.dt)
            planned.append(job)
    if planned:
        obstacles = [
            Obstacles(f.x, f.y, f.heading, f.vx, f.vy, f.length, f.width, f.valid, j.prep.red_lights[0] if j.prep.red_lights else ())
            for j, f in ((j, j.forecast) for j in planned)
        ]
        cands = idm_candidates_batch(
            [j.ego for j in planned], [j.scene.centerline for j in planned], obstacles, [j.scene.speed_limit for j in planned], vehicle, cfg.reference
        )
        for job, c in zip(planned, cands):
            job.cands, job.cand_sampling = c, TrajectorySampling(c.shape[1], cfg.reference.dt)

    # One rollout for everything: per scene its reference candidates, human plan, previous plan
    # and proposals, all scenes in one tracker pass (matrix products grouped per scene).
    groups, rows = [], []
    for job in jobs:
        scene = job.scene
        mine = [(job.cands, job.cand_sampling, job.ego)]
        job.use_human = cfg.human_penalty_filter and scene.human_trajectory is not None
        if job.use_human:
            mine.append((scene.human_trajectory[None], scene.human_sampling, job.ego))
        if scene.previous_plan is not None:
            pp = scene.previous_plan
            mine.append((pp.poses[None], pp.sampling, pp.ego.state_array()))
            job.offset = int(round(pp.time_offset_s / rollout.dt))
        mine.append((job.proposals, sampling, job.ego))
        groups.extend(mine)
        rows.append(sum(g[0].shape[0] for g in mine))
    refs = _interpolate_groups(groups, rollout)
    inits = [np.broadcast_to(init, (plans.shape[0], init.shape[0])) for plans, _, init in groups]
    all_states = track(np.concatenate(refs), np.concatenate(inits), rollout, groups=rows)
    all_corners, all_centers = ego_box(all_states, vehicle)
    start = 0
    for job, count in zip(jobs, rows):
        job.states = all_states[start : start + count]
        n_cand, n_human = job.cands.shape[0], int(job.use_human)
        scored = np.arange(count)
        if job.scene.previous_plan is not None:
            job.previous = job.states[n_cand + n_human]
            scored = np.delete(scored, n_cand + n_human)
        job.scored = scored
        # Map features of every scored row (candidates, human, proposals) in one pass.
        rows_s = start + scored
        job.feats = _area_features(job.prep, job.states[scored], cfg, all_corners[rows_s], all_centers[rows_s])
        start += count

    # PDM-Closed's choice among the simulated candidates (v1 metrics against the forecast).
    if planned:
        counts = [j.cands.shape[0] for j in planned]
        states_c = np.concatenate([j.states[:c] for j, c in zip(planned, counts)])
        feats_c = _AreaFeatures.concatenate([j.feats.take(np.arange(c)) for j, c in zip(planned, counts)])
        comfort = is_comfortable(states_c, dt, cfg.v1_comfort_filters, cfg.comfort_bounds, vehicle)
        row_scene = np.repeat(np.arange(len(planned)), counts)
        nc, ttc_v1, _, _ = _object_metrics(states_c, feats_c, StackedObjects.stack([j.forecast for j in planned]), cfg, True, row_scene=row_scene)
        dac_c = drivable_area_compliance(feats_c.areas[..., EgoAreaIndex.NON_DRIVABLE_AREA])
        for job, lo, hi in zip(planned, np.cumsum([0] + counts[:-1]), np.cumsum(counts)):
            m = {"nc": nc[lo:hi], "dac": dac_c[lo:hi], "progress": feats_c.progress[lo:hi], "ttc_v1": ttc_v1[lo:hi], "comfort": comfort[lo:hi]}
            job.best = _select_reference(m, cfg)

    # The scored rows: [reference, human, proposals] per scene; their per-row metrics in one pass.
    fin_states, fin_feats, fin_counts = [], [], []
    for job in jobs:
        n_cand = job.cands.shape[0]
        job.final = np.concatenate([[job.best], np.arange(n_cand, job.scored.size)])
        fin_states.append(job.states[job.scored[job.final]])
        fin_feats.append(job.feats.take(job.final))
        fin_counts.append(job.final.size)
    states_all = np.concatenate(fin_states)
    feats_all = _AreaFeatures.concatenate(fin_feats)
    bounds = np.cumsum([0] + fin_counts)
    dac = drivable_area_compliance(feats_all.areas[..., EgoAreaIndex.NON_DRIVABLE_AREA])
    ddc = driving_direction_compliance(feats_all.centers, feats_all.areas[..., EgoAreaIndex.ONCOMING_TRAFFIC], feats_all.center_in_inter, dt, cfg)
    lk = lane_keeping(~feats_all.within, feats_all.center_in_inter, dt, cfg)
    c_v1 = is_comfortable(states_all, dt, cfg.v1_comfort_filters, cfg.comfort_bounds, vehicle)
    hc = np.ones(states_all.shape[0])
    histories = [j.scene.history_state_array() for j in jobs]
    by_length: dict[int, list[int]] = {}
    for i, h in enumerate(histories):
        if h is not None and len(h):
            by_length.setdefault(len(h), []).append(i)
    for members in by_length.values():
        padded = np.concatenate([
            np.concatenate([np.broadcast_to(histories[i], (fin_counts[i],) + histories[i].shape), fin_states[i]], axis=1) for i in members
        ])  # fmt: skip
        hist_hc = is_comfortable(padded, dt, cfg.v2_comfort_filters, cfg.comfort_bounds, vehicle)
        for i, part in zip(members, np.split(hist_hc, np.cumsum([fin_counts[i] for i in members])[:-1])):
            hc[bounds[i] : bounds[i + 1]] = part
    ec = np.full(states_all.shape[0], np.nan)
    by_offset: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        if job.previous is not None:
            by_offset.setdefault(job.offset, []).append(i)
    for off, members in by_offset.items():
        cur = np.concatenate([fin_states[i] for i in members])
        prev = np.stack([jobs[i].previous for i in members])
        part_ec = extended_comfort(cur, prev, off, dt, cfg.extended_comfort_bounds, groups=[fin_counts[i] for i in members])
        for i, part in zip(members, np.split(part_ec, np.cumsum([fin_counts[i] for i in members])[:-1])):
            ec[bounds[i] : bounds[i + 1]] = part

    # Box contacts, NC and TTC of all scenes' scored rows against their own scene's objects.
    stacked = StackedObjects.stack([j.scene.objects for j in jobs])
    nc, ttc_v1, ttc_v2, contacts = _object_metrics(states_all, feats_all, stacked, cfg, row_scene=np.repeat(np.arange(len(jobs)), fin_counts))
    overlaps = _overlapping_objects(scenes, vehicle)
    results = []
    for i, job in enumerate(jobs):
        lo, hi = bounds[i], bounds[i + 1]
        feats = fin_feats[i]
        shared = {
            "dac": dac[lo:hi], "ddc": ddc[lo:hi], "tlc": traffic_light_compliance(feats.corners, job.prep.red_lights),
            "progress": feats.progress, "lk": lk[lo:hi], "comfort": c_v1[lo:hi], "hc": hc[lo:hi], "ec": ec[lo:hi],
        }
        m = dict(shared, nc=nc[lo:hi], ttc=ttc_v2[lo:hi], ttc_v1=ttc_v1[lo:hi])
        # v2 replays the log without the tracks that overlap the ego at t = 0 (v1 keeps them).
        if overlaps[i] is None:
            m2 = m
        else:
            clear = objects_clear_of_ego(job.scene, vehicle).objects
            mine = _scene_contacts(contacts, lo, hi, int(stacked.starts[i]))
            nc2, ttc_v1_2, ttc_v2_2, _ = _object_metrics(fin_states[i], feats, clear, cfg, contacts=_contacts_without(mine, ~overlaps[i]))
            m2 = dict(shared, nc=nc2, ttc=ttc_v2_2, ttc_v1=ttc_v1_2)
        results.append(_scene_result(job, m, m2, cfg))
    return results


def _scene_contacts(contacts: Contacts, lo: int, hi: int, first_object: int) -> Contacts:
    """The contacts of rows ``lo .. hi - 1`` in stacked numbering, renumbered from 0 (rows and
    objects of that scene)."""
    sel = [(k >= lo) & (k < hi) for k in contacts.k]
    return Contacts(
        tuple(k[s] - lo for k, s in zip(contacts.k, sel)),
        tuple(t[s] for t, s in zip(contacts.t, sel)),
        tuple(n[s] - first_object for n, s in zip(contacts.n, sel)),
    )


def _scene_result(job: _Job, m: dict[str, np.ndarray], m2: dict[str, np.ndarray], cfg: PDMScorerConfig) -> PDMResult:
    """One scene's :class:`PDMResult` from the metrics of its rows [reference, human?,
    proposals] (``m``: against all objects, v1; ``m2``: without those overlapping the ego, v2)."""
    use_human = job.use_human
    n_pre = 1 + int(use_human)
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
    agent_states = job.states[job.states.shape[0] - job.proposals.shape[0] :]  # the last rows
    return PDMResult(
        no_at_fault_collisions=v2["nc"],
        drivable_area_compliance=v2["dac"],
        driving_direction_compliance=v2["ddc"],
        traffic_light_compliance=v2["tlc"],
        ego_progress=v2["ep"],
        time_to_collision_within_bound=v2["ttc"],
        lane_keeping=v2["lk"],
        history_comfort=v2["hc"],
        extended_comfort=agent2["ec"].copy(),
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
        reference_states=job.states[job.best],
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
