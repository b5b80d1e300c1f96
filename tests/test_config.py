"""Config validation: defaults from the schema, one-line errors with the key path."""

import copy

import pytest
import yaml

from defectbench.config import SCHEMA_PATH, load_config, validate_config
from defectbench.runtime import DefectbenchError

MINIMAL = {"datasets": {"neu": {"source": {"kind": "directory", "path": "data/neu"}, "layout": "imagefolder"}}}


def test_defaults_fill_nested_sections():
    cfg = validate_config(copy.deepcopy(MINIMAL), SCHEMA_PATH)
    assert cfg["protocol"] == "clean"
    assert cfg["seeds"] == [0]
    assert cfg["datasets"]["neu"]["image_size"] == 64
    assert cfg["datasets"]["neu"]["tasks"] == ["classification"]
    assert cfg["contrastive"]["temperature"] == 0.5
    assert cfg["diffusion"]["views"]["k"] == 4
    assert cfg["contrastive"]["amp"] == "none"  # default reached through a $ref
    assert cfg["tracking"]["uri"] == "sqlite:///results/mlflow.db"


def test_explicit_values_are_kept():
    cfg = copy.deepcopy(MINIMAL)
    cfg["contrastive"] = {"epochs": 3}
    out = validate_config(cfg, SCHEMA_PATH)
    assert out["contrastive"]["epochs"] == 3 and out["contrastive"]["batch_size"] == 256


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"protocol": "leaky"}, "config key protocol:"),
        ({"seeds": [-1]}, "config key seeds.0:"),
        ({"label_fractions": [0.0]}, "config key label_fractions.0:"),
        ({"contrastive": {"methods": ["simclr", "byol"]}}, "config key contrastive.methods.1:"),
        ({"unknown_section": {}}, "config key (top level):"),
    ],
)
def test_invalid_values_name_the_key(patch, key):
    cfg = copy.deepcopy(MINIMAL)
    cfg.update(patch)
    with pytest.raises(DefectbenchError) as err:
        validate_config(cfg, SCHEMA_PATH)
    msg = str(err.value)
    assert msg.startswith(key) and "\n" not in msg


def test_invalid_nested_dataset_value():
    cfg = copy.deepcopy(MINIMAL)
    cfg["datasets"]["neu"]["source"]["sha256"] = "xyz"
    with pytest.raises(DefectbenchError, match=r"^config key datasets\.neu\.source\.sha256:"):
        validate_config(cfg, SCHEMA_PATH)


def test_shipped_configs_validate():
    for name in ("config/config.yaml", "config/paper.yaml", "config/shared-data.yaml", "config/reference.yaml",
                 "config/reference-next.yaml"):
        path = SCHEMA_PATH.parent.parent / name
        if path.exists():
            load_config(path)


def test_broken_yaml_is_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(DefectbenchError, match=str(bad)):
        load_config(bad)
    assert yaml  # yaml imported for the parser under test


@pytest.mark.parametrize("patch, key", [
    ({"anomaly": {"features": ["simclr", "pretrained"], "pretrained": "package"}}, "anomaly.pretrained"),
    ({"patchcore": {"backbone": "resnet18", "pretrained": "package"}}, "patchcore.pretrained"),
    ({"contrastive": {"pretrained": "package"}}, "contrastive.pretrained"),
    ({"probe": {"controls": ["random", "pretrained"], "pretrained": "package"}}, "probe.pretrained"),
])
def test_package_weights_only_with_efficientnet(patch, key):
    cfg = copy.deepcopy(MINIMAL)
    cfg["backbones"] = ["resnet18"]
    cfg.update(copy.deepcopy(patch))
    with pytest.raises(DefectbenchError, match=rf"^config key {key}: 'package' weights exist only for efficientnet_lite0, not resnet18"):
        validate_config(cfg, SCHEMA_PATH)
    # the same weights are fine where the backbone is EfficientNet-Lite0
    cfg["backbones"] = ["efficientnet_lite0"]
    if "patchcore" in patch:
        cfg["patchcore"]["backbone"] = "efficientnet_lite0"
    validate_config(cfg, SCHEMA_PATH)


def test_pretrained_control_needs_weights_and_may_use_its_own_backbone():
    cfg = copy.deepcopy(MINIMAL)
    cfg["backbones"] = ["resnet18"]
    cfg["probe"] = {"controls": ["random", "pretrained"]}
    with pytest.raises(DefectbenchError, match=r"^config key probe.controls: 'pretrained' needs weights, but probe.pretrained is none"):
        validate_config(copy.deepcopy(cfg), SCHEMA_PATH)
    cfg["probe"].update(pretrained="package", pretrained_backbones=["efficientnet_lite0"])
    out = validate_config(copy.deepcopy(cfg), SCHEMA_PATH)
    assert out["probe"]["kind"] == "logistic" and out["supervised"]["augment"] == {"preset": "light"}
    with pytest.raises(DefectbenchError, match=r"^config key anomaly.features: 'pretrained' needs weights"):
        validate_config({**copy.deepcopy(MINIMAL), "anomaly": {"features": ["random", "pretrained"]}}, SCHEMA_PATH)
