"""Raster-to-real alignment in `rap train`: paired samples in the batches, the spatial and global
losses, the domain classifier checkpointed and resumed, and clear errors when it cannot run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from planners.checkpoint import load_checkpoint
from planners.data import DataError, SampleDataset, TrainingIndex, collate_samples
from planners.features import resize_image
from planners.train import train

from .conftest import tiny_config

ALIGN = ("data.kind_fractions.paired=0.5", "align.spatial_weight=0.002", "align.global_weight=0.001")


def test_paired_samples_train_on_their_real_views_and_carry_their_rasters(paired_dataset):
    cfg = tiny_config(paired_dataset, "data.kind_fractions.paired=0.5")
    index = TrainingIndex(cfg)
    assert index.counts["train"]["paired"] > 0
    data = SampleDataset(index, "train", cfg)
    rows = [i for i, s in enumerate(index.train) if s.kind in ("paired", "ego")][:6]
    items = [data[i] for i in rows]
    batch = collate_samples(items)
    paired = [j for j, i in enumerate(rows) if index.train[i].kind == "paired"]
    assert paired and batch["paired_rows"].tolist() == paired
    assert batch["paired_raster"].shape == (len(paired), 3, 3, 32, 64)
    j = paired[0]
    record = index.record(index.train[rows[j]])
    for c, cam in enumerate(cfg.data.cameras):
        real = torch.from_numpy(resize_image(record["real_images"][cam], (64, 32))).permute(2, 0, 1)
        raster = torch.from_numpy(resize_image(record["images"][cam], (64, 32))).permute(2, 0, 1)
        assert torch.equal(batch["images"][j, c], real)  # the planner sees the camera-like view
        assert torch.equal(batch["paired_raster"][paired.index(j), c], raster)
        assert not torch.equal(real, raster)
    # Without paired samples in the fraction, none is drawn.
    no_paired = TrainingIndex(tiny_config(paired_dataset))
    kinds = np.array([s.kind for s in no_paired.train])
    assert float(no_paired.probabilities[kinds == "paired"].sum()) == 0.0


def test_training_with_alignment_logs_both_losses_and_resumes_to_the_same_weights(paired_dataset, tmp_path):
    cfg = tiny_config(paired_dataset, *ALIGN)
    result = train(cfg, tmp_path / "a")
    assert result["steps"] == 4
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    aligned = [r for r in rows if r.get("paired", 0) > 0]
    assert aligned, rows
    for r in aligned:
        assert r["loss_spatial"] > 0 and 0 < r["loss_global"] < 10 and 0 <= r["domain_acc"] <= 1
    payload = load_checkpoint(tmp_path / "a" / "last.pt")
    assert set(payload["domain_classifier"]) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert payload["domain_classifier"]["net.0.weight"].shape == (512, 32)  # hidden 512 on d_model features
    assert not any(k.startswith(("planner.", "classifier.")) for k in payload["model"])  # the planner's own keys: agents load it
    # Two steps, then resume to four: the same planner and classifier as the uninterrupted run.
    class Stop(Exception):
        pass

    def stop_at_3(row: dict) -> None:
        if row.get("step") == 3 and "loss" in row:  # after the step-2 checkpoint, before step 4's
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "b", on_log=stop_at_3)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2
    train(cfg, tmp_path / "b", resume=True)
    again = load_checkpoint(tmp_path / "b" / "last.pt")
    for part in ("model", "domain_classifier"):
        for key, value in payload[part].items():
            assert torch.equal(value, again[part][key]), (part, key)


def test_alignment_weights_change_training_only_when_on(paired_dataset, tmp_path):
    """Spatial alignment alone (no classifier) changes the weights; with both weights 0 the run
    equals one without the align section's losses (the rasters are not even encoded)."""
    off = train(tiny_config(paired_dataset, "data.kind_fractions.paired=0.5", "train.max_steps=2"), tmp_path / "off")
    spatial = train(tiny_config(paired_dataset, "data.kind_fractions.paired=0.5", "train.max_steps=2", "align.spatial_weight=1.0"), tmp_path / "spatial")
    a, b = load_checkpoint(tmp_path / "off" / "last.pt"), load_checkpoint(tmp_path / "spatial" / "last.pt")
    assert "domain_classifier" not in b
    assert not torch.equal(a["model"]["images.proj.weight"], b["model"]["images.proj.weight"])
    assert off["steps"] == spatial["steps"] == 2


def test_alignment_without_paired_samples_is_a_clear_error_at_start(tiny_dataset, paired_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"align: alignment needs paired samples in the batches; set data.kind_fractions.paired"):
        tiny_config(paired_dataset, "align.global_weight=0.001")
    with pytest.raises(ValueError, match="align: model.type=ego_mlp reads no images"):
        tiny_config(paired_dataset, "model.type=ego_mlp", "data.cameras=[]", *ALIGN)
    with pytest.raises(ValueError, match=r"align.front_camera=CAM_B0 is not one of data.cameras"):
        tiny_config(paired_dataset, *ALIGN, "align.front_camera=CAM_B0")
    with pytest.raises(DataError, match=r"data.datasets hold no paired training samples; write some with rap generate .* paired.enabled=true"):
        train(tiny_config(tiny_dataset, *ALIGN), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before training: no trace
