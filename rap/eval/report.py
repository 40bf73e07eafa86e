"""Reports of NAVSIM-style evaluations: the summary over scenes and the files a run writes
(``navsim_eval.json``, ``navsim_eval.md``, ``index.html`` with a card per scene).

A row with ``failed: true`` is a scene where the agent failed (its ``error`` says how); it is
scored 0 for PDMS and EPDMS and has no sub-scores. The reports show such scenes in red with the
error text, escaped (Markdown and HTML)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np

from rap.images import save_json, write_bytes_atomic
from rap.metrics.pdms import aggregate_v1, aggregate_v2

CARD_WIDTH = 320  # [px] width of a scene's BEV picture in index.html


def summarize(agent_name: str, scenes: str, rows: Sequence[dict]) -> dict:
    """Means over scenes (EPDMS through the v2 aggregation). Failed scenes count 0 in PDMS and
    EPDMS; sub-score means are over the scenes that were scored."""
    subscores = {}
    for key in rows[0]["subscores"]:
        values = [r["subscores"][key] for r in rows if r["subscores"][key] is not None]
        subscores[key] = float(np.mean(values)) if values else None
    failed = [r["scene"] for r in rows if r.get("failed")]
    return {
        "agent": agent_name,
        "scenes_spec": scenes,
        "pdms": aggregate_v1([r["pdms"] for r in rows]),
        "epdms": aggregate_v2([r["epdms"] for r in rows]),
        "scenes": len(rows),
        "failed": len(failed),
        "failed_scenes": failed,
        "subscores": subscores,
        "rows": list(rows),
    }


def _md_text(text: str) -> str:
    """``text`` as literal Markdown table-cell content: one line, HTML and Markdown syntax escaped."""
    text = html.escape(" ".join(text.split()), quote=False)
    return "".join("\\" + c if c in "\\`*_[]|#<>~" else c for c in text)


def write_reports(out_dir: Path, report: dict) -> None:
    """``navsim_eval.json``, ``navsim_eval.md`` and ``index.html`` (atomic writes)."""
    save_json(out_dir / "navsim_eval.json", report)
    keys = list(report["subscores"])
    failed = report.get("failed", 0)
    md = [f"# NAVSIM-style evaluation: {_md_text(str(report['agent']))} on {_md_text(report['scenes_spec'])}", "", f"**PDMS {report['pdms']:.4f}**, **EPDMS {report['epdms']:.4f}** over {report['scenes']} scenes."]
    if failed:
        md[-1] += f" **{failed} of {report['scenes']} scenes failed** (the agent raised, timed out or returned an invalid plan; each scored 0, marked FAILED below)."
    md.append("")
    md.append("| scene | PDMS | EPDMS | " + " | ".join(keys) + " | failures |")
    md.append("|---|---:|---:|" + "---:|" * len(keys) + "---|")

    def fmt(v):
        return "–" if v is None else f"{v:.2f}"

    md.append("| **mean** | " + f"{report['pdms']:.3f} | {report['epdms']:.3f} | " + " | ".join(fmt(report["subscores"][k]) for k in keys) + " | |")
    for r in report["rows"]:
        what = f"**FAILED**: {_md_text(r['error'])}" if r.get("failed") else "; ".join(r["failures"])
        md.append(f"| {r['scene']} | {r['pdms']:.3f} | {r['epdms']:.3f} | " + " | ".join(fmt(r["subscores"][k]) for k in keys) + f" | {what} |")
    write_bytes_atomic(out_dir / "navsim_eval.md", ("\n".join(md) + "\n").encode())

    cards = []
    for r in report["rows"]:
        if r.get("failed"):
            trace = f"<details><summary>traceback</summary><pre>{html.escape(r['traceback'])}</pre></details>" if r.get("traceback") else ""
            cards.append(f'<div class="card failed"><div><b>{html.escape(r["scene"])}</b><br><span class="bad"><b>FAILED</b> · PDMS 0 · EPDMS 0</span><pre class="bad">{html.escape(r["error"])}</pre>{trace}</div></div>')
            continue
        img = f'<img src="{html.escape(r["picture"])}" width="{CARD_WIDTH}">' if "picture" in r else ""
        fails = "<br>".join(html.escape(f) for f in r["failures"]) or "no failure"
        cards.append(f'<div class="card">{img}<div><b>{html.escape(r["scene"])}</b><br>PDMS {r["pdms"]:.3f} · EPDMS {r["epdms"]:.3f}<br><span class="{"bad" if r["failures"] else "ok"}">{fails}</span></div></div>')
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    mean_row = "".join(f"<td>{fmt(report['subscores'][k])}</td>" for k in keys)
    failed_line = ""
    if failed:
        names = ", ".join(html.escape(t) for t in report.get("failed_scenes", []))
        failed_line = f'<p class="bad"><b>{failed} of {report["scenes"]} scenes failed</b> (the agent raised, timed out or returned an invalid plan; each scored 0): {names}</p>'
    agent = html.escape(str(report["agent"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rap eval navsim: {agent}</title>
<style>body{{font-family:sans-serif;background:#111;color:#ddd}} table{{border-collapse:collapse}} td,th{{border:1px solid #444;padding:3px 6px}}
.card{{display:inline-block;vertical-align:top;margin:6px;width:{CARD_WIDTH}px}} .bad{{color:#f77}} .ok{{color:#7f7}}
.failed{{border:2px solid #f44;background:#300;padding:4px}} pre{{white-space:pre-wrap;word-break:break-word;font-size:11px}}</style></head><body>
<h1>{agent} on {html.escape(report['scenes_spec'])}</h1>
<p><b>PDMS {report['pdms']:.4f}</b> · <b>EPDMS {report['epdms']:.4f}</b> · {report['scenes']} scenes.
BEV: route centerline grey, planned poses cyan, executed rollout yellow, ego white.</p>
{failed_line}
<table><tr><th></th>{head}</tr><tr><td>mean</td>{mean_row}</tr></table>
{''.join(cards)}</body></html>
"""
    write_bytes_atomic(out_dir / "index.html", page.encode())
