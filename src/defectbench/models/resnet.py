"""ResNet-18/50 and WideResNet-50-2 (He et al. 2016; Zagoruyko & Komodakis 2016), without torchvision.

Importing torchvision imports torch._dynamo (its detection ops ask whether they are being
compiled), which costs about 1.1 s of every job's start-up on 2 cores; defectbench needs only
these three networks (benchmarks/results/startup.md). They are written here with torchvision's
module names, so its ImageNet state dicts load unchanged, and with its construction and
initialisation order, so the same seed gives the same random init bit for bit
(tests/test_backbones.py checks both against torchvision). torchvision is imported only to
fetch its pretrained weights.
"""

from __future__ import annotations

import torch
from torch import nn

# name -> (block, blocks per stage, width per group)
_LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128),
}
RESNETS = tuple(_LAYOUTS)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)


class _Basic(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, width_per_group: int):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class _Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, width_per_group: int):
        super().__init__()
        width = planes * width_per_group // 64
        self.conv1 = _conv(cin, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max pool), four stages of strides 4-32, global pool, 1000-way head."""

    def __init__(self, name: str, num_classes: int = 1000):
        super().__init__()
        kind, depths, width_per_group = _LAYOUTS[name]
        block = _Basic if kind == "basic" else _Bottleneck
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
            stride = 1 if i == 1 else 2
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(_conv(cin, planes * block.expansion, 1, stride),
                                           nn.BatchNorm2d(planes * block.expansion))
            blocks = [block(cin, planes, stride, downsample, width_per_group)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, None, width_per_group) for _ in range(1, depth)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        if self.fc.weight.is_meta:  # built to be filled from a file (encoders.load_encoder): no values to set,
            return                  # and normal_ on a meta tensor would import torch._dynamo
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for ``name`` (its cache, else a download)."""
    import torchvision

    return getattr(torchvision.models, name)(weights="DEFAULT").state_dict()
