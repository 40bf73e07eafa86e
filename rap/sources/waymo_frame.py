"""Waymo Open Dataset perception ``Frame`` reader (``dataset_pb2.Frame`` in TFRecord files).

Reads one frame's camera images, calibrations, vehicle poses, 3D laser labels and Waymo's own 2D
projections of those labels (``projected_lidar_labels``) into numpy arrays and
:class:`rasterizer.camera.PinholeCamera` objects. No TensorFlow: framing comes from
:mod:`rap.sources.tfrecord`, messages from the ``waymo_open_dataset`` protos.

Conventions found in the data, and what is converted here (and nowhere else):

* **Vehicle frame.** x forward, y left, z up, origin at the centre of the rear axle *on the
  ground* -- the same as rap's ego frame, so positions are not shifted. Waymo's maintainers state
  it in waymo-research/waymo-open-dataset issues #119, #165, #581 ("the center of the SDC's rear
  axle") and #597 ("the vehicle frame origin is located on the ground"); the cameras' extrinsic
  heights (about 2.1 m for a roof dome) agree. ``Frame.pose`` is vehicle -> world at the frame
  time (the lidar sweep); every ``CameraImage.pose`` is vehicle -> world at that image's
  ``pose_timestamp``. Laser labels live in the vehicle frame at the frame time.
* **Boxes.** Laser label boxes are centred (``center_z`` is the middle of the box, not its
  bottom), ``length`` is along the heading (x), ``width`` across (y), ``height`` along z, and
  ``heading`` is counter-clockwise from +x. This module keeps centred boxes (as
  :class:`rasterizer.primitives.Boxes` does) and wraps headings to [-pi, pi).
* **Camera axes.** A camera extrinsic is camera -> vehicle with Waymo's camera axes x forward
  (optical axis), y left, z up; Waymo's projection is ``u = -y / x``, ``v = -z / x`` before
  distortion. ``cam_to_body`` here is that extrinsic with its rotation right-multiplied by
  :data:`rasterizer.camera.OPENCV_FROM_FLU`, giving OpenCV axes (x right, y down, z forward).
* **Intrinsics.** ``CameraCalibration.intrinsic`` is ``[f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3]``
  with the radial-tangential model of OpenCV (Waymo's ``camera_model.cc`` names the last three
  ``k3, k4, k5`` but applies them as OpenCV's p1, p2, k3).
* **Pixel coordinates.** Waymo's image coordinates put (0, 0) at the *top-left corner* of the
  top-left pixel; the image spans [0, W] x [0, H] and the centre of pixel (row i, col j) is at
  (j + 0.5, i + 0.5). Evidence: ``CameraModel::InImage`` accepts ``0 <= u < W``; the rolling
  shutter readout is timed over ``v`` from 0 to H; and in this file both the projected lidar
  boxes and the human camera-label boxes are clipped to exactly 0.0 and W / H (1920.0, 1280.0,
  886.0). rap's convention is OpenCV's (pixel centre at integer (j, i), image spans
  [-0.5, W - 0.5]), so this module subtracts 0.5 from ``c_u``, ``c_v`` and from every 2D box
  coordinate. A point projected with the converted camera lands exactly 0.5 px up-left of
  Waymo's projection, and so does each converted box: comparisons between the two are unchanged.
* **Images** are decoded from JPEG with Pillow lazily, on first access to
  ``frame.images[name]``, and cached on the frame (5 decoded images of one frame take ~28 MB).
  Before Pillow reads anything, the size in the JPEG's frame header (:func:`jpeg_size`) must be
  the calibration's and at most :data:`MAX_IMAGE_SIDE` (8192) px a side; otherwise the image is
  refused, naming the file, record, camera and size, without decoding. Only the JPEG decoder is
  used (a PNG or other format in the field is refused). Calibrations above ``MAX_IMAGE_SIDE``
  are refused when the frame is read.
* **Rolling shutter.** Waymo's cameras read out column by column (``LEFT_TO_RIGHT``) over ~45 ms;
  Waymo's own projection (``camera_model.cc``) models the camera's motion during readout. This
  module models the pose at each image's ``pose_timestamp`` (:meth:`WaymoFrame.body_to_frame`)
  but not the motion during readout; on the shipped frame (stationary vehicle) the difference
  from Waymo's projected boxes is below 0.2 px.

Errors on bad input are :class:`WaymoFrameError` (a ``ValueError``) naming the file, the record
and the field; TFRecord framing errors come from :class:`rap.sources.tfrecord.TFRecordError`.
"""

from __future__ import annotations

import enum
import io
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rasterizer.camera import OPENCV_FROM_FLU, PinholeCamera, Rig, pose_matrix

__all__ = [
    "CAMERA_NAMES",
    "MAX_IMAGE_SIDE",
    "jpeg_size",
    "WaymoLabelType",
    "WaymoFrameError",
    "WaymoBoxes",
    "WaymoFrame",
    "frame_from_bytes",
    "load_frame",
    "iter_frames",
]

# The five cameras of the perception dataset, in rig order (Waymo's CameraName enum values 1..5).
CAMERA_NAMES: tuple[str, ...] = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")
_CAMERA_BY_ID = {1: "FRONT", 2: "FRONT_LEFT", 3: "FRONT_RIGHT", 4: "SIDE_LEFT", 5: "SIDE_RIGHT"}

# Offset from Waymo's pixel coordinates (pixel-corner origin) to rap's (pixel-centre origin).
WAYMO_TO_RAP_PIXEL = -0.5  # Units: px

# Rotations in the files are orthonormal to ~1e-9; anything worse than this is a bad record.
_ROTATION_TOLERANCE = 1e-3

# Largest camera image side accepted, in calibrations and JPEG headers (Waymo's cameras are
# 1920 px wide; 8192 px a side decodes to 192 MiB of RGB). Larger is refused, never decoded.
MAX_IMAGE_SIDE = 8192  # Units: px

# JPEG start-of-frame markers (ITU T.81 table B.1): SOF0-3, 5-7, 9-11, 13-15 carry the size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame header, without decoding; None when ``data``
    is not a JPEG or no frame header comes before the scan (or it gives no height)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # Fill byte.
            i += 1
            continue
        i += 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # No length: TEM, RSTn, SOI.
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before a frame header.
            return None
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 7 > n:
                return None
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            return (width, height) if height > 0 else None
        i += length
    return None


class WaymoLabelType(enum.IntEnum):
    """Laser label types; values follow ``Label.Type`` in waymo_open_dataset/label.proto."""

    UNKNOWN = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    SIGN = 3
    CYCLIST = 4


class WaymoFrameError(ValueError):
    """A Waymo ``Frame`` record that cannot be converted.

    Attributes:
        path: the TFRecord file.
        record: 0-based record index in the file.
        field: the offending message field (dotted path), or None for the whole record.
    """

    def __init__(self, path: str | Path, record: int, field: str | None, reason: str):
        self.path = Path(path)
        self.record = record
        self.field = field
        where = f"{self.path}: record {record}" + (f": field {field}" if field else "")
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, eq=False)
class WaymoBoxes:
    """A frame's 3D laser labels, as a struct of arrays; all arrays are (num_boxes, ...).

    Attributes:
        ids: (N,) str, Waymo's label ids (unique within a frame, tracked across frames).
        types: (N,) int64, :class:`WaymoLabelType` values.
        centers: (N, 3) float64 box centres in the vehicle frame at the frame time [m]
            (geometric centre: z is the middle of the box).
        sizes: (N, 3) float64 (length along the heading, width, height) [m].
        headings: (N,) float64 yaw, counter-clockwise from the vehicle's +x, in [-pi, pi) [rad].
        num_lidar_points: (N,) int64 lidar points inside each box.
    """

    ids: np.ndarray
    types: np.ndarray
    centers: np.ndarray
    sizes: np.ndarray
    headings: np.ndarray
    num_lidar_points: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        expected = {"ids": (n,), "types": (n,), "centers": (n, 3), "sizes": (n, 3), "headings": (n,), "num_lidar_points": (n,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"WaymoBoxes.{name}: expected shape {shape}, got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, label_id: str) -> int:
        """Row of the box with Waymo label id ``label_id`` (KeyError if absent)."""
        hits = np.flatnonzero(self.ids == label_id)
        if len(hits) == 0:
            raise KeyError(label_id)
        return int(hits[0])

    def corners(self) -> np.ndarray:
        """(N, 8, 3) float64 corners in the vehicle frame [m].

        Bottom face then top face; within each, front-right first, then counter-clockwise seen
        from above (front-left, rear-left, rear-right).
        """
        unit = np.array([[0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])
        local = unit[None] * self.sizes[:, None, :2]  # Shape: (N, 4, 2)
        c, s = np.cos(self.headings)[:, None], np.sin(self.headings)[:, None]
        x = local[..., 0] * c - local[..., 1] * s + self.centers[:, None, 0]
        y = local[..., 0] * s + local[..., 1] * c + self.centers[:, None, 1]
        z_lo = np.repeat((self.centers[:, 2] - self.sizes[:, 2] / 2)[:, None], 4, axis=1)
        z_hi = np.repeat((self.centers[:, 2] + self.sizes[:, 2] / 2)[:, None], 4, axis=1)
        bottom = np.stack([x, y, z_lo], axis=-1)
        top = np.stack([x, y, z_hi], axis=-1)
        return np.concatenate([bottom, top], axis=1)


class LazyJpegImages(Mapping):
    """Read-only mapping camera name -> (H, W, 3) uint8 RGB, decoded from JPEG on first access.

    Args:
        jpegs: camera name -> JPEG bytes.
        sizes: camera name -> (width, height) the calibration gives; a decoded image of another
            size is an error.
        path, record: where the frame came from (for errors).
        fields: camera name -> message field holding its JPEG (default ``images[NAME].image``).
        error: the exception class raised (``WaymoFrameError`` or a subclass).
    """

    def __init__(self, jpegs: Mapping[str, bytes], sizes: Mapping[str, tuple[int, int]], path: Path, record: int, fields: Mapping[str, str] | None = None, error: type[WaymoFrameError] | None = None):
        self._jpegs = dict(jpegs)
        self._sizes = dict(sizes)
        self._path = path
        self._record = record
        self._fields = dict(fields or {})
        self._error = error or WaymoFrameError
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._jpegs:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self._decode(name)
        return self._cache[name]

    def __iter__(self):
        return iter(self._jpegs)

    def __len__(self) -> int:
        return len(self._jpegs)

    def __repr__(self) -> str:
        return f"<lazy JPEG images {list(self._jpegs)}>"

    def _check_size(self, name: str, field_name: str, size: tuple[int, int]) -> None:
        """Refuses a header size beyond :data:`MAX_IMAGE_SIDE` or other than the calibration's."""
        width, height = size
        if max(width, height) > MAX_IMAGE_SIDE:
            raise self._error(self._path, self._record, field_name, f"camera {name}: JPEG header says the image is {width}x{height}, more than the limit of {MAX_IMAGE_SIDE} px a side; not decoded")
        expected = self._sizes.get(name)
        if expected is not None and (width, height) != tuple(expected):
            raise self._error(self._path, self._record, field_name, f"camera {name}: JPEG header says the image is {width}x{height}, calibration says {expected[0]}x{expected[1]}; not decoded")

    def _decode(self, name: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        field_name = self._fields.get(name, f"images[{name}].image")
        data = self._jpegs[name]
        header = jpeg_size(data)
        if header is not None:  # Checked before Pillow reads anything.
            self._check_size(name, field_name, header)
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
                self._check_size(name, field_name, img.size)  # Pillow's reading of the header.
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except WaymoFrameError:
            raise
        except Image.DecompressionBombError as exc:
            raise self._error(self._path, self._record, field_name, f"camera {name}: JPEG is larger than {MAX_IMAGE_SIDE} px a side; not decoded ({exc})") from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise self._error(self._path, self._record, field_name, f"camera {name}: cannot decode JPEG: {exc}") from exc
        expected = self._sizes.get(name)
        if expected is not None and rgb.shape[:2] != (expected[1], expected[0]):
            raise self._error(
                self._path,
                self._record,
                field_name,
                f"camera {name}: decoded image is {rgb.shape[1]}x{rgb.shape[0]}, calibration says {expected[0]}x{expected[1]}",
            )
        rgb.setflags(write=False)
        return rgb


@dataclass(frozen=True, eq=False)
class WaymoFrame:
    """One Waymo perception frame, converted to rap conventions (see the module docstring).

    Attributes:
        path: the TFRecord file it came from.
        record: 0-based record index in that file.
        name: the context (segment) name, e.g. ``"1024360143612057520_3580_000_3600_000"``.
        timestamp_s: frame time [s] (Unix epoch).
        vehicle_pose: (4, 4) float64 vehicle -> world at the frame time [m].
        cameras: camera name -> :class:`PinholeCamera` (OpenCV axes, rap pixel convention,
            distortion k1, k2, p1, p2, k3), in :data:`CAMERA_NAMES` order.
        image_poses: camera name -> (4, 4) float64 vehicle -> world at the image's
            ``pose_timestamp`` [m].
        image_timestamps_s: camera name -> the image's ``pose_timestamp`` [s].
        jpegs: camera name -> the image's JPEG bytes, as stored.
        images: camera name -> (H, W, 3) uint8 RGB, read-only, decoded lazily on first access.
        boxes: the 3D laser labels (vehicle frame at the frame time).
        projected_boxes: camera name -> {laser label id -> (x0, y0, x1, y1)} Waymo's 2D
            projection of that 3D box [px, rap pixel convention: pixel centres at integers].
            Waymo clips these boxes to the image, so a clipped edge sits at -0.5 or W - 0.5 /
            H - 0.5. Waymo's own ids are ``"<laser label id>_<CAMERA_NAME>"``; the suffix is removed.
    """

    path: Path
    record: int
    name: str
    timestamp_s: float
    vehicle_pose: np.ndarray = field(repr=False)
    cameras: dict[str, PinholeCamera] = field(repr=False)
    image_poses: dict[str, np.ndarray] = field(repr=False)
    image_timestamps_s: dict[str, float] = field(repr=False)
    jpegs: dict[str, bytes] = field(repr=False)
    images: Mapping[str, np.ndarray] = field(repr=False)
    boxes: WaymoBoxes = field(repr=False)
    projected_boxes: dict[str, dict[str, tuple[float, float, float, float]]] = field(repr=False)

    def rig(self) -> Rig:
        """The five cameras as a :class:`Rig` named ``"waymo"`` (order of :data:`CAMERA_NAMES`)."""
        missing = [c for c in CAMERA_NAMES if c not in self.cameras]
        if missing:
            raise WaymoFrameError(self.path, self.record, "context.camera_calibrations", f"no calibration for cameras {missing}")
        return Rig("waymo", tuple(self.cameras[c] for c in CAMERA_NAMES))

    def body_to_frame(self, camera: str) -> np.ndarray:
        """Vehicle pose at ``camera``'s image time, in the vehicle frame at the frame time.

        Render the frame's boxes (vehicle frame at the frame time) through ``camera`` with this
        as the body -> world transform to account for the vehicle moving between the lidar sweep
        and the camera exposure.

        Returns:
            (4, 4) float64 ``inv(vehicle_pose) @ image_poses[camera]`` [m].
        """
        if camera not in self.image_poses:
            raise KeyError(f"{self.path}: record {self.record}: no image for camera {camera!r}; have {sorted(self.image_poses)}")
        return np.linalg.inv(self.vehicle_pose) @ self.image_poses[camera]


def _transform(values, path: Path, record: int, field_name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.shape != (16,):
        raise WaymoFrameError(path, record, field_name, f"expected 16 values (row-major 4x4), got {arr.shape[0]}")
    mat = arr.reshape(4, 4)
    if not np.all(np.isfinite(mat)):
        raise WaymoFrameError(path, record, field_name, "non-finite entries")
    rot = mat[:3, :3]
    if not np.allclose(mat[3], [0.0, 0.0, 0.0, 1.0]) or not np.allclose(rot @ rot.T, np.eye(3), atol=_ROTATION_TOLERANCE) or np.linalg.det(rot) <= 0:
        raise WaymoFrameError(path, record, field_name, "not a rigid transform")
    # Re-orthonormalise (the stored rotations are orthonormal only to float precision).
    u, _, vt = np.linalg.svd(rot)
    return pose_matrix(u @ vt, mat[:3, 3])


def _camera_from_calibration(calib, path: Path, record: int, index: int) -> PinholeCamera:
    field_name = f"context.camera_calibrations[{index}]"
    name = _CAMERA_BY_ID.get(int(calib.name))
    if name is None:
        raise WaymoFrameError(path, record, f"{field_name}.name", f"unknown camera id {calib.name}")
    intrinsic = np.asarray(list(calib.intrinsic), dtype=np.float64)
    if intrinsic.shape != (9,) or not np.all(np.isfinite(intrinsic)):
        raise WaymoFrameError(path, record, f"{field_name}.intrinsic", f"camera {name}: expected 9 finite values [f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3], got {intrinsic.tolist()}")
    if not (calib.width > 0 and calib.height > 0):
        raise WaymoFrameError(path, record, f"{field_name}.width/height", f"camera {name}: size {calib.width}x{calib.height}")
    if max(calib.width, calib.height) > MAX_IMAGE_SIDE:
        raise WaymoFrameError(path, record, f"{field_name}.width/height", f"camera {name}: size {calib.width}x{calib.height} is more than the limit of {MAX_IMAGE_SIDE} px a side")
    extrinsic = _transform(calib.extrinsic.transform, path, record, f"{field_name}.extrinsic.transform")
    cam_to_body = pose_matrix(extrinsic[:3, :3] @ OPENCV_FROM_FLU, extrinsic[:3, 3])
    f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3 = intrinsic.tolist()
    try:
        return PinholeCamera(
            name=name,
            width=int(calib.width),
            height=int(calib.height),
            fx=f_u,
            fy=f_v,
            cx=c_u + WAYMO_TO_RAP_PIXEL,
            cy=c_v + WAYMO_TO_RAP_PIXEL,
            cam_to_body=cam_to_body,
            distortion=(k1, k2, p1, p2, k3),
        )
    except ValueError as exc:
        raise WaymoFrameError(path, record, field_name, f"camera {name}: {exc}") from exc


def _boxes_from_labels(labels, path: Path, record: int) -> WaymoBoxes:
    n = len(labels)
    ids = np.empty(n, dtype=object)
    types = np.zeros(n, dtype=np.int64)
    centers = np.zeros((n, 3))
    sizes = np.zeros((n, 3))
    headings = np.zeros(n)
    points = np.zeros(n, dtype=np.int64)
    for i, label in enumerate(labels):
        b = label.box
        ids[i] = label.id
        types[i] = int(label.type)
        centers[i] = (b.center_x, b.center_y, b.center_z)
        sizes[i] = (b.length, b.width, b.height)
        headings[i] = b.heading
        points[i] = label.num_lidar_points_in_box
        if not (np.all(np.isfinite(centers[i])) and np.all(np.isfinite(sizes[i])) and np.isfinite(headings[i])):
            raise WaymoFrameError(path, record, f"laser_labels[{i}].box", f"label {label.id!r}: non-finite values")
        if np.any(sizes[i] < 0):
            raise WaymoFrameError(path, record, f"laser_labels[{i}].box", f"label {label.id!r}: negative size {sizes[i].tolist()}")
        if types[i] not in WaymoLabelType._value2member_map_:
            raise WaymoFrameError(path, record, f"laser_labels[{i}].type", f"label {label.id!r}: unknown type {types[i]}")
    if len(set(ids.tolist())) != n:
        raise WaymoFrameError(path, record, "laser_labels[].id", "label ids are not unique")
    headings = np.mod(headings + np.pi, 2 * np.pi) - np.pi
    headings = np.where(headings >= np.pi, headings - 2 * np.pi, headings)
    return WaymoBoxes(ids=ids.astype(str), types=types, centers=centers, sizes=sizes, headings=headings, num_lidar_points=points)


def _projected_boxes(projected, path: Path, record: int) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    out: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    for i, cam_labels in enumerate(projected):
        name = _CAMERA_BY_ID.get(int(cam_labels.name))
        if name is None:
            raise WaymoFrameError(path, record, f"projected_lidar_labels[{i}].name", f"unknown camera id {cam_labels.name}")
        per_cam = out.setdefault(name, {})
        suffix = "_" + name
        for j, label in enumerate(cam_labels.labels):
            field_name = f"projected_lidar_labels[{i}].labels[{j}]"
            if not label.id.endswith(suffix):
                raise WaymoFrameError(path, record, f"{field_name}.id", f"expected '<laser label id>{suffix}', got {label.id!r}")
            b = label.box
            # Box centre and extents: length is the x (column) extent, width the y (row) extent.
            box = (
                b.center_x - b.length / 2 + WAYMO_TO_RAP_PIXEL,
                b.center_y - b.width / 2 + WAYMO_TO_RAP_PIXEL,
                b.center_x + b.length / 2 + WAYMO_TO_RAP_PIXEL,
                b.center_y + b.width / 2 + WAYMO_TO_RAP_PIXEL,
            )
            if not (all(np.isfinite(box)) and box[2] >= box[0] and box[3] >= box[1]):
                raise WaymoFrameError(path, record, f"{field_name}.box", f"label {label.id!r}: invalid box {box}")
            per_cam[label.id[: -len(suffix)]] = tuple(float(v) for v in box)
    return out


def frame_from_bytes(payload: bytes, *, path: str | Path = "<bytes>", record: int = 0) -> WaymoFrame:
    """Parse one serialized ``dataset_pb2.Frame`` and convert it.

    Args:
        payload: the record's bytes.
        path, record: where it came from, for error messages.

    Returns:
        The converted :class:`WaymoFrame` (images not decoded yet).

    Raises:
        WaymoFrameError: naming ``path``, ``record`` and the field on a malformed message.
    """
    from google.protobuf.message import DecodeError
    from waymo_open_dataset import dataset_pb2

    path = Path(path)
    msg = dataset_pb2.Frame()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise WaymoFrameError(path, record, None, f"not a waymo_open_dataset.Frame message: {exc}") from exc
    if not msg.HasField("context") or not msg.context.camera_calibrations:
        raise WaymoFrameError(path, record, "context.camera_calibrations", "missing (is this a perception Frame file?)")
    if not msg.HasField("pose"):
        raise WaymoFrameError(path, record, "pose", "missing")

    cameras = {}
    for i, calib in enumerate(msg.context.camera_calibrations):
        cam = _camera_from_calibration(calib, path, record, i)
        if cam.name in cameras:
            raise WaymoFrameError(path, record, f"context.camera_calibrations[{i}].name", f"duplicate camera {cam.name}")
        cameras[cam.name] = cam
    cameras = {n: cameras[n] for n in CAMERA_NAMES if n in cameras}

    jpegs: dict[str, bytes] = {}
    image_poses: dict[str, np.ndarray] = {}
    image_times: dict[str, float] = {}
    for i, image in enumerate(msg.images):
        name = _CAMERA_BY_ID.get(int(image.name))
        if name is None:
            raise WaymoFrameError(path, record, f"images[{i}].name", f"unknown camera id {image.name}")
        if name in jpegs:
            raise WaymoFrameError(path, record, f"images[{i}].name", f"duplicate image for camera {name}")
        if name not in cameras:
            raise WaymoFrameError(path, record, f"images[{i}]", f"image for camera {name} has no calibration")
        if not image.image:
            raise WaymoFrameError(path, record, f"images[{i}].image", f"camera {name}: empty JPEG")
        jpegs[name] = bytes(image.image)
        image_poses[name] = _transform(image.pose.transform, path, record, f"images[{i}].pose.transform")
        image_times[name] = float(image.pose_timestamp)
    order = [n for n in CAMERA_NAMES if n in jpegs]
    jpegs = {n: jpegs[n] for n in order}
    image_poses = {n: image_poses[n] for n in order}
    image_times = {n: image_times[n] for n in order}

    return WaymoFrame(
        path=path,
        record=record,
        name=str(msg.context.name),
        timestamp_s=msg.timestamp_micros * 1e-6,
        vehicle_pose=_transform(msg.pose.transform, path, record, "pose.transform"),
        cameras=cameras,
        image_poses=image_poses,
        image_timestamps_s=image_times,
        jpegs=jpegs,
        images=LazyJpegImages(jpegs, {n: cameras[n].size for n in cameras}, path, record),
        boxes=_boxes_from_labels(msg.laser_labels, path, record),
        projected_boxes=_projected_boxes(msg.projected_lidar_labels, path, record),
    )


def iter_frames(
    path: str | Path,
    *,
    skip_corrupt: bool = False,
    on_skip: Callable[[Exception], None] | None = None,
) -> Iterator[WaymoFrame]:
    """Iterate over the frames of a perception TFRecord file, in file order.

    Args:
        path: the ``.tfrecord`` file.
        skip_corrupt: when True, a record whose framing (CRC, length) or message is bad is
            skipped and reported to ``on_skip`` instead of raising; a truncated tail ends the
            file. When False (default) the first bad record raises.
        on_skip: called with the exception for every skipped record (count them there); when
            None, a ``RuntimeWarning`` carrying the error is issued instead.

    Yields:
        :class:`WaymoFrame` per record, with ``record`` set to its 0-based index.

    Raises:
        rap.sources.tfrecord.TFRecordError: bad framing (unless ``skip_corrupt``).
        WaymoFrameError: a malformed ``Frame`` message (unless ``skip_corrupt``).
    """
    from rap.sources.tfrecord import iter_records

    path = Path(path)
    for record, payload in _indexed_records(iter_records, path, skip_corrupt, on_skip):
        try:
            yield frame_from_bytes(payload, path=path, record=record)
        except WaymoFrameError as exc:
            if not skip_corrupt:
                raise
            _report_skip(exc, on_skip)


def _indexed_records(iter_records, path: Path, skip_corrupt: bool, on_skip):
    """(record index, payload) pairs; records the framing layer skips still advance the index."""
    skipped = [0]

    def _skip(exc: Exception) -> None:
        skipped[0] += 1
        _report_skip(exc, on_skip)

    index = 0
    for payload in iter_records(path, skip_corrupt=skip_corrupt, on_skip=_skip if skip_corrupt else None):
        index += skipped[0]
        skipped[0] = 0
        yield index, payload
        index += 1


def _report_skip(exc: Exception, on_skip) -> None:
    """Hand a skipped record's error to ``on_skip``, or warn: never drop it silently."""
    if on_skip is not None:
        on_skip(exc)
    else:
        warnings.warn(f"skipped bad Waymo frame record: {exc}", RuntimeWarning, stacklevel=4)


def load_frame(path: str | Path, record: int = 0) -> WaymoFrame:
    """Load one frame of a perception TFRecord file.

    A corrupt payload in *another* record (CRC mismatch with intact framing) does not stop the
    read; a corrupt target record, or framing lost before it (bad length CRC, truncation), does.

    Args:
        path: the ``.tfrecord`` file.
        record: 0-based record index.

    Returns:
        The converted :class:`WaymoFrame` (images decode lazily on access).

    Raises:
        rap.sources.tfrecord.TFRecordError: the target record is corrupt, or the file is
            unreadable before it; names the file, the record and its byte offset.
        WaymoFrameError: a malformed message, or ``record`` past the end of the file.
    """
    from rap.sources.tfrecord import iter_records

    path = Path(path)
    if record < 0:
        raise ValueError(f"{path}: record must be >= 0, got {record}")
    errors: list[Exception] = []
    count = 0
    for index, payload in _indexed_records(iter_records, path, True, errors.append):
        if index == record:
            return frame_from_bytes(payload, path=path, record=record)
        count = index + 1
        if index > record:
            break
    for err in errors:
        if getattr(err, "record", None) == record:
            raise err
    if errors and getattr(errors[-1], "record", record + 1) < record:
        raise errors[-1]  # framing was lost before the target record
    raise WaymoFrameError(path, record, None, f"no such record: the file holds {max(count, len(errors))} record(s)")
