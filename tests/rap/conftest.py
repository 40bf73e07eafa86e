"""Fixtures for tests/rap: the GL context (one per session, GL-state checked around every test,
the same pattern as tests/rasterizer/conftest.py) and the shipped real WOMD scenario."""

from __future__ import annotations

from pathlib import Path

import moderngl
import pytest

from rasterizer.context import context_info, create_context

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "waymo"


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


@pytest.fixture(scope="session")
def womd_path() -> Path:
    """The shipped WOMD scenario (91 steps, current index 10, SDC at track row 82)."""
    return DATA_DIR / "womd_scenario_637f20cafde22ff8.tfrecord"


@pytest.fixture(scope="session")
def frame_path() -> Path:
    """The shipped Waymo perception frame."""
    return DATA_DIR / "perception_frame_1024360143612057520.tfrecord"


@pytest.fixture(scope="session")
def womd_scene(womd_path):
    """The shipped scenario as a Scene (loaded once; treat as read-only)."""
    from rap.sources.womd import load_womd

    return load_womd(womd_path)
