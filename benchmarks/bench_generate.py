"""End-to-end generation throughput (scene → shards on disk) against the raw render rate.

Sources: the shipped Waymo scenario repeated ``--scenes`` times (9 s logs: 54 samples per scene,
so loading and planning weigh more) at every size, and ``synthetic:2`` (20 s logs, ~870 samples
per scene) at 512x256. For each, runs ``rap generate`` (front3 rig, default config otherwise)
with 1 and 2 worker processes, and in the same run the raw ``bench-render`` rate for the same
rig and size. Reports samples/s, views/s, the ratio of end-to-end views/s to the raw render rate,
where the time goes (load, plan, render, encode + write, measured in-process with 1 worker) and
the peak memory per worker.

``--paired`` generates with ``paired.enabled=true`` (the default config otherwise: every ego
moment also gets a paired twin): a paired sample's three photo views (the camera-like stand-in)
count as views beside its raster ones, against the raster raw render rate (no stage breakdown).

``--cpu-only`` instead times the CPU stages alone (one view set rendered per scene and reused,
untimed), in process with one worker: samples/s of load + plan + scoring context + encode, the ceiling that a renderer ~10x
faster (a GPU) would leave, beside the raw render rate of this machine.

Each end-to-end row also has ``cpu_ms_per_view``: CPU time of the run's processes and threads
(llvmpipe's included) per view, which other jobs on a shared machine disturb far less than the
wall-clock rates; ``--repeat N`` keeps the fastest of N runs of each measurement.

Usage: python benchmarks/bench_generate.py [--scenes 4] [--sizes 512x256,1920x1080] [--cpu-only]
       [--repeat 1] [--workers 1,2] [--no-synthetic] [--paired]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"

WORKER_SNIPPET = """
import json, resource, sys, time
from rap.config import load_config
from rap.dataset.manifest import read_manifest
from rap.generate import GenerateConfig, generate
cfg = load_config(GenerateConfig, None, [f"size=[{sys.argv[3]},{sys.argv[4]}]"] + json.loads(sys.argv[6]))
t = time.perf_counter()
result = generate(sys.argv[1], sys.argv[2], cfg, workers=int(sys.argv[5]))
seconds = time.perf_counter() - t
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
rss = [u.ru_maxrss / 1024 for u in usage]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # every process and thread of the run (llvmpipe's included)
paired = read_manifest(sys.argv[2]).counts.get("paired", 0)
# views written: three raster views per sample, and a paired sample's three photo views besides
views = 3 * (result.samples + paired)
print(json.dumps({"samples": result.samples, "paired": paired, "seconds": seconds, "views": views, "rss_self_mb": rss[0], "rss_children_mb": rss[1], "cpu_s": cpu}))
"""


def run_generate(source: str, size: tuple[int, int], workers: int, repeat: int = 1, overrides: tuple[str, ...] = ()) -> dict:
    """One ``rap generate`` run in a fresh process (the fastest of ``repeat`` runs) with config
    ``overrides``: samples (``paired`` of them paired), seconds, views written, peak RSS and
    ``cpu_s`` (CPU seconds of the run's processes and threads)."""
    best = None
    for _ in range(max(1, repeat)):
        out = Path(tempfile.mkdtemp(prefix="rap_bench_gen_"))
        try:
            proc = subprocess.run(
                [sys.executable, "-c", WORKER_SNIPPET, source, str(out / "ds"), str(size[0]), str(size[1]), str(workers), json.dumps(list(overrides))],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            got = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if best is None or got["seconds"] < best["seconds"]:
            best = got
    return best


def stage_breakdown(source: str, size: tuple[int, int], render: bool = True) -> dict:
    """Seconds per stage for one in-process run (1 worker): load, plan, render, scoring context,
    encode + write (into memory), and ``samples``. With ``render=False`` each sample reuses one
    view set rendered per scene (not timed, so encoding still sees real content): the CPU stages
    alone, the ceiling a GPU, whose rendering is ~10x faster, would leave."""
    from rap.augment.scoring_context import ScoringContextBuilder
    from rap.config import load_config
    from rap.dataset.sample import Sample, SampleKind
    from rap.dataset.writer import sample_members
    from rap.generate import GenerateConfig, plan_scene
    from rap.render.rigs import camera_record, get_rig
    from rap.render.scene_raster import SceneRasterizer
    from rap.render.session import worker_renderer
    from rap.sources.registry import list_units, load_unit

    cfg = load_config(GenerateConfig, None, [f"size=[{size[0]},{size[1]}]"])
    rig = get_rig(cfg.rig, size)
    cams = {c.name: camera_record(c) for c in rig}
    times = {"load": 0.0, "plan": 0.0, "render": 0.0, "scoring_context": 0.0, "encode_write": 0.0}
    samples = 0
    for unit in list_units(source):
        t = time.perf_counter()
        scene = load_unit(unit)
        times["load"] += time.perf_counter() - t
        t = time.perf_counter()
        plans, _ = plan_scene(scene, cfg)
        times["plan"] += time.perf_counter() - t
        rast = SceneRasterizer(worker_renderer(), scene)
        stand_in = None if render or not plans else {v.camera_name: v.rgb.copy() for v in rast.render(plans[0].step, rig, plans[0].agent_row)}
        contexts = ScoringContextBuilder(scene)
        for plan in plans:
            t = time.perf_counter()
            if not render:
                images = stand_in
            elif plan.kind == SampleKind.RECOVERY:
                images = {v.camera_name: v.rgb for v in rast.render_pose(plan.step, rig, plan.viewer_pose, plan.agent_row)}
            else:
                images = {v.camera_name: v.rgb for v in rast.render(plan.step, rig, plan.agent_row)}
            times["render"] += time.perf_counter() - t
            t = time.perf_counter()
            scoring, _ = contexts.build(plan)
            times["scoring_context"] += time.perf_counter() - t
            t = time.perf_counter()
            sample_members(Sample(plan, images, cams, None, scoring), cfg.codec)
            times["encode_write"] += time.perf_counter() - t
            samples += 1
    return {"seconds": times, "samples": samples}


def raw_render_rate(size: tuple[int, int], frames: int = 60, repeat: int = 1) -> float:
    """Views/s of ``bench-render`` (front3) on the shipped scenario: the fastest of ``repeat``."""
    from rap.perf import bench_render
    from rap.render.rigs import get_rig
    from rap.sources.womd import load_womd

    scene = load_womd(SCENARIO)
    return max(bench_render(scene, get_rig("front3", size), frames)["views_per_s"] for _ in range(max(1, repeat)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--sizes", default="512x256,1920x1080")
    parser.add_argument("--cpu-only", action="store_true", help="time the CPU stages alone (no rendering)")
    parser.add_argument("--repeat", type=int, default=1, help="keep the fastest of N runs of each measurement (a shared, noisy machine)")
    parser.add_argument("--workers", default="1,2", help="worker counts of the end-to-end runs")
    parser.add_argument("--no-synthetic", action="store_true", help="leave out the synthetic:2 rows")
    parser.add_argument("--paired", action="store_true", help="generate with paired.enabled=true (photo views counted as views)")
    args = parser.parse_args()
    overrides = ("paired.enabled=true",) if args.paired else ()
    from rap.sources.tfrecord import read_records, write_records

    tmp = Path(tempfile.mkdtemp(prefix="rap_bench_src_"))
    source_file = tmp / "scenes.tfrecord"
    write_records(source_file, read_records(SCENARIO) * args.scenes)
    source = f"womd:{source_file}"
    rows = []
    runs = [(f"womd x{args.scenes}", source, s) for s in args.sizes.split(",")] + ([] if args.no_synthetic else [("synthetic:2", "synthetic:2", "512x256")])
    if args.cpu_only:
        cpu_only(runs)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    for source_name, src, size_text in runs:
        size = tuple(int(v) for v in size_text.split("x"))
        raw = raw_render_rate(size, repeat=args.repeat)
        stages = {} if args.paired else stage_breakdown(src, size)["seconds"]
        for workers in (int(w) for w in args.workers.split(",")):
            r = run_generate(src, size, workers, args.repeat, overrides)
            rows.append({
                "source": source_name + (" paired" if args.paired else ""), "size": size_text, "workers": workers,
                "samples_per_s": r["samples"] / r["seconds"], "paired_samples": r["paired"],
                "views_per_s": r["views"] / r["seconds"], "raw_render_views_per_s": raw,
                "ratio_to_raw": r["views"] / r["seconds"] / raw, "samples": r["samples"],
                "cpu_ms_per_view": 1000 * r["cpu_s"] / r["views"],
                "rss_main_mb": r["rss_self_mb"], "rss_worker_mb": r["rss_children_mb"] if workers > 1 else r["rss_self_mb"],
                "stages_s": stages,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    meta = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores", "scenes": args.scenes, "repeat": args.repeat}
    out = ROOT / "benchmarks" / "results" / ("generate_paired.json" if args.paired else "generate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\n{meta['date']}, {meta['machine']}, llvmpipe, front3\n")
    print("| source | size | workers | samples | samples/s | views/s | raw bench-render views/s | ratio | CPU ms per view | peak RSS per worker |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['source']} | {r['size']} | {r['workers']} | {r['samples']} | {r['samples_per_s']:.1f} | {r['views_per_s']:.0f} | {r['raw_render_views_per_s']:.0f} | {r['ratio_to_raw']:.2f} | {r['cpu_ms_per_view']:.1f} | {r['rss_worker_mb']:.0f} MB |")
    print("\nwhere the time goes (1 worker, seconds over the run):")
    for r in rows:
        if r["workers"] == 1 and r["stages_s"]:
            total = sum(r["stages_s"].values())
            print(f"- {r['source']} {r['size']}: " + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f} %)" for k, v in r["stages_s"].items()))


def cpu_only(runs) -> None:
    """The CPU stages alone per source and size (see the module docstring), as a table and JSON lines."""
    rows = []
    for source_name, src, size_text in runs:
        size = tuple(int(v) for v in size_text.split("x"))
        got = stage_breakdown(src, size, render=False)
        cpu = sum(got["seconds"].values())
        raw = raw_render_rate(size)
        rows.append({
            "source": source_name, "size": size_text, "samples": got["samples"], "cpu_samples_per_s": got["samples"] / cpu,
            "cpu_views_per_s": 3 * got["samples"] / cpu, "raw_render_views_per_s": raw, "stages_s": got["seconds"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores: CPU stages alone (1 worker, one rendered view set reused per scene)\n")
    print("| source | size | samples | CPU-stage samples/s | CPU-stage views/s | raw render views/s (this machine) | load / plan / scoring / encode |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        st = r["stages_s"]
        total = sum(st.values())
        shares = " / ".join(f"{100 * st[k] / total:.0f} %" for k in ("load", "plan", "scoring_context", "encode_write"))
        print(f"| {r['source']} | {r['size']} | {r['samples']} | {r['cpu_samples_per_s']:.1f} | {r['cpu_views_per_s']:.0f} | {r['raw_render_views_per_s']:.0f} | {shares} |")


if __name__ == "__main__":
    main()
