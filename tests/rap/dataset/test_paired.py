"""Paired samples (``paired.enabled=true``): each ego moment also as real-like (photo) views,
written as kind ``paired`` beside the raster views, read back as ``record["real_images"]``."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from rap.config import load_config
from rap.dataset.inspect import TILE_GAP, TILE_VIEW_SIZE, draw_sample_tile
from rap.dataset.manifest import read_manifest
from rap.dataset.reader import ShardFormatError, decode_record, iter_dataset, record_to_sample
from rap.dataset.sample import SampleKind
from rap.dataset.writer import sample_members
from rap.generate import GenerateConfig, generate

SMALL = ["size=[96,48]", "step_stride=40", "recovery.num_samples=1", "cross_agent.max_agents=1"]


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def paired_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paired") / "ds"
    generate("synthetic:1", out, load_config(GenerateConfig, None, SMALL + ["paired.enabled=true"]))
    return out


def test_every_ego_moment_has_a_paired_twin_with_photo_views(paired_run):
    manifest = read_manifest(paired_run)
    assert manifest.counts["paired"] == manifest.counts["ego"] > 0
    records = {r["key"]: r for r in iter_dataset(paired_run)}
    paired = [r for r in records.values() if r["meta"]["kind"] == "paired"]
    assert len(paired) == manifest.counts["paired"]
    for rec in paired:
        twin = records[rec["key"].replace("_paired_", "_ego_")]
        for name in ("target", "history", "viewer_pose"):
            assert np.array_equal(rec[name], twin[name])
        assert rec["meta"]["ego_status"] == twin["meta"]["ego_status"] and rec["meta"]["step"] == twin["meta"]["step"]
        assert rec["real_images"].keys() == rec["images"].keys() == twin["images"].keys()
        for cam in rec["images"]:
            assert np.array_equal(rec["images"][cam], twin["images"][cam])  # the raster side is the ego's view
            real = rec["real_images"][cam]
            assert real.shape == rec["images"][cam].shape
            sky = real[:8].reshape(-1, 3).astype(float)
            assert sky.mean() > 90 and sky[:, 2].mean() > sky[:, 0].mean()  # a camera-like sky, not the raster's black
        assert rec["scoring"] is not None
    assert all("real_images" not in r for r in records.values() if r["meta"]["kind"] != "paired")


def test_paired_generation_is_deterministic_and_leaves_other_samples_as_they_were(paired_run, tmp_path):
    again = tmp_path / "again"
    generate("synthetic:1", again, load_config(GenerateConfig, None, SMALL + ["paired.enabled=true"]))
    assert _digest(again) == _digest(paired_run)
    plain = tmp_path / "plain"
    generate("synthetic:1", plain, load_config(GenerateConfig, None, SMALL))
    assert read_manifest(plain).counts["paired"] == 0
    with_pairs = {r["key"]: sample_members(record_to_sample(r)) for r in iter_dataset(paired_run) if r["meta"]["kind"] != "paired"}
    without = {r["key"]: sample_members(record_to_sample(r)) for r in iter_dataset(plain)}
    assert with_pairs == without  # the same bytes for every non-paired sample


def test_paired_members_are_checked(paired_run):
    rec = next(r for r in iter_dataset(paired_run) if r["meta"]["kind"] == "paired")
    sample = record_to_sample(rec)
    members = dict(sample_members(sample))
    key = rec["key"]
    real = [m for m in members if ".real." in m]
    assert len(real) == len(rec["images"])
    fields = {m[len(key) + 1 :]: data for m, data in members.items()}
    del fields[real[0][len(key) + 1 :]]
    with pytest.raises(ShardFormatError, match=r"missing member .*\.real\.npy\.zst"):
        decode_record(key, fields)
    with pytest.raises(ValueError, match="a ego sample cannot have real_images"):
        sample_members(dataclasses.replace(sample, plan=dataclasses.replace(sample.plan, kind=SampleKind.EGO)))
    with pytest.raises(ValueError, match="a paired sample needs real_images"):
        sample_members(dataclasses.replace(sample, real_images=None))


def test_inspect_shows_a_pair_side_by_side(paired_run):
    rec = next(r for r in iter_dataset(paired_run) if r["meta"]["kind"] == "paired")
    tile = draw_sample_tile(rec)
    w, h = TILE_VIEW_SIZE
    assert tile.shape == (h, 2 * w + TILE_GAP, 3)
    left, right = tile[:, :w].astype(float), tile[:, w + TILE_GAP :].astype(float)
    assert right[: h // 4].mean() > left[: h // 4].mean() + 40  # the photo's sky beside the raster's black


def test_training_draws_paired_samples_only_when_asked(paired_run):
    from planners.config import TrainConfig
    from planners.data import TrainingIndex

    cfg = load_config(TrainConfig, None, [f"data.datasets=[{paired_run}]", "data.val_fraction=0"])
    index = TrainingIndex(cfg)
    manifest = read_manifest(paired_run)
    assert len(index.train) == manifest.num_samples
    assert index.counts["train"]["paired"] == manifest.counts["paired"]
    kinds = np.array([s.kind for s in index.train])
    assert float(index.probabilities[kinds == "paired"].sum()) == 0.0  # default data.kind_fractions.paired=0
    asked = TrainingIndex(load_config(TrainConfig, None, [f"data.datasets=[{paired_run}]", "data.val_fraction=0", "data.kind_fractions.paired=0.25"]))
    share = float(asked.probabilities[kinds == "paired"].sum())
    assert share == pytest.approx(0.25 / (0.25 + sum(cfg.data.kind_fractions.of(k) for k in set(kinds) - {"paired"})))


FRAME = Path(__file__).resolve().parents[3] / "data" / "waymo" / "perception_frame_1024360143612057520.tfrecord"
WOMD = FRAME.parent / "womd_scenario_637f20cafde22ff8.tfrecord"


def test_a_waymo_perception_frame_pairs_its_stored_jpegs_with_rasters_of_its_labels(tmp_path):
    from rap.dataset.reader import iter_shard_members
    from rap.sources.waymo_frame import load_frame

    out = tmp_path / "frames"
    result = generate(f"waymo-frame:{FRAME}", out, GenerateConfig())
    assert result.exit_code == 0 and read_manifest(out).counts["paired"] == 1 == result.samples
    frame = load_frame(FRAME)
    (rec,) = list(iter_dataset(out))
    assert rec["meta"]["kind"] == "paired" and rec["meta"]["has_target"] is False
    assert set(rec["real_images"]) == set(rec["images"]) == set(frame.cameras)
    (shard,) = sorted(out.glob("shard-*.tar"))
    (key, members), = list(iter_shard_members(shard))
    for cam in frame.cameras:
        assert members[f"{cam}.real.jpg"] == frame.jpegs[cam]  # stored as it came, never re-encoded
        assert rec["real_images"][cam].shape == rec["images"][cam].shape
    # The rasters show the labelled boxes where Waymo projects them.
    covered = []
    for cam, boxes in frame.projected_boxes.items():
        drawn = rec["images"][cam].max(axis=-1) > 0
        for x0, y0, x1, y1 in boxes.values():
            patch = drawn[int(max(y0, 0)) : int(y1) + 1, int(max(x0, 0)) : int(x1) + 1]
            if patch.size > 400:
                covered.append(patch.mean())
    assert len(covered) >= 5 and np.median(covered) > 0.6


def test_a_file_that_is_not_perception_frames_is_skipped_with_the_reason(tmp_path):
    result = generate(f"waymo-frame:{WOMD}", tmp_path / "bad", GenerateConfig())
    assert result.exit_code == 3
    (skipped,) = read_manifest(tmp_path / "bad").skipped
    assert str(WOMD) in skipped.source and skipped.reason


def test_frames_with_a_corrupt_image_or_a_missing_calibration_are_skipped_and_counted(tmp_path):
    from waymo_open_dataset import dataset_pb2

    from rap.sources.tfrecord import read_records, write_records

    (good,) = read_records(FRAME)

    def frame_message():
        msg = dataset_pb2.Frame()
        msg.ParseFromString(good)
        return msg

    bad_jpeg, no_calibration, no_image = frame_message(), frame_message(), frame_message()
    bad_jpeg.images[0].image = b"not a jpeg"
    del no_calibration.context.camera_calibrations[1]
    del no_image.images[2]
    mixed = tmp_path / "mixed.tfrecord"
    write_records(mixed, [good] + [m.SerializeToString() for m in (bad_jpeg, no_calibration, no_image)])
    result = generate(f"waymo-frame:{mixed}", tmp_path / "out", GenerateConfig())
    assert result.exit_code == 3 and result.samples == 1  # the good frame is kept, the run goes on
    manifest = read_manifest(tmp_path / "out")
    assert manifest.counts["paired"] == 1
    skipped = {s.record: s.reason for s in manifest.skipped}
    assert sorted(skipped) == [1, 2, 3]
    assert "FRONT" in skipped[1] and "JPEG" in skipped[1]
    assert "calibration" in skipped[2] and str(mixed) in skipped[2]
    assert "SIDE_LEFT" in skipped[3] and "no image" in skipped[3]
