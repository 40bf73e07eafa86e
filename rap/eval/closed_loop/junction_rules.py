"""Right-of-way rules of the closed-loop world's background traffic at junctions without lights.

:class:`JunctionRules` turns the rules into stop gaps (front bumper to the stop line [m]) that
:meth:`rap.sim.idm.IDMAgents.step` brakes for, as the world's red lights do:

* **All-way stops** (connectors a stop sign controls, ``map.stop_signs``): a vehicle that obeys
  the rules stops at the stop line (the IDM's standstill gap before it), counts as *arrived*
  once it stands (< :data:`STOPPED` m/s) within :data:`SIGN_REACH` m of the line, stands at
  least :data:`STAND_S` s, and then goes first come, first served: when no vehicle that
  arrived earlier at the same junction is still waiting there (an ego that stood in its stop
  area earlier counts, for at most :data:`EGO_CLAIM_S` s), and nobody is inside (or granted
  and about to enter) a connector of that junction whose path conflicts with its own (the
  town's ``Junction.conflicts``: paths closer than 2.5 m or the same exit); an ego inside the
  junction's area conflicts with everything. Ties of arrival time go to the lower agent index.
* **Unprotected connectors** (a junction connector with neither a light nor a stop sign):
  a vehicle about to enter yields, i.e. stops at the line, while another vehicle is inside, or
  committed to (it could not stop before its line at :data:`COMMIT_DECEL`), a conflicting
  connector of the junction, or the ego is inside the junction's area; a vehicle that is
  itself committed goes. (The synthetic towns have none: every junction is signalized or an
  all-way stop; the rule serves towns and tests without some of the signs.)

Agents that do not obey (event actors: the crossing vehicle, the emergency vehicle) get no
stop gaps but count as occupants, from :data:`RULELESS_S` s before they reach a connector
(they will not stop for anyone: nobody is let into a connector crossing their way). Everything is a function of the state: the same run gives
the same decisions.
"""

from __future__ import annotations

import numpy as np
import shapely

__all__ = ["COMMIT_DECEL", "EGO_CLAIM_S", "RULELESS_S", "SIGN_REACH", "STAND_S", "STOPPED", "JunctionRules"]

STOPPED = 0.1  # [m/s] standing at a stop sign
SIGN_REACH = 4.0  # [m] at most this from the line (front bumper) to count as arrived
STAND_S = 1.0  # [s] standing time before going
EGO_CLAIM_S = 10.0  # [s] an ego that stood at its stop line keeps its turn this long at most
COMMIT_DECEL = 3.0  # [m/s^2] unprotected: a vehicle needing more than this to stop at its line goes
RULELESS_S = 6.0  # [s] an agent ignoring the rules claims its next connector this long before reaching it
_LOOK = 60.0  # [m] rules apply this far before the line
_NONE, _STOP, _YIELD = 0, 1, 2


class JunctionRules:
    """Stop-sign and yield rules for a set of route agents (see the module docs).

    Args:
        town: the synthetic town (``lanes[i].junction``, ``junctions[j].connectors``,
            ``.conflicts``, ``.polygon``).
        lane_ids: (A, R) int64 lane indices of each agent's route (``Routes.lane_ids``).
        lane_starts: (A, R) arc where each route lane starts [m] (inf: padding).
        lengths: (A,) route lengths [m].
        obey: (A,) bool, the agent follows the rules.
        stop_lanes: lane indices of the connectors a stop sign controls.
        signal_lanes: lane indices of the signalized connectors.
    """

    def __init__(self, town, lane_ids: np.ndarray, lane_starts: np.ndarray, lengths: np.ndarray, obey: np.ndarray, stop_lanes, signal_lanes) -> None:
        self.town = town
        self._stop_lanes, self._signal_lanes = {int(c) for c in stop_lanes}, {int(c) for c in signal_lanes}
        n = int(lane_starts.shape[0])
        rows = [self._connectors(lane_ids[a], lane_starts[a], float(lengths[a])) for a in range(n)]
        e = max([1] + [len(r) for r in rows]) + 1  # a padding column: "no further connector"
        self.arc = np.full((n, e), np.inf)
        self.end = np.full((n, e), np.inf)
        self.lane = np.full((n, e), -1, np.int64)
        self.junction = np.full((n, e), -1, np.int64)
        self.kind = np.zeros((n, e), np.int8)
        for a, out in enumerate(rows):
            self._set_row(a, out)
        self.obey = np.asarray(obey, dtype=bool).reshape(n)
        self.arrived = np.full(n, -1, np.int64)  # connector entry (column) the agent has stopped at ...
        self.arrival_t = np.zeros(n)  # ... and when
        self.granted = np.full(n, -1, np.int64)  # entry it may enter
        self._local = [{c: q for q, c in enumerate(jn.connectors)} for jn in town.junctions]
        self._polys = [shapely.Polygon(jn.polygon) if len(jn.polygon) >= 3 else None for jn in town.junctions]
        self.any_rules = bool(self.obey.any() and (self.kind != _NONE).any())

    def __len__(self) -> int:
        return int(self.arc.shape[0])

    def _connectors(self, lane_ids: np.ndarray, lane_starts: np.ndarray, length: float) -> list[tuple]:
        """(start arc, end arc, lane, junction, rule) of every junction connector of one route."""
        out = []
        r = int(np.isfinite(lane_starts).sum())
        for k in range(r):
            li = int(lane_ids[k])
            jn = self.town.lanes[li].junction
            if jn < 0:
                continue
            end = float(lane_starts[k + 1]) if k + 1 < r else length
            kind = _NONE if li in self._signal_lanes else _STOP if li in self._stop_lanes else _YIELD
            out.append((float(lane_starts[k]), end, li, jn, kind))
        return out

    def _set_row(self, a: int, out: list[tuple]) -> None:
        self.arc[a], self.end[a], self.lane[a], self.junction[a], self.kind[a] = np.inf, np.inf, -1, -1, _NONE
        for k, (s0, s1, li, jn, kind) in enumerate(out):
            self.arc[a, k], self.end[a, k], self.lane[a, k], self.junction[a, k], self.kind[a, k] = s0, s1, li, jn, kind

    def reroute(self, a: int, lane_ids: np.ndarray, lane_starts: np.ndarray, length: float) -> None:
        """Agent ``a`` drives a new route (a lane change on a road lane, before its next
        connector): its connectors are re-read; it has arrived at and been granted none."""
        out = self._connectors(lane_ids, lane_starts, float(length))
        grow = len(out) + 1 - self.arc.shape[1]
        if grow > 0:
            pad = lambda x, fill: np.concatenate([x, np.full((x.shape[0], grow), fill, x.dtype)], axis=1)  # noqa: E731
            self.arc, self.end, self.lane = pad(self.arc, np.inf), pad(self.end, np.inf), pad(self.lane, -1)
            self.junction, self.kind = pad(self.junction, -1), pad(self.kind, _NONE)
        self._set_row(a, out)
        self.arrived[a], self.granted[a] = -1, -1
        self.any_rules = bool(self.obey.any() and (self.kind != _NONE).any())

    def stop_gaps(self, t: float, s: np.ndarray, v: np.ndarray, length: np.ndarray, active: np.ndarray, ego_poly=None, ego_waiting: dict[int, float] | None = None) -> np.ndarray:
        """(A,) gaps [m] from the front bumpers to the stop line each agent must stop at now
        (inf: none); updates arrivals and grants.

        Args:
            t: [s] now.
            s, v, length, active: (A,) the agents' arcs [m] (box centres), speeds [m/s], box
                lengths [m] and whether they are in the world.
            ego_poly: the ego's box (shapely Polygon), None: no ego.
            ego_waiting: junction index -> time [s] the ego arrived at its stop line there and
                has not crossed it yet (within :data:`EGO_CLAIM_S`).
        """
        n = len(self)
        gap = np.full(n, np.inf)
        if not self.any_rules:
            return gap
        rows = np.arange(n)
        front, rear = s + 0.5 * length, s - 0.5 * length
        nxt = (self.arc < front[:, None]).sum(axis=1)
        sigma = self.arc[rows, nxt] - front
        kind, jn = self.kind[rows, nxt], self.junction[rows, nxt]
        ruled = active & self.obey & np.isfinite(sigma) & (sigma < _LOOK)
        stop = ruled & (kind == _STOP) & (self.granted != nxt)
        yld = ruled & (kind == _YIELD)
        # committed to an unprotected connector: cannot stop before its line comfortably
        committed = yld & (v**2 / (2.0 * np.maximum(sigma - 1.0, 0.1)) > COMMIT_DECEL)
        yld &= ~committed
        # arrivals at stop lines
        new = stop & (v < STOPPED) & (sigma < SIGN_REACH) & (self.arrived != nxt)
        self.arrived[new], self.arrival_t[new] = nxt[new], t
        ready = stop & (self.arrived == nxt) & (t - self.arrival_t >= STAND_S - 1e-9)
        if ready.any() or yld.any():
            # agents that ignore the rules (the emergency vehicle) claim their next connector
            # once they would reach it within RULELESS_S
            ruleless = active & ~self.obey & np.isfinite(sigma) & (sigma < np.maximum(v, 1.0) * RULELESS_S)
            occupied = self._occupants(front, rear, active, nxt, committed | ruleless)
            ego_in = self._ego_inside(ego_poly, {int(j) for j in jn[ready | yld]})
            waiting = stop & (self.arrived == nxt)
            for i in sorted(np.flatnonzero(ready), key=lambda i: (self.arrival_t[i], i)):
                j = int(jn[i])
                earlier = waiting & (jn == j) & ((self.arrival_t < self.arrival_t[i]) | ((self.arrival_t == self.arrival_t[i]) & (rows < i)))
                if earlier.any() or (ego_waiting or {}).get(j, np.inf) < self.arrival_t[i] or j in ego_in:
                    continue
                if self._conflict(j, int(self.lane[i, nxt[i]]), occupied.get(j, ())):
                    continue
                self.granted[i] = nxt[i]
                waiting[i] = False
                occupied.setdefault(j, []).append(int(self.lane[i, nxt[i]]))
            for i in np.flatnonzero(yld):
                j = int(jn[i])
                if j in ego_in or self._conflict(j, int(self.lane[i, nxt[i]]), occupied.get(j, ())):
                    gap[i] = max(sigma[i], 0.0)
        stop = ruled & (kind == _STOP) & (self.granted != nxt)
        gap[stop] = np.maximum(sigma[stop], 0.0)
        return gap

    # --- helpers ----------------------------------------------------------------------------------

    def _occupants(self, front, rear, active, nxt, committed) -> dict[int, list[int]]:
        """Junction -> connector lanes that are occupied: an agent's body overlaps it, it holds
        a grant it has not used yet, or it is committed (``committed``, (A,)) to enter it next."""
        k = np.arange(self.arc.shape[1])[None]
        inside = (rear[:, None] < self.end) & (front[:, None] > self.arc)
        holding = (self.granted[:, None] == k) & (front[:, None] <= self.arc)
        coming = committed[:, None] & (k == nxt[:, None])
        occ_i, occ_k = np.nonzero(active[:, None] & np.isfinite(self.arc) & (inside | holding | coming))
        out: dict[int, list[int]] = {}
        for a, q in zip(occ_i, occ_k):
            out.setdefault(int(self.junction[a, q]), []).append(int(self.lane[a, q]))
        return out

    def _conflict(self, j: int, lane: int, others) -> bool:
        jn = self.town.junctions[j]
        local = self._local[j]
        mine = local[lane]
        return any(c != lane and jn.conflicts[mine, local[c]] for c in others if c in local)

    def _ego_inside(self, ego_poly, junctions: set[int]) -> set[int]:
        if ego_poly is None:
            return set()
        return {j for j in junctions if self._polys[j] is not None and self._polys[j].intersects(ego_poly)}
