"""Scene → rasterizer primitives, and rendering a scene's rig from any agent's seat.

The map is tessellated once per scene (:func:`map_mesh`) and uploaded once; each frame only the
agent and traffic-light boxes are rebuilt (:func:`frame_boxes`) and re-uploaded. All geometry is
shifted by a per-scene ``origin`` (world coordinates of the ego at the current step) before it
reaches the GPU, so float32 keeps millimetre precision on large world coordinates.

Instance ids (in the ``instance`` output) identify what a pixel shows: ``id >> 20`` is the
:class:`InstanceKind`, ``id & 0xFFFFF`` the index within that kind (for agents: the row of
``scene.tracks``; for lights: the row of ``scene.traffic_lights``; for map elements: the row in
their element set).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, Iterator, Sequence

import numpy as np
import shapely

from rap.geometry import wrap_angle
from rap.scene import AgentType, LightColor, MapElements, Polylines, RoadLineType, Scene
from rap.render.style import RasterClass
from rasterizer.camera import OrthoCamera, Rig
from rasterizer.primitives import Boxes, TriangleMesh, concat_meshes, polygons, ribbons
from rasterizer.renderer import Renderer, View, ViewOutput


class InstanceKind(IntEnum):
    """High bits (``id >> 20``) of instance ids."""

    AGENT = 0
    TRAFFIC_LIGHT = 1
    LANE = 2
    ROAD_LINE = 3
    ROAD_EDGE = 4
    STOP_LINE = 5
    CROSSWALK = 6
    SPEED_BUMP = 7
    DRIVEWAY = 8
    DRIVABLE_AREA = 9
    STOP_SIGN = 10


def instance_id(kind: InstanceKind, index) -> np.ndarray:
    """Instance ids of elements ``index`` of ``kind`` (agents: row + 1, so 0 stays background)."""
    index = np.asarray(index, dtype=np.uint32)
    return (np.uint32(int(kind) << 20) | (index + (1 if kind == InstanceKind.AGENT else 0))).astype(np.uint32)


@dataclass(frozen=True)
class RasterConfig:
    """Line widths [m], ground-layer lifts [m] and light-box size of the scene raster.

    Lifts keep painted layers above the road surface in the depth test: lanes and edges are
    polylines with their own z while the drivable area is triangulated between its outline
    points, so the two surfaces are not exactly coplanar.
    """

    lane_centerline_width: float = 0.25  # [m]
    road_line_width: float = 0.15  # [m]
    road_edge_width: float = 0.3  # [m]
    stop_line_width: float = 0.5  # [m]
    draw_drivable_area: bool = True  # include the drivable-area fill in the map mesh ...
    camera_drivable_area: bool = False  # ... and show it in perspective views (BEVs always do); the RAP reference leaves the road black
    draw_lane_centerlines: bool = True
    lift_area: float = 0.0  # [m]
    lift_marking: float = 0.03  # [m] crosswalks, speed bumps
    lift_line: float = 0.06  # [m] lanes, road lines, edges, stop lines
    light_length: float = 0.6  # [m] along the lane
    light_height: float = 0.6  # [m]
    light_width_fraction: float = 0.9  # of the lane width
    stop_sign_size: tuple[float, float, float] = (0.3, 0.3, 2.0)  # [m] post drawn at each stop sign
    simplify_tolerance: float = 0.05  # [m] Douglas-Peucker tolerance for map polylines and rings
    draw_ego_box: bool = False  # draw the viewer's own box in camera views (BEV views always do)


_YELLOW_LINES = {
    RoadLineType.BROKEN_SINGLE_YELLOW,
    RoadLineType.BROKEN_DOUBLE_YELLOW,
    RoadLineType.SOLID_SINGLE_YELLOW,
    RoadLineType.SOLID_DOUBLE_YELLOW,
    RoadLineType.PASSING_DOUBLE_YELLOW,
}

AGENT_CLASS = {
    AgentType.UNSET: RasterClass.OTHER_AGENT,
    AgentType.VEHICLE: RasterClass.VEHICLE,
    AgentType.PEDESTRIAN: RasterClass.PEDESTRIAN,
    AgentType.CYCLIST: RasterClass.CYCLIST,
    AgentType.OTHER: RasterClass.OTHER_AGENT,
}

LIGHT_CLASS = {
    LightColor.UNKNOWN: RasterClass.LIGHT_UNKNOWN,
    LightColor.RED: RasterClass.LIGHT_RED,
    LightColor.YELLOW: RasterClass.LIGHT_YELLOW,
    LightColor.GREEN: RasterClass.LIGHT_GREEN,
}


def simplify_polylines(polys: Polylines, tolerance: float, closed: bool = False) -> Polylines:
    """Douglas-Peucker simplification (shapely) of every element, in xy; kept vertices keep z.

    Dense source polylines (Waymo samples lanes every 0.5 m) cost vertices without changing the
    raster: at 0.05 m tolerance the shipped scenario's map drops about 10x in vertex count.
    """
    if tolerance <= 0 or not len(polys):
        return polys
    make = shapely.LinearRing if closed else shapely.LineString
    keep = polys.lengths >= (3 if closed else 2)
    geoms = np.array([make(polys[i]) for i in np.flatnonzero(keep)], dtype=object)
    simplified = shapely.simplify(geoms, tolerance, preserve_topology=closed)
    elements = [np.asarray(shapely.get_coordinates(g, include_z=True)) for g in simplified]
    if closed:
        elements = [e[:-1] if len(e) > 1 and np.array_equal(e[0], e[-1]) else e for e in elements]
    out, j = [], 0
    for i in range(len(polys)):
        if keep[i]:
            out.append(elements[j])
            j += 1
        else:
            out.append(polys[i])
    return Polylines.from_list(out)


_LIGHT_CLASS_LOOKUP = np.array([int(LIGHT_CLASS[LightColor(c)]) for c in range(len(LightColor))], dtype=np.uint32)


def _shifted(points: np.ndarray, origin: np.ndarray, lift: float) -> np.ndarray:
    out = points - origin
    out[:, 2] += lift
    return out


def map_mesh(map_elements: MapElements, origin: np.ndarray, config: RasterConfig = RasterConfig()) -> TriangleMesh:
    """Tessellate the static map, in draw order (drivable area first, then driveways,
    markings, lines; :func:`drivable_area_vertices` counts the leading drivable-area part).

    Args:
        map_elements: the scene's map (world frame).
        origin: (3,) world point subtracted from every vertex [m].
        config: widths and lifts.

    Returns:
        TriangleMesh in the local frame (world - origin).
    """
    origin = np.asarray(origin, dtype=np.float64)
    m = map_elements
    meshes = []

    def area(pset, cls, kind, lift):
        if not len(pset):
            return
        simple = simplify_polylines(pset.rings, config.simplify_tolerance, closed=True)
        rings = [[_shifted(simple[i], origin, lift)] for i in range(len(pset))]
        meshes.append(polygons(rings, cls, instance_id(kind, np.arange(len(pset)))))

    if config.draw_drivable_area:
        area(m.drivable_area, RasterClass.DRIVABLE_AREA, InstanceKind.DRIVABLE_AREA, config.lift_area)
    area(m.driveways, RasterClass.DRIVEWAY, InstanceKind.DRIVEWAY, config.lift_area + 0.01)
    area(m.crosswalks, RasterClass.CROSSWALK, InstanceKind.CROSSWALK, config.lift_marking)
    area(m.speed_bumps, RasterClass.SPEED_BUMP, InstanceKind.SPEED_BUMP, config.lift_marking)

    def lines(polys, widths, classes, kind, lift):
        if not len(polys):
            return
        polys = simplify_polylines(polys, config.simplify_tolerance)
        meshes.append(ribbons(_shifted(polys.points, origin, lift), polys.offsets, widths, classes, instance_id(kind, np.arange(len(polys)))))

    if config.draw_lane_centerlines:
        lines(m.lanes.centerlines, config.lane_centerline_width, RasterClass.LANE_CENTERLINE, InstanceKind.LANE, config.lift_line)
    yellow = np.isin(m.road_lines.types, [int(t) for t in _YELLOW_LINES])
    line_classes = np.where(yellow, int(RasterClass.ROAD_LINE_YELLOW), int(RasterClass.ROAD_LINE_WHITE))
    lines(m.road_lines.lines, config.road_line_width, line_classes, InstanceKind.ROAD_LINE, config.lift_line)
    lines(m.road_edges.lines, config.road_edge_width, RasterClass.ROAD_EDGE, InstanceKind.ROAD_EDGE, config.lift_line)
    lines(m.stop_lines.lines, config.stop_line_width, RasterClass.STOP_LINE, InstanceKind.STOP_LINE, config.lift_line + 0.01)
    return concat_meshes(meshes)


def drivable_area_vertices(mesh: TriangleMesh) -> int:
    """Number of leading vertices of a :func:`map_mesh` that fill the drivable area."""
    kinds = mesh.instance_ids >> 20
    not_area = np.flatnonzero(kinds != InstanceKind.DRIVABLE_AREA)
    return int(not_area[0]) if len(not_area) else len(kinds)


def _light_headings_and_widths(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K,) heading [rad] of each light's lane at its stop point, (K,) width [m] of its box
    across the lane and (K, 2) xy shift [m] of its box from the stop point.

    A light alone spans its lane's width. Lights that share a stop point (the signals of the
    left, through and right connectors leaving one lane) split that width side by side, the
    sharpest left turn leftmost, instead of coinciding (coinciding boxes of different states
    z-fight into stripes of both colours)."""
    lights, lanes = scene.traffic_lights, scene.map.lanes
    headings = np.zeros(len(lights))
    widths = np.full(len(lights), 3.7)
    turns = np.zeros(len(lights))  # heading change along the light's lane [rad], left positive
    for k, lane_id in enumerate(lights.lane_ids):
        try:
            li = lanes.index_of(int(lane_id))
        except (KeyError, ValueError):
            continue
        pts = lanes.centerlines[li]
        widths[k] = float(lanes.width[li])
        if len(pts) < 2:
            continue
        j = int(np.argmin(np.sum((pts[:, :2] - lights.stop_points[k, :2]) ** 2, axis=1)))
        j = min(j, len(pts) - 2)
        d = pts[j + 1, :2] - pts[j, :2]
        headings[k] = np.arctan2(d[1], d[0])
        end = pts[-1, :2] - pts[-2, :2]
        turns[k] = float(wrap_angle(np.arctan2(end[1], end[0]) - headings[k]))
    shifts = np.zeros((len(lights), 2))
    if len(lights):
        key = np.round(np.asarray(lights.stop_points, dtype=np.float64)[:, :2] / _LIGHT_SHARED_M)
        _, group = np.unique(key, axis=0, return_inverse=True)
        for g in np.flatnonzero(np.bincount(group.ravel()) > 1):
            members = np.flatnonzero(group.ravel() == g)
            members = members[np.lexsort((members, -turns[members]))]  # leftmost first
            n = len(members)
            span = float(widths[members].max())
            h = float(headings[members[0]])
            left = np.array([-np.sin(h), np.cos(h)])
            for slot, k in enumerate(members):
                shifts[k] = left * span * ((n - 1) / 2 - slot) / n
                widths[k] = span / n
    return headings, widths, shifts


_LIGHT_SHARED_M = 0.05  # [m] stop points this close (on one grid) share a place


@dataclass(frozen=True, eq=False)
class AgentStates:
    """Every agent's box at one instant, world frame; all arrays are (num_agents,) in the rows of
    ``scene.tracks`` (a simulation tick, or one step of a log).

    Attributes:
        x, y, z: box centres [m]; heading [rad]; length, width, height [m]: float64.
        valid: bool, whether the agent exists at this instant.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    heading: np.ndarray
    length: np.ndarray
    width: np.ndarray
    height: np.ndarray
    valid: np.ndarray

    @classmethod
    def from_tracks(cls, tracks, step: int) -> "AgentStates":
        """The states logged at ``step`` of :class:`rap.scene.AgentTracks`."""
        return cls(
            tracks.x[:, step], tracks.y[:, step], tracks.z[:, step], tracks.heading[:, step],
            tracks.length[:, step], tracks.width[:, step], tracks.height[:, step], tracks.valid[:, step],
        )  # fmt: skip


class SceneRasterizer:
    """Renders one scene: uploads its map once, then any step from any agent's seat.

    Args:
        renderer: an open :class:`rasterizer.renderer.Renderer` (not owned).
        scene: the scene (world frame).
        config: raster options.
    """

    def __init__(self, renderer: Renderer, scene: Scene, config: RasterConfig = RasterConfig(), *, _map_from: "SceneRasterizer | None" = None) -> None:
        self.renderer = renderer
        self.scene = scene
        self.config = config
        self._agent_classes = np.array([int(AGENT_CLASS.get(AgentType(int(t)), RasterClass.OTHER_AGENT)) for t in scene.tracks.types], dtype=np.uint32)
        if _map_from is not None:  # same map: share its tessellation, origin and light geometry
            self.origin = _map_from.origin
            self.mesh = _map_from.mesh
            self._area_vertices = _map_from._area_vertices
            self._light_heading, self._light_width, self._light_shift = _map_from._light_heading, _map_from._light_width, _map_from._light_shift
            self._ensure_map()
            return
        pose = scene.ego_pose(scene.current_index)
        self.origin = pose[:3].copy()
        self._light_heading, self._light_width, self._light_shift = _light_headings_and_widths(scene)
        self.mesh = map_mesh(scene.map, self.origin, config)
        self._area_vertices = drivable_area_vertices(self.mesh)
        renderer.set_static(self.mesh)

    def with_scene(self, scene: Scene) -> "SceneRasterizer":
        """A rasterizer of ``scene`` that reuses this one's map geometry (no tessellation, no
        upload) when ``scene.map`` and ``scene.traffic_lights`` are the objects this one was built
        on, as for successive ticks of a simulation or scenes cut from one log; otherwise a new
        one (map tessellated and uploaded)."""
        old, new = self.scene.traffic_lights, scene.traffic_lights
        same_lights = np.array_equal(old.lane_ids, new.lane_ids) and np.array_equal(old.stop_points, new.stop_points)
        same_map = scene.map is self.scene.map and same_lights
        return SceneRasterizer(self.renderer, scene, self.config, _map_from=self if same_map else None)

    def _ensure_map(self) -> None:
        # Several SceneRasterizers may share one renderer: put this scene's map back if another
        # one replaced it since.
        if self.renderer.static_mesh is not self.mesh:
            self.renderer.set_static(self.mesh)

    def frame_boxes(self, step: int, viewer_index: int | None, draw_viewer: bool = False) -> Boxes:
        """Boxes of every agent valid at ``step``, of every light with a state and a post at each
        stop sign. The viewer's own box is drawn (with the EGO class) only if ``draw_viewer``."""
        lights = self.scene.traffic_lights
        light_colors = lights.colors[:, step] if len(lights) else np.zeros(0, dtype=np.int64)
        light_valid = lights.valid[:, step] if len(lights) else np.zeros(0, dtype=bool)
        return self.state_boxes(AgentStates.from_tracks(self.scene.tracks, step), light_colors, light_valid, viewer_index, draw_viewer)

    def state_boxes(self, agents: "AgentStates", light_colors: np.ndarray, light_valid: np.ndarray, viewer_index: int | None, draw_viewer: bool = False) -> Boxes:
        """Boxes of an instant given as states: ``agents`` (rows of ``scene.tracks``),
        ``light_colors`` / ``light_valid`` (K,) for the rows of ``scene.traffic_lights``; see
        :meth:`frame_boxes`."""
        cfg = self.config
        valid = agents.valid.copy()
        if viewer_index is not None and not draw_viewer:
            valid[viewer_index] = False
        rows = np.flatnonzero(valid)
        if viewer_index is not None:
            # Nearest first: the depth test then rejects most fragments of boxes hidden behind.
            d = np.hypot(agents.x[rows] - agents.x[viewer_index], agents.y[rows] - agents.y[viewer_index])
            rows = rows[np.argsort(d, kind="stable")]
        centers = np.stack([agents.x[rows], agents.y[rows], agents.z[rows]], axis=1) - self.origin
        sizes = np.stack([agents.length[rows], agents.width[rows], agents.height[rows]], axis=1)
        classes = self._agent_classes[rows].copy()
        if viewer_index is not None and draw_viewer:
            classes[rows == viewer_index] = RasterClass.EGO
        boxes = Boxes(centers, sizes, agents.heading[rows], classes, instance_id(InstanceKind.AGENT, rows))

        lrows = np.flatnonzero(light_valid) if len(light_valid) else np.zeros(0, dtype=np.int64)
        colors = light_colors[lrows] if len(lrows) else np.zeros(0, dtype=np.int64)
        lcls = _LIGHT_CLASS_LOOKUP[np.asarray(colors, dtype=np.int64)]
        stop = self.scene.traffic_lights.stop_points[lrows] - self.origin
        stop[:, :2] += self._light_shift[lrows]
        stop[:, 2] += cfg.light_height / 2
        lsize = np.stack(
            [np.full(len(lrows), cfg.light_length), self._light_width[lrows] * cfg.light_width_fraction, np.full(len(lrows), cfg.light_height)],
            axis=1,
        )
        light_boxes = Boxes(stop, lsize, self._light_heading[lrows], lcls, instance_id(InstanceKind.TRAFFIC_LIGHT, lrows))
        signs = self.scene.map.stop_signs
        sign_centers = signs.positions - self.origin
        sign_centers[:, 2] += cfg.stop_sign_size[2] / 2
        sign_boxes = Boxes(sign_centers, np.tile(cfg.stop_sign_size, (len(signs), 1)), np.zeros(len(signs)), RasterClass.STOP_SIGN, instance_id(InstanceKind.STOP_SIGN, np.arange(len(signs))))
        return Boxes.concat([boxes, light_boxes, sign_boxes])

    def render_state(
        self,
        rig: Rig,
        pose_world: np.ndarray,
        agents: "AgentStates",
        light_colors: np.ndarray,
        light_valid: np.ndarray,
        viewer_index: int | None = None,
        outputs: Sequence[str] = ("rgb",),
    ) -> list[ViewOutput]:
        """The per-tick call of a simulation: render ``rig`` mounted on ``pose_world`` with agents
        and lights in the given states; the map geometry is not rebuilt.

        Args:
            rig: the cameras.
            pose_world: (4,) (x, y, z_ground, heading) of the rig's body frame (rear axle on the
                ground), world frame.
            agents: every agent's box at this instant (rows of ``scene.tracks``).
            light_colors, light_valid: (K,) :class:`rap.scene.LightColor` values and validity of
                the rows of ``scene.traffic_lights``.
            viewer_index: the agent whose seat this is (not drawn in camera views; drawn as EGO
                in BEVs), or None.
            outputs: subset of rgb, class_id, instance, depth.
        """
        self._ensure_map()
        draw_viewer = viewer_index is not None and (self.config.draw_ego_box or all(isinstance(cam, OrthoCamera) for cam in rig))
        self.renderer.set_boxes(self.state_boxes(agents, np.asarray(light_colors), np.asarray(light_valid, dtype=bool), viewer_index, draw_viewer))
        return self.renderer.render(self._views(rig, self._body_to_local(pose_world)), outputs=outputs)

    def viewer_pose(self, step: int, viewer_index: int) -> np.ndarray:
        """(4, 4) body-to-local transform of an agent's frame (rear axle, ground) at ``step``."""
        return self._body_to_local(self.scene.agent_pose(viewer_index, step))

    def _body_to_local(self, pose_world: np.ndarray) -> np.ndarray:
        """(4, 4) transform of a (x, y, z_ground, heading) world pose into the local frame."""
        x, y, z, h = (float(v) for v in pose_world)
        c, s = np.cos(h), np.sin(h)
        pose = np.eye(4)
        pose[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
        pose[:3, 3] = np.array([x, y, z]) - self.origin
        return pose

    def _frame(self, step: int, rig: Rig, viewer_index: int | None) -> tuple[Boxes, list[View]]:
        viewer = self.scene.ego_index if viewer_index is None else viewer_index
        body_to_local = self.viewer_pose(step, viewer)
        draw_viewer = self.config.draw_ego_box or all(isinstance(cam, OrthoCamera) for cam in rig)
        return self.frame_boxes(step, viewer, draw_viewer), self._views(rig, body_to_local)

    def _views(self, rig: Rig, body_to_local: np.ndarray) -> list[View]:
        """Views of ``rig``; perspective views skip the drivable-area fill unless configured."""
        # A camera-like look shows the road surface (a raster's cameras leave it out by default).
        skip = 0 if self.config.camera_drivable_area or self.renderer.style.photo is not None else self._area_vertices
        return [View(cam, body_to_local, 0 if isinstance(cam, OrthoCamera) else skip) for cam in rig]

    def render_steps(self, steps: Iterable[int], rig: Rig, viewer_index: int | None = None, outputs: Sequence[str] = ("rgb",), depth: int = 2) -> Iterator[list[ViewOutput]]:
        """Render many steps with asynchronous readback (see ``Renderer.render_stream``);
        yields one list of views per step, in order."""
        self._ensure_map()
        frames = (self._frame(step, rig, viewer_index) for step in steps)
        return self.renderer.render_stream(frames, outputs=outputs, depth=depth)

    def render_pose(self, step: int, rig: Rig, pose_world: np.ndarray, hidden_index: int | None, outputs: Sequence[str] = ("rgb",)) -> list[ViewOutput]:
        """Render ``rig`` mounted on an arbitrary frame (a counterfactual pose) at ``step``.

        Args:
            pose_world: (4,) (x, y, z_ground, heading) of the rig's body frame (rear axle on the
                ground) in world coordinates.
            hidden_index: agent row not drawn (the agent whose seat this is), or None.
        """
        self._ensure_map()
        body_to_local = self._body_to_local(pose_world)
        self.renderer.set_boxes(self.frame_boxes(step, hidden_index, draw_viewer=False))
        return self.renderer.render(self._views(rig, body_to_local), outputs=outputs)

    def render(self, step: int, rig: Rig, viewer_index: int | None = None, outputs: Sequence[str] = ("rgb",)) -> list[ViewOutput]:
        """Render ``rig`` mounted on ``viewer_index`` (default: the ego) at ``step``.

        Raises:
            ValueError: the viewer is not valid at ``step``.
        """
        self._ensure_map()
        boxes, views = self._frame(step, rig, viewer_index)
        self.renderer.set_boxes(boxes)
        return self.renderer.render(views, outputs=outputs)
