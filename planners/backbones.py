"""Image backbones: a camera image in, a grid of feature tokens out.

Names:

* ``resnet18``, ``resnet34``, ``resnet50``: ResNets with torchvision's architecture and parameter
  names, so a torchvision (or timm) ResNet state dict loads as it is. torchvision's own module is
  used when it imports; otherwise rap's copy of the same architecture (torchvision's PyPI wheel
  for the CPU build of torch that rap installs links CUDA libraries and fails to import).
* ``timm:NAME``: any model of the optional ``timm`` package (``pip install timm``; timm needs
  an importable torchvision), built with ``pretrained=False``.

Weights are randomly initialised (nothing is downloaded); :func:`load_backbone_weights` loads a
local state dict (``.pt``/``.pth``) or ``.safetensors`` file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["Backbone", "build_backbone", "load_backbone_weights", "BackboneWeightsError", "RESNETS"]


class BackboneWeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the backbone."""


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


RESNETS = {"resnet18": (_BasicBlock, (2, 2, 2, 2)), "resnet34": (_BasicBlock, (3, 4, 6, 3)), "resnet50": (_Bottleneck, (3, 4, 6, 3))}


class _ResNetTrunk(nn.Module):
    """torchvision's ResNet without its pooling and classifier (same parameter names)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        block, layers = RESNETS[name]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(block, 64, layers[0], 1)
        self.layer2 = self._layer(block, 128, layers[1], 2)
        self.layer3 = self._layer(block, 256, layers[2], 2)
        self.layer4 = self._layer(block, 512, layers[3], 2)
        self.out_channels = 512 * block.expansion
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False), nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _torchvision_trunk(name: str) -> nn.Module | None:
    try:
        import torchvision.models as tvm  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - a broken torchvision install raises RuntimeError at import
        return None
    model = getattr(tvm, name)(weights=None)
    model.fc = nn.Identity()
    trunk = nn.Sequential()
    for child in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        trunk.add_module(child, getattr(model, child))
    trunk.out_channels = model.inplanes  # type: ignore[attr-defined]
    return trunk


class Backbone(nn.Module):
    """Images (N, 3, H, W), normalised, to tokens (N, L, C).

    Attributes:
        name: the backbone's name.
        out_channels: C.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.kind: str
        if name in RESNETS:
            trunk = _torchvision_trunk(name)
            self.kind = "torchvision" if trunk is not None else "builtin"
            self.trunk = trunk if trunk is not None else _ResNetTrunk(name)
            self.out_channels = int(self.trunk.out_channels)
        elif name.startswith("timm:"):
            try:
                import timm  # noqa: PLC0415
            except Exception as exc:  # noqa: BLE001 - timm imports torchvision, which may be broken
                raise ValueError(f"model.backbone.name={name!r} needs the optional timm package (pip install timm; it needs an importable torchvision): {type(exc).__name__}: {exc}") from None
            try:
                self.trunk = timm.create_model(name[5:], pretrained=False, num_classes=0, global_pool="")
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"model.backbone.name={name!r}: timm cannot build it: {exc}") from None
            self.kind = "timm"
            self.out_channels = int(self.trunk.num_features)
        else:
            raise ValueError(f"model.backbone.name={name!r}: unknown backbone; use one of {', '.join(RESNETS)} or timm:NAME")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "timm":
            feats = self.trunk.forward_features(images)
        else:
            feats = self.trunk(images)
        if feats.ndim == 4:  # (N, C, h, w) grid → (N, h*w, C)
            return feats.flatten(2).transpose(1, 2)
        if feats.ndim == 3:  # (N, L, C) tokens (ViT)
            return feats
        raise ValueError(f"backbone {self.name}: unexpected feature shape {tuple(feats.shape)}")

    def state_prefix(self) -> str:
        return "trunk."


def build_backbone(name: str) -> Backbone:
    """The backbone called ``name`` (see the module docstring), randomly initialised."""
    return Backbone(name)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    where = f"model.backbone.weights={path}"
    if not path.is_file():
        raise BackboneWeightsError(f"{where}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # noqa: PLC0415

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise BackboneWeightsError(f"{where}: cannot read weights: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{where}: not a state dict of tensors")
    return state


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a local state dict into ``backbone``.

    Keys may carry a ``module.``, ``backbone.`` or ``trunk.`` prefix; classifier keys (``fc.``,
    ``head.``, ``classifier.``) are ignored. Every other key must match the backbone in name
    and shape, and every backbone parameter must be given.

    Raises:
        BackboneWeightsError: naming the file and the keys or shapes that do not fit.
    """
    path = Path(path)
    where = f"model.backbone.weights={path}"
    state = _read_state_dict(path)
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone.", "trunk."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key.split(".")[0] in ("fc", "head", "classifier"):
            continue
        cleaned[key] = value
    own = backbone.trunk.state_dict()
    missing = sorted(set(own) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(own))
    wrong = sorted(k for k in set(own) & set(cleaned) if tuple(own[k].shape) != tuple(cleaned[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: file {tuple(cleaned[k].shape)}, model {tuple(own[k].shape)})")
        raise BackboneWeightsError(f"{where}: does not fit backbone {backbone.name}: " + "; ".join(parts))
    backbone.trunk.load_state_dict(cleaned, strict=True)
