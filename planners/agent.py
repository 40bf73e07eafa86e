"""A trained checkpoint as an agent of the evaluators' protocol (:mod:`rap.eval.agent`).

The agent asks for the rig the training data was rendered with, at the size the views were
stored at, and resizes them exactly as the training loader did; every camera of one observation
goes through the backbone as one batch. Its trajectory (the proposal with the best predicted
PDMS for the RAP planner) is resampled to the sampling the evaluator asks for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from planners.checkpoint import model_from_checkpoint
from planners.features import observation_batch
from rap.eval.agent import FROM_CONFIG, Observation, SensorConfig
from rap.geometry import wrap_angle
from rap.trajectory import Trajectory, TrajectorySampling

__all__ = ["CheckpointAgent", "resample_poses", "is_checkpoint_spec"]


def is_checkpoint_spec(spec: str) -> bool:
    """Whether an ``--agent`` argument names a checkpoint file (``*.pt`` / ``*.pth`` / ``*.ckpt``)."""
    return Path(spec).suffix in (".pt", ".pth", ".ckpt")


def resample_poses(poses: np.ndarray, trained: TrajectorySampling, wanted: TrajectorySampling) -> np.ndarray:
    """(T, 3) poses at ``trained`` times → poses at ``wanted`` times (linear in x, y and
    unwrapped heading, from the origin at t = 0).

    Raises:
        ValueError: ``wanted`` reaches past the trained horizon.
    """
    if wanted.horizon_s > trained.horizon_s + 1e-9:
        raise ValueError(f"the planner was trained for {trained.horizon_s:g} s; the evaluator asks for {wanted.horizon_s:g} s")
    t = np.concatenate([[0.0], trained.times_s])
    p = np.vstack([np.zeros((1, 3)), poses])
    heading = np.unwrap(p[:, 2])
    out = np.stack([np.interp(wanted.times_s, t, p[:, 0]), np.interp(wanted.times_s, t, p[:, 1]), np.interp(wanted.times_s, t, heading)], axis=1)
    out[:, 2] = wrap_angle(out[:, 2])
    return out


class CheckpointAgent:
    """Drives with a checkpoint written by ``rap train``.

    Args:
        path: the checkpoint (``last.pt`` / ``best.pt``).
        device: torch device for inference (default CPU).

    Raises:
        planners.checkpoint.CheckpointError: the file is not a rap checkpoint or does not fit its
            model.
    """

    privileged = False

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.path = Path(path)
        self.model, self.config, self.data = model_from_checkpoint(self.path)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.name = f"{self.config.model.type}:{self.path}"
        self.cameras = list(self.data["cameras"])
        self.image_size = tuple(self.data["image_size"])
        self.trained = TrajectorySampling(int(self.data["num_poses"]), float(self.data["interval_s"]))

    def sensor_config(self) -> SensorConfig:
        if not self.cameras:
            return SensorConfig(rig=None)
        size = self.data.get("source_size")
        return SensorConfig(rig=self.data.get("rig") or FROM_CONFIG, size=tuple(size) if size else None)

    @torch.inference_mode()
    def forward(self, observation: Observation) -> dict:
        """The model's raw output for one observation (tensors of batch size 1, on the CPU)."""
        batch = observation_batch([observation], self.cameras, self.image_size)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(batch)
        return {k: (v.float().cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}

    def plan(self, observation: Observation) -> Trajectory:
        poses = self.forward(observation)["trajectory"][0].numpy().astype(np.float64)
        return Trajectory(resample_poses(poses, self.trained, observation.sampling), observation.sampling)
