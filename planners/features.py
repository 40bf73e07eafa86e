"""Model inputs from batches and observations: one path for training and driving.

A batch is the dict of :func:`rap.dataset.reader.collate` (images as uint8 (B, N, 3, H, W)
already resized by the loader, ``ego_status`` (B, 5), ``command`` (B,), ``history`` (B, H, 3)
left-padded with ``history_valid``). :func:`observation_batch` turns evaluator observations
into the same dict, resizing the views exactly as the training loader does
(:func:`resize_image`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["NUM_COMMANDS", "SCORE_NAMES", "resize_image", "status_features", "status_dim", "observation_batch", "fixed_history"]

NUM_COMMANDS = 3  # DrivingCommand: left, straight, right
# Scorer head outputs, in order (NAVSIM sub-scores and PDMS).
SCORE_NAMES = ("nc", "dac", "ttc", "ep", "comfort", "pdms")
_SPEED_SCALE = 10.0  # [m/s]
_ACCEL_SCALE = 3.0  # [m/s^2]
_POSITION_SCALE = 10.0  # [m]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 to ``size`` = (width, height): area averaging when shrinking (no
    aliasing of thin lane lines), bilinear when growing; the same image at its size unchanged."""
    import cv2  # noqa: PLC0415 - opencv is only needed where images are resized

    w, h = int(size[0]), int(size[1])
    if image.shape[1] == w and image.shape[0] == h:
        return image
    shrink = w <= image.shape[1] and h <= image.shape[0]
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def status_dim(history_len: int) -> int:
    """Length of :func:`status_features` vectors."""
    return 5 + NUM_COMMANDS + 4 * history_len


def fixed_history(history: torch.Tensor, valid: torch.Tensor | None, history_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``history_len`` poses (left-padded with zeros, invalid where padded)."""
    b, h = history.shape[0], history.shape[1]
    if valid is None:
        valid = torch.ones((b, h), dtype=torch.bool, device=history.device)
    if h >= history_len:
        return history[:, h - history_len :], valid[:, h - history_len :]
    pad = history_len - h
    return (
        torch.cat([history.new_zeros((b, pad, 3)), history], dim=1),
        torch.cat([valid.new_zeros((b, pad)), valid], dim=1),
    )


def status_features(batch: dict, history_len: int) -> torch.Tensor:
    """(B, status_dim) vector: speed, velocity, acceleration (scaled), the driving command one-hot,
    and the last ``history_len`` past poses (x, y scaled, heading) with their validity."""
    status = batch["ego_status"].float()
    scale = status.new_tensor([_SPEED_SCALE, _SPEED_SCALE, _SPEED_SCALE, _ACCEL_SCALE, _ACCEL_SCALE])
    command = torch.nn.functional.one_hot(batch["command"].long().clamp(0, NUM_COMMANDS - 1), NUM_COMMANDS).float()
    history, valid = fixed_history(batch["history"].float(), batch.get("history_valid"), history_len)
    history = history * history.new_tensor([1.0 / _POSITION_SCALE, 1.0 / _POSITION_SCALE, 1.0])
    history = history * valid[..., None]
    return torch.cat([status / scale, command, history.flatten(1), valid.float()], dim=1)


def observation_batch(observations: Sequence, cameras: Sequence[str], size: tuple[int, int] | None) -> dict:
    """A model batch from evaluator :class:`~rap.eval.agent.Observation` objects.

    Args:
        observations: the observations (their images must hold ``cameras``).
        cameras: image order the model was trained with (empty: no images).
        size: (width, height) the training loader resized images to.

    Raises:
        ValueError: an observation lacks one of ``cameras``.
    """
    images = []
    for obs in observations:
        views = []
        for cam in cameras:
            if cam not in obs.images:
                raise ValueError(f"scene {obs.scene_id}: the planner needs camera {cam!r}; the observation has {sorted(obs.images)}")
            img = resize_image(obs.images[cam], size) if size is not None else obs.images[cam]
            views.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        if views:
            images.append(torch.stack(views))
    hist = [np.asarray(o.history, dtype=np.float32).reshape(-1, 3) for o in observations]
    h_max = max((len(h) for h in hist), default=0)
    history = torch.zeros((len(observations), h_max, 3))
    valid = torch.zeros((len(observations), h_max), dtype=torch.bool)
    for i, h in enumerate(hist):
        if len(h):
            history[i, h_max - len(h) :] = torch.from_numpy(h)
            valid[i, h_max - len(h) :] = True
    status = [o.ego_status for o in observations]
    batch = {
        "ego_status": torch.tensor([[s.speed, *s.velocity, *s.acceleration] for s in status], dtype=torch.float32),
        "command": torch.tensor([int(s.command) for s in status], dtype=torch.int64),
        "history": history,
        "history_valid": valid,
    }
    if images:
        batch["images"] = torch.stack(images)
    return batch
