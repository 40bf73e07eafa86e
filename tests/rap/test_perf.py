"""Tests of rap/perf.py's scoring benchmark and `rap bench-score` (flags and JSON keys; no timing
assertions)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

import rap.perf
from rap.cli import app

SMALL = ["--proposals", "6", "--agents", "3", "--repeats", "1"]


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_bench_score_scenes_flag_reports_scenes_per_s(runner):
    result = runner.invoke(app, ["bench-score", *SMALL, "--scenes", "3"])
    assert result.exit_code == 0, result.output
    out = last_json(result)
    for key in ("proposals_per_s", "seconds", "num_proposals", "num_agents", "num_objects", "mean_pdms", "mean_epdms", "machine"):
        assert key in out, key  # the keys of the single-scene benchmark stay
    assert out["num_scenes"] == 3 and out["num_proposals"] == 6 and len(out["seconds"]) == 1
    assert out["scenes_per_s"] > 0 and out["proposals_per_s"] > 0
    assert math.isclose(out["proposals_per_s"], 6 * 3 / out["seconds"][0])
    assert math.isclose(out["scenes_per_s"], 3 / out["seconds"][0])
    assert 0.0 <= out["mean_pdms"] <= 1.0 and 0.0 <= out["mean_epdms"] <= 1.0


def test_bench_score_default_is_one_scene(runner):
    out = last_json(runner.invoke(app, ["bench-score", *SMALL]))
    assert out["num_scenes"] == 1
    assert math.isclose(out["proposals_per_s"], 6 * out["scenes_per_s"])


def test_bench_score_rejects_zero_scenes(runner):
    result = runner.invoke(app, ["bench-score", *SMALL, "--scenes", "0"])
    assert result.exit_code == 2


def test_bench_score_prepares_and_scores_each_scene(monkeypatch):
    prepared, scored = [], []
    real_prepare, real_score = rap.perf.prepare_scene, rap.perf.score_scene

    def prepare(scene, config=None):
        prepared.append(scene)
        return real_prepare(scene, config)

    def score(scene, proposals, **kwargs):
        scored.append((scene, np.asarray(proposals).shape, kwargs.get("prepared")))
        return real_score(scene, proposals, **kwargs)

    monkeypatch.setattr(rap.perf, "prepare_scene", prepare)
    monkeypatch.setattr(rap.perf, "score_scene", score)
    out = rap.perf.bench_score(num_proposals=5, num_agents=2, repeats=2, seed=7, num_scenes=3)
    timed = scored[1:]  # after one warm-up call
    assert out["num_scenes"] == 3 and len(out["seconds"]) == 2
    assert len(timed) == 2 * 3 and len(prepared) == 2 * 3
    assert all(shape == (5, 8, 3) and prep is not None for _, shape, prep in timed)
    scenes = [s for s, _, _ in timed[:3]]
    assert len({id(s) for s in scenes}) == 3  # three different scenes per pass
    assert not np.array_equal(scenes[0].objects.x, scenes[1].objects.x)
    # Deterministic apart from timings: the same seed gives the same scenes and scores.
    again = rap.perf.bench_score(num_proposals=5, num_agents=2, repeats=1, seed=7, num_scenes=3)
    assert again["mean_pdms"] == out["mean_pdms"] and again["mean_epdms"] == out["mean_epdms"]
    # Scene 0 of N is the single scene of the same seed.
    scored.clear()
    rap.perf.bench_score(num_proposals=5, num_agents=2, repeats=1, seed=7)
    np.testing.assert_array_equal(scored[-1][0].objects.x, scenes[0].objects.x)
