"""``EvalConfig``: what evaluators give agents (``configs/eval/*.yaml``, dotted overrides).

Observation settings share their sections and defaults with ``GenerateConfig``
(:mod:`rap.config`), so a planner sees the same history and driving-command horizon in training
samples and in evaluation unless a config says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rap.config import DEFAULT_CAMERA_SIZE, DEFAULT_RIG, FrozenModel, HistorySection, ImageSide, PositiveFloat, SamplingSection

DEFAULT_EVAL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval" / "default.yaml"


class ObservationSection(FrozenModel):
    """What an observation holds.

    Attributes:
        rig, size: the camera rig and image size of agents whose ``SensorConfig`` leaves them to
            the config (its defaults do; as ``GenerateConfig.rig`` / ``size``).
        history: past poses (as ``GenerateConfig.history``).
        command_sampling: the logged future the driving command is read from (as the training
            target, ``GenerateConfig.sampling``); STRAIGHT where the log ends sooner.
        style: how camera views are drawn: ``raster`` (the semantic raster planners train on) or
            ``photo`` (the camera-like stand-in, to test a planner on the camera-like domain).
        seed: seeds the photo style's sensor noise.
    """

    rig: Literal["front3", "nuplan8", "bev"] = DEFAULT_RIG
    size: tuple[ImageSide, ImageSide] = DEFAULT_CAMERA_SIZE  # [px] every camera
    history: HistorySection = HistorySection()
    command_sampling: SamplingSection = SamplingSection()
    style: Literal["raster", "photo"] = "raster"
    seed: int = 0


class NavsimSection(FrozenModel):
    """NAVSIM-style scoring: the plan agents return and where it is scored."""

    sampling: SamplingSection = SamplingSection(num_poses=8, interval_s=0.5)  # NAVSIM: 8 x 0.5 s
    spacing_s: PositiveFloat = 1.0  # [s] between scoring steps
    previous_plan_offset_s: PositiveFloat = 0.5  # [s] the earlier query for extended comfort
    # [s] longest one agent.plan() call may take; a call that takes longer fails its scene and
    # the agent is not called again in that run (see rap.eval.agent.AgentCaller)
    agent_timeout_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)


class TrackerSection(FrozenModel):
    """The LQR tracker that executes plans before scoring (see :mod:`rap.sim.tracker`)."""

    # navsim: NAVSIM's batch tracker exactly (the leaderboard); nuplan: acceleration differences
    velocity_regularizer: Literal["navsim", "nuplan"] = "navsim"


class EvalConfig(FrozenModel):
    """Everything that decides what evaluators give agents and how plans are scored."""

    observation: ObservationSection = ObservationSection()
    navsim: NavsimSection = NavsimSection()
    tracker: TrackerSection = TrackerSection()

    def scorer_config(self):
        """The :class:`rap.metrics.pdms.PDMScorerConfig` these settings ask for."""
        from rap.metrics.pdms import PDMScorerConfig
        from rap.sim.tracker import LQRConfig, RolloutConfig

        return PDMScorerConfig(rollout=RolloutConfig(lqr=LQRConfig(velocity_regularizer=self.tracker.velocity_regularizer)))
