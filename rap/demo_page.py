"""``index.html`` of `rap demo`: one page linking every picture, report and number the demo wrote
(links relative to the demo folder, so the folder can be moved or served as is)."""

from __future__ import annotations

import html
import os
from pathlib import Path

from rap.fileio import write_bytes_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { padding: 4px 10px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0 12px 12px 0; vertical-align: top; } figcaption { font-size: 0.85em; color: #555; }
img { border: 1px solid #ddd; } .note { color: #555; font-size: 0.9em; } tr.planner td { font-weight: 600; }
"""


def _e(text) -> str:
    return html.escape(str(text))


def _rel(out: Path, path: str | Path) -> str:
    return Path(os.path.relpath(Path(path), out)).as_posix()


def _figure(out: Path, path: str | Path, caption: str, width: int = 380) -> str:
    if not Path(path).exists():
        return ""
    href = _e(_rel(out, path))
    return f'<figure><a href="{href}"><img src="{href}" width="{width}"></a><figcaption>{_e(caption)}</figcaption></figure>'


def _link(out: Path, path: str | Path, text: str) -> str:
    return f'<a href="{_e(_rel(out, path))}">{_e(text)}</a>'


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], numeric: set[int], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="n">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row)) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _renders(out: Path, s: dict) -> str:
    captions = ("ego front cameras (raster)", "the same views in the photo stand-in", "bird's-eye view", f"from vehicle {s.get('other_agent_id')}'s seat")
    figs = [_figure(out, p, c) for p, c in zip(s["contact_sheets"], captions)]
    figs.append(_figure(out, s["drive_sequence"], "drive-through sequence (front3 every ~2 s)", 780))
    proj = sorted((out / "projection").glob("projection_*.png"))
    parts = ["<h2>Renders of the shipped real scenario</h2>", f"<p>Waymo Open Motion scenario {_e(s['scene_id'])}, rasterized with OpenGL.</p>", "".join(figs)]
    parts.append("<h2>Camera-model check on the real perception frame</h2>")
    parts.append(f"<p>Rendered 3D labels against Waymo's own 2D projections: mean IoU <b>{_num(s['projection_mean_iou'])}</b> ({_link(out, out / 'projection' / 'projection.json', 'projection.json')}).</p>")
    parts.append("".join(_figure(out, p, p.stem.removeprefix("projection_"), 300) for p in proj))
    return "".join(parts)


def _datasets(out: Path, s: dict) -> str:
    rows, figs = [], []
    for name, info in s["datasets"].items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(info["counts"].items()) if v)
        rows.append([_link(out, out / name / "manifest.json", name), _e(info["source"]), str(info["samples"]), _e(counts)])
        figs.append(_figure(out, info["contact_sheet"], f"{name}: a few samples of each kind", 580))
    table = _table(["dataset", "source", "samples", "by kind"], rows, {2})
    note = "<p class=note>Paired samples hold a photo-style view beside the raster of the same moment: the data the raster-to-real alignment trains on. The photo style is a stand-in for camera images, not real images.</p>"
    return "<h2>Augmented datasets</h2>" + table + note + "".join(figs)


def _train(out: Path, s: dict) -> str:
    t = s.get("train")
    if not t:
        return ""
    rows = [
        ["model", _e(t["model"]) + f" ({_e(Path(t['config']).name)})"], ["steps", str(t["steps"])], ["samples/s", _num(t["samples_per_s"], 1)],
        ["final training loss", _num(t["final_loss"])], ["validation loss", _num(t["val_loss"])],
        ["checkpoint", _link(out, t["checkpoint"], Path(t["checkpoint"]).name)], ["run folder", _link(out, Path(t["run"]) / "metrics.jsonl", "metrics.jsonl") + ", " + _link(out, Path(t["run"]) / "config.yaml", "config.yaml")],
        ["overrides", "<br>".join(_e(o) for o in t["overrides"])],
    ]  # fmt: skip
    return "<h2>The trained planner</h2>" + _table(["", ""], rows, set()) + _figure(out, t["loss_picture"], "loss curves", 640)


def _navsim(out: Path, s: dict) -> str:
    rows, classes = [], []
    for r in s["eval"]:
        who = r["agent"] + (" (photo observations)" if r["observation_style"] == "photo" else "")
        rows.append([_e(who), _e(r["scenes"]), str(r["num_scenes"]), _num(r["pdms"]), _num(r["epdms"]), _link(out, r["report"], "report")])
        classes.append("planner" if r["agent"] == "planner" else "")
    note = "<p class=note>PDMS (NAVSIM v1) and EPDMS (v2) over every scoring step; the planner's synthetic towns are among those it trained on.</p>"
    return "<h2>NAVSIM-style scores</h2>" + _table(["agent", "scenes", "steps", "PDMS", "EPDMS", ""], rows, {2, 3, 4}, classes) + note


def _closed_loop(out: Path, s: dict) -> str:
    if not s.get("closed_loop"):
        return ""
    rows, classes = [], []
    for r in s["closed_loop"]:
        rows.append([_e(r["agent"]), _e(r["routes"]), str(r["num_routes"]), _num(r["driving_score"], 2), _num(r["success_rate"], 2), _num(r["efficiency"], 2), _num(r["comfort"], 2), _link(out, r["report"], "report")])
        classes.append("planner" if r["agent"] == "planner" else "")
    note = "<p class=note>Bench2Drive-style driving score (0-100) on synthetic towns with reactive traffic; each report has per-route BEV animations and infraction timelines.</p>"
    return "<h2>Closed loop</h2>" + _table(["agent", "routes", "routes run", "driving score", "success rate", "efficiency", "comfort", ""], rows, {2, 3, 4, 5, 6}, classes) + note


def write_index(out: str | Path, summary: dict) -> Path:
    """Write ``out/index.html`` for a demo summary (:func:`rap.demo.run_demo`'s); returns its path."""
    out = Path(out)
    stages = ", ".join(f"{_e(name)} {sec:.0f} s" for name, sec in summary.get("stages", {}).items())
    head = f"<h1>rap demo</h1><p>The whole chain on the shipped data in {summary.get('seconds', 0):.0f} s ({stages}). Every number: {_link(out, out / 'demo.json', 'demo.json')}.</p>"
    body = head + _renders(out, summary) + _datasets(out, summary) + _train(out, summary) + _navsim(out, summary) + _closed_loop(out, summary)
    page = f"<!doctype html><html><head><meta charset=utf-8><title>rap demo</title><style>{STYLE}</style></head><body>{body}</body></html>\n"
    path = out / "index.html"
    write_bytes_atomic(path, page.encode())
    return path
