"""The dataset manifest: ``<dataset dir>/manifest.json``.

Written once, atomically, when a generation run ends (also after ``--resume``). Its JSON has
sorted keys, two-space indentation and a trailing newline, shard entries sorted by name and
skipped inputs sorted, so equal runs give byte-identical manifests. Fields::

    {
      "format_version": 1,
      "toolkit_version": "0.1.0",           # rap.__version__ that wrote the dataset
      "seed": 0,                            # the run's seed
      "config": {...},                      # the generation config, JSON-ready
      "codec": "zst",                       # image codec of the shards (rap.dataset.codec)
      "counts": {"ego": 10, "recovery": 20, "cross_agent": 5},   # samples by kind
      "shards": [{"name": "shard-000000.tar", "samples": 32, "sha256": "<64 hex>"}, ...],
      "skipped": [{"source": "womd:a.tfrecord", "record": 3, "reason": "..."}, ...],
      "rejected": {"off_road": 4, ...}      # candidate samples rejected, by reason (and
                                            # "scoring_context_<reason>": samples written
                                            # without their scoring context)
    }

``counts`` must add up to the shards' samples. :func:`read_manifest` validates every field and
raises :class:`ManifestError` naming the file and the field (``shards[2].sha256``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rap.fileio import sha256_file, write_bytes_atomic
from rap.dataset.sample import SampleKind

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "ManifestError",
    "ShardEntry",
    "SkippedInput",
    "Manifest",
    "manifest_to_json",
    "manifest_from_json",
    "write_manifest",
    "read_manifest",
    "shard_digest_problem",
    "verify_shards",
]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_.\-]+\.tar$")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or invalid; the message names file and field."""


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One complete shard.

    Attributes:
        name: file name inside the dataset directory, e.g. ``"shard-000003.tar"``.
        samples: number of samples (keys) in it.
        sha256: hex SHA-256 of the file's bytes.
    """

    name: str
    samples: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class SkippedInput:
    """An input that could not be read and was skipped (counted, never silently dropped).

    Attributes:
        source: the input, e.g. ``"womd:data/waymo/a.tfrecord"``.
        record: the record within it (index or id).
        reason: the error, naming the field where there is one.
    """

    source: str
    record: int | str
    reason: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Contents of ``manifest.json`` (see the module docstring).

    Attributes:
        toolkit_version: version of rap that wrote the dataset.
        seed: the run's seed.
        config: the generation config as a JSON-ready dict.
        codec: image codec name (``"png"`` or ``"zst"``).
        counts: sample kind value (``"ego"``, ``"recovery"``, ``"cross_agent"``) → samples.
        shards: complete shards (kept sorted by name).
        skipped: unreadable inputs (kept sorted).
        rejected: reason → number of candidate samples rejected.
        format_version: manifest schema version.
    """

    toolkit_version: str
    seed: int
    config: Mapping[str, Any]
    codec: str
    counts: Mapping[str, int]
    shards: tuple[ShardEntry, ...] = ()
    skipped: tuple[SkippedInput, ...] = ()
    rejected: Mapping[str, int] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", tuple(sorted(self.shards, key=lambda s: s.name)))
        object.__setattr__(self, "skipped", tuple(sorted(self.skipped, key=lambda s: (s.source, str(s.record), s.reason))))
        object.__setattr__(self, "counts", dict(sorted(self.counts.items())))
        object.__setattr__(self, "rejected", dict(sorted(self.rejected.items())))

    @property
    def num_samples(self) -> int:
        """Samples over all shards."""
        return sum(s.samples for s in self.shards)

    def validate(self, where: str = MANIFEST_NAME) -> None:
        """Check every field.

        Args:
            where: the file name used in error messages.

        Raises:
            ManifestError: naming ``where`` and the offending field.
        """
        _validate_doc(manifest_to_json(self, validate=False), where)


def _fail(where: str, field: str, problem: str) -> None:
    raise ManifestError(f"{where}: field '{field}': {problem}")


def _check_count(where: str, field: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _fail(where, field, f"expected a non-negative integer, got {value!r}")


def _validate_doc(doc: Any, where: str) -> None:
    """Validate a parsed manifest document (the JSON object)."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    fields = {f.name for f in dataclasses.fields(Manifest)}
    for name in sorted(fields - set(doc)):
        _fail(where, name, "missing")
    for name in sorted(set(doc) - fields):
        _fail(where, name, "unknown field")
    if doc["format_version"] != FORMAT_VERSION:
        _fail(where, "format_version", f"this toolkit reads version {FORMAT_VERSION}, got {doc['format_version']!r}")
    if not isinstance(doc["toolkit_version"], str) or not doc["toolkit_version"]:
        _fail(where, "toolkit_version", f"expected a non-empty string, got {doc['toolkit_version']!r}")
    if not isinstance(doc["seed"], int) or isinstance(doc["seed"], bool):
        _fail(where, "seed", f"expected an integer, got {doc['seed']!r}")
    if not isinstance(doc["config"], dict):
        _fail(where, "config", f"expected an object, got {type(doc['config']).__name__}")
    from rap.dataset.codec import ImageCodec  # local: keep the manifest importable without codecs' deps

    codecs = [c.value for c in ImageCodec]
    if doc["codec"] not in codecs:
        _fail(where, "codec", f"expected one of {codecs}, got {doc['codec']!r}")
    if not isinstance(doc["counts"], dict):
        _fail(where, "counts", f"expected an object kind -> count, got {type(doc['counts']).__name__}")
    kinds = [k.value for k in SampleKind]
    for kind, n in doc["counts"].items():
        if kind not in kinds:
            _fail(where, f"counts.{kind}", f"unknown sample kind; expected one of {kinds}")
        _check_count(where, f"counts.{kind}", n)
    if not isinstance(doc["shards"], list):
        _fail(where, "shards", f"expected a list, got {type(doc['shards']).__name__}")
    names = set()
    for i, entry in enumerate(doc["shards"]):
        f = f"shards[{i}]"
        if not isinstance(entry, dict):
            _fail(where, f, f"expected an object {{name, samples, sha256}}, got {entry!r}")
        for key in ("name", "samples", "sha256"):
            if key not in entry:
                _fail(where, f"{f}.{key}", "missing")
        for key in sorted(set(entry) - {"name", "samples", "sha256"}):
            _fail(where, f"{f}.{key}", "unknown field")
        if not isinstance(entry["name"], str) or not _SHARD_NAME.match(entry["name"]):
            _fail(where, f"{f}.name", f"expected a file name ending in .tar, got {entry['name']!r}")
        if entry["name"] in names:
            _fail(where, f"{f}.name", f"duplicate shard {entry['name']!r}")
        names.add(entry["name"])
        _check_count(where, f"{f}.samples", entry["samples"])
        if not isinstance(entry["sha256"], str) or not _SHA256.match(entry["sha256"]):
            _fail(where, f"{f}.sha256", f"expected 64 lower-case hex digits, got {entry['sha256']!r}")
    total = sum(e["samples"] for e in doc["shards"])
    if sum(doc["counts"].values()) != total:
        _fail(where, "counts", f"counts add up to {sum(doc['counts'].values())} but the shards hold {total} samples")
    if not isinstance(doc["skipped"], list):
        _fail(where, "skipped", f"expected a list, got {type(doc['skipped']).__name__}")
    for i, entry in enumerate(doc["skipped"]):
        f = f"skipped[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"source", "record", "reason"}:
            _fail(where, f, f"expected an object {{source, record, reason}}, got {entry!r}")
        if not isinstance(entry["source"], str):
            _fail(where, f"{f}.source", f"expected a string, got {entry['source']!r}")
        if not isinstance(entry["record"], (int, str)) or isinstance(entry["record"], bool):
            _fail(where, f"{f}.record", f"expected an integer or string, got {entry['record']!r}")
        if not isinstance(entry["reason"], str):
            _fail(where, f"{f}.reason", f"expected a string, got {entry['reason']!r}")
    if not isinstance(doc["rejected"], dict):
        _fail(where, "rejected", f"expected an object reason -> count, got {type(doc['rejected']).__name__}")
    for reason, n in doc["rejected"].items():
        _check_count(where, f"rejected.{reason}", n)


def manifest_to_json(manifest: Manifest, validate: bool = True) -> bytes:
    """The manifest's file bytes: sorted keys, indent 2, trailing newline, UTF-8.

    Raises:
        ManifestError: an invalid field (when ``validate``); TypeError for a config value
            that is not JSON-serialisable.
    """
    doc = {
        "format_version": manifest.format_version,
        "toolkit_version": manifest.toolkit_version,
        "seed": manifest.seed,
        "config": manifest.config,
        "codec": manifest.codec.value if hasattr(manifest.codec, "value") else manifest.codec,
        "counts": dict(manifest.counts),
        "shards": [dataclasses.asdict(s) for s in manifest.shards],
        "skipped": [dataclasses.asdict(s) for s in manifest.skipped],
        "rejected": dict(manifest.rejected),
    }
    if validate:
        _validate_doc(doc, MANIFEST_NAME)
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def manifest_from_json(data: bytes | str, where: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate manifest bytes.

    Raises:
        ManifestError: malformed JSON or an invalid field, naming ``where`` and the field.
    """
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{where}: not valid JSON: {err}") from err
    _validate_doc(doc, where)
    return Manifest(
        toolkit_version=doc["toolkit_version"],
        seed=doc["seed"],
        config=doc["config"],
        codec=doc["codec"],
        counts=doc["counts"],
        shards=tuple(ShardEntry(**e) for e in doc["shards"]),
        skipped=tuple(SkippedInput(**e) for e in doc["skipped"]),
        rejected=doc["rejected"],
        format_version=doc["format_version"],
    )


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Validate and write ``<directory>/manifest.json`` atomically.

    Returns:
        The manifest's path.

    Raises:
        ManifestError: an invalid field.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST_NAME
    data = manifest_to_json(manifest)
    write_bytes_atomic(path, data)
    return path


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate ``<directory>/manifest.json``.

    Raises:
        ManifestError: missing file, malformed JSON or an invalid field (message names the file
            and the field).
    """
    path = Path(directory) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (is {directory} a dataset directory, and did its run finish?)") from None
    return manifest_from_json(data, where=str(path))


def shard_digest_problem(path: str | Path, expected_sha256: str, manifest_path: str | Path = MANIFEST_NAME) -> str | None:
    """Hash one shard and compare it with the digest its manifest records.

    Args:
        path: the shard.
        expected_sha256: the manifest's ``sha256`` of it.
        manifest_path: named in the message.

    Returns:
        None when the file's SHA-256 matches; otherwise one line naming the shard and both
        digests (``"<shard>: sha256 does not match <manifest>: expected <hex>, the file has
        <hex> (damaged or changed after it was written)"``), or saying it is missing.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path}: missing (listed in {manifest_path})"
    digest = sha256_file(path)
    if digest != expected_sha256:
        return f"{path}: sha256 does not match {manifest_path}: expected {expected_sha256}, the file has {digest} (damaged or changed after it was written)"
    return None


def verify_shards(directory: str | Path, manifest: Manifest | None = None) -> list[str]:
    """Check that every shard the manifest lists exists with its recorded SHA-256.

    Args:
        directory: the dataset directory.
        manifest: default: read from ``directory``.

    Returns:
        Problems found, one line each naming the shard and, for a mismatch, the expected and
        actual digests (see :func:`shard_digest_problem`); empty when all is well.
    """

    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    problems = []
    for entry in manifest.shards:
        problem = shard_digest_problem(directory / entry.name, entry.sha256, directory / MANIFEST_NAME)
        if problem:
            problems.append(problem)
    return problems
