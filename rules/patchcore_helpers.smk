# Helpers of the patchcore stage (rules/patchcore.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


def patchcore_inputs(wildcards):
    size = patchcore_size(wildcards.dataset)
    return {**cache_and_split(wildcards, "anomaly", size), "masks": paths.masks(wildcards.dataset, size)}


@register_targets
def patchcore_targets():
    if not config["patchcore"]["enabled"]:
        return []
    return expand(
        paths.job("patchcore", "metrics.json"),
        # patchcore.controls adds the random-init control ('random': the backbone with pretrained none)
        backbone=[config["patchcore"]["backbone"], *config["patchcore"]["controls"]],
        dataset=datasets_with("anomaly"),
        seed=SEEDS,
    )
