"""GL fixtures: the only place tests create contexts (one per session), with GL-state checks."""

import moderngl
import pytest

from rasterizer.context import context_info, create_context


@pytest.fixture(scope="session")
def ctx_static():
    ctx = create_context()
    info = context_info(ctx)
    print(f"GL renderer: {info.renderer} / {info.version}")
    yield ctx
    ctx.release()


@pytest.fixture()
def ctx(ctx_static):
    """The shared context, with no GL error before and after the test."""
    assert ctx_static.error == "GL_NO_ERROR"
    ctx_static.enable_only(moderngl.NOTHING)
    yield ctx_static
    assert ctx_static.error == "GL_NO_ERROR"
