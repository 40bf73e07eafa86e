"""Named camera rigs, mounted on the ego frame (rear-axle centre on the ground, x forward).

* ``nuplan8``: the 8 nuPlan cameras (CAM_F0, L0-L2, R0-R2, B0), 1920x1080, with their
  intrinsics and distortion, from ``rap/assets/nuplan_cameras.json`` (as used by the RAP reference
  renderer). That file gives camera-to-lidar poses; like the RAP renderer we mount the lidar
  frame at the ego origin and move every camera 2.0 m back and 0.8 m up
  (:data:`NUPLAN_MOUNT_OFFSET`), which puts the front camera about 2.3 m above the ground.
* ``front3``: CAM_L0, CAM_F0, CAM_R0 of that rig (the cameras NAVSIM / RAP planners see).

Like the RAP reference renderer, these rigs render ideal pinholes with the nuPlan intrinsics by
default; ``distortion=True`` keeps the calibrated radial-tangential distortion (the renderer then
draws an undistorted intermediate image and warps it, about 3x the cost at 1920x1080 on llvmpipe,
see docs/benchmarks.md).
* ``bev``: one top-down orthographic camera, 64 m x 64 m centred 16 m ahead of the ego.
* ``waymo5``: the 5 cameras of a Waymo perception frame, from its own calibration
  (see :mod:`rap.sources.waymo_frame`).
"""

from __future__ import annotations

from importlib import resources

from rasterizer.camera import OrthoCamera, PinholeCamera, Rig, load_rig_json

NUPLAN_MOUNT_OFFSET = (-2.0, 0.0, 0.8)  # [m] added to the camera-to-lidar translations
NUPLAN8_NAMES = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_B0", "CAM_R2", "CAM_R1", "CAM_R0")
FRONT3_NAMES = ("CAM_L0", "CAM_F0", "CAM_R0")
RIG_NAMES = ("front3", "nuplan8", "bev")


def nuplan_rig_path():
    """Path of the shipped nuPlan camera calibration JSON."""
    return resources.files("rap") / "assets" / "nuplan_cameras.json"


def get_rig(name: str, size: tuple[int, int] | None = None, distortion: bool = False) -> Rig:
    """A named rig, optionally with every camera resized to ``size`` = (width, height).

    Args:
        name: one of :data:`RIG_NAMES`.
        size: (width, height) of every camera [px]; default the calibration's size.
        distortion: keep the calibrated lens distortion (default: ideal pinholes, as the RAP
            reference renderer draws).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name == "nuplan8":
        rig = load_rig_json(nuplan_rig_path(), mount_offset=NUPLAN_MOUNT_OFFSET, names=NUPLAN8_NAMES, name="nuplan8")
    elif name == "front3":
        rig = load_rig_json(nuplan_rig_path(), mount_offset=NUPLAN_MOUNT_OFFSET, names=FRONT3_NAMES, name="front3")
    elif name == "bev":
        rig = Rig("bev", (OrthoCamera("BEV", 512, 512, extent_x=64.0, extent_y=64.0, center=(16.0, 0.0)),))
    else:
        raise ValueError(f"unknown rig {name!r}; known rigs: {', '.join(RIG_NAMES)} (waymo5 comes from a perception frame)")
    if not distortion:
        rig = Rig(rig.name, tuple(c.without_distortion() if isinstance(c, PinholeCamera) else c for c in rig))
    return rig.resized(*size) if size is not None else rig


def camera_record(cam) -> dict:
    """JSON-ready description of a camera (intrinsics, distortion, mounting)."""
    if isinstance(cam, OrthoCamera):
        return {"type": "orthographic", "width": cam.width, "height": cam.height, "extent_x_m": cam.extent_x, "extent_y_m": cam.extent_y, "center_m": list(cam.center)}
    assert isinstance(cam, PinholeCamera)
    return {
        "type": "pinhole",
        "width": cam.width,
        "height": cam.height,
        "intrinsics": cam.intrinsic_matrix.tolist(),
        "distortion_k1k2p1p2k3": list(cam.distortion),
        "cam_to_body": cam.cam_to_body.tolist(),
    }
