# Budget curve: one contrastive method (budget.method) on one classification dataset
# (budget.dataset) over budget.epochs x budget.image_sizes, from this one config section. Every
# point pretrains the method at that budget (budget_pretrain) and probes it with the converged
# probe on all train labels (budget_probe); its metrics.json is a classification-table row with
# keys budget_epochs and image_size, and the figure budget--<dataset>.png plots it against the
# pretraining optimiser steps. Library: defectbench.ssl.pretrain, defectbench.probe.

BUDGET_DIR = "results/budget/{method}/{dataset}/{backbone}/seed{seed}/e{epochs}-px{size}"


include: "budget_helpers.smk"


rule budget_pretrain:
    input:
        cache="results/data/{dataset}/cache-{size}.npy",
        split="results/data/{dataset}/splits/classification-seed{seed}.parquet",
    output:
        encoder=f"{BUDGET_DIR}/encoder.pt",
        history=f"{BUDGET_DIR}/history.parquet",
        metrics=f"{BUDGET_DIR}/pretraining.json",
    wildcard_constraints:
        method=registry.wildcard_pattern("contrastive_methods"),
        epochs=r"\d+",
    params:
        cfg=job_params("budget_pretrain"),
    threads: 2
    log:
        "logs/budget_pretrain/{method}/{dataset}/{backbone}/seed{seed}/e{epochs}-px{size}.log",
    benchmark:
        "logs/benchmarks/budget_pretrain/{method}/{dataset}/{backbone}/seed{seed}/e{epochs}-px{size}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/budget_pretrain.py"


rule budget_probe:
    input:
        cache="results/data/{dataset}/cache-{size}.npy",
        split="results/data/{dataset}/splits/classification-seed{seed}.parquet",
        manifest="results/data/{dataset}/manifest.parquet",
        encoder=f"{BUDGET_DIR}/encoder.pt",
        pretrain_metrics=f"{BUDGET_DIR}/pretraining.json",
    output:
        metrics=f"{BUDGET_DIR}/labels100/metrics.json",
        predictions=f"{BUDGET_DIR}/labels100/predictions.parquet",
        history=f"{BUDGET_DIR}/labels100/history.parquet",
        head=f"{BUDGET_DIR}/labels100/probe.pt",
    wildcard_constraints:
        method=registry.wildcard_pattern("contrastive_methods"),
        epochs=r"\d+",
    params:
        cfg=job_params("budget_probe"),
    threads: 2
    log:
        "logs/budget_probe/{method}/{dataset}/{backbone}/seed{seed}/e{epochs}-px{size}.log",
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/budget_probe.py"
