# Diffusion stage (specs A.2, D): DDPM pretraining per dataset x task x seed (one model serves the
# DiffCL views and DDAD), DiffCL diffusion views of the classification train subset, and DDAD
# anomaly detection on the anomaly split. Library: defectbench.diffusion (ddpm, views, ddad).
#
# The model of task T is trained on the `train` subset of the T split only: `classification`
# for DiffCL views, `anomaly` (nominal train images) for DDAD, so no anomaly test image is ever
# seen in pretraining.
#
# DDAD's {backbone} = ddad.feature_backbone or 'random', the random-init control of ddad.controls
# (the same feature backbone with pretrained none, the same diffusion model; features 'random').

include: "diffusion_helpers.smk"


rule pretrain_diffusion:
    input:
        unpack(cache_and_split),
        unpack(anomaly_masks),
    output:
        model=directory(paths.job("diffusion", "model")),
        metrics=paths.job("diffusion", "metrics.json"),
        history=paths.job("diffusion", "history.parquet"),
    params:
        cfg=job_params("pretrain_diffusion"),
    threads: 2
    log:
        "logs/pretrain_diffusion/{dataset}/{task}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/pretrain_diffusion/{dataset}/{task}/seed{seed}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/pretrain_diffusion.py"


rule diffusion_views:
    input:
        unpack(cache_and_split),
        model=paths.job("diffusion", "model"),
    output:
        views=paths.job("diffusion", "views.npy"),
    params:
        cfg=job_params("diffusion_views"),
    threads: 2
    log:
        "logs/diffusion_views/{dataset}/{task}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/diffusion_views/{dataset}/{task}/seed{seed}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/diffusion_views.py"


rule ddad:
    input:
        unpack(lambda wildcards: cache_and_split(wildcards, "anomaly")),
        masks=lambda wildcards: paths.masks(wildcards.dataset, image_size(wildcards.dataset)),
        model=paths.job("diffusion", "model", task="anomaly"),
        diffusion_metrics=paths.job("diffusion", "metrics.json", task="anomaly"),
    output:
        metrics=paths.job("ddad", "metrics.json"),
        scores=paths.job("ddad", "scores.parquet"),
        maps=paths.job("ddad", "maps.npy"),
        history=paths.job("ddad", "da_history.parquet"),
    params:
        cfg=job_params("ddad"),
    threads: 2
    log:
        "logs/ddad/{backbone}/{dataset}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/ddad/{backbone}/{dataset}/seed{seed}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/ddad.py"


