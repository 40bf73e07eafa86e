"""Hostile ScenarioNet input (issue 9): small pickles that pass the allow-list but would make the
reader allocate gigabytes, run for minutes or crash, and dataset mappings that point outside
their dataset.

Every memory case loads its file in a child interpreter limited to 1.5 GB of address space
(``run_limited``): without the bounds the child dies or reports a ``MemoryError``; with them it
reports the named error (:class:`ScenarioNetLimitError`, naming the file, the field and the limit)
and stays far below the limit.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from rap.sources.registry import list_units
from rap.sources.scenarionet import (
    MAPPING_FILE,
    SUMMARY_FILE,
    ScenarioNetError,
    iter_scenarionet,
    load_scenarionet,
    scenarionet_files,
    scene_from_scenarionet,
)

T = 11
LOAD = "from rap.sources.scenarionet import load_scenarionet\nreport(lambda: load_scenarionet(sys.argv[1]))\n"
PEAK_RSS_MB = 400  # a refused file is refused before anything large is allocated


def _track(num_steps: int = T, kind: str = "VEHICLE") -> dict:
    return {
        "type": kind,
        "state": {
            "position": np.zeros((num_steps, 3), dtype=np.float32),
            "heading": np.zeros(num_steps, dtype=np.float32),
            "valid": np.ones(num_steps, dtype=bool),
        },
    }


def _scenario(**overrides) -> dict:
    """A minimal valid scenario: one track (the SDC), no map, T steps at 0.1 s."""
    sd = {
        "id": "tiny",
        "length": T,
        "tracks": {"0": _track()},
        "metadata": {"sdc_id": "0", "ts": np.arange(T, dtype=np.float32) * 0.1},
    }
    sd.update(overrides)
    return sd


def _dump(obj, path: Path, protocol: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _assert_limit(result: dict, path: Path, *, field: str | None, words: tuple[str, ...]) -> None:
    assert not result["ok"], result
    assert result["type"] == "ScenarioNetLimitError", result
    assert "ScenarioNetError" in result["types"] and "ValueError" in result["types"]
    message = result["message"]
    assert str(path) in message and "limit" in message, message
    for word in words:
        assert word in message, (word, message)
    if field is not None:
        assert result["field"] == field, result
    assert result["peak_rss_mb"] < PEAK_RSS_MB, result


def test_minimal_scenario_loads(tmp_path):
    scene = load_scenarionet(_dump(_scenario(), tmp_path / "ok.pkl"))
    assert scene.num_steps == T and scene.tracks.num_agents == 1


# ----------------------------------------------------------------------------------------------
# Sizes the scenario fields imply.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [10**9, 10**13])
def test_absurd_length_without_timestamps(tmp_path, run_limited, length):
    """Today: 10^9 steps allocate 8 GB of timestamps, 10^13 raise a bare MemoryError."""
    sd = _scenario(length=length)
    del sd["metadata"]["ts"]
    path = _dump(sd, tmp_path / "long.pkl")
    assert path.stat().st_size < 4096
    result = run_limited(LOAD, path)
    _assert_limit(result, path, field="length", words=(f"{length}", "100000", "scenario 'tiny'"))


def test_length_is_checked_before_timestamps_in_memory():
    sd = _scenario(length=10**12)
    with pytest.raises(ScenarioNetError, match=r"x\.pkl scenario 'tiny': length is 1000000000000"):
        scene_from_scenarionet(sd, path="x.pkl")


def test_many_shared_tracks_in_memory(run_limited):
    """50 000 tracks sharing one 100 000-step track: (agents, steps) arrays of 400 GB."""
    code = (
        "import numpy as np\n"
        "from rap.sources.scenarionet import scene_from_scenarionet\n"
        "n = 100_000\n"
        "track = {'type': 'VEHICLE', 'state': {'position': np.zeros((n, 2), np.float32),"
        " 'heading': np.zeros(n, np.float32)}}\n"
        "sd = {'id': 'wide', 'length': n, 'metadata': {'sdc_id': '0'},"
        " 'tracks': {str(k): track for k in range(50_000)}}\n"
        "report(lambda: scene_from_scenarionet(sd, path='wide.pkl'))\n"
    )
    result = run_limited(code)
    assert result["type"] == "ScenarioNetLimitError", result
    assert result["field"] == "tracks"
    assert "wide.pkl scenario 'wide': tracks" in result["message"]
    assert "50000 tracks x 100000 steps" in result["message"] and "limit" in result["message"]


def test_many_shared_traffic_lights_in_memory(run_limited):
    """20 000 lights sharing one 100 000-step state list: 2 * 10^9 Python steps today."""
    code = (
        "import numpy as np\n"
        "from rap.sources.scenarionet import scene_from_scenarionet\n"
        "n = 100_000\n"
        "track = {'type': 'VEHICLE', 'state': {'position': np.zeros((n, 2), np.float32),"
        " 'heading': np.zeros(n, np.float32)}}\n"
        "states = ['LANE_STATE_GO'] * n\n"
        "lights = {str(k): {'stop_point': [0.0, 0.0], 'state': {'object_state': states}}"
        " for k in range(20_000)}\n"
        "sd = {'id': 'lit', 'length': n, 'metadata': {'sdc_id': '0'}, 'tracks': {'0': track},"
        " 'dynamic_map_states': lights}\n"
        "report(lambda: scene_from_scenarionet(sd, path='lit.pkl'))\n"
    )
    result = run_limited(code)
    assert result["type"] == "ScenarioNetLimitError", result
    assert result["field"] == "dynamic_map_states"
    assert "20000 traffic lights x 100000 steps" in result["message"]


# ----------------------------------------------------------------------------------------------
# What the unpickler reconstructs.
# ----------------------------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)`` (then ``BUILD`` with ``state`` when given)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return (self.func, self.args)
        return (self.func, self.args, self.state)


def _reconstruct():
    from numpy._core.multiarray import _reconstruct as reconstruct

    return reconstruct


def _with_position(value) -> dict:
    sd = _scenario()
    sd["tracks"]["0"]["state"]["position"] = value
    return sd


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("ndarray", _Reduce(np.ndarray, ((300_000_000, 3),)), ("(300000000, 3)", "float64")),
        ("reconstruct", _Reduce(_reconstruct(), (np.ndarray, (300_000_000, 3), b"f")), ("(300000000, 3)",)),
        (
            "zero_strides",  # a 10^9-element view of 8 bytes; converting it copies 8 GB
            _Reduce(np.ndarray, ((10**9,), np.dtype("f8"), b"\0" * 8, 0, (0,))),
            ("(1000000000,)",),
        ),
    ],
)
def test_huge_arrays_are_refused_before_allocation(tmp_path, run_limited, name, value, words):
    path = _dump(_with_position(value), tmp_path / f"{name}.pkl")
    assert path.stat().st_size < 4096
    result = run_limited(LOAD, path)
    _assert_limit(result, path, field=None, words=("numpy array", *words))


def test_object_array_state_shorter_than_its_shape(tmp_path, run_limited):
    """numpy segfaults on this BUILD state (10 objects declared, none given): a crash today."""
    value = _Reduce(_reconstruct(), (np.ndarray, (0,), b"b"), (1, (10,), np.dtype("O"), False, []))
    path = _dump(_with_position(value), tmp_path / "short_objects.pkl", protocol=2)
    result = run_limited(LOAD, path)
    assert not result["ok"] and result["type"] == "BadPickleError", result
    assert str(path) in result["message"] and "10 elements" in result["message"], result


def test_nested_shared_list_is_refused_by_its_expanded_size(tmp_path, run_limited):
    """A list of 10 references to a list of 10 ... : 10^8 floats from a few hundred bytes."""
    nested: list = [0.0] * 10
    for _ in range(7):
        nested = [nested] * 10
    path = _dump(_with_position(nested), tmp_path / "shared.pkl")
    assert path.stat().st_size < 4096
    result = run_limited(LOAD, path, timeout_s=45)
    _assert_limit(result, path, field="tracks['0'].state.position", words=("expands to",))


def test_deep_nesting_is_refused(tmp_path, run_limited):
    """100 000 nested lists as ``length``: today the error message's repr raises RecursionError."""
    depth = 100_000
    data = pickle.dumps(_scenario(length="PLACEHOLDER"), protocol=2)
    placeholder = b"X" + len("PLACEHOLDER").to_bytes(4, "little") + b"PLACEHOLDER"
    assert data.count(placeholder) == 1
    deep = b"]" * depth + b"a" * (depth - 1)  # EMPTY_LIST x depth, then APPEND each into the one below
    path = tmp_path / "deep.pkl"
    path.write_bytes(data.replace(placeholder, deep))
    result = run_limited(LOAD, path)
    _assert_limit(result, path, field="length", words=("nested", "64"))


def test_expanded_size_budget_grows_with_the_file(tmp_path):
    """A real-sized scenario (200 tracks x 200 steps, a 1.4 MB file) is far inside the budget."""
    n, steps = 200, 200
    sd = _scenario(length=steps, tracks={str(k): _track(steps) for k in range(n)})
    sd["metadata"]["ts"] = np.arange(steps, dtype=np.float32) * 0.1
    for track in sd["tracks"].values():
        track["state"]["velocity"] = np.zeros((steps, 2), dtype=np.float32)
        for name in ("length", "width", "height"):
            track["state"][name] = np.ones(steps, dtype=np.float32)
    scene = load_scenarionet(_dump(sd, tmp_path / "big.pkl"))
    assert scene.tracks.num_agents == n and scene.num_steps == steps


# ----------------------------------------------------------------------------------------------
# Dataset folders: mapped paths stay inside the dataset.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, folder",
    [("passwd", "../../etc"), ("passwd", "/etc"), ("outside.pkl", ".."), ("outside.pkl", "ds/../..")],
)
def test_mapping_outside_the_dataset_is_refused(tmp_path, name, folder):
    root = tmp_path / "dataset"
    _dump(_scenario(), tmp_path / "outside.pkl")  # a readable scenario, but not this dataset's
    _dump(_scenario(), root / "ds" / "inside.pkl")
    _dump({"inside.pkl": "ds", name: folder}, root / MAPPING_FILE)
    mapping = root / MAPPING_FILE
    pattern = rf"^{mapping}: entry {name!r}: .* outside the dataset folder {root}"
    with pytest.raises(ScenarioNetError, match=pattern) as info:
        scenarionet_files(root)
    assert info.value.field == repr(name)
    with pytest.raises(ScenarioNetError, match=pattern):
        list(iter_scenarionet(root))
    with pytest.raises(ScenarioNetError, match=pattern):
        load_scenarionet(root, 0)
    with pytest.raises(ValueError, match=pattern):
        list_units(f"scenarionet:{root}")


def test_mapping_through_symlinks_is_resolved(tmp_path):
    root = tmp_path / "dataset"
    outside = tmp_path / "elsewhere"
    _dump(_scenario(), outside / "x.pkl")
    root.mkdir()
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "linked.pkl").symlink_to(outside / "x.pkl")
    for mapping in ({"x.pkl": "linked_dir"}, {"linked.pkl": ""}):
        _dump(mapping, root / MAPPING_FILE)
        with pytest.raises(ScenarioNetError, match=r"outside the dataset folder"):
            scenarionet_files(root)
    (root / MAPPING_FILE).unlink()  # Walking the folder: the link to a file outside is refused too.
    with pytest.raises(ScenarioNetError, match=rf"{root / 'linked.pkl'}: .*outside the dataset folder"):
        scenarionet_files(root)


def test_combined_dataset_beside_its_sources_loads_and_unlisted_files_are_refused(tmp_path):
    """scenarionet combine maps into the source datasets ("../waymo/waymo_0"): accepted for .pkl
    files that the dataset_summary.pkl of their own folder lists, and only those."""
    src = tmp_path / "waymo" / "waymo_0"
    _dump(_scenario(id="a"), src / "sd_a.pkl")
    _dump(_scenario(id="b"), src / "sd_b.pkl")
    _dump({"sd_a.pkl": {"id": "a"}, "sd_b.pkl": {"id": "b"}}, src / SUMMARY_FILE)
    _dump(_scenario(id="stray"), tmp_path / "waymo" / "stray.pkl")  # no summary lists it
    combined = tmp_path / "combined"
    _dump({"sd_a.pkl": "../waymo/waymo_0", "sd_b.pkl": "../waymo/waymo_0"}, combined / MAPPING_FILE)
    files = scenarionet_files(combined)
    assert [f.resolve() for f in files] == [src / "sd_a.pkl", src / "sd_b.pkl"]
    assert [s.scene_id for s in iter_scenarionet(combined)] == ["a", "b"]
    for entry in ({"stray.pkl": "../waymo"}, {"sd_c.pkl": "../waymo/waymo_0"}, {SUMMARY_FILE: "../waymo/waymo_0"}):
        _dump(entry, combined / MAPPING_FILE)
        with pytest.raises(ScenarioNetError, match=r"outside the dataset folder .* listed in the dataset_summary.pkl"):
            scenarionet_files(combined)


def test_mapping_inside_the_dataset_still_works(tmp_path):
    root = tmp_path / "dataset"
    _dump(_scenario(), root / "ds_0" / "a.pkl")
    _dump(_scenario(), root / "b.pkl")
    inner = root / "ds_1"
    inner.mkdir()
    (inner / "b_link.pkl").symlink_to(root / "b.pkl")  # a link that stays inside
    _dump({"a.pkl": "ds_0/../ds_0", "b.pkl": "", "b_link.pkl": "ds_1"}, root / MAPPING_FILE)
    names = [p.relative_to(root).as_posix() for p in scenarionet_files(root)]
    assert names == ["b.pkl", "ds_0/a.pkl", "ds_1/b_link.pkl"]
    assert len(list(iter_scenarionet(root))) == 3


@pytest.mark.parametrize("index_files", [False, True])
def test_folder_without_scenarios_is_an_error(tmp_path, index_files):
    root = tmp_path / "EMPTY_DIR"
    root.mkdir()
    if index_files:
        _dump({}, root / SUMMARY_FILE)
        _dump({}, root / MAPPING_FILE)
    (root / "notes.txt").write_text("no pickles here")
    pattern = rf"no ScenarioNet scenarios in {root}"
    with pytest.raises(ScenarioNetError, match=pattern):
        scenarionet_files(root)
    with pytest.raises(ScenarioNetError, match=pattern):
        list(iter_scenarionet(root))
    with pytest.raises(ValueError, match=pattern):
        list_units(f"scenarionet:{root}")


def test_mapped_path_that_is_not_a_regular_file(tmp_path, run_limited):
    """A mapped folder or named pipe is skipped and reported; today opening the pipe blocks."""
    root = tmp_path / "dataset"
    (root / "sub.pkl").mkdir(parents=True)  # a folder named like a scenario
    os.mkfifo(root / "pipe.pkl")
    _dump(_scenario(), root / "ok.pkl")
    _dump({"sub.pkl": "", "pipe.pkl": "", "ok.pkl": ""}, root / MAPPING_FILE)
    code = (
        "from rap.sources.scenarionet import iter_scenarionet\n"
        "def go():\n"
        "    skipped = []\n"
        "    scenes = list(iter_scenarionet(sys.argv[1], on_skip=skipped.append))\n"
        "    raise RuntimeError(json.dumps([len(scenes), [[e.path, str(e)] for e in skipped]]))\n"
        "report(go)\n"
    )
    result = run_limited(code, root, timeout_s=20)
    assert result["type"] == "RuntimeError", result
    num_scenes, skipped = json.loads(result["message"])
    assert num_scenes == 1
    assert [path for path, _ in skipped] == [str(root / "pipe.pkl"), str(root / "sub.pkl")]
    assert all("not a regular file" in message for _, message in skipped), skipped


def test_a_refused_file_is_skipped_and_reported_in_a_folder(tmp_path):
    """10^7 shared leaves (80 MB expanded, over a 4 KB file's 64 MiB): skipped, the rest loads."""
    nested: list = [0.0] * 10
    for _ in range(6):
        nested = [nested] * 10
    _dump(_with_position(nested), tmp_path / "a_bomb.pkl")
    _dump(_scenario(), tmp_path / "b_good.pkl")
    skipped: list[ScenarioNetError] = []
    scenes = list(iter_scenarionet(tmp_path, on_skip=skipped.append))
    assert [s.scene_id for s in scenes] == ["tiny"]
    assert [type(e).__name__ for e in skipped] == ["ScenarioNetLimitError"]
    assert skipped[0].field == "tracks['0'].state.position" and "a_bomb.pkl" in str(skipped[0])


def test_errors_survive_pickling():
    """Generation workers send errors across processes: type, message and attributes kept."""
    from rap.sources.scenarionet import RefusedGlobalError, ScenarioNetLimitError

    for err in (
        ScenarioNetLimitError("a.pkl: length ...", path="a.pkl", field="length", value=7, limit=5),
        RefusedGlobalError("b.pkl", "os", "system"),
    ):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err)
        assert copy.__dict__ == err.__dict__


# ----------------------------------------------------------------------------------------------
# CPU: elements shared between keys.
# ----------------------------------------------------------------------------------------------


def test_many_shared_map_features_are_refused_before_conversion(tmp_path):
    """40 000 map features referencing one feature: a 400 KB file that took ~8 s of CPU to
    convert (a 2 MB one, a minute)."""
    feature = {"type": "LANE_SURFACE_STREET", "polyline": np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])}
    path = _dump(_scenario(map_features={str(i): feature for i in range(40_000)}), tmp_path / "shared.pkl")
    with pytest.raises(ScenarioNetError) as caught:
        load_scenarionet(path)
    err = caught.value
    assert type(err).__name__ == "ScenarioNetLimitError" and err.field == "map_features"
    assert err.value == 40_001 and err.limit < 10_000
    assert str(path) in str(err) and "scenario 'tiny'" in str(err) and "map_features 40000" in str(err)


def test_distinct_elements_of_a_real_size_still_load(tmp_path):
    """Each feature with its own arrays (as converters write them) stays far within the bound."""
    features = {str(i): {"type": "LANE_SURFACE_STREET", "polyline": np.array([[i, 0.0, 0.0], [i, 10.0, 0.0]], dtype=np.float32)} for i in range(3000)}
    tracks = {str(i): _track() for i in range(300)}
    path = _dump(_scenario(map_features=features, tracks=tracks), tmp_path / "real.pkl")
    scene = load_scenarionet(path)
    assert scene.tracks.num_agents == 300 and len(scene.map.lanes.ids) == 3000
