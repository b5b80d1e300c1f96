# Helpers of the patchcore stage (rules/patchcore.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


def patchcore_size(dataset):
    """patchcore.image_size, or the dataset's image_size when null."""
    return config["patchcore"]["image_size"] or image_size(dataset)


def patchcore_inputs(wildcards):
    ds, size = wildcards.dataset, patchcore_size(wildcards.dataset)
    return {
        "cache": cache_path(ds, size),
        "masks": f"results/data/{ds}/masks-{size}.npy",
        "split": split_path(ds, "anomaly", wildcards.seed),
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
