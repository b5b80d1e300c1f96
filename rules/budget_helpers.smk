# Helpers of the budget curve (rules/budget.smk): its registered final targets. Kept apart from
# the rules (snakemake --lint: no functions beside rules).


@register_targets
def budget_targets():
    """One probe per (epochs, image size, seed) of budget.method on budget.dataset (first backbone)."""
    budget = config["budget"]
    if not budget["method"]:
        return []
    return expand(
        paths.job("budget", "labels100/metrics.json"),
        method=budget["method"], dataset=budget["dataset"], backbone=BACKBONES[0], seed=SEEDS,
        epochs=budget["epochs"], size=budget["image_sizes"],
    )
