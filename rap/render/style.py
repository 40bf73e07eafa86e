"""The raster class table: every class id the scene rasterizer draws, with its colours.

This is the one place that gives driving meaning to the rasterizer's class ids. The default
follows the best-scoring raster of the RAP ablation: black background, a distinct colour per
cuboid face so an agent's orientation is visible, colours scaled by max(0, 1 - d / 120 m) with the
distance d from the camera, traffic lights in their state's colour. To restyle, build a new
:class:`rasterizer.renderer.Style` from an edited copy of :data:`CLASS_TABLE`.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from rasterizer.photo import Material, PhotoLook
from rasterizer.renderer import Style


class RasterClass(IntEnum):
    """Class ids in class-id maps (uint8). 0 is the background."""

    BACKGROUND = 0
    DRIVABLE_AREA = 1
    DRIVEWAY = 2
    CROSSWALK = 3
    SPEED_BUMP = 4
    LANE_CENTERLINE = 5
    ROAD_LINE_WHITE = 6
    ROAD_LINE_YELLOW = 7
    ROAD_EDGE = 8
    STOP_LINE = 9
    VEHICLE = 10
    PEDESTRIAN = 11
    CYCLIST = 12
    OTHER_AGENT = 13
    EGO = 14
    LIGHT_RED = 15
    LIGHT_YELLOW = 16
    LIGHT_GREEN = 17
    LIGHT_UNKNOWN = 18
    STOP_SIGN = 19


def _faces(front, back, left, right, top, bottom):
    return (front, back, left, right, top, bottom)


def _uniform(color):
    return (color,) * 6


# (class, flat colour, cuboid face colours front/back/left/right/top/bottom), RGB uint8.
CLASS_TABLE: tuple[tuple[RasterClass, tuple[int, int, int], tuple], ...] = (
    (RasterClass.BACKGROUND, (0, 0, 0), _uniform((0, 0, 0))),
    (RasterClass.DRIVABLE_AREA, (48, 48, 48), _uniform((48, 48, 48))),
    (RasterClass.DRIVEWAY, (36, 36, 56), _uniform((36, 36, 56))),
    (RasterClass.CROSSWALK, (170, 170, 170), _uniform((170, 170, 170))),
    (RasterClass.SPEED_BUMP, (160, 110, 40), _uniform((160, 110, 40))),
    (RasterClass.LANE_CENTERLINE, (40, 110, 255), _uniform((40, 110, 255))),
    (RasterClass.ROAD_LINE_WHITE, (255, 255, 255), _uniform((255, 255, 255))),
    (RasterClass.ROAD_LINE_YELLOW, (255, 210, 0), _uniform((255, 210, 0))),
    (RasterClass.ROAD_EDGE, (255, 60, 200), _uniform((255, 60, 200))),
    (RasterClass.STOP_LINE, (225, 225, 225), _uniform((225, 225, 225))),
    (RasterClass.VEHICLE, (230, 60, 60), _faces((255, 40, 40), (40, 80, 255), (40, 220, 80), (250, 200, 30), (255, 150, 50), (90, 90, 90))),
    (RasterClass.PEDESTRIAN, (255, 80, 255), _faces((255, 120, 255), (150, 40, 150), (220, 80, 220), (190, 60, 190), (255, 170, 255), (100, 30, 100))),
    (RasterClass.CYCLIST, (0, 230, 230), _faces((80, 255, 255), (0, 120, 140), (0, 200, 200), (0, 170, 180), (150, 255, 255), (0, 80, 90))),
    (RasterClass.OTHER_AGENT, (200, 140, 90), _uniform((200, 140, 90))),
    (RasterClass.EGO, (255, 255, 255), _faces((255, 255, 255), (150, 150, 150), (220, 220, 220), (190, 190, 190), (240, 240, 240), (110, 110, 110))),
    (RasterClass.LIGHT_RED, (255, 0, 0), _uniform((255, 0, 0))),
    (RasterClass.LIGHT_YELLOW, (255, 230, 0), _uniform((255, 230, 0))),
    (RasterClass.LIGHT_GREEN, (0, 255, 0), _uniform((0, 255, 0))),
    (RasterClass.LIGHT_UNKNOWN, (130, 130, 200), _uniform((130, 130, 200))),
    (RasterClass.STOP_SIGN, (255, 0, 90), _uniform((255, 0, 90))),
)

DEPTH_DECAY_M = 120.0  # [m] colour reaches zero at this distance from the camera


def default_style(depth_decay_m: float = DEPTH_DECAY_M) -> Style:
    """The default raster style (see the module docstring)."""
    classes = [row[0] for row in CLASS_TABLE]
    if classes != list(RasterClass):
        raise AssertionError("CLASS_TABLE must list every RasterClass in id order")
    return Style(
        colors=np.array([row[1] for row in CLASS_TABLE], dtype=np.uint8),
        face_colors=np.array([row[2] for row in CLASS_TABLE], dtype=np.uint8),
        depth_decay_m=depth_decay_m,
        background=CLASS_TABLE[0][1],
        names=tuple(c.name.lower() for c in classes),
    )


# The photo look (a stand-in for camera images, never real ones): (class, colour, material).
PHOTO_TABLE: tuple[tuple[RasterClass, tuple[int, int, int], int], ...] = (
    (RasterClass.BACKGROUND, (0, 0, 0), Material.MATTE),
    (RasterClass.DRIVABLE_AREA, (66, 66, 68), Material.ROUGH),  # asphalt
    (RasterClass.DRIVEWAY, (112, 108, 102), Material.ROUGH),  # concrete
    (RasterClass.CROSSWALK, (214, 214, 208), Material.PAINT),
    (RasterClass.SPEED_BUMP, (196, 170, 70), Material.PAINT),
    (RasterClass.LANE_CENTERLINE, (66, 66, 68), Material.HIDDEN),  # not painted on real roads: not in the picture
    (RasterClass.ROAD_LINE_WHITE, (222, 222, 216), Material.PAINT),
    (RasterClass.ROAD_LINE_YELLOW, (214, 176, 44), Material.PAINT),
    (RasterClass.ROAD_EDGE, (150, 148, 140), Material.MATTE),  # kerb
    (RasterClass.STOP_LINE, (222, 222, 216), Material.PAINT),
    (RasterClass.VEHICLE, (160, 160, 160), Material.BODY),
    (RasterClass.PEDESTRIAN, (120, 100, 90), Material.BODY),
    (RasterClass.CYCLIST, (120, 110, 100), Material.BODY),
    (RasterClass.OTHER_AGENT, (128, 118, 104), Material.MATTE),
    (RasterClass.EGO, (200, 200, 200), Material.BODY),
    (RasterClass.LIGHT_RED, (255, 40, 30), Material.EMISSIVE),
    (RasterClass.LIGHT_YELLOW, (255, 190, 20), Material.EMISSIVE),
    (RasterClass.LIGHT_GREEN, (40, 255, 120), Material.EMISSIVE),
    (RasterClass.LIGHT_UNKNOWN, (60, 60, 64), Material.MATTE),
    (RasterClass.STOP_SIGN, (190, 24, 32), Material.MATTE),
)


def photo_style(seed: int = 0) -> Style:
    """The ``photo`` style: the same classes drawn as a camera-like stand-in image (sky, lit
    asphalt and paint, shaded bodies, haze, vignetting, blur, seeded sensor noise; see
    :mod:`rasterizer.photo`). It is not a real camera image."""
    if [row[0] for row in PHOTO_TABLE] != list(RasterClass):
        raise AssertionError("PHOTO_TABLE must list every RasterClass in id order")
    colors = np.array([row[1] for row in PHOTO_TABLE], dtype=np.uint8)
    return Style(
        colors=colors,
        face_colors=np.repeat(colors[:, None], 6, axis=1),
        depth_decay_m=0.0,
        names=tuple(c.name.lower() for c in RasterClass),
        photo=PhotoLook(materials=np.array([row[2] for row in PHOTO_TABLE], dtype=np.uint8), ground=(98, 110, 74), seed=seed),
    )


STYLES = ("raster", "photo")


def named_style(name: str, seed: int = 0) -> Style:
    """``raster`` (:func:`default_style`) or ``photo`` (:func:`photo_style`)."""
    if name == "raster":
        return default_style()
    if name == "photo":
        return photo_style(seed)
    raise ValueError(f"unknown style {name!r}; choose from {list(STYLES)}")


def class_table_markdown() -> str:
    """The class table as a Markdown table (id, name, colour), for docs."""
    lines = ["| id | class | colour (RGB) |", "|---:|---|---|"]
    for cls, color, _ in CLASS_TABLE:
        lines.append(f"| {int(cls)} | {cls.name.lower()} | {color} |")
    return "\n".join(lines)
