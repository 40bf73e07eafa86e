"""Non-finite config values are refused at load, naming the key (a run that accepts
``sampling.interval_s=.inf`` fails every unit and ends late with an unnamed error)."""

from __future__ import annotations

import pytest

from rap.config import ConfigError, load_config
from rap.eval.config import EvalConfig
from rap.generate import GenerateConfig


@pytest.mark.parametrize(
    "override",
    [
        "sampling.interval_s=.inf",
        "history.interval_s=.nan",
        "recovery.rejoin_horizon_s=.inf",
        "cross_agent.min_cv_error_m=.inf",
        "cross_agent.min_speed_mps=.nan",
    ],
)
def test_generate_config_refuses_non_finite_values(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(GenerateConfig, None, [override])


@pytest.mark.parametrize("override", ["navsim.spacing_s=.inf", "navsim.previous_plan_offset_s=.nan", "observation.history.interval_s=.inf", "navsim.agent_timeout_s=.inf"])
def test_eval_config_refuses_non_finite_values(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(EvalConfig, None, [override])


def test_finite_values_still_load():
    cfg = load_config(GenerateConfig, None, ["sampling.interval_s=0.25", "cross_agent.min_cv_error_m=0"])
    assert cfg.sampling.interval_s == 0.25 and cfg.cross_agent.min_cv_error_m == 0.0


def test_an_override_into_a_section_the_file_lacks_keeps_that_sections_other_defaults(tmp_path):
    from planners.config import TrainConfig

    default = TrainConfig().data.kind_fractions
    cfg = load_config(TrainConfig, None, ["data.kind_fractions.paired=0.25"])
    assert cfg.data.kind_fractions.paired == 0.25
    assert (cfg.data.kind_fractions.ego, cfg.data.kind_fractions.recovery) == (default.ego, default.recovery) == (0.6, 0.2)
    partial = tmp_path / "partial.yaml"
    partial.write_text("data:\n  cameras: [CAM_F0]\n")
    cfg = load_config(TrainConfig, partial, ["data.kind_fractions.paired=0.25", "loss.trajectory.cross_agent=0.5"])
    assert cfg.data.cameras == ["CAM_F0"] and cfg.data.kind_fractions.ego == 0.6
    assert (cfg.loss.trajectory.cross_agent, cfg.loss.trajectory.paired) == (0.5, 1.0)
    # a section the file gives is taken as given (its missing keys: the type's field defaults)
    given = tmp_path / "given.yaml"
    given.write_text("data:\n  kind_fractions: {ego: 1.0}\n")
    assert load_config(TrainConfig, given, ["data.kind_fractions.paired=0.5"]).data.kind_fractions.recovery == 1.0
