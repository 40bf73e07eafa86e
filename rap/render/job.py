"""`rap render`: render a scene's rig to files; agent rows by track id."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rap.images import contact_sheet, save_json, save_npy, save_png
from rap.scene import Scene
from rap.render.scene_raster import RasterConfig, SceneRasterizer
from rap.render.rigs import camera_record
from rasterizer.camera import Rig
from rap.render.session import open_renderer
from rap.render.style import named_style
from rasterizer.context import context_info


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


def render_to_dir(
    scene: Scene, rig: Rig, out_dir: str | Path, *, step: int | None = None, agent_id: int | None = None, outputs: Sequence[str] = ("rgb",),
    config: RasterConfig = RasterConfig(), style: str = "raster", seed: int = 0,
) -> dict:  # fmt: skip
    """Render one step of ``scene`` from an agent's seat and write the files.

    ``style``: ``raster`` (the semantic raster) or ``photo`` (a camera-like stand-in image, not a
    real one; ``seed`` seeds its sensor noise), see :func:`rap.render.style.named_style`.

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
    with open_renderer(named_style(style, seed)) as renderer:
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
        renderer_name = context_info(renderer.ctx).renderer
    doc = {
        "scene_id": scene.scene_id,
        "source": scene.source,
        "step": step,
        "time_s": float(scene.timestamps[step]),
        "viewer": {"row": viewer, "id": int(scene.tracks.ids[viewer]), "is_ego": viewer == scene.ego_index},
        "viewer_pose_world": [float(v) for v in scene.agent_pose(viewer, step)],
        "rig": rig.name,
        "cameras": {cam.name: camera_record(cam) for cam in rig},
        "style": style,
        "seed": seed if style == "photo" else None,
        "files": files + ["contact_sheet.png"],
        "gl_renderer": renderer_name,
    }
    save_json(out_dir / "render.json", doc)
    return doc
