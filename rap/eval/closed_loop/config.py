"""``ClosedLoopConfig``: the evaluation config (``configs/eval/default.yaml``: observation,
plan sampling, agent time limit, tracker) plus the ``closed_loop`` section (rates, thresholds,
traffic), all settable by dotted ``key=value`` overrides, e.g. ``closed_loop.agent_hz=4``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rap.config import FrozenModel
from rap.eval.closed_loop.infractions import MonitorConfig
from rap.eval.closed_loop.world import WorldConfig
from rap.eval.config import EvalConfig

__all__ = ["ClosedLoopConfig", "ClosedLoopSection"]


class ClosedLoopSection(FrozenModel):
    """Closed-loop settings.

    Attributes:
        sim_hz: world steps per second (the tracker's step is 1 / sim_hz).
        agent_hz: agent queries per second; sim_hz must be a multiple.
        seed: traffic seed (with each route's own).
        history_s: [s] past kept in each observation's scene.
        density: background vehicles per 100 m of road lane.
        parked_fraction: share of parking-strip spots with a parked car.
        lane_change_fraction: share of the background vehicles starting on a road lane with a
            same-direction neighbour whose route leaves from that neighbour (they change lanes
            when the gap is safe; 0: nobody changes lanes, as in ``bench-base-v3``).
        crosswalk_pedestrians_per_min: background pedestrians arriving per minute at each
            crosswalk of an all-way-stop junction (0: none, as in ``bench-base-v3``).
        standing_start: start every route at rest (as ``bench-base-v1`` did) instead of at the
            route's ``start_speed``.
        deviation_m, blocked_s, timeout_seconds_per_m, timeout_initial_s, checkpoints, scenario_timeout_s: see
            :class:`rap.eval.closed_loop.infractions.MonitorConfig`.
        report_media: write the HTML report's media per route (recorded states, BEV animation,
            camera thumbnails; :mod:`rap.eval.closed_loop.media`); ``index.html`` is written
            either way.
        report_strip_s: [s] between the camera views kept for the report.
        traffic: the other agents of a real-log-seeded route (``--routes womd:PATH``): ``log``
            (default) replays their logged boxes (non-reactive); ``idm`` drives the vehicles on
            lanes with the shared IDM from their logged states, reacting to the ego and each
            other (pedestrians, cyclists and parked vehicles replay their logs); see
            :mod:`rap.eval.closed_loop.log_world`. Synthetic routes ignore it.
        log_seats: whose seats a real-log-seeded suite drives from: ``ego`` (default) one route
            per scenario, the logged ego's; ``vehicles`` also one from the seat of every other
            logged vehicle that drives at least 20 m in the log (their logged paths as routes,
            the ego then replaying its own log like any other agent).
    """

    sim_hz: float = Field(default=10.0, gt=0, le=100)
    agent_hz: float = Field(default=2.0, gt=0, le=100)
    seed: int = 0
    history_s: float = Field(default=2.0, ge=1.5, le=10.0)
    density: float = Field(default=0.6, ge=0, le=5)
    parked_fraction: float = Field(default=0.4, ge=0, le=1)
    lane_change_fraction: float = Field(default=0.3, ge=0, le=1)
    crosswalk_pedestrians_per_min: float = Field(default=0.5, ge=0, le=30)
    standing_start: bool = False
    deviation_m: float = Field(default=30.0, gt=0)
    blocked_s: float = Field(default=60.0, gt=0)
    timeout_seconds_per_m: float = Field(default=0.4, gt=0)
    timeout_initial_s: float = Field(default=60.0, ge=0)
    checkpoints: int = Field(default=4, ge=1, le=100)
    scenario_timeout_s: float = Field(default=180.0, gt=0)
    report_media: bool = True
    report_strip_s: float = Field(default=3.0, gt=0)
    traffic: Literal["log", "idm"] = "log"
    log_seats: Literal["ego", "vehicles"] = "ego"

    @model_validator(mode="after")
    def _rates(self) -> ClosedLoopSection:
        ratio = self.sim_hz / self.agent_hz
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"closed_loop.sim_hz ({self.sim_hz:g}) must be a multiple of closed_loop.agent_hz ({self.agent_hz:g})")
        steps = 4.0 * self.sim_hz
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"closed_loop.sim_hz ({self.sim_hz:g}) must divide 4 s into whole steps (the tracker's horizon)")
        return self

    @property
    def ticks_per_query(self) -> int:
        """World ticks between agent queries."""
        return int(round(self.sim_hz / self.agent_hz))

    def world(self) -> WorldConfig:
        """The world settings."""
        return WorldConfig(dt=1.0 / self.sim_hz, history_s=self.history_s, density=self.density, parked_fraction=self.parked_fraction, lane_change_fraction=self.lane_change_fraction, crosswalk_pedestrians_per_min=self.crosswalk_pedestrians_per_min, standing_start=self.standing_start)

    def monitor(self) -> MonitorConfig:
        """The infraction thresholds."""
        return MonitorConfig(
            deviation_m=self.deviation_m, blocked_s=self.blocked_s, seconds_per_m=self.timeout_seconds_per_m,
            initial_s=self.timeout_initial_s, checkpoints=self.checkpoints, scenario_timeout_s=self.scenario_timeout_s,
        )  # fmt: skip


class ClosedLoopConfig(EvalConfig):
    """The evaluation config plus ``closed_loop``."""

    closed_loop: ClosedLoopSection = ClosedLoopSection()
