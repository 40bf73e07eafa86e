"""Planner models. Every model maps a batch (see :mod:`planners.features`) to::

    {"proposals": (B, K, T, 3) x, y, heading in the acting frame [m, m, rad],
     "score_logits": (B, K, len(SCORE_NAMES)) | None,   # predicted NAVSIM sub-scores (logits)
     "imitation_logits": (B, K) | None,                 # how likely each proposal is the target
     "trajectory": (B, T, 3),                            # the proposal the model drives
     "image_features": (B, N, L, D),       # image models: projected backbone features (alignment)
     "raster_features": (P, N, L, D) | None}  # the same for batch["paired_raster"] when given

* :class:`RAPPlanner` — the method's architecture: a shared image backbone over every camera, a
  learned camera embedding and token positions, an ego-status encoder (speed, velocity,
  acceleration, driving command, past poses), K learned trajectory queries refined by R
  transformer-decoder layers (self-attention among proposals, cross-attention over the image
  tokens), a scorer head predicting NC, DAC, TTC, EP, comfort and PDMS per proposal and, with
  ``model.imitation``, an imitation head (Hydra-MDP) scoring how close each proposal is to the
  sample's target; the heads read each whole proposal (detached). Inference drives the proposal
  with the best :func:`selection_scores`: a weighted sum of the imitation log-probability and the
  predicted sub-scores' log-probabilities (``model.select_*``; default log NC + log DAC + log PDMS).
* :class:`RegressionPlanner` — baseline: the same backbone, one trajectory regressed from pooled
  camera features and the status (no proposals, no scorer).
* :class:`EgoStatusMLP` — NAVSIM's ego-status baseline: no cameras, an MLP on the status.
"""

from __future__ import annotations

import torch
from torch import nn

from planners.backbones import build_backbone, load_backbone_weights
from planners.config import ModelSection
from planners.features import SCORE_NAMES, status_dim, status_features

__all__ = ["RAPPlanner", "RegressionPlanner", "EgoStatusMLP", "build_model", "selection_scores", "POSITION_SCALE"]

POSITION_SCALE = 10.0  # [m] heads predict x, y in these units (targets span tens of metres)
_HEAD_INIT = 0.1  # last layer of trajectory heads scaled down: plans start near the prior
_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, what pretrained backbones expect
_STD = (0.229, 0.224, 0.225)


def _mlp(inp: int, hidden: int, out: int, out_scale: float = 1.0) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))
    if out_scale != 1.0:  # trajectory heads start near their prior
        with torch.no_grad():
            mlp[-1].weight.mul_(out_scale)
            mlp[-1].bias.mul_(out_scale)
    return mlp


def _to_poses(raw: torch.Tensor, num_poses: int) -> torch.Tensor:
    """Head output (..., T*3) in model units to poses (..., T, 3) in metres and radians."""
    poses = raw.unflatten(-1, (num_poses, 3))
    return poses * poses.new_tensor([POSITION_SCALE, POSITION_SCALE, 1.0])


def velocity_prior(batch: dict, num_poses: int, interval_s: float) -> torch.Tensor:
    """(B, T, 3) the constant-velocity extrapolation of the current velocity (heading kept):
    what the heads' outputs are added to when ``model.velocity_prior`` is on, so an untrained
    planner already drives on and training learns the corrections (turns, stops)."""
    status = batch["ego_status"].float()
    t = torch.arange(1, num_poses + 1, device=status.device, dtype=status.dtype) * interval_s
    x = status[:, 1:2] * t
    y = status[:, 2:3] * t
    return torch.stack([x, y, torch.zeros_like(x)], dim=-1)


def selection_scores(score_logits: torch.Tensor, imitation_logits: torch.Tensor | None, cfg: ModelSection) -> torch.Tensor:
    """(B, K) what inference maximises over the K proposals (Hydra-MDP's weighted log-scores)::

        select_imitation * log_softmax(imitation)
          + sum over s in (nc, dac, ttc, ep, comfort, pdms) of select_s * log sigmoid(score_s)

    Args:
        score_logits: (B, K, len(SCORE_NAMES)) the scorer head's logits.
        imitation_logits: (B, K) the imitation head's logits (None: that term is left out).
        cfg: the ``model.select_*`` weights.
    """
    log_p = nn.functional.logsigmoid(score_logits.float())
    total = score_logits.new_zeros(score_logits.shape[:2], dtype=torch.float32)
    for j, name in enumerate(SCORE_NAMES):
        w = float(getattr(cfg, f"select_{name}"))
        if w:
            total = total + w * log_p[..., j]
    if imitation_logits is not None and cfg.select_imitation:
        total = total + float(cfg.select_imitation) * torch.log_softmax(imitation_logits.float(), dim=1)
    return total


class _ImageEncoder(nn.Module):
    """Cameras (B, N, 3, H, W) uint8 → tokens (B, N, L, D), with camera and position embeddings."""

    def __init__(self, cfg: ModelSection, num_cameras: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.backbone.name)
        if cfg.backbone.weights:
            load_backbone_weights(self.backbone, cfg.backbone.weights)
        self.frozen = cfg.backbone.frozen
        if self.frozen:
            self.backbone.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            self.backbone.eval()
            w, h = image_size
            num_tokens = self.backbone(torch.zeros(1, 3, h, w)).shape[1]
            self.backbone.train()
        self.proj = nn.Linear(self.backbone.out_channels, cfg.d_model)
        self.camera_embed = nn.Parameter(torch.randn(num_cameras, 1, cfg.d_model) * 0.02)
        self.position_embed = nn.Parameter(torch.randn(1, num_tokens, cfg.d_model) * 0.02)
        self.num_cameras = num_cameras

    def train(self, mode: bool = True) -> "_ImageEncoder":
        super().train(mode)
        if self.frozen:  # a frozen backbone keeps its batch-norm statistics
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) uint8 → (B, N, L, D) projected backbone features, before the camera
        and position embeddings (what the alignment losses compare)."""
        b, n = images.shape[:2]
        if n != self.num_cameras:
            raise ValueError(f"the model was built for {self.num_cameras} cameras, the batch has {n}")
        x = images.flatten(0, 1).float().div(255.0)
        x = (x - self.mean) / self.std
        if self.frozen:
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        return self.proj(feats).unflatten(0, (b, n))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Add the position and camera embeddings: (B, N, L, D) → tokens (B, N, L, D)."""
        return features + self.position_embed[None] + self.camera_embed[None]

    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(tokens (B, N, L, D), features (B, N, L, D), raster features (P, N, L, D) | None) of
        ``batch["images"]`` and, in one backbone pass, of ``batch["paired_raster"]`` when given."""
        images, raster = batch["images"], batch.get("paired_raster")
        if raster is None:
            feats = self.features(images)
            return self.embed(feats), feats, None
        both = self.features(torch.cat([images, raster.to(images.device)]))
        feats, raster_feats = both[: images.shape[0]], both[images.shape[0] :]
        return self.embed(feats), feats, raster_feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(images))


class RAPPlanner(nn.Module):
    """Multi-proposal planner with a learned scorer (see the module docstring)."""

    def __init__(self, cfg: ModelSection, *, num_cameras: int, image_size: tuple[int, int], history_len: int, num_poses: int, interval_s: float = 0.5) -> None:
        super().__init__()
        d = cfg.d_model
        self.num_poses, self.history_len, self.num_proposals = num_poses, history_len, cfg.num_proposals
        self.interval_s, self.use_prior = interval_s, cfg.velocity_prior
        self.images = _ImageEncoder(cfg, num_cameras, image_size)
        self.status = _mlp(status_dim(history_len), d, d)
        self.queries = nn.Parameter(torch.randn(cfg.num_proposals, d) * cfg.query_spread)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(d, cfg.num_heads, 4 * d, cfg.dropout, batch_first=True, norm_first=True) for _ in range(cfg.num_layers)
        )
        self.traj_embed = nn.Linear(num_poses * 3, d)
        self.traj_heads = nn.ModuleList(_mlp(d, d, num_poses * 3, _HEAD_INIT) for _ in range(cfg.num_layers))
        self.score_head = _mlp(2 * d, d, len(SCORE_NAMES))
        # one logit per proposal (softmax over the K): how likely it is the one closest to the target
        self.imitation_head = _mlp(2 * d, d, 1) if cfg.imitation else None
        self.judge_embed = nn.Linear(num_poses * 3, d)  # the heads see each whole proposal (prior included)
        self.cfg = cfg  # the selection weights

    def forward(self, batch: dict) -> dict:
        tokens, feats, raster_feats = self.images.encode(batch)
        tokens = tokens.flatten(1, 2)  # (B, N*L, D)
        s = self.status(status_features(batch, self.history_len))  # (B, D)
        memory = torch.cat([tokens, s[:, None]], dim=1)
        q = self.queries[None] + s[:, None]
        traj = q.new_zeros((q.shape[0], self.num_proposals, self.num_poses * 3))
        for layer, head in zip(self.layers, self.traj_heads):
            q = layer(q + self.traj_embed(traj.detach()), memory)
            traj = traj + head(q)
        proposals = _to_poses(traj, self.num_poses)
        if self.use_prior:
            proposals = proposals + velocity_prior(batch, self.num_poses, self.interval_s)[:, None]
        # The scorer and imitation heads judge each proposal as it will be driven (prior included,
        # model units), detached: their losses reach the decoder through q alone.
        whole = proposals.detach() / proposals.new_tensor([POSITION_SCALE, POSITION_SCALE, 1.0])
        judged = torch.cat([q, self.judge_embed(whole.flatten(2))], dim=-1)
        logits = self.score_head(judged)
        imitation = self.imitation_head(judged).squeeze(-1) if self.imitation_head is not None else None
        best = selection_scores(logits, imitation, self.cfg).argmax(dim=1)
        chosen = proposals[torch.arange(proposals.shape[0], device=proposals.device), best]
        return {"proposals": proposals, "score_logits": logits, "imitation_logits": imitation, "trajectory": chosen, "image_features": feats, "raster_features": raster_feats}


class RegressionPlanner(nn.Module):
    """One trajectory from pooled camera features and the status (baseline)."""

    def __init__(self, cfg: ModelSection, *, num_cameras: int, image_size: tuple[int, int], history_len: int, num_poses: int, interval_s: float = 0.5) -> None:
        super().__init__()
        d = cfg.d_model
        self.num_poses, self.history_len = num_poses, history_len
        self.interval_s, self.use_prior = interval_s, cfg.velocity_prior
        self.images = _ImageEncoder(cfg, num_cameras, image_size)
        self.status = _mlp(status_dim(history_len), d, d)
        self.head = _mlp(d * (num_cameras + 1), 2 * d, num_poses * 3, _HEAD_INIT)

    def forward(self, batch: dict) -> dict:
        tokens, feats, raster_feats = self.images.encode(batch)
        pooled = tokens.mean(dim=2).flatten(1)  # (B, N*D)
        feats = torch.cat([pooled, self.status(status_features(batch, self.history_len))], dim=1)
        trajectory = _to_poses(self.head(feats), self.num_poses)
        if self.use_prior:
            trajectory = trajectory + velocity_prior(batch, self.num_poses, self.interval_s)
        return {"proposals": trajectory[:, None], "score_logits": None, "imitation_logits": None, "trajectory": trajectory, "image_features": feats, "raster_features": raster_feats}


class EgoStatusMLP(nn.Module):
    """NAVSIM's ego-status MLP: status and history in, one trajectory out, no cameras."""

    def __init__(self, cfg: ModelSection, *, num_cameras: int = 0, image_size=None, history_len: int, num_poses: int, interval_s: float = 0.5) -> None:
        super().__init__()
        self.num_poses, self.history_len = num_poses, history_len
        self.interval_s, self.use_prior = interval_s, cfg.velocity_prior
        self.mlp = _mlp(status_dim(history_len), 2 * cfg.d_model, num_poses * 3, _HEAD_INIT)

    def forward(self, batch: dict) -> dict:
        trajectory = _to_poses(self.mlp(status_features(batch, self.history_len)), self.num_poses)
        if self.use_prior:
            trajectory = trajectory + velocity_prior(batch, self.num_poses, self.interval_s)
        return {"proposals": trajectory[:, None], "score_logits": None, "imitation_logits": None, "trajectory": trajectory}


MODELS = {"rap": RAPPlanner, "regression": RegressionPlanner, "ego_mlp": EgoStatusMLP}


def build_model(cfg: ModelSection, *, num_cameras: int, image_size: tuple[int, int], history_len: int, num_poses: int, interval_s: float = 0.5) -> nn.Module:
    """The planner ``cfg.type`` for ``num_cameras`` views of ``image_size`` (width, height),
    ``history_len`` past poses and ``num_poses`` output poses ``interval_s`` apart."""
    return MODELS[cfg.type](cfg, num_cameras=num_cameras, image_size=tuple(image_size), history_len=history_len, num_poses=num_poses, interval_s=interval_s)
