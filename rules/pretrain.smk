# Representation learning (specs A.2-A.4, C.1): contrastive pretraining (the registered methods,
# one loop, one loss function each) and the supervised baseline.
# Library: defectbench.ssl.pretrain.pretrain_contrastive, defectbench.supervised.train_supervised.
#
# pretrain_contrastive: every method in contrastive.methods x classification dataset x backbone x
# seed on the classification split's train subset; plus task=anomaly (nominal train images only)
# for anomaly datasets and the anomaly.features that are contrastive methods. DiffCL (and FairKL
# with method_params.fairkl.use_views) also reads the diffusion views of the same split.


include: "pretrain_helpers.smk"


rule pretrain_contrastive:
    input:
        unpack(pretrain_inputs),
    output:
        encoder=paths.job("pretrain", "encoder.pt"),
        history=paths.job("pretrain", "history.parquet"),
        metrics=paths.job("pretrain", "metrics.json"),
    wildcard_constraints:
        method=registry.wildcard_pattern("contrastive_methods"),
    params:
        cfg=job_params("pretrain_contrastive"),
    threads: 2
    log:
        "logs/pretrain_contrastive/{method}/{dataset}/{task}/{backbone}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/pretrain_contrastive/{method}/{dataset}/{task}/{backbone}/seed{seed}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/pretrain_contrastive.py"


rule train_supervised:
    input:
        unpack(lambda wildcards: cache_and_split(wildcards, "classification")),
    output:
        model=paths.job("supervised", "model.pt"),
        predictions=paths.job("supervised", "predictions.parquet"),
        history=paths.job("supervised", "history.parquet"),
        metrics=paths.job("supervised", "metrics.json"),
    params:
        cfg=job_params("train_supervised"),
        fraction=lambda wildcards: fraction(wildcards.pct),
    threads: 2
    log:
        "logs/train_supervised/{dataset}/{backbone}/seed{seed}/labels{pct}.log",
    benchmark:
        "logs/benchmarks/train_supervised/{dataset}/{backbone}/seed{seed}/labels{pct}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/train_supervised.py"
