"""The one place that knows source kinds: spec parsing, work units, loading and iterating scenes.

Two spellings address scenes:

* ``KIND:PATH[@STEP]`` (:class:`SourceSpec`, :func:`load_scene`): one record of one file, as
  ``rap render`` takes it. Kinds: ``womd:`` a Waymo Open Motion Scenario TFRecord (``--record``
  picks the record), ``scenarionet:`` a ScenarioNet/MetaDrive scenario pickle or dataset folder
  (record k = k-th file), ``synthetic:SEED`` a town and expert log from the procedural world
  (the embedded default).
* ``KIND:PATH`` as a collection (:func:`list_units`, :func:`load_unit`, :func:`iter_scenes`):
  every record of a file or folder, as ``rap generate`` and ``rap eval`` take it;
  ``synthetic:N`` means seeds 0..N-1, ``synthetic:A-B`` seeds A to B (both included: towns
  kept apart from the ``synthetic:N`` ones, for held-out evaluation).

Paths must be regular files (or, where a folder is read, folders): a named pipe, a device or a
socket is refused up front, naming it, before any reader opens it (a FIFO would block forever);
inside a folder only regular files are listed.

Readers are imported lazily, so a source's heavy dependencies load only when it is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from rap.scene import Scene

# kind -> (module, loader function taking (path, record) and returning a Scene)
SOURCES: dict[str, tuple[str, str]] = {
    "womd": ("rap.sources.womd", "load_womd"),
    "scenarionet": ("rap.sources.scenarionet", "load_scenarionet"),
    "synthetic": ("rap.sources.synthetic.world", "load_synthetic"),
}
# Kinds whose "path" is not a file (synthetic:SEED is a seed of the procedural world).
GENERATED = {"synthetic"}
# Kinds whose records are not scenes: Waymo perception frames (camera images with 3D labels),
# which rap generate turns into paired real/raster samples (rap.augment.frame_pairs).
FRAME_KINDS = {"waymo-frame"}


def _unknown_kind(source: str, kind: str) -> ValueError:
    return ValueError(f"source {source!r}: unknown kind {kind!r}; known kinds: {', '.join(sorted(SOURCES))} (and for rap generate: {', '.join(sorted(FRAME_KINDS))})")


def _require_regular(path: str | Path) -> None:
    """Refuse a named pipe, device or socket (or folder) by its ``stat``, before opening it."""
    from rap.sources.tfrecord import require_regular_file

    require_regular_file(path)


def _check_input_path(kind: str, path: Path, *, folder_ok: bool) -> None:
    """The path exists and is a regular file, or a folder where ``folder_ok``.

    Raises:
        FileNotFoundError: it does not exist.
        ValueError: a folder where one file is expected, a named pipe, a device or a socket.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file" + (" or directory" if folder_ok else ""))
    if path.is_dir():
        if not folder_ok:
            raise ValueError(f"{path}: is a directory; {kind}:PATH here names one file (rap generate and rap eval navsim read folders)")
        return
    _require_regular(path)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``KIND:PATH[@STEP]`` string; ``step`` None means the scene's current step."""

    kind: str
    path: str
    step: int | None = None

    @staticmethod
    def parse(text: str) -> "SourceSpec":
        """Parse ``womd:data/file.tfrecord@40``.

        Raises:
            ValueError: naming the part that is wrong and the known source kinds.
        """
        kind, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ValueError(f"source {text!r}: expected KIND:PATH[@STEP] with KIND one of {sorted(SOURCES)}")
        if kind not in SOURCES:
            raise _unknown_kind(text, kind)
        path, step = rest, None
        if "@" in rest:
            head, _, tail = rest.rpartition("@")
            try:
                step = int(tail)
            except ValueError as exc:
                raise ValueError(f"source {text!r}: step after '@' must be an integer, got {tail!r}") from exc
            if step < 0:
                raise ValueError(f"source {text!r}: step must be >= 0, got {step}")
            path = head
        return SourceSpec(kind, path, step)


def load_scene(spec: SourceSpec, record: int = 0) -> Scene:
    """Load record ``record`` of the spec's file as a Scene.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a folder for ``womd:`` or a path that is not a regular file (a named pipe,
            a device), the step is outside the scene, or the reader's own errors.
    """
    module_name, func_name = SOURCES[spec.kind]
    loader = getattr(importlib.import_module(module_name), func_name)
    if spec.kind in GENERATED:
        if not spec.path.isdigit():
            raise ValueError(f"source {spec.kind}:{spec.path}: expected a non-negative integer seed")
        scene = loader(int(spec.path))
    else:
        path = Path(spec.path)
        _check_input_path(spec.kind, path, folder_ok=spec.kind == "scenarionet")
        if record < 0:
            raise ValueError(f"{spec.path}: record must be >= 0, got {record}")
        if path.is_dir():  # a scenarionet dataset folder: record k is its k-th file
            from rap.sources.scenarionet import scenarionet_files

            files = scenarionet_files(path)
            if record < len(files) and files[record].exists():
                _require_regular(files[record])
        try:
            scene = loader(spec.path, record)
        except IndexError as exc:  # the file has fewer records
            raise ValueError(str(exc)) from None
    if spec.step is not None and not 0 <= spec.step < scene.num_steps:
        raise ValueError(f"{spec.path}: step {spec.step} is outside the scene's {scene.num_steps} steps")
    return scene


# -- collections of scenes ----------------------------------------------------------------------
@dataclass(frozen=True)
class WorkUnit:
    """One input scene: ``record`` of ``path`` for the source ``kind``."""

    index: int
    kind: str
    path: str
    record: int
    offset: Optional[int] = None  # [bytes] TFRecord offset, for random access
    # Why this unit cannot be read, found while listing (a mapped file that is a named pipe or
    # a device); load_unit raises it, so the run skips and reports the unit instead of blocking.
    problem: Optional[str] = None

    @property
    def source(self) -> str:
        return f"{self.kind}:{self.path}"


def synthetic_seeds(source: str) -> list[int]:
    """The town seeds of ``synthetic:N`` (0..N-1) or ``synthetic:A-B`` (A to B, both included).

    Raises:
        ValueError: any other spelling, naming the source.
    """
    text = source.partition(":")[2]
    first, dash, last = text.partition("-")
    if dash and first.isdigit() and last.isdigit() and int(first) <= int(last):
        return list(range(int(first), int(last) + 1))
    if not dash and text.isdigit() and int(text) > 0:
        return list(range(int(text)))
    raise ValueError(f"source {source!r}: expected synthetic:N (a positive number of towns, seeds 0..N-1) or synthetic:A-B (seeds A to B, A <= B)")


def list_units(source: str) -> list[WorkUnit]:
    """Enumerate the work units of ``KIND:PATH`` (a file or a folder), in a stable order.

    Inside a folder only regular files are listed (a ``*.tfrecord`` named pipe is left out); a
    file that a scenarionet ``dataset_mapping.pkl`` names but that is a named pipe or a device
    becomes a unit whose loading raises that problem (skipped and reported, never opened).

    Raises:
        ValueError: unknown kind, no inputs, or a path that is not a regular file or folder (a
            named pipe, a device); FileNotFoundError: missing path.
    """
    kind, sep, path_text = source.partition(":")
    if not sep or not path_text:
        raise ValueError(f"source {source!r}: expected womd:PATH, scenarionet:DIR or synthetic:N")
    if kind == "synthetic":
        return [WorkUnit(i, kind, path_text, seed) for i, seed in enumerate(synthetic_seeds(source))]
    if kind not in SOURCES and kind not in FRAME_KINDS:
        raise _unknown_kind(source, kind)
    path = Path(path_text)
    _check_input_path(kind, path, folder_ok=True)
    units: list[WorkUnit] = []
    if kind in ("womd", "waymo-frame"):
        from rap.sources.tfrecord import index_records

        files = [path] if path.is_file() else sorted(p for p in path.rglob("*.tfrecord*") if p.is_file())
        for file in files:
            entries = index_records(file)
            if not entries:  # empty or unreadable framing: one unit that reports the problem
                units.append(WorkUnit(len(units), kind, str(file), 0, None))
            for entry in entries:
                units.append(WorkUnit(len(units), kind, str(file), entry.record, entry.offset))
    elif kind == "scenarionet":
        from rap.sources.scenarionet import scenarionet_files

        for k, file in enumerate(scenarionet_files(path)):
            problem = None
            if file != path and file.exists():  # a missing mapped file is reported when read
                try:
                    _require_regular(file)
                except ValueError as exc:
                    problem = str(exc)
            units.append(WorkUnit(len(units), kind, str(path), k, problem=problem))
    if not units:
        raise ValueError(f"source {source!r}: no input scenes found")
    return units


def load_frame_unit(unit: WorkUnit):
    """The unit's Waymo perception frame (:class:`rap.sources.waymo_frame.WaymoFrame`) of a
    ``waymo-frame:`` source; raises ValueError/OSError naming the file and record."""
    from rap.sources.tfrecord import RecordIndex, read_record_at
    from rap.sources.waymo_frame import frame_from_bytes

    if unit.problem is not None:
        raise ValueError(f"{unit.source} record {unit.record}: {unit.problem}")
    if unit.offset is None:
        raise ValueError(f"{unit.source}: no readable record (empty file or damaged framing)")
    payload = read_record_at(unit.path, RecordIndex(unit.record, unit.offset, 0))
    return frame_from_bytes(payload, path=unit.path, record=unit.record)


def load_unit(unit: WorkUnit) -> Scene:
    """The unit's scene (raises ValueError/OSError naming the file and record on bad input)."""
    if unit.problem is not None:
        raise ValueError(f"{unit.source} record {unit.record}: {unit.problem}")
    if unit.kind in FRAME_KINDS:
        raise ValueError(f"{unit.source} record {unit.record}: a perception frame, not a scene (rap generate pairs its images; see load_frame_unit)")
    if unit.kind == "womd" and unit.offset is not None:
        from rap.sources.tfrecord import RecordIndex, read_record_at
        from rap.sources.womd import scene_from_womd

        payload = read_record_at(unit.path, RecordIndex(unit.record, unit.offset, 0))
        return scene_from_womd(payload, path=unit.path, record=unit.record)
    module_name, func_name = SOURCES[unit.kind]
    loader = getattr(importlib.import_module(module_name), func_name)
    if unit.kind in GENERATED:
        return loader(unit.record)
    path = Path(unit.path)
    if path.exists() and not path.is_dir():  # folders' files were checked by list_units
        _require_regular(path)
    return loader(unit.path, unit.record)


def iter_scenes(source: str) -> Iterator[Scene]:
    """Every scene of ``KIND:PATH`` (see :func:`list_units`), loaded one at a time.

    Raises:
        ValueError / FileNotFoundError: a bad spec, or a scene that cannot be read.
    """
    for unit in list_units(source):
        yield load_unit(unit)
