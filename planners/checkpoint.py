"""Checkpoints: one ``torch.save`` file per checkpoint, written atomically (temporary file, fsync,
rename), read back with ``weights_only=True`` (a checkpoint cannot run code when loaded).

Contents (``format = "rap.checkpoint/1"``): the run's config (JSON), what the data looked like
(cameras, the size the loader resized to, the views' stored size, rig, trajectory sampling,
history length), the model's state dict, and for resuming the optimizer, scheduler and scaler
states, the step, the best validation loss and the torch RNG state.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from planners.config import TrainConfig
from planners.model import build_model
from rap.fileio import write_bytes_atomic

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "model_from_checkpoint"]

CHECKPOINT_FORMAT = "rap.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of another format, or does not fit the model."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format tag) atomically to ``path``."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: naming the file: missing, not a torch file, or not a rap checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is one clear error
        raise CheckpointError(f"{path}: not a readable rap checkpoint: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format {found!r})")
    for key in ("config", "data", "model", "step"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return payload


def config_of(payload: dict[str, Any], path: str | Path = "checkpoint") -> TrainConfig:
    """The TrainConfig stored in a checkpoint."""
    try:
        return TrainConfig.model_validate(json.loads(payload["config"]))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: its config does not validate with this rap: {exc}") from None


def model_from_checkpoint(path: str | Path, *, load_backbone_file: bool = False) -> tuple[torch.nn.Module, TrainConfig, dict[str, Any]]:
    """The trained model of a checkpoint (eval mode, CPU), its config and data description.

    ``model.backbone.weights`` of the training config is not read again (the checkpoint holds
    the trained weights) unless ``load_backbone_file``.

    Raises:
        CheckpointError: see :func:`load_checkpoint`, or weights that do not fit the model the
            config describes (another architecture), naming the file and the first keys.
    """
    payload = load_checkpoint(path)
    cfg = config_of(payload, path)
    data = payload["data"]
    model_cfg = cfg.model if load_backbone_file else cfg.model.model_copy(update={"backbone": cfg.model.backbone.model_copy(update={"weights": None})})
    try:
        model = build_model(model_cfg, num_cameras=len(data["cameras"]), image_size=tuple(data["image_size"]), history_len=int(data["history_len"]), num_poses=int(data["num_poses"]), interval_s=float(data["interval_s"]))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build its model: {exc}") from None
    state = payload["model"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"other shapes {wrong[:3]}" if wrong else "",
            )
            if part
        )
        raise CheckpointError(f"{path}: weights do not fit a {cfg.model.type} model as its config describes (another architecture?): {detail}")
    model.load_state_dict(state)
    model.eval()
    return model, cfg, data
