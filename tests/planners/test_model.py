"""Planner models, backbones and losses: shapes, weights files, the loss falling on one batch."""

from __future__ import annotations

import pytest
import torch

from planners.backbones import BackboneWeightsError, build_backbone, load_backbone_weights
from planners.config import ModelSection
from planners.data import SampleDataset, TrainingIndex, collate_samples
from planners.losses import imitation_ce, imitation_targets, ranking_ce, trajectory_errors, wta_l1
from planners.model import build_model, selection_scores

from .conftest import tiny_config


def _batch(b: int = 2, cams: int = 3, size=(64, 32)) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.randint(0, 255, (b, cams, 3, size[1], size[0]), dtype=torch.uint8, generator=g),
        "ego_status": torch.rand(b, 5, generator=g),
        "command": torch.tensor([0, 2][:b]),
        "history": torch.rand(b, 3, 3, generator=g),
        "history_valid": torch.ones(b, 3, dtype=torch.bool),
    }


@pytest.mark.parametrize("kind,k,has_scores,imitation", [("rap", 4, True, False), ("rap", 4, True, True), ("regression", 1, False, False), ("ego_mlp", 1, False, False)])
def test_every_planner_returns_proposals_scores_and_a_trajectory(kind, k, has_scores, imitation):
    cfg = ModelSection(type=kind, d_model=32, num_heads=2, num_proposals=4, num_layers=2, imitation=imitation, select_imitation=1.0)
    model = build_model(cfg, num_cameras=3, image_size=(64, 32), history_len=3, num_poses=10)
    out = model(_batch())
    assert out["proposals"].shape == (2, k, 10, 3)
    assert out["trajectory"].shape == (2, 10, 3)
    assert (out["score_logits"] is not None) == has_scores
    assert (out["imitation_logits"] is not None) == imitation
    assert (model.state_dict().get("imitation_head.0.weight") is not None) == imitation
    if has_scores:
        assert out["score_logits"].shape == (2, 4, 6)
        if imitation:
            assert out["imitation_logits"].shape == (2, 4)
        best = selection_scores(out["score_logits"], out["imitation_logits"], cfg).argmax(1)
        assert torch.equal(out["trajectory"], out["proposals"][torch.arange(2), best])  # drives the best selection score


def test_query_spread_makes_untrained_proposals_distinct_around_the_velocity_prior():
    def spread(query_spread: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model(ModelSection(d_model=32, num_heads=2, num_proposals=4, num_layers=1, query_spread=query_spread), num_cameras=3, image_size=(64, 32), history_len=3, num_poses=10)
        end = model(_batch())["proposals"].detach()[:, :, -1, :2]
        return (end - end.mean(dim=1, keepdim=True)).norm(dim=-1)  # [m] distance of each final pose from the mean

    wide, default = spread(1.0), spread(ModelSection().query_spread)
    assert float(wide.min()) > 0.01 and float(wide.max()) < 1.0  # distinct, still near the prior
    assert float(wide.mean()) > 10 * float(default.mean())


def test_default_selection_is_log_nc_plus_log_dac_plus_log_pdms():
    cfg = ModelSection()
    logits = torch.randn(3, 5, 6)
    ls = torch.nn.functional.logsigmoid(logits)
    torch.testing.assert_close(selection_scores(logits, None, cfg), ls[..., 0] + ls[..., 1] + ls[..., 5])
    # a proposal predicted to collide loses to a slightly lower predicted PDMS that does not
    logits = torch.zeros(1, 2, 6)
    logits[0, 0, 5], logits[0, 1, 5] = 3.0, 2.0
    logits[0, 0, 0], logits[0, 1, 0] = -3.0, 3.0
    assert int(selection_scores(logits, None, cfg).argmax(1)) == 1


def test_imitation_target_is_highest_for_the_proposal_closest_to_the_target():
    target = torch.zeros(1, 4, 3)
    proposals = torch.zeros(1, 3, 4, 3)
    proposals[0, 0, :, 0] = 3.0  # 3 m ahead all along
    proposals[0, 1, :, 1] = 0.5  # 0.5 m to the side: the closest
    proposals[0, 2, :, 2] = 1.0  # on the target's positions with another heading: heading is not counted
    proposals[0, 2, :, 1] = 1.0
    soft = imitation_targets(proposals, target, temperature=1.0)
    assert soft.shape == (1, 3) and float(soft.sum()) == pytest.approx(1.0)
    assert soft.argmax(1).item() == 1 and soft[0, 1] > soft[0, 2] > soft[0, 0]
    # exp(-d^2): d^2 = 9, 0.25, 1
    expected = torch.softmax(-torch.tensor([9.0, 0.25, 1.0]), dim=0)
    torch.testing.assert_close(soft[0], expected)
    sharp = imitation_targets(proposals, target, temperature=0.01)
    assert float(sharp[0, 1]) == pytest.approx(1.0, abs=1e-6)  # small temperature: the WTA winner alone
    # the cross-entropy is lower when the logits agree with the target, and weighted per sample
    good = imitation_ce(torch.tensor([[-5.0, 5.0, 0.0]]), soft, torch.ones(1))
    bad = imitation_ce(torch.tensor([[5.0, -5.0, 0.0]]), soft, torch.ones(1))
    assert float(good) < float(bad)
    assert float(imitation_ce(torch.tensor([[5.0, -5.0, 0.0]]), soft, torch.zeros(1))) == 0.0


def test_ranking_loss_rewards_ordering_the_proposals_by_their_true_pdms():
    true = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    agree = ranking_ce(torch.tensor([[-3.0, 3.0, 0.0], [0.0, 0.0, 0.0]]), true, torch.ones(2), temperature=0.1)
    disagree = ranking_ce(torch.tensor([[3.0, -3.0, 0.0], [0.0, 0.0, 0.0]]), true, torch.ones(2), temperature=0.1)
    assert float(agree) < float(disagree)
    shifted = ranking_ce(torch.tensor([[7.0, 13.0, 10.0], [5.0, 5.0, 5.0]]), true, torch.ones(2), temperature=0.1)
    assert float(shifted) == pytest.approx(float(agree), abs=1e-5)  # only the order within a sample counts
    unscored = ranking_ce(torch.tensor([[3.0, -3.0, 0.0], [0.0, 0.0, 0.0]]), true, torch.tensor([0.0, 1.0]), temperature=0.1)
    assert float(unscored) == pytest.approx(float(torch.log(torch.tensor(3.0))) / 2, abs=1e-5)  # only the scored sample counts (uniform target)


def test_scorer_and_imitation_heads_see_the_proposals_detached():
    cfg = ModelSection(type="rap", d_model=32, num_heads=2, num_proposals=4, num_layers=1, imitation=True)
    model = build_model(cfg, num_cameras=3, image_size=(64, 32), history_len=3, num_poses=10)
    out = model(_batch())
    (out["score_logits"].sum() + out["imitation_logits"].sum()).backward()
    assert model.traj_heads[-1][-1].weight.grad is None  # the last trajectory head gets nothing from them
    assert model.judge_embed.weight.grad is not None and model.imitation_head[0].weight.grad is not None


def test_selection_combines_imitation_and_predicted_subscores_as_configured():
    # proposal 0: the imitation head's favourite, but predicted to collide; proposal 1: safe,
    # second by imitation; proposal 2: safe, unlikely by imitation, best predicted PDMS.
    score_logits = torch.full((1, 3, 6), 6.0)
    score_logits[0, 0, 0] = -6.0  # NC of proposal 0
    score_logits[0, 2, 5] = 9.0  # PDMS of proposal 2
    score_logits[0, :2, 5] = 0.0
    imitation = torch.tensor([[4.0, 2.0, -4.0]])
    pick = lambda **w: int(selection_scores(score_logits, imitation, ModelSection(**w)).argmax(1))  # noqa: E731
    off = {f"select_{n}": 0.0 for n in ("nc", "dac", "ttc", "ep", "comfort", "pdms")}
    assert pick(**{**off, "select_imitation": 1.0}) == 0  # imitation alone
    assert pick(**{**off, "select_imitation": 1.0, "select_nc": 1.0}) == 1  # the collision is vetoed
    assert pick(**{**off, "select_imitation": 0.0, "select_pdms": 1.0}) == 2  # the old rule: best predicted PDMS
    # the formula: w_im * log_softmax(imitation) + sum of w_s * log sigmoid(logit_s)
    cfg = ModelSection(**{**off, "select_imitation": 0.5, "select_dac": 2.0})
    expected = 0.5 * torch.log_softmax(imitation, 1) + 2.0 * torch.nn.functional.logsigmoid(score_logits[..., 1])
    torch.testing.assert_close(selection_scores(score_logits, imitation, cfg), expected)
    torch.testing.assert_close(selection_scores(score_logits, None, cfg), 2.0 * torch.nn.functional.logsigmoid(score_logits[..., 1]))


def test_frozen_backbone_gets_no_gradient_and_keeps_its_statistics():
    cfg = ModelSection(type="rap", d_model=32, num_heads=2, num_proposals=2, num_layers=1, backbone={"name": "resnet18", "frozen": True})
    model = build_model(cfg, num_cameras=1, image_size=(64, 32), history_len=3, num_poses=4)
    model.train()
    before = model.images.backbone.trunk.bn1.running_mean.clone()
    model(_batch(cams=1))["trajectory"].sum().backward()
    assert all(p.grad is None for p in model.images.backbone.parameters())
    assert torch.equal(before, model.images.backbone.trunk.bn1.running_mean)
    assert model.images.proj.weight.grad is not None


def test_backbone_loads_a_state_dict_and_safetensors_and_rejects_one_that_does_not_fit(tmp_path):
    from safetensors.torch import save_file

    source = build_backbone("resnet18")
    state = {f"module.{k}": v for k, v in source.trunk.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # a classifier head is ignored
    torch.save(state, tmp_path / "r18.pt")
    save_file({k: v.contiguous() for k, v in source.trunk.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    for name in ("r18.pt", "r18.safetensors"):
        target = build_backbone("resnet18")
        load_backbone_weights(target, tmp_path / name)
        assert torch.equal(target.trunk.layer4[1].conv2.weight, source.trunk.layer4[1].conv2.weight)
    torch.save(build_backbone("resnet34").trunk.state_dict(), tmp_path / "r34.pt")
    with pytest.raises(BackboneWeightsError, match=r"r34.pt: does not fit backbone resnet18: .*unexpected \(e.g. layer1.2"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "r34.pt")
    with pytest.raises(BackboneWeightsError, match="no such file"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(BackboneWeightsError, match="junk.pt: cannot read weights"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "junk.pt")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone; use one of resnet18, resnet34, resnet50 or timm:NAME"):
        build_backbone("vgg16")


def test_wta_l1_pulls_only_the_closest_proposal_and_wraps_heading():
    target = torch.zeros(1, 2, 3)
    proposals = torch.tensor([[[[1.0, 0, 0], [1.0, 0, 0]], [[0.0, 0.5, 2 * torch.pi], [0.0, 0.5, 0.0]]]])
    errors = trajectory_errors(proposals, target)
    assert torch.allclose(errors, torch.tensor([[1.0, 0.5]]), atol=1e-6)  # 2 pi is no heading error
    loss, best = wta_l1(proposals, target, torch.tensor([0.1]))
    assert int(best) == 1 and float(loss) == pytest.approx(0.05, abs=1e-6)


def test_rap_planner_overfits_one_batch(tiny_dataset):
    """The trajectory loss on one fixed batch falls at least 10x."""
    torch.manual_seed(0)
    cfg = tiny_config(tiny_dataset, "model.num_proposals=4", "model.num_layers=1", "model.d_model=64")
    index = TrainingIndex(cfg)
    data = SampleDataset(index, "train", cfg)
    batch = collate_samples([data[i] for i in range(0, min(len(data), 40), 10)])
    model = build_model(cfg.model, num_cameras=3, image_size=(64, 32), history_len=3, num_poses=index.sampling.num_poses)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 60)
    losses = []
    for _ in range(60):
        loss, _ = wta_l1(model(batch)["proposals"], batch["target"], torch.ones(len(batch["key"])))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    assert min(losses[-5:]) < losses[0] / 10, losses[::8]


def test_imitation_head_learns_which_proposal_is_closest(tiny_dataset):
    """Training's loss includes the imitation cross-entropy; on one fixed batch it falls and the
    head ends up ranking the proposal closest to the target first."""
    from planners.train import compute_loss

    torch.manual_seed(0)
    cfg = tiny_config(tiny_dataset, "model.num_proposals=4", "model.num_layers=1", "model.query_spread=1.0", "loss.scorer_weight=0", "loss.rank_weight=0")
    index = TrainingIndex(cfg)
    data = SampleDataset(index, "train", cfg)
    batch = collate_samples([data[i] for i in range(0, min(len(data), 40), 10)])
    model = build_model(cfg.model, num_cameras=3, image_size=(64, 32), history_len=3, num_poses=index.sampling.num_poses)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = last = None
    for _ in range(120):
        loss, parts = compute_loss(model, batch, cfg, index.sampling)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first or parts
        last = parts
    assert "loss_imitation" in first and last["loss_imitation"] < first["loss_imitation"], (first, last)
    out = model(batch)
    soft = imitation_targets(out["proposals"], batch["target"].float(), cfg.loss.imitation_temperature)
    assert torch.equal(out["imitation_logits"].argmax(1), soft.argmax(1))  # ranks the closest proposal first


def test_scorer_targets_return_the_scores_asked_for(tiny_dataset):
    """EPDMS for the ranking target comes from the same rollouts as the scorer head's targets."""
    from planners.features import SCORE_NAMES
    from planners.scoring import scorer_targets

    cfg = tiny_config(tiny_dataset)
    index = TrainingIndex(cfg)
    data = SampleDataset(index, "train", cfg)
    batch = collate_samples([data[i] for i in range(0, min(len(data), 40), 10)])
    proposals = torch.stack([batch["target"], batch["target"] * 0.5], dim=1).float()  # the target and a slower plan
    plain, scored = scorer_targets(batch["scoring"], proposals, index.sampling, torch.ones(len(batch["key"])))
    more, scored2 = scorer_targets(batch["scoring"], proposals, index.sampling, torch.ones(len(batch["key"])), SCORE_NAMES + ("epdms",))
    assert plain.shape == (len(batch["key"]), 2, len(SCORE_NAMES)) and more.shape[-1] == len(SCORE_NAMES) + 1
    assert scored.any() and torch.equal(scored, scored2)
    torch.testing.assert_close(more[..., : len(SCORE_NAMES)], plain)
    assert float(more[..., -1].min()) >= 0.0 and float(more[..., -1].max()) <= 1.0


def test_batches_follow_the_kind_fractions_and_dataset_weights(tiny_dataset):
    """Each kind gets its configured share of the batches whatever its sample count; the draw of
    a step depends on (seed, step) alone."""
    import numpy as np

    from planners.data import global_batch

    cfg = tiny_config(tiny_dataset, "data.val_fraction=0", "data.kind_fractions={ego: 0.5, recovery: 0.3, cross_agent: 0.2}")
    index = TrainingIndex(cfg)
    kinds = np.array([s.kind for s in index.train])
    draws = np.concatenate([global_batch(index.probabilities, 0, step, 64) for step in range(200)])
    for kind, share in (("ego", 0.5), ("recovery", 0.3), ("cross_agent", 0.2)):
        assert np.mean(kinds[draws] == kind) == pytest.approx(share, abs=0.02), kind
    assert np.array_equal(global_batch(index.probabilities, 0, 7, 16), global_batch(index.probabilities, 0, 7, 16))
    assert not np.array_equal(global_batch(index.probabilities, 0, 7, 16), global_batch(index.probabilities, 1, 7, 16))
    two = tiny_config(tiny_dataset, "data.val_fraction=0", f"data.datasets=[{tiny_dataset},{tiny_dataset}]", "data.dataset_weights=[3,1]")
    index2 = TrainingIndex(two)
    ds = np.array([s.dataset for s in index2.train])
    assert index2.probabilities[ds == 0].sum() == pytest.approx(0.75)


def test_validation_scenes_are_fixed_by_id_and_never_empty_with_several_scenes():
    from planners.data import val_scenes

    ids = [f"synthetic-{i}" for i in range(1000)]
    held = val_scenes(ids, 0.1)
    assert 70 <= len(held) <= 130  # about 10 %, even for ids one character apart
    assert val_scenes(reversed(ids), 0.1) == held
    assert len(val_scenes(["synthetic-0", "synthetic-1"], 0.1)) == 1  # at least one scene
    assert val_scenes(["synthetic-0", "synthetic-1"], 0.0) == set() and val_scenes(["only"], 0.5) <= {"only"}
