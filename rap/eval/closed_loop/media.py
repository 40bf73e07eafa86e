"""Media of the closed-loop HTML report, per route: the recorded states, a BEV animation and the
ego's camera strip (``closed_loop.report_media``, on by default).

* :class:`RouteRecorder` records, every tick of :func:`~rap.eval.closed_loop.runner.run_route`,
  the box centre, heading and validity of every track (the ego first), the ego's speed and the
  traffic-light states; at the first query at or after every ``report_strip_s`` seconds it keeps
  the camera views the agent was given (an agent without cameras: the evaluation config's rig,
  rendered for the report only, at thumbnail size) as one row of thumbnails.
* :meth:`RouteRecorder.write` writes, after the route, ``routes/<route_id>.npz`` (the recorded
  states: the same bytes for the same run), and under ``media/<route_id>/``: the BEV animation
  (``bev.webm``, VP8 through OpenCV, 2x real time; ``bev.mp4`` (H.264) or an animated
  ``bev.gif`` where VP8 is missing), its first frame (``poster.png``) and up to
  :data:`MAX_THUMBS` camera thumbnails (``cam_<t>.jpg``). Every file is written atomically.

A frame: the BEV around the ego, heading up (drivable area, painted lines, the route in blue,
the ego white, background traffic orange, scenario actors magenta (pedestrians as dots), parked cars grey, the light
of each signalized connector as a dot at its stop line), the latest camera row below it, and
the route's timeline (infractions as coloured ticks, a white cursor at the frame's time).
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from rap.dataset.codec import npz_bytes
from rap.fileio import write_bytes_atomic
from rap.scene import LightState, RoadLineType
from rap.sim.bicycle import PACIFICA

__all__ = [
    "INFRACTION_COLORS", "MAX_THUMBS", "RouteRecorder", "load_states", "render_frames", "save_states", "write_video",
]  # fmt: skip

# Sizes and rates keep the video cheap (VP8 through OpenCV costs ~5 ms a 320 x 304 frame on one
# CPU core, a frame's drawing ~1 ms): ~1 s per minute of simulated route.
PX_PER_M = 3.0  # BEV scale
FRAME_W, BEV_H, ROW_H, BAR_H = 320, 240, 54, 10  # [px] frame width; heights of the BEV, camera row, timeline
EGO_AT = (FRAME_W // 2, 165)  # [px] the ego's box centre in the BEV (more room ahead)
CAM_H = 80  # [px] camera thumbnails' height (HTML report)
VIDEO_FPS = 5.0
FRAME_HZ = 2.5  # frames per simulated second (the video runs at 2x real time)
MAX_THUMBS = 12  # camera thumbnails per route in the HTML report
JPEG_QUALITY = 85

# infraction name -> "#rrggbb" (the HTML timeline and legend; the video's timeline ticks)
INFRACTION_COLORS = {
    "collisions_vehicle": "#e6194b", "collisions_pedestrian": "#911eb4", "collisions_layout": "#f58231", "red_light": "#f032e6",
    "stop_infraction": "#9a6324", "outside_route_lanes": "#ffe119", "min_speed_infractions": "#a9a9a9",
    "yield_emergency_vehicle_infractions": "#4363d8", "scenario_timeouts": "#469990", "route_dev": "#42d4f4",
    "vehicle_blocked": "#bfef45", "route_timeout": "#dcbeff",
}  # fmt: skip

# track kinds (``kind`` in the states) and their BGR colours
EGO, BACKGROUND, EVENT, PARKED, EVENT_PARKED, PEDESTRIAN = 0, 1, 2, 3, 4, 5
_KIND_BGR = {
    EGO: (255, 255, 255), BACKGROUND: (40, 150, 245), EVENT: (220, 60, 220), PARKED: (140, 140, 140), EVENT_PARKED: (220, 60, 220),
    PEDESTRIAN: (220, 60, 220),
}  # fmt: skip
_PEDESTRIAN_PX = 3  # [px] radius of the dot that marks a pedestrian (its 0.6 m box is under 2 px)
_BG, _ROAD, _ROUTE = (28, 28, 28), (72, 72, 72), (230, 150, 60)
_LIGHT_BGR = {
    int(LightState.STOP): (40, 40, 255), int(LightState.ARROW_STOP): (40, 40, 255), int(LightState.FLASHING_STOP): (40, 40, 255),
    int(LightState.CAUTION): (0, 220, 255), int(LightState.ARROW_CAUTION): (0, 220, 255), int(LightState.FLASHING_CAUTION): (0, 220, 255),
    int(LightState.GO): (60, 220, 60), int(LightState.ARROW_GO): (60, 220, 60),
}  # fmt: skip
_YELLOW_LINES = {int(t) for t in RoadLineType if "YELLOW" in t.name}


def _bgr(hex_color: str) -> tuple[int, int, int]:
    v = int(hex_color.lstrip("#"), 16)
    return (v & 255, (v >> 8) & 255, v >> 16)


# --- recording ----------------------------------------------------------------------------------


class RouteRecorder:
    """Records one route's world for the report (see the module docs).

    Args:
        world: the route's world (:class:`~rap.eval.closed_loop.world.World`), before its first tick.
        strip_s: [s] between camera captures.
    """

    def __init__(self, world, strip_s: float) -> None:
        self.world = world
        self.strip_s = float(strip_s)
        o = world.others()
        n_agents = len(world.agents)
        kinds = [BACKGROUND if r == "background" else EVENT for r in world.roles]
        kinds += [EVENT_PARKED if k == world.event_parked else PARKED for k in range(len(world.statics))]
        kinds += [PEDESTRIAN] * len(world.walkers)
        self.kind = np.array([EGO, *kinds], dtype=np.int8)
        assert len(self.kind) == 1 + n_agents + len(world.statics) + len(world.walkers)
        self.length = np.concatenate([[PACIFICA.length], o["length"]]).astype(np.float32)
        self.width = np.concatenate([[PACIFICA.width], o["width"]]).astype(np.float32)
        self.light_xy = np.array([world.town.lanes[c].points[0] for c in world.signal_lanes], dtype=np.float32).reshape(-1, 2)
        pts, arcs = world.route_points()
        on = (arcs >= -1e-6) & (arcs <= world.length + 1e-6)
        self.route = np.ascontiguousarray(pts[on][::4], dtype=np.float32)
        self.frames: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]] = []
        self.strip: list[tuple[float, np.ndarray]] = []  # (time, camera row BGR)
        self.views_note = ""
        self.tick()

    def tick(self) -> None:
        """Records the world's current tick (call after every :meth:`World.step`)."""
        w = self.world
        fr = w.history[-1]
        self.frames.append((w.time_s, fr["x"], fr["y"], fr["heading"], fr["valid"], float(w.ego_box()[2]), w.light_history[-1]))

    def wants_views(self, time_s: float) -> bool:
        """Whether the query at ``time_s`` is due for a camera capture."""
        return time_s + 1e-6 >= len(self.strip) * self.strip_s

    def add_views(self, time_s: float, images: dict[str, np.ndarray], note: str = "") -> None:
        """Keeps ``images`` (camera name -> (H, W, 3) RGB) as the camera row at ``time_s``."""
        if note:
            self.views_note = note
        if images:
            self.strip.append((float(time_s), camera_row(images)))

    def states(self) -> dict[str, np.ndarray]:
        """The recorded states: ``t`` (T,), ``x, y, heading`` (T, N) [m, rad] box centres (the
        ego is column 0), ``valid`` (T, N), ``ego_speed`` (T,), ``lights`` (T, K) LightState,
        ``length, width, kind`` (N,), ``light_xy`` (K, 2) stop points, ``route`` (M, 2), and
        ``strip_t`` (S,) the camera capture times."""
        f = self.frames
        return {
            "t": np.array([r[0] for r in f], dtype=np.float32),
            "x": np.stack([r[1] for r in f]).astype(np.float32), "y": np.stack([r[2] for r in f]).astype(np.float32),
            "heading": np.stack([r[3] for r in f]).astype(np.float32), "valid": np.stack([r[4] for r in f]).astype(bool),
            "ego_speed": np.array([r[5] for r in f], dtype=np.float32),
            "lights": np.stack([r[6] for r in f]).astype(np.int8).reshape(len(f), -1),
            "length": self.length, "width": self.width, "kind": self.kind, "light_xy": self.light_xy, "route": self.route,
            "strip_t": np.array([s[0] for s in self.strip], dtype=np.float32),
        }  # fmt: skip

    def write(self, out_dir: Path, route_id: str, timeline: Sequence[dict]) -> dict:
        """Writes the route's media (see the module docs).

        Returns:
            What the report links, relative to ``out_dir``: ``states``, ``video``, ``poster``,
            ``thumbs`` ([{``file``, ``time_s``}]), ``frames`` (in the video), ``views`` (where
            the camera views come from).
        """
        out_dir = Path(out_dir)
        states = self.states()
        rel_states = f"routes/{route_id}.npz"
        save_states(out_dir / rel_states, states)
        media = Path("media") / route_id
        rows = [row for _, row in self.strip]
        frames = render_frames(states, self.world.town, rows, timeline)
        first = next(frames)
        _, png = cv2.imencode(".png", first)
        write_bytes_atomic(out_dir / media / "poster.png", png.tobytes())
        video, count = write_video(out_dir / media / "bev", _chain(first, frames), (first.shape[1], first.shape[0]))
        thumbs: list[dict] = []
        if self.strip:
            for k in sorted({int(round(i)) for i in np.linspace(0, len(self.strip) - 1, min(len(self.strip), MAX_THUMBS))}):
                t, row = self.strip[k]
                name = media / f"cam_{int(round(t * 10)):05d}.jpg"
                _, jpg = cv2.imencode(".jpg", row, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                write_bytes_atomic(out_dir / name, jpg.tobytes())
                thumbs.append({"file": name.as_posix(), "time_s": round(t, 3)})
        keep = {video.name, "poster.png", *(Path(t["file"]).name for t in thumbs)}
        for old in (out_dir / media).iterdir():  # an earlier run's files of this route
            if old.name not in keep and old.is_file() and (old.name.startswith(("cam_", "bev.")) or old.name.startswith(".bev.")):
                old.unlink(missing_ok=True)
        return {
            "states": rel_states, "video": (media / video.name).as_posix(), "poster": (media / "poster.png").as_posix(), "thumbs": thumbs,
            "frames": count, "views": self.views_note or "agent",
        }  # fmt: skip


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def camera_row(images: dict[str, np.ndarray]) -> np.ndarray:
    """(CAM_H, w, 3) BGR: the cameras side by side (rig order), each scaled to CAM_H rows."""
    parts = []
    for image in images.values():
        h, w = image.shape[:2]
        size = (max(1, int(round(w * CAM_H / h))), CAM_H)
        parts.append(cv2.resize(np.ascontiguousarray(image[:, :, ::-1]), size, interpolation=cv2.INTER_AREA))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


# --- the states file ------------------------------------------------------------------------------


def save_states(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` as a deflated ``.npz``, atomically; the same arrays give the same bytes
    (:func:`rap.dataset.codec.npz_bytes`)."""
    write_bytes_atomic(path, npz_bytes(arrays, zipfile.ZIP_DEFLATED))


def load_states(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of :func:`save_states`."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --- frames -------------------------------------------------------------------------------------------


class _TownRaster:
    """The town's static layer (drivable area, painted lines, the route), north up."""

    def __init__(self, town, route: np.ndarray, margin: float = 60.0) -> None:
        xmin, ymin, xmax, ymax = town.bounds
        self.x0, self.y1 = xmin - margin, ymax + margin
        w = int(np.ceil((xmax - xmin + 2 * margin) * PX_PER_M))
        h = int(np.ceil((ymax - ymin + 2 * margin) * PX_PER_M))
        img = np.empty((h, w, 3), np.uint8)
        img[:] = _BG
        geoms = getattr(town.drivable, "geoms", [town.drivable])
        for poly in geoms:
            cv2.fillPoly(img, [self.px(np.asarray(poly.exterior.coords))], _ROAD, cv2.LINE_AA)
            holes = [self.px(np.asarray(r.coords)) for r in poly.interiors]
            if holes:
                cv2.fillPoly(img, holes, _BG, cv2.LINE_AA)
        for points, kind in town.road_lines:
            color = (40, 190, 230) if int(kind) in _YELLOW_LINES else (190, 190, 190)
            cv2.polylines(img, [self.px(points)], False, color, 1, cv2.LINE_AA)
        for edge in town.road_edges:
            cv2.polylines(img, [self.px(edge)], False, (120, 120, 120), 1, cv2.LINE_AA)
        if len(route) > 1:
            layer = img.copy()
            cv2.polylines(layer, [self.px(route)], False, _ROUTE, int(round(2.0 * PX_PER_M)), cv2.LINE_AA)
            img = cv2.addWeighted(layer, 0.45, img, 0.55, 0.0)
        self.image = img

    def px(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)[:, :2]
        return np.round(np.column_stack([(xy[:, 0] - self.x0) * PX_PER_M, (self.y1 - xy[:, 1]) * PX_PER_M])).astype(np.int32)

    def view(self, ex: float, ey: float, h: float) -> tuple[np.ndarray, np.ndarray]:
        """The BEV (BEV_H, FRAME_W, 3) around the ego, heading up, and the (2, 3) world -> pixel map."""
        c, s = np.cos(h), np.sin(h)
        # frame pixel from world: u = cu - k * (lateral), v = cv - k * (longitudinal)
        k = PX_PER_M
        world = np.array([[-k * -s, -k * c, 0.0], [-k * c, -k * s, 0.0]])
        world[:, 2] = np.array(EGO_AT, dtype=np.float64) - world[:, :2] @ np.array([ex, ey])
        # world from raster pixel: x = px / k + x0, y = y1 - py / k
        raster = np.array([[1.0 / k, 0.0, self.x0], [0.0, -1.0 / k, self.y1], [0.0, 0.0, 1.0]])
        m = world @ raster
        # nearest: a third of bilinear's time, and the 1 px lines stay readable
        bev = cv2.warpAffine(self.image, m, (FRAME_W, BEV_H), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=_BG)
        return bev, world


def _timeline_bar(duration: float, timeline: Sequence[dict]) -> np.ndarray:
    bar = np.zeros((BAR_H, FRAME_W, 3), np.uint8)
    bar[3 : BAR_H - 3, 4 : FRAME_W - 4] = (70, 70, 70)
    for item in timeline:
        u = 4 + int(round((FRAME_W - 9) * min(max(item["time_s"] / max(duration, 1e-6), 0.0), 1.0)))
        cv2.line(bar, (u, 1), (u, BAR_H - 2), _bgr(INFRACTION_COLORS.get(item["name"], "#ffffff")), 2)
    return bar


def _fit_row(row: np.ndarray | None) -> np.ndarray:
    out = np.zeros((ROW_H, FRAME_W, 3), np.uint8)
    if row is None:
        cv2.putText(out, "no camera views", (8, ROW_H // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (160, 160, 160), 1, cv2.LINE_AA)
        return out
    h, w = row.shape[:2]
    scale = min(FRAME_W / w, ROW_H / h)
    row = cv2.resize(row, (max(1, min(FRAME_W, int(round(w * scale)))), max(1, min(ROW_H, int(round(h * scale))))), interpolation=cv2.INTER_AREA)
    h, w = row.shape[:2]
    top, left = (ROW_H - h) // 2, (FRAME_W - w) // 2
    out[top : top + h, left : left + w] = row
    return out


def render_frames(states: dict[str, np.ndarray], town, rows: Sequence[np.ndarray], timeline: Sequence[dict]) -> Iterator[np.ndarray]:
    """The animation's frames ((BEV_H + ROW_H + BAR_H, FRAME_W, 3) BGR uint8), one per
    ``1 / FRAME_HZ`` simulated seconds, from the recorded ``states``, the town, the camera
    rows (captured at ``states["strip_t"]``) and the route's infractions (``name``, ``time_s``)."""
    t = states["t"].astype(np.float64)
    raster = _TownRaster(town, states["route"])
    dt = float(t[1] - t[0]) if len(t) > 1 else 0.1
    stride = max(1, int(round(1.0 / (FRAME_HZ * dt))))
    duration = float(t[-1]) if len(t) else 0.0
    bar = _timeline_bar(duration, timeline)
    strip_t = states["strip_t"].astype(np.float64)
    fitted = [_fit_row(r) for r in rows] or [_fit_row(None)]
    half = 0.5 * np.stack([states["length"], states["width"]], axis=1).astype(np.float64)  # (N, 2)
    kind = states["kind"]
    unit = np.array([(1, 1), (-1, 1), (-1, -1), (1, -1), (1, 0)], dtype=np.float64)  # corners, then the nose
    light_xy = states["light_xy"].astype(np.float64)
    reach = 0.75 * float(np.hypot(FRAME_W, BEV_H)) / PX_PER_M + 5.0  # [m] farther is off the picture
    xs, ys, hs = (states[k][::stride].astype(np.float64) for k in ("x", "y", "heading"))
    shown = states["valid"][::stride] & (np.hypot(xs - xs[:, :1], ys - ys[:, :1]) < reach)
    colors = [_KIND_BGR[int(k)] for k in kind]
    for f, i in enumerate(range(0, len(t), stride)):
        x, y, h = xs[f], ys[f], hs[f]
        bev, m = raster.view(x[0], y[0], h[0])
        near = np.flatnonzero(shown[f])
        near = np.concatenate([near[near != 0], [0]])  # the ego last, on top
        local = unit[None] * half[near, None, :]  # (n, 5, 2) box frame
        c, s = np.cos(h[near])[:, None], np.sin(h[near])[:, None]
        wx = x[near, None] + local[..., 0] * c - local[..., 1] * s
        wy = y[near, None] + local[..., 0] * s + local[..., 1] * c
        uv = np.round(np.stack([wx, wy], -1) @ m[:, :2].T + m[:, 2]).astype(np.int32)
        for j, poly in zip(near.tolist(), uv):
            cv2.fillConvexPoly(bev, poly[:4], colors[j], cv2.LINE_AA)
            if kind[j] == PEDESTRIAN:
                cv2.circle(bev, tuple(int(v) for v in poly[:4].mean(axis=0)), _PEDESTRIAN_PX, colors[j], -1, cv2.LINE_AA)
        ego = uv[-1]
        cv2.line(bev, tuple(int(v) for v in (ego[0] + ego[2]) // 2), tuple(int(v) for v in ego[4]), (0, 0, 0), 1, cv2.LINE_AA)
        if len(light_xy):
            luv = np.round(light_xy @ m[:, :2].T + m[:, 2]).astype(np.int32)
            inside = np.flatnonzero((luv[:, 0] >= 0) & (luv[:, 0] < FRAME_W) & (luv[:, 1] >= 0) & (luv[:, 1] < BEV_H))
            for k in inside:
                cv2.circle(bev, (int(luv[k, 0]), int(luv[k, 1])), 3, _LIGHT_BGR.get(int(states["lights"][i, k]), (150, 150, 150)), -1, cv2.LINE_AA)
        cv2.putText(bev, f"t {t[i]:5.1f} s  v {states['ego_speed'][i]:4.1f} m/s", (5, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        k = int(np.searchsorted(strip_t, t[i] + 1e-6, side="right")) - 1
        cam = fitted[min(max(k, 0), len(fitted) - 1)]
        line = bar.copy()
        u = 4 + int(round((FRAME_W - 9) * (t[i] / duration if duration > 0 else 0.0)))
        cv2.line(line, (u, 0), (u, BAR_H - 1), (255, 255, 255), 1)
        yield np.concatenate([bev, cam, line], axis=0)


# --- encoding -------------------------------------------------------------------------------------------

# (fourcc, suffix) tried in order: VP8 WebM plays in every current browser; H.264 MP4 where
# OpenCV's FFmpeg has an encoder; otherwise an animated GIF (Pillow). MPEG-4 part 2 ("mp4v")
# is left out: OpenCV writes it everywhere, but browsers do not play it.
VIDEO_CODECS = (("VP80", ".webm"), ("avc1", ".mp4"))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """FFmpeg's tag warnings go to fd 2 from C; hidden while a writer opens."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def write_video(stem: Path, frames: Iterator[np.ndarray], size: tuple[int, int], codecs: Sequence[tuple[str, str]] = VIDEO_CODECS) -> tuple[Path, int]:
    """Encodes ``frames`` (BGR, ``size`` = (width, height)) to ``stem`` + the suffix of the first
    codec OpenCV can open, else to ``stem.gif``; written to a temporary name in the same folder
    and renamed. Returns the path and the frame count."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for fourcc, suffix in codecs:
        path = stem.with_suffix(suffix)
        tmp = stem.parent / f".{stem.name}.{os.getpid()}.tmp{suffix}"
        with _quiet_stderr():
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), VIDEO_FPS, size)
        if not writer.isOpened():
            writer.release()
            with contextlib.suppress(OSError):
                tmp.unlink()
            continue
        count = 0
        try:
            for frame in frames:
                writer.write(frame)
                count += 1
            writer.release()
            os.replace(tmp, path)
        except BaseException:
            writer.release()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return path, count
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f[:, :, ::-1])).quantize(colors=128, method=Image.Quantize.FASTOCTREE) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / VIDEO_FPS)), loop=0)
    path = stem.with_suffix(".gif")
    write_bytes_atomic(path, buf.getvalue())
    return path, len(images)
