"""Sample plans shared by every sample kind (ego, recovery, cross-agent): keys, windows, the
plain ego sample. The kinematics they read (poses at times, futures, histories, velocity,
acceleration, driving command) live in :mod:`rap.kinematics`.

Everything here reads the privileged :class:`rap.scene.Scene` (targets, not features).

Keys (:func:`sample_key`): ``f"{prefix}_{step:03d}_{kind}_{agent_id}_{k}"`` with the prefix
(the scene id by default) made filesystem-safe.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from rap.config import DEFAULT_HISTORY_INTERVAL_S, DEFAULT_HISTORY_NUM_POSES
from rap.dataset.sample import SampleKind, SamplePlan
from rap.kinematics import ego_status, future_target, history_poses, window_valid
from rap.scene import Scene
from rap.trajectory import RAP_SAMPLING, TrajectorySampling

__all__ = [
    "InvalidWindowError",
    "EgoConfig",
    "sample_key",
    "agent_plan",
    "ego_plan",
]

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class InvalidWindowError(ValueError):
    """The acting agent is not valid over the sample's window (history + current + future)."""


@dataclasses.dataclass(frozen=True)
class EgoConfig:
    """What a plain ego sample holds.

    Attributes:
        sampling: Target trajectory sampling (RAP training: 10 poses x 0.5 s).
        history_num: Number of past poses (H of ``SamplePlan.history``).
        history_interval_s: Spacing of the past poses [s]. The defaults (3 x 0.5 s) are those of
            generated samples and evaluation observations (``rap.config``); a WOMD scenario holds
            1.1 s of history, so its first steps need a shorter history (e.g. 4 x 0.25 s).
    """

    sampling: TrajectorySampling = RAP_SAMPLING
    history_num: int = DEFAULT_HISTORY_NUM_POSES
    history_interval_s: float = DEFAULT_HISTORY_INTERVAL_S  # [s]

    def __post_init__(self) -> None:
        _check_history(self, self.history_num, self.history_interval_s)


def _check_history(owner: object, num: int, interval_s: float) -> None:
    name = type(owner).__name__
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
        raise ValueError(f"{name}.history_num must be an int >= 0, got {num!r}")
    if not (np.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"{name}.history_interval_s must be finite and > 0 [s], got {interval_s!r}")


# ----------------------------------------------------------------------------------------------
# Keys.
# ----------------------------------------------------------------------------------------------


def sample_key(prefix: str, step: int, kind: SampleKind, agent_id: int, k: int) -> str:
    """Deterministic, filesystem-safe sample key ``f"{prefix}_{step:03d}_{kind}_{agent_id}_{k}"``.

    Args:
        prefix: Usually the scene id; characters outside ``[A-Za-z0-9._-]`` become ``-``.
        step: Sample step index.
        kind: Sample kind (its value is used, e.g. ``"recovery"``).
        agent_id: Track id of the acting agent.
        k: Index of the sample among those of the same (step, kind, agent).
    """
    safe = _UNSAFE_KEY_CHARS.sub("-", prefix) or "scene"
    return f"{safe}_{int(step):03d}_{SampleKind(kind).value}_{int(agent_id)}_{int(k)}"


# ----------------------------------------------------------------------------------------------
# Plans.
# ----------------------------------------------------------------------------------------------


def agent_plan(
    scene: Scene,
    row: int,
    step: int,
    sampling: TrajectorySampling,
    history_num: int,
    history_interval_s: float,
    kind: SampleKind,
    key: str,
) -> SamplePlan:
    """A sample seen from an agent's own logged seat: its history, status and logged future.

    Args:
        scene: The scene.
        row: Row of ``scene.tracks`` of the acting agent.
        step: Sample step.
        sampling: Target sampling.
        history_num: Number of past poses.
        history_interval_s: Their spacing [s].
        kind: ``EGO`` or ``CROSS_AGENT``.
        key: The sample key.

    Returns:
        The plan; ``viewer_pose`` is ``scene.agent_pose(row, step)``.

    Raises:
        InvalidWindowError: The agent is not valid over the window (names scene, step, agent).
    """
    tr = scene.tracks
    if not window_valid(scene, row, step, sampling, history_num, history_interval_s):
        raise InvalidWindowError(
            f"Scene {scene.scene_id} ({scene.source}): agent row {row} (id {tr.ids[row]}) is not "
            f"valid over the window of step {step} ({history_num} x {history_interval_s} s history, "
            f"{sampling.num_poses} x {sampling.interval_s} s future)"
        )
    future = future_target(scene, row, step, sampling)
    history = history_poses(scene, row, step, history_num, history_interval_s)
    if future is None or history is None:  # window_valid implies both; kept as a guard.
        raise InvalidWindowError(f"Scene {scene.scene_id}: agent row {row} lookup failed at step {step}")
    viewer = scene.agent_pose(row, step)
    viewer.flags.writeable = False
    history.flags.writeable = False
    return SamplePlan(
        key=key,
        scene_id=scene.scene_id,
        source=scene.source,
        step=int(step),
        kind=SampleKind(kind),
        agent_row=int(row),
        agent_id=int(tr.ids[row]),
        viewer_pose=viewer,
        ego_status=ego_status(scene, row, step, future),
        history=history,
        target=future,
    )


def ego_plan(scene: Scene, step: int, cfg: EgoConfig, *, key_prefix: str | None = None) -> SamplePlan:
    """The plain ego sample at ``step``: the logged ego's view, status, history and future.

    Args:
        scene: The scene (its ``ego_index`` is the acting agent).
        step: Sample step.
        cfg: Sampling and history.
        key_prefix: Key prefix; defaults to ``scene.scene_id``.

    Returns:
        The plan, key ``f"{prefix}_{step:03d}_ego_{ego_id}_0"``.

    Raises:
        InvalidWindowError: The ego is not valid over the window.
    """
    row = scene.ego_index
    prefix = scene.scene_id if key_prefix is None else key_prefix
    key = sample_key(prefix, step, SampleKind.EGO, int(scene.tracks.ids[row]), 0)
    return agent_plan(
        scene, row, step, cfg.sampling, cfg.history_num, cfg.history_interval_s, SampleKind.EGO, key
    )
