"""Scorer targets on the fly: the true NAVSIM sub-scores of every proposal the model makes,
computed by rap's own PDM scorer from each sample's stored scoring context
(:mod:`rap.augment.scoring_context`), not from a precomputed metric cache.

Scoring runs on the CPU while the model waits for its targets; with ``train.scorer_workers=N``
a :class:`ScorerPool` splits each batch's scenes between this process and N worker processes.
Each scene's scores do not depend on the other scenes it is scored with
(:func:`rap.metrics.pdms.score_scenes`), so the targets are the same bits either way."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Sequence

import numpy as np
import torch

from planners.features import SCORE_NAMES
from rap.dataset.scoring import SCORE_KEYS, ScoringContext, score_batch
from rap.trajectory import TrajectorySampling

__all__ = ["ScorerPool", "ScorerPoolError", "scorer_targets"]


class ScorerPoolError(RuntimeError):
    """A scorer worker process died (killed, or out of memory)."""


class ScorerPool:
    """Scores batches in ``workers`` processes beside this one (``train.scorer_workers``).

    A batch of B scenes is cut into ``workers + 1`` contiguous parts of near-equal size; the
    workers score all but the last, this process scores the last meanwhile, and the parts are
    joined in order. The workers start with the ``with`` block (or :meth:`start`, else on first
    use), forked where that is safe (:func:`rap.generate.worker_start_method`: start the pool
    before any other thread or GL context exists, as `rap train` does), else spawned; they
    stop with :meth:`close` (or the end of the ``with`` block).

    Args:
        workers: worker processes (0: score everything here, as without a pool).
    """

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"ScorerPool: workers must be >= 0, got {workers}")
        self.workers = int(workers)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> ScorerPool:
        self.start()
        return self

    def start(self) -> None:
        """Starts the worker processes now (no-op without workers or when started)."""
        if self.workers == 0 or self._executor is not None:
            return
        from rap.generate import worker_start_method  # noqa: PLC0415  (fork only where safe)

        self._executor = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(worker_start_method()))
        try:
            for f in [self._executor.submit(os.getpid) for _ in range(self.workers)]:
                f.result()
        except concurrent.futures.process.BrokenProcessPool:
            self.close()
            raise ScorerPoolError(self._died()) from None

    def _died(self) -> str:
        return (
            f"a scorer worker process died or could not start (train.scorer_workers={self.workers}): killed, out of memory, "
            "or spawned from a script that calls train() outside `if __name__ == \"__main__\":`; lower train.scorer_workers or set it to 0"
        )

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops the worker processes (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def score(self, contexts: Sequence, proposals: np.ndarray, sampling: TrajectorySampling) -> dict[str, np.ndarray]:
        """:func:`rap.dataset.scoring.score_batch` of ``contexts`` and ``proposals`` (B, K, T, 3),
        spread over the workers; the same result, key for key and bit for bit.

        Raises:
            ScorerPoolError: a worker process died.
            ValueError: as ``score_batch`` (from whichever process scored the bad sample).
        """
        b = len(contexts)
        parts = min(self.workers + 1, b)
        if parts <= 1:
            return score_batch(contexts, proposals, sampling)
        for i, ctx in enumerate(contexts):  # named by their index in the whole batch, not in a part
            if not isinstance(ctx, ScoringContext):
                raise ValueError(f"score_batch: contexts[{i}] is {type(ctx).__name__}, not a ScoringContext (a sample written without one?)")
        proposals = np.asarray(proposals, dtype=np.float64)
        self.start()
        cuts = np.linspace(0, b, parts + 1).round().astype(int)
        futures: list[concurrent.futures.Future] = []
        try:
            for lo, hi in zip(cuts[:-2], cuts[1:-1]):
                futures.append(self._executor.submit(score_batch, list(contexts[lo:hi]), proposals[lo:hi], sampling))
            mine = score_batch(list(contexts[cuts[-2] :]), proposals[cuts[-2] :], sampling)
            results = [f.result() for f in futures] + [mine]
        except concurrent.futures.process.BrokenProcessPool:
            self.close()
            raise ScorerPoolError(self._died()) from None
        finally:
            for f in futures:
                f.cancel()
        return {key: np.concatenate([r[key] for r in results]) for key in SCORE_KEYS}


def scorer_targets(
    contexts: Sequence, proposals: torch.Tensor, sampling: TrajectorySampling, wanted: torch.Tensor, names: Sequence[str] = SCORE_NAMES, pool: ScorerPool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """True sub-scores of the proposals of the samples that want them.

    Args:
        contexts: one scoring context per sample (None where the shard has none).
        proposals: (B, K, T, 3) the model's proposals (detached here).
        sampling: the proposals' sampling.
        wanted: (B,) per-sample scorer-loss weight; samples with weight 0 are not scored.
        names: the scores wanted, in order (keys of :data:`rap.dataset.scoring.SCORE_KEYS`;
            default the scorer head's :data:`~planners.features.SCORE_NAMES`).
        pool: score in these worker processes too (the same targets); ``None``: here only.

    Returns:
        (targets (B, K, len(names)) float32 in [0, 1] (zeros where not scored),
        scored (B,) bool).
    """
    b, k = proposals.shape[:2]
    poses = proposals.detach().float().cpu().numpy().astype(np.float64)
    targets = np.zeros((b, k, len(names)), dtype=np.float32)
    scored = np.zeros(b, dtype=bool)
    rows = [i for i, ctx in enumerate(contexts) if ctx is not None and float(wanted[i]) > 0 and np.all(np.isfinite(poses[i]))]
    if rows:
        # One batched rollout for every scored sample (rap.metrics.pdms.score_scenes).
        chosen = [contexts[i] for i in rows]
        scores = pool.score(chosen, poses[rows], sampling) if pool is not None else score_batch(chosen, poses[rows], sampling)
        targets[rows] = np.stack([np.clip(scores[name], 0.0, 1.0) for name in names], axis=-1)
        scored[rows] = True
    device = proposals.device
    return torch.from_numpy(targets).to(device), torch.from_numpy(scored).to(device)
