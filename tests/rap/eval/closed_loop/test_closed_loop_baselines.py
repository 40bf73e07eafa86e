"""Baselines on bench:dev10 (slow: minutes on one core): the privileged expert drives well, the
constant-velocity baseline (which keeps the speed of the route's moving start: it drives, and
leaves the road at the first curve or runs into what is ahead) far worse."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rap.cli import app


def _run(tmp_path, agent: str) -> dict:
    out = tmp_path / agent
    result = CliRunner().invoke(app, ["eval", "closed-loop", "--agent", agent, "--routes", "bench:dev10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_expert_reaches_ds_90_and_constant_velocity_scores_far_lower(tmp_path):
    expert = _run(tmp_path, "expert")
    assert expert["routes"] == 10
    assert expert["driving_score"] >= 90.0, expert
    cv = _run(tmp_path, "constant_velocity")
    assert cv["driving_score"] <= expert["driving_score"] - 50.0, cv
    assert cv["success_rate"] == 0.0
    assert cv["driving_score"] > 0.5  # it moves (it stood at the start and got blocked from standing starts)
