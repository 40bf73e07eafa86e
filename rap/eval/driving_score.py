"""Bench2Drive's judgement of closed-loop routes, as pure functions (CARLA leaderboard 2.0 semantics
as Bench2Drive runs them).

* Per route (:func:`route_record`): route completion RC [%], the infraction penalty (the product
  of :data:`PENALTY_VALUES` per infraction; ``outside_route_lanes`` multiplies by one minus its
  percentage of the completed route; ``min_speed_infractions`` are reported without penalty, as
  Bench2Drive does), driving score = RC x penalty, and the status (``Perfect``, ``Completed``, or
  ``Failed - <why>``).
* Over routes (:func:`results_document`): the leaderboard's ``results.json`` (``_checkpoint`` with
  ``global_record``, ``progress`` and ``records``; ``entry_status``, ``eligible``, ``sensors``,
  ``values``, ``labels``), readable by Bench2Drive's own tools: mean scores, their standard
  deviations, infractions per driven km, the failed routes.
* :func:`merge_repeats`: collisions of one kind within 5 m and 5 s of the previous one count
  once (collisions at ego speed below 0.1 m/s are not infractions: :data:`MIN_COLLISION_SPEED`).
* :func:`smoothness` (Bench2Drive's "driving smoothness"): the share of 2 s segments whose
  Savitzky-Golay-smoothed accelerations, jerks and yaw rates stay within nuPlan's comfort bounds.
* :func:`efficiency` (Bench2Drive's "driving efficiency"): the ego's speed as a percentage of the
  surrounding traffic's at the route's checkpoints, per route mean (percentages over 1000 are
  dropped, as Bench2Drive does), then the mean over routes.
* :func:`driving_score` and :func:`success_rate` over route records, :func:`ability_table`.

Scores are on Bench2Drive's 0-100 scale.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from rap.metrics.comfort import savgol_filter

__all__ = [
    "PENALTY_VALUES", "INFRACTION_NAMES", "LABELS", "FAILURES", "MIN_COLLISION_SPEED", "Infraction", "merge_repeats",
    "route_record", "results_document", "driving_score", "success_rate", "smoothness", "efficiency", "ability_table",
]  # fmt: skip

# Infractions that multiply the route's penalty by a fixed value.
PENALTY_VALUES = {
    "collisions_pedestrian": 0.5,
    "collisions_vehicle": 0.6,
    "collisions_layout": 0.65,
    "red_light": 0.7,
    "stop_infraction": 0.8,
    "scenario_timeouts": 0.7,
    "yield_emergency_vehicle_infractions": 0.7,
}
# Every infraction list of a route record, in the leaderboard's order.
INFRACTION_NAMES = (
    "collisions_layout", "collisions_pedestrian", "collisions_vehicle", "red_light", "stop_infraction", "outside_route_lanes",
    "min_speed_infractions", "yield_emergency_vehicle_infractions", "scenario_timeouts", "route_dev", "vehicle_blocked", "route_timeout",
)  # fmt: skip
# results.json "labels" and the global infraction each "values" entry comes from (after the three scores).
LABELS = (
    ("Avg. driving score", None), ("Avg. route completion", None), ("Avg. infraction penalty", None),
    ("Collisions with pedestrians", "collisions_pedestrian"), ("Collisions with vehicles", "collisions_vehicle"),
    ("Collisions with layout", "collisions_layout"), ("Red lights infractions", "red_light"), ("Stop sign infractions", "stop_infraction"),
    ("Off-road infractions", "outside_route_lanes"), ("Route deviations", "route_dev"), ("Route timeouts", "route_timeout"),
    ("Agent blocked", "vehicle_blocked"), ("Yield emergency vehicles infractions", "yield_emergency_vehicle_infractions"),
    ("Scenario timeouts", "scenario_timeouts"), ("Min speed infractions", "min_speed_infractions"),
)  # fmt: skip
# Why a route stopped early → the status suffix the leaderboard writes.
FAILURES = {
    "route_dev": "Agent deviated from the route",
    "vehicle_blocked": "Agent got blocked",
    "route_timeout": "Agent timed out",
    "agent_crashed": "Agent crashed",
    "simulation_crashed": "Simulation crashed",
}
MIN_COLLISION_SPEED = 0.1  # [m/s] slower ego collisions are not infractions
_ROUND_SCORE = 6
_ROUND = 3


@dataclasses.dataclass(frozen=True)
class Infraction:
    """One infraction of a route.

    Attributes:
        name: one of :data:`INFRACTION_NAMES`.
        message: the leaderboard-style message (for ``outside_route_lanes``: "Agent went outside
            its route lanes for about {m} meters ({pct}% of the completed route)").
        time_s: [s] simulated time.
        x, y: [m] where it happened.
        other: id of the other party (collisions), or None.
        percentage: ``outside_route_lanes``: share of the completed route [%];
            ``min_speed_infractions``: the ego's speed relative to traffic [%].
    """

    name: str
    message: str
    time_s: float = 0.0
    x: float = 0.0
    y: float = 0.0
    other: int | None = None
    percentage: float | None = None

    def __post_init__(self) -> None:
        if self.name not in INFRACTION_NAMES:
            raise ValueError(f"Infraction: unknown name {self.name!r}; expected one of {list(INFRACTION_NAMES)}")
        if self.name in ("outside_route_lanes", "min_speed_infractions") and (self.percentage is None or not math.isfinite(self.percentage) or self.percentage < 0):
            raise ValueError(f"Infraction {self.name}: needs a finite percentage >= 0, got {self.percentage}")


def merge_repeats(infractions: Sequence[Infraction], distance_m: float = 5.0, time_s: float = 5.0) -> list[Infraction]:
    """Collisions of one kind within ``distance_m`` and ``time_s`` of the last one kept count once
    (the leaderboard's repeated-collision rule); other infractions pass unchanged, order kept."""
    kept: list[Infraction] = []
    last: dict[str, Infraction] = {}
    for inf in sorted(infractions, key=lambda i: i.time_s):
        if inf.name.startswith("collisions_"):
            prev = last.get(inf.name)
            if prev is not None and inf.time_s - prev.time_s <= time_s and math.hypot(inf.x - prev.x, inf.y - prev.y) <= distance_m:
                continue
            last[inf.name] = inf
        kept.append(inf)
    return kept


def route_record(
    index: int, route_id: str, route_completion: float, infractions: Sequence[Infraction], *, route_length_m: float,
    duration_game_s: float, duration_system_s: float, failure: str | None = None, scenario_name: str = "", town_name: str = "",
) -> dict:  # fmt: skip
    """One route's record, as the leaderboard writes it into ``_checkpoint.records``.

    Args:
        index: position in the run.
        route_id: e.g. ``"RouteScenario_3"``.
        route_completion: RC [%] in [0, 100].
        infractions: the route's infractions (already merged, see :func:`merge_repeats`).
        route_length_m, duration_game_s, duration_system_s: ``meta``.
        failure: why the route ended early (a key of :data:`FAILURES`), or None.
        scenario_name, town_name: for the record.

    Returns:
        ``{"index", "route_id", "scenario_name", "town_name", "status", "num_infractions",
        "infractions" {name: [messages]}, "scores" {"score_route", "score_penalty",
        "score_composed"}, "meta" {"route_length", "duration_game", "duration_system"}}``.

    Raises:
        ValueError: RC outside [0, 100] or an unknown failure.
    """
    if not (math.isfinite(route_completion) and 0.0 <= route_completion <= 100.0):
        raise ValueError(f"route {route_id}: route_completion must be in [0, 100], got {route_completion}")
    if failure is not None and failure not in FAILURES:
        raise ValueError(f"route {route_id}: unknown failure {failure!r}; expected one of {list(FAILURES)}")
    lists: dict[str, list[str]] = {name: [] for name in INFRACTION_NAMES}
    penalty = 1.0
    for inf in infractions:
        lists[inf.name].append(inf.message)
        if inf.name in PENALTY_VALUES:
            penalty *= PENALTY_VALUES[inf.name]
        elif inf.name == "outside_route_lanes":
            penalty *= 1.0 - inf.percentage / 100.0
    if failure == "route_timeout" and not lists["route_timeout"]:
        lists["route_timeout"].append("Route timeout.")
    num = sum(len(v) for v in lists.values())
    if route_completion >= 100.0:
        status = "Completed" if num > 0 else "Perfect"
    else:
        status = "Failed" + (f" - {FAILURES[failure]}" if failure else "")
    return {
        "index": int(index), "route_id": route_id, "scenario_name": scenario_name, "town_name": town_name, "status": status,
        "num_infractions": num, "infractions": lists,
        "scores": {
            "score_route": round(route_completion, _ROUND_SCORE), "score_penalty": round(penalty, _ROUND_SCORE),
            "score_composed": round(max(route_completion * penalty, 0.0), _ROUND_SCORE),
        },
        "meta": {"route_length": round(route_length_m, _ROUND), "duration_game": round(duration_game_s, _ROUND), "duration_system": round(duration_system_s, _ROUND)},
    }  # fmt: skip


def _infraction_amount(record: Mapping, name: str) -> float:
    """Count of an infraction, or for ``outside_route_lanes`` the km driven outside (the number
    of metres in its message, as the leaderboard reads it)."""
    messages = record["infractions"].get(name, [])
    if name == "outside_route_lanes":
        return float(messages[0].split(" ")[8]) / 1000.0 if messages else 0.0
    return float(len(messages))


def results_document(records: Sequence[Mapping], total_routes: int | None = None, sensors: Sequence[Mapping] = ()) -> dict:
    """The leaderboard's ``results.json`` for route records (:func:`route_record`).

    ``global_record``: mean scores over ``total_routes`` (default: the records), their sample
    standard deviations, infractions per driven km (km driven = route length x RC), the failed
    routes under ``meta.exceptions``, status ``Perfect`` / ``Completed`` / ``Failed`` (the worst
    route's); ``values`` / ``labels`` in :data:`LABELS` order; ``entry_status`` ``Finished``
    (``Crashed`` when a route's simulation crashed), ``eligible`` accordingly.
    """
    total = len(records) if total_routes is None else int(total_routes)
    if total <= 0:
        raise ValueError("results_document: no routes")
    keys = ("score_composed", "score_route", "score_penalty")
    mean = {k: round(sum(r["scores"][k] for r in records) / total, _ROUND_SCORE) for k in keys}
    if total == 1:
        std = {k: 0 for k in keys}
    else:
        std = {k: round(math.sqrt(sum((r["scores"][k] - mean[k]) ** 2 for r in records) / (total - 1)), _ROUND) for k in keys}
    status, exceptions = "Perfect", []
    for r in records:
        result = "Failed" if "Failed" in r["status"] else r["status"]
        if result == "Failed":
            exceptions.append([r["route_id"], r["index"], r["status"]])
            status = "Failed"
        elif status == "Perfect" and result != "Perfect":
            status = result
    km = max(sum(r["meta"]["route_length"] / 1000.0 * r["scores"]["score_route"] / 100.0 for r in records), 0.001)
    infractions = {}
    for name in INFRACTION_NAMES:
        amount = sum(_infraction_amount(r, name) for r in records)
        infractions[name] = round(amount if name == "outside_route_lanes" else amount / km, _ROUND)
    global_record = {
        "index": -1, "route_id": -1, "status": status, "infractions": infractions, "scores_mean": mean, "scores_std_dev": std,
        "meta": {
            "total_length": sum(r["meta"]["route_length"] for r in records), "duration_game": sum(r["meta"]["duration_game"] for r in records),
            "duration_system": sum(r["meta"]["duration_system"] for r in records), "exceptions": exceptions,
        },
    }  # fmt: skip
    values = [str(mean["score_composed"]), str(mean["score_route"]), str(mean["score_penalty"])]
    values += [str(infractions[name]) for _, name in LABELS[3:]]
    entry = "Crashed" if any(FAILURES["simulation_crashed"] in r["status"] for r in records) else "Finished"
    return {
        "_checkpoint": {"global_record": global_record, "progress": [len(records), total], "records": [dict(r) for r in records]},
        "entry_status": entry, "eligible": entry == "Finished", "sensors": list(sensors), "values": values, "labels": [label for label, _ in LABELS],
    }  # fmt: skip


def driving_score(records: Sequence[Mapping], total_routes: int | None = None) -> float:
    """Mean ``score_composed`` over the routes (a route without a record counts 0)."""
    total = len(records) if total_routes is None else int(total_routes)
    return sum(r["scores"]["score_composed"] for r in records) / total if total else 0.0


def success_rate(records: Sequence[Mapping], total_routes: int | None = None) -> float:
    """Share [%] of routes completed with no infraction but ``min_speed_infractions``."""
    total = len(records) if total_routes is None else int(total_routes)
    ok = sum(
        1 for r in records
        if r["scores"]["score_route"] >= 100.0 and all(not v for k, v in r["infractions"].items() if k != "min_speed_infractions")
    )  # fmt: skip
    return 100.0 * ok / total if total else 0.0


# nuPlan's comfort bounds, as Bench2Drive's smoothness uses them.
_LON_ACC = (-4.05, 2.40)  # [m/s^2]
_LAT_ACC = 4.89  # [m/s^2]
_JERK = 8.37  # [m/s^3] magnitude
_LON_JERK = 4.13  # [m/s^3]
_YAW_ACC = 1.93  # [rad/s^2]
_YAW_RATE = 0.95  # [rad/s]


def _segment_comfortable(acc_xy: np.ndarray, heading: np.ndarray, yaw_rate: np.ndarray, dt: float) -> bool:
    window = min(7, len(acc_xy))
    if window <= 2:
        raise ValueError(f"smoothness: a segment needs at least 3 steps, got {len(acc_xy)}")
    forward = np.stack([np.cos(heading), np.sin(heading)], axis=-1)
    right = np.stack([np.sin(heading), -np.cos(heading)], axis=-1)
    lon = savgol_filter(np.einsum("ij,ij->i", acc_xy, forward), window, 2)
    lat = savgol_filter(np.einsum("ij,ij->i", acc_xy, right), window, 2)
    mag = savgol_filter(np.hypot(acc_xy[:, 0], acc_xy[:, 1]), window, 2)
    jerk = savgol_filter(mag, window, 2, deriv=1, delta=dt)
    lon_jerk = savgol_filter(lon, window, 2, deriv=1, delta=dt)
    yaw = np.unwrap(yaw_rate)
    yaw_acc = savgol_filter(yaw, window, 2)  # as Bench2Drive's tool computes it (a smoothed rate)
    yaw_rate_s = savgol_filter(yaw, window, 2)
    checks = (
        (lon > _LON_ACC[0]) & (lon < _LON_ACC[1]), np.abs(lat) < _LAT_ACC, np.abs(jerk) < _JERK, np.abs(lon_jerk) < _LON_JERK,
        np.abs(yaw_acc) < _YAW_ACC, np.abs(yaw_rate_s) < _YAW_RATE,
    )  # fmt: skip
    return bool(all(np.all(c) for c in checks))


def smoothness(acc_xy: np.ndarray, heading: np.ndarray, yaw_rate: np.ndarray, dt: float = 0.1, segment_steps: int = 20) -> float:
    """Bench2Drive's driving smoothness of one route: the share of full ``segment_steps``-step
    segments (2 s at 10 Hz) within nuPlan's comfort bounds; a route no longer than one segment
    is judged whole (1 or 0).

    Args:
        acc_xy: (T, 2) world-frame acceleration [m/s^2].
        heading: (T,) [rad].
        yaw_rate: (T,) [rad/s].
        dt: [s] step.
    """
    acc_xy, heading, yaw_rate = np.asarray(acc_xy, float), np.asarray(heading, float), np.asarray(yaw_rate, float)
    n = len(acc_xy)
    if n <= segment_steps:
        return 1.0 if _segment_comfortable(acc_xy, heading, yaw_rate, dt) else 0.0
    results = [
        _segment_comfortable(acc_xy[i : i + segment_steps], heading[i : i + segment_steps], yaw_rate[i : i + segment_steps], dt)
        for i in range(0, n - segment_steps + 1, segment_steps)
    ]  # fmt: skip
    return sum(results) / len(results)


_PERCENT = re.compile(r"\b\d+\.?\d*%")


def efficiency(records: Sequence[Mapping]) -> float | None:
    """Bench2Drive's driving efficiency [%]: per route the mean of its ``min_speed_infractions``
    percentages (the ego's speed relative to surrounding traffic at checkpoints; values over
    1000 dropped), then the mean over the routes that have any; None when none has."""
    per_route = []
    for r in records:
        values = []
        for message in r["infractions"].get("min_speed_infractions", []):
            found = _PERCENT.search(message)
            if found and float(found.group().rstrip("%")) <= 1000:
                values.append(float(found.group().rstrip("%")))
        if values:
            per_route.append(sum(values) / len(values))
    return sum(per_route) / len(per_route) if per_route else None


def ability_table(records: Sequence[Mapping], abilities: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """Per ability (Bench2Drive's ``Merging``, ``Overtaking``, ``Emergency_Brake``, ``Give_Way``,
    ``Traffic_Signs``): routes, success rate [%] and mean driving score of the routes that
    exercise it (``abilities``: route id → its abilities)."""
    table: dict[str, dict] = {}
    for name in ("Merging", "Overtaking", "Emergency_Brake", "Give_Way", "Traffic_Signs"):
        rows = [r for r in records if name in abilities.get(r["route_id"], ())]
        table[name] = {"routes": len(rows), "success_rate": success_rate(rows) if rows else 0.0, "driving_score": driving_score(rows) if rows else 0.0}
    return table
