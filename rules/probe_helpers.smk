# Helpers of the probe stage (rules/probe.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


LABEL_PCTS = [pct(f) for f in sorted(config["label_fractions"])]


def probe_outputs(file):
    """`file` of every label fraction of one probe job (the job evaluates them all)."""
    return expand(paths.job("probe", file), pct=LABEL_PCTS, allow_missing=True)


def probe_inputs(wildcards):
    out = {**cache_and_split(wildcards, "classification"), "manifest": paths.manifest(wildcards.dataset)}
    # a contrastive method's encoder and its pretraining record; controls read neither
    if "encoder" in registry.entry("feature_sources", wildcards.method).reads:
        job = dict(method=wildcards.method, dataset=wildcards.dataset, task="classification",
                   backbone=wildcards.backbone, seed=wildcards.seed)
        out["encoder"] = paths.job("pretrain", "encoder.pt", **job)
        out["pretrain_metrics"] = paths.job("pretrain", "metrics.json", **job)
    return out


@register_targets
def probe_targets():
    """Every label fraction of every (method or control) x dataset x backbone x seed."""
    pattern = paths.job("probe", "metrics.json")
    grid = dict(dataset=datasets_with("classification"), seed=SEEDS, pct=LABEL_PCTS)
    controls = config["probe"]["controls"]
    out = expand(pattern, method=contrastive_methods() + [c for c in controls if c == "random"], backbone=BACKBONES, **grid)
    if "pretrained" in controls:
        out += expand(pattern, method="pretrained", backbone=config["probe"]["pretrained_backbones"] or BACKBONES, **grid)
    return out
