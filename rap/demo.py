"""`rap demo`: the whole chain on the embedded default data.

1. Renders the shipped real Waymo Motion scenario from the ego (front3, its `photo` stand-in and
   BEV), from another vehicle's seat, and as a drive-through sequence.
2. Checks the camera model against Waymo's own box projections on the shipped perception frame.
3. Generates augmented datasets (ego, recovery, cross-agent and paired photo/raster samples) from
   the real scenario and from synthetic towns, with a contact sheet of each (``rap inspect``).
4. Trains the tiny planner on them (``rap train``, raster-to-real alignment on).
5. Scores the built-in agents and the trained planner NAVSIM-style (PDMS / EPDMS; the planner
   also on `photo` observations) and in closed loop (Bench2Drive-style driving score).
6. Writes ``index.html`` linking every picture, report and number (:mod:`rap.demo_page`).

Part of the commands layer: it imports ``planners`` to train.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rap.chain import Stages, closed_loop_scores, generate_dataset, navsim_scores, train_planner
from rap.config import config_to_dict
from rap.demo_config import DemoConfig
from rap.images import contact_sheet, save_json, save_png
from rap.render.job import render_to_dir
from rap.render.rigs import get_rig
from rap.render.scene_raster import SceneRasterizer
from rap.render.session import open_renderer
from rap.scene import AgentType, Scene
from rap.sources.womd import load_womd

CAMERA_SIZE = (960, 540)
BEV_SIZE = (512, 512)
PLANNER = "planner"  # the trained planner's name in the demo's tables
SUMMARY_FILE = "demo.json"
EVAL_RUNS = (("expert", "synthetic"), ("constant_velocity", "synthetic"), ("log_replay", "synthetic"), ("log_replay", "womd"))


def pick_other_vehicle(scene: Scene, step: int) -> int:
    """Track id of the moving vehicle nearest the ego at ``step`` (any valid vehicle if none moves)."""
    tr = scene.tracks
    ok = (tr.types == AgentType.VEHICLE) & tr.valid[:, step]
    ok[scene.ego_index] = False
    if not ok.any():
        raise ValueError(f"scene {scene.scene_id}: no other vehicle at step {step}")
    moving = ok & (tr.speed[:, step] > 1.0)
    pool = moving if moving.any() else ok
    ego_xy = tr.xy[scene.ego_index, step]
    dist = np.where(pool, np.linalg.norm(tr.xy[:, step] - ego_xy, axis=1), np.inf)
    return int(tr.ids[int(np.argmin(dist))])


def _renders(scene: Scene, out: Path, summary: dict) -> None:
    now = scene.current_index
    render_to_dir(scene, get_rig("front3", CAMERA_SIZE), out / "front3", step=now, outputs=("rgb", "class_id", "depth"))
    render_to_dir(scene, get_rig("front3", CAMERA_SIZE), out / "front3_photo", step=now, style="photo")  # the camera-like stand-in
    render_to_dir(scene, get_rig("bev", BEV_SIZE), out / "bev", step=now)
    other = pick_other_vehicle(scene, now)
    render_to_dir(scene, get_rig("front3", CAMERA_SIZE), out / f"agent_{other}", step=now, agent_id=other)
    summary["other_agent_id"] = other

    ego_steps = np.flatnonzero(scene.tracks.valid[scene.ego_index])
    steps = [int(s) for s in ego_steps[:: max(1, len(ego_steps) // 5)][:5]]
    rig = get_rig("front3", (640, 360))
    tiles = []
    with open_renderer() as renderer:
        rast = SceneRasterizer(renderer, scene)
        for step in steps:
            for view in rast.render(step, rig):
                tiles.append((f"t={scene.timestamps[step]:.1f}s {view.camera_name}", view.rgb.copy()))
    save_png(out / "drive_sequence.png", contact_sheet(tiles, columns=3, max_width=1920))
    summary["drive_sequence"] = str(out / "drive_sequence.png")
    summary["contact_sheets"] = [str(out / d / "contact_sheet.png") for d in ("front3", "front3_photo", "bev", f"agent_{other}")]


def _datasets(scenario_path: Path, out: Path, cfg: DemoConfig) -> dict:
    overrides = [f"size=[{cfg.data.size[0]},{cfg.data.size[1]}]", f"paired.enabled={str(cfg.data.paired).lower()}"]
    sources = (("dataset_womd", f"womd:{scenario_path}"), ("dataset_synthetic", f"synthetic:{cfg.data.synthetic_towns}"))
    return {name: generate_dataset(source, out / name, overrides) for name, source in sources}


def _train(out: Path, cfg: DemoConfig, datasets: list[Path], stages: Stages) -> dict:
    overrides = [*cfg.train.overrides, f"data.datasets=[{','.join(str(d) for d in datasets)}]", f"train.max_steps={cfg.train.steps}"]
    return train_planner(cfg.train.config, overrides, out / "train", stages)


def _navsim(scenario_path: Path, out: Path, cfg: DemoConfig, checkpoint: str | None) -> list[dict]:
    runs = [(agent, cfg.eval.navsim_scenes if scenes == "synthetic" else f"womd:{scenario_path}", scenes, "raster") for agent, scenes in EVAL_RUNS]
    if checkpoint is not None:
        runs += [(PLANNER, cfg.eval.navsim_scenes, "synthetic", style) for style in ("raster", "photo")]
    rows = []
    for name, spec, label, style in runs:
        folder = out / "eval" / (f"{name}_{label}" + ("_photo" if style == "photo" else ""))
        report = navsim_scores(checkpoint if name == PLANNER else name, spec, folder, style)
        rows.append({
            "agent": name, "scenes": spec, "observation_style": style, "num_scenes": report["scenes"],
            "pdms": round(report["pdms"], 4), "epdms": round(report["epdms"], 4), "report": str(folder / "index.html"),
        })  # fmt: skip
    return rows


def _closed_loop(out: Path, cfg: DemoConfig, checkpoint: str | None, stages: Stages) -> list[dict]:
    agents = [(name, name) for name in cfg.eval.closed_loop_agents] + ([(PLANNER, checkpoint)] if checkpoint else [])
    rows = []
    for name, spec in agents:
        folder = out / "closed_loop" / name
        report = closed_loop_scores(spec, cfg.eval.closed_loop_routes, folder, workers=cfg.eval.workers, stages=stages, label=name)
        rows.append({
            "agent": name, "routes": cfg.eval.closed_loop_routes, "num_routes": report["routes"], "driving_score": round(report["driving_score"], 2),
            "success_rate": round(report["success_rate"], 2), "efficiency": None if report["efficiency"] is None else round(report["efficiency"], 2),
            "comfort": round(report["comfort"], 2), "report": str(folder / "index.html"), "failed": report["failed"],
        })  # fmt: skip
    return rows


def run_demo(out: str | Path, scenario_path: Path, frame_path: Path, console: Console | None = None, config: DemoConfig | None = None) -> dict:
    """Run the demo into ``out``; returns a summary with every path and number written (also
    saved as ``demo.json``, and shown as ``index.html``).

    Raises:
        ValueError, FileNotFoundError: bad config or input (naming the key or file).
    """
    from rap.demo_page import write_index
    from rap.render.projection_check import check_projection

    cfg = config or DemoConfig()
    out = Path(out)
    console = console or Console(stderr=True)
    started = time.perf_counter()
    scene = load_womd(scenario_path)
    summary: dict = {"scene_id": scene.scene_id, "out": str(out), "config": config_to_dict(cfg)}
    train_steps = cfg.train.steps > 0
    names = ["renders", "projection check", "datasets"] + (["train"] if train_steps else []) + ["NAVSIM-style scores"] + (["closed loop"] if cfg.eval.closed_loop_routes else [])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        stages = Stages(bar, len(names), "demo")
        with stages.stage("renders"):
            _renders(scene, out, summary)
        with stages.stage("projection check"):
            summary["projection_mean_iou"] = round(float(check_projection(frame_path, out / "projection")["mean_iou"]), 4)
        with stages.stage("datasets"):
            summary["datasets"] = _datasets(scenario_path, out, cfg)
        checkpoint = None
        if train_steps:
            with stages.stage("train"):
                summary["train"] = _train(out, cfg, [out / name for name in summary["datasets"]], stages)
            checkpoint = summary["train"]["checkpoint"]
        with stages.stage("NAVSIM-style scores"):
            summary["eval"] = _navsim(scenario_path, out, cfg, checkpoint)
        if cfg.eval.closed_loop_routes:
            with stages.stage("closed loop"):
                summary["closed_loop"] = _closed_loop(out, cfg, checkpoint, stages)
    summary["stages"] = stages.seconds
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["index"] = str(out / "index.html")
    save_json(out / SUMMARY_FILE, summary)
    write_index(out, summary)
    _print(console, out, summary)
    return summary


def _print(console: Console, out: Path, summary: dict) -> None:
    console.print(f"[green]demo done[/green] in {summary['seconds']:.0f} s: open {summary['index']}")
    for path in summary["contact_sheets"] + [summary["drive_sequence"]]:
        console.print(f"  {path}")
    console.print(f"  {out / 'projection'} (camera-model check, mean IoU {summary['projection_mean_iou']})")
    for name, info in summary["datasets"].items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(info["counts"].items()))
        console.print(f"  {out / name}: {info['samples']} samples ({counts}); contact sheet {info['contact_sheet']}", soft_wrap=True)
    if "train" in summary:
        t = summary["train"]
        console.print(f"  planner: {t['model']} trained {t['steps']} steps ({t['samples_per_s']:.1f} samples/s), loss {t['final_loss']:.3f}, validation {t['val_loss']:.3f}: {t['checkpoint']}", soft_wrap=True)
    console.print("  NAVSIM-style scores (PDMS v1 / EPDMS v2):")
    for row in summary["eval"]:
        who = row["agent"] + (" (photo)" if row["observation_style"] == "photo" else "")
        console.print(f"    {who:<18} on {row['scenes'].split(':')[0]:<10} {row['num_scenes']:>3} scenes  PDMS {row['pdms']:.3f}  EPDMS {row['epdms']:.3f}  {row['report']}", soft_wrap=True)
    for row in summary.get("closed_loop", []):
        console.print(f"    closed loop {row['agent']:<18} on {row['routes']}: driving score {row['driving_score']:.2f}, success rate {row['success_rate']:.2f}  {row['report']}", soft_wrap=True)
