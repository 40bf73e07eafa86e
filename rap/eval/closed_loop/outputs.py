"""Reports of a closed-loop run: ``results.json`` (the leaderboard's format, via
:func:`rap.eval.driving_score.results_document`), ``closed_loop_eval.json`` (the summary) and
``closed_loop_eval.md`` and ``index.html`` (:mod:`rap.eval.closed_loop.html_report`). Every file
is written atomically (temp file, then rename)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rap.eval.closed_loop.routes import ABILITIES
from rap.eval.driving_score import (
    ability_table,
    driving_score,
    efficiency,
    results_document,
    success_rate,
)
from rap.fileio import write_bytes_atomic

__all__ = ["headline", "summary", "write_outputs"]

_SCORE_ROUND = 4


def summary(agent_name: str, routes_spec: str, results: Sequence[dict]) -> dict:
    """The run's summary (scores on 0-100).

    Returns:
        ``agent``, ``routes_spec``, ``routes`` (count), ``driving_score``, ``success_rate``,
        ``efficiency`` (None when no route reached a min-speed checkpoint with traffic around),
        ``comfort`` (mean smoothness x 100), ``abilities`` (per Bench2Drive ability: ``routes``,
        ``success_rate``, ``driving_score``), ``failed`` (routes whose agent crashed) and
        ``route_rows`` (per route: id, scenario, abilities, status, scores, infraction counts,
        comfort, error).
    """
    records = [r["record"] for r in results]
    abilities = {r["route_id"]: tuple(r["abilities"]) for r in results}
    table = ability_table(records, abilities)
    eff = efficiency(records)
    rows = []
    for r in results:
        rec = r["record"]
        row = {
            "route_id": rec["route_id"], "scenario": rec["scenario_name"], "town": rec["town_name"], "abilities": list(r["abilities"]),
            "status": rec["status"], "driving_score": rec["scores"]["score_composed"], "route_completion": rec["scores"]["score_route"],
            "penalty": rec["scores"]["score_penalty"], "infractions": {k: len(v) for k, v in rec["infractions"].items() if v},
            "comfort": r["comfort"], "duration_game": rec["meta"]["duration_game"],
        }  # fmt: skip
        if "error" in r:
            row["error"] = r["error"]
        rows.append(row)
    return {
        "agent": agent_name, "routes_spec": routes_spec, "routes": len(results),
        "driving_score": round(driving_score(records), _SCORE_ROUND), "success_rate": round(success_rate(records), _SCORE_ROUND),
        "efficiency": None if eff is None else round(eff, _SCORE_ROUND),
        "comfort": round(100.0 * sum(r["comfort"] for r in results) / len(results), _SCORE_ROUND) if results else 0.0,
        "abilities": {k: {kk: round(vv, _SCORE_ROUND) if isinstance(vv, float) else vv for kk, vv in v.items()} for k, v in table.items()},
        "failed": sum(1 for r in results if "error" in r), "route_rows": rows,
    }  # fmt: skip


def headline(report: dict) -> dict:
    """The last stdout line's JSON: scores, route count, the ability table."""
    return {k: report[k] for k in ("driving_score", "success_rate", "efficiency", "comfort", "routes", "abilities")}


def _dump(path: Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_outputs(out_dir: str | Path, report: dict, results: Sequence[dict]) -> None:
    """``results.json``, ``closed_loop_eval.json``, ``closed_loop_eval.md`` and ``index.html`` in ``out_dir``."""
    from rap.eval.closed_loop.html_report import write_html

    out_dir = Path(out_dir)
    _dump(out_dir / "results.json", results_document([r["record"] for r in results]))
    _dump(out_dir / "closed_loop_eval.json", report)
    eff = "–" if report["efficiency"] is None else f"{report['efficiency']:.2f}"
    lines = [
        f"# Closed-loop evaluation: {_md(report['agent'])} on {_md(report['routes_spec'])}", "",
        f"**Driving score {report['driving_score']:.2f}**, success rate {report['success_rate']:.2f} %, efficiency {eff}, "
        f"comfort {report['comfort']:.2f} over {report['routes']} routes" + (f" ({report['failed']} with the agent crashed)" if report["failed"] else "") + ".",
        "", "| ability | routes | success rate | driving score |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    for name in ABILITIES:
        a = report["abilities"][name]
        lines.append(f"| {name} | {a['routes']} | {a['success_rate']:.2f} | {a['driving_score']:.2f} |")
    lines += ["", "| route | scenario | status | DS | RC | penalty | infractions |", "|---|---|---|---:|---:|---:|---|"]
    for row in report["route_rows"]:
        inf = ", ".join(f"{k} {v}" for k, v in sorted(row["infractions"].items())) or "–"
        if "error" in row:
            inf += f"; error: {row['error']}"
        lines.append(f"| {row['route_id']} | {_md(row['scenario'])} | {_md(row['status'])} | {row['driving_score']:.2f} | {row['route_completion']:.2f} | {row['penalty']:.3f} | {_md(inf)} |")
    write_bytes_atomic(out_dir / "closed_loop_eval.md", ("\n".join(lines) + "\n").encode())
    write_html(out_dir, report, results)
