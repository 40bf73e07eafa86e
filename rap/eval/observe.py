"""Observations: what an agent sees at a step, built from a scene (evaluation) or from a dataset
sample (training), as one type, :class:`rap.eval.agent.Observation`.

:class:`Observer` renders the agent's sensor rig from the acting agent's seat and reads its status
and history with :mod:`rap.kinematics`, under the history and command horizon of an
:class:`~rap.eval.config.ObservationSection` (by default the same as generated samples).
It keeps one :class:`~rap.render.scene_raster.SceneRasterizer` and hands it each new scene with
``with_scene``, so scenes (or simulation ticks) that share a map reuse its geometry.
"""

from __future__ import annotations

import numpy as np

from rap.dataset.sample import Sample
from rap.eval.agent import FROM_CONFIG, Observation, SensorConfig
from rap.eval.config import ObservationSection
from rap.kinematics import DrivingCommand, EgoStatus, agent_acceleration, agent_velocity, driving_command, future_target, history_poses
from rap.render.rigs import camera_record
from rap.render.rigs import get_rig
from rap.render.scene_raster import SceneRasterizer
from rap.scene import Scene
from rap.trajectory import TrajectorySampling

__all__ = ["Observer", "observation_from_sample", "status_at"]


def status_at(scene: Scene, row: int, step: int, command_sampling: TrajectorySampling) -> EgoStatus:
    """An agent's status at ``step`` in its own frame; the command is read from its logged
    future at ``command_sampling`` (STRAIGHT where the log ends sooner).

    Raises:
        ValueError: the agent is not valid at ``step``.
    """
    future = future_target(scene, row, step, command_sampling)
    command = driving_command(future) if future is not None else DrivingCommand.STRAIGHT
    v, a = agent_velocity(scene, row, step), agent_acceleration(scene, row, step)
    return EgoStatus(float(np.hypot(*v)), (float(v[0]), float(v[1])), (float(a[0]), float(a[1])), command)


class Observer:
    """Builds an agent's observations of scenes.

    Args:
        renderer: an open :class:`rasterizer.renderer.Renderer` (not owned); may be None when
            the agent wants no images.
        sensors: the agent's sensor config (rig and size; ``rig=None``: no images; the defaults
            defer to ``config``).
        config: rig and size for agents that defer to it, history and command horizon.
        privileged: hand the scene and step to the agent (rule-based agents only).
    """

    def __init__(self, renderer, sensors: SensorConfig, config: ObservationSection = ObservationSection(), *, privileged: bool = False) -> None:
        self.renderer = renderer
        self.sensors = sensors
        self.config = config
        self.privileged = privileged
        rig_name = config.rig if sensors.rig == FROM_CONFIG else sensors.rig
        size = tuple(config.size) if sensors.size is None else tuple(sensors.size)
        self.rig = get_rig(rig_name, size) if rig_name is not None else None
        self.cameras = {cam.name: camera_record(cam) for cam in self.rig} if self.rig is not None else {}
        self._raster: SceneRasterizer | None = None

    def rasterizer(self, scene: Scene) -> SceneRasterizer:
        """The rasterizer of ``scene`` (map geometry reused when the map is the one last seen)."""
        if self._raster is None:
            self._raster = SceneRasterizer(self.renderer, scene)
        elif self._raster.scene is not scene:
            self._raster = self._raster.with_scene(scene)
        return self._raster

    def observe(self, scene: Scene, step: int, sampling: TrajectorySampling, row: int | None = None) -> Observation:
        """What the agent in ``row`` (default the ego) sees at ``step``; it must answer with a
        trajectory at ``sampling``.

        Raises:
            ValueError: the agent is not valid at ``step``.
        """
        row = scene.ego_index if row is None else row
        cfg = self.config
        status = status_at(scene, row, step, cfg.command_sampling.to_sampling())
        history = history_poses(scene, row, step, cfg.history.num_poses, cfg.history.interval_s)
        images = {}
        if self.rig is not None:
            for view in self.rasterizer(scene).render(step, self.rig, row):
                images[view.camera_name] = view.rgb.copy()
        return Observation(
            scene_id=scene.scene_id, time_s=float(scene.timestamps[step]), images=images, cameras=dict(self.cameras), ego_status=status,
            history=np.zeros((0, 3)) if history is None else history, sampling=sampling,
            scene=scene if self.privileged else None, step=step if self.privileged else None,
        )  # fmt: skip


def observation_from_sample(sample: Sample, sampling: TrajectorySampling | None = None) -> Observation:
    """The observation a dataset sample stands for (what the acting agent saw at its step).

    Args:
        sample: a generated sample (e.g. from :func:`rap.dataset.reader.record_to_sample`).
        sampling: the trajectory the planner answers with (default: the sample's target's).

    Returns:
        An :class:`Observation` with the sample's views, camera records, status and history;
        ``time_s`` is None (samples do not store it) and nothing privileged is attached.
    """
    plan = sample.plan
    return Observation(
        scene_id=plan.scene_id,
        time_s=None,
        images=dict(sample.images),
        cameras=dict(sample.cameras),
        ego_status=plan.ego_status,
        history=np.asarray(plan.history, dtype=np.float64),
        sampling=plan.target.sampling if sampling is None else sampling,
    )
