"""The ablation's report files: ``ablation.md``, ``index.html``, ``ablation.png`` (the rows with
95 % intervals) and ``scaling.png`` (the data-scaling curve with its log-linear fit beside the
method's published one)."""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

import numpy as np

from rap.experiments.stats import fit_value
from rap.fileio import write_bytes_atomic


def _f(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(row: dict) -> str:
    ci = row.get("driving_score_ci95")
    return "–" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _table_rows(result: dict) -> list[list[str]]:
    rows = [(row, row["name"], str(len(row["seeds"]))) for row in result["rows"]]
    rows += [(row, f"reference: {row['name']}", "–") for row in result.get("references", [])]
    return [
        [
            name, seeds, _f(row["driving_score"]), _ci(row), _f(row["success_rate"]), _f(row.get("route_completion"), 1), _pct(row.get("deviated")),
            _f(row["pdms"], 3), _f(row["epdms"], 3), _f(row["min_ade"], 3), _f(row["ade"], 3),
        ]  # fmt: skip
        for row, name, seeds in rows
    ]


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


HEADER = ["row", "seeds", "driving score", "95 % CI", "success rate", "route completion [%]", "left the route", "PDMS", "EPDMS", "minADE [m]", "ADE [m]"]


def _setting(result: dict) -> str:
    cfg = result["config"]
    routes = result["closed_loop_routes"] or "no closed loop"
    return (
        f"Planner {Path(cfg['train']['config']).name}, {cfg['train']['steps']} steps per model, seeds {cfg['experiment']['seeds']}; "
        f"trained on synthetic:{cfg['data']['train_towns']} at {cfg['data']['size'][0]}x{cfg['data']['size'][1]}; "
        f"observations in the {result['observation_style']} domain; closed loop on {routes}; NAVSIM-style and open loop on {result['heldout']} (held out). "
        f"Intervals: two-way bootstrap over routes and seeds ({cfg['experiment']['bootstrap']} resamples). {_run_time(result)}"
    )


def _run_time(result: dict) -> str:
    minutes = f"Run time {result['seconds'] / 60:.1f} min"
    if result.get("steps_reused"):
        return f"{minutes} for this invocation, which reused {result['steps_reused']} of {result['steps']} steps finished by an earlier one (their time not counted)."
    return f"{minutes}."


def _markdown(result: dict) -> str:
    lines = ["# Augmentation and alignment ablation", "", _setting(result), "", "| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(result)]
    scaling = result.get("scaling")
    if scaling:
        lines += ["", f"## Data scaling ({scaling['row']}, cross-agent samples)", "", "| cross-agent samples | models | driving score | minADE [m] |", "|---:|---:|---:|---:|"]
        lines += [f"| {p['cross_agent_samples']} | {p['models']} | {_f(p['driving_score'])} | {_f(p['min_ade'], 3)} |" for p in scaling["points"]]
        fit, pub = scaling["fit_min_ade"], scaling["published_min_ade"]
        measured = "–" if fit is None else f"{fit['slope']:+.4f} ln x + {fit['intercept']:.4f}"
        lines += ["", f"minADE fit: {measured} (the method's: {pub['slope']:+.3f} ln x + {pub['intercept']:.4f})."]
        fit = scaling["fit_driving_score"]
        if fit is not None:
            lines.append(f"Driving-score fit: {fit['slope']:+.3f} ln x + {fit['intercept']:.3f}.")
    lines += ["", "![rows](ablation.png)", "", "![scaling](scaling.png)" if scaling else ""]
    return "\n".join(lines).rstrip() + "\n"


def _html(out: Path, result: dict) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _table_rows(result))
    models = []
    for m in result["models"]:
        links = [f'<a href="{e(os.path.relpath(m[k]["report"], out))}">{k.replace("_", " ")}</a>' for k in ("closed_loop", "navsim") if k in m]
        limit = "" if m["cross_agent_limit"] is None else f" (cross-agent ≤ {m['cross_agent_limit']})"
        ds = m.get("closed_loop", {}).get("driving_score")
        models.append(f"<tr><td>{e(m['row'])}{e(limit)}</td><td>{m['seed']}</td><td>{_f(ds)}</td><td>{_f(m.get('navsim', {}).get('pdms'), 3)}</td><td>{_f(m['open_loop']['min_ade'], 3)}</td><td>{' '.join(links)}</td></tr>")
    scaling = '<h2>Data scaling</h2><img src="scaling.png" width="900">' if result.get("scaling") else ""
    style = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd}th{background:#f4f4f4;text-align:left}"
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>ablation</title><style>{style}</style></head><body>"
        f"<h1>Augmentation and alignment ablation</h1><p>{e(_setting(result))}</p><table><tr>{head}</tr>{body}</table>"
        f'<img src="ablation.png" width="900">{scaling}<h2>Every model</h2><table><tr><th>row</th><th>seed</th><th>driving score</th><th>PDMS</th><th>minADE</th><th>reports</th></tr>{"".join(models)}</table>'
        f'<p><a href="ablation.json">ablation.json</a> · <a href="ablation.md">ablation.md</a></p></body></html>\n'
    )


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _rows_picture(result: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.5 * len(rows) + 1.8), dpi=100, sharey=True)
    panels = (("driving_score", "closed-loop driving score"), ("pdms", "PDMS (held out)"), ("min_ade", "open-loop minADE [m] (lower is better)"))
    for ax, (key, title) in zip(axes, panels):
        values = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
        ax.barh(y, np.nan_to_num(values), color="tab:blue", alpha=0.75)
        for r, yy in zip(rows, y):
            per_seed = [s[key] for s in r["per_seed"] if s[key] is not None]
            ax.plot(per_seed, [yy] * len(per_seed), "k.", ms=5)
            if key == "driving_score" and r["driving_score_ci95"]:
                lo, hi = r["driving_score_ci95"]
                ax.plot([lo, hi], [yy, yy], color="k", lw=1.5)
        for ref, color in zip(result.get("references", []), ("tab:red", "tab:purple", "tab:brown")):
            if ref[key] is not None:
                ax.axvline(ref[key], color=color, ls="--", lw=1.2, label=ref["name"])
        if result.get("references"):
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, names)
    fig.suptitle(f"{result['observation_style']} observations; bars: means, dots: seeds, lines: 95 % CI", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _scaling_picture(scaling: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = scaling["points"]
    x = np.array([p["cross_agent_samples"] for p in pts], dtype=float)
    grid = np.geomspace(max(x.min() / 2, 1.0), x.max() * 2, 50) if len(x) else np.array([1.0, 10.0])
    fig, (ax_ade, ax_ds) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    ade = [p["min_ade"] for p in pts]
    ax_ade.plot(x, ade, "o", color="tab:blue", label="measured")
    fit, pub = scaling["fit_min_ade"], scaling["published_min_ade"]
    if fit is not None:
        ax_ade.plot(grid, [fit_value((fit["slope"], fit["intercept"]), g) for g in grid], "-", color="tab:blue", label=f"fit {fit['slope']:+.3f} ln x + {fit['intercept']:.3f}")
    ax_ade.plot(grid, [fit_value((pub["slope"], pub["intercept"]), g) for g in grid], "--", color="tab:gray", label=f"method {pub['slope']:+.3f} ln x + {pub['intercept']:.4f}")
    ax_ade.set_ylabel("open-loop minADE [m]")
    ds = [(p["cross_agent_samples"], p["driving_score"]) for p in pts if p["driving_score"] is not None]
    if ds:
        ax_ds.plot(*zip(*ds), "o", color="tab:green", label="measured")
    fit = scaling["fit_driving_score"]
    if fit is not None:
        ax_ds.plot(grid, [fit_value((fit["slope"], fit["intercept"]), g) for g in grid], "-", color="tab:green", label=f"fit {fit['slope']:+.2f} ln x + {fit['intercept']:.2f}")
    ax_ds.set_ylabel("closed-loop driving score")
    for ax in (ax_ade, ax_ds):
        ax.set_xscale("log")
        ax.set_xlabel("cross-agent training samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def write_report(out: str | Path, result: dict) -> None:
    """``ablation.md``, ``index.html``, ``ablation.png`` and (with a scaling curve) ``scaling.png`` in ``out``."""
    out = Path(out)
    write_bytes_atomic(out / "ablation.png", _rows_picture(result))
    if result.get("scaling"):
        write_bytes_atomic(out / "scaling.png", _scaling_picture(result["scaling"]))
    write_bytes_atomic(out / "ablation.md", _markdown(result).encode())
    write_bytes_atomic(out / "index.html", _html(out, result).encode())
