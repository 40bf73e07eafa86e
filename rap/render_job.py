"""`rap render` and `rap bench-render`: render a scene's rig to files, or measure throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rap.images import contact_sheet, save_json, save_npy, save_png
from rap.scene import Scene
from rap.scene_raster import RasterConfig, SceneRasterizer
from rap.style import default_style
from rasterizer.camera import OrthoCamera, PinholeCamera, Rig
from rasterizer.context import context_info, create_context
from rasterizer.renderer import Renderer


def agent_row(scene: Scene, agent_id: int | None) -> int:
    """Row of ``scene.tracks`` for a track id (None: the ego).

    Raises:
        ValueError: no such id, listing a few valid ones.
    """
    if agent_id is None:
        return scene.ego_index
    rows = np.flatnonzero(scene.tracks.ids == agent_id)
    if not len(rows):
        sample = ", ".join(str(int(i)) for i in scene.tracks.ids[:8])
        raise ValueError(f"scene {scene.scene_id}: no agent with id {agent_id} (ids include {sample}, ...)")
    return int(rows[0])


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


def render_to_dir(scene: Scene, rig: Rig, out_dir: str | Path, *, step: int | None = None, agent_id: int | None = None, outputs: Sequence[str] = ("rgb",), config: RasterConfig = RasterConfig()) -> dict:
    """Render one step of ``scene`` from an agent's seat and write the files.

    Writes ``<CAM>.png`` (semantic RGB), ``<CAM>_class.png`` (uint8 class ids),
    ``<CAM>_instance.npy`` (uint32), ``<CAM>_depth.npy`` (float32 [m], 0 = nothing) for the
    requested outputs, ``contact_sheet.png`` and ``render.json`` (scene, step, viewer, cameras).

    Returns:
        The ``render.json`` document.
    """
    out_dir = Path(out_dir)
    step = scene.current_index if step is None else step
    viewer = agent_row(scene, agent_id)
    outputs = tuple(dict.fromkeys(("rgb",) + tuple(outputs)))
    ctx = create_context()
    try:
        with Renderer(ctx, default_style()) as renderer:
            views = SceneRasterizer(renderer, scene, config).render(step, rig, viewer, outputs)
            files = []
            for view in views:
                name = view.camera_name
                save_png(out_dir / f"{name}.png", view.rgb)
                files.append(f"{name}.png")
                if view.class_id is not None:
                    save_png(out_dir / f"{name}_class.png", view.class_id)
                    files.append(f"{name}_class.png")
                if view.instance is not None:
                    save_npy(out_dir / f"{name}_instance.npy", view.instance)
                    files.append(f"{name}_instance.npy")
                if view.depth is not None:
                    save_npy(out_dir / f"{name}_depth.npy", view.depth)
                    files.append(f"{name}_depth.npy")
            save_png(out_dir / "contact_sheet.png", contact_sheet([(v.camera_name, v.rgb) for v in views]))
            renderer_name = context_info(ctx).renderer
    finally:
        ctx.release()
    doc = {
        "scene_id": scene.scene_id,
        "source": scene.source,
        "step": step,
        "time_s": float(scene.timestamps[step]),
        "viewer": {"row": viewer, "id": int(scene.tracks.ids[viewer]), "is_ego": viewer == scene.ego_index},
        "viewer_pose_world": [float(v) for v in scene.agent_pose(viewer, step)],
        "rig": rig.name,
        "cameras": {cam.name: camera_record(cam) for cam in rig},
        "files": files + ["contact_sheet.png"],
        "gl_renderer": renderer_name,
    }
    save_json(out_dir / "render.json", doc)
    return doc


@dataclass
class BenchResult:
    views_per_s: float
    frames_per_s: float
    frames: int
    views: int
    seconds: float


def bench_render(scene: Scene, rig: Rig, frames: int, *, outputs: Sequence[str] = ("rgb",), warmup: int = 3, pipeline: int = 0, progress: Callable[[int], None] | None = None) -> dict:
    """Render ``frames`` frames of ``rig`` on the ego, advancing one step per frame (cycling
    through the steps where the ego is valid), so moving agents are re-uploaded every frame.
    Timing includes box upload, drawing and readback of every requested output into host
    memory. ``pipeline`` frames are in flight (asynchronous readback; 1 = synchronous; 0 = auto:
    2 on a GPU, 1 on a software renderer, where the extra pixel-buffer copy costs more than the
    overlap gains).

    Returns:
        JSON-ready dict with ``views_per_s``, ``frames_per_s``, ``frames``, ``views``,
        ``seconds``, ``rig``, ``size``, ``outputs``, ``gl_renderer``.
    """
    if frames <= 0:
        raise ValueError("frames must be positive")
    steps = np.flatnonzero(scene.tracks.valid[scene.ego_index])
    ctx = create_context()
    try:
        if pipeline <= 0:
            pipeline = 1 if context_info(ctx).is_software else 2
        with Renderer(ctx, default_style()) as renderer:
            rast = SceneRasterizer(renderer, scene)
            for _ in rast.render_steps((int(steps[i % len(steps)]) for i in range(warmup)), rig, outputs=outputs, depth=pipeline):
                pass
            start = time.perf_counter()
            done = 0
            for _ in rast.render_steps((int(steps[i % len(steps)]) for i in range(frames)), rig, outputs=outputs, depth=pipeline):
                done += 1
                if progress:
                    progress(done)
            seconds = time.perf_counter() - start
            info = context_info(ctx)
    finally:
        ctx.release()
    views = frames * len(rig)
    cam = rig.cameras[0]
    return {
        "views_per_s": views / seconds,
        "frames_per_s": frames / seconds,
        "frames": frames,
        "views": views,
        "seconds": seconds,
        "rig": rig.name,
        "size": f"{cam.width}x{cam.height}",
        "outputs": list(outputs),
        "pipeline": pipeline,
        "distorted": any(getattr(c, "is_distorted", False) for c in rig),
        "gl_renderer": info.renderer,
    }
