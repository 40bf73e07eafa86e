"""Closed-loop evaluator: scripted agents on hand-picked routes get exactly the penalties the
leaderboard gives; crashes, resume and determinism; the CLI contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.eval.closed_loop.config import ClosedLoopConfig
from rap.eval.closed_loop.routes import ABILITIES, MAX_LENGTH, MIN_LENGTH, load_routes
from rap.eval.closed_loop.runner import (
    evaluate_closed_loop,
    load_agent_spec,
    route_file,
)
from rap.eval.driving_score import results_document
from tests.rap.eval.closed_loop.scripted import (
    BadAgent,
    PursuitAgent,
    StopAgent,
    quiet_config,
    straight_route,
)
from tests.rap.eval.closed_loop.scripted import drive as _drive
from tests.rap.eval.closed_loop.scripted import penalised as _penalised


def _without_wall_clock(doc: dict) -> dict:
    text = json.dumps(doc, sort_keys=True)
    doc = json.loads(text)
    doc["_checkpoint"]["global_record"]["meta"].pop("duration_system")
    for r in doc["_checkpoint"]["records"]:
        r["meta"].pop("duration_system")
    return doc


# --- routes ------------------------------------------------------------------------------------


def test_bench_base_has_40_plus_routes_of_150_to_400_m_covering_every_ability():
    routes = load_routes("bench:base")
    assert len(routes) >= 40
    assert all(MIN_LENGTH <= r.length <= MAX_LENGTH for r in routes)
    assert {a for r in routes for a in r.abilities} == set(ABILITIES)
    assert len({r.route_id for r in routes}) == len(routes)
    assert routes == load_routes("bench:base")  # seeded: the same every time


def test_dev10_is_a_fixed_subset_of_base():
    base = {(r.town_seed, r.lanes, r.event) for r in load_routes("bench:base")}
    dev = load_routes("bench:dev10")
    assert len(dev) == 10 and [r.route_id for r in dev] == [f"RouteScenario_{k}" for k in range(10)]
    assert all((r.town_seed, r.lanes, r.event) in base for r in dev)
    assert {a for r in dev for a in r.abilities} == set(ABILITIES)


def test_unknown_suite_and_bad_n_name_the_spec():
    with pytest.raises(ValueError, match="bench:nope: unknown route suite"):
        load_routes("bench:nope")
    with pytest.raises(ValueError, match="synthetic:x: synthetic:N needs a positive integer"):
        load_routes("synthetic:x")
    assert len(load_routes("synthetic:3")) == 3


def test_rates_must_divide():
    from rap.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="closed_loop.sim_hz"):
        load_config(ClosedLoopConfig, None, ["closed_loop.sim_hz=10", "closed_loop.agent_hz=3"])


# --- judging scripted agents -------------------------------------------------------------------


def test_red_light_runner_gets_exactly_the_red_light_penalty():
    result = _drive(PursuitAgent(8.0), straight_route("red_light"), quiet_config())
    rec = result["record"]
    assert _penalised(rec) == {"red_light": [rec["infractions"]["red_light"][0]]}
    assert rec["infractions"]["red_light"][0].startswith("Agent ran a red light ")
    assert rec["scores"] == {"score_route": 100.0, "score_penalty": 0.7, "score_composed": 70.0}
    assert rec["status"] == "Completed"


def test_driving_into_a_parked_car_gets_the_vehicle_collision_penalty():
    result = _drive(PursuitAgent(8.0), straight_route("parked"), quiet_config())
    rec = result["record"]
    # (the blind agent may also meet a red light on the way: timed lights, moving start)
    assert set(_penalised(rec)) - {"red_light"} == {"collisions_vehicle"}
    assert len(rec["infractions"]["collisions_vehicle"]) == 1  # one contact counts once
    penalty = 0.6 * 0.7 ** len(rec["infractions"]["red_light"])
    assert rec["scores"]["score_penalty"] == pytest.approx(penalty, abs=1e-6)


def test_an_agent_that_never_moves_gets_blocked():
    spec = straight_route("red_light")
    result = _drive(StopAgent(), spec, quiet_config(blocked_s=3.0, standing_start=True))
    rec = result["record"]
    assert rec["status"] == "Failed - Agent got blocked"
    assert len(rec["infractions"]["vehicle_blocked"]) == 1
    assert rec["scores"]["score_route"] == 0.0 and rec["scores"]["score_composed"] == 0.0
    assert rec["meta"]["duration_game"] == pytest.approx(3.0, abs=0.11)


@pytest.mark.parametrize(("mode", "message"), [("raise", "RuntimeError: planner exploded"), ("nan", "non-finite"), ("shape", "shape (10, 3)")])
def test_a_crashing_agent_fails_its_route_with_the_error(mode, message):
    result = _drive(BadAgent(mode), straight_route("red_light"), quiet_config())
    rec = result["record"]
    assert rec["status"] == "Failed - Agent crashed"
    assert rec["scores"]["score_composed"] == 0.0
    assert message in result["error"]


def test_the_expert_passes_a_parked_car_cleanly():
    result = _drive(load_agent_spec("expert"), straight_route("parked"), ClosedLoopConfig())
    rec = result["record"]
    assert rec["scores"]["score_composed"] >= 90.0, rec
    assert rec["status"] in ("Perfect", "Completed") and not _penalised(rec), rec


@pytest.mark.slow
def test_the_expert_stops_at_the_held_red_light():
    result = _drive(load_agent_spec("expert"), straight_route("red_light"), ClosedLoopConfig())
    rec = result["record"]
    assert rec["scores"]["score_composed"] >= 90.0, rec
    assert not rec["infractions"]["red_light"] and not rec["infractions"]["collisions_vehicle"]


def test_same_seed_same_results():
    spec = straight_route("lead_brake")
    config = ClosedLoopConfig()
    a = results_document([_drive(PursuitAgent(7.0), spec, config)["record"]])
    b = results_document([_drive(PursuitAgent(7.0), spec, config)["record"]])
    assert json.dumps(_without_wall_clock(a), sort_keys=True) == json.dumps(_without_wall_clock(b), sort_keys=True)


# --- the suite: resume, outputs, CLI -----------------------------------------------------------


def test_resume_skips_finished_routes_and_gives_the_same_results(tmp_path):
    config = quiet_config(blocked_s=2.0)
    first = evaluate_closed_loop(StopAgent(), "synthetic:2", tmp_path, config=config)
    doc = json.loads((tmp_path / "results.json").read_text())
    kept = route_file(tmp_path, "RouteScenario_0")
    stamp = kept.stat().st_mtime_ns
    route_file(tmp_path, "RouteScenario_1").unlink()
    (tmp_path / "results.json").unlink()
    ran = []
    again = evaluate_closed_loop(StopAgent(), "synthetic:2", tmp_path, config=config, resume=True, on_route=lambda r: ran.append(r["route_id"]))
    assert kept.stat().st_mtime_ns == stamp  # not run again
    assert sorted(ran) == ["RouteScenario_0", "RouteScenario_1"]
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
    assert _without_wall_clock(json.loads((tmp_path / "results.json").read_text())) == _without_wall_clock(doc)


AGENT_FILE = '''
import numpy as np
from rap.eval.agent import SensorConfig
from rap.trajectory import Trajectory

class Agent:
    name = "flaky"
    privileged = False
    def sensor_config(self):
        return SensorConfig(rig=None)
    def plan(self, observation):
        if observation.scene_id.endswith("_0"):
            raise ValueError("cannot plan here")
        return Trajectory(np.zeros((observation.sampling.num_poses, 3)), observation.sampling)

def build_agent():
    return Agent()
'''


def test_cli_agent_crash_fails_one_route_the_run_goes_on_exit_3(tmp_path):
    agent = tmp_path / "flaky.py"
    agent.write_text(AGENT_FILE)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "closed-loop", "--agent", str(agent), "--routes", "synthetic:2", "--out", str(out), "closed_loop.blocked_s=2", "closed_loop.density=0", "closed_loop.standing_start=true"])
    assert result.exit_code == 3, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"driving_score", "success_rate", "efficiency", "comfort", "routes", "abilities"}
    assert last["routes"] == 2 and last["driving_score"] == 0.0
    assert set(last["abilities"]) == set(ABILITIES)
    assert set(next(iter(last["abilities"].values()))) == {"routes", "success_rate", "driving_score"}
    doc = json.loads((out / "results.json").read_text())
    records = doc["_checkpoint"]["records"]
    assert [r["status"] for r in records] == ["Failed - Agent crashed", "Failed - Agent got blocked"]
    assert set(records[0]) >= {"index", "route_id", "scenario_name", "town_name", "status", "num_infractions", "infractions", "scores", "meta"}
    assert doc["_checkpoint"]["progress"] == [2, 2] and len(doc["values"]) == len(doc["labels"])
    summary = json.loads((out / "closed_loop_eval.json").read_text())
    assert "ValueError: cannot plan here" in summary["route_rows"][0]["error"]
    assert "Agent crashed" in (out / "closed_loop_eval.md").read_text()


def test_cli_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    bad_routes = runner.invoke(app, ["eval", "closed-loop", "--agent", "constant_velocity", "--routes", "bench:nope", "--out", str(tmp_path / "a")])
    assert bad_routes.exit_code == 2 and "unknown route suite" in bad_routes.output
    bad_key = runner.invoke(app, ["eval", "closed-loop", "--agent", "constant_velocity", "--routes", "bench:dev10", "--out", str(tmp_path / "b"), "closed_loop.nope=1"])
    assert bad_key.exit_code == 2 and "closed_loop.nope" in bad_key.output
    missing = runner.invoke(app, ["eval", "closed-loop", "--agent", str(tmp_path / "none.py"), "--routes", "bench:dev10", "--out", str(tmp_path / "c")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert not os.path.exists(tmp_path / "a" / "results.json")


class _CameraAgent:
    """Records the views it gets; never moves."""

    name = "camera"
    privileged = False

    def __init__(self) -> None:
        self.views: list[dict] = []

    def sensor_config(self):
        from rap.eval.agent import SensorConfig

        return SensorConfig(rig="front3", size=(64, 32))

    def plan(self, observation):
        import numpy as np

        from rap.trajectory import Trajectory

        self.views.append({name: image.copy() for name, image in observation.images.items()})
        assert observation.scene is None and observation.route_target is not None
        return Trajectory(np.zeros((observation.sampling.num_poses, 3)), observation.sampling)


def test_a_camera_agent_gets_its_rendered_views_every_query():
    agent = _CameraAgent()
    result = _drive(agent, straight_route("red_light"), quiet_config(blocked_s=2.0, standing_start=True))
    assert len(agent.views) == 4  # 2 s at 2 Hz (queries at 0, 0.5, 1.0, 1.5 s)
    first = agent.views[0]
    assert set(first) == {"CAM_L0", "CAM_F0", "CAM_R0"}
    assert all(image.shape == (32, 64, 3) and image.dtype.name == "uint8" and image.any() for image in first.values())
    assert result["record"]["status"] == "Failed - Agent got blocked"


def test_ray_executor_gives_the_local_results(tmp_path):
    """``--executor ray`` (Ray actors, each loading the agent once) writes the same results as the
    local run; an agent object (not a spec) and an unknown executor are refused."""
    pytest.importorskip("ray")
    config = quiet_config(blocked_s=2.0, report_media=False)
    local = evaluate_closed_loop("constant_velocity", "synthetic:3", tmp_path / "local", config=config)
    ray_run = evaluate_closed_loop("constant_velocity", "synthetic:3", tmp_path / "ray", config=config, executor="ray", workers=2)
    assert {k: v for k, v in ray_run.items() if k != "seconds"} == {k: v for k, v in local.items() if k != "seconds"}
    docs = [_without_wall_clock(json.loads((tmp_path / d / "results.json").read_text())) for d in ("local", "ray")]
    assert docs[0] == docs[1]
    assert sorted(p.name for p in (tmp_path / "ray" / "routes").glob("*.json")) == ["RouteScenario_0.json", "RouteScenario_1.json", "RouteScenario_2.json"]
    with pytest.raises(ValueError, match="need the agent as a spec string"):
        evaluate_closed_loop(StopAgent(), "synthetic:1", tmp_path / "obj", config=config, executor="ray")
    with pytest.raises(ValueError, match="executor must be one of local, ray"):
        evaluate_closed_loop("constant_velocity", "synthetic:1", tmp_path / "bad", config=config, executor="dask")
    bad = CliRunner().invoke(app, ["eval", "closed-loop", "--agent", "constant_velocity", "--routes", "synthetic:1", "--out", str(tmp_path / "cli"), "--executor", "dask"])
    assert bad.exit_code == 2 and "--executor must be one of local, ray" in bad.output


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_killing_a_run_with_kill_9_leaves_no_route_worker_running(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "rap", "eval", "closed-loop", "--agent", "constant_velocity", "--routes", "bench:dev10", "--workers", "2", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
            if len(workers) == 2:
                break
            time.sleep(0.05)
        assert len(workers) == 2 and proc.poll() is None, "no two route workers seen while the run lived"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
