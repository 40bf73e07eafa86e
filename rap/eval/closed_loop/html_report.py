"""The closed-loop HTML report, ``index.html`` (as ``rap eval navsim`` names its own): the
headline scores and Bench2Drive's ability table at the top, then per route its scores, its BEV
animation with the ego's camera strip (the media of :mod:`rap.eval.closed_loop.media`, when
``closed_loop.report_media`` was on) and its infractions marked on a timeline. Every text
from the run (agent name, error messages) is escaped."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from rap.eval.closed_loop.media import FRAME_W, INFRACTION_COLORS
from rap.eval.closed_loop.routes import ABILITIES
from rap.fileio import write_bytes_atomic

__all__ = ["TIMELINE_W", "write_html"]

TIMELINE_W = 480  # [px] the SVG timeline's width
_TIMELINE_H = 22
_PAD = 6


def _e(text) -> str:
    return html.escape(str(text))


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _timeline(result: dict) -> str:
    """An SVG bar over the route's simulated duration with a coloured tick per infraction."""
    duration = float(result["record"]["meta"]["duration_game"])
    span = TIMELINE_W - 2 * _PAD
    marks = []
    for item in result.get("timeline", []):
        x = _PAD + span * (min(max(item["time_s"] / duration, 0.0), 1.0) if duration > 0 else 0.0)
        color = INFRACTION_COLORS.get(item["name"], "#ffffff")
        marks.append(
            f'<line class="mark" data-name="{_e(item["name"])}" data-time="{item["time_s"]:.3f}" x1="{x:.1f}" x2="{x:.1f}" y1="2" y2="{_TIMELINE_H - 2}" '
            f'stroke="{color}" stroke-width="3"><title>{_e(item["name"])} at {item["time_s"]:.1f} s: {_e(item["message"])}</title></line>'
        )  # fmt: skip
    return (
        f'<svg class="timeline" width="{TIMELINE_W}" height="{_TIMELINE_H + 12}" data-duration="{duration:.3f}">'
        f'<rect x="{_PAD}" y="8" width="{span}" height="{_TIMELINE_H - 16}" fill="#555"/>{"".join(marks)}'
        f'<text x="{_PAD}" y="{_TIMELINE_H + 10}" fill="#aaa" font-size="10">0 s</text>'
        f'<text x="{TIMELINE_W - _PAD}" y="{_TIMELINE_H + 10}" fill="#aaa" font-size="10" text-anchor="end">{duration:.1f} s</text></svg>'
    )  # fmt: skip


def _media(out_dir: Path, result: dict) -> str:
    media = result.get("media")
    if not media:
        return '<p class="note">no media (closed_loop.report_media=false)</p>'
    missing = [f for f in [media["video"], media["poster"], *(t["file"] for t in media["thumbs"])] if not (out_dir / f).is_file()]
    if missing:
        return f'<p class="bad">media missing: {_e(", ".join(missing))}</p>'
    video = _e(media["video"])
    if video.endswith(".gif"):
        player = f'<img class="bev" src="{video}" width="{FRAME_W}">'
    else:
        player = f'<video class="bev" src="{video}" poster="{_e(media["poster"])}" width="{FRAME_W}" controls loop muted preload="none"></video>'
    thumbs = "".join(f'<figure><img class="thumb" src="{_e(t["file"])}"><figcaption>{t["time_s"]:.1f} s</figcaption></figure>' for t in media["thumbs"])
    views = "the views the agent was given" if media["views"] == "agent" else media["views"]
    strip = f'<div class="strip">{thumbs}</div><p class="note">camera views: {_e(views)}</p>' if thumbs else f'<p class="note">{_e(views)}</p>'
    return f'<div class="player">{player}<p class="note"><a href="{video}">animation</a> (2x real time) · <a href="{_e(media["states"])}">recorded states</a></p></div>{strip}'


def _route(out_dir: Path, result: dict) -> str:
    rec = result["record"]
    sc = rec["scores"]
    status_class = "ok" if rec["status"] in ("Perfect", "Completed") else "bad"
    items = "".join(
        f'<li><span class="dot" style="background:{INFRACTION_COLORS.get(i["name"], "#fff")}"></span>{i["time_s"]:.1f} s · {_e(i["name"])}: {_e(i["message"])}</li>'
        for i in result.get("timeline", [])
    )  # fmt: skip
    error = ""
    if "error" in result:
        error = f'<pre class="bad">{_e(result["error"])}</pre>'
        if result.get("traceback"):
            error += f"<details><summary>traceback</summary><pre>{_e(result['traceback'])}</pre></details>"
    return (
        f'<section class="route" id="{_e(rec["route_id"])}"><h3>{_e(rec["route_id"])} · {_e(rec["scenario_name"])} · {_e(rec["town_name"])} '
        f'<small>({_e(", ".join(result["abilities"]))})</small></h3>'
        f'<p><span class="{status_class}">{_e(rec["status"])}</span> · DS {sc["score_composed"]:.2f} · RC {sc["score_route"]:.2f} · '
        f'penalty {sc["score_penalty"]:.3f} · {rec["meta"]["duration_game"]:.1f} s simulated</p>'
        f'{_media(out_dir, result)}{_timeline(result)}<ul class="infractions">{items or "<li>no infraction</li>"}</ul>{error}</section>'
    )  # fmt: skip


def write_html(out_dir: str | Path, report: dict, results: Sequence[dict]) -> None:
    """``index.html`` in ``out_dir`` (atomic write), linking the media files the route results
    name (relative paths)."""
    out_dir = Path(out_dir)
    agent = _e(report["agent"])
    abilities = "".join(
        f'<tr class="ability" data-ability="{_e(name)}"><td>{_e(name)}</td><td class="routes">{report["abilities"][name]["routes"]}</td>'
        f'<td class="success_rate">{_fmt(report["abilities"][name]["success_rate"])}</td><td class="driving_score">{_fmt(report["abilities"][name]["driving_score"])}</td></tr>'
        for name in ABILITIES
    )  # fmt: skip
    seen = sorted({i["name"] for r in results for i in r.get("timeline", [])}, key=list(INFRACTION_COLORS).index)
    legend = " ".join(f'<span class="legend" data-name="{_e(n)}"><span class="dot" style="background:{INFRACTION_COLORS[n]}"></span>{_e(n)}</span>' for n in seen)
    rows = "".join(
        f'<tr><td><a href="#{_e(row["route_id"])}">{_e(row["route_id"])}</a></td><td>{_e(row["scenario"])}</td><td>{_e(row["status"])}</td>'
        f'<td>{row["driving_score"]:.2f}</td><td>{row["route_completion"]:.2f}</td><td>{row["penalty"]:.3f}</td>'
        f'<td>{_e(", ".join(f"{k} {v}" for k, v in sorted(row["infractions"].items())) or "–")}</td></tr>'
        for row in report["route_rows"]
    )  # fmt: skip
    failed = f' · <span class="bad">{report["failed"]} routes with the agent crashed</span>' if report.get("failed") else ""
    version = f' · {_e(report["routes_version"])}' if report.get("routes_version") else ""
    media_note = "" if any(r.get("media") for r in results) else '<p class="note">Media off (closed_loop.report_media=false): no animations or camera strips.</p>'
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rap eval closed-loop: {agent}</title>
<style>body{{font-family:sans-serif;background:#111;color:#ddd;margin:12px}} table{{border-collapse:collapse;margin:6px 0}}
td,th{{border:1px solid #444;padding:3px 8px}} td{{text-align:right}} td:first-child{{text-align:left}} a{{color:#8cf}}
.route{{border-top:1px solid #444;margin-top:14px}} .bad{{color:#f77}} .ok{{color:#7f7}} .note{{color:#999;font-size:12px;margin:2px 0}}
.strip{{display:flex;gap:4px;overflow-x:auto;max-width:100%}} figure{{margin:0}} figcaption{{font-size:11px;color:#aaa}}
.dot{{display:inline-block;width:10px;height:10px;margin:0 4px 0 8px;border-radius:2px}} ul.infractions{{font-size:12px}}
pre{{white-space:pre-wrap;word-break:break-word;font-size:11px}}</style></head><body>
<h1>{agent} on {_e(report["routes_spec"])}</h1>
<p class="headline"><b>Driving score {report["driving_score"]:.2f}</b> · success rate {report["success_rate"]:.2f} % ·
efficiency {_fmt(report["efficiency"])} · comfort {report["comfort"]:.2f} · {report["routes"]} routes{failed}{version}</p>
<table id="abilities"><tr><th>ability</th><th>routes</th><th>success rate</th><th>driving score</th></tr>{abilities}</table>
<p>Infractions: {legend or "none"}</p>{media_note}
<p class="note">BEV (heading up): route blue, ego white, traffic orange, scenario actors magenta, parked cars grey, lights as dots at their stop lines;
below it the latest camera views and the timeline (white cursor, infractions as coloured ticks).</p>
<table id="routes"><tr><th>route</th><th>scenario</th><th>status</th><th>DS</th><th>RC</th><th>penalty</th><th>infractions</th></tr>{rows}</table>
{"".join(_route(out_dir, r) for r in results)}
</body></html>
"""
    write_bytes_atomic(out_dir / "index.html", page.encode())
