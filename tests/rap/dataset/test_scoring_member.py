"""The ``<key>.scoring.npz.zst`` member: written when a sample has a scoring context, decoded by
every reader (``record["scoring"]``, None for shards without it), damage named precisely."""

from __future__ import annotations

import dataclasses
import tarfile

import numpy as np
import pytest
import shapely

from rap.dataset.inspect import format_report, inspect_dataset
from rap.dataset.reader import ShardFormatError, ShardIndexDataset, collate, decode_record, iter_shard, iter_shard_members, record_to_sample, record_to_tensors
from rap.dataset.scoring import POSITION_STEP_M, PolygonRings, ScoringContext, encode
from rap.dataset.writer import ShardWriter, sample_members, write_shard
from rap.metrics.pdm_inputs import EgoState
from rap.trajectory import TrajectorySampling

SAMPLING = TrajectorySampling(8, 0.5)  # the dataset fixtures' target sampling


def tiny_context(target: np.ndarray, seed: int = 0) -> ScoringContext:
    """A straight 20 m wide road along +x, one lane, a car parked 30 m ahead, a pedestrian."""
    rng = np.random.default_rng(seed)
    mm = lambda v: np.rint(np.asarray(v) / POSITION_STEP_M).astype(np.int64)  # noqa: E731
    s = 51
    valid = np.ones((2, s), dtype=bool)
    valid[1, 40:] = False
    x = np.stack([np.full(s, 30.0), 5.0 + 0.1 * np.arange(s)])
    y = np.stack([np.full(s, 0.0), np.full(s, 6.0 + rng.uniform(0, 1))])
    return ScoringContext(
        ego=EgoState(0.0, 0.0, 0.0, vx=float(rng.uniform(5, 10))),
        sampling=SAMPLING,
        target=target,
        radius_m=80.0,
        speed_limit=13.9,
        object_ids=np.array([11, 12]),
        object_kinds=np.array([0, 1]),
        object_valid=valid,
        object_size=mm([[4.5, 0.6], [2.0, 0.6]]),
        object_velocity=mm([[0.0, 1.0], [0.0, 0.0]]),
        object_x=np.where(valid, mm(x), 0),
        object_y=np.where(valid, mm(y), 0),
        object_heading=np.zeros((2, s), dtype=np.int64),
        lane_ids=np.array([7]),
        lane_widths=np.array([3.5], dtype=np.float32),
        lane_sizes=np.array([2]),
        lane_xy=mm([[-20.0, 100.0], [0.0, 0.0]]),
        route_lane_ids=np.array([7]),
        centerline=np.concatenate([mm([[-20.0, 0.0, 100.0], [0.0, 0.0, 0.0]]), np.zeros((1, 3), np.int64)]),
        red_light_lane_ids=np.zeros(0, np.int64),
        red_light_sizes=np.zeros(0, np.int64),
        drivable=PolygonRings.from_geometry(shapely.box(-30.0, -10.0, 110.0, 10.0)),
        intersections=PolygonRings.empty(),
    )


def with_contexts(samples):
    return [dataclasses.replace(s, scoring=tiny_context(np.asarray(s.plan.target.poses), i)) for i, s in enumerate(samples)]


def test_member_is_written_and_read_back(tmp_path, make_samples):
    samples = with_contexts(make_samples(4))
    members = dict(sample_members(samples[0]))
    key = samples[0].plan.key
    assert members[f"{key}.scoring.npz.zst"] == encode(samples[0].scoring)
    assert sorted(members) == [name for name, _ in sample_members(samples[0])]  # still sorted
    write_shard(tmp_path / "a.tar", samples, fsync=False)
    write_shard(tmp_path / "b.tar", samples, fsync=False)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    records = list(iter_shard(tmp_path / "a.tar"))
    for sample, record in zip(samples, records):
        assert record["scoring"] == sample.scoring
        assert record_to_sample(record).scoring == sample.scoring
    t = SAMPLING.times_s
    straight = np.stack([7.0 * t, 0 * t, 0 * t], axis=1)  # reaches the car parked 30 m ahead
    s = records[0]["scoring"].score(np.stack([np.zeros((8, 3)), straight, straight + [0, 15.0, 0]]))
    np.testing.assert_array_equal(s["nc"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(s["dac"], [1.0, 1.0, 0.0])


def test_tensors_pass_contexts_through_and_collate_lists_them(tmp_path, make_samples):
    samples = with_contexts(make_samples(3))
    samples[2] = dataclasses.replace(samples[2], scoring=None)  # a sample without one
    write_shard(tmp_path / "s.tar", samples, fsync=False)
    tensors = [record_to_tensors(r) for r in iter_shard(tmp_path / "s.tar")]
    assert tensors[0]["scoring"] == samples[0].scoring and tensors[2]["scoring"] is None
    batch = collate(tensors)
    assert isinstance(batch["scoring"], list) and batch["scoring"][1] == samples[1].scoring and batch["scoring"][2] is None
    ds = ShardIndexDataset(tmp_path / "s.tar")
    assert ds[1]["scoring"] == samples[1].scoring


def test_shards_without_contexts_read_as_none(tmp_path, make_samples):
    write_shard(tmp_path / "old.tar", make_samples(3), fsync=False)
    with tarfile.open(tmp_path / "old.tar") as tar:
        assert not any(".scoring." in name for name in tar.getnames())
    assert all(r["scoring"] is None for r in iter_shard(tmp_path / "old.tar"))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: d[: len(d) // 3], "damaged zstd data"),
        (lambda d: b"this is no zstd frame", "not a zstd frame"),
        (lambda d: d[:-2] + bytes([d[-2] ^ 0x40, d[-1]]), "damaged zstd data"),
    ],
)
def test_damaged_member_names_shard_sample_and_member(tmp_path, make_samples, damage, reason):
    samples = with_contexts(make_samples(2))
    path = tmp_path / "bad.tar"
    with ShardWriter(path, fsync=False) as writer:
        for sample in samples:
            members = sample_members(sample)
            members = [(n, damage(d) if n.endswith(".scoring.npz.zst") and sample is samples[1] else d) for n, d in members]
            writer.add_members(sample.plan.key, members, sample.plan.kind.value)
    key = samples[1].plan.key
    with pytest.raises(ShardFormatError, match=rf"{path}: sample '{key}': member {key}\.scoring\.npz\.zst: {reason}"):
        list(iter_shard(path))
    # rap inspect reports it as a problem and goes on
    result = inspect_dataset(tmp_path)
    assert result["samples_read"] == 1 and len(result["problems"]) == 1 and f"{key}.scoring.npz.zst" in result["problems"][0]


def test_unknown_scoring_member_is_refused(tmp_path, make_sample):
    sample = with_contexts([make_sample(0)])[0]
    fields = {name.split(".", 1)[1]: data for name, data in sample_members(sample)}
    fields["scoring.npz.gz"] = fields.pop("scoring.npz.zst")
    with pytest.raises(ShardFormatError, match=r"member .*\.scoring\.npz\.gz: unknown scoring member"):
        decode_record(sample.plan.key, fields, where="x.tar")


def test_inspect_counts_contexts(tmp_path, make_samples):
    samples = with_contexts(make_samples(3))
    samples[0] = dataclasses.replace(samples[0], scoring=None)
    write_shard(tmp_path / "shard-000000.tar", samples, fsync=False)
    result = inspect_dataset(tmp_path)
    assert result["scoring_contexts"] == 2 and not result["problems"]
    assert "scoring contexts: 2 of 3 samples read" in format_report(result)
    assert [k for k, _ in iter_shard_members(tmp_path / "shard-000000.tar")] == [s.plan.key for s in samples]
