"""`rap experiment ablation`: the method's augmentation/alignment ablation on rap's own benchmark.

Every row of the config trains the same planner (same steps, same seeds) on another mixture of
one generated dataset (synthetic towns with paired photo/raster samples); every model is scored
in closed loop (Bench2Drive-style driving score per route), NAVSIM-style on held-out towns and
open loop (minADE) on the held-out towns' paired samples, all through ``eval.observation_style``
views (default ``photo``, the stand-in for camera images). The data-scaling curve trains the
``scaling.row`` mixture with its cross-agent samples cut to each of ``scaling.cross_agent_samples``
(``data.max_samples.cross_agent``).

Output folder::

    config.json            the resolved config (--resume checks it)
    data/train, data/heldout   the generated datasets
    models/<row>-s<seed>/  train/ (the run), closed_loop/, navsim/, open_loop/ (each evaluator's reports)
    references/<agent>/    the reference agents' (eval.references, e.g. constant_velocity) reports
    steps/<name>.json      one record per finished step (what --resume skips)
    ablation.json          rows, scaling curve, every model's numbers
    ablation.md, index.html, ablation.png, scaling.png

Part of the commands layer (trains through ``planners``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rap.chain import Stages, closed_loop_scores, generate_dataset, navsim_scores, open_loop_scores, train_planner
from rap.config import config_to_dict
from rap.experiments.ablation_config import AblationConfig
from rap.experiments.stats import PUBLISHED_MIN_ADE_FIT, bootstrap_ci, log_linear_fit
from rap.images import save_json

RESULT_FILE = "ablation.json"
CONFIG_FILE = "config.json"


class AblationError(ValueError):
    """The run cannot start: an output folder that is neither new nor a resumable run of the
    same config."""


@dataclass(frozen=True)
class ModelJob:
    """One planner to train and score."""

    row: str  # the row whose mixture it trains on
    seed: int
    cross_agent: int | None = None  # data.max_samples.cross_agent (the scaling curve), None: all

    @property
    def slug(self) -> str:
        base = re.sub(r"[^a-z0-9]+", "-", self.row.lower()).strip("-") or "row"
        return f"{base}-s{self.seed}" + ("" if self.cross_agent is None else f"-ca{self.cross_agent}")


def model_jobs(cfg: AblationConfig) -> list[ModelJob]:
    """Every row x seed, then every scaling size x scaling seed."""
    jobs = [ModelJob(row.name, seed) for row in cfg.rows for seed in cfg.experiment.seeds]
    jobs += [ModelJob(cfg.scaling.row, seed, size) for size in cfg.scaling.cross_agent_samples for seed in cfg.scaling.seeds]
    return jobs


def _train_overrides(cfg: AblationConfig, job: ModelJob, dataset: Path) -> list[str]:
    row = next(r for r in cfg.rows if r.name == job.row)
    extra = [] if job.cross_agent is None else [f"data.max_samples.cross_agent={job.cross_agent}"]
    return [*cfg.train.overrides, *row.overrides, *extra, f"data.datasets=[{dataset}]", f"train.max_steps={cfg.train.steps}", f"train.seed={job.seed}"]


def _prepare(out: Path, cfg: AblationConfig, resume: bool) -> None:
    stored = out / CONFIG_FILE
    doc = config_to_dict(cfg)
    if resume:
        if not stored.is_file():
            raise AblationError(f"--resume: {out} holds no ablation run ({CONFIG_FILE} missing)")
        if json.loads(stored.read_text()) != json.loads(json.dumps(doc)):
            raise AblationError(f"--resume: {out} was run with another config ({stored}); use a new --out or the same config and overrides")
    elif out.exists() and any(out.iterdir()):
        raise AblationError(f"--out {out}: the folder is not empty; use a new folder, or --resume to continue the run there")
    out.mkdir(parents=True, exist_ok=True)
    save_json(stored, doc)


def _step(out: Path, name: str, resume: bool, run):
    """``run()``'s JSON result, stored as ``steps/<name>.json``; with ``resume`` a stored one is reused."""
    path = out / "steps" / f"{name}.json"
    if resume and path.is_file():
        return _with_route_outcomes(json.loads(path.read_text()))
    result = run()
    save_json(path, result)
    return result


def _score_model(cfg: AblationConfig, job: ModelJob, out: Path, stages: Stages) -> dict:
    folder = out / "models" / job.slug
    trained = train_planner(cfg.train.config, _train_overrides(cfg, job, out / "data" / "train"), folder / "train", stages)
    record: dict = {
        "row": job.row, "seed": job.seed, "cross_agent_limit": job.cross_agent, "slug": job.slug,
        "train": {k: trained[k] for k in ("steps", "samples_per_s", "final_loss", "val_loss", "checkpoint", "train_counts")},
    }  # fmt: skip
    return {**record, **_scores(cfg, trained["checkpoint"], job.slug, folder, out, stages)}


def _scores(cfg: AblationConfig, agent: str, label: str, folder: Path, out: Path, stages: Stages) -> dict:
    """Closed-loop, NAVSIM-style and open-loop scores of one agent (a checkpoint or a built-in)."""
    style = cfg.eval.observation_style
    record: dict = {}
    if cfg.eval.closed_loop_routes:
        report = closed_loop_scores(agent, cfg.eval.closed_loop_routes, folder / "closed_loop", style, cfg.eval.workers, stages, label=label)
        if report["failed"]:
            raise RuntimeError(f"{label}: the agent crashed on {report['failed']} closed-loop routes (see {folder / 'closed_loop'})")
        record["closed_loop"] = {
            "driving_score": report["driving_score"], "success_rate": report["success_rate"], "report": str(folder / "closed_loop" / "index.html"),
            "routes": {row["route_id"]: row["driving_score"] for row in report["route_rows"]}, **_route_outcomes(report["route_rows"]),
        }  # fmt: skip
    if cfg.eval.navsim:
        report = navsim_scores(agent, cfg.data.heldout, folder / "navsim", style)
        record["navsim"] = {"pdms": report["pdms"], "epdms": report["epdms"], "scenes": report["scenes"], "report": str(folder / "navsim" / "index.html")}
    report = open_loop_scores(agent, out / "data" / "heldout", folder / "open_loop", views="real" if style == "photo" else "raster")
    record["open_loop"] = {k: report[k] for k in ("min_ade", "ade", "fde", "samples")}
    return record


def _route_outcomes(route_rows: list[dict]) -> dict:
    """Why the driving score is what it is: mean route completion [%] and the share of routes
    ended because the agent left its route (Bench2Drive's "Agent deviated from the route")."""
    return {
        "route_completion": float(np.mean([row["route_completion"] for row in route_rows])),
        "deviated": float(np.mean(["deviated" in row["status"] for row in route_rows])),
    }


def _with_route_outcomes(record: dict) -> dict:
    """A stored step of a run made before ``_route_outcomes`` existed, completed from its closed-loop report."""
    cl = record.get("closed_loop")
    if cl is not None and "route_completion" not in cl:
        report = json.loads((Path(cl["report"]).parent / "closed_loop_eval.json").read_text())
        cl.update(_route_outcomes(report["route_rows"]))
    return record


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _row_summary(name: str, records: list[dict], cfg: AblationConfig) -> dict:
    cl = [r["closed_loop"] for r in records if "closed_loop" in r]
    ds, ci = None, None
    if cl:
        route_ids = sorted(cl[0]["routes"])
        table = np.array([[c["routes"][rid] for rid in route_ids] for c in cl])
        ds = float(table.mean())
        ci = list(bootstrap_ci(table, cfg.experiment.bootstrap, cfg.experiment.bootstrap_seed))
    return {
        "name": name, "seeds": [r["seed"] for r in records], "driving_score": ds, "driving_score_ci95": ci,
        "success_rate": _mean([c["success_rate"] for c in cl]),
        "route_completion": _mean([c.get("route_completion") for c in cl]), "deviated": _mean([c.get("deviated") for c in cl]),
        "pdms": _mean([r.get("navsim", {}).get("pdms") for r in records]), "epdms": _mean([r.get("navsim", {}).get("epdms") for r in records]),
        "min_ade": _mean([r["open_loop"]["min_ade"] for r in records]), "ade": _mean([r["open_loop"]["ade"] for r in records]),
        "per_seed": [
            {"seed": r["seed"], "driving_score": r.get("closed_loop", {}).get("driving_score"), "pdms": r.get("navsim", {}).get("pdms"), "min_ade": r["open_loop"]["min_ade"]}
            for r in records
        ],
    }  # fmt: skip


def _scaling(cfg: AblationConfig, records: list[dict]) -> dict | None:
    if not cfg.scaling.cross_agent_samples:
        return None
    groups: dict[int, list[dict]] = {}
    for r in records:
        if r["row"] == cfg.scaling.row:  # the curve's models and the row's own (all its cross-agent samples)
            groups.setdefault(int(r["train"]["train_counts"].get("cross_agent", 0)), []).append(r)
    points = [
        {"cross_agent_samples": x, "models": len(rs), "driving_score": _mean([r.get("closed_loop", {}).get("driving_score") for r in rs]), "min_ade": _mean([r["open_loop"]["min_ade"] for r in rs])}
        for x, rs in sorted(groups.items()) if x > 0
    ]  # fmt: skip
    fits = {}
    for key in ("min_ade", "driving_score"):
        pts = [(p["cross_agent_samples"], p[key]) for p in points if p[key] is not None]
        fit = log_linear_fit(*zip(*pts)) if len(pts) >= 2 else None
        fits[key] = None if fit is None else {"slope": fit[0], "intercept": fit[1]}
    return {"row": cfg.scaling.row, "points": points, "fit_min_ade": fits["min_ade"], "fit_driving_score": fits["driving_score"],
            "published_min_ade": {"slope": PUBLISHED_MIN_ADE_FIT[0], "intercept": PUBLISHED_MIN_ADE_FIT[1]}}  # fmt: skip


def run_ablation(cfg: AblationConfig, out: str | Path, *, resume: bool = False, console: Console | None = None) -> dict:
    """Run the ablation into ``out`` (see the module docstring); returns ``ablation.json``'s content.

    Raises:
        AblationError: ``out`` is not new (without ``resume``) or holds another config's run.
        ValueError: bad data or train config (naming the key), as the chain's steps raise them.
        RuntimeError: a planner crashed on closed-loop routes.
    """
    from rap.experiments.ablation_report import write_report

    out = Path(out)
    console = console or Console(stderr=True)
    _prepare(out, cfg, resume)
    started = time.perf_counter()
    reused = len(list((out / "steps").glob("*.json"))) if resume else 0  # finished by an earlier invocation
    size = f"size=[{cfg.data.size[0]},{cfg.data.size[1]}]"
    jobs = model_jobs(cfg)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    records = []
    with Progress(*columns, console=console, transient=True) as bar:
        stages = Stages(bar, 2 + len(cfg.eval.references) + len(jobs), "ablation")
        with stages.stage("datasets"):
            data = {
                "train": _step(out, "data-train", resume, lambda: generate_dataset(f"synthetic:{cfg.data.train_towns}", out / "data" / "train", [size, "paired.enabled=true", *cfg.data.generate], contact_sheet=False)),
            }  # fmt: skip
        with stages.stage("datasets"):
            heldout = [size, "paired.enabled=true", "recovery.enabled=false", "cross_agent.enabled=false", *cfg.data.generate]
            data["heldout"] = _step(out, "data-heldout", resume, lambda: generate_dataset(cfg.data.heldout, out / "data" / "heldout", heldout, contact_sheet=False))
        references = []
        for name in cfg.eval.references:
            with stages.stage("references"):
                folder = out / "references" / name
                references.append(_step(out, f"reference-{name}", resume, lambda name=name, folder=folder: {"row": name, "seed": None, **_scores(cfg, name, name, folder, out, stages)}))
        for job in jobs:
            with stages.stage("models"):
                records.append(_step(out, f"model-{job.slug}", resume, lambda job=job: _score_model(cfg, job, out, stages)))
    rows = [_row_summary(row.name, [r for r in records if r["row"] == row.name and r["cross_agent_limit"] is None], cfg) for row in cfg.rows]
    reference_rows = [_row_summary(ref["row"], [ref], cfg) for ref in references]
    result = {
        "rows": rows, "references": reference_rows, "scaling": _scaling(cfg, records), "models": records, "data": data, "config": config_to_dict(cfg),
        "observation_style": cfg.eval.observation_style, "closed_loop_routes": cfg.eval.closed_loop_routes, "heldout": cfg.data.heldout,
        "seconds": round(time.perf_counter() - started, 1), "stage_seconds": stages.seconds,
        "steps": 2 + len(cfg.eval.references) + len(jobs), "steps_reused": reused,
    }  # fmt: skip
    save_json(out / RESULT_FILE, result)
    write_report(out, result)
    return result


def headline(result: dict) -> dict:
    """The last stdout line: ``rows`` (name, seeds, driving_score, driving_score_ci95, pdms,
    min_ade), the scaling fit and the run time."""
    keys = ("name", "seeds", "driving_score", "driving_score_ci95", "pdms", "min_ade")
    scaling = result.get("scaling")
    return {
        "rows": [{k: row[k] for k in keys} for row in result["rows"]],
        "references": [{k: row[k] for k in keys if k != "seeds"} for row in result["references"]],
        "scaling": None if scaling is None else {k: scaling[k] for k in ("points", "fit_min_ade", "fit_driving_score")},
        "seconds": result["seconds"],
    }
