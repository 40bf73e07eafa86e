"""Pedestrians of the closed-loop world (the ``ped_crossing`` event's walker and the background
pedestrians on crosswalks): each waits at its start point and, once started, walks a straight
line to its goal at its own speed (not reacting to vehicles once on its way, as CARLA's crossing
walkers do not), then stands there.

:func:`crossing_line` finds where a pedestrian crossing a road at a point stands and goes: from
the sidewalk on the right of the road's direction to the sidewalk on its left.
:func:`crosswalk_crossings` draws the background pedestrians of a set of crosswalks: arrivals
at the waiting points on either side (a Poisson process per crosswalk), each walking across to
the other side; the world lets each go once its time has come and no vehicle is close to the
crosswalk (:func:`may_cross`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import shapely

__all__ = ["CROSSWALK_SPEED", "PEDESTRIAN_SIZE", "Walkers", "crossing_line", "crosswalk_crossings", "may_cross"]

PEDESTRIAN_SIZE = (0.6, 0.6, 1.75)  # [m] length, width, height of a pedestrian's box
_SIDEWALK_IN = 1.0  # [m] start this far beyond the right curb
_SIDEWALK_OUT = 1.5  # [m] goal this far beyond the left curb
_RAY_M = 60.0  # [m] longest curb search
CROSSWALK_SPEED = (1.2, 1.6)  # [m/s] background pedestrians' walking speeds (uniform)
_CLEAR_M, _CLEAR_S = 3.0, 3.0  # [m], [s] a pedestrian waits while a vehicle's box centre is within 3 m + 3 s of its speed of the crosswalk


@dataclasses.dataclass(frozen=True, eq=False)
class Walkers:
    """Pedestrians on straight lines. Arrays are (N,).

    Attributes:
        start: (N, 2) [m] where each waits.
        goal: (N, 2) [m] where each walks to.
        speed: (N,) [m/s] walking speed.
        walked: (N,) [m] distance walked from ``start``.
        walking: (N,) bool, started and not yet at its goal.
    """

    start: np.ndarray
    goal: np.ndarray
    speed: np.ndarray
    walked: np.ndarray
    walking: np.ndarray

    @classmethod
    def create(cls, start: np.ndarray, goal: np.ndarray, speed: np.ndarray) -> Walkers:
        """Waiting pedestrians: ``start``, ``goal`` (N, 2) [m] and ``speed`` (N,) [m/s]."""
        start = np.asarray(start, dtype=np.float64).reshape(-1, 2)
        goal = np.asarray(goal, dtype=np.float64).reshape(-1, 2)
        speed = np.asarray(speed, dtype=np.float64).reshape(-1)
        if not (len(start) == len(goal) == len(speed)):
            raise ValueError(f"Walkers.create: start {start.shape}, goal {goal.shape} and speed {speed.shape} must have N rows alike")
        return cls(start, goal, speed, np.zeros(len(start)), np.zeros(len(start), bool))

    @classmethod
    def empty(cls) -> Walkers:
        """No pedestrians."""
        return cls.create(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))

    def __len__(self) -> int:
        return len(self.start)

    @staticmethod
    def concatenate(parts: list[Walkers]) -> Walkers:
        """The pedestrians of ``parts`` in order."""
        return Walkers(*(np.concatenate([getattr(w, f.name) for w in parts]) for f in dataclasses.fields(Walkers)))

    @property
    def lengths(self) -> np.ndarray:
        """(N,) [m] start-to-goal distances."""
        return np.hypot(*(self.goal - self.start).T)

    @property
    def directions(self) -> np.ndarray:
        """(N, 2) unit vectors from start to goal."""
        d = self.goal - self.start
        return d / np.maximum(np.hypot(*d.T), 1e-9)[:, None]

    def positions(self) -> np.ndarray:
        """(N, 2) [m] box centres."""
        return self.start + self.walked[:, None] * self.directions

    def headings(self) -> np.ndarray:
        """(N,) [rad] facing the goal."""
        d = self.directions
        return np.arctan2(d[:, 1], d[:, 0])

    def velocities(self) -> np.ndarray:
        """(N, 2) [m/s] world-frame velocities (0 while waiting or arrived)."""
        return np.where(self.walking, self.speed, 0.0)[:, None] * self.directions

    def started(self, which: np.ndarray) -> Walkers:
        """The pedestrians with ``which`` (N,) bool set walking (those already on their way or
        arrived unchanged)."""
        go = np.asarray(which, dtype=bool) & (self.walked < self.lengths)
        return dataclasses.replace(self, walking=self.walking | go)

    def step(self, dt: float) -> Walkers:
        """The pedestrians ``dt`` [s] later."""
        walked = np.where(self.walking, np.minimum(self.walked + self.speed * dt, self.lengths), self.walked)
        return dataclasses.replace(self, walked=walked, walking=self.walking & (walked < self.lengths))


def _curb_distance(drivable, point: np.ndarray, direction: np.ndarray) -> float:
    """[m] from ``point`` (on the road) along ``direction`` to the drivable area's boundary."""
    ray = shapely.LineString([point, point + _RAY_M * direction])
    hits = shapely.get_coordinates(shapely.intersection(ray, drivable.boundary))
    if not len(hits):
        return _RAY_M
    return float(np.min(np.hypot(*(hits - point).T)))


def crossing_line(drivable, point: np.ndarray, tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Where a pedestrian crossing the road at ``point`` starts and goes.

    Args:
        drivable: shapely geometry of the drivable area.
        point: (2,) [m] a point on a lane centre line.
        tangent: (2,) unit direction of travel of that lane.

    Returns:
        The start (2,) (on the sidewalk right of the lane's direction), the goal (2,) (beyond the
        curb on the left) and the start's distance to ``point`` [m].
    """
    point = np.asarray(point, dtype=np.float64)
    right = np.array([tangent[1], -tangent[0]], dtype=np.float64)
    d_right = _curb_distance(drivable, point, right) + _SIDEWALK_IN
    d_left = _curb_distance(drivable, point, -right) + _SIDEWALK_OUT
    return point + d_right * right, point - d_left * right, d_right


def crosswalk_crossings(crosswalks, rng: np.random.Generator, rate_per_min: float, horizon_s: float) -> tuple[Walkers, np.ndarray, list[int]]:
    """Background pedestrians of ``crosswalks`` (the synthetic town's ``Crosswalk`` records:
    ``centre``, ``across``, ``half_length``, ``width``).

    Args:
        rng: draws arrivals, sides, offsets along the crosswalk and speeds
            (:data:`CROSSWALK_SPEED`), crosswalk by crosswalk.
        rate_per_min: arrivals per minute per crosswalk (a Poisson process).
        horizon_s: [s] arrivals up to this time.

    Returns:
        The pedestrians (waiting at their side's waiting point, shifted along the crosswalk
        within its width), their arrival times (N,) [s] in the crosswalks' order, and the index
        (into ``crosswalks``) each crosses.
    """
    starts, goals, speeds, times, which = [], [], [], [], []
    for k, cw in enumerate(crosswalks):
        t = 0.0
        while rate_per_min > 0:
            t += float(rng.exponential(60.0 / rate_per_min))
            if t > horizon_s:
                break
            side = 1.0 if rng.random() < 0.5 else -1.0
            shift = float(rng.uniform(-0.25, 0.25)) * float(cw.width) * np.asarray(cw.along, dtype=np.float64)
            centre = np.asarray(cw.centre, dtype=np.float64) + shift
            across = side * float(cw.half_length) * np.asarray(cw.across, dtype=np.float64)
            starts.append(centre + across)
            goals.append(centre - across)
            speeds.append(float(rng.uniform(*CROSSWALK_SPEED)))
            times.append(t)
            which.append(k)
    walkers = Walkers.create(np.array(starts).reshape(-1, 2), np.array(goals).reshape(-1, 2), np.array(speeds))
    return walkers, np.array(times, dtype=np.float64), which


def may_cross(zone, xy: np.ndarray, speed: np.ndarray) -> bool:
    """Whether a pedestrian may step onto crosswalk ``zone`` (a shapely polygon): no vehicle box
    centre ``xy`` (N, 2) within 3 m plus 3 s of its ``speed`` (N,) [m/s] of it."""
    if not len(xy):
        return True
    d = shapely.distance(zone, shapely.points(np.asarray(xy, dtype=np.float64)))
    return bool((d > _CLEAR_M + _CLEAR_S * np.abs(np.asarray(speed, dtype=np.float64))).all())
