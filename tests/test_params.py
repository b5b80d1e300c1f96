"""Registries, per-job params and code fingerprints (issue 12), without running Snakemake."""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path

import pytest
import yaml

from defectbench import params, registry
from defectbench.config import SCHEMA_PATH, load_schema, validate_config
from defectbench.fingerprint import PACKAGE_ROOT, module_closure, script_imports
from defectbench.runtime import DefectbenchError

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"datasets": {"neu": {"source": {"kind": "directory", "path": "x"}, "layout": "imagefolder"},
                        "pcb": {"source": {"kind": "directory", "path": "y"}, "layout": "deeppcb"}}}


def _cfg(**sections):
    cfg = copy.deepcopy(MINIMAL)
    cfg.update(copy.deepcopy(sections))
    return validate_config(cfg, SCHEMA_PATH)


def _job(rule, cfg, **wildcards):
    return params.job_params(rule, cfg, wildcards)


# ----------------------------------------------------------------------------- registries
@pytest.mark.parametrize("family", list(registry.FAMILIES))
def test_every_registered_name_resolves_to_a_function(family):
    for name in registry.names(family):
        assert callable(registry.implementation(family, name)), (family, name)


def test_contrastive_entries_match_their_loss_signatures():
    """Defaults name real loss arguments (or view keys); `reads: temperature` exactly when the loss
    takes a temperature the method does not set itself; `labels` exactly when the loss takes labels."""
    for name, entry in registry.CONTRASTIVE_METHODS.items():
        accepted = set(inspect.signature(registry.implementation("contrastive_methods", name)).parameters)
        own = set(entry.params)
        assert own - registry.VIEW_PARAM_KEYS <= accepted, name
        assert ("temperature" in entry.reads) == ("temperature" in accepted and "temperature" not in own), name
        assert ("labels" in entry.reads) == ("labels" in accepted), name


def test_schema_takes_its_names_and_method_defaults_from_the_registries():
    schema = load_schema()
    props = schema["properties"]
    assert props["contrastive"]["properties"]["methods"]["items"]["enum"] == registry.names("contrastive_methods")
    assert props["anomaly"]["properties"]["scorers"]["items"]["enum"] == registry.names("anomaly_scorers")
    assert props["anomaly"]["properties"]["features"]["items"]["enum"] == registry.names("feature_sources")
    assert props["clustering"]["properties"]["weightings"]["items"]["enum"] == registry.names("clustering_weightings")
    assert props["datasets"]["additionalProperties"]["properties"]["layout"]["enum"] == registry.names("layouts")
    method_params = _cfg()["contrastive"]["method_params"]
    assert method_params == {m: registry.defaults("contrastive_methods", m) for m in registry.names("contrastive_methods")}
    # the schema file itself holds no copy of these lists (defaults may name some of them)
    def enums(node):
        if isinstance(node, dict):
            yield from ([node["enum"]] if "enum" in node else [])
            for value in node.values():
                yield from enums(value)
        elif isinstance(node, list):
            for value in node:
                yield from enums(value)

    raw = list(enums(yaml.safe_load(SCHEMA_PATH.read_text())))
    for family in ("contrastive_methods", "anomaly_scorers", "clustering_weightings", "layouts"):
        assert not [e for e in raw if len(set(e) & set(registry.names(family))) > 1], family


def test_wildcard_pattern_matches_exactly_the_names():
    pattern = re.compile(registry.wildcard_pattern("anomaly_scorers"))
    assert all(pattern.fullmatch(n) for n in registry.names("anomaly_scorers"))
    assert not pattern.fullmatch("mahalanobis_shrinkag") and not pattern.fullmatch("knnn")


# ----------------------------------------------------------------------------- per-job params
def test_a_method_job_reads_only_its_own_merged_params():
    cfg = _cfg(contrastive={"methods": ["simclr", "supcon"], "method_params": {"supcon": {"temperature": 0.2}}})
    supcon = _job("pretrain_contrastive", cfg, method="supcon")["contrastive"]
    simclr = _job("pretrain_contrastive", cfg, method="simclr")["contrastive"]
    assert supcon["method_params"] == {"supcon": {"temperature": 0.2}}
    assert "temperature" not in supcon  # supcon has its own; the shared one is not read
    assert simclr["method_params"] == {"simclr": {}} and simclr["temperature"] == 0.5
    assert "methods" not in simclr  # the list of other methods is not a job's business
    # editing another method's params (even one not in the grid) or the method list changes nothing
    other = _cfg(contrastive={"methods": ["simclr", "supcon", "dcl"],
                              "method_params": {"supcon": {"temperature": 0.2}, "gca": {"epsilon": 0.5}}})
    assert _job("pretrain_contrastive", other, method="simclr") == _job("pretrain_contrastive", cfg, method="simclr")
    assert _job("pretrain_contrastive", other, method="supcon") == _job("pretrain_contrastive", cfg, method="supcon")


def test_probe_params_ignore_the_switches_that_add_control_probes():
    off = _cfg()
    on = _cfg(probe={"controls": ["random", "pretrained"], "pretrained": "torchvision",
                     "pretrained_backbones": ["resnet18"]})
    assert _job("linear_probe", off, method="simclr") == _job("linear_probe", on, method="simclr")
    assert _job("linear_probe", off, method="random") == _job("linear_probe", on, method="random")
    assert _job("linear_probe", on, method="pretrained")["probe"]["pretrained"] == "torchvision"
    # a probe kind's own keys only: the logistic probe does not read the linear head's epochs
    logistic = _job("linear_probe", off, method="simclr")["probe"]
    assert logistic["l2_grid"] and "epochs" not in logistic
    assert "l2_grid" not in _job("linear_probe", _cfg(probe={"kind": "linear"}), method="simclr")["probe"]


def test_budget_points_read_their_epochs_and_the_methods_own_params():
    cfg = _cfg(contrastive={"epochs": 7})
    point = _job("budget_pretrain", cfg, method="simclr", epochs="20", size="32")
    assert point["contrastive"]["epochs"] == 20
    assert point["contrastive"]["method_params"] == {"simclr": {}}
    assert {k: v for k, v in point.items() if k != "contrastive"} == {
        k: v for k, v in _job("pretrain_contrastive", cfg, method="simclr").items() if k != "contrastive"}
    assert _job("budget_probe", cfg, method="simclr")["probe"] == _job("linear_probe", cfg, method="simclr")["probe"]


def test_clustering_reads_the_patchcore_embedding_keys_not_its_coreset():
    base, coreset, layers = _cfg(), _cfg(patchcore={"coreset_ratio": 0.5}), _cfg(patchcore={"layers": ["layer3"]})
    wc = {"dataset": "neu", "features": "wide_resnet50_2", "seed": "0"}
    assert _job("cluster", base, **wc) == _job("cluster", coreset, **wc)
    assert _job("cluster", base, **wc) != _job("cluster", layers, **wc)
    assert _job("patchcore", base, backbone="wide_resnet50_2", **wc) != _job("patchcore", coreset, backbone="wide_resnet50_2", **wc)
    # tau is read only by the weightings that use it
    average_only = _cfg(clustering={"weightings": ["average"]})
    assert "tau" not in _job("cluster", average_only, **wc)["clustering"]


def test_clustering_oracle_control_reads_no_backbone_keys_and_adds_no_key_to_the_real_jobs():
    wc = {"dataset": "neu", "seed": "0"}
    base, layers = _cfg(), _cfg(patchcore={"layers": ["layer3"]}, clustering={"layernorm": False})
    with_control = _cfg(clustering={"controls": ["oracle"]})
    oracle = _job("cluster", base, features="oracle", **wc)
    assert "patchcore" not in oracle and "layernorm" not in oracle["clustering"]
    assert oracle == _job("cluster", layers, features="oracle", **wc)
    assert oracle["clustering"]["tau"] == 2.0 and oracle["clustering"]["include_normal"] is True
    # switching the control on changes no params of the patchcore-feature jobs
    assert _job("cluster", base, features="wide_resnet50_2", **wc) == _job("cluster", with_control, features="wide_resnet50_2", **wc)
    with pytest.raises(DefectbenchError, match="controls"):
        _cfg(clustering={"controls": ["pretrained"]})
    # the image cap reaches both kinds of job only when set
    capped = _cfg(clustering={"max_per_class": 8})
    assert "max_per_class" not in _job("cluster", base, features="wide_resnet50_2", **wc)["clustering"]
    assert _job("cluster", capped, features="wide_resnet50_2", **wc)["clustering"]["max_per_class"] == 8
    assert _job("cluster", capped, features="oracle", **wc)["clustering"]["max_per_class"] == 8


# (rule, section the control reads, wildcard naming the backbone, the backbone's name in a default config)
RANDOM_CONTROL_JOBS = [("patchcore", "patchcore", "backbone"), ("ddad", "ddad", "backbone"),
                       ("cluster", "patchcore", "features")]


@pytest.mark.parametrize("rule, section, wildcard", RANDOM_CONTROL_JOBS)
def test_random_init_control_differs_only_in_pretrained_and_leaves_the_main_jobs_alone(rule, section, wildcard):
    """A ``controls: [random]`` switch only adds a job: the main job's params are those of a config
    without it (so existing results do not rerun), and the control's differ from them in
    ``pretrained`` alone (``none``), whatever weights the main job uses."""
    weights = {"pretrained": "package", "backbone": "efficientnet_lite0"}
    main = {"patchcore": dict(weights), "ddad": {"pretrained": "package", "feature_backbone": "efficientnet_lite0"}}
    off = _cfg(**main)
    on = _cfg(**{name: {**body, "controls": ["random"]} for name, body in main.items()},
              clustering={"controls": ["oracle", "random"]})
    wc = {"dataset": "neu", "seed": "0"}
    assert _job(rule, off, **wc, **{wildcard: "efficientnet_lite0"}) == _job(rule, on, **wc, **{wildcard: "efficientnet_lite0"})
    main_job = _job(rule, on, **wc, **{wildcard: "efficientnet_lite0"})
    control = _job(rule, on, **wc, **{wildcard: "random"})
    assert main_job[section]["pretrained"] == "package" and control[section]["pretrained"] == "none"
    assert {**control, section: {**control[section], "pretrained": "package"}} == main_job
    assert "controls" not in main_job[section] and "controls" not in control.get("clustering", {})
    assert "enabled" not in control[section]


def test_scorer_jobs_read_their_own_keys_and_leaky_only_when_faithful():
    cfg = _cfg()
    assert _job("score_anomaly", cfg, scorer="knn")["anomaly"]["knn_k"] == 5
    assert "knn_k" not in _job("score_anomaly", cfg, scorer="cosine")["anomaly"]
    assert "leaky_percentile" not in _job("score_anomaly", cfg, scorer="cosine")["anomaly"]
    assert "leaky_percentile" in _job("score_anomaly", _cfg(protocol="faithful"), scorer="cosine")["anomaly"]
    # one job per feature set (no {scorer} wildcard): every configured scorer, and their keys
    per_features = _job("score_anomaly", _cfg(anomaly={"scorers": ["cosine", "knn"]}), features="simclr")["anomaly"]
    assert per_features["scorers"] == ["cosine", "knn"] and per_features["knn_k"] == 5
    assert "knn_k" not in _job("score_anomaly", _cfg(anomaly={"scorers": ["cosine"]}), features="simclr")["anomaly"]


def test_data_params_read_only_the_layout_keys_of_that_layout():
    cfg = _cfg()
    folder = _job("build_manifest", cfg, dataset="neu")["dataset"]
    pcb = _job("build_manifest", cfg, dataset="pcb")["dataset"]
    assert "crop_padding" not in folder and {"classes", "nominal_classes"} <= set(folder)
    assert pcb["crop_padding"] == 8 and "classes" not in pcb
    assert set(_job("build_cache", cfg, dataset="neu")["dataset"]) == {"alpha_background", "resize", "resize_to"}


def test_unknown_dataset_in_a_target_names_the_defined_ones():
    with pytest.raises(DefectbenchError, match=r"dataset 'nosuch' .* not defined .*; defined: neu, pcb"):
        _job("build_manifest", _cfg(), dataset="nosuch")


def test_every_rule_gets_its_params_from_the_library():
    rules = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
        for rule, cfg_call in re.findall(r"^rule (\w+):.*?params:\s*\n\s*cfg=job_params\(\"(\w+)\"\)", smk.read_text(), re.M | re.S):
            assert rule == cfg_call, smk
    assert rules - {"all"} == set(params.STAGES)
    assert not any("config_slice" in smk.read_text() for smk in (ROOT / "rules").glob("*.smk"))


# ----------------------------------------------------------------------------- fingerprints
def _closure_of(rule, **wildcards):
    modules = list(script_imports(ROOT / "workflow_scripts" / f"{rule}.py"))
    if rule in params.IMPLEMENTATIONS:
        family, names = params.IMPLEMENTATIONS[rule](_cfg(), wildcards)
        modules += [registry.entry(family, name).implementation.partition(":")[0] for name in names]
    return {p.relative_to(PACKAGE_ROOT).as_posix() for p in module_closure(modules)}


def test_fingerprints_cover_what_each_stage_imports():
    pretrain = _closure_of("pretrain_contrastive", method="simclr")
    scoring = _closure_of("score_anomaly", scorer="knn")
    assert "ssl/losses.py" in pretrain and "train.py" in pretrain and "__init__.py" in pretrain
    assert "metrics/anomaly.py" in scoring and "ssl/losses.py" not in scoring
    assert "metrics/anomaly.py" not in pretrain
    # the job frame (tracked_job: log + live MLflow runs) writes no output: only the track rule's code
    assert "tracking.py" not in pretrain and "tracking.py" in _closure_of("track")
    assert "metrics/anomaly.py" in _closure_of("patchcore")
    everything = set().union(*(_closure_of(rule, method="simclr", scorer="knn") for rule in params.STAGES))
    assert "cli.py" not in everything  # a file no stage imports: editing it reruns nothing


def test_fingerprint_follows_function_level_imports():
    # clustering imports the patch embedding inside run_clustering (a lazy import): still part of its
    # code; it imports PatchCore's parts, not the PatchCore stage
    closure = {p.relative_to(PACKAGE_ROOT).as_posix() for p in module_closure(["defectbench.clustering"])}
    assert "anomaly/embedding.py" in closure and "anomaly/patchcore.py" not in closure
