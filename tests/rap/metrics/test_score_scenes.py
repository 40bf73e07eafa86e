"""score_scenes (many scenes in one pass) equals score_scene scene by scene, bit for bit.

The batched scorer tracks all scenes' plans in one LQR pass, plans all references in one IDM pass
and runs the per-step metrics, contacts, NC and TTC for all scenes at once; every array of every
scene's result must still be exactly what scoring that scene alone gives.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rap.metrics import EgoState, PDMScorerConfig, PreviousPlan, prepare_scene, score_scene, score_scenes
from rap.metrics import pdms
from rap.perf import synthetic_proposals, synthetic_scoring_scene
from rap.sim.tracker import LQRConfig, RolloutConfig
from rap.trajectory import NAVSIM_SAMPLING, TrajectorySampling

FIELDS = [f.name for f in dataclasses.fields(pdms.PDMResult)]


def assert_same_result(batched, alone, label: str = "") -> None:
    """Every field of two PDMResults is identical (arrays bit for bit, NaN where NaN)."""
    for name in FIELDS:
        a, b = getattr(batched, name), getattr(alone, name)
        if isinstance(b, np.ndarray):
            assert a.shape == b.shape and a.dtype == b.dtype, f"{label} {name}"
            assert np.array_equal(a, b, equal_nan=True), f"{label} {name} differs by {np.nanmax(np.abs(a - b))}"
        else:
            assert a == b, f"{label} {name}: {a} != {b}"


def _plans(plan_factory) -> np.ndarray:
    return np.stack([
        plan_factory(10.0), plan_factory(5.0, 1.0), plan_factory(12.0, -2.0, 3.0), plan_factory(8.0, 0.0, 0.0, 1.0),
        plan_factory(0.0), plan_factory(15.0, 0.0, -2.0), plan_factory(11.0, 0.5, 1.0),
    ])  # fmt: skip


def _metric_test_scenes(scene_factory, plan_factory) -> list:
    """The hand-built scenes of the metric tests, covering every branch of score_scene."""
    prev = PreviousPlan(ego=EgoState(x=-5.0, y=0.0, heading=0.0, vx=10.0), poses=plan_factory(10.0))
    prev_03 = PreviousPlan(ego=EgoState(x=-3.0, y=0.0, heading=0.0, vx=10.0), poses=plan_factory(10.0), time_offset_s=0.3)
    ahead = [dict(x=20.0, y=0.0, vx=2.0), dict(x=40.0, y=3.5, vx=-8.0, heading=np.pi), dict(x=10.0, y=-4.0, kind=3, length=0.5, width=0.5)]
    return [
        scene_factory(),
        scene_factory(objects=ahead),
        scene_factory(objects=[dict(x=1.0, y=0.0), dict(x=25.0, y=0.0, vx=5.0)]),  # one object overlaps the ego (v2 drops it)
        scene_factory(ego_x=60.0, red_light=True, num_steps=51, objects=[dict(x=70.0, y=3.5, vx=-5.0, heading=np.pi)]),
        scene_factory(with_history=False, objects=ahead[:1]),
        scene_factory(objects=()),
        scene_factory(previous_plan=prev, human_trajectory=plan_factory(9.0), objects=[dict(x=30.0, y=0.0, vx=3.0)]),
        scene_factory(previous_plan=prev_03, objects=ahead[1:]),  # another previous-plan offset
        scene_factory(human_trajectory=plan_factory(9.0)[[1, 3, 5, 7]], human_sampling=TrajectorySampling(4, 1.0)),
        scene_factory(reference_poses=np.stack([np.arange(1, 41) * 0.9, np.zeros(40), np.zeros(40)], axis=1), objects=ahead),
        scene_factory(ego_speed=0.0, speed_limit=None, objects=[dict(x=6.0, y=0.0)]),
    ]


def test_score_scenes_equals_score_scene_on_the_metric_test_scenes(scene_factory, plan_factory):
    scenes = _metric_test_scenes(scene_factory, plan_factory)
    plans = _plans(plan_factory)
    proposals = [plans[: 2 + i % len(plans)] for i in range(len(scenes))]  # K differs per scene
    batched = score_scenes(scenes, proposals)
    assert len(batched) == len(scenes)
    for i, (scene, props, res) in enumerate(zip(scenes, proposals, batched)):
        assert len(res) == props.shape[0]
        assert_same_result(res, score_scene(scene, props), f"scene {i}")
    # Any order and any grouping of the same scenes gives the same results.
    order = np.random.default_rng(0).permutation(len(scenes))
    for j, res in zip(order, score_scenes([scenes[j] for j in order], [proposals[j] for j in order])):
        assert_same_result(res, batched[j], f"permuted scene {j}")


@pytest.mark.parametrize(
    "config",
    [
        PDMScorerConfig(human_penalty_filter=False),
        PDMScorerConfig(rollout=RolloutConfig(lqr=LQRConfig(velocity_regularizer="nuplan"))),
    ],
    ids=["no-human-filter", "nuplan-regularizer"],
)
def test_score_scenes_equals_score_scene_under_other_configs(scene_factory, plan_factory, config):
    scenes = _metric_test_scenes(scene_factory, plan_factory)[5:]
    plans = _plans(plan_factory)
    prepared = [prepare_scene(s, config) if i % 2 else None for i, s in enumerate(scenes)]
    for i, res in enumerate(score_scenes(scenes, [plans] * len(scenes), config=config, prepared=prepared)):
        assert_same_result(res, score_scene(scenes[i], plans, config=config), f"scene {i}")


def test_score_scenes_with_another_proposal_sampling(scene_factory, plan_factory):
    sampling = TrajectorySampling(4, 1.0)
    scenes = _metric_test_scenes(scene_factory, plan_factory)[:4]
    plans = _plans(plan_factory)[:, [1, 3, 5, 7]]
    for i, res in enumerate(score_scenes(scenes, [plans] * len(scenes), sampling)):
        assert_same_result(res, score_scene(scenes[i], plans, sampling), f"scene {i}")


def test_score_scenes_equals_score_scene_on_synthetic_scenes(monkeypatch):
    scenes, proposals = [], []
    for i in range(12):
        rng = np.random.default_rng(100 + i)
        scene = synthetic_scoring_scene(rng, num_agents=int(rng.integers(0, 25)), red_light=i % 4 == 0, num_steps=51 if i % 3 == 0 else 41, ego_speed=float(rng.uniform(0.0, 15.0)))
        scenes.append(scene)
        proposals.append(synthetic_proposals(scene, rng, [64, 1, 9][i % 3]))
    alone = [score_scene(s, p) for s, p in zip(scenes, proposals)]
    for i, res in enumerate(score_scenes(scenes, proposals)):
        assert_same_result(res, alone[i], f"scene {i}")
    # Internal batches of a few scenes give the same results as one batch.
    monkeypatch.setattr(pdms, "_BATCH_ROWS", 70)
    for i, res in enumerate(score_scenes(scenes, proposals)):
        assert_same_result(res, alone[i], f"small batches, scene {i}")


@pytest.mark.slow
def test_score_scenes_equals_score_scene_on_synthetic_eval_scenes():
    from rap.eval.navsim_scene import scoring_scene, scoring_steps
    from rap.sources.synthetic.world import load_synthetic

    scenes, proposals = [], []
    for seed in (0, 1):
        world = load_synthetic(seed)
        for step in scoring_steps(world)[:2]:
            scene = scoring_scene(world, step)
            rng = np.random.default_rng(seed * 100 + step)
            base = scene.human_trajectory
            props = [base, np.zeros_like(base)]
            for _ in range(30):
                p = base.copy()
                p[:, 0] *= rng.uniform(0.5, 1.5)
                p[:, 1] += rng.normal(0.0, 1.0) * np.linspace(0.0, 1.0, 8)
                props.append(p)
            scenes.append(scene)
            proposals.append(np.stack(props))
    for i, res in enumerate(score_scenes(scenes, proposals)):
        assert_same_result(res, score_scene(scenes[i], proposals[i]), f"eval scene {i}")


def test_score_scenes_on_synthetic_eval_scenes_quick():
    """One synthetic world scene (a real map's polygons, agents and route) in a batch with
    hand-built and benchmark scenes."""
    from rap.eval.navsim_scene import scoring_scene, scoring_steps
    from rap.sources.synthetic.world import load_synthetic

    world = load_synthetic(2)
    step = scoring_steps(world)[0]
    eval_scene = scoring_scene(world, step)
    rng = np.random.default_rng(5)
    base = eval_scene.human_trajectory
    eval_props = np.stack([base] + [base * [rng.uniform(0.6, 1.4), 1.0, 1.0] + [0.0, rng.normal(0, 0.8), 0.0] for _ in range(20)])
    perf_scene = synthetic_scoring_scene(np.random.default_rng(3))
    perf_props = synthetic_proposals(perf_scene, np.random.default_rng(4), 16)
    scenes, proposals = [eval_scene, perf_scene, eval_scene], [eval_props, perf_props, eval_props[:3]]
    for i, res in enumerate(score_scenes(scenes, proposals)):
        assert_same_result(res, score_scene(scenes[i], proposals[i]), f"scene {i}")


def test_score_scenes_inputs_are_checked(scene_factory, plan_factory):
    scene = scene_factory()
    plans = _plans(plan_factory)
    assert score_scenes([], []) == []
    with pytest.raises(ValueError, match="2 proposal arrays for 1 scenes"):
        score_scenes([scene], [plans, plans])
    with pytest.raises(ValueError, match="2 prepared scenes for 1 scenes"):
        score_scenes([scene], [plans], prepared=[None, None])
    with pytest.raises(ValueError, match=r"proposals\[1\] must be \(K, 8, 3\)"):
        score_scenes([scene, scene], [plans, plans[:, :4]])
    bad = plans.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"proposals\[0\] must be non-empty and finite"):
        score_scenes([scene], [bad])
    with pytest.raises(ValueError, match=r"scenes\[0\] must be a ScoringScene"):
        score_scenes([object()], [plans])
    five_s = PDMScorerConfig(rollout=RolloutConfig(horizon_s=5.0))  # 51 states, the objects cover 41
    with pytest.raises(ValueError, match=r"scenes\[1\]: 51 steps but the scene's objects cover 41"):
        score_scenes([scene_factory(num_steps=51), scene], [plans, plans], config=five_s)
    with pytest.raises(ValueError, match="51 steps but the scene's objects cover 41"):
        score_scene(scene, plans, config=five_s)
    # (S, K, T, 3) arrays and (T, 3) single plans are read as score_scene reads them.
    stacked = score_scenes([scene, scene], np.stack([plans, plans]))
    assert_same_result(stacked[1], score_scene(scene, plans))
    assert_same_result(score_scenes([scene], [plans[0]])[0], score_scene(scene, plans[0]))


def test_score_scene_keeps_its_messages_and_single_scene_path(scene_factory, plan_factory):
    scene = scene_factory()
    with pytest.raises(ValueError, match=r"score_scene: proposals must be \(K, 8, 3\)"):
        score_scene(scene, np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="score_scene: proposals must be non-empty and finite"):
        score_scene(scene, np.zeros((0, 8, 3)))
    res = score_scene(scene, _plans(plan_factory), NAVSIM_SAMPLING, None, prepare_scene(scene))
    assert res.states.shape == (7, 41, 11) and res.reference_states.shape == (41, 11)
