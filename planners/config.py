"""`rap train` configuration: typed sections, unknown keys rejected, dotted ``key=value``
overrides (``data.datasets=[out/ds_a,out/ds_b]``, ``train.max_steps=N``) as `rap generate` has."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from rap.config import FrozenModel, ImageSide, NonNegativeFloat, PositiveFloat
from rap.generate import GenerateConfig

__all__ = ["BackboneSection", "ModelSection", "DataSection", "KindWeights", "KindLimits", "LossSection", "AlignSection", "OptimSection", "TrainSection", "TrainConfig"]

# Sample kinds training reads. ``paired`` samples (a real or photo view beside the raster of the
# same moment): the planner sees their real views; their rasters feed the alignment losses.
KINDS = ("ego", "recovery", "cross_agent", "paired")


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
    query_spread: PositiveFloat = 0.02  # rap: std of the initial proposal queries
    # rap: a Hydra-MDP imitation head (trained with loss.imitation_weight, used with
    # select_imitation): how likely each proposal is the one closest to the target. On by default
    # as an auxiliary loss (it shapes the decoder queries; the measured runs are in the README,
    # `rap train`), not used for selection by default.
    imitation: bool = True
    # rap: which proposal inference drives: the largest weighted sum of select_imitation x the
    # imitation head's log-softmax over the proposals and select_<s> x log sigmoid of the scorer's
    # predicted sub-score s (Hydra-MDP's combination; see planners.model.selection_scores).
    # Default: PDMS with its two vetoes stressed, log NC + log DAC + log PDMS (measured best of the
    # combinations on synthetic:8 after 300 steps; the imitation term did not help there).
    select_imitation: NonNegativeFloat = 0.0
    select_nc: NonNegativeFloat = 1.0  # no at-fault collision
    select_dac: NonNegativeFloat = 1.0  # drivable-area compliance
    select_ttc: NonNegativeFloat = 0.0  # time to collision within bound
    select_ep: NonNegativeFloat = 0.0  # ego progress
    select_comfort: NonNegativeFloat = 0.0
    select_pdms: NonNegativeFloat = 1.0  # the predicted PDMS itself

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
    paired: NonNegativeFloat = 0.0

    def of(self, kind: str) -> float:
        return float(getattr(self, kind))


class KindLimits(FrozenModel):
    """At most this many training samples of each kind (None: all of them)."""

    ego: Optional[NonNegativeInt] = None
    recovery: Optional[NonNegativeInt] = None
    cross_agent: Optional[NonNegativeInt] = None
    paired: Optional[NonNegativeInt] = None

    def of(self, kind: str) -> Optional[int]:
        return getattr(self, kind)


class DataSection(FrozenModel):
    """What the planner trains on."""

    datasets: list[str] = []  # shard folders written by `rap generate`
    dataset_weights: Optional[list[PositiveFloat]] = None  # sampling weight of each dataset or online source (default: by size)
    # Share of each kind in the batches drawn from a dataset (renormalised over the kinds it has;
    # RAP: recovery and cross-agent samples as small fractions).
    # paired: real (or photo) views with the raster of the same moment, for align.* (default 0: unused)
    kind_fractions: KindWeights = KindWeights(ego=0.6, recovery=0.2, cross_agent=0.2, paired=0.0)
    # Keep only N training samples of a kind (e.g. data.max_samples.cross_agent=300, the
    # data-scaling curve): a fixed subset chosen by a hash of each sample's key, nested as N grows.
    max_samples: KindLimits = KindLimits()
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

    # paired samples train on their real views (0 for those without a target, whatever the weight)
    trajectory: KindWeights = KindWeights(ego=1.0, recovery=1.0, cross_agent=0.1, paired=1.0)
    scorer: KindWeights = KindWeights(ego=1.0, recovery=1.0, cross_agent=0.0, paired=1.0)
    scorer_weight: NonNegativeFloat = 1.0  # scorer BCE relative to the trajectory L1
    heading_weight: NonNegativeFloat = 1.0  # [1/rad] heading error relative to metres in the L1
    # rap: cross-entropy of the imitation head (softmax over the proposals) against the soft target
    # softmax(-d^2 / imitation_temperature), d^2 the mean squared x-y distance [m^2] of a proposal to
    # the sample's target (Hydra-MDP's imitation score); weighted per sample like the trajectory loss.
    imitation_weight: NonNegativeFloat = 1.0  # relative to the trajectory L1
    imitation_temperature: PositiveFloat = 1.0  # [m^2]; smaller: closer to one-hot on the closest proposal
    # rap: listwise ranking of the predicted PDMS logits (softmax over a sample's proposals) against
    # softmax(true PDMS / rank_temperature), on the samples the scorer loss scores.
    rank_weight: NonNegativeFloat = 1.0  # relative to the trajectory L1
    rank_temperature: PositiveFloat = 0.1  # [PDMS]; smaller: all mass on the best-scoring proposals
    # share of EPDMS in the ranked score, (1 - s) * PDMS + s * EPDMS (EPDMS adds traffic lights,
    # driving direction, lane keeping: PDMS alone rewards running a red light with progress)
    rank_epdms_share: float = Field(0.0, ge=0.0, le=1.0)


class AlignSection(FrozenModel):
    """Raster-to-real feature alignment (:mod:`planners.align`) on the image tokens of paired
    samples (needs ``data.kind_fractions.paired > 0`` and paired samples in the data). The
    method's weights: spatial 0.002, global 0.001; 0 turns a loss off (the default: off)."""

    spatial_weight: NonNegativeFloat = 0.0  # MSE of real tokens toward their raster's (stop-gradient)
    global_weight: NonNegativeFloat = 0.0  # domain classifier behind gradient reversal
    classifier_hidden: PositiveInt = 512  # the domain classifier's hidden width
    # the camera whose pooled tokens the domain classifier reads (None: CAM_F0 or FRONT when
    # data.cameras has it, else the middle camera of data.cameras)
    front_camera: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.spatial_weight > 0 or self.global_weight > 0


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
    # Processes that score the proposals for the scorer targets beside the training process
    # (0: it scores them alone). Targets are the same bits whatever the value.
    scorer_workers: NonNegativeInt = 0


class TrainConfig(FrozenModel):
    """Everything `rap train` needs (stored in every checkpoint)."""

    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    loss: LossSection = LossSection()
    align: AlignSection = AlignSection()
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
        if self.align.enabled:
            if self.model.type == "ego_mlp":
                raise ValueError("align: model.type=ego_mlp reads no images; alignment needs an image model (rap, regression)")
            if data.kind_fractions.paired <= 0:
                raise ValueError("align: alignment needs paired samples in the batches; set data.kind_fractions.paired > 0 (e.g. 0.2)")
            if data.online:
                raise ValueError("align: online rasterization does not build paired samples; write them with rap generate ... paired.enabled=true and train on the shards")
            if self.align.front_camera is not None and self.align.front_camera not in data.cameras:
                raise ValueError(f"align.front_camera={self.align.front_camera} is not one of data.cameras {list(data.cameras)}")
        return self

    def front_camera_index(self) -> int:
        """Index in ``data.cameras`` of the camera the domain classifier reads."""
        cams = list(self.data.cameras)
        if self.align.front_camera is not None:
            return cams.index(self.align.front_camera)
        for name in ("CAM_F0", "FRONT"):
            if name in cams:
                return cams.index(name)
        return len(cams) // 2
