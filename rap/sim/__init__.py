"""Simulation core: kinematic bicycle model, LQR trajectory tracker, rollouts of planned trajectories,
a PDM-Closed-style reference planner (IDM along the route) for NAVSIM's ego-progress metric, and
the Intelligent Driver Model (:mod:`rap.sim.idm`: the law, leader search, reactive agents on any
scene's lanes).

Entry point: :func:`simulate` turns (K, T, 3) planned ego-frame poses into (K, 41, 11) executed
states at 10 Hz (columns :class:`StateIndex`).
"""

from rap.sim.bicycle import PACIFICA, BicycleConfig, CommandIndex, StateIndex, VehicleParameters, propagate
from rap.sim.idm import Boxes, IDMAgents, IDMParameters, idm_acceleration, path_hits, route_path
from rap.sim.tracker import LQRConfig, RolloutConfig, fit_profiles, interpolate_poses, simulate, track

__all__ = [
    "PACIFICA",
    "BicycleConfig",
    "CommandIndex",
    "StateIndex",
    "VehicleParameters",
    "propagate",
    "Boxes",
    "IDMAgents",
    "IDMParameters",
    "idm_acceleration",
    "path_hits",
    "route_path",
    "LQRConfig",
    "RolloutConfig",
    "fit_profiles",
    "interpolate_poses",
    "simulate",
    "track",
]
