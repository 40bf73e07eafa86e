"""Checkpoints are agents: the evaluators' observation gives the same plan as the training
sample of that scene and step; rap eval navsim / open-loop accept a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from planners.agent import CheckpointAgent, resample_poses
from planners.data import SampleDataset, TrainingIndex, collate_samples
from planners.open_loop import plan_collides, sample_metrics
from planners.train import train
from rap.cli import app
from rap.eval.agent import SensorConfig
from rap.eval.config import EvalConfig
from rap.eval.observe import Observer
from rap.render.style import default_style
from rap.sources.registry import iter_scenes
from rap.trajectory import NAVSIM_SAMPLING, TrajectorySampling
from rasterizer.renderer import Renderer

from .conftest import tiny_config


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(tiny_config(tiny_dataset, "train.max_steps=2"), out)
    return out / "last.pt"


def test_checkpoint_agent_plans_from_an_evaluator_observation_as_from_the_training_sample(checkpoint, tiny_dataset, ctx):
    agent = CheckpointAgent(checkpoint)
    assert agent.sensor_config() == SensorConfig(rig="front3", size=(64, 32))  # the views' stored size; resized like the loader
    cfg = tiny_config(tiny_dataset)
    index = TrainingIndex(cfg)
    data = SampleDataset(index, "train", cfg)
    ego = [i for i, s in enumerate(index.train) if s.kind == "ego"][:2]
    assert ego
    scenes = {scene.scene_id: scene for scene in iter_scenes("synthetic:2")}
    with Renderer(ctx, default_style()) as renderer:
        observer = Observer(renderer, agent.sensor_config(), EvalConfig().observation)
        for i in ego:
            item = data[i]
            record = index.datasets[index.train[i].dataset].record(index.train[i].position)
            obs = observer.observe(scenes[record["meta"]["scene_id"]], record["meta"]["step"], index.sampling)
            with torch.inference_mode():
                expected = agent.model(collate_samples([item]))["trajectory"][0]
            got = agent.forward(obs)["trajectory"][0]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            plan = agent.plan(obs)
            assert plan.sampling == index.sampling and np.allclose(plan.poses, expected.numpy(), atol=1e-5)


def test_plans_are_resampled_to_what_the_evaluator_asks_for():
    trained = TrajectorySampling(10, 0.5)
    poses = np.stack([np.arange(1, 11) * 1.0, np.zeros(10), np.zeros(10)], axis=1)  # 2 m/s straight
    navsim = resample_poses(poses, trained, NAVSIM_SAMPLING)
    np.testing.assert_allclose(navsim[:, 0], np.arange(1, 9) * 1.0)
    fine = resample_poses(poses, trained, TrajectorySampling(20, 0.25))
    np.testing.assert_allclose(fine[:2, 0], [0.5, 1.0])
    with pytest.raises(ValueError, match="trained for 5 s; the evaluator asks for 6 s"):
        resample_poses(poses, trained, TrajectorySampling(12, 0.5))


def test_open_loop_metrics_and_collisions():
    sampling = TrajectorySampling(8, 0.5)
    target = np.stack([np.arange(1, 9) * 2.0, np.zeros(8), np.zeros(8)], axis=1)
    driven = target + np.array([0.0, 1.0, 0.0])  # 1 m to the left all along
    proposals = np.stack([driven, target])
    m = sample_metrics(driven, proposals, target, sampling)
    assert m["ade"] == pytest.approx(1.0) and m["fde"] == pytest.approx(1.0) and m["min_ade"] == pytest.approx(0.0)
    assert m["l2_1s"] == m["l2_2s"] == m["l2_3s"] == pytest.approx(1.0)
    from rap.metrics.pdm_inputs import ObjectTracks

    s = 41
    parked = lambda x: ObjectTracks([7], [0], np.full((1, s), x), np.zeros((1, s)), np.zeros((1, s)), np.zeros((1, s)), np.zeros((1, s)), [4.5], [2.0], np.ones((1, s), bool))  # noqa: E731
    assert plan_collides(target, sampling, parked(10.0))  # a car parked on the path, reached at 2.5 s
    assert not plan_collides(target, sampling, parked(60.0))


def test_rap_eval_navsim_and_open_loop_accept_a_checkpoint(checkpoint, tiny_dataset, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "navsim", "--agent", str(checkpoint), "--scenes", "synthetic:1", "--max-scenes", "2", "--out", str(tmp_path / "nav")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["scenes"] == 2 and 0.0 <= summary["pdms"] <= 1.0
    result = runner.invoke(app, ["eval", "open-loop", "--agent", str(checkpoint), "--data", str(tiny_dataset), "--max-samples", "12", "--out", str(tmp_path / "ol")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 12 and summary["min_ade"] <= summary["ade"]
    report = json.loads((tmp_path / "ol" / "open_loop_eval.json").read_text())
    assert len(report["rows"]) == 12 and set(report["per_kind"]) <= {"ego", "recovery", "cross_agent"}
    cv = runner.invoke(app, ["eval", "open-loop", "--agent", "constant_velocity", "--data", str(tiny_dataset), "--max-samples", "5", "--out", str(tmp_path / "cv")])
    assert cv.exit_code == 0, cv.output
    expert = runner.invoke(app, ["eval", "open-loop", "--agent", "expert", "--data", str(tiny_dataset), "--out", str(tmp_path / "ex")])
    assert expert.exit_code == 2 and "privileged" in expert.output


def test_cli_errors_for_train_and_checkpoints(tiny_dataset, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["eval", "navsim", "--agent", str(tmp_path / "nope.pt"), "--scenes", "synthetic:1", "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "nope.pt: no such checkpoint file" in missing.output
    typo = runner.invoke(app, ["train", "configs/train/tiny.yaml", "model.d_modle=3", "--out", str(tmp_path / "r")])
    assert typo.exit_code == 2 and "model.d_modle" in typo.output and not (tmp_path / "r").exists()
    no_data = runner.invoke(app, ["train", "configs/train/tiny.yaml", f"data.datasets=[{tmp_path / 'none'}]", "--out", str(tmp_path / "r2")])
    assert no_data.exit_code == 2 and "no such folder" in no_data.output and not (tmp_path / "r2").exists()
    no_config = runner.invoke(app, ["train", "--out", str(tmp_path / "r3")])
    assert no_config.exit_code == 2 and "give a config file" in no_config.output


def test_resume_without_a_config_reuses_the_runs_own(tiny_dataset, tmp_path):
    runner = CliRunner()
    args = [f"data.datasets=[{tiny_dataset}]", "data.image_size=[64,32]", "model.d_model=32", "model.num_heads=2", "model.num_layers=1", "train.batch_size=4", "train.max_steps=1"]
    first = runner.invoke(app, ["train", "configs/train/tiny.yaml", *args, "--out", str(tmp_path / "run")])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "run")])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["steps"] == 1
    changed = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "run"), "optim.lr=0.5"])
    assert changed.exit_code == 2 and "optim.lr: run 0.001, now 0.5" in changed.output


def test_open_loop_on_real_views_scores_the_paired_samples_through_their_photo_views(checkpoint, paired_dataset, tiny_dataset, tmp_path):
    from planners.open_loop import evaluate_open_loop

    agent = CheckpointAgent(checkpoint)
    real = evaluate_open_loop(agent, paired_dataset, tmp_path / "real", views="real")
    raster = evaluate_open_loop(agent, paired_dataset, tmp_path / "raster")
    assert real["views"] == "real" and set(real["per_kind"]) == {"paired"}
    assert real["samples"] == raster["per_kind"]["paired"]["samples"] > 0
    real_rows = json.loads((tmp_path / "real" / "open_loop_eval.json").read_text())["rows"]
    raster_rows = {r["key"]: r for r in json.loads((tmp_path / "raster" / "open_loop_eval.json").read_text())["rows"] if r["kind"] == "paired"}
    assert {r["key"] for r in real_rows} == set(raster_rows)
    # the same moments seen as photos instead of rasters: the planner answers differently
    assert any(abs(r["ade"] - raster_rows[r["key"]]["ade"]) > 1e-6 for r in real_rows)
    with pytest.raises(ValueError, match="no paired sample with a target"):
        evaluate_open_loop(agent, tiny_dataset, tmp_path / "none", views="real")
    bad = CliRunner().invoke(app, ["eval", "open-loop", "--agent", str(checkpoint), "--data", str(paired_dataset), "--views", "photo", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--views must be one of raster, real" in bad.output
