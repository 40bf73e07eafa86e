"""Throughput measurements behind ``rap bench-score`` and ``rap bench-render`` (the scripts in
``benchmarks/`` call these and compare against baselines).

Scoring: a synthetic but realistic NAVSIM-style scene.

The scene (:func:`synthetic_scoring_scene`) is a divided road that runs straight and then bends
(3 lanes with the ego's direction of travel, 2 against), split into 30 m lane segments and
roadblocks, with an intersection (lane connectors) ahead, ~20 agents driving their lanes, a few
pedestrians on the kerb and a parked car and traffic cone. Proposals
(:func:`synthetic_proposals`) are the NAVSIM 8 x 0.5 s plans around lane following with random
speeds, lateral offsets and wiggles, so every metric is exercised.

:func:`bench_score` (what ``rap bench-score`` calls) prepares and scores K proposals per call on N
such scenes (different seeds) and reports proposals and scenes per second; with N > 1 it scores
them as training does, all N in one :func:`~rap.metrics.pdms.score_scenes` call.

Rendering: :func:`bench_render` (what ``rap bench-render`` calls) renders a scene's rig step after
step and reports views per second.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Sequence

import numpy as np
import shapely

from rap.metrics.pdm_inputs import EgoState, ObjectKind, ObjectTracks, PreviousPlan, ScoringScene
from rap.metrics.pdms import PDMScorerConfig, prepare_scene, score_scene, score_scenes
from rap.render.scene_raster import SceneRasterizer
from rap.render.session import open_renderer
from rap.scene import Scene
from rap.trajectory import NAVSIM_SAMPLING
from rasterizer.camera import Rig
from rasterizer.context import context_info

__all__ = ["RoadGeometry", "synthetic_scoring_scene", "synthetic_proposals", "bench_score", "bench_render"]

LANE_WIDTH = 3.5  # [m]
FORWARD_LANES = (0.0, LANE_WIDTH, 2 * LANE_WIDTH)  # lateral offsets of lanes in the ego's direction [m]
BACKWARD_LANES = (-LANE_WIDTH, -2 * LANE_WIDTH)  # lanes against it [m]
EGO_LANE = LANE_WIDTH  # the middle forward lane


class RoadGeometry:
    """Reference line of the synthetic road: straight until ``bend_start`` then a constant
    curvature; sampled every 0.5 m over ``s`` in [s_min, s_max]."""

    def __init__(self, curvature: float = 1.0 / 80.0, bend_start: float = 40.0, s_min: float = -60.0, s_max: float = 200.0):
        self.s = np.arange(s_min, s_max + 0.25, 0.5)
        theta = curvature * np.clip(self.s - bend_start, 0.0, None)
        ds = np.diff(self.s, prepend=self.s[0])
        mid = np.concatenate([[theta[0]], 0.5 * (theta[1:] + theta[:-1])])
        x = np.cumsum(np.cos(mid) * ds)
        y = np.cumsum(np.sin(mid) * ds)
        i0 = int(np.argmin(np.abs(self.s)))
        self.xy = np.stack([x - x[i0], y - y[i0]], axis=-1)
        self.theta = theta
        self.normal = np.stack([-np.sin(theta), np.cos(theta)], axis=-1)

    def point(self, s: np.ndarray, d: np.ndarray | float) -> np.ndarray:
        """(..., 2) world points at arc length s and lateral offset d (left positive) [m]."""
        s = np.asarray(s, dtype=np.float64)
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        th = np.interp(s, self.s, self.theta)
        return np.stack([x - np.sin(th) * d, y + np.cos(th) * d], axis=-1)

    def heading(self, s: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(s, dtype=np.float64), self.s, self.theta)

    def strip(self, s0: float, s1: float, d_lo: float, d_hi: float) -> shapely.Polygon:
        """Polygon between offsets d_lo and d_hi over [s0, s1]."""
        ss = np.append(np.arange(s0, s1, 2.0), s1)
        right = self.point(ss, d_lo)
        left = self.point(ss, d_hi)
        return shapely.Polygon(np.concatenate([right, left[::-1]]))


def synthetic_scoring_scene(
    rng: np.random.Generator,
    num_agents: int = 20,
    num_steps: int = 41,
    red_light: bool = False,
    ego_speed: float = 10.0,
) -> ScoringScene:
    """A NAVSIM-like scoring scene on :class:`RoadGeometry` (see the module docstring).

    Args:
        rng: Randomness (agent placement and speeds).
        num_agents: Vehicles driving their lanes (plus 3 pedestrians, a parked car and a cone).
        num_steps: Object steps at 0.1 s (41 for EPDMS, 51 for PDMS v1 parity).
        red_light: Red light on the ego's lane connector through the intersection.
        ego_speed: [m/s].
    """
    road = RoadGeometry()
    seg = 30.0
    inter_lo, inter_hi = 90.0, 110.0
    lane_polys: dict[int, shapely.Polygon] = {}
    route: set[int] = set()
    drivable: list[shapely.Polygon] = []
    lane_id = 0
    d_lo = min(BACKWARD_LANES) - LANE_WIDTH / 2
    d_hi = max(FORWARD_LANES) + LANE_WIDTH / 2
    starts = np.arange(-60.0, 200.0, seg)
    ego_connector = -1
    for s0 in starts:
        s1 = min(s0 + seg, 200.0)
        pieces = [(s0, s1)]
        if s0 < inter_hi and s1 > inter_lo:
            pieces = [(a, b) for a, b in ((s0, inter_lo), (inter_hi, s1)) if b > a]
        for a, b in pieces:
            drivable.append(road.strip(a, b, d_lo, d_hi))
            for d in FORWARD_LANES + BACKWARD_LANES:
                lane_polys[lane_id] = road.strip(a, b, d - LANE_WIDTH / 2, d + LANE_WIDTH / 2)
                if d == EGO_LANE:
                    route.add(lane_id)
                lane_id += 1
    # Intersection: one polygon, lane connectors straight through it.
    intersection = road.strip(inter_lo, inter_hi, d_lo - 6.0, d_hi + 6.0)
    drivable.append(intersection)
    for d in FORWARD_LANES + BACKWARD_LANES:
        lane_polys[lane_id] = road.strip(inter_lo, inter_hi, d - LANE_WIDTH / 2, d + LANE_WIDTH / 2)
        if d == EGO_LANE:
            route.add(lane_id)
            ego_connector = lane_id
        lane_id += 1

    t = np.arange(num_steps) * 0.1
    lanes = FORWARD_LANES + BACKWARD_LANES
    xs, ys, hs, vxs, vys, lens, wids, kinds = [], [], [], [], [], [], [], []

    def add_track(s_t: np.ndarray, d: float, backward: bool, length: float, width: float, kind: ObjectKind) -> None:
        xy = road.point(s_t, d)
        h = road.heading(s_t) + (np.pi if backward else 0.0)
        vel = np.gradient(xy, 0.1, axis=0) if len(s_t) > 1 else np.zeros((len(s_t), 2))
        xs.append(xy[:, 0])
        ys.append(xy[:, 1])
        hs.append(np.arctan2(np.sin(h), np.cos(h)))
        vxs.append(vel[:, 0])
        vys.append(vel[:, 1])
        lens.append(length)
        wids.append(width)
        kinds.append(kind)

    for _ in range(num_agents):
        d = float(rng.choice(lanes))
        backward = d < 0
        speed = float(rng.uniform(4.0, 13.0))
        s_start = float(rng.uniform(-40.0, 150.0))
        if d == EGO_LANE and -12.0 < s_start < 12.0:
            s_start += 25.0
        s_t = s_start + (-speed if backward else speed) * t
        add_track(s_t, d, backward, float(rng.uniform(4.2, 5.2)), float(rng.uniform(1.8, 2.1)), ObjectKind.VEHICLE)
    for i in range(3):
        s_p = float(rng.uniform(10.0, 80.0)) + 0.14 * t * (1 if i % 2 else -1)
        add_track(s_p, d_hi + 1.5, False, 0.6, 0.6, ObjectKind.PEDESTRIAN)
    add_track(np.full(num_steps, 32.0), FORWARD_LANES[-1], False, 4.6, 1.9, ObjectKind.VEHICLE)  # parked car
    add_track(np.full(num_steps, 22.0), d_hi - 0.4, False, 0.5, 0.5, ObjectKind.STATIC_OBJECT)  # cone
    objects = ObjectTracks(
        ids=np.arange(len(kinds)),
        kinds=np.array(kinds),
        x=np.stack(xs),
        y=np.stack(ys),
        heading=np.stack(hs),
        vx=np.stack(vxs),
        vy=np.stack(vys),
        length=np.array(lens),
        width=np.array(wids),
        valid=np.ones((len(kinds), num_steps), dtype=bool),
    )
    ego_xy = road.point(0.0, EGO_LANE)
    ego = EgoState(x=ego_xy[0], y=ego_xy[1], heading=float(road.heading(0.0)), vx=ego_speed)
    s_line = np.arange(-20.0, 199.0, 1.0)
    line_xy = road.point(s_line, EGO_LANE)
    centerline = np.concatenate([line_xy, road.heading(s_line)[:, None]], axis=1)
    red = tuple(frozenset({ego_connector}) if red_light else frozenset() for _ in range(num_steps))
    history = tuple(
        EgoState(x=p[0], y=p[1], heading=float(road.heading(s)), vx=ego_speed)
        for s, p in ((s, road.point(s, EGO_LANE)) for s in ego_speed * 0.1 * np.arange(-15, 0))
    )
    human = _lane_plan(road, ego, 0.0, ego_speed, 0.0)
    prev_s = -0.5 * ego_speed
    prev_xy = road.point(prev_s, EGO_LANE)
    prev_ego = EgoState(x=prev_xy[0], y=prev_xy[1], heading=float(road.heading(prev_s)), vx=ego_speed)
    previous = PreviousPlan(ego=prev_ego, poses=_lane_plan(road, prev_ego, prev_s, ego_speed, 0.0))
    return ScoringScene(
        ego=ego,
        objects=objects,
        drivable_area=drivable,
        lane_polygons=lane_polys,
        intersections=intersection,
        route_lane_ids=frozenset(route),
        centerline=centerline,
        red_light_lane_ids=red,
        ego_history=history,
        human_trajectory=human,
        previous_plan=previous,
        speed_limit=13.9,
    )


def _lane_plan(road: RoadGeometry, ego: EgoState, s0: float, speed: float, accel: float, d_end: float = 0.0, wiggle: float = 0.0) -> np.ndarray:
    """(8, 3) ego-frame NAVSIM plan along the ego lane from arc length s0."""
    times = NAVSIM_SAMPLING.times_s
    fine = np.linspace(0.0, times[-1], 81)
    s = s0 + np.maximum(speed * fine + 0.5 * accel * fine**2, 0.0)
    if accel < 0:
        s = np.maximum.accumulate(s)
    u = fine / times[-1]
    d = EGO_LANE + d_end * (3 * u**2 - 2 * u**3) + wiggle * np.sin(2 * np.pi * 1.0 * fine)
    xy = road.point(s, d)
    dxy = np.gradient(xy, axis=0)
    moving = np.linalg.norm(dxy, axis=1) > 1e-6
    h = np.where(moving, np.arctan2(dxy[:, 1], dxy[:, 0]), road.heading(s))
    pick = np.searchsorted(fine, times - 1e-9)
    xy, h = xy[pick], h[pick]
    c, sn = np.cos(ego.heading), np.sin(ego.heading)
    dx, dy = xy[:, 0] - ego.x, xy[:, 1] - ego.y
    rel_h = np.arctan2(np.sin(h - ego.heading), np.cos(h - ego.heading))
    return np.stack([c * dx + sn * dy, -sn * dx + c * dy, rel_h], axis=-1)


def synthetic_proposals(scene: ScoringScene, rng: np.random.Generator, num_proposals: int) -> np.ndarray:
    """(K, 8, 3) NAVSIM-sampled plans around lane following on the synthetic road: speeds 0-16 m/s,
    accelerations +-3 m/s^2, lane changes up to +-5 m, some with a lateral wiggle (uncomfortable)."""
    road = RoadGeometry()
    out = np.empty((num_proposals, NAVSIM_SAMPLING.num_poses, 3))
    for i in range(num_proposals):
        speed = float(rng.uniform(0.0, 16.0))
        accel = float(rng.uniform(-3.0, 3.0))
        d_end = float(rng.choice([0.0, 0.0, rng.uniform(-5.0, 5.0)]))
        wiggle = float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.2, 1.0)]))
        out[i] = _lane_plan(road, scene.ego, 0.0, speed, accel, d_end, wiggle)
    return out


def bench_score(
    num_proposals: int = 1000, num_agents: int = 20, repeats: int = 3, seed: int = 0, num_scenes: int = 1, batched: bool | None = None
) -> dict:
    """Scores ``num_proposals`` proposals on each of ``num_scenes`` synthetic scenes, ``repeats``
    times; every scene is prepared (:func:`~rap.metrics.pdms.prepare_scene`) and scored inside the
    timed loop, as a training step that scores fresh scenes' proposals on the fly would: all
    scenes in one :func:`~rap.metrics.pdms.score_scenes` call (``batched``), or one
    :func:`~rap.metrics.pdms.score_scene` call per scene.

    Args:
        num_proposals: K per :func:`~rap.metrics.pdms.score_scene` call.
        num_agents: Vehicles in each scene (plus 5 other objects).
        repeats: Timed passes over all scenes (after one warm-up call on the first scene).
        seed: Scene and proposal randomness; scene i is drawn from ``default_rng(seed + i)``
            (scene 0 is the single scene of ``num_scenes=1``).
        num_scenes: N different scenes per pass.
        batched: One ``score_scenes`` call per pass; ``None``: when ``num_scenes`` > 1.

    Returns:
        Dict with ``proposals_per_s`` and ``scenes_per_s`` (median pass; everything included:
        scene preparation, rollout, reference planner, all v1 and v2 metrics, human filter),
        ``seconds`` per pass, ``num_proposals``, ``num_scenes``, ``num_agents``, ``num_objects``
        (of scene 0), mean ``pdms`` / ``epdms`` over all scenes and proposals, ``machine``,
        ``batched`` (whether ``score_scenes`` scored them).
    """
    n_scenes = max(int(num_scenes), 1)
    use_batch = n_scenes > 1 if batched is None else bool(batched)
    scenes, proposals = [], []
    for i in range(n_scenes):
        rng = np.random.default_rng(seed + i)
        scenes.append(synthetic_scoring_scene(rng, num_agents=num_agents))
        proposals.append(synthetic_proposals(scenes[-1], rng, num_proposals))
    config = PDMScorerConfig()
    score_scene(scenes[0], proposals[0], config=config)  # warm-up (imports, cached constants)
    seconds = []
    results = []
    for _ in range(max(int(repeats), 1)):
        start = time.perf_counter()
        if use_batch:
            results = score_scenes(scenes, proposals, config=config, prepared=[prepare_scene(sc, config) for sc in scenes])
        else:
            results = [score_scene(sc, pr, config=config, prepared=prepare_scene(sc, config)) for sc, pr in zip(scenes, proposals)]
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "proposals_per_s": n_scenes * num_proposals / median,
        "scenes_per_s": n_scenes / median,
        "seconds": seconds,
        "num_proposals": int(num_proposals),
        "num_scenes": n_scenes,
        "num_agents": int(num_agents),
        "num_objects": len(scenes[0].objects),
        "mean_pdms": float(np.mean([r.pdms.mean() for r in results])),
        "mean_epdms": float(np.mean([r.epdms.mean() for r in results])),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "batched": use_batch,
    }


# -- rendering ---------------------------------------------------------------------------------
def bench_render(scene: Scene, rig: Rig, frames: int, *, outputs: Sequence[str] = ("rgb",), warmup: int = 3, pipeline: int = 0, progress: Callable[[int], None] | None = None) -> dict:
    """Render ``frames`` frames of ``rig`` on the ego, advancing one step per frame (cycling
    through the steps where the ego is valid), so moving agents are re-uploaded every frame.
    Timing includes box upload, drawing and readback of every requested output into host
    memory. ``pipeline`` frames are in flight (asynchronous readback; 1 = synchronous; 0 = auto:
    2 on a GPU, 1 on a software renderer, where the extra pixel-buffer copy costs more than the
    overlap gains).

    Returns:
        JSON-ready dict with ``views_per_s``, ``frames_per_s``, ``frames``, ``views``,
        ``seconds``, ``rig``, ``size``, ``outputs``, ``gl_renderer``.
    """
    if frames <= 0:
        raise ValueError("frames must be positive")
    steps = np.flatnonzero(scene.tracks.valid[scene.ego_index])
    with open_renderer() as renderer:
        ctx = renderer.ctx
        if pipeline <= 0:
            pipeline = 1 if context_info(ctx).is_software else 2
        rast = SceneRasterizer(renderer, scene)
        for _ in rast.render_steps((int(steps[i % len(steps)]) for i in range(warmup)), rig, outputs=outputs, depth=pipeline):
            pass
        start = time.perf_counter()
        done = 0
        for _ in rast.render_steps((int(steps[i % len(steps)]) for i in range(frames)), rig, outputs=outputs, depth=pipeline):
            done += 1
            if progress:
                progress(done)
        seconds = time.perf_counter() - start
        info = context_info(ctx)
    views = frames * len(rig)
    cam = rig.cameras[0]
    return {
        "views_per_s": views / seconds,
        "frames_per_s": frames / seconds,
        "frames": frames,
        "views": views,
        "seconds": seconds,
        "rig": rig.name,
        "size": f"{cam.width}x{cam.height}",
        "outputs": list(outputs),
        "pipeline": pipeline,
        "distorted": any(getattr(c, "is_distorted", False) for c in rig),
        "gl_renderer": info.renderer,
    }
