# Helpers of the pretrain stage (rules/pretrain.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


def pretrain_inputs(wildcards):
    ds, method = wildcards.dataset, wildcards.method
    out = {"cache": cache_path(ds), "split": split_path(ds, wildcards.task, wildcards.seed)}
    if registry.reads_views(method, config["contrastive"]["method_params"][method], config["diffusion"]["enabled"]):
        out["views"] = f"results/pretrain/diffusion/{ds}/{wildcards.task}/seed{wildcards.seed}/views.npy"
    return out


@register_targets
def pretrain_targets():
    pattern = "results/pretrain/{method}/{dataset}/{task}/{backbone}/seed{seed}/metrics.json"
    methods = contrastive_methods()
    targets = expand(pattern, method=methods, dataset=datasets_with("classification"), task="classification",
                     backbone=BACKBONES, seed=SEEDS)
    anomaly_methods = [m for m in config["anomaly"]["features"] if m in methods]
    # Anomaly scorers read features of the first backbone only (anomaly.smk), so only it is trained.
    targets += expand(pattern, method=anomaly_methods, dataset=datasets_with("anomaly"), task="anomaly",
                      backbone=BACKBONES[:1], seed=SEEDS)
    return targets


@register_targets
def supervised_targets():
    if not config["supervised"]["enabled"]:
        return []
    return expand(
        "results/supervised/{dataset}/{backbone}/seed{seed}/labels{pct}/metrics.json",
        dataset=datasets_with("classification"),
        backbone=BACKBONES,
        seed=SEEDS,
        pct=[pct(f) for f in config["label_fractions"]],
    )
