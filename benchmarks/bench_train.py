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
  online index's planning time (once per run, before training) is reported apart.

Prints a Markdown table (machine, date); ``--out`` also writes the rows as JSON.

Usage: python benchmarks/bench_train.py [--scenes 2] [--steps 30] [--workers 0,1] [--online-workers 0,2] [--out FILE]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", default="0,1", help="data.num_workers values to measure")
    parser.add_argument("--online-workers", default="0,2", help="data.num_workers values of the online/shard comparison")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from planners.config import TrainConfig
    from planners.train import train
    from rap.config import load_config
    from rap.generate import GenerateConfig, generate

    from planners.online import OnlineIndex

    rows, online_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ds"
        generate(f"synthetic:{args.scenes}", data, GenerateConfig())
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
    print("| data.num_workers | loader samples/s | train samples/s | loader / train |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['loader_samples_per_s']:.1f} | {r['train_samples_per_s']:.1f} | {r['loader_over_train']:.1f}x |")
    print("\n| data.num_workers | shards at 128x64 samples/s | online samples/s | online / shards | planning s/scene |")
    print("|---:|---:|---:|---:|---:|")
    for r in online_rows:
        print(f"| {r['workers']} | {r['shard_samples_per_s']:.1f} | {r['online_samples_per_s']:.1f} | {r['online_over_shards']:.2f} | {r['plan_s_per_scene']:.1f} |")
    for r in rows + online_rows:
        print(json.dumps(r, sort_keys=True))
    if args.out:
        args.out.write_text(json.dumps({"machine": stamp, "rows": rows, "online": online_rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
