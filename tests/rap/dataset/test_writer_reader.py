"""Tests for rap.dataset.writer and rap.dataset.reader: deterministic atomic shards, exact read
back, readable without rap, crash leftovers ignored, DataLoader workers see every sample once."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rap.dataset.codec import ImageCodec
from rap.dataset.reader import (
    ShardDataset,
    ShardFormatError,
    ShardIndexDataset,
    collate,
    iter_dataset,
    iter_shard,
    list_shards,
    record_to_sample,
    summarize_shard,
)
from rap.dataset.writer import ShardWriter, sample_members, sha256_file, shard_name, write_shard

REPO_ROOT = Path(__file__).resolve().parents[3]


def _assert_same_sample(a, b) -> None:
    pa, pb = a.plan, b.plan
    for field in ("key", "scene_id", "source", "step", "kind", "agent_row", "agent_id", "ego_status", "perturbation"):
        assert getattr(pa, field) == getattr(pb, field), field
    np.testing.assert_array_equal(pa.viewer_pose, pb.viewer_pose)
    np.testing.assert_array_equal(pa.history, pb.history)
    np.testing.assert_array_equal(pa.target.poses, pb.target.poses)
    assert pa.target.sampling == pb.target.sampling
    assert list(a.images) == list(b.images)
    for cam in a.images:
        np.testing.assert_array_equal(a.images[cam], b.images[cam])
    assert a.cameras == b.cameras
    if a.bev is None:
        assert b.bev is None
    else:
        np.testing.assert_array_equal(a.bev, b.bev)


def test_sample_members_layout(make_sample):
    from rap.dataset.sample import SampleKind

    sample = make_sample(0, SampleKind.RECOVERY, with_bev=True)
    names = [name for name, _ in sample_members(sample, "png")]
    key = sample.plan.key
    assert names == sorted(names)
    assert names == [f"{key}.CAM_F0.png", f"{key}.CAM_L0.png", f"{key}.CAM_R0.png", f"{key}.bev.png", f"{key}.json", f"{key}.npz"]
    names = [name for name, _ in sample_members(sample)]
    assert f"{key}.CAM_F0.npy.zst" in names  # zst is the default


@pytest.mark.parametrize("codec", list(ImageCodec))
def test_shard_is_byte_identical_and_reads_back_exactly(tmp_path, make_samples, codec):
    samples = make_samples(5)
    e1, counts = write_shard(tmp_path / "a" / shard_name(0), samples, codec, fsync=False)
    e2, _ = write_shard(tmp_path / "b" / shard_name(0), make_samples(5), codec)
    assert e1.sha256 == e2.sha256 == sha256_file(tmp_path / "a" / shard_name(0))
    assert (tmp_path / "a" / shard_name(0)).read_bytes() == (tmp_path / "b" / shard_name(0)).read_bytes()
    assert e1.samples == 5 and e1.name == "shard-000000.tar"
    assert counts == Counter({"ego": 2, "recovery": 2, "cross_agent": 1})
    records = list(iter_shard(tmp_path / "a" / shard_name(0)))
    assert [r["key"] for r in records] == [s.plan.key for s in samples]
    for record, sample in zip(records, samples):
        _assert_same_sample(record_to_sample(record), sample)
    entry, kinds = summarize_shard(tmp_path / "a" / shard_name(0))
    assert entry == e1 and kinds == counts


def test_tar_headers_are_fixed(tmp_path, make_samples):
    entry, _ = write_shard(tmp_path / shard_name(0), make_samples(2), fsync=False)
    with tarfile.open(tmp_path / entry.name) as tar:
        members = tar.getmembers()
    assert len(members) == 2 * 6 - 1  # 3 cameras + json + npz, and one BEV
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) == (0, 0, 0, "", "", 0o644, tarfile.REGTYPE)


@pytest.mark.parametrize("codec", list(ImageCodec))
def test_shard_reads_without_rap(tmp_path, make_samples, codec):
    samples = make_samples(3)
    entry, _ = write_shard(tmp_path / shard_name(0), samples, codec, fsync=False)
    script = textwrap.dedent(
        """
        import io, json, sys, tarfile
        import numpy as np
        from PIL import Image
        out = {}
        with tarfile.open(sys.argv[1]) as tar:
            for m in tar:
                data = tar.extractfile(m).read()
                key, field = m.name.split(".", 1)
                rec = out.setdefault(key, {})
                if field == "json":
                    rec["meta"] = json.loads(data)
                elif field == "npz":
                    rec["target"] = np.load(io.BytesIO(data))["target"]
                elif field.endswith(".png"):
                    rec[field] = np.asarray(Image.open(io.BytesIO(data)))
                elif field.endswith(".npy.zst"):
                    import zstandard
                    rec[field] = np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(data)))
        assert not any(name == "rap" or name.startswith("rap.") for name in sys.modules)
        for key, rec in out.items():
            meta = rec["meta"]
            image = rec[meta["images"]["CAM_F0"]]
            print(key, meta["kind"], image.shape, image.dtype, round(float(image.astype(np.int64).sum())), rec["target"].shape, repr(float(rec["target"][-1, 0])))
        """
    )
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path / entry.name)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    for line, s in zip(lines, samples):
        img = s.images["CAM_F0"]
        expect = f"{s.plan.key} {s.plan.kind.value} {img.shape} uint8 {int(img.astype(np.int64).sum())} (8, 3) {float(s.plan.target.poses[-1, 0])!r}"
        assert line == expect


_KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from conftest import build_samples
from rap.dataset.writer import ShardWriter
writer = ShardWriter(sys.argv[1])
for s in build_samples(4):
    writer.add(s)
writer._fh.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_writer_leaves_tmp_that_readers_ignore_and_reruns_overwrite(tmp_path, make_samples):
    ref, _ = write_shard(tmp_path / "ref" / shard_name(1), make_samples(4), fsync=False)
    out = tmp_path / "out"
    write_shard(out / shard_name(0), make_samples(3, start=10), fsync=False)
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out / shard_name(1)), str(Path(__file__).parent)], cwd=REPO_ROOT, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    tmp = out / (shard_name(1) + ".tmp")
    assert tmp.is_file() and tmp.stat().st_size > 0 and not (out / shard_name(1)).exists()
    assert list_shards(out) == [out / shard_name(0)]
    assert len(list(iter_dataset(out))) == 3
    assert sum(1 for _ in ShardDataset(out)) == 3
    # Rerun: the leftover is truncated and rewritten; same bytes as an uninterrupted run.
    entry, _ = write_shard(out / shard_name(1), make_samples(4), fsync=False)
    assert entry.sha256 == ref.sha256 == sha256_file(out / shard_name(1))
    assert not tmp.exists()
    assert len(list(iter_dataset(out))) == 7


def test_exception_aborts_and_removes_tmp(tmp_path, make_samples):
    path = tmp_path / shard_name(0)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(path) as writer:
            writer.add(make_samples(1)[0])
            raise RuntimeError("boom")
    assert not path.exists() and not (tmp_path / (shard_name(0) + ".tmp")).exists()


def test_writer_rejects_bad_input(tmp_path, make_sample):
    import dataclasses

    s = make_sample(0)
    with ShardWriter(tmp_path / shard_name(0), fsync=False) as writer:
        writer.add(s)
        with pytest.raises(ValueError, match="duplicate sample key"):
            writer.add(s)
    bad_key = dataclasses.replace(s, plan=dataclasses.replace(s.plan, key="a.b"))
    with pytest.raises(ValueError, match="no dots or slashes"):
        sample_members(bad_key)
    bad_image = dataclasses.replace(s, images={"CAM_F0": np.zeros((4, 4), np.uint8)})
    with pytest.raises(ValueError, match=r"images\['CAM_F0'\] must be \(H, W, 3\) uint8"):
        sample_members(bad_image)
    no_record = dataclasses.replace(s, images={"CAM_X": s.images["CAM_F0"]})
    with pytest.raises(ValueError, match="no camera record"):
        sample_members(no_record)
    with pytest.raises(ValueError, match="must end in .tar"):
        ShardWriter(tmp_path / "x.zip")


def test_corrupt_shard_error_names_the_file(tmp_path, make_samples):
    entry, _ = write_shard(tmp_path / shard_name(0), make_samples(2), fsync=False)
    path = tmp_path / entry.name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ShardFormatError, match=str(path)):
        list(iter_shard(path))


def _write_dataset(root: Path, make_samples, shards: int = 4, per_shard: int = 3) -> list[str]:
    keys = []
    for i in range(shards):
        samples = make_samples(per_shard, start=i * per_shard)
        write_shard(root / shard_name(i), samples, fsync=False)
        keys += [s.plan.key for s in samples]
    return keys


@pytest.mark.parametrize("shuffle_buffer", [0, 4])
def test_dataloader_workers_see_every_sample_once(tmp_path, make_samples, shuffle_buffer):
    keys = _write_dataset(tmp_path, make_samples)
    ds = ShardDataset(tmp_path, shuffle_buffer=shuffle_buffer, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    seen = []
    for batch in loader:
        b = len(batch["key"])
        assert batch["images"].shape == (b, 3, 3, 32, 64) and batch["images"].dtype == torch.uint8
        assert batch["target"].shape == (b, 8, 3) and batch["target"].dtype == torch.float32
        assert batch["history"].shape == (b, 4, 3) and batch["history_valid"].all()
        assert batch["ego_status"].shape == (b, 5) and batch["command"].dtype == torch.int64
        seen += batch["key"]
    assert sorted(seen) == sorted(keys) and len(seen) == len(set(seen))
    again = [k for batch in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate) for k in batch["key"]]
    assert again == seen  # same seed and epoch, same order
    if shuffle_buffer:
        ds.set_epoch(1)
        other = [k for batch in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate) for k in batch["key"]]
        assert sorted(other) == sorted(keys) and other != seen


def test_shard_split_is_disjoint_across_ranks_and_workers(tmp_path, make_samples):
    _write_dataset(tmp_path, make_samples, shards=5, per_shard=1)
    parts = [ShardDataset(tmp_path, rank=r, world_size=2).shards_for(w, 2) for r in range(2) for w in range(2)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == list_shards(tmp_path) and len(set(flat)) == 5


def test_tensors_values_and_float_images(tmp_path, make_samples):
    samples = make_samples(3)
    write_shard(tmp_path / shard_name(0), samples, fsync=False)
    items = list(ShardDataset(tmp_path, image_dtype="float32", cameras=["CAM_F0"]))
    s, item = samples[0], items[0]
    assert item["images"].shape == (1, 3, 32, 64) and item["images"].dtype == torch.float32
    np.testing.assert_allclose(item["images"][0].permute(1, 2, 0).numpy() * 255.0, s.images["CAM_F0"], atol=1e-3)
    np.testing.assert_allclose(item["target"].numpy(), s.plan.target.poses, rtol=1e-6)
    st = s.plan.ego_status
    np.testing.assert_allclose(item["ego_status"].numpy(), [st.speed, *st.velocity, *st.acceleration], rtol=1e-6)
    assert int(item["command"]) == int(st.command) and item["kind"] == "ego"
    assert item["bev"].shape == (3, 32, 32)  # sample 0 has a BEV
    assert "bev" not in items[1]


def test_index_dataset_random_access(tmp_path, make_samples):
    keys = _write_dataset(tmp_path, make_samples, shards=2, per_shard=3)
    ds = ShardIndexDataset(tmp_path)
    assert len(ds) == 6
    assert [ds[i]["key"] for i in range(len(ds))] == keys
    streamed = list(ShardDataset(tmp_path))
    for i in (5, 0, 3):
        assert torch.equal(ds[i]["images"], streamed[i]["images"])


def test_collate_pads_history(make_sample):
    from rap.dataset.reader import record_to_tensors

    def as_record(s):
        from rap.dataset.writer import sample_arrays, sample_metadata

        return {"key": s.plan.key, "meta": sample_metadata(s), "images": s.images, "bev": None, **sample_arrays(s)}

    a, b = make_sample(0, history_len=2), make_sample(1, history_len=4)
    batch = collate([record_to_tensors(as_record(a)), record_to_tensors(as_record(b))])
    assert batch["history"].shape == (2, 4, 3)
    assert batch["history_valid"].tolist() == [[False, False, True, True], [True, True, True, True]]
    np.testing.assert_allclose(batch["history"][0, 2:].numpy(), a.plan.history, rtol=1e-6)
