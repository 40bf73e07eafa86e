"""`rap inspect DIR`: what a dataset holds, and a contact sheet to eyeball it.

:func:`inspect_dataset` reads up to ``max_samples`` samples (shards in order) and reports counts by
kind and command, camera sizes, value ranges (speed, target extents, history length, recovery
perturbations) and the manifest's shard / skipped / rejected totals. It can write a contact sheet:
one row per sample kind, ``per_kind`` tiles per row, each tile the sample's front camera with the
history (lavender) and target (chartreuse) drawn on the ground plane, beside a top-down plot of the same
poses (over the sample's BEV raster when it has one).

Damage: before reading, every shard the manifest lists is hashed and compared with its recorded
SHA-256; the samples read are checked as they are read, and ``verify=True`` (``rap inspect
--verify``) decodes every member of every sample. Whatever fails is listed in the result's
``problems`` (damaged shards are not read) and ``rap inspect`` exits with status 2.

Projection: trajectory poses are (x, y) on the ground, z = 0, in the acting agent's body frame
(rear axle on the ground, x forward, y left); a camera record's ``cam_to_body`` maps OpenCV camera
axes to that frame, so a point goes through ``inv(cam_to_body)``, the distortion model and ``K``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from rap.dataset.manifest import MANIFEST_NAME, read_manifest, shard_digest_problem
from rap.dataset.reader import ShardFormatError, decode_record, iter_shard_members, list_shards
from rap.dataset.sample import SampleKind
from rap.kinematics import DrivingCommand
from rap.images import contact_sheet, save_png
from rasterizer.camera import OrthoCamera, PinholeCamera

__all__ = ["inspect_dataset", "format_report", "draw_sample_tile", "TILE_VIEW_SIZE", "TARGET_COLOR", "HISTORY_COLOR", "TILE_BEV_SIZE", "TILE_GAP", "LABEL_HEIGHT"]

TILE_VIEW_SIZE = (448, 252)  # [px] (width, height) of the camera panel of a tile (16:9)
TILE_BEV_SIZE = 252  # [px] side of the top-down panel
TILE_GAP = 4  # [px] between the two panels
LABEL_HEIGHT = 18  # [px] caption strip of rap.images.contact_sheet
TARGET_COLOR = (170, 255, 0)  # chartreuse: no raster class uses it
HISTORY_COLOR = (180, 180, 255)
_OUTLINE = (0, 0, 0)
_NEAR_M = 0.5  # [m] points closer to the camera plane are not drawn
_MAX_TAN = 3.0  # normalised image coordinates beyond this are outside any sane field of view
_SUBSTEPS = 8  # interpolated points per trajectory segment (curves stay curves under distortion)
_EGO_BOX = (-1.0, 3.9, -1.0, 1.0)  # [m] x_min, x_max, y_min, y_max of the drawn ego footprint


def _range(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean())}


def _camera_from_record(name: str, record: dict) -> PinholeCamera | OrthoCamera | None:
    if record.get("type") == "pinhole":
        k = np.asarray(record["intrinsics"], dtype=np.float64)
        return PinholeCamera(
            name, int(record["width"]), int(record["height"]), fx=k[0, 0], fy=k[1, 1], cx=k[0, 2], cy=k[1, 2],
            cam_to_body=np.asarray(record["cam_to_body"], dtype=np.float64),
            distortion=tuple(record.get("distortion_k1k2p1p2k3", (0.0,) * 5)),
        )  # fmt: skip
    if record.get("type") == "orthographic":
        return OrthoCamera(name, int(record["width"]), int(record["height"]), extent_x=float(record["extent_x_m"]), extent_y=float(record["extent_y_m"]), center=tuple(record["center_m"]))
    return None


def _front_camera(meta: dict) -> str:
    """The pinhole camera looking most nearly along the body's +x axis (else the first image)."""
    best, best_dot = None, -2.0
    for name in meta["camera_names"]:
        rec = meta["cameras"].get(name, {})
        if rec.get("type") != "pinhole":
            continue
        forward = float(np.asarray(rec["cam_to_body"], dtype=np.float64)[0, 2])  # optical axis · body x
        if forward > best_dot:
            best, best_dot = name, forward
    return best or meta["camera_names"][0]


def _densify(xy: np.ndarray) -> np.ndarray:
    """(N, 2) → ((N - 1) * SUBSTEPS + 1, 2) linearly interpolated points."""
    if len(xy) < 2:
        return xy
    t = np.linspace(0.0, 1.0, _SUBSTEPS, endpoint=False)
    seg = xy[:-1, None, :] + (xy[1:, None, :] - xy[:-1, None, :]) * t[None, :, None]
    return np.concatenate([seg.reshape(-1, 2), xy[-1:]], axis=0)


def _project(cam: PinholeCamera | OrthoCamera, xy: np.ndarray, scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Ground points (N, 2) → ((N, 2) pixel uv in the drawn image, (N,) visible mask)."""
    pts = np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)
    if isinstance(cam, OrthoCamera):
        uv, _ = cam.project(pts)
        ok = np.ones(len(xy), dtype=bool)
    else:
        body_to_cam = np.linalg.inv(cam.cam_to_body)
        pc = pts @ body_to_cam[:3, :3].T + body_to_cam[:3, 3]
        ok = pc[:, 2] > _NEAR_M
        with np.errstate(divide="ignore", invalid="ignore"):
            tan = pc[:, :2] / pc[:, 2:3]
        ok &= np.all(np.abs(tan) < _MAX_TAN, axis=1)
        uv, _ = cam.project(pts)
    uv = (uv + 0.5) * np.asarray(scale) - 0.5
    return uv, ok & np.all(np.isfinite(uv), axis=1)


def _draw_path(draw: ImageDraw.ImageDraw, uv: np.ndarray, ok: np.ndarray, color, width: int, marks: np.ndarray | None = None) -> None:
    """Polyline through consecutive visible points (outlined), dots at ``marks`` indices."""
    for outline, w, c in ((True, width + 2, _OUTLINE), (False, width, color)):
        run: list[tuple[float, float]] = []
        for p, visible in zip(uv, ok):
            if visible:
                run.append((float(p[0]), float(p[1])))
            else:
                if len(run) > 1:
                    draw.line(run, fill=c, width=w)
                run = []
        if len(run) > 1:
            draw.line(run, fill=c, width=w)
    if marks is not None:
        r = max(2, width)
        for i in marks:
            if ok[i]:
                x, y = float(uv[i, 0]), float(uv[i, 1])
                draw.ellipse((x - r, y - r, x + r, y + r), fill=color, outline=_OUTLINE)


def _path_points(poses: np.ndarray, *, from_origin: bool) -> tuple[np.ndarray, np.ndarray]:
    """Densified ground polyline of (T, 3) poses, and the indices of the poses in it."""
    xy = np.asarray(poses, dtype=np.float64).reshape(-1, 3)[:, :2]
    if from_origin:
        xy = np.concatenate([np.zeros((1, 2)), xy], axis=0)
    dense = _densify(xy)
    marks = np.arange(len(xy)) * (_SUBSTEPS if len(xy) > 1 else 1)
    if from_origin:
        marks = marks[1:]
    return dense, marks


def _view_panel(record: dict, real: bool = False) -> Image.Image:
    """Front camera image (``real``: a paired sample's real view of it) with history and target
    drawn in, letterboxed to TILE_VIEW_SIZE."""
    meta = record["meta"]
    name = _front_camera(meta)
    image = Image.fromarray(np.ascontiguousarray(record["real_images" if real else "images"][name])).convert("RGB")
    w, h = TILE_VIEW_SIZE
    scale = min(w / image.width, h / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST)
    cam = _camera_from_record(name, meta["cameras"].get(name, {}))
    if cam is not None:
        draw = ImageDraw.Draw(image)
        sx, sy = image.width / cam.width, image.height / cam.height
        for poses, color, origin in ((record["history"], HISTORY_COLOR, False), (record["target"], TARGET_COLOR, True)):
            dense, marks = _path_points(poses, from_origin=origin)
            if len(dense):
                uv, ok = _project(cam, dense, (sx, sy))
                _draw_path(draw, uv, ok, color, 3, marks)
    panel = Image.new("RGB", TILE_VIEW_SIZE, (0, 0, 0))
    panel.paste(image, ((w - image.width) // 2, (h - image.height) // 2))
    ImageDraw.Draw(panel).text((4, h - 14), name + (" real" if real else ""), fill=(235, 235, 235))
    return panel


def _bev_camera(record: dict) -> OrthoCamera | None:
    """The orthographic camera record that describes the sample's BEV raster, if any."""
    if record.get("bev") is None:
        return None
    meta = record["meta"]
    for name, rec in sorted(meta["cameras"].items()):
        if name not in meta["camera_names"] and rec.get("type") == "orthographic":
            cam = _camera_from_record(name, rec)
            if isinstance(cam, OrthoCamera):
                return cam
    return None


def _bev_panel(record: dict) -> Image.Image:
    """Top-down panel: the BEV raster (when there is one with its camera record) or a metric grid
    fitted to the poses, with the ego footprint, history and target."""
    s = TILE_BEV_SIZE
    hist = np.asarray(record["history"], dtype=np.float64).reshape(-1, 3)
    target = np.asarray(record["target"], dtype=np.float64).reshape(-1, 3)
    cam = _bev_camera(record)
    if cam is not None:
        panel = Image.fromarray(np.ascontiguousarray(record["bev"])).convert("RGB").resize((s, s), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(panel)
        scale = (s / cam.width, s / cam.height)
        project = lambda xy: _project(cam, xy, scale)[0]  # noqa: E731
    else:
        pts = np.concatenate([hist[:, :2], target[:, :2], np.zeros((1, 2))], axis=0)
        x_lo, x_hi = min(-10.0, pts[:, 0].min() - 5.0), max(40.0, pts[:, 0].max() + 5.0)
        y_half = max(10.0, np.abs(pts[:, 1]).max() + 5.0)
        extent = max(x_hi - x_lo, 2.0 * y_half)  # [m] square view
        centre = ((x_lo + x_hi) / 2.0, 0.0)
        m_per_px = extent / s

        def project(xy: np.ndarray) -> np.ndarray:
            u = (-(xy[:, 1] - centre[1]) / m_per_px) + s / 2.0
            v = (-(xy[:, 0] - centre[0]) / m_per_px) + s / 2.0
            return np.stack([u, v], axis=-1)

        panel = Image.new("RGB", (s, s), (20, 20, 20))
        draw = ImageDraw.Draw(panel)
        for g in np.arange(np.ceil((centre[0] - extent / 2) / 10.0) * 10.0, centre[0] + extent / 2, 10.0):
            v = project(np.array([[g, 0.0]]))[0, 1]
            draw.line([(0, v), (s, v)], fill=(55, 55, 55) if g else (90, 90, 90))
        for g in np.arange(np.ceil(-extent / 20.0) * 10.0, extent / 2, 10.0):
            u = project(np.array([[0.0, g]]))[0, 0]
            draw.line([(u, 0), (u, s)], fill=(55, 55, 55) if g else (90, 90, 90))
    x0, x1, y0, y1 = _EGO_BOX
    box = project(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]))
    draw.line([tuple(p) for p in box], fill=(0, 220, 255), width=2)
    for poses, color, origin in ((hist, HISTORY_COLOR, False), (target, TARGET_COLOR, True)):
        dense, marks = _path_points(poses, from_origin=origin)
        if len(dense):
            uv = project(dense)
            _draw_path(draw, uv, np.all(np.isfinite(uv), axis=1), color, 2, marks)
    return panel


def draw_sample_tile(record: dict) -> np.ndarray:
    """One contact-sheet tile of a decoded record (from :func:`rap.dataset.reader.iter_shard`).

    Returns:
        (TILE_VIEW_SIZE[1], TILE_VIEW_SIZE[0] + TILE_GAP + TILE_BEV_SIZE, 3) uint8: the front
        view with the trajectories projected into it, then the top-down plot; for a paired
        sample the raster and the real view side by side instead
        ((TILE_VIEW_SIZE[1], 2 * TILE_VIEW_SIZE[0] + TILE_GAP, 3)).
    """
    w, h = TILE_VIEW_SIZE
    if record.get("real_images"):
        tile = Image.new("RGB", (2 * w + TILE_GAP, h), (60, 60, 60))
        tile.paste(_view_panel(record), (0, 0))
        tile.paste(_view_panel(record, real=True), (w + TILE_GAP, 0))
        return np.asarray(tile)
    tile = Image.new("RGB", (w + TILE_GAP + TILE_BEV_SIZE, max(h, TILE_BEV_SIZE)), (60, 60, 60))
    tile.paste(_view_panel(record), (0, 0))
    tile.paste(_bev_panel(record), (w + TILE_GAP, 0))
    return np.asarray(tile)


def _label(record: dict) -> str:
    meta = record["meta"]
    status = meta["ego_status"]
    command = DrivingCommand(int(status["command"])).name.lower()
    text = f"{meta['kind']}  {record['key']}  v={status['speed']:.1f} m/s  {command}"
    pert = meta.get("perturbation")
    if pert:
        text += f"  dy={pert['dy']:+.2f} m dh={np.degrees(pert['dheading']):+.1f} deg"
    return text


def inspect_dataset(directory: str | Path, out_png: str | Path | None = None, max_samples: int = 10000, per_kind: int = 3, verify: bool = False) -> dict[str, Any]:
    """Summarise a dataset directory, check it for damage, and optionally draw its contact sheet.

    Every shard the manifest lists is first hashed and compared with its recorded SHA-256; a
    shard that is missing or differs is reported in ``problems`` and not read. The shards read
    are checked as they are read (tar structure, the ``.json`` and ``.npz`` members of the
    samples summarised); a sample or shard that fails is reported in ``problems`` and skipped.

    Args:
        directory: the dataset directory (with or without ``manifest.json``).
        out_png: where to write the contact sheet PNG (None: no sheet).
        max_samples: summarise at most this many samples (shards in order).
        per_kind: tiles per sample kind in the sheet.
        verify: also decode every member of every sample of every shard (all images, the
            ``.npz``, ``.json`` and scoring context), beyond ``max_samples``: finds damage a manifest cannot
            (a dataset without one) or that slipped past it.

    Returns:
        JSON-ready dict: ``directory``, ``shards``, ``samples_read``, ``counts`` (kind → samples
        read), ``commands``, ``cameras`` (name → "WxH"), ``has_bev``, ``ranges`` (``speed_mps``,
        ``target_x_m``, ``target_y_m``, ``target_final_x_m``, ``target_final_y_m``,
        ``target_heading_rad``, ``history_len``, ``perturbation`` {field → range}; each range
        ``{min, max, mean}`` or None), ``scoring_contexts`` (samples read that carry a
        scoring context, ``<key>.scoring.npz.zst``), ``manifest`` (None, or its ``counts``, ``samples``,
        ``seed``, ``codec``, ``toolkit_version``, ``skipped``, ``rejected``),
        ``contact_sheet`` (path or None), ``contact_sheet_size`` ([W, H] or None),
        ``problems`` (one line per damaged shard or sample, naming the shard — and the sample
        key and member — with expected and actual digests for a mismatch; empty when all is
        well) and ``verified`` (``{"sha256_shards": shards whose digest matched the manifest,
        "decoded_samples": samples whose every member decoded (0 without verify)}``).

    Raises:
        FileNotFoundError: no such directory.
        ManifestError: a manifest that does not validate.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a dataset directory")
    manifest = None
    problems: list[str] = []
    damaged: set[Path] = set()
    if (directory / MANIFEST_NAME).is_file():
        manifest = read_manifest(directory)
        shards = [directory / entry.name for entry in manifest.shards]
        for path, entry in zip(shards, manifest.shards):
            problem = shard_digest_problem(path, entry.sha256, directory / MANIFEST_NAME)
            if problem:
                problems.append(problem)
                damaged.add(path)
    else:
        shards = list_shards(directory)
    hashed = len(shards) - len(damaged) if manifest is not None else 0
    counts: Counter = Counter()
    commands: Counter = Counter()
    cameras: dict[str, str] = {}
    has_bev = False
    vals: dict[str, list[float]] = defaultdict(list)
    pert_vals: dict[str, list[float]] = defaultdict(list)
    picked: dict[str, list[dict]] = defaultdict(list)
    read = decoded = scored = 0
    for path in shards:
        if read >= max_samples and not verify:
            break
        if path in damaged:
            continue
        try:
            for key, fields in iter_shard_members(path, verify=False):  # hashed above
                if read >= max_samples and not verify:
                    break
                try:
                    full = decode_record(key, fields, where=str(path)) if verify else None
                    if verify:
                        decoded += 1
                    if read >= max_samples:
                        continue
                    record = full or decode_record(key, fields, decode_images=False, where=str(path))
                    if out_png is not None and len(picked.get(record["meta"]["kind"], ())) < per_kind:
                        full = full or decode_record(key, fields, where=str(path))
                except ShardFormatError as err:
                    problems.append(str(err))
                    continue
                read += 1
                meta = record["meta"]
                kind = meta["kind"]
                counts[kind] += 1
                status = meta["ego_status"]
                commands[DrivingCommand(int(status["command"])).name.lower()] += 1
                for cam in meta["camera_names"]:
                    rec = meta["cameras"].get(cam, {})
                    cameras.setdefault(cam, f"{rec.get('width', '?')}x{rec.get('height', '?')}")
                has_bev |= meta.get("bev") is not None
                scored += record.get("scoring") is not None
                target = np.asarray(record["target"]).reshape(-1, 3)
                vals["speed_mps"].append(float(status["speed"]))
                vals["target_x_m"] += target[:, 0].tolist()
                vals["target_y_m"] += target[:, 1].tolist()
                vals["target_heading_rad"] += target[:, 2].tolist()
                if len(target):
                    vals["target_final_x_m"].append(float(target[-1, 0]))
                    vals["target_final_y_m"].append(float(target[-1, 1]))
                vals["history_len"].append(float(np.asarray(record["history"]).reshape(-1, 3).shape[0]))
                for field, value in (meta.get("perturbation") or {}).items():
                    pert_vals[field].append(float(value))
                if out_png is not None and len(picked[kind]) < per_kind:
                    picked[kind].append(full)
        except ShardFormatError as err:  # the tar structure: the rest of the shard is unreadable
            problems.append(str(err))
    ranges: dict[str, Any] = {name: _range(vals[name]) for name in ("speed_mps", "target_x_m", "target_y_m", "target_final_x_m", "target_final_y_m", "target_heading_rad", "history_len")}
    ranges["perturbation"] = {field: _range(v) for field, v in sorted(pert_vals.items())}
    result: dict[str, Any] = {
        "directory": str(directory),
        "shards": len(shards),
        "samples_read": read,
        "counts": dict(sorted(counts.items())),
        "commands": dict(sorted(commands.items())),
        "cameras": cameras,
        "has_bev": has_bev,
        "scoring_contexts": scored,
        "ranges": ranges,
        "manifest": None,
        "contact_sheet": None,
        "contact_sheet_size": None,
        "problems": problems,
        "verified": {"sha256_shards": hashed, "decoded_samples": decoded},
    }
    if manifest is not None:
        result["manifest"] = {
            "counts": dict(manifest.counts),
            "samples": manifest.num_samples,
            "seed": manifest.seed,
            "codec": manifest.codec,
            "toolkit_version": manifest.toolkit_version,
            "skipped": len(manifest.skipped),
            "rejected": dict(manifest.rejected),
        }
    if out_png is not None and any(picked.values()):
        sheet = _contact_sheet(picked, per_kind)
        save_png(out_png, sheet)
        result["contact_sheet"] = str(out_png)
        result["contact_sheet_size"] = [int(sheet.shape[1]), int(sheet.shape[0])]
    return result


def _contact_sheet(picked: dict[str, list[dict]], per_kind: int) -> np.ndarray:
    """One row per kind (SampleKind order), ``per_kind`` tiles each, blanks where a kind is short."""
    tile_w = TILE_VIEW_SIZE[0] + TILE_GAP + TILE_BEV_SIZE
    tile_h = max(TILE_VIEW_SIZE[1], TILE_BEV_SIZE)
    blank = np.full((tile_h, tile_w, 3), 25, dtype=np.uint8)
    order = [k.value for k in SampleKind] + sorted(set(picked) - {k.value for k in SampleKind})
    tiles = []
    for kind in order:
        if not picked.get(kind):
            continue
        records = picked[kind]
        tiles += [(_label(r), draw_sample_tile(r)) for r in records]
        tiles += [("", blank)] * (per_kind - len(records))
    return contact_sheet(tiles, columns=per_kind, max_width=per_kind * tile_w, label_height=LABEL_HEIGHT)


def format_report(result: dict[str, Any]) -> str:
    """Human-readable text of an :func:`inspect_dataset` result (for the CLI)."""
    lines = [f"dataset {result['directory']}: {result['shards']} shards, {result['samples_read']} samples read"]
    lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
    lines.append("commands: " + ", ".join(f"{k} {v}" for k, v in result["commands"].items()))
    lines.append("cameras: " + ", ".join(f"{k} {v}" for k, v in result["cameras"].items()) + ("  + BEV" if result["has_bev"] else ""))
    if "scoring_contexts" in result:
        lines.append(f"scoring contexts: {result['scoring_contexts']} of {result['samples_read']} samples read")
    for name, r in result["ranges"].items():
        if name == "perturbation":
            for field, rr in r.items():
                if rr:
                    lines.append(f"perturbation.{field}: {rr['min']:.3f} .. {rr['max']:.3f} (mean {rr['mean']:.3f})")
        elif r:
            lines.append(f"{name}: {r['min']:.3f} .. {r['max']:.3f} (mean {r['mean']:.3f})")
    m = result["manifest"]
    if m:
        lines.append(f"manifest: {m['samples']} samples, seed {m['seed']}, codec {m['codec']}, rap {m['toolkit_version']}, {m['skipped']} inputs skipped")
        if m["rejected"]:
            lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in m["rejected"].items()))
    else:
        lines.append(f"no {MANIFEST_NAME} (an unfinished run?)")
    if result["contact_sheet"]:
        lines.append(f"contact sheet: {result['contact_sheet']} ({result['contact_sheet_size'][0]}x{result['contact_sheet_size'][1]})")
    checked = result.get("verified") or {}
    done = []
    if m:
        done.append(f"sha256 of {checked.get('sha256_shards', 0)}/{result['shards']} shards matches {MANIFEST_NAME}")
    if checked.get("decoded_samples"):
        done.append(f"every member of {checked['decoded_samples']} samples decodes")
    if done:
        lines.append("checked: " + "; ".join(done))
    problems = result.get("problems") or []
    if problems:
        lines.append(f"DAMAGED: {len(problems)} problem(s):")
        lines += [f"  {p}" for p in problems]
    return "\n".join(lines)

