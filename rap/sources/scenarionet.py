"""ScenarioNet / MetaDrive scenario pickles to :class:`rap.scene.Scene`.

ScenarioNet's converters (nuPlan, nuScenes, Waymo, Argoverse 2, MetaDrive's own procedural
"PG" maps) write one "scenario description" (SD) per ``.pkl`` file: a plain dict of builtin
containers and numpy arrays (metadrive/scenario/scenario_description.py, string constants in
metadrive/type.py ``MetaDriveType``). Files are read through :class:`SafeUnpickler`, an allow-list
unpickler, and converted here; every SD key and convention stays in this module.

Pickle allow-list (anything else raises :class:`RefusedGlobalError` naming the file and the
global, before the global is imported or called):

* builtins ``dict list tuple set frozenset int float complex bool str`` (``__builtin__`` and its
  ``long`` / ``unicode`` for protocol 0-2 pickles), ``collections.OrderedDict`` /
  ``defaultdict`` (ScenarioNet's per-file ``number_summary`` holds ``defaultdict(int)``);
* numpy array reconstruction: ``numpy.core.multiarray._reconstruct`` and
  ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``,
  ``numpy[._]core.multiarray.scalar`` and the numeric scalar types (``numpy.float32`` ...),
  ``numpy[._]core.numeric._frombuffer`` (what numpy writes for arrays under pickle protocol 5);
* ``_codecs.encode`` restricted to latin-1 (how protocol 0-2 pickles store bytes);
* ``metadrive.scenario[.scenario_description].ScenarioDescription`` (MetaDrive's dict subclass,
  found in pickles of unconverted ``export_scenarios`` output), rebuilt as a plain dict.

Limits (a file of a few KB passes the allow-list and can still describe terabytes; everything
below is refused with :class:`ScenarioNetLimitError`, naming the file, the field where it is known
and the limit, before the memory is allocated):

* What one pickle may build, its budget (:func:`pickle_budget`): ``max(MIN_PICKLE_BUDGET,
  PICKLE_BUDGET_FACTOR x file size)`` = max(64 MiB, 1000 x the file size), at most
  ``MAX_DENSE_BYTES`` = 2 GiB. Real files are numpy arrays stored raw, so they expand by a small
  factor (float32 -> float64: 2, shared strings in ``object_state`` lists: ~30); 1000 leaves
  room and still stops a 4 KB file at 64 MiB.
* While unpickling, every allow-listed global that can allocate is replaced by a checked
  stand-in: numpy arrays (``ndarray(shape, ...)``, ``_reconstruct``, ``_frombuffer``, and the
  ``BUILD`` state of an array) are charged elements x max(8, itemsize) bytes (an object element
  64) before they exist, whatever their buffer or strides (a zero-stride view of 8 bytes still
  counts as the copy the converter would make); an array state must hold exactly as many
  elements as its shape (numpy crashes on an object array state that holds fewer); containers
  built by calling ``list`` / ``tuple`` / ``set`` / ``frozenset`` / ``dict`` / ``OrderedDict`` /
  ``defaultdict`` are charged 64 bytes per item (112 per row of an array); ``str`` may only
  decode text, numpy scalar types only take scalars.
* After unpickling, the object graph is measured as if every shared reference were a copy (it is,
  once converted): a list of 10 references to a list of 10 ... of floats counts every leaf.
  Numbers 8 bytes, str 4 per character, bytes 1 per byte, arrays as above, containers the sum of
  their items. Above the budget it is refused, naming the field holding most of it; nesting
  deeper than ``MAX_DEPTH`` = 64 containers (scenario files nest 6) and self-referencing
  containers are refused too.
* More tracks + map features + light states than ``ELEMENT_ALLOWANCE`` = 1024 plus one per
  ``MIN_ELEMENT_FILE_BYTES`` = 64 bytes of the file (real elements take hundreds of bytes each;
  one object referenced under many keys takes a few, and converting costs ~0.2 ms per element:
  a 2 MB file of shared references would take a minute of CPU).
* ``length`` above ``MAX_STEPS`` = 100 000 steps, and dense (agents, steps) / (lights, steps)
  arrays above the file's budget (80 / 4 bytes per cell; ``MAX_DENSE_BYTES`` for a dict given
  in memory), are refused before the timestamps and arrays are made. A traffic-light state list
  shared by several lights is converted once; lane-width distances are computed in chunks.

Field mapping (``T`` = ``length``; required fields raise when missing, optional ones as stated):

* ``id`` (required) -> ``Scene.scene_id``; ``length`` (required, int >= 1) -> number of steps;
  ``Scene.source`` is ``"scenarionet:<file>"``. ``version`` is not read.
* ``metadata`` (required dict): ``sdc_id`` (required, a key of ``tracks``) ->
  ``Scene.ego_index``; ``ts`` (alias ``timestep``; (T,) finite, strictly increasing [s]) ->
  ``Scene.timestamps``, or when absent ``sample_rate`` [s] (else ``DEFAULT_TIMESTEP`` = 0.1 s,
  ScenarioNet's unified rate) times 0..T-1; ``current_time_index`` (Waymo, AV2) ->
  ``Scene.current_index``, 0 when absent (where MetaDrive starts replay); ``dataset`` selects the
  two dataset-specific corrections below. ``coordinate`` is not read: current converters all
  write right-handed x/y/z, and MetaDrive no longer transforms by this field.
* ``tracks`` {object id: track} -> ``AgentTracks`` rows in dict order:

  - ``type``: ``VEHICLE``, ``PEDESTRIAN``, ``CYCLIST``, ``OTHER``, ``UNSET`` -> the same
    ``AgentType``; static objects ``TRAFFIC_CONE``, ``TRAFFIC_BARRIER``, ``TRAFFIC_OBJECT`` ->
    ``OTHER``; any other value raises.
  - ``state.position`` (T, 2 or 3) and ``state.heading`` (T,) or (T, 1) are required;
    ``state.valid`` (T,) bool or 0/1 numbers, all True when absent; ``state.velocity`` (T, 2 or
    3, xy used) [m/s], when absent finite differences of the positions over consecutive valid
    steps (0 at isolated steps); ``state.length`` / ``width`` / ``height`` (T,) or (T, 1) [m],
    when absent ``DEFAULT_BOX_SIZE`` of the agent type. Other state keys are not read.
  - Box convention: MetaDrive positions are box centres in xy. Where ``position`` has no z, or z
    is exactly 0 at every valid step (nuPlan, Argoverse 2 and the nuScenes SDC are written at
    z = 0, the ground), the box stands on z = 0: centre z = height / 2. Otherwise z is the box
    centre (Waymo, nuScenes agents). ``rear_axle_offset`` (centre to rear axle) is
    ``REAR_AXLE_RATIO`` (NAVSIM's vehicle, as in :mod:`rap.sources.womd`) times the median valid
    length for vehicles, 0 for all other agents.
  - ``dataset == "nuscenes"``: the SDC (``"ego"``) position is the nuScenes ego pose, the rear
    axle, not the box centre; it is moved forward by ``rear_axle_offset`` along the heading.
  - Values at invalid steps are replaced by 0. NaN or inf at a valid step, a negative size at a
    valid step, or an array of the wrong length raises, naming the track and field.
* ``map_features`` {feature id: feature} (optional, empty when absent), by ``type``:

  - ``LANE_SURFACE_STREET`` / ``LANE_FREEWAY`` / ``LANE_BIKE_LANE`` / ``LANE_UNKNOWN`` ->
    ``Lanes`` (``SURFACE_STREET`` / ``FREEWAY`` / ``BIKE_LANE`` / ``UNDEFINED``);
    ``LANE_SURFACE_UNSTRUCTURE`` (nuScenes lane connectors, intersections) -> ``SURFACE_STREET``
    with ``interpolating`` True. ``polyline`` (N, 2 or 3) required (``dataset == "nuscenes"``:
    the third column is the lane yaw from ``discretize_lane``, so z = 0); ``entry_lanes`` ->
    predecessors, ``exit_lanes`` -> successors, ``left_neighbor`` / ``right_neighbor`` (lists of
    ids or of dicts with ``feature_id``) -> neighbours, each () when absent; ``interpolating``
    (bool, False when absent); ``speed_limit_mph``, else ``speed_limit_kmh``, -> ``speed_limit``
    [m/s] with ``has_speed_limit`` = given and > 0; ``polygon`` (N, 2 or 3), the lane surface
    (nuPlan, nuScenes), optional.
  - Lane ``width``: (1) from ``left_boundaries`` / ``right_boundaries`` (dicts with
    ``boundary_feature_id``, ``lane_start_index``, ``lane_end_index``; Waymo) exactly as
    :mod:`rap.sources.womd` derives it; else (2) twice the median distance from the
    centerline to the lane ``polygon``; else (3) the median of ``width[:, 0] + width[:, 1]``
    where both are > 0 (the (N, 2) per-point distances ScenarioNet's Waymo converter stores);
    else ``DEFAULT_LANE_WIDTH``. Clamped to [``MIN_LANE_WIDTH``, ``MAX_LANE_WIDTH``].
  - ``ROAD_LINE_<RoadLineType name>`` and ``UNKNOWN_LINE`` -> ``road_lines``;
    ``ROAD_EDGE_BOUNDARY`` / ``ROAD_EDGE_MEDIAN`` / ``UNKNOWN`` (MetaDrive's unknown edge) ->
    ``road_edges``; ``polyline`` (N, 2 or 3) required. The format is ambiguous here:
    ScenarioNet's Waymo converter also writes ``UNKNOWN`` for road lines of unknown type, and
    they become ``RoadEdgeType.UNKNOWN`` edges, as MetaDrive reads them. nuPlan / nuScenes road
    outlines arrive as ``ROAD_LINE_SOLID_SINGLE_WHITE`` lines and are kept as such.
  - ``CROSSWALK`` / ``SPEED_BUMP`` / ``DRIVEWAY`` -> ``crosswalks`` / ``speed_bumps`` /
    ``driveways`` from ``polygon`` (``polyline`` if there is no polygon); a repeated closing
    point is dropped, 3 distinct corners are needed.
  - ``STOP_SIGN`` -> ``stop_signs``: ``position`` (2 or 3,) required, ``lane`` (list of ids)
    optional.
  - Any other type (``ROAD_EDGE_SIDEWALK``, ``BUILDING``, ...) is ignored (forward
    compatibility); a feature without a string ``type`` raises.
* ``dynamic_map_states`` {id: state} (optional) -> ``TrafficLights``, one row per entry of type
  ``TRAFFIC_LIGHT`` (others are ignored): ``lane`` (the entry's key when absent or None) ->
  ``lane_ids``; ``stop_point`` (2 or 3,) required -> ``stop_points``; ``state.object_state`` (T,)
  -> ``states`` / ``valid``: ``LANE_STATE_<LightState name>`` -> that state, valid (as WOMD,
  ``LANE_STATE_UNKNOWN`` is an observed UNKNOWN); ``TRAFFIC_LIGHT_RED`` / ``_YELLOW`` /
  ``_GREEN`` (nuPlan) -> ``STOP`` / ``CAUTION`` / ``GO``, valid; ``TRAFFIC_LIGHT_UNKNOWN`` (what
  ScenarioNet's nuPlan converter fills unobserved steps with) and None -> UNKNOWN, not valid;
  integers 0..8 (old Waymo exports) -> that ``LightState``, valid.
* Ids: object and feature ids are strings (or ints) in SD files. An id that is a non-negative
  decimal integer below 2**63 keeps its value; any other id (nuScenes tokens, ``"ego"``,
  ``"AV"``, ``"boundary_3"``) is numbered -1, -2, ... in the order first met, so the two kinds
  never collide. Track keys are numbered on their own; map ids are met in the order map feature
  keys, lane / stop-sign references, traffic-light lanes. References to features that are not
  in the file keep their ids and are ignored by the derived geometry. The original strings are
  not kept in the Scene.

Derived geometry, as for WOMD (see :mod:`rap.sources.womd`): ``stop_lines`` across each
traffic-light lane at its stop point and at the start of each stop-sign lane; ``drivable_area``
from :func:`rap.sources.derived.derive_drivable_area` (non-bike lanes buffered by their width, the
faces road edges enclose, driveways), with the non-bike lane ``polygon`` surfaces (nuPlan,
nuScenes) added to its driveway input so they are part of the area too.

Checked on the shipped WOMD scenario (data/waymo/womd_scenario_637f20cafde22ff8.tfrecord) written
in ScenarioNet's Waymo schema: the Scene matches :func:`rap.sources.womd.load_womd`'s to float32
precision (tracks, lanes and widths, lines, lights, stop lines, drivable area).

Directory layout: a ScenarioNet dataset folder holds ``dataset_summary.pkl`` (per-file
metadata, not read) and ``dataset_mapping.pkl`` ({file name: folder relative to the dataset}),
with the scenario files beside them or in sub-folders (``scenarionet combine`` / ``convert`` with
several workers). Mapped (and walked) files must resolve inside the dataset folder; a folder
without scenarios is an error, not an empty dataset; a listed path that is not a regular file
(a folder, a named pipe, a device) is refused before it is opened for reading. See
:func:`scenarionet_files`.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import functools
import importlib
import io
import itertools
import math
import os
import pickle
import re
import reprlib
import stat
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import numpy as np

from rap import geometry
from rap.scene import (
    AgentTracks,
    AgentType,
    Lanes,
    LaneType,
    LightState,
    LineSet,
    MapElements,
    PolygonSet,
    Polylines,
    RoadEdgeType,
    RoadLineType,
    Scene,
    StopSigns,
    TrafficLights,
)
from rap.sources.derived import (
    DEFAULT_LANE_WIDTH,
    MAX_LANE_WIDTH,
    MIN_LANE_WIDTH,
    MPH_TO_MPS,
    REAR_AXLE_RATIO,
    derive_drivable_area,
    stop_lines,
)

__all__ = [
    "SUMMARY_FILE",
    "MAPPING_FILE",
    "DEFAULT_TIMESTEP",
    "DEFAULT_BOX_SIZE",
    "KMH_TO_MPS",
    "MAX_STEPS",
    "MAX_DENSE_BYTES",
    "MIN_PICKLE_BUDGET",
    "PICKLE_BUDGET_FACTOR",
    "MAX_DEPTH",
    "MIN_ELEMENT_FILE_BYTES",
    "ELEMENT_ALLOWANCE",
    "ScenarioNetError",
    "ScenarioNetLimitError",
    "BadPickleError",
    "RefusedGlobalError",
    "pickle_budget",
    "SafeUnpickler",
    "safe_load",
    "scene_from_scenarionet",
    "load_scenarionet",
    "iter_scenarionet",
    "scenarionet_files",
]

SUMMARY_FILE = "dataset_summary.pkl"  # ScenarioDescription.DATASET.SUMMARY_FILE
MAPPING_FILE = "dataset_mapping.pkl"  # ScenarioDescription.DATASET.MAPPING_FILE
DEFAULT_TIMESTEP = 0.1  # [s] ScenarioNet resamples every dataset to 10 Hz.
KMH_TO_MPS = 1.0 / 3.6  # [m/s per km/h]

# Limits (see "Limits" in the module docs).
MAX_STEPS = 100_000  # steps of one scenario (2.8 h at 10 Hz; datasets have 91 to ~300)
MAX_DENSE_BYTES = 2 * 2**30  # [bytes] (agents, steps) and (lights, steps) arrays, and any budget
MIN_PICKLE_BUDGET = 64 * 2**20  # [bytes] what any pickle may build
PICKLE_BUDGET_FACTOR = 1000  # what a pickle may build, per byte of the file
MAX_DEPTH = 64  # nesting of containers (scenario files nest 6 deep)
_TRACK_CELL_BYTES = 80  # [bytes] per (agent, step): 9 float64 channels, valid, temporaries
# Each track, map feature and light state of a real file takes hundreds of bytes of it (its own
# arrays); one object referenced under many keys takes a few. Converting costs ~0.2 ms of CPU
# per element, so a file may hold at most ELEMENT_ALLOWANCE + its size / MIN_ELEMENT_FILE_BYTES.
MIN_ELEMENT_FILE_BYTES = 64  # [bytes]
ELEMENT_ALLOWANCE = 1024
_ELEMENT_FIELDS = ("tracks", "map_features", "dynamic_map_states")
_LIGHT_CELL_BYTES = 4  # [bytes] per (light, step): state, valid, and their copies

# (length, width, height) [m] for tracks without box sizes.
DEFAULT_BOX_SIZE: dict[AgentType, tuple[float, float, float]] = {
    AgentType.VEHICLE: (4.5, 2.0, 1.6),
    AgentType.PEDESTRIAN: (0.5, 0.5, 1.75),
    AgentType.CYCLIST: (2.0, 0.7, 1.7),
    AgentType.OTHER: (1.0, 1.0, 1.0),
    AgentType.UNSET: (1.0, 1.0, 1.0),
}

_AGENT_TYPES = {
    "UNSET": AgentType.UNSET,
    "VEHICLE": AgentType.VEHICLE,
    "PEDESTRIAN": AgentType.PEDESTRIAN,
    "CYCLIST": AgentType.CYCLIST,
    "OTHER": AgentType.OTHER,
    "TRAFFIC_CONE": AgentType.OTHER,
    "TRAFFIC_BARRIER": AgentType.OTHER,
    "TRAFFIC_OBJECT": AgentType.OTHER,
}
# type -> (LaneType, interpolating)
_LANE_TYPES = {
    "LANE_UNKNOWN": (LaneType.UNDEFINED, False),
    "LANE_FREEWAY": (LaneType.FREEWAY, False),
    "LANE_SURFACE_STREET": (LaneType.SURFACE_STREET, False),
    "LANE_SURFACE_UNSTRUCTURE": (LaneType.SURFACE_STREET, True),
    "LANE_BIKE_LANE": (LaneType.BIKE_LANE, False),
}
_ROAD_LINE_TYPES = {f"ROAD_LINE_{t.name}": t for t in RoadLineType if t != RoadLineType.UNKNOWN}
_ROAD_LINE_TYPES["UNKNOWN_LINE"] = RoadLineType.UNKNOWN
_ROAD_EDGE_TYPES = {
    "ROAD_EDGE_BOUNDARY": RoadEdgeType.BOUNDARY,
    "ROAD_EDGE_MEDIAN": RoadEdgeType.MEDIAN,
    "UNKNOWN": RoadEdgeType.UNKNOWN,
}
_AREA_KINDS = {"CROSSWALK": "crosswalks", "SPEED_BUMP": "speed_bumps", "DRIVEWAY": "driveways"}
# object_state value -> (LightState, valid)
_LIGHT_STATES: dict[str, tuple[LightState, bool]] = {
    f"LANE_STATE_{s.name}": (s, True) for s in LightState
}
_LIGHT_STATES.update(
    {
        "TRAFFIC_LIGHT_RED": (LightState.STOP, True),
        "TRAFFIC_LIGHT_YELLOW": (LightState.CAUTION, True),
        "TRAFFIC_LIGHT_GREEN": (LightState.GO, True),
        "TRAFFIC_LIGHT_UNKNOWN": (LightState.UNKNOWN, False),
    }
)
_INT_ID = re.compile(r"0|[1-9][0-9]*")
_DISTANCE_CHUNK = 2**20  # (points x segments) per chunk of lane width computations
_INT64_MAX = 2**63 - 1


# ----------------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------------


class ScenarioNetError(ValueError):
    """A ScenarioNet file that cannot be read or converted.

    Attributes:
        path: The file.
        field: The offending field (e.g. ``"tracks['12'].state.heading[40]"``), or None when the
            file as a whole is bad.
    """

    def __init__(self, message: str, *, path: str, field: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.field = field

    def __reduce__(self):  # Picklable across processes, attributes and subclass kept.
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


def _restore_error(cls: type, args: tuple, attributes: dict) -> ScenarioNetError:
    err = Exception.__new__(cls)
    err.args = args
    err.__dict__.update(attributes)
    return err


class BadPickleError(ScenarioNetError):
    """The file is not a readable pickle (truncated, corrupt, or refused by the allow-list)."""


class RefusedGlobalError(BadPickleError):
    """The pickle references a global outside the allow-list; nothing of it was imported or run.

    Attributes:
        module: Module of the refused global, as written in the pickle.
        name: Its name.
    """

    def __init__(self, path: str, module: str, name: str) -> None:
        super().__init__(
            f"{path}: refused global {module}.{name} (ScenarioNet pickles may only hold builtin "
            "containers and numpy arrays)",
            path=path,
        )
        self.module = module
        self.name = name


class ScenarioNetLimitError(ScenarioNetError):
    """The file implies more than a limit allows (see "Limits" in the module docs): refused
    before the memory is allocated.

    Attributes:
        value: What the file implies (bytes, steps, levels), as the message says.
        limit: The limit it exceeds, in the same unit.
    """

    def __init__(
        self, message: str, *, path: str, field: str | None = None, value: int = 0, limit: int = 0
    ) -> None:
        super().__init__(message, path=path, field=field)
        self.value = value
        self.limit = limit


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel = 3
_BRIEF.maxstring = _BRIEF.maxother = _BRIEF.maxlong = 200
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_BRIEF, _name, 10)


def _brief(value: Any) -> str:
    """A bounded repr for messages (a file's values may be huge, deep or self-referencing)."""
    try:
        return _BRIEF.repr(value)
    except Exception:  # noqa: BLE001 (any failure of a repr: e.g. an int beyond the digit limit)
        return f"<{type(value).__name__}>"


class _Where:
    """Formats errors as '<path> scenario <id>: <field> <problem>'."""

    def __init__(self, path: str, scene_id: str | None = None) -> None:
        self.path = path
        self.prefix = path if scene_id is None else f"{path} scenario {scene_id!r}"

    def error(self, field: str, problem: str) -> ScenarioNetError:
        return ScenarioNetError(f"{self.prefix}: {field} {problem}", path=self.path, field=field)

    def limit(self, field: str, problem: str, value: int, limit: int) -> ScenarioNetLimitError:
        return ScenarioNetLimitError(
            f"{self.prefix}: {field} {problem}", path=self.path, field=field, value=value,
            limit=limit,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Allow-list unpickler.
# ----------------------------------------------------------------------------------------------


def _human(num_bytes: float) -> str:
    """A byte count for messages: ``"7.2 GB"``, ``"64 MiB"`` style with binary units."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError  # unreachable


def pickle_budget(file_size: int) -> int:
    """Bytes a pickle of ``file_size`` bytes may reconstruct: ``max(MIN_PICKLE_BUDGET,
    PICKLE_BUDGET_FACTOR * file_size)``, at most ``MAX_DENSE_BYTES`` (see "Limits")."""
    return min(MAX_DENSE_BYTES, max(MIN_PICKLE_BUDGET, PICKLE_BUDGET_FACTOR * max(0, file_size)))


class _ScenarioDescription(dict):
    """Stands in for MetaDrive's ``ScenarioDescription`` (a dict subclass with no own state).

    Pickles build it with ``NEWOBJ`` and ``SETITEMS``; calling it with arguments (``REDUCE``)
    would copy an arbitrary iterable and is refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise pickle.UnpicklingError("ScenarioDescription() takes no arguments in a pickle")
        super().__init__()


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes (latin-1 only)."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode allowed only for latin-1, got {encoding!r}")
    return codecs.encode(obj, "latin1")


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object, the only globals :class:`SafeUnpickler` resolves.

    :class:`SafeUnpickler` hands out guarded stand-ins for those that can allocate (see
    :class:`_Guard`); ``int float complex bool``, ``numpy.dtype``, ``_codecs.encode`` and
    ``ScenarioDescription`` are given as they are.
    """
    allowed: dict[tuple[str, str], Any] = {}
    builtin_types = (dict, list, tuple, set, frozenset, int, float, complex, bool, str)
    for t in builtin_types:
        allowed[("builtins", t.__name__)] = t
        allowed[("__builtin__", t.__name__)] = t
    allowed[("__builtin__", "long")] = int
    allowed[("__builtin__", "unicode")] = str
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("_codecs", "encode")] = _latin1_encode
    for module in ("metadrive.scenario.scenario_description", "metadrive.scenario"):
        allowed[(module, "ScenarioDescription")] = _ScenarioDescription

    # numpy 2 keeps these in numpy._core, numpy 1 in numpy.core; pickles name either.
    multiarray, numeric = _numpy_core()
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    scalar_names = (
        "bool_", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "intc", "uintc", "longlong", "ulonglong", "float16", "float32", "float64", "longdouble",
        "complex64", "complex128", "clongdouble", "str_", "bytes_",
    )  # fmt: skip
    for name in scalar_names:
        t = getattr(np, name, None)
        if isinstance(t, type) and issubclass(t, np.generic):
            allowed[("numpy", name)] = t
    return allowed


@functools.cache
def _numpy_core() -> tuple[Any, Any]:
    try:
        return (
            importlib.import_module("numpy._core.multiarray"),
            importlib.import_module("numpy._core.numeric"),
        )
    except ImportError:  # numpy < 2
        return (
            importlib.import_module("numpy.core.multiarray"),
            importlib.import_module("numpy.core.numeric"),
        )


# Globals given as they are: calling them cannot allocate more than their (pickle-bounded)
# arguments (int("9" * n) is capped by Python's 4300-digit limit).
_UNGUARDED = (int, float, complex, bool, np.dtype, _latin1_encode, _ScenarioDescription)
_SCALAR_ARGS = (type(None), bool, int, float, complex, str, bytes, np.generic)
_PY_OBJECT_BYTES = 64  # [bytes] charged per Python object a call creates (list(x), tuple(x), ...)
_ARRAY_ROW_BYTES = 112  # [bytes] charged per row object list(array) creates (a view or scalar)


def _cell_bytes(dtype: np.dtype) -> int:
    """Bytes charged per array element: at least 8 (the float64 the converter makes of it)."""
    return _PY_OBJECT_BYTES if dtype.hasobject else max(8, dtype.itemsize)


def _shape(value: Any) -> tuple[int, ...]:
    """A numpy shape argument as a tuple of ints >= 0 (raises UnpicklingError otherwise)."""
    if type(value) is tuple and all(type(d) is int and d >= 0 for d in value):
        return value
    dims = value if isinstance(value, (tuple, list)) else (value,)
    out = []
    for d in dims:
        if not isinstance(d, (int, np.integer)) or isinstance(d, (bool, np.bool_)) or d < 0:
            raise pickle.UnpicklingError(f"bad numpy shape {_brief(value)}")
        out.append(int(d))
    return tuple(out)


def _as_dtype(value: Any) -> np.dtype:
    if isinstance(value, _Guard):
        value = value.target
    try:
        return np.dtype(value.decode("latin1") if isinstance(value, bytes) else value)
    except (TypeError, ValueError) as e:
        raise pickle.UnpicklingError(f"bad numpy dtype {_brief(value)} ({e})") from None


class _Guard:
    """Stand-in for an allow-listed global that can allocate: calls are checked and their result
    charged to the load's budget before anything is built. Not a type, so ``NEWOBJ`` (which
    calls ``cls.__new__`` directly) refuses it."""

    def __init__(self, target: Any, call: Callable[..., Any]) -> None:
        self.target = target
        self._call = call

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def __repr__(self) -> str:
        return f"<guarded {getattr(self.target, '__qualname__', self.target)!r}>"


class _PendingArray(np.ndarray):
    """What the guarded ``_reconstruct`` / ``ndarray`` / ``_frombuffer`` build: an ndarray whose
    ``__setstate__`` (pickle's ``BUILD``) checks the state against the budget and its data first
    (numpy crashes on an object array whose state lists fewer elements than its shape). Each load
    makes a subclass bound to its unpickler; :meth:`SafeUnpickler.load` replaces these arrays by
    plain ndarray views in dicts, lists and object arrays."""

    _unpickler: SafeUnpickler

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("bad numpy array state")
        shape, dtype, _, raw = state[-4:]
        shape = _shape(shape)
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"bad numpy array state dtype {_brief(dtype)}")
        self._unpickler._charge_array(shape, dtype)
        size = math.prod(shape)
        if dtype.hasobject:
            if not isinstance(raw, list) or len(raw) != size:
                got = f"{len(raw)} values" if isinstance(raw, list) else type(raw).__name__
                raise BadPickleError(
                    f"{self._unpickler.path}: numpy object array of shape {shape} ({size} elements)"
                    f" has {got} in its pickled state",
                    path=self._unpickler.path,
                )
        elif not isinstance(raw, (bytes, bytearray, str)):
            raise pickle.UnpicklingError(f"bad numpy array data {type(raw).__name__}")
        np.ndarray.__setstate__(self, state)


class SafeUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only allow-listed globals and bounds what it builds
    (see module docs, "Pickle allow-list" and "Limits").

    A refused global raises :class:`RefusedGlobalError` from ``find_class``, before the global
    is imported, so no code named by the pickle runs. Persistent ids are refused too. Numpy
    arrays, numpy scalars and the containers built by calling a global are checked before they
    are allocated and charged to ``max_bytes``; after loading, the whole object graph is measured
    as if every shared reference were a copy (nested shared lists count every leaf) and refused
    when it expands beyond ``max_bytes`` or nests deeper than ``MAX_DEPTH``; both raise
    :class:`ScenarioNetLimitError`.

    Args:
        file: Binary file object positioned at the pickle.
        path: The file's name, for error messages.
        max_bytes: The budget; by default :func:`pickle_budget` of the file's size (of what is
            left of it after the current position when it has no file descriptor).
    """

    def __init__(
        self,
        file: BinaryIO,
        *,
        path: str | os.PathLike = "<memory>",
        max_bytes: int | None = None,
    ) -> None:
        super().__init__(file)
        self.path = os.fspath(path)
        self.file_size = _stream_size(file)
        self.max_bytes = pickle_budget(self.file_size) if max_bytes is None else int(max_bytes)
        self.charged = 0  # [bytes] what checked calls have built so far
        self._pending = type("_PendingArray", (_PendingArray,), {"_unpickler": self})
        self._guards: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise RefusedGlobalError(self.path, module, name)
        if any(obj is t for t in _UNGUARDED):
            return obj
        if (module, name) not in self._guards:
            self._guards[(module, name)] = _Guard(obj, self._checked_call(obj, f"{module}.{name}"))
        return self._guards[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise BadPickleError(f"{self.path}: persistent ids are not allowed", path=self.path)

    def load(self) -> Any:
        obj = super().load()
        return _check_graph(obj, self)

    # -- budget --------------------------------------------------------------------------------

    def _limit_error(self, what: str, need: int) -> ScenarioNetLimitError:
        return ScenarioNetLimitError(
            f"{self.path}: {what} needs {_human(need)}, more than the limit of "
            f"{_human(self.max_bytes)} for this {_human(self.file_size)} file "
            f"(max({_human(MIN_PICKLE_BUDGET)}, {PICKLE_BUDGET_FACTOR} x the file size), at most "
            f"{_human(MAX_DENSE_BYTES)})",
            path=self.path,
            field=None,
            value=need,
            limit=self.max_bytes,
        )

    def _charge(self, num_bytes: int, what: str) -> None:
        if self.charged + num_bytes > self.max_bytes:
            raise self._limit_error(what, self.charged + num_bytes)
        self.charged += num_bytes

    def _charge_array(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        num_bytes = math.prod(shape) * _cell_bytes(dtype)
        if self.charged + num_bytes > self.max_bytes:  # (the message is made only when needed)
            what = f"numpy array of shape {shape} {dtype}"
            raise self._limit_error(what, self.charged + num_bytes)
        self.charged += num_bytes

    def _checked_call(self, target: Any, name: str) -> Callable[..., Any]:
        multiarray, numeric = _numpy_core()
        pending = self._pending

        def unwrap(args: tuple) -> tuple:
            return tuple(a.target if isinstance(a, _Guard) else a for a in args)

        if target is np.ndarray:

            def ndarray(shape: Any, dtype: Any = float, *rest: Any) -> np.ndarray:
                dt = _as_dtype(dtype)
                self._charge_array(_shape(shape), dt)
                return np.ndarray(_shape(shape), dt, *unwrap(rest)).view(pending)

            return ndarray
        if target is multiarray._reconstruct:

            def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
                if not (subtype is np.ndarray or getattr(subtype, "target", None) is np.ndarray):
                    raise pickle.UnpicklingError(f"_reconstruct of {_brief(subtype)}")
                dt = _as_dtype(dtype)
                self._charge_array(_shape(shape), dt)
                return multiarray._reconstruct(pending, _shape(shape), dt)

            return reconstruct
        if target is numeric._frombuffer:

            def frombuffer(buf: Any, dtype: Any, shape: Any, *rest: Any) -> np.ndarray:
                if not isinstance(buf, (bytes, bytearray)):
                    raise pickle.UnpicklingError(f"_frombuffer of {type(buf).__name__}")
                dt = _as_dtype(dtype)
                self._charge_array(_shape(shape), dt)
                return numeric._frombuffer(buf, dt, _shape(shape), *unwrap(rest)).view(pending)

            return frombuffer
        if target is multiarray.scalar:

            def scalar(dtype: Any, *rest: Any) -> Any:
                if not isinstance(dtype, np.dtype):
                    raise pickle.UnpicklingError(f"numpy scalar of {_brief(dtype)}")
                self._charge(_cell_bytes(dtype), f"numpy scalar {dtype}")
                return multiarray.scalar(dtype, *unwrap(rest))

            return scalar
        if isinstance(target, type) and issubclass(target, np.generic):

            def numpy_scalar(*args: Any) -> Any:
                if not all(isinstance(a, _SCALAR_ARGS) for a in args):
                    raise pickle.UnpicklingError(f"{name}() of a non-scalar")
                self._charge(sum(len(a) if isinstance(a, (str, bytes)) else 8 for a in args),
                             name)  # fmt: skip
                return target(*args)

            return numpy_scalar
        if target is str:

            def text(*args: Any) -> str:
                if args and not isinstance(args[0], (str, bytes, bytearray)):
                    raise pickle.UnpicklingError(f"{name}() of a {type(args[0]).__name__}")
                return str(*args)

            return text

        # Containers (list tuple set frozenset dict OrderedDict defaultdict): copying an array
        # or a container makes one object per element.
        def container(*args: Any) -> Any:
            args = unwrap(args)
            for a in args:
                if isinstance(a, np.ndarray):
                    rows = a.shape[0] if a.ndim else 1
                    self._charge(rows * _ARRAY_ROW_BYTES, f"{name}() of a numpy array")
                elif not isinstance(a, type) and hasattr(a, "__len__"):
                    self._charge(len(a) * _PY_OBJECT_BYTES, f"{name}() of {len(a)} items")
            return target(*args)

        return container


def _stream_size(file: BinaryIO) -> int:
    """Bytes in ``file`` (its whole size with a file descriptor, else from here to its end)."""
    try:
        return os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    try:
        here = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(here)
        return max(0, end - here)
    except (AttributeError, OSError, ValueError):
        return 0


def _leaf_bytes(obj: Any) -> int:
    """Expanded bytes of an object without children (see :func:`_check_graph`)."""
    if isinstance(obj, str):
        return max(8, 4 * len(obj))  # numpy keeps str as UCS-4
    if isinstance(obj, (bytes, bytearray)):
        return max(8, len(obj))
    if isinstance(obj, int):
        return max(8, (obj.bit_length() + 7) // 8)
    if isinstance(obj, np.ndarray):
        return obj.size * _cell_bytes(obj.dtype)
    if isinstance(obj, np.generic):
        return max(8, obj.nbytes)
    return 8


def _is_container(obj: Any) -> bool:
    return isinstance(obj, (dict, list, tuple, set, frozenset)) or (
        isinstance(obj, np.ndarray) and obj.dtype.hasobject
    )


def _object_elements(arr: np.ndarray) -> list[Any]:
    """The Python objects an object (or structured, with object fields) array holds."""
    if arr.dtype.fields is None:
        return arr.reshape(-1).tolist() if arr.ndim != 1 else list(arr)
    return [v for name in arr.dtype.names if arr.dtype[name].hasobject
            for v in arr[name].reshape(-1).tolist()]  # fmt: skip


def _key_of(parent: Any, child: Any) -> Any:
    """How ``parent`` holds ``child`` (found by identity; only used to name a field)."""
    if isinstance(parent, dict):
        for k, v in parent.items():
            if v is child:
                return k
        return ("key", next((k for k in parent if k is child), None))
    if isinstance(parent, (list, tuple)):
        return next((i for i, v in enumerate(parent) if v is child), "?")
    if isinstance(parent, np.ndarray):
        return next((i for i, v in enumerate(_object_elements(parent)) if v is child), "?")
    return "{}"


def _field_name(keys: list[Any]) -> str:
    """``tracks['0'].state.position`` from the keys on the way down."""
    out = ""
    for key in keys:
        if isinstance(key, tuple) and key[:1] == ("key",):
            out += f"{{key {_brief(key[1])}}}"
        elif key == "{}":
            out += "{...}"
        elif isinstance(key, str) and key.isidentifier():
            out += f".{key}" if out else key
        else:
            out += f"[{_brief(key)}]"
    return out or "top level"


def _field_of(chain: list[Any]) -> tuple[str, list[Any]]:
    """The field name of the last object of ``chain`` (root first), and its keys."""
    keys = [_key_of(parent, child) for parent, child in itertools.pairwise(chain)]
    return _field_name(keys), keys


def _check_graph(root: Any, unpickler: SafeUnpickler) -> Any:
    """Measures what the unpickled graph would cost if every shared reference were a copy (which
    is what converting it does) and replaces the load's pending arrays by plain ndarrays.

    Expanded bytes: a number, bool, None or other leaf 8; an int its size; a str 4 per character;
    bytes 1 per byte; an array elements x ``_cell_bytes``; a container the sum over its children
    (keys included) plus 8. Memoised per object, so shared objects cost their size once to
    measure but count at every reference. One iterative pass; field names are looked up only
    for an error.

    Raises:
        ScenarioNetLimitError: Expanded bytes above ``unpickler.max_bytes`` (naming the field that
            holds most of them) or nesting deeper than ``MAX_DEPTH`` (naming where).
        BadPickleError: The graph refers to itself.
    """
    path = unpickler.path
    pending = unpickler._pending
    plain: dict[int, Any] = {}  # id(old object) -> its replacement
    cost: dict[int, int] = {}  # id(container) -> expanded bytes
    height: dict[int, int] = {}  # id(container) -> nesting levels from it down
    visiting: set[int] = set()
    keep: list[Any] = []  # containers measured (keeps their ids unique while the dicts live)
    # Frames: [container, children, next index, bytes so far, deepest child, dict?, rebuild?]
    stack: list[list[Any]] = []

    def too_deep(chain: list[Any]) -> ScenarioNetLimitError:
        _, keys = _field_of(chain)
        while keys and isinstance(keys[-1], int):  # name the field, not the index inside it
            keys = keys[:-1]
        field = _field_name(keys[:8]) + ("..." if len(keys) > 8 else "")
        return ScenarioNetLimitError(
            f"{path}: {field} is nested more than {MAX_DEPTH} levels deep (the limit)",
            path=path, field=field, value=MAX_DEPTH + 1, limit=MAX_DEPTH,
        )  # fmt: skip

    def replace(obj: Any) -> Any:
        if id(obj) in plain:
            return plain[id(obj)]
        if isinstance(obj, pending):
            plain[id(obj)] = obj.view(np.ndarray)
            return plain[id(obj)]
        if isinstance(obj, _Guard):
            return obj.target
        return obj

    def open_frame(obj: Any) -> None:
        if len(stack) >= MAX_DEPTH:
            raise too_deep([f[0] for f in stack] + [obj])
        is_dict = isinstance(obj, dict)
        total = 8
        if is_dict:
            kids: Any = list(obj.items())
            for k in obj:
                if type(k) is str:
                    total += max(8, 4 * len(k))
                else:
                    kids.append((_KEY, k))
            if isinstance(obj, collections.defaultdict) and isinstance(obj.default_factory, _Guard):
                obj.default_factory = obj.default_factory.target
        elif isinstance(obj, (list, tuple)):
            kids = obj
        elif isinstance(obj, (set, frozenset)):
            kids = list(obj)
        else:  # an object array
            kids = _object_elements(obj)
            total = 8 * obj.size
        visiting.add(id(obj))
        stack.append([obj, kids, 0, total, 0, is_dict, False])

    if _is_container(root):
        open_frame(root)
    while stack:
        frame = stack[-1]
        obj, kids, i, total, levels, is_dict, _ = frame
        n = len(kids)
        descended = False
        while i < n:
            child = kids[i]
            i += 1
            if is_dict:
                key, child = child
            t = type(child)
            if t is str:
                total += max(8, 4 * len(child))
                continue
            if t is float or t is bool or child is None:
                total += 8
                continue
            if t is int:
                total += 8 if -(2**63) <= child < 2**63 else _leaf_bytes(child)
                continue
            if t is pending or t is np.ndarray:
                if t is pending:  # a plain array takes its place
                    if is_dict:
                        obj[key] = replace(child)
                    elif isinstance(obj, list):
                        obj[i - 1] = replace(child)
                    else:
                        frame[6] = True  # rebuild the tuple / fix the object array at the end
                if not child.dtype.hasobject:
                    total += child.size * _cell_bytes(child.dtype)
                    continue
            elif t is _Guard:
                if is_dict and key is _KEY:  # a type used as a dict key
                    obj[child.target] = obj.pop(child)
                elif is_dict:
                    obj[key] = child.target
                elif isinstance(obj, list):
                    obj[i - 1] = child.target
                else:
                    frame[6] = True
                total += 8
                continue
            elif not _is_container(child):
                total += _leaf_bytes(child)
                continue
            cid = id(child)
            if cid in cost:
                total += cost[cid]
                levels = max(levels, height[cid])
                if len(stack) + height[cid] > MAX_DEPTH:
                    raise too_deep([f[0] for f in stack] + [child])
                if cid in plain:  # a rebuilt tuple
                    if is_dict and key is not _KEY:
                        obj[key] = plain[cid]
                    elif isinstance(obj, list):
                        obj[i - 1] = plain[cid]
                    else:
                        frame[6] = True
                continue
            if cid in visiting:
                field, _ = _field_of([f[0] for f in stack] + [child])
                raise BadPickleError(
                    f"{path}: {field} contains itself (a cyclic pickle)", path=path
                )
            frame[2], frame[3], frame[4] = i, total, levels
            open_frame(child)
            descended = True
            break
        if descended:
            continue
        stack.pop()
        visiting.discard(id(obj))
        if frame[6]:  # a tuple or object array holding pending arrays, guards or rebuilt tuples
            if type(obj) is tuple:
                plain[id(obj)] = tuple(replace(v) for v in obj)
            elif isinstance(obj, np.ndarray) and obj.flags.writeable and obj.dtype.fields is None:
                for index in np.ndindex(obj.shape):
                    obj[index] = replace(obj[index])
        cost[id(obj)] = total
        height[id(obj)] = levels + 1
        keep.append(obj)
        if stack:
            parent = stack[-1]
            parent[3] += total
            parent[4] = max(parent[4], levels + 1)
            if id(obj) in plain:  # a rebuilt tuple replaces this one in its parent
                holder, index = parent[0], parent[2] - 1
                if parent[5]:
                    if parent[1][index][0] is not _KEY:
                        holder[parent[1][index][0]] = plain[id(obj)]
                elif isinstance(holder, list):
                    holder[index] = plain[id(obj)]
                else:
                    parent[6] = True

    total = cost.get(id(root), _leaf_bytes(root))
    fixed_root = replace(root)
    if total > unpickler.max_bytes:
        # Name the field holding most of it: go down while one child holds over half.
        chain = [root]
        obj = root
        while id(obj) in cost:
            if isinstance(obj, dict):
                kids = list(obj.values()) + [k for k in obj if type(k) is not str]
            elif isinstance(obj, (list, tuple, set, frozenset)):
                kids = list(obj)
            else:
                kids = _object_elements(obj)
            sizes = [cost.get(id(k), 0) if _is_container(k) else _leaf_bytes(k) for k in kids]
            if not sizes or 2 * max(sizes) <= cost[id(obj)]:
                break
            obj = kids[sizes.index(max(sizes))]
            chain.append(obj)
        field, _ = _field_of(chain)
        here = cost[id(obj)] if id(obj) in cost else _leaf_bytes(obj)
        raise ScenarioNetLimitError(
            f"{path}: {field} expands to {_human(here)} (the whole file to {_human(total)}, "
            f"counting a shared object once per reference), more than the limit of "
            f"{_human(unpickler.max_bytes)} for this {_human(unpickler.file_size)} file "
            f"(max({_human(MIN_PICKLE_BUDGET)}, {PICKLE_BUDGET_FACTOR} x the file size), at most "
            f"{_human(MAX_DENSE_BYTES)})",
            path=path, field=field, value=total, limit=unpickler.max_bytes,
        )  # fmt: skip
    return fixed_root


_KEY = object()  # marks a dict key among a dict's children in _check_graph


def safe_load(path: str | os.PathLike, *, max_bytes: int | None = None) -> Any:
    """Reads one pickle file through :class:`SafeUnpickler`.

    Args:
        path: The file (a regular file: a folder, pipe or device is refused before it is read).
        max_bytes: The unpickler's budget; default :func:`pickle_budget` of the file size.

    Returns:
        The unpickled object (builtin containers, numpy arrays and scalars).

    Raises:
        RefusedGlobalError: The pickle references a global outside the allow-list.
        ScenarioNetLimitError: The pickle would build more than the budget allows, or nests
            deeper than ``MAX_DEPTH``.
        BadPickleError: The file is truncated or otherwise not a readable pickle, or not a
            regular file.
        OSError: The file cannot be opened (e.g. ``FileNotFoundError``).
    """
    path = os.fspath(path)
    with _open_regular(path) as f:
        try:
            return SafeUnpickler(f, path=path, max_bytes=max_bytes).load()
        except ScenarioNetError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, OverflowError, MemoryError, UnicodeError) as e:  # fmt: skip
            raise BadPickleError(
                f"{path}: not a readable pickle, truncated or corrupt ({type(e).__name__}: {e})",
                path=path,
            ) from e


def _open_regular(path: str) -> BinaryIO:
    """Opens ``path`` for reading without blocking on a named pipe; refuses what is not a
    regular file with :class:`BadPickleError` (``"<path>: is a named pipe (FIFO), not a regular
    file"``), before reading anything."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise BadPickleError(f"{path}: is a directory, not a regular file", path=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = next((w for test, w in _NON_REGULAR if test(mode)), "not a regular file")
            raise BadPickleError(f"{path}: is {what}, not a regular file", path=path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_NON_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


# ----------------------------------------------------------------------------------------------
# Files and directories.
# ----------------------------------------------------------------------------------------------


def scenarionet_files(path: str | os.PathLike) -> list[Path]:
    """The scenario files of a ScenarioNet file or dataset folder, in sorted order.

    * A file: that file.
    * A folder with ``dataset_mapping.pkl``: the files it maps ({file name: folder relative to the
      dataset folder}, as ScenarioNet writes it), which may lie in sub-folders; other ``.pkl``
      files in the folder are not scenarios of this dataset and are left out. Sorted by their
      path relative to the folder.
    * A folder without one: every ``*.pkl`` below it, at any depth, except the
      ``dataset_summary.pkl`` / ``dataset_mapping.pkl`` files of sub-datasets; sorted by relative
      path.

    Every listed file must lie inside the folder once ``..`` and symbolic links are resolved: a
    mapping entry such as ``"../../etc"``, an absolute folder, or a link to a file elsewhere is
    refused, and so the whole dataset. One exception makes ``scenarionet combine`` output work
    (its mapping points at the source datasets, often beside it: ``"../waymo/waymo_0"``): a mapped
    file outside the folder is accepted when it is a ``.pkl`` file listed in the
    ``dataset_summary.pkl`` of the ScenarioNet dataset folder that holds it.

    Listed files are not opened; a missing mapped file shows up when it is read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ScenarioNetError: ``dataset_mapping.pkl`` cannot be read or is not such a dict; a listed
            file lies outside the folder (naming the mapping file and the entry, or the link);
            or the folder holds no scenarios (``"no ScenarioNet scenarios in DIR: ..."``).
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        return [root]  # A file; what is not a regular file is refused when it is read.
    if not root.is_dir():
        raise FileNotFoundError(f"{os.fspath(path)}: no such file or directory")
    inside = root.resolve()
    mapping_path = root / MAPPING_FILE
    if mapping_path.is_file():
        mapping = safe_load(mapping_path)
        if not isinstance(mapping, Mapping):
            raise ScenarioNetError(
                f"{mapping_path}: expected a dict of file name -> folder, got "
                f"{type(mapping).__name__}",
                path=str(mapping_path),
            )
        relative = []
        listed: dict[Path, frozenset] = {}  # folder -> scenario file names its summary lists
        for name, folder in mapping.items():
            if not isinstance(name, str) or not isinstance(folder, str) or not name:
                raise ScenarioNetError(
                    f"{mapping_path}: entry {_brief(name)}: {_brief(folder)} is not a file name "
                    "-> folder pair of strings",
                    path=str(mapping_path),
                    field=_brief(name),
                )
            rel = os.path.normpath(os.path.join(folder, name))
            real = (root / rel).resolve()
            if not real.is_relative_to(inside) and not _in_other_dataset(real, listed):
                raise ScenarioNetError(
                    f"{mapping_path}: entry {_brief(name)}: {_brief(folder)} puts the file at "
                    f"{real}, outside the dataset folder {root} (mapped files must lie inside "
                    "it, after resolving '..' and symbolic links, or be .pkl scenario files listed "
                    f"in the {SUMMARY_FILE} beside them, as scenarionet combine makes)",
                    path=str(mapping_path),
                    field=_brief(name),
                )
            relative.append(rel)
        if not relative:
            raise ScenarioNetError(
                f"no ScenarioNet scenarios in {root}: its {MAPPING_FILE} maps no files",
                path=str(root),
            )
        return [root / r for r in sorted(relative, key=lambda r: r.replace(os.sep, "/"))]
    files = [
        f
        for f in root.rglob("*.pkl")
        if f.is_file() and f.name not in (SUMMARY_FILE, MAPPING_FILE)
    ]
    for f in files:
        real = f.resolve()
        if not real.is_relative_to(inside):
            raise ScenarioNetError(
                f"{f}: a link to {real}, outside the dataset folder {root} (scenario files must "
                "lie inside it, after resolving symbolic links)",
                path=str(f),
            )
    if not files:
        raise ScenarioNetError(
            f"no ScenarioNet scenarios in {root}: no *.pkl scenario files in it or its "
            "sub-folders",
            path=str(root),
        )
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def _in_other_dataset(real: Path, listed: dict[Path, frozenset]) -> bool:
    """Whether ``real`` is a ``.pkl`` scenario file that the ``dataset_summary.pkl`` of its own
    folder lists (a combined dataset's source; ``listed`` caches each folder's names)."""
    if real.suffix != ".pkl" or real.name in (SUMMARY_FILE, MAPPING_FILE):
        return False
    folder = real.parent
    if folder not in listed:
        names: frozenset = frozenset()
        summary = folder / SUMMARY_FILE
        if summary.is_file():
            try:
                doc = safe_load(summary)
            except (ScenarioNetError, OSError):
                doc = None  # an unreadable summary vouches for nothing
            if isinstance(doc, Mapping):
                names = frozenset(k for k in doc if isinstance(k, str))
        listed[folder] = names
    return real.name in listed[folder]


def load_scenarionet(path: str | os.PathLike, record: int = 0) -> Scene:
    """Loads one ScenarioNet scenario as a Scene (world frame, box centres; see module docs).

    Args:
        path: A scenario ``.pkl`` file, or a dataset folder.
        record: For a folder, the index of the scenario in :func:`scenarionet_files` order; a
            file holds one scenario, so only 0 is valid.

    Returns:
        The validated Scene.

    Raises:
        IndexError: No such record.
        ScenarioNetError: The file is a bad pickle (:class:`BadPickleError`,
            :class:`RefusedGlobalError`), beyond a limit (:class:`ScenarioNetLimitError`) or
            cannot be converted; the message names the file, the scenario and the field. For a
            folder, also what :func:`scenarionet_files` raises.
        OSError: The file cannot be opened.
    """
    root = Path(path)
    if root.is_dir():
        files = scenarionet_files(root)
        if not 0 <= record < len(files):
            raise IndexError(f"{os.fspath(path)}: no scenario {record} ({len(files)} files)")
        return _load_file(files[record])
    if record != 0:
        raise IndexError(f"{os.fspath(path)}: a scenario file holds one scenario, not {record + 1}")
    return _load_file(root)


def iter_scenarionet(
    path: str | os.PathLike,
    *,
    on_skip: Callable[[ScenarioNetError], None] | None = None,
) -> Iterator[Scene]:
    """Yields the Scenes of a ScenarioNet file or dataset folder (:func:`scenarionet_files` order).

    Bad files (refused globals, truncated pickles, conversion errors, unreadable files) are
    skipped and reported, never dropped silently.

    Args:
        path: A scenario ``.pkl`` file or a dataset folder.
        on_skip: Receives each skipped file's error (a :class:`ScenarioNetError` naming the file;
            an ``OSError`` is wrapped in one); without it a ``RuntimeWarning`` is issued.

    Yields:
        One Scene per good file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ScenarioNetError: The folder cannot be listed (a bad ``dataset_mapping.pkl``, a path
            outside the folder, no scenarios; see :func:`scenarionet_files`), so nothing is read.
    """

    def report(err: ScenarioNetError) -> None:
        if on_skip is not None:
            on_skip(err)
        else:
            warnings.warn(f"skipped ScenarioNet file: {err}", RuntimeWarning, stacklevel=3)

    for file in scenarionet_files(path):
        try:
            scene = _load_file(file)
        except ScenarioNetError as err:
            report(err)
        except OSError as err:
            wrapped = ScenarioNetError(f"{file}: cannot be read ({err})", path=str(file))
            wrapped.__cause__ = err
            report(wrapped)
        else:
            yield scene


def _load_file(file: Path) -> Scene:
    scenario = safe_load(file)  # Refuses what is not a regular file, before reading it.
    size = os.stat(file).st_size
    _check_element_count(scenario, size, file)
    return scene_from_scenarionet(scenario, path=file, max_bytes=pickle_budget(size))


def _check_element_count(scenario: Any, file_size: int, file: Path) -> None:
    """Refuse a file that holds more tracks, map features and light states than its size can
    (see ``MIN_ELEMENT_FILE_BYTES``): elements shared between keys cost minutes of CPU to convert."""
    if not isinstance(scenario, Mapping):
        return  # scene_from_scenarionet names the problem
    counts = {f: len(scenario[f]) for f in _ELEMENT_FIELDS if isinstance(scenario.get(f), Mapping)}
    total, limit = sum(counts.values()), ELEMENT_ALLOWANCE + file_size // MIN_ELEMENT_FILE_BYTES
    if total > limit:
        scene_id = scenario.get("id")
        where = _Where(str(file), scene_id if isinstance(scene_id, str) else None)
        field = max(counts, key=counts.get)
        raise where.limit(
            field,
            f"and the other element fields hold {total} elements ({', '.join(f'{k} {v}' for k, v in counts.items())}), more than "
            f"a {_human(file_size)} file can hold (at most {limit}: {ELEMENT_ALLOWANCE} + one per {MIN_ELEMENT_FILE_BYTES} bytes; "
            "elements shared between keys?)",
            total, limit,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Conversion.
# ----------------------------------------------------------------------------------------------


def scene_from_scenarionet(
    scenario: Mapping[str, Any],
    *,
    path: str | os.PathLike = "<memory>",
    max_bytes: int = MAX_DENSE_BYTES,
) -> Scene:
    """Converts one ScenarioNet scenario dict into a Scene (see module docs for the mapping).

    Args:
        scenario: The unpickled scenario description.
        path: File it came from (for ``Scene.source`` and error messages).
        max_bytes: Limit on the dense (agents, steps) and (lights, steps) arrays the scenario
            implies (a file's pickle budget when loaded from one); at most ``MAX_DENSE_BYTES``.

    Returns:
        The validated Scene.

    Raises:
        ScenarioNetLimitError: ``length`` above ``MAX_STEPS``, or dense arrays above
            ``max_bytes``; checked before they are allocated.
        ScenarioNetError: Anything that cannot be converted; the message names the file, the
            scenario and the field, e.g. ``"a.pkl scenario 'x': tracks['12'].state.heading[40]
            is NaN"``.
    """
    path = os.fspath(path)
    where = _Where(path)
    if not isinstance(scenario, Mapping):
        raise where.error("top level", f"is a {type(scenario).__name__}, expected a dict")
    raw_id = _required(scenario, "id", "id", where)
    if not isinstance(raw_id, (str, int, np.integer)) or isinstance(raw_id, bool):
        raise where.error("id", f"must be a string, got {type(raw_id).__name__}")
    scene_id = str(raw_id)
    where = _Where(path, scene_id)

    max_bytes = min(int(max_bytes), MAX_DENSE_BYTES)
    num_steps = _required(scenario, "length", "length", where)
    if not _is_int(num_steps) or num_steps < 1:
        raise where.error("length", f"must be an integer >= 1, got {_brief(num_steps)}")
    num_steps = int(num_steps)
    if num_steps > MAX_STEPS:
        raise where.limit("length", f"is {num_steps}, more than the limit of {MAX_STEPS} steps",
                          num_steps, MAX_STEPS)  # fmt: skip
    metadata = _required(scenario, "metadata", "metadata", where)
    if not isinstance(metadata, Mapping):
        raise where.error("metadata", f"must be a dict, got {type(metadata).__name__}")
    dataset = metadata.get("dataset")
    dataset = dataset.lower() if isinstance(dataset, str) else None

    timestamps = _timestamps(metadata, num_steps, where)
    current = metadata.get("current_time_index", 0)
    if current is None:
        current = 0
    if not _is_int(current) or not 0 <= current < num_steps:
        raise where.error(
            "metadata.current_time_index", f"{_brief(current)} out of range [0, {num_steps})"
        )

    raw_tracks = _required(scenario, "tracks", "tracks", where)
    sdc_id = _required(metadata, "sdc_id", "metadata.sdc_id", where)
    tracks, ego_index = _tracks(raw_tracks, sdc_id, timestamps, dataset, where, max_bytes)

    feature_ids = _IdMap()
    map_elements, lane_polygons = _map(scenario.get("map_features"), dataset, feature_ids, where)
    lights = _traffic_lights(
        scenario.get("dynamic_map_states"), num_steps, feature_ids, where, max_bytes
    )
    map_elements = dataclasses.replace(
        map_elements,
        stop_lines=stop_lines(map_elements.lanes, map_elements.stop_signs, lights),
        drivable_area=_drivable_area(map_elements, lane_polygons),
    )
    try:
        return Scene(
            scene_id=scene_id,
            source=f"scenarionet:{path}",
            timestamps=timestamps,
            current_index=int(current),
            tracks=tracks,
            ego_index=ego_index,
            map=map_elements,
            traffic_lights=lights,
        )
    except ValueError as e:
        raise ScenarioNetError(f"{where.prefix}: {e}", path=path) from e


def _required(container: Mapping, key: str, field: str, where: _Where) -> Any:
    if key not in container:
        raise where.error(field, "is missing")
    return container[key]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _float_array(value: Any, field: str, where: _Where) -> np.ndarray:
    """``value`` as a float64 array; raises naming ``field`` if it is not numeric."""
    if value is None:
        raise where.error(field, "is None")
    try:
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"dtype {arr.dtype}")
        return arr.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise where.error(field, f"is not a numeric array ({e})") from None


def _per_step(value: Any, field: str, num_steps: int, where: _Where, cols: tuple[int, ...] = ()):
    """A per-step array: (T,) or (T, 1) when ``cols`` is empty, else (T, c) with c in ``cols``."""
    arr = _float_array(value, field, where)
    if not cols:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        ok = arr.ndim == 1
        want = f"({num_steps},) or ({num_steps}, 1)"
    else:
        ok = arr.ndim == 2 and arr.shape[1] in cols
        want = " or ".join(f"({num_steps}, {c})" for c in cols)
    if not ok or arr.shape[0] != num_steps:
        raise where.error(field, f"has shape {arr.shape}, expected {want}")
    return arr


def _points(value: Any, field: str, where: _Where, *, min_points: int = 1) -> np.ndarray:
    """(n, 3) float64 points from an (n, 2) or (n, 3) array (z = 0 for 2D), checked finite."""
    arr = _float_array(value, field, where)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise where.error(field, f"has shape {arr.shape}, expected (n, 2) or (n, 3)")
    if arr.shape[0] < min_points:
        raise where.error(field, f"has {arr.shape[0]} points, need at least {min_points}")
    bad = ~np.isfinite(arr)
    if bad.any():
        k, c = (int(v) for v in np.argwhere(bad)[0])
        raise where.error(f"{field}[{k}].{'xyz'[c]}", "is not finite")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.zeros((arr.shape[0], 1))], axis=1)
    return arr


def _point(value: Any, field: str, where: _Where) -> np.ndarray:
    """(3,) float64 point from 2 or 3 numbers (z = 0 for 2D), checked finite."""
    arr = _float_array(value, field, where).reshape(-1)
    if arr.shape[0] not in (2, 3):
        raise where.error(field, f"has {arr.shape[0]} values, expected 2 or 3")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise where.error(f"{field}.{'xyz'[bad[0]]}", "is not finite")
    return np.concatenate([arr, np.zeros(3 - arr.shape[0])])


def _ring(value: Any, field: str, where: _Where) -> np.ndarray:
    """(n, 3) open polygon ring with >= 3 distinct corners."""
    pts = _points(value, field, where)
    if pts.shape[0] > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]  # rap rings are open.
    distinct = np.unique(pts[:, :2], axis=0).shape[0]
    if distinct < 3:
        raise where.error(field, f"has {distinct} distinct corners, need 3")
    return pts


def _timestamps(metadata: Mapping, num_steps: int, where: _Where) -> np.ndarray:
    key = "ts" if metadata.get("ts") is not None else "timestep"
    raw = metadata.get(key)
    if raw is None:
        rate = metadata.get("sample_rate", DEFAULT_TIMESTEP)
        if (
            not isinstance(rate, (int, float, np.integer, np.floating))
            or not math.isfinite(rate)
            or rate <= 0
        ):
            raise where.error("metadata.sample_rate", f"must be a number > 0, got {_brief(rate)}")
        return np.arange(num_steps, dtype=np.float64) * float(rate)
    field = f"metadata.{key}"
    ts = _per_step(raw, field, num_steps, where)
    bad = np.flatnonzero(~np.isfinite(ts))
    if bad.size:
        raise where.error(f"{field}[{bad[0]}]", "is not finite")
    step_back = np.flatnonzero(np.diff(ts) <= 0)
    if step_back.size:
        raise where.error(f"{field}[{step_back[0] + 1}]", "is not after the previous timestamp")
    return ts


class _IdMap:
    """SD ids (strings or ints) to int64 ids; see "Ids" in the module docs."""

    def __init__(self) -> None:
        self._assigned: dict[str, int] = {}

    def __call__(self, raw: Any, field: str, where: _Where) -> int:
        if _is_int(raw):
            if 0 <= raw <= _INT64_MAX:
                return int(raw)
            key = str(int(raw))
        elif isinstance(raw, str):
            if _INT_ID.fullmatch(raw) and int(raw) <= _INT64_MAX:
                return int(raw)
            key = raw
        else:
            raise where.error(field, f"is not an id (string or int), got {type(raw).__name__}")
        if key not in self._assigned:
            self._assigned[key] = -1 - len(self._assigned)
        return self._assigned[key]


def _id_list(value: Any, field: str, ids: _IdMap, where: _Where) -> tuple[int, ...]:
    """A list of ids, or of dicts with ``feature_id`` (Waymo neighbours); None -> ()."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise where.error(field, f"must be a list of ids, got {type(value).__name__}")
    out = []
    for k, item in enumerate(value):
        if isinstance(item, Mapping):
            out.append(ids(_required(item, "feature_id", f"{field}[{k}].feature_id", where),
                           f"{field}[{k}].feature_id", where))  # fmt: skip
        else:
            out.append(ids(item, f"{field}[{k}]", where))
    return tuple(dict.fromkeys(out))


def _check_dense(
    where: _Where, field: str, what: str, rows: int, num_steps: int, cell: int, max_bytes: int
) -> None:
    """Refuses (rows, steps) arrays of ``cell`` bytes per element beyond ``max_bytes``."""
    need = rows * num_steps * cell
    if need > max_bytes:
        raise where.limit(
            field,
            f"{rows} {what} x {num_steps} steps need {_human(need)} of ({what}, steps) arrays, "
            f"more than the limit of {_human(max_bytes)}",
            need,
            max_bytes,
        )


# ----------------------------------------------------------------------------------------------
# Tracks.
# ----------------------------------------------------------------------------------------------


def _tracks(
    raw_tracks: Any,
    sdc_id: Any,
    timestamps: np.ndarray,
    dataset: str | None,
    where: _Where,
    max_bytes: int,
) -> tuple[AgentTracks, int]:
    if not isinstance(raw_tracks, Mapping):
        raise where.error("tracks", f"must be a dict, got {type(raw_tracks).__name__}")
    num_steps = timestamps.shape[0]
    keys = list(raw_tracks)
    n = len(keys)
    _check_dense(where, "tracks", "tracks", n, num_steps, _TRACK_CELL_BYTES, max_bytes)
    ego_index = next((i for i, k in enumerate(keys) if k == sdc_id or str(k) == str(sdc_id)), None)
    if ego_index is None:
        raise where.error("metadata.sdc_id", f"{_brief(sdc_id)} is not a key of tracks")

    ids = _IdMap()
    out = {name: np.zeros((n, num_steps)) for name in ("x", "y", "z", "heading", "vx", "vy")}
    sizes = {name: np.zeros((n, num_steps)) for name in ("length", "width", "height")}
    valid = np.zeros((n, num_steps), dtype=bool)
    agent_ids = np.zeros(n, dtype=np.int64)
    types = np.zeros(n, dtype=np.int8)
    for i, key in enumerate(keys):
        f = f"tracks[{_brief(key)}]"
        track = raw_tracks[key]
        if not isinstance(track, Mapping):
            raise where.error(f, f"must be a dict, got {type(track).__name__}")
        agent_ids[i] = ids(key, f"{f} (key)", where)
        kind = _required(track, "type", f"{f}.type", where)
        if not isinstance(kind, str) or kind not in _AGENT_TYPES:
            raise where.error(f"{f}.type", f"{_brief(kind)} is not a known agent type")
        types[i] = _AGENT_TYPES[kind]
        state = _required(track, "state", f"{f}.state", where)
        if not isinstance(state, Mapping):
            raise where.error(f"{f}.state", f"must be a dict, got {type(state).__name__}")
        s = f"{f}.state"

        pos = _per_step(_required(state, "position", f"{s}.position", where), f"{s}.position",
                        num_steps, where, cols=(2, 3))  # fmt: skip
        heading = _per_step(_required(state, "heading", f"{s}.heading", where), f"{s}.heading",
                            num_steps, where)  # fmt: skip
        if state.get("valid") is None:
            v = np.ones(num_steps, dtype=bool)
        else:
            v = _per_step(state["valid"], f"{s}.valid", num_steps, where)
            if not np.isin(v, (0.0, 1.0)).all():
                t = int(np.flatnonzero(~np.isin(v, (0.0, 1.0)))[0])
                raise where.error(f"{s}.valid[{t}]", f"is {float(v[t])}, expected a bool or 0/1")
            v = v.astype(bool)
        valid[i] = v
        checked = {"position": pos, "heading": heading}
        if state.get("velocity") is not None:
            checked["velocity"] = _per_step(state["velocity"], f"{s}.velocity", num_steps, where,
                                             cols=(2, 3))  # fmt: skip
        default_size = DEFAULT_BOX_SIZE[AgentType(types[i])]
        for name, default in zip(("length", "width", "height"), default_size):
            if state.get(name) is None:
                sizes[name][i] = default
            else:
                checked[name] = sizes[name][i] = _per_step(state[name], f"{s}.{name}", num_steps,
                                                           where)  # fmt: skip
        for name, arr in checked.items():
            bad = ~np.isfinite(arr.reshape(num_steps, -1)).all(axis=1) & v
            if bad.any():
                t = int(np.flatnonzero(bad)[0])
                what = "NaN" if np.isnan(arr[t]).any() else "not finite"
                raise where.error(f"{s}.{name}[{t}]", f"is {what}")
        for name in ("length", "width", "height"):
            bad = v & (sizes[name][i] < 0)
            if bad.any():
                t = int(np.flatnonzero(bad)[0])
                raise where.error(f"{s}.{name}[{t}]", f"is negative ({sizes[name][i][t]})")

        out["x"][i], out["y"][i] = pos[:, 0], pos[:, 1]
        on_ground = pos.shape[1] == 2 or not np.any(pos[v, 2] != 0)
        out["z"][i] = 0.5 * sizes["height"][i] if on_ground else pos[:, 2]
        out["heading"][i] = heading
        if "velocity" in checked:
            out["vx"][i], out["vy"][i] = checked["velocity"][:, 0], checked["velocity"][:, 1]
        else:
            vel = _finite_difference(pos[:, :2], v, timestamps)
            out["vx"][i], out["vy"][i] = vel[:, 0], vel[:, 1]

    if agent_ids.size != np.unique(agent_ids).size:
        raise where.error("tracks", "has keys that map to the same id")
    for arr in (*out.values(), *sizes.values()):  # Converters fill invalid steps with anything.
        arr[~valid] = 0.0

    # Rear axle offset: a fraction of the median valid length, vehicles only.
    has_valid = valid.any(axis=1)
    median_length = np.zeros(n)
    if has_valid.any():
        lengths = np.where(valid, sizes["length"], np.nan)
        median_length[has_valid] = np.nanmedian(lengths[has_valid], axis=1)
    rear_axle_offset = np.where(types == AgentType.VEHICLE, REAR_AXLE_RATIO * median_length, 0.0)
    if dataset == "nuscenes":  # The SDC position is the nuScenes ego pose: the rear axle.
        e, back = ego_index, rear_axle_offset[ego_index]
        v = valid[e]
        out["x"][e, v] += back * np.cos(out["heading"][e, v])
        out["y"][e, v] += back * np.sin(out["heading"][e, v])

    tracks = AgentTracks(
        ids=agent_ids,
        types=types,
        **out,
        **sizes,
        valid=valid,
        rear_axle_offset=rear_axle_offset,
    )
    return tracks, ego_index


def _finite_difference(xy: np.ndarray, valid: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """(T, 2) velocity [m/s] from (T, 2) positions: the mean of the differences to the valid
    neighbouring steps (one-sided at the ends of a valid run, 0 at an isolated step)."""
    seg_ok = valid[:-1] & valid[1:]  # (T - 1,) segment k joins steps k and k + 1.
    with np.errstate(invalid="ignore", over="ignore"):  # Invalid steps may hold NaN / inf.
        seg_v = np.diff(xy, axis=0) / np.diff(timestamps)[:, None]
    seg_v = np.where(seg_ok[:, None], seg_v, 0.0)
    total = np.zeros_like(xy)
    count = np.zeros(xy.shape[0])
    total[1:] += seg_v
    total[:-1] += seg_v
    count[1:] += seg_ok
    count[:-1] += seg_ok
    return total / np.maximum(count, 1.0)[:, None]


# ----------------------------------------------------------------------------------------------
# Map.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _RawLane:
    id: int
    field: str
    feature: Mapping
    centerline: np.ndarray  # (n, 3)
    lane_type: LaneType
    interpolating: bool


def _map(
    raw: Any, dataset: str | None, ids: _IdMap, where: _Where
) -> tuple[MapElements, list[np.ndarray]]:
    """The map without stop lines and drivable area, and the non-bike lane surface rings."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise where.error("map_features", f"must be a dict, got {type(raw).__name__}")
    lanes: list[_RawLane] = []
    lines: dict[str, list] = {"road_lines": [], "road_edges": []}
    areas: dict[str, list] = {kind: [] for kind in _AREA_KINDS.values()}
    signs: list = []
    boundaries: dict[int, np.ndarray] = {}  # Road line / edge id -> (n, 3) points.
    seen: dict[int, Any] = {}

    for key, feature in raw.items():
        f = f"map_features[{_brief(key)}]"
        if not isinstance(feature, Mapping):
            raise where.error(f, f"must be a dict, got {type(feature).__name__}")
        fid = ids(key, f"{f} (key)", where)
        if fid in seen:
            raise where.error(f, f"has the same id as map_features[{_brief(seen[fid])}]")
        seen[fid] = key
        kind = _required(feature, "type", f"{f}.type", where)
        if not isinstance(kind, str):
            raise where.error(f"{f}.type", f"must be a string, got {type(kind).__name__}")
        if kind in _LANE_TYPES:
            raw_line = _float_array(_required(feature, "polyline", f"{f}.polyline", where),
                                    f"{f}.polyline", where)  # fmt: skip
            if dataset == "nuscenes" and raw_line.ndim == 2 and raw_line.shape[1] == 3:
                raw_line = raw_line[:, :2]  # (x, y, yaw) from discretize_lane.
            centerline = _points(raw_line, f"{f}.polyline", where)
            lane_type, interpolating = _LANE_TYPES[kind]
            lanes.append(_RawLane(fid, f, feature, centerline, lane_type, interpolating))
        elif kind in _ROAD_LINE_TYPES or kind in _ROAD_EDGE_TYPES:
            pts = _points(_required(feature, "polyline", f"{f}.polyline", where),
                          f"{f}.polyline", where)  # fmt: skip
            if kind in _ROAD_LINE_TYPES:
                lines["road_lines"].append((fid, pts, _ROAD_LINE_TYPES[kind]))
            else:
                lines["road_edges"].append((fid, pts, _ROAD_EDGE_TYPES[kind]))
            boundaries[fid] = pts
        elif kind in _AREA_KINDS:
            name = "polygon" if feature.get("polygon") is not None else "polyline"
            ring = _ring(_required(feature, name, f"{f}.polygon", where), f"{f}.{name}", where)
            areas[_AREA_KINDS[kind]].append((fid, ring))
        elif kind == "STOP_SIGN":
            pos = _point(_required(feature, "position", f"{f}.position", where),
                         f"{f}.position", where)  # fmt: skip
            signs.append((fid, pos, _id_list(feature.get("lane"), f"{f}.lane", ids, where)))
        # Other types (sidewalks, buildings, future kinds) are ignored on purpose.

    lane_set, lane_rings = _lanes(lanes, boundaries, ids, where)
    road_lines, road_edges = (
        LineSet(
            ids=np.array([i for i, _, _ in lines[kind]], dtype=np.int64),
            lines=Polylines.from_list([p for _, p, _ in lines[kind]]),
            types=np.array([t for _, _, t in lines[kind]], dtype=np.int8),
        )
        for kind in ("road_lines", "road_edges")
    )
    polygon_sets = {
        kind: PolygonSet(
            ids=np.array([i for i, _ in items], dtype=np.int64),
            rings=Polylines.from_list([p for _, p in items]),
        )
        for kind, items in areas.items()
    }
    stop_signs = StopSigns(
        ids=np.array([i for i, _, _ in signs], dtype=np.int64),
        positions=np.array([p for _, p, _ in signs], dtype=np.float64).reshape(-1, 3),
        lane_ids=tuple(lane_ids for _, _, lane_ids in signs),
    )
    elements = MapElements(
        lanes=lane_set,
        road_lines=road_lines,
        road_edges=road_edges,
        stop_lines=LineSet.empty(),
        crosswalks=polygon_sets["crosswalks"],
        speed_bumps=polygon_sets["speed_bumps"],
        driveways=polygon_sets["driveways"],
        stop_signs=stop_signs,
        drivable_area=PolygonSet.empty(),
    )
    return elements, lane_rings


def _lanes(
    lanes: list[_RawLane], boundaries: dict[int, np.ndarray], ids: _IdMap, where: _Where
) -> tuple[Lanes, list[np.ndarray]]:
    n = len(lanes)
    types = np.zeros(n, dtype=np.int8)
    speed = np.zeros(n, dtype=np.float32)
    has_speed = np.zeros(n, dtype=bool)
    width = np.full(n, DEFAULT_LANE_WIDTH, dtype=np.float32)
    interpolating = np.zeros(n, dtype=bool)
    succ, pred, left, right = [], [], [], []
    rings = []  # Surfaces of non-bike lanes, for the drivable area.
    for k, lane in enumerate(lanes):
        f, feat = lane.field, lane.feature
        types[k] = lane.lane_type
        interp = feat.get("interpolating")
        if interp is not None and not isinstance(interp, (bool, np.bool_, int, np.integer)):
            raise where.error(f"{f}.interpolating", f"must be a bool, got {_brief(interp)}")
        interpolating[k] = lane.interpolating or bool(interp)
        for unit, factor in (("mph", MPH_TO_MPS), ("kmh", KMH_TO_MPS)):
            value = feat.get(f"speed_limit_{unit}")
            if value is None:
                continue
            if (
                not isinstance(value, (int, float, np.integer, np.floating))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise where.error(f"{f}.speed_limit_{unit}", f"is invalid ({_brief(value)})")
            speed[k] = float(value) * factor
            has_speed[k] = value > 0
            break
        succ.append(_id_list(feat.get("exit_lanes"), f"{f}.exit_lanes", ids, where))
        pred.append(_id_list(feat.get("entry_lanes"), f"{f}.entry_lanes", ids, where))
        left.append(_id_list(feat.get("left_neighbor"), f"{f}.left_neighbor", ids, where))
        right.append(_id_list(feat.get("right_neighbor"), f"{f}.right_neighbor", ids, where))
        ring = None
        if feat.get("polygon") is not None:
            ring = _ring(feat["polygon"], f"{f}.polygon", where)
            if lane.lane_type != LaneType.BIKE_LANE:
                rings.append(ring)
        w = _width_from_boundaries(lane, boundaries, ids, where)
        if w is None and ring is not None:
            w = _width_from_polygon(lane.centerline, ring)
        if w is None and feat.get("width") is not None:
            w = _width_from_array(feat["width"], f"{f}.width", lane.centerline.shape[0], where)
        if w is not None:
            width[k] = np.clip(w, MIN_LANE_WIDTH, MAX_LANE_WIDTH)
    lane_set = Lanes(
        ids=np.array([lane.id for lane in lanes], dtype=np.int64),
        centerlines=Polylines.from_list([lane.centerline for lane in lanes]),
        types=types,
        speed_limit=speed,
        has_speed_limit=has_speed,
        width=width,
        interpolating=interpolating,
        successors=tuple(succ),
        predecessors=tuple(pred),
        left_neighbors=tuple(left),
        right_neighbors=tuple(right),
    )
    return lane_set, rings


def _width_from_boundaries(
    lane: _RawLane, boundaries: dict[int, np.ndarray], ids: _IdMap, where: _Where
) -> float | None:
    """Lane width from its boundary segments [m] (as rap.sources.womd), None if unusable."""
    medians = []
    centerline = lane.centerline
    for side in ("left_boundaries", "right_boundaries"):
        segments = lane.feature.get(side)
        if segments is None:
            continue
        if isinstance(segments, (str, bytes, Mapping)) or not hasattr(segments, "__iter__"):
            raise where.error(f"{lane.field}.{side}", "must be a list of dicts")
        dists = []
        for j, seg in enumerate(segments):
            f = f"{lane.field}.{side}[{j}]"
            if not isinstance(seg, Mapping):
                raise where.error(f, f"must be a dict, got {type(seg).__name__}")
            bid = ids(_required(seg, "boundary_feature_id", f"{f}.boundary_feature_id", where),
                      f"{f}.boundary_feature_id", where)  # fmt: skip
            lo = _index(seg.get("lane_start_index", 0), f"{f}.lane_start_index", where)
            hi = _index(seg.get("lane_end_index", centerline.shape[0] - 1),
                        f"{f}.lane_end_index", where)  # fmt: skip
            line = boundaries.get(bid)
            lo, hi = max(0, lo), min(centerline.shape[0] - 1, hi)
            if line is None or hi < lo:
                continue
            dists.append(_point_polyline_distance(centerline[lo : hi + 1, :2], line[:, :2]))
        if dists:
            medians.append(float(np.median(np.concatenate(dists))))
    if not medians:
        return None
    return sum(medians) if len(medians) == 2 else 2.0 * medians[0]


def _point_polyline_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """:func:`rap.geometry.point_polyline_distance` in chunks of points, so that its
    (points, segments) temporaries stay near ``_DISTANCE_CHUNK`` elements whatever the sizes."""
    rows = max(1, _DISTANCE_CHUNK // max(1, polyline.shape[0]))
    if points.shape[0] <= rows:
        return geometry.point_polyline_distance(points, polyline)
    return np.concatenate(
        [geometry.point_polyline_distance(points[k : k + rows], polyline)
         for k in range(0, points.shape[0], rows)]
    )  # fmt: skip


def _index(value: Any, field: str, where: _Where) -> int:
    """An index that ScenarioNet may have stored as a string."""
    try:
        if isinstance(value, (float, np.floating, bool, np.bool_)):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise where.error(field, f"is not an integer ({_brief(value)})") from None


def _width_from_polygon(centerline: np.ndarray, ring: np.ndarray) -> float | None:
    """Twice the median distance from the centerline to the lane surface outline [m]."""
    outline = np.concatenate([ring[:, :2], ring[:1, :2]])
    d = _point_polyline_distance(centerline[:, :2], outline)
    d = d[d > 0]
    return 2.0 * float(np.median(d)) if d.size else None


def _width_from_array(value: Any, field: str, num_points: int, where: _Where) -> float | None:
    """Median of left + right distance over points where both are > 0 [m] (None if none)."""
    arr = _float_array(value, field, where)
    if arr.ndim != 2 or arr.shape != (num_points, 2):
        raise where.error(field, f"has shape {arr.shape}, expected ({num_points}, 2)")
    both = np.isfinite(arr).all(axis=1) & (arr > 0).all(axis=1)
    return float(np.median(arr[both].sum(axis=1))) if both.any() else None


def _drivable_area(elements: MapElements, lane_rings: list[np.ndarray]) -> PolygonSet:
    """``derive_drivable_area`` with the lane surface polygons added to the driveways."""
    extra = elements.driveways
    if lane_rings:
        rings = list(elements.driveways.rings) + lane_rings
        extra = PolygonSet(ids=np.arange(len(rings)), rings=Polylines.from_list(rings))
    return derive_drivable_area(elements.lanes, elements.road_edges, extra)


# ----------------------------------------------------------------------------------------------
# Traffic lights.
# ----------------------------------------------------------------------------------------------


def _traffic_lights(
    raw: Any, num_steps: int, ids: _IdMap, where: _Where, max_bytes: int
) -> TrafficLights:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise where.error("dynamic_map_states", f"must be a dict, got {type(raw).__name__}")
    _check_dense(where, "dynamic_map_states", "traffic lights", len(raw), num_steps,
                 _LIGHT_CELL_BYTES, max_bytes)  # fmt: skip
    converted: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}  # id(seq) -> (seq, s, v)
    lane_ids: list[int] = []
    stop_points: list[np.ndarray] = []
    states: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    rows: dict[int, Any] = {}
    for key, entry in raw.items():
        f = f"dynamic_map_states[{_brief(key)}]"
        if not isinstance(entry, Mapping):
            raise where.error(f, f"must be a dict, got {type(entry).__name__}")
        if entry.get("type", "TRAFFIC_LIGHT") != "TRAFFIC_LIGHT":
            continue  # Only traffic lights exist today; other kinds are ignored.
        lane = entry.get("lane")
        lane_id = ids(key, f"{f} (key)", where) if lane is None else ids(lane, f"{f}.lane", where)
        if lane_id in rows:
            raise where.error(f"{f}.lane", f"controls the same lane as {rows[lane_id]}")
        rows[lane_id] = f
        stop_point = _point(_required(entry, "stop_point", f"{f}.stop_point", where),
                            f"{f}.stop_point", where)  # fmt: skip
        state = _required(entry, "state", f"{f}.state", where)
        if not isinstance(state, Mapping):
            raise where.error(f"{f}.state", f"must be a dict, got {type(state).__name__}")
        field = f"{f}.state.object_state"
        seq = _required(state, "object_state", field, where)
        if isinstance(seq, (str, bytes, Mapping)) or not hasattr(seq, "__len__"):
            raise where.error(field, f"must be a sequence, got {type(seq).__name__}")
        if len(seq) != num_steps:
            raise where.error(field, f"has {len(seq)} steps, expected {num_steps}")
        if id(seq) in converted:  # A sequence shared by several entries is converted once.
            _, s, v = converted[id(seq)]
        else:
            s = np.zeros(num_steps, dtype=np.int8)
            v = np.zeros(num_steps, dtype=bool)
            for t, value in enumerate(seq):
                s[t], v[t] = _light_state(value, f"{field}[{t}]", where)
            converted[id(seq)] = (seq, s, v)  # seq kept: its id stays unique
        lane_ids.append(lane_id)
        stop_points.append(stop_point)
        states.append(s)
        valid.append(v)
    if not lane_ids:
        return TrafficLights.empty(num_steps)
    return TrafficLights(
        lane_ids=np.array(lane_ids, dtype=np.int64),
        stop_points=np.array(stop_points, dtype=np.float64),
        states=np.array(states, dtype=np.int8),
        valid=np.array(valid, dtype=bool),
    )


def _light_state(value: Any, field: str, where: _Where) -> tuple[int, bool]:
    if value is None:
        return int(LightState.UNKNOWN), False
    if isinstance(value, str):
        if value in _LIGHT_STATES:
            state, ok = _LIGHT_STATES[value]
            return int(state), ok
    elif _is_int(value) and 0 <= value <= max(LightState):
        return int(value), True
    raise where.error(field, f"{_brief(value)} is not a known traffic light state")
