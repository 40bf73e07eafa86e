"""`rap train` configuration: typed sections, unknown keys rejected, dotted ``key=value``
overrides (``data.datasets=[out/ds_a,out/ds_b]``, ``train.max_steps=N``) as `rap generate` has."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from rap.config import FrozenModel, ImageSide, NonNegativeFloat, PositiveFloat
from rap.generate import GenerateConfig

__all__ = ["BackboneSection", "ModelSection", "DataSection", "KindWeights", "LossSection", "OptimSection", "TrainSection", "TrainConfig"]

KINDS = ("ego", "recovery", "cross_agent")


class BackboneSection(FrozenModel):
    """The shared image backbone (see :mod:`planners.backbones`)."""

    name: str = "resnet18"  # resnet18 | resnet34 | resnet50 | timm:NAME
    weights: Optional[str] = None  # local state dict (.pt/.pth) or .safetensors; None: random init
    frozen: bool = False  # RAP freezes its (pretrained) backbone


class ModelSection(FrozenModel):
    """Which planner and how big (see :mod:`planners.model`)."""

    type: Literal["rap", "regression", "ego_mlp"] = "rap"
    backbone: BackboneSection = BackboneSection()
    d_model: PositiveInt = 128
    num_heads: PositiveInt = 4
    num_proposals: PositiveInt = 16  # K (RAP: 64)
    num_layers: PositiveInt = 2  # R refinement layers (RAP: 4)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    velocity_prior: bool = True  # heads predict corrections to the constant-velocity extrapolation

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSection":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        return self


class KindWeights(FrozenModel):
    """One number per sample kind."""

    ego: NonNegativeFloat = 1.0
    recovery: NonNegativeFloat = 1.0
    cross_agent: NonNegativeFloat = 1.0

    def of(self, kind: str) -> float:
        return float(getattr(self, kind))


class DataSection(FrozenModel):
    """What the planner trains on."""

    datasets: list[str] = []  # shard folders written by `rap generate`
    dataset_weights: Optional[list[PositiveFloat]] = None  # sampling weight of each dataset or online source (default: by size)
    # Share of each kind in the batches drawn from a dataset (renormalised over the kinds it has;
    # RAP: recovery and cross-agent samples as small fractions).
    kind_fractions: KindWeights = KindWeights(ego=0.6, recovery=0.2, cross_agent=0.2)
    cameras: list[str] = ["CAM_L0", "CAM_F0", "CAM_R0"]  # image order; [] for models without images
    image_size: tuple[ImageSide, ImageSide] = (256, 128)  # [px] (width, height) the loader resizes to
    history_poses: PositiveInt = 3  # past poses the model reads (the dataset's history)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # share of scenes held out (by scene id)
    num_workers: NonNegativeInt = 0  # DataLoader worker processes
    verify: bool = True  # check shards against the manifest's sha256 when indexing
    # Online rasterization (planners.online): no shards; the loader's workers render the samples
    # of data.sources (rap generate's sources: synthetic:N, womd:PATH, scenarionet:DIR) with
    # data.generate (rap generate's config: the same seed and config give the same samples).
    online: bool = False
    sources: list[str] = []
    generate: GenerateConfig = GenerateConfig()
    scene_cache: PositiveInt = 16  # scenes each loader worker keeps loaded (online)

    @field_validator("datasets", "sources")
    @classmethod
    def _strings(cls, value: list[str]) -> list[str]:
        return [str(v) for v in value]


class LossSection(FrozenModel):
    """Loss weights (RAP: cross-agent trajectory loss 0.1, no scorer loss on cross-agent samples)."""

    trajectory: KindWeights = KindWeights(ego=1.0, recovery=1.0, cross_agent=0.1)
    scorer: KindWeights = KindWeights(ego=1.0, recovery=1.0, cross_agent=0.0)
    scorer_weight: NonNegativeFloat = 1.0  # scorer BCE relative to the trajectory L1
    heading_weight: NonNegativeFloat = 1.0  # [1/rad] heading error relative to metres in the L1


class OptimSection(FrozenModel):
    """AdamW with linear warm-up and cosine decay."""

    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-4
    warmup_steps: NonNegativeInt = 20
    min_lr_ratio: float = Field(0.05, ge=0.0, le=1.0)
    grad_clip: Optional[PositiveFloat] = 5.0  # max gradient norm; None: no clipping


class TrainSection(FrozenModel):
    """The loop."""

    seed: int = 0
    max_steps: PositiveInt = 300
    batch_size: PositiveInt = 16  # global batch (split across ranks)
    amp: bool = True  # mixed precision where the device supports it (CUDA); ignored on CPU
    log_every: PositiveInt = 10
    val_every: PositiveInt = 100
    val_batches: PositiveInt = 8
    checkpoint_every: PositiveInt = 100
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrainConfig(FrozenModel):
    """Everything `rap train` needs (stored in every checkpoint)."""

    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    loss: LossSection = LossSection()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.model.type != "ego_mlp" and not self.data.cameras:
            raise ValueError(f"data.cameras: model.type={self.model.type} needs at least one camera")
        data = self.data
        if data.online and data.datasets:
            raise ValueError("data.online=true renders the scenes of data.sources; data.datasets (shard folders) must be empty")
        if not data.online and data.sources:
            raise ValueError("data.sources is read only with data.online=true; train on shards with data.datasets=[DIR,...]")
        inputs, what = (data.sources, "sources") if data.online else (data.datasets, "datasets")
        if data.dataset_weights is not None and len(data.dataset_weights) != len(inputs):
            raise ValueError(f"data.dataset_weights: {len(data.dataset_weights)} weights for {len(inputs)} {what}")
        if len(set(self.data.cameras)) != len(self.data.cameras):
            raise ValueError("data.cameras: a camera is listed twice")
        return self
