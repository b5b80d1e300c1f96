"""defectbench's own ResNets against torchvision's and EfficientNet-Lite0 against timm's: same
state-dict layout, same random init for a seed, same outputs; torchvision is imported only for
its pretrained weights, timm never."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from defectbench.models import resnet
from defectbench.models.backbones import build_model
from defectbench.runtime import DefectbenchError


@pytest.mark.parametrize("name", resnet.RESNETS)
def test_resnet_equals_torchvision_for_the_same_seed(name, one_torch_thread):
    torch.manual_seed(3)
    ours = build_model(name)
    torch.manual_seed(3)
    theirs = getattr(torchvision.models, name)()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 64, 64)
    ours.train(), theirs.train()  # batch statistics, and the running-stat update, must agree too
    assert torch.equal(ours(x), theirs(x))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ours.eval(), theirs.eval()
    assert torch.equal(ours(x), theirs(x))


def test_efficientnet_lite0_equals_timm_for_the_same_seed_and_with_the_package_weights(one_torch_thread):
    import timm

    from defectbench.models.efficientnet import PACKAGE_BN_EPS, map_package_state_dict, package_weights_path
    from defectbench.runtime import load_torch

    torch.manual_seed(3)
    ours = build_model("efficientnet_lite0")
    torch.manual_seed(3)
    theirs = timm.create_model("efficientnet_lite0", pretrained=False)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 64, 64)
    ours.train(), theirs.train()
    assert torch.equal(ours(x), theirs(x))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the running-stat update too
    # the package weights: ours loads them itself, timm's model through the same key mapping
    ours = build_model("efficientnet_lite0", "package")
    theirs.load_state_dict(map_package_state_dict(load_torch(package_weights_path()), theirs.state_dict()))
    for module in theirs.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = PACKAGE_BN_EPS
    ours.eval(), theirs.eval()
    assert torch.equal(ours(x), theirs(x))
    ours.reset_classifier(0), theirs.reset_classifier(0)
    assert ours(x).shape == (2, 1280) and torch.equal(ours(x), theirs(x))


def test_torchvision_weights_load_into_our_resnet(monkeypatch):
    torch.manual_seed(5)
    state = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(resnet, "torchvision_state_dict", lambda name: state)
    loaded = build_model("resnet18", "torchvision").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    def offline(name):
        raise OSError("no network")

    monkeypatch.setattr(resnet, "torchvision_state_dict", offline)
    with pytest.raises(DefectbenchError, match=r"^pretrained: torchvision weights for resnet18 are not in the torch cache"):
        build_model("resnet18", "torchvision")


def test_building_a_backbone_imports_neither_torchvision_timm_nor_dynamo():
    # on the meta device too (encoders.load_encoder): normal_ there would import torch._dynamo
    code = ("import json, sys, torch\n"
            "from defectbench.models.backbones import build_backbone\n"
            "build_backbone('resnet18')\n"
            "build_backbone('efficientnet_lite0', 'package')\n"
            "with torch.device('meta'):\n"
            "    build_backbone('resnet50')\n"
            "    build_backbone('efficientnet_lite0')\n"
            "print(json.dumps([m in sys.modules for m in ('torchvision', 'timm', 'torch._dynamo')]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False, False]
