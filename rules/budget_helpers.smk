# Helpers of the budget curve (rules/budget.smk): its registered final targets. Kept apart from
# the rules (snakemake --lint: no functions beside rules).


def budget_pretrain_inputs(wildcards):
    """The classification split at the point's size; a method reading diffusion views (config.py
    allows it only at the dataset's image_size) also reads the main grid's views of that seed."""
    out = cache_and_split(wildcards, "classification", wildcards.size)
    method = wildcards.method
    if registry.reads_views(method, config["contrastive"]["method_params"][method], config["diffusion"]["enabled"]):
        out["views"] = paths.job("diffusion", "views.npy", dataset=wildcards.dataset, task="classification",
                                 seed=wildcards.seed)
    return out


@register_targets
def budget_targets():
    """One probe per (method, epochs, image size, seed) of budget.methods on budget.dataset (first backbone)."""
    budget = config["budget"]
    return expand(
        paths.job("budget", "labels100/metrics.json"),
        method=budget["methods"], dataset=budget["dataset"], backbone=BACKBONES[0], seed=SEEDS,
        epochs=budget["epochs"], size=budget["image_sizes"],
    )
