"""`rap experiment ablation`: a 2-row, 1-seed micro-ablation end to end, resume and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.experiments.ablation import ModelJob, model_jobs
from rap.experiments.ablation_config import load_ablation_config

MICRO = [
    "experiment.seeds=[0]", "data.train_towns=1", "data.heldout=synthetic:100-100", "data.size=[64,32]", "train.steps=2",
    'train.overrides=["data.image_size=[64,32]", "model.d_model=32", "model.num_heads=2", "model.num_proposals=4", "model.num_layers=1", "train.batch_size=4"]',
    'rows=[{name: real-only, overrides: ["data.kind_fractions={ego: 0.0, recovery: 0.0, cross_agent: 0.0, paired: 1.0}"]}, {name: + cross-agent rasters}]',
    "eval.closed_loop_routes=synthetic:1", "scaling.cross_agent_samples=[5]",
]  # fmt: skip


def test_the_default_config_has_the_five_rows_three_seeds_and_a_small_scale():
    cfg = load_ablation_config(None, [])
    assert [r.name for r in cfg.rows] == ["real-only", "+ ego rasters", "+ recovery rasters", "+ cross-agent rasters", "+ alignment"]
    assert cfg.experiment.seeds == [0, 1, 2] and cfg.eval.observation_style == "photo" and cfg.eval.closed_loop_routes == "bench:base"
    assert len(cfg.scaling.cross_agent_samples) >= 4
    assert cfg.train.config.is_file()  # relative to the YAML's folder
    small = load_ablation_config(None, ["experiment.scale=small"])
    assert small.experiment.seeds == [0] and small.train.steps < cfg.train.steps
    assert load_ablation_config(None, ["experiment.scale=small", "train.steps=7"]).train.steps == 7  # the command line wins over the preset
    jobs = model_jobs(cfg)
    assert len(jobs) == 5 * 3 + 4 and jobs[-1] == ModelJob("+ cross-agent rasters", 0, 1000)
    assert len({j.slug for j in jobs}) == len(jobs)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation") / "run"
    result = CliRunner().invoke(app, ["experiment", "ablation", "--out", str(out), *MICRO])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout.strip().splitlines()[-1])


def test_micro_ablation_trains_and_scores_every_row_and_writes_the_report(micro):
    out, line = micro
    assert [r["name"] for r in line["rows"]] == ["real-only", "+ cross-agent rasters"]
    for row in line["rows"]:
        assert set(row) == {"name", "seeds", "driving_score", "driving_score_ci95", "pdms", "min_ade"}
        assert row["seeds"] == [0]
        low, high = row["driving_score_ci95"]
        assert 0.0 <= low <= row["driving_score"] <= high <= 100.0
        assert 0.0 <= row["pdms"] <= 1.0 and row["min_ade"] > 0.0
    (ref,) = line["references"]  # constant velocity, scored the same way: the table's floor
    assert ref["name"] == "constant_velocity" and 0.0 <= ref["driving_score"] <= 100.0 and ref["min_ade"] > 0.0
    doc = json.loads((out / "ablation.json").read_text())
    models = {m["slug"]: m for m in doc["models"]}
    assert set(models) == {"real-only-s0", "cross-agent-rasters-s0", "cross-agent-rasters-s0-ca5"}
    # same seed and steps, another mixture: another model; the scaling model keeps 5 cross-agent samples
    assert models["real-only-s0"]["train"]["final_loss"] != models["cross-agent-rasters-s0"]["train"]["final_loss"]
    assert models["cross-agent-rasters-s0-ca5"]["train"]["train_counts"]["cross_agent"] == 5
    full = models["cross-agent-rasters-s0"]["train"]["train_counts"]["cross_agent"]
    assert [p["cross_agent_samples"] for p in line["scaling"]["points"]] == [5, full]
    assert line["scaling"]["fit_min_ade"] is not None
    # every model is scored on photo views: the open-loop rows are the held-out paired samples
    assert all(m["open_loop"]["samples"] > 0 and m["navsim"]["scenes"] > 0 and len(m["closed_loop"]["routes"]) == 1 for m in models.values())
    # why a score is low: route completion and the share of routes ended off route, from the route reports
    for m in models.values():
        report = json.loads((Path(m["closed_loop"]["report"]).parent / "closed_loop_eval.json").read_text())
        (route,) = report["route_rows"]
        assert m["closed_loop"]["route_completion"] == pytest.approx(route["route_completion"])
        assert m["closed_loop"]["deviated"] == float("deviated" in route["status"])
    row = doc["rows"][0]
    assert row["route_completion"] == models["real-only-s0"]["closed_loop"]["route_completion"] and 0.0 <= row["deviated"] <= 1.0
    for name in ("ablation.md", "index.html", "ablation.png", "scaling.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "ablation.md").read_text()
    assert "| real-only | 1 |" in md and "| reference: constant_velocity | – |" in md and "-0.021 ln x + 1.2173" in md


def test_resume_skips_finished_steps_and_other_configs_are_refused(micro, tmp_path):
    out, line = micro
    runner = CliRunner()
    again = runner.invoke(app, ["experiment", "ablation", "--out", str(out), "--resume", *MICRO])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["rows"] == line["rows"]  # every step reused
    assert "reused 6 of 6 steps finished by an earlier one" in (out / "ablation.md").read_text()  # 2 datasets, 1 reference, 3 models
    # a step stored before route outcomes were recorded gets them from its closed-loop report
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    step = out / "steps" / "model-real-only-s0.json"
    record = json.loads(step.read_text())
    del record["closed_loop"]["route_completion"], record["closed_loop"]["deviated"]
    step.write_text(json.dumps(record))
    assert runner.invoke(app, ["experiment", "ablation", "--out", str(out), "--resume", *MICRO]).exit_code == 0
    assert json.loads((out / "ablation.json").read_text())["rows"] == rows
    not_new = runner.invoke(app, ["experiment", "ablation", "--out", str(out), *MICRO])
    assert not_new.exit_code == 2 and "not empty" in not_new.output
    other = runner.invoke(app, ["experiment", "ablation", "--out", str(out), "--resume", *MICRO, "train.steps=3"])
    assert other.exit_code == 2 and "another config" in other.output
    typo = runner.invoke(app, ["experiment", "ablation", "--out", str(tmp_path / "t"), "experiment.sedes=[1]"])
    assert typo.exit_code == 2 and "experiment.sedes" in typo.output and not (tmp_path / "t").exists()
    scale = runner.invoke(app, ["experiment", "ablation", "--out", str(tmp_path / "s"), "experiment.scale=huge"])
    assert scale.exit_code == 2 and "experiment.scale='huge' is not one of default, small" in scale.output


def test_the_gpu_scale_config_loads_and_its_planner_reads_cameras_the_generated_rig_has():
    from planners.config import TrainConfig
    from rap.config import load_config
    from rap.render.rigs import get_rig

    cfg = load_ablation_config(Path(__file__).resolve().parents[2] / "configs" / "experiments" / "ablation_gpu.yaml", [])
    assert [r.name for r in cfg.rows] == [r.name for r in load_ablation_config(None, []).rows]
    train = load_config(TrainConfig, cfg.train.config, cfg.train.overrides)
    assert train.model.backbone.name == "resnet34" and train.model.num_proposals == 64
    rig = next(o.partition("=")[2] for o in cfg.data.generate if o.startswith("rig="))
    assert set(train.data.cameras) <= {c.name for c in get_rig(rig, cfg.data.size).cameras}
