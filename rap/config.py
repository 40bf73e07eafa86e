"""Typed configs: YAML files plus dotted ``key=value`` overrides, validated in one place.

Configs are frozen pydantic models that forbid unknown keys, so a misspelt key fails loading with
its dotted path. Override values are parsed as YAML scalars (``seed=3``, ``recovery.enabled=false``,
``size=[512,256]``).
"""

from __future__ import annotations

import copy

from pathlib import Path
from typing import Any, Sequence, TypeVar

import pydantic
import yaml
from typing import Annotated

from pydantic import Field, PositiveInt

from rap.trajectory import TrajectorySampling

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file/override and the key."""


class FrozenModel(pydantic.BaseModel):
    """Base of every config: immutable, unknown keys rejected."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


# -- sections shared by generation and evaluation: one place for observation defaults ----------
ImageSide = Annotated[int, Field(gt=0, le=16384)]  # [px] an image width or height
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # finite and > 0
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # finite and >= 0
DEFAULT_RIG = "front3"  # camera rig of generated samples and of evaluation observations
DEFAULT_CAMERA_SIZE = (512, 256)  # [px] every camera
DEFAULT_HISTORY_NUM_POSES = 3  # past poses of an observation ...
DEFAULT_HISTORY_INTERVAL_S = 0.5  # [s] ... this far apart (1.5 s, as NAVSIM)


class SamplingSection(FrozenModel):
    """Target trajectory sampling (RAP: 10 poses at 0.5 s; NAVSIM 8 x 0.5 s; WOD-E2E 20 x 0.25 s)."""

    num_poses: PositiveInt = 10
    interval_s: PositiveFloat = 0.5  # [s]

    def to_sampling(self) -> TrajectorySampling:
        return TrajectorySampling(self.num_poses, self.interval_s)


class HistorySection(FrozenModel):
    """Past poses of an observation, in generated samples and in evaluation alike (default
    1.5 s, as NAVSIM)."""

    num_poses: PositiveInt = DEFAULT_HISTORY_NUM_POSES
    interval_s: PositiveFloat = DEFAULT_HISTORY_INTERVAL_S  # [s]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"recovery.num_samples=2"`` → (["recovery", "num_samples"], 2)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    return key.split("."), parsed


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of ``data`` with every dotted override set (creating nested dicts)."""
    data = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(model: type[ModelT], path: str | Path | None = None, overrides: Sequence[str] = ()) -> ModelT:
    """Load ``model`` from an optional YAML file and dotted overrides.

    Raises:
        ConfigError: naming the file or override and the dotted key that is wrong.
    """
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded or {}
    _fill_default_sections(data, model, overrides)
    data = apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{where}: {err['msg']}")
        origin = source if not overrides else f"{source} + overrides"
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None


def _fill_default_sections(data: dict, model: type[pydantic.BaseModel], overrides: Sequence[str]) -> None:
    """Copy into ``data`` the default values of every section an override reaches into but
    ``data`` lacks, so ``a.b.c=1`` changes ``c`` alone and keeps ``a.b``'s other defaults
    (instead of building ``a.b`` from ``{c: 1}`` and the field defaults of its type)."""
    if not overrides:
        return
    try:
        defaults = model().model_dump(mode="json")
    except pydantic.ValidationError:  # a model with required fields: nothing to fill
        return
    for item in overrides:
        parts = item.partition("=")[0].strip().split(".")
        node, default = data, defaults
        for part in parts[:-1]:
            if not isinstance(default, dict) or not isinstance(default.get(part), dict):
                break
            default = default[part]
            if node.get(part) is None:
                node[part] = copy.deepcopy(default)
            if not isinstance(node[part], dict):
                break
            node = node[part]


def config_to_dict(config: pydantic.BaseModel) -> dict:
    """JSON-ready dict of a config (for manifests)."""
    return config.model_dump(mode="json")
