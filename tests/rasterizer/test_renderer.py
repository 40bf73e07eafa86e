import numpy as np
import pytest

from rasterizer.camera import OrthoCamera, PinholeCamera, look_at_flu
from rasterizer.primitives import Boxes, TriangleMesh, polygons, ribbons
from rasterizer.renderer import Renderer, Style, View, pack_tiles


def camera(width=160, height=120, f=80.0, **kw):
    return PinholeCamera("cam", width, height, f, f, (width - 1) / 2, (height - 1) / 2, look_at_flu((0.0, 0.0, 1.0), 0.0), **kw)


def box(x, y=0.0, z=1.0, size=(2.0, 2.0, 2.0), yaw=0.0, cls=1, inst=1):
    return Boxes([[x, y, z]], [size], [yaw], [cls], [inst])


@pytest.fixture()
def renderer(ctx):
    r = Renderer(ctx, Style.default())
    yield r
    r.close()


def test_occlusion_follows_depth_not_draw_order(renderer):
    near, far = box(6.0, inst=1, cls=1), box(12.0, size=(2, 6, 6), inst=2, cls=2)
    for order in ([near, far], [far, near]):
        renderer.set_boxes(Boxes.concat(order))
        out = renderer.render([View(camera())], outputs=("instance", "class_id"))[0]
        assert out.instance[60, 80] == 1 and out.class_id[60, 80] == 1
        # The far box is wider: visible beside the near one.
        assert out.instance[60, 58] == 2


def test_depth_output_is_metric_z(renderer):
    # A wall (box face) 10 m ahead of the camera: its near face is at x = 10.
    renderer.set_boxes(box(11.0, size=(2.0, 20.0, 20.0)))
    out = renderer.render([View(camera())], outputs=("depth", "instance"))[0]
    assert out.depth[60, 80] == pytest.approx(10.0, abs=1e-3)
    assert out.depth[5, 5] == pytest.approx(10.0, abs=1e-3)  # z-depth, not ray length
    renderer.set_boxes(Boxes.empty())
    empty = renderer.render([View(camera())], outputs=("depth", "instance"))[0]
    assert not empty.depth.any() and not empty.instance.any()


def test_box_lands_where_the_camera_projects_it(renderer):
    cam = camera()
    b = box(10.0, y=2.0, size=(1.0, 1.0, 1.0))
    renderer.set_boxes(b)
    inst = renderer.render([View(cam)], outputs=("instance",))[0].instance
    rows, cols = np.nonzero(inst == 1)
    uv, _ = cam.project(b.corners()[0])
    # Silhouette extent matches the corners' projected extent to within a pixel.
    assert abs(cols.min() - uv[:, 0].min()) <= 1.0 and abs(cols.max() - uv[:, 0].max()) <= 1.0
    assert abs(rows.min() - uv[:, 1].min()) <= 1.0 and abs(rows.max() - uv[:, 1].max()) <= 1.0


def test_distorted_camera_matches_analytic_projection(renderer):
    cam = camera(width=320, height=240, f=160.0, distortion=(-0.3, 0.08, 0.001, -0.001, 0.0))
    boxes = Boxes([[8.0, 3.0, 1.0], [8.0, -3.5, 2.0]], [[0.4, 0.4, 0.4]] * 2, [0.0, 0.0], [1, 1], [1, 2])
    renderer.set_boxes(boxes)
    inst = renderer.render([View(cam)], outputs=("instance",))[0].instance
    for k in (1, 2):
        rows, cols = np.nonzero(inst == k)
        uv, _ = cam.project(boxes.corners()[k - 1])
        centre = uv.mean(axis=0)
        assert abs(cols.mean() - centre[0]) < 1.5 and abs(rows.mean() - centre[1]) < 1.5


def test_box_behind_the_near_plane_renders_its_visible_part(renderer):
    # A long box from 1 m behind the camera to 9 m ahead: the visible part fills the view bottom.
    renderer.set_boxes(box(4.0, y=0.0, z=0.25, size=(10.0, 3.0, 0.5)))
    out = renderer.render([View(camera())], outputs=("instance", "depth"))[0]
    assert out.instance[119, 80] == 1  # right under the camera: clipped, still drawn
    assert 0 < out.depth[119, 80] < 2.0
    assert out.instance[0, 80] == 0  # above the horizon: nothing


def test_ribbon_and_polygon_on_ground_in_bev(renderer):
    bev = OrthoCamera("bev", 100, 100, extent_x=20.0, extent_y=20.0)
    line = ribbons(np.array([[-5.0, 0.0, 0.0], [5.0, 0.0, 0.0]]), np.array([0, 2]), 2.0, 3, 7)
    square = polygons([[np.array([[2.0, 2.0, 0.0], [8.0, 2.0, 0.0], [8.0, 8.0, 0.0], [2.0, 8.0, 0.0]])]], 4, 9)
    renderer.set_static(TriangleMesh(*(np.concatenate([getattr(m, f) for m in (line, square)]) for f in ("positions", "class_ids", "instance_ids"))))
    renderer.set_boxes(Boxes.empty())
    out = renderer.render([View(bev)], outputs=("class_id", "instance"))[0]
    # Ribbon: 10 m x 2 m = 50 x 10 px, centred, running up the image (body x).
    assert (out.instance == 7).sum() == pytest.approx(500, abs=20)
    assert out.instance[50, 50] == 7 and out.instance[50, 40] == 0
    # Square at x in [2, 8], y in [2, 8]: image rows 10..40, columns 10..40 (left is +y).
    assert (out.instance == 9).sum() == pytest.approx(900, abs=40)
    assert out.class_id[25, 25] == 4


def test_depth_decay_scales_colour(ctx):
    style = Style.default()
    renderer = Renderer(ctx, style)
    try:
        renderer.set_boxes(box(61.0, size=(2.0, 40.0, 40.0), cls=1))
        out = renderer.render([View(camera())], outputs=("rgb",))[0]
        back_face = style.face_colors[1, 1].astype(float)  # the camera sees the box's back (-x) face
        expected = back_face * (1 - 60.0 / 120.0)
        np.testing.assert_allclose(out.rgb[60, 80], expected, atol=1.5)
    finally:
        renderer.close()


def test_views_of_different_sizes_in_one_batch(renderer):
    renderer.set_boxes(box(10.0))
    views = [View(camera(160, 120)), View(camera(64, 32, f=32.0)), View(OrthoCamera("bev", 50, 50))]
    outs = renderer.render(views, outputs=("rgb", "instance"))
    assert [o.rgb.shape for o in outs] == [(120, 160, 3), (32, 64, 3), (50, 50, 3)]
    assert outs[0].instance[60, 80] == 1 and outs[1].instance[16, 32] == 1
    bev_rows, bev_cols = np.nonzero(outs[2].instance == 1)
    # 2 m box 10 m ahead in a 64 m wide, 50 px BEV: rows 16..17 from the top half, centred columns.
    assert 15 <= bev_rows.mean() <= 19 and 24 <= bev_cols.mean() <= 25


def test_render_is_deterministic(ctx):
    outs = []
    for _ in range(2):
        with Renderer(ctx, Style.default()) as r:
            r.set_boxes(Boxes([[7.0, 1.0, 1.0], [15.0, -3.0, 1.5]], [[4, 2, 2], [5, 2, 3]], [0.3, -1.0], [1, 2], [1, 2]))
            o = r.render([View(camera(distortion=(-0.2, 0, 0, 0, 0))), View(camera())], outputs=("rgb", "depth"))
            outs.append([(v.rgb.tobytes(), v.depth.tobytes()) for v in o])
    assert outs[0] == outs[1]


def test_many_frames_no_errors_no_leaks(ctx):
    with Renderer(ctx, Style.default()) as r:
        r.render([View(camera())], outputs=("rgb", "instance"))
        live = r.num_live_objects
        for i in range(100):
            r.set_boxes(Boxes([[5.0 + i * 0.1, 0.0, 1.0]] * (1 + i % 5), [[2, 2, 2]] * (1 + i % 5), [0.0] * (1 + i % 5), [1] * (1 + i % 5), list(range(1, 2 + i % 5))))
            r.render([View(camera())], outputs=("rgb", "instance"))
        assert ctx.error == "GL_NO_ERROR"
        assert r.num_live_objects <= live + 2  # the box buffer may grow once
    r.close()  # closing twice is safe
    assert r.num_live_objects == 0
    with pytest.raises(RuntimeError, match="closed"):
        r.render([View(camera())])


def test_bad_inputs(renderer):
    with pytest.raises(ValueError, match="class id 99"):
        renderer.set_boxes(box(5.0, cls=99))
    with pytest.raises(ValueError, match="unknown or empty outputs"):
        renderer.render([View(camera())], outputs=("normals",))
    with pytest.raises(ValueError, match="non-finite"):
        Boxes([[np.nan, 0, 0]], [[1, 1, 1]], [0], [1], [1])


def test_pack_tiles_wraps_rows():
    origins, size = pack_tiles([(100, 50), (100, 60), (100, 40)], max_width=250)
    assert origins == [(0, 0), (100, 0), (0, 60)]
    assert size == (200, 100)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_render_stream_matches_render(renderer, depth):
    views = [View(camera()), View(camera(80, 60, f=40.0, distortion=(-0.2, 0.05, 0, 0, 0)))]
    frames = [(Boxes([[5.0 + i, 0.5 * i, 1.0]], [[2, 2, 2]], [0.1 * i], [1], [i + 1]), views) for i in range(5)]
    expected = []
    for boxes, vs in frames:
        renderer.set_boxes(boxes)
        expected.append([(o.rgb.copy(), o.instance.copy()) for o in renderer.render(vs, outputs=("rgb", "instance"))])
    streamed = list(renderer.render_stream(frames, outputs=("rgb", "instance"), depth=depth))
    assert len(streamed) == len(frames)
    for exp, got in zip(expected, streamed):
        for (rgb, inst), out in zip(exp, got):
            np.testing.assert_array_equal(out.rgb, rgb)
            np.testing.assert_array_equal(out.instance, inst)
    assert set(np.unique(streamed[3][0].instance)) == {0, 4}  # frame order preserved


def test_renderer_keeps_drawing_after_another_context_comes_and_goes(ctx):
    """Creating or releasing another context in the process makes ours non-current; the
    renderer must make its context current again instead of silently drawing nothing."""
    from rasterizer.context import create_context

    with Renderer(ctx, Style.default()) as r:
        r.set_boxes(box(6.0))
        before = r.render([View(camera())], outputs=("instance",))[0].instance.copy()
        create_context().release()  # leaves no context current
        after = r.render([View(camera())], outputs=("instance",))[0].instance
        assert before[60, 80] == 1
        np.testing.assert_array_equal(after, before)
    assert ctx.error == "GL_NO_ERROR"
