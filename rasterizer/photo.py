"""The camera-like ``photo`` look: a stand-in for camera images, not real ones.

A :class:`PhotoLook` attached to a :class:`rasterizer.renderer.Style` makes the renderer draw the
same geometry the way a camera would see it, instead of flat class colours: a sky and a ground
plane behind everything, sunlit surfaces (Lambert), procedural grain on rough surfaces (asphalt,
ground), worn paint, shaded bodies with a paint colour per instance, dark glass and a specular
highlight, distance haze, and after read-back lens vignetting, a Gaussian blur and sensor noise.
Only the ``rgb`` output changes: class ids, instance ids and depth are those of the flat look.

Everything is seeded: the noise of a view comes from :attr:`PhotoLook.seed` and the view itself
(camera name and pose), so one view renders to the same bytes whatever else is rendered around
it. Materials are given per class (data, not code): what each class *is* stays with the caller.
"""

from __future__ import annotations

import functools
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
        if materials.size == 0 or materials.min() < 0 or materials.max() > Material.EMISSIVE:
            raise ValueError(f"PhotoLook: materials must be ids 0..{Material.EMISSIVE}, got {np.unique(materials).tolist()}")
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
    """Lens and sensor: blur, vignetting, then noise; (H, W, 3) uint8 in and out (8-bit
    arithmetic with saturation throughout, OpenCV)."""
    import cv2  # opencv-python-headless, a dependency of rap

    out = np.ascontiguousarray(rgb, dtype=np.uint8)
    if look.blur_px > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(look.blur_px), borderType=cv2.BORDER_REFLECT)
    h, w = out.shape[:2]
    if look.vignette > 0:
        out = cv2.multiply(out, _vignette(w, h, float(look.vignette)), scale=1.0 / 255.0)
    if look.noise > 0:
        plus, minus = _noise_planes(int(look.seed), float(look.noise), h, w)
        oy, ox = (int(v) for v in np.random.default_rng(seed).integers(0, _NOISE_MARGIN, size=2))
        out = cv2.subtract(cv2.add(out, plus[oy : oy + h, ox : ox + w]), minus[oy : oy + h, ox : ox + w])
    return out


# -- shaders ----------------------------------------------------------------------------------------
# Procedural texture from a seeded tileable noise texture (u_noise, 256 px per repeat, bilinear):
# texture fetches cost llvmpipe far less than hash-based noise computed per fragment.
_NOISE_GLSL = """
uniform sampler2D u_noise;
float tex_noise(vec2 p) { return texture(u_noise, p).r; }
// Blotches and grain of a rough surface at world position p [m]: about 1 +- 0.25 (two fetches:
// finer grain would be below a pixel beyond a few metres and costs llvmpipe a third).
float rough(vec2 p) {
    return 0.68 + 0.30 * tex_noise(p * (1.0 / 96.0)) + 0.26 * tex_noise(p * (1.0 / 4.0));
}
"""


def noise_texture(seed: int, size: int = 256) -> np.ndarray:
    """(size, size) uint8 tileable value noise (smoothed white noise, two octaves), seeded."""
    import cv2

    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x7E7])
    out = np.zeros((size, size), np.float32)
    for cells, weight in ((16, 0.6), (64, 0.4)):
        coarse = rng.random((cells, cells), dtype=np.float32)
        tiled = np.tile(coarse, (3, 3))  # wrap around so the texture tiles seamlessly
        big = cv2.resize(tiled, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
        out += weight * big[size : 2 * size, size : 2 * size]
    out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
    return np.round(out * 255.0).astype(np.uint8)


PHOTO_VS_STATIC = """
#version 330
in vec3 in_pos; in uint in_class; in uint in_instance;
uniform mat4 u_proj; uniform mat4 u_view; uniform sampler2D u_style; uniform sampler2D u_material;
flat out uint v_class; flat out uint v_instance; flat out vec3 v_color; flat out int v_material;
out vec3 v_world; out vec3 v_normal; out vec3 v_local;
void main() {
    v_class = in_class; v_instance = in_instance;
    v_color = texelFetch(u_style, ivec2(0, int(in_class)), 0).rgb;
    v_material = int(texelFetch(u_material, ivec2(0, int(in_class)), 0).r * 255.0 + 0.5);
    v_world = in_pos; v_normal = vec3(0.0, 0.0, 1.0); v_local = vec3(0.0);
    gl_Position = u_proj * (u_view * vec4(in_pos, 1.0));
}
"""

PHOTO_VS_BOXES = """
#version 330
in vec3 in_corner; in uint in_face;
in vec3 in_center; in vec3 in_size; in float in_yaw; in uint in_class; in uint in_instance;
uniform mat4 u_proj; uniform mat4 u_view; uniform sampler2D u_style; uniform sampler2D u_material;
flat out uint v_class; flat out uint v_instance; flat out vec3 v_color; flat out int v_material;
out vec3 v_world; out vec3 v_normal; out vec3 v_local;
const vec3 NORMALS[6] = vec3[6](vec3(1, 0, 0), vec3(-1, 0, 0), vec3(0, 1, 0), vec3(0, -1, 0), vec3(0, 0, 1), vec3(0, 0, -1));
void main() {
    vec3 p = in_corner * in_size;
    float c = cos(in_yaw), s = sin(in_yaw);
    v_world = vec3(c * p.x - s * p.y, s * p.x + c * p.y, p.z) + in_center;
    vec3 n = NORMALS[int(in_face) - 1];
    v_normal = vec3(c * n.x - s * n.y, s * n.x + c * n.y, n.z);
    v_local = in_corner;
    v_class = in_class; v_instance = in_instance;
    v_color = texelFetch(u_style, ivec2(int(in_face), int(in_class)), 0).rgb;
    v_material = int(texelFetch(u_material, ivec2(0, int(in_class)), 0).r * 255.0 + 0.5);
    gl_Position = u_proj * (u_view * vec4(v_world, 1.0));
}
"""

PHOTO_FS = (
    """
#version 330
flat in uint v_class; flat in uint v_instance; flat in vec3 v_color; flat in int v_material;
in vec3 v_world; in vec3 v_normal; in vec3 v_local;
uniform vec4 u_depth; uniform bool u_ortho;
uniform vec3 u_sun; uniform float u_ambient; uniform vec3 u_haze_color; uniform float u_haze_m; uniform vec3 u_cam_pos;
uniform vec3 u_paints[8];
{outputs}
"""
    + _NOISE_GLSL.replace("{", "{{").replace("}", "}}")  # a str.format template: {outputs}, {writes}
    + """
void main() {{
    float ndc_z = gl_FragCoord.z * 2.0 - 1.0;
    float z = u_ortho ? u_depth.z * ndc_z + u_depth.w : u_depth.x / (u_depth.y - ndc_z);
    vec3 n = normalize(v_normal);
    float lit = u_ambient + (1.0 - u_ambient) * max(dot(n, u_sun), 0.0);
    vec3 color;
    if (v_material == 1) {{
        color = v_color * rough(v_world.xy) * lit;
    }} else if (v_material == 2) {{
        color = v_color * (0.8 + 0.2 * tex_noise(v_world.xy * 0.4)) * lit;
    }} else if (v_material == 3) {{
        bool glass = v_local.z > 0.12 && v_local.z < 0.42 && abs(n.z) < 0.5;
        vec3 albedo = glass ? vec3(0.05, 0.06, 0.07) : u_paints[int(v_instance % 8u)];
        if (v_local.z < -0.32) albedo *= 0.35;  // wheels, sills and shadow under the body
        vec3 to_cam = normalize(u_cam_pos - v_world);
        float spec = pow(max(dot(n, normalize(to_cam + u_sun)), 0.0), glass ? 80.0 : 24.0) * (glass ? 0.7 : 0.3);
        color = albedo * lit + vec3(spec);
    }} else if (v_material == 4) {{
        color = v_color;
    }} else {{
        color = v_color * lit;
    }}
    if (!u_ortho && u_haze_m > 0.0 && v_material != 4) color = mix(u_haze_color, color, exp(-z / u_haze_m));
    color = clamp(color, 0.0, 1.0);
{writes}
}}
"""
)

# The map's coverage laid into the depth buffer before the sky and ground pass (no colour written).
DEPTH_VS = """
#version 330
in vec3 in_pos;
uniform mat4 u_proj; uniform mat4 u_view;
void main() { gl_Position = u_proj * (u_view * vec4(in_pos, 1.0)); }
"""

DEPTH_FS = """
#version 330
out vec4 out_unused;
void main() { out_unused = vec4(0.0); }
"""

# Sky and ground behind everything: a full-viewport triangle; each pixel's ray (the near and far
# points of its window position, mapped back by the inverse of projection x view: linear in window
# coordinates before the divide, so interpolated, not computed per pixel) meets the sky above the
# horizon and the z = 0 ground plane below it.
PHOTO_BG_VS = """
#version 330
uniform mat4 u_inv;
noperspective out vec4 v_near; noperspective out vec4 v_far;
void main() {
    vec2 ndc = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2)) * 2.0 - 1.0;
    v_near = u_inv * vec4(ndc, -1.0, 1.0);
    v_far = u_inv * vec4(ndc, 1.0, 1.0);
    gl_Position = vec4(ndc, 1.0, 1.0);
}
"""

PHOTO_BG_FS = (
    """
#version 330
noperspective in vec4 v_near; noperspective in vec4 v_far;
uniform bool u_ortho;
uniform vec3 u_sun; uniform float u_ambient; uniform vec3 u_zenith; uniform vec3 u_horizon; uniform vec3 u_ground;
uniform float u_haze_m; uniform vec3 u_haze_color;
out vec4 out_rgb;
"""
    + _NOISE_GLSL
    + """
void main() {
    vec3 a = v_near.xyz / v_near.w;
    vec3 d = normalize(v_far.xyz / v_far.w - a);
    vec3 color;
    if (d.z >= 0.0 && !u_ortho) {
        color = mix(u_horizon, u_zenith, sqrt(d.z));
    } else {
        float t = d.z < 0.0 ? -a.z / d.z : 0.0;
        vec2 p = a.xy + t * d.xy;
        float lit = u_ambient + (1.0 - u_ambient) * max(u_sun.z, 0.0);
        color = u_ground * (0.8 + 0.35 * tex_noise(p * (1.0 / 48.0))) * lit;
        if (!u_ortho && u_haze_m > 0.0) color = mix(u_haze_color, color, exp(-t / u_haze_m));
    }
    out_rgb = vec4(clamp(color, 0.0, 1.0), 1.0);
}
"""
)
