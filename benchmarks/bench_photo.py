"""The photo look's cost against the raster look, same scene, rig, frames and run.

On the shipped Waymo scenario (front3 rig, one scenario step per frame, so boxes move), each
look renders ``--frames`` frames synchronously (``SceneRasterizer.render``), ``--repeats`` times;
the median views/s of each and the ratio photo / raster are reported (target: >= 0.5, i.e. the
photo look within 2x of the raster), with the process's CPU time per view (llvmpipe's threads
included; steadier than wall time on a shared machine). ``photo (GL only)`` leaves out the
read-back lens and sensor pass (blur, vignetting, noise) to show where the time goes.

Usage: python benchmarks/bench_photo.py [--frames 20] [--repeats 3] [--sizes 512x256,1920x1080] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

from machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
WOMD = REPO / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"


def views_per_s(scene, rig, style, frames: int, lens: bool = True) -> tuple[float, float]:
    """(views/s, CPU ms per view) of ``frames`` synchronous renders of ``rig``."""
    from rap.render.scene_raster import SceneRasterizer
    from rap.render.session import open_renderer

    with open_renderer(style) as renderer:
        if not lens:
            renderer._lens = lambda views, results: results  # the GL part alone
        rast = SceneRasterizer(renderer, scene)
        steps = [s % scene.num_steps for s in range(frames + 1)]
        rast.render(steps[0], rig)  # shaders compiled, map uploaded
        t0, c0 = time.perf_counter(), time.process_time()
        for step in steps[1:]:
            rast.render(step, rig)
        views = frames * len(rig)
        return views / (time.perf_counter() - t0), (time.process_time() - c0) / views * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="512x256,1920x1080")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from rap.render.rigs import get_rig
    from rap.render.style import default_style, photo_style
    from rap.sources.womd import load_womd

    scene = load_womd(WOMD)
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        rig = get_rig("front3", (w, h))
        looks = {"raster": (default_style(), True), "photo": (photo_style(), True), "photo (GL only)": (photo_style(), False)}
        rates = {name: [] for name in looks}
        cpu = {name: [] for name in looks}
        for _ in range(args.repeats):  # alternate the looks so the machine's drift hits all
            for name, (style, lens) in looks.items():
                rate, cpu_ms = views_per_s(scene, rig, style, args.frames, lens)
                rates[name].append(rate)
                cpu[name].append(cpu_ms)
        raster = statistics.median(rates["raster"])
        for name, values in rates.items():
            rate = statistics.median(values)
            rows.append(
                {"size": size, "look": name, "views_per_s": round(rate, 1), "ratio_to_raster": round(rate / raster, 3), "cpu_ms_per_view": round(statistics.median(cpu[name]), 2)}
            )
    stamp = f"{cpu_name()}, {dt.date.today().isoformat()}"
    print(f"\n### photo vs raster look, front3 on the shipped WOMD scenario ({stamp})\n")
    print("| size | look | views/s | vs raster | CPU ms/view |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['look']} | {r['views_per_s']:.1f} | {r['ratio_to_raster']:.2f}x | {r['cpu_ms_per_view']:.2f} |")
    for r in rows:
        print(json.dumps(r, sort_keys=True))
    if args.out:
        args.out.write_text(json.dumps({"machine": stamp, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
