"""`rap demo`: its config, the index page it writes, and (slow) the whole chain at micro size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rap.cli import app
from rap.demo_page import write_index
from rap.images import save_png


def _links(page: Path) -> set[str]:
    return set(re.findall(r'(?:href|src)="([^"]+)"', page.read_text()))


def _summary(out: Path) -> dict:
    """A demo summary as run_demo returns it, with the files it names written."""
    for rel in ("front3/contact_sheet.png", "drive_sequence.png", "dataset_a/contact_sheet.png", "train/loss.png", "projection/projection_FRONT.png"):
        save_png(out / rel, np.zeros((4, 8, 3), np.uint8))
    for rel in ("demo.json", "projection/projection.json", "dataset_a/manifest.json", "train/last.pt", "train/metrics.jsonl", "train/config.yaml", "eval/x/index.html", "cl/x/index.html"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    return {
        "scene_id": "637f", "seconds": 61.0, "stages": {"renders": 2.0, "train": 40.0}, "other_agent_id": 7, "projection_mean_iou": 0.98,
        "contact_sheets": [str(out / "front3/contact_sheet.png"), str(out / "missing/contact_sheet.png")], "drive_sequence": str(out / "drive_sequence.png"),
        "datasets": {"dataset_a": {"source": "synthetic:1", "samples": 12, "counts": {"ego": 4, "paired": 4, "recovery": 4, "cross_agent": 0}, "contact_sheet": str(out / "dataset_a/contact_sheet.png")}},
        "train": {"model": "rap", "config": "configs/train/tiny.yaml", "steps": 5, "samples_per_s": 9.5, "final_loss": 1.25, "val_loss": 2.5, "checkpoint": str(out / "train/last.pt"),
                  "run": str(out / "train"), "loss_picture": str(out / "train/loss.png"), "overrides": ["align.spatial_weight=0.002"]},
        "eval": [
            {"agent": "<script>x</script>", "scenes": "synthetic:2", "observation_style": "raster", "num_scenes": 28, "pdms": 0.9521, "epdms": 0.9239, "report": str(out / "eval/x/index.html")},
            {"agent": "planner", "scenes": "synthetic:2", "observation_style": "photo", "num_scenes": 28, "pdms": 0.725, "epdms": None, "report": str(out / "eval/x/index.html")},
        ],
        "closed_loop": [{"agent": "planner", "routes": "bench:dev10", "num_routes": 10, "driving_score": 16.09, "success_rate": 0.0, "efficiency": None, "comfort": 100.0, "report": str(out / "cl/x/index.html"), "failed": 0}],
    }  # fmt: skip


def test_index_links_every_written_file_relatively_and_shows_the_numbers(tmp_path):
    out = tmp_path / "demo"
    page = write_index(out, _summary(out))
    assert page == out / "index.html"
    text = page.read_text()
    links = _links(page)
    assert links and all(not link.startswith("/") for link in links)  # the folder can move
    assert all((out / link).exists() for link in links)  # no broken link: a missing picture is left out
    assert {"front3/contact_sheet.png", "train/loss.png", "train/last.pt", "eval/x/index.html", "cl/x/index.html", "demo.json", "dataset_a/manifest.json"} <= links
    assert "projection/projection_FRONT.png" in links
    for number in ("0.952", "0.924", "0.980", "16.09", "9.5", "1.250", "2.500", "in 61 s"):
        assert number in text, number
    assert "planner (photo observations)" in text
    assert "<script>x</script>" not in text and "&lt;script&gt;" in text  # names are escaped
    assert "stand-in for camera images" in text
    assert "missing/contact_sheet.png" not in text


def test_index_without_a_planner_or_closed_loop_has_no_such_sections(tmp_path):
    out = tmp_path / "demo"
    summary = _summary(out)
    del summary["train"], summary["closed_loop"]
    text = write_index(out, summary).read_text()
    assert "The trained planner" not in text and "Closed loop" not in text
    assert "NAVSIM-style scores" in text


def test_demo_refuses_an_unknown_config_key_with_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "train.stepz=3"])
    assert result.exit_code == 2
    assert "train.stepz" in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_chain_at_micro_size_trains_scores_and_links_everything(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "train.steps=3", "data.synthetic_towns=1", "data.size=[128,64]", "eval.navsim_scenes=synthetic:1", "eval.closed_loop_routes=synthetic:1", "eval.closed_loop_agents=[constant_velocity]"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "demo.json").read_text())
    assert summary["train"]["steps"] == 3 and Path(summary["train"]["checkpoint"]).is_file()
    assert summary["datasets"]["dataset_synthetic"]["counts"]["paired"] > 0
    planner_rows = [r for r in summary["eval"] if r["agent"] == "planner"]
    assert [r["observation_style"] for r in planner_rows] == ["raster", "photo"]
    assert all(0.0 <= r["pdms"] <= 1.0 for r in summary["eval"])
    assert [r["agent"] for r in summary["closed_loop"]] == ["constant_velocity", "planner"]
    assert list(summary["stages"]) == ["renders", "projection check", "datasets", "train", "NAVSIM-style scores", "closed loop"]
    links = _links(out / "index.html")
    assert all((out / link).exists() for link in links)
    assert {"train/loss.png", "closed_loop/planner/index.html", "eval/planner_synthetic_photo/index.html", "dataset_synthetic/contact_sheet.png"} <= links
