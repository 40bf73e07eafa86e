"""Synthetic samples for the dataset I/O tests (no GL, no external data)."""

from __future__ import annotations

import numpy as np
import pytest

from rap.dataset.sample import Perturbation, Sample, SampleKind, SamplePlan
from rap.kinematics import DrivingCommand, EgoStatus
from rap.render.rigs import camera_record
from rap.render.rigs import get_rig
from rap.trajectory import Trajectory, TrajectorySampling

IMAGE_SIZE = (64, 32)  # [px] (width, height) of the synthetic camera images
SAMPLING = TrajectorySampling(8, 0.5)


def _camera_records() -> dict[str, dict]:
    rig = get_rig("front3", size=IMAGE_SIZE)
    records = {cam.name: camera_record(cam) for cam in rig}
    bev = get_rig("bev", size=(32, 32)).cameras[0]
    records[bev.name] = camera_record(bev)
    return records


def build_sample(index: int, kind: SampleKind = SampleKind.EGO, *, seed: int = 0, with_bev: bool = False, history_len: int = 4) -> Sample:
    """A deterministic synthetic sample: random images, a gently curving target."""
    rng = np.random.default_rng((seed, index))
    w, h = IMAGE_SIZE
    images = {}
    for cam in ("CAM_L0", "CAM_F0", "CAM_R0"):
        img = np.zeros((h, w, 3), dtype=np.uint8)
        img[h // 2 :] = (40, 40, 40)  # road
        img[rng.integers(0, h, 6), :] = rng.integers(0, 256, (6, 1, 3), dtype=np.uint8)  # lines
        img += rng.integers(0, 3, img.shape, dtype=np.uint8)  # a little noise
        images[cam] = img
    speed = float(rng.uniform(0.0, 15.0))
    t = SAMPLING.times_s
    curve = float(rng.uniform(-0.05, 0.05))
    x = speed * t
    poses = np.stack([x, curve * x**2, np.arctan(2 * curve * x)], axis=1)
    hist_t = -np.arange(history_len, 0, -1) * SAMPLING.interval_s
    history = np.stack([speed * hist_t, np.zeros(history_len), np.zeros(history_len)], axis=1)
    perturbation = None
    if kind is SampleKind.RECOVERY:
        perturbation = Perturbation(dx=float(rng.uniform(-1, 1)), dy=float(rng.uniform(-1.5, 1.5)), dheading=float(rng.uniform(-0.3, 0.3)), speed_scale=float(rng.uniform(0.8, 1.2)), accel_scale=1.0)
    plan = SamplePlan(
        key=f"scene{index // 4:03d}_{index:04d}_{kind.value}",
        scene_id=f"scene{index // 4:03d}",
        source="test:synthetic",
        step=10 + index,
        kind=kind,
        agent_row=index % 5,
        agent_id=1000 + index,
        viewer_pose=rng.normal(size=4) * 10.0,
        ego_status=EgoStatus(speed=speed, velocity=(speed, float(rng.normal() * 0.1)), acceleration=(float(rng.normal()), 0.25), command=DrivingCommand(index % 3)),
        history=history,
        target=Trajectory(poses, SAMPLING),
        perturbation=perturbation,
    )
    bev = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) if with_bev else None
    return Sample(plan=plan, images=images, cameras=_camera_records(), bev=bev)


KINDS = (SampleKind.EGO, SampleKind.RECOVERY, SampleKind.CROSS_AGENT)


def build_samples(n: int, *, seed: int = 0, start: int = 0) -> list[Sample]:
    """``n`` samples cycling through the three kinds (every third one with a BEV)."""
    return [build_sample(i, KINDS[i % 3], seed=seed, with_bev=(i % 3 == 0)) for i in range(start, start + n)]


@pytest.fixture
def make_sample():
    """``make_sample(index, kind=EGO, seed=0, with_bev=False, history_len=4) -> Sample``."""
    return build_sample


@pytest.fixture
def make_samples():
    """``make_samples(n, seed=0, start=0) -> list[Sample]`` cycling through the kinds."""
    return build_samples
