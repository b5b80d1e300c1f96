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
        ({"unknown_section": {}}, "config key unknown_section: unknown key; valid keys here: anomaly, backbones,"),
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
    for name in ("config/config.yaml", "config/paper.yaml", "config/shared-data.yaml", "config/reference.yaml"):
        path = SCHEMA_PATH.parent.parent / name
        if path.exists():
            load_config(path)


def test_broken_yaml_names_file_line_and_column(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("seeds: [0]\ndatasets:\n  neu: {source: {kind: directory, path: x}, layout: imagefolder\n")
    with pytest.raises(DefectbenchError) as err:
        load_config(bad)
    # line 3, where the unclosed flow mapping starts going wrong; one line
    assert str(err.value).startswith(f"{bad}:4:1: not valid YAML") and "\n" not in str(err.value)
    assert yaml.safe_load("a: 1") == {"a": 1}


# Issue 11, strict schema: a typo anywhere, an unknown name, a missing checksum: one line naming
# the key path and listing what is valid there.
STRICT_CASES = [
    ({"contrastive": {"epoch": 5}}, "config key contrastive.epoch: unknown key; valid keys here: amp, augment,"),
    ({"diffusion": {"enabeld": False}}, "config key diffusion.enabeld: unknown key; valid keys here: amp,"),
    ({"diffusion": {"views": {"kk": 2}}}, "config key diffusion.views.kk: unknown key; valid keys here: batch_size,"),
    ({"probe": {"epoch": 5}}, "config key probe.epoch: unknown key"),
    ({"anomaly": {"scorer": ["knn"]}}, "config key anomaly.scorer: unknown key"),
    ({"patchcore": {"coreset": 0.1}}, "config key patchcore.coreset: unknown key"),
    ({"ddad": {"W": 4}}, "config key ddad.W: unknown key"),
    ({"clustering": {"feature": "patchcore"}}, "config key clustering.feature: unknown key"),
    ({"metrics": {"pro": 1}}, "config key metrics.pro: unknown key"),
    ({"tracking": {"url": "x"}}, "config key tracking.url: unknown key"),
    ({"report": {"figure": True}}, "config key report.figure: unknown key"),
    ({"supervised": {"lrr": 1}}, "config key supervised.lrr: unknown key"),
    ({"clustering": {"features": "patchcor"}}, "config key clustering.features: unknown name 'patchcor'; valid names: patchcore"),
    ({"anomaly": {"features": ["simclr", "simclrr"]}},
     "config key anomaly.features.1: unknown name 'simclrr'; valid names: simclr, supcon, dcl, hcl, adnce, decoupled, fairkl, gca, diffcl, random, pretrained"),
    ({"anomaly": {"scorers": ["knn", "lof"]}},
     "config key anomaly.scorers.1: unknown name 'lof'; valid names: knn, mahalanobis, mahalanobis_shrinkage, cosine"),
    ({"clustering": {"weightings": ["avg"]}},
     "config key clustering.weightings.0: unknown name 'avg'; valid names: unsupervised, supervised, average"),
    ({"contrastive": {"method_params": {"simclrr": {}}}},
     "config key contrastive.method_params.simclrr: unknown key; valid keys here: adnce, dcl, decoupled, diffcl,"),
    ({"contrastive": {"method_params": {"dcl": {"tau": 0.1}}}},
     "config key contrastive.method_params.dcl.tau: unknown key; valid keys here: tau_plus"),
    ({"contrastive": {"method_params": {"diffcl": {"variant": "x"}}}},
     "config key contrastive.method_params.diffcl.variant: unknown name 'x'; valid names: views, adainf"),
]


@pytest.mark.parametrize("patch, message", STRICT_CASES)
def test_strict_schema_names_the_key_and_the_valid_names(patch, message):
    cfg = copy.deepcopy(MINIMAL)
    cfg.update(copy.deepcopy(patch))
    with pytest.raises(DefectbenchError) as err:
        validate_config(cfg, SCHEMA_PATH)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("source, key", [
    ({"kind": "url", "url": "https://example.org/x.zip"}, "sha256"),
    ({"kind": "archive", "path": "x.zip"}, "sha256"),
    ({"kind": "url", "sha256": "0" * 64}, "url"),
    ({"kind": "directory"}, "path"),
    ({"kind": "pip"}, "package"),
])
def test_sources_require_their_keys(source, key):
    cfg = copy.deepcopy(MINIMAL)
    cfg["datasets"]["neu"]["source"] = source
    with pytest.raises(DefectbenchError, match=rf"^config key datasets\.neu\.source\.{key}: required"):
        validate_config(cfg, SCHEMA_PATH)


def test_layout_is_a_registered_name():
    cfg = copy.deepcopy(MINIMAL)
    cfg["datasets"]["neu"]["layout"] = "image_folder"
    with pytest.raises(DefectbenchError, match=r"^config key datasets\.neu\.layout: unknown name 'image_folder'; "
                                               r"valid names: imagefolder, magnetic_tile, deeppcb, elpv, mvtec, visa"):
        validate_config(cfg, SCHEMA_PATH)


def test_method_params_merge_over_the_method_defaults():
    cfg = copy.deepcopy(MINIMAL)
    cfg["contrastive"] = {"method_params": {"hcl": {"beta": 2.0}}}
    out = validate_config(cfg, SCHEMA_PATH)["contrastive"]["method_params"]
    assert out["hcl"] == {"tau_plus": 0.1, "beta": 2.0}  # tau_plus kept, not replaced by the user's dict
    assert out["dcl"] == {"tau_plus": 0.1} and out["simclr"] == {}


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
