"""Damaged shards are never read silently: the manifest's sha256 is checked when a shard is first
opened (readers and ``rap inspect``), every member decode error and every damage to the tar
structure is a :class:`ShardFormatError` naming shard, sample and member, and ``rap inspect
--verify`` decodes every member (for datasets without a manifest)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.dataset.inspect import format_report, inspect_dataset
from rap.dataset.manifest import MANIFEST_NAME, Manifest, verify_shards, write_manifest
from rap.dataset.reader import ShardDataset, ShardFormatError, ShardIndexDataset, iter_dataset, iter_shard, iter_shard_members
from rap.dataset.writer import shard_name, write_shard

# --------------------------------------------------------------------------- helpers


def _write_dataset(root: Path, make_samples, *, codec: str = "zst", shards: int = 2, per_shard: int = 3, manifest: bool = True) -> list[Path]:
    entries, counts = [], Counter()
    for i in range(shards):
        entry, c = write_shard(root / shard_name(i), make_samples(per_shard, start=i * per_shard), codec, fsync=False)
        entries.append(entry)
        counts += c
    if manifest:
        write_manifest(root, Manifest(toolkit_version="0.1.0", seed=0, config={}, codec=codec, counts=dict(counts), shards=tuple(entries)))
    return [root / e.name for e in entries]


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _edit(path: Path, offset: int, new: int) -> None:
    data = bytearray(path.read_bytes())
    assert data[offset] != new
    data[offset] = new
    path.write_bytes(bytes(data))


def _first(path: Path, suffix: str, index: int = 0) -> tarfile.TarInfo:
    return [m for m in _members(path) if m.name.endswith(suffix)][index]


def _damage(path: Path, how: str) -> tuple[str, str]:
    """Damage shard ``path`` in place; returns (sample key, member name) where it was damaged
    (the key is "" for damage to the tar structure)."""
    if how == "json_digit":  # still valid JSON, just another number
        m = _first(path, ".json")
        data = path.read_bytes()[m.offset_data : m.offset_data + m.size]
        at = data.index(b'"speed":') + len(b'"speed":')
        while not chr(data[at]).isdigit():
            at += 1
        _edit(path, m.offset_data + at, ord(str((int(chr(data[at])) + 1) % 10)))
    elif how == "json_syntax":
        m = _first(path, ".json")
        _edit(path, m.offset_data, ord("["))  # '{' -> '['
    elif how == "json_field":  # valid JSON, a field renamed
        m = _first(path, ".json")
        data = path.read_bytes()[m.offset_data : m.offset_data + m.size]
        at = data.index(b'"kind"')
        _edit(path, m.offset_data + at + 4, ord("b"))  # "kind" -> "kinb"
    elif how in ("zstd_byte", "png_byte", "npz_byte"):
        m = _first(path, {"zstd_byte": ".npy.zst", "png_byte": ".png", "npz_byte": ".npz"}[how])
        at = m.offset_data + m.size // 2
        _edit(path, at, path.read_bytes()[at] ^ 0xFF)
    elif how == "padding":
        m = next(m for m in _members(path) if m.size % 512)
        _edit(path, m.offset_data + m.size, 0x20)
        return "", m.name
    elif how == "header":  # a header's mtime digit: its checksum no longer matches
        m = _members(path)[3]
        _edit(path, m.offset + 140, ord("1"))
        return "", m.name
    elif how == "end":  # the end-of-archive zero blocks
        last = _members(path)[-1]
        _edit(path, last.offset_data + last.size + (-last.size % 512) + 700, 0x41)
        return "", ""
    else:
        raise AssertionError(how)
    return m.name.partition(".")[0], m.name


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


ALL_DAMAGE = ["json_digit", "json_syntax", "json_field", "zstd_byte", "npz_byte", "padding", "header", "end"]


# --------------------------------------------------------------------------- readers: the manifest's sha256


@pytest.mark.parametrize("how", ALL_DAMAGE)
def test_readers_check_the_manifest_sha256(tmp_path, make_samples, how):
    paths = _write_dataset(tmp_path, make_samples)
    expected = _sha(paths[1])
    _damage(paths[1], how)
    actual = _sha(paths[1])
    pattern = rf"{paths[1]}.*{expected}.*{actual}"

    with pytest.raises(ShardFormatError, match=pattern):
        list(iter_shard(paths[1]))
    with pytest.raises(ShardFormatError, match=pattern):
        list(iter_dataset(tmp_path))
    with pytest.raises(ShardFormatError, match=pattern):
        list(ShardDataset(tmp_path))
    with pytest.raises(ShardFormatError, match=pattern):
        ShardIndexDataset(tmp_path)
    with pytest.raises(ShardFormatError, match=pattern):
        list(iter_shard_members(paths[1]))
    assert len(list(iter_shard(paths[0]))) == 3  # the intact shard still reads


def test_verify_false_skips_the_hash(tmp_path, make_samples):
    paths = _write_dataset(tmp_path, make_samples)
    before = [r["meta"]["ego_status"]["speed"] for r in iter_dataset(tmp_path)]
    _damage(paths[0], "json_digit")
    after = [r["meta"]["ego_status"]["speed"] for r in iter_shard(paths[0], verify=False)]
    assert after != before[:3] and len(after) == 3  # the edit is invisible without the hash
    assert len(list(iter_dataset(tmp_path, verify=False))) == 6
    assert len(list(ShardDataset(tmp_path, verify=False))) == 6
    ds = ShardIndexDataset(tmp_path, verify=False)
    assert len(ds) == 6 and ds.record(0)["meta"]["ego_status"]["speed"] == after[0]
    # A shard that checked out once is checked again at the next open.
    fresh = _write_dataset(tmp_path / "b", make_samples)
    assert len(list(iter_shard(fresh[0]))) == 3
    _damage(fresh[0], "json_digit")
    with pytest.raises(ShardFormatError, match="sha256"):
        list(iter_shard(fresh[0]))


def test_a_shard_without_a_manifest_entry_is_read_unverified(tmp_path, make_samples):
    _write_dataset(tmp_path, make_samples, shards=1)
    extra, _ = write_shard(tmp_path / "extra" / "loose.tar", make_samples(2), fsync=False)
    assert len(list(iter_shard(tmp_path / "extra" / "loose.tar"))) == 2
    # Without a manifest, only decoding can find damage.
    nomani = _write_dataset(tmp_path / "nm", make_samples, shards=1, manifest=False)
    _damage(nomani[0], "json_digit")
    assert len(list(iter_dataset(tmp_path / "nm"))) == 3


def test_verify_shards_message_names_both_digests(tmp_path, make_samples):
    paths = _write_dataset(tmp_path, make_samples)
    expected = _sha(paths[0])
    _damage(paths[0], "padding")
    (problem,) = verify_shards(tmp_path)
    assert str(paths[0]) in problem and expected in problem and _sha(paths[0]) in problem and "does not match" in problem


# --------------------------------------------------------------------------- readers: decoding and tar structure


@pytest.mark.parametrize(
    "how, codec, says",
    [
        ("zstd_byte", "zst", "corrupt"),
        ("png_byte", "png", "corrupt"),
        ("npz_byte", "zst", "npz"),
        ("json_syntax", "zst", "JSON"),
        ("json_field", "zst", "'kind'"),
    ],
)
def test_member_decode_errors_name_shard_key_and_member(tmp_path, make_samples, how, codec, says):
    (path,) = _write_dataset(tmp_path, make_samples, codec=codec, shards=1, manifest=False)
    key, member = _damage(path, how)
    for read in (lambda: list(iter_shard(path)), lambda: [ShardIndexDataset(path)[i] for i in range(3)]):
        with pytest.raises(ShardFormatError) as info:
            read()
        message = str(info.value)
        assert str(path) in message and repr(key) in message and member in message and says in message, message


def test_a_missing_member_names_it(tmp_path, make_samples):
    (good,) = _write_dataset(tmp_path / "good", make_samples, shards=1, manifest=False)
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(good) as src, tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            if m.name.endswith(".npz") or m.name.endswith("CAM_R0.npy.zst"):
                continue
            dst.addfile(m, src.extractfile(m))
    with pytest.raises(ShardFormatError, match=r"shard-000000.tar: sample '[^']+': missing member \S+\.npz"):
        list(iter_shard(path))


@pytest.mark.parametrize("how", ["padding", "header", "end"])
def test_tar_structure_damage_is_a_shard_format_error(tmp_path, make_samples, how):
    (path,) = _write_dataset(tmp_path, make_samples, shards=1, manifest=False)
    _damage(path, how)
    with pytest.raises(ShardFormatError, match=rf"{path}: damaged tar"):
        list(iter_shard(path))
    with pytest.raises(ShardFormatError, match=rf"{path}: damaged tar"):
        ShardIndexDataset(path)
    with pytest.raises(ShardFormatError, match=rf"{path}: damaged tar"):
        list(iter_shard_members(path))


def test_a_dataset_with_a_manifest_and_verify_false_still_finds_tar_damage(tmp_path, make_samples):
    paths = _write_dataset(tmp_path, make_samples)
    _damage(paths[0], "header")
    with pytest.raises(ShardFormatError, match="damaged tar"):
        list(iter_dataset(tmp_path, verify=False))


def _same_records(a: list[dict], b: list[dict], *, ignore_meta: bool) -> bool:
    if [r["key"] for r in a] != [r["key"] for r in b]:
        return False
    for x, y in zip(a, b):
        if not ignore_meta and x["meta"] != y["meta"]:
            return False
        if list(x["images"]) != list(y["images"]) or (x["bev"] is None) != (y["bev"] is None):
            return False
        arrays = [(x[n], y[n]) for n in ("target", "history", "viewer_pose")] + [(x["images"][c], y["images"][c]) for c in x["images"]]
        if x["bev"] is not None:
            arrays.append((x["bev"], y["bev"]))
        if not all(u.shape == v.shape and u.dtype == v.dtype and np.array_equal(u, v) for u, v in arrays):
            return False
    return True


@pytest.mark.parametrize("codec", ["zst", "png"])
def test_no_byte_flip_escapes_as_a_raw_exception_or_changes_data_silently(tmp_path, make_samples, codec):
    """Flip bytes all over a shard without a manifest: reading raises ShardFormatError naming the
    shard (never BadZipFile, ZstdError, KeyError, ...) or gives exactly the original arrays and
    images; only a flip inside a ``.json`` member may change what is read (JSON has no checksum:
    that is what the manifest's sha256 is for)."""
    (path,) = _write_dataset(tmp_path, make_samples, codec=codec, shards=1, per_shard=2, manifest=False)
    original = path.read_bytes()
    reference = list(iter_shard(path))
    json_ranges = [(m.offset_data, m.offset_data + m.size) for m in _members(path) if m.name.endswith(".json")]
    positions = np.random.default_rng(0).choice(len(original), size=400, replace=False)
    outcomes = Counter()
    for pos in sorted(int(p) for p in positions) + [m.offset_data + m.size // 2 for m in _members(path)]:
        data = bytearray(original)
        data[pos] ^= 0x5A
        path.write_bytes(bytes(data))
        try:
            records = list(iter_shard(path))
            ds = ShardIndexDataset(path)
            indexed = [ds.record(i) for i in range(len(ds))]
        except ShardFormatError as err:
            assert str(path) in str(err), (pos, err)
            outcomes["error"] += 1
            continue
        in_json = any(lo <= pos < hi for lo, hi in json_ranges)
        assert _same_records(records, reference, ignore_meta=in_json), f"flip at byte {pos} changed the data silently"
        assert _same_records(indexed, reference, ignore_meta=in_json), f"flip at byte {pos} changed the indexed data silently"
        outcomes["json" if in_json else "harmless"] += 1
    assert outcomes["error"] > 300, outcomes


# --------------------------------------------------------------------------- rap inspect


def _inspect(*args: str):
    result = CliRunner().invoke(app, ["inspect", *args])
    return result, result.output


def _summary(output: str) -> dict:
    """The JSON line of ``rap inspect``'s output."""
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))


@pytest.mark.parametrize("how", ALL_DAMAGE)
def test_inspect_reports_a_sha256_mismatch(tmp_path, make_samples, how):
    paths = _write_dataset(tmp_path, make_samples)
    expected = _sha(paths[1])
    _damage(paths[1], how)
    actual = _sha(paths[1])
    result, output = _inspect(str(tmp_path), "--out", str(tmp_path / "sheet.png"))
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert str(paths[1]) in output and expected in output and actual in output, output
    summary = _summary(output)
    assert len(summary["problems"]) == 1 and paths[1].name in summary["problems"][0]
    assert summary["samples_read"] == 3  # the damaged shard is not read
    direct = inspect_dataset(tmp_path)
    assert direct["problems"] == summary["problems"] and "sha256" in format_report(direct)


@pytest.mark.parametrize("how", ["zstd_byte", "png_byte"])
def test_inspect_verify_decodes_every_member(tmp_path, make_samples, how):
    paths = _write_dataset(tmp_path, make_samples, codec="png" if how == "png_byte" else "zst", manifest=False)
    key, member = _damage(paths[1], how)
    plain, output = _inspect(str(tmp_path), "--out", str(tmp_path / "sheet.png"), "--max-samples", "2")
    assert plain.exit_code == 0, output  # images are not decoded without --verify (and no manifest)
    result, output = _inspect(str(tmp_path), "--out", str(tmp_path / "sheet.png"), "--max-samples", "2", "--verify")
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert str(paths[1]) in output and repr(key) in output and member in output, output
    summary = _summary(output)
    assert summary["samples_read"] == 2 and len(summary["problems"]) == 1


@pytest.mark.parametrize("how", ["npz_byte", "json_syntax", "padding", "header"])
def test_inspect_without_manifest_reports_what_it_reads(tmp_path, make_samples, how):
    paths = _write_dataset(tmp_path, make_samples, manifest=False)
    _damage(paths[0], how)
    result, output = _inspect(str(tmp_path), "--out", str(tmp_path / "sheet.png"))
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert str(paths[0]) in output and "Traceback" not in output, output


def test_inspect_of_a_good_dataset_is_unchanged(tmp_path, make_samples):
    _write_dataset(tmp_path, make_samples)
    for extra in ([], ["--verify"]):
        result, output = _inspect(str(tmp_path), "--out", str(tmp_path / "sheet.png"), *extra)
        assert result.exit_code == 0, output
        summary = _summary(output)
        for key in ("directory", "shards", "samples_read", "counts", "commands", "cameras", "has_bev", "ranges", "manifest", "contact_sheet", "contact_sheet_size"):
            assert key in summary
        assert summary["samples_read"] == 6 and summary["problems"] == []
        assert (tmp_path / "sheet.png").is_file()
    assert "--verify" in CliRunner().invoke(app, ["inspect", "--help"]).output


def test_inspect_reports_a_missing_shard(tmp_path, make_samples):
    paths = _write_dataset(tmp_path, make_samples)
    paths[0].unlink()
    result, output = _inspect(str(tmp_path), "--out", str(tmp_path / "sheet.png"))
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert f"{paths[0]}: missing (listed in {tmp_path / MANIFEST_NAME})" in output
    assert _summary(output)["samples_read"] == 3
