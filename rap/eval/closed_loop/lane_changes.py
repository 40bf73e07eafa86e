"""Lane changes of the closed-loop worlds' IDM vehicles.

A vehicle whose route needs a lane change (its way on leaves from a same-direction neighbour
of its lane; in a log, its logged lanes move to a neighbour) drives its own lane with a pending
:class:`LaneChange`. Inside the change window (from 5 m into the lane while a blend at its
speed still ends :data:`END_MARGIN_M` before the lane's end) it moves over as soon as the neighbour has a safe gap: MOBIL's safety criterion
(Kesting, Treiber & Helbing 2007), :func:`gap_is_safe`: the new follower (the ego included)
would brake at most :data:`SAFE_DECEL` for it, and the gap to the new leader is at least the
standstill gap plus :data:`LEADER_HEADWAY_S` of its speed. Its route then becomes the
lane-change path (:func:`rap.sim.idm.lane_change_line`, a blend over :func:`blend_length` m)
into the neighbour and on along the planned lanes. Without a gap by the window's end it keeps
its lane and its lane's own way on (its route as it was), as a driver who missed the turn. A
forced change (the ``cut_in`` event) is not checked: the world triggers it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rap.sim.idm import IDMParameters, RoutePath, idm_acceleration, lane_change_line, route_path

__all__ = ["END_MARGIN_M", "LEADER_HEADWAY_S", "SAFE_DECEL", "LaneChange", "blend_length", "change_path", "gap_is_safe", "lane_change_window", "ready_changes"]

SAFE_DECEL = 2.0  # [m/s^2] the new follower brakes at most this for the changer (MOBIL's b_safe)
LEADER_HEADWAY_S = 0.5  # [s] gap to the new leader: standstill gap plus this much of the changer's speed
END_MARGIN_M = 5.0  # [m] a change ends at least this far before the source lane's end
_START_MARGIN_M = 5.0  # [m] and starts at least this far into it
_FOLLOWER = IDMParameters()  # how the new follower is assumed to react
_ALONG = 80.0  # [m] followers and leaders this far along the target lane count


def blend_length(speed: float) -> float:
    """[m] the lateral move of a lane change: 2.5 s of driving, 15-30 m."""
    return float(np.clip(2.5 * speed, 15.0, 30.0))


@dataclasses.dataclass(frozen=True)
class LaneChange:
    """A pending lane change of one IDM agent.

    Attributes:
        prefix: lane indices of the agent's route before the source lane.
        source: the lane the change starts on.
        target: its same-direction neighbour the change ends on.
        then: lane indices after ``target``, in driving order.
        window: (2,) [m] route arcs of the agent's box centre: the change starts after the
            first and ends (its blend included) by the second.
        forced: skip the safety check (the world decides when).
    """

    prefix: tuple[int, ...]
    source: int
    target: int
    then: tuple[int, ...]
    window: tuple[float, float]
    forced: bool = False


def lane_change_window(source_start: float, source_length: float) -> tuple[float, float] | None:
    """(2,) [m] route arcs of the box centre between which a change off a source lane starting
    at route arc ``source_start`` happens: it may start :data:`_START_MARGIN_M` into the lane
    and must end (start plus :func:`blend_length` of the speed then) :data:`END_MARGIN_M`
    before the lane's end; None where not even the shortest blend fits."""
    lo = source_start + _START_MARGIN_M
    hi = source_start + source_length - END_MARGIN_M
    return (lo, hi) if hi - blend_length(0.0) >= lo else None


def change_path(town, limits: np.ndarray, change: LaneChange, start_arc: float, speed: float) -> RoutePath:
    """The route of ``change`` started at route arc ``start_arc`` [m] (the prefix's lanes, the
    source up to there, a blend of :func:`blend_length` of ``speed`` into the target, the target
    and ``then``): the same arcs as the agent's current route up to ``start_arc``."""
    before = [town.lanes[i].points for i in change.prefix]
    offset = sum(float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) for p in before)
    src = town.lanes[change.source].points
    src_len = float(np.linalg.norm(np.diff(src, axis=0), axis=1).sum())
    start = float(np.clip(start_arc - offset, 0.0, src_len))
    line = lane_change_line(src, town.lanes[change.target].points, start, blend_length(speed))
    lanes = [*change.prefix, change.target, *change.then]
    lines = [*before, line, *[town.lanes[i].points for i in change.then]]
    return route_path(lines, [float(limits[i]) for i in lanes], lanes, spacing=0.5, smoothing=2.0)


def gap_is_safe(
    target: np.ndarray, width: float, me: tuple[float, float, float, float], others: dict[str, np.ndarray],
    safe_decel: float = SAFE_DECEL, params: IDMParameters = _FOLLOWER,
) -> bool:  # fmt: skip
    """MOBIL's safety criterion for moving into lane ``target`` ((n, 2) centerline, ``width`` [m]).

    Args:
        me: the changer's box centre x, y [m], speed [m/s] and length [m].
        others: every other box: ``x, y, heading, length, v`` (N,) (speeds along headings).

    Returns:
        False where a box of the target lane (centre within half the lane's width plus 0.3 m
        of its centerline, heading within 45 degrees of it) is alongside (the boxes overlap
        along the lane), the gap to the nearest one ahead is below 2 m plus
        :data:`LEADER_HEADWAY_S` of the changer's speed, or the nearest one behind would
        have to brake harder than ``safe_decel`` (its IDM reaction to the changer as its
        leader); True otherwise.
    """
    a, b = target[:-1, :2], target[1:, :2]
    ab = b - a
    seg = np.maximum(np.hypot(ab[:, 0], ab[:, 1]), 1e-9)
    cum = np.concatenate([[0.0], np.cumsum(seg)])

    def project(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.stack([x, y], axis=-1)[:, None, :]
        t = np.clip(((p - a) * ab).sum(-1) / (seg**2), 0.0, 1.0)
        d = np.linalg.norm(a + t[..., None] * ab - p, axis=-1)
        j = np.argmin(d, axis=1)
        rows = np.arange(len(x))
        return cum[j] + t[rows, j] * seg[j], d[rows, j], np.arctan2(ab[j, 1], ab[j, 0])

    x, y, v, length = me
    s0, _, _ = project(np.array([x]), np.array([y]))
    if not len(others["x"]):
        return True
    s, lateral, tangent = project(others["x"], others["y"])
    aligned = np.cos(others["heading"] - tangent) > np.cos(np.pi / 4)
    near = aligned & (lateral < 0.5 * width + 0.3) & (np.abs(s - s0[0]) < _ALONG)
    if not near.any():
        return True
    d = s[near] - s0[0]
    half = 0.5 * (others["length"][near] + length)
    if (np.abs(d) < half).any():
        return False
    ahead, behind = d > 0, d < 0
    if ahead.any():
        k = np.argmin(np.where(ahead, d, np.inf))
        if d[k] - half[k] < 2.0 + LEADER_HEADWAY_S * v:
            return False
    if behind.any():
        k = np.argmax(np.where(behind, d, -np.inf))
        vf = float(others["v"][near][k])
        gap = -d[k] - half[k]
        acc = idm_acceleration(params, np.array([vf]), np.array([max(vf, 1.0)]), np.array([gap]), np.array([v]))
        if float(acc[0]) < -safe_decel:
            return False
    return True


def ready_changes(changes: dict[int, LaneChange], agents, town, boxes: dict[str, np.ndarray], rows: np.ndarray) -> list[int]:
    """The agents whose pending change starts now: inside its window and, unless forced, with a
    safe gap (:func:`gap_is_safe` on the target lane of ``town``) among ``boxes`` (``x, y,
    heading, length, v, valid`` (N,): every box, the ego's included; agent ``k`` is row
    ``rows[k]``, left out of its own check). Changes whose agent has left or passed the
    window's end are dropped from ``changes``."""
    out = []
    poses = None
    for k, ch in sorted(changes.items()):
        if not agents.active[k] or agents.s[k] + blend_length(0.0) > ch.window[1]:
            del changes[k]
            continue
        if ch.forced or agents.s[k] < ch.window[0] or agents.s[k] + blend_length(float(agents.v[k])) > ch.window[1]:
            continue
        poses = agents.poses() if poses is None else poses
        keep = boxes["valid"] & (np.arange(len(boxes["x"])) != rows[k])
        target = town.lanes[ch.target]
        others = {f: boxes[f][keep] for f in ("x", "y", "heading", "length", "v")}
        if gap_is_safe(target.points, target.width, (poses[k, 0], poses[k, 1], float(agents.v[k]), float(agents.length[k])), others):
            out.append(k)
    return out
