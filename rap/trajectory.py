"""Planned / target trajectories: poses in the ego frame with an explicit sampling."""

from __future__ import annotations

import dataclasses
from enum import IntEnum

import numpy as np


class PoseIndex(IntEnum):
    """Columns of a (T, 3) pose array."""

    X = 0
    Y = 1
    HEADING = 2


@dataclasses.dataclass(frozen=True)
class TrajectorySampling:
    """How a trajectory is sampled: ``num_poses`` poses every ``interval_s`` seconds, the first
    one ``interval_s`` after the current time (the current pose is not included).

    Presets: NAVSIM 8 x 0.5 s, RAP training 10 x 0.5 s, Waymo E2E 20 x 0.25 s.
    """

    num_poses: int
    interval_s: float

    def __post_init__(self) -> None:
        if self.num_poses <= 0:
            raise ValueError(f"TrajectorySampling.num_poses must be positive, got {self.num_poses}")
        if not self.interval_s > 0:
            raise ValueError(f"TrajectorySampling.interval_s must be positive, got {self.interval_s}")

    @property
    def horizon_s(self) -> float:
        """Time of the last pose [s]."""
        return self.num_poses * self.interval_s

    @property
    def times_s(self) -> np.ndarray:
        """(num_poses,) float64 times of the poses after now [s]."""
        return np.arange(1, self.num_poses + 1, dtype=np.float64) * self.interval_s


NAVSIM_SAMPLING = TrajectorySampling(8, 0.5)
RAP_SAMPLING = TrajectorySampling(10, 0.5)
WOD_E2E_SAMPLING = TrajectorySampling(20, 0.25)


@dataclasses.dataclass(frozen=True, eq=False)
class Trajectory:
    """Poses (num_poses, 3) = (x [m], y [m], heading [rad]) in the ego frame at the current time
    (rear axle, x forward, y left), sampled as ``sampling`` says."""

    poses: np.ndarray
    sampling: TrajectorySampling

    def __post_init__(self) -> None:
        poses = np.array(self.poses, dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] != 3:
            raise ValueError(f"Trajectory.poses must have shape (T, 3) (x, y, heading), got {poses.shape}")
        if poses.shape[0] != self.sampling.num_poses:
            raise ValueError(f"Trajectory.poses has {poses.shape[0]} poses but the sampling says {self.sampling.num_poses}")
        if not np.all(np.isfinite(poses)):
            raise ValueError("Trajectory.poses contain non-finite values")
        poses.flags.writeable = False
        object.__setattr__(self, "poses", poses)

    @property
    def xy(self) -> np.ndarray:
        """(T, 2) positions [m]."""
        return self.poses[:, : PoseIndex.HEADING]

    @property
    def heading(self) -> np.ndarray:
        """(T,) headings [rad]."""
        return self.poses[:, PoseIndex.HEADING]
