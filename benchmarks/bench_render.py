"""Rendering throughput on the shipped Waymo scenario, with baselines measured in the same run.

Configurations (front3 rig, frames advance one scenario step each, so agent boxes move):
* ``stream``: rap's path (``rap bench-render``) — map uploaded once, boxes re-uploaded per frame,
  all views of a frame drawn into one atlas and read back once, asynchronously through
  pixel-buffer objects with 2 frames in flight.
* ``batched``: the same with a synchronous readback per frame.
* ``per_view``: the same renderer called once per view (one readback per view).
* ``naive``: per-view calls that also re-tessellate and re-upload the map every frame (what a
  renderer without a static/dynamic split does).

Per-tick rendering (what a closed-loop simulator pays each tick: a moving ego and moving agents
given as states, not as log steps), on the same scenario and rig:
* ``tick``: ``SceneRasterizer.render_state`` with new agent states, light colours and ego pose
  per tick (boxes rebuilt from the states, map geometry reused).
* ``render_only``: the same frames with their boxes and poses prepared beforehand: only upload,
  draw and readback (the floor for ``tick``).
* ``rebuild``: a new ``SceneRasterizer`` per tick, as when each tick is a new Scene object and the
  map is tessellated again (what the NAVSIM observation maker did before ``with_scene``).

Each configuration runs ``--repeats`` times; the median views/s is reported with its ratio to
``naive`` (per-tick rows: to ``render_only``). Prints a Markdown table (machine, date) and writes ``benchmarks/results/render.json``.

Usage: python benchmarks/bench_render.py [--frames 60] [--repeats 3] [--sizes 1920x1080,512x256] [--per-tick-only]
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
from rap.render.scene_raster import AgentStates, SceneRasterizer, map_mesh
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


def tick_states(scene, frames: int):
    """Per tick: agent states moved along the log with a sub-step offset (as a simulation's states
    fall between log steps), light colours and the ego pose."""
    tr, lights = scene.tracks, scene.traffic_lights
    steps = [s for s in range(scene.num_steps - 1) if tr.valid[scene.ego_index, s] and tr.valid[scene.ego_index, s + 1]]
    out = []
    for i in range(frames):
        s = steps[i % len(steps)]
        w = (i % 7) / 7.0  # between step s and s + 1
        now, nxt = AgentStates.from_tracks(tr, s), AgentStates.from_tracks(tr, s + 1)
        moved = AgentStates(now.x + w * (nxt.x - now.x), now.y + w * (nxt.y - now.y), now.z, now.heading, now.length, now.width, now.height, now.valid & nxt.valid)
        pose = scene.agent_pose(scene.ego_index, s)
        out.append((moved, lights.colors[:, s], lights.valid[:, s], pose))
    return out


def run_tick(ctx, scene, rig, mode: str, frames: int) -> float:
    """views/s of one per-tick configuration."""
    ticks = tick_states(scene, frames + 3)
    with Renderer(ctx, default_style()) as renderer:
        rast = SceneRasterizer(renderer, scene)
        ego = scene.ego_index
        if mode == "render_only":
            prepared = [(rast.state_boxes(a, c, v, ego), rast._views(rig, rast._body_to_local(p))) for a, c, v, p in ticks]

            def frame(i: int) -> None:
                boxes, views = prepared[i]
                renderer.set_boxes(boxes)
                renderer.render(views)

        elif mode == "tick":

            def frame(i: int) -> None:
                a, c, v, p = ticks[i]
                rast.render_state(rig, p, a, c, v, ego)

        else:  # rebuild

            def frame(i: int) -> None:
                a, c, v, p = ticks[i]
                SceneRasterizer(renderer, scene).render_state(rig, p, a, c, v, ego)

        for i in range(3):
            frame(i)
        start = time.perf_counter()
        for i in range(3, frames + 3):
            frame(i)
        return frames * len(rig) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="1920x1080,512x256")
    parser.add_argument("--per-tick-only", action="store_true", help="only the per-tick table")
    args = parser.parse_args()

    scene = load_womd(SCENARIO)
    ctx = create_context()
    info = context_info(ctx)
    rows = []
    for size_text in [] if args.per_tick_only else args.sizes.split(","):
        size = tuple(int(v) for v in size_text.split("x"))
        for distortion in (False, True):
            rig = get_rig("front3", size, distortion=distortion)
            for mode in ("stream", "batched", "per_view", "naive"):
                rates = [run_config(ctx, scene, rig, mode, args.frames) for _ in range(args.repeats)]
                rows.append({"size": size_text, "distortion": distortion, "mode": mode, "views_per_s": statistics.median(rates), "runs": rates})
                print(json.dumps(rows[-1]), flush=True)
    tick_rows = []
    for size_text in args.sizes.split(","):
        size = tuple(int(v) for v in size_text.split("x"))
        rig = get_rig("front3", size)
        for mode in ("tick", "render_only", "rebuild"):
            rates = [run_tick(ctx, scene, rig, mode, args.frames) for _ in range(args.repeats)]
            tick_rows.append({"size": size_text, "mode": mode, "views_per_s": statistics.median(rates), "runs": rates})
            print(json.dumps(tick_rows[-1]), flush=True)
    ctx.release()
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["distortion"] == row["distortion"] and r["mode"] == "naive")
        row["vs_naive"] = row["views_per_s"] / base["views_per_s"]
    for row in tick_rows:
        base = next(r for r in tick_rows if r["size"] == row["size"] and r["mode"] == "render_only")
        row["vs_render_only"] = row["views_per_s"] / base["views_per_s"]
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "gl_renderer": info.renderer,
        "frames": args.frames,
        "repeats": args.repeats,
    }
    out = ROOT / "benchmarks" / "results" / "render.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "per_tick": tick_rows}, indent=2) + "\n")
    print(f"\n{meta['date']}, {meta['machine']}, {meta['gl_renderer']}, front3, {args.frames} frames x {args.repeats} runs (median)\n")
    print("| size | distortion | mode | views/s | vs naive |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {'yes' if r['distortion'] else 'no'} | {r['mode']} | {r['views_per_s']:.0f} | {r['vs_naive']:.2f}x |")
    print("\nPer tick (moving ego and agents given as states):\n")
    print("| size | mode | views/s | vs render_only |")
    print("|---|---|---:|---:|")
    for r in tick_rows:
        print(f"| {r['size']} | {r['mode']} | {r['views_per_s']:.0f} | {r['vs_render_only']:.2f}x |")


if __name__ == "__main__":
    main()
