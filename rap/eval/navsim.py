"""`rap eval navsim`: NAVSIM-style (pseudo-closed-loop) evaluation of an agent.

Per scoring step (every 1 s with 1.5 s of history and 4 s of future, see
:mod:`rap.eval.navsim_scene`) the agent gets an :class:`~rap.eval.agent.Observation` (views
rendered by the rasterizer from the ego's logged state), returns an 8 x 0.5 s trajectory, which the
LQR tracker executes on a kinematic bicycle and the PDM scorer judges (PDMS v1 and EPDMS v2).
The agent is also asked 0.5 s earlier, for EPDMS's extended comfort. Writes
``navsim_eval.json``, ``navsim_eval.md`` and ``index.html`` with a BEV picture per scene.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from rap import geometry
from rap.eval.agent import Agent
from rap.eval.config import EvalConfig
from rap.eval.navsim_scene import ego_state, scoring_scene, scoring_steps, steps_for
from rap.eval.observe import Observer
from rap.render.scene_raster import SceneRasterizer
from rap.eval.report import summarize, write_reports
from rap.images import save_png
from rap.metrics.pdm_inputs import PreviousPlan
from rap.metrics.pdms import score_scene
from rap.scene import Scene
from rap.sources.registry import iter_scenes
from rap.sim.bicycle import StateIndex
from rap.trajectory import Trajectory

# (result attribute, short name) in report order.
SUBSCORES_V1 = (("v1_no_at_fault_collisions", "NC"), ("v1_drivable_area_compliance", "DAC"), ("ego_progress_v1", "EP"), ("time_to_collision_within_bound_v1", "TTC"), ("comfort", "C"))
SUBSCORES_V2 = (
    ("no_at_fault_collisions", "NC"),
    ("drivable_area_compliance", "DAC"),
    ("driving_direction_compliance", "DDC"),
    ("traffic_light_compliance", "TLC"),
    ("ego_progress", "EP"),
    ("time_to_collision_within_bound", "TTC"),
    ("lane_keeping", "LK"),
    ("history_comfort", "HC"),
    ("extended_comfort", "EC"),
)
BEV_SIZE = 320
BEV_EXTENT_M = 64.0


def _subscores(result, k: int = 0) -> dict[str, float | None]:
    out = {}
    for attr, name in SUBSCORES_V2:
        value = float(getattr(result, attr)[k])
        out[name] = None if np.isnan(value) else value
    for attr, name in SUBSCORES_V1:
        out[f"v1_{name}"] = float(getattr(result, attr)[k])
    return out


def _failures(sub: dict[str, float | None]) -> list[str]:
    names = {"NC": "at-fault collision", "DAC": "left the drivable area", "DDC": "drove against traffic", "TLC": "ran a red light", "LK": "left the lane centre", "HC": "uncomfortable (history)", "EC": "plan inconsistent with the last one", "v1_C": "uncomfortable"}
    out = [f"{names[k]} ({k}={sub[k]:g})" for k in ("NC", "DAC", "DDC", "TLC", "LK", "HC", "EC", "v1_C") if sub.get(k) is not None and sub[k] < 1.0]
    if sub.get("EP") is not None and sub["EP"] < 0.5:
        out.append(f"little progress (EP={sub['EP']:.2f})")
    if sub.get("TTC") is not None and sub["TTC"] < 1.0:
        out.append("time to collision too short (TTC=0)")
    return out


def bev_picture(raster: SceneRasterizer, step: int, planned: np.ndarray, executed_world: np.ndarray, centerline: np.ndarray) -> np.ndarray:
    """(BEV_SIZE, BEV_SIZE, 3) uint8: the BEV raster of ``raster.scene`` around the ego with the
    route centerline (grey), the planned poses (cyan dots) and the executed rollout (yellow line)."""
    from rasterizer.camera import OrthoCamera, Rig

    scene = raster.scene
    cam = OrthoCamera("BEV", BEV_SIZE, BEV_SIZE, extent_x=BEV_EXTENT_M, extent_y=BEV_EXTENT_M, center=(BEV_EXTENT_M / 4, 0.0))
    rgb = raster.render(step, Rig("bev", (cam,)))[0].rgb
    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    x0, y0, _, h0 = scene.ego_pose(step)

    def to_px(xy_ego: np.ndarray) -> list[tuple[float, float]]:
        uv, _ = cam.project(np.column_stack([xy_ego, np.zeros(len(xy_ego))]))
        return [(float(u), float(v)) for u, v in uv]

    line = geometry.to_frame(centerline[:, :2], (x0, y0), h0)
    draw.line(to_px(line), fill=(150, 150, 150), width=1)
    executed = geometry.to_frame(executed_world, (x0, y0), h0)
    draw.line(to_px(executed), fill=(255, 220, 0), width=2)
    for u, v in to_px(np.vstack([[0.0, 0.0], planned[:, :2]])):
        draw.ellipse((u - 2.5, v - 2.5, u + 2.5, v + 2.5), fill=(0, 230, 255))
    return np.asarray(image)


def _checked(agent: Agent, plan, scene: Scene, step: int) -> Trajectory:
    if not isinstance(plan, Trajectory):
        raise ValueError(f"agent {agent.name!r} returned {type(plan).__name__} for scene {scene.scene_id} step {step}; expected rap.trajectory.Trajectory")
    return plan


def evaluate_navsim(agent: Agent, scenes: str, out_dir: str | Path, *, config: EvalConfig = EvalConfig(), max_scenes: int | None = None, pictures: bool = True, on_scene: Callable[[dict], None] | None = None) -> dict:
    """Evaluate ``agent`` on every scoring step of ``scenes``; write the reports.

    ``config`` sets the observation (history, command horizon), the plan's sampling and the
    scoring spacing (``configs/eval/default.yaml``).

    Returns:
        The report: ``pdms`` (v1, mean over scenes), ``epdms`` (v2 aggregate), ``scenes``
        (count), ``subscores`` (means over scenes; EC over scenes that have it), ``rows``
        (per scene: id, step, scores, failures, picture).
    """
    from rap.render.session import open_renderer

    out_dir = Path(out_dir)
    rows: list[dict] = []
    start = time.perf_counter()
    with open_renderer() as renderer:
        observer = Observer(renderer, agent.sensor_config(), config.observation, privileged=bool(getattr(agent, "privileged", False)))
        sampling = config.navsim.sampling.to_sampling()
        scorer = config.scorer_config()
        for scene in iter_scenes(scenes):
            back = steps_for(scene, config.navsim.previous_plan_offset_s)
            for step in scoring_steps(scene, config.navsim.spacing_s):
                if max_scenes is not None and len(rows) >= max_scenes:
                    break
                plan = _checked(agent, agent.plan(observer.observe(scene, step, sampling)), scene, step)
                previous = None
                prev_step = step - back
                if prev_step >= 0 and scene.tracks.valid[scene.ego_index, prev_step]:
                    prev_plan = _checked(agent, agent.plan(observer.observe(scene, prev_step, sampling)), scene, prev_step)
                    previous = PreviousPlan(ego=ego_state(scene, prev_step), poses=np.asarray(prev_plan.poses), sampling=prev_plan.sampling, time_offset_s=config.navsim.previous_plan_offset_s)
                inputs = scoring_scene(scene, step, previous_plan=previous)
                result = score_scene(inputs, np.asarray(plan.poses)[None], plan.sampling, config=scorer)
                sub = _subscores(result)
                token = f"{scene.scene_id}_{step:03d}"
                row = {"scene": token, "scene_id": scene.scene_id, "source": scene.source, "step": step, "pdms": float(result.pdms[0]), "epdms": float(result.epdms[0]), "subscores": sub, "failures": _failures(sub), "human_filtered": bool(result.human_filtered)}
                if pictures:
                    executed = np.asarray(result.states[0])[:, [StateIndex.X, StateIndex.Y]]
                    picture = bev_picture(observer.rasterizer(scene), step, np.asarray(plan.poses), executed, inputs.centerline)
                    save_png(out_dir / "bev" / f"{token}.png", picture)
                    row["picture"] = f"bev/{token}.png"
                rows.append(row)
                if on_scene:
                    on_scene(row)
    if not rows:
        raise ValueError(f"scenes {scenes!r}: no step with 1.5 s of history and 4 s of future")
    report = summarize(agent.name, scenes, rows)
    report["seconds"] = time.perf_counter() - start
    write_reports(out_dir, report)
    return report
