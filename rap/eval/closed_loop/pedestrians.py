"""Pedestrians of the closed-loop world (the ``ped_crossing`` event's walker): each waits at its
start point and, once started, walks a straight line to its goal at its own speed (not reacting
to vehicles, as CARLA's crossing walkers do not), then stands there.

:func:`crossing_line` finds where a pedestrian crossing a road at a point stands and goes: from
the sidewalk on the right of the road's direction to the sidewalk on its left.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import shapely

__all__ = ["PEDESTRIAN_SIZE", "Walkers", "crossing_line"]

PEDESTRIAN_SIZE = (0.6, 0.6, 1.75)  # [m] length, width, height of a pedestrian's box
_SIDEWALK_IN = 1.0  # [m] start this far beyond the right curb
_SIDEWALK_OUT = 1.5  # [m] goal this far beyond the left curb
_RAY_M = 60.0  # [m] longest curb search


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
