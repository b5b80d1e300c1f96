# Helpers of the probe stage (rules/probe.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


PROBE_HEAD = (
    {"head": "results/probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}/probe.pt"}
    if config["probe"]["kind"] == "linear"
    else {}
)


def probe_methods():
    return contrastive_methods() + (["pretrained"] if config["probe"]["include_pretrained"] else [])


def probe_inputs(wildcards):
    ds = wildcards.dataset
    out = {
        "cache": cache_path(ds),
        "split": split_path(ds, "classification", wildcards.seed),
        "manifest": f"results/data/{ds}/manifest.parquet",
    }
    if wildcards.method != "pretrained":
        out["encoder"] = (
            f"results/pretrain/{wildcards.method}/{ds}/classification/{wildcards.backbone}/seed{wildcards.seed}/encoder.pt"
        )
    return out


@register_targets
def probe_targets():
    return expand(
        "results/probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}/metrics.json",
        method=probe_methods(),
        dataset=datasets_with("classification"),
        backbone=BACKBONES,
        seed=SEEDS,
        pct=[pct(f) for f in config["label_fractions"]],
    )
