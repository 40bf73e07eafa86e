"""Tests for rap.dataset.manifest: deterministic bytes, round trip, errors naming the field."""

from __future__ import annotations

import json

import pytest

from rap.dataset.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ShardEntry,
    SkippedInput,
    manifest_to_json,
    read_manifest,
    verify_shards,
    write_manifest,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def _manifest(**overrides) -> Manifest:
    fields = dict(
        toolkit_version="0.1.0",
        seed=7,
        config={"rig": "front3", "size": [512, 256], "recovery": {"max_dy_m": 1.5}},
        codec="zst",
        counts={"recovery": 3, "ego": 2},
        shards=(ShardEntry("shard-000001.tar", 2, SHA_B), ShardEntry("shard-000000.tar", 3, SHA_A)),
        skipped=(SkippedInput("womd:b.tfrecord", 4, "bad field 'tracks'"), SkippedInput("womd:a.tfrecord", "id9", "truncated record")),
        rejected={"off_road": 5, "collision": 1},
    )
    fields.update(overrides)
    return Manifest(**fields)


def test_round_trip_and_deterministic_bytes(tmp_path):
    m = _manifest()
    path = write_manifest(tmp_path, m)
    assert path == tmp_path / MANIFEST_NAME
    back = read_manifest(tmp_path)
    assert back == m
    assert back.num_samples == 5
    first = path.read_bytes()
    # The same content given in another order writes the same bytes.
    shuffled = _manifest(shards=tuple(reversed(m.shards)), skipped=tuple(reversed(m.skipped)), counts={"ego": 2, "recovery": 3})
    write_manifest(tmp_path, shuffled)
    assert path.read_bytes() == first
    doc = json.loads(first)
    assert [s["name"] for s in doc["shards"]] == ["shard-000000.tar", "shard-000001.tar"]
    assert list(doc) == sorted(doc)
    assert first.endswith(b"\n")
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def _write_doc(tmp_path, mutate) -> None:
    doc = json.loads(manifest_to_json(_manifest()))
    mutate(doc)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("seed"), "seed"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.update(codec="webp"), "codec"),
        (lambda d: d["shards"][1].update(sha256="xyz"), "shards[1].sha256"),
        (lambda d: d["shards"][0].update(samples=-1), "shards[0].samples"),
        (lambda d: d["shards"][0].pop("name"), "shards[0].name"),
        (lambda d: d["shards"][1].update(name="shard-000000.tar"), "shards[1].name"),
        (lambda d: d["counts"].update(teleport=0), "counts.teleport"),
        (lambda d: d["counts"].update(ego=9), "counts"),
        (lambda d: d["skipped"][0].update(record=1.5), "skipped[0].record"),
        (lambda d: d["rejected"].update(off_road="many"), "rejected.off_road"),
        (lambda d: d.update(format_version=99), "format_version"),
    ],
)
def test_errors_name_file_and_field(tmp_path, mutate, field):
    _write_doc(tmp_path, mutate)
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST_NAME) in str(err.value)
    assert f"field '{field}'" in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_write_refuses_an_invalid_manifest(tmp_path):
    with pytest.raises(ManifestError, match="field 'counts'"):
        write_manifest(tmp_path, _manifest(counts={"ego": 1}))
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_verify_shards(tmp_path):
    import hashlib

    (tmp_path / "shard-000000.tar").write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    m = _manifest(shards=(ShardEntry("shard-000000.tar", 3, good), ShardEntry("shard-000001.tar", 2, SHA_B)))
    write_manifest(tmp_path, m)
    problems = verify_shards(tmp_path)
    assert len(problems) == 1 and "shard-000001.tar: missing" in problems[0]
    (tmp_path / "shard-000001.tar").write_bytes(b"x")
    problems = verify_shards(tmp_path)
    assert len(problems) == 1 and "does not match" in problems[0]
