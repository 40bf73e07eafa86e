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
    assert out["batched"] is True  # several scenes: one score_scenes call per pass
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


def _spy(monkeypatch):
    """Records rap.perf's prepare_scene / score_scene / score_scenes calls."""
    calls = {"prepare": [], "scene": [], "scenes": []}
    real_prepare, real_score, real_batch = rap.perf.prepare_scene, rap.perf.score_scene, rap.perf.score_scenes

    def prepare(scene, config=None):
        calls["prepare"].append(scene)
        return real_prepare(scene, config)

    def score(scene, proposals, **kwargs):
        calls["scene"].append((scene, np.asarray(proposals).shape, kwargs.get("prepared")))
        return real_score(scene, proposals, **kwargs)

    def score_many(scenes, proposals, **kwargs):
        calls["scenes"].append((list(scenes), [np.asarray(p).shape for p in proposals], kwargs.get("prepared")))
        return real_batch(scenes, proposals, **kwargs)

    monkeypatch.setattr(rap.perf, "prepare_scene", prepare)
    monkeypatch.setattr(rap.perf, "score_scene", score)
    monkeypatch.setattr(rap.perf, "score_scenes", score_many)
    return calls


def test_bench_score_prepares_each_scene_and_scores_them_in_one_batch(monkeypatch):
    calls = _spy(monkeypatch)
    out = rap.perf.bench_score(num_proposals=5, num_agents=2, repeats=2, seed=7, num_scenes=3)
    assert out["num_scenes"] == 3 and len(out["seconds"]) == 2 and out["batched"] is True
    assert len(calls["scene"]) == 1  # the warm-up call
    assert len(calls["scenes"]) == 2 and len(calls["prepare"]) == 2 * 3  # one batch per pass, every scene prepared
    for scenes, shapes, prepared in calls["scenes"]:
        assert len(scenes) == 3 and shapes == [(5, 8, 3)] * 3
        assert prepared is not None and len(prepared) == 3 and all(p is not None for p in prepared)
    scenes = calls["scenes"][0][0]
    assert len({id(s) for s in scenes}) == 3  # three different scenes per pass
    assert not np.array_equal(scenes[0].objects.x, scenes[1].objects.x)
    # Deterministic apart from timings: the same seed gives the same scenes and scores.
    again = rap.perf.bench_score(num_proposals=5, num_agents=2, repeats=1, seed=7, num_scenes=3)
    assert again["mean_pdms"] == out["mean_pdms"] and again["mean_epdms"] == out["mean_epdms"]
    # Scene 0 of N is the single scene of the same seed, scored by score_scene.
    calls["scene"].clear()
    single = rap.perf.bench_score(num_proposals=5, num_agents=2, repeats=1, seed=7)
    assert single["batched"] is False
    np.testing.assert_array_equal(calls["scene"][-1][0].objects.x, scenes[0].objects.x)


def test_bench_score_unbatched_scores_scene_by_scene_with_the_same_scores(monkeypatch):
    calls = _spy(monkeypatch)
    loop = rap.perf.bench_score(num_proposals=5, num_agents=2, repeats=1, seed=7, num_scenes=3, batched=False)
    timed = calls["scene"][1:]  # after one warm-up call
    assert loop["batched"] is False and not calls["scenes"]
    assert len(timed) == 3 and all(shape == (5, 8, 3) and prep is not None for _, shape, prep in timed)
    batch = rap.perf.bench_score(num_proposals=5, num_agents=2, repeats=1, seed=7, num_scenes=3, batched=True)
    # score_scenes gives score_scene's results bit for bit.
    assert batch["mean_pdms"] == loop["mean_pdms"] and batch["mean_epdms"] == loop["mean_epdms"]
