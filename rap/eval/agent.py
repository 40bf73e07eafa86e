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

Evaluators call an agent through :class:`AgentCaller`: from one worker thread, each call bounded by
a timeout, anything the agent raises (``SystemExit`` included, ``KeyboardInterrupt`` excepted)
turned into an :class:`AgentCallError` that fails one scene instead of the run. Thread-local
settings an agent relies on (``torch.set_grad_enabled``, ``torch.inference_mode``) must therefore
be made inside ``plan()``, not in ``build_agent()``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
        route_target: (2,) the next route target point in the ego frame [m] (closed-loop
            evaluation, as Bench2Drive gives it), or None.
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
    route_target: np.ndarray | None = None


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


MAX_ERROR_CHARS = 2000  # an error text in messages and reports is cut here


class AgentLoadError(ValueError):
    """An agent could not be loaded or set up (its file or module, ``build_agent()``,
    ``sensor_config()``); the message is one line naming the agent and the exception."""


class AgentCallError(Exception):
    """One call into an agent failed: it raised, did not return in time, was not made because an
    earlier call timed out, or what it returned was rejected.

    Attributes:
        error: one line, ``"<ExceptionType>: <message>"`` for what the agent raised, rap's own
            message otherwise.
        traceback: the agent's traceback where it raised, else None.
        kind: ``raised``, ``timeout``, ``skipped`` or ``rejected``.
    """

    def __init__(self, error: str, *, traceback: str | None = None, kind: str = "rejected") -> None:
        super().__init__(error)
        self.error = error
        self.traceback = traceback
        self.kind = kind


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: message"`` on one line (lines joined with spaces), cut at MAX_ERROR_CHARS."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class _Call:
    """One call handed to the worker thread and what came of it."""

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn, self.args = fn, args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.traceback: str | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from an agent fails a scene, too
            self.error = exc
            # drop this frame: the traceback starts in the agent's code
            self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None))
        finally:
            self.done.set()


class AgentCaller:
    """Calls into one agent from one worker thread, each call bounded by ``timeout_s``.

    Why a worker thread and not ``signal.setitimer`` in the evaluating thread: an alarm only
    works when the evaluator runs in the main thread (a library caller, a training loop's
    callback or a test runner may use another), its exception is raised inside the agent's code,
    where a broad ``except`` can swallow it, and it cannot interrupt a C call that does not return
    to Python (a stuck CUDA or I/O call). Waiting on a worker with a timeout always returns. The
    price: a stuck call cannot be killed, so after a timeout the thread is abandoned (a daemon: it
    does not keep the process alive) and the agent, whose state is unknown and which would now be
    called concurrently, is not called again in this caller's life; later calls fail at once
    (``kind="skipped"``). One thread serves every call, so thread-local state an agent sets up in
    ``plan()`` (a CUDA stream, a GL context) stays valid from call to call.

    ``KeyboardInterrupt`` raised by the agent is re-raised (it stops the run); every other
    exception, ``SystemExit`` included, becomes an :class:`AgentCallError`.
    """

    def __init__(self, agent_name: str, timeout_s: float) -> None:
        self.agent_name = agent_name
        self.timeout_s = float(timeout_s)
        self.timed_out_at: str | None = None  # where the call that timed out was made
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"rap-agent-{agent_name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            call.run()

    def check_usable(self) -> None:
        """Raises AgentCallError (``skipped``) once a call has timed out."""
        if self.timed_out_at is not None:
            raise AgentCallError(f"not run: agent {self.agent_name!r} timed out earlier ({self.timed_out_at}) and is not called again in this run", kind="skipped")

    def call(self, what: str, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the worker thread; ``what`` (``"plan()"``) and ``where`` (``"scene S
        step N"``) name the call in messages.

        Raises:
            AgentCallError: the call raised, timed out, or an earlier call timed out.
            KeyboardInterrupt: raised by the agent.
        """
        self.check_usable()
        call = _Call(fn, args)
        self._calls.put(call)
        if not call.done.wait(self.timeout_s):
            self.timed_out_at = where
            raise AgentCallError(
                f"TimeoutError: agent {self.agent_name!r} did not return from {what} within {self.timeout_s:g} s ({where}; "
                "navsim.agent_timeout_s); it is not called again in this run",
                kind="timeout",
            )
        if call.error is not None:
            if isinstance(call.error, KeyboardInterrupt):
                raise call.error
            raise AgentCallError(describe_exception(call.error), traceback=call.traceback, kind="raised")
        return call.result

    def close(self) -> None:
        """Let the worker thread end (at once if idle, after the stuck call otherwise)."""
        self._calls.put(None)

    def __enter__(self) -> AgentCaller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def load_agent(spec: str) -> Agent:
    """A built-in agent by name, or ``path/to/file.py`` / ``package.module`` exposing
    ``build_agent() -> Agent``.

    Raises:
        AgentLoadError (a ValueError): unknown name, a missing or unreadable file, a module that
            cannot be imported or run (its exception's type and message, ``SystemExit``
            included), a module without ``build_agent``, ``build_agent()`` raising, or an object
            that does not implement the protocol. One line naming the file or module.
    """
    if spec in BUILTIN_AGENTS:
        return BUILTIN_AGENTS[spec]()
    path = Path(spec)
    if spec.endswith(".py"):
        what = f"agent file {spec}"
        if not path.exists():
            raise AgentLoadError(f"{what}: no such file (built-in agents: {', '.join(BUILTIN_AGENTS)})")
        if not path.is_file():
            raise AgentLoadError(f"{what}: not a file")
        # registered in sys.modules (dataclasses and pickle look classes up there) under a name
        # of its own, so a file called json.py does not replace the json module
        name = f"_rap_agent_{path.stem}"
        number = 1
        while name in sys.modules and getattr(sys.modules[name], "__file__", None) != str(path):
            number += 1
            name = f"_rap_agent_{path.stem}_{number}"
        try:
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise AgentLoadError(f"{what}: cannot be loaded as a Python module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(name, None)
            if isinstance(exc, (KeyboardInterrupt, AgentLoadError)):
                raise
            raise AgentLoadError(f"{what}: {describe_exception(exc)}") from None  # a user file may raise anything, SystemExit too
    else:
        what = f"agent module {spec!r}"
        try:
            module = importlib.import_module(spec)
        except KeyboardInterrupt:
            raise
        except ModuleNotFoundError as exc:
            if exc.name is not None and (spec == exc.name or spec.startswith(exc.name + ".")):  # spec itself is missing
                raise AgentLoadError(f"agent {spec!r}: not a built-in agent ({', '.join(BUILTIN_AGENTS)}), a .py file or an importable module") from None
            raise AgentLoadError(f"{what}: {describe_exception(exc)}") from None
        except BaseException as exc:  # noqa: BLE001
            raise AgentLoadError(f"{what}: {describe_exception(exc)}") from None
    build = getattr(module, "build_agent", None)
    if build is None or not callable(build):
        raise AgentLoadError(f"{what}: the module has no build_agent() function")
    try:
        agent = build()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001
        raise AgentLoadError(f"{what}: build_agent() raised {describe_exception(exc)}") from None
    if not isinstance(agent, Agent):
        raise AgentLoadError(f"{what}: build_agent() returned {type(agent).__name__}, which lacks name/privileged/sensor_config/plan")
    return agent
