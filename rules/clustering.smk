# Anomaly clustering (specs E.2, E.3): PatchCore-backbone patch embeddings of the clustering split's
# images, per-patch weights (unsupervised / supervised / average), Ward clustering, NMI/ARI/F1.
# One job per dataset x seed embeds the images once and writes every configured weighting.
# {features} = the patch-embedding backbone (patchcore.backbone) or a control of clustering.controls
# ('oracle': label-made features; 'random': patchcore.backbone at random init, pretrained none).
# Library: defectbench.clustering.


include: "clustering_helpers.smk"


rule cluster:
    input:
        unpack(cluster_inputs),
    output:
        metrics=cluster_outputs("metrics.json"),
        assignments=cluster_outputs("assignments.parquet"),
    params:
        cfg=job_params("cluster"),
        weightings=CLUSTER_WEIGHTINGS,
    threads: 2
    log:
        "logs/cluster/{features}/{dataset}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/cluster/{features}/{dataset}/seed{seed}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/cluster.py"
