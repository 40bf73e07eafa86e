"""Stop signs for IDM agents on any map (the log world's ``traffic=idm`` vehicles): each agent
stops at every stop sign of its route, stands :data:`STAND_S` s and goes on.

A sign's stop point on a route is the projection of the sign's position onto each lane it
controls (``map.stop_signs``: positions and controlled lane ids, as WOMD gives them). An agent
brakes for the stop point (a stop gap, as for a red light) from :data:`LOOK_M` m before it
until it has stood (slower than :data:`STOPPED` m/s with its front bumper within
:data:`REACH_M` m before the point) for :data:`STAND_S` s; a point its front bumper is already
more than 1 m past (at the start) does not hold it. Unlike the synthetic towns' all-way stops
(:mod:`~rap.eval.closed_loop.junction_rules`) there is no turn-taking (logged maps mark no
junction areas or conflicting movements): after its stop an agent goes, braking for whatever
is in its path as always.
"""

from __future__ import annotations

import numpy as np
import shapely

__all__ = ["LOOK_M", "REACH_M", "STAND_S", "STOPPED", "SignStops"]

STOPPED = 0.1  # [m/s] standing at a stop sign
REACH_M = 4.0  # [m] front bumper at most this before the stop point to count as stopped there
STAND_S = 1.0  # [s] standing time before going on
LOOK_M = 60.0  # [m] a stop point this far ahead holds the agent


class SignStops:
    """The stop-sign stops of a set of route agents.

    Args:
        lane_ids: (A, R) int64 lane indices of each agent's route (``Routes.lane_ids``).
        lane_starts: (A, R) arc where each route lane starts [m] (inf: padding).
        lanes: the map's lanes (``ids``, ``centerlines``).
        signs: the map's stop signs (``positions``, ``lane_ids``).
    """

    def __init__(self, lane_ids: np.ndarray, lane_starts: np.ndarray, lanes, signs) -> None:
        controlled: dict[int, list[int]] = {}  # lane index -> signs
        index = {int(x): i for i, x in enumerate(lanes.ids)}
        for s, ids in enumerate(signs.lane_ids):
            for lane_id in ids:
                if int(lane_id) in index:
                    controlled.setdefault(index[int(lane_id)], []).append(s)
        stops = []  # (agent, route arc of the stop point)
        for a in range(lane_starts.shape[0]):
            for k in range(int(np.isfinite(lane_starts[a]).sum())):
                li = int(lane_ids[a, k])
                for s in controlled.get(li, ()):
                    line = shapely.LineString(np.asarray(lanes.centerlines[li], dtype=np.float64)[:, :2])
                    arc = float(lane_starts[a, k]) + line.project(shapely.Point(*np.asarray(signs.positions[s], dtype=np.float64)[:2]))
                    stops.append((a, arc))
        self.agent = np.array([a for a, _ in stops], dtype=np.int64)
        self.arc = np.array([x for _, x in stops], dtype=np.float64)
        self.stood = np.zeros(len(stops))  # [s] standing at it
        self.done = np.zeros(len(stops), bool)  # stood long enough, or passed at the start
        self._started = False

    def __len__(self) -> int:
        return len(self.arc)

    def rerouted(self, lane_ids: np.ndarray, lane_starts: np.ndarray, lanes, signs) -> SignStops:
        """The stops of the agents' new routes (one agent changed lanes), keeping the standing
        time and releases of every stop that is still there (same agent, same arc)."""
        new = SignStops(lane_ids, lane_starts, lanes, signs)
        old = {(int(a), round(float(x), 6)): k for k, (a, x) in enumerate(zip(self.agent, self.arc))}
        for k, (a, x) in enumerate(zip(new.agent, new.arc)):
            j = old.get((int(a), round(float(x), 6)))
            if j is not None:
                new.stood[k], new.done[k] = self.stood[j], self.done[j]
        new._started = self._started
        return new

    def stop_gaps(self, dt: float, s: np.ndarray, v: np.ndarray, length: np.ndarray, active: np.ndarray) -> np.ndarray:
        """(A,) gaps [m] from the front bumpers to the stop point each agent must stop at now
        (inf: none); counts standing time (``dt`` [s] a call) and releases stops.

        Args:
            s, v, length, active: (A,) the agents' arcs [m] (box centres), speeds [m/s], box
                lengths [m] and whether they are in the world.
        """
        gap = np.full(len(s), np.inf)
        if not len(self):
            return gap
        g = self.arc - (s + 0.5 * length)[self.agent]
        if not self._started:  # points already behind the front bumpers at the start do not count
            self.done |= g < -1.0
            self._started = True
        standing = ~self.done & active[self.agent] & (v[self.agent] < STOPPED) & (g >= -1.0) & (g <= REACH_M)
        self.stood = np.where(standing, self.stood + dt, 0.0)
        self.done |= self.stood >= STAND_S - 1e-9
        hold = ~self.done & active[self.agent] & (g >= -1.0) & (g <= LOOK_M)
        np.minimum.at(gap, self.agent[hold], np.maximum(g[hold], 0.0))
        return gap
