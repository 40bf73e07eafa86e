"""`rap experiment ablation`'s config (configs/experiments/ablation.yaml): the data, the training
every row shares, the rows (each a list of train overrides), the evaluation and the data-scaling
curve. ``experiment.scale`` picks a preset from ``scales`` (overrides applied before the command
line's)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from rap.config import ConfigError, FrozenModel, ImageSide, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_ABLATION_CONFIG = CONFIGS / "experiments" / "ablation.yaml"


class ExperimentSection(FrozenModel):
    scale: str = "default"  # default, or a preset of `scales` (small: a ~20-minute version)
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0, 1, 2], min_length=1)  # training seeds per row
    bootstrap: PositiveInt = 2000  # resamples of the 95 % intervals (routes and seeds)
    bootstrap_seed: int = 0


class AblationDataSection(FrozenModel):
    train_towns: PositiveInt = 8  # synthetic:N (paired photo/raster samples on)
    heldout: str = "synthetic:100-103"  # towns never trained on: NAVSIM-style and open-loop scores
    size: tuple[ImageSide, ImageSide] = (128, 64)  # [px] every generated camera
    generate: list[str] = []  # more rap generate overrides, for both datasets


class AblationTrainSection(FrozenModel):
    config: Path = CONFIGS / "train" / "tiny.yaml"  # relative paths: from the ablation YAML's folder
    steps: PositiveInt = 300  # train.max_steps of every model
    overrides: list[str] = []  # shared by every row


class AblationRow(FrozenModel):
    name: str = Field(min_length=1)
    overrides: list[str] = []  # train overrides of this row


class AblationEvalSection(FrozenModel):
    closed_loop_routes: str = "bench:base"  # '' skips the closed loop
    observation_style: Literal["raster", "photo"] = "photo"  # how the planners see (photo: the camera-like domain)
    navsim: bool = True  # NAVSIM-style scores on data.heldout
    workers: PositiveInt = 2
    references: list[str] = Field(default_factory=lambda: ["constant_velocity"])  # agents scored the same way, beside the rows


class ScalingSection(FrozenModel):
    row: str = "+ cross-agent rasters"  # the row whose cross-agent samples are counted
    cross_agent_samples: list[PositiveInt] = []  # the curve's sizes (the row itself adds the full count)
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0])


class AblationConfig(FrozenModel):
    experiment: ExperimentSection = ExperimentSection()
    data: AblationDataSection = AblationDataSection()
    train: AblationTrainSection = AblationTrainSection()
    rows: list[AblationRow] = Field(min_length=1)
    eval: AblationEvalSection = AblationEvalSection()
    scaling: ScalingSection = ScalingSection()
    scales: dict[str, list[str]] = {}  # preset name -> overrides

    @field_validator("rows")
    @classmethod
    def _unique_names(cls, rows: list[AblationRow]) -> list[AblationRow]:
        names = [r.name for r in rows]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"row names must be unique, repeated: {dup}")
        return rows

    @model_validator(mode="after")
    def _scaling_row_exists(self) -> "AblationConfig":
        if self.scaling.cross_agent_samples and self.scaling.row not in {r.name for r in self.rows}:
            raise ValueError(f"scaling.row {self.scaling.row!r} names no row (rows: {[r.name for r in self.rows]})")
        return self


def load_ablation_config(path: str | Path | None, overrides: list[str]) -> AblationConfig:
    """The YAML (default configs/experiments/ablation.yaml) with its ``experiment.scale`` preset
    and then ``overrides`` applied; a relative ``train.config`` is read from the YAML's folder.

    Raises:
        ConfigError: a bad file, key or value, or an unknown scale, naming it.
    """
    path = Path(path) if path is not None else DEFAULT_ABLATION_CONFIG
    cfg = load_config(AblationConfig, path, overrides)
    scale = cfg.experiment.scale
    if scale != "default":
        if scale not in cfg.scales:
            raise ConfigError(f"{path}: experiment.scale={scale!r} is not one of default, {', '.join(sorted(cfg.scales))}")
        cfg = load_config(AblationConfig, path, [*cfg.scales[scale], *overrides])
    if not cfg.train.config.is_absolute():
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"config": (path.parent / cfg.train.config).resolve()})})
    return cfg
