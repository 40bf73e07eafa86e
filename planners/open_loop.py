"""`rap eval open-loop`: a planner's trajectories against the dataset's targets.

For every sample of a dataset the agent sees the sample's observation
(:func:`rap.eval.observe.observation_from_sample`) and plans at the target's sampling. Per sample:

* ADE / FDE: mean / final L2 distance of the driven trajectory to the target [m];
* minADE: the smallest ADE over the model's proposals (the paper's ablations are in minADE;
  single-trajectory agents: equal to ADE);
* L2 at 1 s, 2 s, 3 s: the distance at those times (as NAVSIM/UniAD report open-loop L2);
* collision: whether the ego box along the plan overlaps a logged road user's box at the same
  time within 4 s (needs the sample's scoring context; samples without one are not counted).

Reported per sample kind and overall; ``open_loop_eval.json`` in ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rap.dataset.reader import iter_dataset, list_shards, record_to_sample
from rap.eval.observe import observation_from_sample
from rap.fileio import write_bytes_atomic
from rap.geometry import box_corners_2d
from rap.metrics.pdm_collisions import boxes_intersect
from rap.sim.bicycle import PACIFICA
from rap.trajectory import TrajectorySampling

__all__ = ["evaluate_open_loop", "sample_metrics", "plan_collides", "REPORT_NAME"]

REPORT_NAME = "open_loop_eval.json"
L2_TIMES_S = (1.0, 2.0, 3.0)
COLLISION_HORIZON_S = 4.0


def _at_times(poses: np.ndarray, sampling: TrajectorySampling, times: np.ndarray) -> np.ndarray:
    t = np.concatenate([[0.0], sampling.times_s])
    p = np.vstack([np.zeros((1, poses.shape[-1])), poses])
    return np.stack([np.interp(times, t, p[:, j]) for j in range(p.shape[1])], axis=1)


def plan_collides(poses: np.ndarray, sampling: TrajectorySampling, objects) -> bool:
    """Whether the ego box (rear-axle poses in the acting frame) overlaps one of ``objects``
    (:class:`rap.metrics.pdm_inputs.ObjectTracks` in the same frame, 0.1 s steps from now) at a
    plan time within 4 s."""
    if len(objects) == 0:
        return False
    times = sampling.times_s[sampling.times_s <= COLLISION_HORIZON_S + 1e-9]
    steps = np.rint(times / 0.1).astype(int)
    keep = steps < objects.num_steps
    times, steps = times[keep], steps[keep]
    if not len(times):
        return False
    ego = poses[: len(times)]
    d = PACIFICA.rear_axle_to_center
    cx, cy = ego[:, 0] + d * np.cos(ego[:, 2]), ego[:, 1] + d * np.sin(ego[:, 2])
    ego_corners = box_corners_2d(cx, cy, ego[:, 2], PACIFICA.length, PACIFICA.width)  # (T, 4, 2)
    obj = objects.corners()[:, steps]  # (N, T, 4, 2)
    hits = boxes_intersect(ego_corners[None], obj) & objects.valid[:, steps]
    return bool(hits.any())


def sample_metrics(driven: np.ndarray, proposals: np.ndarray, target: np.ndarray, sampling: TrajectorySampling) -> dict[str, float]:
    """ADE, FDE, minADE and L2 at 1/2/3 s of one sample (poses (T, 3), proposals (K, T, 3))."""
    err = np.hypot(*(driven[:, :2] - target[:, :2]).T)
    prop_err = np.hypot(proposals[..., 0] - target[None, :, 0], proposals[..., 1] - target[None, :, 1]).mean(axis=1)
    out = {"ade": float(err.mean()), "fde": float(err[-1]), "min_ade": float(min(prop_err.min(), err.mean()))}
    for t in L2_TIMES_S:
        if t <= sampling.horizon_s + 1e-9:
            a = _at_times(driven[:, :2], sampling, np.array([t]))[0]
            b = _at_times(target[:, :2], sampling, np.array([t]))[0]
            out[f"l2_{t:g}s"] = float(np.hypot(*(a - b)))
    return out


def _summary(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": len(rows)}
    for key in ("ade", "fde", "min_ade", *(f"l2_{t:g}s" for t in L2_TIMES_S)):
        vals = [r[key] for r in rows if key in r]
        out[key] = float(np.mean(vals)) if vals else None
    checked = [r["collision"] for r in rows if r.get("collision") is not None]
    out["collision_rate"] = float(np.mean(checked)) if checked else None
    out["collision_checked"] = len(checked)
    return out


VIEWS = ("raster", "real")  # evaluate_open_loop(views=...), rap eval open-loop --views


def evaluate_open_loop(
    agent, data: str | Path, out_dir: str | Path, *, max_samples: int | None = None, on_sample: Callable[[dict], None] | None = None, views: str = "raster",
) -> dict[str, Any]:  # fmt: skip
    """Score ``agent`` against every sample of the dataset ``data`` (see the module docstring).

    Args:
        agent: an agent of the evaluators' protocol; one with a ``forward(observation)`` method
            returning ``proposals`` (a :class:`planners.agent.CheckpointAgent`) is also scored
            on its proposals (minADE).
        data: a dataset folder written by ``rap generate``.
        out_dir: where ``open_loop_eval.json`` goes.
        max_samples: stop after this many samples.
        views: ``raster`` (every sample through its stored views) or ``real`` (only the paired
            samples that have a target, through their real or photo views: the planner seen in
            the camera domain).

    Returns:
        The report: ``{"agent", "data", "ade", "fde", "min_ade", "l2_1s", ..., "collision_rate",
        "samples", "per_kind": {kind: {...}}}``.

    Raises:
        ValueError: no dataset at ``data``, a privileged agent (samples hold no scene), an unknown
            ``views``, or (``views="real"``) no paired sample with a target.
    """
    if views not in VIEWS:
        raise ValueError(f"--views must be one of {', '.join(VIEWS)}, got {views!r}")
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"--data {data}: no such folder")
    if not list_shards(data):
        raise ValueError(f"--data {data}: no shards (shard-*.tar) in this folder")
    if getattr(agent, "privileged", False):
        raise ValueError(f"agent {agent.name!r} is privileged (reads the scene); open-loop evaluation has only the samples' observations")
    from planners.agent import resample_poses  # noqa: PLC0415

    sensors = agent.sensor_config()
    rows: list[dict] = []
    for record in iter_dataset(data, decode_images=True):
        if max_samples is not None and len(rows) >= max_samples:
            break
        sample = record_to_sample(record)
        if views == "real":
            if sample.real_images is None or not sample.has_target:
                continue
            sample = dataclasses.replace(sample, images=dict(sample.real_images))
        sampling = sample.plan.target.sampling
        obs = observation_from_sample(sample, sampling)
        if sensors.rig is None:  # agents without cameras see no views, as in every evaluator
            obs = dataclasses.replace(obs, images={}, cameras={})
        target = np.asarray(sample.plan.target.poses, dtype=np.float64)
        if hasattr(agent, "forward"):
            out = agent.forward(obs)
            trained = agent.trained
            props = out["proposals"][0].numpy().astype(np.float64)
            proposals = np.stack([resample_poses(p, trained, sampling) for p in props])
            driven = resample_poses(out["trajectory"][0].numpy().astype(np.float64), trained, sampling)
        else:
            driven = np.asarray(agent.plan(obs).poses, dtype=np.float64)
            proposals = driven[None]
        row = {"key": sample.plan.key, "kind": sample.plan.kind.value, **sample_metrics(driven, proposals, target, sampling)}
        ctx = record.get("scoring")
        row["collision"] = None if ctx is None else plan_collides(driven, sampling, ctx.to_scoring_scene().objects)
        rows.append(row)
        if on_sample is not None:
            on_sample(row)
    if not rows:
        what = "no paired sample with a target (write some with rap generate ... paired.enabled=true)" if views == "real" else "no samples"
        raise ValueError(f"--data {data}: the dataset holds {what}")
    report = {"agent": agent.name, "data": str(data), "views": views, **_summary(rows)}
    report["per_kind"] = {kind: _summary([r for r in rows if r["kind"] == kind]) for kind in sorted({r["kind"] for r in rows})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {**report, "rows": rows}
    write_bytes_atomic(out / REPORT_NAME, (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())
    return report
