"""`rap eval navsim`: NAVSIM-style (pseudo-closed-loop) evaluation of an agent.

Per scoring step (every 1 s with 1.5 s of history and 4 s of future, see
:mod:`rap.eval.navsim_scene`) the agent gets an :class:`~rap.eval.agent.Observation` (views
rendered by the rasterizer from the ego's logged state), returns an 8 x 0.5 s trajectory, which the
LQR tracker executes on a kinematic bicycle and the PDM scorer judges (PDMS v1 and EPDMS v2).
The agent is also asked 0.5 s earlier, for EPDMS's extended comfort. Writes
``navsim_eval.json``, ``navsim_eval.md`` and ``index.html`` with a BEV picture per scene.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from rap import geometry
from rap.eval.agent import Agent, AgentCallError, AgentCaller, AgentLoadError, SensorConfig, describe_exception
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
from rap.trajectory import Trajectory, TrajectorySampling

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
SUBSCORE_KEYS = tuple(name for _, name in SUBSCORES_V2) + tuple(f"v1_{name}" for _, name in SUBSCORES_V1)
BEV_SIZE = 320
BEV_EXTENT_M = 64.0
# A plan beyond these is absurd, not merely bad (the scorer's arithmetic overflows on 1e20 m);
# it fails its scene instead of being scored.
MAX_PLAN_XY_M = 1e4  # [m] |x|, |y| of any planned pose (2.5 km/s over a 4 s plan)
MAX_PLAN_HEADING_RAD = 100.0  # [rad] |heading| of any planned pose (16 turns)


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


def _checked(agent_name: str, plan, scene: Scene, step: int, sampling: TrajectorySampling) -> Trajectory:
    """``plan`` (as a plain Trajectory) if it is a trajectory at ``sampling`` with finite, sane
    poses.

    Raises:
        AgentCallError (``rejected``): naming the agent, scene, step and what is wrong.
    """
    try:
        return _check_plan(agent_name, plan, scene, step, sampling)
    except AgentCallError:
        raise
    except Exception as exc:  # noqa: BLE001 - a Trajectory subclass whose attributes raise
        raise AgentCallError(f"agent {agent_name!r} returned a plan that cannot be read for scene {scene.scene_id} step {step}: {describe_exception(exc)}") from None


def _check_plan(agent_name: str, plan, scene: Scene, step: int, sampling: TrajectorySampling) -> Trajectory:
    where = f"for scene {scene.scene_id} step {step}"
    if not isinstance(plan, Trajectory):
        raise AgentCallError(f"agent {agent_name!r} returned {type(plan).__name__} {where}; expected rap.trajectory.Trajectory")
    given = plan.sampling
    if not isinstance(given, TrajectorySampling) or given.num_poses != sampling.num_poses or not math.isclose(given.interval_s, sampling.interval_s, rel_tol=1e-9):
        said = f"{given.num_poses} x {given.interval_s:g} s" if isinstance(given, TrajectorySampling) else type(given).__name__
        raise AgentCallError(f"agent {agent_name!r} returned a trajectory sampled {said} {where}; asked for {sampling.num_poses} x {sampling.interval_s:g} s (observation.sampling)")
    try:
        poses = np.array(plan.poses, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AgentCallError(f"agent {agent_name!r} returned poses that are not numbers {where}: {describe_exception(exc)}") from None
    if poses.shape != (sampling.num_poses, 3):
        raise AgentCallError(f"agent {agent_name!r} returned poses of shape {poses.shape} {where}; expected ({sampling.num_poses}, 3) (x, y, heading)")
    for column, field, limit, unit in ((0, "x", MAX_PLAN_XY_M, "m"), (1, "y", MAX_PLAN_XY_M, "m"), (2, "heading", MAX_PLAN_HEADING_RAD, "rad")):
        values = poses[:, column]
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise AgentCallError(f"agent {agent_name!r} returned a non-finite {field} ({values[bad[0]]}) at pose {bad[0]} {where}")
        bad = np.flatnonzero(np.abs(values) > limit)
        if bad.size:
            raise AgentCallError(f"agent {agent_name!r} returned {field} = {values[bad[0]]:g} at pose {bad[0]} {where}; |{field}| must be at most {limit:g} {unit} over a {sampling.horizon_s:g} s plan")
    return Trajectory(poses, sampling)


def _ask(caller: AgentCaller, agent: Agent, agent_name: str, observer: Observer, scene: Scene, step: int, sampling: TrajectorySampling) -> Trajectory:
    """The agent's checked plan at ``step`` (AgentCallError when it fails)."""
    caller.check_usable()  # after a timeout: fail without rendering an observation
    observation = observer.observe(scene, step, sampling)
    plan = caller.call("plan()", f"scene {scene.scene_id} step {step}", lambda: agent.plan(observation))
    return _checked(agent_name, plan, scene, step, sampling)


def _failed_row(row: dict, exc: AgentCallError) -> dict:
    """A scene where the agent failed: scored 0 (PDMS and EPDMS), no sub-scores."""
    out = {**row, "pdms": 0.0, "epdms": 0.0, "subscores": dict.fromkeys(SUBSCORE_KEYS), "failures": [f"agent failed: {exc.error}"], "human_filtered": False, "failed": True, "error": exc.error}
    if exc.traceback:
        out["traceback"] = exc.traceback
    return out


def _sensor_config(caller: AgentCaller, agent: Agent, agent_name: str) -> SensorConfig:
    try:
        sensors = caller.call("sensor_config()", "before the first scene", lambda: agent.sensor_config())
    except AgentCallError as exc:
        raise AgentLoadError(f"agent {agent_name!r}: {exc.error}" if exc.kind == "timeout" else f"agent {agent_name!r}: sensor_config() raised {exc.error}") from None
    if not isinstance(sensors, SensorConfig):
        raise AgentLoadError(f"agent {agent_name!r}: sensor_config() returned {type(sensors).__name__}; expected rap.eval.agent.SensorConfig")
    return sensors


def evaluate_navsim(agent: Agent, scenes: str, out_dir: str | Path, *, config: EvalConfig = EvalConfig(), max_scenes: int | None = None, pictures: bool = True, on_scene: Callable[[dict], None] | None = None) -> dict:
    """Evaluate ``agent`` on every scoring step of ``scenes``; write the reports.

    ``config`` sets the observation (history, command horizon), the plan's sampling, the scoring
    spacing and the agent's time limit per call (``configs/eval/default.yaml``).

    The agent is called through an :class:`~rap.eval.agent.AgentCaller`. Where a call fails (the
    agent raises anything but ``KeyboardInterrupt``, takes longer than
    ``navsim.agent_timeout_s``, or returns something other than a trajectory at
    ``observation.sampling`` with finite poses within MAX_PLAN_XY_M / MAX_PLAN_HEADING_RAD), that
    scene is failed: scored 0 for PDMS and EPDMS, its row marked ``failed`` with the ``error``
    text, and the run goes on. After a timeout the agent is not called again: the remaining
    scenes fail at once.

    Returns:
        The report: ``pdms`` (v1, mean over scenes, failed ones counting 0), ``epdms`` (v2
        aggregate, likewise), ``scenes`` (count, failed ones included), ``failed`` (count),
        ``failed_scenes`` (their tokens), ``subscores`` (means over the scenes that were scored;
        EC over scenes that have it), ``rows`` (per scene: id, step, scores, failures, picture;
        ``failed``, and for a failed scene ``error`` and, where the agent raised, ``traceback``).

    Raises:
        AgentLoadError: ``sensor_config()`` raised, timed out or returned no SensorConfig.
        ValueError: no scoring step in ``scenes``.
    """
    from rap.render.session import open_renderer
    from rap.render.style import named_style

    out_dir = Path(out_dir)
    agent_name = str(getattr(agent, "name", type(agent).__name__))
    rows: list[dict] = []
    start = time.perf_counter()
    with open_renderer(named_style(config.observation.style, config.observation.seed)) as renderer, AgentCaller(agent_name, config.navsim.agent_timeout_s) as caller:
        sensors = _sensor_config(caller, agent, agent_name)
        try:
            observer = Observer(renderer, sensors, config.observation, privileged=bool(getattr(agent, "privileged", False)))
        except (ValueError, TypeError) as exc:
            raise AgentLoadError(f"agent {agent_name!r}: sensor_config() returned {sensors}: {describe_exception(exc)}") from None
        sampling = config.navsim.sampling.to_sampling()
        scorer = config.scorer_config()
        for scene in iter_scenes(scenes):
            back = steps_for(scene, config.navsim.previous_plan_offset_s)
            for step in scoring_steps(scene, config.navsim.spacing_s):
                if max_scenes is not None and len(rows) >= max_scenes:
                    break
                token = f"{scene.scene_id}_{step:03d}"
                row = {"scene": token, "scene_id": scene.scene_id, "source": scene.source, "step": step}
                try:
                    plan = _ask(caller, agent, agent_name, observer, scene, step, sampling)
                    previous = None
                    prev_step = step - back
                    if prev_step >= 0 and scene.tracks.valid[scene.ego_index, prev_step]:
                        try:
                            prev_plan = _ask(caller, agent, agent_name, observer, scene, prev_step, sampling)
                        except AgentCallError as exc:
                            if exc.kind == "raised":  # say which query it was (rap's own messages name the step)
                                exc.error = f"{exc.error} (at step {prev_step}, the earlier query for extended comfort)"
                            raise
                        previous = PreviousPlan(ego=ego_state(scene, prev_step), poses=np.asarray(prev_plan.poses), sampling=prev_plan.sampling, time_offset_s=config.navsim.previous_plan_offset_s)
                except AgentCallError as exc:
                    row = _failed_row(row, exc)
                    rows.append(row)
                    if on_scene:
                        on_scene(row)
                    continue
                inputs = scoring_scene(scene, step, previous_plan=previous)
                result = score_scene(inputs, np.asarray(plan.poses)[None], plan.sampling, config=scorer)
                sub = _subscores(result)
                row.update({"pdms": float(result.pdms[0]), "epdms": float(result.epdms[0]), "subscores": sub, "failures": _failures(sub), "human_filtered": bool(result.human_filtered), "failed": False})
                if pictures:
                    executed = np.asarray(result.states[0])[:, [StateIndex.X, StateIndex.Y]]
                    picture = bev_picture(observer.rasterizer(scene), step, np.asarray(plan.poses), executed, inputs.centerline)
                    save_png(out_dir / "bev" / f"{token}.png", picture)
                    row["picture"] = f"bev/{token}.png"
                rows.append(row)
                if on_scene:
                    on_scene(row)
            if max_scenes is not None and len(rows) >= max_scenes:
                break
    if not rows:
        raise ValueError(f"scenes {scenes!r}: no step with 1.5 s of history and 4 s of future")
    report = summarize(agent_name, scenes, rows)
    report["seconds"] = time.perf_counter() - start
    write_reports(out_dir, report)
    return report
