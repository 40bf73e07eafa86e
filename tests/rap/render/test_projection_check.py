"""Tests of rap.render.projection_check: pure helpers on hand-built inputs, then the real Waymo frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rap.render.projection_check import (
    box_inside_image,
    box_iou,
    check_projection,
    non_overlapping_groups,
    silhouette_extents,
)

FRAME_FILE = Path(__file__).resolve().parents[3] / "data" / "waymo" / "perception_frame_1024360143612057520.tfrecord"


# -- box_iou -----------------------------------------------------------------------------------
def test_box_iou_identical_disjoint_and_partial():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    # Half overlap: intersection 50, union 150.
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    # Contained: 4 / 100.
    assert box_iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(0.04)
    assert box_iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0  # degenerate


def test_box_iou_is_symmetric_and_shift_invariant():
    a, b = (-0.5, 3.25, 7.0, 9.5), (0.25, 2.0, 8.5, 10.0)
    assert box_iou(a, b) == pytest.approx(box_iou(b, a))
    shifted = [tuple(v + d for v, d in zip(box, (100, -50, 100, -50))) for box in (a, b)]
    assert box_iou(*shifted) == pytest.approx(box_iou(a, b))


def test_box_iou_rejects_inverted_boxes():
    with pytest.raises(ValueError, match="x0 <= x1"):
        box_iou((10, 0, 0, 10), (0, 0, 10, 10))


# -- silhouette_extents ------------------------------------------------------------------------
def test_silhouette_extents_pixel_edges():
    m = np.zeros((8, 12), dtype=np.uint32)
    m[2:5, 5:8] = 3  # rows 2..4, cols 5..7
    m[0, 0] = 7  # a single pixel in the corner
    m[6, 1:11] = 9
    m[7, 4] = 9  # extends id 9 one row down
    ext = silhouette_extents(m)
    assert list(ext) == [3, 7, 9]
    assert ext[3] == (4.5, 1.5, 7.5, 4.5)
    assert ext[7] == (-0.5, -0.5, 0.5, 0.5)
    assert ext[9] == (0.5, 5.5, 10.5, 7.5)


def test_silhouette_extents_non_convex_and_split_instances():
    m = np.zeros((5, 5), dtype=np.int32)
    m[0, 0] = 1
    m[4, 4] = 1  # two far-apart blobs of one instance: one extent covering both
    m[1:4, 2] = 2
    m[2, 1:4] = 2  # a plus sign
    ext = silhouette_extents(m)
    assert ext == {1: (-0.5, -0.5, 4.5, 4.5), 2: (0.5, 0.5, 3.5, 3.5)}


def test_silhouette_extents_empty_and_bad_input():
    assert silhouette_extents(np.zeros((4, 4), dtype=np.uint32)) == {}
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        silhouette_extents(np.zeros((2, 2, 2), dtype=np.uint32))
    with pytest.raises(ValueError, match="integers"):
        silhouette_extents(np.zeros((2, 2), dtype=np.float32))


def test_silhouette_extent_of_a_rasterised_box_is_within_half_a_pixel():
    # Pixels whose centres fall inside a continuous box, as GL's raster rule draws them.
    box = (3.3, 1.8, 9.6, 6.2)
    rows, cols = np.mgrid[0:10, 0:12]
    inside = (cols >= box[0]) & (cols < box[2]) & (rows >= box[1]) & (rows < box[3])
    ext = silhouette_extents(inside.astype(np.uint32))[1]
    np.testing.assert_allclose(ext, box, atol=0.5)
    assert ext == (3.5, 1.5, 9.5, 6.5)


# -- box_inside_image, non_overlapping_groups --------------------------------------------------
def test_box_inside_image_excludes_clipped_boxes():
    assert box_inside_image((0.0, 0.0, 10.0, 10.0), 20, 20)
    assert not box_inside_image((-0.5, 0.0, 10.0, 10.0), 20, 20)  # clipped at the left edge
    assert not box_inside_image((0.0, 0.0, 19.5, 10.0), 20, 20)  # clipped at the right edge
    assert not box_inside_image((0.0, 0.0, 10.0, 30.0), 20, 20)


def test_non_overlapping_groups():
    boxes = np.array(
        [
            [0, 0, 10, 10],
            [5, 5, 15, 15],  # overlaps 0
            [20, 0, 30, 10],  # disjoint from 0 and 1
            [11, 0, 19, 4],  # 1 px gap to 0 and to 2; overlaps nothing
        ],
        dtype=float,
    )
    groups = non_overlapping_groups(boxes)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    assert len(groups) == 2
    for g in groups:
        assert not ({0, 1} <= set(g))
    # With a 2 px margin, box 3 touches 0 and 2 as well.
    wide = non_overlapping_groups(boxes, margin=2.0)
    for g in wide:
        assert not ({0, 1} <= set(g) or {0, 3} <= set(g) or {2, 3} <= set(g))
    assert non_overlapping_groups(np.zeros((0, 4))) == []
    assert non_overlapping_groups(boxes) == non_overlapping_groups(boxes)  # deterministic


# -- the real frame through the GL renderer ----------------------------------------------------
@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    out = tmp_path_factory.mktemp("projection")
    return out, check_projection(FRAME_FILE, out)


def test_check_projection_mean_iou(checked):
    _, result = checked
    assert result["mean_iou"] >= 0.95  # the requirement
    # Tighter than the requirement: 0.980 measured; no distortion model scores 0.963 (min 0.73).
    assert result["mean_iou"] >= 0.97
    assert result["min_iou"] >= 0.88
    assert result["boxes"] == 45  # Waymo boxes strictly inside the image, all rendered
    per_camera = result["per_camera"]
    assert set(per_camera) == {"FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT"}
    assert sum(c["boxes"] for c in per_camera.values()) == result["boxes"]
    assert {c: v["boxes"] for c, v in per_camera.items()} == {"FRONT": 12, "FRONT_LEFT": 16, "FRONT_RIGHT": 7, "SIDE_LEFT": 2, "SIDE_RIGHT": 8}
    for name, cam in per_camera.items():
        assert cam["mean_iou"] >= 0.95, name
        assert cam["not_rendered"] == 0
    # Half-pixel quantisation per edge is the dominant residual: no systematic edge bias
    # (a half-pixel principal-point error shows up here as +0.5 on every edge).
    diffs = np.array([np.subtract(b["rendered_box"], b["waymo_box"]) for b in result["per_box"]])
    assert np.all(np.abs(diffs.mean(axis=0)) < 0.3)


def test_check_projection_writes_json_and_overlays(checked):
    out, result = checked
    on_disk = json.loads((out / "projection.json").read_text())
    assert on_disk["mean_iou"] == pytest.approx(result["mean_iou"])
    assert on_disk["boxes"] == result["boxes"]
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporaries
    from PIL import Image

    assert sorted(result["overlays"]) == sorted(f"projection_{c}.png" for c in result["per_camera"])
    with Image.open(out / "projection_SIDE_LEFT.png") as img:
        assert img.size == (1920, 886) and img.mode == "RGB"
