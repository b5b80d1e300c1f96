# Helpers of the clustering stage (rules/clustering.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


CLUSTER_WEIGHTINGS = config["clustering"]["weightings"]


def cluster_inputs(wildcards):
    ds, size = wildcards.dataset, patchcore_size(wildcards.dataset)
    out = {
        "cache": cache_path(ds, size),
        "manifest": f"results/data/{ds}/manifest.parquet",
        "split": split_path(ds, "clustering", wildcards.seed),
    }
    if any("references" in registry.entry("clustering_weightings", w).reads for w in CLUSTER_WEIGHTINGS):
        out["references"] = split_path(ds, "anomaly", wildcards.seed)
    return out


@register_targets
def clustering_targets():
    # clustering.features is validated against registry.CLUSTERING_FEATURES ('patchcore' only);
    # clustering.controls adds the positive control's rows ('oracle': label-made features).
    return expand(
        "results/clustering/{weighting}/{features}/{dataset}/seed{seed}/metrics.json",
        weighting=CLUSTER_WEIGHTINGS,
        features=[config["patchcore"]["backbone"], *config["clustering"]["controls"]],
        dataset=datasets_with("clustering"),
        seed=SEEDS,
    )
