# Budget curve: contrastive methods (budget.methods) on one classification dataset
# (budget.dataset) over budget.epochs x budget.image_sizes, from this one config section. Every
# point pretrains a method at that budget (budget_pretrain; DiffCL with the main grid's diffusion
# views of the same seed) and probes it with the converged probe on all train labels
# (budget_probe); its metrics.json is a classification-table row with keys budget_epochs and
# image_size, and the figure budget--<dataset>.png plots it against the pretraining optimiser steps. Library: defectbench.ssl.pretrain, defectbench.probe.

include: "budget_helpers.smk"


rule budget_pretrain:
    input:
        unpack(budget_pretrain_inputs),
    output:
        encoder=paths.job("budget", "encoder.pt"),
        history=paths.job("budget", "history.parquet"),
        metrics=paths.job("budget", "pretraining.json"),
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
        cache=paths.cache(),
        split=paths.split(task="classification"),
        manifest=paths.manifest(),
        encoder=paths.job("budget", "encoder.pt"),
        pretrain_metrics=paths.job("budget", "pretraining.json"),
    output:
        metrics=paths.job("budget", "labels100/metrics.json"),
        predictions=paths.job("budget", "labels100/predictions.parquet"),
        history=paths.job("budget", "labels100/history.parquet"),
        head=paths.job("budget", "labels100/probe.pt"),
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
