"""rap eval navsim: scoring windows, scene conversion, agents, reports, sanity scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from typer.testing import CliRunner

from rap.eval.agent import ConstantVelocityAgent, ExpertAgent, LogReplayAgent, SensorConfig, load_agent
from rap.eval.navsim import evaluate_navsim
from rap.eval.navsim_scene import scoring_scene, scoring_steps
from rap.cli import app
from rap.sources.synthetic.world import load_synthetic
from rap.sources.womd import load_womd
from rap.trajectory import Trajectory

WOMD = Path(__file__).resolve().parents[3] / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"


def test_scoring_steps_follow_the_navsim_window():
    scene = load_womd(WOMD)  # 91 steps, current index 10: 1.5 s history, 4 s future, 1 s apart
    assert scoring_steps(scene) == [20, 30, 40, 50]
    syn = load_synthetic(0)
    steps = scoring_steps(syn)
    assert steps[0] >= 15 and steps[-1] + 40 < syn.num_steps and np.all(np.diff(steps) == 10)


def test_scoring_scene_route_centerline_and_objects():
    scene = load_synthetic(2)
    step = scoring_steps(scene)[0]
    inputs = scoring_scene(scene, step)
    ego = shapely.Point(inputs.ego.x, inputs.ego.y)
    assert any(inputs.lane_polygons[i].contains(ego) for i in inputs.route_lane_ids)
    assert shapely.LineString(inputs.centerline[:, :2]).distance(ego) < 1.5
    assert inputs.objects.num_steps == 51 and scene.tracks.ids[scene.ego_index] not in inputs.objects.ids
    assert len(inputs.red_light_lane_ids) == 51
    assert len(inputs.ego_history) == 15 and inputs.human_trajectory.shape == (8, 3)


def test_log_replay_on_the_real_waymo_scenario(tmp_path):
    report = evaluate_navsim(LogReplayAgent(), f"womd:{WOMD}", tmp_path)
    assert report["scenes"] == 4
    assert report["pdms"] >= 0.85  # real drivers stay on the (derived) road
    assert report["subscores"]["DAC"] == 1.0 and report["subscores"]["v1_NC"] == 1.0
    assert (tmp_path / "navsim_eval.json").exists() and (tmp_path / "navsim_eval.md").exists()
    html = (tmp_path / "index.html").read_text()
    assert html.count("<img") == 4 and "PDMS" in html
    assert len(list((tmp_path / "bev").glob("*.png"))) == 4


def test_expert_beats_constant_velocity_on_synthetic_scenes(tmp_path):
    expert = evaluate_navsim(ExpertAgent(), "synthetic:3", tmp_path / "e", pictures=False)
    cv = evaluate_navsim(ConstantVelocityAgent(), "synthetic:3", tmp_path / "c", pictures=False)
    assert expert["pdms"] >= 0.9
    assert cv["pdms"] < expert["pdms"] - 0.1
    assert expert["scenes"] == cv["scenes"] > 20


class _RecordingAgent:
    """A non-privileged agent that drives straight at its current speed and keeps what it saw."""

    name = "recording"
    privileged = False

    def __init__(self):
        self.seen = []

    def sensor_config(self):
        return SensorConfig(rig="front3", size=(96, 48))

    def plan(self, observation):
        self.seen.append(observation)
        t = observation.sampling.times_s
        v = observation.ego_status.speed
        return Trajectory(np.stack([v * t, 0 * t, 0 * t], axis=1), observation.sampling)


def test_observations_hold_views_and_no_privileged_data(tmp_path):
    agent = _RecordingAgent()
    report = evaluate_navsim(agent, "synthetic:1", tmp_path, max_scenes=2, pictures=False)
    assert report["scenes"] == 2
    obs = agent.seen[0]
    assert obs.scene is None and obs.step is None
    assert sorted(obs.images) == ["CAM_F0", "CAM_L0", "CAM_R0"]
    assert obs.images["CAM_F0"].shape == (48, 96, 3) and obs.images["CAM_F0"].any()
    assert obs.history.shape == (3, 3) and "intrinsics" in obs.cameras["CAM_F0"]


def test_load_agent_from_a_file_and_errors(tmp_path):
    path = tmp_path / "my_agent.py"
    path.write_text("from rap.eval.agent import ConstantVelocityAgent\n\ndef build_agent():\n    return ConstantVelocityAgent()\n")
    assert load_agent(str(path)).name == "constant_velocity"
    bad = tmp_path / "no_builder.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="build_agent"):
        load_agent(str(bad))
    with pytest.raises(ValueError, match="not a built-in agent"):
        load_agent("nonexistent_agent_name")


def test_cli_eval_navsim(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "navsim", "--agent", "constant_velocity", "--scenes", "synthetic:1", "--max-scenes", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(doc) == {"pdms", "epdms", "scenes", "failed", "subscores"} and doc["scenes"] == 2 and doc["failed"] == 0
    assert {"NC", "DAC", "DDC", "TLC", "EP", "TTC", "LK", "HC", "EC"} <= set(doc["subscores"])
    bad = runner.invoke(app, ["eval", "navsim", "--agent", "nope", "--scenes", "synthetic:1", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "nope" in bad.output
    bad = runner.invoke(app, ["eval", "navsim", "--agent", "expert", "--scenes", "synthetic:zero", "--out", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "synthetic:N" in bad.output


def test_route_centerline_stays_local_so_progress_is_sane():
    """A known route that loops back near its start must not make progress jump along it."""
    from rap.metrics.pdms import score_scene

    scene = load_synthetic(6)  # its route comes back past the start
    inputs = scoring_scene(scene, 20)
    result = score_scene(inputs, np.zeros((1, 8, 3)))
    assert 0.0 <= result.reference_progress < 60.0  # at most ~4 s at the speed limit


def test_logged_expert_scores_at_least_09_on_synthetic_scenes(tmp_path):
    """The synthetic world's expert log, replayed through the tracker, is a good driver."""
    report = evaluate_navsim(LogReplayAgent(), "synthetic:4", tmp_path, pictures=False)
    assert report["scenes"] >= 40
    assert report["pdms"] >= 0.9


@pytest.mark.slow
def test_logged_expert_scores_at_least_09_on_twelve_towns(tmp_path):
    report = evaluate_navsim(LogReplayAgent(), "synthetic:12", tmp_path, pictures=False)
    assert report["pdms"] >= 0.9


def test_an_agent_returning_the_wrong_type_gets_a_clear_error(tmp_path):
    class Broken(ConstantVelocityAgent):
        name = "broken"

        def plan(self, observation):
            return np.zeros((8, 3))

    report = evaluate_navsim(Broken(), "synthetic:1", tmp_path, max_scenes=1, pictures=False)  # a scene failure, not a crash
    row = report["rows"][0]
    assert row["failed"] and report["failed"] == 1 and report["pdms"] == 0.0
    assert re.fullmatch(r"agent 'broken' returned ndarray for scene synthetic-0 step \d+; expected rap.trajectory.Trajectory", row["error"])


class _Watcher(ConstantVelocityAgent):
    """Constant velocity that writes the brightness of the top rows of every front view it sees
    into a file (the evaluator may call agents in another process)."""

    name = "watcher"

    def __init__(self, log: Path) -> None:
        self.log = log

    def sensor_config(self) -> SensorConfig:
        return SensorConfig()  # the config's rig and size

    def plan(self, observation):
        with open(self.log, "a") as fh:
            fh.write(f"{float(observation.images['CAM_F0'][:10].mean())}\n")
        return super().plan(observation)


def test_observation_style_photo_shows_agents_camera_like_views(tmp_path):
    """observation.style=photo (--observation-style photo): the agent's views are the photo
    stand-in (a bright sky where the raster is black); scores of an agent that ignores images
    are unchanged."""
    from rap.config import load_config
    from rap.eval.config import DEFAULT_EVAL_CONFIG, EvalConfig

    reports = {}
    for style in ("raster", "photo"):
        log = tmp_path / f"{style}.txt"
        cfg = load_config(EvalConfig, DEFAULT_EVAL_CONFIG, [f"observation.style={style}", "observation.size=[128,64]"])
        report = evaluate_navsim(_Watcher(log), "synthetic:1", tmp_path / style, config=cfg, max_scenes=2)
        reports[style] = (report, [float(v) for v in log.read_text().split()])
    (raster, raster_tops), (photo, photo_tops) = reports["raster"], reports["photo"]
    assert len(photo_tops) == len(raster_tops) >= 2 and max(raster_tops) < 20 and min(photo_tops) > 90
    assert photo["pdms"] == raster["pdms"] and photo["epdms"] == raster["epdms"]
    result = CliRunner().invoke(app, ["eval", "navsim", "--agent", "constant_velocity", "--scenes", "synthetic:1", "--max-scenes", "1", "--observation-style", "oil", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "observation.style" in result.output
