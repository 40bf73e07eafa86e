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
* ``one core``: what training needs — N different scenes, each prepared
  (``prepare_scene``) and their K proposals scored, on one core (a child process pinned to CPU 0
  with OMP/OpenBLAS/MKL at one thread): all N scenes in one ``score_scenes`` call when N > 1 and
  the code has it (``score_scene`` per scene otherwise); reports scenes/s and proposals/s for each
  ``--core-configs`` entry. With ``--baseline REF`` the same loop also runs on the code of git
  revision REF (its ``rap/`` and ``rasterizer/`` extracted with ``git archive``), or with
  ``--baseline-path DIR`` on a copy of that code in DIR (``DIR/rap``, ``DIR/rasterizer``),
  alternating with the working tree ``--rounds`` times, and the table gives the ratio (median of
  rounds). Each child also reports scenes/s in CPU time (its fastest pass by ``process_time``), which
  a VM whose vCPUs are shared with other guests disturbs less than wall time; the table gives that
  ratio too.

Each vectorized configuration runs ``--repeats`` times; the median proposals/s is reported with its
ratio to the naive loop. The naive scorer's sub-scores are compared with the vectorized ones on
the same proposals (they must agree exactly). Prints Markdown tables (machine, date); ``--out``
also writes the rows as JSON.

Usage: python benchmarks/bench_score.py [--proposals 256,1000,4096] [--agents 20] [--repeats 5]
       [--core-configs 64x50,1000x1] [--baseline REF | --baseline-path DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from rap.perf import bench_score, synthetic_proposals, synthetic_scoring_scene
from rap.metrics.pdm_naive import naive_score_scene
from rap.metrics.pdms import PDMScorerConfig, score_scene

REPO = Path(__file__).resolve().parents[1]

ONE_CORE_SNIPPET = """
import json, os, statistics, sys, time
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})
import numpy as np
import rap.metrics.pdms as pdms
from rap.metrics.pdms import PDMScorerConfig, prepare_scene, score_scene
from rap.perf import synthetic_proposals, synthetic_scoring_scene
k, n, agents, repeats, seed = (int(v) for v in sys.argv[1:6])
batched = n > 1 and hasattr(pdms, "score_scenes")
scenes, proposals = [], []
for i in range(n):
    rng = np.random.default_rng(seed + i)
    scenes.append(synthetic_scoring_scene(rng, num_agents=agents))
    proposals.append(synthetic_proposals(scenes[-1], rng, k))
cfg = PDMScorerConfig()
score_scene(scenes[0], proposals[0], config=cfg)
seconds, cpu = [], []
for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    if batched:
        results = pdms.score_scenes(scenes, proposals, config=cfg, prepared=[prepare_scene(s, cfg) for s in scenes])
    else:
        results = [score_scene(s, p, config=cfg, prepared=prepare_scene(s, cfg)) for s, p in zip(scenes, proposals)]
    seconds.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
median = statistics.median(seconds)
print(json.dumps({"scenes_per_s": n / median, "proposals_per_s": n * k / median, "batched": batched, "cpu_scenes_per_s": n / min(cpu),
                  "mean_epdms": float(np.mean([r.epdms.mean() for r in results]))}))
"""


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


def one_core_rate(code_root: Path, k: int, n: int, agents: int, repeats: int, seed: int) -> dict:
    """The one-core scenes loop on the ``rap`` package under ``code_root``, in a child process."""
    env = dict(os.environ, PYTHONPATH=str(code_root), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", ONE_CORE_SNIPPET, str(k), str(n), str(agents), str(repeats), str(seed)],
        env=env, cwd=code_root, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def extract_revision(ref: str, into: Path) -> str:
    """``rap/`` and ``rasterizer/`` of git revision ``ref`` under ``into``; returns its short hash."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref, "rap", "rasterizer"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True, capture_output=True, text=True).stdout.strip()


def one_core_rows(
    configs: list[tuple[int, int]], agents: int, repeats: int, seed: int, baseline: str | None, rounds: int, baseline_path: Path | None = None
) -> tuple[list[dict], str | None]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_root = None
        base_hash = None
        if baseline_path is not None:
            base_root = Path(baseline_path).resolve()
            if not (base_root / "rap").is_dir():
                raise SystemExit(f"--baseline-path: {base_root} has no rap/ package")
            base_hash = base_root.name
        elif baseline is not None:
            base_root = Path(tmp)
            base_hash = extract_revision(baseline, base_root)
        for k, n in configs:
            now, before = [], []
            for _ in range(max(rounds, 1) if base_root is not None else 1):
                now.append(one_core_rate(REPO, k, n, agents, repeats, seed))
                if base_root is not None:
                    before.append(one_core_rate(base_root, k, n, agents, repeats, seed))
            for label, runs in (("this tree", now), (f"before ({base_hash})", before)):
                if not runs:
                    continue
                row = {
                    "mode": "one core", "code": label, "num_proposals": k, "num_scenes": n,
                    "scenes_per_s": statistics.median(r["scenes_per_s"] for r in runs),
                    "proposals_per_s": statistics.median(r["proposals_per_s"] for r in runs),
                    "rounds": [r["scenes_per_s"] for r in runs],
                    "mean_epdms": runs[0]["mean_epdms"],
                    "batched": bool(runs[0].get("batched", False)),
                    "cpu_scenes_per_s": statistics.median(r["cpu_scenes_per_s"] for r in runs),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            if before:
                ratios = [a["scenes_per_s"] / b["scenes_per_s"] for a, b in zip(now, before)]
                rows[-2]["vs_before"] = statistics.median(ratios)
                rows[-1]["vs_before"] = 1.0
                cpu_ratios = [a["cpu_scenes_per_s"] / b["cpu_scenes_per_s"] for a, b in zip(now, before)]
                rows[-2]["vs_before_cpu"] = statistics.median(cpu_ratios)
                rows[-1]["vs_before_cpu"] = 1.0
    return rows, base_hash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", default="256,1000,4096", help="comma-separated K per score_scene call (empty: none)")
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-proposals", type=int, default=40, help="proposals for the naive loop (0: skip it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--core-configs", default="64x50,1000x1", help="one-core rows: comma-separated KxN (proposals per scene x scenes); empty: none")
    parser.add_argument("--baseline", default=None, help="git revision whose code the one-core rows are compared with")
    parser.add_argument("--baseline-path", type=Path, default=None, help="folder with a copy of the code to compare with (DIR/rap, DIR/rasterizer); instead of --baseline")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of this tree and the baseline per one-core row")
    parser.add_argument("--out", type=Path, default=None, help="optional JSON output path")
    args = parser.parse_args()

    rows = []
    naive, diff = float("nan"), float("nan")
    if args.naive_proposals > 0:
        naive, diff = naive_rate(args.naive_proposals, args.agents, args.seed)
        rows.append({"mode": "naive", "num_proposals": args.naive_proposals, "proposals_per_s": naive, "max_score_diff": diff})
        print(json.dumps(rows[-1]), flush=True)
    for k in (int(v) for v in args.proposals.split(",") if v):
        res = bench_score(num_proposals=k, num_agents=args.agents, repeats=args.repeats, seed=args.seed)
        rows.append({"mode": "vectorized", "num_proposals": k, "proposals_per_s": res["proposals_per_s"], "seconds": res["seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["vs_naive"] = row["proposals_per_s"] / naive
    configs = [tuple(int(v) for v in c.split("x")) for c in args.core_configs.split(",") if c]
    core, base_hash = one_core_rows(configs, args.agents, args.repeats, args.seed, args.baseline, args.rounds, args.baseline_path)
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "agents": args.agents,
        "repeats": args.repeats,
        "baseline": base_hash,
        "rounds": args.rounds,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows, "one_core": core}, indent=2) + "\n")
    print(f"\n{meta['date']}, {meta['machine']}, Python {meta['python']}, numpy {meta['numpy']}, "
          f"{args.agents} agents (+5 other objects), median of {args.repeats} runs\n")
    if rows:
        print("| scorer | proposals per call | proposals/s | vs naive |")
        print("|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['mode']} | {r['num_proposals']} | {r['proposals_per_s']:.0f} | {r['vs_naive']:.0f}x |")
        print(f"\nnaive vs vectorized max |score difference| on the naive subset: {diff:.1e}")
    if core:
        rounds = f", median of {args.rounds} alternating rounds" if base_hash else ""
        print(f"\none core (CPU 0, BLAS/OpenMP 1 thread), scene preparation included, median of {args.repeats} passes{rounds}\n")
        print("| code | proposals per scene | scenes | scenes/s | proposals/s | vs before | scenes/s (CPU time) | vs before (CPU time) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in core:
            ratio = f"{r['vs_before']:.2f}x" if "vs_before" in r else ""
            cpu_ratio = f"{r['vs_before_cpu']:.2f}x" if "vs_before_cpu" in r else ""
            print(f"| {r['code']} | {r['num_proposals']} | {r['num_scenes']} | {r['scenes_per_s']:.1f} | {r['proposals_per_s']:.0f} | {ratio} "
                  f"| {r['cpu_scenes_per_s']:.1f} | {cpu_ratio} |")


if __name__ == "__main__":
    main()
