"""Paired real/raster samples from Waymo perception frames (``rap generate --source waymo-frame:PATH``).

Each frame becomes one ``paired`` sample: per camera, the real image as stored (its JPEG bytes,
never re-encoded) and the raster of the frame's labelled 3D boxes rendered through that camera's
own calibration (distortion included, the vehicle's motion between the lidar sweep and the
exposure accounted for, as ``rap check-projection`` renders them). Perception frames carry no map,
so the raster holds the boxes only. A single frame has no future: the sample is written with
``"has_target": false`` in its metadata, a zero status and zero history/target arrays of the
configured shapes, so it serves the alignment losses and nothing that needs a target.
"""

from __future__ import annotations

import numpy as np

from rap.dataset.sample import Sample, SampleKind, SamplePlan
from rap.kinematics import DrivingCommand, EgoStatus
from rap.render.rigs import camera_record
from rap.render.style import RasterClass
from rap.sources.waymo_frame import WaymoFrame, WaymoLabelType
from rap.trajectory import Trajectory, TrajectorySampling
from rasterizer.primitives import Boxes, TriangleMesh
from rasterizer.renderer import Renderer, View

__all__ = ["RASTER_CLASS", "frame_sample"]

# Waymo laser label type → the raster class it is drawn as.
RASTER_CLASS = {
    WaymoLabelType.UNKNOWN: RasterClass.OTHER_AGENT,
    WaymoLabelType.VEHICLE: RasterClass.VEHICLE,
    WaymoLabelType.PEDESTRIAN: RasterClass.PEDESTRIAN,
    WaymoLabelType.SIGN: RasterClass.STOP_SIGN,
    WaymoLabelType.CYCLIST: RasterClass.CYCLIST,
}


def frame_sample(frame: WaymoFrame, renderer: Renderer, sampling: TrajectorySampling, history_num: int) -> Sample:
    """The paired sample of one frame (see the module docstring), rasters drawn with ``renderer``
    (the raster style); ``sampling`` and ``history_num`` give the shapes of the (zero) target
    and history arrays.

    Raises:
        rap.sources.waymo_frame.WaymoFrameError: a camera without calibration or image.
    """
    rig = frame.rig()
    labels = frame.boxes
    classes = np.array([RASTER_CLASS[WaymoLabelType(int(t))] for t in labels.types], dtype=np.uint32)
    renderer.set_static(TriangleMesh.empty())  # no map: another scene's may still be loaded
    renderer.set_boxes(Boxes(labels.centers, labels.sizes, labels.headings, classes, np.arange(1, len(labels) + 1, dtype=np.uint32)))
    views = renderer.render([View(cam, frame.body_to_frame(cam.name)) for cam in rig], outputs=("rgb",))
    images = {v.camera_name: np.ascontiguousarray(v.rgb) for v in views}
    pose = frame.vehicle_pose
    viewer = np.array([pose[0, 3], pose[1, 3], pose[2, 3], np.arctan2(pose[1, 0], pose[0, 0])], dtype=np.float64)
    plan = SamplePlan(
        key=f"{frame.name}_{frame.record:04d}_paired",
        scene_id=frame.name,
        source=f"waymo-frame:{frame.path}",
        step=int(frame.record),
        kind=SampleKind.PAIRED,
        agent_row=-1,
        agent_id=-1,
        viewer_pose=viewer,
        ego_status=EgoStatus(speed=0.0, velocity=(0.0, 0.0), acceleration=(0.0, 0.0), command=DrivingCommand.STRAIGHT),
        history=np.zeros((history_num, 3)),
        target=Trajectory(np.zeros((sampling.num_poses, 3)), sampling),
    )
    return Sample(plan, images, {cam.name: camera_record(cam) for cam in rig}, real_images={cam.name: frame.jpegs[cam.name] for cam in rig}, has_target=False)
