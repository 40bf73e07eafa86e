"""`rap train`: the training loop.

One process, or one per rank under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU). Every step's
global batch is drawn from ``(train.seed, step)`` (:func:`planners.data.global_batch`); rank
``r`` of ``R`` trains on its share, DDP averages the gradients, so R ranks compute what one
process computes on the whole batch. AdamW, linear warm-up then cosine decay, gradient
clipping, AMP on CUDA. Rank 0 writes, into ``--out``::

    config.yaml          the resolved config (`--resume` reads it when no config is given)
    metrics.jsonl        one JSON object per logged step and per validation
    events.out.tfevents.*  TensorBoard scalars (train/loss, train/lr, val/loss, ...)
    last.pt              every train.checkpoint_every steps and at the end
    best.pt              the checkpoint with the lowest validation loss
    loss.png             the loss curves, at the end

With ``align.*`` weights, paired samples (real or photo views with the raster of the same
moment) add the raster-to-real alignment losses of :mod:`planners.align`; the domain classifier
trains beside the planner (:class:`~planners.align.AlignedPlanner`, what DDP wraps) and is saved
as the checkpoint's ``domain_classifier``; the planner's weights stay under ``model``.

``--resume`` continues from ``last.pt`` (a run killed with ``kill -9`` included) and, on CPU,
ends with the weights an uninterrupted run ends with. A non-finite loss stops the run
(:class:`TrainDiverged`) after saving the last good state as ``last.pt``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from planners.checkpoint import config_of, load_checkpoint, save_checkpoint
from planners.config import TrainConfig
from planners.data import DataError, SampleDataset, StepBatchSampler, TrainingIndex, collate_samples, kind_counts
from planners.online import OnlineIndex
from planners.features import SCORE_NAMES
from planners.align import AlignedPlanner, DomainClassifier, domain_bce, reversal_strength, spatial_alignment_loss
from planners.losses import imitation_ce, imitation_targets, ranking_ce, scorer_bce, wta_l1
from planners.model import build_model
from planners.scoring import ScorerPool, ScorerPoolError, scorer_targets
from rap.config import config_to_dict
from rap.fileio import LockHeldError, exclusive_lock, write_bytes_atomic

__all__ = ["TrainError", "TrainDiverged", "train", "RUN_FILES"]

LAST, BEST, CONFIG_FILE, METRICS_FILE, LOSS_PICTURE, LOCK_FILE = "last.pt", "best.pt", "config.yaml", "metrics.jsonl", "loss.png", ".lock"
RUN_FILES = (LAST, BEST, CONFIG_FILE, METRICS_FILE, LOSS_PICTURE)


class TrainError(ValueError):
    """The run cannot start or continue (an output folder that is not a fresh or resumable run,
    a config that differs from the run being resumed, another run writing there)."""


class TrainDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the checkpoint kept."""


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("train.device=cuda: no CUDA device here")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    o, total = cfg.optim, cfg.train.max_steps

    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: exists and is not a folder")
    if resume:
        if not (out / LAST).is_file():
            raise TrainError(f"--out {out}: nothing to resume (no {LAST}); start without --resume")
        return
    if out.is_dir() and any(out.iterdir()):
        hint = " (a previous run: add --resume to continue it)" if (out / LAST).exists() else ""
        raise TrainError(f"--out {out}: folder is not empty{hint}; give a new or empty folder")


FREE_ON_RESUME = ("train.scorer_workers",)
"""Config keys a resumed run may change (how the work is spread, not what it computes)."""


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: run {va!r}, now {vb!r}")
    return out


def _batch_to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def compute_loss(
    model: torch.nn.Module, batch: dict, cfg: TrainConfig, sampling, *, align: bool = False, scorer_pool: ScorerPool | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Total loss of one batch and its parts (trajectory WTA L1, imitation CE, scorer BCE, scored
    samples and, with ``align`` and ``cfg.align`` weights, the spatial and global alignment
    losses of :mod:`planners.align`; validation leaves them out). ``scorer_pool`` scores the
    proposals for the scorer targets in worker processes too (the same targets)."""
    align = align and cfg.align.enabled
    if not align and batch.get("paired_raster") is not None:
        batch = {**batch, "paired_raster": None}  # no second backbone pass without alignment
    out = model(batch)
    target = batch["target"].float()
    traj, _ = wta_l1(out["proposals"], target, batch["w_traj"], cfg.loss.heading_weight)
    total = traj
    parts = {"loss_traj": float(traj.detach())}
    imitation = out.get("imitation_logits")
    if imitation is not None and cfg.loss.imitation_weight > 0:
        soft = imitation_targets(out["proposals"], target, cfg.loss.imitation_temperature)
        im_loss = imitation_ce(imitation, soft, batch["w_traj"])
        total = total + cfg.loss.imitation_weight * im_loss
        parts["loss_imitation"] = float(im_loss.detach())
        # share of samples whose most likely proposal is the one closest to the target
        parts["imitation_top1"] = float((imitation.detach().argmax(dim=1) == soft.argmax(dim=1)).float().mean())
    logits = out.get("score_logits")
    if logits is not None and (cfg.loss.scorer_weight > 0 or cfg.loss.rank_weight > 0):
        share = cfg.loss.rank_epdms_share if cfg.loss.rank_weight > 0 else 0.0
        names = SCORE_NAMES + ("epdms",) if share > 0 else SCORE_NAMES
        targets, scored = scorer_targets(batch["scoring"], out["proposals"], sampling, batch["w_score"], names, scorer_pool)
        targets, epdms = targets[..., : len(SCORE_NAMES)], targets[..., len(SCORE_NAMES) :]
        weights = batch["w_score"] * scored.float()
        if cfg.loss.scorer_weight > 0:
            score = scorer_bce(logits, targets, weights)
            total = total + cfg.loss.scorer_weight * score
            parts["loss_score"] = float(score.detach())
        if cfg.loss.rank_weight > 0:
            pdms = SCORE_NAMES.index("pdms")
            true = targets[..., pdms] if share == 0 else (1 - share) * targets[..., pdms] + share * epdms[..., 0]
            rank = ranking_ce(logits[..., pdms], true, weights, cfg.loss.rank_temperature)
            total = total + cfg.loss.rank_weight * rank
            parts["loss_rank"] = float(rank.detach())
        parts["scored"] = int(scored.sum())
        if scored.any():
            mean = targets[scored].mean(dim=(0, 1))
            parts.update({f"target_{n}": float(mean[j]) for j, n in enumerate(SCORE_NAMES)})
    if align:
        total = total + _alignment_losses(out, batch, cfg, parts)
    return total, parts


def _alignment_losses(out: dict, batch: dict, cfg: TrainConfig, parts: dict) -> torch.Tensor:
    """Weighted spatial + global alignment losses of one batch (their parts logged in ``parts``)."""
    total = out["proposals"].new_zeros(())
    rows = batch["paired_rows"].to(out["image_features"].device)
    parts["paired"] = int(rows.numel())
    if cfg.align.spatial_weight > 0 and out.get("raster_features") is not None:
        spatial = spatial_alignment_loss(out["image_features"][rows].float(), out["raster_features"].float())
        total = total + cfg.align.spatial_weight * spatial
        parts["loss_spatial"] = float(spatial.detach())
    if cfg.align.global_weight > 0:
        logits, is_real = out["domain_logits"], out["domain_is_real"]
        domain = domain_bce(logits, is_real)  # 0 when the batch lacks a domain
        total = total + cfg.align.global_weight * domain
        hit = ((logits.detach() > 0) == is_real).float()
        real = is_real.float()
        if 0 < float(real.sum()) < real.numel():
            parts["loss_global"] = float(domain.detach())
            # how well the classifier tells the domains apart (balanced accuracy; 0.5: not at all)
            parts["domain_acc"] = float(0.5 * (hit * real).sum() / real.sum() + 0.5 * (hit * (1 - real)).sum() / (1 - real).sum())
    return total


def _loss_picture(rows: list[dict], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for _, v in train + val) and (train or val):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = __import__("io").BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _read_metrics(path: Path, upto_step: int) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(row, dict) and row.get("step", math.inf) <= upto_step:
                rows.append(row)
    return rows


def train(
    config: TrainConfig, out_dir: str | Path, *, resume: bool = False, on_log: Callable[[dict], None] | None = None,
    on_start: Callable[[dict], None] | None = None, on_plan: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train ``config`` into ``out_dir`` (see the module docstring).

    Args:
        on_start: called once on rank 0 with the run's description (steps, counts, ...).
        on_log: called on rank 0 with every metrics row (train rows every step, val rows).
        on_plan: with ``data.online``, called on rank 0 after each input scene is planned, with
            (scenes done, scenes in total).

    Returns:
        ``{"steps", "samples_per_s", "final_loss", "val_loss", "checkpoint", ...}``.

    Raises:
        TrainError, planners.data.DataError, planners.backbones.BackboneWeightsError (ValueErrors:
        usage), TrainDiverged.
    """
    out = Path(out_dir)
    rank, world = _dist()
    created = not out.exists()
    if rank == 0:
        _check_out(out, resume)
        out.mkdir(parents=True, exist_ok=True)
    lock = exclusive_lock(out / LOCK_FILE) if rank == 0 else contextlib.nullcontext()
    try:
        scores = config.model.type == "rap" and (config.loss.scorer_weight > 0 or config.loss.rank_weight > 0)
        with lock, ScorerPool(config.train.scorer_workers if scores else 0) as pool:  # no workers for a model without a scorer loss
            return _train(config, out, resume, rank, world, on_log, on_start, on_plan, pool)
    except LockHeldError:
        raise TrainError(f"--out {out}: another rap train is writing this folder") from None
    except (ValueError, ScorerPoolError):
        if rank == 0 and created:  # refused before training: leave no trace of this run
            (out / LOCK_FILE).unlink(missing_ok=True)
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def _train(cfg: TrainConfig, out: Path, resume: bool, rank: int, world: int, on_log, on_start, on_plan=None, pool: ScorerPool | None = None) -> dict[str, Any]:
    device = _device(cfg)
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.train.batch_size % world:
        raise TrainError(f"train.batch_size={cfg.train.batch_size} must be divisible by the number of ranks ({world})")
    payload = None
    if resume:
        payload = load_checkpoint(out / LAST)
        diff = [d for d in _config_diff(json.loads(payload["config"]), config_to_dict(cfg)) if d.split(":")[0] not in FREE_ON_RESUME]
        if diff:
            raise TrainError(f"--resume {out}: the config differs from the run's ({'; '.join(diff[:5])}); resume with the run's own {CONFIG_FILE}")
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % (2**32))
    index = OnlineIndex(cfg, on_unit=on_plan if rank == 0 else None) if cfg.data.online else TrainingIndex(cfg)
    image_size = tuple(cfg.data.image_size)
    model = build_model(cfg.model, num_cameras=len(cfg.data.cameras), image_size=image_size, history_len=cfg.data.history_poses, num_poses=index.sampling.num_poses, interval_s=index.sampling.interval_s).to(device)
    if distributed and device.type == "cuda" and not cfg.model.backbone.frozen:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    trainable: torch.nn.Module = model
    classifier = None
    if cfg.align.enabled:
        _check_paired(index, cfg)
    if cfg.align.global_weight > 0:
        classifier = DomainClassifier(cfg.model.d_model, cfg.align.classifier_hidden).to(device)
        trainable = AlignedPlanner(model, classifier, cfg.front_camera_index())
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start, best_val = 0, math.inf
    if payload is not None:
        model.load_state_dict(payload["model"])
        if classifier is not None:
            classifier.load_state_dict(payload["domain_classifier"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        start = int(payload["step"])
        best_val = float(payload.get("best_val", math.inf))
        torch.set_rng_state(payload["torch_rng"])
    ddp = torch.nn.parallel.DistributedDataParallel(trainable, device_ids=[device.index] if device.type == "cuda" else None) if distributed else trainable

    data_desc = {
        "cameras": list(cfg.data.cameras), "image_size": list(image_size), "source_size": list(index.source_size) if index.source_size else None,
        "rig": index.rig, "num_poses": index.sampling.num_poses, "interval_s": index.sampling.interval_s, "history_len": cfg.data.history_poses,
        "camera_records": index.camera_records,
    }  # fmt: skip
    metrics_path = out / METRICS_FILE
    rows: list[dict] = []
    writer = None
    if rank == 0:
        write_bytes_atomic(out / CONFIG_FILE, yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())
        rows = _read_metrics(metrics_path, start)
        write_bytes_atomic(metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

        writer = SummaryWriter(str(out), purge_step=start + 1 if start else None)
        if on_start is not None:
            on_start({"skipped": getattr(index, "skipped", []), "without_scoring": index.without_scoring, "start_step": start, "max_steps": cfg.train.max_steps, "counts": kind_counts(index), "scenes": {"train": index.scenes("train"), "val": index.scenes("val")}, "world_size": world, "device": str(device)})

    train_set = SampleDataset(index, "train", cfg)
    sampler = StepBatchSampler(index.probabilities, cfg.train.seed, start, cfg.train.max_steps, cfg.train.batch_size, rank, world)
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=sampler, collate_fn=collate_samples, num_workers=cfg.data.num_workers,
        persistent_workers=False, prefetch_factor=4 if cfg.data.num_workers else None,
        # online workers open their own GL context: start them clean, not as forks of this process
        multiprocessing_context="spawn" if cfg.data.online and cfg.data.num_workers else None,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # leaves the global RNG (dropout) alone
    )  # fmt: skip
    val_batches = _val_batches(index, cfg)
    val_set = SampleDataset(index, "val", cfg)

    def state(step: int) -> dict:
        return {
            "config": json.dumps(config_to_dict(cfg), sort_keys=True), "data": data_desc, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "best_val": best_val, "torch_rng": torch.get_rng_state(),
            **({"domain_classifier": classifier.state_dict()} if classifier is not None else {}),
        }  # fmt: skip

    def log(row: dict) -> None:
        rows.append(row)
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                writer.add_scalar(("val/" if key.startswith("val_") else "train/") + key.removeprefix("val_"), value, row["step"])
        if on_log is not None:
            on_log(row)

    sampling = index.sampling
    step = start
    samples_done = 0
    t0 = time.perf_counter()
    last_loss = None
    ddp.train()
    for batch in loader:
        batch = _batch_to(batch, device)
        if isinstance(trainable, AlignedPlanner):
            trainable.strength = reversal_strength(step / cfg.train.max_steps)
        with torch.autocast(device.type, enabled=use_amp):
            loss, parts = compute_loss(ddp, batch, cfg, sampling, align=True, scorer_pool=pool)
        loss_value = float(loss.detach())
        if distributed:
            t = torch.tensor([loss_value], device=device)
            torch.distributed.all_reduce(t)
            loss_value = float(t) / world
        if not math.isfinite(loss_value):
            where = out / LAST
            if rank == 0:
                save_checkpoint(where, state(step))  # the weights before this step are still good
                writer.close()
            raise TrainDiverged(f"step {step + 1}: the loss is {loss_value} (not finite); training stopped. The last good weights (after step {step}) are in {where}; lower optim.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        grad_norm = None
        if cfg.optim.grad_clip is not None:
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        samples_done += cfg.train.batch_size
        last_loss = loss_value
        if rank == 0:
            elapsed = time.perf_counter() - t0
            row = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0], "samples_per_s": samples_done / max(elapsed, 1e-9), **parts}
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps or step == start + 1:
                log(row)
            elif on_log is not None:
                on_log(row)
        if step % cfg.train.val_every == 0 or step == cfg.train.max_steps:
            if rank == 0 and val_batches:
                val_loss = _validate(model, val_set, val_batches, cfg, sampling, device, pool)
                ddp.train()
                improved = val_loss < best_val
                best_val = min(best_val, val_loss)
                log({"step": step, "val_loss": val_loss})
                if improved:
                    save_checkpoint(out / BEST, state(step))
            if distributed:
                torch.distributed.barrier()
        if rank == 0 and (step % cfg.train.checkpoint_every == 0 or step == cfg.train.max_steps):
            save_checkpoint(out / LAST, state(step))
    elapsed = time.perf_counter() - t0
    result = {
        "steps": step, "samples_per_s": round(samples_done / max(elapsed, 1e-9), 3),
        "final_loss": last_loss if last_loss is not None else next((r["loss"] for r in reversed(rows) if "loss" in r), None),  # resumed after its end: the logged one
        "val_loss": None if not math.isfinite(best_val) else _last_val(rows), "checkpoint": str(out / LAST),
        "best_checkpoint": str(out / BEST) if (out / BEST).exists() else None, "out": str(out),
    }  # fmt: skip
    if rank == 0:
        writer.close()
        _loss_picture(rows, out / LOSS_PICTURE)
    if distributed:
        torch.distributed.barrier()
    return result


def _check_paired(index, cfg: TrainConfig) -> None:
    """Alignment needs paired samples among the training samples (a clear error at start)."""
    paired = index.counts["train"].get("paired", 0)
    if not paired:
        raise DataError(
            f"align: alignment is on (align.spatial_weight={cfg.align.spatial_weight}, align.global_weight={cfg.align.global_weight}) "
            f"but data.datasets hold no paired training samples; write some with rap generate ... paired.enabled=true (or --source waymo-frame:PATH)"
        )


def _last_val(rows: list[dict]) -> float | None:
    vals = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    return vals[-1] if vals else None


def _val_batches(index: TrainingIndex, cfg: TrainConfig) -> list[list[int]]:
    """A fixed set of validation batches (the same every evaluation and every run)."""
    n = len(index.val)
    if n == 0:
        return []
    order = np.random.default_rng([cfg.train.seed & 0xFFFFFFFF, 0x7A12]).permutation(n)
    take = order[: cfg.train.val_batches * cfg.train.batch_size]
    return [list(map(int, take[i : i + cfg.train.batch_size])) for i in range(0, len(take), cfg.train.batch_size)]


@torch.no_grad()
def _validate(model: torch.nn.Module, val_set: SampleDataset, batches: list[list[int]], cfg: TrainConfig, sampling, device: torch.device, pool: ScorerPool | None = None) -> float:
    model.eval()
    total, count = 0.0, 0
    for idx in batches:
        batch = _batch_to(collate_samples([val_set[i] for i in idx]), device)
        loss, _ = compute_loss(model, batch, cfg, sampling, scorer_pool=pool)
        total += float(loss) * len(idx)
        count += len(idx)
    return total / max(count, 1)
