"""Fixtures for planner tests: one small generated dataset per session and tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from planners.config import TrainConfig
from rap.config import load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """synthetic:2 at 64x32: ego, recovery and cross-agent samples with scoring contexts."""
    from rap.generate import GenerateConfig, generate

    out = tmp_path_factory.mktemp("planner_data") / "ds"
    cfg = GenerateConfig.model_validate({"size": [64, 32], "step_stride": 20, "recovery": {"num_samples": 1, "on_cross_agents": False}, "cross_agent": {"max_agents": 2}})
    result = generate("synthetic:2", out, cfg)
    assert result.manifest.num_samples > 20
    return out


def tiny_config(dataset: Path, *overrides: str) -> TrainConfig:
    """configs/train/tiny.yaml shrunk for tests (small images, few steps)."""
    base = [
        f"data.datasets=[{dataset}]", "data.image_size=[64,32]", "data.val_fraction=0.3", "model.d_model=32", "model.num_heads=2",
        "model.num_proposals=4", "model.num_layers=1", "train.batch_size=4", "train.max_steps=4", "train.log_every=1",
        "train.val_every=2", "train.val_batches=1", "train.checkpoint_every=2", "optim.warmup_steps=1",
    ]  # fmt: skip
    return load_config(TrainConfig, TINY, base + list(overrides))


@pytest.fixture(scope="session")
def paired_dataset(tmp_path_factory) -> Path:
    """synthetic:2 at 64x32 with paired photo/raster samples beside ego, recovery and cross-agent."""
    from rap.generate import GenerateConfig, generate

    out = tmp_path_factory.mktemp("planner_paired") / "ds"
    cfg = GenerateConfig.model_validate({
        "size": [64, 32], "step_stride": 20, "recovery": {"num_samples": 1, "on_cross_agents": False},
        "cross_agent": {"max_agents": 1}, "paired": {"enabled": True},
    })  # fmt: skip
    result = generate("synthetic:2", out, cfg)
    assert result.manifest.counts.get("paired", 0) >= 10
    return out
