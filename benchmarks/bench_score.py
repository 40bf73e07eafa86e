"""Scoring throughput (PDMS v1 + EPDMS v2 per proposal), with a naive baseline measured in the same run.

Scene: ``rap.perf.synthetic_scoring_scene`` (a straight-then-curved 5-lane divided road with
an intersection, ~20 driving agents, pedestrians, a parked car and a cone); proposals: NAVSIM
8 x 0.5 s plans perturbed around lane following. Configurations:

* ``vectorized``: ``rap.metrics.pdms.score_scene`` on K proposals per call — rollout (LQR +
  bicycle, 4 s at 10 Hz), PDM-Closed-style reference planner, every v1 and v2 metric, human
  filter; everything per call is timed, scene preparation included. What ``rap bench-score`` runs.
* ``naive``: ``rap.metrics.pdm_naive.naive_score_scene``, a per-proposal Python loop shaped like
  NAVSIM's scorer (per-step STR-trees, shapely polygons, per-point tests), each proposal simulated
  and scored with the reference as a pair. Timed on a subset (``--naive-proposals``); the reference
  rollout is given to it, so its time excludes the reference planner.

Each vectorized configuration runs ``--repeats`` times; the median proposals/s is reported with its
ratio to the naive loop. The naive scorer's sub-scores are compared with the vectorized ones on
the same proposals (they must agree exactly). Prints a Markdown table (machine, date); ``--out``
also writes the rows as JSON.

Usage: python benchmarks/bench_score.py [--proposals 256,1000,4096] [--agents 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from rap.perf import bench_score, synthetic_proposals, synthetic_scoring_scene
from rap.metrics.pdm_naive import naive_score_scene
from rap.metrics.pdms import PDMScorerConfig, score_scene


def naive_rate(num_proposals: int, num_agents: int, seed: int) -> tuple[float, float]:
    """(proposals/s of the naive loop, max |PDMS/EPDMS difference| against the vectorized scorer)."""
    rng = np.random.default_rng(seed)
    scene = synthetic_scoring_scene(rng, num_agents=num_agents)
    proposals = synthetic_proposals(scene, rng, num_proposals)
    cfg = PDMScorerConfig(human_penalty_filter=False)
    fast = score_scene(scene, proposals, config=cfg)
    start = time.perf_counter()
    slow = naive_score_scene(scene, proposals, fast.reference_states, config=cfg)
    seconds = time.perf_counter() - start
    diff = max(np.abs(slow["pdms"] - fast.pdms).max(), np.abs(slow["epdms"] - fast.epdms).max())
    return num_proposals / seconds, float(diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", default="256,1000,4096", help="comma-separated K per score_scene call")
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-proposals", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="optional JSON output path")
    args = parser.parse_args()

    rows = []
    naive, diff = naive_rate(args.naive_proposals, args.agents, args.seed)
    rows.append({"mode": "naive", "num_proposals": args.naive_proposals, "proposals_per_s": naive, "max_score_diff": diff})
    print(json.dumps(rows[-1]), flush=True)
    for k in (int(v) for v in args.proposals.split(",")):
        res = bench_score(num_proposals=k, num_agents=args.agents, repeats=args.repeats, seed=args.seed)
        rows.append({"mode": "vectorized", "num_proposals": k, "proposals_per_s": res["proposals_per_s"], "seconds": res["seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["vs_naive"] = row["proposals_per_s"] / naive
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "agents": args.agents,
        "repeats": args.repeats,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\n{meta['date']}, {meta['machine']}, Python {meta['python']}, numpy {meta['numpy']}, "
          f"{args.agents} agents (+5 other objects), median of {args.repeats} runs\n")
    print("| scorer | proposals per call | proposals/s | vs naive |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['num_proposals']} | {r['proposals_per_s']:.0f} | {r['vs_naive']:.0f}x |")
    print(f"\nnaive vs vectorized max |score difference| on the naive subset: {diff:.1e}")


if __name__ == "__main__":
    main()
