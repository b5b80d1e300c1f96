# Helpers of the anomaly stage (rules/anomaly.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


def anomaly_backbone(features):
    """The backbone a feature source's scorers read: anomaly.pretrained_backbone for the
    'pretrained' control when set (weights may exist for another backbone only), else the first
    of `backbones`."""
    if features == "pretrained" and config["anomaly"]["pretrained_backbone"]:
        return config["anomaly"]["pretrained_backbone"]
    return BACKBONES[0]


def anomaly_feature_inputs(wildcards):
    ds = wildcards.dataset
    out = {"cache": cache_path(ds), "split": split_path(ds, "anomaly", wildcards.seed)}
    if "encoder" in registry.entry("feature_sources", wildcards.features).reads:
        out["encoder"] = (
            f"results/pretrain/{wildcards.features}/{ds}/anomaly/{wildcards.backbone}/seed{wildcards.seed}/encoder.pt"
        )
    return out


@register_targets
def anomaly_targets():
    return expand(
        "results/anomaly/{scorer}/{features}/{dataset}/seed{seed}/metrics.json",
        scorer=config["anomaly"]["scorers"],
        # Features of a method that needs the diffusion views: dropped when diffusion is disabled.
        features=[
            f for f in config["anomaly"]["features"]
            if "encoder" not in registry.entry("feature_sources", f).reads or f in contrastive_methods()
        ],
        dataset=datasets_with("anomaly"),
        seed=SEEDS,
    )
