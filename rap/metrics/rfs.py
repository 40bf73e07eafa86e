"""Rater Feedback Score (RFS), the metric of the Waymo Open Dataset vision-based end-to-end
driving challenge (WOD-E2E), re-implemented in vectorised numpy.

Reference: ``get_rater_feedback_score`` in waymo-research/waymo-open-dataset,
``src/waymo_open_dataset/metrics/python/rater_feedback_utils.py`` (commit e378e5b, 2025), and its
test ``rater_feedback_utils_test.py``; challenge page https://waymo.com/open/challenges/2025/e2e-driving/.
This module follows that definition step for step (same constants, same padding rules, same
comparisons) and returns the same numbers to float rounding; ``tests/rap/metrics/test_rfs.py``
checks it against the reference's own expected values.

Definition. For every frame ``b`` there are ``P`` rater trajectories ``r_p`` (ego frame, 4 Hz,
starting 0.25 s after now) with scores ``s_p`` in [0, 10], and ``K`` predicted trajectories
``x_k`` with probabilities ``w_k``.

1. Rater trajectories are brought to ``T = frequency * length_seconds`` poses: longer ones are
   cut, shorter ones are padded by repeating their last pose. Only the first
   :attr:`RaterFeedbackConfig.max_raters` (3) raters count; fewer are padded by repeating the
   last rater (which cannot change a maximum).
2. Each rater pose gets a longitudinal direction: its displacement from the previous pose (the
   first from the origin, where the ego is). A zero displacement (standing still) inherits the
   direction of the previous step, and the first step falls back to +x (the ego heading). The
   lateral direction is that rotated 90 degrees counter-clockwise.
3. At the two horizons ``t_h`` in :data:`TRUST_REGION_TIMES_S` = (3 s, 5 s) (pose index
   ``t_h * frequency - 1``), the offset ``x_k - r_p`` is split into ``|longitudinal|`` and
   ``|lateral|`` distances and normalised by the thresholds::

       scale(v)  = clip(0.5 + 0.5 * (v - 1.4) / (11 - 1.4), 0.5, 1.0)     v = initial speed [m/s]
       lat_h     = scale(v) * BASE_THRESHOLDS_M[h] * lat_multiplier     (1.0 m, 1.8 m) * 1.0
       lng_h     = scale(v) * BASE_THRESHOLDS_M[h] * lng_multiplier     (1.0 m, 1.8 m) * 4.0
       d[p,k,h]  = max(|lng offset| / lng_h, |lat offset| / lat_h)

   ``BASE_THRESHOLDS_M`` is indexed by *horizon* (1.0 m at 3 s, 1.8 m at 5 s); the multipliers
   (1.0, 4.0) make the lateral and longitudinal thresholds. At v >= 11 m/s the trust region is
   +-1.0 m lateral x +-4.0 m longitudinal at 3 s and +-1.8 m x +-7.2 m at 5 s; at v <= 1.4 m/s it
   is half that.
4. Prediction ``k`` is *inside the trust region* of rater ``p`` when ``d[p,k,h] <= 1`` at both
   horizons. Per horizon, the rater's score decays outside its region::

       score[p,k,h] = s_p * decay_factor ** max(d[p,k,h] - 1, 0)        decay_factor = 0.1

   and the prediction's score is the best rater per horizon, averaged over the two horizons:
   ``score[k] = mean_h max_p score[p,k,h]``.
5. A prediction inside no rater's trust region gets at least the floor:
   ``score[k] = max(score[k], 4)``. (Inside some region the score is left as is.)
6. The frame's RFS is the probability-weighted sum ``sum_k w_k * score[k]``.

So a prediction inside the region of a rater scores exactly that rater's score (or more, if a
better rater's decayed score is higher at a horizon), and a prediction far from every rater
scores 4.

Differences from the reference, none of which changes a score on valid input: inputs are
checked (probabilities non-negative and summing to 1, rater scores in [0, 10], finite values, at
least one rater per frame) where the reference computes on regardless or fails with an
IndexError; the result also holds ``rater_feedback_score_per_inference`` and the trust-region
quantities (normalised distances, thresholds) instead of the reference's optional
visualisation outputs; the parameters travel in a :class:`RaterFeedbackConfig`.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

import numpy as np

__all__ = [
    "TRUST_REGION_TIMES_S",
    "BASE_THRESHOLDS_M",
    "RaterFeedbackConfig",
    "speed_scale",
    "lat_lng_thresholds",
    "rater_feedback_score",
]

# Horizons at which the trust regions are checked (reference: _THRESHOLD_TIME_SECONDS = [3, 5]).
TRUST_REGION_TIMES_S: tuple[int, int] = (3, 5)  # Units: s
# Base threshold per horizon, before the lateral / longitudinal multipliers and the speed scale
# (reference: _BASE_THRESHOLDS = [1.0, 1.8]).
BASE_THRESHOLDS_M: tuple[float, float] = (1.0, 1.8)  # Units: m, at 3 s and 5 s

# Speed scaling of the thresholds (reference: get_lat_lng_thresholds,
# ``np.clip(0.5 + 0.5 * (init_speed - 1.4) / (11 - 1.4), 0.5, 1.0)``).
_SCALE_MIN = 0.5  # scale at or below _SPEED_LOW
_SCALE_MAX = 1.0  # scale at or above _SPEED_HIGH
_SPEED_LOW = 1.4  # Units: m/s
_SPEED_HIGH = 11.0  # Units: m/s

# Rater scores are "between 0 and 10, both inclusive" (reference docstring; also the
# ``preference_score`` comment in end_to_end_driving_data.proto).
_SCORE_RANGE = (0.0, 10.0)
# How far the prediction probabilities may sum from 1 (the reference does not check).
_PROB_SUM_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class RaterFeedbackConfig:
    """The metric's parameters; the defaults are the challenge's (reference defaults).

    Attributes:
        lat_lng_threshold_multipliers: (lateral, longitudinal) multipliers of
            :data:`BASE_THRESHOLDS_M` (reference ``lat_lng_threshold_multipliers=(1.0, 4.0)``).
        decay_factor: score factor per threshold-width beyond the trust region
            (reference ``decay_factor=0.1``).
        minimum_score_outside_trust_region: floor for predictions inside no trust region
            (reference ``_MINIMUM_SCORE_OUTSIDE_TRUST_REGION = 4.0``).
        max_raters: rater trajectories used per frame, the first ones in order; fewer are padded
            by repeating the last (reference ``default_num_of_rater_specified_trajectories=3``).
    """

    lat_lng_threshold_multipliers: tuple[float, float] = (1.0, 4.0)
    decay_factor: float = 0.1
    minimum_score_outside_trust_region: float = 4.0
    max_raters: int = 3

    def __post_init__(self) -> None:
        lat, lng = self.lat_lng_threshold_multipliers
        if not (lat > 0 and lng > 0):
            raise ValueError(f"RaterFeedbackConfig.lat_lng_threshold_multipliers must be positive, got {self.lat_lng_threshold_multipliers}")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"RaterFeedbackConfig.decay_factor must be in (0, 1], got {self.decay_factor}")
        if self.max_raters < 1:
            raise ValueError(f"RaterFeedbackConfig.max_raters must be >= 1, got {self.max_raters}")


def speed_scale(init_speed: np.ndarray) -> np.ndarray:
    """Threshold scale for the initial speed: 0.5 up to 1.4 m/s, linear to 1.0 at 11 m/s.

    Args:
        init_speed: (...,) ego speed at the current time [m/s].

    Returns:
        (...,) float64 scale in [0.5, 1.0].
    """
    v = np.asarray(init_speed, dtype=np.float64)
    # Same operation order as the reference, so results match bit for bit.
    return np.clip(_SCALE_MIN + (_SCALE_MAX - _SCALE_MIN) * (v - _SPEED_LOW) / (_SPEED_HIGH - _SPEED_LOW), _SCALE_MIN, _SCALE_MAX)


def lat_lng_thresholds(
    init_speed: np.ndarray, lat_lng_threshold_multipliers: tuple[float, float] = (1.0, 4.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Trust-region half-widths at the horizons of :data:`TRUST_REGION_TIMES_S`.

    Args:
        init_speed: (B,) initial speeds [m/s].
        lat_lng_threshold_multipliers: (lateral, longitudinal) multipliers.

    Returns:
        ``(lat, lng)``, each (B, 2) float64 [m]; column h is the horizon ``TRUST_REGION_TIMES_S[h]``.
    """
    lat_mult, lng_mult = lat_lng_threshold_multipliers
    base = np.asarray(BASE_THRESHOLDS_M, dtype=np.float64)
    scale = speed_scale(init_speed)[..., None]  # Shape: (B, 1)
    return scale * (base * lat_mult), scale * (base * lng_mult)


def _pad_raters(
    rater_trajs: Sequence[Sequence[np.ndarray]],
    rater_scores: Sequence[np.ndarray],
    num_poses: int,
    max_raters: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rater trajectories as (B, P, T, 2) and scores as (B, P), cut or padded as the reference does."""
    if len(rater_trajs) != len(rater_scores):
        raise ValueError(f"rater_trajs has {len(rater_trajs)} frames but rater_scores has {len(rater_scores)}")
    batch = len(rater_trajs)
    trajs = np.empty((batch, max_raters, num_poses, 2), dtype=np.float64)
    scores = np.empty((batch, max_raters), dtype=np.float64)
    for b, (frame_trajs, frame_scores) in enumerate(zip(rater_trajs, rater_scores)):
        frame_scores = np.asarray(frame_scores, dtype=np.float64).reshape(-1)
        if len(frame_trajs) != frame_scores.shape[0]:
            raise ValueError(f"frame {b}: {len(frame_trajs)} rater trajectories but {frame_scores.shape[0]} rater scores")
        if len(frame_trajs) == 0:
            raise ValueError(f"frame {b}: no rater trajectories (the score is undefined)")
        if not np.all((frame_scores >= _SCORE_RANGE[0]) & (frame_scores <= _SCORE_RANGE[1])):
            raise ValueError(f"frame {b}: rater scores must be in [0, 10], got {frame_scores.tolist()}")
        used = min(len(frame_trajs), max_raters)
        for p in range(used):
            traj = np.asarray(frame_trajs[p], dtype=np.float64)
            if traj.ndim != 2 or traj.shape[1] != 2 or traj.shape[0] == 0:
                raise ValueError(f"frame {b}: rater trajectory {p} must have shape (T_i >= 1, 2), got {traj.shape}")
            if not np.all(np.isfinite(traj)):
                raise ValueError(f"frame {b}: rater trajectory {p} has non-finite values")
            n = min(traj.shape[0], num_poses)
            trajs[b, p, :n] = traj[:n]
            trajs[b, p, n:] = traj[n - 1]  # Pad by repeating the last pose.
        trajs[b, used:] = trajs[b, used - 1]  # Pad by repeating the last rater.
        scores[b, :used] = frame_scores[:used]
        scores[b, used:] = frame_scores[used - 1]
    return trajs, scores


def _longitudinal_directions(rater_trajs: np.ndarray) -> np.ndarray:
    """Unit direction of travel at every rater pose.

    Args:
        rater_trajs: (..., T, 2) positions, ego frame, the first one step after the origin [m].

    Returns:
        (..., T, 2) float64 unit vectors: the displacement from the previous pose (the origin
        for the first); a zero displacement takes the last non-zero one before it, or +x.
    """
    padded = np.concatenate([np.zeros_like(rater_trajs[..., :1, :]), rater_trajs], axis=-2)
    disp = np.diff(padded, axis=-2)  # Shape: (..., T, 2)
    moving = np.linalg.norm(disp, axis=-1) != 0  # Shape: (..., T)
    steps = np.arange(disp.shape[-2])
    # Forward fill: index of the last moving step at or before each step (-1 if none yet).
    last = np.maximum.accumulate(np.where(moving, steps, -1), axis=-1)
    filled = np.take_along_axis(disp, np.maximum(last, 0)[..., None], axis=-2)
    filled = np.where((last >= 0)[..., None], filled, np.array([1.0, 0.0]))
    return filled / np.linalg.norm(filled, axis=-1, keepdims=True)


def _positive_int(value, name: str, unit: str) -> int:
    """``value`` as an int >= 1 (integral floats accepted), or a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive integer [{unit}], got {value!r}")
    number = float(value)
    if not (np.isfinite(number) and number.is_integer() and number >= 1):
        raise ValueError(f"{name} must be a positive integer [{unit}], got {value!r}")
    return int(number)


def _float_array(value, name: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of numbers: {exc}") from None


def rater_feedback_score(
    pred_trajs: np.ndarray,
    pred_probs: np.ndarray,
    rater_trajs: Sequence[Sequence[np.ndarray]],
    rater_scores: Sequence[np.ndarray],
    init_speed: np.ndarray,
    frequency: int = 4,
    length_seconds: int = 5,
    *,
    config: RaterFeedbackConfig | None = None,
) -> dict[str, np.ndarray]:
    """WOD-E2E Rater Feedback Score of predicted trajectories (see the module docstring).

    Notation: B frames, K predictions per frame, P = ``config.max_raters`` raters, T poses.

    Args:
        pred_trajs: (B, K, T, 2) predicted (x, y) [m] in the ego frame at the current time
            (x forward, y left), at ``frequency`` Hz starting one step after now;
            T must equal ``frequency * length_seconds``.
        pred_probs: (B, K) probabilities of the predictions; non-negative, each row summing to
            1 (within 1e-3).
        rater_trajs: per frame, a list of (T_i, 2) rater trajectories [m] (same frame and
            sampling as the predictions; T_i may differ from T).
        rater_scores: per frame, (R,) scores in [0, 10] of those trajectories.
        init_speed: (B,) ego speed at the current time [m/s].
        frequency: pose rate [Hz] (WOD-E2E: 4).
        length_seconds: horizon [s] (WOD-E2E: 5); must reach the 5 s trust region.
        config: the metric's parameters; None means the challenge defaults.

    Returns:
        A dict of float64 / bool arrays:

        - ``rater_feedback_score``: (B,) probability-weighted score per frame.
        - ``rater_feedback_score_per_inference``: (B, K) score of each prediction.
        - ``is_fully_within_trust_region``: (B, K) bool, inside some rater's trust region at
          both horizons.
        - ``normalized_distances``: (B, P, K, 2) distance to each rater at 3 s and 5 s in
          threshold units (<= 1 inside).
        - ``lat_thresholds``, ``lng_thresholds``: (B, 2) trust-region half-widths [m].
        - ``rater_trajectories``: (B, P, T, 2) the rater trajectories after cutting / padding.
        - ``rater_scores``: (B, P) their scores.

    Raises:
        ValueError: naming the argument: ``frequency`` / ``length_seconds`` not positive
            integers, a ``config`` that is not a :class:`RaterFeedbackConfig`, shapes (also
            ``rater_trajs`` / ``rater_scores`` with another number of frames than
            ``pred_trajs``), non-finite values, probabilities or scores out of range, a frame
            without raters, or a horizon shorter than 5 s.
    """
    if config is not None and not isinstance(config, RaterFeedbackConfig):
        raise ValueError(f"config must be a RaterFeedbackConfig or None, got {type(config).__name__}")
    cfg = config if config is not None else RaterFeedbackConfig()
    frequency = _positive_int(frequency, "frequency", "Hz")
    length_seconds = _positive_int(length_seconds, "length_seconds", "s")
    pred = _float_array(pred_trajs, "pred_trajs")
    probs = _float_array(pred_probs, "pred_probs")
    speed = _float_array(init_speed, "init_speed")
    num_poses = frequency * length_seconds
    if pred.ndim != 4 or pred.shape[-1] != 2:
        raise ValueError(f"pred_trajs must have shape (B, K, T, 2), got {pred.shape}")
    batch, num_preds = pred.shape[:2]
    if pred.shape[2] != num_poses:
        raise ValueError(f"pred_trajs has {pred.shape[2]} poses; frequency * length_seconds = {frequency} * {length_seconds} = {num_poses}")
    horizon_index = np.asarray(TRUST_REGION_TIMES_S) * int(frequency) - 1
    if num_poses <= horizon_index.max():
        raise ValueError(f"trajectories must cover {max(TRUST_REGION_TIMES_S)} s ({horizon_index.max() + 1} poses at {frequency} Hz), got {num_poses}")
    if probs.shape != (batch, num_preds):
        raise ValueError(f"pred_probs must have shape {(batch, num_preds)}, got {probs.shape}")
    if speed.shape != (batch,):
        raise ValueError(f"init_speed must have shape {(batch,)}, got {speed.shape}")
    for name, frames in (("rater_trajs", rater_trajs), ("rater_scores", rater_scores)):
        try:
            count = len(frames)
        except TypeError:
            raise ValueError(f"{name} must be a sequence with one entry per frame, got {type(frames).__name__}") from None
        if count != batch:
            raise ValueError(f"{name} has {count} frames but pred_trajs has {batch}")
    for name, arr in (("pred_trajs", pred), ("pred_probs", probs), ("init_speed", speed)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} has non-finite values")
    if np.any(probs < 0) or np.any(np.abs(probs.sum(axis=-1) - 1.0) > _PROB_SUM_TOLERANCE):
        raise ValueError(f"pred_probs must be non-negative and sum to 1 per frame, got row sums {probs.sum(axis=-1).tolist()}")

    raters, scores = _pad_raters(rater_trajs, rater_scores, num_poses, cfg.max_raters)

    # Directions at the two horizons only. Shape: (B, P, 2, 2).
    lng_dir = _longitudinal_directions(raters)[..., horizon_index, :]
    lat_dir = np.stack([-lng_dir[..., 1], lng_dir[..., 0]], axis=-1)
    # Offsets prediction - rater at the horizons. Shape: (B, P, K, 2 horizons, 2 xy).
    offsets = pred[:, None, :, horizon_index, :] - raters[:, :, None, horizon_index, :]
    lng_dist = np.abs(np.sum(lng_dir[:, :, None] * offsets, axis=-1))  # Shape: (B, P, K, 2)
    lat_dist = np.abs(np.sum(lat_dir[:, :, None] * offsets, axis=-1))  # Shape: (B, P, K, 2)

    lat_thr, lng_thr = lat_lng_thresholds(speed, cfg.lat_lng_threshold_multipliers)  # (B, 2) each
    normalized = np.maximum(lng_dist / lng_thr[:, None, None, :], lat_dist / lat_thr[:, None, None, :])

    inside = np.any(np.all(normalized <= 1.0, axis=-1), axis=1)  # Shape: (B, K)
    decay = cfg.decay_factor ** np.maximum(normalized - 1.0, 0.0)
    pairwise = scores[:, :, None, None] * decay  # Shape: (B, P, K, 2)
    per_inference = np.mean(np.max(pairwise, axis=1), axis=-1)  # Shape: (B, K)
    per_inference = np.where(inside, per_inference, np.maximum(per_inference, cfg.minimum_score_outside_trust_region))
    return {
        "rater_feedback_score": np.sum(per_inference * probs, axis=-1),
        "rater_feedback_score_per_inference": per_inference,
        "is_fully_within_trust_region": inside,
        "normalized_distances": normalized,
        "lat_thresholds": lat_thr,
        "lng_thresholds": lng_thr,
        "rater_trajectories": raters,
        "rater_scores": scores,
    }
