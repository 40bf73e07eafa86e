"""One observation type in training and evaluation: what an evaluator gives an agent at a step
equals what a generated sample of the same scene and step stores, and both configs take their
observation defaults from one place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.config import load_config
from rap.dataset.reader import iter_dataset, record_to_sample
from rap.eval.agent import SensorConfig
from rap.eval.config import DEFAULT_EVAL_CONFIG, EvalConfig, ObservationSection
from rap.eval.observe import Observer, observation_from_sample
from rap.generate import GenerateConfig, generate
from rap.render.style import default_style
from rap.sources.womd import load_womd
from rasterizer.renderer import Renderer

DATA = Path(__file__).resolve().parents[3] / "data" / "waymo"
WOMD = DATA / "womd_scenario_637f20cafde22ff8.tfrecord"
GENERATE_DEFAULTS = Path(__file__).resolve().parents[3] / "configs" / "generate" / "default.yaml"


def test_eval_and_generate_share_observation_defaults():
    gen, ev = GenerateConfig(), EvalConfig()
    assert ev.observation.history == gen.history
    assert ev.observation.command_sampling == gen.sampling
    assert (ev.observation.rig, ev.observation.size) == (gen.rig, tuple(gen.size))
    assert (SensorConfig().rig, SensorConfig().size) == ("config", None)  # agents defer to the config
    # The augmentation building blocks default to the same history.
    from rap.augment.cross_agent import CrossAgentConfig
    from rap.augment.recovery import RecoveryConfig
    from rap.augment.targets import EgoConfig

    for cfg in (EgoConfig(), CrossAgentConfig(), RecoveryConfig()):
        assert (cfg.history_num, cfg.history_interval_s) == (gen.history.num_poses, gen.history.interval_s), type(cfg).__name__
    # The shipped YAML files say the same as the typed defaults.
    assert load_config(EvalConfig, DEFAULT_EVAL_CONFIG) == ev
    assert load_config(GenerateConfig, GENERATE_DEFAULTS).history == ev.observation.history


def test_observation_at_a_step_equals_the_generated_sample(ctx, tmp_path):
    """Views, camera records, status, command and history of the ego at every sampled step of the
    real scenario are identical whether an evaluator builds them or a dataset sample stores them."""
    cfg = load_config(GenerateConfig, None, ["size=[160,80]", "recovery.enabled=false", "cross_agent.enabled=false", "step_stride=10"])
    generate(f"womd:{WOMD}", tmp_path / "ds", cfg)
    samples = [record_to_sample(r) for r in iter_dataset(tmp_path / "ds")]
    assert len(samples) >= 3 and {s.plan.kind.value for s in samples} == {"ego"}
    scene = load_womd(WOMD)
    observation = load_config(EvalConfig, DEFAULT_EVAL_CONFIG, [f"observation.size=[{cfg.size[0]},{cfg.size[1]}]"]).observation
    with Renderer(ctx, default_style()) as renderer:
        observer = Observer(renderer, SensorConfig(), observation)  # rig and size from the eval config
        for sample in samples:
            train = observation_from_sample(sample)
            ev = observer.observe(scene, sample.plan.step, sample.plan.target.sampling)
            assert ev.scene_id == train.scene_id and ev.sampling == train.sampling
            assert ev.ego_status == train.ego_status
            np.testing.assert_array_equal(ev.history, train.history)
            assert ev.cameras == train.cameras
            assert sorted(ev.images) == sorted(train.images) == ["CAM_F0", "CAM_L0", "CAM_R0"]
            assert ev.images["CAM_F0"].shape == (cfg.size[1], cfg.size[0], 3)
            for name in ev.images:
                np.testing.assert_array_equal(ev.images[name], train.images[name], err_msg=f"step {sample.plan.step} {name}")
            assert train.time_s is None and train.scene is None
            assert ev.time_s == pytest.approx(float(scene.timestamps[sample.plan.step]))


def test_observation_follows_its_config(ctx, womd_scene):
    """History length and spacing come from the config, not from constants in the evaluator."""
    config = ObservationSection.model_validate({"history": {"num_poses": 4, "interval_s": 0.25}})
    observer = Observer(None, SensorConfig(rig=None), config)
    obs = observer.observe(womd_scene, 10, EvalConfig().navsim.sampling.to_sampling())
    assert obs.history.shape == (4, 3) and obs.images == {} and obs.scene is None
    # Oldest first, one interval apart in time: the ego stands still at step 10, so poses are ~0.
    assert np.all(np.abs(obs.history[:, :2]) < 1.0)


def test_eval_navsim_rejects_a_bad_override(tmp_path):
    result = CliRunner().invoke(app, ["eval", "navsim", "--agent", "constant_velocity", "--scenes", "synthetic:1", "--out", str(tmp_path), "observation.history.num_poses=0"])
    assert result.exit_code == 2
    assert "observation.history.num_poses" in result.output


def test_eval_navsim_tracker_option(tmp_path):
    """The scorer's one deviating option is reachable as an override and validated."""
    from rap.eval.config import EvalConfig

    cfg = load_config(EvalConfig, DEFAULT_EVAL_CONFIG, ["tracker.velocity_regularizer=nuplan"])
    assert cfg.scorer_config().rollout.lqr.velocity_regularizer == "nuplan"
    assert EvalConfig().scorer_config().rollout.lqr.velocity_regularizer == "navsim"
    bad = CliRunner().invoke(app, ["eval", "navsim", "--agent", "constant_velocity", "--scenes", "synthetic:1", "--out", str(tmp_path), "tracker.velocity_regularizer=smooth"])
    assert bad.exit_code == 2 and "tracker.velocity_regularizer" in bad.output


def test_an_agent_can_pin_its_own_rig(ctx, womd_scene):
    """An agent that names a rig and size gets it whatever the config says; one that defers gets
    the config's."""
    config = EvalConfig().observation
    sampling = EvalConfig().navsim.sampling.to_sampling()
    with Renderer(ctx, default_style()) as renderer:
        pinned = Observer(renderer, SensorConfig("bev", (64, 64)), config).observe(womd_scene, 10, sampling)
        deferred = Observer(renderer, SensorConfig(), config).observe(womd_scene, 10, sampling)
    assert list(pinned.images) == ["BEV"] and pinned.images["BEV"].shape == (64, 64, 3)
    assert sorted(deferred.images) == ["CAM_F0", "CAM_L0", "CAM_R0"] and deferred.images["CAM_F0"].shape == (256, 512, 3)

