"""Training data: shard datasets indexed once, a seeded mixture sampler, and the loader.

* :class:`TrainingIndex` indexes every sample of the configured datasets (tar headers and the
  small ``.json`` members only), checks them (format version, cameras, trajectory sampling) and
  splits them by scene into train and validation (a scene is held out when
  a hash of its id falls under ``data.val_fraction``, at least one scene when there are several: the same scenes whatever the datasets'
  order).
* :func:`global_batch` draws the samples of training step ``s`` from ``(seed, s)`` alone, with
  probabilities from the dataset weights and the per-kind fractions: a resumed run reads
  exactly the batches an uninterrupted one would, and under DDP rank ``r`` of ``R`` reads
  positions ``r, r+R, ...`` of the global batch (ranks read disjoint samples).
* :class:`SampleDataset` decodes one sample (only the configured cameras), resizes its views in
  the loader (:func:`planners.features.resize_image`) and returns a tensor dict
  (:func:`rap.dataset.reader.record_to_tensors`) plus its loss weights.
"""

from __future__ import annotations

import dataclasses
import json
import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from planners.config import KINDS, TrainConfig
from planners.features import resize_image
from rap.dataset.manifest import MANIFEST_NAME, read_manifest
from rap.dataset.reader import ShardFormatError, ShardIndexDataset, collate, list_shards, record_to_tensors
from rap.dataset.writer import SAMPLE_FORMAT
from rap.trajectory import TrajectorySampling

__all__ = ["DataError", "IndexedSample", "TrainingIndex", "split_samples", "SampleDataset", "global_batch", "StepBatchSampler", "collate_samples", "val_scenes"]


class DataError(ValueError):
    """The configured training data cannot be used (missing or empty folder, another format
    version, a camera the shards lack, mixed samplings); the message names the dataset."""


def _scene_hash(scene_id: str) -> float:
    """A uniform number in [0, 1) fixed by the id (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(scene_id.encode("utf-8")).digest()[:8], "big") / 2**64


def val_scenes(scene_ids, fraction: float) -> set[str]:
    """The scenes held out for validation: those whose id hashes under ``fraction``, and at least
    the lowest-hashing one when ``fraction > 0`` and there are two scenes or more (fixed by the
    ids alone, whatever the datasets' order)."""
    ids = sorted(set(scene_ids))
    held = {s for s in ids if _scene_hash(s) < fraction}
    if not held and fraction > 0 and len(ids) >= 2:
        held = {min(ids, key=_scene_hash)}
    return held


@dataclasses.dataclass(frozen=True)
class IndexedSample:
    """Where one sample lives and what it is."""

    dataset: int
    position: int  # index into that dataset's ShardIndexDataset
    key: str
    kind: str
    scene_id: str


class TrainingIndex:
    """Every sample of the configured datasets, checked and split (see the module docstring).

    Attributes:
        datasets: one :class:`~rap.dataset.reader.ShardIndexDataset` per configured folder.
        train, val: the samples of each split.
        sampling: the target trajectories' sampling (the same in every dataset).
        image_size: (width, height) of the stored views of the configured cameras.
        rig: the datasets' camera rig (from their manifests; None when unknown).
        camera_records: camera name → the stored camera record (for agents and reports).
        counts: samples per split and kind.
        without_scoring: samples whose shards hold no scoring context (older datasets): they
            train without the scorer loss.

    Raises:
        DataError: see :class:`DataError`.
    """

    def __init__(self, config: TrainConfig) -> None:
        data = config.data
        if not data.datasets:
            raise DataError("data.datasets: no dataset given; pass data.datasets=[DIR,...] (folders written by rap generate)")
        self.datasets: list[ShardIndexDataset] = []
        samples: list[IndexedSample] = []
        samplings: dict[tuple[int, float], str] = {}
        sizes: dict[tuple[int, int], str] = {}
        rigs: set[str] = set()
        self.camera_records: dict[str, dict] = {}
        self.without_scoring = 0  # samples written without a scoring context (no scorer loss)
        cameras = list(data.cameras)
        for d, folder in enumerate(data.datasets):
            where = f"data.datasets[{d}]={folder}"
            path = Path(folder)
            if not path.is_dir():
                raise DataError(f"{where}: no such folder")
            try:
                shards = list_shards(path)
            except (OSError, ValueError) as exc:
                raise DataError(f"{where}: {exc}") from None
            if not shards:
                raise DataError(f"{where}: no shards (shard-*.tar) in this folder; write one with rap generate")
            if (path / MANIFEST_NAME).exists():
                try:
                    rig = read_manifest(path).config.get("rig")
                except ValueError as exc:
                    raise DataError(f"{where}: {exc}") from None
                if rig:
                    rigs.add(str(rig))
            try:
                ds = ShardIndexDataset(shards, cameras=cameras, verify=data.verify)
            except ShardFormatError as exc:
                raise DataError(f"{where}: {exc}") from None
            self.datasets.append(ds)
            for pos, (s, key, members) in enumerate(ds.index):
                meta = _read_meta(ds.shards[s], key, members)
                at = f"{where}: {ds.shards[s].name}: sample {key!r}"
                if meta.get("format") != SAMPLE_FORMAT:
                    raise DataError(f"{at}: sample format {meta.get('format')!r}, this rap reads {SAMPLE_FORMAT!r} (regenerate the dataset with this version)")
                missing = [c for c in cameras if c not in meta.get("camera_names", [])]
                if missing:
                    raise DataError(f"{at}: data.cameras names {missing}, which the shards do not have (they have {meta.get('camera_names')})")
                smp = meta["sampling"]
                samplings.setdefault((int(smp["num_poses"]), float(smp["interval_s"])), at)
                for cam in cameras:
                    rec = meta["cameras"].get(cam, {})
                    sizes.setdefault((int(rec.get("width", 0)), int(rec.get("height", 0))), at)
                    self.camera_records.setdefault(cam, rec)
                if meta["kind"] not in KINDS:
                    continue
                samples.append(IndexedSample(d, pos, key, meta["kind"], meta["scene_id"]))
                if not any(field.startswith("scoring") for field, _, _ in members):
                    self.without_scoring += 1
        if len(samplings) != 1:
            raise DataError(f"data.datasets: target samplings differ ({', '.join(f'{n} x {dt} s at {w}' for (n, dt), w in samplings.items())}); train on datasets of one sampling")
        (num_poses, interval), = samplings
        self.sampling = TrajectorySampling(num_poses, interval)
        self.source_size = next(iter(sizes)) if len(sizes) == 1 else None
        self.rig = next(iter(rigs)) if len(rigs) == 1 else None
        split_samples(self, samples, config, len(data.datasets))

    def scenes(self, split: str) -> int:
        return len({(s.dataset, s.scene_id) for s in getattr(self, split)})

    def record(self, ref: IndexedSample) -> dict:
        """The decoded record of one indexed sample (only the configured cameras)."""
        return self.datasets[ref.dataset].record(ref.position)


def split_samples(index, samples: Sequence[IndexedSample], config: TrainConfig, num_inputs: int) -> None:
    """Set ``index.train``, ``index.val``, ``index.counts`` and ``index.probabilities``: the
    scene split (:func:`val_scenes`) and the training samples' sampling probabilities."""
    data = config.data
    held = val_scenes((s.scene_id for s in samples), data.val_fraction)
    index.train = _limited([s for s in samples if s.scene_id not in held], data.max_samples)
    index.val = [s for s in samples if s.scene_id in held]
    if not index.train:
        raise DataError(f"data.val_fraction={data.val_fraction}: every scene is held out for validation; lower it")
    index.counts = {"train": dict(Counter(s.kind for s in index.train)), "val": dict(Counter(s.kind for s in index.val))}
    index.probabilities = _probabilities(index.train, config, num_inputs)


def _limited(samples: list[IndexedSample], limits) -> list[IndexedSample]:
    """``samples`` with at most ``limits.of(kind)`` of each kind: those whose (dataset, key)
    hashes lowest, so a smaller limit keeps a subset of what a larger one keeps."""
    keep = set(range(len(samples)))
    for kind in KINDS:
        limit = limits.of(kind)
        rows = [i for i, s in enumerate(samples) if s.kind == kind]
        if limit is not None and len(rows) > limit:
            ranked = sorted(rows, key=lambda i: (_scene_hash(f"{samples[i].dataset}/{samples[i].key}"), i))
            keep -= set(ranked[limit:])
    return [s for i, s in enumerate(samples) if i in keep]


def _read_meta(shard: Path, key: str, members: Sequence[tuple[str, int, int]]) -> dict:
    for field, offset, size in members:
        if field == "json":
            with open(shard, "rb") as fh:
                fh.seek(offset)
                data = fh.read(size)
            try:
                meta = json.loads(data)
            except (ValueError, RecursionError) as exc:
                raise DataError(f"{shard}: sample {key!r}: member {key}.json is not valid JSON ({exc})") from None
            if not isinstance(meta, dict) or not all(k in meta for k in ("kind", "scene_id", "sampling", "camera_names", "cameras")):
                raise DataError(f"{shard}: sample {key!r}: member {key}.json is not a sample's metadata")
            return meta
    raise DataError(f"{shard}: sample {key!r}: missing member {key}.json")


def _probabilities(samples: Sequence[IndexedSample], config: TrainConfig, num_ds: int) -> np.ndarray:
    """Sampling probability of each training sample: each dataset's weight (default: its size)
    is split among the kinds it holds by ``data.kind_fractions`` (renormalised over those
    kinds), and each kind's share evenly among its samples."""
    data = config.data
    ds = np.array([s.dataset for s in samples])
    kinds = np.array([KINDS.index(s.kind) for s in samples])
    sizes = np.bincount(ds, minlength=num_ds).astype(np.float64)
    ds_weight = np.asarray(data.dataset_weights, dtype=np.float64) if data.dataset_weights is not None else sizes
    frac = np.array([data.kind_fractions.of(k) for k in KINDS])
    probs = np.zeros(len(samples))
    for d in range(num_ds):
        in_d = ds == d
        count = np.bincount(kinds[in_d], minlength=len(KINDS)).astype(np.float64)
        share = np.where(count > 0, frac, 0.0)
        if share.sum() <= 0:
            continue
        share = share / share.sum()
        per_sample = np.divide(share, count, out=np.zeros_like(share), where=count > 0)
        probs[in_d] = ds_weight[d] * per_sample[kinds[in_d]]
    if probs.sum() <= 0:
        raise DataError("data.kind_fractions: every training sample has sampling weight 0")
    return probs / probs.sum()


def global_batch(probabilities: np.ndarray, seed: int, step: int, batch_size: int) -> np.ndarray:
    """Indices of the training samples of step ``step`` (drawn with replacement, seeded)."""
    cdf = np.cumsum(probabilities)
    u = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x7A11, int(step)]).random(batch_size) * cdf[-1]
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


class StepBatchSampler(torch.utils.data.Sampler):
    """The per-step batches of one rank from ``start_step`` to ``max_steps`` (see :func:`global_batch`)."""

    def __init__(self, probabilities: np.ndarray, seed: int, start_step: int, max_steps: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.probabilities, self.seed = probabilities, seed
        self.start, self.stop, self.batch_size = start_step, max_steps, batch_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            idx = global_batch(self.probabilities, self.seed, step, self.batch_size)
            yield [int(i) for i in idx[self.rank :: self.world_size]]


class SampleDataset(torch.utils.data.Dataset):
    """Map-style samples of one split: tensor dicts with views resized to ``data.image_size``
    and the per-sample loss weights ``w_traj`` / ``w_score``."""

    def __init__(self, index: TrainingIndex, split: str, config: TrainConfig) -> None:
        self.index = index
        self.samples = getattr(index, split)
        self.config = config

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        ref = self.samples[i]
        record = self.index.record(ref)
        cfg = self.config
        size = tuple(cfg.data.image_size)
        record["images"] = {cam: resize_image(img, size) for cam, img in record["images"].items()}
        cameras = list(cfg.data.cameras)
        raster = None
        if ref.kind == "paired" and cameras:  # the planner sees the real views; the rasters feed the alignment
            raster = record_to_tensors(record, cameras=cameras)["images"]
            record["images"] = {cam: resize_image(img, size) for cam, img in record["real_images"].items()}
        if cameras:
            item = record_to_tensors(record, cameras=cameras)
        else:  # ego-status models read no views
            record["images"] = {"_": np.zeros((1, 1, 3), np.uint8)}
            item = record_to_tensors(record, cameras=["_"])
            item["images"] = item["images"][:0]
        item.pop("bev", None)
        item["scoring"] = record.get("scoring")
        has_target = record["meta"].get("has_target", True) is not False  # a lone frame: alignment only
        item["w_traj"] = torch.tensor(cfg.loss.trajectory.of(ref.kind) if has_target else 0.0, dtype=torch.float32)
        item["w_score"] = torch.tensor(cfg.loss.scorer.of(ref.kind) if has_target else 0.0, dtype=torch.float32)
        item["paired_raster"] = raster
        return item


def collate_samples(items: Sequence[dict]) -> dict:
    """:func:`rap.dataset.reader.collate` plus the loss weights, the scoring contexts and, for
    paired samples, ``paired_rows`` (P,) their rows in the batch and ``paired_raster``
    (P, N, 3, H, W) their rasters (None when the batch has none)."""
    rasters = [(i, it.get("paired_raster")) for i, it in enumerate(items) if it.get("paired_raster") is not None]
    items = [{k: v for k, v in it.items() if k != "paired_raster"} for it in items]
    batch = collate(items)
    batch["paired_rows"] = torch.tensor([i for i, _ in rasters], dtype=torch.long)
    batch["paired_raster"] = torch.stack([r for _, r in rasters]) if rasters else None
    batch["w_traj"] = torch.stack([it["w_traj"] for it in items])
    batch["w_score"] = torch.stack([it["w_score"] for it in items])
    batch["scoring"] = [it.get("scoring") for it in items]
    return batch


def kind_counts(index: TrainingIndex) -> dict:
    """Samples per split and kind, every kind listed."""
    return {split: {k: index.counts[split].get(k, 0) for k in KINDS} for split in ("train", "val")}
