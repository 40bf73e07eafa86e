"""Box-box contacts of the ego with other objects: NAVSIM's no-at-fault-collision (NC) and
time-to-collision (TTC) metrics, vectorized over (proposals, steps, objects).

Contacts are found with a bounding-circle broad phase and an exact separating-axis test on the
surviving pairs (touching counts, as shapely's ``intersects``). NAVSIM's per-proposal bookkeeping
("an object hit without fault is ignored afterwards") reduces to: for each (proposal, object) pair
only its first contact event decides. For NC the event is the first step with contact; for TTC the
first (step, look-ahead) pair in NAVSIM's loop order with contact while the ego moves.

Relative position tests use nuPlan's ``get_agent_relative_angle``: the angle between the ego
heading and the vector from the ego's rear axle to the object's box centre. "Behind" is > 150 deg,
"ahead" < 30 deg.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum
from typing import Sequence

import numpy as np

from rap.geometry import box_corners_2d
from rap.metrics.pdm_areas import EgoAreaIndex
from rap.metrics.pdm_inputs import AGENT_KINDS, ObjectKind, ObjectTracks
from rap.metrics.pdm_kernels import box_contacts
from rap.sim.bicycle import PACIFICA, StateIndex, VehicleParameters

__all__ = [
    "CollisionType",
    "CollisionConfig",
    "boxes_intersect",
    "segment_intersects_box",
    "relative_angle",
    "obb_overlap",
    "ego_box",
    "ego_centers",
    "Contacts",
    "StackedObjects",
    "find_contacts",
    "no_at_fault_collisions",
    "time_to_collision",
]


_IS_AGENT = np.isin(np.arange(max(ObjectKind) + 1), [int(a) for a in AGENT_KINDS])
"""Lookup table: is ObjectKind k one of AGENT_KINDS."""

FRONT_RIGHT, FRONT_LEFT, REAR_LEFT, REAR_RIGHT = range(4)
"""Corner order of :func:`rap.geometry.box_corners_2d` (the front edge is corners 0-1)."""


class CollisionType(IntEnum):
    """nuPlan's collision classes."""

    STOPPED_EGO = 0
    STOPPED_TRACK = 1
    ACTIVE_FRONT = 2
    ACTIVE_REAR = 3
    ACTIVE_LATERAL = 4


@dataclasses.dataclass(frozen=True)
class CollisionConfig:
    """NC / TTC constants (nuPlan / NAVSIM defaults)."""

    stopped_speed_threshold: float = 5e-2  # [m/s] ego or object at or below this is "stopped" (NC)
    behind_angle_deg: float = 150.0  # [deg] relative angle above which an object is behind
    ahead_angle_deg: float = 30.0  # [deg] relative angle below which an object is ahead (TTC)
    non_agent_penalty: float = 0.5  # NC for an at-fault hit of a static object
    ttc_stopped_speed_threshold: float = 5e-3  # [m/s] TTC is not checked below this ego speed
    ttc_lookahead_steps: tuple[int, ...] = (0, 3, 6, 9)  # [steps of 0.1 s] constant-speed projections


def _axes(corners: np.ndarray) -> np.ndarray:
    """(..., 2, 2) unit edge directions of rectangles (..., 4, 2)."""
    e = np.stack([corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 1, :]], axis=-2)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def _overlap_on(axes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-axes interval overlap of point sets a (..., m, 2) and b (..., n, 2) on axes (..., q, 2)."""
    pa = np.einsum("...qd,...md->...qm", axes, a)
    pb = np.einsum("...qd,...nd->...qn", axes, b)
    return ((pa.max(-1) >= pb.min(-1)) & (pb.max(-1) >= pa.min(-1))).all(-1)


def boxes_intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether rectangles intersect (boundaries touching counts).

    Args:
        a: (..., 4, 2) rectangle corners in ring order [m].
        b: (..., 4, 2) rectangle corners in ring order [m] (broadcast against ``a``).

    Returns:
        (...) bool.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = np.broadcast_arrays(a, b)
    axes = np.concatenate([_axes(a), _axes(b)], axis=-2)
    return _overlap_on(axes, a, b)


def segment_intersects_box(p0: np.ndarray, p1: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Whether segments p0-p1 (..., 2) intersect rectangles (..., 4, 2) (touching counts)."""
    p0, p1, box = (np.asarray(v, dtype=np.float64) for v in (p0, p1, box))
    seg = np.stack(np.broadcast_arrays(p0, p1), axis=-2)  # (..., 2, 2)
    d = seg[..., 1, :] - seg[..., 0, :]
    normal = np.stack([-d[..., 1], d[..., 0]], axis=-1)
    normal = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    box_b = np.broadcast_to(box, seg.shape[:-2] + (4, 2))
    axes = np.concatenate([_axes(box_b), normal[..., None, :]], axis=-2)
    return _overlap_on(axes, seg, box_b)


def relative_angle(ego_xy: np.ndarray, ego_heading: np.ndarray, target_xy: np.ndarray) -> np.ndarray:
    """Angle between the ego heading and the ego->target vector [rad, 0..pi] (nuPlan's
    ``get_agent_relative_angle``; NaN when the points coincide, which compares False)."""
    v = np.asarray(target_xy, dtype=np.float64) - np.asarray(ego_xy, dtype=np.float64)
    norm = np.linalg.norm(v, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (np.cos(ego_heading) * v[..., 0] + np.sin(ego_heading) * v[..., 1]) / norm
        return np.arccos(np.clip(cos, -1.0, 1.0))


def obb_overlap(
    dx: np.ndarray,
    dy: np.ndarray,
    h1: np.ndarray,
    a1: np.ndarray | float,
    b1: np.ndarray | float,
    h2: np.ndarray,
    a2: np.ndarray | float,
    b2: np.ndarray | float,
) -> np.ndarray:
    """Separating-axis test of two oriented rectangles in closed form (touching counts).

    Args:
        dx, dy: Centre of box 2 minus centre of box 1 [m].
        h1, h2: Headings [rad].
        a1, b1, a2, b2: Half length / half width of box 1 and box 2 [m].
        All broadcast together.

    Returns:
        bool array: the boxes intersect (same answer as :func:`boxes_intersect` on their corners).
    """
    c1, s1, c2, s2 = np.cos(h1), np.sin(h1), np.cos(h2), np.sin(h2)
    cd = np.abs(c1 * c2 + s1 * s2)  # |cos(h2 - h1)|
    sd = np.abs(c1 * s2 - s1 * c2)  # |sin(h2 - h1)|
    return (
        (np.abs(dx * c1 + dy * s1) <= a1 + a2 * cd + b2 * sd)
        & (np.abs(dy * c1 - dx * s1) <= b1 + a2 * sd + b2 * cd)
        & (np.abs(dx * c2 + dy * s2) <= a1 * cd + b1 * sd + a2)
        & (np.abs(dy * c2 - dx * s2) <= a1 * sd + b1 * cd + b2)
    )


def ego_box(states: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> tuple[np.ndarray, np.ndarray]:
    """Ego box corners (..., 4, 2) (front-right, front-left, rear-left, rear-right) and centres
    (..., 2) [m] from rear-axle states (..., 11)."""
    h = states[..., StateIndex.HEADING]
    c, s = np.cos(h), np.sin(h)
    d = vehicle.rear_axle_to_center
    cx = states[..., StateIndex.X] + d * c
    cy = states[..., StateIndex.Y] + d * s
    lx, ly = vehicle.half_length, vehicle.half_width
    ax, ay = lx * c, lx * s  # half-length along the heading
    bx, by = -ly * s, ly * c  # half-width to the left
    corners = np.empty(h.shape + (4, 2))
    for i, (sa, sb) in enumerate(((1.0, -1.0), (1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0))):
        corners[..., i, 0] = cx + sa * ax + sb * bx
        corners[..., i, 1] = cy + sa * ay + sb * by
    return corners, np.stack([cx, cy], axis=-1)


def ego_centers(states: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """(..., 2) ego box centres [m] from rear-axle states (..., 11)."""
    h = states[..., StateIndex.HEADING]
    d = vehicle.rear_axle_to_center
    return np.stack([states[..., StateIndex.X] + d * np.cos(h), states[..., StateIndex.Y] + d * np.sin(h)], axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class Contacts:
    """Exact ego-object box contacts, per look-ahead (``CollisionConfig.ttc_lookahead_steps``).

    ``k[i], t[i], n[i]`` (int64 arrays) list the (proposal, ego step, object) triples where the
    ego box at step t, moved ahead at its current speed and heading by look-ahead i, intersects
    object n's box at step t + look-ahead i. Look-ahead 0 is plain contact (NC).
    """

    k: tuple
    t: tuple
    n: tuple


@dataclasses.dataclass(frozen=True, eq=False)
class StackedObjects:
    """The objects of several scenes as one set, for contact search and NC / TTC over many
    scenes' rollouts at once (:func:`find_contacts` with ``row_scene``). Arrays are laid out as
    :class:`~rap.metrics.pdm_inputs.ObjectTracks` (N, S), N the objects of all scenes in scene
    order and S the most steps of any scene; a scene with fewer steps repeats its last step
    (invalid), so every lookup reads what that scene's own tracks give.

    Attributes:
        kinds, x, y, heading, vx, vy, length, width, valid: As in ``ObjectTracks``.
        steps: (N,) int64 steps of each object's own scene.
        scene: (N,) int64 scene index of each object.
        starts: (G + 1,) int64 first object of each scene (and N).
    """

    kinds: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    length: np.ndarray
    width: np.ndarray
    valid: np.ndarray
    steps: np.ndarray
    scene: np.ndarray
    starts: np.ndarray

    @classmethod
    def stack(cls, tracks: Sequence[ObjectTracks]) -> StackedObjects:
        """The objects of ``tracks`` (one ``ObjectTracks`` per scene), scene after scene."""
        s_max = max((t.num_steps for t in tracks), default=1)

        def per_step(name: str) -> np.ndarray:
            parts = []
            for t in tracks:
                a = getattr(t, name)
                if t.num_steps < s_max:
                    pad = False if name == "valid" else a[:, -1:]
                    a = np.concatenate([a, np.broadcast_to(pad, (a.shape[0], s_max - t.num_steps))], axis=1)
                parts.append(a)
            return np.concatenate(parts) if parts else np.zeros((0, s_max), dtype=bool if name == "valid" else np.float64)

        counts = np.array([len(t) for t in tracks], dtype=np.int64)
        return cls(
            kinds=np.concatenate([t.kinds for t in tracks]) if tracks else np.zeros(0, np.int8),
            x=per_step("x"), y=per_step("y"), heading=per_step("heading"), vx=per_step("vx"), vy=per_step("vy"),
            length=np.concatenate([t.length for t in tracks]) if tracks else np.zeros(0),
            width=np.concatenate([t.width for t in tracks]) if tracks else np.zeros(0),
            valid=per_step("valid"),
            steps=np.repeat(np.array([t.num_steps for t in tracks], dtype=np.int64), counts),
            scene=np.repeat(np.arange(len(tracks), dtype=np.int64), counts),
            starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        )

    @property
    def num_steps(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.kinds.shape[0])

    def first_valid_speed(self) -> np.ndarray:
        """(N,) speed at each object's first valid step [m/s] (as ``ObjectTracks``)."""
        first = np.argmax(self.valid, axis=1)
        rows = np.arange(len(self))
        return np.hypot(self.vx[rows, first], self.vy[rows, first])


def _ego_sweep(states: np.ndarray, top: int, looks: list[int], vehicle: VehicleParameters, dt: float) -> tuple:
    """Ego box centres, velocities, speeds and headings over steps 0..top, and the circle each sweeps
    over the look-aheads (centre mx, my and radius ego_r), all (K, Te)."""
    sub = states[:, : top + 1]
    speed = np.hypot(sub[..., StateIndex.VELOCITY_X], sub[..., StateIndex.VELOCITY_Y])
    heading = sub[..., StateIndex.HEADING]
    cos_h, sin_h = np.cos(heading), np.sin(heading)
    d = vehicle.rear_axle_to_center
    cx = sub[..., StateIndex.X] + d * cos_h
    cy = sub[..., StateIndex.Y] + d * sin_h
    vx, vy = cos_h * speed, sin_h * speed
    half = 0.5 * max(looks) * dt
    mx, my = cx + vx * half, cy + vy * half
    ego_r = float(np.hypot(vehicle.half_length, vehicle.half_width)) + speed * half
    return cx, cy, vx, vy, speed, heading, mx, my, ego_r


def _object_circles(objects, idx: np.ndarray, ok: np.ndarray) -> tuple:
    """Per (ego step, object): the circle around an object's boxes over the valid look-aheads
    ``ok`` (Te, D, N) at steps ``idx`` (Te, D): centre (ocx, ocy) and radius obj_r, all (Te, N),
    and whether any look-ahead is valid."""
    ox = np.ascontiguousarray(objects.x.T[idx])
    oy = np.ascontiguousarray(objects.y.T[idx])
    w = ok.astype(np.float64)
    cnt = np.maximum(w.sum(axis=1), 1.0)
    ocx = (ox * w).sum(axis=1) / cnt
    ocy = (oy * w).sum(axis=1) / cnt
    spread = np.where(ok, np.hypot(ox - ocx[:, None], oy - ocy[:, None]), 0.0).max(axis=1)
    obj_r = 0.5 * np.hypot(objects.length, objects.width)[None, :] + spread  # (Te, N)
    any_ok = ok.any(axis=1)
    return ocx, ocy, obj_r, any_ok


def find_contacts(
    states: np.ndarray,
    objects: ObjectTracks | StackedObjects,
    last_step: int,
    vehicle: VehicleParameters = PACIFICA,
    config: CollisionConfig | None = None,
    dt: float = 0.1,
    row_scene: np.ndarray | None = None,
) -> Contacts:
    """All ego-object contacts for steps 0..``last_step`` and every look-ahead.

    One bounding-circle broad phase covers all look-aheads (the ego's swept circle against the
    circle around the object's look-ahead positions); candidates then get the exact separating-axis
    test per look-ahead. Look-aheads past the objects' last step are skipped.

    Args:
        states: (K, T, 11) executed ego states.
        objects: Other objects (``dt`` steps, step 0 = now).
        last_step: Last ego step considered.
        vehicle: Ego footprint.
        config: Look-ahead steps.
        dt: Step [s].
        row_scene: With :class:`StackedObjects`: (K,) int64 scene of each row of ``states``
            (rows sorted by scene); a row meets only its own scene's objects. The contacts are
            those of each scene searched alone, in the stacked numbering. ``None``: one scene
            (every row meets every object).

    Returns:
        The contacts per look-ahead, in (step, object, row) order (the compiled
        :func:`rap.metrics.pdm_kernels.box_contacts`).
    """
    cfg = config if config is not None else CollisionConfig()
    if row_scene is None:  # one scene: every row meets every object
        if not isinstance(objects, StackedObjects):
            objects = StackedObjects.stack([objects])
        elif objects.starts.size > 2:
            raise ValueError("find_contacts: stacked objects of several scenes need row_scene")
        row_scene = np.zeros(states.shape[0], dtype=np.int64)
    return _find_contacts_stacked(states, objects, last_step, vehicle, cfg, dt, np.asarray(row_scene, dtype=np.int64))


def _find_contacts_stacked(
    states: np.ndarray, objects: StackedObjects, last_step: int, vehicle: VehicleParameters, cfg: CollisionConfig, dt: float, row_scene: np.ndarray
) -> Contacts:
    """:func:`find_contacts` for many scenes at once: the same per-pair arithmetic, with the
    broad phase kept within each scene (ego rows of scene g against the objects of scene g)."""
    looks = [int(d) for d in cfg.ttc_lookahead_steps]
    empty = tuple(np.zeros(0, dtype=np.int64) for _ in looks)
    top = min(int(last_step), states.shape[1] - 1, objects.num_steps - 1)
    if len(objects) == 0 or top < 0 or states.shape[0] == 0:
        return Contacts(empty, empty, empty)
    if np.any(np.diff(row_scene) < 0):
        raise ValueError("find_contacts: row_scene must be sorted (rows grouped by scene)")
    n_scenes = objects.starts.size - 1
    cx, cy, vx, vy, _, heading, mx, my, ego_r = _ego_sweep(states, top, looks, vehicle, dt)
    # Objects (step-major, as find_contacts): a look-ahead counts while it is within the
    # object's own scene's steps (and the scene's steps cover the ego step).
    steps = np.arange(top + 1)
    ahead = steps[:, None] + np.asarray(looks)[None, :]  # (Te, D)
    idx = np.minimum(ahead, objects.num_steps - 1)
    own = objects.steps  # (N,)
    ok = (ahead[:, :, None] < own[None, None, :]) & objects.valid.T[idx]  # (Te, D, N)
    ocx, ocy, obj_r, any_ok = _object_circles(objects, idx, ok)
    # Per scene, drop (step, object) pairs out of reach of every row of that scene.
    row_counts = np.bincount(row_scene, minlength=n_scenes)
    row_starts = np.concatenate([[0], np.cumsum(row_counts)])
    has_rows = np.flatnonzero(row_counts)
    lo_x = np.full((n_scenes, top + 1), np.inf)
    hi_x = np.full((n_scenes, top + 1), -np.inf)
    lo_y, hi_y = lo_x.copy(), hi_x.copy()
    lo_x[has_rows] = np.minimum.reduceat(mx - ego_r, row_starts[has_rows], axis=0)
    hi_x[has_rows] = np.maximum.reduceat(mx + ego_r, row_starts[has_rows], axis=0)
    lo_y[has_rows] = np.minimum.reduceat(my - ego_r, row_starts[has_rows], axis=0)
    hi_y[has_rows] = np.maximum.reduceat(my + ego_r, row_starts[has_rows], axis=0)
    g = objects.scene
    active = any_ok & (ocx + obj_r >= lo_x[g].T) & (ocx - obj_r <= hi_x[g].T)
    active &= (ocy + obj_r >= lo_y[g].T) & (ocy - obj_r <= hi_y[g].T)
    ta, na = np.nonzero(active)
    if ta.size == 0:
        return Contacts(empty, empty, empty)
    # Every active pair against every row of its scene, per look-ahead (compiled).
    box_r = float(np.hypot(vehicle.half_length, vehicle.half_width))
    step_major = [np.ascontiguousarray(a.T) for a in (cx, cy, vx, vy, np.cos(heading), np.sin(heading), mx, my, ego_r)]
    hits = box_contacts(
        ta, na, row_starts, objects.scene, *step_major,
        ocx, ocy, obj_r, objects.x, objects.y, np.cos(objects.heading), np.sin(objects.heading),
        0.5 * objects.length, 0.5 * objects.width, 0.5 * np.hypot(objects.length, objects.width),
        ok, np.asarray(looks, dtype=np.int64), float(dt), float(vehicle.half_length), float(vehicle.half_width), box_r,
    )
    per_look = [hits[1:, hits[0] == j] for j in range(len(looks))]
    return Contacts(tuple(h[0] for h in per_look), tuple(h[1] for h in per_look), tuple(h[2] for h in per_look))


def _first_events(keys: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """Indices of the first event (smallest key) of each pair id."""
    order = np.lexsort((keys, pair))
    ordered = pair[order]
    if ordered.size == 0:
        return order
    return order[np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))]


def _first_step(k: int, kk: np.ndarray, tt: np.ndarray) -> np.ndarray:
    when = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(when, kk, tt)
    return np.where(when == np.iinfo(np.int64).max, -1, when)


def no_at_fault_collisions(
    states: np.ndarray,
    areas: np.ndarray,
    objects: ObjectTracks,
    vehicle: VehicleParameters = PACIFICA,
    config: CollisionConfig | None = None,
    contacts: Contacts | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """NAVSIM's no-at-fault-collision score (NC).

    Args:
        states: (K, T, 11) executed ego states (T <= objects.num_steps, same 0.1 s steps).
        areas: (K, T, 3) bool ego-area flags (:class:`~rap.metrics.pdm_areas.EgoAreaIndex`).
        objects: Other objects.
        vehicle: Ego footprint.
        config: Constants; ``None`` means ``CollisionConfig()``.
        contacts: Precomputed :func:`find_contacts` (its look-ahead 0 is used), or ``None``.

    Returns:
        NC (K,) float64 in {0, 0.5, 1} and the first at-fault step (K,) int64 (-1 if none).
        At fault: a collision while the ego moves (> 0.05 m/s) with a stopped object, with the
        ego's front edge (not from behind), or laterally while the ego is in multiple lanes or
        off the drivable area. Agents (vehicle, pedestrian, cyclist) give 0, others 0.5.
    """
    cfg = config if config is not None else CollisionConfig()
    k, t = states.shape[:2]
    score = np.ones(k)
    if contacts is None:
        cfg0 = dataclasses.replace(cfg, ttc_lookahead_steps=(0,))
        contacts = find_contacts(states, objects, t - 1, vehicle, cfg0)
    kk, tt, nn = contacts.k[0], contacts.t[0], contacts.n[0]
    if kk.size == 0:
        return score, np.full(k, -1, dtype=np.int64)
    first = _first_events(tt, kk * len(objects) + nn)
    kk, tt, nn = kk[first], tt[first], nn[first]
    s = states[kk, tt]
    ego_speed = np.hypot(s[:, StateIndex.VELOCITY_X], s[:, StateIndex.VELOCITY_Y])
    static = objects.kinds[nn] == ObjectKind.STATIC_OBJECT
    track_stopped = static | (objects.first_valid_speed()[nn] <= cfg.stopped_speed_threshold)
    obj_xy = np.stack([objects.x[nn, tt], objects.y[nn, tt]], axis=-1)
    angle = relative_angle(s[:, [StateIndex.X, StateIndex.Y]], s[:, StateIndex.HEADING], obj_xy)
    behind = angle > np.deg2rad(cfg.behind_angle_deg)
    corners, _ = ego_box(s, vehicle)
    obj_box = box_corners_2d(objects.x[nn, tt], objects.y[nn, tt], objects.heading[nn, tt], objects.length[nn], objects.width[nn])
    front = segment_intersects_box(corners[:, FRONT_RIGHT], corners[:, FRONT_LEFT], obj_box)
    ctype = np.full(kk.size, CollisionType.ACTIVE_LATERAL, dtype=np.int64)
    ctype[front] = CollisionType.ACTIVE_FRONT
    ctype[behind] = CollisionType.ACTIVE_REAR
    ctype[track_stopped] = CollisionType.STOPPED_TRACK
    ctype[ego_speed <= cfg.stopped_speed_threshold] = CollisionType.STOPPED_EGO
    risky = areas[kk, tt, EgoAreaIndex.MULTIPLE_LANES] | areas[kk, tt, EgoAreaIndex.NON_DRIVABLE_AREA]
    at_fault = (
        (ctype == CollisionType.ACTIVE_FRONT)
        | (ctype == CollisionType.STOPPED_TRACK)
        | ((ctype == CollisionType.ACTIVE_LATERAL) & risky)
    )
    agent = _IS_AGENT[objects.kinds[nn]]
    penalty = np.where(agent, 0.0, cfg.non_agent_penalty)
    np.minimum.at(score, kk[at_fault], penalty[at_fault])
    return score, _first_step(k, kk[at_fault], tt[at_fault])


def time_to_collision(
    states: np.ndarray,
    areas: np.ndarray,
    rear_axle_in_intersection: np.ndarray,
    objects: ObjectTracks,
    last_step: int | Sequence[int],
    vehicle: VehicleParameters = PACIFICA,
    config: CollisionConfig | None = None,
    dt: float = 0.1,
    contacts: Contacts | None = None,
) -> tuple[np.ndarray, np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """NAVSIM's time-to-collision-within-bound score (TTC).

    At each step 0..``last_step`` the ego box is moved ahead at its current speed and heading by
    0, 0.3, 0.6 and 0.9 s and tested against the objects at that later step (look-aheads past
    the objects' last step are skipped). A contact while the ego moves (>= 5e-3 m/s) fails TTC if
    the object is ahead (< 30 deg), or if the ego is in multiple lanes, off the drivable area or
    (rear axle) in an intersection and the object is not behind (> 150 deg). Otherwise the object
    is ignored for that proposal from then on.

    Args:
        states: (K, T, 11) executed ego states.
        areas: (K, T, 3) ego-area flags.
        rear_axle_in_intersection: (K, T) bool.
        objects: Other objects (``dt`` steps, step 0 = now).
        last_step: Last ego step checked (v1: T - 1; v2: T - 1 - 9), or several (evaluated in one
            pass; a list of results is returned).
        vehicle: Ego footprint.
        config: Constants.
        dt: Step of ``states`` and ``objects`` [s].
        contacts: Precomputed :func:`find_contacts` covering the largest ``last_step``, or ``None``.

    Returns:
        TTC (K,) float64 in {0, 1} and the first failing step (K,) int64 (-1 if none); a list of
        those for a sequence of ``last_step``.
    """
    cfg = config if config is not None else CollisionConfig()
    single = np.ndim(last_step) == 0
    lasts = [int(last_step)] if single else [int(v) for v in last_step]
    k = states.shape[0]
    results = [(np.ones(k), np.full(k, -1, dtype=np.int64)) for _ in lasts]
    if contacts is None:
        contacts = find_contacts(states, objects, max(lasts), vehicle, cfg, dt)
    n_look = len(cfg.ttc_lookahead_steps)
    sizes = [c.size for c in contacts.k]
    if len(objects) == 0 or sum(sizes) == 0:
        return results[0] if single else results
    kk = np.concatenate(contacts.k)
    tt = np.concatenate(contacts.t)
    nn = np.concatenate(contacts.n)
    di = np.repeat(np.arange(n_look), sizes)
    speed = np.hypot(states[kk, tt, StateIndex.VELOCITY_X], states[kk, tt, StateIndex.VELOCITY_Y])
    keep = np.nonzero(speed >= cfg.ttc_stopped_speed_threshold)[0]
    kk, tt, nn, di = kk[keep], tt[keep], nn[keep], di[keep]
    if kk.size == 0:
        return results[0] if single else results
    look = np.asarray(cfg.ttc_lookahead_steps)[di]
    s = states[kk, tt]
    obj_xy = np.stack([objects.x[nn, tt + look], objects.y[nn, tt + look]], axis=-1)
    angle = relative_angle(s[:, [StateIndex.X, StateIndex.Y]], s[:, StateIndex.HEADING], obj_xy)
    ahead = angle < np.deg2rad(cfg.ahead_angle_deg)
    behind = angle > np.deg2rad(cfg.behind_angle_deg)
    risky = (
        areas[kk, tt, EgoAreaIndex.MULTIPLE_LANES]
        | areas[kk, tt, EgoAreaIndex.NON_DRIVABLE_AREA]
        | rear_axle_in_intersection[kk, tt]
    )
    fail_all = ahead | (risky & ~behind)
    order_key = tt * n_look + di
    pair = kk * len(objects) + nn
    for i, last in enumerate(lasts):
        sel = np.nonzero(tt <= last)[0]
        if sel.size == 0:
            continue
        first = sel[_first_events(order_key[sel], pair[sel])]
        fail = first[fail_all[first]]
        score = results[i][0]
        score[kk[fail]] = 0.0
        results[i] = (score, _first_step(k, kk[fail], tt[fail]))
    return results[0] if single else results
