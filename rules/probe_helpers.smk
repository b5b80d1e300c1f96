# Helpers of the probe stage (rules/probe.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


LABEL_PCTS = [pct(f) for f in sorted(config["label_fractions"])]


def probe_inputs(wildcards):
    ds = wildcards.dataset
    out = {
        "cache": cache_path(ds),
        "split": split_path(ds, "classification", wildcards.seed),
        "manifest": f"results/data/{ds}/manifest.parquet",
    }
    # a contrastive method's encoder and its pretraining record; controls read neither
    if "encoder" in registry.entry("feature_sources", wildcards.method).reads:
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
