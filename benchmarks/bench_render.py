"""Rendering throughput on the shipped Waymo scenario, with baselines measured in the same run.

Configurations (front3 rig, frames advance one scenario step each, so agent boxes move):
* ``stream``: rap's path (``rap bench-render``) — map uploaded once, boxes re-uploaded per frame,
  all views of a frame drawn into one atlas and read back once, asynchronously through
  pixel-buffer objects with 2 frames in flight.
* ``batched``: the same with a synchronous readback per frame.
* ``per_view``: the same renderer called once per view (one readback per view).
* ``naive``: per-view calls that also re-tessellate and re-upload the map every frame (what a
  renderer without a static/dynamic split does).

Each configuration runs ``--repeats`` times; the median views/s is reported with its ratio to
``naive``. Prints a Markdown table (machine, date) and writes ``benchmarks/results/render.json``.

Usage: python benchmarks/bench_render.py [--frames 60] [--repeats 3] [--sizes 1920x1080,512x256]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

from rap.render.rigs import get_rig
from rap.render.scene_raster import SceneRasterizer, map_mesh
from rap.sources.womd import load_womd
from rap.render.style import default_style
from rasterizer.context import context_info, create_context
from rasterizer.renderer import Renderer, View

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"


def run_config(ctx, scene, rig, mode: str, frames: int) -> float:
    """views/s of one configuration."""
    steps = [s for s in range(scene.num_steps) if scene.tracks.valid[scene.ego_index, s]]
    with Renderer(ctx, default_style()) as renderer:
        rast = SceneRasterizer(renderer, scene)

        if mode == "stream":
            for _ in rast.render_steps((steps[i % len(steps)] for i in range(3)), rig):
                pass
            start = time.perf_counter()
            for _ in rast.render_steps((steps[i % len(steps)] for i in range(frames)), rig):
                pass
            return frames * len(rig) / (time.perf_counter() - start)

        def frame(i: int) -> None:
            step = steps[i % len(steps)]
            if mode == "batched":
                rast.render(step, rig)
                return
            if mode == "naive":
                renderer.set_static(map_mesh(scene.map, rast.origin, rast.config))
            renderer.set_boxes(rast.frame_boxes(step, scene.ego_index))
            pose = rast.viewer_pose(step, scene.ego_index)
            for cam in rig:
                renderer.render([View(cam, pose)])

        for i in range(3):
            frame(i)
        start = time.perf_counter()
        for i in range(frames):
            frame(i)
        return frames * len(rig) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="1920x1080,512x256")
    args = parser.parse_args()

    scene = load_womd(SCENARIO)
    ctx = create_context()
    info = context_info(ctx)
    rows = []
    for size_text in args.sizes.split(","):
        size = tuple(int(v) for v in size_text.split("x"))
        for distortion in (False, True):
            rig = get_rig("front3", size, distortion=distortion)
            for mode in ("stream", "batched", "per_view", "naive"):
                rates = [run_config(ctx, scene, rig, mode, args.frames) for _ in range(args.repeats)]
                rows.append({"size": size_text, "distortion": distortion, "mode": mode, "views_per_s": statistics.median(rates), "runs": rates})
                print(json.dumps(rows[-1]), flush=True)
    ctx.release()
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["distortion"] == row["distortion"] and r["mode"] == "naive")
        row["vs_naive"] = row["views_per_s"] / base["views_per_s"]
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "gl_renderer": info.renderer,
        "frames": args.frames,
        "repeats": args.repeats,
    }
    out = ROOT / "benchmarks" / "results" / "render.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\n{meta['date']}, {meta['machine']}, {meta['gl_renderer']}, front3, {args.frames} frames x {args.repeats} runs (median)\n")
    print("| size | distortion | mode | views/s | vs naive |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {'yes' if r['distortion'] else 'no'} | {r['mode']} | {r['views_per_s']:.0f} | {r['vs_naive']:.2f}x |")


if __name__ == "__main__":
    main()
