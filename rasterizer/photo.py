"""The camera-like ``photo`` look: a stand-in for camera images, not real ones.

A :class:`PhotoLook` attached to a :class:`rasterizer.renderer.Style` makes the renderer draw the
same geometry the way a camera would see it, instead of flat class colours: a sky and lit terrain
behind everything, hazing into the horizon, sunlit surfaces (Lambert), procedural grain on rough
surfaces (asphalt), worn paint, shaded bodies with a paint colour per instance, dark glass and a
specular highlight, distance haze, and after read-back lens vignetting, a Gaussian blur and
sensor noise. Only the ``rgb`` output changes: class ids, instance ids and depth are those of the
flat look.

Everything is seeded: the noise of a view comes from :attr:`PhotoLook.seed` and the view itself
(camera name and pose), so one view renders to the same bytes every time, and to the same sensor
noise whatever else is rendered around it (elsewhere in the atlas, GL may read a neighbouring texel
of the grain at a few distant pixels). Materials are given per class (data, not code): what each
class *is* stays with the caller.

The shading is laid out for llvmpipe (OpenGL on the CPU), where per-pixel arithmetic, filtered
texture fetches and triangles are dear and interpolation and clears are cheap: see the comments
at the shaders; the measured cost against the raster look is in docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Material", "PhotoLook", "post_process", "view_seed"]


class Material:
    """Material ids of :attr:`PhotoLook.materials` (how a class's surfaces are shaded)."""

    MATTE = 0  # its colour, lit by the sun
    ROUGH = 1  # asphalt, ground: grain and blotches at several scales, lit
    PAINT = 2  # road paint: its colour, slightly worn, lit
    BODY = 3  # vehicle-like bodies: a paint colour per instance, glass band, specular
    EMISSIVE = 4  # lights: its colour, unlit, no haze
    # Static-mesh surfaces kept out of the picture: what was drawn before them shows through
    # (their class ids, instance ids and depth are drawn as in any style). For marks a raster
    # draws that a camera would not see, e.g. lane centrelines. Boxes of such a class are matte.
    HIDDEN = 5


# Car paints (white, silver, black, grey, dark blue, red, beige, dark green), linear RGB in [0, 1].
BODY_PAINTS = np.array(
    [(0.85, 0.86, 0.86), (0.62, 0.64, 0.66), (0.06, 0.06, 0.07), (0.33, 0.34, 0.36),
     (0.10, 0.16, 0.34), (0.55, 0.07, 0.06), (0.66, 0.60, 0.48), (0.12, 0.25, 0.17)],
    dtype=np.float32,
)  # fmt: skip


@dataclass(frozen=True)
class PhotoLook:
    """How the photo look lights and degrades a frame (see the module docstring).

    Attributes:
        materials: (C,) uint8 :class:`Material` id of every class of the style.
        sun_direction: (3,) direction towards the sun, world frame (z up); normalised here.
        ambient: share of light that is not the sun's, in [0, 1].
        sky_zenith, sky_horizon: sky colours straight up and at the horizon, RGB uint8.
        ground: colour of the terrain outside the drawn geometry, RGB uint8 (given ROUGH grain).
        haze_m: [m] distance at which haze hides 63 % of a surface (0: no haze).
        vignette: darkening of the image corners, in [0, 1).
        blur_px: Gaussian blur sigma [px] (0: none).
        noise: sensor noise standard deviation, in 8-bit levels (0: none).
        seed: seeds the noise of every view.
    """

    materials: np.ndarray
    sun_direction: tuple[float, float, float] = (0.45, 0.25, 0.86)
    ambient: float = 0.45
    sky_zenith: tuple[int, int, int] = (92, 134, 190)
    sky_horizon: tuple[int, int, int] = (196, 208, 218)
    ground: tuple[int, int, int] = (104, 98, 84)
    haze_m: float = 180.0
    vignette: float = 0.35
    blur_px: float = 0.6
    noise: float = 3.0
    seed: int = 0
    _sun: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        materials = np.asarray(self.materials, dtype=np.int64).reshape(-1)
        if materials.size == 0 or materials.min() < 0 or materials.max() > Material.HIDDEN:
            raise ValueError(f"PhotoLook: materials must be ids 0..{Material.HIDDEN}, got {np.unique(materials).tolist()}")
        sun = np.asarray(self.sun_direction, dtype=np.float64)
        if sun.shape != (3,) or not np.all(np.isfinite(sun)) or np.linalg.norm(sun) == 0:
            raise ValueError(f"PhotoLook: sun_direction must be a finite non-zero 3-vector, got {self.sun_direction}")
        for name, lo, hi in (("ambient", 0.0, 1.0), ("vignette", 0.0, 0.99)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"PhotoLook: {name} must be in [{lo}, {hi}], got {value}")
        for name in ("haze_m", "blur_px", "noise"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"PhotoLook: {name} must be finite and >= 0, got {value}")
        object.__setattr__(self, "materials", materials.astype(np.uint8))
        object.__setattr__(self, "_sun", sun / np.linalg.norm(sun))

    @property
    def sun(self) -> np.ndarray:
        """(3,) unit vector towards the sun."""
        return self._sun

    def material_table(self, num_classes: int) -> np.ndarray:
        """(C, 1, 3) uint8 texture rows: the material id of every class in the red channel."""
        if len(self.materials) != num_classes:
            raise ValueError(f"PhotoLook: {len(self.materials)} materials for a style of {num_classes} classes")
        table = np.zeros((num_classes, 1, 3), dtype=np.uint8)
        table[:, 0, 0] = self.materials
        return table


def view_seed(look: PhotoLook, camera_name: str, body_to_world: np.ndarray) -> int:
    """The noise seed of one view: fixed by the look's seed, the camera and its pose."""
    pose = np.round(np.asarray(body_to_world, dtype=np.float64), 6).tobytes()
    return zlib.crc32(pose, zlib.crc32(camera_name.encode("utf-8"), int(look.seed) & 0xFFFFFFFF))


_NOISE_MARGIN = 256  # [px] the noise planes are this much larger than a view: its window moves by the seed


@functools.lru_cache(maxsize=8)
def _noise_planes(seed: int, noise: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative parts, uint8 (H + margin, W + margin, 3), of the look's Gaussian
    sensor noise; each view adds one seeded window of them, with saturation."""
    shape = (height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3)
    levels = np.clip(np.round(np.random.default_rng([seed & 0xFFFFFFFF, 0x9A0]).standard_normal(shape, dtype=np.float32) * noise), -255, 255)
    return np.maximum(levels, 0).astype(np.uint8), np.maximum(-levels, 0).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _vignette(width: int, height: int, strength: float) -> np.ndarray:
    """(H, W, 3) uint8 gain x 255: 255 at the centre, (1 - strength) x 255 at the corners."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((x - (width - 1) / 2) / (width / 2)) ** 2 + ((y - (height - 1) / 2) / (height / 2)) ** 2
    gain = 1.0 - strength * np.clip(r2 / 2.0, 0.0, 1.0) ** 1.5
    return np.repeat(np.round(gain * 255.0).astype(np.uint8)[..., None], 3, axis=2)


def post_process(rgb: np.ndarray, look: PhotoLook, seed: int) -> np.ndarray:
    """Lens and sensor: blur, vignetting, then noise; (H, W, 3) uint8 in (or (H, W, 4), the
    fourth channel dropped), (H, W, 3) uint8 out, a new array (8-bit arithmetic with saturation
    throughout, OpenCV). ``seed`` (a view's :func:`view_seed`) places the noise window."""
    import cv2  # opencv-python-headless, a dependency of rap

    if rgb.ndim == 3 and rgb.shape[2] == 4:
        out = cv2.cvtColor(rgb, cv2.COLOR_RGBA2RGB)  # far cheaper than numpy's strided copy
    else:
        out = np.array(rgb, dtype=np.uint8, order="C")
    if look.blur_px > 0:
        k = 2 * max(1, round(2.5 * look.blur_px - 0.5)) + 1  # to 2.5 sigma: 3 x 3 for 0.6 px
        out = cv2.GaussianBlur(out, (k, k), sigmaX=float(look.blur_px), borderType=cv2.BORDER_REFLECT)
    h, w = out.shape[:2]
    if look.vignette > 0:
        out = cv2.multiply(out, _vignette(w, h, float(look.vignette)), scale=1.0 / 255.0)
    if look.noise > 0:
        plus, minus = _noise_planes(int(look.seed), float(look.noise), h, w)
        oy, ox = (int(seed) & 0xFFFFFFFF) % _NOISE_MARGIN, ((int(seed) & 0xFFFFFFFF) >> 8) % _NOISE_MARGIN
        out = cv2.subtract(cv2.add(out, plus[oy : oy + h, ox : ox + w]), minus[oy : oy + h, ox : ox + w])
    return out


# -- shaders ----------------------------------------------------------------------------------------
# Cost on llvmpipe (a CPU) drives the design: one unfiltered fetch of one seeded grain texture per
# fragment (filtered fetches and hash noise cost several times more), lighting and specular per
# vertex (map surfaces all face up; box faces are flat), haze per fragment, and the sky and ground
# from rays interpolated across the view, drawn first with no depth test (cheaper than finding
# where nothing was drawn).

GRAIN_REPEAT_M = 32.0  # [m] the grain texture repeats every this many metres (world x and y)

# (cells per repeat, weight) of the value-noise octaves of the grain texture: blotches of about
# 8 m and 2 m, grain of 25 cm and 6 cm.
_GRAIN_OCTAVES = ((4, 0.30), (16, 0.22), (128, 0.26), (512, 0.22))


@functools.lru_cache(maxsize=4)
def grain_texture(seed: int, size: int = 2048) -> np.ndarray:
    """(size, size) uint8 tileable value noise (smoothed white noise, several octaves), seeded;
    laid over :data:`GRAIN_REPEAT_M` metres. Read-only (cached)."""
    import cv2

    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x7E8])
    out = np.zeros((size, size), np.float32)
    for cells, weight in _GRAIN_OCTAVES:
        k = size // cells
        coarse = np.pad(rng.random((cells, cells), dtype=np.float32), 2, mode="wrap")  # tiles seamlessly
        big = cv2.resize(coarse, ((cells + 4) * k, (cells + 4) * k), interpolation=cv2.INTER_CUBIC)
        out += weight * big[2 * k : 2 * k + size, 2 * k : 2 * k + size]
    # Centre and scale by the spread (not the extremes): about +-0.5 at two standard deviations.
    out = 0.5 + (out - out.mean()) / (4.0 * max(float(out.std()), 1e-6))
    out = np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
    out.flags.writeable = False
    return out


# Per material (Material ids) of the static surfaces: shade = GRAIN[0] + GRAIN[1] * grain (the grain
# texture's value, mean 0.5, standard deviation 0.25), then lit (unless emissive), hazed (unless
# emissive). Rough surfaces: blotches and grain, 0.96 +- 0.07; paint: slightly worn, 0.92 +- 0.03.
_GRAIN = ((1.0, 0.0), (0.82, 0.28), (0.86, 0.12), (1.0, 0.0), (1.0, 0.0), (1.0, 0.0))
_MATERIAL_GLSL = """
int material_of(uint cls) { return int(texelFetch(u_material, ivec2(0, int(cls)), 0).r * 255.0 + 0.5); }
"""

# Static surfaces (the map) face up, so the sun lights each class's surfaces alike: the per-class
# row of a float table (:func:`static_table`) holds all the vertex shader needs.
PHOTO_VS_STATIC = (
    """
#version 330
in vec3 in_pos; in uint in_class; in uint in_instance;
uniform mat4 u_proj; uniform mat4 u_view; uniform sampler2D u_static_table; uniform float u_haze_rate;
flat out uint v_class; flat out uint v_instance;
flat out vec4 v_color;  // rgb: the lit colour x GRAIN.x; a: GRAIN.y / GRAIN.x
out vec3 v_surf;  // xy: the grain's texture coordinate; z: depth / haze length (0: no haze)
void main() {
    v_class = in_class; v_instance = in_instance;
    vec4 row = texelFetch(u_static_table, ivec2(0, int(in_class)), 0);  // a < 0: emissive, not hazed
    v_color = vec4(row.rgb, max(row.a, 0.0));
    vec4 cam = u_view * vec4(in_pos, 1.0);
    // Both linear on a surface: interpolated exactly (with perspective).
    v_surf = vec3(in_pos.xy * (1.0 / """
    + f"{GRAIN_REPEAT_M:.1f}"
    + """), row.a < 0.0 ? 0.0 : u_haze_rate * cam.z);
    gl_Position = u_proj * cam;
}
"""
)


def static_table(colors: np.ndarray, look: PhotoLook) -> np.ndarray:
    """(C, 1, 4) float32 rows of the static surfaces' vertex shader, one per class: the colour lit
    from above (emissive: as is) x the material's GRAIN.x, and GRAIN.y / GRAIN.x (-1: emissive)."""
    colors = np.asarray(colors, dtype=np.float64).reshape(-1, 3) / 255.0
    materials = np.asarray(look.materials, dtype=np.int64)
    grain = np.array(_GRAIN, dtype=np.float64)[materials]
    emissive = materials == Material.EMISSIVE
    table = np.zeros((len(colors), 1, 4), dtype=np.float32)
    table[:, 0, :3] = colors * np.where(emissive, 1.0, lit_up(look))[:, None] * grain[:, :1]
    table[:, 0, 3] = np.where(emissive, -1.0, grain[:, 1] / grain[:, 0])
    return table


# The haze of both fragment shaders (a format string, as they are: braces doubled).
_TRANSMITTANCE = """// Share of a surface's colour through the haze at t = distance / haze length: exp(-t) to within
// 0.0012 for t <= 3 by a polynomial (llvmpipe's exp, or a division, costs several times more).
float transmittance(float t) {{
    t = min(t, 3.0);
    return 1.0 + t * (-0.98665439 + t * (0.45147472 + t * (-0.10905442 + t * 0.01101351)));
}}
"""

PHOTO_FS_STATIC = """
#version 330
flat in uint v_class; flat in uint v_instance; flat in vec4 v_color; in vec3 v_surf;
uniform vec4 u_depth; uniform bool u_ortho; uniform sampler2D u_noise; uniform vec3 u_haze_color;
{outputs}
""" + _TRANSMITTANCE + """void main() {{
    float ndc_z = gl_FragCoord.z * 2.0 - 1.0;
    float z = u_ortho ? u_depth.z * ndc_z + u_depth.w : u_depth.x / (u_depth.y - ndc_z);
    vec3 color = v_color.rgb * (1.0 + v_color.a * texture(u_noise, v_surf.xy).r);
    color = mix(u_haze_color, color, transmittance(v_surf.z));
{writes}
}}
"""

# Boxes: lit per face, specular per vertex (the faces are flat), a paint colour per instance for
# bodies, with a dark glass band round the sides and dark wheels and sills below.
PHOTO_VS_BOXES = (
    """
#version 330
in vec3 in_corner; in uint in_face;
in vec3 in_center; in vec3 in_size; in float in_yaw; in uint in_class; in uint in_instance;
uniform mat4 u_proj; uniform mat4 u_view; uniform sampler2D u_style; uniform sampler2D u_material;
uniform vec3 u_sun; uniform float u_ambient; uniform vec3 u_cam_pos; uniform vec3 u_paints[8]; uniform float u_haze_rate;
flat out uint v_class; flat out uint v_instance;
out vec3 v_body; out vec3 v_glass; out float v_lz; flat out vec2 v_band; out float v_haze;
const vec3 NORMALS[6] = vec3[6](vec3(1, 0, 0), vec3(-1, 0, 0), vec3(0, 1, 0), vec3(0, -1, 0), vec3(0, 0, 1), vec3(0, 0, -1));
"""
    + _MATERIAL_GLSL
    + """
void main() {
    vec3 p = in_corner * in_size;
    float c = cos(in_yaw), s = sin(in_yaw);
    vec3 world = vec3(c * p.x - s * p.y, s * p.x + c * p.y, p.z) + in_center;
    vec3 n0 = NORMALS[int(in_face) - 1];
    vec3 n = vec3(c * n0.x - s * n0.y, s * n0.x + c * n0.y, n0.z);
    v_class = in_class; v_instance = in_instance;
    int m = material_of(in_class);
    vec3 color = texelFetch(u_style, ivec2(int(in_face), int(in_class)), 0).rgb;
    float lit = u_ambient + (1.0 - u_ambient) * max(dot(n, u_sun), 0.0);
    v_lz = in_corner.z;
    vec4 cam = u_view * vec4(world, 1.0);
    v_haze = m == 4 ? 0.0 : u_haze_rate * cam.z;
    if (m == 3) {
        float h = max(dot(n, normalize(normalize(u_cam_pos - world) + u_sun)), 0.0);
        v_body = u_paints[int(in_instance % 8u)] * lit + vec3(0.3 * pow(h, 24.0));
        v_glass = vec3(0.05, 0.06, 0.07) * lit + vec3(0.7 * pow(h, 80.0));
        v_band = vec2(abs(n.z) < 0.5 ? 1.0 : 0.0, 0.35);
    } else {
        v_body = v_glass = m == 4 ? color : color * lit;
        v_band = vec2(0.0, 1.0);
    }
    gl_Position = u_proj * cam;
}
"""
)

PHOTO_FS_BOXES = """
#version 330
flat in uint v_class; flat in uint v_instance;
in vec3 v_body; in vec3 v_glass; in float v_lz; flat in vec2 v_band; in float v_haze;
uniform vec4 u_depth; uniform bool u_ortho; uniform vec3 u_haze_color;
{outputs}
""" + _TRANSMITTANCE + """void main() {{
    float ndc_z = gl_FragCoord.z * 2.0 - 1.0;
    float z = u_ortho ? u_depth.z * ndc_z + u_depth.w : u_depth.x / (u_depth.y - ndc_z);
    vec3 color = (v_band.x > 0.5 && v_lz > 0.12 && v_lz < 0.42) ? v_glass : v_body;
    if (v_lz < -0.32) color *= v_band.y;  // wheels, sills and the shadow under a body
    color = mix(u_haze_color, color, transmittance(v_haze));
{writes}
}}
"""

# Sky and terrain behind everything, drawn first into the rgb attachment alone (no depth test; the
# scene paints over them). llvmpipe spends little per pixel on a shader that only interpolates, a
# lot per arithmetic instruction and per triangle, and nearly nothing on a clear: so the view is
# cleared to the colour of the far-but-not-hazed-out terrain (TERRAIN_TRANSMITTANCE of its own
# colour through the haze), and only the sky and the terrain near the horizon get a few bands
# across the view, dense about the horizon where the colours change fastest, whose colours come
# per vertex from the view's rays (u_ray[0] + u_ray[1] x + u_ray[2] y at a position (x, y) of the
# view [px]; a multiple of the ray direction): the sky gradient above the horizon, the lit
# terrain hazed by its distance below it. Sky and terrain meet in the horizon colour, so the seam
# is smooth, and the last band ends in the clear colour. Orthographic views see the terrain
# straight down: one band of the lit terrain colour. (The shader takes bands in any direction;
# :func:`background_bands` cuts them level.)
BACKGROUND_MAX_ROWS = 40
TERRAIN_TRANSMITTANCE = 0.93

PHOTO_BG_VS = (
    """
#version 330
uniform vec3 u_ray[3]; uniform vec2 u_size; uniform float u_rows[""" + str(BACKGROUND_MAX_ROWS) + """];
uniform vec4 u_band_axes;  // xy: along the horizon, zw: across it, toward the sky (unit vectors)
uniform vec3 u_band_origin;  // xy: a point of the horizon [px]; z: half the bands' length [px]
uniform bool u_ortho; uniform vec3 u_cam_pos; uniform float u_lit_up; uniform float u_haze_rate;
uniform vec3 u_zenith; uniform vec3 u_horizon; uniform vec3 u_ground; uniform vec3 u_haze_color;
noperspective out vec3 v_color;
void main() {
    int band = gl_VertexID / 6, corner = gl_VertexID % 6;
    float along = (corner == 1 || corner == 2 || corner == 4) ? u_band_origin.z : -u_band_origin.z;
    float across = u_rows[band + ((corner == 2 || corner == 4 || corner == 5) ? 1 : 0)];
    vec2 q = u_band_origin.xy + along * u_band_axes.xy + across * u_band_axes.zw;
    vec3 r = u_ray[0] + u_ray[1] * q.x + u_ray[2] * q.y;
    vec3 terrain = u_ground * u_lit_up;
    if (u_ortho) {
        v_color = terrain;
    } else if (r.z >= 0.0) {
        v_color = mix(u_horizon, u_zenith, sqrt(r.z * inversesqrt(dot(r, r))));
    } else {
        // Nearer terrain is the clear colour: its share through the haze is held there.
        v_color = mix(u_haze_color, terrain, min(exp(u_cam_pos.z / r.z * length(r) * u_haze_rate), """
    + repr(TERRAIN_TRANSMITTANCE)
    + """));
    }
    gl_Position = vec4(2.0 * q / u_size - 1.0, 0.0, 1.0);
}
"""
)

PHOTO_BG_FS = """
#version 330
noperspective in vec3 v_color;
out vec4 out_rgb;
void main() { out_rgb = vec4(v_color, 1.0); }
"""


def lit_up(look: PhotoLook) -> float:
    """How brightly the sun and the ambient light an upward-facing surface."""
    return float(look.ambient + (1.0 - look.ambient) * max(float(look.sun[2]), 0.0))


def terrain_clear_color(look: PhotoLook) -> np.ndarray:
    """(3,) float32 RGB in [0, 1]: the colour a photo view is cleared to (the lit terrain with
    :data:`TERRAIN_TRANSMITTANCE` of it through the haze, or all of it without haze)."""
    terrain = np.asarray(look.ground, dtype=np.float64) / 255.0 * lit_up(look)
    share = TERRAIN_TRANSMITTANCE if look.haze_m > 0 else 1.0
    haze = np.asarray(look.sky_horizon, dtype=np.float64) / 255.0
    return (haze + (terrain - haze) * share).astype(np.float32)


def background_rays(inv_view_proj: np.ndarray, cam_pos: np.ndarray, width: int, height: int, ortho: bool) -> np.ndarray:
    """(3, 3) float64 rows r0, rx, ry of the ray r0 + rx x + ry y through position (x, y) of a
    view [px]: a positive multiple of the ray direction (perspective), or the ground point below
    (orthographic). The window position maps to NDC (2 x / width - 1, 2 y / height - 1); the
    inverse of projection x view takes it, at the far (near) plane, to a homogeneous point."""
    m = np.asarray(inv_view_proj, dtype=np.float64)
    if ortho:  # w = 1 throughout
        return np.stack([-m[:3, 0] - m[:3, 1] - m[:3, 2] + m[:3, 3], m[:3, 0] * (2.0 / width), m[:3, 1] * (2.0 / height)])
    # Homogeneous far point p (affine in x, y); the ray p.xyz - c p.w (a positive multiple of
    # p.xyz / p.w - c) is affine in x, y too.
    ray = m[:3] - np.outer(np.asarray(cam_pos, dtype=np.float64), m[3])  # columns: per NDC x, y, z, 1
    return np.stack([-ray[:, 0] - ray[:, 1] + ray[:, 2] + ray[:, 3], ray[:, 0] * (2.0 / width), ray[:, 1] * (2.0 / height)])


@dataclass(frozen=True)
class BackgroundBands:
    """Where one view's background bands lie (see the shaders' comment): ``offsets`` [px]
    (ascending; fewer than two: nothing to draw) across the horizon, from ``origin`` (a point of
    it, in the view [px]) along ``across`` (unit; toward the sky if there is one); each band is ``2 half_length``
    [px] long along ``along``, centred on ``origin``'s line."""

    origin: tuple[float, float]
    along: tuple[float, float]
    across: tuple[float, float]
    half_length: float
    offsets: np.ndarray


def _terrain_cut(rays: list, q: tuple[float, float], n: tuple[float, float], c: float, d: float) -> float | None:
    """The offset s [px] along ``n`` from view position ``q`` at which the ray r(q + s n) of a camera
    at height c > 0 meets the ground at distance d (terrain side: r.z < 0); None if it never does.
    With r(q + s n) = a + b s, the distance -c |a + b s| / (a.z + b.z s) = d is a quadratic in s."""
    r0, rx, ry = rays
    (ax, ay, az) = (r0[i] + rx[i] * q[0] + ry[i] * q[1] for i in range(3))
    (bx, by, bz) = (rx[i] * n[0] + ry[i] * n[1] for i in range(3))
    qa = c * c * (bx * bx + by * by + bz * bz) - d * d * bz * bz
    qb = 2.0 * (c * c * (ax * bx + ay * by + az * bz) - d * d * az * bz)
    qc = c * c * (ax * ax + ay * ay + az * az) - d * d * az * az
    if abs(qa) > 1e-300:
        disc = qb * qb - 4.0 * qa * qc
        roots = [(-qb + sgn * math.sqrt(disc)) / (2.0 * qa) for sgn in (-1.0, 1.0)] if disc >= 0 else []
    else:
        roots = [-qc / qb] if qb != 0 else []
    roots = [s for s in roots if az + bz * s < 0.0]
    return max(roots) if roots else None  # the one nearest the horizon (s grows toward the sky)


def background_bands(look: PhotoLook, rays: np.ndarray, cam_pos: np.ndarray, width: int, height: int, ortho: bool) -> BackgroundBands:
    """The background bands of one view: full-width bands (a band that leaves the view costs
    llvmpipe a clipped triangle more) over the view's sky and its terrain hazed below
    :data:`TERRAIN_TRANSMITTANCE` at either side of the view, cut 1, 2, 4, 8 ... px either side of
    where the horizon crosses the view's middle column (one band over an orthographic view, or
    over a view with no horizon across it). A camera with roll sees the horizon cross bands cut
    level: soft there (sky and far terrain are both near the horizon colour), never a gap."""
    whole = BackgroundBands((width / 2.0, height / 2.0), (1.0, 0.0), (0.0, 1.0), width / 2.0, np.array([-height / 2.0, height / 2.0], dtype=np.float32))
    if ortho:
        return whole
    rays = [v.tolist() for v in np.asarray(rays, dtype=np.float64)]
    r0, rx, ry = rays
    if abs(ry[2]) < 1e-12 * max(math.sqrt(sum(v * v for v in ry)), 1e-300):  # the horizon runs down the view
        return whole
    sky_dir = 1.0 if ry[2] > 0 else -1.0  # r.z grows toward +y (sky at the bottom) or -y
    y_h = -(r0[2] + rx[2] * width / 2.0) / ry[2]  # the horizon at the middle column
    n = (0.0, sky_dir)
    s_lo, s_hi = sorted(((0.0 - y_h) * sky_dir, (height - y_h) * sky_dir))  # the view's rows as offsets
    cut = 0.0  # below this offset the terrain is the clear colour
    c = float(cam_pos[2])
    if look.haze_m > 0 and c > 0:
        d = -look.haze_m * math.log(TERRAIN_TRANSMITTANCE)
        cuts = [_terrain_cut(rays, (x, y_h), n, c, d) for x in (0.0, float(width))]
        cut = min([v for v in cuts if v is not None], default=0.0)
    lo, hi = max(s_lo, math.floor(cut)), s_hi
    if hi <= lo:
        return BackgroundBands((width / 2.0, y_h), (1.0, 0.0), n, width / 2.0, np.zeros(0, dtype=np.float32))
    offsets = {lo, hi}
    if lo < 0.0 < hi:
        offsets.add(0.0)
    step = 1.0
    while step < hi - lo:
        offsets.update(v for v in (-step, step) if lo < v < hi)
        step *= 2.0
    out = np.array(sorted(offsets), dtype=np.float32)
    assert len(out) <= BACKGROUND_MAX_ROWS
    return BackgroundBands((width / 2.0, y_h), (1.0, 0.0), n, width / 2.0, out)
