"""Tests for rap.dataset.inspect: counts, ranges, contact sheet size, projection of the target."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
from PIL import Image

from rap.dataset.inspect import LABEL_HEIGHT, TARGET_COLOR, TILE_BEV_SIZE, TILE_GAP, TILE_VIEW_SIZE, draw_sample_tile, format_report, inspect_dataset
from rap.dataset.manifest import Manifest, write_manifest
from rap.dataset.sample import SampleKind
from rap.dataset.writer import sample_arrays, sample_metadata, shard_name, write_shard
from rap.trajectory import Trajectory


def test_inspect_counts_ranges_and_sheet(tmp_path, make_samples):
    entries, counts = [], Counter()
    for i in range(2):
        entry, c = write_shard(tmp_path / shard_name(i), make_samples(4, start=4 * i), fsync=False)
        entries.append(entry)
        counts += c
    write_manifest(tmp_path, Manifest(toolkit_version="0.1.0", seed=0, config={}, codec="zst", counts=dict(counts), shards=tuple(entries), rejected={"off_road": 2}))
    (tmp_path / (shard_name(2) + ".tmp")).write_bytes(b"partial")  # a killed run's leftover

    out = tmp_path / "sheet.png"
    result = inspect_dataset(tmp_path, out, per_kind=2)
    assert result["counts"] == {"cross_agent": 2, "ego": 3, "recovery": 3}
    assert result["samples_read"] == 8 and result["shards"] == 2
    assert result["manifest"]["counts"] == result["counts"] and result["manifest"]["rejected"] == {"off_road": 2}
    assert result["cameras"] == {"CAM_L0": "64x32", "CAM_F0": "64x32", "CAM_R0": "64x32"} and result["has_bev"]
    speed = result["ranges"]["speed_mps"]
    assert 0.0 <= speed["min"] <= speed["mean"] <= speed["max"] <= 15.0
    assert set(result["ranges"]["perturbation"]) == {"dx", "dy", "dheading", "speed_scale", "accel_scale"}
    assert result["ranges"]["history_len"] == {"min": 4.0, "max": 4.0, "mean": 4.0}

    tile_w = TILE_VIEW_SIZE[0] + TILE_GAP + TILE_BEV_SIZE
    tile_h = max(TILE_VIEW_SIZE[1], TILE_BEV_SIZE) + LABEL_HEIGHT
    expected = (2 * tile_w + 2, 3 * tile_h + 2 * 2)  # 2 tiles per kind, 3 kinds, 2 px gaps
    with Image.open(out) as sheet:
        assert sheet.size == expected and sheet.mode == "RGB"
    assert result["contact_sheet_size"] == list(expected)
    assert "ego 3" in format_report(result)

    limited = inspect_dataset(tmp_path, max_samples=3)
    assert sum(limited["counts"].values()) == 3 and limited["contact_sheet"] is None


def test_target_straight_ahead_projects_to_the_middle_of_the_front_view(make_sample):
    s = make_sample(0)
    poses = np.stack([np.linspace(4.0, 32.0, 8), np.zeros(8), np.zeros(8)], axis=1)
    plan = dataclasses.replace(s.plan, target=Trajectory(poses, s.plan.target.sampling))
    s = dataclasses.replace(s, plan=plan, images={cam: np.zeros_like(img) for cam, img in s.images.items()})
    record = {"key": plan.key, "meta": sample_metadata(s), "images": s.images, "bev": None, **sample_arrays(s)}
    tile = draw_sample_tile(record)
    assert tile.shape == (max(TILE_VIEW_SIZE[1], TILE_BEV_SIZE), TILE_VIEW_SIZE[0] + TILE_GAP + TILE_BEV_SIZE, 3)
    view = tile[:, : TILE_VIEW_SIZE[0]]
    rows, cols = np.nonzero(np.all(view == TARGET_COLOR, axis=-1))
    assert len(cols) > 20
    # Straight ahead on the ground: centred columns, below the horizon (lower half of the image).
    assert abs(cols.mean() - TILE_VIEW_SIZE[0] / 2) < 12
    assert rows.min() > TILE_VIEW_SIZE[1] / 2 - 2
    bev = tile[:, TILE_VIEW_SIZE[0] + TILE_GAP :]
    bev_cols = np.nonzero(np.all(bev == TARGET_COLOR, axis=-1))[1]
    assert len(bev_cols) > 20 and abs(bev_cols.mean() - TILE_BEV_SIZE / 2) < 4  # on the centre line, x forward = up


def test_inspect_without_manifest_and_with_png_codec(tmp_path, make_sample):
    write_shard(tmp_path / shard_name(0), [make_sample(i, SampleKind.RECOVERY) for i in range(3)], "png", fsync=False)
    result = inspect_dataset(tmp_path, tmp_path / "s.png", per_kind=3)
    assert result["manifest"] is None and result["counts"] == {"recovery": 3}
    assert "no manifest.json" in format_report(result)
    with Image.open(tmp_path / "s.png") as sheet:
        assert sheet.size[1] == max(TILE_VIEW_SIZE[1], TILE_BEV_SIZE) + LABEL_HEIGHT
