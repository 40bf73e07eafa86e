"""Sharded dataset writer: WebDataset-style tar shards, written atomically and deterministically.

Dataset directory::

    <dir>/manifest.json            see rap.dataset.manifest
    <dir>/shard-000000.tar         complete shards (renamed into place when finished)
    <dir>/shard-000001.tar.tmp     a shard being written, or left by a killed run: readers ignore
                                   it and the next run (``--resume``) overwrites it

Shard format: a plain POSIX tar (PAX), readable with ``tarfile`` / ``tar`` and by WebDataset. One
sample is a run of consecutive members sharing a key (the member name up to its first dot,
``SamplePlan.key``), sorted by name within the sample; samples follow in the order written:

``<key>.<CAM>.<ext>``
    one image per camera, (H, W, 3) uint8 semantic RGB; ``<ext>`` is ``png`` or ``npy.zst``
    (a zstd-compressed ``.npy``; see :mod:`rap.dataset.codec`).
``<key>.bev.<ext>``
    the optional BEV raster, same codec.
``<key>.<CAM>.real.<ext>``
    ``paired`` samples only: the real camera image (or the ``photo`` stand-in) of the same
    moment and camera as ``<key>.<CAM>.<ext>``, same codec, or ``jpg``: a camera's JPEG as
    stored, never re-encoded; listed in the json's ``real_images``.
``<key>.json``
    the plan's metadata, UTF-8 JSON with sorted keys::

        {"format": "rap.sample/1", "key": ..., "scene_id": ..., "source": ..., "step": 10,
         "kind": "ego" | "recovery" | "cross_agent" | "paired", "agent_row": 82, "agent_id": 1234,
         "viewer_pose": [x, y, z_ground, heading],        # world [m, m, m, rad]
         "ego_status": {"speed": 8.1, "velocity": [vx, vy], "acceleration": [ax, ay],
                        "command": 1},                    # 0 left, 1 straight, 2 right
         "perturbation": null | {"dx", "dy", "dheading", "speed_scale", "accel_scale"},
         "sampling": {"num_poses": 10, "interval_s": 0.5},
         "camera_names": ["CAM_L0", "CAM_F0", "CAM_R0"],  # image order of the sample
         "cameras": {"CAM_F0": {camera record: intrinsics, distortion, cam_to_body, ...}, ...},
         "images": {"CAM_F0": "CAM_F0.npy.zst", ...},     # member suffix of each image
         "bev": null | "bev.npy.zst",
         "real_images": {"CAM_F0": "CAM_F0.real.npy.zst", ...},  # paired samples only
         "has_target": false}  # only when the source has no future (zero status, history, target)

    Camera records are :func:`rap.render.rigs.camera_record` documents: ``cam_to_body`` maps
    OpenCV camera axes to the acting agent's body frame (rear axle on the ground, x forward).
``<key>.npz``
    the arrays, a ``numpy.load``-able zip (stored, fixed timestamps): ``target`` (T, 3) float64
    and ``history`` (H, 3) float64 poses (x, y, heading) [m, m, rad] in the acting frame
    (history oldest first, ending one interval before now), ``viewer_pose`` (4,) float64.
``<key>.scoring.npz.zst``
    optional (``rap generate`` writes it unless ``scoring_context=false``): the sample's
    scoring context (:mod:`rap.dataset.scoring`, format ``rap.scoring/1``), what rap's PDM
    scorer needs to score any plan of the acting agent, in its frame: its state, the other road
    users over 5 s, drivable area, lanes, intersections, route, red lights, speed limit and the
    progress reference, cropped around the agent; a zstd-compressed ``.npz`` of fixed-point
    integer arrays. Decode it with :func:`rap.dataset.scoring.decode` (the reader's
    ``record["scoring"]``); the ``.json`` does not mention it, and shards without it read the
    same (``record["scoring"] is None``).

Every tar header is fixed (mtime 0, uid/gid 0, empty uname/gname, mode 0o644), image codecs and
JSON are deterministic, so the same samples give a byte-identical shard.

Reading one without this toolkit::

    import io, json, tarfile, numpy as np
    from PIL import Image
    with tarfile.open("shard-000000.tar") as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            key, field = m.name.split(".", 1)
            if field == "json": meta = json.loads(data)
            elif field == "npz": arrays = np.load(io.BytesIO(data))      # arrays["target"]
            elif field.endswith(".png"): image = np.asarray(Image.open(io.BytesIO(data)))

Encoding (the costly part) is separate from writing: :func:`sample_members` can run in worker
processes and hand ``(name, bytes)`` lists to the one process that owns a :class:`ShardWriter`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rap.dataset.codec import DEFAULT_CODEC, EXTENSIONS, ImageCodec, decode, encode, npz_bytes
from rap.dataset.manifest import ShardEntry
from rap.fileio import DiskFullError, close_quietly, disk_full_error, fsync_dir, is_disk_full, remove_quietly, sha256_file
from rap.dataset.sample import Sample, SampleKind
from rap.dataset.scoring import SCORING_EXTENSION, SCORING_FIELD, ScoringContext
from rap.dataset.scoring import encode as encode_scoring

__all__ = [
    "SAMPLE_FORMAT",
    "TMP_SUFFIX",
    "BEV_FIELD",
    "shard_name",
    "sample_metadata",
    "sample_arrays",
    "sample_members",
    "sample_record",
    "ShardWriter",
    "write_shard",
    "sha256_file",
    "npz_bytes",
]

SAMPLE_FORMAT = "rap.sample/1"
TMP_SUFFIX = ".tmp"
BEV_FIELD = "bev"
REAL_FIELD = "real"  # <key>.<CAM>.real.<ext>: a paired sample's real (or photo stand-in) view
_RESERVED_FIELDS = (BEV_FIELD, "json", "npz", SCORING_FIELD, REAL_FIELD)
# Keys and camera names: no dots (the key ends at the first dot), no path separators.
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def shard_name(index: int, prefix: str = "shard") -> str:
    """File name of shard ``index``: ``shard-000042.tar``."""
    if index < 0:
        raise ValueError(f"shard index must be non-negative, got {index}")
    return f"{prefix}-{index:06d}.tar"


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _json_bytes(doc) -> bytes:
    # ASCII with escapes: a file name that is not UTF-8 (surrogate-escaped by Python) survives.
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_json_default).encode("ascii")


def sample_metadata(sample: Sample, image_members: dict[str, str] | None = None, bev_member: str | None = None, real_members: dict[str, str] | None = None) -> dict:
    """The ``<key>.json`` document of a sample (see the module docstring).

    Args:
        sample: the sample.
        image_members: camera → member suffix (``"CAM_F0.npy.zst"``); default: the suffixes
            of the default codec.
        bev_member: the BEV member suffix, or None.
        real_members: for a paired sample, camera → member suffix of its real view
            (``"CAM_F0.real.npy.zst"``); the document then has a ``real_images`` field.
    """
    plan = sample.plan
    status = plan.ego_status
    if image_members is None:
        ext = EXTENSIONS[DEFAULT_CODEC]
        image_members = {cam: f"{cam}.{ext}" for cam in sample.images}
        bev_member = f"{BEV_FIELD}.{ext}" if sample.bev is not None else None
    pert = plan.perturbation
    if real_members is None and sample.real_images is not None:
        ext = EXTENSIONS[DEFAULT_CODEC]
        real_members = {cam: f"{cam}.{REAL_FIELD}.{ext}" for cam in sample.real_images}
    doc = {
        "format": SAMPLE_FORMAT,
        "key": plan.key,
        "scene_id": plan.scene_id,
        "source": plan.source,
        "step": int(plan.step),
        "kind": plan.kind.value,
        "agent_row": int(plan.agent_row),
        "agent_id": int(plan.agent_id),
        "viewer_pose": [float(v) for v in np.asarray(plan.viewer_pose, dtype=np.float64)],
        "ego_status": {
            "speed": float(status.speed),
            "velocity": [float(v) for v in status.velocity],
            "acceleration": [float(v) for v in status.acceleration],
            "command": int(status.command),
        },
        "perturbation": None if pert is None else {k: float(v) for k, v in dataclasses.asdict(pert).items()},
        "sampling": {"num_poses": int(plan.target.sampling.num_poses), "interval_s": float(plan.target.sampling.interval_s)},
        "camera_names": list(sample.images),
        "cameras": {name: sample.cameras[name] for name in sample.cameras},
        "images": dict(image_members),
        "bev": bev_member,
    }
    if real_members is not None:  # only paired samples carry the field: other samples' bytes stay as they were
        doc["real_images"] = dict(real_members)
    if not sample.has_target:  # likewise only written when there is no target
        doc["has_target"] = False
    return doc


def sample_arrays(sample: Sample) -> dict[str, np.ndarray]:
    """The ``<key>.npz`` arrays: ``target`` (T, 3), ``history`` (H, 3), ``viewer_pose`` (4,), float64."""
    plan = sample.plan
    return {
        "target": np.asarray(plan.target.poses, dtype=np.float64),
        "history": np.asarray(plan.history, dtype=np.float64).reshape(-1, 3),
        "viewer_pose": np.asarray(plan.viewer_pose, dtype=np.float64),
    }


def _check_sample(sample: Sample) -> None:
    plan = sample.plan
    where = f"sample {plan.key!r}"
    if not _NAME.match(plan.key):
        raise ValueError(f"{where}: key must match [A-Za-z0-9_-]+ (no dots or slashes)")
    if not sample.images:
        raise ValueError(f"{where}: no images")
    for cam, image in sample.images.items():
        if not _NAME.match(cam) or cam in _RESERVED_FIELDS:
            raise ValueError(f"{where}: camera name {cam!r} must match [A-Za-z0-9_-]+ and not be one of {_RESERVED_FIELDS}")
        if cam not in sample.cameras:
            raise ValueError(f"{where}: images[{cam!r}] has no camera record in cameras")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{where}: images[{cam!r}] must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    if sample.bev is not None:
        bev = np.asarray(sample.bev)
        if bev.dtype != np.uint8 or bev.ndim != 3 or bev.shape[2] != 3:
            raise ValueError(f"{where}: bev must be (H, W, 3) uint8, got shape {bev.shape} dtype {bev.dtype}")
    history = np.asarray(plan.history)
    if history.ndim != 2 or history.shape[1] != 3 or not np.all(np.isfinite(history)):
        raise ValueError(f"{where}: history must be a finite (H, 3) array, got shape {history.shape}")
    pose = np.asarray(plan.viewer_pose)
    if pose.shape != (4,) or not np.all(np.isfinite(pose)):
        raise ValueError(f"{where}: viewer_pose must be a finite (4,) array, got shape {pose.shape}")
    if sample.scoring is not None and not isinstance(sample.scoring, ScoringContext):
        raise ValueError(f"{where}: scoring must be a ScoringContext or None, got {type(sample.scoring).__name__}")
    paired = plan.kind == SampleKind.PAIRED
    if paired != (sample.real_images is not None):
        raise ValueError(f"{where}: a {plan.kind.value} sample {'needs' if paired else 'cannot have'} real_images")
    for cam, image in (sample.real_images or {}).items():
        if cam not in sample.images:
            raise ValueError(f"{where}: real_images[{cam!r}] has no raster view of the same camera")
        if isinstance(image, (bytes, bytearray)):  # a camera's JPEG as stored
            if bytes(image[:2]) != b"\xff\xd8":
                raise ValueError(f"{where}: real_images[{cam!r}] is bytes but not a JPEG")
            continue
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{where}: real_images[{cam!r}] must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")


def sample_members(sample: Sample, codec: ImageCodec | str = DEFAULT_CODEC) -> list[tuple[str, bytes]]:
    """Encode a sample into its tar members, sorted by name (see the module docstring).

    Args:
        sample: the sample.
        codec: image codec (``"zst"`` default, or ``"png"``).

    Returns:
        ``[(member_name, data), ...]`` sorted by member name, all names ``<key>.<field>``.

    Raises:
        ValueError: a key or camera name that is not filesystem/WebDataset safe, an image that
            is not (H, W, 3) uint8, a camera without a record, bad history or viewer pose, a
            ``scoring`` that is not a ScoringContext.
    """
    _check_sample(sample)
    key = sample.plan.key
    members: dict[str, bytes] = {}
    image_members = {}
    for cam, image in sample.images.items():
        ext, data = encode(codec, image)
        image_members[cam] = f"{cam}.{ext}"
        members[f"{key}.{cam}.{ext}"] = data
    bev_member = None
    if sample.bev is not None:
        ext, data = encode(codec, sample.bev)
        bev_member = f"{BEV_FIELD}.{ext}"
        members[f"{key}.{bev_member}"] = data
    real_members = None
    if sample.real_images is not None:
        real_members = {}
        for cam, image in sample.real_images.items():
            # A camera's JPEG is stored as it came (never re-encoded); arrays take the codec.
            ext, data = ("jpg", bytes(image)) if isinstance(image, (bytes, bytearray)) else encode(codec, image)
            real_members[cam] = f"{cam}.{REAL_FIELD}.{ext}"
            members[f"{key}.{real_members[cam]}"] = data
    members[f"{key}.json"] = _json_bytes(sample_metadata(sample, image_members, bev_member, real_members))
    members[f"{key}.npz"] = npz_bytes(sample_arrays(sample))
    if sample.scoring is not None:
        members[f"{key}.{SCORING_FIELD}.{SCORING_EXTENSION}"] = encode_scoring(sample.scoring)
    return sorted(members.items())


def sample_record(sample: Sample, codec: ImageCodec | str = DEFAULT_CODEC) -> dict:
    """The record that reading ``sample`` back from a shard written with ``codec`` gives
    (:func:`rap.dataset.reader.decode_record`), without encoding its lossless images: the same
    metadata document, arrays and scoring context (contexts are built in their canonical form,
    which decoding gives back); the images are the sample's own arrays. Online training uses it to feed samples that equal the written ones.

    Raises:
        ValueError: as :func:`sample_members`.
    """
    _check_sample(sample)
    ext = EXTENSIONS[ImageCodec(codec)]  # both codecs are lossless
    image_members = {cam: f"{cam}.{ext}" for cam in sample.images}
    bev_member = f"{BEV_FIELD}.{ext}" if sample.bev is not None else None
    real_members = None if sample.real_images is None else {cam: f"{cam}.{REAL_FIELD}.{'jpg' if isinstance(img, (bytes, bytearray)) else ext}" for cam, img in sample.real_images.items()}
    meta = json.loads(_json_bytes(sample_metadata(sample, image_members, bev_member, real_members)))
    images = {cam: np.ascontiguousarray(img, dtype=np.uint8) for cam, img in sample.images.items()}
    bev = None if sample.bev is None else np.ascontiguousarray(sample.bev, dtype=np.uint8)
    record = {"key": sample.plan.key, "meta": meta, "images": images, "bev": bev, **sample_arrays(sample), "scoring": sample.scoring}
    if sample.real_images is not None:
        record["real_images"] = {
            cam: decode("jpg", bytes(img)) if isinstance(img, (bytes, bytearray)) else np.ascontiguousarray(img, dtype=np.uint8)
            for cam, img in sample.real_images.items()
        }  # fmt: skip
    return record


class _HashingFile:
    """A write-only file wrapper that hashes what passes through (tarfile only writes)."""

    def __init__(self, fh) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self._fh.write(data)

    def tell(self) -> int:
        return self._fh.tell()


class ShardWriter:
    """Write samples into one tar shard, atomically.

    Members go to ``<path>.tmp`` as they are added; :meth:`close` finishes the tar, fsyncs it,
    renames it to ``path`` and fsyncs the directory, so a shard under its final name is always
    complete. An exception inside ``with`` (or :meth:`abort`) removes the temporary file; a killed
    process leaves it behind, and readers ignore it (they read ``*.tar`` only) until the next run
    truncates and rewrites it. A write that fails on a full disk removes the temporary file itself
    and raises :class:`rap.fileio.DiskFullError` naming ``path``; the writer is then closed, and
    cleaning up never raises.

    Usage::

        with ShardWriter(out / shard_name(3), codec="zst") as writer:
            for sample in samples:
                writer.add(sample)
        entry = writer.entry          # ShardEntry(name, samples, sha256)
        writer.counts                 # Counter of sample kinds

    Args:
        path: final shard path (``.tar``).
        codec: image codec used by :meth:`add`.
        fsync: fsync the file and directory on close (turn off only in tests).
    """

    def __init__(self, path: str | Path, codec: ImageCodec | str = DEFAULT_CODEC, *, fsync: bool = True) -> None:
        self.path = Path(path)
        if self.path.suffix != ".tar":
            raise ValueError(f"shard path must end in .tar, got {self.path}")
        self.codec = ImageCodec(codec)
        self.tmp_path = self.path.with_name(self.path.name + TMP_SUFFIX)
        self._fsync = fsync
        self._fh = None
        self._tar = None
        self._keys: set[str] = set()
        self.samples = 0
        self.counts: Counter[str] = Counter()
        self.entry: ShardEntry | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.tmp_path, "wb")  # truncates a leftover from a killed run
            self._hashing = _HashingFile(self._fh)
            self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8")
        except BaseException as exc:
            self._drop(exc)
            raise

    def _drop(self, exc: BaseException) -> None:
        """Throw the unfinished shard away after ``exc`` (never raises for the cleanup); a full
        disk is re-raised here as a :class:`DiskFullError` naming the shard, anything else is
        re-raised by the caller."""
        self._tar = None  # its end-of-archive blocks would only go to a file being removed
        if self._fh is not None:
            close_quietly(self._fh)
        remove_quietly(self.tmp_path)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise disk_full_error(exc, self.path) from exc
        if isinstance(exc, OSError) and exc.errno is not None and not exc.filename:  # low-level writes name no file
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(self.path)) from exc

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        self._tar.addfile(info, io.BytesIO(data))

    def add_members(self, key: str, members: Sequence[tuple[str, bytes]], kind: str | None = None) -> None:
        """Append one sample's encoded members (from :func:`sample_members`).

        Args:
            key: the sample key; every member name must start with ``key + "."``.
            members: ``(name, data)`` pairs; written sorted by name.
            kind: the sample kind value, for :attr:`counts`.

        Raises:
            ValueError: a duplicate key in this shard or a member of another key.
            RuntimeError: the writer is closed.
        """
        if self.entry is not None or self._tar is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        if key in self._keys:
            raise ValueError(f"{self.path}: duplicate sample key {key!r}")
        for name, _ in members:
            if not name.startswith(key + ".") or "/" in name:
                raise ValueError(f"{self.path}: member {name!r} does not belong to sample {key!r}")
        try:
            for name, data in sorted(members):
                self._add_member(name, data)
        except BaseException as exc:  # the tar is broken after a failed write: drop the shard
            self._drop(exc)
            raise
        self._keys.add(key)
        self.samples += 1
        if kind is not None:
            self.counts[kind] += 1

    def add(self, sample: Sample) -> None:
        """Encode (with this writer's codec) and append one sample."""
        self.add_members(sample.plan.key, sample_members(sample, self.codec), sample.plan.kind.value)

    def close(self) -> ShardEntry:
        """Finish the tar, fsync, rename to the final name.

        Returns:
            The shard's :class:`ShardEntry` (also kept in :attr:`entry`).
        """
        if self.entry is not None:
            return self.entry
        if self._tar is None:
            raise RuntimeError(f"{self.path}: writer was aborted")
        try:
            self._tar.close()  # writes the end-of-archive blocks and record padding
            self._tar = None
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())
            self._fh.close()
            os.chmod(self.tmp_path, 0o644)
            os.replace(self.tmp_path, self.path)
        except BaseException as exc:
            self._drop(exc)
            raise
        if self._fsync:
            fsync_dir(self.path.parent)
        self.entry = ShardEntry(self.path.name, self.samples, self._hashing.digest.hexdigest())
        return self.entry

    def abort(self) -> None:
        """Drop the unfinished shard (removes ``<path>.tmp``); never raises."""
        if self.entry is not None:
            return
        self._tar = None
        if self._fh is not None:
            close_quietly(self._fh)
        remove_quietly(self.tmp_path)


def write_shard(path: str | Path, samples: Iterable[Sample], codec: ImageCodec | str = DEFAULT_CODEC, *, fsync: bool = True) -> tuple[ShardEntry, Counter]:
    """Write ``samples`` into one shard at ``path`` (atomically).

    Returns:
        ``(entry, counts_by_kind)``.
    """
    with ShardWriter(path, codec, fsync=fsync) as writer:
        for sample in samples:
            writer.add(sample)
    assert writer.entry is not None
    return writer.entry, writer.counts
