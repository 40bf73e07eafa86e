"""Tests of rap/cli.py through typer's CliRunner: help, render (files, outputs, other seats),
usage errors (exit code 2 with a message naming the problem), bench-render, check-projection."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rap.cli import app

SIZE = (320, 180)
FRONT3 = ("CAM_L0", "CAM_F0", "CAM_R0")


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def source(womd_path) -> str:
    return f"womd:{womd_path}"


def message(result) -> str:
    """stderr with rich's wrapping and box drawing removed (whitespace collapsed)."""
    text = re.sub(r"[\u2500-\u257f]", " ", result.stderr)
    return " ".join(text.split())


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def render_args(source, out, *extra):
    return ["render", "--source", source, "--size", f"{SIZE[0]}x{SIZE[1]}", "--out", str(out), *extra]


def test_help_lists_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("render", "check-projection", "bench-render", "demo"):
        assert re.search(rf"\b{command}\b", result.stdout), command


def test_no_arguments_shows_help(runner):
    result = runner.invoke(app, [])
    assert result.exit_code == 2  # click's no_args_is_help exits with the usage code
    assert "render" in result.output


def test_render_writes_views_sheet_and_manifest(runner, source, tmp_path):
    result = runner.invoke(app, render_args(source, tmp_path, "--rig", "front3"))
    assert result.exit_code == 0, result.output
    assert "rendered 3 view(s)" in message(result)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted([f"{c}.png" for c in FRONT3] + ["contact_sheet.png", "render.json"])
    for cam in FRONT3:
        with Image.open(tmp_path / f"{cam}.png") as im:
            assert im.size == SIZE and im.mode == "RGB"
            assert np.asarray(im).any()
    with Image.open(tmp_path / "contact_sheet.png") as im:
        assert im.mode == "RGB" and im.size[0] >= SIZE[0]

    doc = json.loads((tmp_path / "render.json").read_text())
    assert doc["scene_id"] == "637f20cafde22ff8"
    assert doc["step"] == 10
    assert doc["viewer"] == {"row": 82, "id": 2406, "is_ego": True}
    assert doc["rig"] == "front3"
    assert sorted(doc["cameras"]) == sorted(FRONT3)
    for cam in doc["cameras"].values():
        assert cam["type"] == "pinhole" and (cam["width"], cam["height"]) == SIZE
        k = np.array(cam["intrinsics"])
        assert k.shape == (3, 3) and k[2].tolist() == [0.0, 0.0, 1.0]
        assert 0 < k[0, 2] < SIZE[0] and 0 < k[1, 2] < SIZE[1] and k[0, 0] > 0
        assert cam["distortion_k1k2p1p2k3"] == [0.0] * 5  # ideal pinholes unless --distortion
        assert np.array(cam["cam_to_body"]).shape == (4, 4)
    assert sorted(doc["files"]) == sorted(f for f in files if f != "render.json")


def test_render_all_outputs(runner, source, tmp_path):
    result = runner.invoke(app, render_args(source, tmp_path, "--outputs", "rgb,class_id,instance,depth"))
    assert result.exit_code == 0, result.output
    w, h = SIZE
    for cam in FRONT3:
        with Image.open(tmp_path / f"{cam}_class.png") as im:
            classes = np.asarray(im)
        assert classes.shape == (h, w) and classes.dtype == np.uint8
        instance = np.load(tmp_path / f"{cam}_instance.npy")
        assert instance.shape == (h, w) and instance.dtype == np.uint32
        depth = np.load(tmp_path / f"{cam}_depth.npy")
        assert depth.shape == (h, w) and depth.dtype == np.float32
        # Consistent outputs: nothing drawn ⇔ class 0 ⇔ instance 0 ⇔ depth 0.
        drawn = instance != 0
        assert drawn.any() and not drawn.all()
        np.testing.assert_array_equal(classes != 0, drawn)
        np.testing.assert_array_equal(depth > 0, drawn)
        assert np.all(depth[drawn] < 500.0)


def test_render_from_another_agent(runner, source, tmp_path):
    result = runner.invoke(app, render_args(source.replace(".tfrecord", ".tfrecord@30"), tmp_path, "--agent", "1641", "--rig", "bev"))
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "render.json").read_text())
    assert doc["viewer"] == {"row": 20, "id": 1641, "is_ego": False}
    assert doc["step"] == 30
    assert doc["cameras"]["BEV"]["type"] == "orthographic"
    assert "from agent 1641" in message(result)
    assert (tmp_path / "BEV.png").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--source", "foo:x"], ["unknown kind 'foo'", "womd"]),
        (["--source", "womd:no/such/file.tfrecord"], ["no/such/file.tfrecord: no such file"]),
        (["--size", "12by5"], ["WIDTHxHEIGHT", "'12by5'"]),
        (["--size", "0x5"], ["'0x5'", "1..16384"]),
        (["--rig", "fisheye9"], ["unknown rig 'fisheye9'", "front3"]),
        (["--agent", "424242"], ["no agent with id 424242"]),
        (["--agent", "1658"], ["id 1658", "not valid at step 10"]),
        (["@999"], ["step 999 is outside the scene's 91 steps"]),
        (["@-1"], ["step must be >= 0"]),
        (["--outputs", "rgb,normals"], ["rgb,normals", "class_id"]),
        (["--style", "oil"], ["--style 'oil'", "raster, photo"]),
    ],
    ids=["kind", "missing-file", "size-format", "size-range", "rig", "agent-id", "agent-invalid", "step-range", "step-negative", "outputs", "style"],
)
def test_render_usage_errors(runner, source, tmp_path, args, expected):
    if args[0].startswith("@"):
        args = ["--source", source + args[0]]
    argv = ["render", "--source", source, "--size", "32x18", "--out", str(tmp_path / "out"), *args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    text = message(result)
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert not (tmp_path / "out" / "render.json").exists()
    assert result.stdout == ""


def test_render_photo_style_changes_only_the_pictures(runner, source, tmp_path):
    """--style photo: the same geometry (plus the road surface that a raster's cameras leave
    out), camera-like pictures (a sky in the top rows), seeded (--seed changes the noise only)."""
    outs = {}
    for name, extra in (("raster", []), ("photo", ["--style", "photo"]), ("photo_seed", ["--style", "photo", "--seed", "3"])):
        result = runner.invoke(app, render_args(source, tmp_path / name, "--outputs", "rgb,class_id", *extra))
        assert result.exit_code == 0, result.output
        outs[name] = {f: np.asarray(Image.open(tmp_path / name / f"CAM_F0{f}.png")) for f in ("", "_class")}
    raster_cls, photo_cls = outs["raster"]["_class"], outs["photo"]["_class"]
    drawn = raster_cls > 0
    same = raster_cls[drawn] == photo_cls[drawn]  # same geometry (the road surface hides a few
    assert same.mean() > 0.995 and set(np.unique(photo_cls[drawn][~same]).tolist()) <= {1}  # box pixels below it) ...
    assert set(np.unique(photo_cls[~drawn]).tolist()) <= {0, 1}  # ... plus the road surface (drivable area, class 1)
    assert (photo_cls == 1).sum() > 1000
    sky = outs["photo"][""][:20].reshape(-1, 3).astype(float)
    assert sky.mean() > 100 and sky[:, 2].mean() > sky[:, 0].mean()  # bright and blue, not the raster's black
    assert outs["raster"][""][:20].max() < 40
    diff = np.abs(outs["photo"][""].astype(int) - outs["photo_seed"][""].astype(int))
    assert 0 < diff.mean() < 6
    doc = json.loads((tmp_path / "photo" / "render.json").read_text())
    assert doc["style"] == "photo" and doc["seed"] == 0


def test_bench_render_prints_json(runner, source):
    result = runner.invoke(app, ["bench-render", "--source", source, "--frames", "3", "--size", "128x64"])
    assert result.exit_code == 0, result.output
    doc = last_json(result)
    assert doc["views"] == 9 and doc["frames"] == 3
    assert doc["views_per_s"] > 0 and doc["seconds"] > 0
    assert doc["views_per_s"] == pytest.approx(doc["views"] / doc["seconds"])
    assert doc["size"] == "128x64" and doc["rig"] == "front3"


def test_bench_render_rejects_zero_frames(runner, source):
    result = runner.invoke(app, ["bench-render", "--source", source, "--frames", "0", "--size", "128x64"])
    assert result.exit_code == 2
    assert "--frames" in message(result)


def test_check_projection(runner, frame_path, tmp_path):
    result = runner.invoke(app, ["check-projection", str(frame_path), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = last_json(result)
    assert set(doc) == {"mean_iou", "per_camera", "boxes"}
    assert doc["mean_iou"] >= 0.95
    assert doc["boxes"] > 0 and doc["boxes"] == sum(row["boxes"] for row in doc["per_camera"].values())
    assert len(doc["per_camera"]) == 5


def test_check_projection_missing_file(runner, tmp_path):
    result = runner.invoke(app, ["check-projection", str(tmp_path / "nope.tfrecord"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope.tfrecord: no such file" in message(result)


def test_render_synthetic_source(runner, tmp_path):
    out = tmp_path / "syn"
    result = runner.invoke(app, ["render", "--source", "synthetic:3", "--rig", "bev", "--size", "128x128", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "render.json").read_text())
    assert doc["scene_id"] == "synthetic-3" and doc["source"] == "synthetic:3"
    bev = np.asarray(Image.open(out / "BEV.png"))
    assert bev.shape == (128, 128, 3) and bev.any()
    bad = runner.invoke(app, ["render", "--source", "synthetic:abc", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "synthetic:abc" in message(bad)


def test_render_nuplan8_distortion_and_record(runner, source, tmp_path):
    eight = tmp_path / "eight"
    result = runner.invoke(app, ["render", "--source", source, "--rig", "nuplan8", "--size", "96x54", "--out", str(eight)])
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in eight.glob("CAM_*.png")) == ["CAM_B0", "CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2"]
    pin, dist = tmp_path / "pin", tmp_path / "dist"
    assert runner.invoke(app, render_args(source, pin, "--outputs", "class_id")).exit_code == 0
    assert runner.invoke(app, render_args(source, dist, "--outputs", "class_id", "--distortion")).exit_code == 0
    doc = json.loads((dist / "render.json").read_text())
    assert any(abs(k) > 0 for k in doc["cameras"]["CAM_F0"]["distortion_k1k2p1p2k3"])
    a = np.asarray(Image.open(pin / "CAM_F0_class.png"))
    b = np.asarray(Image.open(dist / "CAM_F0_class.png"))
    assert a.shape == b.shape and (a != b).mean() > 0.01  # barrel distortion moves the raster
    bad = runner.invoke(app, render_args(source, tmp_path / "rec", "--record", "3"))
    assert bad.exit_code == 2 and "record 3" in message(bad)
