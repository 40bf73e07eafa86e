"""Runs an agent through closed-loop routes: one route per call of :func:`run_route`, the suite
with :func:`evaluate_closed_loop` (a process pool for ``workers > 1``, per-route result files for
``resume``).

Per route: the world (:class:`~rap.eval.closed_loop.world.World`; for a real-log-seeded route of
``womd:PATH``, :class:`~rap.eval.closed_loop.log_world.LogWorld` with ``closed_loop.traffic``)
ticks at ``sim_hz``; every
``sim_hz / agent_hz`` ticks the agent gets an :class:`~rap.eval.agent.Observation` of the world's
snapshot (cameras rendered through its sensor config, status and history, the driving command
and the next route target point from the route), and its checked plan is executed by the
tracker until the next query. The :class:`~rap.eval.closed_loop.infractions.Monitor` judges each
tick; :func:`rap.eval.driving_score.route_record` makes the record. A log route runs at least as
long as its log (``LogWorld.min_duration_s``) unless it fails: a completed route goes on being
judged until then.

An agent that raises, times out or returns an invalid plan (NaN, wrong shape or sampling) ends
its route as ``Failed - Agent crashed`` with route completion 0 (an errored route counts 0) and
the error in the route's result; the run goes on with the next route (after a timeout the agent
is not called again: later routes fail at once, as in ``rap eval navsim``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from rap import geometry
from rap.cluster import die_with_parent, ray_session
from rap.eval.agent import (
    Agent,
    AgentCaller,
    AgentCallError,
    AgentLoadError,
    describe_exception,
)
from rap.eval.closed_loop.config import ClosedLoopConfig
from rap.eval.closed_loop.infractions import Monitor
from rap.eval.closed_loop.log_world import LogRouteSpec, LogWorld, load_log_routes
from rap.eval.closed_loop.media import RouteRecorder
from rap.eval.closed_loop.routes import BASE_VERSION, RouteSpec
from rap.eval.closed_loop.routes import load_routes as _load_synthetic_routes
from rap.eval.closed_loop.world import World
from rap.eval.driving_score import merge_repeats, route_record
from rap.eval.navsim import _checked, _sensor_config
from rap.eval.observe import Observer
from rap.fileio import write_bytes_atomic
from rap.kinematics import DrivingCommand
from rap.trajectory import NAVSIM_SAMPLING

__all__ = ["EXECUTORS", "TARGET_AHEAD_M", "evaluate_closed_loop", "load_agent_spec", "load_routes", "make_world", "route_file", "run_route"]

TARGET_AHEAD_M = 20.0  # [m] route target point ahead of the ego's progress
COMMAND_AHEAD_M = 30.0  # [m] the route point the driving command looks at
COMMAND_LATERAL_M = 2.0  # [m] |y| beyond which the command is a turn
EXECUTORS = ("local", "ray")  # evaluate_closed_loop(executor=...), rap eval closed-loop --executor


def load_routes(spec: str, log_seats: str = "ego") -> list[RouteSpec | LogRouteSpec]:
    """The routes of ``--routes``: ``womd:PATH`` (real-log-seeded, from the seats
    ``log_seats`` names: :func:`~rap.eval.closed_loop.log_world.load_log_routes`), else the
    synthetic suites (:func:`rap.eval.closed_loop.routes.load_routes`).

    Raises:
        ValueError: an unknown suite, a bad N, a missing or unreadable womd path (naming it).
    """
    if spec.startswith("womd:"):
        return load_log_routes(spec, log_seats)
    return _load_synthetic_routes(spec)


def make_world(spec: RouteSpec | LogRouteSpec, config: ClosedLoopConfig) -> World | LogWorld:
    """The route's world: :class:`LogWorld` (``closed_loop.traffic``, default ``log``) for a log
    route, else :class:`World`."""
    cl = config.closed_loop
    if isinstance(spec, LogRouteSpec):
        return LogWorld(spec, cl.world(), cl.seed, traffic=cl.traffic)
    return World(spec, cl.world(), cl.seed)


def load_agent_spec(spec: str) -> Agent:
    """A built-in agent or an agent file/module; ``expert`` is the closed-loop expert
    (:class:`~rap.eval.closed_loop.expert.ClosedLoopExpert`). Checkpoints of ``rap train`` are
    loaded by the caller's loader (the CLI's: ``rap`` itself does not import ``planners``).

    Raises:
        ValueError (AgentLoadError): one line naming the file or module.
    """
    from rap.eval.agent import load_agent

    if spec == "expert":
        from rap.eval.closed_loop.expert import ClosedLoopExpert

        return ClosedLoopExpert()
    return load_agent(spec)


class _Session:
    """An agent with its caller and observer (and renderer, when it wants images)."""

    def __init__(self, agent: Agent, config: ClosedLoopConfig) -> None:
        self.agent = agent
        self.name = str(getattr(agent, "name", type(agent).__name__))
        self.caller = AgentCaller(self.name, config.navsim.agent_timeout_s)
        sensors = _sensor_config(self.caller, agent, self.name)
        privileged = bool(getattr(agent, "privileged", False))
        try:
            self.observer = Observer(None, sensors, config.observation, privileged=privileged)
        except (ValueError, TypeError) as exc:
            raise AgentLoadError(f"agent {self.name!r}: sensor_config() returned {sensors}: {describe_exception(exc)}") from None
        self._renderer_cm = None
        self._report_cm = None
        self._report_observer: Observer | None = None
        self._report_note = ""
        if self.observer.rig is not None:
            from rap.render.session import open_renderer
            from rap.render.style import named_style

            self._renderer_cm = open_renderer(named_style(config.observation.style, config.observation.seed))
            renderer = self._renderer_cm.__enter__()
            self.observer = Observer(renderer, sensors, config.observation, privileged=privileged)

    def report_views(self, scene, step: int, config: ClosedLoopConfig) -> tuple[dict[str, np.ndarray], str]:
        """Camera views for the report of an agent without cameras: the config's rig rendered
        at thumbnail height (a renderer opened on first use); no views where none can be opened.
        Returns the views and where they come from."""
        if self._report_observer is None and not self._report_note:
            from rap.eval.agent import SensorConfig
            from rap.eval.closed_loop.media import CAM_H
            from rap.render.session import open_renderer
            from rap.render.style import named_style

            obs_cfg = config.observation
            size = (max(1, int(round(obs_cfg.size[0] * CAM_H / obs_cfg.size[1]))), CAM_H)
            try:
                cm = open_renderer(named_style(obs_cfg.style, obs_cfg.seed))
                renderer = cm.__enter__()
            except Exception as exc:  # no GL context here: the report goes without camera views
                self._report_note = f"no camera views ({describe_exception(exc)})"
            else:
                self._report_cm = cm
                self._report_observer = Observer(renderer, SensorConfig(rig=obs_cfg.rig, size=size), obs_cfg)
                self._report_note = f"rig {obs_cfg.rig} (rendered for the report; the agent has no cameras)"
        if self._report_observer is None:
            return {}, self._report_note
        return self._report_observer.observe(scene, step, NAVSIM_SAMPLING).images, self._report_note

    def close(self) -> None:
        self.caller.close()
        for name in ("_renderer_cm", "_report_cm"):
            cm = getattr(self, name)
            if cm is not None:
                cm.__exit__(None, None, None)
                setattr(self, name, None)


def _route_guidance(world: World, progress: float) -> tuple[np.ndarray, DrivingCommand]:
    """The route target point in the ego frame and the driving command."""
    x, y, h = (float(world.ego[i]) for i in range(3))
    target, _ = world.route_pose(min(progress + TARGET_AHEAD_M, world.length + 10.0))
    ahead, _ = world.route_pose(progress + COMMAND_AHEAD_M)
    local = geometry.to_frame(np.stack([target, ahead]), (x, y), h)
    lateral = float(local[1, 1])
    command = DrivingCommand.LEFT if lateral > COMMAND_LATERAL_M else DrivingCommand.RIGHT if lateral < -COMMAND_LATERAL_M else DrivingCommand.STRAIGHT
    return local[0], command


def _query(session: _Session, world: World, progress: float, sampling, config: ClosedLoopConfig, recorder: RouteRecorder | None = None):
    caller = session.caller
    caller.check_usable()
    scene = world.snapshot(progress)
    step = scene.current_index
    obs = session.observer.observe(scene, step, sampling)
    if recorder is not None and recorder.wants_views(world.time_s):
        if obs.images:
            recorder.add_views(world.time_s, obs.images)
        else:
            recorder.add_views(world.time_s, *session.report_views(scene, step, config))
    target, command = _route_guidance(world, progress)
    obs = dataclasses.replace(obs, ego_status=dataclasses.replace(obs.ego_status, command=command), route_target=target)
    plan = caller.call("plan()", f"route {world.spec.route_id} t={world.time_s:.1f} s", lambda: session.agent.plan(obs))
    return _checked(session.name, plan, scene, step, sampling)


def run_route(session: _Session, spec: RouteSpec | LogRouteSpec, config: ClosedLoopConfig, out_dir: Path | None = None) -> dict:
    """Drives one route; returns its result: ``record`` (the leaderboard's route record),
    ``abilities``, ``comfort`` (smoothness in [0, 1]), ``timeline`` (the infractions with their
    simulated times: ``name``, ``time_s``, ``message``), ``error`` / ``traceback`` (agent
    crashed), and with ``out_dir`` and ``closed_loop.report_media`` on, ``media`` (the files
    :meth:`~rap.eval.closed_loop.media.RouteRecorder.write` wrote for the HTML report, written
    after the route; ``seconds`` is their wall time)."""
    start = time.perf_counter()
    cl = config.closed_loop
    world = make_world(spec, config)
    monitor = Monitor(world, cl.monitor())
    min_s = float(getattr(world, "min_duration_s", 0.0))
    recorder = RouteRecorder(world, cl.report_strip_s) if out_dir is not None and cl.report_media else None
    sampling = config.navsim.sampling.to_sampling()
    every = cl.ticks_per_query
    error: AgentCallError | None = None
    while not monitor.done or (monitor.failure is None and world.time_s < min_s - 1e-9):
        if world.tick % every == 0:
            try:
                world.execute(_query(session, world, monitor.progress, sampling, config, recorder))
            except AgentCallError as exc:
                error = exc
                break
        world.step()
        monitor.observe()
        if recorder is not None:
            recorder.tick()
    failure = "agent_crashed" if error is not None else monitor.failure
    rc = 0.0 if error is not None else monitor.route_completion
    infractions = merge_repeats(monitor.final_infractions())
    if spec.length <= 0.0:  # a route of length 0 (a standing logged ego): no min-speed checkpoints
        infractions = [i for i in infractions if i.name != "min_speed_infractions"]
    record = route_record(
        spec.index, spec.route_id, rc, infractions, route_length_m=spec.length,
        duration_game_s=world.time_s, duration_system_s=time.perf_counter() - start, failure=failure,
        scenario_name=spec.scenario_name, town_name=spec.town_name,
    )  # fmt: skip
    timeline = [{"name": i.name, "time_s": round(float(i.time_s), 3), "message": i.message} for i in infractions]
    result = {"route_id": spec.route_id, "index": spec.index, "record": record, "abilities": list(spec.abilities), "comfort": round(monitor.comfort(), 6), "timeline": timeline}
    if error is not None:
        result["error"] = error.error
        if error.traceback:
            result["traceback"] = error.traceback
    if recorder is not None:
        media_start = time.perf_counter()
        result["media"] = recorder.write(Path(out_dir), spec.route_id, timeline)
        result["media"]["seconds"] = round(time.perf_counter() - media_start, 3)
    return result


MEDIA_KEYS = ("report_media", "report_strip_s")  # closed_loop settings that change no score


def run_key(agent_name: str, routes: str, config: ClosedLoopConfig) -> str:
    """What a stored route result must match to be reused by ``--resume`` (the report's media
    settings aside: a resumed route keeps the media stored with it, or has none)."""
    dumped = config.model_dump(mode="json")
    for key in MEDIA_KEYS:
        dumped["closed_loop"].pop(key, None)
    text = json.dumps({"agent": agent_name, "routes": routes, "config": dumped}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def route_file(out_dir: Path, route_id: str) -> Path:
    """Where a route's result is stored."""
    return Path(out_dir) / "routes" / f"{route_id}.json"


def _save_route(out_dir: Path, result: dict, key: str) -> None:
    write_bytes_atomic(route_file(out_dir, result["route_id"]), json.dumps({**result, "key": key}, indent=1, sort_keys=True).encode())


def _stored(out_dir: Path, spec: RouteSpec, key: str) -> dict | None:
    path = route_file(out_dir, spec.route_id)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("index") != spec.index:
        return None
    data.pop("key")
    return data


# --- process pool -----------------------------------------------------------------------------

_WORKER: dict = {}


def _worker_init(agent_spec: str, config_json: str, agent_loader: Callable[[str], Agent], parent_pid: int | None = None) -> None:
    if parent_pid is not None:  # a local pool's worker: it dies with the run
        die_with_parent(parent_pid)
    config = ClosedLoopConfig.model_validate_json(config_json)
    _WORKER["config"] = config
    _WORKER["session"] = _Session(agent_loader(agent_spec), config)


def _worker_run(spec: RouteSpec, out_dir: str, key: str) -> dict:
    result = run_route(_WORKER["session"], spec, _WORKER["config"], Path(out_dir))
    _save_route(Path(out_dir), result, key)
    return result


class _RouteActor:
    """A Ray actor: one agent session (loaded once) that drives the routes it is given."""

    def __init__(self, agent_spec: str, config_json: str, agent_loader: Callable[[str], Agent]) -> None:
        _worker_init(agent_spec, config_json, agent_loader)

    def run(self, spec: RouteSpec, out_dir: str, key: str) -> dict:
        return _worker_run(spec, out_dir, key)


def _run_ray(
    todo: list[RouteSpec], agent_spec: str, config: ClosedLoopConfig, agent_loader: Callable[[str], Agent], out_dir: Path, key: str, workers: int
) -> Iterator[dict]:
    """The routes' results as ``workers`` Ray actors finish them (each route's files written
    by its actor, as the process pool's workers do)."""
    with ray_session(workers) as ray:
        actor = ray.remote(num_cpus=1)(_RouteActor)
        actors = [actor.remote(agent_spec, config.model_dump_json(), agent_loader) for _ in range(min(max(workers, 1), len(todo)))]
        queue = list(todo)
        running = {}
        for a in actors:
            if queue:
                running[a.run.remote(queue.pop(0), str(out_dir), key)] = a
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            a = running.pop(ref)
            if queue:
                running[a.run.remote(queue.pop(0), str(out_dir), key)] = a
            yield ray.get(ref)


def evaluate_closed_loop(
    agent: Agent | str, routes: str, out_dir: str | Path, *, config: ClosedLoopConfig = ClosedLoopConfig(), workers: int = 1,
    resume: bool = False, on_route: Callable[[dict], None] | None = None, agent_loader: Callable[[str], Agent] = load_agent_spec,
    executor: str = "local",
) -> dict:  # fmt: skip
    """Drives ``agent`` through the routes of ``routes`` and writes the reports to ``out_dir``.

    Args:
        agent: an agent, or its spec (``expert``, ``constant_velocity``, a file, a module, a
            checkpoint); ``workers > 1`` needs a spec (each worker process loads its own).
        routes: ``bench:base``, ``bench:dev10``, ``synthetic:N`` or ``womd:PATH`` (see
            :func:`load_routes`).
        out_dir: where ``results.json``, ``closed_loop_eval.json`` / ``.md``, ``index.html``,
            ``routes/<route_id>.json`` (and with ``closed_loop.report_media``,
            ``routes/<route_id>.npz`` and ``media/<route_id>/``) go.
        config: the evaluation config.
        workers: processes (``local``) or Ray actors (``ray``).
        resume: reuse stored route results of the same agent, suite and config (media
            settings aside); a reused route keeps the media files stored with it.
        on_route: called with each route's result.
        agent_loader: turns a spec into an agent, here and in every worker (a module-level
            function: workers are spawned); default :func:`load_agent_spec`.
        executor: ``local`` (a process pool when ``workers > 1``) or ``ray`` (``workers`` Ray
            actors, each loading the agent once; ``ray.init()`` joins the cluster named by
            ``RAY_ADDRESS`` when set, else starts a local instance). Same results either way.

    Returns:
        The summary (:func:`rap.eval.closed_loop.outputs.summary`).

    Raises:
        AgentLoadError (ValueError): the agent cannot be loaded or its sensor config is bad.
        ValueError: an unknown route suite, an unknown executor, an agent object with
            ``workers > 1`` or ``executor="ray"``, or Ray not installed for ``ray``.
    """
    from rap.eval.closed_loop.outputs import summary, write_outputs

    out_dir = Path(out_dir)
    if executor not in EXECUTORS:
        raise ValueError(f"evaluate_closed_loop: executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    specs = load_routes(routes, config.closed_loop.log_seats)
    start = time.perf_counter()
    if isinstance(agent, str):
        agent_spec, agent = agent, agent_loader(agent)
    else:
        agent_spec = None
        if workers > 1 or executor == "ray":
            raise ValueError("evaluate_closed_loop: workers > 1 and the ray executor need the agent as a spec string (each worker loads its own)")
    name = str(getattr(agent, "name", type(agent).__name__))
    key = run_key(name, routes, config)
    results: dict[str, dict] = {}
    todo = []
    for spec in specs:
        stored = _stored(out_dir, spec, key) if resume else None
        if stored is not None:
            results[spec.route_id] = stored
            if on_route:
                on_route(stored)
        else:
            todo.append(spec)
    if todo and executor == "ray":
        _Session(agent, config).close()  # sensor_config() problems surface here, once
        for result in _run_ray(todo, agent_spec, config, agent_loader, out_dir, key, workers):
            results[result["route_id"]] = result
            if on_route:
                on_route(result)
    elif todo and (workers <= 1 or len(todo) == 1):
        session = _Session(agent, config)
        try:
            for spec in todo:
                result = run_route(session, spec, config, out_dir)
                _save_route(out_dir, result, key)
                results[spec.route_id] = result
                if on_route:
                    on_route(result)
        finally:
            session.close()
    elif todo:
        _Session(agent, config).close()  # sensor_config() problems surface here, once
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_worker_init, initargs=(agent_spec, config.model_dump_json(), agent_loader, os.getpid())) as pool:
            futures = [pool.submit(_worker_run, spec, str(out_dir), key) for spec in todo]
            for fut in futures:
                result = fut.result()
                results[result["route_id"]] = result
                if on_route:
                    on_route(result)
    ordered = [results[s.route_id] for s in specs]
    report = summary(name, routes, ordered)
    if routes.startswith("bench:"):
        report["routes_version"] = BASE_VERSION
    report["seconds"] = round(time.perf_counter() - start, 3)  # wall clock (this invocation)
    write_outputs(out_dir, report, ordered)
    return report
