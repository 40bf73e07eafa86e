"""Online rasterization: train on scenes directly, without writing shards (``data.online=true``).

:class:`OnlineIndex` stands in for :class:`planners.data.TrainingIndex`. At construction it
loads each scene of ``data.sources`` once and plans its samples with `rap generate`'s own
planning (:func:`rap.generate.plan_scene`, ``data.generate`` as the config), keeping the plans
only; every split, sampling probability and per-step batch is then drawn exactly as for shards.
``record`` renders one planned sample with :class:`rap.generate.SampleBuilder` (in a DataLoader
worker: that worker's own GL context) and returns what reading it back from a shard would give
(:func:`rap.dataset.writer.sample_record`): for the same sources, seed and generate config the
samples equal those `rap generate` writes (a scoring context is built only for the kinds
with a scorer loss). Each process keeps the last ``data.scene_cache``
scenes it rendered from loaded. Scenes loaded for planning are kept for the run in a temporary
folder as pickles (~1-2 MB each, read back in a millisecond instead of seconds of loading or
procedural generation per worker); it is removed when the index is.
"""

from __future__ import annotations

import collections
import os
import pickle
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Callable, Optional

from planners.config import KINDS, TrainConfig
from planners.data import DataError, IndexedSample, split_samples
from rap.dataset.writer import sample_record
from rap.generate import SampleBuilder, plan_scene
from rap.render.rigs import camera_record, get_rig
from rap.sources.registry import WorkUnit, list_units, load_unit

__all__ = ["OnlineIndex"]


class OnlineIndex:
    """Every sample the configured sources would give, planned and split (see the module docstring).

    Attributes (as :class:`planners.data.TrainingIndex`): ``train``, ``val``, ``counts``,
    ``probabilities``, ``sampling``, ``image_size`` of the rendered views (``source_size``),
    ``rig``, ``camera_records``, ``without_scoring``; plus ``skipped``: one line per input that
    could not be read (left out, as `rap generate` skips it).

    Args:
        config: the training config (``data.online``, ``data.sources``, ``data.generate``).
        on_unit: called after each planned input with (inputs done, inputs in total).

    Raises:
        DataError: no source, a source that cannot be listed, a camera the rig lacks, nothing to
            train on.
    """

    def __init__(self, config: TrainConfig, on_unit: Optional[Callable[[int, int], None]] = None) -> None:
        data = config.data
        gen = data.generate
        if not data.sources:
            raise DataError("data.sources: no scene source given for data.online=true; pass data.sources=[synthetic:8,womd:PATH,...]")
        rig = get_rig(gen.rig, tuple(gen.size), distortion=gen.distortion)
        names = [cam.name for cam in rig]
        missing = [c for c in data.cameras if c not in names]
        if missing:
            raise DataError(f"data.cameras names {missing}, which data.generate.rig={gen.rig} does not have (it has {names})")
        self.config = config
        self.cameras = list(data.cameras)
        self.camera_records = {cam.name: camera_record(cam) for cam in rig if cam.name in self.cameras}
        self.sampling = gen.trajectory_sampling
        self.source_size = tuple(gen.size)
        self.rig = gen.rig
        self.skipped: list[str] = []
        units: list[tuple[int, WorkUnit]] = []
        for d, source in enumerate(data.sources):
            try:
                units.extend((d, u) for u in list_units(source))
            except (ValueError, OSError) as exc:
                raise DataError(f"data.sources[{d}]={source}: {exc}") from None
        self.units: list[WorkUnit] = []
        self.plans: list[tuple[int, object]] = []  # per sample: (slot in self.units, SamplePlan)
        samples: list[IndexedSample] = []
        # The run's own scene cache (written and read by this run only; removed with the index).
        self.scene_dir = Path(tempfile.mkdtemp(prefix="rap_online_scenes_"))
        weakref.finalize(self, shutil.rmtree, str(self.scene_dir), True)
        for done, (d, unit) in enumerate(units, 1):
            try:
                scene = load_unit(unit)
                plans, _ = plan_scene(scene, gen)
            except (ValueError, OSError) as exc:  # as rap generate: a bad input is left out and reported
                self.skipped.append(f"{unit.source} record {unit.record}: {exc}")
                plans = []
            if plans:
                slot = len(self.units)
                self.units.append(unit)
                (self.scene_dir / f"scene-{slot:06d}.pkl").write_bytes(pickle.dumps(scene, protocol=pickle.HIGHEST_PROTOCOL))
                for plan in plans:
                    if plan.kind.value not in KINDS or plan.kind.value == "paired":  # online training reads no paired samples (align needs shards)
                        continue
                    samples.append(IndexedSample(d, len(self.plans), plan.key, plan.kind.value, plan.scene_id))
                    self.plans.append((slot, plan))
            if on_unit:
                on_unit(done, len(units))
        if not samples:
            raise DataError(f"data.sources={list(data.sources)}: no sample could be planned ({len(self.skipped)} inputs unreadable)")
        self.without_scoring = 0 if gen.scoring_context else len(samples)
        split_samples(self, samples, config, len(data.sources))
        self._builders: collections.OrderedDict[int, SampleBuilder] = collections.OrderedDict()

    def scenes(self, split: str) -> int:
        return len({(s.dataset, s.scene_id) for s in getattr(self, split)})

    def record(self, ref: IndexedSample) -> dict:
        """Render one indexed sample (only the configured cameras): the record a shard written
        by `rap generate` with the same config would hold for it (without the scoring context
        when the sample's kind has no scorer loss).

        Raises:
            DataError: its scene no longer loads (the input changed since planning).
        """
        slot, plan = self.plans[ref.position]
        sample, _ = self._builder(slot).build(plan, scoring=self._scored(ref.kind))
        return sample_record(sample, self.config.data.generate.codec)

    def _scored(self, kind: str) -> bool:
        """Whether training uses the scoring context of a sample of this kind (its scorer loss
        has weight > 0): a context nobody reads is not built."""
        cfg = self.config
        return cfg.model.type == "rap" and cfg.loss.scorer_weight > 0 and cfg.loss.scorer.of(kind) > 0

    def _builder(self, slot: int) -> SampleBuilder:
        builders = self._builders
        if slot in builders:
            builders.move_to_end(slot)
            return builders[slot]
        if not builders:
            _single_threaded_rasterizer_in_workers()
        unit = self.units[slot]
        cached = self.scene_dir / f"scene-{slot:06d}.pkl"
        try:
            scene = pickle.loads(cached.read_bytes()) if cached.is_file() else load_unit(unit)
        except (ValueError, OSError) as exc:
            raise DataError(f"{unit.source} record {unit.record}: could not be loaded again for rendering: {exc}") from None
        builders[slot] = SampleBuilder(scene, self.config.data.generate, cameras=self.cameras, any_order=True)
        while len(builders) > self.config.data.scene_cache:
            builders.popitem(last=False)
        return builders[slot]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_builders"] = collections.OrderedDict()  # GL objects stay in the process that made them
        return state


def _single_threaded_rasterizer_in_workers() -> None:
    """In a DataLoader worker, before its GL context exists: Mesa's CPU rasterizer (llvmpipe)
    draws with one thread, the workers being the parallelism (one thread per core each would
    oversubscribe the cores). A value the user set is kept; GPU drivers ignore it."""
    import torch.utils.data

    if torch.utils.data.get_worker_info() is not None:
        os.environ.setdefault("LP_NUM_THREADS", "1")
