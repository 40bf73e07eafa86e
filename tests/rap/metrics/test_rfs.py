"""Tests of rap.metrics.rfs: hand-computed cases, and the expected values of Waymo's own test."""

from __future__ import annotations

import numpy as np
import pytest

from rap.metrics.rfs import (
    BASE_THRESHOLDS_M,
    TRUST_REGION_TIMES_S,
    RaterFeedbackConfig,
    lat_lng_thresholds,
    rater_feedback_score,
    speed_scale,
)

T = 20  # 5 s at 4 Hz
TIMES = np.arange(1, T + 1) * 0.25
I3, I5 = 11, 19  # pose indices of 3 s and 5 s


def straight(speed: float = 10.0, y: float = 0.0) -> np.ndarray:
    """(20, 2) driving along +x at ``speed`` m/s, offset ``y`` sideways."""
    return np.column_stack([speed * TIMES, np.full(T, y)])


def score(preds, raters, scores, speed, probs=None, **kwargs):
    """RFS of one frame: preds (K, T, 2) -> (score, per-inference (K,), full output)."""
    preds = np.asarray(preds, dtype=np.float64)
    if probs is None:
        probs = np.full(len(preds), 1.0 / len(preds))
    out = rater_feedback_score(preds[None], np.asarray(probs)[None], [raters], [np.asarray(scores, dtype=np.float64)], np.array([speed]), **kwargs)
    return float(out["rater_feedback_score"][0]), out["rater_feedback_score_per_inference"][0], out


# --- Hand-computed cases -------------------------------------------------------------------

RATERS = [straight(10.0), straight(10.0, y=3.5), straight(6.0)]  # keep lane, change lane, slow down
SCORES = [10.0, 6.0, 4.0]


def test_prediction_on_best_rater_scores_its_score():
    s, per, out = score([RATERS[0]], RATERS, SCORES, speed=10.0)
    assert s == 10.0 and per.tolist() == [10.0]
    assert out["is_fully_within_trust_region"].tolist() == [[True]]


def test_far_from_every_rater_gets_the_floor():
    far = straight(10.0, y=-30.0)
    s, _, out = score([far], RATERS, SCORES, speed=10.0)
    assert s == 4.0
    assert out["is_fully_within_trust_region"].tolist() == [[False]]
    # Without the floor the decayed score is tiny.
    s0, _, _ = score([far], RATERS, SCORES, speed=10.0, config=RaterFeedbackConfig(minimum_score_outside_trust_region=0.0))
    assert 0.0 < s0 < 1e-6


def test_inside_only_a_lower_rated_trust_region_scores_that_rater():
    # 0.4 m beside the lane-change rater (score 6): inside at 3 s (0.4 < 1.0 m) and 5 s (< 1.8 m).
    # 3.1 m beside the keep-lane one (score 10): 10 * 0.1 ** (3.1 / 1.0 - 1) ~ 0.08 at 3 s and
    # 10 * 0.1 ** (3.1 / 1.8 - 1) ~ 1.9 at 5 s, both below 6.
    pred = straight(10.0, y=3.1)
    s, _, out = score([pred], RATERS, SCORES, speed=12.0)
    assert s == pytest.approx(6.0, abs=1e-12)
    inside = out["normalized_distances"][0, :, 0].max(axis=-1) <= 1.0
    assert inside.tolist() == [False, True, False]


def test_outside_at_one_horizon_decays_that_horizon_only():
    # At 12 m/s the lateral thresholds are 1.0 m (3 s) and 1.8 m (5 s).
    # Pred 1.2 m left of keep-lane (10) and 2.3 m right of lane-change (6):
    #   keep-lane: 3 s: 1.2 / 1.0 = 1.2 -> 10 * 0.1 ** 0.2 ~ 6.31;  5 s: 1.2 / 1.8 <= 1 -> 10
    #   lane-change: 6 * 0.1 ** 1.3 ~ 0.30 at 3 s, 6 * 0.1 ** (2.3 / 1.8 - 1) ~ 3.2 at 5 s.
    # Best per horizon, averaged: (6.31 + 10) / 2 ~ 8.15. Inside no region (3 s is outside),
    # so the floor applies, but the score is above it.
    pred = straight(10.0, y=1.2)
    s, _, out = score([pred], RATERS[:2], SCORES[:2], speed=12.0)
    expected = (10 * 0.1**0.2 + 10.0) / 2
    assert s == pytest.approx(expected, rel=1e-12)
    assert out["is_fully_within_trust_region"].tolist() == [[False]]


def test_speed_scaling_of_thresholds():
    # scale = clip(0.5 + 0.5 (v - 1.4) / 9.6, 0.5, 1): 0.5 up to 1.4 m/s, 1 from 11 m/s.
    np.testing.assert_allclose(speed_scale(np.array([0.0, 1.4, 6.2, 11.0, 30.0])), [0.5, 0.5, 0.75, 1.0, 1.0])
    lat, lng = lat_lng_thresholds(np.array([0.0, 6.2, 11.0]))
    np.testing.assert_allclose(lat, [[0.5, 0.9], [0.75, 1.35], [1.0, 1.8]])
    np.testing.assert_allclose(lng, [[2.0, 3.6], [3.0, 5.4], [4.0, 7.2]])
    assert TRUST_REGION_TIMES_S == (3, 5) and BASE_THRESHOLDS_M == (1.0, 1.8)

    # A 0.7 m lateral offset: inside at 11 m/s (0.7 < 1.0 and < 1.8) ...
    rater = straight(10.0)
    pred = straight(10.0, y=0.7)
    s_fast, _, _ = score([pred], [rater], [10.0], speed=11.0)
    assert s_fast == 10.0
    # ... but outside the halved 3 s region when nearly stopped: 0.7 / 0.5 = 1.4 at 3 s,
    # 0.7 / 0.9 <= 1 at 5 s -> (10 * 0.1 ** 0.4 + 10) / 2 ~ 6.99.
    s_slow, _, out = score([pred], [rater], [10.0], speed=0.0)
    assert s_slow == pytest.approx((10 * 0.1**0.4 + 10.0) / 2, rel=1e-12)
    np.testing.assert_allclose(out["normalized_distances"][0, 0, 0], [1.4, 0.7 / 0.9])


def test_longitudinal_threshold_is_four_times_the_lateral():
    rater = straight(10.0)
    ahead = rater + [3.0, 0.0]  # 3 m ahead: < 4.0 m (3 s) and < 7.2 m (5 s) at 11 m/s
    beside = rater + [0.0, 3.0]  # 3 m beside: > 1.0 m and > 1.8 m
    s, per, _ = score([ahead, beside], [rater], [9.0], speed=11.0)
    assert per[0] == 9.0 and per[1] == 4.0


def test_probability_weighting_of_the_aggregate():
    preds = [RATERS[0], straight(10.0, y=-30.0)]  # 10 and 4
    s, per, _ = score(preds, RATERS, SCORES, speed=10.0, probs=[0.25, 0.75])
    assert per.tolist() == [10.0, 4.0]
    assert s == pytest.approx(0.25 * 10.0 + 0.75 * 4.0)


def test_standing_still_uses_the_ego_heading_and_carries_directions_forward():
    # Both raters standing still: direction falls back to +x.
    zeros = np.zeros((T, 2))
    s, _, _ = score([zeros + [0.0, 0.3]], [zeros], [10.0], speed=0.0)  # 0.3 m lateral < 0.5 m
    assert s == 10.0
    # A rater that drives 2 s along +y (left) and stops: at 3 s and 5 s its direction is still +y,
    # so an offset along y is longitudinal (tolerant) and along x lateral (strict).
    turn = np.column_stack([np.zeros(T), np.minimum(TIMES, 2.0) * 5.0])
    along_y = turn + [0.0, 3.0]
    along_x = turn + [3.0, 0.0]
    _, per, out = score([along_y, along_x], [turn], [8.0], speed=11.0)
    assert per.tolist() == [8.0, 4.0]
    np.testing.assert_allclose(out["normalized_distances"][0, 0, 0], [3.0 / 4.0, 3.0 / 7.2])


def test_only_the_first_three_raters_count_and_short_raters_are_padded():
    pred = straight(10.0, y=-20.0)
    raters = RATERS + [pred]  # a 4th rater equal to the prediction, ignored
    s, _, out = score([pred], raters, SCORES + [10.0], speed=10.0)
    assert s == 4.0 and out["rater_trajectories"].shape == (1, 3, T, 2)
    # Fewer than three are padded by repeating the last rater (and score).
    _, _, out = score([pred], [RATERS[0]], [7.0], speed=10.0)
    assert out["rater_scores"].tolist() == [[7.0, 7.0, 7.0]]
    # A rater trajectory shorter than 5 s is held at its last pose.
    short = RATERS[0][:12]
    _, _, out = score([pred], [short], [7.0], speed=10.0)
    np.testing.assert_array_equal(out["rater_trajectories"][0, 0, 12:], np.repeat(short[-1:], 8, axis=0))
    held = np.concatenate([short, np.repeat(short[-1:], 8, axis=0)])
    s, _, _ = score([held], [short], [7.0], speed=10.0)
    assert s == 7.0


def test_batch_equals_frame_by_frame():
    rng = np.random.default_rng(0)
    preds = np.stack([np.stack([straight(10.0, y) for y in rng.uniform(-4, 4, 3)]) for _ in range(4)])
    probs = rng.dirichlet(np.ones(3), 4)
    raters = [RATERS, RATERS[:2], [RATERS[2]], RATERS]
    scores = [np.array(SCORES), np.array(SCORES[:2]), np.array([5.0]), np.array([1.0, 2.0, 3.0])]
    speed = np.array([0.0, 5.0, 10.0, 20.0])
    out = rater_feedback_score(preds, probs, raters, scores, speed)
    assert out["rater_feedback_score"].shape == (4,) and out["rater_feedback_score_per_inference"].shape == (4, 3)
    for b in range(4):
        one = rater_feedback_score(preds[b : b + 1], probs[b : b + 1], raters[b : b + 1], scores[b : b + 1], speed[b : b + 1])
        np.testing.assert_array_equal(one["rater_feedback_score_per_inference"][0], out["rater_feedback_score_per_inference"][b])
        assert one["rater_feedback_score"][0] == pytest.approx(out["rater_feedback_score"][b], rel=1e-15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(preds=np.zeros((1, 1, 16, 2))), "16 poses"),
        (dict(probs=np.array([[0.7]])), "sum to 1"),
        (dict(probs=np.array([[-0.5, 1.5]]), preds=np.zeros((1, 2, T, 2))), "non-negative"),
        (dict(raters=[[]], scores=[np.array([])]), "no rater trajectories"),
        (dict(scores=[np.array([11.0])]), r"\[0, 10\]"),
        (dict(raters=[[np.zeros((T, 3))]]), r"shape \(T_i >= 1, 2\)"),
        (dict(speed=np.array([np.nan])), "non-finite"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    args = dict(preds=np.zeros((1, 1, T, 2)), probs=np.array([[1.0]]), raters=[[np.zeros((T, 2))]], scores=[np.array([10.0])], speed=np.array([1.0]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rater_feedback_score(args["preds"], args["probs"], args["raters"], args["scores"], args["speed"])


def test_horizon_must_reach_five_seconds():
    with pytest.raises(ValueError, match="cover 5 s"):
        rater_feedback_score(np.zeros((1, 1, 16, 2)), np.ones((1, 1)), [[np.zeros((16, 2))]], [np.array([1.0])], np.zeros(1), length_seconds=4)


# --- Waymo's expected values -----------------------------------------------------------------
# Three of the four real samples (indices 654, 665, 1271: rater trajectories of 6, 4 and 5 poses,
# and a frame with 2 raters) and the expected scores of three models, from TEST_DATA in
# waymo-research/waymo-open-dataset src/waymo_open_dataset/metrics/python/rater_feedback_utils_test.py
# (commit e378e5b, Apache-2.0). Sampled at 1 Hz (frequency=1), so 5 poses per trajectory.

WAYMO_SAMPLES = [
    dict(
        speed=7.716310501098633,
        raters=[
            [[5.560453799210904, -0.004478094274702471], [8.225178876764971, 0.06945586454486374], [8.981938003877872, 0.13376779402065608], [9.019658779669157, 0.17555393283325316], [9.225985951119242, 0.23028404494718302], [1000, 1000]],
            [[5.916309994790822, -0.026716178826546866], [9.30287526924758, -0.12584874734611162], [11.293785754835312, -0.27650364630528657], [12.9184486854341, -0.48288228974388403], [14.58230516729327, -0.7568973709328475]],
            [[6.141386389118566, -0.020121756825716375], [10.561775492192169, -0.09057494033771718], [14.474645343934071, -0.2161768449137753], [18.882845193998037, -0.35637872008717864], [24.11468565241205, -0.3829896472898042]],
        ],
        scores=[10, 8, 6],
        models=[
            ([[6.171509239622196, -0.009397453076275042], [8.000396968767177, 0.015122155172520024], [8.127134351157906, 0.013057147475194597], [8.127134351157906, 0.013057147475194597], [8.127134351157906, 0.013057147475194597]], 10.0),
            ([[5.99, 0.04], [10.71, 0.09], [15.76, 0.16], [21.19, 0.29], [26.88, 0.46]], 6.0),
            ([[6.49681282043457, -0.08341606706380844], [11.86185359954834, -0.7157369256019592], [16.411989212036133, -2.882720470428467], [19.67278480529785, -7.174043655395508], [21.36919403076172, -13.386308670043945]], 0.0857031037460114),
        ],
    ),
    dict(
        speed=2.1179442405700684,
        raters=[
            [[1.7595119940760924, -0.14755874950424186], [2.7480205686624686, -0.32863112759878277], [3.3625390147151393, -0.39949733974754054], [4.182183364439197, -0.337427855545684]],
            [[2.59763517447891, -0.6775495835981928], [5.754005458843949, -4.707164778688821], [6.891353861038624, -12.898902197828647], [7.305693692876957, -24.033863794415083], [8.146774067708066, -37.432607402115536]],
            [[2.213074454070238, -0.38524633570341393], [4.294703086304935, -1.9280354641468875], [5.370505334488826, -4.004647880774428], [5.742787436107619, -5.969209589298771], [5.9755163585334685, -7.5328635370988195]],
        ],
        scores=[6, 10, 9],
        models=[
            ([[2.843017676842237, -0.37735536030049843], [6.38129387739059, 1.286901696548739], [8.794416704687592, 7.077898292320242], [9.18251237084678, 16.29023700124344], [8.504202822321759, 27.60476714770084]], 9.975806567307454e-08),
            ([[3.01, -1.84], [5.85, -5.91], [8.08, -11.99], [10.27, -19.74], [12.73, -28.7]], 0.1888432558844814),
            ([[2.8002960681915283, -1.4907801151275635], [5.121310234069824, -5.308871269226074], [6.296884059906006, -11.264496803283691], [7.084940433502197, -19.01148223876953], [7.9615983963012695, -28.370180130004883]], 5.228241007761699),
        ],
    ),
    dict(
        speed=6.091951370239258,
        raters=[
            [[6.116130709045365, -0.0064596553261253575], [11.283734185302137, 0.06930987395980992], [14.445738365972602, 0.22190593950062976], [15.863924647712793, 0.3513780388188934], [16.220629990528778, 0.3979054272808753]],
            [[6.3023491185483635, 0.027379927538731863], [13.151817455762284, 0.5152881368030648], [20.08838570878538, 2.2066481916076555], [26.655734316468852, 5.669334168663681], [32.556009257534924, 10.914624712820569]],
        ],
        scores=[8, 10],
        models=[
            ([[6.315426478653762, 0.043856417986262386], [12.975259841223988, 0.42393014905155724], [19.67305036031098, 1.8076265692643574], [26.044775930205105, 4.679681408367287], [31.774181598299265, 8.93842790671124]], 10.0),
            ([[6.22, 0.06], [12.87, 0.42], [19.53, 1.58], [25.81, 3.93], [31.42, 7.51]], 7.307854143879492),
            ([[6.233642578125, 0.12418137490749359], [12.584113121032715, 0.8310785293579102], [18.869394302368164, 2.611462354660034], [25.005125045776367, 5.8199005126953125], [31.0169620513916, 10.563572883605957]], 10.0),
        ],
    ),
]


@pytest.mark.parametrize("floor", [0.0, 4.0])
@pytest.mark.parametrize("model", [0, 1, 2])
def test_matches_waymo_expected_values(model, floor):
    preds = np.array([[s["models"][model][0]] for s in WAYMO_SAMPLES], dtype=np.float64)  # (3, 1, 5, 2)
    raters = [[np.array(r, dtype=np.float64) for r in s["raters"]] for s in WAYMO_SAMPLES]
    scores = [np.array(s["scores"], dtype=np.float64) for s in WAYMO_SAMPLES]
    speed = np.array([s["speed"] for s in WAYMO_SAMPLES])
    out = rater_feedback_score(
        preds, np.ones((3, 1)), raters, scores, speed, frequency=1, length_seconds=5,
        config=RaterFeedbackConfig(minimum_score_outside_trust_region=floor),
    )  # fmt: skip
    # As in Waymo's test: no sample inside a trust region scores below 4, so clipping the
    # expected (floor-free) values gives the floored ones.
    expected = np.maximum([s["models"][model][1] for s in WAYMO_SAMPLES], floor)
    np.testing.assert_array_almost_equal(out["rater_feedback_score"], expected, decimal=14)


def test_waymo_grid_shape_of_the_decay():
    """The structure Waymo's grid test checks: flat inside, sqrt(decay) one half-width out,
    decay one full width out, the same for every speed once offsets are in threshold units."""
    rater = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0]])
    speeds = np.array([0.0, 1.4, 6.2, 11.0, 22.0])
    lat, lng = lat_lng_thresholds(speeds)
    shifts = np.linspace(-2.0, 2.0, 9)
    decay = 0.1
    for i, v in enumerate(speeds):
        grid = np.empty((9, 9))
        for a, dlng in enumerate(shifts):
            for b, dlat in enumerate(shifts):
                pred = rater.copy()
                pred[[2, 4], 0] += dlng * lng[i]
                pred[[2, 4], 1] -= dlat * lat[i]
                s, _, _ = score([pred], [rater], [1.0], v, frequency=1, length_seconds=5, config=RaterFeedbackConfig(minimum_score_outside_trust_region=0.0))
                grid[a, b] = s
        assert np.all(grid[2:7, 2:7] == 1.0)
        np.testing.assert_allclose(grid[[0, 8], :], decay)
        np.testing.assert_allclose(grid[:, [0, 8]], decay)
        np.testing.assert_allclose(grid[1, 1:-1], np.sqrt(decay))
        np.testing.assert_allclose(grid[1:-1, 7], np.sqrt(decay))
