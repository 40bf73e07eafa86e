"""Camera models and rigs.

Conventions (used by every module of the rasterizer):

* A camera is mounted on a *body* (the vehicle or any rigid frame): ``cam_to_body`` is a (4, 4)
  float64 transform whose rotation columns are the camera axes in the body frame, in OpenCV
  camera axes: x right, y down, z forward (the optical axis).
* Pixel coordinates follow OpenCV: the centre of pixel (row i, column j) is at (u, v) = (j, i),
  so the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5]. Intrinsics ``fx, fy, cx, cy`` are in pixels.
* Distortion is OpenCV's / Waymo's radial-tangential model with coefficients (k1, k2, p1, p2, k3),
  applied to normalised image coordinates (x, y) = (X / Z, Y / Z).

How distortion is rendered: the renderer draws an undistorted pinhole image with the same focal
length that covers the whole distorted field of view, then a remap pass looks every distorted
output pixel up in it (nearest texel, so class and instance ids stay exact). The per-pixel lookup
table comes from :meth:`PinholeCamera.undistort_normalized`, computed once per camera. Rendering
undistorted first keeps straight lines straight for the GPU's clipper, so geometry that crosses
the near plane is clipped exactly; per-vertex distortion would need dense tessellation and bends
clipped edges wrongly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

# OpenCV camera axes (x right, y down, z forward) expressed in a body frame with x forward,
# y left, z up. Columns are the camera axes.
OPENCV_FROM_FLU = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _as_pose(matrix: np.ndarray, name: str) -> np.ndarray:
    pose = np.asarray(matrix, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"{name} must be a (4, 4) transform, got shape {pose.shape}")
    if not np.all(np.isfinite(pose)):
        raise ValueError(f"{name} has non-finite entries")
    rot = pose[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or np.linalg.det(rot) < 0:
        raise ValueError(f"{name} rotation is not a proper rotation matrix")
    return pose


def pose_matrix(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Build a (4, 4) float64 rigid transform from a (3, 3) rotation and (3,) translation."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = translation
    return pose


def look_at_flu(position: Sequence[float], yaw: float, pitch: float = 0.0) -> np.ndarray:
    """Camera-to-body pose for a camera at ``position`` (body frame, x forward, y left, z up)
    looking along ``yaw`` (rad, counter-clockwise from +x) and ``pitch`` (rad, positive = down).

    Returns:
        (4, 4) float64 ``cam_to_body`` with OpenCV camera axes.
    """
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    yaw_m = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    # Pitch about the body's y axis; positive pitch tilts the forward axis downwards.
    pitch_m = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    return pose_matrix(yaw_m @ pitch_m @ OPENCV_FROM_FLU, np.asarray(position, dtype=np.float64))


@dataclass(frozen=True, eq=False)
class PinholeCamera:
    """A pinhole camera with optional radial-tangential distortion.

    Attributes:
        name: camera name, e.g. ``"CAM_F0"``.
        width, height: image size [px].
        fx, fy, cx, cy: intrinsics [px], OpenCV pixel-centre convention.
        cam_to_body: (4, 4) float64, camera (OpenCV axes) to body transform [m].
        distortion: (k1, k2, p1, p2, k3); all zeros means an ideal pinhole.
        near, far: clip distances along the optical axis [m].
    """

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    cam_to_body: np.ndarray = field(default_factory=lambda: np.eye(4))
    distortion: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    near: float = 0.1
    far: float = 500.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name}: size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"camera {self.name}: focal lengths must be positive")
        if not 0 < self.near < self.far:
            raise ValueError(f"camera {self.name}: need 0 < near < far, got {self.near}, {self.far}")
        dist = tuple(float(d) for d in self.distortion)
        if len(dist) != 5:
            raise ValueError(f"camera {self.name}: distortion needs 5 coefficients (k1, k2, p1, p2, k3)")
        object.__setattr__(self, "distortion", dist)
        object.__setattr__(self, "cam_to_body", _as_pose(self.cam_to_body, f"camera {self.name}: cam_to_body"))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) [px]."""
        return (self.width, self.height)

    @property
    def is_distorted(self) -> bool:
        return any(d != 0.0 for d in self.distortion)

    @property
    def intrinsic_matrix(self) -> np.ndarray:
        """(3, 3) float64 K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def resized(self, width: int, height: int) -> "PinholeCamera":
        """The same camera with the image scaled to ``width`` x ``height`` (intrinsics scaled)."""
        sx, sy = width / self.width, height / self.height
        return dataclasses.replace(
            self,
            width=int(width),
            height=int(height),
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
        )

    def without_distortion(self) -> "PinholeCamera":
        return dataclasses.replace(self, distortion=(0.0,) * 5)

    def distort_normalized(self, xy: np.ndarray) -> np.ndarray:
        """Apply the distortion model to normalised coordinates.

        Args:
            xy: (..., 2) undistorted normalised coordinates (X / Z, Y / Z).
        Returns:
            (..., 2) distorted normalised coordinates.
        """
        k1, k2, p1, p2, k3 = self.distortion
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        return np.stack([xd, yd], axis=-1)

    def undistort_normalized(self, xy_distorted: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
        """Invert the distortion by fixed-point iteration (as OpenCV's ``undistortPoints``).

        Args:
            xy_distorted: (..., 2) distorted normalised coordinates.
        Returns:
            ``(xy, ok)``: (..., 2) undistorted normalised coordinates and a (...,) bool mask of
            points whose re-distortion matches the input to 1e-6 (points beyond the radius where
            the model folds back have no valid inverse).
        """
        xy_distorted = np.asarray(xy_distorted, dtype=np.float64)
        if not self.is_distorted:
            return xy_distorted.copy(), np.ones(xy_distorted.shape[:-1], dtype=bool)
        k1, k2, p1, p2, k3 = self.distortion
        xd, yd = xy_distorted[..., 0].ravel(), xy_distorted[..., 1].ravel()
        x, y = xd.copy(), yd.copy()
        active = np.arange(x.size)  # points still moving; converged ones drop out
        for _ in range(iterations):
            xa, ya = x[active], y[active]
            r2 = xa * xa + ya * ya
            radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
            dx = 2.0 * p1 * xa * ya + p2 * (r2 + 2.0 * xa * xa)
            dy = p1 * (r2 + 2.0 * ya * ya) + 2.0 * p2 * xa * ya
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                xn = (xd[active] - dx) / radial
                yn = (yd[active] - dy) / radial
                moving = ~(np.abs(xn - xa) + np.abs(yn - ya) < 1e-12)
            x[active], y[active] = xn, yn
            active = active[moving]
            if not active.size:
                break
        x, y = x.reshape(xy_distorted.shape[:-1]), y.reshape(xy_distorted.shape[:-1])
        xy = np.stack([x, y], axis=-1)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.linalg.norm(self.distort_normalized(xy) - xy_distorted, axis=-1)
        ok = np.isfinite(err) & (err < 1e-6)
        # Past the fold of the radial polynomial the iteration can land on the wrong branch:
        # require the distortion to be locally monotone (positive radial derivative).
        r2 = np.sum(xy * xy, axis=-1)
        d_radius = 1.0 + r2 * (3 * k1 + r2 * (5 * k2 + r2 * 7 * k3))
        ok &= d_radius > 0
        xy[~ok] = 0.0
        return xy, ok

    def project(self, points_body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project body-frame points into the image (with distortion).

        Args:
            points_body: (N, 3) points in the body frame [m].
        Returns:
            ``(uv, depth)``: (N, 2) pixel coordinates and (N,) depth along the optical axis [m]
            (points with depth <= 0 are behind the camera and their uv is meaningless).
        """
        pts = np.asarray(points_body, dtype=np.float64)
        body_to_cam = np.linalg.inv(self.cam_to_body)
        cam = pts @ body_to_cam[:3, :3].T + body_to_cam[:3, 3]
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = cam[:, :2] / depth[:, None]
        xy = self.distort_normalized(xy)
        uv = np.stack([xy[:, 0] * self.fx + self.cx, xy[:, 1] * self.fy + self.cy], axis=-1)
        return uv, depth


@dataclass(frozen=True, eq=False)
class OrthoCamera:
    """A top-down orthographic (BEV) camera.

    Looks straight down the body's -z axis; image up is the body's +x (forward), image right is
    the body's -y (right). The image covers ``extent_x`` [m] (forward) by ``extent_y`` [m]
    (lateral), centred at ``center`` (body frame, x, y [m]).

    Attributes:
        name: camera name.
        width, height: image size [px]; height spans extent_x, width spans extent_y.
        extent_x, extent_y: metric extents [m].
        center: (x, y) of the image centre in the body frame [m].
        z_range: (low, high) heights [m] kept by the clip volume.
    """

    name: str
    width: int
    height: int
    extent_x: float = 64.0
    extent_y: float = 64.0
    center: tuple[float, float] = (0.0, 0.0)
    z_range: tuple[float, float] = (-20.0, 50.0)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.extent_x <= 0 or self.extent_y <= 0:
            raise ValueError(f"camera {self.name}: size and extents must be positive")

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def is_distorted(self) -> bool:
        return False

    @property
    def cam_to_body(self) -> np.ndarray:
        """(4, 4) pose: OpenCV-style axes x = image right (body -y), y = image down (body -x),
        z = view direction (body -z), origin above the centre at z_range[1]."""
        rot = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
        return pose_matrix(rot, np.array([self.center[0], self.center[1], self.z_range[1]]))

    def resized(self, width: int, height: int) -> "OrthoCamera":
        return dataclasses.replace(self, width=int(width), height=int(height))

    def project(self, points_body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) body points → ((N, 2) pixel uv, (N,) depth below the camera [m])."""
        pts = np.asarray(points_body, dtype=np.float64)
        u = (-(pts[:, 1] - self.center[1]) / self.extent_y + 0.5) * self.width - 0.5
        v = (-(pts[:, 0] - self.center[0]) / self.extent_x + 0.5) * self.height - 0.5
        return np.stack([u, v], axis=-1), self.z_range[1] - pts[:, 2]


Camera = PinholeCamera | OrthoCamera


@dataclass(frozen=True)
class Rig:
    """A named set of cameras mounted on one body."""

    name: str
    cameras: tuple[Camera, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"rig {self.name}: camera names must be unique, got {names}")

    def __len__(self) -> int:
        return len(self.cameras)

    def __iter__(self):
        return iter(self.cameras)

    def resized(self, width: int, height: int) -> "Rig":
        """Every camera scaled to ``width`` x ``height``."""
        return Rig(self.name, tuple(c.resized(width, height) for c in self.cameras))


def load_rig_json(path: str | Path, *, mount_offset: Sequence[float] = (0.0, 0.0, 0.0), names: Sequence[str] | None = None, name: str | None = None) -> Rig:
    """Load a rig in the ``nuplan_cameras.json`` schema.

    The file gives, per camera, ``intrinsics`` (3x3), ``distortion_k1k2p1p2k3``,
    ``sensor2lidar_rotation`` (columns = OpenCV camera axes in the lidar frame) and
    ``sensor2lidar_translation`` [m], plus a top-level ``image_size`` [W, H].

    Args:
        path: the JSON file.
        mount_offset: (3,) [m] added to every camera translation, to express the lidar-frame
            mounting in the body frame the caller renders from.
        names: cameras to keep, in this order (default: all, in file order).
        name: rig name (default: the file stem).
    Raises:
        ValueError: naming the file, the camera and the field on a malformed entry.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read rig JSON: {exc}") from exc
    try:
        width, height = (int(v) for v in doc["image_size"])
        entries = doc["cameras"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: missing or malformed field 'image_size'/'cameras': {exc}") from exc
    wanted = list(entries) if names is None else list(names)
    cameras = []
    for cam_name in wanted:
        if cam_name not in entries:
            raise ValueError(f"{path}: no camera {cam_name!r}; known: {sorted(entries)}")
        entry = entries[cam_name]
        try:
            k = np.asarray(entry["intrinsics"], dtype=np.float64).reshape(3, 3)
            dist = tuple(float(d) for d in entry.get("distortion_k1k2p1p2k3", (0.0,) * 5))
            rot = np.asarray(entry["sensor2lidar_rotation"], dtype=np.float64).reshape(3, 3)
            trans = np.asarray(entry["sensor2lidar_translation"], dtype=np.float64).reshape(3)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: camera {cam_name}: missing or malformed field: {exc}") from exc
        # Calibrated rotations are orthonormal only to a few 1e-4; re-orthonormalise.
        u, _, vt = np.linalg.svd(rot)
        rot = u @ vt
        cameras.append(
            PinholeCamera(
                name=cam_name,
                width=width,
                height=height,
                fx=k[0, 0],
                fy=k[1, 1],
                cx=k[0, 2],
                cy=k[1, 2],
                cam_to_body=pose_matrix(rot, trans + np.asarray(mount_offset, dtype=np.float64)),
                distortion=dist,  # type: ignore[arg-type]
            )
        )
    return Rig(name or path.stem, tuple(cameras))
