"""Image files: atomic writes, contact sheets, overlays."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from rap.fileio import write_bytes_atomic

__all__ = ["write_bytes_atomic", "save_png", "save_npy", "save_json", "contact_sheet"]


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Save a (H, W, 3) or (H, W) uint8 / (H, W) uint16 array as PNG, atomically.

    PNG encoding is deterministic for the same pixels (no timestamps are written).
    """
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=6)
    write_bytes_atomic(path, buf.getvalue())


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save an array as ``.npy``, atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def save_json(path: str | Path, doc: Any) -> None:
    """Save JSON (sorted keys, indented), atomically."""
    write_bytes_atomic(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def contact_sheet(images: Sequence[tuple[str, np.ndarray]], columns: int | None = None, max_width: int = 2400, label_height: int = 18) -> np.ndarray:
    """Tile labelled RGB images into one sheet.

    Args:
        images: (label, (H, W, 3) uint8) pairs; images of different sizes are scaled to the
            width of a cell, keeping their aspect ratio.
        columns: tiles per row (default: all in one row up to 4, then rows of 4).
        max_width: the sheet's width [px]; cells are scaled down to fit.
        label_height: height of the caption strip above each tile [px].

    Returns:
        (H, W, 3) uint8 sheet.
    """
    if not images:
        raise ValueError("contact_sheet: no images")
    columns = columns or min(4, len(images))
    cell_w = min(max_width // columns, max(img.shape[1] for _, img in images))
    tiles = []
    for label, img in images:
        pil = Image.fromarray(np.ascontiguousarray(img))
        h = max(1, round(img.shape[0] * cell_w / img.shape[1]))
        pil = pil.resize((cell_w, h), Image.Resampling.BILINEAR if img.shape[1] > cell_w else Image.Resampling.NEAREST)
        tile = Image.new("RGB", (cell_w, h + label_height), (25, 25, 25))
        tile.paste(pil, (0, label_height))
        ImageDraw.Draw(tile).text((4, 3), label, fill=(235, 235, 235))
        tiles.append(tile)
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    row_h = [max(t.height for t in row) for row in rows]
    sheet = Image.new("RGB", (cell_w * columns + 2 * (columns - 1), sum(row_h) + 2 * (len(rows) - 1)), (60, 60, 60))
    y = 0
    for row, h in zip(rows, row_h):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * (cell_w + 2), y))
        y += h + 2
    return np.asarray(sheet)
