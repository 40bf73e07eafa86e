"""`rap demo`: the whole chain on the embedded default data.

1. Renders the shipped real Waymo Motion scenario from the ego (front3 and BEV), from another
   vehicle's seat, and as a drive-through sequence.
2. Checks the camera model against Waymo's own box projections on the shipped perception frame.
3. Generates augmented datasets (ego, recovery and cross-agent samples) from the real scenario
   and from a synthetic town, with a contact sheet of each (``rap inspect``).
4. Scores the built-in agents NAVSIM-style (PDMS / EPDMS) on synthetic scenes and the logged
   driver on the real scenario, with HTML reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from rap.images import contact_sheet, save_png
from rap.render.job import render_to_dir
from rap.render.rigs import get_rig
from rap.scene import AgentType, Scene
from rap.render.scene_raster import SceneRasterizer
from rap.sources.womd import load_womd
from rap.render.session import open_renderer

CAMERA_SIZE = (960, 540)
BEV_SIZE = (512, 512)


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


EVAL_RUNS = (("expert", "synthetic:2"), ("constant_velocity", "synthetic:2"), ("log_replay", "synthetic:2"), ("log_replay", "womd"))


def run_demo(out: str | Path, scenario_path: Path, frame_path: Path, console: Console | None = None) -> dict:
    """Run the demo; returns a summary with the paths written."""
    import shutil

    from rap.eval.agent import load_agent
    from rap.eval.navsim import evaluate_navsim
    from rap.config import load_config
    from rap.dataset.inspect import inspect_dataset
    from rap.generate import GenerateConfig, generate

    out = Path(out)
    console = console or Console(stderr=True)
    scene = load_womd(scenario_path)
    now = scene.current_index
    summary: dict = {"scene_id": scene.scene_id, "out": str(out)}
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("demo", total=6 + 2 + len(EVAL_RUNS))
        render_to_dir(scene, get_rig("front3", CAMERA_SIZE), out / "front3", step=now, outputs=("rgb", "class_id", "depth"))
        bar.advance(task)
        render_to_dir(scene, get_rig("front3", CAMERA_SIZE), out / "front3_photo", step=now, style="photo")  # the camera-like stand-in
        bar.advance(task)
        render_to_dir(scene, get_rig("bev", BEV_SIZE), out / "bev", step=now)
        bar.advance(task)
        other = pick_other_vehicle(scene, now)
        render_to_dir(scene, get_rig("front3", CAMERA_SIZE), out / f"agent_{other}", step=now, agent_id=other)
        summary["other_agent_id"] = other
        bar.advance(task)

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
        bar.advance(task)

        from rap.render.projection_check import check_projection

        result = check_projection(frame_path, out / "projection")
        summary["projection_mean_iou"] = round(float(result["mean_iou"]), 4)
        bar.advance(task)

        datasets = {}
        for name, source, overrides in (
            ("dataset_womd", f"womd:{scenario_path}", []),
            ("dataset_synthetic", "synthetic:1", ["recovery.num_samples=1", "cross_agent.max_agents=3"]),
        ):
            folder = out / name
            shutil.rmtree(folder, ignore_errors=True)  # the demo starts over each time
            result = generate(source, folder, load_config(GenerateConfig, None, overrides))
            inspect_dataset(folder, folder / "contact_sheet.png", per_kind=3)
            datasets[name] = {"samples": result.samples, "counts": result.manifest.counts, "contact_sheet": str(folder / "contact_sheet.png")}
            bar.advance(task)
        summary["datasets"] = datasets

        evals = []
        for agent_name, scenes in EVAL_RUNS:
            spec = f"womd:{scenario_path}" if scenes == "womd" else scenes
            folder = out / "eval" / f"{agent_name}_{scenes.split(':')[0]}"
            report = evaluate_navsim(load_agent(agent_name), spec, folder)
            evals.append({"agent": agent_name, "scenes": scenes, "num_scenes": report["scenes"], "pdms": round(report["pdms"], 4), "epdms": round(report["epdms"], 4), "report": str(folder / "index.html")})
            bar.advance(task)
        summary["eval"] = evals
    summary["contact_sheets"] = [str(out / d / "contact_sheet.png") for d in ("front3", "front3_photo", "bev", f"agent_{other}")]
    console.print(f"[green]demo done[/green]: renders of {scene.scene_id} in {out}")
    for path in summary["contact_sheets"] + [summary["drive_sequence"]]:
        console.print(f"  {path}")
    console.print(f"  {out / 'projection'} (camera-model check, mean IoU {summary['projection_mean_iou']})")
    for name, info in summary["datasets"].items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(info["counts"].items()))
        console.print(f"  {out / name}: {info['samples']} samples ({counts}); contact sheet {info['contact_sheet']}", soft_wrap=True)
    console.print("  NAVSIM-style scores (PDMS v1 / EPDMS v2):")
    for row in summary["eval"]:
        console.print(f"    {row['agent']:<18} on {row['scenes']:<12} {row['num_scenes']:>3} scenes  PDMS {row['pdms']:.3f}  EPDMS {row['epdms']:.3f}  {row['report']}", soft_wrap=True)
    return summary
