"""The photo look: a camera-like stand-in image from the same geometry (sky, lit surfaces, haze,
lens and sensor effects), seeded, and nothing but the rgb output changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rasterizer.camera import PinholeCamera, look_at_flu
from rasterizer.photo import Material, PhotoLook
from rasterizer.primitives import Boxes, TriangleMesh, concat_meshes, polygons, ribbons
from rasterizer.renderer import Renderer, Style, View

# Classes of these tests: 0 background, 1 ground (rough), 2 a matte box.
FLAT = Style(colors=[(0, 0, 0), (80, 80, 80), (200, 60, 60)], face_colors=[[(0, 0, 0)] * 6, [(80, 80, 80)] * 6, [(200, 60, 60)] * 6])
LOOK = PhotoLook(materials=[Material.MATTE, Material.ROUGH, Material.MATTE], sun_direction=(0.0, 0.0, 1.0), ambient=0.3, seed=7)
PHOTO = dataclasses.replace(FLAT, photo=LOOK)
CLEAN = dataclasses.replace(FLAT, photo=dataclasses.replace(LOOK, blur_px=0.0, vignette=0.0, noise=0.0))


def camera(name="cam", width=160, height=120, pitch=0.0, z=1.5):
    return PinholeCamera(name, width, height, 80.0, 80.0, 79.5, 59.5, look_at_flu((0.0, 0.0, z), 0.0, pitch))


def ground(half=60.0):
    ring = np.array([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]])
    return polygons([[ring]], 1, 1)


def render(ctx, style, views, mesh=None, boxes=None, outputs=("rgb", "class_id", "instance", "depth")):
    with Renderer(ctx, style) as r:
        if mesh is not None:
            r.set_static(mesh)
        r.set_boxes(boxes if boxes is not None else Boxes.empty())
        return r.render(views, outputs=outputs)


def test_only_the_rgb_output_changes(ctx):
    boxes = Boxes([[12.0, 0.5, 1.0]], [[4.0, 2.0, 2.0]], [0.4], [2], [5])
    flat, photo = (render(ctx, s, [View(camera())], ground(), boxes)[0] for s in (FLAT, PHOTO))
    for name in ("class_id", "instance", "depth"):
        assert np.array_equal(getattr(flat, name), getattr(photo, name)), name
    assert not np.array_equal(flat.rgb, photo.rgb)
    assert (flat.class_id == 2).sum() > 100  # the box is in view


def test_rgb_alone_is_the_rgb_of_all_outputs(ctx):
    """The photo rgb does not depend on which other outputs are asked for (the map once came
    out black when rgb was the only output)."""
    boxes = Boxes([[12.0, 0.5, 1.0]], [[4.0, 2.0, 2.0]], [0.4], [2], [5])
    alone = render(ctx, PHOTO, [View(camera())], ground(), boxes, outputs=("rgb",))[0]
    full = render(ctx, PHOTO, [View(camera())], ground(), boxes)[0]
    assert np.array_equal(alone.rgb, full.rgb)
    assert alone.rgb[100:].mean() > 30  # the lit ground, not the clear colour


def test_sky_above_the_horizon_and_ground_below(ctx):
    """An empty world seen level: sky (bright, blue over red) in the upper half, the terrain
    (darker, the look's ground colour) in the lower half, hazed toward the horizon colour near
    the horizon, without a seam where the hazed rows meet the rest."""
    out = render(ctx, CLEAN, [View(camera())])[0].rgb.astype(float)
    sky, below = out[:50].reshape(-1, 3), out[70:].reshape(-1, 3)
    assert sky[:, 2].mean() > sky[:, 0].mean() + 10 and sky.mean() > below.mean() + 30
    zenith_row, horizon_row = out[0].mean(axis=0), out[58].mean(axis=0)
    assert zenith_row[2] - zenith_row[0] > horizon_row[2] - horizon_row[0]  # bluer higher up
    haze = np.array(CLEAN.photo.sky_horizon, dtype=float)
    assert np.abs(out[60] - haze).mean() < 0.5 * np.abs(out[110] - haze).mean()  # far terrain hazed
    assert np.abs(np.diff(out[64:], axis=0)).max() <= 4  # smooth from the hazed rows on


def test_rough_surfaces_are_textured(ctx):
    """Asphalt-like (rough) surfaces carry grain: not flat."""
    out = render(ctx, CLEAN, [View(camera())], ground())[0]
    near = out.rgb[80:][out.class_id[80:] == 1].astype(float)
    assert len(near) > 1000 and near.std(axis=0).min() > 2.0


def test_surfaces_facing_the_sun_are_brighter(ctx):
    """Sun overhead: the box's top face is lit fully, its side (facing the camera) by the
    ambient share only."""
    cam = PinholeCamera("cam", 160, 120, 80.0, 80.0, 79.5, 59.5, look_at_flu((0.0, 0.0, 6.0), 0.0, 0.45))
    boxes = Boxes([[10.0, 0.0, 1.0]], [[3.0, 3.0, 2.0]], [0.0], [2], [5])
    out = render(ctx, CLEAN, [View(cam)], None, boxes, outputs=("rgb", "class_id", "depth"))[0]
    rows = np.flatnonzero((out.class_id == 2).any(axis=1))
    # Seen from above, the top face is the upper part of the silhouette, the near side the lower.
    top = out.rgb[rows[1] : rows[1] + 3][out.class_id[rows[1] : rows[1] + 3] == 2].astype(float)
    side = out.rgb[rows[-4] : rows[-1]][out.class_id[rows[-4] : rows[-1]] == 2].astype(float)
    assert len(rows) > 20 and len(top) > 20 and len(side) > 20
    assert top.mean() > 2.0 * side.mean()


def test_haze_pulls_far_surfaces_toward_the_horizon_colour(ctx):
    haze = np.array(CLEAN.photo.sky_horizon, dtype=float)
    out = render(ctx, CLEAN, [View(camera(height=120))], ground(400.0), outputs=("rgb", "depth"))[0]
    near = out.rgb[(out.depth > 3) & (out.depth < 8)].astype(float)
    far = out.rgb[out.depth > 150].astype(float)
    assert len(near) > 50 and len(far) > 50
    assert np.abs(far - haze).mean() < 0.6 * np.abs(near - haze).mean()


def test_noise_is_seeded_by_the_look_and_the_view_not_by_what_else_is_rendered(ctx):
    mesh = ground()
    a, b = View(camera("a")), View(camera("b", pitch=0.1))
    alone = render(ctx, PHOTO, [a], mesh)[0].rgb
    assert np.array_equal(alone, render(ctx, PHOTO, [a], mesh)[0].rgb)  # same inputs, same bytes
    # Beside another view (another place in the atlas) the same noise. GL interpolates a
    # surface's texture coordinates a little differently at another window offset, and the
    # grain is read unfiltered (the nearest texel: filtering costs llvmpipe several times more),
    # so where a coordinate lies on a texel edge the next texel's grain may be read: about 2 %
    # of the values (distant ground) differ, by a few levels.
    together = render(ctx, PHOTO, [b, a], mesh)[1].rgb
    diff = np.abs(alone.astype(int) - together.astype(int))
    assert diff.mean() < 0.15 and (diff > 0).mean() < 0.05 and diff.max() <= 16
    reseeded = render(ctx, dataclasses.replace(FLAT, photo=dataclasses.replace(LOOK, seed=8)), [a], mesh)[0].rgb
    assert not np.array_equal(alone, reseeded)
    noiseless = render(ctx, dataclasses.replace(FLAT, photo=dataclasses.replace(LOOK, noise=0.0)), [a], mesh)[0].rgb
    residual = alone.astype(float) - noiseless.astype(float)
    assert 1.5 < residual.std() < 5.0  # about the look's 3 levels (clipped at 0 and 255)


def test_vignetting_darkens_the_corners(ctx):
    look = dataclasses.replace(LOOK, blur_px=0.0, noise=0.0, vignette=0.5)
    with_v = render(ctx, dataclasses.replace(FLAT, photo=look), [View(camera())])[0].rgb.astype(float)
    without = render(ctx, CLEAN, [View(camera())])[0].rgb.astype(float)
    assert with_v[60, 80].mean() == pytest.approx(without[60, 80].mean(), abs=2)
    assert with_v[0, 0].mean() < 0.65 * without[0, 0].mean()


def test_bad_looks_are_refused():
    with pytest.raises(ValueError, match="materials must be ids 0..5"):
        PhotoLook(materials=[0, 9])
    with pytest.raises(ValueError, match="sun_direction"):
        PhotoLook(materials=[0], sun_direction=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="noise must be finite and >= 0"):
        PhotoLook(materials=[0], noise=float("nan"))
    with pytest.raises(ValueError, match="2 materials for a style of 3 classes"):
        dataclasses.replace(FLAT, photo=PhotoLook(materials=[0, 1]))


def test_hidden_surfaces_keep_the_paint_below_them_in_the_picture_and_their_ids(ctx):
    """A HIDDEN class (lane centrelines: a raster's mark, not a camera's) is left out of the
    picture, where the crosswalk-like paint under it shows, while its class ids, instances and
    depth are drawn as in the flat style; with rgb alone the same picture."""
    colors = [(0, 0, 0), (80, 80, 80), (230, 230, 230), (80, 80, 80)]
    flat = Style(colors=colors, face_colors=[[c] * 6 for c in colors])
    look = PhotoLook(materials=[Material.MATTE, Material.ROUGH, Material.PAINT, Material.HIDDEN], sun_direction=(0.0, 0.0, 1.0), seed=7, blur_px=0.0, noise=0.0, vignette=0.0)
    photo = dataclasses.replace(flat, photo=look)
    paint = np.array([[[4.0, -3.0, 0.03], [9.0, -3.0, 0.03], [9.0, 3.0, 0.03], [4.0, 3.0, 0.03]]])
    line = np.array([[2.0, 0.0, 0.06], [12.0, 0.0, 0.06]])
    below = concat_meshes([ground(), polygons([paint], 2, 2)])
    mesh = concat_meshes([below, ribbons(line, np.array([0, 2]), 0.8, 3, 3)])
    view = [View(camera(pitch=0.35))]
    shown, flat_out = render(ctx, photo, view, mesh)[0], render(ctx, flat, view, mesh)[0]
    for name in ("class_id", "instance", "depth"):
        assert np.array_equal(getattr(shown, name), getattr(flat_out, name)), name
    on_line = shown.class_id == 3
    assert on_line.sum() > 30  # the hidden line is in view, over the paint and the ground
    without = render(ctx, photo, view, below)[0]
    assert np.array_equal(shown.rgb, without.rgb)  # as if the line were not there
    over_paint = on_line & (without.class_id == 2)
    assert over_paint.sum() > 10 and shown.rgb[over_paint].mean() > 150  # bright paint, not asphalt
    assert np.array_equal(render(ctx, photo, view, mesh, outputs=("rgb",))[0].rgb, shown.rgb)
