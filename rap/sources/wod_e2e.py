"""Waymo Open Dataset end-to-end driving (WOD-E2E) ``E2EDFrame`` reader (TFRecord files).

Reads one frame's camera images and calibrations, past and future ego states, driving intent and
the human-rated ("preference") trajectories with their scores into numpy arrays and
:class:`rasterizer.camera.PinholeCamera` objects. No TensorFlow: framing comes from
:mod:`rap.sources.tfrecord`, messages from ``waymo_open_dataset.protos.end_to_end_driving_data_pb2``
(which imports only ``waymo_open_dataset.dataset_pb2`` and its label/map/vector/keypoint protos).

What the format says (``end_to_end_driving_data.proto``, waymo-research/waymo-open-dataset) and
what is converted here (and nowhere else):

* ``frame`` is a perception ``Frame`` of which only ``context.name`` (the frame's unique name,
  the key of challenge submissions), ``context.camera_calibrations``, ``timestamp_micros`` and
  ``images`` are populated. There are 8 cameras (``CameraName`` 1..8, :data:`E2E_CAMERA_NAMES`);
  calibrations and image pixels follow the perception dataset, so cameras are converted exactly
  as :mod:`rap.sources.waymo_frame` does: OpenCV camera axes, and ``c_u``, ``c_v`` moved by
  :data:`~rap.sources.waymo_frame.WAYMO_TO_RAP_PIXEL` (Waymo's pixel origin is the corner of the
  top-left pixel, rap's its centre). The images' ``pose`` is the identity (positions are already
  in the vehicle frame, per Waymo's E2E tutorial) and is not read.
* ``past_states``: t in (-4 s, 0] at 4 Hz (16 states, the last one now); ``future_states``:
  t in (0, 5 s] at 4 Hz (20 states, positions only; absent in the test split). Positions are in
  the vehicle frame at the current time, x forward, y left, z up, "the ego-vehicle is located at
  (0, 0, 0)" -- the vehicle frame of the perception dataset, origin at the rear axle on the
  ground, which is rap's ego frame: no shift is applied. Velocity [m/s] and acceleration
  [m/s^2] are (x, y) in the same frame.
* ``preference_trajectories``: up to 3 rater trajectories (positions at 4 Hz from 0.25 s on),
  each with a ``preference_score`` in [0, 10]; only validation frames chosen for rating have
  them. A trajectory with no score, the score -1 (the dataset's "not rated" marker) or no poses
  is skipped and counted in :attr:`E2EFrame.num_skipped_rater_trajectories`; any other score
  outside [0, 10] is an error.
* ``intent`` is :class:`E2EIntent` (``EgoIntent.Intent``).
* The initial speed (the Rater Feedback Score scales its trust regions with it) is the norm of
  the last past velocity, the ego's velocity now.
* Images are decoded from JPEG with Pillow lazily, on first access to ``frame.images[name]``,
  after their header size is checked against the calibration and
  :data:`~rap.sources.waymo_frame.MAX_IMAGE_SIDE` (as in :mod:`rap.sources.waymo_frame`: a
  larger or mismatched image is refused without decoding); calibrations above that size are
  refused when the frame is read.

Errors on bad input are :class:`E2EFrameError` (a :class:`~rap.sources.waymo_frame.WaymoFrameError`,
a ``ValueError``) naming the file, the record and the field; TFRecord framing errors come from
:class:`rap.sources.tfrecord.TFRecordError`.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rap.sources.waymo_frame import CAMERA_NAMES, MAX_IMAGE_SIDE, WAYMO_TO_RAP_PIXEL, LazyJpegImages, WaymoFrameError
from rap.trajectory import WOD_E2E_SAMPLING, Trajectory, TrajectorySampling
from rasterizer.camera import OPENCV_FROM_FLU, PinholeCamera, pose_matrix

__all__ = [
    "E2E_CAMERA_NAMES",
    "STATE_INTERVAL_S",
    "E2EIntent",
    "E2EFrameError",
    "EgoStates",
    "E2EFrame",
    "e2e_frame_from_bytes",
    "iter_e2e_frames",
    "load_e2e_frames",
]

# The 8 cameras of WOD-E2E in CameraName order (dataset.proto: FRONT = 1 ... REAR_RIGHT = 8).
E2E_CAMERA_NAMES: tuple[str, ...] = CAMERA_NAMES + ("REAR_LEFT", "REAR", "REAR_RIGHT")
_CAMERA_BY_ID = {i + 1: name for i, name in enumerate(E2E_CAMERA_NAMES)}

# Past and future states are sampled at 4 Hz (end_to_end_driving_data.proto).
STATE_INTERVAL_S = 0.25  # Units: s

# preference_score: "Valid scores range from [0, 10], inclusive" (end_to_end_driving_data.proto).
# -1 marks a trajectory without a rating: not in the proto's comments, but present in the released
# validation files, whose users skip such entries (rap's choice follows them).
_SCORE_RANGE = (0.0, 10.0)
_UNRATED_SCORE = -1.0

# Rotations in Waymo files are orthonormal to ~1e-9; anything worse is a bad record.
_ROTATION_TOLERANCE = 1e-3

# future_trajectory(): steps shorter than this keep the previous heading (a standing vehicle's
# position jitters by centimetres, which would make atan2 headings noise).
_MIN_HEADING_STEP = 0.05  # Units: m


class E2EIntent(enum.IntEnum):
    """Driving intent (routing command); values follow ``EgoIntent.Intent`` in
    waymo_open_dataset/protos/end_to_end_driving_data.proto."""

    UNKNOWN = 0
    GO_STRAIGHT = 1
    GO_LEFT = 2
    GO_RIGHT = 3


class E2EFrameError(WaymoFrameError):
    """An ``E2EDFrame`` record that cannot be converted.

    Attributes:
        path: the TFRecord file.
        record: 0-based record index in the file.
        field: the offending message field (dotted path from ``E2EDFrame``), or None.
        reason: what is wrong, without the location prefix.
    """

    def __init__(self, path: str | Path, record: int, field: str | None, reason: str):
        super().__init__(path, record, field, reason)
        self.reason = reason

    def __reduce__(self):  # Keep the attributes when pickled across processes.
        return (type(self), (self.path, self.record, self.field, self.reason))


@dataclass(frozen=True, eq=False)
class EgoStates:
    """Ego states at 4 Hz in the ego frame at the current time; arrays are (num_states, ...).

    Attributes:
        times_s: (T,) float64 time of each state relative to now [s] (past: -3.75 ... 0;
            future: 0.25 ... 5).
        xy: (T, 2) float64 positions (x forward, y left) [m].
        z: (T,) float64 heights [m], or None when the file has none.
        velocity: (T, 2) float64 (vx, vy) [m/s], or None when the file has none (future states).
        acceleration: (T, 2) float64 (ax, ay) [m/s^2], or None when the file has none.
    """

    times_s: np.ndarray
    xy: np.ndarray
    z: np.ndarray | None = None
    velocity: np.ndarray | None = None
    acceleration: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.times_s)
        expected = {"times_s": (n,), "xy": (n, 2), "z": (n,), "velocity": (n, 2), "acceleration": (n, 2)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"EgoStates.{name}: expected shape {shape}, got {value.shape}")

    def __len__(self) -> int:
        return len(self.times_s)


@dataclass(frozen=True, eq=False)
class E2EFrame:
    """One WOD-E2E frame in rap conventions (see the module docstring).

    Attributes:
        path: the TFRecord file it came from.
        record: 0-based record index in that file.
        name: the frame's unique name (``frame.context.name``), the key of predictions.
        timestamp_s: frame time [s] (Unix epoch).
        cameras: camera name -> :class:`PinholeCamera` (OpenCV axes, rap pixel convention,
            distortion k1, k2, p1, p2, k3), in :data:`E2E_CAMERA_NAMES` order.
        jpegs: camera name -> the image's JPEG bytes, as stored (every one has a camera).
        images: camera name -> (H, W, 3) uint8 RGB, read-only, decoded lazily on first access.
        past_states: (T_p,) states, T_p = 16 in the dataset, the last one now (t = 0).
        future_states: (T_f,) logged future states (T_f = 20, positions only), or None when the
            frame has none (test split).
        intent: the driving intent.
        rater_trajectories: R rated trajectories, each (T_i, 2) float64 (x, y) [m] at 4 Hz from
            0.25 s on (T_i = 20 in the dataset), in file order.
        rater_scores: (R,) float64 their scores in [0, 10].
        num_skipped_rater_trajectories: preference trajectories skipped as unrated (no score,
            score -1) or empty.
        initial_speed: ego speed now, ``|past_states.velocity[-1]|`` [m/s].
    """

    path: Path
    record: int
    name: str
    timestamp_s: float
    cameras: dict[str, PinholeCamera] = field(repr=False)
    jpegs: dict[str, bytes] = field(repr=False)
    images: Mapping[str, np.ndarray] = field(repr=False)
    past_states: EgoStates = field(repr=False)
    future_states: EgoStates | None = field(repr=False)
    intent: E2EIntent
    rater_trajectories: tuple[np.ndarray, ...] = field(repr=False)
    rater_scores: np.ndarray = field(repr=False)
    num_skipped_rater_trajectories: int
    initial_speed: float

    def __post_init__(self) -> None:
        if len(self.rater_trajectories) != self.rater_scores.shape[0]:
            raise ValueError(f"E2EFrame: {len(self.rater_trajectories)} rater trajectories but {self.rater_scores.shape[0]} scores")

    @property
    def has_rater_feedback(self) -> bool:
        """Whether the frame has rated trajectories (the Rater Feedback Score is defined)."""
        return len(self.rater_trajectories) > 0

    def future_trajectory(self, sampling: TrajectorySampling = WOD_E2E_SAMPLING) -> Trajectory:
        """The logged future as a training target.

        Headings are not in the file: each pose's heading is the direction of its displacement
        from the previous pose (the origin for the first); steps shorter than 5 cm keep the
        previous heading (0, the ego's, at the start).

        Args:
            sampling: must match the file's: 20 poses every 0.25 s.

        Returns:
            (20, 3) x, y, heading [m, m, rad] in the ego frame.

        Raises:
            E2EFrameError: the frame has no future, or a different number of future states.
        """
        if sampling.interval_s != STATE_INTERVAL_S:
            raise ValueError(f"{self.path}: record {self.record}: future states are sampled every {STATE_INTERVAL_S} s, not {sampling.interval_s} s")
        if self.future_states is None or len(self.future_states) != sampling.num_poses:
            have = 0 if self.future_states is None else len(self.future_states)
            raise E2EFrameError(self.path, self.record, "future_states", f"need {sampling.num_poses} future states, the frame has {have}")
        xy = self.future_states.xy
        steps = np.diff(np.concatenate([np.zeros((1, 2)), xy]), axis=0)  # Shape: (T, 2)
        moving = np.linalg.norm(steps, axis=-1) >= _MIN_HEADING_STEP
        headings = np.arctan2(steps[:, 1], steps[:, 0])
        # Forward fill over short steps; before the first long step the heading is 0.
        last = np.maximum.accumulate(np.where(moving, np.arange(len(xy)), -1))
        headings = np.where(last >= 0, headings[np.maximum(last, 0)], 0.0)
        return Trajectory(np.column_stack([xy, headings]), sampling)


def _rigid_transform(values, path: Path, record: int, field_name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.shape != (16,):
        raise E2EFrameError(path, record, field_name, f"expected 16 values (row-major 4x4), got {arr.shape[0]}")
    mat = arr.reshape(4, 4)
    if not np.all(np.isfinite(mat)):
        raise E2EFrameError(path, record, field_name, "non-finite entries")
    rot = mat[:3, :3]
    if not np.allclose(mat[3], [0.0, 0.0, 0.0, 1.0]) or not np.allclose(rot @ rot.T, np.eye(3), atol=_ROTATION_TOLERANCE) or np.linalg.det(rot) <= 0:
        raise E2EFrameError(path, record, field_name, "not a rigid transform")
    u, _, vt = np.linalg.svd(rot)  # Re-orthonormalise (stored to float precision only).
    return pose_matrix(u @ vt, mat[:3, 3])


def _camera_from_calibration(calib, path: Path, record: int, index: int) -> PinholeCamera:
    field_name = f"frame.context.camera_calibrations[{index}]"
    name = _CAMERA_BY_ID.get(int(calib.name))
    if name is None:
        raise E2EFrameError(path, record, f"{field_name}.name", f"unknown camera id {calib.name}")
    intrinsic = np.asarray(list(calib.intrinsic), dtype=np.float64)
    if intrinsic.shape != (9,) or not np.all(np.isfinite(intrinsic)):
        raise E2EFrameError(path, record, f"{field_name}.intrinsic", f"camera {name}: expected 9 finite values [f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3], got {intrinsic.tolist()}")
    if not (calib.width > 0 and calib.height > 0):
        raise E2EFrameError(path, record, f"{field_name}.width/height", f"camera {name}: size {calib.width}x{calib.height}")
    if max(calib.width, calib.height) > MAX_IMAGE_SIDE:
        raise E2EFrameError(path, record, f"{field_name}.width/height", f"camera {name}: size {calib.width}x{calib.height} is more than the limit of {MAX_IMAGE_SIDE} px a side")
    extrinsic = _rigid_transform(calib.extrinsic.transform, path, record, f"{field_name}.extrinsic.transform")
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
            cam_to_body=pose_matrix(extrinsic[:3, :3] @ OPENCV_FROM_FLU, extrinsic[:3, 3]),
            distortion=(k1, k2, p1, p2, k3),
        )
    except ValueError as exc:
        raise E2EFrameError(path, record, field_name, f"camera {name}: {exc}") from exc


def _float_column(values, path: Path, record: int, field_name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise E2EFrameError(path, record, field_name, "non-finite values")
    return arr


def _ego_states(msg, times_s_of: Callable[[int], np.ndarray], path: Path, record: int, field_name: str) -> EgoStates:
    """Convert an ``EgoTrajectoryStates``; optional channels (z, velocity, acceleration) are None
    when empty, and must otherwise have as many values as the positions."""
    x = _float_column(msg.pos_x, path, record, f"{field_name}.pos_x")
    n = len(x)

    def column(name: str, required: bool = False) -> np.ndarray | None:
        arr = _float_column(getattr(msg, name), path, record, f"{field_name}.{name}")
        if len(arr) == 0 and not required:
            return None
        if len(arr) != n:
            raise E2EFrameError(path, record, f"{field_name}.{name}", f"{len(arr)} values but pos_x has {n}")
        return arr

    def pair(a: str, b: str) -> np.ndarray | None:
        first, second = column(a), column(b)
        if (first is None) != (second is None):
            missing = a if first is None else b
            raise E2EFrameError(path, record, f"{field_name}.{missing}", f"empty while {b if first is None else a} has {n} values")
        return None if first is None else np.column_stack([first, second])

    y = column("pos_y", required=True)
    return EgoStates(
        times_s=times_s_of(n),
        xy=np.column_stack([x, y]).reshape(n, 2),
        z=column("pos_z"),
        velocity=pair("vel_x", "vel_y"),
        acceleration=pair("accel_x", "accel_y"),
    )


def _past_times(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.float64) - (n - 1)) * STATE_INTERVAL_S


def _future_times(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.float64) * STATE_INTERVAL_S


def _rater_trajectories(prefs, path: Path, record: int) -> tuple[tuple[np.ndarray, ...], np.ndarray, int]:
    trajs: list[np.ndarray] = []
    scores: list[float] = []
    skipped = 0
    for i, pref in enumerate(prefs):
        field_name = f"preference_trajectories[{i}]"
        score = float(pref.preference_score) if pref.HasField("preference_score") else None
        if score is None or score == _UNRATED_SCORE or len(pref.pos_x) == 0:
            skipped += 1
            continue
        if not _SCORE_RANGE[0] <= score <= _SCORE_RANGE[1]:
            raise E2EFrameError(path, record, f"{field_name}.preference_score", f"{score} is outside [0, 10] (and not -1, 'unrated')")
        states = _ego_states(pref, _future_times, path, record, field_name)
        trajs.append(states.xy)
        scores.append(score)
    return tuple(trajs), np.asarray(scores, dtype=np.float64), skipped


def e2e_frame_from_bytes(payload: bytes, *, path: str | Path = "<bytes>", record: int = 0) -> E2EFrame:
    """Parse one serialized ``E2EDFrame`` and convert it.

    Args:
        payload: the record's bytes.
        path, record: where it came from, for error messages.

    Returns:
        The converted :class:`E2EFrame` (images not decoded yet).

    Raises:
        E2EFrameError: naming ``path``, ``record`` and the field on a malformed message.
    """
    from google.protobuf.message import DecodeError
    from waymo_open_dataset.protos import end_to_end_driving_data_pb2

    path = Path(path)
    msg = end_to_end_driving_data_pb2.E2EDFrame()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise E2EFrameError(path, record, None, f"not a waymo_open_dataset.E2EDFrame message: {exc}") from exc
    if not msg.HasField("frame"):
        raise E2EFrameError(path, record, "frame", "missing (is this a WOD-E2E file?)")
    name = str(msg.frame.context.name)
    if not name:
        raise E2EFrameError(path, record, "frame.context.name", "empty (frames are matched to predictions by name)")

    cameras: dict[str, PinholeCamera] = {}
    for i, calib in enumerate(msg.frame.context.camera_calibrations):
        cam = _camera_from_calibration(calib, path, record, i)
        if cam.name in cameras:
            raise E2EFrameError(path, record, f"frame.context.camera_calibrations[{i}].name", f"duplicate camera {cam.name}")
        cameras[cam.name] = cam
    cameras = {n: cameras[n] for n in E2E_CAMERA_NAMES if n in cameras}

    jpegs: dict[str, bytes] = {}
    fields: dict[str, str] = {}
    for i, image in enumerate(msg.frame.images):
        cam_name = _CAMERA_BY_ID.get(int(image.name))
        field_name = f"frame.images[{i}]"
        if cam_name is None:
            raise E2EFrameError(path, record, f"{field_name}.name", f"unknown camera id {image.name}")
        if cam_name in jpegs:
            raise E2EFrameError(path, record, f"{field_name}.name", f"duplicate image for camera {cam_name}")
        if cam_name not in cameras:
            raise E2EFrameError(path, record, field_name, f"image for camera {cam_name} has no calibration")
        if not image.image:
            raise E2EFrameError(path, record, f"{field_name}.image", f"camera {cam_name}: empty JPEG")
        jpegs[cam_name] = bytes(image.image)
        fields[cam_name] = f"{field_name}.image"
    jpegs = {n: jpegs[n] for n in E2E_CAMERA_NAMES if n in jpegs}

    past = _ego_states(msg.past_states, _past_times, path, record, "past_states")
    if len(past) == 0:
        raise E2EFrameError(path, record, "past_states.pos_x", "no past states (the current state is the last one)")
    if past.velocity is None:
        raise E2EFrameError(path, record, "past_states.vel_x", "no velocities (the initial speed comes from the last one)")
    future = _ego_states(msg.future_states, _future_times, path, record, "future_states") if msg.HasField("future_states") else None
    if future is not None and len(future) == 0:
        future = None
    trajs, scores, skipped = _rater_trajectories(msg.preference_trajectories, path, record)

    return E2EFrame(
        path=path,
        record=record,
        name=name,
        timestamp_s=msg.frame.timestamp_micros * 1e-6,
        cameras=cameras,
        jpegs=jpegs,
        images=LazyJpegImages(jpegs, {n: cameras[n].size for n in jpegs}, path, record, fields=fields, error=E2EFrameError),
        past_states=past,
        future_states=future,
        intent=E2EIntent(int(msg.intent)),  # A closed proto2 enum: always one of these values.
        rater_trajectories=trajs,
        rater_scores=scores,
        num_skipped_rater_trajectories=skipped,
        initial_speed=float(np.linalg.norm(past.velocity[-1])),
    )


def iter_e2e_frames(
    path: str | Path,
    *,
    skip_corrupt: bool = False,
    on_skip: Callable[[Exception], None] | None = None,
) -> Iterator[E2EFrame]:
    """Iterate over the frames of a WOD-E2E TFRecord file, in file order.

    Args:
        path: the ``.tfrecord`` file.
        skip_corrupt: when True, a record whose framing (CRC, length) or message is bad is
            skipped and reported to ``on_skip`` instead of raising; a truncated tail ends the
            file. When False (default) the first bad record raises.
        on_skip: called with the exception of every skipped record (count them there); when
            None, a ``RuntimeWarning`` carrying the error is issued instead.

    Yields:
        :class:`E2EFrame` per record, with ``record`` set to its 0-based index (records skipped
        by the framing layer still count).

    Raises:
        rap.sources.tfrecord.TFRecordError: bad framing (unless ``skip_corrupt``).
        E2EFrameError: a malformed ``E2EDFrame`` message (unless ``skip_corrupt``).
        OSError: the file cannot be read.
    """
    from rap.sources.tfrecord import iter_records

    path = Path(path)

    def report(exc: Exception) -> None:
        if on_skip is not None:
            on_skip(exc)
        else:
            warnings.warn(f"skipped bad WOD-E2E record: {exc}", RuntimeWarning, stacklevel=3)

    skipped_by_framing = [0]

    def framing_skip(exc: Exception) -> None:
        skipped_by_framing[0] += 1
        report(exc)

    index = 0
    for payload in iter_records(path, skip_corrupt=skip_corrupt, on_skip=framing_skip if skip_corrupt else None):
        index += skipped_by_framing[0]
        skipped_by_framing[0] = 0
        try:
            frame = e2e_frame_from_bytes(payload, path=path, record=index)
        except E2EFrameError as exc:
            if not skip_corrupt:
                raise
            report(exc)
        else:
            yield frame
        index += 1


def load_e2e_frames(
    path: str | Path,
    *,
    skip_corrupt: bool = False,
    on_skip: Callable[[Exception], None] | None = None,
) -> list[E2EFrame]:
    """All frames of a WOD-E2E TFRecord file (images decode lazily); see :func:`iter_e2e_frames`."""
    return list(iter_e2e_frames(path, skip_corrupt=skip_corrupt, on_skip=on_skip))
