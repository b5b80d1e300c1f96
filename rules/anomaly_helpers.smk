# Helpers of the anomaly stage (rules/anomaly.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


ANOMALY_BACKBONE = BACKBONES[0]


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
        features=[f for f in config["anomaly"]["features"] if f == "pretrained" or f in contrastive_methods()],
        dataset=datasets_with("anomaly"),
        seed=SEEDS,
    )
