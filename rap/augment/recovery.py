"""Counterfactual recovery samples: a perturbed start and a target back to the expert path.

The acting agent is ``scene.ego_index`` (recentre a scene with
:func:`rap.augment.cross_agent.recenter` to perturb another vehicle). Its logged pose at the step
defines the *logged frame* L; a :class:`~rap.dataset.sample.Perturbation` moves the start to
``(dx, dy, dheading)`` in L and scales its speed and acceleration. Views are rendered from the
perturbed pose (``SamplePlan.viewer_pose``); everything else in the scene is unchanged.

Perturbations (:class:`RecoveryConfig`): each component is drawn independently and uniformly
from its range, in the order dx, dy, dheading, speed_scale, accel_scale, from the caller's
``numpy.random.Generator``. Preset "rap" (default) follows the RAP reference
(``process_data/create_openscene_metadata_purturbed.py``: x, y +-0.5 m, yaw +-15 deg, speed
+-20 %, acceleration +-10 %; there x, y are world-frame offsets, here ego-frame ones); preset
"wide" doubles the ranges (+-1 m, +-30 deg, +-30 % speed, +-20 % acceleration) with a 4 s rejoin.

A drawn start is rejected, and counted by reason, when

* ``"invalid_window"``: the agent is not valid over history + current + future;
* ``"overlap"``: its box at the perturbed pose intersects (area > 1e-6 m2) another valid agent's
  box at the step (agents whose boxes already intersect the logged box are ignored: those are
  annotation artefacts, not something a perturbation caused);
* ``"off_road"``: its box has more area outside ``scene.map.drivable_polygon`` than the logged
  box has (by > 1e-3 m2); skipped when the map has no drivable area;
* ``"cannot_rejoin"``: (``smooth_rejoin`` only) the rollout below does not get back onto the
  expert path within the limits.

Target modes (:class:`RecoveryTarget`):

* ``expert_future``: the logged future poses expressed in the perturbed frame (the RAP
  reference's choice): the target jumps back onto the logged trajectory at the first pose.
* ``smooth_rejoin`` (default): a kinematic-bicycle rollout (:func:`rap.sim.bicycle.arc_step`:
  rear-axle reference, state ``(x, y, heading, speed)``, controls curvature and longitudinal
  acceleration, exact arc steps of ``dt <= 0.1 s`` that divide the sampling interval) from the
  perturbed pose and speed:

  - path: the expert's rear-axle positions (2 s of history through the end of the valid log),
    with stops removed (points closer than 5 cm), extended straight along the logged heading at
    both ends, resampled every 0.25 m and smoothed with a Gaussian (sigma 1 m) for its heading
    and curvature;
  - steering: path-curvature feed-forward plus critically damped feedback on the lateral and
    heading errors, ``kappa = kappa_ref - w^2 e_y - 2 w sin(e_heading)``, the LQR structure for
    the arc-length error model ``e_y' = sin(e_heading)``, ``e_heading' = kappa - kappa_ref``;
    ``w = 4.74 / D`` (clipped to [0.02, 2] 1/m) with ``D`` the distance the speed profile
    covers in the rejoin horizon, so the linear response ``(1 + w s) exp(-w s)`` has fallen to
    5 % after ``D``;
  - speed: ``v_des(t) = v_exp(t) + (v0 - v_exp(0)) (1 - smoothstep(t / H))`` where ``v_exp`` is
    the expert's along-path speed (central differences over +-0.2 s), tracked with the
    feed-forward of its derivative plus a 2 1/s proportional term; no reversing;
  - limits, enforced by clipping every control: ``|kappa| <= min(tan(max_steer) / wheelbase,
    max_lat_accel / v^2)`` and ``-max_decel <= a <= max_accel`` (defaults from the shared records:
    :data:`rap.sim.bicycle.PACIFICA`, wheelbase 3.089 m, 35 deg steer = 0.227 1/m; nuPlan comfort
    bounds :class:`rap.metrics.comfort.ComfortBounds`, 2.40 / 4.05 / 4.89 m/s2);
  - acceptance: from ``H = min(rejoin_horizon_s, sampling.horizon_s)`` to the end of the target,
    every rollout state is within ``rejoin_tolerance_m`` (0.2 m) of the logged path and within
    ``rejoin_heading_tolerance_rad`` (5 deg) of its heading; otherwise ``"cannot_rejoin"``.

  The target starts at the perturbed pose (the origin of its own frame, heading 0, speed v0)
  and never exceeds the limits; a stopped expert cannot be rejoined from a lateral offset.

The recovery sample's history is the logged history in the logged frame, carried rigidly to the
perturbed frame (the same numbers as the ego sample's); its status is the logged velocity and
acceleration (in the logged frame) times the scales, and its command is the logged ego's (route
intent does not change with the perturbation).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from enum import Enum
from typing import Any, Sequence

import numpy as np
import shapely

from rap import geometry
from rap.augment.targets import _check_history, sample_key
from rap.config import DEFAULT_HISTORY_INTERVAL_S, DEFAULT_HISTORY_NUM_POSES
from rap.dataset.sample import Perturbation, SampleKind, SamplePlan
from rap.kinematics import (
    EgoStatus,
    agent_acceleration,
    agent_velocity,
    driving_command,
    future_target,
    history_poses,
    window_valid,
)
from rap.metrics.comfort import ComfortBounds
from rap.scene import Scene
from rap.sim.bicycle import PACIFICA, ArcStateIndex, arc_step, next_speed
from rap.trajectory import PoseIndex, Trajectory, TrajectorySampling

__all__ = [
    "RecoveryTarget",
    "RecoveryConfig",
    "RECOVERY_PRESETS",
    "REJECT_REASONS",
    "ExpertReference",
    "Rollout",
    "expert_reference",
    "smooth_rejoin",
    "plan_perturbation",
    "plan_recovery",
]

REJECT_REASONS = ("invalid_window", "overlap", "off_road", "cannot_rejoin")
RECOVERY_PRESETS = ("rap", "wide")

OVERLAP_MIN_AREA_M2 = 1e-6  # [m^2] box intersections smaller than this are touching, not overlap
OFF_ROAD_TOLERANCE_M2 = 1e-3  # [m^2] extra area outside the drivable area that is still on-road

PATH_BACK_S = 2.0  # [s] of logged history included in the rejoin path
PATH_MIN_SPACING_M = 0.05  # [m] logged points closer than this to the previous kept one are dropped
PATH_EXTEND_BACK_M = 20.0  # [m] straight extension before the first logged point
PATH_EXTEND_FORWARD_M = 150.0  # [m] straight extension after the last logged point
PATH_RESAMPLE_M = 0.25  # [m] spacing of the smoothed reference path
PATH_SMOOTH_SIGMA_M = 1.0  # [m] Gaussian smoothing of the reference path
SPEED_HALF_WINDOW_S = 0.2  # [s] central differences of the expert's along-path speed
ROLLOUT_MAX_DT_S = 0.1  # [s]
SPEED_GAIN = 2.0  # [1/s] proportional speed tracking
DECAY_AT_HORIZON = 4.74  # w * D at which (1 + w D) exp(-w D) = 0.05
OMEGA_RANGE = (0.02, 2.0)  # [1/m] bounds of the feedback bandwidth w


class RecoveryTarget(str, Enum):
    """How a recovery sample's target is built."""

    EXPERT_FUTURE = "expert_future"  # logged future in the perturbed frame (RAP reference)
    SMOOTH_REJOIN = "smooth_rejoin"  # kinematic-bicycle rollout back onto the expert path


def _deg(x: float) -> float:
    return math.radians(x)


_COMFORT = ComfortBounds()  # nuPlan comfort bounds: the rejoin's acceleration limits


@dataclasses.dataclass(frozen=True)
class RecoveryConfig:
    """Perturbation distributions, target mode, rejoin limits and start checks.

    Ranges are ``(low, high)`` of independent uniform draws.

    Attributes:
        dx_m: Longitudinal offset in the logged frame [m].
        dy_m: Lateral offset in the logged frame [m].
        dheading_rad: Heading offset [rad].
        speed_scale: Multiplier on the logged speed (and velocity).
        accel_scale: Multiplier on the logged acceleration.
        target: Target mode.
        rejoin_horizon_s: Time by which the rejoin must be back on the expert path [s]
            (capped at the sampling horizon).
        rejoin_tolerance_m: Largest distance to the logged path after the horizon [m].
        rejoin_heading_tolerance_rad: Largest heading error after the horizon [rad].
        wheelbase_m: Bicycle wheelbase [m] (default ``PACIFICA.wheel_base``).
        max_steer_rad: Largest front-wheel angle [rad] (default ``PACIFICA.max_steering_angle``);
            curvature limit ``tan / wheelbase``.
        max_accel_mps2: Largest longitudinal acceleration [m/s^2] (default
            ``ComfortBounds().max_lon_accel``).
        max_decel_mps2: Largest braking deceleration, positive [m/s^2] (default
            ``-ComfortBounds().min_lon_accel``).
        max_lat_accel_mps2: Largest |lateral acceleration| ``v^2 kappa`` [m/s^2] (default
            ``ComfortBounds().max_abs_lat_accel``).
        check_overlap: Reject starts overlapping another agent.
        check_drivable: Reject starts leaving the drivable area.
        attempts_per_sample: ``plan_recovery`` draws at most ``num_samples *
            attempts_per_sample`` perturbations to get ``num_samples`` accepted ones.
        history_num: Number of past poses in each sample.
        history_interval_s: Their spacing [s].
    """

    dx_m: tuple[float, float] = (-0.5, 0.5)
    dy_m: tuple[float, float] = (-0.5, 0.5)
    dheading_rad: tuple[float, float] = (-_deg(15.0), _deg(15.0))
    speed_scale: tuple[float, float] = (0.8, 1.2)
    accel_scale: tuple[float, float] = (0.9, 1.1)
    target: RecoveryTarget = RecoveryTarget.SMOOTH_REJOIN
    rejoin_horizon_s: float = 3.0
    rejoin_tolerance_m: float = 0.2
    rejoin_heading_tolerance_rad: float = _deg(5.0)
    wheelbase_m: float = PACIFICA.wheel_base
    max_steer_rad: float = PACIFICA.max_steering_angle
    max_accel_mps2: float = _COMFORT.max_lon_accel
    max_decel_mps2: float = -_COMFORT.min_lon_accel
    max_lat_accel_mps2: float = _COMFORT.max_abs_lat_accel
    check_overlap: bool = True
    check_drivable: bool = True
    attempts_per_sample: int = 3
    history_num: int = DEFAULT_HISTORY_NUM_POSES
    history_interval_s: float = DEFAULT_HISTORY_INTERVAL_S  # [s]

    def __post_init__(self) -> None:
        for name in ("dx_m", "dy_m", "dheading_rad", "speed_scale", "accel_scale"):
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"RecoveryConfig.{name} must be a (low, high) pair, got {value!r}") from None
            if not (np.isfinite(low) and np.isfinite(high) and low <= high):
                raise ValueError(f"RecoveryConfig.{name} must be finite with low <= high, got {value!r}")
            object.__setattr__(self, name, (low, high))
        if self.speed_scale[0] < 0 or self.accel_scale[0] < 0:
            raise ValueError("RecoveryConfig.speed_scale and accel_scale must be >= 0")
        if abs(self.dheading_rad[0]) >= np.pi or abs(self.dheading_rad[1]) >= np.pi:
            raise ValueError(f"RecoveryConfig.dheading_rad must lie in (-pi, pi), got {self.dheading_rad}")
        try:
            object.__setattr__(self, "target", RecoveryTarget(self.target))
        except ValueError:
            known = [t.value for t in RecoveryTarget]
            raise ValueError(f"RecoveryConfig.target: unknown {self.target!r}, known: {known}") from None
        for name in (
            "rejoin_horizon_s", "rejoin_tolerance_m", "rejoin_heading_tolerance_rad", "wheelbase_m",
            "max_accel_mps2", "max_decel_mps2", "max_lat_accel_mps2",
        ):  # fmt: skip
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"RecoveryConfig.{name} must be finite and > 0, got {value!r}")
        if not 0 < self.max_steer_rad < np.pi / 2:
            raise ValueError(f"RecoveryConfig.max_steer_rad must be in (0, pi/2), got {self.max_steer_rad}")
        if int(self.attempts_per_sample) < 1:
            raise ValueError(f"RecoveryConfig.attempts_per_sample must be >= 1, got {self.attempts_per_sample}")
        _check_history(self, self.history_num, self.history_interval_s)

    @property
    def max_curvature(self) -> float:
        """Bicycle curvature limit ``tan(max_steer_rad) / wheelbase_m`` [1/m]
        (:attr:`rap.sim.bicycle.VehicleParameters.max_curvature` of these values)."""
        return dataclasses.replace(PACIFICA, wheel_base=self.wheelbase_m, max_steering_angle=self.max_steer_rad).max_curvature

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> RecoveryConfig:
        """A named preset ("rap" or "wide"), with field overrides.

        Raises:
            ValueError: Unknown preset name (the message lists the known ones).
        """
        if name == "rap":
            base = cls()
        elif name == "wide":
            base = cls(
                dx_m=(-1.0, 1.0),
                dy_m=(-1.0, 1.0),
                dheading_rad=(-_deg(30.0), _deg(30.0)),
                speed_scale=(0.7, 1.3),
                accel_scale=(0.8, 1.2),
                rejoin_horizon_s=4.0,
            )
        else:
            raise ValueError(f"RecoveryConfig.preset: unknown preset {name!r}, known: {list(RECOVERY_PRESETS)}")
        return dataclasses.replace(base, **overrides)

    def draw(self, rng: np.random.Generator) -> Perturbation:
        """One perturbation: five uniform draws in field order (dx, dy, dheading, speed, accel)."""
        ranges = np.array([self.dx_m, self.dy_m, self.dheading_rad, self.speed_scale, self.accel_scale])
        u = rng.random(5)
        v = ranges[:, 0] + u * (ranges[:, 1] - ranges[:, 0])
        return Perturbation(
            dx=float(v[0]), dy=float(v[1]), dheading=float(v[2]), speed_scale=float(v[3]), accel_scale=float(v[4])
        )


# ----------------------------------------------------------------------------------------------
# Expert reference and rejoin rollout.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ExpertReference:
    """The expert's path and speed profile in its logged frame L at the sample's step.

    Attributes:
        path: (M, 2) smoothed reference path, 0.25 m apart, with straight extensions [m].
        station: (M,) arc length along ``path`` [m].
        heading: (M,) unwrapped direction of ``path`` [rad].
        curvature: (M,) curvature of ``path`` [1/m].
        logged_path: (J, 2) logged rear-axle positions (history through the end of the valid
            log) with the straight extensions, for the convergence check [m].
        times: (K,) knot times relative to the step [s].
        speed: (K,) expert along-path speed at the knots [m/s].
        accel: (K,) its time derivative [m/s^2].
    """

    path: np.ndarray
    station: np.ndarray
    heading: np.ndarray
    curvature: np.ndarray
    logged_path: np.ndarray
    times: np.ndarray
    speed: np.ndarray
    accel: np.ndarray

    def speed_at(self, t: np.ndarray) -> np.ndarray:
        """Expert along-path speed at times ``t`` (..., [s]); held at the ends [m/s]."""
        return np.interp(t, self.times, self.speed)

    def accel_at(self, t: np.ndarray) -> np.ndarray:
        """Expert along-path acceleration at times ``t``; 0 outside the knots [m/s^2]."""
        return np.interp(t, self.times, self.accel, left=0.0, right=0.0)


def _gaussian_smooth(points: np.ndarray, sigma_samples: float) -> np.ndarray:
    """(M, 2) points smoothed along the first axis; ends continued linearly (odd reflection)."""
    half = int(math.ceil(3.0 * sigma_samples))
    if half < 1 or points.shape[0] < 2:
        return points.copy()
    x = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma_samples) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(points, ((half, half), (0, 0)), mode="reflect", reflect_type="odd")
    return np.stack([np.convolve(padded[:, d], kernel, mode="valid") for d in range(2)], axis=-1)


def expert_reference(scene: Scene, row: int, step: int) -> ExpertReference:
    """The rejoin reference of an agent at ``step`` (see the module docstring).

    Args:
        scene: The scene.
        row: Row of ``scene.tracks`` (valid at ``step``).
        step: The sample step; its pose defines frame L.

    Returns:
        The reference in frame L.

    Raises:
        ValueError: The agent is not valid at ``step``.
    """
    origin = scene.agent_pose(row, step)
    tr = scene.tracks
    valid = tr.valid[row]
    ts = scene.timestamps
    # The contiguous valid run around the step, at most PATH_BACK_S back.
    first = step
    while first > 0 and valid[first - 1] and ts[step] - ts[first - 1] <= PATH_BACK_S + 1e-9:
        first -= 1
    last = step
    while last + 1 < ts.shape[0] and valid[last + 1]:
        last += 1
    steps = np.arange(first, last + 1)
    h = tr.heading[row, steps]
    back = float(tr.rear_axle_offset[row])
    world = np.stack([tr.x[row, steps] - back * np.cos(h), tr.y[row, steps] - back * np.sin(h)], -1)
    pts = geometry.to_frame(world, origin[:2], origin[3])  # (K, 2)
    hdg = geometry.heading_to_frame(h, origin[3])  # (K,)
    times = ts[steps] - ts[step]

    # Expert along-path speed profile (station is cumulative logged distance).
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=-1)
    station = np.concatenate([[0.0], np.cumsum(seg)])
    speed = geometry.windowed_rate(station, times, SPEED_HALF_WINDOW_S)
    accel = geometry.windowed_rate(speed, times, SPEED_HALF_WINDOW_S)

    # Path: drop stops, extend straight at both ends.
    keep = [0]
    for i in range(1, pts.shape[0]):
        if np.linalg.norm(pts[i] - pts[keep[-1]]) >= PATH_MIN_SPACING_M:
            keep.append(i)
    core = pts[keep]
    d_first = np.array([np.cos(hdg[0]), np.sin(hdg[0])])
    d_last = np.array([np.cos(hdg[-1]), np.sin(hdg[-1])])
    extended = np.concatenate(
        [
            (core[0] - PATH_EXTEND_BACK_M * d_first)[None],
            core,
            (core[-1] + PATH_EXTEND_FORWARD_M * d_last)[None],
        ]
    )
    dense = geometry.resample_polyline(extended, PATH_RESAMPLE_M)
    smooth = _gaussian_smooth(dense, PATH_SMOOTH_SIGMA_M / PATH_RESAMPLE_M)
    s = geometry.polyline_arc_length(smooth)
    grad = np.gradient(smooth, axis=0)
    heading = np.unwrap(np.arctan2(grad[:, 1], grad[:, 0]))
    ds = np.gradient(s)
    curvature = np.gradient(heading) / np.where(ds > 1e-9, ds, 1e-9)
    arrays = dict(
        path=smooth, station=s, heading=heading, curvature=curvature, logged_path=extended,
        times=times, speed=speed, accel=accel,
    )  # fmt: skip
    for a in arrays.values():
        a.flags.writeable = False
    return ExpertReference(**arrays)


@dataclasses.dataclass(frozen=True, eq=False)
class Rollout:
    """A rejoin rollout in frame L.

    Attributes:
        times: (N + 1,) times from the step [s], 0 first.
        states: (N + 1, 4) (x [m], y [m], heading [rad], speed [m/s]) in frame L.
        curvature: (N,) applied curvature over each interval [1/m].
        accel: (N,) applied longitudinal acceleration over each interval [m/s^2].
        lateral_error: (N + 1,) distance to the logged path [m].
        heading_error: (N + 1,) heading minus the reference path's [rad].
        horizon_s: The rejoin horizon used [s].
        converged: Every state from ``horizon_s`` on is within the tolerances.
    """

    times: np.ndarray
    states: np.ndarray
    curvature: np.ndarray
    accel: np.ndarray
    lateral_error: np.ndarray
    heading_error: np.ndarray
    horizon_s: float
    converged: bool

    def poses_at(self, times_s: np.ndarray) -> np.ndarray:
        """(K, 3) (x, y, heading) at rollout grid times (nearest grid point) in frame L."""
        dt = self.times[1] - self.times[0]
        idx = np.clip(np.rint(np.asarray(times_s) / dt).astype(int), 0, self.times.shape[0] - 1)
        return self.states[idx, :3].copy()


def smooth_rejoin(
    ref: ExpertReference,
    start: np.ndarray,
    speed: float,
    sampling: TrajectorySampling,
    cfg: RecoveryConfig,
) -> Rollout:
    """Kinematic-bicycle rollout from a perturbed start back onto the expert path (a batch of one
    of :func:`smooth_rejoin_multi`).

    Args:
        ref: The expert reference in frame L.
        start: (3,) start pose (x [m], y [m], heading [rad]) in frame L.
        speed: Start speed [m/s] (>= 0).
        sampling: Target sampling; the rollout covers ``sampling.horizon_s`` on a grid of
            ``dt <= 0.1 s`` that divides ``sampling.interval_s``.
        cfg: Limits, rejoin horizon and tolerances.

    Returns:
        The rollout (see :class:`Rollout` and the module docstring).
    """
    starts = np.asarray(start, dtype=np.float64).reshape(1, 3)
    return smooth_rejoin_multi([ref], np.zeros(1, dtype=int), starts, np.array([float(speed)]), sampling, cfg)[0]


def _stack_refs(refs: Sequence[ExpertReference]) -> tuple[np.ndarray, ...]:
    """Paths, headings and curvatures of several references padded to one length, and the
    number of segments of each."""
    m = np.array([r.path.shape[0] - 1 for r in refs])
    size = int(m.max()) + 1
    paths = np.zeros((len(refs), size, 2))
    heads = np.zeros((len(refs), size))
    curvs = np.zeros((len(refs), size))
    for k, r in enumerate(refs):
        n = r.path.shape[0]
        paths[k, :n], heads[k, :n], curvs[k, :n] = r.path, r.heading, r.curvature
        paths[k, n:], heads[k, n:], curvs[k, n:] = r.path[-1], r.heading[-1], r.curvature[-1]
    return paths, heads, curvs, m


def _project_rows(paths, heads, curvs, rowref, p, lo, hi) -> tuple[np.ndarray, ...]:
    """:func:`_project` for K points at once, each on its own reference and segment window.

    Args:
        paths, heads, curvs: stacked references (:func:`_stack_refs`).
        rowref: (K,) reference of each point; p: (K, 2) points; lo, hi: (K,) windows.
    Returns:
        (K,) segment index, signed lateral offset, reference heading, curvature.
    """
    width = int(np.max(hi - lo))
    idx = lo[:, None] + np.arange(width)[None]  # (K, W)
    inside = idx < hi[:, None]
    idx = np.minimum(idx, hi[:, None] - 1)
    ref = rowref[:, None]
    a = paths[ref, idx]  # (K, W, 2)
    ab = paths[ref, idx + 1] - a
    denom = np.einsum("kwd,kwd->kw", ab, ab)
    ap = p[:, None, :] - a
    t = np.clip(np.einsum("kwd,kwd->kw", ap, ab) / np.where(denom > 0, denom, 1.0), 0.0, 1.0)
    diff = ap - t[..., None] * ab
    d2 = np.where(inside, np.einsum("kwd,kwd->kw", diff, diff), np.inf)
    j = np.argmin(d2, axis=1)
    rows = np.arange(p.shape[0])
    i = idx[rows, j]
    aj, abj = a[rows, j], ab[rows, j]
    cross = abj[:, 0] * (p[:, 1] - aj[:, 1]) - abj[:, 1] * (p[:, 0] - aj[:, 0])
    dist = np.sqrt(d2[rows, j])
    e_y = np.where(dist > 0, np.copysign(dist, cross), 0.0)
    w = t[rows, j]
    psi = (1 - w) * heads[rowref, i] + w * heads[rowref, i + 1]
    kappa = (1 - w) * curvs[rowref, i] + w * curvs[rowref, i + 1]
    return i, e_y, psi, kappa


def smooth_rejoin_batch(
    ref: ExpertReference,
    starts: np.ndarray,
    speeds: np.ndarray,
    sampling: TrajectorySampling,
    cfg: RecoveryConfig,
) -> list[Rollout]:
    """:func:`smooth_rejoin` for K starts on one reference at once (see :func:`smooth_rejoin_multi`)."""
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 3)
    return smooth_rejoin_multi([ref], np.zeros(starts.shape[0], dtype=int), starts, speeds, sampling, cfg)


def smooth_rejoin_multi(
    refs: Sequence[ExpertReference],
    rowref: np.ndarray,
    starts: np.ndarray,
    speeds: np.ndarray,
    sampling: TrajectorySampling,
    cfg: RecoveryConfig,
) -> list[Rollout]:
    """:func:`smooth_rejoin` for K starts at once, each on its own reference (the same control
    law, vectorized over K).

    Args:
        refs: the references; rowref: (K,) index into ``refs`` of each start.
        starts: (K, 3) start poses, each in its reference's frame L; speeds: (K,) [m/s].
    """
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 3)
    speeds = np.maximum(np.asarray(speeds, dtype=np.float64).reshape(-1), 0.0)
    rowref = np.asarray(rowref, dtype=int).reshape(-1)
    num = starts.shape[0]
    sub = max(1, int(math.ceil(sampling.interval_s / ROLLOUT_MAX_DT_S - 1e-9)))
    dt = sampling.interval_s / sub
    n = sampling.num_poses * sub
    horizon = min(cfg.rejoin_horizon_s, sampling.horizon_s)
    times = np.arange(n + 1) * dt

    v_exp = np.stack([r.speed_at(times) for r in refs])[rowref]  # (K, N + 1)
    a_exp = np.stack([r.accel_at(times) for r in refs])[rowref]
    dv0 = speeds - v_exp[:, 0]  # (K,)
    x = np.clip(times / horizon, 0.0, 1.0)
    v_des = np.maximum(v_exp + dv0[:, None] * (1.0 - x * x * (3.0 - 2.0 * x))[None], 0.0)
    a_des = a_exp - dv0[:, None] * np.where(times < horizon, 6.0 * x * (1.0 - x) / horizon, 0.0)[None]
    dist = np.sum(0.5 * (v_des[:, 1:] + v_des[:, :-1]) * dt * (times[1:] <= horizon + 1e-9), axis=1)
    omega = np.clip(DECAY_AT_HORIZON / np.maximum(dist, 1e-6), *OMEGA_RANGE)

    paths, heads, curvs, m_ref = _stack_refs(refs)
    m = m_ref[rowref]  # (K,) segments of each row's reference
    k_max = cfg.max_curvature
    states = np.empty((num, n + 1, 4))
    states[:, 0, :3] = starts
    states[:, 0, 3] = speeds
    kappas = np.empty((num, n))
    accels = np.empty((num, n))
    head_err = np.empty((num, n + 1))
    i, e_y, psi, kap = _project_rows(paths, heads, curvs, rowref, states[:, 0, :2], np.zeros(num, dtype=int), m)
    window_back = int(math.ceil(2.0 / PATH_RESAMPLE_M))
    two_pi = 2.0 * math.pi
    for k in range(n):
        cur = states[:, k]
        th, v = cur[:, ArcStateIndex.HEADING], cur[:, ArcStateIndex.SPEED]
        e_th = np.remainder(th - psi + math.pi, two_pi) - math.pi
        head_err[:, k] = e_th
        a = np.clip(a_des[:, k] + SPEED_GAIN * (v_des[:, k] - v), -cfg.max_decel_mps2, cfg.max_accel_mps2)
        v_new = next_speed(v, a, dt)
        v_bound = np.maximum(v, v_new)
        with np.errstate(divide="ignore"):
            k_lim = np.where(v_bound <= 0, k_max, np.minimum(k_max, cfg.max_lat_accel_mps2 / (v_bound * v_bound)))
        kappa = np.clip(kap - omega * omega * e_y - 2.0 * omega * np.sin(e_th), -k_lim, k_lim)
        states[:, k + 1] = arc_step(cur, kappa, a, dt)
        kappas[:, k] = kappa
        accels[:, k] = (v_new - v) / dt  # applied: less braking when the car stops within the step
        ds = 0.5 * (v + v_new) * dt  # distance of the step (as arc_step)
        ahead = np.ceil((ds + 1.0) / PATH_RESAMPLE_M).astype(int) + 2
        i, e_y, psi, kap = _project_rows(paths, heads, curvs, rowref, states[:, k + 1, :2], np.maximum(i - window_back, 0), np.minimum(i + ahead, m))
    head_err[:, n] = np.remainder(states[:, n, 2] - psi + math.pi, two_pi) - math.pi
    states[:, :, 2] = geometry.wrap_angle(states[:, :, 2])
    lateral = np.empty((num, n + 1))
    for r, ref in enumerate(refs):
        sel = rowref == r
        if sel.any():
            logged = shapely.LineString(ref.logged_path) if ref.logged_path.shape[0] >= 2 else shapely.Point(ref.logged_path[0])
            lateral[sel] = shapely.distance(shapely.points(states[sel, :, :2].reshape(-1, 2)), logged).reshape(-1, n + 1)
    after = times >= horizon - 1e-9
    converged = np.all(lateral[:, after] <= cfg.rejoin_tolerance_m, axis=1) & np.all(np.abs(head_err[:, after]) <= cfg.rejoin_heading_tolerance_rad, axis=1)
    out = []
    for r in range(num):
        arrays = (times.copy(), states[r].copy(), kappas[r].copy(), accels[r].copy(), lateral[r].copy(), head_err[r].copy())
        for arr in arrays:
            arr.flags.writeable = False
        out.append(Rollout(
            times=arrays[0], states=arrays[1], curvature=arrays[2], accel=arrays[3], lateral_error=arrays[4],
            heading_error=arrays[5], horizon_s=horizon, converged=bool(converged[r]),
        ))  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------
# Start checks.
# ----------------------------------------------------------------------------------------------


def _box(scene: Scene, row: int, step: int, pose: np.ndarray) -> shapely.Polygon:
    """The agent's box with its rear axle at world ``pose`` (x, y, heading)."""
    tr = scene.tracks
    back = float(tr.rear_axle_offset[row])
    cx = pose[0] + back * math.cos(pose[2])
    cy = pose[1] + back * math.sin(pose[2])
    corners = geometry.box_corners_2d(cx, cy, pose[2], tr.length[row, step], tr.width[row, step])
    return shapely.Polygon(corners)


_LOCAL_RADIUS_M = 30.0  # [m] agents and drivable area further than this cannot touch a perturbed start


@dataclasses.dataclass(eq=False)
class _Context:
    """What every perturbation of one (scene, step) shares."""

    scene: Scene
    step: int
    row: int
    cfg: RecoveryConfig
    sampling: TrajectorySampling
    origin: np.ndarray  # (4,) logged pose (x, y, z_ground, heading), world
    expert: Trajectory  # logged future in frame L
    history: np.ndarray  # (H, 3)
    velocity: np.ndarray  # (2,) logged, frame L
    accel: np.ndarray  # (2,) logged, frame L
    others: np.ndarray  # (P,) shapely boxes of the agents a start may not overlap
    drivable: shapely.Geometry | None
    logged_outside: float  # [m^2] area of the logged box outside the drivable area
    ref: ExpertReference | None = None

    @classmethod
    def build(cls, scene: Scene, step: int, cfg: RecoveryConfig, sampling: TrajectorySampling) -> _Context | None:
        row = scene.ego_index
        if not window_valid(scene, row, step, sampling, cfg.history_num, cfg.history_interval_s):
            return None
        expert = future_target(scene, row, step, sampling)
        history = history_poses(scene, row, step, cfg.history_num, cfg.history_interval_s)
        if expert is None or history is None:
            return None
        origin = scene.agent_pose(row, step)
        logged_box = _box(scene, row, step, origin[[0, 1, 3]])
        tr = scene.tracks
        others = np.zeros(0, dtype=object)
        if cfg.check_overlap:
            near = np.hypot(tr.x[:, step] - origin[0], tr.y[:, step] - origin[1]) < _LOCAL_RADIUS_M
            rows = np.flatnonzero(tr.valid[:, step] & (np.arange(tr.num_agents) != row) & near)
            boxes = shapely.polygons(tr.corners_2d(step)[rows])
            already = shapely.area(shapely.intersection(boxes, logged_box)) > OVERLAP_MIN_AREA_M2
            others = boxes[~already]
        drivable = None
        logged_outside = 0.0
        if cfg.check_drivable:
            # Only the neighbourhood matters (perturbations move the box by metres): clipping
            # the town-sized polygon makes every later covers/difference test cheap.
            r = _LOCAL_RADIUS_M
            poly = shapely.clip_by_rect(scene.map.drivable_polygon, origin[0] - r, origin[1] - r, origin[0] + r, origin[1] + r)
            if not poly.is_empty:
                drivable = poly
                shapely.prepare(drivable)
                if not drivable.covers(logged_box):
                    logged_outside = float(logged_box.difference(drivable).area)
        ref = expert_reference(scene, row, step) if cfg.target is RecoveryTarget.SMOOTH_REJOIN else None
        return cls(
            scene=scene, step=step, row=row, cfg=cfg, sampling=sampling, origin=origin,
            expert=expert, history=history, velocity=agent_velocity(scene, row, step),
            accel=agent_acceleration(scene, row, step), others=others, drivable=drivable,
            logged_outside=logged_outside, ref=ref,
        )  # fmt: skip

    def start_check(self, pert: Perturbation) -> str | None:
        """Why the perturbed start is rejected ("overlap", "off_road"), or None."""
        ox, oy, _, oh = (float(v) for v in self.origin)
        xy = geometry.from_frame(np.array([pert.dx, pert.dy]), (ox, oy), oh)
        world = np.array([xy[0], xy[1], float(geometry.wrap_angle(oh + pert.dheading))])
        box = _box(self.scene, self.row, self.step, world)
        if self.others.size and np.any(shapely.area(shapely.intersection(self.others, box)) > OVERLAP_MIN_AREA_M2):
            return "overlap"
        if self.drivable is not None and not self.drivable.covers(box):
            if box.difference(self.drivable).area > self.logged_outside + OFF_ROAD_TOLERANCE_M2:
                return "off_road"
        return None

    def start_speed(self, pert: Perturbation) -> float:
        """Speed of the perturbed start [m/s]."""
        velocity = pert.speed_scale * self.velocity
        return float(np.hypot(velocity[0], velocity[1]))

    def attempt(self, pert: Perturbation, key: str, rollout: Rollout | None = None) -> tuple[SamplePlan | None, str | None]:
        """The plan of one perturbation, or the reason it is rejected.

        Args:
            rollout: the perturbation's smooth-rejoin rollout when already computed (batched).
        """
        reason = self.start_check(pert)
        if reason is not None:
            return None, reason
        return self.plan_for(pert, key, rollout)

    def plan_for(self, pert: Perturbation, key: str, rollout: Rollout | None = None) -> tuple[SamplePlan | None, str | None]:
        """The plan of a perturbation whose start passed :meth:`start_check`."""
        cfg = self.cfg
        ox, oy, oz, oh = (float(v) for v in self.origin)
        start_l = np.array([pert.dx, pert.dy, pert.dheading])
        xy = geometry.from_frame(start_l[:2], (ox, oy), oh)
        heading = float(geometry.wrap_angle(oh + pert.dheading))
        velocity = pert.speed_scale * self.velocity
        speed = float(np.hypot(velocity[0], velocity[1]))
        if cfg.target is RecoveryTarget.EXPERT_FUTURE:
            poses_l = np.array(self.expert.poses)
        else:
            assert self.ref is not None
            roll = rollout if rollout is not None else smooth_rejoin(self.ref, start_l, speed, self.sampling, cfg)
            if not roll.converged:
                return None, "cannot_rejoin"
            poses_l = roll.poses_at(self.sampling.times_s)
        poses = np.empty_like(poses_l)
        poses[:, :2] = geometry.to_frame(poses_l[:, :2], start_l[:2], pert.dheading)
        poses[:, PoseIndex.HEADING] = geometry.heading_to_frame(poses_l[:, PoseIndex.HEADING], pert.dheading)
        accel = pert.accel_scale * self.accel
        viewer = np.array([xy[0], xy[1], oz, heading])
        viewer.flags.writeable = False
        plan = SamplePlan(
            key=key,
            scene_id=self.scene.scene_id,
            source=self.scene.source,
            step=int(self.step),
            kind=SampleKind.RECOVERY,
            agent_row=int(self.row),
            agent_id=int(self.scene.tracks.ids[self.row]),
            viewer_pose=viewer,
            ego_status=EgoStatus(
                speed=speed,
                velocity=(float(velocity[0]), float(velocity[1])),
                acceleration=(float(accel[0]), float(accel[1])),
                command=driving_command(self.expert),
            ),
            history=self.history,
            target=Trajectory(poses, self.sampling),
            perturbation=pert,
        )
        return plan, None


def plan_perturbation(
    scene: Scene,
    step: int,
    perturbation: Perturbation,
    cfg: RecoveryConfig,
    sampling: TrajectorySampling,
    *,
    key: str | None = None,
) -> tuple[SamplePlan | None, str | None]:
    """One recovery sample from a given perturbation of the ego's start.

    Args:
        scene: The scene (``ego_index`` is perturbed).
        step: Sample step.
        perturbation: Offsets in the logged frame and scales.
        cfg: Target mode, limits and checks (its ranges are not used).
        sampling: Target sampling.
        key: Sample key; defaults to ``sample_key(scene_id, step, "recovery", ego_id, 0)``.

    Returns:
        ``(plan, None)`` when accepted, else ``(None, reason)`` with a reason of
        :data:`REJECT_REASONS`.
    """
    ctx = _Context.build(scene, step, cfg, sampling)
    if ctx is None:
        return None, "invalid_window"
    if key is None:
        key = sample_key(scene.scene_id, step, SampleKind.RECOVERY, int(scene.tracks.ids[ctx.row]), 0)
    return ctx.attempt(perturbation, key)


def plan_recovery(
    scene: Scene,
    step: int,
    rng: np.random.Generator,
    cfg: RecoveryConfig,
    sampling: TrajectorySampling,
    num_samples: int,
    key_prefix: str | None = None,
) -> tuple[list[SamplePlan], collections.Counter]:
    """Recovery samples of the ego at ``step``.

    Draws perturbations (:meth:`RecoveryConfig.draw`) until ``num_samples`` are accepted or
    ``num_samples * cfg.attempts_per_sample`` have been drawn; every rejected draw is counted.

    Args:
        scene: The scene (``ego_index`` is perturbed).
        step: Sample step.
        rng: The only source of randomness; same seed, same plans.
        cfg: Distributions, target mode, limits, checks, history.
        sampling: Target sampling.
        num_samples: Number of samples wanted (>= 0).
        key_prefix: Key prefix; defaults to ``scene.scene_id``. Keys are
            ``f"{prefix}_{step:03d}_recovery_{ego_id}_{k}"`` with k = 0, 1, ... over accepted
            samples.

    Returns:
        The accepted plans, and a Counter of rejection reasons (:data:`REJECT_REASONS`). If the
        ego is not valid over the window, nothing is drawn and ``"invalid_window"`` counts
        ``num_samples``.
    """
    if num_samples < 0:
        raise ValueError(f"plan_recovery: num_samples must be >= 0, got {num_samples}")
    return plan_recovery_batch([(scene, rng, key_prefix)], step, cfg, sampling, num_samples)[0]


@dataclasses.dataclass(eq=False)
class _Pending:
    """One agent's recovery draws between the start checks and the rollouts."""

    scene: Scene
    ctx: _Context | None
    perts: list
    reasons: list
    prefix: str
    rollouts: dict = dataclasses.field(default_factory=dict)


def plan_recovery_batch(
    items: Sequence[tuple[Scene, np.random.Generator, str | None]],
    step: int,
    cfg: RecoveryConfig,
    sampling: TrajectorySampling,
    num_samples: int,
) -> list[tuple[list[SamplePlan], collections.Counter]]:
    """:func:`plan_recovery` for several scenes (e.g. one per re-centred agent) at one step, with
    every rejoin rollout of all of them run as one vectorized batch. Results are the same as
    calling :func:`plan_recovery` on each item.

    Args:
        items: (scene, rng, key_prefix) per acting agent (each scene's ``ego_index`` is perturbed).
    """
    if num_samples < 0:
        raise ValueError(f"plan_recovery: num_samples must be >= 0, got {num_samples}")
    pending: list[_Pending] = []
    for scene, rng, key_prefix in items:
        ctx = _Context.build(scene, step, cfg, sampling) if num_samples > 0 else None
        prefix = scene.scene_id if key_prefix is None else key_prefix
        if ctx is None:
            pending.append(_Pending(scene, None, [], [], prefix))
            continue
        # Draw every attempt up front (the same draws, in the same order, as drawing one at a
        # time) and check the starts; the surviving starts are rolled out below in one batch.
        # Draws are then taken in order until num_samples are accepted; only the draws up to
        # that point count as made (and as rejected).
        perts = [cfg.draw(rng) for _ in range(num_samples * int(cfg.attempts_per_sample))]
        pending.append(_Pending(scene, ctx, perts, [ctx.start_check(p) for p in perts], prefix))
    if cfg.target is RecoveryTarget.SMOOTH_REJOIN:
        refs, rows, starts, speeds, owners = [], [], [], [], []
        for item in pending:
            todo = [j for j, r in enumerate(item.reasons) if r is None]
            if not todo:
                continue
            assert item.ctx is not None and item.ctx.ref is not None
            refs.append(item.ctx.ref)
            for j in todo:
                p = item.perts[j]
                rows.append(len(refs) - 1)
                starts.append([p.dx, p.dy, p.dheading])
                speeds.append(item.ctx.start_speed(p))
                owners.append((item, j))
        if owners:
            rollouts = smooth_rejoin_multi(refs, np.asarray(rows), np.asarray(starts), np.asarray(speeds), sampling, cfg)
            for (item, j), roll in zip(owners, rollouts):
                item.rollouts[j] = roll
    results = []
    for item in pending:
        rejects: collections.Counter = collections.Counter()
        plans: list[SamplePlan] = []
        if item.ctx is None:
            if num_samples > 0:
                rejects["invalid_window"] += num_samples
            results.append((plans, rejects))
            continue
        agent_id = int(item.scene.tracks.ids[item.ctx.row])
        for j, pert in enumerate(item.perts):
            if item.reasons[j] is not None:
                rejects[item.reasons[j]] += 1
                continue
            plan, reason = item.ctx.plan_for(pert, sample_key(item.prefix, step, SampleKind.RECOVERY, agent_id, len(plans)), item.rollouts.get(j))
            if plan is None:
                rejects[reason] += 1
                continue
            plans.append(plan)
            if len(plans) == num_samples:
                break
        results.append((plans, rejects))
    return results
