"""Hostile WOMD records (issue 9): valid ``Scenario`` protos of a few MB whose dense
(agents, steps) or (lights, steps) arrays would need hundreds of GiB. Each is loaded in a child
interpreter limited to 1.5 GB (``run_limited``): without the bounds it reports a ``MemoryError``;
with them :class:`WomdLimitError` names the file, the record, the field, the value and the limit
before anything large is allocated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from waymo_open_dataset.protos import scenario_pb2

from rap.sources.tfrecord import read_records, write_records
from rap.sources.womd import load_womd, scene_from_womd

WOMD_FILE = Path(__file__).parents[3] / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"
LOAD = "from rap.sources.womd import load_womd\nreport(lambda: load_womd(sys.argv[1]))\n"
PEAK_RSS_MB = 400
MAX_STEPS = 100_000  # rap.sources.womd.MAX_STEPS


def _scenario(num_steps: int, num_tracks: int, *, sdc_states: bool = False) -> scenario_pb2.Scenario:
    """``num_steps`` timestamps at 10 Hz and ``num_tracks`` tracks without states (track 0, the
    SDC, with valid states when ``sdc_states``)."""
    msg = scenario_pb2.Scenario()
    msg.scenario_id = "hostile"
    msg.timestamps_seconds.extend((np.arange(num_steps) * 0.1).tolist())
    for _ in range(num_tracks):
        msg.tracks.add()
    msg.tracks[0].id = 1
    msg.tracks[0].object_type = 1
    if sdc_states:
        for _ in range(num_steps):
            msg.tracks[0].states.add(valid=True)
    msg.sdc_track_index = 0
    return msg


def _write(msg: scenario_pb2.Scenario, path: Path) -> Path:
    write_records(path, [msg.SerializeToString()])
    return path


def _assert_limit(result: dict, path: Path, field: str, words: tuple[str, ...]) -> None:
    assert not result["ok"], result
    assert result["type"] == "WomdLimitError" and "ValueError" in result["types"], result
    assert result["field"] == field, result
    message = result["message"]
    assert message.startswith(f"{path} record 0: {field} "), message
    for word in ("limit", *words):
        assert word in message, (word, message)
    assert result["peak_rss_mb"] < PEAK_RSS_MB, result


def test_200k_steps_by_200k_empty_tracks(tmp_path, run_limited):
    """A valid 2 MB record whose (agents, steps) arrays would take 298 GiB: today a MemoryError."""
    path = _write(_scenario(200_000, 200_000), tmp_path / "wide.tfrecord")
    assert path.stat().st_size < 3_000_000
    result = run_limited(LOAD, path)
    _assert_limit(result, path, "timestamps_seconds", ("200000 steps", f"{MAX_STEPS}"))


def test_agents_by_steps_within_the_step_limit(tmp_path, run_limited):
    """50 000 steps (allowed) x 100 000 empty tracks: 372 GiB of dense arrays."""
    path = _write(_scenario(50_000, 100_000), tmp_path / "agents.tfrecord")
    result = run_limited(LOAD, path)
    _assert_limit(result, path, "tracks", ("100000 tracks x 50000 steps",))


def test_lights_by_steps(tmp_path, run_limited):
    """100 000 steps, 20 000 lanes with a state at one step: 4 GB of (lights, steps) arrays."""
    msg = _scenario(100_000, 1, sdc_states=True)
    for _ in range(100_000):
        msg.dynamic_map_states.add()
    for lane in range(20_000):
        msg.dynamic_map_states[0].lane_states.add(lane=lane + 1, state=4)
    path = _write(msg, tmp_path / "lights.tfrecord")
    assert path.stat().st_size < 2_000_000
    result = run_limited(LOAD, path)
    _assert_limit(result, path, "dynamic_map_states", ("20000 lanes x 100000 steps",))


def test_track_states_are_counted_before_allocating():
    """Empty tracks within the limits: the states' count is the error, in memory too."""
    msg = _scenario(1000, 10)
    with pytest.raises(ValueError, match=r"x.tfrecord record 3: tracks\[0\].states has 0 entries, expected 1000"):
        scene_from_womd(msg, path="x.tfrecord", record=3)


def test_limit_error_in_memory_names_the_field():
    from rap.sources.womd import MAX_STEPS as limit
    from rap.sources.womd import WomdLimitError

    assert limit == MAX_STEPS
    with pytest.raises(WomdLimitError) as info:
        scene_from_womd(_scenario(MAX_STEPS + 1, 1), path="m.tfrecord", record=2)
    err = info.value
    assert (err.path, err.record, err.field, err.value, err.limit) == ("m.tfrecord", 2, "timestamps_seconds", MAX_STEPS + 1, MAX_STEPS)


def test_real_record_is_within_the_limits():
    (payload,) = read_records(WOMD_FILE)
    assert scene_from_womd(payload).tracks.num_agents == load_womd(WOMD_FILE).tracks.num_agents == 83
