"""Read dataset shards: plain iteration (numpy only) and torch datasets for training.

* :func:`iter_shard` decodes one shard into record dicts with numpy arrays (no torch needed);
  ``record["scoring"]`` is the sample's :class:`~rap.dataset.scoring.ScoringContext` (None for
  shards written without one), with which a trainer scores proposals online.
* :func:`record_to_sample` turns a record back into a :class:`~rap.dataset.sample.Sample`.
* :class:`ShardDataset` (``torch.utils.data.IterableDataset``) streams a dataset directory or a
  shard list: each DataLoader worker (and each distributed rank) reads a disjoint subset of
  shards, with an optional seeded shuffle buffer, and yields tensor dicts (see
  :func:`record_to_tensors`); :func:`collate` batches them.
* :class:`ShardIndexDataset` (map-style ``torch.utils.data.Dataset``) indexes every sample's
  member offsets once, for random access with any sampler.

Only complete shards are read: ``*.tar`` files (a killed writer's ``*.tar.tmp`` is ignored), or
those a ``manifest.json`` lists. The member layout is documented in :mod:`rap.dataset.writer`.

Damaged shards are never read silently. When a ``manifest.json`` beside a shard lists it, every
reader checks the file's SHA-256 against it each time it opens the shard, before reading it
(:func:`verify_shard`: one extra sequential read; ``verify=False`` skips it for speed). Independently of the manifest,
the tar structure is checked (header checksums, zero padding, the end-of-archive marker) and
every member that is decoded is validated; all such damage raises :class:`ShardFormatError`
naming the shard (and, for a member, the sample key and the member), never a raw
``tarfile``/``zipfile``/``zstandard``/``json``/PIL error. Without a manifest some edits cannot be
seen (a changed digit in a ``.json`` member is still valid JSON).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rap.dataset.codec import decode
from rap.dataset.manifest import MANIFEST_NAME, ShardEntry, read_manifest, shard_digest_problem
from rap.dataset.sample import Perturbation, Sample, SampleKind, SamplePlan
from rap.dataset.scoring import SCORING_EXTENSION, SCORING_FIELD, ScoringFormatError
from rap.dataset.scoring import decode as decode_scoring
from rap.kinematics import DrivingCommand, EgoStatus
from rap.dataset.writer import BEV_FIELD, REAL_FIELD
from rap.fileio import sha256_file
from rap.trajectory import Trajectory, TrajectorySampling

try:  # torch is only needed by the dataset classes; iter_shard works without it
    import torch
    from torch.utils.data import Dataset as _TorchDataset
    from torch.utils.data import IterableDataset as _TorchIterableDataset
except ImportError:  # pragma: no cover - depends on the environment
    torch = None
    _TorchDataset = _TorchIterableDataset = object

__all__ = [
    "ShardFormatError",
    "EGO_STATUS_FIELDS",
    "list_shards",
    "verify_shard",
    "iter_shard_members",
    "decode_record",
    "iter_shard",
    "iter_dataset",
    "record_to_sample",
    "summarize_shard",
    "record_to_tensors",
    "collate",
    "ShardDataset",
    "ShardIndexDataset",
]

# Order of the ``ego_status`` vector in tensor dicts.
EGO_STATUS_FIELDS = ("speed", "velocity_lon", "velocity_lat", "accel_lon", "accel_lat")


class ShardFormatError(ValueError):
    """A shard that is not a valid rap shard; the message names the shard, sample and member."""


def list_shards(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The complete shards of a dataset.

    Args:
        source: a dataset directory (its ``manifest.json`` lists the shards; without one, every
            ``*.tar`` in it, sorted by name), a single ``.tar`` path, or a sequence of paths.

    Returns:
        Shard paths, in manifest / name order (a sequence is kept in its order).

    Raises:
        FileNotFoundError: a missing directory or a shard the manifest lists that is not there.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            if (path / MANIFEST_NAME).is_file():
                shards = [path / e.name for e in read_manifest(path).shards]
                missing = [str(p) for p in shards if not p.is_file()]
                if missing:
                    raise FileNotFoundError(f"{path / MANIFEST_NAME} lists shards that do not exist: {', '.join(missing[:5])}")
                return shards
            return sorted(p for p in path.glob("*.tar") if p.is_file())
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such dataset directory or shard")
        return [path]
    return [Path(p) for p in source]


def _split_name(name: str) -> tuple[str, str]:
    key, dot, field = name.partition(".")
    return key, field if dot else ""


# --------------------------------------------------------------------------- verification

def verify_shard(path: str | Path) -> bool:
    """Check a shard against the SHA-256 the ``manifest.json`` beside it records.

    Reads the manifest and hashes the whole file (every call: nothing is cached, so a file
    changed since an earlier check is never taken on trust).

    Returns:
        True when the digest was checked and matches; False when there is no manifest beside
        the shard or it does not list the shard (nothing to check against).

    Raises:
        ShardFormatError: the digest differs (the message names the shard, the manifest, the
            expected and the actual digest) or the listed shard is missing.
        ManifestError: a manifest beside the shard that does not validate.
    """
    path = Path(path)
    if not (path.parent / MANIFEST_NAME).is_file():
        return False
    expected = {e.name: e.sha256 for e in read_manifest(path.parent).shards}.get(path.name)
    if expected is None:
        return False
    problem = shard_digest_problem(path, expected, path.parent / MANIFEST_NAME)
    if problem:
        raise ShardFormatError(problem)
    return True


# --------------------------------------------------------------------------- tar structure

_BLOCK = tarfile.BLOCKSIZE  # [bytes] tar block: headers, data and padding are multiples of it


def _tar_problem(raw, offset: int) -> str | None:
    """What is wrong with the bytes where ``tarfile`` stopped reading headers (``offset``): a
    complete shard has only the end-of-archive marker there (at least two zero blocks, then
    zeros)."""
    raw.seek(offset)
    first = raw.read(_BLOCK)
    if len(first) == _BLOCK and first.count(0) != _BLOCK:
        try:
            tarfile.TarInfo.frombuf(first, tarfile.ENCODING, "surrogateescape")
            reason = "a header tarfile could not use"
        except tarfile.HeaderError as err:
            reason = str(err)
        return f"invalid member header at byte {offset} ({reason}); the members after it cannot be read"
    size = len(first)
    while chunk := raw.read(1 << 16):
        if chunk.count(0) != len(chunk):
            at = offset + size + next(i for i, b in enumerate(chunk) if b)
            return f"non-zero byte {at} in the end-of-archive marker that starts at byte {offset}"
        size += len(chunk)
    if size < 2 * _BLOCK:
        return f"no end-of-archive marker after byte {offset} (a truncated file?)"
    return None


def _iter_tar_groups(path: Path, *, read_data: bool) -> Iterator[tuple[str, list[tuple[str, int, int, bytes | None]]]]:
    """Walk a shard's members, checking the tar structure; group them by sample key.

    Yields:
        ``(key, [(field, data offset, size, data or None), ...])`` per sample, in file order
        (``data`` only when ``read_data``).

    Raises:
        ShardFormatError: damage to the tar structure (a header whose checksum fails, non-zero
            padding, a damaged end-of-archive marker, truncated data), a member that is not a
            regular file or has no field, a duplicate member, or a key whose members are not
            consecutive.
    """
    seen: set[str] = set()
    key: str | None = None
    group: list[tuple[str, int, int, bytes | None]] = []
    names: set[str] = set()
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            file_size = os.fstat(raw.fileno()).st_size
            for member in tar:
                if not member.isreg() or member.issparse():
                    raise ShardFormatError(f"{path}: member {member.name!r} is not a regular file")
                k, field = _split_name(member.name)
                if not field:
                    raise ShardFormatError(f"{path}: member {member.name!r} has no '.<field>' after its key")
                if member.name in names:
                    raise ShardFormatError(f"{path}: member {member.name!r} appears twice")
                names.add(member.name)
                if k != key:
                    if key is not None:
                        yield key, group
                    if k in seen:
                        raise ShardFormatError(f"{path}: members of sample {k!r} are not consecutive")
                    seen.add(k)
                    key, group = k, []
                pad = -member.size % _BLOCK
                if member.offset_data + member.size + pad > file_size:
                    raise ShardFormatError(f"{path}: damaged tar: member {member.name!r} is truncated (the file ends inside its data)")
                data = None
                if read_data:
                    raw.seek(member.offset_data)
                    data = raw.read(member.size)
                else:
                    raw.seek(member.offset_data + member.size)
                padding = raw.read(pad) if pad else b""
                if (data is not None and len(data) != member.size) or len(padding) != pad:
                    raise ShardFormatError(f"{path}: damaged tar: member {member.name!r} is truncated (the file ends inside its data)")
                if padding.count(0) != pad:
                    at = member.offset_data + member.size + next(i for i, b in enumerate(padding) if b)
                    raise ShardFormatError(f"{path}: damaged tar: non-zero padding byte {at} after member {member.name!r}")
                group.append((field, member.offset_data, member.size, data))
            problem = _tar_problem(raw, tar.offset)
            if problem:
                raise ShardFormatError(f"{path}: damaged tar: {problem}")
    except (tarfile.TarError, EOFError, UnicodeError) as err:
        raise ShardFormatError(f"{path}: damaged tar (or not a tar file): {err}") from err
    if key is not None:
        yield key, group


def iter_shard_members(path: str | Path, *, verify: bool = True) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a shard's members by sample.

    Args:
        path: the shard.
        verify: first check the shard against the manifest beside it (:func:`verify_shard`).

    Yields:
        ``(key, {field: data})`` per sample, in file order; ``field`` is the member name after
        the key (``"CAM_F0.npy.zst"``, ``"json"``, ``"npz"``).

    Raises:
        ShardFormatError: a digest that does not match the manifest, damage to the tar
            structure (header checksum, padding, end-of-archive marker, truncation), a member
            that is not a regular file, or a key whose members are not consecutive.
    """
    path = Path(path)
    if verify:
        verify_shard(path)
    for key, group in _iter_tar_groups(path, read_data=True):
        yield key, {field: data for field, _, _, data in group}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_problem(meta, key: str) -> str | None:
    """Why a parsed ``.json`` member is not a sample's metadata (see :mod:`rap.dataset.writer`),
    or None."""
    if not isinstance(meta, dict):
        return f"expected a JSON object, got {type(meta).__name__}"
    checks = {
        "format": lambda v: isinstance(v, str),
        "key": lambda v: v == key,
        "scene_id": lambda v: isinstance(v, str),
        "source": lambda v: isinstance(v, str),
        "step": _is_int,
        "kind": lambda v: v in _KINDS,
        "agent_row": _is_int,
        "agent_id": _is_int,
        "viewer_pose": lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_number, v)),
        "ego_status": lambda v: isinstance(v, dict)
        and _is_number(v.get("speed"))
        and all(isinstance(v.get(f), list) and len(v[f]) == 2 and all(map(_is_number, v[f])) for f in ("velocity", "acceleration"))
        and v.get("command") in _COMMANDS
        and _is_int(v.get("command")),
        "perturbation": lambda v: v is None or (isinstance(v, dict) and set(v) == _PERTURBATION_FIELDS and all(map(_is_number, v.values()))),
        "sampling": lambda v: isinstance(v, dict) and _is_int(v.get("num_poses")) and v["num_poses"] >= 0 and _is_number(v.get("interval_s")),
        "camera_names": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
        "cameras": lambda v: isinstance(v, dict) and all(isinstance(r, dict) for r in v.values()),
        "images": lambda v: isinstance(v, dict) and all(isinstance(f, str) for f in v.values()),
        "bev": lambda v: v is None or isinstance(v, str),
    }
    for name, ok in checks.items():
        if name not in meta:
            return f"no field {name!r}"
        if not ok(meta[name]):
            return f"field {name!r} is invalid ({json.dumps(meta[name])[:120]})"
    real = meta.get("real_images")
    if (meta["kind"] == SampleKind.PAIRED.value) != (real is not None):
        return "field 'real_images' is required for paired samples and only for them"
    if real is not None and not (isinstance(real, dict) and all(isinstance(f, str) for f in real.values()) and set(real) <= set(meta["images"])):
        return f"field 'real_images' is invalid ({json.dumps(real)[:120]})"
    if "has_target" in meta and meta["has_target"] is not False:
        return f"field 'has_target' is invalid ({json.dumps(meta['has_target'])[:40]}; only false is written)"
    return None


_KINDS = {k.value for k in SampleKind}
_COMMANDS = {int(c) for c in DrivingCommand}
_PERTURBATION_FIELDS = {f.name for f in dataclasses.fields(Perturbation)}
_ARRAYS = ("target", "history", "viewer_pose")


def _parse_meta(key: str, data: bytes, at: str) -> dict[str, Any]:
    """The validated ``<key>.json`` document (``at`` names shard and sample in errors)."""
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ShardFormatError(f"{at}: member {key}.json: not valid JSON ({err})") from err
    problem = _meta_problem(meta, key)
    if problem:
        raise ShardFormatError(f"{at}: member {key}.json: not a sample's metadata: {problem}")
    return meta


def _parse_arrays(key: str, data: bytes, meta: dict[str, Any], at: str) -> dict[str, np.ndarray]:
    """The validated arrays of ``<key>.npz``."""
    member = f"{key}.npz"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [name for name in _ARRAYS if name not in npz.files]
            if missing:
                raise ShardFormatError(f"{at}: member {member}: no array {missing[0]!r} (it has {npz.files})")
            arrays = {name: npz[name] for name in _ARRAYS}
    except ShardFormatError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # BadZipFile, ValueError, OSError, EOFError, zlib.error, ...
        raise ShardFormatError(f"{at}: member {member}: not a valid .npz ({type(err).__name__}: {err})") from err
    shapes = {"target": (meta["sampling"]["num_poses"], 3), "history": (None, 3), "viewer_pose": (4,)}
    for name, shape in shapes.items():
        a = arrays[name]
        if a.dtype != np.float64 or a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)) or not np.all(np.isfinite(a)):
            want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
            raise ShardFormatError(f"{at}: member {member}: {name!r} must be a finite {want} float64 array, got shape {a.shape} dtype {a.dtype}")
    return arrays


_SCORING_MEMBER = f"{SCORING_FIELD}.{SCORING_EXTENSION}"


def _parse_scoring(key: str, fields: dict[str, bytes], at: str):
    """The decoded ``<key>.scoring.npz.zst`` member, or None when the sample has none."""
    data = fields.get(_SCORING_MEMBER)
    if data is None:
        other = sorted(f for f in fields if f.startswith(SCORING_FIELD + "."))
        if other:
            raise ShardFormatError(f"{at}: member {key}.{other[0]}: unknown scoring member (this reader knows {key}.{_SCORING_MEMBER})")
        return None
    try:
        return decode_scoring(data)
    except ScoringFormatError as err:
        raise ShardFormatError(f"{at}: member {key}.{_SCORING_MEMBER}: {err}") from err


def decode_record(key: str, fields: dict[str, bytes], *, cameras: Sequence[str] | None = None, decode_images: bool = True, where: str = "") -> dict[str, Any]:
    """Decode one sample's members.

    Args:
        key: the sample key.
        fields: field → bytes, as :func:`iter_shard_members` yields.
        cameras: cameras to decode (default: all, in the sample's ``camera_names`` order).
        decode_images: False leaves the images encoded (``encoded`` holds them).
        where: shard name for error messages.

    Returns:
        ``{"key", "meta" (the json document), "images" {camera: (H, W, 3) uint8},
        "bev" (H, W, 3) uint8 | None, "target" (T, 3) float64, "history" (H, 3) float64,
        "viewer_pose" (4,) float64, "scoring" (a :class:`~rap.dataset.scoring.ScoringContext`,
        or None for a sample written without one), "encoded" {field: (extension, bytes)} (only
        when not decoding), and for ``paired`` samples "real_images" {camera: (H, W, 3) uint8}
        (the real or photo views of the same cameras)}``.

    Raises:
        ShardFormatError: a missing member or camera, or a member that does not decode or is
            not what the format says (the message names the shard, the sample and the member).
    """
    at = f"{where}: sample {key!r}" if where else f"sample {key!r}"
    for required in ("json", "npz"):
        if required not in fields:
            raise ShardFormatError(f"{at}: missing member {key}.{required}")
    meta = _parse_meta(key, fields["json"], at)
    arrays = _parse_arrays(key, fields["npz"], meta, at)
    image_fields = meta["images"]
    names = list(cameras) if cameras is not None else list(meta["camera_names"])
    record: dict[str, Any] = {"key": key, "meta": meta, "images": {}, "bev": None, **arrays, "scoring": _parse_scoring(key, fields, at)}
    encoded = {}
    wanted = [(cam, image_fields.get(cam)) for cam in names]
    if meta["bev"]:
        wanted.append((BEV_FIELD, meta["bev"]))
    real_fields = meta.get("real_images")
    if real_fields is not None:
        record["real_images"] = {}
        wanted += [((REAL_FIELD, cam), real_fields.get(cam)) for cam in names if cam in image_fields]
    for name, field in wanted:
        if field is None:
            if isinstance(name, tuple):
                raise ShardFormatError(f"{at}: paired sample without a real view of camera {name[1]!r}; it has {list(real_fields)}")
            raise ShardFormatError(f"{at}: no camera {name!r}; it has {list(image_fields)}")
        if field not in fields:
            raise ShardFormatError(f"{at}: missing member {key}.{field}")
        ext = field.partition(".")[2]
        if not decode_images:
            encoded[f"{name[1]}.{REAL_FIELD}" if isinstance(name, tuple) else name] = (ext, fields[field])
            continue
        try:
            image = decode(ext, fields[field])
        except ValueError as err:
            raise ShardFormatError(f"{at}: member {key}.{field}: {err}") from err
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ShardFormatError(f"{at}: member {key}.{field}: expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
        if name == BEV_FIELD:
            record["bev"] = image
        elif isinstance(name, tuple):
            record["real_images"][name[1]] = image
        else:
            record["images"][name] = image
    if not decode_images:
        record["encoded"] = encoded
    return record


def iter_shard(path: str | Path, *, cameras: Sequence[str] | None = None, decode_images: bool = True, verify: bool = True) -> Iterator[dict[str, Any]]:
    """Decode the samples of one shard, in file order (numpy only, no torch).

    Args:
        path: the shard.
        cameras, decode_images: as :func:`decode_record`.
        verify: before reading, check the shard's SHA-256 against the ``manifest.json`` beside
            it, when there is one that lists it (:func:`verify_shard`: one extra sequential read
            of the file). False skips the hash; damage to the tar structure and members that do
            not decode are still errors.

    Yields:
        Record dicts (see :func:`decode_record`).

    Raises:
        ShardFormatError: see :func:`iter_shard_members` and :func:`decode_record`.
    """
    path = Path(path)
    for key, fields in iter_shard_members(path, verify=verify):
        yield decode_record(key, fields, cameras=cameras, decode_images=decode_images, where=str(path))


def iter_dataset(source: str | Path | Sequence[str | Path], **kwargs) -> Iterator[dict[str, Any]]:
    """:func:`iter_shard` over every shard of :func:`list_shards` ``(source)``, in order
    (keyword arguments, ``verify`` included, go to :func:`iter_shard`)."""
    for path in list_shards(source):
        yield from iter_shard(path, **kwargs)


def record_to_sample(record: dict[str, Any]) -> Sample:
    """Rebuild the :class:`Sample` a record was written from (images must be decoded)."""
    meta = record["meta"]
    status = meta["ego_status"]
    sampling = TrajectorySampling(int(meta["sampling"]["num_poses"]), float(meta["sampling"]["interval_s"]))
    pert = meta.get("perturbation")
    plan = SamplePlan(
        key=meta["key"],
        scene_id=meta["scene_id"],
        source=meta["source"],
        step=int(meta["step"]),
        kind=SampleKind(meta["kind"]),
        agent_row=int(meta["agent_row"]),
        agent_id=int(meta["agent_id"]),
        viewer_pose=np.asarray(record["viewer_pose"], dtype=np.float64),
        ego_status=EgoStatus(
            speed=float(status["speed"]),
            velocity=tuple(float(v) for v in status["velocity"]),
            acceleration=tuple(float(v) for v in status["acceleration"]),
            command=DrivingCommand(int(status["command"])),
        ),
        history=np.asarray(record["history"], dtype=np.float64),
        target=Trajectory(record["target"], sampling),
        perturbation=None if pert is None else Perturbation(**pert),
    )
    real = record.get("real_images")
    return Sample(
        plan=plan, images=dict(record["images"]), cameras=dict(meta["cameras"]), bev=record.get("bev"), scoring=record.get("scoring"),
        real_images=None if real is None else dict(real), has_target=meta.get("has_target", True),
    )  # fmt: skip


def summarize_shard(path: str | Path) -> tuple[ShardEntry, Counter]:
    """Entry and kind counts of a complete shard (what a resumed run needs for its manifest).

    Reads only the tar headers and the ``.json`` members, plus the file hash (it does not
    check the shard against a manifest: it computes the digest one records).

    Returns:
        ``(ShardEntry(name, samples, sha256), Counter(kind -> samples))``.

    Raises:
        ShardFormatError: damage to the tar structure, a missing or invalid ``.json`` member.
    """
    path = Path(path)
    counts: Counter = Counter()
    samples = 0
    for key, fields in iter_shard_members(path, verify=False):  # this computes the digest
        if "json" not in fields:
            raise ShardFormatError(f"{path}: sample {key!r}: missing member {key}.json")
        samples += 1
        counts[_parse_meta(key, fields["json"], f"{path}: sample {key!r}")["kind"]] += 1
    return ShardEntry(path.name, samples, sha256_file(path)), counts


# --------------------------------------------------------------------------- torch


def _require_torch() -> None:
    if torch is None:  # pragma: no cover - depends on the environment
        raise ImportError("ShardDataset needs torch (pip install torch); iter_shard works without it")


def record_to_tensors(record: dict[str, Any], *, cameras: Sequence[str] | None = None, image_dtype: str = "uint8") -> dict[str, Any]:
    """Tensor dict of one decoded record.

    Args:
        record: from :func:`iter_shard`.
        cameras: image order (default: the sample's ``camera_names``).
        image_dtype: ``"uint8"`` (0-255) or ``"float32"`` (0-1).

    Returns:
        ``{"images": (num_cams, 3, H, W) uint8 | float32, "target": (T, 3) float32,
        "history": (H, 3) float32, "ego_status": (5,) float32 (see EGO_STATUS_FIELDS),
        "command": () int64 (DrivingCommand), "kind": str, "key": str, "scoring":
        ScoringContext | None}`` (the scoring context as decoded, see
        :mod:`rap.dataset.scoring`), plus ``"bev"`` (3, H, W) when the sample has one.

    Raises:
        ValueError: cameras of different sizes (they cannot be stacked).
    """
    _require_torch()
    if image_dtype not in ("uint8", "float32"):
        raise ValueError(f"image_dtype must be 'uint8' or 'float32', got {image_dtype!r}")
    meta = record["meta"]
    names = list(cameras) if cameras is not None else list(meta["camera_names"])
    images = [record["images"][cam] for cam in names]
    shapes = {img.shape for img in images}
    if len(shapes) != 1:
        raise ValueError(f"sample {record['key']!r}: cameras {names} have different sizes {sorted(shapes)}; pick cameras of one size")

    def to_chw(img: np.ndarray):
        img = np.ascontiguousarray(img)
        if not img.flags.writeable:
            img = img.copy()
        t = torch.from_numpy(img).permute(2, 0, 1)
        return t.float().div_(255.0) if image_dtype == "float32" else t.contiguous()

    status = meta["ego_status"]
    out = {
        # Shape: (num_cams, 3, H, W).
        "images": torch.stack([to_chw(img) for img in images]),
        "target": torch.from_numpy(np.array(record["target"], dtype=np.float32)),
        "history": torch.from_numpy(np.array(record["history"], dtype=np.float32).reshape(-1, 3)),
        "ego_status": torch.tensor([status["speed"], *status["velocity"], *status["acceleration"]], dtype=torch.float32),
        "command": torch.tensor(int(status["command"]), dtype=torch.int64),
        "kind": meta["kind"],
        "key": record["key"],
        "scoring": record.get("scoring"),
    }
    if record.get("bev") is not None:
        out["bev"] = to_chw(record["bev"])
    return out


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch tensor dicts from :class:`ShardDataset` / :class:`ShardIndexDataset`.

    Returns:
        ``{"images": (B, num_cams, 3, H, W), "target": (B, T, 3), "history": (B, H_max, 3)
        (left-padded with zeros), "history_valid": (B, H_max) bool, "ego_status": (B, 5),
        "command": (B,) int64, "kind": list[str], "key": list[str], "scoring":
        list[ScoringContext | None]}`` (score a batch with
        :func:`rap.dataset.scoring.score_batch`), plus ``"bev"`` (B, 3, H, W) when every sample
        has one.

    Raises:
        ValueError: an empty batch, or images / targets of different shapes (naming the keys).
    """
    _require_torch()
    if not batch:
        raise ValueError("collate: empty batch")
    keys = [b["key"] for b in batch]
    for field in ("images", "target"):
        shapes = {tuple(b[field].shape) for b in batch}
        if len(shapes) != 1:
            raise ValueError(f"collate: {field} shapes differ within the batch {sorted(shapes)} (keys {keys})")
    h_max = max(b["history"].shape[0] for b in batch)
    history = torch.zeros((len(batch), h_max, 3), dtype=torch.float32)
    valid = torch.zeros((len(batch), h_max), dtype=torch.bool)
    for i, b in enumerate(batch):
        h = b["history"].shape[0]
        if h:
            history[i, h_max - h :] = b["history"]
            valid[i, h_max - h :] = True
    out = {
        "images": torch.stack([b["images"] for b in batch]),
        "target": torch.stack([b["target"] for b in batch]),
        "history": history,
        "history_valid": valid,
        "ego_status": torch.stack([b["ego_status"] for b in batch]),
        "command": torch.stack([b["command"] for b in batch]),
        "kind": [b["kind"] for b in batch],
        "key": keys,
        "scoring": [b.get("scoring") for b in batch],
    }
    if all("bev" in b for b in batch):
        out["bev"] = torch.stack([b["bev"] for b in batch])
    return out


def _consumer() -> tuple[int, int]:
    """(index, count) of this DataLoader worker among all workers (1 when not in a worker)."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        return rank, world_size
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardDataset(_TorchIterableDataset):
    """Stream samples from shards as tensor dicts (see :func:`record_to_tensors`).

    Shards are split across distributed ranks and DataLoader workers: consumer
    ``rank * num_workers + worker_id`` reads shards ``i`` with ``i % (world_size * num_workers)``
    equal to its index, so every sample is read exactly once per epoch (a consumer with no
    shard yields nothing: use at least as many shards as workers times ranks). With
    ``shuffle_buffer > 0`` the shard order is permuted per epoch (the same permutation in every
    consumer) and each consumer shuffles through a buffer of that many samples, all drawn from
    ``numpy.random.default_rng((seed, epoch[, consumer]))``: the same seed and epoch give the same
    order. Call :meth:`set_epoch` before each epoch (with ``persistent_workers=False``, the
    default, workers see the new epoch).

    Args:
        source: dataset directory, shard path or list of shard paths (see :func:`list_shards`).
        shuffle_buffer: samples held for shuffling (0: file order, no shard shuffling).
        seed: shuffle seed.
        cameras: image order (default: each sample's ``camera_names``).
        image_dtype: ``"uint8"`` or ``"float32"`` (scaled to 0-1).
        rank, world_size: distributed split (default: from ``torch.distributed`` when
            initialised, else a single process).
        verify: check each shard against the manifest's SHA-256 when a consumer opens it, each
            epoch (see :func:`iter_shard`; each DataLoader worker hashes the shards it reads);
            False skips the hash for speed.

    Raises (while iterating):
        ShardFormatError: a shard whose digest does not match the manifest, damage to its tar
            structure, or a member that does not decode (naming shard, sample and member).
    """

    def __init__(self, source, *, shuffle_buffer: int = 0, seed: int = 0, cameras: Sequence[str] | None = None, image_dtype: str = "uint8", rank: int | None = None, world_size: int | None = None, verify: bool = True) -> None:
        _require_torch()
        super().__init__()
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be 'uint8' or 'float32', got {image_dtype!r}")
        self.shards = list_shards(source)
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.cameras = None if cameras is None else list(cameras)
        self.image_dtype = image_dtype
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        self.verify = bool(verify)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of epoch ``epoch``."""
        self.epoch = int(epoch)

    def shards_for(self, worker_id: int, num_workers: int) -> list[Path]:
        """The shards that DataLoader worker ``worker_id`` of ``num_workers`` reads this epoch."""
        shards = list(self.shards)
        if self.shuffle_buffer:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(len(shards))
            shards = [shards[i] for i in order]
        total = self.world_size * num_workers
        return shards[self.rank * num_workers + worker_id :: total]

    def _records(self, shards: Sequence[Path]) -> Iterator[dict[str, Any]]:
        for path in shards:
            yield from iter_shard(path, cameras=self.cameras, verify=self.verify)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker_id, num_workers = _consumer()
        records = self._records(self.shards_for(worker_id, num_workers))
        if self.shuffle_buffer:
            consumer = self.rank * num_workers + worker_id
            records = _shuffled(records, self.shuffle_buffer, np.random.default_rng((self.seed, self.epoch, consumer)))
        for record in records:
            yield record_to_tensors(record, cameras=self.cameras, image_dtype=self.image_dtype)


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Shuffle a stream through a buffer of ``size`` items (seeded, deterministic)."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(len(buffer)))
        yield buffer[i]
        buffer[i] = item
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


class ShardIndexDataset(_TorchDataset):
    """Map-style access to every sample of a set of shards (any sampler, e.g. shuffling).

    Scans the tar headers once at construction (no image is decoded) and keeps, per sample, the
    shard and the byte range of each member; ``dataset[i]`` reads just those bytes.

    Args:
        source: dataset directory, shard path or list of shard paths.
        cameras, image_dtype: as :class:`ShardDataset`.
        verify: check every shard against the manifest's SHA-256 at construction (see
            :func:`iter_shard`); False skips the hash for speed.

    Raises:
        ShardFormatError: at construction, a shard whose digest does not match the manifest or
            whose tar structure is damaged; from ``dataset[i]``, a member that does not decode.
    """

    def __init__(self, source, *, cameras: Sequence[str] | None = None, image_dtype: str = "uint8", verify: bool = True) -> None:
        _require_torch()
        if image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be 'uint8' or 'float32', got {image_dtype!r}")
        self.shards = list_shards(source)
        self.cameras = None if cameras is None else list(cameras)
        self.image_dtype = image_dtype
        # Per sample: (shard index, key, ((field, offset, size), ...)).
        self.index: list[tuple[int, str, tuple[tuple[str, int, int], ...]]] = []
        for s, path in enumerate(self.shards):
            if verify:
                verify_shard(path)
            for key, group in _iter_tar_groups(path, read_data=False):
                self.index.append((s, key, tuple((field, offset, size) for field, offset, size, _ in group)))

    def __len__(self) -> int:
        return len(self.index)

    def record(self, i: int) -> dict[str, Any]:
        """The decoded numpy record of sample ``i`` (as :func:`iter_shard` yields)."""
        s, key, members = self.index[i]
        fields = {}
        with open(self.shards[s], "rb") as fh:
            for field, offset, size in members:
                fh.seek(offset)
                fields[field] = fh.read(size)
                if len(fields[field]) != size:
                    raise ShardFormatError(f"{self.shards[s]}: sample {key!r}: member {key}.{field} is truncated (the file shrank after it was indexed)")
        return decode_record(key, fields, cameras=self.cameras, where=str(self.shards[s]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return record_to_tensors(self.record(i), cameras=self.cameras, image_dtype=self.image_dtype)
