"""data.max_samples: a fixed, nested subset of one kind's training samples (the data-scaling curve)."""

from __future__ import annotations

from planners.data import TrainingIndex

from .conftest import tiny_config


def _keys(index: TrainingIndex, kind: str) -> set[str]:
    return {s.key for s in index.train if s.kind == kind}


def test_max_samples_keeps_a_nested_subset_of_one_kind_and_leaves_the_rest(tiny_dataset):
    full = TrainingIndex(tiny_config(tiny_dataset))
    total = full.counts["train"]["cross_agent"]
    assert total > 6
    three = TrainingIndex(tiny_config(tiny_dataset, "data.max_samples.cross_agent=3"))
    six = TrainingIndex(tiny_config(tiny_dataset, "data.max_samples.cross_agent=6"))
    assert three.counts["train"]["cross_agent"] == 3 and six.counts["train"]["cross_agent"] == 6
    assert _keys(three, "cross_agent") < _keys(six, "cross_agent") < _keys(full, "cross_agent")
    for kind in ("ego", "recovery"):
        assert _keys(three, kind) == _keys(full, kind)
    assert three.val == full.val  # validation is not limited
    assert _keys(TrainingIndex(tiny_config(tiny_dataset, "data.max_samples.cross_agent=3")), "cross_agent") == _keys(three, "cross_agent")
    none = TrainingIndex(tiny_config(tiny_dataset, "data.max_samples.cross_agent=0"))
    assert "cross_agent" not in none.counts["train"]
    assert none.probabilities.sum() == 1.0 or abs(none.probabilities.sum() - 1.0) < 1e-12
    big = TrainingIndex(tiny_config(tiny_dataset, f"data.max_samples.cross_agent={total + 100}"))
    assert big.counts == full.counts
