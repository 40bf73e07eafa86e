"""The ``rap`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="rap: rasterize annotated driving scenes into camera views (3D rasterization augmented planning).",
)
console = Console(stderr=True, emoji=False, highlight=False)
eval_app = typer.Typer(no_args_is_help=True, help="Score planners: NAVSIM-style PDMS/EPDMS, open-loop errors, Waymo E2E rater feedback score, Bench2Drive-style closed loop.")
app.add_typer(eval_app, name="eval")
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments that train and score many planners: the augmentation/alignment ablation.")
app.add_typer(experiment_app, name="experiment")

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEMO_SCENARIO = DATA_DIR / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"
DEMO_FRAME = DATA_DIR / "waymo" / "perception_frame_1024360143612057520.tfrecord"

EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_USAGE) -> "typer.Exit":
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` → (1920, 1080)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"size must look like WIDTHxHEIGHT, e.g. 1920x1080; got {text!r}") from None
    if w <= 0 or h <= 0 or w > 16384 or h > 16384:
        raise typer.BadParameter(f"size {text!r}: width and height must be in 1..16384")
    return w, h


def _outputs(text: str) -> tuple[str, ...]:
    from rasterizer.renderer import OUTPUTS

    names = tuple(o.strip() for o in text.split(",") if o.strip())
    bad = [o for o in names if o not in OUTPUTS]
    if bad or not names:
        raise typer.BadParameter(f"outputs {text!r}: choose a comma-separated subset of {', '.join(OUTPUTS)}")
    return names


def _load(source: str, record: int):
    from rap.sources.registry import SourceSpec, load_scene

    try:
        spec = SourceSpec.parse(source)
        return spec, load_scene(spec, record)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # e.g. no permission to read the file
        raise _fail(_os_error(exc, source)) from None


def _os_error(exc: OSError, fallback: object) -> str:
    """``PATH: reason`` of an OSError, one line."""
    return f"{exc.filename if exc.filename is not None else fallback}: {exc.strerror or exc}"


def _not_a_folder(path: Path) -> Optional[tuple[Path, str]]:
    """The first of ``path`` and its parents that exists, with what it is, when it is not a
    folder (a file where an output folder must go), else None."""
    for candidate in (path, *path.parents):
        try:
            if candidate.is_dir():
                return None
            if candidate.is_file():
                return candidate, "is a file, not a folder"
            if candidate.exists() or candidate.is_symlink():
                return candidate, "exists and is not a folder"
        except OSError:  # cannot look: writing there reports it
            return None
    return None


def _check_out_folder(out: Path, option: str = "--out") -> None:
    """Refuse an output folder that is an existing file, or lies under one, before any work."""
    blocker = _not_a_folder(out)
    if blocker is not None:
        where, what = blocker
        raise _fail(f"{option} {out}: {what}" if where == out else f"{option} {out}: {where}: {what}")


def _rig(name: str, size: tuple[int, int], distortion: bool):
    """A named rig at ``size``; an unknown name is a usage error listing the known ones."""
    from rap.render.rigs import get_rig

    try:
        return get_rig(name, size, distortion=distortion)
    except ValueError as exc:
        raise _fail(str(exc)) from None


@app.command()
def render(
    source: str = typer.Option(..., "--source", help="KIND:PATH[@STEP], e.g. womd:data/waymo/scenario.tfrecord@10"),
    rig: str = typer.Option("front3", "--rig", help="front3 | nuplan8 | bev"),
    size: str = typer.Option("1920x1080", "--size", help="WIDTHxHEIGHT of every camera"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    agent: Optional[int] = typer.Option(None, "--agent", help="render from this agent's seat (track id); default the ego"),
    outputs: str = typer.Option("rgb", "--outputs", help="comma-separated subset of rgb,class_id,instance,depth"),
    record: int = typer.Option(0, "--record", help="record index inside the source file"),
    distortion: bool = typer.Option(False, "--distortion", help="apply the rig's calibrated lens distortion (default: ideal pinholes, as the RAP reference renderer)"),
    style: str = typer.Option("raster", "--style", help="raster (semantic classes) | photo (a camera-like stand-in, not a real image)"),
    seed: int = typer.Option(0, "--seed", help="seed of the photo style's sensor noise"),
) -> None:
    """Render one step of a scene: one PNG per camera plus a contact sheet."""
    from rap.render.job import render_to_dir

    from rap.render.style import STYLES

    width, height = parse_size(size)
    wanted = _outputs(outputs)
    if style not in STYLES:
        raise _fail(f"--style {style!r}: choose from {', '.join(STYLES)}")
    _check_out_folder(out)
    spec, scene = _load(source, record)
    the_rig = _rig(rig, (width, height), distortion)
    step = spec.step if spec.step is not None else scene.current_index
    try:
        doc = render_to_dir(scene, the_rig, out, step=step, agent_id=agent, outputs=wanted, style=style, seed=seed)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # e.g. no permission to write --out
        raise _fail(_os_error(exc, out)) from None
    console.print(f"rendered {len(the_rig)} view(s) of {scene.scene_id} step {step} from agent {doc['viewer']['id']} into {out}")
    console.print(f"contact sheet: {Path(out) / 'contact_sheet.png'}")


@app.command("check-projection")
def check_projection_cmd(
    path: Path = typer.Argument(..., help="Waymo perception Frame TFRecord"),
    out: Path = typer.Option(Path("out/check_projection"), "--out", help="folder for overlays and projection.json"),
    record: int = typer.Option(0, "--record", help="record index inside the file"),
) -> None:
    """Render a perception frame's 3D boxes through its own calibration and compare each box's
    rendered 2D extent with Waymo's projected_lidar_labels; last line is JSON."""
    from rap.render.projection_check import check_projection
    from rap.sources.tfrecord import require_regular_file

    if not path.exists():
        raise _fail(f"{path}: no such file")
    if path.is_dir():
        raise _fail(f"{path}: is a directory; expected a Waymo perception Frame TFRecord file")
    try:
        require_regular_file(path)  # a named pipe would block the reader forever
    except (ValueError, OSError) as exc:
        raise _fail(str(exc) if isinstance(exc, ValueError) else _os_error(exc, path)) from None
    _check_out_folder(out)
    try:
        result = check_projection(path, out, record=record)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(_os_error(exc, path)) from None
    table = Table(title=f"rendered vs Waymo projected boxes ({path.name})")
    table.add_column("camera")
    table.add_column("boxes", justify="right")
    table.add_column("mean IoU", justify="right")
    for name, row in result["per_camera"].items():
        table.add_row(name, str(row["boxes"]), f"{row['mean_iou']:.4f}")
    table.add_row("all", str(result["boxes"]), f"{result['mean_iou']:.4f}")
    console.print(table)
    console.print(f"overlays in {out}")
    print(json.dumps({"mean_iou": result["mean_iou"], "per_camera": result["per_camera"], "boxes": result["boxes"]}, sort_keys=True))


@app.command("bench-render")
def bench_render_cmd(
    source: str = typer.Option(..., "--source", help="KIND:PATH, e.g. womd:data/waymo/scenario.tfrecord"),
    rig: str = typer.Option("front3", "--rig", help="front3 | nuplan8 | bev"),
    size: str = typer.Option("1920x1080", "--size", help="WIDTHxHEIGHT of every camera"),
    frames: int = typer.Option(100, "--frames", min=1, help="frames to render (one step per frame)"),
    outputs: str = typer.Option("rgb", "--outputs", help="comma-separated subset of rgb,class_id,instance,depth"),
    distortion: bool = typer.Option(False, "--distortion", help="apply the rig's calibrated lens distortion (undistorted render + warp)"),
    pipeline: int = typer.Option(0, "--pipeline", min=0, help="frames in flight (asynchronous readback); 1 = synchronous; 0 = auto (2 on a GPU, 1 on llvmpipe)"),
    record: int = typer.Option(0, "--record"),
) -> None:
    """Measure rendering throughput (upload + draw + readback); last line is JSON with views_per_s."""
    from rap.perf import bench_render

    width, height = parse_size(size)
    wanted = _outputs(outputs)
    _, scene = _load(source, record)
    the_rig = _rig(rig, (width, height), distortion)
    with Progress(TextColumn("bench-render"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("frames", total=frames)
        result = bench_render(scene, the_rig, frames, outputs=wanted, pipeline=pipeline, progress=lambda n: bar.update(task, completed=n))
    console.print(f"{result['views_per_s']:.1f} views/s ({result['rig']} {result['size']}, {result['gl_renderer']})")
    print(json.dumps(result, sort_keys=True))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def demo(ctx: typer.Context, out: Path = typer.Option(Path("out/demo"), "--out", help="output folder")) -> None:
    """The whole chain on the shipped data: renders of the real Waymo scenario, the camera-model
    check, augmented datasets (with paired photo/raster samples), the tiny planner trained on them,
    NAVSIM-style and closed-loop scores beside the built-in agents, and OUT/index.html linking it all.

    Extra arguments are dotted config overrides, e.g. train.steps=50 (0: no planner),
    eval.closed_loop_routes=synthetic:2 ('' skips the closed loop), data.synthetic_towns=2.
    Last stdout line is JSON with every number and path (also OUT/demo.json).
    """
    from rap.config import ConfigError, load_config
    from rap.demo import run_demo
    from rap.demo_config import DemoConfig

    try:
        cfg = load_config(DemoConfig, None, ctx.args)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    try:
        summary = run_demo(out, DEMO_SCENARIO, DEMO_FRAME, console=console, config=cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    print(json.dumps(summary, sort_keys=True))


DEFAULT_GENERATE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "generate" / "default.yaml"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def generate(
    ctx: typer.Context,
    source: str = typer.Option(..., "--source", help="womd:PATH (TFRecord file or folder), scenarionet:DIR, synthetic:N, or waymo-frame:PATH (perception frames: paired real/raster samples)"),
    out: Path = typer.Option(..., "--out", help="output folder (new or empty, or a previous run's with --resume)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default configs/generate/default.yaml)"),
    rig: Optional[str] = typer.Option(None, "--rig", help="front3 | nuplan8 | bev (overrides the config)"),
    size: Optional[str] = typer.Option(None, "--size", help="WIDTHxHEIGHT (overrides the config)"),
    workers: int = typer.Option(1, "--workers", min=1, help="worker processes (local) or concurrent tasks (ray)"),
    executor: str = typer.Option("local", "--executor", help="local | ray"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed or partial run: redo only unfinished shards"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (default: a local Ray instance)"),
) -> None:
    """Generate the augmented dataset: ego, recovery and cross-agent samples in tar shards.

    Extra arguments are dotted config overrides, e.g. seed=3 recovery.num_samples=4.
    Exit status: 0 all inputs read; 2 usage/config error, a folder that is not empty or not rap's,
    another run writing there, or a full disk (free space, then --resume); 3 finished but some
    inputs were skipped.
    """
    from rap.config import ConfigError, load_config
    from rap.generate import GenerateConfig, GenerateError
    from rap.generate import generate as run_generate

    overrides = list(ctx.args)
    if rig is not None:
        overrides.append(f"rig={rig}")
    if size is not None:
        width, height = parse_size(size)
        overrides.append(f"size=[{width},{height}]")
    if executor not in ("local", "ray"):
        raise _fail(f"--executor must be local or ray, got {executor!r}")
    try:
        cfg = load_config(GenerateConfig, config or DEFAULT_GENERATE_CONFIG, overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[samples]} samples, {task.fields[rate]:.1f} samples/s"), TimeElapsedColumn(), console=console
    )
    state = {"samples": 0, "start": None, "task": None}

    def on_start(total: int, done: int) -> None:
        import time as _time

        state["start"] = _time.perf_counter()
        progress.start()  # only once the folder is ours: a refusal is one line, no empty bar
        state["task"] = progress.add_task("scenes", total=total, completed=done, samples=0, rate=0.0)
        if done:
            console.print(f"resuming: {done} of {total} scenes already done")

    def on_unit(record: dict) -> None:
        import time as _time

        state["samples"] += (record.get("shard") or {}).get("samples", 0)
        elapsed = max(1e-9, _time.perf_counter() - state["start"])
        progress.update(state["task"], advance=1, samples=state["samples"], rate=state["samples"] / elapsed)
        for item in record.get("skipped", []):
            progress.console.print(f"[yellow]skipped[/yellow] {item['source']} record {item['record']}: {escape(item['reason'])}")

    try:
        try:
            result = run_generate(source, out, cfg, workers=workers, executor=executor, resume=resume, ray_address=ray_address, on_unit=on_unit, on_start=on_start)
        finally:
            if state["task"] is not None:  # started by on_start
                progress.stop()
    except (GenerateError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # e.g. no permission to create --out
        raise _fail(f"{exc.filename or out}: {exc.strerror or exc}") from None
    m = result.manifest
    console.print(f"{m.num_samples} samples in {len(m.shards)} shards ({', '.join(f'{k} {v}' for k, v in sorted(m.counts.items()))}) in {out}")
    if m.rejected:
        console.print("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(m.rejected.items())))
    if m.skipped:
        console.print(f"[yellow]{len(m.skipped)} input(s) skipped[/yellow] (listed in {Path(out) / 'manifest.json'})")
    summary = {"out": str(out), "samples": m.num_samples, "shards": len(m.shards), "counts": m.counts, "skipped": len(m.skipped), "seconds": round(result.seconds, 3)}
    print(json.dumps(summary, sort_keys=True))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command()
def inspect(
    directory: Path = typer.Argument(..., help="dataset folder written by rap generate"),
    out: Optional[Path] = typer.Option(None, "--out", help="contact sheet PNG (default DIR/contact_sheet.png)"),
    max_samples: int = typer.Option(10000, "--max-samples", min=1, help="read at most this many samples"),
    per_kind: int = typer.Option(3, "--per-kind", min=1, help="contact-sheet tiles per sample kind"),
    verify: bool = typer.Option(False, "--verify", help="also decode every member (images, npz, json) of every sample of every shard, beyond --max-samples: finds damage a manifest cannot (e.g. a dataset without one)"),
) -> None:
    """Counts by kind, value ranges and a contact sheet with trajectories drawn into the views
    and onto a BEV; last line is JSON (with "problems").

    Every shard is first checked against the sha256 manifest.json records; damaged shards are
    listed (expected and actual digest) and not read. Exit status: 0 no damage found; 2 usage
    error, invalid manifest or a damaged dataset (a shard missing or differing from the
    manifest, damaged tar structure, a member that does not decode)."""
    from rap.dataset.inspect import format_report, inspect_dataset

    if not directory.is_dir():
        raise _fail(f"{directory}: no such directory")
    sheet = out if out is not None else directory / "contact_sheet.png"
    where = f"--out {sheet}" if out is not None else f"contact sheet {sheet}"
    if sheet.is_dir():
        raise _fail(f"{where}: is a directory; " + ("--out names the contact sheet PNG file" if out is not None else "give --out"))
    blocker = _not_a_folder(sheet.parent)
    if blocker is not None:
        raise _fail(f"{where}: {blocker[0]}: {blocker[1]}")
    if not any(directory.glob("*.tar")) and not (directory / "manifest.json").exists():
        raise _fail(f"{directory}: no dataset here (no manifest.json and no shard-*.tar)")
    try:
        result = inspect_dataset(directory, sheet, max_samples=max_samples, per_kind=per_kind, verify=verify)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    console.print(escape(format_report(result)), soft_wrap=True)
    console.print(f"contact sheet: {sheet}")
    print(json.dumps(result, sort_keys=True, default=str))
    if result["problems"]:
        raise _fail(f"{directory}: damaged dataset: {len(result['problems'])} problem(s) listed above")


@app.command("bench-score")
def bench_score_cmd(
    proposals: int = typer.Option(1000, "--proposals", min=1, help="proposals scored per call (K)"),
    agents: int = typer.Option(20, "--agents", min=0, help="vehicles in the scene"),
    repeats: int = typer.Option(3, "--repeats", min=1, help="timed calls (median reported)"),
    seed: int = typer.Option(0, "--seed"),
    scenes: int = typer.Option(1, "--scenes", min=1, help="different synthetic scenes per timed pass (seeds seed .. seed+N-1)"),
) -> None:
    """Measure PDMS/EPDMS scoring throughput (scene preparation + 4 s at 10 Hz LQR rollout + all
    sub-metrics, per scene); last line is JSON with proposals_per_s and scenes_per_s."""
    from rap.perf import bench_score

    result = bench_score(num_proposals=proposals, num_agents=agents, repeats=repeats, seed=seed, num_scenes=scenes)
    console.print(
        f"{result['proposals_per_s']:.0f} proposals/s, {result['scenes_per_s']:.1f} scenes/s "
        f"(K={proposals}, {scenes} scene{'s' if scenes != 1 else ''}, {agents} agents)"
    )
    print(json.dumps(result, sort_keys=True, default=str))


DEFAULT_TRAIN_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="YAML train config, e.g. configs/train/tiny.yaml (with --resume: default the run's own config.yaml)"),
    out: Path = typer.Option(..., "--out", help="run folder (new or empty; with --resume, a run to continue)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last.pt (same config)"),
) -> None:
    """Train a planner on shard datasets written by rap generate, or on scenes rendered online.

    Extra arguments are dotted config overrides, e.g. data.datasets=[out/ds_a,out/ds_b]
    train.max_steps=200, or data.online=true data.sources=[synthetic:8] (no shards: the loader
    renders the samples rap generate would write). Under torchrun every rank runs this command (DDP). Last stdout line is
    JSON with steps, samples_per_s, final_loss, val_loss, checkpoint.
    Exit status: 0 trained; 2 usage, config or data error (nothing written); 3 the loss became
    NaN/inf (the last good weights are kept in last.pt).
    """
    import os
    import time as _time

    from planners.config import TrainConfig
    from planners.scoring import ScorerPoolError
    from planners.train import CONFIG_FILE, TrainDiverged
    from planners.train import train as run_train
    from rap.config import ConfigError, load_config

    exit_diverged = 3
    rank0 = int(os.environ.get("RANK", "0")) == 0
    overrides = list(ctx.args)
    if config is not None and "=" in config.name and not config.exists():  # `rap train --resume --out D key=value`
        overrides.insert(0, str(config))
        config = None
    if config is None:
        if not resume:
            raise _fail("give a config file (e.g. configs/train/tiny.yaml), or --resume to continue a run with its own config")
        config = out / CONFIG_FILE
    try:
        cfg = load_config(TrainConfig, config, overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not rank0,
    )  # fmt: skip
    state: dict = {"task": None, "plan": None}

    def on_plan(done: int, total: int) -> None:
        if state["plan"] is None:
            progress.start()
            state["plan"] = progress.add_task("plan", total=total, loss="–", rate="–")
        progress.update(state["plan"], completed=done)

    def on_start(info: dict) -> None:
        if state["plan"] is not None:
            progress.remove_task(state["plan"])
        for line in info["skipped"]:
            console.print(f"[yellow]skipped:[/yellow] {line}")
        counts = info["counts"]
        console.print(
            f"training {cfg.model.type} on {sum(counts['train'].values())} samples ({info['scenes']['train']} scenes; "
            + ", ".join(f"{k} {v}" for k, v in counts["train"].items())
            + f"), validating on {sum(counts['val'].values())} ({info['scenes']['val']} scenes); {info['world_size']} rank(s) on {info['device']}"
        )
        if info["without_scoring"] and cfg.model.type == "rap" and cfg.loss.scorer_weight > 0:
            console.print(f"[yellow]warning:[/yellow] {info['without_scoring']} samples have no scoring context (datasets written before rap.scoring/1): they train without the scorer loss")
        if info["start_step"] >= info["max_steps"]:
            console.print(f"nothing to train: the run in {out} already finished its {info['max_steps']} steps")
            return
        progress.start()
        state["task"] = progress.add_task("train", total=info["max_steps"], completed=info["start_step"], loss="–", rate="–")

    def on_log(row: dict) -> None:
        if state["task"] is None:
            return
        if "loss" in row:
            progress.update(state["task"], completed=row["step"], loss=f"{row['loss']:.4f}", rate=f"{row['samples_per_s']:.1f}")
        if row.get("val_loss") is not None:
            progress.console.print(f"step {row['step']}: validation loss {row['val_loss']:.4f}")

    start = _time.perf_counter()
    try:
        try:
            result = run_train(cfg, out, resume=resume, on_log=on_log, on_start=on_start, on_plan=on_plan)
        finally:
            if state["task"] is not None or state["plan"] is not None:
                progress.stop()
    except TrainDiverged as exc:
        raise _fail(str(exc), exit_diverged) from None
    except ScorerPoolError as exc:
        hint = f"; the last checkpoint is {out / 'last.pt'}: continue with --resume" if (out / "last.pt").is_file() else ""
        raise _fail(f"{exc}{hint}", 1) from None
    except ValueError as exc:  # TrainError, DataError, BackboneWeightsError, CheckpointError
        raise _fail(str(exc)) from None
    if rank0:
        console.print(f"{result['steps']} steps in {_time.perf_counter() - start:.0f} s; checkpoint {result['checkpoint']}; loss curve {out / 'loss.png'}")
        print(json.dumps({k: result[k] for k in ("steps", "samples_per_s", "final_loss", "val_loss", "checkpoint")}, sort_keys=True))


def _eval_config(model, config: Optional[Path], overrides, observation_style: Optional[str]):
    """An evaluator's config: ``--config`` (default configs/eval/default.yaml), the dotted
    overrides and ``--observation-style``; a bad one exits 2 naming the key."""
    from rap.config import ConfigError, load_config
    from rap.eval.config import DEFAULT_EVAL_CONFIG

    style = [] if observation_style is None else [f"observation.style={observation_style}"]
    try:
        return load_config(model, config or DEFAULT_EVAL_CONFIG, list(overrides) + style)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@eval_app.command("navsim", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def eval_navsim_cmd(
    ctx: typer.Context,
    agent: str = typer.Option(..., "--agent", help="expert | constant_velocity | log_replay | path/to/agent.py | package.module (with build_agent()) | a rap train checkpoint (*.pt)"),
    scenes: str = typer.Option(..., "--scenes", help="synthetic:N (seeds 0..N-1) | womd:PATH | scenarionet:DIR"),
    out: Path = typer.Option(Path("out/eval_navsim"), "--out", help="folder for navsim_eval.json/.md, index.html and BEV pictures"),
    max_scenes: Optional[int] = typer.Option(None, "--max-scenes", min=1, help="stop after this many scoring steps"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML eval config (default configs/eval/default.yaml)"),
    observation_style: Optional[str] = typer.Option(None, "--observation-style", help="raster (default) | photo: how the agent's camera views are drawn (observation.style)"),
) -> None:
    """NAVSIM-style PDMS (v1) and EPDMS (v2) of an agent; last line is JSON with pdms, epdms,
    scenes, failed and subscores.

    Extra arguments are dotted config overrides, e.g. observation.history.num_poses=4.
    Exit 0 when every scene ran; 2 when the config, the scenes or the agent cannot be loaded
    (nothing written); 3 when the agent failed in some scenes (raised, timed out, returned an
    invalid plan: each scored 0 and listed in the reports).
    """
    from rap.agents import load_any_agent
    from rap.eval.config import EvalConfig
    from rap.eval.navsim import evaluate_navsim

    exit_scenes_failed = 3
    _check_out_folder(out)
    cfg = _eval_config(EvalConfig, config, ctx.args, observation_style)
    try:
        the_agent = load_any_agent(agent)  # AgentLoadError / CheckpointError (ValueErrors): one line naming the file
    except ValueError as exc:
        raise _fail(str(exc)) from None

    def progress(row: dict) -> None:
        bar.update(task, advance=1, last=f"{row['scene']} FAILED" if row.get("failed") else f"{row['scene']} PDMS {row['pdms']:.2f}")

    with Progress(TextColumn("scenes"), TextColumn("{task.completed}"), TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("scenes", total=None, last="")
        try:
            report = evaluate_navsim(the_agent, scenes, out, config=cfg, max_scenes=max_scenes, on_scene=progress)
        except (ValueError, FileNotFoundError) as exc:  # AgentLoadError from sensor_config() too
            raise _fail(str(exc)) from None
    table = Table(title=escape(f"{report['agent']} on {scenes}: {report['scenes']} scenes" + (f", {report['failed']} failed" if report["failed"] else "")))
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_row("PDMS (v1)", f"{report['pdms']:.4f}")
    table.add_row("EPDMS (v2)", f"{report['epdms']:.4f}")
    for key, value in report["subscores"].items():
        table.add_row(key, "–" if value is None else f"{value:.4f}")
    console.print(table)
    failed_rows = [row for row in report["rows"] if row.get("failed")]
    for row in failed_rows[:10]:
        console.print(f"[red]failed:[/red] {escape(row['scene'])}: {escape(row['error'])}", soft_wrap=True)
    if len(failed_rows) > 10:
        console.print(f"[red]failed:[/red] … and {len(failed_rows) - 10} more (see the report)")
    console.print(f"report: {Path(out) / 'index.html'}")
    print(json.dumps({"pdms": report["pdms"], "epdms": report["epdms"], "scenes": report["scenes"], "failed": report["failed"], "subscores": report["subscores"]}, sort_keys=True))
    if failed_rows:
        raise _fail(f"{len(failed_rows)} of {report['scenes']} scenes failed (agent {report['agent']!r}; each scored 0)", exit_scenes_failed)


@eval_app.command("open-loop")
def eval_open_loop_cmd(
    agent: str = typer.Option(..., "--agent", help="a rap train checkpoint (*.pt), constant_velocity, or an agent file/module without privileges"),
    data: Path = typer.Option(..., "--data", help="dataset folder written by rap generate"),
    out: Path = typer.Option(Path("out/eval_open_loop"), "--out", help="folder for open_loop_eval.json"),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="stop after this many samples"),
    views: str = typer.Option("raster", "--views", help="raster (every sample's stored views) | real (only paired samples, through their real or photo views)"),
) -> None:
    """Open-loop errors against a dataset's targets: ADE, FDE, minADE over proposals, L2 at
    1/2/3 s and the collision rate with logged road users, per sample kind; last line is JSON
    with ade, fde, min_ade, samples. Exit 0 on success, 2 on a usage or input error."""
    from planners.open_loop import REPORT_NAME, evaluate_open_loop
    from rap.agents import load_any_agent

    _check_out_folder(out)
    try:
        the_agent = load_any_agent(agent)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    with Progress(TextColumn("samples"), TextColumn("{task.completed}"), TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("samples", total=None, last="")
        try:
            report = evaluate_open_loop(the_agent, data, out, max_samples=max_samples, views=views, on_sample=lambda row: bar.update(task, advance=1, last=f"{row['kind']} ADE {row['ade']:.2f} m"))
        except ValueError as exc:  # ShardFormatError too
            raise _fail(str(exc)) from None
    table = Table(title=escape(f"{report['agent']} on {data}: {report['samples']} samples"))
    columns = ("ade", "fde", "min_ade", "l2_1s", "l2_2s", "l2_3s", "collision_rate")
    table.add_column("kind")
    for key in ("samples", *columns):
        table.add_column(key, justify="right")
    for kind, row in [("all", report), *report["per_kind"].items()]:
        table.add_row(kind, str(row["samples"]), *("–" if row.get(k) is None else f"{row[k]:.3f}" for k in columns))
    console.print(table)
    console.print(f"report: {Path(out) / REPORT_NAME}")
    print(json.dumps({k: report[k] for k in ("ade", "fde", "min_ade", "samples", "l2_1s", "l2_2s", "l2_3s", "collision_rate")}, sort_keys=True))


@eval_app.command("wod-e2e")
def eval_wod_e2e_cmd(
    frames: Path = typer.Option(..., "--frames", help="WOD-E2E E2EDFrame TFRecord file or directory of them"),
    predictions: Path = typer.Option(..., "--predictions", help="predictions JSON (format rap.wod_e2e.predictions/v1)"),
    out: Path = typer.Option(Path("out/eval_wod_e2e"), "--out", help="folder for wod_e2e_eval.json"),
) -> None:
    """Rater feedback score and ADE at 3 s / 5 s of predicted trajectories; last line is JSON."""
    from rap.eval.wod_e2e import evaluate_wod_e2e

    for path in (frames, predictions):
        if not path.exists():
            raise _fail(f"{path}: no such file or directory")
    _check_out_folder(out)
    try:
        report = evaluate_wod_e2e(frames, predictions, out)  # a folder as --predictions: PredictionsError
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # e.g. no permission to read an input or write --out
        raise _fail(_os_error(exc, out)) from None
    summary = report["summary"]
    table = Table(title="WOD-E2E")
    for key in summary:
        table.add_column(key)
    table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in summary.values()))
    console.print(table)
    console.print(f"report: {Path(out) / 'wod_e2e_eval.json'}")
    print(json.dumps(summary, sort_keys=True))


@eval_app.command("closed-loop", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def eval_closed_loop_cmd(
    ctx: typer.Context,
    agent: str = typer.Option(..., "--agent", help="expert | constant_velocity | path/to/agent.py | package.module (with build_agent()) | a rap train checkpoint (*.pt)"),
    routes: str = typer.Option("bench:base", "--routes", help="bench:base | bench:dev10 | synthetic:N | womd:PATH (real-log-seeded: one route per scenario of a WOMD file or folder; closed_loop.traffic=log|idm)"),
    out: Path = typer.Option(Path("out/eval_closed_loop"), "--out", help="folder for results.json, closed_loop_eval.json/.md, index.html (with media/) and routes/"),
    workers: int = typer.Option(1, "--workers", min=1, help="routes run in parallel (processes, or Ray actors with --executor ray)"),
    executor: str = typer.Option("local", "--executor", help="local (a process pool) | ray (Ray actors; joins RAY_ADDRESS when set, else a local instance)"),
    resume: bool = typer.Option(False, "--resume", help="skip routes already finished in --out (same agent, routes and config)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML eval config (default configs/eval/default.yaml)"),
    observation_style: Optional[str] = typer.Option(None, "--observation-style", help="raster (default) | photo: how the agent's camera views are drawn (observation.style)"),
) -> None:
    """Bench2Drive-style closed-loop driving score on synthetic towns or real-log-seeded routes (womd:PATH); last line is JSON with
    driving_score, success_rate, efficiency, comfort, routes and abilities (0-100 scale).

    Extra arguments are dotted config overrides, e.g. closed_loop.agent_hz=4
    (closed_loop.report_media=false: index.html without BEV animations and camera strips).
    Exit 0 when every route ran; 2 when the config, the routes or the agent cannot be loaded;
    3 when the agent crashed on some routes (each "Failed - Agent crashed", scored 0).
    """
    from rap.agents import load_closed_loop_agent
    from rap.eval.closed_loop.config import ClosedLoopConfig
    from rap.eval.closed_loop.outputs import headline
    from rap.eval.closed_loop.runner import EXECUTORS, evaluate_closed_loop, load_routes

    exit_routes_failed = 3
    if executor not in EXECUTORS:
        raise _fail(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    _check_out_folder(out)
    cfg = _eval_config(ClosedLoopConfig, config, ctx.args, observation_style)
    try:
        total = len(load_routes(routes, cfg.closed_loop.log_seats))
    except ValueError as exc:
        raise _fail(str(exc)) from None

    def progress(result: dict) -> None:
        rec = result["record"]
        bar.update(task, advance=1, last=f"{rec['route_id']} {rec['status']} DS {rec['scores']['score_composed']:.1f}")

    with Progress(TextColumn("routes"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("routes", total=total, last="")
        try:
            report = evaluate_closed_loop(agent, routes, out, config=cfg, workers=workers, resume=resume, on_route=progress, agent_loader=load_closed_loop_agent, executor=executor)
        except (ValueError, FileNotFoundError) as exc:  # AgentLoadError / CheckpointError name the file
            raise _fail(str(exc)) from None
    table = Table(title=escape(f"{report['agent']} on {routes}: {report['routes']} routes" + (f", {report['failed']} crashed" if report["failed"] else "")))
    for column in ("ability", "routes", "success rate", "driving score"):
        table.add_column(column, justify="left" if column == "ability" else "right")
    for name, row in report["abilities"].items():
        table.add_row(name, str(row["routes"]), f"{row['success_rate']:.2f}", f"{row['driving_score']:.2f}")
    console.print(table)
    eff = "–" if report["efficiency"] is None else f"{report['efficiency']:.2f}"
    console.print(f"driving score {report['driving_score']:.2f}, success rate {report['success_rate']:.2f}, efficiency {eff}, comfort {report['comfort']:.2f} ({report['seconds']:.0f} s)")
    crashed = [row for row in report["route_rows"] if "error" in row]
    for row in crashed[:10]:
        console.print(f"[red]agent crashed:[/red] {escape(row['route_id'])}: {escape(row['error'])}", soft_wrap=True)
    console.print(f"report: {Path(out) / 'closed_loop_eval.md'}, {Path(out) / 'index.html'}")
    print(json.dumps(headline(report), sort_keys=True))
    if crashed:
        raise _fail(f"{len(crashed)} of {report['routes']} routes failed with the agent crashed (agent {report['agent']!r}; each scored 0)", exit_routes_failed)


@experiment_app.command("ablation", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def experiment_ablation_cmd(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="YAML config (default configs/experiments/ablation.yaml)"),
    out: Path = typer.Option(..., "--out", help="run folder (new or empty; with --resume, the run to continue)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out, skipping its finished steps (same config)"),
) -> None:
    """Train the planner on each row's data mixture (ego photo only, + ego / recovery / cross-agent
    rasters, + alignment) with several seeds, score every model closed loop, NAVSIM-style and open
    loop in the photo domain, and fit the cross-agent data-scaling curve. Writes ablation.json,
    ablation.md, index.html, ablation.png and scaling.png into --out.

    Extra arguments are dotted config overrides, e.g. experiment.scale=small (~20 minutes),
    experiment.seeds=[0,1], train.steps=200. Last stdout line is JSON with rows (name, seeds,
    driving_score, driving_score_ci95, pdms, min_ade). Exit 2 on a usage, config or data error;
    3 when a planner crashed on closed-loop routes.
    """
    from rap.config import ConfigError
    from rap.experiments.ablation import headline, run_ablation
    from rap.experiments.ablation_config import load_ablation_config

    exit_crashed = 3
    if config is not None and "=" in config.name and not config.exists():  # only overrides given
        ctx.args.insert(0, str(config))
        config = None
    try:
        cfg = load_ablation_config(config, list(ctx.args))
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    try:
        result = run_ablation(cfg, out, resume=resume, console=console)
    except (ValueError, FileNotFoundError) as exc:  # AblationError, ConfigError, DataError, TrainError
        raise _fail(str(exc)) from None
    except RuntimeError as exc:
        raise _fail(str(exc), exit_crashed) from None
    table = Table(title=f"ablation ({result['observation_style']} observations, {result['seconds'] / 60:.1f} min)")
    for column in ("row", "seeds", "driving score", "95 % CI", "PDMS", "minADE"):
        table.add_column(column, justify="left" if column == "row" else "right")
    fmt = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for row in result["rows"] + result["references"]:
        ci = row["driving_score_ci95"]
        name, seeds = (row["name"], str(len(row["seeds"]))) if row in result["rows"] else (f"reference: {row['name']}", "–")
        table.add_row(escape(name), seeds, fmt(row["driving_score"]), "–" if ci is None else f"[{ci[0]:.1f}, {ci[1]:.1f}]", fmt(row["pdms"], 3), fmt(row["min_ade"], 3))
    console.print(table)
    console.print(f"report: {out / 'index.html'}, {out / 'ablation.md'}")
    print(json.dumps(headline(result), sort_keys=True))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
