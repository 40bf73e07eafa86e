"""`train.scorer_workers`: scorer targets scored in worker processes are the targets of one process."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch


from planners.data import SampleDataset, TrainingIndex, collate_samples
from planners.features import SCORE_NAMES
from planners.scoring import ScorerPool, ScorerPoolError, scorer_targets
from rap.dataset.scoring import score_batch

from .conftest import tiny_config


@pytest.fixture(scope="module")
def scored_batch(tiny_dataset):
    """A batch of 7 samples with scoring contexts and 3 proposals each (the target, a slower
    plan and one swerving left)."""
    cfg = tiny_config(tiny_dataset)
    index = TrainingIndex(cfg)
    data = SampleDataset(index, "train", cfg)
    items = [data[i] for i in range(len(data))]
    batch = collate_samples([it for it in items if it["scoring"] is not None][:7])
    target = batch["target"].float()
    swerve = target.clone()
    swerve[..., 1] += torch.linspace(0.0, 3.0, target.shape[1])
    return batch, torch.stack([target, target * 0.5, swerve], dim=1), index.sampling


def test_a_pool_gives_the_targets_of_one_process_bit_for_bit(scored_batch):
    batch, proposals, sampling = scored_batch
    wanted = torch.ones(len(batch["key"]))
    wanted[2] = 0.0  # not scored: zeros, as without a pool
    alone, scored = scorer_targets(batch["scoring"], proposals, sampling, wanted, SCORE_NAMES + ("epdms",))
    p = proposals.numpy().astype(np.float64)
    with ScorerPool(2) as pool:  # 3 parts: two workers and this process
        pooled, scored_pooled = scorer_targets(batch["scoring"], proposals, sampling, wanted, SCORE_NAMES + ("epdms",), pool)
        raw = pool.score(batch["scoring"], p, sampling)
    assert torch.equal(scored, scored_pooled) and not bool(scored[2]) and int(scored.sum()) == 6
    assert torch.equal(pooled, alone)
    assert float(alone[scored][..., SCORE_NAMES.index("pdms")].std()) > 0  # the proposals score differently
    assert float(pooled[2].abs().sum()) == 0.0
    reference = score_batch(batch["scoring"], p, sampling)
    assert raw.keys() == reference.keys()
    for key in reference:  # every score, float64, the same bits
        assert raw[key].shape == (7, 3) and raw[key].tobytes() == reference[key].tobytes(), key


def test_a_sample_without_a_context_is_named_by_its_index_in_the_batch(scored_batch):
    batch, proposals, sampling = scored_batch
    contexts = list(batch["scoring"])
    contexts[5] = None
    with ScorerPool(2) as pool, pytest.raises(ValueError, match=r"contexts\[5\] is NoneType, not a ScoringContext"):
        pool.score(contexts, proposals.numpy().astype(np.float64), sampling)


def test_a_killed_worker_is_a_clear_error(scored_batch):
    batch, proposals, sampling = scored_batch
    p = proposals.numpy().astype(np.float64)
    pool = ScorerPool(1)
    try:
        pool.score(batch["scoring"], p, sampling)  # starts the worker
        for pid in list(pool._executor._processes):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(ScorerPoolError, match=r"a scorer worker process died or could not start \(train.scorer_workers=1\)"):
            pool.score(batch["scoring"], p, sampling)
    finally:
        pool.close()


def test_shipped_train_configs_load_and_only_the_gpu_scale_ones_score_in_workers():
    from pathlib import Path

    from planners.config import TrainConfig
    from rap.config import load_config

    configs = Path(__file__).resolve().parents[2] / "configs" / "train"
    workers = {p.name: load_config(TrainConfig, p, []).train.scorer_workers for p in sorted(configs.glob("*.yaml"))}
    assert workers == {"rap_resnet34.yaml": 4, "rap_vit.yaml": 4, "tiny.yaml": 0}


def test_rap_train_reports_scorer_workers_that_cannot_start_and_leaves_no_run_folder(tiny_dataset, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rap.cli import app

    def broken(self):
        raise ScorerPoolError(self._died())

    monkeypatch.setattr(ScorerPool, "start", broken)
    args = ["train", "configs/train/tiny.yaml", f"data.datasets=[{tiny_dataset}]", "data.image_size=[64,32]", "train.max_steps=1", "train.scorer_workers=2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "a scorer worker process died or could not start (train.scorer_workers=2)" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
