"""The one place that creates OpenGL contexts.

Headless only: EGL. On a machine with an NVIDIA driver EGL picks the GPU; elsewhere Mesa's EGL
gives llvmpipe (software, multithreaded). Nothing else in the code base calls
``moderngl.create_context`` / ``create_standalone_context``.
"""

from __future__ import annotations

import dataclasses

import moderngl

REQUIRED_GL_VERSION = 330
_created = False  # this process has made a context (its driver state and threads exist here)


def contexts_created() -> bool:
    """Whether this process has created an OpenGL context (then a ``fork`` of it is not safe to
    render in: GL drivers keep per-process state and threads that a forked child lacks)."""
    return _created


class ContextError(RuntimeError):
    """No usable headless OpenGL context could be created."""


@dataclasses.dataclass(frozen=True)
class ContextInfo:
    """What :func:`create_context` chose."""

    backend: str
    renderer: str
    version: str
    vendor: str

    @property
    def is_software(self) -> bool:
        return "llvmpipe" in self.renderer.lower() or "softpipe" in self.renderer.lower()


def create_context(backend: str = "egl", device_index: int = 0) -> moderngl.Context:
    """Create a standalone headless OpenGL (>= 3.3 core) context.

    Args:
        backend: glcontext backend; ``"egl"`` (default) works on NVIDIA GPUs and on Mesa.
        device_index: EGL device to use when several GPUs are present.

    Returns:
        A ``moderngl.Context``. Release it with ``ctx.release()`` (or ``with ctx:``).

    Raises:
        ContextError: with the underlying reason and what to install when no context works.
    """
    global _created
    _created = True
    try:
        ctx = moderngl.create_standalone_context(backend=backend, require=REQUIRED_GL_VERSION, device_index=device_index)
    except Exception as exc:  # glcontext raises plain Exceptions with the EGL error text
        raise ContextError(
            f"could not create a headless OpenGL {REQUIRED_GL_VERSION // 100}.{REQUIRED_GL_VERSION % 100} context "
            f"with backend {backend!r}: {exc}. On a CPU machine install Mesa's EGL "
            "(Debian: libegl1 libgl1-mesa-dri); on an NVIDIA machine the driver's libEGL_nvidia."
        ) from exc
    return ctx


def context_info(ctx: moderngl.Context, backend: str = "egl") -> ContextInfo:
    """Renderer, version and vendor strings of a context."""
    info = ctx.info
    return ContextInfo(
        backend=backend,
        renderer=str(info.get("GL_RENDERER", "?")),
        version=str(info.get("GL_VERSION", "?")),
        vendor=str(info.get("GL_VENDOR", "?")),
    )
