"""The closed-loop HTML report (index.html): per route a BEV animation that decodes, the camera
strip, infractions on the timeline, the ability table as in closed_loop_eval.json; media off;
resume keeps the stored media; recorded states are the same bytes for the same run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rap.eval.agent import SensorConfig
from rap.eval.closed_loop.media import (
    BAR_H,
    BEV_H,
    CAM_H,
    FRAME_W,
    ROW_H,
    load_states,
    write_video,
)
from rap.eval.closed_loop.routes import ABILITIES
from rap.eval.closed_loop.runner import evaluate_closed_loop, route_file
from tests.rap.eval.closed_loop.scripted import PursuitAgent, StopAgent, quiet_config

FRAME_H = BEV_H + ROW_H + BAR_H


class CameraPursuitAgent(PursuitAgent):
    """Drives through the route blind to lights and traffic, with tiny cameras."""

    name = "camera_pursuit"

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(rig="front3", size=(64, 32))


def _links(page: str) -> list[str]:
    return [u for u in re.findall(r'(?:src|href|poster)="([^"#][^"]*)"', page)]


def _section(page: str, route_id: str) -> str:
    match = re.search(rf'<section class="route" id="{route_id}">(.*?)</section>', page, re.DOTALL)
    assert match, route_id
    return match.group(1)


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def red_light_run(tmp_path_factory):
    """A blind agent with cameras on synthetic:1 (a ``crossing`` route through a signalized
    junction): at 9 m/s it runs the red light and collects min-speed reports."""
    out = tmp_path_factory.mktemp("report")
    report = evaluate_closed_loop(CameraPursuitAgent(9.0), "synthetic:1", out, config=quiet_config())
    return out, report


def test_the_report_links_every_route_animation_and_thumbnail_and_they_decode(red_light_run):
    out, report = red_light_run
    page = (out / "index.html").read_text()
    links = _links(page)
    for row in report["route_rows"]:
        result = json.loads(route_file(out, row["route_id"]).read_text())
        media = result["media"]
        assert media["video"] in links and media["poster"] in links
        assert media["thumbs"] and all(t["file"] in links for t in media["thumbs"])
        assert media["views"] == "agent"  # the views the agent was given
        frames = _frames(out / media["video"])
        assert len(frames) == media["frames"] > 1
        assert all(f.shape == (FRAME_H, FRAME_W, 3) for f in frames)
        assert frames[0].std() > 5 and np.abs(frames[-1].astype(int) - frames[0]).mean() > 1  # a picture, and it moves
        with Image.open(out / media["poster"]) as poster:
            assert poster.size == (FRAME_W, FRAME_H)
        for thumb in media["thumbs"]:
            with Image.open(out / thumb["file"]) as image:
                assert image.format == "JPEG" and image.size == (3 * 2 * CAM_H, CAM_H)  # front3 side by side, 2:1 each
    for link in links:
        assert (out / link).is_file(), link


def test_the_timeline_marks_each_infraction_at_its_time(red_light_run):
    out, _ = red_light_run
    page = (out / "index.html").read_text()
    result = json.loads(route_file(out, "RouteScenario_0").read_text())
    names = {i["name"] for i in result["timeline"]}
    assert {"red_light", "min_speed_infractions"} <= names
    section = _section(page, "RouteScenario_0")
    for item in result["timeline"]:
        assert f'class="mark" data-name="{item["name"]}" data-time="{item["time_s"]:.3f}"' in section
    assert f'data-duration="{result["record"]["meta"]["duration_game"]:.3f}"' in section
    for name in names:
        assert f'<span class="legend" data-name="{name}">' in page


def test_the_ability_table_in_the_html_is_closed_loop_eval_json(red_light_run):
    out, _ = red_light_run
    page = (out / "index.html").read_text()
    summary = json.loads((out / "closed_loop_eval.json").read_text())
    assert page.index('id="abilities"') < page.index('<section class="route"')  # at the top
    for name in ABILITIES:
        row = re.search(rf'<tr class="ability" data-ability="{name}">(.*?)</tr>', page).group(1)
        cells = dict(re.findall(r'<td class="(\w+)">([^<]*)</td>', row))
        want = summary["abilities"][name]
        assert cells == {"routes": str(want["routes"]), "success_rate": f"{want['success_rate']:.2f}", "driving_score": f"{want['driving_score']:.2f}"}
    assert f"Driving score {summary['driving_score']:.2f}" in page


def test_media_off_writes_no_media_and_the_html_still_renders(tmp_path):
    config = quiet_config(blocked_s=2.0, report_media=False)
    evaluate_closed_loop(StopAgent(), "synthetic:1", tmp_path, config=config)
    assert not (tmp_path / "media").exists() and not list((tmp_path / "routes").glob("*.npz"))
    page = (tmp_path / "index.html").read_text()
    assert "no media" in page and not _links(page)
    assert 'data-name="vehicle_blocked"' in _section(page, "RouteScenario_0")


def test_recorded_states_are_the_same_bytes_for_the_same_run(tmp_path):
    config = quiet_config(blocked_s=3.0, density=0.6, standing_start=True)  # moving traffic around a standing ego
    for name in ("a", "b"):
        evaluate_closed_loop(StopAgent(), "synthetic:1", tmp_path / name, config=config)
    a, b = (tmp_path / name / "routes" / "RouteScenario_0.npz" for name in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    states = load_states(a)
    ticks = len(states["t"])
    assert ticks == 31 and states["x"].shape == states["valid"].shape == (ticks, len(states["kind"]))
    assert states["kind"][0] == 0 and states["valid"][:, 0].all()  # the ego is column 0
    moving = states["valid"].all(axis=0) & (np.hypot(states["x"][-1] - states["x"][0], states["y"][-1] - states["y"][0]) > 1.0)
    assert moving.sum() >= 1  # traffic drives while the ego stands


def test_resume_keeps_the_stored_media_and_gives_the_same_outputs(tmp_path):
    config = quiet_config(blocked_s=2.0)
    evaluate_closed_loop(StopAgent(), "synthetic:2", tmp_path, config=config)
    first = {name: (tmp_path / name).read_text() for name in ("closed_loop_eval.json", "index.html")}
    kept = json.loads(route_file(tmp_path, "RouteScenario_0").read_text())["media"]
    stamps = {f: (tmp_path / f).stat().st_mtime_ns for f in (kept["video"], kept["poster"], kept["states"])}
    route_file(tmp_path, "RouteScenario_1").unlink()
    evaluate_closed_loop(StopAgent(), "synthetic:2", tmp_path, config=config, resume=True)
    assert {f: (tmp_path / f).stat().st_mtime_ns for f in stamps} == stamps  # reused, not rewritten

    def scores(text: str) -> dict:
        return {k: v for k, v in json.loads(text).items() if k != "seconds"}

    assert scores((tmp_path / "closed_loop_eval.json").read_text()) == scores(first["closed_loop_eval.json"])
    assert (tmp_path / "index.html").read_text() == first["index.html"]
    # the media switch is not part of what resume matches: media off reuses both routes and their media
    evaluate_closed_loop(StopAgent(), "synthetic:2", tmp_path, config=quiet_config(blocked_s=2.0, report_media=False), resume=True)
    assert (tmp_path / "index.html").read_text() == first["index.html"]


def test_without_a_video_codec_the_animation_is_a_gif(tmp_path):
    frames = [np.full((24, 32, 3), 40 * k, np.uint8) for k in range(5)]
    path, count = write_video(tmp_path / "bev", iter(frames), (32, 24), codecs=())
    assert path.name == "bev.gif" and count == 5
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (32, 24)
