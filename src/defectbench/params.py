"""Per-job params: exactly what one job reads, so Snakemake's params trigger reruns exactly it.

One function per rule computes the ``params.cfg`` of a job from the validated config (defaults
already filled in from the schema, the one source of defaults) and the job's wildcards: the keys
the job's library code reads, nothing else (not other methods, not switches that only decide
whether the job exists), plus ``code``: the fingerprint of the library files the rule's script
imports (:mod:`defectbench.fingerprint`) and of the registered implementation the job uses.
A config or code edit therefore changes the params of exactly the jobs it reaches.

>>> from defectbench.config import validate_config
>>> cfg = validate_config({"datasets": {"d": {"source": {"kind": "directory", "path": "x"}, "layout": "imagefolder"}}})
>>> p = job_params("linear_probe", cfg, {"method": "simclr", "dataset": "d"})
>>> sorted(p), "controls" in p["probe"], "pretrained" in p["probe"]
(['code', 'device', 'probe', 'protocol'], False, False)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from defectbench import registry
from defectbench.fingerprint import code_fingerprint, script_imports
from defectbench.runtime import DefectbenchError

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "workflow_scripts"

Params = dict[str, Any]
Wildcards = Mapping[str, str]


def _pick(section: Mapping[str, Any], keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    return {key: section[key] for key in keys if key in section}


def _without(section: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in section.items() if key not in keys}


def dataset_entry(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config entry of dataset ``name``; an unknown name (a mistyped target) lists the defined ones."""
    datasets = config["datasets"]
    if name not in datasets:
        raise DefectbenchError(
            f"dataset {name!r} (from the target's path) is not defined in the config's datasets; "
            f"defined: {', '.join(datasets)}")
    return datasets[name]


# ----------------------------------------------------------------------------- data stage
def fetch_dataset(config, wc) -> Params:
    return {"dataset": {"source": dataset_entry(config, wc["dataset"])["source"]}}


def build_manifest(config, wc) -> Params:
    entry = dataset_entry(config, wc["dataset"])
    keys = ["source", "layout", "max_per_class", "max_nominal", "max_defective", "bit_depth", "alpha_background",
            *registry.entry("layouts", entry["layout"]).reads]
    return {"dataset": _pick(entry, keys)}


def make_split(config, wc) -> Params:
    keys = ["test_fraction", "holdout_fraction", "official_split", "max_train_nominal"]
    return {"dataset": _pick(dataset_entry(config, wc["dataset"]), keys)}


def build_cache(config, wc) -> Params:
    # pixel scaling comes from the manifest's pixel_scale column; these shape the cached squares
    return {"dataset": _pick(dataset_entry(config, wc["dataset"]), ["alpha_background", "resize", "resize_to"])}


# ----------------------------------------------------------------------------- random-init controls
# Keys of the patchcore / ddad sections that only decide which jobs exist (the switch and the
# controls), never read by one: adding a control leaves the main jobs' params as they were.
ANOMALY_GRID_KEYS = ["enabled", "controls"]
RANDOM_CONTROL = "random"


def random_init(section: dict[str, Any], wildcard: str) -> dict[str, Any]:
    """``section`` for a job whose backbone wildcard is ``wildcard``: the random-init control
    (``patchcore.controls`` / ``ddad.controls`` / ``clustering.controls`` ``random``) is the same
    job with the backbone at random init, ``pretrained: none``; any other job keeps the section."""
    return {**section, "pretrained": "none"} if wildcard == RANDOM_CONTROL else section


# ----------------------------------------------------------------------------- diffusion stage
# Keys of the diffusion section that change the trained model (not the views, not `enabled`).
DIFFUSION_TRAIN_KEYS = [
    "epochs", "batch_size", "lr", "weight_decay", "ema_decay", "num_train_timesteps", "beta_start", "beta_end",
    "block_out_channels", "layers_per_block", "attention_levels", "resnet_updown", "checkpoint_every", "amp",
    "converged_loss", "converged_mask_ratio",
]


def pretrain_diffusion(config, wc) -> Params:
    return {**torch_job(config), "diffusion": _pick(config["diffusion"], DIFFUSION_TRAIN_KEYS)}


def diffusion_views(config, wc) -> Params:
    return {**torch_job(config), "diffusion": _pick(config["diffusion"], ["views", "amp"])}


def ddad(config, wc) -> Params:
    section = random_init(_without(config["ddad"], *ANOMALY_GRID_KEYS), wc["backbone"])
    return {**torch_job(config), "protocol": config["protocol"], "ddad": section,
            "metrics": config["metrics"], "threshold_quantile": config["anomaly"]["threshold_quantile"]}


# ----------------------------------------------------------------------------- representation learning
CONTRASTIVE_TRAIN_KEYS = [
    "epochs", "batch_size", "lr", "weight_decay", "projector", "pretrained", "amp", "channels_last", "compile",
    "checkpoint_every", "schedule", "augment",
]


def method_params(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """A contrastive method's parameters: the user's ``method_params.<method>`` merged key by key
    over the method's defaults (validation filled them in from the registry's schema fragments)."""
    return config["contrastive"]["method_params"][method]


def torch_job(config) -> Params:
    """What every torch job's params start with: the device and, only when set, ``deterministic:
    true`` (the default, torch's own, adds no key, so existing results keep their params and do not
    rerun). :func:`defectbench.runtime.stage_job` applies both."""
    return {"device": config["device"], **({"deterministic": True} if config["deterministic"] else {})}


def pretrain_contrastive(config, wc) -> Params:
    method = wc["method"]
    ccfg = config["contrastive"]
    section = _pick(ccfg, CONTRASTIVE_TRAIN_KEYS)
    if "temperature" in registry.entry("contrastive_methods", method).reads:
        section["temperature"] = ccfg["temperature"]
    section["method_params"] = {method: method_params(config, method)}
    return {**torch_job(config), "protocol": config["protocol"], "contrastive": section}


def train_supervised(config, wc) -> Params:
    return {**torch_job(config), "protocol": config["protocol"], "supervised": _without(config["supervised"], "enabled")}


# Keys of the probe section each probe kind fits with (the rest are read by both kinds).
PROBE_KIND_KEYS = {
    "logistic": ["l2_grid", "val_fraction", "max_steps", "tolerance", "class_weight"],
    "linear": ["epochs", "batch_size", "lr", "weight_decay"],
}
# Keys that only decide which probe jobs exist (the controls and their backbones), never read by one.
PROBE_GRID_KEYS = ["controls", "pretrained_backbones"]


def linear_probe(config, wc) -> Params:
    # `pretrained` initialises the backbone of the 'pretrained' control only
    pcfg = config["probe"]
    other_kinds = [key for kind, keys in PROBE_KIND_KEYS.items() if kind != pcfg["kind"] for key in keys]
    drop = PROBE_GRID_KEYS + other_kinds + ([] if wc["method"] == "pretrained" else ["pretrained"])
    return {**torch_job(config), "protocol": config["protocol"], "probe": _without(pcfg, *drop)}


def budget_pretrain(config, wc) -> Params:
    """A budget-curve point's pretraining: the method's pretraining params with the point's epochs."""
    out = pretrain_contrastive(config, wc)
    out["contrastive"]["epochs"] = int(wc["epochs"])
    return out


def budget_probe(config, wc) -> Params:
    """The converged probe of a budget-curve point: what a linear_probe job of that method reads."""
    return linear_probe(config, wc)


# ----------------------------------------------------------------------------- anomaly stage
def anomaly_features(config, wc) -> Params:
    # `pretrained` initialises the backbone of the 'pretrained' control only
    keys = ["amp", "feature_batch_size"] + (["pretrained"] if wc["features"] == "pretrained" else [])
    return {**torch_job(config), "anomaly": _pick(config["anomaly"], keys)}


def _scorers(config, wc) -> list[str]:
    """The scorers a score_anomaly job runs: its {scorer} wildcard, or (one job per feature set)
    every configured scorer."""
    return [wc["scorer"]] if "scorer" in wc.keys() else list(config["anomaly"]["scorers"])


def score_anomaly(config, wc) -> Params:
    scorers = _scorers(config, wc)
    reads = sorted({key for name in scorers for key in registry.entry("anomaly_scorers", name).reads})
    keys = ["threshold_quantile", "refit_on_holdout", *reads] + (["leaky_percentile"] if config["protocol"] == "faithful" else [])
    section = _pick(config["anomaly"], keys)
    if "scorer" not in wc.keys():
        section["scorers"] = scorers
    return {"protocol": config["protocol"], "anomaly": section}


def patchcore(config, wc) -> Params:
    section = random_init(_without(config["patchcore"], *ANOMALY_GRID_KEYS), wc["backbone"])
    return {**torch_job(config), "protocol": config["protocol"], "patchcore": section,
            "metrics": config["metrics"], "threshold_quantile": config["anomaly"]["threshold_quantile"]}


# The patchcore keys the clustering embedding reads (not the coreset or scoring ones).
CLUSTERING_PATCHCORE_KEYS = ["backbone", "layers", "pretrained", "patchsize", "batch_size"]


def cluster(config, wc) -> Params:
    ccfg = config["clustering"]
    weight_keys = {key for w in ccfg["weightings"] for key in registry.entry("clustering_weightings", w).reads}
    # max_per_class only when set: the default (no cap) adds no key, so existing results keep their params
    cap = ["max_per_class"] if ccfg["max_per_class"] is not None else []
    if wc["features"] == "oracle":  # the positive control embeds labels, not images: no backbone keys
        keys = ["include_normal", *cap, *sorted(weight_keys & set(ccfg))]
        return {**torch_job(config), "protocol": config["protocol"], "clustering": _pick(ccfg, keys)}
    keys = ["include_normal", *cap, "layernorm", "pretrain_dim", "target_dim", *sorted(weight_keys & set(ccfg))]
    return {**torch_job(config), "protocol": config["protocol"], "clustering": _pick(ccfg, keys),
            "patchcore": random_init(_pick(config["patchcore"], CLUSTERING_PATCHCORE_KEYS), wc["features"])}


# ----------------------------------------------------------------------------- report stage
def aggregate(config, wc) -> Params:
    return {}


def figures(config, wc) -> Params:
    return {}


def track(config, wc) -> Params:
    return {"tracking": config["tracking"], "run_name": config["run_name"]}


STAGES: dict[str, Callable[[Mapping[str, Any], Wildcards], Params]] = {
    fn.__name__: fn for fn in (
        fetch_dataset, build_manifest, make_split, build_cache, pretrain_diffusion, diffusion_views, ddad,
        pretrain_contrastive, train_supervised, linear_probe, budget_pretrain, budget_probe, anomaly_features,
        score_anomaly, patchcore, cluster, aggregate, figures, track,
    )
}
# Rule -> the registered implementations its job calls (dispatched by name, so not visible to the
# import parser): (family, names).
IMPLEMENTATIONS: dict[str, Callable[[Mapping[str, Any], Wildcards], tuple[str, list[str]]]] = {
    "pretrain_contrastive": lambda config, wc: ("contrastive_methods", [wc["method"]]),
    "budget_pretrain": lambda config, wc: ("contrastive_methods", [wc["method"]]),
    "score_anomaly": lambda config, wc: ("anomaly_scorers", _scorers(config, wc)),
}


def job_code(rule: str, config: Mapping[str, Any], wc: Wildcards, scripts_dir: str | Path = SCRIPTS_DIR) -> str:
    """Fingerprint of what the rule's script imports plus the job's registered implementations."""
    modules = list(script_imports(Path(scripts_dir) / f"{rule}.py"))
    if rule in IMPLEMENTATIONS:
        family, names = IMPLEMENTATIONS[rule](config, wc)
        modules += [registry.entry(family, name).implementation.partition(":")[0] for name in names]
    return code_fingerprint(modules)


def job_params(rule: str, config: Mapping[str, Any], wc: Wildcards, scripts_dir: str | Path = SCRIPTS_DIR) -> Params:
    """``params.cfg`` of one job of ``rule``: what it reads, plus its code fingerprint."""
    if rule not in STAGES:
        raise DefectbenchError(f"params: no params function for rule {rule!r}; add one to defectbench/params.py")
    return {**STAGES[rule](config, wc), "code": job_code(rule, config, wc, scripts_dir)}
