# Diffusion stage (specs A.2, D): DDPM pretraining per dataset x task x seed (one model serves the
# DiffCL views and DDAD), DiffCL diffusion views of the classification train subset, and DDAD
# anomaly detection on the anomaly split. Library: defectbench.diffusion (ddpm, views, ddad).
#
# The model of task T is trained on the `train` subset of the T split only: `classification`
# for DiffCL views, `anomaly` (nominal train images) for DDAD, so no anomaly test image is ever
# seen in pretraining.

include: "diffusion_helpers.smk"


rule pretrain_diffusion:
    input:
        unpack(diffusion_data(None)),
        unpack(_anomaly_masks),
    output:
        model=directory(f"{DIFFUSION_DIR}/model"),
        metrics=f"{DIFFUSION_DIR}/metrics.json",
        history=f"{DIFFUSION_DIR}/history.parquet",
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
        unpack(diffusion_data(None)),
        model=f"{DIFFUSION_DIR}/model",
    output:
        views=f"{DIFFUSION_DIR}/views.npy",
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
        unpack(diffusion_data("anomaly")),
        masks=lambda wildcards: f"results/data/{wildcards.dataset}/masks-{image_size(wildcards.dataset)}.npy",
        model="results/pretrain/diffusion/{dataset}/anomaly/seed{seed}/model",
        diffusion_metrics="results/pretrain/diffusion/{dataset}/anomaly/seed{seed}/metrics.json",
    output:
        metrics=f"{DDAD_DIR}/metrics.json",
        scores=f"{DDAD_DIR}/scores.parquet",
        maps=f"{DDAD_DIR}/maps.npy",
        history=f"{DDAD_DIR}/da_history.parquet",
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


