# Helpers shared by all stage files: config validation, the experiment grid, config slices.
# Rule files register a function returning their final targets with `register_targets`;
# `rule all` collects them, so adding a stage never edits another stage's file.
import math
from pathlib import Path

from defectbench import __version__ as CODE_VERSION
from defectbench.config import validate_config

# Validate (and fill defaults) before any job is scheduled: a bad value stops here with its key path.
validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")

DATASETS = config["datasets"]
SEEDS = config["seeds"]
BACKBONES = config["backbones"]
PROTOCOL = config["protocol"]
_TARGET_FUNCS = []


wildcard_constraints:
    dataset="[a-z0-9_]+",
    seed=r"\d+",
    size=r"\d+",
    task="classification|anomaly|clustering",
    backbone="[a-z0-9_]+",
    method="[a-z0-9_]+",
    pct=r"[0-9.]+",


def register_targets(func):
    """Decorator: func() -> list of final outputs of one stage."""
    _TARGET_FUNCS.append(func)
    return func


def all_targets():
    return [t for func in _TARGET_FUNCS for t in func()]


def datasets_with(task):
    """Names of datasets whose `tasks` include `task`."""
    return [name for name, ds in DATASETS.items() if task in ds["tasks"]]


def image_size(dataset):
    return DATASETS[dataset]["image_size"]


def pct(fraction):
    """Label fraction -> wildcard text: 0.1 -> '10', 0.01 -> '1', 0.005 -> '0.5'."""
    return f"{fraction * 100:g}"


def fraction(pct_text):
    return float(pct_text) / 100.0


def contrastive_methods():
    """The configured contrastive methods; DiffCL only when diffusion is enabled (it needs the views)."""
    return [m for m in config["contrastive"]["methods"] if m != "diffcl" or config["diffusion"]["enabled"]]


def config_slice(*sections, **extra):
    """The params of one job: its config sections plus the code version and protocol.

    Snakemake's params rerun trigger compares these, so a job reruns exactly when a value it
    reads (or the library's code version) changes.
    """
    out = {"code_version": CODE_VERSION, "protocol": PROTOCOL, "device": config["device"]}
    for section in sections:
        out[section] = config[section]
    out.update(extra)
    return out


def dataset_slice(wildcards):
    """A dataset's own config entry (source, layout, sizes) as a params value."""
    return DATASETS[wildcards.dataset]


def log_path(rule_name, wildcards_text):
    return f"logs/{rule_name}/{wildcards_text}.log"


# ----------------------------------------------------------------- data stage (data.smk)
def data_params(keys):
    """params function: config_slice with the dataset entry restricted to `keys`.

    protocol/device (added by config_slice for every stage) do not change any data file, so they
    are dropped: switching protocol must not re-extract and re-decode every dataset.
    """

    def params(wildcards):
        entry = DATASETS[wildcards.dataset]
        cfg = config_slice(dataset={k: entry[k] for k in keys if k in entry})
        cfg.pop("protocol", None)
        cfg.pop("device", None)
        return cfg

    return params


@register_targets
def data_targets():
    """Every dataset's manifest, its splits (tasks x seeds) and its cache at image_size."""
    out = []
    for name, entry in DATASETS.items():
        out.append(f"results/data/{name}/manifest.parquet")
        out += [f"results/data/{name}/splits/{task}-seed{seed}.parquet" for task in entry["tasks"] for seed in SEEDS]
        out += [f"results/data/{name}/{kind}-{entry['image_size']}.npy" for kind in ("cache", "masks")]
    return out


# ----------------------------------------------------------------- pretrain stage (pretrain.smk)
def _reads_views(method):
    if not config["diffusion"]["enabled"]:
        return False
    params = config["contrastive"]["method_params"]
    return method == "diffcl" or (method == "fairkl" and params.get("fairkl", {}).get("use_views", False))


def pretrain_inputs(wildcards):
    ds = wildcards.dataset
    out = {
        "cache": f"results/data/{ds}/cache-{image_size(ds)}.npy",
        "split": f"results/data/{ds}/splits/{wildcards.task}-seed{wildcards.seed}.parquet",
    }
    if _reads_views(wildcards.method):
        out["views"] = f"results/pretrain/diffusion/{ds}/{wildcards.task}/seed{wildcards.seed}/views.npy"
    return out


@register_targets
def pretrain_targets():
    pattern = "results/pretrain/{method}/{dataset}/{task}/{backbone}/seed{seed}/metrics.json"
    methods = contrastive_methods()
    targets = expand(pattern, method=methods, dataset=datasets_with("classification"), task="classification",
                     backbone=BACKBONES, seed=SEEDS)
    anomaly_methods = [m for m in config["anomaly"]["features"] if m in CONTRASTIVE_METHOD_NAMES and m in methods]
    # Anomaly scorers read features of the first backbone only (anomaly.smk), so only it is trained.
    targets += expand(pattern, method=anomaly_methods, dataset=datasets_with("anomaly"), task="anomaly",
                      backbone=BACKBONES[:1], seed=SEEDS)
    return targets


@register_targets
def supervised_targets():
    if not config["supervised"]["enabled"]:
        return []
    return expand(
        "results/supervised/{dataset}/{backbone}/seed{seed}/labels{pct}/metrics.json",
        dataset=datasets_with("classification"),
        backbone=BACKBONES,
        seed=SEEDS,
        pct=[pct(f) for f in config["label_fractions"]],
    )


# ----------------------------------------------------------------- diffusion stage (diffusion.smk)
def _without_protocol(cfg):
    cfg.pop("protocol", None)  # no diffusion model or view depends on the evaluation protocol
    return cfg


def diffusion_data(task):
    """Input function: the cache and the `task` split (task from the wildcard when None)."""

    def inputs(wildcards):
        ds = wildcards.dataset
        t = task or wildcards.task
        return {
            "cache": f"results/data/{ds}/cache-{image_size(ds)}.npy",
            "split": f"results/data/{ds}/splits/{t}-seed{wildcards.seed}.parquet",
        }

    return inputs


@register_targets
def diffusion_targets():
    """DDAD metrics, and the pretraining record of every diffusion model the grid uses."""
    if not config["diffusion"]["enabled"]:
        return []
    out = []
    anomaly = datasets_with("anomaly") if config["ddad"]["enabled"] else []
    out += expand(f"{DDAD_DIR}/metrics.json", backbone=config["ddad"]["feature_backbone"], dataset=anomaly, seed=SEEDS)
    out += expand(f"{DIFFUSION_DIR}/metrics.json", dataset=anomaly, task="anomaly", seed=SEEDS)
    if "diffcl" in config["contrastive"]["methods"]:
        out += expand(f"{DIFFUSION_DIR}/metrics.json", dataset=datasets_with("classification"),
                      task="classification", seed=SEEDS)
    return out


# ----------------------------------------------------------------- probe stage (probe.smk)
# Feature sources that need no training: table rows beside the methods, produced by the same
# rules (defectbench.features.CONTROL_SOURCES; not imported: it would load torch in every call).
CONTROLS = ("random", "pretrained")
LABEL_PCTS = [pct(f) for f in sorted(config["label_fractions"])]


def probe_inputs(wildcards):
    ds = wildcards.dataset
    out = {
        "cache": f"results/data/{ds}/cache-{image_size(ds)}.npy",
        "split": f"results/data/{ds}/splits/classification-seed{wildcards.seed}.parquet",
        "manifest": f"results/data/{ds}/manifest.parquet",
    }
    if wildcards.method not in CONTROLS:
        job = f"results/pretrain/{wildcards.method}/{ds}/classification/{wildcards.backbone}/seed{wildcards.seed}"
        out["encoder"] = f"{job}/encoder.pt"
        out["pretrain_metrics"] = f"{job}/metrics.json"
    return out


@register_targets
def probe_targets():
    """Every label fraction of every (method or control) x dataset x backbone x seed."""
    pattern = "results/probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}/metrics.json"
    grid = dict(dataset=datasets_with("classification"), seed=SEEDS, pct=LABEL_PCTS)
    controls = config["probe"]["controls"]
    out = expand(pattern, method=contrastive_methods() + [c for c in controls if c == "random"], backbone=BACKBONES, **grid)
    if "pretrained" in controls:
        out += expand(pattern, method="pretrained", backbone=config["probe"]["pretrained_backbones"] or BACKBONES, **grid)
    return out


# ----------------------------------------------------------------- anomaly stage (anomaly.smk)
def anomaly_backbone(features):
    """The backbone a feature source's scorers read: anomaly.pretrained_backbone for the
    'pretrained' control when set (weights may exist for another backbone only), else the first
    of `backbones`."""
    if features == "pretrained" and config["anomaly"]["pretrained_backbone"]:
        return config["anomaly"]["pretrained_backbone"]
    return BACKBONES[0]


def anomaly_feature_params(wildcards):
    cfg = config_slice(anomaly={k: config["anomaly"][k] for k in ANOMALY_FEATURE_KEYS})
    cfg.pop("protocol", None)  # the protocol never changes features
    return cfg


def anomaly_feature_inputs(wildcards):
    ds = wildcards.dataset
    out = {
        "cache": f"results/data/{ds}/cache-{image_size(ds)}.npy",
        "split": f"results/data/{ds}/splits/anomaly-seed{wildcards.seed}.parquet",
    }
    if wildcards.features not in CONTROLS:
        out["encoder"] = (
            f"results/pretrain/{wildcards.features}/{ds}/anomaly/{wildcards.backbone}/seed{wildcards.seed}/encoder.pt"
        )
    return out


@register_targets
def anomaly_targets():
    return expand(
        "results/anomaly/{scorer}/{features}/{dataset}/seed{seed}/metrics.json",
        scorer=config["anomaly"]["scorers"],
        # DiffCL features need the diffusion views: dropped when diffusion is disabled.
        features=[f for f in config["anomaly"]["features"] if f != "diffcl" or config["diffusion"]["enabled"]],
        dataset=datasets_with("anomaly"),
        seed=SEEDS,
    )


# ----------------------------------------------------------------- patchcore stage (patchcore.smk)
def patchcore_size(dataset):
    """patchcore.image_size, or the dataset's image_size when null."""
    return config["patchcore"]["image_size"] or image_size(dataset)


def patchcore_inputs(wildcards):
    ds, size = wildcards.dataset, patchcore_size(wildcards.dataset)
    return {
        "cache": f"results/data/{ds}/cache-{size}.npy",
        "masks": f"results/data/{ds}/masks-{size}.npy",
        "split": f"results/data/{ds}/splits/anomaly-seed{wildcards.seed}.parquet",
    }


@register_targets
def patchcore_targets():
    if not config["patchcore"]["enabled"]:
        return []
    return expand(
        "results/anomaly/patchcore/{backbone}/{dataset}/seed{seed}/metrics.json",
        backbone=config["patchcore"]["backbone"],
        dataset=datasets_with("anomaly"),
        seed=SEEDS,
    )


# ----------------------------------------------------------------- clustering stage (clustering.smk)
def cluster_inputs(wildcards):
    ds, size = wildcards.dataset, patchcore_size(wildcards.dataset)
    out = {
        "cache": f"results/data/{ds}/cache-{size}.npy",
        "manifest": f"results/data/{ds}/manifest.parquet",
        "split": f"results/data/{ds}/splits/clustering-seed{wildcards.seed}.parquet",
    }
    if "supervised" in CLUSTER_WEIGHTINGS:
        out["references"] = f"results/data/{ds}/splits/anomaly-seed{wildcards.seed}.parquet"
    return out


@register_targets
def clustering_targets():
    if config["clustering"]["features"] != "patchcore":
        return []
    return expand(
        "results/clustering/{weighting}/{features}/{dataset}/seed{seed}/metrics.json",
        weighting=CLUSTER_WEIGHTINGS,
        features=config["patchcore"]["backbone"],
        dataset=datasets_with("clustering"),
        seed=SEEDS,
    )


# ----------------------------------------------------------------- budget curve (budget.smk)
def budget_pretrain_params(wildcards):
    """The contrastive section with this point's epochs: each point is its own job and params."""
    cfg = config_slice("contrastive")
    cfg["contrastive"] = {**config["contrastive"], "epochs": int(wildcards.epochs)}
    return cfg


@register_targets
def budget_targets():
    """One probe per (epochs, image size, seed) of budget.method on budget.dataset (first backbone)."""
    budget = config["budget"]
    if not budget["method"]:
        return []
    return expand(
        "results/budget/{method}/{dataset}/{backbone}/seed{seed}/e{epochs}-px{size}/labels100/metrics.json",
        method=budget["method"], dataset=budget["dataset"], backbone=BACKBONES[0], seed=SEEDS,
        epochs=budget["epochs"], size=budget["image_sizes"],
    )
