"""Batched headless rendering of triangle meshes and boxes into many camera views.

One :meth:`Renderer.render` call draws every view into one atlas framebuffer (views side by side,
each with its own viewport) and reads each requested output back once for the whole atlas.
Static geometry (the map) is uploaded once with :meth:`Renderer.set_static`; per-frame geometry
(agent boxes, light boxes) goes through :meth:`Renderer.set_boxes`, which only rewrites one small
instance buffer — the GPU expands a unit cube per box.

Outputs per view (any subset, in one pass):

* ``rgb``: (H, W, 3) uint8 semantic raster (style colour x depth decay), or with a style's
  :class:`rasterizer.photo.PhotoLook` a camera-like stand-in image (sky, lit and textured
  surfaces, haze, vignetting, blur and seeded noise; see :mod:`rasterizer.photo`),
* ``class_id``: (H, W) uint8 style class, 0 where nothing was drawn,
* ``instance``: (H, W) uint32 instance id, 0 where nothing was drawn,
* ``depth``: (H, W) float32 depth along the optical axis [m], 0 where nothing was drawn.

Rows come back top row first: the projection maps image row v to window row v, so no flip is
needed after ``glReadPixels`` (this mirrors the image in GL's eyes; culling is off, so the
changed winding does not matter).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import moderngl
import numpy as np

from rasterizer import photo as _photo
from rasterizer.camera import Camera, OrthoCamera, PinholeCamera
from rasterizer.photo import PhotoLook
from rasterizer.primitives import FACE_NAMES, Boxes, TriangleMesh, unit_cube

OUTPUTS = ("rgb", "class_id", "instance", "depth")
MAX_ATLAS_WIDTH = 16384
# Largest undistorted intermediate image, as a multiple of the output size per axis.
MAX_UNDISTORT_SCALE = 3.0

_GL_OUT = {
    "rgb": ("vec4", "out_rgb"),
    "class_id": ("uint", "out_class"),
    "instance": ("uint", "out_instance"),
    "depth": ("float", "out_depth"),
}
# (components, dtype) of each output's attachment.
_ATTACHMENT = {"rgb": (4, "f1"), "class_id": (1, "u1"), "instance": (1, "u4"), "depth": (1, "f4")}


@dataclass(frozen=True)
class Style:
    """Colours of classes: data, not code.

    Attributes:
        colors: (C, 3) uint8 flat colour of each class (ribbons, polygons).
        face_colors: (C, 6, 3) uint8 colour of each cuboid face of each class, in
            :data:`rasterizer.primitives.FACE_NAMES` order (front, back, left, right, top, bottom).
        depth_decay_m: colours are scaled by max(0, 1 - d / depth_decay_m), d the distance from
            the camera centre [m]; 0 disables decay. Orthographic views never decay.
        background: (3,) uint8 clear colour.
        names: optional (C,) class names, for legends.
        photo: the camera-like look (:class:`rasterizer.photo.PhotoLook`, one material per
            class), or None for the flat raster; with it ``depth_decay_m`` and ``background``
            are not used.
    """

    colors: np.ndarray
    face_colors: np.ndarray
    depth_decay_m: float = 120.0
    background: tuple[int, int, int] = (0, 0, 0)
    names: tuple[str, ...] = ()
    photo: PhotoLook | None = None

    def __post_init__(self) -> None:
        colors = np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)
        faces = np.asarray(self.face_colors, dtype=np.uint8).reshape(-1, len(FACE_NAMES), 3)
        if len(faces) != len(colors):
            raise ValueError(f"Style: {len(colors)} class colours but {len(faces)} face-colour rows")
        if not 0 < len(colors) <= 256:
            raise ValueError(f"Style: need 1..256 classes, got {len(colors)}")
        if self.names and len(self.names) != len(colors):
            raise ValueError(f"Style: {len(self.names)} names for {len(colors)} classes")
        if self.depth_decay_m < 0:
            raise ValueError("Style: depth_decay_m must be >= 0")
        if self.photo is not None:
            self.photo.material_table(len(colors))  # one material per class
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "face_colors", faces)

    @property
    def num_classes(self) -> int:
        return len(self.colors)

    def table(self) -> np.ndarray:
        """(C, 7, 3) uint8: column 0 the flat colour, columns 1..6 the face colours."""
        return np.concatenate([self.colors[:, None], self.face_colors], axis=1)

    @staticmethod
    def default(num_classes: int = 16) -> "Style":
        """A neutral style: distinct hues per class, darker shades per face."""
        hues = (np.arange(num_classes) * 0.618034) % 1.0
        rgb = np.stack([_hsv(h, 0.8, 1.0) for h in hues])
        rgb[0] = 0.5
        shades = np.array([1.0, 0.45, 0.8, 0.65, 0.9, 0.3])
        faces = rgb[:, None, :] * shades[None, :, None]
        return Style((rgb * 255).round(), (faces * 255).round())


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


@dataclass(frozen=True, eq=False)
class View:
    """One camera placed in the world: the camera's body is at ``body_to_world`` (4, 4).

    ``skip_static_vertices`` leaves out the first vertices of the static mesh in this view (a
    leading layer the caller does not want in some views, e.g. a ground fill only for BEVs).
    """

    camera: Camera
    body_to_world: np.ndarray = field(default_factory=lambda: np.eye(4))
    skip_static_vertices: int = 0

    def world_to_camera(self) -> np.ndarray:
        """(4, 4) float64 transform from world to the camera's (OpenCV) axes."""
        return np.linalg.inv(np.asarray(self.body_to_world, dtype=np.float64) @ self.camera.cam_to_body)


@dataclass
class ViewOutput:
    """What one view rendered; fields not requested are None. See the module docstring."""

    camera_name: str
    rgb: np.ndarray | None = None
    class_id: np.ndarray | None = None
    instance: np.ndarray | None = None
    depth: np.ndarray | None = None


def pinhole_projection(cam: PinholeCamera) -> np.ndarray:
    """(4, 4) float64 GL projection of an (undistorted) pinhole camera, image row v → window row v."""
    w, h, n, f = cam.width, cam.height, cam.near, cam.far
    return np.array(
        [
            [2 * cam.fx / w, 0.0, 2 * (cam.cx + 0.5) / w - 1.0, 0.0],
            [0.0, 2 * cam.fy / h, 2 * (cam.cy + 0.5) / h - 1.0, 0.0],
            [0.0, 0.0, (f + n) / (f - n), -2 * f * n / (f - n)],
            [0.0, 0.0, 1.0, 0.0],
        ]
    )


def ortho_projection(cam: OrthoCamera) -> np.ndarray:
    """(4, 4) float64 GL projection of a BEV camera (camera axes from ``OrthoCamera.cam_to_body``)."""
    depth = cam.z_range[1] - cam.z_range[0]
    return np.array(
        [
            [2.0 / cam.extent_y, 0.0, 0.0, 0.0],
            [0.0, 2.0 / cam.extent_x, 0.0, 0.0],
            [0.0, 0.0, 2.0 / depth, -1.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


@dataclass(frozen=True)
class _Undistortion:
    """Intermediate pinhole image of a distorted camera, and the warp from it.

    The warp is a triangle grid over the distorted output image: each vertex holds its output
    pixel coordinate and the intermediate-image pixel the same ray lands on; the GPU interpolates
    between vertices, so the per-pixel cost is one texel fetch. The grid is refined until the
    interpolation error is below :data:`REMAP_MAX_ERROR_PX`.
    """

    width: int
    height: int
    cx: float
    cy: float
    mesh: np.ndarray  # (V, 4) float32 (u_out, v_out, x_src, y_src) [px], V % 3 == 0
    max_error_px: float

    def intermediate(self, cam: PinholeCamera) -> PinholeCamera:
        """The undistorted pinhole (same pose and focal length) that ``cam`` is remapped from."""
        return dataclasses.replace(cam, name=cam.name + ":undistorted", width=self.width, height=self.height, cx=self.cx, cy=self.cy, distortion=(0.0,) * 5)


REMAP_MAX_ERROR_PX = 0.25  # [px] largest error of the interpolated warp, checked at cell centres


def undistortion_for(cam: PinholeCamera) -> _Undistortion:
    """Build the intermediate undistorted camera and warp grid of a distorted camera
    (memoised on the intrinsics, distortion and size)."""
    return _undistortion_cached(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, cam.distortion, cam.near, cam.far, cam.name)


@functools.lru_cache(maxsize=64)
def _undistortion_cached(width, height, fx, fy, cx, cy, distortion, near, far, name) -> _Undistortion:
    cam = PinholeCamera(name, width, height, fx, fy, cx, cy, distortion=distortion, near=near, far=far)
    focal = np.array([cam.fx, cam.fy])
    centre = np.array([cam.cx, cam.cy])
    # Keep the intermediate image bounded (at most MAX_UNDISTORT_SCALE x the output per axis).
    lim = MAX_UNDISTORT_SCALE * np.array([cam.width, cam.height]) / 2 / focal
    mid = (np.array([cam.width, cam.height]) / 2 - 0.5 - centre) / focal

    def undistort(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy, ok = cam.undistort_normalized((uv - centre) / focal)
        ok &= np.all(np.abs(xy - mid) <= lim, axis=-1)
        return xy, ok

    for cell in (32, 16, 8, 4, 2):
        gu = np.linspace(-0.5, cam.width - 0.5, int(np.ceil(cam.width / cell)) + 1)
        gv = np.linspace(-0.5, cam.height - 0.5, int(np.ceil(cam.height / cell)) + 1)
        grid = np.stack(np.meshgrid(gu, gv), axis=-1)  # (ny + 1, nx + 1, 2) output pixels
        xy, ok = undistort(grid)
        cell_ok = ok[:-1, :-1] & ok[1:, :-1] & ok[:-1, 1:] & ok[1:, 1:]
        # The cell centre lies on the diagonal both triangles share: compare the exact ray there
        # with the average of the diagonal's two ends.
        exact, ok_c = undistort((grid[:-1, :-1] + grid[1:, 1:]) / 2)
        approx = (xy[:-1, :-1] + xy[1:, 1:]) / 2
        err = np.abs(exact - approx) * focal
        cell_ok &= ok_c
        max_err = float(err[cell_ok].max()) if cell_ok.any() else 0.0
        if max_err <= REMAP_MAX_ERROR_PX:
            break
    if not cell_ok.any():
        raise ValueError(f"camera {cam.name}: distortion model has no valid pixels")
    valid_xy = np.concatenate([xy[:-1, :-1][cell_ok], xy[1:, 1:][cell_ok], xy[1:, :-1][cell_ok], xy[:-1, 1:][cell_ok]])
    lo, hi = valid_xy.min(axis=0), valid_xy.max(axis=0)
    size = np.ceil((hi - lo) * focal).astype(int) + 3
    if np.any(size > MAX_ATLAS_WIDTH):
        raise ValueError(f"camera {cam.name}: undistorted intermediate image too large ({size[0]}x{size[1]})")
    inter_c = -lo * focal + 1.0
    src = xy * focal + inter_c  # intermediate-image pixel of every grid vertex
    verts = np.concatenate([grid, src], axis=-1)  # (ny + 1, nx + 1, 4)
    a, b, c, d = verts[:-1, :-1][cell_ok], verts[:-1, 1:][cell_ok], verts[1:, :-1][cell_ok], verts[1:, 1:][cell_ok]
    mesh = np.stack([a, b, d, a, d, c], axis=1).reshape(-1, 4).astype(np.float32)
    mesh.flags.writeable = False
    return _Undistortion(int(size[0]), int(size[1]), float(inter_c[0]), float(inter_c[1]), mesh, max_err)


def pack_tiles(sizes: Sequence[tuple[int, int]], max_width: int = MAX_ATLAS_WIDTH) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Shelf-pack (w, h) tiles left to right, wrapping at ``max_width``.

    Returns:
        (origins, atlas_size): per tile its (x, y) origin, and the atlas (width, height).
    """
    origins, x, y, shelf_h, atlas_w = [], 0, 0, 0, 0
    for w, h in sizes:
        if w > max_width:
            raise ValueError(f"view width {w} exceeds the maximum framebuffer width {max_width}")
        if x + w > max_width:
            x, y, shelf_h = 0, y + shelf_h, 0
        origins.append((x, y))
        x += w
        shelf_h = max(shelf_h, h)
        atlas_w = max(atlas_w, x)
    return origins, (atlas_w, y + shelf_h)


# Vertex buffer layouts: (attribute name, moderngl format, size in bytes).
STATIC_LAYOUT = (("in_pos", "3f", 12), ("in_class", "1u", 4), ("in_instance", "1u", 4))
CUBE_LAYOUT = (("in_corner", "3f", 12), ("in_face", "1u", 4))
BOX_LAYOUT = (("in_center", "3f", 12), ("in_size", "3f", 12), ("in_yaw", "1f", 4), ("in_class", "1u", 4), ("in_instance", "1u", 4))


def _binding(prog: moderngl.Program, buffer: moderngl.Buffer, layout, suffix: str = "") -> tuple:
    """A vertex-array binding that skips attributes the shader compiler optimised away."""
    formats, names = [], []
    for name, fmt, size in layout:
        if name in prog:
            formats.append(fmt)
            names.append(name)
        else:
            formats.append(f"{size}x")
    return (buffer, " ".join(formats) + suffix, *names)


def _fragment_outputs(outputs: Sequence[str]) -> str:
    return "\n".join(f"layout(location={i}) out {_GL_OUT[o][0]} {_GL_OUT[o][1]};" for i, o in enumerate(outputs))


_SCENE_VS_STATIC = """
#version 330
in vec3 in_pos; in uint in_class; in uint in_instance;
uniform mat4 u_proj; uniform mat4 u_view; uniform sampler2D u_style;
flat out uint v_class; flat out uint v_instance; flat out vec3 v_color;
void main() {
    vec4 cam = u_view * vec4(in_pos, 1.0);
    v_class = in_class; v_instance = in_instance;
    v_color = texelFetch(u_style, ivec2(0, int(in_class)), 0).rgb;
    gl_Position = u_proj * cam;
}
"""

_SCENE_VS_BOXES = """
#version 330
in vec3 in_corner; in uint in_face;
in vec3 in_center; in vec3 in_size; in float in_yaw; in uint in_class; in uint in_instance;
uniform mat4 u_proj; uniform mat4 u_view; uniform sampler2D u_style;
flat out uint v_class; flat out uint v_instance; flat out vec3 v_color;
void main() {
    vec3 p = in_corner * in_size;
    float c = cos(in_yaw), s = sin(in_yaw);
    vec3 world = vec3(c * p.x - s * p.y, s * p.x + c * p.y, p.z) + in_center;
    vec4 cam = u_view * vec4(world, 1.0);
    v_class = in_class; v_instance = in_instance;
    v_color = texelFetch(u_style, ivec2(int(in_face), int(in_class)), 0).rgb;
    gl_Position = u_proj * cam;
}
"""

_SCENE_FS = """
#version 330
flat in uint v_class; flat in uint v_instance; flat in vec3 v_color;
// Depth along the view axis from the window depth, without an interpolated varying:
// perspective z = u_depth.x / (u_depth.y - ndc_z); orthographic z = u_depth.z * ndc_z + u_depth.w.
uniform vec4 u_depth; uniform bool u_ortho; uniform float u_decay;
{outputs}
void main() {{
    float ndc_z = gl_FragCoord.z * 2.0 - 1.0;
    float z = u_ortho ? u_depth.z * ndc_z + u_depth.w : u_depth.x / (u_depth.y - ndc_z);
    vec3 color = v_color;
    if (u_decay > 0.0) color *= max(0.0, 1.0 - z / u_decay);
{writes}
}}
"""

_SCENE_WRITES = {
    "rgb": "    out_rgb = vec4(color, 1.0);",
    "class_id": "    out_class = v_class;",
    "instance": "    out_instance = v_instance;",
    "depth": "    out_depth = z;",
}

_REMAP_VS = """
#version 330
in vec2 in_dst; in vec2 in_src;
uniform vec2 u_dst_size;
noperspective out vec2 v_src;
void main() {
    v_src = in_src;
    gl_Position = vec4(2.0 * (in_dst + 0.5) / u_dst_size - 1.0, 0.0, 1.0);
}
"""

_REMAP_FS = """
#version 330
noperspective in vec2 v_src;
uniform ivec2 u_src_origin;
uniform sampler2D u_rgb; uniform usampler2D u_class; uniform usampler2D u_instance; uniform sampler2D u_depth;
{outputs}
void main() {{
    ivec2 q = ivec2(floor(v_src + 0.5)) + u_src_origin;  // nearest texel: ids stay exact
{writes}
}}
"""

_REMAP_WRITES = {
    "rgb": "    out_rgb = texelFetch(u_rgb, q, 0);",
    "class_id": "    out_class = texelFetch(u_class, q, 0).r;",
    "instance": "    out_instance = texelFetch(u_instance, q, 0).r;",
    "depth": "    out_depth = texelFetch(u_depth, q, 0).r;",
}


_DTYPE_BYTES = {"f1": 1, "u1": 1, "u4": 4, "f4": 4}
_NUMPY_DTYPE = {"f1": np.uint8, "u1": np.uint8, "u4": np.uint32, "f4": np.float32}


def _atlas_array(data: bytes, name: str, atlas_size: tuple[int, int], alpha: bool = False) -> np.ndarray:
    """Bytes read from one attachment → (H, W, 3) uint8 for rgb ((H, W, 4) with ``alpha``),
    (H, W) for the others."""
    comps, dtype = _ATTACHMENT[name]
    arr = np.frombuffer(data, _NUMPY_DTYPE[dtype]).reshape(atlas_size[1], atlas_size[0], comps)
    if name == "rgb":
        return arr if alpha else arr[..., :3]
    return arr[..., 0]


def _split(views: Sequence[View], origins, atlas: dict) -> list[ViewOutput]:
    """Per-view windows into the atlas arrays."""
    results = []
    for view, (x, y) in zip(views, origins):
        w, h = view.camera.size
        out = ViewOutput(view.camera.name)
        for name, arr in atlas.items():
            setattr(out, name, arr[y : y + h, x : x + w])
        results.append(out)
    return results


class Renderer:
    """Owns every GL resource it creates; ``close()`` frees them and may be called twice.

    Args:
        ctx: a context from :func:`rasterizer.context.create_context`. The renderer does not
            own the context.
        style: class colours and depth decay.

    Example::

        with Renderer(create_context(), style) as r:
            r.set_static(map_mesh)
            r.set_boxes(boxes)
            out = r.render([View(camera, body_to_world)], outputs=("rgb", "depth"))
    """

    def __init__(self, ctx: moderngl.Context, style: Style) -> None:
        self.ctx = ctx
        ctx.__enter__()  # build our objects in our context
        self._closed = False
        self._resources: list = []  # every GL object created, for close()
        self._programs: dict = {}
        self._targets: dict = {}
        self._lookups: dict = {}
        self._style_tex = None
        self._material_tex = None
        self._noise_tex = None
        self._static_table_tex = None
        self._photo_uniforms: dict = {}  # (look id, orthographic) -> {uniform name: bytes}
        self._photo_uniform_state: dict = {}  # program id -> (program, names it uses, {name: bytes written})
        self.set_style(style)
        self._cube = self._own(ctx.buffer(unit_cube().tobytes()))
        self._static_vbo = None
        self._static_count = 0
        self._static_runs: np.ndarray | None = None  # hidden / shown runs of the static mesh (photo look)
        self._static_layered = True
        self.static_mesh: TriangleMesh | None = None  # the mesh last given to set_static
        self._box_vbo = None
        self._box_capacity = 0
        self._box_count = 0
        self._vaos: dict = {}
        self._empty_vao_prog = None

    # -- resources ---------------------------------------------------------------------------
    def _own(self, obj):
        self._resources.append(obj)
        return obj

    def _free(self, obj) -> None:
        if obj is not None:
            obj.release()
            if obj in self._resources:
                self._resources.remove(obj)

    def close(self) -> None:
        """Release every GL object this renderer created. Safe to call more than once."""
        if self._closed:
            return
        self.ctx.__enter__()  # release our objects in our context
        # Bind the default framebuffer first: moderngl re-binds the last used framebuffer after
        # creating a new one, and re-binding one of ours after release is a GL error.
        self.ctx.detect_framebuffer(0).use()
        for obj in reversed(self._resources):
            obj.release()
        self._resources.clear()
        self._programs.clear()
        self._photo_uniform_state.clear()
        self._targets.clear()
        self._lookups.clear()
        self._vaos.clear()
        self._closed = True

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_live_objects(self) -> int:
        """How many GL objects this renderer currently holds (for leak checks)."""
        return len(self._resources)

    def _check_open(self) -> None:
        """Raise if closed, and make our context current: another context created or released
        in this process since (another Renderer's, a library's) leaves ours not current, and GL
        calls would then draw nothing without an error."""
        if self._closed:
            raise RuntimeError("Renderer is closed")
        self.ctx.__enter__()

    # -- inputs ------------------------------------------------------------------------------
    def set_style(self, style: Style) -> None:
        """Use ``style`` for subsequent renders (uploads a tiny table texture)."""
        self._check_open()
        self.style = style
        self._photo_uniforms = {}
        self._free(self._style_tex)
        table = np.ascontiguousarray(style.table())  # (C, 7, 3): texture rows = classes
        tex = self.ctx.texture((table.shape[1], table.shape[0]), 3, table.tobytes())
        tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self._style_tex = self._own(tex)
        self._free(self._material_tex)
        self._free(self._noise_tex)
        self._free(self._static_table_tex)
        self._material_tex = self._noise_tex = self._static_table_tex = None
        if style.photo is not None:
            materials = np.ascontiguousarray(style.photo.material_table(style.num_classes))  # (C, 1, 3)
            tex = self.ctx.texture((1, materials.shape[0]), 3, materials.tobytes())
            tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
            self._material_tex = self._own(tex)
            grain = _photo.grain_texture(style.photo.seed)
            tex = self.ctx.texture(grain.shape[::-1], 1, grain.tobytes())
            # Nearest texel of the mip level nearest the pixel's footprint: filtered fetches cost
            # llvmpipe far more, and without mip levels the far ground's fetches miss the caches.
            tex.build_mipmaps()
            tex.filter = (moderngl.NEAREST_MIPMAP_NEAREST, moderngl.NEAREST)
            tex.repeat_x = tex.repeat_y = True
            self._noise_tex = self._own(tex)
            table = _photo.static_table(style.colors, style.photo)  # (C, 1, 4)
            tex = self.ctx.texture((1, table.shape[0]), 4, table.tobytes(), dtype="f4")
            tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
            self._static_table_tex = self._own(tex)
        mesh = getattr(self, "static_mesh", None)  # (not yet set while the renderer is built)
        self._static_runs = self._hidden_runs(mesh) if mesh is not None else None

    def set_static(self, mesh: TriangleMesh, layered: bool = True) -> None:
        """Upload the static geometry. Replaces any earlier mesh.

        Args:
            mesh: triangles, drawn in order after the boxes.
            layered: treat the mesh as surface layers (road, markings, lines): it is depth-tested
                against the boxes but writes no depth, so later triangles paint over earlier ones
                however close their surfaces are (painted lines and crosswalks never sink into
                the road), while boxes still hide what is behind them and anything in front of
                a box still hides it. With ``False`` the mesh writes depth like solid geometry.
        """
        self._check_open()
        self.static_mesh = mesh
        self._static_layered = layered
        self._check_classes(mesh.class_ids, "static mesh")
        self._drop_vaos("static")
        self._free(self._static_vbo)
        self._static_vbo = None
        self._static_count = len(mesh.positions)
        self._static_runs = self._hidden_runs(mesh)
        if self._static_count:
            self._static_vbo = self._own(self.ctx.buffer(mesh.interleaved().tobytes()))

    def _hidden_runs(self, mesh: TriangleMesh) -> np.ndarray | None:
        """(R, 3) int64 runs (first vertex, vertex count, hidden 0/1) covering the mesh in order,
        hidden where the photo look's material of the triangles' class is HIDDEN; ``None`` when
        nothing is hidden (the mesh is then drawn in one call)."""
        look = self.style.photo
        if look is None or not len(mesh.class_ids):
            return None
        hidden_classes = np.asarray(look.materials) == _photo.Material.HIDDEN
        if not hidden_classes.any():
            return None
        hidden = hidden_classes[np.minimum(mesh.class_ids[::3], len(hidden_classes) - 1)]  # one class per triangle
        if not hidden.any():
            return None
        cuts = np.flatnonzero(hidden[1:] != hidden[:-1]) + 1
        starts = np.concatenate([[0], cuts]) * 3
        ends = np.append(cuts * 3, len(mesh.class_ids))
        return np.stack([starts, ends - starts, hidden[starts // 3].astype(np.int64)], axis=1)

    def set_boxes(self, boxes: Boxes) -> None:
        """Upload this frame's boxes; the buffer is rewritten in place while it is big enough."""
        self._check_open()
        self._check_classes(boxes.class_ids, "boxes")
        records = boxes.instance_records()
        self._box_count = len(records)
        if not len(records):
            return
        if len(records) > self._box_capacity:
            self._drop_vaos("boxes")
            self._free(self._box_vbo)
            self._box_capacity = max(64, 1 << int(np.ceil(np.log2(len(records)))))
            self._box_vbo = self._own(self.ctx.buffer(reserve=self._box_capacity * records.itemsize * 9))
        self._box_vbo.write(records.tobytes())

    def _check_classes(self, class_ids: np.ndarray, what: str) -> None:
        if len(class_ids) and int(class_ids.max()) >= self.style.num_classes:
            raise ValueError(f"{what}: class id {int(class_ids.max())} is not in the style table ({self.style.num_classes} classes)")

    def _drop_vaos(self, kind: str) -> None:
        for key in [k for k in self._vaos if k[0] == kind]:
            self._free(self._vaos.pop(key))

    # -- programs and targets ----------------------------------------------------------------
    def _scene_programs(self, outputs: tuple[str, ...]):
        photo = self.style.photo is not None
        key = ("scene", outputs, photo)
        if key not in self._programs:
            writes = "\n".join(_SCENE_WRITES[o] for o in outputs)
            if photo:
                sources = ((_photo.PHOTO_VS_STATIC, _photo.PHOTO_FS_STATIC), (_photo.PHOTO_VS_BOXES, _photo.PHOTO_FS_BOXES))
            else:
                sources = ((_SCENE_VS_STATIC, _SCENE_FS), (_SCENE_VS_BOXES, _SCENE_FS))
            static, boxes = (
                self._own(self.ctx.program(vertex_shader=vs, fragment_shader=fs.format(outputs=_fragment_outputs(outputs), writes=writes)))
                for vs, fs in sources
            )
            for prog in (static, boxes):
                for name, unit in (("u_style", 0), ("u_material", 1), ("u_noise", 2), ("u_static_table", 3)):
                    if name in prog:  # optimised away when no rgb output is requested
                        prog[name] = unit
            self._programs[key] = (static, boxes)
        return self._programs[key]

    def _background_program(self):
        """The photo look's sky and terrain program, with an empty vertex array (its vertices
        come from gl_VertexID)."""
        if "photo_bg" not in self._programs:
            prog = self._own(self.ctx.program(vertex_shader=_photo.PHOTO_BG_VS, fragment_shader=_photo.PHOTO_BG_FS))
            self._programs["photo_bg"] = (prog, self._own(self.ctx.vertex_array(prog, [])))
        return self._programs["photo_bg"]

    def _set_photo_uniforms(self, prog: moderngl.Program, cam_pos: np.ndarray, camera: Camera) -> None:
        """The photo look's uniforms of ``prog`` for one view; a program keeps its uniforms, so
        only those that changed since its last view are written."""
        look = self.style.photo
        ortho = isinstance(camera, OrthoCamera)
        key = (id(look), ortho)
        values = self._photo_uniforms.get(key)
        if values is None:
            values = self._photo_uniforms[key] = {
                "u_sun": look.sun.astype(np.float32).tobytes(),
                "u_ambient": np.float32(look.ambient).tobytes(),
                # Haze: distance [m] / haze_m; none in orthographic views.
                "u_haze_rate": np.float32(1.0 / look.haze_m if look.haze_m > 0 and not ortho else 0.0).tobytes(),
                "u_lit_up": np.float32(_photo.lit_up(look)).tobytes(),
                "u_haze_color": (np.array(look.sky_horizon, dtype=np.float32) / 255.0).tobytes(),
                "u_zenith": (np.array(look.sky_zenith, dtype=np.float32) / 255.0).tobytes(),
                "u_horizon": (np.array(look.sky_horizon, dtype=np.float32) / 255.0).tobytes(),
                "u_ground": (np.array(look.ground, dtype=np.float32) / 255.0).tobytes(),
                "u_paints": _photo.BODY_PAINTS.tobytes(),
            }
        entry = self._photo_uniform_state.get(id(prog))
        if entry is None or entry[0] is not prog:  # names the program uses (cached: ``in`` scans its members)
            entry = self._photo_uniform_state[id(prog)] = (prog, [n for n in (*values, "u_cam_pos") if n in prog], {})
        _, names, written = entry
        for name in names:
            data = np.asarray(cam_pos, dtype=np.float32).tobytes() if name == "u_cam_pos" else values[name]
            if written.get(name) != data:
                prog[name].write(data)
                written[name] = data

    def _draw_background(self, view: View, camera: Camera, viewport: tuple[int, int, int, int], outputs: tuple[str, ...]) -> None:
        """Photo look: the sky and the terrain near the horizon into the rgb attachment of one
        view (cleared to the far terrain's colour), before its scene (no depth test, nothing but
        rgb written), which then paints over them; see :mod:`rasterizer.photo`. Shading only
        where nothing is drawn would need the map's coverage first (the map is drawn as layers,
        without depth): a second pass over the map that costs llvmpipe more than it saves."""
        look = self.style.photo
        ortho = isinstance(camera, OrthoCamera)
        proj = ortho_projection(camera) if ortho else pinhole_projection(camera)
        world_to_cam = np.linalg.inv(np.asarray(view.body_to_world, dtype=np.float64) @ camera.cam_to_body)
        cam_pos = np.linalg.inv(world_to_cam)[:3, 3]
        w, h = viewport[2], viewport[3]
        rays = _photo.background_rays(np.linalg.inv(proj @ world_to_cam), cam_pos, w, h, ortho)
        bands = _photo.background_bands(look, rays, cam_pos, w, h, ortho)
        if len(bands.offsets) < 2:
            return
        prog, vao = self._background_program()
        padded = np.zeros(_photo.BACKGROUND_MAX_ROWS, dtype=np.float32)
        padded[: len(bands.offsets)] = bands.offsets
        prog["u_ray"].write(rays.astype(np.float32).tobytes())
        prog["u_rows"].write(padded.tobytes())
        prog["u_band_axes"].value = (*bands.along, *bands.across)
        prog["u_band_origin"].value = (*bands.origin, bands.half_length)
        prog["u_size"].value = (float(w), float(h))
        prog["u_ortho"].value = ortho
        self._set_photo_uniforms(prog, cam_pos, camera)
        ctx, fbo = self.ctx, self.ctx.fbo
        masks = [(name == "rgb",) * 4 for name in outputs]
        fbo.color_mask = masks[0] if len(masks) == 1 else tuple(masks)  # type: ignore[assignment]
        ctx.disable(moderngl.DEPTH_TEST)
        ctx.viewport = viewport
        vao.render(moderngl.TRIANGLES, vertices=6 * (len(bands.offsets) - 1))
        ctx.enable(moderngl.DEPTH_TEST)
        fbo.color_mask = (True,) * 4 if len(outputs) == 1 else tuple((True,) * 4 for _ in outputs)  # type: ignore[assignment]

    def _remap_program(self, outputs: tuple[str, ...]):
        key = ("remap", outputs)
        if key not in self._programs:
            fs = _REMAP_FS.format(outputs=_fragment_outputs(outputs), writes="\n".join(_REMAP_WRITES[o] for o in outputs))
            prog = self._own(self.ctx.program(vertex_shader=_REMAP_VS, fragment_shader=fs))
            for unit, name in enumerate(("u_rgb", "u_class", "u_instance", "u_depth")):
                if name in prog:
                    prog[name] = unit
            self._programs[key] = prog
        return self._programs[key]

    def _remap_vao(self, und: _Undistortion, prog: moderngl.Program):
        """Vertex array of an undistortion's warp grid for a remap program (cached)."""
        entry = self._lookups.get(id(und))
        if entry is None or entry[0] is not und:
            if entry is not None:
                for obj in entry[2].values():
                    self._free(obj)
                self._free(entry[1])
            entry = (und, self._own(self.ctx.buffer(und.mesh.tobytes())), {})
            self._lookups[id(und)] = entry
        vaos = entry[2]
        if id(prog) not in vaos:
            vaos[id(prog)] = self._own(self.ctx.vertex_array(prog, [(entry[1], "2f 2f", "in_dst", "in_src")]))
        return vaos[id(prog)]

    def _scene_vaos(self, outputs: tuple[str, ...]):
        static_prog, box_prog = self._scene_programs(outputs)
        static_vao = box_vao = None
        photo = self.style.photo is not None
        if self._static_vbo is not None:
            key = ("static", outputs, photo)
            if key not in self._vaos:
                self._vaos[key] = self._own(self.ctx.vertex_array(static_prog, [_binding(static_prog, self._static_vbo, STATIC_LAYOUT)]))
            static_vao = self._vaos[key]
        if self._box_vbo is not None:
            key = ("boxes", outputs, photo)
            if key not in self._vaos:
                self._vaos[key] = self._own(
                    self.ctx.vertex_array(
                        box_prog,
                        [_binding(box_prog, self._cube, CUBE_LAYOUT), _binding(box_prog, self._box_vbo, BOX_LAYOUT, "/i")],
                    )
                )
            box_vao = self._vaos[key]
        return static_prog, box_prog, static_vao, box_vao

    def _target(self, size: tuple[int, int], outputs: tuple[str, ...], textures: bool):
        """A framebuffer with one attachment per output (+ depth), cached by size."""
        key = (size, outputs, textures)
        if key not in self._targets:
            make = self.ctx.texture if textures else self.ctx.renderbuffer
            attachments = []
            for name in outputs:
                comps, dtype = _ATTACHMENT[name]
                att = self._own(make(size, comps, dtype=dtype))
                if textures:
                    att.filter = (moderngl.NEAREST, moderngl.NEAREST)
                attachments.append(att)
            depth = self._own(self.ctx.depth_renderbuffer(size))
            fbo = self._own(self.ctx.framebuffer(attachments, depth))
            self._targets[key] = (fbo, dict(zip(outputs, attachments)))
        return self._targets[key]

    # -- drawing -----------------------------------------------------------------------------
    def _draw_static_runs(self, vao, first: int, outputs: tuple[str, ...]) -> None:
        """The static mesh from vertex ``first`` in its runs: hidden runs (photo material HIDDEN)
        with the rgb attachment masked, so the picture keeps what was drawn before them while ids
        and depth are drawn as ever; skipped when rgb is the only output of a layered mesh (they
        would change nothing)."""
        fbo = self.ctx.fbo
        rgb_only = outputs == ("rgb",)
        for start, count, hidden in self._static_runs:
            lo, hi = max(int(start), first), int(start + count)
            if hi <= lo:
                continue
            if not hidden:
                vao.render(moderngl.TRIANGLES, vertices=hi - lo, first=lo)
                continue
            if rgb_only and self._static_layered:
                continue
            masks = [(name != "rgb",) * 4 for name in outputs]
            fbo.color_mask = masks[0] if len(masks) == 1 else tuple(masks)  # type: ignore[assignment]
            vao.render(moderngl.TRIANGLES, vertices=hi - lo, first=lo)
            fbo.color_mask = (True,) * 4 if len(outputs) == 1 else tuple((True,) * 4 for _ in outputs)  # type: ignore[assignment]

    def _draw(self, view: View, camera: Camera, viewport: tuple[int, int, int, int], programs, outputs: tuple[str, ...] = ("rgb",)) -> None:
        static_prog, box_prog, static_vao, box_vao = programs
        proj = ortho_projection(camera) if isinstance(camera, OrthoCamera) else pinhole_projection(camera)
        world_to_cam = np.linalg.inv(np.asarray(view.body_to_world, dtype=np.float64) @ camera.cam_to_body)
        ortho = isinstance(camera, OrthoCamera)
        decay = 0.0 if ortho else float(self.style.depth_decay_m)
        if ortho:
            span = camera.z_range[1] - camera.z_range[0]
            depth_params = (0.0, 0.0, span / 2.0, span / 2.0)
        else:
            n, f = camera.near, camera.far
            depth_params = (2.0 * f * n / (f - n), (f + n) / (f - n), 0.0, 0.0)
        self.ctx.viewport = viewport
        for prog, vao, count in ((box_prog, box_vao, self._box_count), (static_prog, static_vao, None)):
            if vao is None or count == 0:
                continue
            prog["u_proj"].write(proj.T.astype(np.float32).tobytes())
            prog["u_view"].write(world_to_cam.T.astype(np.float32).tobytes())
            for name, value in (("u_decay", decay), ("u_depth", depth_params), ("u_ortho", ortho)):
                if name in prog:
                    prog[name].value = value
            if self.style.photo is not None:
                self._set_photo_uniforms(prog, np.linalg.inv(world_to_cam)[:3, 3], camera)
            if count is None:
                first = min(max(int(view.skip_static_vertices), 0), self._static_count)
                if first == self._static_count:
                    continue
                fbo = self.ctx.fbo
                fbo.depth_mask = not self._static_layered
                if self._static_runs is None:
                    vao.render(moderngl.TRIANGLES, vertices=self._static_count - first, first=first)
                else:
                    self._draw_static_runs(vao, first, outputs)
                fbo.depth_mask = True
            else:
                # Boxes are closed: cull faces turned away from the camera (half the box
                # fragments). The unit cube is counter-clockwise seen from outside; the projection
                # maps image rows to window rows, which mirrors the screen, so front faces are
                # clockwise in window coordinates.
                self.ctx.enable(moderngl.CULL_FACE)
                self.ctx.front_face = "cw"
                self.ctx.cull_face = "back"
                vao.render(moderngl.TRIANGLES, vertices=36, instances=count)
                self.ctx.disable(moderngl.CULL_FACE)

    @staticmethod
    def _check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
        outputs = tuple(dict.fromkeys(outputs))
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown or not outputs:
            raise ValueError(f"unknown or empty outputs {list(outputs)}; choose from {list(OUTPUTS)}")
        return outputs

    def render(self, views: Sequence[View], outputs: Sequence[str] = ("rgb",)) -> list[ViewOutput]:
        """Draw the static mesh and current boxes into every view; one readback per output.

        Args:
            views: cameras with their body poses. Distorted pinhole cameras are rendered
                undistorted into an intermediate image and remapped per pixel.
            outputs: subset of :data:`OUTPUTS`.

        Returns:
            One :class:`ViewOutput` per view, arrays as documented in the module docstring.
            Arrays of different views may share memory with one atlas array.
        """
        self._check_open()
        outputs = self._check_outputs(outputs)
        if not views:
            return []
        fbo, origins, atlas_size = self._draw_frame(views, outputs)
        atlas = {}
        for k, name in enumerate(outputs):
            comps, dtype = _ATTACHMENT[name]
            # RGB is read as RGBA: a plain copy in Mesa, where RGB needs a per-pixel repack
            # (about 3x slower at 1080p). The alpha channel is dropped by a numpy view.
            data = fbo.read(components=comps, attachment=k, dtype=dtype, alignment=1)
            atlas[name] = _atlas_array(data, name, atlas_size, alpha=self.style.photo is not None)
        return self._lens(views, _split(views, origins, atlas))

    def _lens(self, views: Sequence[View], results: list[ViewOutput]) -> list[ViewOutput]:
        """Photo look: blur, vignetting and seeded noise on each view's rgb (after read-back; the
        photo look reads rgb back with its alpha channel, dropped here)."""
        look = self.style.photo
        if look is None:
            return results
        for view, out in zip(views, results):
            if out.rgb is not None:
                out.rgb = _photo.post_process(out.rgb, look, _photo.view_seed(look, view.camera.name, view.body_to_world))
        return results

    def render_stream(self, frames: Iterable[tuple[Boxes, Sequence[View]]], outputs: Sequence[str] = ("rgb",), depth: int = 2) -> Iterator[list[ViewOutput]]:
        """Render a sequence of frames with asynchronous readback.

        Each frame's pixels are copied into a pixel-buffer object (``glReadPixels`` into a PBO
        returns at once on a GPU) and mapped ``depth - 1`` frames later, so drawing frame i
        overlaps the transfer of frame i - 1. Yields, per frame, what :meth:`render` returns
        (arrays owned by the caller).

        Args:
            frames: (boxes, views) per frame; the static mesh stays as set.
            outputs: subset of :data:`OUTPUTS`.
            depth: frames in flight (>= 1; 1 means synchronous reads without pixel buffers).
        """
        self._check_open()
        outputs = self._check_outputs(outputs)
        if depth < 1:
            raise ValueError("depth must be >= 1")
        if depth == 1:  # synchronous: a direct read avoids the pixel-buffer copy
            for boxes, views in frames:
                self.set_boxes(boxes)
                yield self.render(views, outputs)
            return
        pending: collections.deque = collections.deque()
        slot = 0
        for boxes, views in frames:
            self.set_boxes(boxes)
            fbo, origins, atlas_size = self._draw_frame(views, outputs)
            pbos = self._pixel_buffers(slot, atlas_size, outputs)
            for k, name in enumerate(outputs):
                comps, dtype = _ATTACHMENT[name]
                fbo.read_into(pbos[name], components=comps, attachment=k, dtype=dtype, alignment=1)
            pending.append((pbos, views, origins, atlas_size))
            slot = (slot + 1) % depth
            if len(pending) >= depth:
                entry = pending.popleft()
                yield self._lens(entry[1], self._collect(entry, outputs, self.style.photo is not None))
        while pending:
            entry = pending.popleft()
            yield self._lens(entry[1], self._collect(entry, outputs, self.style.photo is not None))

    def _pixel_buffers(self, slot: int, atlas_size: tuple[int, int], outputs: tuple[str, ...]) -> dict:
        key = ("pbo", slot, atlas_size, outputs)
        if key not in self._targets:
            # Only one set of buffers per slot: drop those made for other sizes or outputs.
            for old in [k for k in self._targets if k[0] == "pbo" and k[1] == slot]:
                for buf in self._targets.pop(old).values():
                    self._free(buf)
            w, h = atlas_size
            self._targets[key] = {
                name: self._own(self.ctx.buffer(reserve=w * h * _ATTACHMENT[name][0] * _DTYPE_BYTES[_ATTACHMENT[name][1]]))
                for name in outputs
            }
        return self._targets[key]

    @staticmethod
    def _collect(entry, outputs: tuple[str, ...], alpha: bool = False) -> list[ViewOutput]:
        pbos, views, origins, atlas_size = entry
        atlas = {name: _atlas_array(pbos[name].read(), name, atlas_size, alpha) for name in outputs}
        return _split(views, origins, atlas)

    def _draw_frame(self, views: Sequence[View], outputs: tuple[str, ...]):
        """Clear and draw every view into the atlas; returns (framebuffer, origins, atlas size)."""
        ctx = self.ctx
        origins, atlas_size = pack_tiles([v.camera.size for v in views])
        fbo, _ = self._target(atlas_size, outputs, textures=False)
        programs = self._scene_vaos(outputs)
        bg = np.asarray(self.style.background, dtype=np.float32) / 255.0
        if self.style.photo is not None:
            bg = _photo.terrain_clear_color(self.style.photo)  # the far terrain; the sky drawn over it
        self._style_tex.use(0)
        photo_bg = self.style.photo is not None and "rgb" in outputs
        if self._material_tex is not None:
            self._material_tex.use(1)
            self._noise_tex.use(2)
            self._static_table_tex.use(3)

        distorted = [i for i, v in enumerate(views) if isinstance(v.camera, PinholeCamera) and v.camera.is_distorted]
        ctx.enable_only(moderngl.DEPTH_TEST)
        ctx.depth_func = "<="
        if distorted:
            unds = {i: undistortion_for(views[i].camera) for i in distorted}
            inters = {i: unds[i].intermediate(views[i].camera) for i in distorted}
            src_origins, src_size = pack_tiles([inters[i].size for i in distorted])
            scratch, scratch_tex = self._target(src_size, outputs, textures=True)
            scratch.use()
            self._clear(scratch, outputs, bg)
            for j, i in enumerate(distorted):
                inter = inters[i]
                x, y = src_origins[j]
                if photo_bg:
                    self._draw_background(views[i], inter, (x, y, inter.width, inter.height), outputs)
                self._draw(views[i], inter, (x, y, inter.width, inter.height), programs, outputs)

        fbo.use()
        self._clear(fbo, outputs, bg)
        for i, view in enumerate(views):
            if i in distorted:
                continue
            x, y = origins[i]
            if photo_bg:
                self._draw_background(view, view.camera, (x, y, view.camera.width, view.camera.height), outputs)
            self._draw(view, view.camera, (x, y, view.camera.width, view.camera.height), programs, outputs)

        if distorted:
            ctx.disable(moderngl.DEPTH_TEST)
            prog = self._remap_program(outputs)
            for unit, name in enumerate(("rgb", "class_id", "instance", "depth")):
                if name in scratch_tex:
                    scratch_tex[name].use(unit)
            for j, i in enumerate(distorted):
                cam = views[i].camera
                x, y = origins[i]
                prog["u_dst_size"].value = (float(cam.width), float(cam.height))
                prog["u_src_origin"].value = src_origins[j]
                ctx.viewport = (x, y, cam.width, cam.height)
                self._remap_vao(unds[i], prog).render(moderngl.TRIANGLES)
            ctx.enable(moderngl.DEPTH_TEST)

        return fbo, origins, atlas_size

    @staticmethod
    def _clear(fbo: moderngl.Framebuffer, outputs: tuple[str, ...], background: np.ndarray) -> None:
        """Clear ids and depth to 0, the rgb attachment to the background colour, depth to 1.

        moderngl clears every colour attachment with the same four floats, passing their bit
        patterns to integer attachments, so zeros are zero everywhere; a non-black background is
        then written to the rgb attachment alone through the colour mask.
        """
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        if "rgb" in outputs and np.any(background > 0):
            masks = [(name == "rgb",) * 4 for name in outputs]
            fbo.color_mask = masks[0] if len(masks) == 1 else tuple(masks)  # type: ignore[assignment]
            fbo.clear(*background, 1.0, depth=1.0)
            fbo.color_mask = (True,) * 4 if len(masks) == 1 else tuple((True,) * 4 for _ in masks)  # type: ignore[assignment]
