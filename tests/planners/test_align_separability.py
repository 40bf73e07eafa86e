"""Raster-to-real alignment does what it is for: with it on, a domain classifier trained afterwards
on the frozen planner's features separates held-out real (photo) and raster views worse than
without it (issue #11).

The setup (a small seeded run on the demo data, synthetic towns):

* data: ``synthetic:4`` at 64x32, paired photo/raster samples beside the ego samples (every 2nd
  log step); the training split holds 3 towns, one town is held out by the usual scene split.
* planners: the tiny RAP planner (resnet18 from scratch, ``d_model=32``), 40 steps of batch 8,
  ``data.kind_fractions.paired=0.5``; once without alignment, once with
  ``align.spatial_weight=1 align.global_weight=1`` — far larger than the method's 0.002 / 0.001,
  which over so few steps barely moves the features (measured: no reduction).
* features: what the alignment acts on, the projected backbone features
  (``model.images.features``), every camera and patch as one row (D=32), of the real and the
  raster view of each paired sample.
* probe: :func:`planners.align.domain_probe`'s L2-regularised logistic regression (scale
  invariant), fitted on the training towns' pairs, scored on the held-out town's pairs: held-out
  BCE (0.693 = chance).

Measured here (2026-12-02; held-out probe BCE off -> on, LDA d' in brackets): seed 0
0.361 -> 0.672 (3.08 -> 0.49), seed 1 0.482 -> 0.622 (3.25 -> 1.13), seed 2 0.134 -> 0.618
(9.18 -> 2.11); mean 0.326 -> 0.637. With the photo look of a few hours earlier, seeds 0-4:
0.095 -> 0.60, 0.41 -> 0.54, 0.40 -> 0.66, 0.014 -> 0.63, 0.19 -> 0.43. The unaligned baseline
varies a lot with the seed (and with the photo look's bytes), so the test compares per seed and
asserts the margin on the mean over three seeds. The LDA d' (whitened, so it also counts a domain
difference hidden in low-variance directions) is printed, not asserted: it fell in every seed of
this setup but rose in one seed of a variant without the scorer losses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from planners.align import domain_probe
from planners.checkpoint import load_checkpoint
from planners.data import SampleDataset, TrainingIndex, collate_samples
from planners.model import build_model
from planners.train import train

from .conftest import tiny_config

ALIGN = ("align.spatial_weight=1", "align.global_weight=1")
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def towns_paired(tmp_path_factory) -> Path:
    """synthetic:4 at 64x32: ego samples and their paired photo/raster twins, every 2nd step."""
    from rap.generate import GenerateConfig, generate

    out = tmp_path_factory.mktemp("separability") / "ds"
    cfg = GenerateConfig.model_validate({"size": [64, 32], "step_stride": 2, "recovery": {"enabled": False}, "cross_agent": {"enabled": False}, "paired": {"enabled": True}})
    generate("synthetic:4", out, cfg)
    return out


@torch.no_grad()
def _pair_tokens(model, cfg, index: TrainingIndex, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, D) projected backbone features of the split's paired real views and of their
    rasters: every camera and patch one row."""
    data = SampleDataset(index, split, cfg)
    rows = [i for i, s in enumerate(data.samples) if s.kind == "paired"]
    assert len(rows) >= 20, (split, len(rows))
    real, raster = [], []
    for k in range(0, len(rows), 32):
        batch = collate_samples([data[i] for i in rows[k : k + 32]])
        real.append(model.images.features(batch["images"]).flatten(0, 2))
        raster.append(model.images.features(batch["paired_raster"]).flatten(0, 2))
    return torch.cat(real), torch.cat(raster)


def _separability(dataset: Path, out: Path, seed: int, *align: str) -> dict[str, float]:
    """Train a tiny planner (with the given align.* overrides), freeze it, probe its features."""
    cfg = tiny_config(
        dataset, "data.kind_fractions.paired=0.5", "train.batch_size=8", "train.max_steps=40", "train.log_every=40",
        "train.val_every=1000", "train.checkpoint_every=1000", f"train.seed={seed}", *align,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic on any machine
    try:
        train(cfg, out)
        index = TrainingIndex(cfg)
        assert index.scenes("val") >= 1 and index.counts["val"].get("paired", 0) > 0
        model = build_model(cfg.model, num_cameras=len(cfg.data.cameras), image_size=tuple(cfg.data.image_size), history_len=cfg.data.history_poses, num_poses=index.sampling.num_poses, interval_s=index.sampling.interval_s)
        model.load_state_dict(load_checkpoint(out / "last.pt")["model"])
        model.eval()  # frozen: the probe only reads it
        return domain_probe(*_pair_tokens(model, cfg, index, "train"), *_pair_tokens(model, cfg, index, "val"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_alignment_makes_held_out_domains_less_separable_across_seeds(towns_paired, tmp_path):
    """Per seed the probe separates the held-out domains worse with alignment than without; on
    the mean over the seeds by a clear margin (measured 0.33 -> 0.64; chance is 0.693)."""
    off = {seed: _separability(towns_paired, tmp_path / f"off{seed}", seed) for seed in SEEDS}
    on = {seed: _separability(towns_paired, tmp_path / f"on{seed}", seed, *ALIGN) for seed in SEEDS}
    for seed in SEEDS:
        print(f"seed {seed}: probe BCE {off[seed]['probe_bce']:.3f} -> {on[seed]['probe_bce']:.3f}, d' {off[seed]['dprime']:.2f} -> {on[seed]['dprime']:.2f}")
    for seed in SEEDS:
        assert on[seed]["probe_bce"] > off[seed]["probe_bce"], (seed, off[seed], on[seed])
    mean_off = sum(r["probe_bce"] for r in off.values()) / len(SEEDS)
    mean_on = sum(r["probe_bce"] for r in on.values()) / len(SEEDS)
    assert mean_on > mean_off + 0.15 and mean_on > 0.45, (off, on)
