"""``rap inspect --out`` given a folder, or a path under an existing file (issue 9): one line
naming it, exit 2, no traceback, nothing written."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.dataset.manifest import Manifest, write_manifest
from rap.dataset.writer import shard_name, write_shard


def message(result) -> str:
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", result.stderr).split())


@pytest.fixture()
def dataset(tmp_path, make_samples):
    entry, counts = write_shard(tmp_path / shard_name(0), make_samples(2), fsync=False)
    write_manifest(tmp_path, Manifest(toolkit_version="0.1.0", seed=0, config={}, codec="zst", counts=dict(counts), shards=(entry,), rejected={}))
    return tmp_path


def test_inspect_out_is_a_folder(dataset):
    folder = dataset / "sheets"
    folder.mkdir()
    result = CliRunner().invoke(app, ["inspect", str(dataset), "--out", str(folder)])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith("error:") and f"--out {folder}: is a directory" in text and "contact sheet PNG" in text, text
    assert list(folder.iterdir()) == []


def test_inspect_out_under_a_file(dataset):
    taken = dataset / "taken"
    taken.write_text("x")
    result = CliRunner().invoke(app, ["inspect", str(dataset), "--out", str(taken / "sheet.png")])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith("error:") and "--out" in text and f"{taken}: is a file, not a folder" in text, text
    assert taken.read_text() == "x"


def test_inspect_out_file_still_written(dataset):
    sheet = dataset / "new" / "sheet.png"
    result = CliRunner().invoke(app, ["inspect", str(dataset), "--out", str(sheet)])
    assert result.exit_code == 0, result.output
    assert sheet.stat().st_size > 0
