# Helpers of the diffusion stage (rules/diffusion.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


def anomaly_masks(wildcards):
    """The masks for the convergence report: only the anomaly task's model never saw a defect."""
    if wildcards.task != "anomaly":
        return {}
    return {"masks": paths.masks(wildcards.dataset, image_size(wildcards.dataset))}


def ddad_datasets():
    return datasets_with("anomaly") if config["diffusion"]["enabled"] and config["ddad"]["enabled"] else []


@register_targets
def ddad_targets():
    # ddad.controls adds the random-init control ('random': the feature backbone with pretrained none)
    return expand(paths.job("ddad", "metrics.json"), backbone=[config["ddad"]["feature_backbone"], *config["ddad"]["controls"]],
                  dataset=ddad_datasets(), seed=SEEDS)


@register_targets
def diffusion_targets():
    """The pretraining record of every diffusion model the grid uses: DDAD's and the views'."""
    if not config["diffusion"]["enabled"]:
        return []
    out = expand(paths.job("diffusion", "metrics.json", task="anomaly"), dataset=ddad_datasets(), seed=SEEDS)
    method_params = config["contrastive"]["method_params"]
    if any(registry.reads_views(m, method_params[m], True) for m in config["contrastive"]["methods"]):
        out += expand(paths.job("diffusion", "metrics.json", task="classification"),
                      dataset=datasets_with("classification"), seed=SEEDS)
    return out
