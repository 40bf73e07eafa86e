"""Fixtures for tests/rap: the shipped real Waymo files (the GL context fixtures are in
tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "waymo"


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
