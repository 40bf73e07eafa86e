"""Tests for rap/sources/scenarionet.py on hand-built ScenarioNet (MetaDrive SD) pickles.

The fixtures follow ScenarioNet's Waymo converter (scenarionet/converter/waymo/utils.py): string
ids, float32 arrays, per-step (T,) sizes, Waymo lane boundaries with string indices, a traffic
light keyed by its lane with ``LANE_STATE_*`` strings, ``metadata.ts`` / ``sdc_id`` /
``current_time_index``, and a ``number_summary`` holding a ``defaultdict`` and a ``set`` as
ScenarioNet writes it into every file. Variants follow the nuPlan and nuScenes converters.
"""

from __future__ import annotations

import collections
import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import shapely

from rap.scene import AgentType, LaneType, LightState, RoadEdgeType, RoadLineType, StopLineType
from rap.sources.scenarionet import (
    DEFAULT_BOX_SIZE,
    DEFAULT_TIMESTEP,
    MAPPING_FILE,
    SUMMARY_FILE,
    BadPickleError,
    RefusedGlobalError,
    SafeUnpickler,
    ScenarioNetError,
    iter_scenarionet,
    load_scenarionet,
    safe_load,
    scenarionet_files,
    scene_from_scenarionet,
)
from rap.sources.womd import MPH_TO_MPS, REAR_AXLE_RATIO

T = 11  # Steps at 0.1 s.
F32 = np.float32


def _line(y: float, x0: float = 0.0, x1: float = 50.0, n: int = 11, z: float = 0.2) -> np.ndarray:
    x = np.linspace(x0, x1, n)
    return np.stack([x, np.full(n, y), np.full(n, z)], axis=1).astype(F32)


def _boundary(feature_id: str, kind: str) -> dict:
    # ScenarioNet stores every value of a boundary segment as a string.
    return {"lane_start_index": "0", "lane_end_index": "10", "boundary_type": kind,
            "boundary_feature_id": feature_id}  # fmt: skip


def make_scenario() -> dict:
    """A 1.0 s scenario: 2 lanes, a road line, a road edge, a crosswalk, 3 tracks, 1 light."""
    ts = (np.arange(T) * 0.1).astype(F32)
    t = np.arange(T, dtype=np.float64)

    def track(kind, x, y, heading, size, valid, velocity, z):
        length, width, height = size
        return {
            "type": kind,
            "state": {
                "position": np.stack([x, y, z], axis=1).astype(F32),
                "heading": np.asarray(heading, dtype=F32),
                "velocity": np.asarray(velocity, dtype=F32),
                "length": np.full(T, length, dtype=F32),
                "width": np.full(T, width, dtype=F32),
                "height": np.full(T, height, dtype=F32),
                "valid": np.asarray(valid, dtype=bool),
            },
            "metadata": {"type": kind, "track_length": T, "dataset": "waymo"},
        }

    # Vehicle "8" on the left lane, valid from step 2; invalid steps hold -1 fill and a NaN.
    v8 = np.arange(T) >= 2
    car = track("VEHICLE", np.where(v8, 10 + 5 * t * 0.1, -1), np.where(v8, 3.5, -1),
                np.where(v8, 0.0, np.nan), (4.0, 1.8, 1.5), v8,
                np.where(v8[:, None], [[5.0, 0.0]], -1), np.where(v8, 0.95, -1))  # fmt: skip
    sdc = track("VEHICLE", 5 + 10 * t * 0.1, np.zeros(T), np.zeros(T), (4.8, 2.0, 1.6),
                np.ones(T, bool), np.tile([[10.0, 0.0]], (T, 1)), np.full(T, 1.0))  # fmt: skip
    ped = track("PEDESTRIAN", np.full(T, 42.0), -1.0 + 0.14 * t, np.full(T, math.pi / 2),
                (0.6, 0.6, 1.8), np.ones(T), np.tile([[0.0, 1.4]], (T, 1)),
                np.full(T, 1.1))  # fmt: skip
    ped["state"]["valid"] = np.ones(T, dtype=F32)  # nuScenes-style 0/1 floats.
    for name in ("length", "width", "height"):  # nuScenes-style (T, 1) sizes.
        ped["state"][name] = ped["state"][name][:, None]

    crosswalk = np.array([[40, -1.75, 0.2], [44, -1.75, 0.2], [44, 5.25, 0.2], [40, 5.25, 0.2],
                          [40, -1.75, 0.2]], dtype=F32)  # fmt: skip
    map_features = {
        "100": {
            "type": "LANE_SURFACE_STREET", "polyline": _line(0.0), "interpolating": False,
            "speed_limit_mph": 25.0, "speed_limit_kmh": 25.0 * 1.609344,
            "entry_lanes": [], "exit_lanes": ["999"],  # 999 is not in the map.
            "left_boundaries": [_boundary("200", "ROAD_LINE_BROKEN_SINGLE_WHITE")],
            "right_boundaries": [_boundary("300", "ROAD_EDGE_BOUNDARY")],
            "left_neighbor": [{"feature_id": "101", "self_start_index": "0",
                               "self_end_index": "10", "neighbor_start_index": "0",
                               "neighbor_end_index": "10", "boundaries": []}],
            "right_neighbor": [],
        },
        "101": {
            "type": "LANE_FREEWAY", "polyline": _line(3.5), "interpolating": False,
            "speed_limit_kmh": 72.0, "entry_lanes": [], "exit_lanes": [],
            "left_boundaries": [], "right_boundaries": [_boundary("200", "ROAD_LINE")],
            "left_neighbor": [], "right_neighbor": [{"feature_id": "100"}],
        },
        "200": {"type": "ROAD_LINE_BROKEN_SINGLE_WHITE", "polyline": _line(1.75)},
        "300": {"type": "ROAD_EDGE_BOUNDARY", "polyline": _line(-1.75)},
        "400": {"type": "CROSSWALK", "polygon": crosswalk},
    }  # fmt: skip
    lights = {
        "100": {
            "type": "TRAFFIC_LIGHT",
            "state": {"object_state": ["LANE_STATE_STOP"] * 5 + ["LANE_STATE_GO"] * 5 + [None]},
            "lane": 100,
            "stop_point": np.array([38.0, 0.0, 0.2], dtype=F32),
            "metadata": {"track_length": T, "type": "TRAFFIC_LIGHT", "object_id": "100"},
        }
    }
    number_summary = {
        "object_types": {"VEHICLE", "PEDESTRIAN"},
        "num_objects_each_type": collections.defaultdict(int, {"VEHICLE": 2, "PEDESTRIAN": 1}),
    }
    return {
        "id": "abc123",
        "version": "v1.2",
        "length": T,
        "tracks": {"8": car, "7": sdc, "ped_1": ped},  # The SDC is not the first track.
        "dynamic_map_states": lights,
        "map_features": map_features,
        "metadata": {
            "id": "abc123", "scenario_id": "abc123", "dataset": "waymo", "coordinate": "waymo",
            "ts": ts, "metadrive_processed": False, "sdc_id": "7", "current_time_index": 3,
            "track_length": T, "number_summary": number_summary,
        },  # fmt: skip
    }


def dump(obj, path: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.fixture()
def scenario_file(tmp_path) -> Path:
    return dump(make_scenario(), tmp_path / "sd_waymo_v1.2_abc123.pkl")


@pytest.fixture()
def scene(scenario_file):
    return load_scenarionet(scenario_file)


# ----------------------------------------------------------------------------------------------
# Conversion.
# ----------------------------------------------------------------------------------------------


def test_header(scene, scenario_file):
    assert scene.scene_id == "abc123"
    assert scene.source == f"scenarionet:{scenario_file}"
    assert scene.num_steps == T
    assert scene.current_index == 3
    np.testing.assert_allclose(scene.timestamps, np.arange(T) * 0.1, atol=1e-6)
    assert scene.timestamps.dtype == np.float64


def test_tracks(scene):
    tr = scene.tracks
    assert tr.num_agents == 3
    assert scene.ego_index == 1
    assert tr.ids[:2].tolist() == [8, 7]
    assert tr.ids[2] == -1  # Non-numeric id "ped_1".
    assert tr.types.tolist() == [AgentType.VEHICLE, AgentType.VEHICLE, AgentType.PEDESTRIAN]
    # SDC: centred boxes pass through.
    e = scene.ego_index
    np.testing.assert_allclose(tr.x[e], 5 + np.arange(T), atol=1e-5)
    np.testing.assert_allclose(tr.z[e], 1.0)
    np.testing.assert_allclose(tr.vx[e], 10.0)
    assert tr.length[e, 0] == pytest.approx(4.8)
    assert tr.rear_axle_offset[e] == pytest.approx(REAR_AXLE_RATIO * 4.8, rel=1e-6)
    assert tr.rear_axle_offset[2] == 0.0
    # Vehicle 8: invalid steps are 0 (the -1 fill and the NaN heading are gone).
    assert tr.valid[0].tolist() == [False] * 2 + [True] * 9
    for name in ("x", "y", "z", "heading", "vx", "vy", "length", "width", "height"):
        assert np.all(getattr(tr, name)[~tr.valid] == 0), name
    assert tr.y[0, 5] == pytest.approx(3.5)
    # Pedestrian with (T, 1) sizes and 0/1 float valid flags.
    assert tr.valid[2].all()
    assert tr.width[2, 4] == pytest.approx(0.6)
    assert tr.heading[2, 0] == pytest.approx(math.pi / 2)
    # The ego frame puts the rear axle at the origin.
    pose = scene.ego_pose()
    assert pose[0] == pytest.approx(8.0 - REAR_AXLE_RATIO * 4.8, rel=1e-5)
    assert pose[2] == pytest.approx(1.0 - 0.8)
    np.testing.assert_allclose(scene.in_ego_frame().ego_pose(), 0.0, atol=1e-9)


def test_map(scene):
    m = scene.map
    assert (len(m.lanes), len(m.road_lines), len(m.road_edges), len(m.crosswalks)) == (2, 1, 1, 1)
    assert (len(m.speed_bumps), len(m.driveways), len(m.stop_signs)) == (0, 0, 0)
    lanes = m.lanes
    assert lanes.ids.tolist() == [100, 101]
    assert lanes.types.tolist() == [LaneType.SURFACE_STREET, LaneType.FREEWAY]
    k, j = lanes.index_of(100), lanes.index_of(101)
    assert lanes.successors[k] == (999,) and lanes.predecessors[k] == ()
    assert lanes.left_neighbors[k] == (101,) and lanes.right_neighbors[j] == (100,)
    assert lanes.speed_limit[k] == pytest.approx(25 * MPH_TO_MPS)  # mph wins over km/h.
    assert lanes.speed_limit[j] == pytest.approx(20.0)  # 72 km/h.
    assert lanes.has_speed_limit.all()
    # Widths from boundaries: 1.75 m to each side of lane 100; one side (x2) for lane 101.
    np.testing.assert_allclose(lanes.width, [3.5, 3.5], rtol=1e-5)
    np.testing.assert_allclose(lanes.centerlines[j][:, 1:], [[3.5, 0.2]] * 11, rtol=1e-6)
    assert m.road_lines.types.tolist() == [RoadLineType.BROKEN_SINGLE_WHITE]
    assert m.road_edges.types.tolist() == [RoadEdgeType.BOUNDARY]
    assert m.road_edges.ids.tolist() == [300]
    ring = m.crosswalks.rings[0]
    assert ring.shape == (4, 3)  # The closing point is dropped.
    assert m.crosswalks.ids.tolist() == [400]


def test_traffic_light_and_stop_line(scene):
    lights = scene.traffic_lights
    assert lights.lane_ids.tolist() == [100]
    np.testing.assert_allclose(lights.stop_points[0], [38.0, 0.0, 0.2], rtol=1e-6)
    assert lights.states[0].tolist() == [LightState.STOP] * 5 + [LightState.GO] * 5 + [0]
    assert lights.valid[0].tolist() == [True] * 10 + [False]
    stop = scene.map.stop_lines
    assert stop.ids.tolist() == [100] and stop.types.tolist() == [StopLineType.TRAFFIC_LIGHT]
    np.testing.assert_allclose(stop.lines[0].mean(axis=0), [38.0, 0.0, 0.2], atol=1e-6)
    assert np.linalg.norm(stop.lines[0][1] - stop.lines[0][0]) == pytest.approx(3.5, rel=1e-5)


def test_drivable_area_covers_lanes_and_ego(scene):
    area = scene.map.drivable_polygon
    assert area.is_valid and not area.is_empty
    lanes = scene.map.lanes
    for line, width in zip(lanes.centerlines, lanes.width):
        strip = shapely.LineString(line[:, :2]).buffer(0.5 * float(width) - 0.01, cap_style="flat")
        assert area.contains(strip)
    corners = scene.tracks.corners_2d()[scene.ego_index].reshape(-1, 2)
    inside = corners[:, 0] <= 50.0  # The lanes end at x = 50 m; the ego drives to x = 15 m.
    assert shapely.contains_xy(area.buffer(1e-6), corners[inside, 0], corners[inside, 1]).all()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_protocols(tmp_path, protocol):
    path = dump(make_scenario(), tmp_path / "s.pkl", protocol=protocol)
    scene = load_scenarionet(path)
    assert scene.tracks.num_agents == 3 and len(scene.map.lanes) == 2
    data = safe_load(path)
    assert isinstance(data["metadata"]["number_summary"]["num_objects_each_type"],
                      collections.defaultdict)  # fmt: skip


def test_metadrive_scenario_description_class(tmp_path, monkeypatch):
    """MetaDrive's dict subclass (unconverted export_scenarios output) loads as a dict."""
    for parent in ("metadrive", "metadrive.scenario"):  # Importable for pickle.dump only.
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    module = types.ModuleType("metadrive.scenario.scenario_description")

    class ScenarioDescription(dict):
        pass

    ScenarioDescription.__module__ = module.__name__
    ScenarioDescription.__qualname__ = "ScenarioDescription"
    module.ScenarioDescription = ScenarioDescription
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = dump(ScenarioDescription(make_scenario()), tmp_path / "sd.pkl")
    for name in ("metadrive", "metadrive.scenario", module.__name__):
        monkeypatch.delitem(sys.modules, name)
    assert load_scenarionet(path).scene_id == "abc123"


def test_optional_fields_missing(tmp_path):
    sd = make_scenario()
    del sd["dynamic_map_states"], sd["map_features"]
    md = sd["metadata"]
    del md["ts"], md["current_time_index"]
    md["sample_rate"] = 0.5
    state = sd["tracks"]["7"]["state"]
    del state["velocity"], state["valid"], state["length"], state["width"], state["height"]
    scene = scene_from_scenarionet(sd, path="x.pkl")
    np.testing.assert_allclose(scene.timestamps, np.arange(T) * 0.5)
    assert scene.current_index == 0
    assert len(scene.map.lanes) == 0 and len(scene.traffic_lights) == 0
    e = scene.ego_index
    assert scene.tracks.valid[e].all()
    np.testing.assert_allclose(scene.tracks.vx[e], 2.0)  # 1 m per 0.5 s, from positions.
    length, width, height = DEFAULT_BOX_SIZE[AgentType.VEHICLE]
    assert scene.tracks.length[e, 0] == pytest.approx(length)
    assert scene.tracks.height[e, 0] == pytest.approx(height)
    del md["sample_rate"]
    np.testing.assert_allclose(
        scene_from_scenarionet(sd).timestamps, np.arange(T) * DEFAULT_TIMESTEP
    )


def test_nuplan_style(tmp_path):
    """nuPlan converter: 2D map, z = 0 positions, lane polygons, string ids, nuPlan lights."""
    sd = make_scenario()
    sd["metadata"]["dataset"] = "nuplan"
    sd["metadata"]["sdc_id"] = "ego"
    sd["tracks"]["ego"] = sd["tracks"].pop("7")
    for track in sd["tracks"].values():
        track["state"]["position"] = track["state"]["position"].astype(np.float64)
        track["state"]["position"][:, 2] = 0.0
    token = "4f1a9c"
    surface = np.array([[0, -2], [50, -2], [50, 2], [0, 2], [0, -2]], dtype=np.float64)
    lane = {"type": "LANE_SURFACE_STREET", "polyline": _line(0.0)[:, :2], "polygon": surface}
    sd["map_features"] = {token: lane, "boundary_0": {"type": "ROAD_LINE_SOLID_SINGLE_WHITE",
                                                      "polyline": _line(-2.0)[:, :2]}}  # fmt: skip
    sd["dynamic_map_states"] = {token: {
        "type": "TRAFFIC_LIGHT", "lane": token, "stop_point": [30.0, 0.0],
        "state": {"object_state": ["TRAFFIC_LIGHT_RED"] * 6 + ["TRAFFIC_LIGHT_UNKNOWN"] * 5},
        "metadata": {}}}  # fmt: skip
    scene = load_scenarionet(dump(sd, tmp_path / "nuplan.pkl"))
    tr, e = scene.tracks, scene.ego_index
    np.testing.assert_allclose(tr.z[e], 0.8)  # On the ground: centre at height / 2.
    np.testing.assert_allclose(tr.z[0][tr.valid[0]], 0.75)
    assert scene.map.lanes.ids.tolist() == [-1]
    assert scene.map.road_lines.ids.tolist() == [-2]
    assert scene.map.lanes.width[0] == pytest.approx(4.0)  # From the polygon.
    lights = scene.traffic_lights
    assert lights.lane_ids.tolist() == [-1]
    np.testing.assert_allclose(lights.stop_points[0], [30.0, 0.0, 0.0])
    assert lights.states[0, :6].tolist() == [LightState.STOP] * 6
    assert lights.valid[0].tolist() == [True] * 6 + [False] * 5
    area = scene.map.drivable_polygon  # Holds the whole lane polygon (4 m), not just 3.7 m.
    assert area.buffer(1e-6).contains(shapely.box(0, -2, 50, 2))


def test_nuscenes_ego_is_rear_axle(tmp_path):
    sd = make_scenario()
    sd["metadata"]["dataset"] = "nuscenes"
    lane = sd["map_features"]["101"]
    lane["polyline"] = lane["polyline"].copy()
    lane["polyline"][:, 2] = 1.2  # discretize_lane's yaw column, not z.
    scene = scene_from_scenarionet(sd)
    tr, e = scene.tracks, scene.ego_index
    back = REAR_AXLE_RATIO * 4.8
    np.testing.assert_allclose(tr.x[e], 5 + np.arange(T) + back, rtol=1e-6)
    np.testing.assert_allclose(scene.ego_pose()[0], 8.0, rtol=1e-6)  # The logged pose.
    assert np.all(scene.map.lanes.centerlines[scene.map.lanes.index_of(101)][:, 2] == 0)


# ----------------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------------


def test_refused_global_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(RefusedGlobalError) as info:
        load_scenarionet(path)
    assert str(path) in str(info.value) and "os.system" in str(info.value)
    assert (info.value.module, info.value.name) == ("os", "system")
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


class Custom:
    """A class a pickle may not name."""

    def __init__(self) -> None:
        self.x = 1


def test_refused_custom_class(tmp_path):
    sd = make_scenario()
    sd["metadata"]["extra"] = Custom()
    path = dump(sd, tmp_path / "custom.pkl")
    with pytest.raises(RefusedGlobalError, match=r"custom\.pkl: refused global .*\.Custom"):
        safe_load(path)


def test_reduce_payload_is_refused_in_memory():
    import io

    class Boom:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    data = pickle.dumps({"a": [Boom()]})
    with pytest.raises(RefusedGlobalError, match=r"<mem>: refused global builtins\.eval"):
        SafeUnpickler(io.BytesIO(data), path="<mem>").load()


def test_truncated_pickle(tmp_path, scenario_file):
    data = scenario_file.read_bytes()
    path = tmp_path / "truncated.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadPickleError, match=rf"^{path}: not a readable pickle"):
        load_scenarionet(path)


def test_nan_heading_names_track_and_field():
    sd = make_scenario()
    sd["tracks"]["8"]["state"]["heading"][4] = np.nan
    with pytest.raises(ScenarioNetError) as info:
        scene_from_scenarionet(sd, path="a.pkl")
    assert str(info.value) == "a.pkl scenario 'abc123': tracks['8'].state.heading[4] is NaN"
    assert info.value.field == "tracks['8'].state.heading[4]"


def _set(path: tuple, value):
    def mutate(sd):
        obj = sd
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return mutate


def _delete(path: tuple):
    def mutate(sd):
        obj = sd
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (_delete(("tracks", "7", "state", "position")),
         r"tracks\['7'\]\.state\.position is missing"),
        (_delete(("metadata", "sdc_id")), r"metadata\.sdc_id is missing"),
        (_set(("metadata", "sdc_id"), "42"), r"metadata\.sdc_id '42' is not a key of tracks"),
        (_set(("tracks", "7", "type"), "SPACESHIP"), r"tracks\['7'\]\.type 'SPACESHIP' is not"),
        (_set(("tracks", "7", "state", "heading"), np.zeros(T - 1)),
         r"tracks\['7'\]\.state\.heading has shape \(10,\), expected \(11,\)"),
        (_set(("tracks", "7", "state", "valid"), np.full(T, 0.5)),
         r"tracks\['7'\]\.state\.valid\[0\] is 0\.5"),
        (_set(("tracks", "7", "state", "length"), np.full(T, -1.0)),
         r"tracks\['7'\]\.state\.length\[0\] is negative"),
        (_set(("metadata", "ts"), np.zeros(T)), r"metadata\.ts\[1\] is not after"),
        (_set(("metadata", "current_time_index"), T), r"metadata\.current_time_index 11 out of"),
        (_set(("length", ), 0), r"length must be an integer >= 1"),
        (_set(("map_features", "300", "polyline"), np.array([[0, 0, 0], [1, np.inf, 0]])),
         r"map_features\['300'\]\.polyline\[1\]\.y is not finite"),
        (_set(("map_features", "400", "polygon"), np.zeros((3, 3))),
         r"map_features\['400'\]\.polygon has 1 distinct corners, need 3"),
        (_delete(("map_features", "200", "type")), r"map_features\['200'\]\.type is missing"),
        (_set(("map_features", "100", "speed_limit_mph"), -3.0),
         r"map_features\['100'\]\.speed_limit_mph is invalid"),
        (_set(("dynamic_map_states", "100", "state", "object_state"), ["LANE_STATE_GO"] * 3),
         r"dynamic_map_states\['100'\]\.state\.object_state has 3 steps, expected 11"),
        (_set(("dynamic_map_states", "100", "state", "object_state"), ["PURPLE"] * T),
         r"dynamic_map_states\['100'\]\.state\.object_state\[0\] 'PURPLE' is not"),
        (_set(("dynamic_map_states", "100", "stop_point"), None),
         r"dynamic_map_states\['100'\]\.stop_point is None"),
    ],
)
def test_conversion_errors_name_file_scene_field(mutate, match):
    sd = make_scenario()
    mutate(sd)
    with pytest.raises(ScenarioNetError, match=r"^x\.pkl scenario 'abc123': " + match):
        scene_from_scenarionet(sd, path="x.pkl")


def test_top_level_errors():
    with pytest.raises(ScenarioNetError, match=r"^x\.pkl: top level is a list, expected a dict"):
        scene_from_scenarionet([1, 2], path="x.pkl")
    sd = make_scenario()
    del sd["id"]
    with pytest.raises(ScenarioNetError, match=r"^x\.pkl: id is missing"):
        scene_from_scenarionet(sd, path="x.pkl")


def test_ignored_and_nan_at_invalid_steps():
    sd = make_scenario()
    sd["map_features"]["500"] = {"type": "ROAD_EDGE_SIDEWALK", "polygon": np.zeros((4, 2))}
    sd["tracks"]["8"]["state"]["position"][0] = np.nan  # Step 0 is invalid for track 8.
    scene = scene_from_scenarionet(sd)
    assert scene.tracks.x[0, 0] == 0.0
    assert 500 not in scene.map.road_edges.ids and len(scene.map.crosswalks) == 1


def test_record_index(tmp_path, scenario_file):
    with pytest.raises(IndexError, match="holds one scenario"):
        load_scenarionet(scenario_file, 1)
    with pytest.raises(FileNotFoundError):
        load_scenarionet(tmp_path / "missing.pkl")


# ----------------------------------------------------------------------------------------------
# Dataset folders.
# ----------------------------------------------------------------------------------------------


def _scenario(scene_id: str) -> dict:
    sd = make_scenario()
    sd["id"] = scene_id
    return sd


def _dataset(root: Path) -> dict[str, Path]:
    """A ScenarioNet dataset: summary and mapping at the top, scenarios in worker sub-folders."""
    files = {
        "sd_b.pkl": dump(_scenario("b"), root / "ds_1" / "sd_b.pkl"),
        "sd_a.pkl": dump(_scenario("a"), root / "ds_0" / "sd_a.pkl"),
        "sd_c.pkl": dump(_scenario("c"), root / "ds_0" / "sd_c.pkl"),
    }
    bad = root / "ds_1" / "sd_bad.pkl"
    bad.write_bytes(pickle.dumps(_scenario("bad"))[:100])  # Truncated.
    files["sd_bad.pkl"] = bad
    dump({name: {"id": name} for name in files}, root / SUMMARY_FILE)
    dump({name: path.parent.name for name, path in files.items()}, root / MAPPING_FILE)
    return files


def test_dataset_dir_with_mapping(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "stray.pkl").write_bytes(b"not listed in the mapping")
    listed = scenarionet_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in listed] == [
        "ds_0/sd_a.pkl", "ds_0/sd_c.pkl", "ds_1/sd_b.pkl", "ds_1/sd_bad.pkl",
    ]  # fmt: skip
    skipped: list[ScenarioNetError] = []
    scenes = list(iter_scenarionet(tmp_path, on_skip=skipped.append))
    assert [s.scene_id for s in scenes] == ["a", "c", "b"]
    assert len(skipped) == 1 and isinstance(skipped[0], BadPickleError)
    assert "sd_bad.pkl" in str(skipped[0])
    assert load_scenarionet(tmp_path, 2).scene_id == "b"
    with pytest.raises(IndexError):
        load_scenarionet(tmp_path, 4)


def test_dataset_dir_without_mapping_walks_subfolders(tmp_path):
    _dataset(tmp_path)
    (tmp_path / MAPPING_FILE).unlink()
    dump({"x": ""}, tmp_path / "ds_0" / MAPPING_FILE)  # A sub-dataset's own index files.
    dump({}, tmp_path / "ds_0" / SUMMARY_FILE)
    names = [p.name for p in scenarionet_files(tmp_path)]
    assert names == ["sd_a.pkl", "sd_c.pkl", "sd_b.pkl", "sd_bad.pkl"]
    with pytest.warns(RuntimeWarning, match="skipped ScenarioNet file: .*sd_bad.pkl"):
        scenes = list(iter_scenarionet(tmp_path))
    assert [s.scene_id for s in scenes] == ["a", "c", "b"]


def test_dataset_missing_mapped_file_and_bad_mapping(tmp_path):
    dump({"sd_a.pkl": "", "sd_gone.pkl": ""}, tmp_path / MAPPING_FILE)
    dump(_scenario("a"), tmp_path / "sd_a.pkl")
    skipped: list[ScenarioNetError] = []
    assert [s.scene_id for s in iter_scenarionet(tmp_path, on_skip=skipped.append)] == ["a"]
    assert len(skipped) == 1 and "sd_gone.pkl" in str(skipped[0])
    dump(["not", "a", "dict"], tmp_path / MAPPING_FILE)
    with pytest.raises(ScenarioNetError, match=MAPPING_FILE):
        list(iter_scenarionet(tmp_path))


def test_iter_single_file(scenario_file):
    assert [s.scene_id for s in iter_scenarionet(scenario_file)] == ["abc123"]


# ----------------------------------------------------------------------------------------------
# The shipped real WOMD scenario, written in ScenarioNet's Waymo schema.
# ----------------------------------------------------------------------------------------------


def _sd_from_womd(proto) -> dict:
    """The SD dict ScenarioNet's Waymo converter writes for a Scenario proto (its field names,
    float32 arrays, string ids and boundary values, enum names as strings)."""
    from waymo_open_dataset.protos import map_pb2

    num_steps = len(proto.timestamps_seconds)

    def xyz(points):
        return np.array([[p.x, p.y, p.z] for p in points], dtype=F32).reshape(-1, 3)

    def boundaries(segments):
        return [{"lane_start_index": str(b.lane_start_index), "lane_end_index": str(b.lane_end_index),
                 "boundary_type": "x", "boundary_feature_id": str(b.boundary_feature_id)}
                for b in segments]  # fmt: skip

    agent_names = {0: "UNSET", 1: "VEHICLE", 2: "PEDESTRIAN", 3: "CYCLIST", 4: "OTHER"}
    tracks = {}
    for track in proto.tracks:
        st = track.states
        tracks[str(track.id)] = {
            "type": agent_names[track.object_type],
            "state": {
                "position": np.array([[s.center_x, s.center_y, s.center_z] for s in st], F32),
                "length": np.array([s.length for s in st], F32),
                "width": np.array([s.width for s in st], F32),
                "height": np.array([s.height for s in st], F32),
                "heading": np.array([s.heading for s in st], F32),
                "velocity": np.array([[s.velocity_x, s.velocity_y] for s in st], F32),
                "valid": np.array([s.valid for s in st], bool),
            },
            "metadata": {"track_length": num_steps, "object_id": str(track.id)},
        }
    edge_names = {0: "UNKNOWN", 1: "ROAD_EDGE_BOUNDARY", 2: "ROAD_EDGE_MEDIAN"}
    line_names = {0: "UNKNOWN"}  # As ScenarioNet writes it (MetaDrive reads it as an edge).
    line_names.update({v: "ROAD_LINE_" + k.removeprefix("TYPE_")
                       for k, v in map_pb2.RoadLine.RoadLineType.items() if v})  # fmt: skip
    lane_names = {0: "LANE_UNKNOWN", 1: "LANE_FREEWAY", 2: "LANE_SURFACE_STREET",
                  3: "LANE_BIKE_LANE"}  # fmt: skip
    features = {}
    for f in proto.map_features:
        kind = f.WhichOneof("feature_data")
        if kind == "lane":
            ln = f.lane
            features[str(f.id)] = {
                "type": lane_names[ln.type], "polyline": xyz(ln.polyline),
                "speed_limit_mph": ln.speed_limit_mph, "interpolating": ln.interpolating,
                "entry_lanes": list(ln.entry_lanes), "exit_lanes": list(ln.exit_lanes),
                "left_boundaries": boundaries(ln.left_boundaries),
                "right_boundaries": boundaries(ln.right_boundaries),
                "left_neighbor": [{"feature_id": str(n.feature_id)} for n in ln.left_neighbors],
                "right_neighbor": [{"feature_id": str(n.feature_id)} for n in ln.right_neighbors],
            }  # fmt: skip
        elif kind == "road_line":
            features[str(f.id)] = {"type": line_names[f.road_line.type],
                                   "polyline": xyz(f.road_line.polyline)}  # fmt: skip
        elif kind == "road_edge":
            features[str(f.id)] = {"type": edge_names[f.road_edge.type],
                                   "polyline": xyz(f.road_edge.polyline)}  # fmt: skip
        elif kind == "stop_sign":
            p = f.stop_sign.position
            features[str(f.id)] = {"type": "STOP_SIGN", "lane": list(f.stop_sign.lane),
                                   "position": np.array([p.x, p.y, p.z], F32)}  # fmt: skip
        elif kind in ("crosswalk", "speed_bump", "driveway"):
            features[str(f.id)] = {"type": kind.upper(),
                                   "polygon": xyz(getattr(f, kind).polygon)}  # fmt: skip
    state_names = map_pb2.TrafficSignalLaneState.State.Name
    lights = {}
    for t, step in enumerate(proto.dynamic_map_states):
        for ls in step.lane_states:
            entry = lights.setdefault(str(ls.lane), {
                "type": "TRAFFIC_LIGHT", "lane": ls.lane, "metadata": {},
                "state": {"object_state": [None] * num_steps},
                "stop_point": np.array([ls.stop_point.x, ls.stop_point.y, ls.stop_point.z], F32),
            })  # fmt: skip
            entry["state"]["object_state"][t] = state_names(ls.state)
    return {
        "id": proto.scenario_id, "version": "v1.2", "length": num_steps, "tracks": tracks,
        "dynamic_map_states": lights, "map_features": features,
        "metadata": {"ts": np.array(proto.timestamps_seconds, F32), "coordinate": "waymo",
                     "sdc_id": str(proto.tracks[proto.sdc_track_index].id), "dataset": "waymo",
                     "current_time_index": proto.current_time_index,
                     "scenario_id": proto.scenario_id, "metadrive_processed": False},
    }  # fmt: skip


def test_real_womd_scenario_through_scenarionet_schema(tmp_path, womd_path, womd_scene):
    from waymo_open_dataset.protos import scenario_pb2

    from rap.sources.tfrecord import read_records

    (payload,) = read_records(womd_path)
    sd = _sd_from_womd(scenario_pb2.Scenario.FromString(payload))
    scene = load_scenarionet(dump(sd, tmp_path / "sd_waymo_v1.2_637f20cafde22ff8.pkl"))
    ref = womd_scene
    assert scene.scene_id == ref.scene_id
    assert (scene.current_index, scene.ego_index) == (ref.current_index, ref.ego_index)
    np.testing.assert_allclose(scene.timestamps, ref.timestamps, atol=1e-5)
    tr, rt = scene.tracks, ref.tracks
    np.testing.assert_array_equal(tr.ids, rt.ids)
    np.testing.assert_array_equal(tr.types, rt.types)
    np.testing.assert_array_equal(tr.valid, rt.valid)
    for name in ("x", "y", "z", "vx", "vy", "length", "width", "height"):
        np.testing.assert_allclose(getattr(tr, name), getattr(rt, name), atol=2e-3, err_msg=name)
    dh = np.abs(geometry_wrap(tr.heading - rt.heading))
    assert dh.max() < 1e-5
    np.testing.assert_allclose(tr.rear_axle_offset, rt.rear_axle_offset, rtol=1e-5)
    m, rm = scene.map, ref.map
    for name in ("lanes", "road_lines", "road_edges", "crosswalks", "speed_bumps", "driveways",
                 "stop_signs"):  # fmt: skip
        np.testing.assert_array_equal(getattr(m, name).ids, getattr(rm, name).ids, err_msg=name)
    lanes, rlanes = m.lanes, rm.lanes
    np.testing.assert_array_equal(lanes.types, rlanes.types)
    np.testing.assert_allclose(lanes.width, rlanes.width, atol=1e-3)
    np.testing.assert_allclose(lanes.speed_limit, rlanes.speed_limit, rtol=1e-6)
    for name in ("successors", "predecessors", "left_neighbors", "right_neighbors"):
        assert getattr(lanes, name) == getattr(rlanes, name), name
    np.testing.assert_array_equal(lanes.interpolating, rlanes.interpolating)
    np.testing.assert_array_equal(m.road_lines.types, rm.road_lines.types)
    np.testing.assert_array_equal(m.road_edges.types, rm.road_edges.types)
    assert m.stop_signs.lane_ids == rm.stop_signs.lane_ids
    np.testing.assert_array_equal(m.stop_lines.ids, rm.stop_lines.ids)
    np.testing.assert_array_equal(m.stop_lines.types, rm.stop_lines.types)
    lights, rlights = scene.traffic_lights, ref.traffic_lights
    np.testing.assert_array_equal(lights.lane_ids, rlights.lane_ids)
    np.testing.assert_array_equal(lights.states, rlights.states)
    np.testing.assert_array_equal(lights.valid, rlights.valid)
    area, rarea = m.drivable_polygon, rm.drivable_polygon
    assert area.symmetric_difference(rarea).area < 1e-3 * rarea.area


def geometry_wrap(angle):
    return np.mod(angle + np.pi, 2 * np.pi) - np.pi
