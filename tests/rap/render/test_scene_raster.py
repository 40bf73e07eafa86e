"""Tests of rap/scene_raster.py (and rap/render_job.py's file writer) on the shipped real WOMD
scenario: instance ids, other agents' seats, the BEV, map and light classes, map simplification,
determinism and errors.

Scenario facts used below (step 10 = current step): the SDC is track row 82 (id 2406), stopped
at a red light; vehicle row 20 (id 1641) is about 15 m behind it in the same lane, facing it;
track row 31 (id 1658) is not valid at step 10; the 12 traffic lights show only RED and UNKNOWN,
and light 0 changes UNKNOWN -> RED at step 14 and back to UNKNOWN at step 24.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import shapely

from rap.render.job import agent_row, render_to_dir
from rap.render.rigs import get_rig
from rap.scene import AgentType, LightColor, RoadLineType
from rap.render.scene_raster import InstanceKind, RasterConfig, SceneRasterizer, instance_id, map_mesh
from rap.render.style import RasterClass, default_style
from rasterizer.renderer import Renderer

STEP = 10
EGO_ROW = 82
FOLLOWER_ROW, FOLLOWER_ID = 20, 1641
INVALID_ROW, INVALID_ID = 31, 1658
FRONT_SIZE = (320, 180)
BEV_SIZE = (240, 320)  # non-square on purpose: width spans the lateral 64 m, height the forward 64 m
BEV_EXTENT, BEV_AHEAD = 64.0, 16.0  # [m] BEV square side, centre ahead of the viewer's origin
ALL_OUTPUTS = ("rgb", "class_id", "instance", "depth")

AGENT_CLASSES = {
    AgentType.UNSET: RasterClass.OTHER_AGENT,
    AgentType.VEHICLE: RasterClass.VEHICLE,
    AgentType.PEDESTRIAN: RasterClass.PEDESTRIAN,
    AgentType.CYCLIST: RasterClass.CYCLIST,
    AgentType.OTHER: RasterClass.OTHER_AGENT,
}
LIGHT_CLASSES = {
    LightColor.UNKNOWN: RasterClass.LIGHT_UNKNOWN,
    LightColor.RED: RasterClass.LIGHT_RED,
    LightColor.YELLOW: RasterClass.LIGHT_YELLOW,
    LightColor.GREEN: RasterClass.LIGHT_GREEN,
}


# -- helpers -----------------------------------------------------------------------------------
def decode(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids → (kind, index): ``id >> 20`` and the low 20 bits."""
    ids = np.asarray(ids, dtype=np.uint32)
    return ids >> 20, ids & 0xFFFFF


def bev_pixel(x: float, y: float, size=BEV_SIZE) -> tuple[int, int]:
    """(row, col) of viewer-frame point (x, y) in the BEV: 64 m x 64 m centred 16 m ahead,
    image up = forward (+x), image right = right (-y); pixel centres at integer coordinates."""
    w, h = size
    col = (-y / BEV_EXTENT + 0.5) * w - 0.5
    row = (-(x - BEV_AHEAD) / BEV_EXTENT + 0.5) * h - 0.5
    return int(round(row)), int(round(col))


def bev_points(rows: np.ndarray, cols: np.ndarray, size=BEV_SIZE) -> np.ndarray:
    """(N, 2) viewer-frame x, y [m] of BEV pixel centres (inverse of :func:`bev_pixel`)."""
    w, h = size
    x = BEV_AHEAD - ((rows + 0.5) / h - 0.5) * BEV_EXTENT
    y = -((cols + 0.5) / w - 0.5) * BEV_EXTENT
    return np.stack([x, y], axis=1)


def ray_box_depth(cam, center: np.ndarray, size: np.ndarray, heading: float) -> float:
    """Depth along the optical axis [m] where the ray from the camera through a box's centre
    enters the box (body frame). Analytic: slab intersection."""
    origin = cam.cam_to_body[:3, 3]
    axis = cam.cam_to_body[:3, 2]
    c, s = np.cos(heading), np.sin(heading)
    to_box = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # body → box axes
    p = to_box @ (origin - center)
    d = to_box @ (center - origin)
    half = np.asarray(size, dtype=np.float64) / 2
    with np.errstate(divide="ignore"):
        t1, t2 = (-half - p) / d, (half - p) / d
    t_enter = float(np.max(np.minimum(t1, t2)))
    return float(t_enter * d @ (to_box @ axis))


def expected_classes(scene, instance: np.ndarray, step: int) -> np.ndarray:
    """The class every pixel must have, derived from its instance id and the scene alone."""
    kind, index = decode(instance)
    out = np.zeros(instance.shape, dtype=np.int64)
    m = scene.map
    yellow = {t for t in RoadLineType if "YELLOW" in t.name}
    sizes = {
        InstanceKind.LANE: len(m.lanes),
        InstanceKind.ROAD_LINE: len(m.road_lines),
        InstanceKind.ROAD_EDGE: len(m.road_edges),
        InstanceKind.STOP_LINE: len(m.stop_lines),
        InstanceKind.CROSSWALK: len(m.crosswalks),
        InstanceKind.SPEED_BUMP: len(m.speed_bumps),
        InstanceKind.DRIVEWAY: len(m.driveways),
        InstanceKind.DRIVABLE_AREA: len(m.drivable_area),
        InstanceKind.TRAFFIC_LIGHT: len(scene.traffic_lights),
        InstanceKind.STOP_SIGN: len(m.stop_signs),
    }
    fixed = {
        InstanceKind.LANE: RasterClass.LANE_CENTERLINE,
        InstanceKind.ROAD_EDGE: RasterClass.ROAD_EDGE,
        InstanceKind.STOP_LINE: RasterClass.STOP_LINE,
        InstanceKind.CROSSWALK: RasterClass.CROSSWALK,
        InstanceKind.SPEED_BUMP: RasterClass.SPEED_BUMP,
        InstanceKind.DRIVEWAY: RasterClass.DRIVEWAY,
        InstanceKind.DRIVABLE_AREA: RasterClass.DRIVABLE_AREA,
        InstanceKind.STOP_SIGN: RasterClass.STOP_SIGN,
    }
    drawn = instance != 0
    assert set(np.unique(kind[drawn])) <= {int(k) for k in InstanceKind}
    for k, n in sizes.items():
        sel = drawn & (kind == k)
        assert np.all(index[sel] < n), f"{k.name} index out of range"
        if k in fixed:
            out[sel] = fixed[k]
        elif k == InstanceKind.ROAD_LINE:
            is_yellow = np.isin(m.road_lines.types[index[sel]], [int(t) for t in yellow])
            out[sel] = np.where(is_yellow, RasterClass.ROAD_LINE_YELLOW, RasterClass.ROAD_LINE_WHITE)
        else:
            colors = scene.traffic_lights.colors[index[sel], step]
            out[sel] = [LIGHT_CLASSES[LightColor(int(c))] for c in colors]
    sel = drawn & (kind == InstanceKind.AGENT)
    rows = index[sel].astype(np.int64) - 1
    assert np.all((rows >= 0) & (rows < scene.tracks.num_agents))
    assert np.all(scene.tracks.valid[rows, step]), "an agent invalid at this step was drawn"
    out[sel] = [AGENT_CLASSES[AgentType(int(t))] for t in scene.tracks.types[rows]]
    return out


def _geometry(points: np.ndarray):
    """A shapely line (or point, for a one-point polyline) in xy."""
    return shapely.LineString(points[:, :2]) if len(points) > 1 else shapely.Point(points[0, :2])


def render(ctx, scene, step, rig, viewer=None, outputs=("class_id", "instance"), config=RasterConfig()):
    """Render with a fresh Renderer (a Renderer holds one scene's static map at a time)."""
    with Renderer(ctx, default_style()) as renderer:
        views = SceneRasterizer(renderer, scene, config).render(step, rig, viewer, outputs)
        return {
            v.camera_name: dataclasses.replace(v, **{o: getattr(v, o).copy() for o in outputs})
            for v in views
        }


@pytest.fixture(scope="module")
def front3():
    return get_rig("front3", FRONT_SIZE)


@pytest.fixture(scope="module")
def bev():
    return get_rig("bev", BEV_SIZE)


# -- instance ids ------------------------------------------------------------------------------
def test_instance_id_layout():
    assert instance_id(InstanceKind.AGENT, [0, EGO_ROW]).tolist() == [1, EGO_ROW + 1]
    assert instance_id(InstanceKind.TRAFFIC_LIGHT, 3) == (1 << 20) | 3
    assert instance_id(InstanceKind.DRIVABLE_AREA, 0) == 9 << 20
    kind, index = decode(instance_id(InstanceKind.ROAD_EDGE, [0, 27]))
    assert kind.tolist() == [InstanceKind.ROAD_EDGE] * 2 and index.tolist() == [0, 27]


def test_instance_at_projected_centre_is_that_vehicle(ctx, womd_scene, front3):
    """In the ego's front camera, each unoccluded vehicle's projected box centre shows that
    vehicle's instance (row + 1) with class VEHICLE; 'unoccluded' means the rendered depth there
    equals the analytic depth where the centre ray enters the box."""
    cam = next(c for c in front3 if c.name == "CAM_F0")
    view = render(ctx, womd_scene, STEP, front3, outputs=("class_id", "instance", "depth"))["CAM_F0"]
    assert view.instance.shape == (FRONT_SIZE[1], FRONT_SIZE[0]) and view.instance.dtype == np.uint32
    assert view.depth.dtype == np.float32

    local = womd_scene.in_agent_frame(womd_scene.ego_index, STEP).tracks
    centers = local.xyz[:, STEP]
    uv, z = cam.project(centers)
    w, h = FRONT_SIZE
    checked = []
    for row in np.flatnonzero(local.valid[:, STEP] & (local.types == AgentType.VEHICLE)):
        if row == EGO_ROW or not 3.0 < z[row] < 40.0:
            continue
        u, v = np.round(uv[row]).astype(int)
        if not (5 <= u < w - 5 and 5 <= v < h - 5):
            continue
        size = np.array([local.length[row, STEP], local.width[row, STEP], local.height[row, STEP]])
        analytic = ray_box_depth(cam, centers[row], size, local.heading[row, STEP])
        if abs(view.depth[v, u] - analytic) > 0.3:
            continue  # something nearer covers the centre
        kind, index = decode(view.instance[v, u])
        assert kind == InstanceKind.AGENT, f"row {row}: pixel ({v}, {u}) has instance kind {kind}"
        assert index - 1 == row, f"pixel ({v}, {u}) shows agent row {int(index) - 1}, expected {row}"
        assert view.class_id[v, u] == RasterClass.VEHICLE
        # The whole silhouette of that instance carries the vehicle class.
        assert np.all(view.class_id[view.instance == row + 1] == RasterClass.VEHICLE)
        checked.append(int(womd_scene.tracks.ids[row]))
    assert len(checked) >= 2, f"too few unoccluded vehicles in front of the ego: {checked}"
    assert 1644 in checked  # the crossing vehicle ~25 m ahead


def test_classes_follow_instances_everywhere(ctx, womd_scene, front3, bev):
    """Every drawn pixel's class is the one its instance's element type implies (agent type,
    road-line colour, light state), and instance indices stay within their element sets."""
    for rig in (front3, bev):
        for name, view in render(ctx, womd_scene, STEP, rig).items():
            expected = expected_classes(womd_scene, view.instance, STEP)
            if rig is bev:  # the viewer's own box is drawn with the EGO class in a BEV
                expected[view.instance == EGO_ROW + 1] = RasterClass.EGO
            np.testing.assert_array_equal(view.class_id, expected, err_msg=name)


# -- viewers -----------------------------------------------------------------------------------
def test_viewer_never_sees_its_own_box(ctx, womd_scene, front3):
    for viewer, own in ((None, EGO_ROW), (FOLLOWER_ROW, FOLLOWER_ROW)):
        for step in (0, STEP, 50, 90):
            views = render(ctx, womd_scene, step, front3, viewer)
            for name, view in views.items():
                assert not np.any(view.instance == own + 1), f"viewer row {own} sees itself in {name} at step {step}"


def test_other_seat_sees_the_ego_ahead(ctx, womd_scene, front3):
    """From the seat of the vehicle behind the SDC, the SDC is a VEHICLE in the front camera,
    where that agent's camera projects it."""
    cam = next(c for c in front3 if c.name == "CAM_F0")
    views = render(ctx, womd_scene, STEP, front3, FOLLOWER_ROW)
    front = views["CAM_F0"]
    ego_mask = front.instance == EGO_ROW + 1
    assert ego_mask.sum() > 200
    assert np.all(front.class_id[ego_mask] == RasterClass.VEHICLE)
    local = womd_scene.in_agent_frame(FOLLOWER_ROW, STEP).tracks
    uv, depth = cam.project(local.xyz[[EGO_ROW], STEP])
    (u, v), depth = uv[0], depth[0]
    assert 10.0 < depth < 20.0
    rows, cols = np.nonzero(ego_mask)
    assert rows.min() <= v <= rows.max() and cols.min() <= u <= cols.max()
    # The same instant from the SDC's seat looks different (it is another camera pose).
    ego_front = render(ctx, womd_scene, STEP, front3)["CAM_F0"]
    assert np.mean(ego_front.class_id != front.class_id) > 0.1


@pytest.mark.parametrize("step", [STEP, 60])
def test_bev_draws_the_viewer_as_ego(ctx, womd_scene, bev, step):
    view = render(ctx, womd_scene, step, bev)["BEV"]
    assert view.class_id.shape == (BEV_SIZE[1], BEV_SIZE[0])
    local = womd_scene.in_agent_frame(EGO_ROW, step).tracks
    x, y = local.x[EGO_ROW, step], local.y[EGO_ROW, step]
    assert 1.0 < x < 2.0 and abs(y) < 0.1  # box centre ahead of the rear axle
    r, c = bev_pixel(x, y)
    assert view.class_id[r, c] == RasterClass.EGO
    assert view.instance[r, c] == EGO_ROW + 1
    ego = view.class_id == RasterClass.EGO
    assert set(np.unique(view.instance[ego])) == {EGO_ROW + 1}
    rows, cols = np.nonzero(ego)
    # Heading 0 in its own frame: length along the image's vertical, width along the horizontal.
    length_px = local.length[EGO_ROW, step] / BEV_EXTENT * BEV_SIZE[1]
    width_px = local.width[EGO_ROW, step] / BEV_EXTENT * BEV_SIZE[0]
    assert abs((rows.max() - rows.min() + 1) - length_px) <= 1.5
    assert abs((cols.max() - cols.min() + 1) - width_px) <= 1.5


def test_bev_from_another_seat(ctx, womd_scene, bev):
    view = render(ctx, womd_scene, STEP, bev, FOLLOWER_ROW)["BEV"]
    assert set(np.unique(view.instance[view.class_id == RasterClass.EGO])) == {FOLLOWER_ROW + 1}
    local = womd_scene.in_agent_frame(FOLLOWER_ROW, STEP).tracks
    r, c = bev_pixel(local.x[FOLLOWER_ROW, STEP], local.y[FOLLOWER_ROW, STEP])
    assert view.class_id[r, c] == RasterClass.EGO
    r, c = bev_pixel(local.x[EGO_ROW, STEP], local.y[EGO_ROW, STEP])
    assert view.instance[r, c] == EGO_ROW + 1 and view.class_id[r, c] == RasterClass.VEHICLE


# -- map and lights ----------------------------------------------------------------------------
def test_camera_views_leave_the_road_black_by_default(ctx, womd_scene, front3, bev):
    """Like the RAP reference raster, perspective views draw no drivable-area fill (lines,
    markings and boxes only); the BEV does, and perspective views do when configured."""
    views = render(ctx, womd_scene, STEP, front3)
    for view in views.values():
        assert not (view.class_id == RasterClass.DRIVABLE_AREA).any()
        assert (view.class_id == RasterClass.LANE_CENTERLINE).any()
    assert (render(ctx, womd_scene, STEP, bev)["BEV"].class_id == RasterClass.DRIVABLE_AREA).mean() > 0.2


def test_front_views_show_the_road(ctx, womd_scene, front3):
    views = render(ctx, womd_scene, STEP, front3, config=RasterConfig(camera_drivable_area=True))
    seen = set()
    for view in views.values():
        seen |= set(np.unique(view.class_id).tolist())
    for cls in (RasterClass.DRIVABLE_AREA, RasterClass.LANE_CENTERLINE, RasterClass.ROAD_EDGE, RasterClass.CROSSWALK):
        assert cls in seen, cls.name
    front = views["CAM_F0"].class_id
    assert np.all(front[: FRONT_SIZE[1] // 3] != RasterClass.DRIVABLE_AREA)  # no road in the sky
    assert np.mean(front[FRONT_SIZE[1] // 2 :] == RasterClass.DRIVABLE_AREA) > 0.2


def test_bev_map_pixels_lie_on_their_elements(ctx, womd_scene, bev):
    """Lane, road-edge and road-line pixels in the BEV are within half a line width (plus a
    pixel) of the element their instance id names (viewer frame geometry)."""
    view = render(ctx, womd_scene, STEP, bev)["BEV"]
    m = womd_scene.in_agent_frame(EGO_ROW, STEP).map
    cfg = RasterConfig()
    pixel = BEV_EXTENT / min(BEV_SIZE)
    kind, index = decode(view.instance)
    for k, polys, width in (
        (InstanceKind.LANE, m.lanes.centerlines, cfg.lane_centerline_width),
        (InstanceKind.ROAD_EDGE, m.road_edges.lines, cfg.road_edge_width),
        (InstanceKind.ROAD_LINE, m.road_lines.lines, cfg.road_line_width),
    ):
        rows, cols = np.nonzero(kind == k)
        assert len(rows) > 100, k.name
        pts = shapely.points(bev_points(rows, cols))
        lines = np.array([_geometry(polys[i]) for i in range(len(polys))], dtype=object)
        dist = shapely.distance(pts, lines[index[rows, cols]])
        assert np.max(dist) <= width / 2 + pixel, f"{k.name}: pixel {np.max(dist):.2f} m off its element"
    assert RasterClass.ROAD_LINE_WHITE in view.class_id


@pytest.mark.parametrize(
    "line_type, cls",
    [(RoadLineType.BROKEN_SINGLE_WHITE, RasterClass.ROAD_LINE_WHITE), (RoadLineType.SOLID_DOUBLE_YELLOW, RasterClass.ROAD_LINE_YELLOW)],
)
def test_road_line_colour_follows_its_type(ctx, tiny_scene, bev, line_type, cls):
    """The hand-built scene's one road line (y = 1.75 m, world) is drawn in its type's colour."""
    lines = dataclasses.replace(tiny_scene.map.road_lines, types=np.array([line_type], dtype=np.int8))
    scene = dataclasses.replace(tiny_scene, map=dataclasses.replace(tiny_scene.map, road_lines=lines))
    view = render(ctx, scene, scene.current_index, bev)["BEV"]
    mask = view.instance == instance_id(InstanceKind.ROAD_LINE, 0)
    assert mask.sum() > 20
    assert np.all(view.class_id[mask] == cls)


@pytest.mark.parametrize("step", [STEP, 14, 30])
def test_light_boxes_show_their_state(ctx, womd_scene, bev, step):
    """Each light with a state at ``step`` is a box of its colour's class; light 0 goes
    UNKNOWN (step 10) → RED (14) → UNKNOWN (30), and its class follows."""
    lights = womd_scene.traffic_lights
    view = render(ctx, womd_scene, step, bev)["BEV"]
    kind, index = decode(view.instance)
    for k in np.flatnonzero(lights.valid[:, step]):
        mask = (kind == InstanceKind.TRAFFIC_LIGHT) & (index == k)
        assert mask.any(), f"light {k} not visible at step {step}"
        want = LIGHT_CLASSES[LightColor(int(lights.colors[k, step]))]
        assert np.all(view.class_id[mask] == want), f"light {k} at step {step}: want {want.name}"
    red = lights.valid[:, step] & (lights.colors[:, step] == LightColor.RED)
    assert red.any() and RasterClass.LIGHT_RED in view.class_id
    assert RasterClass.LIGHT_GREEN not in view.class_id  # no light in this scenario is green
    want0 = {STEP: RasterClass.LIGHT_UNKNOWN, 14: RasterClass.LIGHT_RED, 30: RasterClass.LIGHT_UNKNOWN}[step]
    assert np.all(view.class_id[(kind == InstanceKind.TRAFFIC_LIGHT) & (index == 0)] == want0)


def test_stop_lines_are_drawn_where_they_are(ctx, womd_scene, bev):
    """With the lights switched off (their boxes sit on the stop lines), every stop line inside
    the BEV shows up, and its pixels lie on it. (Cars waiting at the red light cover parts.)"""
    lights = dataclasses.replace(womd_scene.traffic_lights, valid=np.zeros_like(womd_scene.traffic_lights.valid))
    scene = dataclasses.replace(womd_scene, traffic_lights=lights)
    view = render(ctx, scene, STEP, bev)["BEV"]
    local = scene.in_agent_frame(EGO_ROW, STEP).map.stop_lines.lines
    pixel = BEV_EXTENT / min(BEV_SIZE)
    inside = 0
    for i in range(len(local)):
        pts = local[i][:, :2]
        corners = [bev_pixel(x, y) for x, y in pts]
        if not all(0 <= r < BEV_SIZE[1] and 0 <= c < BEV_SIZE[0] for r, c in corners):
            continue
        inside += 1
        rows, cols = np.nonzero(view.instance == instance_id(InstanceKind.STOP_LINE, i))
        assert len(rows) >= 3, f"stop line {i} is not drawn"
        assert np.all(view.class_id[rows, cols] == RasterClass.STOP_LINE)
        dist = shapely.distance(shapely.points(bev_points(rows, cols)), _geometry(local[i]))
        assert np.max(dist) <= RasterConfig().stop_line_width / 2 + pixel
    assert inside >= 10
    for cls in (RasterClass.LIGHT_RED, RasterClass.LIGHT_UNKNOWN, RasterClass.LIGHT_GREEN):
        assert cls not in view.class_id


def test_drivable_area_does_not_hide_markings(ctx, womd_scene, front3, bev):
    """Painted markings (crosswalks, lane centrelines, road lines) are drawn over the drivable
    area: every pixel that shows a marking without the area still shows it with the area."""
    markings = [RasterClass.CROSSWALK, RasterClass.LANE_CENTERLINE, RasterClass.ROAD_LINE_WHITE, RasterClass.ROAD_LINE_YELLOW]
    for rig in (bev, front3):
        with_area = render(ctx, womd_scene, STEP, rig, config=RasterConfig(camera_drivable_area=True))
        without = render(ctx, womd_scene, STEP, rig, config=RasterConfig(draw_drivable_area=False))
        for name in with_area:
            marked = np.isin(without[name].class_id, markings)
            hidden = marked & (with_area[name].class_id == RasterClass.DRIVABLE_AREA)
            assert hidden.sum() <= 0.01 * marked.sum(), f"{name}: {hidden.sum()} of {marked.sum()} marking pixels hidden"


def test_two_scene_rasterizers_share_one_renderer(ctx, womd_scene, front3):
    """Each SceneRasterizer draws its own map even after another one replaced the renderer's."""
    from rap.render.style import default_style
    from rasterizer.renderer import Renderer

    with Renderer(ctx, default_style()) as r:
        no_area = SceneRasterizer(r, womd_scene, RasterConfig(draw_drivable_area=False))
        SceneRasterizer(r, womd_scene, RasterConfig(camera_drivable_area=True))  # a map with the area, shown in cameras
        views = no_area.render(STEP, front3, outputs=("class_id",))
        assert not any((v.class_id == RasterClass.DRIVABLE_AREA).any() for v in views)


# -- map simplification ------------------------------------------------------------------------
def test_simplification_drops_vertices_not_elements(womd_scene):
    origin = womd_scene.ego_pose()[:3]
    full = map_mesh(womd_scene.map, origin, RasterConfig(simplify_tolerance=0.0))
    default = map_mesh(womd_scene.map, origin)
    coarse = map_mesh(womd_scene.map, origin, RasterConfig(simplify_tolerance=0.5))
    assert RasterConfig().simplify_tolerance == pytest.approx(0.05)
    n_full, n_default, n_coarse = len(full.positions), len(default.positions), len(coarse.positions)
    assert n_full > 5 * n_default > 5 * n_coarse
    # No element disappears.
    assert set(np.unique(full.instance_ids)) == set(np.unique(default.instance_ids))
    np.testing.assert_allclose(full.positions.min(axis=0), default.positions.min(axis=0), atol=0.1)
    np.testing.assert_allclose(full.positions.max(axis=0), default.positions.max(axis=0), atol=0.1)


def test_simplification_keeps_the_raster(ctx, womd_scene, front3, bev):
    full = render(ctx, womd_scene, STEP, front3, config=RasterConfig(simplify_tolerance=0.0))
    default = render(ctx, womd_scene, STEP, front3)
    for name in full:
        assert np.mean(full[name].class_id == default[name].class_id) >= 0.99, name
    # The BEV's thin lines are ~1 px wide, so compare up to a one-pixel shift.
    a = render(ctx, womd_scene, STEP, bev, config=RasterConfig(simplify_tolerance=0.0))["BEV"].class_id
    b = render(ctx, womd_scene, STEP, bev)["BEV"].class_id
    pad = np.pad(b, 1, constant_values=255)
    h, w = a.shape
    near = np.zeros(a.shape, dtype=bool)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            near |= pad[dr : dr + h, dc : dc + w] == a
    assert np.mean(a == b) >= 0.98
    assert np.mean(near) >= 0.995


# -- determinism and files ---------------------------------------------------------------------
def test_render_to_dir_is_deterministic(womd_scene, front3, tmp_path):
    docs = [render_to_dir(womd_scene, front3, tmp_path / d, outputs=ALL_OUTPUTS) for d in "ab"]
    assert docs[0] == docs[1]
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files == sorted(docs[0]["files"] + ["render.json"])
    assert len(files) == 3 * 4 + 2
    digest = {d: {f: hashlib.sha256((tmp_path / d / f).read_bytes()).hexdigest() for f in files} for d in "ab"}
    assert digest["a"] == digest["b"]
    inst = np.load(tmp_path / "a" / "CAM_F0_instance.npy")
    assert inst.shape == (FRONT_SIZE[1], FRONT_SIZE[0]) and inst.dtype == np.uint32 and inst.any()


def test_render_steps_matches_render(ctx, womd_scene, front3):
    """Asynchronous readback (render_steps) yields, in order, what render gives step by step,
    in arrays that stay valid after later frames."""
    steps = [STEP, 50, STEP, 90]
    outputs = ("class_id", "instance", "depth")
    with Renderer(ctx, default_style()) as renderer:
        rast = SceneRasterizer(renderer, womd_scene)
        for depth in (1, 3):
            streamed = list(rast.render_steps(steps, front3, FOLLOWER_ROW, outputs=outputs, depth=depth))
            assert len(streamed) == len(steps)
            for step, views in zip(steps, streamed):
                ref = rast.render(step, front3, FOLLOWER_ROW, outputs=outputs)
                assert [v.camera_name for v in views] == [c.name for c in front3]
                for got, want in zip(views, ref):
                    for name in outputs:
                        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"step {step} {got.camera_name} {name}")
        assert not np.array_equal(streamed[0][1].instance, streamed[1][1].instance)
        with pytest.raises(ValueError, match=f"id {INVALID_ID}"):
            list(rast.render_steps([STEP], front3, INVALID_ROW))


def test_same_renderer_same_pixels(ctx, womd_scene, front3):
    with Renderer(ctx, default_style()) as renderer:
        rast = SceneRasterizer(renderer, womd_scene)
        first = [v.rgb.copy() for v in rast.render(STEP, front3)]
        rast.render(50, front3)  # another step in between
        again = [v.rgb.copy() for v in rast.render(STEP, front3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


# -- errors ------------------------------------------------------------------------------------
def test_invalid_viewer_names_the_agent(ctx, womd_scene, front3):
    assert not womd_scene.tracks.valid[INVALID_ROW, STEP]
    with Renderer(ctx, default_style()) as renderer:
        rast = SceneRasterizer(renderer, womd_scene)
        with pytest.raises(ValueError, match=rf"agent {INVALID_ROW} \(id {INVALID_ID}\) is not valid at step {STEP}"):
            rast.render(STEP, front3, viewer_index=INVALID_ROW)
        with pytest.raises(ValueError, match="step 91 out of range"):
            rast.render(91, front3)
        with pytest.raises(ValueError, match="agent_index 83 out of range"):
            rast.render(STEP, front3, viewer_index=83)
        # The rasterizer still works after the errors.
        assert rast.render(STEP, front3)[0].rgb.any()


def test_agent_row(womd_scene):
    assert agent_row(womd_scene, None) == EGO_ROW
    assert agent_row(womd_scene, 2406) == EGO_ROW
    assert agent_row(womd_scene, FOLLOWER_ID) == FOLLOWER_ROW
    with pytest.raises(ValueError, match=r"no agent with id 424242 \(ids include 1580"):
        agent_row(womd_scene, 424242)


# -- per-tick rendering: map geometry built once per map ---------------------------------------
def test_with_scene_reuses_the_map_and_renders_the_new_scene(ctx, womd_scene, bev):
    """A scene on the same map (a simulation tick) reuses the tessellated map and draws its own
    agents: here the follower, 15 m behind the ego, moved 1 km away and leaves the ego's BEV."""
    tr = womd_scene.tracks
    x = tr.x.copy()
    x[FOLLOWER_ROW] += 1000.0
    moved = dataclasses.replace(womd_scene, tracks=dataclasses.replace(tr, x=x))
    follower = instance_id(InstanceKind.AGENT, FOLLOWER_ROW)
    with Renderer(ctx, default_style()) as renderer:
        rast = SceneRasterizer(renderer, womd_scene)
        tick = rast.with_scene(moved)
        assert tick.mesh is rast.mesh and tick.scene is moved
        (before,) = rast.render(STEP, bev, outputs=("instance",))
        (after,) = tick.render(STEP, bev, outputs=("instance",))
        assert (before.instance == follower).any() and not (after.instance == follower).any()
        # Only the follower changed: every other pixel is the same.
        same = (before.instance != follower) & (after.instance != follower)
        np.testing.assert_array_equal(before.instance[same], after.instance[same])
        other_map = dataclasses.replace(womd_scene, map=dataclasses.replace(womd_scene.map))
        assert rast.with_scene(other_map).mesh is not rast.mesh


def test_render_state_equals_render_of_the_logged_step(ctx, womd_scene, front3):
    from rap.render.scene_raster import AgentStates

    lights = womd_scene.traffic_lights
    outputs = ("rgb", "instance")
    with Renderer(ctx, default_style()) as renderer:
        rast = SceneRasterizer(renderer, womd_scene)
        for viewer in (EGO_ROW, FOLLOWER_ROW):
            want = rast.render(STEP, front3, viewer, outputs=outputs)
            got = rast.render_state(
                front3, womd_scene.agent_pose(viewer, STEP), AgentStates.from_tracks(womd_scene.tracks, STEP),
                lights.colors[:, STEP], lights.valid[:, STEP], viewer, outputs=outputs,
            )  # fmt: skip
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g.rgb, w.rgb)
                np.testing.assert_array_equal(g.instance, w.instance)


def test_render_state_draws_moved_agents_and_new_light_colours(ctx, womd_scene):
    """The per-tick call draws agents where the state puts them and lights in the state's colour."""
    from rap.render.scene_raster import AgentStates

    bev = get_rig("bev", BEV_SIZE)
    lights = womd_scene.traffic_lights
    states = AgentStates.from_tracks(womd_scene.tracks, STEP)
    pose = womd_scene.agent_pose(EGO_ROW, STEP)
    follower = instance_id(InstanceKind.AGENT, FOLLOWER_ROW)
    with Renderer(ctx, default_style()) as renderer:
        rast = SceneRasterizer(renderer, womd_scene)
        (logged,) = rast.render_state(bev, pose, states, lights.colors[:, STEP], lights.valid[:, STEP], EGO_ROW, outputs=("instance", "class_id"))
        assert (logged.instance == follower).any()
        x = states.x.copy()
        x[FOLLOWER_ROW] += 500.0
        away = dataclasses.replace(states, x=x)
        green = np.full(len(lights), int(LightColor.GREEN))
        (tick,) = rast.render_state(bev, pose, away, green, np.ones(len(lights), bool), EGO_ROW, outputs=("instance", "class_id"))
        assert not (tick.instance == follower).any()
        assert (tick.class_id == RasterClass.LIGHT_GREEN).any() and not (tick.class_id == RasterClass.LIGHT_RED).any()
        assert (logged.class_id == RasterClass.LIGHT_RED).any()


def test_lights_sharing_a_stop_point_stand_side_by_side_not_inside_each_other(ctx):
    """Synthetic towns give the left, through and right connectors of one lane a light each at
    the same stop point: their boxes split the lane's width side by side (each keeps its own
    colour's class in the picture) instead of coinciding and z-fighting into stripes."""
    from rap.sources.registry import list_units, load_unit

    scene = load_unit(list_units("synthetic:1")[0])
    lights = scene.traffic_lights
    key = np.round(lights.stop_points[:, :2], 2)
    _, group, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    assert (counts > 1).sum() > 5  # the town has shared stop points
    with Renderer(ctx, default_style()) as renderer:
        boxes = SceneRasterizer(renderer, scene).frame_boxes(0, None)
    kind, index = decode(boxes.instance_ids)
    rows = {int(k): i for i, k in enumerate(index) if kind[i] == InstanceKind.TRAFFIC_LIGHT}
    assert set(rows) == set(np.flatnonzero(lights.valid[:, 0]).tolist())

    def footprint(i):
        c, (length, width, _), h = boxes.centers[i], boxes.sizes[i], boxes.yaws[i]
        corners = np.array([[length, width], [length, -width], [-length, -width], [-length, width]]) / 2
        rot = np.array([[np.cos(h), -np.sin(h)], [np.sin(h), np.cos(h)]])
        return shapely.Polygon(corners @ rot.T + c[:2])

    for g in np.flatnonzero(counts > 1):
        members = [rows[int(k)] for k in np.flatnonzero(group == g) if int(k) in rows]
        shapes = [footprint(i) for i in members]
        for a in range(len(shapes)):
            for b in range(a + 1, len(shapes)):
                assert shapes[a].intersection(shapes[b]).area < 1e-6, (g, members)
        lane_width = max(float(scene.map.lanes.width[scene.map.lanes.index_of(int(lights.lane_ids[k]))]) for k in np.flatnonzero(group == g))
        assert sum(float(boxes.sizes[i][1]) for i in members) <= lane_width + 1e-9
