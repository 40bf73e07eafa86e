"""Draws docs/images/real_raster_photo.png: the shipped Waymo perception frame's front cameras as
stored (real, top), the rasters of its labelled boxes through each camera's calibration (middle)
and the same boxes in the camera-like ``photo`` stand-in (bottom). Run from the repository root:
python docs/tools/real_raster_photo.py"""

from __future__ import annotations

from rap.augment.frame_pairs import frame_sample
from rap.images import contact_sheet, save_png
from rap.render.session import open_renderer
from rap.render.style import default_style, photo_style
from rap.sources.waymo_frame import load_frame
from rap.trajectory import NAVSIM_SAMPLING

CAMERAS = ("FRONT_LEFT", "FRONT", "FRONT_RIGHT")


def main() -> None:
    frame = load_frame("data/waymo/perception_frame_1024360143612057520.tfrecord")
    rows = {"real": frame.images}
    for label, style in (("raster", default_style()), ("photo (stand-in)", photo_style(0))):
        with open_renderer(style) as renderer:
            rows[label] = frame_sample(frame, renderer, NAVSIM_SAMPLING, 4).images
    tiles = [(f"{label} {cam}", images[cam]) for label, images in rows.items() for cam in CAMERAS]
    save_png("docs/images/real_raster_photo.png", contact_sheet(tiles, columns=3, max_width=1200))


if __name__ == "__main__":
    main()
