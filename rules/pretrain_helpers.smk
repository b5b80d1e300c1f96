# Helpers of the pretrain stage (rules/pretrain.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


def pretrain_inputs(wildcards):
    out = cache_and_split(wildcards)
    method = wildcards.method
    if registry.reads_views(method, config["contrastive"]["method_params"][method], config["diffusion"]["enabled"]):
        out["views"] = paths.job("diffusion", "views.npy", dataset=wildcards.dataset, task=wildcards.task,
                                 seed=wildcards.seed)
    return out


@register_targets
def classification_pretrain_targets():
    """Every contrastive method x classification dataset x backbone x seed."""
    return expand(paths.job("pretrain", "metrics.json", task="classification"), method=contrastive_methods(),
                  dataset=datasets_with("classification"), backbone=BACKBONES, seed=SEEDS)


@register_targets
def anomaly_pretrain_targets():
    """The anomaly.features that are contrastive methods, on the anomaly datasets' nominal train images."""
    methods = [m for m in config["anomaly"]["features"] if m in contrastive_methods()]
    # Anomaly scorers read features of the first backbone only (anomaly.smk), so only it is trained.
    return expand(paths.job("pretrain", "metrics.json", task="anomaly"), method=methods,
                  dataset=datasets_with("anomaly"), backbone=BACKBONES[:1], seed=SEEDS)


@register_targets
def supervised_targets():
    if not config["supervised"]["enabled"]:
        return []
    return expand(
        paths.job("supervised", "metrics.json"),
        dataset=datasets_with("classification"),
        backbone=BACKBONES,
        seed=SEEDS,
        pct=[pct(f) for f in config["label_fractions"]],
    )
