"""Cross-agent samples: another vehicle's seat, status and logged future.

A candidate (:func:`candidates`) is an agent, other than the ego, that

1. has one of ``CrossAgentConfig.agent_types`` (vehicles by default); else ``"type"``;
2. is valid over the whole window, history + current + future (``targets.window_valid``);
   else ``"invalid_window"``;
3. moves non-trivially: the mean distance between its logged future poses and a
   constant-velocity extrapolation of its current rear-axle velocity, over the target sampling's
   pose times, exceeds ``min_cv_error_m`` (0.5 m, the RAP reference's rule); else
   ``"trivial_motion"`` (parked cars and cars cruising straight at constant speed);
4. is at least ``min_speed_mps`` fast at the step (0 by default: off); else ``"slow"``.

Rejected agents are counted under the quoted reasons, checked in that order.

A sample re-centres the scene on the candidate (:func:`recenter`): it becomes the ego and the
original ego stays an ordinary vehicle row, so a renderer that hides the viewer's row draws the
original ego like any other car (``SceneRasterizer.render(step, rig, viewer_index=row)``). Its
status and driving command come from its own motion, its target is its own future in its own
frame, and ``viewer_pose`` is its rear-axle pose, where the rig is mounted exactly as on the ego.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from rap.augment.targets import _check_history, agent_plan, sample_key
from rap.config import DEFAULT_HISTORY_INTERVAL_S, DEFAULT_HISTORY_NUM_POSES
from rap.dataset.sample import SampleKind, SamplePlan
from rap.kinematics import agent_velocity, future_target, window_valid
from rap.scene import AgentType, Scene
from rap.trajectory import TrajectorySampling

__all__ = [
    "CrossAgentConfig",
    "REJECT_REASONS",
    "constant_velocity_error",
    "candidates",
    "recenter",
    "plan_cross_agent",
]

REJECT_REASONS = ("type", "invalid_window", "trivial_motion", "slow")


@dataclasses.dataclass(frozen=True)
class CrossAgentConfig:
    """Which agents give cross-agent samples.

    Attributes:
        min_cv_error_m: Smallest mean constant-velocity extrapolation error [m] (RAP: 0.5).
        min_speed_mps: Smallest speed at the step [m/s] (0: no speed filter).
        agent_types: Agent types that may be candidates.
        history_num: Number of past poses in each sample.
        history_interval_s: Their spacing [s].
        max_agents: Keep at most this many candidates per step (the first by row); None: all.
    """

    min_cv_error_m: float = 0.5
    min_speed_mps: float = 0.0
    agent_types: tuple[AgentType, ...] = (AgentType.VEHICLE,)
    history_num: int = DEFAULT_HISTORY_NUM_POSES
    history_interval_s: float = DEFAULT_HISTORY_INTERVAL_S  # [s]
    max_agents: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_cv_error_m", "min_speed_mps"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"CrossAgentConfig.{name} must be finite and >= 0, got {value!r}")
        try:
            types = tuple(AgentType(t) for t in self.agent_types)
        except (TypeError, ValueError):
            raise ValueError(
                f"CrossAgentConfig.agent_types must be AgentType values, got {self.agent_types!r}"
            ) from None
        object.__setattr__(self, "agent_types", types)
        if self.max_agents is not None and int(self.max_agents) < 0:
            raise ValueError(f"CrossAgentConfig.max_agents must be >= 0 or None, got {self.max_agents}")
        _check_history(self, self.history_num, self.history_interval_s)


def constant_velocity_error(scene: Scene, row: int, step: int, sampling: TrajectorySampling) -> float | None:
    """Mean distance between an agent's future and its constant-velocity extrapolation.

    Args:
        scene: The scene.
        row: Row of ``scene.tracks``.
        step: Current step.
        sampling: Pose times of the comparison.

    Returns:
        The mean over pose times of ``|p_k - v * t_k|`` [m], with ``p_k`` the future rear-axle
        positions and ``v`` the rear-axle velocity at ``step``, both in the agent's frame; None if
        the future is not valid.
    """
    future = future_target(scene, row, step, sampling)
    if future is None:
        return None
    v = agent_velocity(scene, row, step)  # (2,)
    cv = sampling.times_s[:, None] * v[None, :]  # (T, 2)
    return float(np.mean(np.linalg.norm(future.xy - cv, axis=-1)))


def _screen(
    scene: Scene,
    step: int,
    cfg: CrossAgentConfig,
    sampling: TrajectorySampling,
    history_num: int,
    history_interval_s: float,
) -> tuple[list[int], collections.Counter]:
    tr = scene.tracks
    rows: list[int] = []
    rejects: collections.Counter = collections.Counter()
    allowed = np.isin(tr.types, np.array([int(t) for t in cfg.agent_types]))
    for row in range(tr.num_agents):
        if row == scene.ego_index:
            continue
        if not allowed[row]:
            rejects["type"] += 1
        elif not window_valid(scene, row, step, sampling, history_num, history_interval_s):
            rejects["invalid_window"] += 1
        elif (err := constant_velocity_error(scene, row, step, sampling)) is None or err <= cfg.min_cv_error_m:
            rejects["trivial_motion"] += 1
        elif float(np.hypot(*agent_velocity(scene, row, step))) < cfg.min_speed_mps:
            rejects["slow"] += 1
        else:
            rows.append(row)
    return rows, rejects


def candidates(
    scene: Scene,
    step: int,
    cfg: CrossAgentConfig,
    sampling: TrajectorySampling,
    history_num: int | None = None,
    history_interval_s: float | None = None,
) -> list[int]:
    """Rows of the agents that give cross-agent samples at ``step`` (see the module docstring).

    Args:
        scene: The scene.
        step: Sample step.
        cfg: Filters.
        sampling: Target sampling (the window's future and the constant-velocity test's times).
        history_num: Past poses in the window; defaults to ``cfg.history_num``.
        history_interval_s: Their spacing [s]; defaults to ``cfg.history_interval_s``.

    Returns:
        Candidate rows of ``scene.tracks`` in increasing order (the ego never is one).
    """
    num = cfg.history_num if history_num is None else history_num
    interval = cfg.history_interval_s if history_interval_s is None else history_interval_s
    return _screen(scene, step, cfg, sampling, num, interval)[0]


def recenter(scene: Scene, row: int) -> Scene:
    """The scene with agent ``row`` as the ego.

    Coordinates and tracks are unchanged, so the original ego remains an ordinary vehicle row
    (``Scene.with_ego``).

    Raises:
        ValueError: ``row`` out of range.
    """
    if not 0 <= row < scene.tracks.num_agents:
        raise ValueError(f"recenter: row {row} out of range [0, {scene.tracks.num_agents}) in scene {scene.scene_id}")
    return scene.with_ego(int(row))


def plan_cross_agent(
    scene: Scene,
    step: int,
    cfg: CrossAgentConfig,
    sampling: TrajectorySampling,
    key_prefix: str | None = None,
) -> tuple[list[SamplePlan], collections.Counter]:
    """Cross-agent samples at ``step``: one per candidate.

    Args:
        scene: The scene (its ego is never a candidate).
        step: Sample step.
        cfg: Filters and history.
        sampling: Target sampling.
        key_prefix: Key prefix; defaults to ``scene.scene_id``. Keys are
            ``f"{prefix}_{step:03d}_cross_agent_{agent_id}_0"``.

    Returns:
        Plans in increasing row order (``agent_row`` is the candidate's row in ``scene.tracks``)
        and a Counter of rejected agents by reason (:data:`REJECT_REASONS`; candidates beyond
        ``cfg.max_agents`` count as ``"max_agents"``).
    """
    rows, rejects = _screen(scene, step, cfg, sampling, cfg.history_num, cfg.history_interval_s)
    if cfg.max_agents is not None and len(rows) > cfg.max_agents:
        rejects["max_agents"] += len(rows) - int(cfg.max_agents)
        rows = rows[: int(cfg.max_agents)]
    prefix = scene.scene_id if key_prefix is None else key_prefix
    plans = []
    for row in rows:
        key = sample_key(prefix, step, SampleKind.CROSS_AGENT, int(scene.tracks.ids[row]), 0)
        plans.append(
            agent_plan(
                scene, row, step, sampling, cfg.history_num, cfg.history_interval_s,
                SampleKind.CROSS_AGENT, key,
            )  # fmt: skip
        )
    return plans, rejects
