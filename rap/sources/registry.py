"""Source specs (``KIND:PATH[@STEP]``) and the registry of source readers, imported lazily.

Kinds: ``womd:`` a Waymo Open Motion Scenario TFRecord (``--record`` picks the record),
``scenarionet:`` a ScenarioNet/MetaDrive scenario pickle or dataset folder (record k = k-th file),
``synthetic:SEED`` a town and expert log from the procedural world (the embedded default).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from rap.scene import Scene

# kind -> (module, loader function taking (path, record) and returning a Scene)
SOURCES: dict[str, tuple[str, str]] = {
    "womd": ("rap.sources.womd", "load_womd"),
    "scenarionet": ("rap.sources.scenarionet", "load_scenarionet"),
    "synthetic": ("rap.sources.synthetic", "load_synthetic"),
}
# Kinds whose "path" is not a file (synthetic:SEED is a seed of the procedural world).
GENERATED = {"synthetic"}


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``KIND:PATH[@STEP]`` string; ``step`` None means the scene's current step."""

    kind: str
    path: str
    step: int | None = None

    @staticmethod
    def parse(text: str) -> "SourceSpec":
        """Parse ``womd:data/file.tfrecord@40``.

        Raises:
            ValueError: naming the part that is wrong and the known source kinds.
        """
        kind, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ValueError(f"source {text!r}: expected KIND:PATH[@STEP] with KIND one of {sorted(SOURCES)}")
        if kind not in SOURCES:
            raise ValueError(f"source {text!r}: unknown kind {kind!r}; known kinds: {sorted(SOURCES)}")
        path, step = rest, None
        if "@" in rest:
            head, _, tail = rest.rpartition("@")
            try:
                step = int(tail)
            except ValueError as exc:
                raise ValueError(f"source {text!r}: step after '@' must be an integer, got {tail!r}") from exc
            if step < 0:
                raise ValueError(f"source {text!r}: step must be >= 0, got {step}")
            path = head
        return SourceSpec(kind, path, step)


def load_scene(spec: SourceSpec, record: int = 0) -> Scene:
    """Load record ``record`` of the spec's file as a Scene.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the step is outside the scene, or the reader's own errors.
    """
    module_name, func_name = SOURCES[spec.kind]
    loader = getattr(importlib.import_module(module_name), func_name)
    if spec.kind in GENERATED:
        if not spec.path.isdigit():
            raise ValueError(f"source {spec.kind}:{spec.path}: expected a non-negative integer seed")
        scene = loader(int(spec.path))
    else:
        if not Path(spec.path).exists():
            raise FileNotFoundError(f"{spec.path}: no such file")
        if record < 0:
            raise ValueError(f"{spec.path}: record must be >= 0, got {record}")
        try:
            scene = loader(spec.path, record)
        except IndexError as exc:  # the file has fewer records
            raise ValueError(str(exc)) from None
    if spec.step is not None and not 0 <= spec.step < scene.num_steps:
        raise ValueError(f"{spec.path}: step {spec.step} is outside the scene's {scene.num_steps} steps")
    return scene
