# Helpers of the diffusion stage (rules/diffusion.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


DIFFUSION_DIR = "results/pretrain/diffusion/{dataset}/{task}/seed{seed}"
DDAD_DIR = "results/anomaly/ddad/{backbone}/{dataset}/seed{seed}"


def diffusion_data(task):
    """Input function: the cache and the `task` split (task from the wildcard when None)."""

    def inputs(wildcards):
        return {
            "cache": cache_path(wildcards.dataset),
            "split": split_path(wildcards.dataset, task or wildcards.task, wildcards.seed),
        }

    return inputs


def _anomaly_masks(wildcards):
    """The masks for the convergence report: only the anomaly task's model never saw a defect."""
    if wildcards.task != "anomaly":
        return {}
    return {"masks": f"results/data/{wildcards.dataset}/masks-{image_size(wildcards.dataset)}.npy"}


@register_targets
def diffusion_targets():
    """DDAD metrics, and the pretraining record of every diffusion model the grid uses."""
    if not config["diffusion"]["enabled"]:
        return []
    out = []
    anomaly = datasets_with("anomaly") if config["ddad"]["enabled"] else []
    out += expand(f"{DDAD_DIR}/metrics.json", backbone=config["ddad"]["feature_backbone"], dataset=anomaly, seed=SEEDS)
    out += expand(f"{DIFFUSION_DIR}/metrics.json", dataset=anomaly, task="anomaly", seed=SEEDS)
    method_params = config["contrastive"]["method_params"]
    if any(registry.reads_views(m, method_params[m], True) for m in config["contrastive"]["methods"]):
        out += expand(f"{DIFFUSION_DIR}/metrics.json", dataset=datasets_with("classification"),
                      task="classification", seed=SEEDS)
    return out
