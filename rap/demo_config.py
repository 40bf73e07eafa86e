"""`rap demo`'s config: what the chain generates, how long the planner trains, where it is
evaluated. Every key takes a dotted ``key=value`` override (``rap demo train.steps=50``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, NonNegativeInt, PositiveInt

from rap.config import FrozenModel, ImageSide

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class DemoDataSection(FrozenModel):
    """The training data: the shipped real scenario plus ``synthetic:N`` towns."""

    synthetic_towns: PositiveInt = 3  # synthetic:N
    size: tuple[ImageSide, ImageSide] = (256, 128)  # [px] every camera of the training datasets
    paired: bool = True  # also paired photo/raster samples of both sources (the alignment's data)


class DemoTrainSection(FrozenModel):
    """The planner: ``config`` plus ``overrides``, trained ``steps`` steps (0: no planner, the
    chain stops after the datasets and scores the built-in agents only)."""

    config: Path = CONFIGS / "train" / "tiny.yaml"
    steps: NonNegativeInt = 200
    overrides: list[str] = Field(
        default_factory=lambda: [
            "data.kind_fractions={ego: 0.5, recovery: 0.15, cross_agent: 0.15, paired: 0.2}",
            "align.spatial_weight=0.002",  # the method's alignment weights
            "align.global_weight=0.001",
        ]
    )


class DemoEvalSection(FrozenModel):
    """Where the agents are scored."""

    navsim_scenes: str = "synthetic:2"  # NAVSIM-style scenes (towns 0-1: held in for the planner)
    closed_loop_routes: str = "bench:dev10"  # '' skips the closed loop
    closed_loop_agents: list[str] = Field(default_factory=lambda: ["expert", "constant_velocity"])  # beside the planner
    workers: PositiveInt = 2  # closed-loop route processes


class DemoConfig(FrozenModel):
    """`rap demo`'s whole config."""

    data: DemoDataSection = DemoDataSection()
    train: DemoTrainSection = DemoTrainSection()
    eval: DemoEvalSection = DemoEvalSection()
