"""The agent protocol evaluators call, and the built-in agents.

An evaluator asks an agent once for :meth:`Agent.sensor_config` (which camera views to render)
and then, per scene, calls :meth:`Agent.plan` with an :class:`Observation`: views rendered by the
rasterizer from the ego's state, its status (speed, velocity, acceleration, driving command) and
its past poses (built by :mod:`rap.eval.observe`; a dataset sample becomes the same type through
:func:`rap.eval.observe.observation_from_sample`, so a planner reads one input type in training
and in evaluation). Nothing privileged is in an observation unless the agent declares
``privileged = True`` (the built-in rule-based agents); then ``observation.scene`` holds the
scene and ``observation.step`` the current step. A trained planner implements the same protocol
(``planners/agent.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rap.kinematics import EgoStatus
from rap.scene import Scene
from rap.trajectory import NAVSIM_SAMPLING, Trajectory, TrajectorySampling


FROM_CONFIG = "config"  # SensorConfig.rig: use the evaluation config's observation.rig


@dataclasses.dataclass(frozen=True)
class SensorConfig:
    """Which views an agent wants.

    Attributes:
        rig: a named rig (``front3``, ``nuplan8``, ``bev``), None for no images, or ``"config"``
            (the default) for the evaluation config's ``observation.rig`` (by default that of
            generated samples, ``rap.config.DEFAULT_RIG``).
        size: (width, height) [px] of every camera, or None (the default) for the evaluation
            config's ``observation.size`` (``rap.config.DEFAULT_CAMERA_SIZE``).
    """

    rig: str | None = FROM_CONFIG
    size: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Observation:
    """What an agent sees at one step.

    Attributes:
        scene_id, time_s: where and when (``time_s`` None for observations rebuilt from
            dataset samples, which do not store it).
        images: camera name → (H, W, 3) uint8 raster (empty without cameras).
        cameras: camera name → camera record (intrinsics, distortion, cam_to_body).
        ego_status: speed, velocity and acceleration in the ego frame, driving command.
        history: (H, 3) past poses (x, y, heading) in the current ego frame, oldest first.
        sampling: the trajectory the agent must return.
        scene, step: only for privileged agents (None otherwise).
    """

    scene_id: str
    time_s: float | None
    images: dict[str, np.ndarray]
    cameras: dict[str, dict]
    ego_status: EgoStatus
    history: np.ndarray
    sampling: TrajectorySampling = NAVSIM_SAMPLING
    scene: Scene | None = None
    step: int | None = None


@runtime_checkable
class Agent(Protocol):
    """What an evaluator needs from a planner."""

    name: str
    privileged: bool

    def sensor_config(self) -> SensorConfig: ...

    def plan(self, observation: Observation) -> Trajectory: ...


class ConstantVelocityAgent:
    """Keeps the current speed and heading (NAVSIM's constant-velocity baseline)."""

    name = "constant_velocity"
    privileged = False

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(rig=None)

    def plan(self, observation: Observation) -> Trajectory:
        vx, vy = observation.ego_status.velocity
        t = observation.sampling.times_s
        poses = np.stack([vx * t, vy * t, np.zeros_like(t)], axis=1)
        return Trajectory(poses, observation.sampling)


class LogReplayAgent:
    """Returns the logged future of the ego (privileged: reads the log)."""

    name = "log_replay"
    privileged = True

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(rig=None)

    def plan(self, observation: Observation) -> Trajectory:
        from rap.kinematics import future_target

        assert observation.scene is not None and observation.step is not None
        scene = observation.scene
        target = future_target(scene, scene.ego_index, observation.step, observation.sampling)
        if target is None:
            raise ValueError(f"scene {scene.scene_id}: the log has no full future at step {observation.step}")
        return target


class ExpertAgent:
    """Privileged rule-based planner: the PDM-Closed-style reference planner (IDM along the
    route centerline at several target speeds and lateral offsets, simulated and scored; the
    best one) run on the scene's privileged map, route and agents."""

    name = "expert"
    privileged = True

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(rig=None)

    def plan(self, observation: Observation) -> Trajectory:
        from rap.eval.navsim_scene import expert_plan

        assert observation.scene is not None and observation.step is not None
        return expert_plan(observation.scene, observation.step, observation.sampling)


BUILTIN_AGENTS = {"expert": ExpertAgent, "constant_velocity": ConstantVelocityAgent, "log_replay": LogReplayAgent}


def load_agent(spec: str) -> Agent:
    """A built-in agent by name, or ``path/to/file.py`` / ``package.module`` exposing
    ``build_agent() -> Agent``.

    Raises:
        ValueError: unknown name, or a module without ``build_agent``, or an object that does not
            implement the protocol.
    """
    if spec in BUILTIN_AGENTS:
        return BUILTIN_AGENTS[spec]()
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.exists():
            raise ValueError(f"agent {spec!r}: no such file (built-in agents: {', '.join(BUILTIN_AGENTS)})")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(spec)
        except ImportError:
            raise ValueError(f"agent {spec!r}: not a built-in agent ({', '.join(BUILTIN_AGENTS)}), a .py file or an importable module") from None
    build = getattr(module, "build_agent", None)
    if build is None:
        raise ValueError(f"agent {spec!r}: the module has no build_agent() function")
    agent = build()
    if not isinstance(agent, Agent):
        raise ValueError(f"agent {spec!r}: build_agent() returned {type(agent).__name__}, which lacks name/privileged/sensor_config/plan")
    return agent
