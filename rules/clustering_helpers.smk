# Helpers of the clustering stage (rules/clustering.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


CLUSTER_WEIGHTINGS = config["clustering"]["weightings"]


def cluster_inputs(wildcards):
    out = {**cache_and_split(wildcards, "clustering", patchcore_size(wildcards.dataset)),
           "manifest": paths.manifest(wildcards.dataset)}
    if any("references" in registry.entry("clustering_weightings", w).reads for w in CLUSTER_WEIGHTINGS):
        out["references"] = paths.split(wildcards.dataset, "anomaly", wildcards.seed)
    return out


def cluster_outputs(file):
    """`file` of every configured weighting of one cluster job."""
    return expand(paths.job("clustering", file), weighting=CLUSTER_WEIGHTINGS, allow_missing=True)


@register_targets
def clustering_targets():
    # clustering.features is validated against registry.CLUSTERING_FEATURES ('patchcore' only: the
    # patch embeddings of patchcore.backbone); clustering.controls adds control rows ('oracle':
    # label-made features, the positive control; 'random': patchcore.backbone at random init).
    return expand(
        paths.job("clustering", "metrics.json"),
        weighting=CLUSTER_WEIGHTINGS,
        features=[config["patchcore"]["backbone"], *config["clustering"]["controls"]],
        dataset=datasets_with("clustering"),
        seed=SEEDS,
    )
