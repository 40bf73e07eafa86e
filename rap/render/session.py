"""The one way ``rap`` opens a GL renderer: :func:`open_renderer` (a context manager that owns a
context and a :class:`rasterizer.renderer.Renderer`) and :func:`worker_renderer` (one per process,
kept open for the process's lifetime, as generation workers need)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rasterizer.context import create_context
from rasterizer.renderer import Renderer, Style

_PROCESS: dict = {}


@contextlib.contextmanager
def open_renderer(style: Style | None = None) -> Iterator[Renderer]:
    """A renderer on a new headless context (EGL; llvmpipe on a CPU); both freed on exit.

    Args:
        style: class colours and depth decay (default: :func:`rap.render.style.default_style`).

    Yields:
        The open renderer; ``renderer.ctx`` is its context.
    """
    if style is None:
        from rap.render.style import default_style

        style = default_style()
    ctx = create_context()
    try:
        with Renderer(ctx, style) as renderer:
            yield renderer
    finally:
        ctx.release()


def worker_renderer(style: str = "raster", seed: int = 0) -> Renderer:
    """This process's renderer of a named style (:func:`rap.render.style.named_style`; ``seed``
    seeds the photo style's noise), made on first use and kept open: one GL context per worker
    process, shared by its renderers."""
    key = "renderer" if style == "raster" else f"renderer:{style}:{seed}"
    if key not in _PROCESS:
        from rap.render.style import named_style

        if "ctx" not in _PROCESS:
            _PROCESS["ctx"] = create_context()
        _PROCESS[key] = Renderer(_PROCESS["ctx"], named_style(style, seed))
    return _PROCESS[key]
