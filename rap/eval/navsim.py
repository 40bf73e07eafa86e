"""`rap eval navsim`: NAVSIM-style (pseudo-closed-loop) evaluation of an agent.

Per scoring step (every 1 s with 1.5 s of history and 4 s of future, see
:mod:`rap.eval.navsim_scene`) the agent gets an :class:`~rap.eval.agent.Observation` (views
rendered by the rasterizer from the ego's logged state), returns an 8 x 0.5 s trajectory, which the
LQR tracker executes on a kinematic bicycle and the PDM scorer judges (PDMS v1 and EPDMS v2).
The agent is also asked 0.5 s earlier, for EPDMS's extended comfort. Writes
``navsim_eval.json``, ``navsim_eval.md`` and ``index.html`` with a BEV picture per scene.
"""

from __future__ import annotations

import dataclasses
import html
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from rap import geometry
from rap.augment.targets import driving_command, future_target, history_poses
from rap.eval.agent import Agent, Observation
from rap.eval.navsim_scene import ego_state, scoring_scene, scoring_steps
from rap.dataset.sample import DrivingCommand, EgoStatus
from rap.images import save_json, save_png, write_bytes_atomic
from rap.metrics.pdm_inputs import PreviousPlan
from rap.metrics.pdms import aggregate_v1, aggregate_v2, score_scene
from rap.scene import Scene
from rap.sources.registry import iter_scenes
from rap.sim.bicycle import StateIndex
from rap.trajectory import NAVSIM_SAMPLING, Trajectory

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


@dataclasses.dataclass
class _ObservationMaker:
    """Builds observations, rendering the agent's views with one renderer."""

    agent: Agent
    renderer: object | None = None
    _raster: object | None = None
    _scene: Scene | None = None

    def __call__(self, scene: Scene, step: int) -> Observation:
        row = scene.ego_index
        sampling = NAVSIM_SAMPLING
        future = future_target(scene, row, step, sampling)
        command = driving_command(future) if future is not None else DrivingCommand.STRAIGHT
        from rap.augment.targets import agent_acceleration, agent_velocity

        v, a = agent_velocity(scene, row, step), agent_acceleration(scene, row, step)
        status = EgoStatus(float(np.hypot(*v)), (float(v[0]), float(v[1])), (float(a[0]), float(a[1])), command)
        history = history_poses(scene, row, step, 3, 0.5)
        images, cameras = {}, {}
        sensors = self.agent.sensor_config()
        if sensors.rig is not None:
            from rap.render.job import camera_record
            from rap.render.rigs import get_rig
            from rap.render.scene_raster import SceneRasterizer

            if self._scene is not scene:
                self._raster = SceneRasterizer(self.renderer, scene)
                self._scene = scene
            rig = get_rig(sensors.rig, tuple(sensors.size))
            for view in self._raster.render(step, rig):
                images[view.camera_name] = view.rgb.copy()
            cameras = {cam.name: camera_record(cam) for cam in rig}
        privileged = bool(getattr(self.agent, "privileged", False))
        return Observation(
            scene_id=scene.scene_id, time_s=float(scene.timestamps[step]), images=images, cameras=cameras, ego_status=status,
            history=np.zeros((0, 3)) if history is None else history, sampling=sampling,
            scene=scene if privileged else None, step=step if privileged else None,
        )  # fmt: skip


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


def bev_picture(renderer, scene: Scene, step: int, planned: np.ndarray, executed_world: np.ndarray, centerline: np.ndarray) -> np.ndarray:
    """(BEV_SIZE, BEV_SIZE, 3) uint8: the BEV raster around the ego with the route centerline
    (grey), the planned poses (cyan dots) and the executed rollout (yellow line)."""
    from rap.render.scene_raster import SceneRasterizer
    from rasterizer.camera import OrthoCamera, Rig

    cam = OrthoCamera("BEV", BEV_SIZE, BEV_SIZE, extent_x=BEV_EXTENT_M, extent_y=BEV_EXTENT_M, center=(BEV_EXTENT_M / 4, 0.0))
    rgb = SceneRasterizer(renderer, scene).render(step, Rig("bev", (cam,)))[0].rgb
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


def evaluate_navsim(agent: Agent, scenes: str, out_dir: str | Path, *, max_scenes: int | None = None, pictures: bool = True, on_scene: Callable[[dict], None] | None = None) -> dict:
    """Evaluate ``agent`` on every scoring step of ``scenes``; write the reports.

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
        observe = _ObservationMaker(agent, renderer)
        for scene in iter_scenes(scenes):
            for step in scoring_steps(scene):
                if max_scenes is not None and len(rows) >= max_scenes:
                    break
                plan = _checked(agent, agent.plan(observe(scene, step)), scene, step)
                previous = None
                prev_step = step - 5
                if prev_step >= 0 and scene.tracks.valid[scene.ego_index, prev_step]:
                    prev_plan = _checked(agent, agent.plan(observe(scene, prev_step)), scene, prev_step)
                    previous = PreviousPlan(ego=ego_state(scene, prev_step), poses=np.asarray(prev_plan.poses), sampling=prev_plan.sampling, time_offset_s=0.5)
                inputs = scoring_scene(scene, step, previous_plan=previous)
                result = score_scene(inputs, np.asarray(plan.poses)[None], plan.sampling)
                sub = _subscores(result)
                token = f"{scene.scene_id}_{step:03d}"
                row = {"scene": token, "scene_id": scene.scene_id, "source": scene.source, "step": step, "pdms": float(result.pdms[0]), "epdms": float(result.epdms[0]), "subscores": sub, "failures": _failures(sub), "human_filtered": bool(result.human_filtered)}
                if pictures:
                    executed = np.asarray(result.states[0])[:, [StateIndex.X, StateIndex.Y]]
                    picture = bev_picture(renderer, scene, step, np.asarray(plan.poses), executed, inputs.centerline)
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


def summarize(agent_name: str, scenes: str, rows: Sequence[dict]) -> dict:
    """Means over scenes (EPDMS through the v2 aggregation)."""
    subscores = {}
    for key in rows[0]["subscores"]:
        values = [r["subscores"][key] for r in rows if r["subscores"][key] is not None]
        subscores[key] = float(np.mean(values)) if values else None
    return {
        "agent": agent_name,
        "scenes_spec": scenes,
        "pdms": aggregate_v1([r["pdms"] for r in rows]),
        "epdms": aggregate_v2([r["epdms"] for r in rows]),
        "scenes": len(rows),
        "subscores": subscores,
        "rows": list(rows),
    }


def write_reports(out_dir: Path, report: dict) -> None:
    """``navsim_eval.json``, ``navsim_eval.md`` and ``index.html`` (atomic writes)."""
    save_json(out_dir / "navsim_eval.json", report)
    keys = list(report["subscores"])
    md = [f"# NAVSIM-style evaluation: {report['agent']} on {report['scenes_spec']}", "", f"**PDMS {report['pdms']:.4f}**, **EPDMS {report['epdms']:.4f}** over {report['scenes']} scenes.", ""]
    md.append("| scene | PDMS | EPDMS | " + " | ".join(keys) + " | failures |")
    md.append("|---|---:|---:|" + "---:|" * len(keys) + "---|")

    def fmt(v):
        return "–" if v is None else f"{v:.2f}"

    md.append("| **mean** | " + f"{report['pdms']:.3f} | {report['epdms']:.3f} | " + " | ".join(fmt(report["subscores"][k]) for k in keys) + " | |")
    for r in report["rows"]:
        md.append(f"| {r['scene']} | {r['pdms']:.3f} | {r['epdms']:.3f} | " + " | ".join(fmt(r["subscores"][k]) for k in keys) + f" | {'; '.join(r['failures'])} |")
    write_bytes_atomic(out_dir / "navsim_eval.md", ("\n".join(md) + "\n").encode())

    cards = []
    for r in report["rows"]:
        img = f'<img src="{html.escape(r["picture"])}" width="{BEV_SIZE}">' if "picture" in r else ""
        fails = "<br>".join(html.escape(f) for f in r["failures"]) or "no failure"
        cards.append(f'<div class="card">{img}<div><b>{html.escape(r["scene"])}</b><br>PDMS {r["pdms"]:.3f} · EPDMS {r["epdms"]:.3f}<br><span class="{"bad" if r["failures"] else "ok"}">{fails}</span></div></div>')
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    mean_row = "".join(f"<td>{fmt(report['subscores'][k])}</td>" for k in keys)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rap eval navsim: {html.escape(report['agent'])}</title>
<style>body{{font-family:sans-serif;background:#111;color:#ddd}} table{{border-collapse:collapse}} td,th{{border:1px solid #444;padding:3px 6px}}
.card{{display:inline-block;vertical-align:top;margin:6px;width:{BEV_SIZE}px}} .bad{{color:#f77}} .ok{{color:#7f7}}</style></head><body>
<h1>{html.escape(report['agent'])} on {html.escape(report['scenes_spec'])}</h1>
<p><b>PDMS {report['pdms']:.4f}</b> · <b>EPDMS {report['epdms']:.4f}</b> · {report['scenes']} scenes.
BEV: route centerline grey, planned poses cyan, executed rollout yellow, ego white.</p>
<table><tr><th></th>{head}</tr><tr><td>mean</td>{mean_row}</tr></table>
{''.join(cards)}</body></html>
"""
    write_bytes_atomic(out_dir / "index.html", page.encode())
