"""Training throughput of `rap train`'s tiny planner on this machine, and its data loader alone.

Generates a small dataset in a temporary folder (``synthetic:N`` at the default 512x256 views,
the size `rap generate` writes by default), then, on the same data and config
(``configs/train/tiny.yaml``: views resized to 128x64 in the loader):

* ``loader``: the DataLoader alone (read, verify, decode, resize, collate) at the config's
  ``data.num_workers``, samples/s;
* ``train``: `rap train`'s loop (forward, online scorer targets, backward, AdamW) for
  ``--steps`` steps, samples/s as the loop reports it;
* ``loader / train``: how much faster the loader is than the loop it feeds (the loader must not
  be the bottleneck: >= 3);
* ``online``: online rasterization (``data.online=true``: the loader renders the samples with
  `rap generate`'s code) against reading shards stored at the same image size (the config's
  128x64), same sources and config, samples/s of each and their ratio (target >= 0.5); the
  online index's planning time (once per run, before training) is reported apart;
* ``scorer targets``: what the scorer loss costs per step outside the model: a batch of
  ``--scorer-batch`` samples (with scoring contexts, read from the generated shards) and
  ``--scorer-proposals`` proposals each scored for their targets
  (:func:`planners.scoring.scorer_targets`, scene preparation included) with
  ``train.scorer_workers`` = each of ``--scorer-workers``, samples/s and the ratio to 0 (this
  process alone) in the same run; the targets must be equal.

Prints a Markdown table (machine, date); ``--out`` also writes the rows as JSON.

Usage: python benchmarks/bench_train.py [--scenes 2] [--steps 30] [--workers 0,1] [--online-workers 0,2]
       [--scorer-workers 0,1] [--scorer-batch 64] [--scorer-proposals 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

from machine import cpu_name

import torch

REPO = Path(__file__).resolve().parents[1]


def loader_rate(cfg, steps: int, index=None) -> float:
    from planners.data import SampleDataset, StepBatchSampler, TrainingIndex, collate_samples

    index = index or TrainingIndex(cfg)
    sampler = StepBatchSampler(index.probabilities, cfg.train.seed, 0, steps, cfg.train.batch_size)
    loader = torch.utils.data.DataLoader(
        SampleDataset(index, "train", cfg), batch_sampler=sampler, collate_fn=collate_samples, num_workers=cfg.data.num_workers,
        prefetch_factor=4 if cfg.data.num_workers else None, multiprocessing_context="spawn" if cfg.data.online and cfg.data.num_workers else None,
    )  # fmt: skip
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch["key"])
    return n / (time.perf_counter() - t0)


def scorer_rates(data: Path, workers: list[int], batch: int, proposals: int, rounds: int = 5) -> list[dict]:
    """Scorer-target samples/s of one batch per ``train.scorer_workers`` value (median of
    ``rounds`` after one warm-up call, values alternated), with the targets checked equal."""
    import numpy as np

    from planners.scoring import ScorerPool, scorer_targets
    from rap.dataset.reader import iter_dataset

    records = []
    for record in iter_dataset(data, decode_images=False):
        if record.get("scoring") is not None:
            records.append(record)
        if len(records) == 4 * batch:
            break
    records = records[::4] if len(records) >= 4 * batch else records[:batch]
    contexts = [r["scoring"] for r in records[:batch]]
    rng = np.random.default_rng(0)
    plans = []
    for ctx in contexts:  # proposals around each target: speed and lateral spread growing with time
        target = np.asarray(ctx.target, dtype=np.float64)
        ramp = np.linspace(0.1, 1.0, target.shape[0])[None, :, None]
        plans.append(target[None] * np.array([1.0, 1.0, 1.0]) + rng.normal(0.0, 1.0, (proposals, 1, 3)) * np.array([2.0, 1.5, 0.1]) * ramp)
    poses = torch.from_numpy(np.stack(plans)).float()
    wanted = torch.ones(len(contexts))
    sampling = contexts[0].sampling
    pools = {w: ScorerPool(w) for w in workers}
    seconds: dict[int, list[float]] = {w: [] for w in workers}
    results = {}
    try:
        for w in workers:  # warm-up: worker start-up and compiled-kernel loading are not throughput
            results[w] = scorer_targets(contexts, poses, sampling, wanted, pool=pools[w])[0]
        for _ in range(rounds):
            for w in workers:
                fresh = [pickle_copy(c) for c in contexts]  # as from the loader: nothing prepared yet
                t0 = time.perf_counter()
                scorer_targets(fresh, poses, sampling, wanted, pool=pools[w])
                seconds[w].append(time.perf_counter() - t0)
    finally:
        for pool in pools.values():
            pool.close()
    base = workers[0]
    for w in workers:
        if not torch.equal(results[w], results[base]):
            raise SystemExit(f"scorer_workers={w}: targets differ from scorer_workers={base}")
    median = {w: sorted(s)[len(s) // 2] for w, s in seconds.items()}
    return [
        {"scorer_workers": w, "batch": len(contexts), "proposals": proposals, "samples_per_s": round(len(contexts) / median[w], 2), "vs_first": round(median[base] / median[w], 3)}
        for w in workers
    ]


def pickle_copy(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", default="0,1", help="data.num_workers values to measure")
    parser.add_argument("--online-workers", default="0,2", help="data.num_workers values of the online/shard comparison")
    parser.add_argument("--scorer-workers", default="0,1", help="train.scorer_workers values of the scorer-target rows (the first is the baseline)")
    parser.add_argument("--scorer-batch", type=int, default=64)
    parser.add_argument("--scorer-proposals", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from planners.config import TrainConfig
    from planners.train import train
    from rap.config import load_config
    from rap.generate import GenerateConfig, generate

    from planners.online import OnlineIndex

    rows, online_rows, scorer_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ds"
        generate(f"synthetic:{args.scenes}", data, GenerateConfig())
        pool_workers = [int(w) for w in args.scorer_workers.split(",") if w]
        if pool_workers:
            scorer_rows = scorer_rates(data, pool_workers, args.scorer_batch, args.scorer_proposals)
        tiny = load_config(TrainConfig, REPO / "configs" / "train" / "tiny.yaml", [])
        small = GenerateConfig(size=tuple(tiny.data.image_size))  # stored at the size the model reads
        small_data = Path(tmp) / "ds_small"
        generate(f"synthetic:{args.scenes}", small_data, small)
        for workers in (int(w) for w in args.online_workers.split(",") if w):
            common = [f"data.num_workers={workers}", "data.val_fraction=0"]
            shard_cfg = load_config(TrainConfig, REPO / "configs" / "train" / "tiny.yaml", [f"data.datasets=[{small_data}]", *common])
            online_cfg = load_config(TrainConfig, REPO / "configs" / "train" / "tiny.yaml", ["data.online=true", f"data.sources=[synthetic:{args.scenes}]", f"data.generate.size={list(small.size)}", *common])
            t0 = time.perf_counter()
            index = OnlineIndex(online_cfg)
            plan_s = time.perf_counter() - t0
            shard_rate, online_rate = loader_rate(shard_cfg, args.steps), loader_rate(online_cfg, args.steps, index)
            online_rows.append({"workers": workers, "image_size": list(small.size), "shard_samples_per_s": round(shard_rate, 2), "online_samples_per_s": round(online_rate, 2), "online_over_shards": round(online_rate / shard_rate, 3), "plan_s_per_scene": round(plan_s / args.scenes, 2)})
        for workers in (int(w) for w in args.workers.split(",") if w):
            overrides = [f"data.datasets=[{data}]", f"data.num_workers={workers}", f"train.max_steps={args.steps}", "train.val_every=100000", "train.checkpoint_every=100000", "data.val_fraction=0"]
            cfg = load_config(TrainConfig, REPO / "configs" / "train" / "tiny.yaml", overrides)
            loader = loader_rate(cfg, args.steps)
            result = train(cfg, Path(tmp) / f"run{workers}")
            rows.append({"workers": workers, "loader_samples_per_s": round(loader, 2), "train_samples_per_s": result["samples_per_s"], "loader_over_train": round(loader / result["samples_per_s"], 2), "batch_size": cfg.train.batch_size, "image_size": list(cfg.data.image_size), "threads": torch.get_num_threads()})
    stamp = f"{cpu_name()}, {torch.get_num_threads()} torch threads, {dt.date.today().isoformat()}"
    print(f"\n### rap train tiny ({stamp})\n")
    if rows:
        print("| data.num_workers | loader samples/s | train samples/s | loader / train |")
        print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['loader_samples_per_s']:.1f} | {r['train_samples_per_s']:.1f} | {r['loader_over_train']:.1f}x |")
    if online_rows:
        print("\n| data.num_workers | shards at 128x64 samples/s | online samples/s | online / shards | planning s/scene |")
        print("|---:|---:|---:|---:|---:|")
    for r in online_rows:
        print(f"| {r['workers']} | {r['shard_samples_per_s']:.1f} | {r['online_samples_per_s']:.1f} | {r['online_over_shards']:.2f} | {r['plan_s_per_scene']:.1f} |")
    if scorer_rows:
        print("\n| train.scorer_workers | samples per batch | proposals | scorer-target samples/s | vs first |")
        print("|---:|---:|---:|---:|---:|")
        for r in scorer_rows:
            print(f"| {r['scorer_workers']} | {r['batch']} | {r['proposals']} | {r['samples_per_s']:.1f} | {r['vs_first']:.2f}x |")
    for r in rows + online_rows + scorer_rows:
        print(json.dumps(r, sort_keys=True))
    if args.out:
        args.out.write_text(json.dumps({"machine": stamp, "rows": rows, "online": online_rows, "scorer": scorer_rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
