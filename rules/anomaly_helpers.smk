# Helpers of the anomaly stage (rules/anomaly.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).

# One job per feature source runs every configured scorer (each takes less than a job's start-up);
# each scorer keeps its own outputs. Adding a scorer reruns that job, not the feature extraction.
ANOMALY_SCORERS = config["anomaly"]["scorers"]


def anomaly_backbone(features):
    """The backbone a feature source's scorers read: anomaly.pretrained_backbone for the
    'pretrained' control when set (weights may exist for another backbone only), else the first
    of `backbones`."""
    if features == "pretrained" and config["anomaly"]["pretrained_backbone"]:
        return config["anomaly"]["pretrained_backbone"]
    return BACKBONES[0]


def anomaly_feature_inputs(wildcards):
    out = cache_and_split(wildcards, "anomaly")
    # a contrastive method's encoder, pretrained on the anomaly split; controls read none
    if "encoder" in registry.entry("feature_sources", wildcards.features).reads:
        out["encoder"] = paths.job("pretrain", "encoder.pt", method=wildcards.features, dataset=wildcards.dataset,
                                   task="anomaly", backbone=wildcards.backbone, seed=wildcards.seed)
    return out


def scorer_inputs(wildcards):
    """The features of the job's feature source (on its anomaly_backbone) and the anomaly split."""
    job = dict(features=wildcards.features, backbone=anomaly_backbone(wildcards.features), dataset=wildcards.dataset,
               seed=wildcards.seed)
    return {
        "features": paths.job("anomaly_features", "features.npz", **job),
        "info": paths.job("anomaly_features", "features.npz.json", **job),
        "split": paths.split(wildcards.dataset, "anomaly", wildcards.seed),
    }


def scorer_outputs(file):
    """`file` of every configured scorer of one score_anomaly job, in the order of ANOMALY_SCORERS."""
    return expand(paths.job("scorer", file), scorer=ANOMALY_SCORERS, allow_missing=True)


@register_targets
def anomaly_targets():
    return expand(
        paths.job("scorer", "metrics.json"),
        scorer=ANOMALY_SCORERS,
        # Features of a method that needs the diffusion views: dropped when diffusion is disabled.
        features=[
            f for f in config["anomaly"]["features"]
            if "encoder" not in registry.entry("feature_sources", f).reads or f in contrastive_methods()
        ],
        dataset=datasets_with("anomaly"),
        seed=SEEDS,
    )
