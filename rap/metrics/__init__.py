"""Driving metrics. ``pdms``: NAVSIM PDM Score v1 and Extended PDM Score v2 on plain inputs
(:mod:`rap.metrics.pdm_inputs`), vectorized over proposals; ``comfort``: comfort and extended
comfort; ``pdm_areas`` / ``pdm_collisions``: the geometric sub-metrics.
"""

from rap.metrics.pdm_inputs import AGENT_KINDS, EgoState, ObjectKind, ObjectTracks, PreviousPlan, ScoringScene
from rap.metrics.pdms import (
    PDMResult,
    PDMScorerConfig,
    PreparedScene,
    aggregate_v1,
    aggregate_v2,
    prepare_scene,
    score_scene,
    score_scenes,
    score_states,
)

__all__ = [
    "AGENT_KINDS",
    "EgoState",
    "ObjectKind",
    "ObjectTracks",
    "PreviousPlan",
    "ScoringScene",
    "PDMResult",
    "PDMScorerConfig",
    "PreparedScene",
    "aggregate_v1",
    "aggregate_v2",
    "prepare_scene",
    "score_scene",
    "score_scenes",
    "score_states",
]
