"""`rap generate`: driving logs in, a sharded augmented dataset out.

Each input scene (one record of a Waymo Motion file, one ScenarioNet pickle) is one *work unit*
and becomes one shard, ``shard-<unit>.tar``: for every sampled step, the logged ego's own views,
counterfactual recovery views and cross-agent views, rendered with the scene rasterizer and
written through :class:`rap.dataset.writer.ShardWriter` (temporary name, renamed when complete).
After its shard is in place a unit writes a small JSON record into ``<out>/.units/``; ``--resume``
skips units whose record and shard exist and redoes the others, so a killed run (even ``kill -9``)
ends with the same shards and manifest as an uninterrupted one. Every random draw comes from
``numpy.random.default_rng([seed, crc32(scene_id), step])``: the same inputs, config and seed give
the same bytes, whatever the executor or the number of workers.

Executors: ``local`` runs units in worker processes (spawned, one GL context each; in-process
for one worker), ``ray`` runs the same units as Ray tasks (``ray.init()`` locally by default, or
on a cluster with ``ray_address``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional

import numpy as np
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

import rap
from rap.config import DEFAULT_CAMERA_SIZE, DEFAULT_RIG, FrozenModel, HistorySection, ImageSide, SamplingSection, config_to_dict
from rap.dataset.manifest import Manifest, ShardEntry, SkippedInput, write_manifest
from rap.dataset.sample import Sample, SampleKind, SamplePlan
from rap.dataset.writer import ShardWriter, shard_name
from rap.images import save_json
from rap.render.rigs import camera_record
from rap.scene import Scene
from rap.sources.registry import WorkUnit, list_units, load_unit
from rap.trajectory import TrajectorySampling

UNITS_DIR = ".units"
CONFIG_RECORD = "config.json"


class RecoverySection(FrozenModel):
    """Counterfactual recovery samples (see :mod:`rap.augment.recovery`)."""

    enabled: bool = True
    num_samples: NonNegativeInt = 2  # accepted perturbations per sampled step
    preset: Literal["rap", "wide"] = "rap"  # rap: x, y ±0.5 m, heading ±15°, speed ±20 %, accel ±10 %
    target: Literal["smooth_rejoin", "expert_future"] = "smooth_rejoin"
    # Also perturb each cross-agent candidate in its own seat (its logged path is the expert
    # path to rejoin): logs whose ego barely moves still yield recovery samples.
    on_cross_agents: bool = True
    rejoin_horizon_s: Optional[PositiveFloat] = None  # [s] None: the preset's (rap 3 s, wide 4 s)


class CrossAgentSection(FrozenModel):
    """Views from other vehicles' seats (see :mod:`rap.augment.cross_agent`)."""

    enabled: bool = True
    min_cv_error_m: NonNegativeFloat = 0.5  # [m] constant-velocity extrapolation error that counts as non-trivial motion
    min_speed_mps: NonNegativeFloat = 0.0  # [m/s]
    max_agents: Optional[NonNegativeInt] = None  # per step; None = every candidate


class GenerateConfig(FrozenModel):
    """Everything that decides the dataset's content (stored in the manifest)."""

    seed: int = 0
    rig: Literal["front3", "nuplan8", "bev"] = DEFAULT_RIG
    size: tuple[ImageSide, ImageSide] = DEFAULT_CAMERA_SIZE  # [px] every camera
    distortion: bool = False
    sampling: SamplingSection = SamplingSection()
    history: HistorySection = HistorySection()
    step_stride: PositiveInt = 10  # sample every N log steps (1 s at 10 Hz), aligned with the current step
    ego: bool = True
    recovery: RecoverySection = RecoverySection()
    cross_agent: CrossAgentSection = CrossAgentSection()
    codec: Literal["zst", "png"] = "zst"  # zst: ~15x faster than PNG at equal or smaller size
    bev: bool = False  # also store a BEV raster per sample (auxiliary target)
    bev_size: tuple[ImageSide, ImageSide] = (256, 256)  # [px]

    @property
    def trajectory_sampling(self) -> TrajectorySampling:
        return TrajectorySampling(self.sampling.num_poses, self.sampling.interval_s)


def sample_steps(scene: Scene, config: GenerateConfig) -> list[int]:
    """Steps with room for the history and the target window, every ``step_stride`` steps
    (aligned with the scene's current step)."""
    dt = float(np.median(np.diff(scene.timestamps))) if scene.num_steps > 1 else 0.1

    def steps_for(seconds: float) -> int:
        n = seconds / dt  # log timestamps jitter: 5 s at a median 0.09999 s is 50.005 steps
        return int(round(n)) if abs(n - round(n)) < 0.05 else int(np.ceil(n))

    back = steps_for(config.history.num_poses * config.history.interval_s)
    ahead = steps_for(config.trajectory_sampling.horizon_s)
    first, last = back, scene.num_steps - 1 - ahead
    stride = max(1, config.step_stride)
    return [s for s in range(first, last + 1) if (s - scene.current_index) % stride == 0]


def plan_scene(scene: Scene, config: GenerateConfig) -> tuple[list[SamplePlan], collections.Counter]:
    """Every sample plan of a scene, and rejected-sample counts by reason."""
    from rap.augment.cross_agent import CrossAgentConfig, plan_cross_agent, recenter
    from rap.augment.recovery import RecoveryConfig, RecoveryTarget, plan_recovery, plan_recovery_batch
    from rap.augment.targets import EgoConfig, InvalidWindowError, ego_plan

    sampling = config.trajectory_sampling
    hist = dict(history_num=config.history.num_poses, history_interval_s=config.history.interval_s)
    ego_cfg = EgoConfig(sampling=sampling, **hist)
    rec = config.recovery
    horizon = {} if rec.rejoin_horizon_s is None else {"rejoin_horizon_s": rec.rejoin_horizon_s}
    rec_cfg = RecoveryConfig.preset(rec.preset, target=RecoveryTarget(rec.target), **horizon, **hist)
    cross = config.cross_agent
    cross_cfg = CrossAgentConfig(min_cv_error_m=cross.min_cv_error_m, min_speed_mps=cross.min_speed_mps, max_agents=cross.max_agents, **hist)
    scene_hash = zlib.crc32(scene.scene_id.encode())
    plans: list[SamplePlan] = []
    rejects: collections.Counter = collections.Counter()
    for step in sample_steps(scene, config):
        if not scene.tracks.valid[scene.ego_index, step]:
            rejects["ego_invalid"] += 1
            continue
        if config.ego:
            try:
                plans.append(ego_plan(scene, step, ego_cfg))
            except InvalidWindowError:
                rejects["ego_invalid_window"] += 1
        if rec.enabled and rec.num_samples > 0:
            rng = np.random.default_rng([config.seed, scene_hash, step])
            got, rej = plan_recovery(scene, step, rng, rec_cfg, sampling, rec.num_samples)
            plans.extend(got)
            rejects.update({f"recovery_{k}": v for k, v in rej.items()})
        if cross.enabled:
            got, rej = plan_cross_agent(scene, step, cross_cfg, sampling)
            plans.extend(got)
            rejects.update({f"cross_agent_{k}": v for k, v in rej.items()})
            if rec.enabled and rec.num_samples > 0 and rec.on_cross_agents and got:
                # Every candidate's recovery draws of this step, rolled out in one batch.
                items = [(recenter(scene, p.agent_row), np.random.default_rng([config.seed, scene_hash, step, p.agent_id]), None) for p in got]
                for more, rej in plan_recovery_batch(items, step, rec_cfg, sampling, rec.num_samples):
                    plans.extend(more)
                    rejects.update({f"recovery_{k}": v for k, v in rej.items()})
    return plans, rejects


# -- one unit ------------------------------------------------------------------------------------
def unit_record_path(out_dir: Path, index: int) -> Path:
    return out_dir / UNITS_DIR / f"unit-{index:06d}.json"


def run_unit(unit: WorkUnit, config: GenerateConfig, out_dir: str | Path) -> dict:
    """Generate one unit's shard and its record; returns the record (JSON-ready dict).

    Bad input is caught and recorded as skipped (the run goes on); nothing already written is
    touched.
    """
    from rap.render.rigs import get_rig
    from rap.render.scene_raster import SceneRasterizer
    from rap.render.session import worker_renderer

    out_dir = Path(out_dir)
    record: dict = {"index": unit.index, "source": unit.source, "record": unit.record, "shard": None, "counts": {}, "rejected": {}, "skipped": []}
    start = time.perf_counter()
    try:
        scene = load_unit(unit)
    except (ValueError, OSError) as exc:
        record["skipped"].append({"source": unit.source, "record": unit.record, "reason": str(exc)})
        save_json(unit_record_path(out_dir, unit.index), record)
        return record
    try:
        plans, rejects = plan_scene(scene, config)
        rig = get_rig(config.rig, tuple(config.size), distortion=config.distortion)
        bev_rig = get_rig("bev", tuple(config.bev_size)) if config.bev else None
        cameras = {cam.name: camera_record(cam) for cam in rig}
        rast = SceneRasterizer(worker_renderer(), scene)
        writer = ShardWriter(out_dir / shard_name(unit.index), config.codec)
        with writer:  # an exception removes the partial shard
            for plan in plans:
                if plan.kind == SampleKind.RECOVERY:
                    views = rast.render_pose(plan.step, rig, plan.viewer_pose, plan.agent_row)
                    bev = rast.render_pose(plan.step, bev_rig, plan.viewer_pose, plan.agent_row)[0].rgb if bev_rig else None
                else:
                    views = rast.render(plan.step, rig, plan.agent_row)
                    bev = rast.render(plan.step, bev_rig, plan.agent_row)[0].rgb if bev_rig else None
                writer.add(Sample(plan, {v.camera_name: v.rgb for v in views}, cameras, bev))
            entry = writer.close()
    except Exception as exc:  # one scene that breaks generation is skipped and counted, not the run
        reason = f"{unit.source} record {unit.record} (scene {scene.scene_id}): generation failed: {type(exc).__name__}: {exc}"
        record["skipped"].append({"source": unit.source, "record": unit.record, "reason": reason})
        save_json(unit_record_path(out_dir, unit.index), record)
        return record
    record["shard"] = {"name": entry.name, "samples": entry.samples, "sha256": entry.sha256}
    record["counts"] = dict(sorted(writer.counts.items()))
    record["rejected"] = dict(sorted(rejects.items()))
    save_json(unit_record_path(out_dir, unit.index), record)
    record["seconds"] = time.perf_counter() - start  # not saved: timing is not content
    return record


def _run_unit_star(args) -> dict:
    return run_unit(*args)


# -- a whole run ---------------------------------------------------------------------------------
@dataclass
class GenerateResult:
    manifest: Manifest
    units: int
    units_done_before: int
    samples: int
    seconds: float
    records: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all inputs read; 3 finished but some inputs were skipped."""
        return 3 if self.manifest.skipped else 0


class GenerateError(ValueError):
    """A usage problem with the output folder (exit status 2)."""


def _completed(out_dir: Path, units: list[WorkUnit]) -> dict[int, dict]:
    done = {}
    for unit in units:
        path = unit_record_path(out_dir, unit.index)
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # redo it
        shard = record.get("shard")
        if shard is None or (out_dir / shard["name"]).exists():
            done[unit.index] = record
    return done


def generate(
    source: str,
    out_dir: str | Path,
    config: GenerateConfig,
    *,
    workers: int = 1,
    executor: Literal["local", "ray"] = "local",
    resume: bool = False,
    ray_address: Optional[str] = None,
    on_unit: Optional[Callable[[dict], None]] = None,
    on_start: Optional[Callable[[int, int], None]] = None,
) -> GenerateResult:
    """Generate the dataset of ``source`` into ``out_dir``.

    Args:
        source: ``womd:PATH`` (file or folder of TFRecords), ``scenarionet:DIR`` or
            ``synthetic:N`` (seeds 0..N-1 of the procedural world).
        out_dir: output folder: empty or new, or a previous run's folder with ``resume``.
        config: what to generate.
        workers: worker processes (local) or concurrent tasks (ray).
        executor: ``local`` or ``ray``.
        resume: continue a previous run with the same source and config.
        ray_address: Ray cluster address (default: a local Ray instance).
        on_unit: called with each finished unit's record (progress).
        on_start: called with (units in total, units already done) before work starts.

    Raises:
        GenerateError: the folder holds another run and ``resume`` is off, or the config differs.
        ValueError / FileNotFoundError: bad source.
    """
    out_dir = Path(out_dir)
    units = list_units(source)
    config_doc = {"source": source, "config": config_to_dict(config), "toolkit_version": rap.__version__}
    config_path = out_dir / UNITS_DIR / CONFIG_RECORD
    if resume and config_path.exists():
        previous = json.loads(config_path.read_text())
        if previous != config_doc:
            raise GenerateError(f"{out_dir}: --resume with a different source or config than the run there ({config_path})")
    elif out_dir.exists() and any(out_dir.iterdir()):
        if not resume:
            raise GenerateError(f"{out_dir}: folder is not empty; use --resume to continue a run there, or choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(config_path, config_doc)

    done = _completed(out_dir, units) if resume else {}
    todo = [u for u in units if u.index not in done]
    if on_start:
        on_start(len(units), len(done))
    start = time.perf_counter()
    records = dict(done)

    def finished(record: dict) -> None:
        records[record["index"]] = record
        if on_unit:
            on_unit(record)

    if executor == "ray":
        _run_ray(todo, config, out_dir, workers, ray_address, finished)
    elif workers <= 1:
        for unit in todo:
            finished(run_unit(unit, config, out_dir))
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_unit, unit, config, out_dir) for unit in todo]
            for future in concurrent.futures.as_completed(futures):
                finished(future.result())

    manifest = build_manifest(config, [records[u.index] for u in units])
    write_manifest(out_dir, manifest)
    return GenerateResult(manifest, len(units), len(done), manifest.num_samples, time.perf_counter() - start, [records[u.index] for u in units])


def _run_ray(units: list[WorkUnit], config: GenerateConfig, out_dir: Path, workers: int, address: Optional[str], finished: Callable[[dict], None]) -> None:
    try:
        import ray
    except ImportError as exc:
        raise GenerateError("the ray executor needs Ray: pip install 'rap[ray]' (or pip install ray)") from exc
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, num_cpus=None if address else max(1, workers))
    try:
        task = ray.remote(num_cpus=1)(run_unit)
        pending = [task.remote(unit, config, str(out_dir)) for unit in units]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                finished(ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()


def build_manifest(config: GenerateConfig, records: Iterable[dict]) -> Manifest:
    """The manifest from unit records (order-independent: everything is sorted)."""
    counts: collections.Counter = collections.Counter()
    rejected: collections.Counter = collections.Counter()
    shards, skipped = [], []
    for record in records:
        counts.update(record.get("counts", {}))
        rejected.update(record.get("rejected", {}))
        if record.get("shard"):
            s = record["shard"]
            shards.append(ShardEntry(s["name"], int(s["samples"]), s["sha256"]))
        for item in record.get("skipped", []):
            skipped.append(SkippedInput(item["source"], int(item["record"]), item["reason"]))
    for kind in SampleKind:
        counts.setdefault(kind.value, 0)
    return Manifest(
        toolkit_version=rap.__version__,
        seed=config.seed,
        config=config_to_dict(config),
        codec=config.codec,
        counts=dict(counts),
        shards=shards,
        skipped=skipped,
        rejected=dict(rejected),
    )
