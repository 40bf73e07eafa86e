"""The chain's steps as functions, for the commands that run several of them (`rap demo`,
`rap experiment ablation`): generate a dataset, train a planner, score an agent NAVSIM-style, in
closed loop and open loop; and the two-level progress display they share.

Part of the commands layer: it imports ``planners``.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from rich.progress import Progress

from rap.config import load_config


class Stages:
    """Progress of a multi-stage command: one bar over the stages, a second one for the current
    stage's own steps (training steps, routes), and the seconds each stage took."""

    def __init__(self, bar: Progress, total: int, description: str) -> None:
        self.bar, self.description, self.seconds = bar, description, {}
        self.task = bar.add_task(description, total=total)
        self.sub = None

    @contextmanager
    def stage(self, name: str):
        """Time ``name`` (seconds summed over repeats) and advance the main bar when it ends."""
        self.bar.update(self.task, description=f"{self.description}: {name}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.done_steps()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)
        self.bar.advance(self.task)

    def steps(self, description: str, total: int | None, completed: int = 0) -> None:
        """Show (or restart) the second bar."""
        self.done_steps()
        self.sub = self.bar.add_task(description, total=total, completed=completed)

    def step(self, completed: int | None = None, description: str | None = None) -> None:
        """Advance the second bar by one, or set it to ``completed``."""
        if self.sub is None:
            return
        kwargs = {"description": description} if description else {}
        if completed is None:
            self.bar.advance(self.sub)
            self.bar.update(self.sub, **kwargs)
        else:
            self.bar.update(self.sub, completed=completed, **kwargs)

    def done_steps(self) -> None:
        if self.sub is not None:
            self.bar.remove_task(self.sub)
            self.sub = None


def fresh(folder: Path) -> Path:
    """``folder``, emptied (a chain step starts over)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def generate_dataset(source: str, folder: Path, overrides: list[str], contact_sheet: bool = True) -> dict:
    """`rap generate SOURCE --out FOLDER OVERRIDES` (and `rap inspect`'s contact sheet)."""
    from rap.dataset.inspect import inspect_dataset
    from rap.generate import GenerateConfig, generate

    result = generate(source, fresh(folder), load_config(GenerateConfig, None, overrides))
    info = {"source": source, "samples": result.samples, "counts": result.manifest.counts}
    if contact_sheet:
        inspect_dataset(folder, folder / "contact_sheet.png", per_kind=3)
        info["contact_sheet"] = str(folder / "contact_sheet.png")
    return info


def train_planner(config: Path, overrides: list[str], folder: Path, stages: Stages | None = None) -> dict:
    """`rap train CONFIG OVERRIDES --out FOLDER` (FOLDER emptied first); returns the run's
    result with the config and overrides it ran with and its training samples per kind."""
    from planners.config import TrainConfig
    from planners.train import train

    train_cfg = load_config(TrainConfig, config, overrides)
    counts: dict = {}

    def on_start(info: dict) -> None:
        counts.update(info["counts"]["train"])
        if stages is not None:
            stages.steps("train", info["max_steps"], info["start_step"])

    def on_log(row: dict) -> None:
        if stages is not None and "loss" in row:
            stages.step(row["step"], f"train (loss {row['loss']:.3f}, {row['samples_per_s']:.1f} samples/s)")

    result = train(train_cfg, fresh(folder), on_log=on_log, on_start=on_start)
    return {
        "config": str(config), "overrides": list(overrides), "model": train_cfg.model.type, "run": str(folder), "loss_picture": str(folder / "loss.png"), "train_counts": counts,
        **{k: result[k] for k in ("steps", "samples_per_s", "final_loss", "val_loss", "checkpoint")},
    }  # fmt: skip


def navsim_scores(agent: str, scenes: str, folder: Path, style: str = "raster") -> dict:
    """`rap eval navsim --agent AGENT --scenes SCENES --observation-style STYLE --out FOLDER`."""
    from rap.agents import load_any_agent
    from rap.eval.config import EvalConfig
    from rap.eval.navsim import evaluate_navsim

    return evaluate_navsim(load_any_agent(agent), scenes, fresh(folder), config=load_config(EvalConfig, None, [f"observation.style={style}"]))


def closed_loop_scores(agent: str, routes: str, folder: Path, style: str = "raster", workers: int = 1, stages: Stages | None = None, label: str | None = None) -> dict:
    """`rap eval closed-loop --agent AGENT --routes ROUTES --observation-style STYLE --out FOLDER`."""
    from rap.agents import load_closed_loop_agent
    from rap.eval.closed_loop.config import ClosedLoopConfig
    from rap.eval.closed_loop.runner import evaluate_closed_loop, load_routes

    if stages is not None:
        stages.steps(f"closed loop: {label or agent}", len(load_routes(routes)))
    config = load_config(ClosedLoopConfig, None, [f"observation.style={style}"])
    return evaluate_closed_loop(
        agent, routes, fresh(folder), config=config, workers=workers, agent_loader=load_closed_loop_agent,
        on_route=None if stages is None else (lambda result: stages.step()),
    )  # fmt: skip


def open_loop_scores(agent: str, data: Path, folder: Path, views: str = "raster") -> dict:
    """`rap eval open-loop --agent AGENT --data DATA --views VIEWS --out FOLDER`."""
    from planners.open_loop import evaluate_open_loop
    from rap.agents import load_any_agent

    return evaluate_open_loop(load_any_agent(agent), data, fresh(folder), views=views)
