"""One training sample of the augmented dataset (the unit shards store)."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from rap.kinematics import DrivingCommand, EgoStatus  # noqa: F401  (part of a sample)
from rap.trajectory import Trajectory

if TYPE_CHECKING:
    from rap.dataset.scoring import ScoringContext


class SampleKind(str, Enum):
    """What produced a sample."""

    EGO = "ego"  # the logged ego's own view and future
    RECOVERY = "recovery"  # a counterfactual perturbed start and a target back to the expert path
    CROSS_AGENT = "cross_agent"  # another vehicle's seat and its own logged future
    PAIRED = "paired"  # the ego's moment seen twice: raster views and real (or photo stand-in) views


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """What a recovery sample changed at its start (ego frame of the logged pose)."""

    dx: float  # [m] longitudinal offset
    dy: float  # [m] lateral offset
    dheading: float  # [rad]
    speed_scale: float  # multiplier on the logged speed
    accel_scale: float  # multiplier on the logged acceleration


@dataclasses.dataclass(frozen=True, eq=False)
class SamplePlan:
    """Everything about a sample except its rendered images.

    Attributes:
        key: unique, filesystem-safe key, e.g. ``"637f20cafde22ff8_010_recovery_2406_0"``.
        scene_id, source, step: where it comes from.
        kind: :class:`SampleKind`.
        agent_row, agent_id: the acting agent (row of ``scene.tracks`` and its track id).
        viewer_pose: (4,) float64 (x, y, z_ground, heading) world pose of the acting agent's
            frame (rear axle on the ground) that the rig is mounted on; for recovery samples the
            perturbed pose.
        ego_status: state at the step in the acting agent's (possibly perturbed) frame.
        history: (H, 3) float64 past poses (x, y, heading) in the acting frame, oldest first,
            ending with the pose one interval before the current one.
        target: the target trajectory in the acting frame.
        perturbation: for recovery samples.
    """

    key: str
    scene_id: str
    source: str
    step: int
    kind: SampleKind
    agent_row: int
    agent_id: int
    viewer_pose: np.ndarray
    ego_status: EgoStatus
    history: np.ndarray
    target: Trajectory
    perturbation: Perturbation | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """A plan plus its rendered views.

    Attributes:
        plan: the sample's metadata and targets.
        images: camera name → (H, W, 3) uint8 semantic raster.
        cameras: camera name → JSON-ready camera record (intrinsics, distortion, cam_to_body).
        bev: optional (H, W, 3) uint8 BEV raster (auxiliary target).
        scoring: optional :class:`~rap.dataset.scoring.ScoringContext`: what the PDM scorer
            needs to score plans of the acting agent (see :mod:`rap.augment.scoring_context`).
        real_images: for a ``paired`` sample, camera → (H, W, 3) uint8 real camera image (or the
            ``photo`` stand-in) of the same moment and camera as ``images``, or a camera's JPEG
            bytes as stored; None otherwise.
        has_target: False when the source has no future for it (a single perception frame): its
            status, history and target are zeros, written as ``"has_target": false``.
    """

    plan: SamplePlan
    images: dict[str, np.ndarray]
    cameras: dict[str, dict]
    bev: np.ndarray | None = None
    scoring: ScoringContext | None = None
    real_images: dict[str, np.ndarray | bytes] | None = None
    has_target: bool = True
