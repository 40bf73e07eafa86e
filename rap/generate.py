"""`rap generate`: driving logs in, a sharded augmented dataset out.

Each input scene (one record of a Waymo Motion file, one ScenarioNet pickle) is one *work unit*
and becomes one shard, ``shard-<unit>.tar``: for every sampled step, the logged ego's own views,
counterfactual recovery views and cross-agent views, rendered with the scene rasterizer and
written through :class:`rap.dataset.writer.ShardWriter` (temporary name, renamed when complete),
each with its scoring context (:mod:`rap.augment.scoring_context`; ``scoring_context: false``
leaves it out, and a context that cannot be built is counted under ``rejected`` as
``scoring_context_<reason>`` while the sample is still written).
After its shard is in place a unit writes a small JSON record into ``<out>/.units/``; ``--resume``
skips units whose record exists and whose shard still has the recorded sha256, and redoes the
others, so a killed run (even ``kill -9``) ends with the same shards and manifest as an
uninterrupted one. Every random draw comes from
``numpy.random.default_rng([seed, crc32(scene_id), step])``: the same inputs, config and seed give
the same bytes, whatever the executor or the number of workers.

The output folder is guarded: a run holds an exclusive lock on ``<out>/.units/lock`` from start
to manifest (the kernel drops it with the process, so a killed run never leaves it held; a lease
in the file, renewed while the run lives, also holds it against runs on other machines sharing the
folder, see :func:`rap.fileio.exclusive_lock`), a second run there is refused; a run starts only in a new or empty folder, ``resume`` only in a
rap run's folder whose saved config (``.units/config.json``) equals its own; nothing is written
into a folder that fails these checks. A full disk, or any other error writing the output (EIO,
EACCES, EROFS ...), stops the run with a :class:`GenerateError` naming the file that could not be
written (its partial file removed, no unit recorded for it: it is not the input's fault), and
``resume`` continues once the cause is fixed.

Executors: ``local`` runs units in worker processes (spawned, one GL context each; in-process
for one worker), ``ray`` runs the same units as Ray tasks (``ray.init()`` locally by default, or
on a cluster with ``ray_address``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import json
import multiprocessing
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional

import numpy as np
from pydantic import NonNegativeInt, PositiveInt

import rap
from rap.cluster import die_with_parent, ray_session
from rap.config import DEFAULT_CAMERA_SIZE, DEFAULT_RIG, FrozenModel, HistorySection, ImageSide, NonNegativeFloat, PositiveFloat, SamplingSection, config_to_dict
from rap.dataset.manifest import Manifest, ShardEntry, SkippedInput, write_manifest
from rap.dataset.sample import Sample, SampleKind, SamplePlan
from rap.dataset.writer import TMP_SUFFIX, ShardWriter, shard_name
from rap.fileio import LEASE_THREAD_PREFIX, LockHeldError, exclusive_lock, is_disk_full, lock_holder, remove_quietly, sha256_file
from rap.images import save_json
from rap.render.rigs import camera_record
from rap.scene import Scene
from rap.sources.registry import FRAME_KINDS, WorkUnit, list_units, load_frame_unit, load_unit
from rap.trajectory import TrajectorySampling

UNITS_DIR = ".units"
CONFIG_RECORD = "config.json"
LOCK_NAME = "lock"  # <out>/.units/lock: held (flock) by the run writing the folder
_UNIT_RECORD = re.compile(r"^unit-\d{6,}\.json$")
_ATOMIC_TMP = re.compile(r"^\..+\.tmp$")  # rap.fileio.atomic_writer's temporary files


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


class PairedSection(FrozenModel):
    """Paired samples (kind ``paired``): each ego sample's moment also as real-like views.

    With ``enabled``, every ego sample gets a twin of kind ``paired`` with the same plan: its
    raster views plus, per camera, the same view in ``style`` (``photo``: the camera-like
    stand-in of :func:`rap.render.style.photo_style`, its noise seeded by the run's seed). They
    are the data raster-to-real alignment trains on.
    """

    enabled: bool = False
    style: Literal["photo"] = "photo"


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
    # Store each sample's scoring context (<key>.scoring.npz.zst, rap.augment.scoring_context):
    # what the PDM scorer needs to score any plan of the acting agent during training.
    scoring_context: bool = True
    paired: PairedSection = PairedSection()

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


def paired_plan(plan: SamplePlan) -> SamplePlan:
    """The ``paired`` twin of an ego plan: the same moment, agent and targets, its own key."""
    import dataclasses

    key = plan.key.replace("_ego_", "_paired_", 1) if "_ego_" in plan.key else f"{plan.key}_paired"
    return dataclasses.replace(plan, key=key, kind=SampleKind.PAIRED)


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
                if config.paired.enabled:
                    plans.append(paired_plan(plans[-1]))
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


class SampleBuilder:
    """Renders the samples of one scene's plans: the views through the config's rig (and the BEV
    raster), the camera records and the scoring context, with this process's renderer (one GL
    context per process). `rap generate` writes what it builds; online training
    (:mod:`planners.online`) feeds it to the model directly."""

    def __init__(self, scene: Scene, config: GenerateConfig, cameras: Optional[Iterable[str]] = None, any_order: bool = False) -> None:
        """``cameras``: render only these cameras of the rig (default: all); each camera's view
        is the same either way. ``any_order``: plans come in any order, not step by step (keeps
        the scoring contexts' per-step work of every step)."""
        from rap.augment.scoring_context import ScoringContextBuilder
        from rap.render.rigs import get_rig
        from rap.render.scene_raster import SceneRasterizer
        from rap.render.session import worker_renderer
        from rasterizer.camera import Rig

        rig = get_rig(config.rig, tuple(config.size), distortion=config.distortion)
        if cameras is not None:
            wanted = set(cameras)
            rig = Rig(rig.name, tuple(cam for cam in rig if cam.name in wanted))
        self.rig = rig
        self.bev_rig = get_rig("bev", tuple(config.bev_size)) if config.bev else None
        self.cameras = {cam.name: camera_record(cam) for cam in self.rig}
        self.rast = SceneRasterizer(worker_renderer(), scene)
        # Paired samples' real-like views: a second renderer of this process in the paired style.
        self.real_rast = SceneRasterizer(worker_renderer(config.paired.style, config.seed), scene) if config.paired.enabled else None
        self.contexts = ScoringContextBuilder(scene, keep_all_steps=any_order) if config.scoring_context else None

    def build(self, plan: SamplePlan, scoring: bool = True) -> tuple[Sample, Optional[str]]:
        """The sample of ``plan``, and why its scoring context could not be built (None when it
        was, or when the config stores none). ``scoring=False`` leaves the context out (a
        consumer that does not use it)."""
        rast, rig, bev_rig = self.rast, self.rig, self.bev_rig
        if plan.kind == SampleKind.RECOVERY:
            views = rast.render_pose(plan.step, rig, plan.viewer_pose, plan.agent_row)
            bev = rast.render_pose(plan.step, bev_rig, plan.viewer_pose, plan.agent_row)[0].rgb if bev_rig else None
        else:
            views = rast.render(plan.step, rig, plan.agent_row)
            bev = rast.render(plan.step, bev_rig, plan.agent_row)[0].rgb if bev_rig else None
        context, reason = self.contexts.build(plan) if self.contexts is not None and scoring else (None, None)
        real = None
        if plan.kind == SampleKind.PAIRED:
            real = {v.camera_name: v.rgb for v in self.real_rast.render(plan.step, rig, plan.agent_row)}
        return Sample(plan, {v.camera_name: v.rgb for v in views}, self.cameras, bev, context, real), reason


# -- one unit ------------------------------------------------------------------------------------
def unit_record_path(out_dir: Path, index: int) -> Path:
    return out_dir / UNITS_DIR / f"unit-{index:06d}.json"


def run_unit(unit: WorkUnit, config: GenerateConfig, out_dir: str | Path) -> dict:
    """Generate one unit's shard and its record; returns the record (JSON-ready dict).

    Bad input is caught and recorded as skipped (the run goes on); nothing already written is
    touched.
    """
    out_dir = Path(out_dir)
    record: dict = {"index": unit.index, "source": unit.source, "record": unit.record, "shard": None, "counts": {}, "rejected": {}, "skipped": []}
    start = time.perf_counter()
    if unit.kind in FRAME_KINDS:
        return _run_frame_unit(unit, config, out_dir, record, start)
    try:
        scene = load_unit(unit)
    except (ValueError, OSError) as exc:
        record["skipped"].append({"source": unit.source, "record": unit.record, "reason": str(exc)})
        save_json(unit_record_path(out_dir, unit.index), record)
        return record
    try:
        plans, rejects = plan_scene(scene, config)
        builder = SampleBuilder(scene, config)
        writer = ShardWriter(out_dir / shard_name(unit.index), config.codec)
        with writer:  # an exception removes the partial shard
            for plan in plans:
                sample, reason = builder.build(plan)
                if reason is not None:  # the sample is written without a scoring context, and counted
                    rejects[f"scoring_context_{reason}"] += 1
                writer.add(sample)
            entry = writer.close()
    except Exception as exc:  # one scene that breaks generation is skipped and counted, not the run
        if isinstance(exc, OSError):
            raise  # writing the output failed (a full disk, EIO, EACCES ...), not the input: the run stops, --resume redoes this unit
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


def _run_frame_unit(unit: WorkUnit, config: GenerateConfig, out_dir: Path, record: dict, start: float) -> dict:
    """A perception frame's unit: one paired real/raster sample (:mod:`rap.augment.frame_pairs`)."""
    from rap.augment.frame_pairs import frame_sample
    from rap.render.session import worker_renderer

    try:
        frame = load_frame_unit(unit)
        sample = frame_sample(frame, worker_renderer(), config.trajectory_sampling, config.history.num_poses)
        writer = ShardWriter(out_dir / shard_name(unit.index), config.codec)
        with writer:
            writer.add(sample)
            entry = writer.close()
    except Exception as exc:  # a frame that cannot be read or paired is skipped and counted, not the run
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise  # writing the output failed (or the input vanished mid-run): the run stops, --resume redoes it
        record["skipped"].append({"source": unit.source, "record": unit.record, "reason": f"{type(exc).__name__}: {exc}"})
        save_json(unit_record_path(out_dir, unit.index), record)
        return record
    record["shard"] = {"name": entry.name, "samples": entry.samples, "sha256": entry.sha256}
    record["counts"] = dict(sorted(writer.counts.items()))
    save_json(unit_record_path(out_dir, unit.index), record)
    record["seconds"] = time.perf_counter() - start
    return record


def _run_unit_star(args) -> dict:
    return run_unit(*args)


START_METHOD_ENV = "RAP_START_METHOD"


def worker_start_method() -> str:
    """How worker processes start: ``fork`` where that is safe, else ``spawn``.

    Forked workers inherit this process's imports and loaded kernels (a spawned one pays ~1.2 s
    of CPU to import them again before its first unit: a large share of a short run). Safe means
    Linux, no OpenGL context ever created in this process (:func:`rasterizer.context.contexts_created`:
    the driver's state and threads do not survive a fork) and no thread but the run's own lock
    lease (a thread holding a lock at the fork would leave it held in the child). The
    environment variable ``RAP_START_METHOD`` (``fork``, ``spawn`` or ``forkserver``) overrides
    the choice. Either way the output bytes are the same.
    """
    import threading

    from rasterizer.context import contexts_created

    chosen = os.environ.get(START_METHOD_ENV, "").strip()
    if chosen:
        if chosen not in multiprocessing.get_all_start_methods():
            raise GenerateError(f"{START_METHOD_ENV}={chosen!r}: expected one of {', '.join(multiprocessing.get_all_start_methods())}")
        return chosen
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.name.startswith(LEASE_THREAD_PREFIX)]
    if sys.platform.startswith("linux") and not contexts_created() and not others:
        return "fork"
    return "spawn"


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
    """A usage problem with the output folder, or an error writing it (a full disk ...; exit status 2)."""


def _unit_is_done(out_dir: Path, unit: WorkUnit, record) -> bool:
    """Whether a unit record describes this unit, and its shard (if any) still has the recorded
    bytes (sha256): anything else is redone."""
    try:
        if record["index"] != unit.index or record["source"] != unit.source or record["record"] != unit.record:
            return False  # the source's list of inputs changed under the run
        shard = record["shard"]
        if shard is None:
            return bool(record["skipped"])
        path = out_dir / shard_name(unit.index)
        return shard["name"] == path.name and int(shard["samples"]) >= 0 and path.is_file() and sha256_file(path) == shard["sha256"]
    except (KeyError, TypeError, ValueError, OSError):
        return False


def _completed(out_dir: Path, units: list[WorkUnit]) -> dict[int, dict]:
    done = {}
    for unit in units:
        try:
            record = json.loads(unit_record_path(out_dir, unit.index).read_text())
        except (OSError, ValueError):
            continue  # missing or unreadable: redo it
        if _unit_is_done(out_dir, unit, record):
            done[unit.index] = record
    return done


def _folder_state(out_dir: Path) -> Literal["new", "empty", "run", "foreign"]:
    """``new`` (absent), ``empty`` (nothing but a lock or temporary files a run left before
    saving its config), ``run`` (holds a rap generate run record) or ``foreign``."""
    if not out_dir.exists():
        return "new"
    if not out_dir.is_dir():
        return "foreign"
    entries = list(out_dir.iterdir())
    units_dir = out_dir / UNITS_DIR
    if not units_dir.is_dir() or units_dir.is_symlink():
        return "empty" if not entries else "foreign"
    names = [p.name for p in units_dir.iterdir()]
    if len(entries) == 1 and all(n == LOCK_NAME or _ATOMIC_TMP.match(n) for n in names):
        return "empty"
    if any(n in (CONFIG_RECORD, LOCK_NAME) or _UNIT_RECORD.match(n) for n in names):
        return "run"
    return "foreign"


def _busy(out_dir: Path, holder: str = "") -> GenerateError:
    by = f", {holder}" if holder and holder != "locked by another process" else ""
    return GenerateError(
        f"{out_dir}: another rap generate run is writing to this folder (it holds {out_dir / UNITS_DIR / LOCK_NAME}{by}); wait for it to finish, or choose another folder"
    )


def _check_folder(out_dir: Path, resume: bool, *, locked: bool = False) -> str:
    """Refuse (GenerateError) a folder this run must not write into; touches nothing.
    ``locked``: this run holds the folder's lock (checking again under it)."""
    state = _folder_state(out_dir)
    if state in ("new", "empty"):
        return state
    holder = lock_holder(out_dir / UNITS_DIR / LOCK_NAME) if state == "run" and not locked else None
    if holder is not None:
        raise _busy(out_dir, holder)
    if state == "foreign":
        if out_dir.exists() and not out_dir.is_dir():
            raise GenerateError(f"{out_dir}: not a folder; choose a new or empty folder for --out")
        raise GenerateError(
            f"{out_dir}: not a rap generate output folder (not empty, and no {UNITS_DIR}/{CONFIG_RECORD}); "
            "rap never writes into a folder it did not create: choose a new or empty folder"
        )
    if not resume:
        raise GenerateError(f"{out_dir}: folder is not empty; use --resume to continue a run there, or choose a new folder")
    return state


def _check_resume(out_dir: Path, config_doc: dict) -> None:
    """Under the lock: a resumed run's saved config must exist and equal this run's."""
    config_path = out_dir / UNITS_DIR / CONFIG_RECORD
    if not config_path.exists():
        raise GenerateError(
            f"{out_dir}: cannot --resume: the run's saved config {config_path} is missing, so this run's source and config cannot be proven "
            "to be the same; generate into a new folder (or delete this one to start over)"
        )
    try:
        previous = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GenerateError(
            f"{out_dir}: cannot --resume: the run's saved config {config_path} is unreadable ({type(exc).__name__}: {exc}); "
            "generate into a new folder (or delete this one to start over)"
        ) from None
    if previous != config_doc:
        raise GenerateError(f"{out_dir}: --resume with a different source or config than the run there ({config_path})")


def _remove_leftovers(out_dir: Path) -> None:
    """Under the lock: temporary files a killed run left (partial shards, half-written records);
    nobody else can be writing them."""
    for path in out_dir.glob(f"shard-*.tar{TMP_SUFFIX}"):
        remove_quietly(path)
    for folder in (out_dir, out_dir / UNITS_DIR):
        for path in folder.glob(".*.tmp"):
            if _ATOMIC_TMP.match(path.name):
                remove_quietly(path)


def disk_full_message(exc: OSError, out_dir: Path) -> str:
    """One line: which file could not be written, that the disk is full, how to go on."""
    what = "the disk quota is used up" if exc.errno == errno.EDQUOT else "the disk is full"
    return (
        f"could not write {exc.filename or out_dir}: {what} ({exc.strerror or os.strerror(exc.errno)}); "
        "free some space, then run the same command with --resume to continue where it stopped"
    )


def write_error_message(exc: OSError, out_dir: Path) -> str:
    """One line for any other error writing the output (EIO, EACCES, EROFS ...): which file,
    the system's reason, that finished shards are kept and how to go on."""
    if is_disk_full(exc):
        return disk_full_message(exc, out_dir)
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else type(exc).__name__
    return (
        f"could not write {exc.filename or out_dir}: {exc.strerror or exc} ({code}); the run stopped and the shards "
        "it finished are kept: fix the cause, then run the same command with --resume to continue where it stopped"
    )


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
        GenerateError: the folder is not empty and ``resume`` is off; it holds no rap run, another
            run is writing there, or (``resume``) its saved config is missing or differs; the disk
            is full or another write fails (the message names the file; ``resume`` continues once
            the cause is fixed).
        ValueError / FileNotFoundError: bad source.
    """
    out_dir = Path(out_dir)
    units = list_units(source)
    config_doc = {"source": source, "config": config_to_dict(config), "toolkit_version": rap.__version__}
    _check_folder(out_dir, resume)  # before anything is written
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / UNITS_DIR).mkdir(exist_ok=True)
        with exclusive_lock(out_dir / UNITS_DIR / LOCK_NAME):
            return _generate_locked(units, source, out_dir, config, config_doc, workers, executor, resume, ray_address, on_unit, on_start)
    except LockHeldError as exc:
        raise _busy(out_dir, exc.strerror or "") from None
    except OSError as exc:  # the inputs' own errors are caught per unit: this is the output
        raise GenerateError(write_error_message(exc, out_dir)) from None


def _generate_locked(
    units: list[WorkUnit],
    source: str,
    out_dir: Path,
    config: GenerateConfig,
    config_doc: dict,
    workers: int,
    executor: str,
    resume: bool,
    ray_address: Optional[str],
    on_unit: Optional[Callable[[dict], None]],
    on_start: Optional[Callable[[int, int], None]],
) -> GenerateResult:
    """:func:`generate` once the folder's lock is held."""
    state = _check_folder(out_dir, resume, locked=True)  # again, now that no other run can change it
    if state == "run":  # resume (_check_folder refuses a run's folder otherwise)
        _check_resume(out_dir, config_doc)
    _remove_leftovers(out_dir)
    if state != "run":
        save_json(out_dir / UNITS_DIR / CONFIG_RECORD, config_doc)

    done = _completed(out_dir, units) if resume else {}
    todo = [u for u in units if u.index not in done]
    pooled = executor != "ray" and workers > 1
    if on_start and not pooled:  # (a pool's workers start first: see below)
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
        ctx = multiprocessing.get_context(worker_start_method())
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            # forked workers start at the first submit, before on_start's progress bar has a thread
            futures = [pool.submit(run_unit, unit, config, out_dir) for unit in todo]
            if on_start:
                on_start(len(units), len(done))
            try:
                for future in concurrent.futures.as_completed(futures):
                    finished(future.result())
            except BaseException:  # a full disk (or Ctrl-C): start no more units
                for future in futures:
                    future.cancel()
                raise

    manifest = build_manifest(config, [records[u.index] for u in units])
    write_manifest(out_dir, manifest)
    return GenerateResult(manifest, len(units), len(done), manifest.num_samples, time.perf_counter() - start, [records[u.index] for u in units])


def _run_ray(units: list[WorkUnit], config: GenerateConfig, out_dir: Path, workers: int, address: Optional[str], finished: Callable[[dict], None]) -> None:
    with ray_session(workers, address, GenerateError) as ray:
        task = ray.remote(num_cpus=1)(run_unit)
        pending = [task.remote(unit, config, str(out_dir)) for unit in units]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    record = ray.get(ref)
                except Exception as exc:  # a task's write error arrives wrapped in a RayTaskError
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, OSError) and not isinstance(exc, OSError):
                        raise cause from None
                    raise
                finished(record)


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
