"""Closed-loop simulation speed: simulated steps per second with camera observations rendered at
every agent query, against the same loop without rendering, measured in the same run.

Both configurations drive the privileged closed-loop expert (``rap eval closed-loop --agent
expert``) over the first ``--routes`` routes of ``bench:dev10`` with the default world (10 Hz
steps, agent queried at 2 Hz, reactive IDM traffic), the report's media off:

* ``cameras``: the expert asks for the ``front3`` rig at 512x256 (``SensorConfig``), so every
  query renders three views through the per-tick rasterizer (map tessellated once per route);
  it ignores them, so both configurations drive exactly the same routes.
* ``no_render``: the same expert without cameras (the loop's simulation, traffic, tracking,
  planning and judging only).

Rounds alternate the two; the table gives simulated steps per second (ticks / wall time of the
routes, median over rounds), the ratio ``cameras / no_render`` and, from the ratio, the rendering
cost per query. ``--suite-cv`` also times the whole ``bench:base`` with ``constant_velocity`` and
``--workers 2`` (the issue's 15-minute budget on 2 CPU cores).

Usage: python benchmarks/bench_closed_loop.py [--routes 3] [--rounds 2] [--suite-cv]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402

from rap.eval.agent import SensorConfig  # noqa: E402
from rap.eval.closed_loop.config import ClosedLoopConfig  # noqa: E402
from rap.eval.closed_loop.expert import ClosedLoopExpert  # noqa: E402
from rap.eval.closed_loop.routes import load_routes  # noqa: E402
from rap.eval.closed_loop.runner import _Session, evaluate_closed_loop, run_route  # noqa: E402


class _SeeingExpert(ClosedLoopExpert):
    """The closed-loop expert given three 512x256 camera views at every query (unused)."""

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(rig="front3", size=(512, 256))


def _config(media: bool = False) -> ClosedLoopConfig:
    cfg = ClosedLoopConfig()
    return cfg.model_copy(update={"closed_loop": cfg.closed_loop.model_copy(update={"report_media": media})})


def drive(agent, routes: int) -> dict:
    """Drives ``agent`` over the first ``routes`` routes of bench:dev10: ticks, queries, seconds."""
    cfg = _config()
    specs = load_routes("bench:dev10")[:routes]
    session = _Session(agent, cfg)
    ticks = queries = 0
    scores = []
    try:
        start = time.perf_counter()
        for spec in specs:
            result = run_route(session, spec, cfg)
            game = result["record"]["meta"]["duration_game"]
            ticks += int(round(game * cfg.closed_loop.sim_hz))
            queries += int(round(game * cfg.closed_loop.agent_hz))
            scores.append(result["record"]["scores"]["score_composed"])
        seconds = time.perf_counter() - start
    finally:
        session.close()
    return {"ticks": ticks, "queries": queries, "seconds": seconds, "steps_per_s": ticks / seconds, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=3, help="first routes of bench:dev10 per configuration")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two configurations")
    parser.add_argument("--suite-cv", action="store_true", help="also time bench:base with constant_velocity, 2 workers")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/closed_loop.json"))
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {"cameras": [], "no_render": []}
    for _ in range(max(args.rounds, 1)):
        runs["no_render"].append(drive(ClosedLoopExpert(), args.routes))
        runs["cameras"].append(drive(_SeeingExpert(), args.routes))
        print(json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
    if runs["cameras"][0]["scores"] != runs["no_render"][0]["scores"]:
        raise SystemExit(f"the two configurations drove differently: {runs['cameras'][0]['scores']} vs {runs['no_render'][0]['scores']}")
    rows = {}
    for name, rs in runs.items():
        rows[name] = {
            "steps_per_s": statistics.median(r["steps_per_s"] for r in rs), "ticks": rs[0]["ticks"], "queries": rs[0]["queries"],
            "seconds": [round(r["seconds"], 2) for r in rs],
        }  # fmt: skip
    ratios = [c["steps_per_s"] / n["steps_per_s"] for c, n in zip(runs["cameras"], runs["no_render"])]
    per_query = [(c["seconds"] - n["seconds"]) / c["queries"] for c, n in zip(runs["cameras"], runs["no_render"])]
    summary = {
        "date": dt.date.today().isoformat(), "machine": f"{cpu_name()}, {os.cpu_count()} cores", "python": platform.python_version(),
        "routes": args.routes, "rounds": args.rounds, "rows": rows, "ratio_cameras_to_no_render": statistics.median(ratios),
        "render_ms_per_query": 1000 * statistics.median(per_query),
    }  # fmt: skip
    if args.suite_cv:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = evaluate_closed_loop("constant_velocity", "bench:base", tmp, config=_config(media=False), workers=2)
            summary["suite_cv"] = {"routes": report["routes"], "seconds": round(time.perf_counter() - start, 1), "driving_score": report["driving_score"]}
    print(f"\n{summary['date']}, {summary['machine']}, Python {summary['python']}; bench:dev10 first {args.routes} routes, expert, median of {args.rounds} rounds\n")
    print("| observation | simulated steps/s | agent queries | ticks | vs no_render |")
    print("|---|---:|---:|---:|---:|")
    for name in ("no_render", "cameras"):
        r = rows[name]
        ratio = 1.0 if name == "no_render" else summary["ratio_cameras_to_no_render"]
        print(f"| {name} | {r['steps_per_s']:.1f} | {r['queries']} | {r['ticks']} | {ratio:.2f}x |")
    print(f"\nrendering: {summary['render_ms_per_query']:.1f} ms per query (3 views at 512x256)")
    if "suite_cv" in summary:
        s = summary["suite_cv"]
        print(f"bench:base with constant_velocity, 2 workers: {s['routes']} routes in {s['seconds']:.0f} s (DS {s['driving_score']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
