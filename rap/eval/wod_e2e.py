"""``rap eval wod-e2e``: score trajectory predictions on WOD-E2E frames.

Inputs are WOD-E2E ``E2EDFrame`` TFRecords (:mod:`rap.sources.wod_e2e`) and a predictions JSON
file; the output is per-frame and mean Rater Feedback Score (:mod:`rap.metrics.rfs`) and ADE to
the logged future, written as JSON and returned.

Predictions file (:data:`PREDICTIONS_FORMAT`)::

    {
      "format": "rap.wod_e2e.predictions/v1",          # optional; checked when present
      "frames": {
        "<frame name>": {                              # E2EDFrame frame.context.name
          "trajectories": [                            # K >= 1 trajectories ...
            [[x, y], [x, y], ... 20 poses],            # ... of 20 (x, y) [m] at 0.25, 0.5, ... 5 s
            ...
          ],
          "probabilities": [p_1, ..., p_K]             # optional (default 1/K each); >= 0, sum 1
        },
        ...
      }
    }

Poses are in the ego frame at the frame's time (rear axle, x forward, y left), the first 0.25 s
after now (:data:`rap.trajectory.WOD_E2E_SAMPLING`), exactly as the challenge's submission
(``TrajectoryPrediction``: 20 poses, 5 s at 4 Hz). A pose may carry a third value (a heading,
as rap's :class:`~rap.trajectory.Trajectory` has); it is ignored.

Output ``<out_dir>/wod_e2e_eval.json`` (:data:`EVAL_FORMAT`), also returned::

    {
      "format": "rap.wod_e2e.eval/v1",
      "frames_path": ..., "predictions_path": ...,
      "summary": {
        "rfs": mean RFS over rated frames (null if none),
        "ade_3s", "ade_5s": mean ADE of each frame's most probable trajectory [m] over frames
            with a logged future (null if none),
        "min_ade_3s", "min_ade_5s": the same for the best of the K trajectories [m],
        "num_frames": frames read, "num_scored_frames": those with a prediction,
        "num_rated_frames", "num_frames_with_future": scored frames with raters / a 5 s future,
        "num_frames_without_prediction", "num_unused_predictions", "num_skipped_records"
      },
      "frames": {"<frame name>": {"path", "record", "initial_speed", "num_raters", "rfs",
                 "rfs_per_trajectory", "in_trust_region", "ade_3s", "ade_5s", "min_ade_3s",
                 "min_ade_5s"}, ...},                  # scored frames, file order
      "frames_without_prediction": [names],
      "unused_predictions": [names],
      "skipped_records": [error messages]
    }

ADE at h seconds is the mean Euclidean distance over the poses at 0.25 ... h s (12 poses for 3 s,
20 for 5 s) to ``future_states``. A frame without a prediction is listed and not scored; a bad
record is skipped and listed (never the end of the run); predictions for frames not in the
TFRecords are listed. No frame scored at all is an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rap.fileio import atomic_writer
from rap.metrics.rfs import rater_feedback_score
from rap.sources.tfrecord import NotARegularFileError, require_regular_file
from rap.sources.wod_e2e import E2EFrame, iter_e2e_frames
from rap.trajectory import WOD_E2E_SAMPLING

__all__ = [
    "PREDICTIONS_FORMAT",
    "EVAL_FORMAT",
    "EVAL_FILENAME",
    "ADE_HORIZONS_S",
    "PredictionsError",
    "FramePrediction",
    "load_predictions",
    "evaluate_wod_e2e",
]

PREDICTIONS_FORMAT = "rap.wod_e2e.predictions/v1"
EVAL_FORMAT = "rap.wod_e2e.eval/v1"
EVAL_FILENAME = "wod_e2e_eval.json"
ADE_HORIZONS_S: tuple[float, float] = (3.0, 5.0)  # Units: s
# Probabilities may sum to 1 within this (float32 softmax outputs written as JSON).
_PROB_SUM_TOLERANCE = 1e-3


class PredictionsError(ValueError):
    """A predictions file that does not follow :data:`PREDICTIONS_FORMAT`.

    Attributes:
        path: the predictions file.
        frame: the frame name, or None for the whole file.
        field: the offending field inside the frame's entry (or top-level key), or None.
    """

    def __init__(self, path: str | Path, frame: str | None, field: str | None, reason: str):
        self.path = Path(path)
        self.frame = frame
        self.field = field
        self.reason = reason
        where = f"{self.path}" + (f": frame {frame!r}" if frame is not None else "") + (f": field {field}" if field else "")
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # Keep the attributes when pickled across processes.
        return (type(self), (self.path, self.frame, self.field, self.reason))


@dataclass(frozen=True, eq=False)
class FramePrediction:
    """One frame's predictions.

    Attributes:
        trajectories: (K, 20, 2) float64 (x, y) [m] in the ego frame, 0.25 ... 5 s.
        probabilities: (K,) float64, non-negative, summing to 1.
    """

    trajectories: np.ndarray
    probabilities: np.ndarray

    @property
    def best_index(self) -> int:
        """Index of the most probable trajectory (the first on ties)."""
        return int(np.argmax(self.probabilities))


def _frame_prediction(entry, path: Path, name: str) -> FramePrediction:
    num_poses = WOD_E2E_SAMPLING.num_poses
    if not isinstance(entry, dict):
        raise PredictionsError(path, name, None, f"expected an object with 'trajectories' (and 'probabilities'), got {type(entry).__name__}")
    unknown = sorted(set(entry) - {"trajectories", "probabilities"})
    if unknown:
        raise PredictionsError(path, name, unknown[0], "unknown field; expected 'trajectories' and optionally 'probabilities'")
    if "trajectories" not in entry:
        raise PredictionsError(path, name, "trajectories", "missing")
    raw = entry["trajectories"]
    if not isinstance(raw, list) or not raw:
        raise PredictionsError(path, name, "trajectories", "expected a non-empty list of trajectories")
    trajs = []
    for k, traj in enumerate(raw):
        try:
            arr = np.asarray(traj, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PredictionsError(path, name, f"trajectories[{k}]", f"expected {num_poses} poses of numbers [x, y]: {exc}") from exc
        if arr.ndim != 2 or arr.shape[0] != num_poses or arr.shape[1] not in (2, 3):
            raise PredictionsError(path, name, f"trajectories[{k}]", f"expected {num_poses} poses [x, y] (or [x, y, heading]) at 0.25 s steps, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise PredictionsError(path, name, f"trajectories[{k}]", "non-finite values")
        trajs.append(arr[:, :2])
    k_count = len(trajs)
    if "probabilities" in entry:
        try:
            probs = np.asarray(entry["probabilities"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PredictionsError(path, name, "probabilities", f"expected {k_count} numbers: {exc}") from exc
        if probs.shape != (k_count,):
            raise PredictionsError(path, name, "probabilities", f"expected {k_count} values (one per trajectory), got shape {probs.shape}")
        if not np.all(np.isfinite(probs)) or np.any(probs < 0):
            raise PredictionsError(path, name, "probabilities", f"must be finite and non-negative, got {probs.tolist()}")
        if abs(probs.sum() - 1.0) > _PROB_SUM_TOLERANCE:
            raise PredictionsError(path, name, "probabilities", f"must sum to 1, sum to {probs.sum()}")
    else:
        probs = np.full(k_count, 1.0 / k_count)
    return FramePrediction(trajectories=np.stack(trajs), probabilities=probs)


def load_predictions(path: str | Path) -> dict[str, FramePrediction]:
    """Read and validate a predictions file (format in the module docstring).

    Args:
        path: the JSON file.

    Returns:
        Frame name -> :class:`FramePrediction`, in file order.

    Raises:
        PredictionsError: naming the file, the frame and the field that is wrong; also a folder,
            a named pipe or a device instead of a file, and JSON nested too deeply to parse.
        OSError: the file cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        raise PredictionsError(path, None, None, "is a directory; expected the predictions JSON file")
    try:
        require_regular_file(path)  # a named pipe would block in open() forever
    except NotARegularFileError as exc:
        raise PredictionsError(path, None, None, f"is {exc.what}, not a regular file; expected the predictions JSON file") from None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PredictionsError(path, None, None, f"not valid JSON: {exc}") from exc
    except RecursionError:  # e.g. 200 000 '[': the parser recurses once per level
        raise PredictionsError(path, None, None, "not valid JSON: nested too deeply to parse") from None
    if not isinstance(doc, dict):
        raise PredictionsError(path, None, None, f"expected a JSON object with 'frames', got {type(doc).__name__}")
    if "format" in doc and doc["format"] != PREDICTIONS_FORMAT:
        raise PredictionsError(path, None, "format", f"expected {PREDICTIONS_FORMAT!r}, got {doc['format']!r}")
    unknown = sorted(set(doc) - {"format", "frames"})
    if unknown:
        raise PredictionsError(path, None, unknown[0], "unknown top-level key; expected 'format' and 'frames'")
    frames = doc.get("frames")
    if not isinstance(frames, dict):
        raise PredictionsError(path, None, "frames", "expected an object mapping frame name -> prediction")
    return {name: _frame_prediction(entry, path, name) for name, entry in frames.items()}


def _tfrecord_files(frames_path: Path) -> list[Path]:
    if frames_path.is_dir():
        files = sorted(p for p in frames_path.iterdir() if p.is_file() and ".tfrecord" in p.name)
        if not files:
            raise FileNotFoundError(f"{frames_path}: no *.tfrecord* files in this directory")
        return files
    if not frames_path.exists():
        raise FileNotFoundError(f"{frames_path}: no such file")
    return [frames_path]


def _ade(pred: np.ndarray, future: np.ndarray, num_poses: int) -> np.ndarray:
    """(K,) mean distance over the first ``num_poses`` poses of (K, T, 2) to (T, 2)."""
    return np.linalg.norm(pred[:, :num_poses] - future[None, :num_poses], axis=-1).mean(axis=-1)


def _score_frame(frame: E2EFrame, pred: FramePrediction) -> dict:
    out: dict = {
        "path": str(frame.path),
        "record": frame.record,
        "initial_speed": frame.initial_speed,
        "num_raters": len(frame.rater_trajectories),
        "rfs": None,
        "rfs_per_trajectory": None,
        "in_trust_region": None,
    }
    if frame.has_rater_feedback:
        rfs = rater_feedback_score(
            pred.trajectories[None],
            pred.probabilities[None],
            [list(frame.rater_trajectories)],
            [frame.rater_scores],
            np.array([frame.initial_speed]),
            frequency=round(1.0 / WOD_E2E_SAMPLING.interval_s),
            length_seconds=round(WOD_E2E_SAMPLING.horizon_s),
        )
        out["rfs"] = float(rfs["rater_feedback_score"][0])
        out["rfs_per_trajectory"] = rfs["rater_feedback_score_per_inference"][0].tolist()
        out["in_trust_region"] = rfs["is_fully_within_trust_region"][0].tolist()
    future = frame.future_states
    for horizon in ADE_HORIZONS_S:
        key = f"{horizon:g}s"
        num_poses = round(horizon / WOD_E2E_SAMPLING.interval_s)
        if future is not None and len(future) >= num_poses:
            ade = _ade(pred.trajectories, future.xy, num_poses)
            out[f"ade_{key}"] = float(ade[pred.best_index])
            out[f"min_ade_{key}"] = float(ade.min())
        else:
            out[f"ade_{key}"] = out[f"min_ade_{key}"] = None
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(math.fsum(kept) / len(kept)) if kept else None


def _write_json_atomic(path: Path, doc: dict) -> None:
    with atomic_writer(path, text=True) as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")


def evaluate_wod_e2e(frames_path: str | Path, predictions_path: str | Path, out_dir: str | Path) -> dict:
    """Score predictions on WOD-E2E frames: per-frame and mean RFS, ADE at 3 s and 5 s.

    Args:
        frames_path: an ``E2EDFrame`` TFRecord file, or a directory whose ``*.tfrecord*`` files
            are read in name order.
        predictions_path: the predictions JSON (format in the module docstring).
        out_dir: where ``wod_e2e_eval.json`` is written (created if needed; the file is
            replaced atomically).

    Returns:
        The report written to ``out_dir / EVAL_FILENAME`` (structure in the module docstring).

    Raises:
        PredictionsError: a malformed predictions file (names the file, the frame and the field).
        ValueError: two records with the same frame name, or no frame has a prediction.
        FileNotFoundError: ``frames_path`` does not exist or holds no TFRecord files.
    """
    frames_path = Path(frames_path)
    predictions_path = Path(predictions_path)
    out_dir = Path(out_dir)
    predictions = load_predictions(predictions_path)
    files = _tfrecord_files(frames_path)

    skipped: list[str] = []
    seen: dict[str, str] = {}
    scored: dict[str, dict] = {}
    without_prediction: list[str] = []
    for file in files:
        for frame in iter_e2e_frames(file, skip_corrupt=True, on_skip=lambda exc: skipped.append(str(exc))):
            where = f"{frame.path}: record {frame.record}"
            if frame.name in seen:
                raise ValueError(f"{where}: frame name {frame.name!r} already used by {seen[frame.name]}")
            seen[frame.name] = where
            pred = predictions.get(frame.name)
            if pred is None:
                without_prediction.append(frame.name)
                continue
            scored[frame.name] = _score_frame(frame, pred)
    if not scored:
        raise ValueError(
            f"{predictions_path}: none of the {len(predictions)} predicted frames is among the {len(seen)} frames of {frames_path}"
            + (f" ({len(skipped)} records skipped: {skipped[0]} ...)" if skipped else "")
        )
    unused = [name for name in predictions if name not in seen]
    rows = scored.values()
    report = {
        "format": EVAL_FORMAT,
        "frames_path": str(frames_path),
        "predictions_path": str(predictions_path),
        "summary": {
            "rfs": _mean(r["rfs"] for r in rows),
            "ade_3s": _mean(r["ade_3s"] for r in rows),
            "ade_5s": _mean(r["ade_5s"] for r in rows),
            "min_ade_3s": _mean(r["min_ade_3s"] for r in rows),
            "min_ade_5s": _mean(r["min_ade_5s"] for r in rows),
            "num_frames": len(seen),
            "num_scored_frames": len(scored),
            "num_rated_frames": sum(r["rfs"] is not None for r in rows),
            "num_frames_with_future": sum(r["ade_5s"] is not None for r in rows),
            "num_frames_without_prediction": len(without_prediction),
            "num_unused_predictions": len(unused),
            "num_skipped_records": len(skipped),
        },
        "frames": scored,
        "frames_without_prediction": without_prediction,
        "unused_predictions": unused,
        "skipped_records": skipped,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out_dir / EVAL_FILENAME, report)
    return report
