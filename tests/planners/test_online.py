"""Online rasterization (``data.online=true``): the samples `rap generate` would write, rendered
by the loader; training on them equals training on the shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.data import DataError, TrainingIndex
from planners.online import OnlineIndex
from planners.train import train
from rap.config import ConfigError

from .conftest import tiny_config

# The generate config of the tiny_dataset fixture, as data.generate overrides.
GENERATE = [
    "data.generate.size=[64,32]", "data.generate.step_stride=20", "data.generate.recovery.num_samples=1",
    "data.generate.recovery.on_cross_agents=false", "data.generate.cross_agent.max_agents=2",
]  # fmt: skip


def online_config(dataset, *overrides: str):
    return tiny_config(dataset, "data.datasets=[]", "data.online=true", "data.sources=[synthetic:2]", *GENERATE, *overrides)


@pytest.fixture(scope="module")
def online_index(tiny_dataset) -> OnlineIndex:
    return OnlineIndex(online_config(tiny_dataset, "loss.scorer.cross_agent=1.0"))  # every kind needs its scoring context


def test_online_samples_equal_what_rap_generate_wrote(tiny_dataset, online_index):
    shards = TrainingIndex(tiny_config(tiny_dataset))
    # The same samples, in the same order, split the same way.
    assert [s.key for s in online_index.train] == [s.key for s in shards.train]
    assert [s.key for s in online_index.val] == [s.key for s in shards.val]
    assert np.array_equal(online_index.probabilities, shards.probabilities)
    assert online_index.sampling == shards.sampling and online_index.source_size == shards.source_size
    assert online_index.camera_records == shards.camera_records and online_index.rig == shards.rig
    picked = {}
    for ref in online_index.train + online_index.val:
        picked.setdefault(ref.kind, []).append(ref)
    refs = [r for kind in sorted(picked) for r in picked[kind][:2]]
    assert {r.kind for r in refs} == {"ego", "recovery", "cross_agent"}
    by_key = {s.key: s for s in shards.train + shards.val}
    for ref in reversed(refs):  # out of step order, as a shuffled loader asks
        online, written = online_index.record(ref), shards.record(by_key[ref.key])
        assert online["meta"] == written["meta"], ref.key
        assert online["images"].keys() == written["images"].keys()
        for cam in online["images"]:
            assert np.array_equal(online["images"][cam], written["images"][cam]), (ref.key, cam)
        for name in ("target", "history", "viewer_pose"):
            assert np.array_equal(online[name], written[name]), (ref.key, name)
        assert written["scoring"] is not None and online["scoring"] == written["scoring"], ref.key


def test_online_leaves_out_the_scoring_contexts_no_loss_reads(tiny_dataset):
    index = OnlineIndex(online_config(tiny_dataset))  # tiny: no scorer loss on cross-agent samples
    cross = next(r for r in index.train if r.kind == "cross_agent")
    ego = next(r for r in index.train if r.kind == "ego")
    assert index.record(cross)["scoring"] is None and index.record(ego)["scoring"] is not None
    baseline = OnlineIndex(online_config(tiny_dataset, "model.type=regression"))
    assert baseline.record(next(r for r in baseline.train if r.kind == "ego"))["scoring"] is None


def test_online_training_gives_the_weights_of_training_on_the_shards(tiny_dataset, tmp_path):
    on_shards = train(tiny_config(tiny_dataset), tmp_path / "shards")
    online = train(online_config(tiny_dataset, "data.num_workers=1"), tmp_path / "online")  # a spawned worker renders
    assert online["final_loss"] == on_shards["final_loss"]
    a = torch.load(tmp_path / "shards" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "online" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_online_bad_input_is_a_clear_error(tiny_dataset):
    with pytest.raises(DataError, match=r"data.sources: no scene source"):
        OnlineIndex(tiny_config(tiny_dataset, "data.datasets=[]", "data.online=true"))
    with pytest.raises(DataError, match=r"data.sources\[0\]=nope:1: .*"):
        OnlineIndex(tiny_config(tiny_dataset, "data.datasets=[]", "data.online=true", "data.sources=[nope:1]"))
    with pytest.raises(DataError, match=r"data.cameras names \['CAM_B0'\], which data.generate.rig=front3 does not have"):
        OnlineIndex(online_config(tiny_dataset, "data.cameras=[CAM_F0,CAM_B0]"))
    with pytest.raises(ConfigError, match=r"data.datasets \(shard folders\) must be empty"):
        tiny_config(tiny_dataset, "data.online=true", "data.sources=[synthetic:1]")
    with pytest.raises(ConfigError, match=r"data.sources is read only with data.online=true"):
        tiny_config(tiny_dataset, "data.sources=[synthetic:1]")
