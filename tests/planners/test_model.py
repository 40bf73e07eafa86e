"""Planner models, backbones and losses: shapes, weights files, the loss falling on one batch."""

from __future__ import annotations

import pytest
import torch

from planners.backbones import BackboneWeightsError, build_backbone, load_backbone_weights
from planners.config import ModelSection
from planners.data import SampleDataset, TrainingIndex, collate_samples
from planners.losses import trajectory_errors, wta_l1
from planners.model import build_model

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


@pytest.mark.parametrize("kind,k,has_scores", [("rap", 4, True), ("regression", 1, False), ("ego_mlp", 1, False)])
def test_every_planner_returns_proposals_scores_and_a_trajectory(kind, k, has_scores):
    cfg = ModelSection(type=kind, d_model=32, num_heads=2, num_proposals=4, num_layers=2)
    model = build_model(cfg, num_cameras=3, image_size=(64, 32), history_len=3, num_poses=10)
    out = model(_batch())
    assert out["proposals"].shape == (2, k, 10, 3)
    assert out["trajectory"].shape == (2, 10, 3)
    assert (out["score_logits"] is not None) == has_scores
    if has_scores:
        assert out["score_logits"].shape == (2, 4, 6)
        best = out["score_logits"][..., 5].argmax(1)
        assert torch.equal(out["trajectory"], out["proposals"][torch.arange(2), best])  # drives the best predicted PDMS


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
