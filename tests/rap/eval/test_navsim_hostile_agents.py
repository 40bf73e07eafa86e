"""rap eval navsim with hostile or careless user agents (issue 9): a broken agent file is a usage
error, a scene where the agent fails (raises, exits, hangs, returns a bad plan) is that scene's
failure, scored 0 and listed in the reports, and the run goes on."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.config import ConfigError, load_config
from rap.eval import agent as agent_module
from rap.eval.agent import ConstantVelocityAgent, load_agent
from rap.eval.config import DEFAULT_EVAL_CONFIG, EvalConfig, NavsimSection
from rap.eval.navsim import evaluate_navsim
from rap.eval.navsim_scene import scoring_steps
from rap.sources.synthetic.world import load_synthetic
from rap.trajectory import Trajectory, TrajectorySampling

SCENE = load_synthetic(0)
STEPS = scoring_steps(SCENE)
T_SECOND = float(SCENE.timestamps[STEPS[1]])  # the agent's query at the second scoring step


def _agent_file(tmp_path: Path, body: str, name: str = "user_agent.py") -> Path:
    """An agent file whose plan() drives at constant velocity except where ``body`` says otherwise;
    ``body`` runs first in plan() with ``obs``, ``second`` (the second scoring step's main query)."""
    path = tmp_path / name
    indented = "\n".join("        " + line for line in body.strip().splitlines())
    path.write_text(
        "import sys, time\nimport numpy as np\nfrom rap.eval.agent import ConstantVelocityAgent\nfrom rap.trajectory import Trajectory, TrajectorySampling\n\n"
        "class UserAgent(ConstantVelocityAgent):\n    name = 'user'\n\n    def plan(self, obs):\n"
        f"        second = abs(obs.time_s - {T_SECOND!r}) < 1e-6\n{indented}\n        return super().plan(obs)\n\n"
        "def build_agent():\n    return UserAgent()\n"
    )
    return path


def _run(args: list[str]):
    return CliRunner().invoke(app, ["eval", "navsim", *args])


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# -- 1. an agent that cannot be loaded: one line naming the file, exit 2, nothing written ---------


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def build_agent(:\n    pass\n", "SyntaxError: "),
        ("def build_agent():\n    raise RuntimeError('checkpoint weights.pt is missing')\n", "build_agent() raised RuntimeError: checkpoint weights.pt is missing"),
        ("import argparse\nargparse.ArgumentParser().parse_args(['--nope'])\n", "SystemExit: 2"),
        ("raise ValueError('line one\\nline two')\n", "ValueError: line one line two"),
    ],
)
def test_an_agent_file_that_cannot_load_is_one_error_line_and_exit_2(tmp_path, source, expected):
    path = tmp_path / "user_agent.py"
    path.write_text(source)
    out = tmp_path / "out"
    result = _run(["--agent", str(path), "--scenes", "synthetic:1", "--max-scenes", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = _error_lines(result.output)
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"agent file {path}" in errors[0] and expected in errors[0], errors[0]
    assert not out.exists()


def test_a_missing_agent_file_or_a_directory_is_exit_2(tmp_path):
    (tmp_path / "folder.py").mkdir()
    for spec in (tmp_path / "missing.py", tmp_path / "folder.py"):
        result = _run(["--agent", str(spec), "--scenes", "synthetic:1", "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        errors = _error_lines(result.output)
        assert len(errors) == 1 and str(spec) in errors[0], result.output
    assert not (tmp_path / "out").exists()


def test_load_agent_names_the_file_and_the_exception(tmp_path, monkeypatch):
    path = tmp_path / "raising.py"
    path.write_text("def build_agent():\n    raise KeyError('model')\n")
    with pytest.raises(agent_module.AgentLoadError, match=r"agent file .*raising\.py: build_agent\(\) raised KeyError: 'model'"):
        load_agent(str(path))
    (tmp_path / "broken_agent_module.py").write_text("import not_a_module_anywhere_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(agent_module.AgentLoadError, match=r"agent module 'broken_agent_module': ModuleNotFoundError: No module named 'not_a_module_anywhere_xyz'"):
        load_agent("broken_agent_module")
    not_agent = tmp_path / "not_agent.py"
    not_agent.write_text("def build_agent():\n    return 3\n")
    with pytest.raises(agent_module.AgentLoadError, match="returned int"):
        load_agent(str(not_agent))
    assert issubclass(agent_module.AgentLoadError, ValueError)


# -- 2. plan() raising in one scene: that scene fails (scored 0), the run goes on, exit 3 ---------


def test_plan_raising_fails_that_scene_and_the_run_goes_on(tmp_path):
    path = _agent_file(tmp_path, "if second:\n    raise ValueError('boom <b>&amp; | *x*')")
    result = _run(["--agent", str(path), "--scenes", "synthetic:1", "--max-scenes", "3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert "1 of 3 scenes failed" in result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(doc) == {"pdms", "epdms", "scenes", "subscores", "failed"}
    assert doc["scenes"] == 3 and doc["failed"] == 1

    report = json.loads((tmp_path / "out" / "navsim_eval.json").read_text())
    rows = report["rows"]
    assert [r["failed"] for r in rows] == [False, True, False]
    bad = rows[1]
    assert bad["step"] == STEPS[1] and bad["error"] == "ValueError: boom <b>&amp; | *x*"
    assert bad["pdms"] == 0.0 and bad["epdms"] == 0.0 and "boom" in bad.get("traceback", "")
    assert report["failed"] == 1 and report["failed_scenes"] == [bad["scene"]]
    assert report["pdms"] == pytest.approx(np.mean([r["pdms"] for r in rows]))  # the failure counts as 0
    assert report["pdms"] < max(rows[0]["pdms"], rows[2]["pdms"])

    page = (tmp_path / "out" / "index.html").read_text()
    assert "boom &lt;b&gt;&amp;amp; | *x*" in page and "<b>&amp;" not in page.replace("&lt;b&gt;", "")
    assert 'class="card failed"' in page and "1 of 3 scenes failed" in page
    md = (tmp_path / "out" / "navsim_eval.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith(f"| {bad['scene']} "))
    assert "FAILED" in line and "boom &lt;b&gt;&amp;amp; \\| \\*x\\*" in line


def test_cli_exits_0_and_reports_no_failure_when_every_scene_ran(tmp_path):
    result = _run(["--agent", "constant_velocity", "--scenes", "synthetic:1", "--max-scenes", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["failed"] == 0 and doc["scenes"] == 2
    report = json.loads((tmp_path / "navsim_eval.json").read_text())
    assert report["failed"] == 0 and report["failed_scenes"] == [] and not any(r["failed"] for r in report["rows"])


# -- 3. plan() that never returns: agent_timeout_s fails the scene -----------------------------


class _Hanging(ConstantVelocityAgent):
    name = "hanging"

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def plan(self, observation):
        self.calls += 1
        if abs(observation.time_s - T_SECOND) < 1e-6:
            self.release.wait(60)  # never returns within the test's timeout
        return super().plan(observation)


def test_a_plan_that_never_returns_times_out_and_the_agent_is_not_called_again(tmp_path):
    agent = _Hanging()
    config = EvalConfig(navsim=NavsimSection(agent_timeout_s=0.2))
    try:
        report = evaluate_navsim(agent, "synthetic:1", tmp_path, config=config, max_scenes=4, pictures=False)
    finally:
        agent.release.set()
    rows = report["rows"]
    assert [r["failed"] for r in rows] == [False, True, True, True] and report["failed"] == 3
    assert rows[1]["error"].startswith("TimeoutError: agent 'hanging' did not return from plan() within 0.2 s")
    assert f"step {STEPS[1]}" in rows[1]["error"]
    assert "not called again" in rows[2]["error"] and all(r["pdms"] == 0.0 for r in rows[1:])
    assert agent.calls == 3  # step 0 (and its earlier query), then the one that hung


def test_cli_timeout_override(tmp_path):
    path = _agent_file(tmp_path, "if second:\n    time.sleep(10)")
    result = _run(["--agent", str(path), "--scenes", "synthetic:1", "--max-scenes", "2", "--out", str(tmp_path / "out"), "navsim.agent_timeout_s=0.2"])
    assert result.exit_code == 3, result.output
    assert "1 of 2 scenes failed" in result.output and "TimeoutError" in result.output


def test_agent_timeout_is_validated():
    assert load_config(EvalConfig, DEFAULT_EVAL_CONFIG).navsim.agent_timeout_s == 60.0
    assert EvalConfig().navsim.agent_timeout_s == 60.0
    assert load_config(EvalConfig, DEFAULT_EVAL_CONFIG, ["navsim.agent_timeout_s=0.2"]).navsim.agent_timeout_s == 0.2
    for bad in ("0", "-1", ".inf", ".nan", "inf", "soon"):
        with pytest.raises(ConfigError, match="agent_timeout_s"):
            load_config(EvalConfig, DEFAULT_EVAL_CONFIG, [f"navsim.agent_timeout_s={bad}"])


# -- 4. SystemExit (any BaseException but KeyboardInterrupt) inside plan() ----------------------


def test_system_exit_in_plan_is_a_scene_failure(tmp_path):
    path = _agent_file(tmp_path, "if second:\n    raise SystemExit(0)")
    out = tmp_path / "out"
    result = _run(["--agent", str(path), "--scenes", "synthetic:1", "--max-scenes", "2", "--out", str(out)])
    assert result.exit_code == 3, result.output
    report = json.loads((out / "navsim_eval.json").read_text())
    assert report["rows"][1]["error"] == "SystemExit: 0" and report["failed"] == 1


def test_keyboard_interrupt_in_plan_still_stops_the_run(tmp_path):
    class Interrupted(ConstantVelocityAgent):
        def plan(self, observation):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_navsim(Interrupted(), "synthetic:1", tmp_path, max_scenes=1, pictures=False)
    assert not (tmp_path / "navsim_eval.json").exists()


# -- 5. plans on their own sampling, non-finite or absurd poses -------------------------------


class _Careless(ConstantVelocityAgent):
    name = "careless"

    def __init__(self, make):
        self.make = make

    def plan(self, observation):
        return self.make(observation)


def _evaluate_one(tmp_path, make) -> dict:
    report = evaluate_navsim(_Careless(make), "synthetic:1", tmp_path, max_scenes=1, pictures=False)
    assert report["failed"] == 1 and report["rows"][0]["failed"] and report["pdms"] == 0.0 and report["epdms"] == 0.0
    return report["rows"][0]


def test_a_plan_on_its_own_sampling_is_rejected(tmp_path):
    row = _evaluate_one(tmp_path, lambda obs: Trajectory(np.column_stack([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]), TrajectorySampling(2, 0.5)))
    assert row["error"] == f"agent 'careless' returned a trajectory sampled 2 x 0.5 s for scene synthetic-0 step {STEPS[0]}; asked for 8 x 0.5 s (observation.sampling)"


@pytest.mark.parametrize("column, value, field", [(0, 1e300, "x"), (1, -2e4, "y"), (2, 1e9, "heading")])
def test_absurd_poses_are_rejected_naming_the_field(tmp_path, column, value, field):
    def make(obs):
        poses = np.zeros((obs.sampling.num_poses, 3))
        poses[:, column] = value
        return Trajectory(poses, obs.sampling)

    row = _evaluate_one(tmp_path, make)
    assert row["error"].startswith(f"agent 'careless' returned {field} = {value:g} at pose 0 for scene synthetic-0 step {STEPS[0]}"), row["error"]


def test_non_finite_poses_are_rejected_naming_the_field(tmp_path):
    def make(obs):
        traj = Trajectory(np.zeros((obs.sampling.num_poses, 3)), obs.sampling)
        poses = np.zeros((obs.sampling.num_poses, 3))
        poses[3, 2] = math.nan
        object.__setattr__(traj, "poses", poses)  # past Trajectory's own check
        return traj

    row = _evaluate_one(tmp_path, make)
    assert row["error"] == f"agent 'careless' returned a non-finite heading (nan) at pose 3 for scene synthetic-0 step {STEPS[0]}"


def test_a_wrong_return_type_is_a_scene_failure_with_the_same_wording(tmp_path):
    row = _evaluate_one(tmp_path, lambda obs: np.zeros((8, 3)))
    assert row["error"] == f"agent 'careless' returned ndarray for scene synthetic-0 step {STEPS[0]}; expected rap.trajectory.Trajectory"


def test_sensor_config_raising_is_a_load_error(tmp_path):
    class NoSensors(ConstantVelocityAgent):
        name = "nosensors"

        def sensor_config(self):
            raise RuntimeError("no camera")

    with pytest.raises(agent_module.AgentLoadError, match=r"agent 'nosensors': sensor_config\(\) raised RuntimeError: no camera"):
        evaluate_navsim(NoSensors(), "synthetic:1", tmp_path, max_scenes=1, pictures=False)
    assert not any(tmp_path.iterdir())


def test_agent_caller_runs_calls_in_one_thread_and_ends_it_on_close():
    caller = agent_module.AgentCaller("unit", timeout_s=5.0)
    first = caller.call("plan()", "here", threading.get_ident)
    assert caller.call("plan()", "here", threading.get_ident) == first != threading.get_ident()

    def fails():
        raise ValueError("bad\nthing")

    with pytest.raises(agent_module.AgentCallError) as info:
        caller.call("plan()", "here", fails)
    assert info.value.error == "ValueError: bad thing" and info.value.kind == "raised"
    assert 'raise ValueError("bad' in info.value.traceback and "_Call" not in info.value.traceback
    caller.close()
    caller._thread.join(5)
    assert not caller._thread.is_alive()
