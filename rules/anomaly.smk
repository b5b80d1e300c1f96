# Image-level anomaly scorers on frozen features (specs B): features of every anomaly-split image
# are extracted once per feature source (anomaly_features) and shared by every scorer
# (score_anomaly). Feature sources (defectbench.registry.FEATURE_SOURCES): contrastive methods
# pretrained on the split's nominal train images (backbone = first of `backbones`), and the
# controls 'random' (that backbone at random init) and 'pretrained' (anomaly.pretrained weights on
# anomaly.pretrained_backbone, default the same backbone). Library: defectbench.anomaly.image_level.


include: "anomaly_helpers.smk"


rule anomaly_features:
    input:
        unpack(anomaly_feature_inputs),
    wildcard_constraints:
        features=registry.wildcard_pattern("feature_sources"),
    output:
        features=paths.job("anomaly_features", "features.npz"),
        info=paths.job("anomaly_features", "features.npz.json"),
    params:
        cfg=job_params("anomaly_features"),
    threads: 2
    log:
        "logs/anomaly_features/{features}/{backbone}/{dataset}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/anomaly_features/{features}/{backbone}/{dataset}/seed{seed}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/anomaly_features.py"


rule score_anomaly:
    input:
        unpack(scorer_inputs),
    output:
        metrics=scorer_outputs("metrics.json"),
        scores=scorer_outputs("scores.parquet"),
    wildcard_constraints:
        features=registry.wildcard_pattern("feature_sources"),
    params:
        cfg=job_params("score_anomaly"),
        scorers=ANOMALY_SCORERS,
        backbone=lambda w: anomaly_backbone(w.features),
    log:
        "logs/score_anomaly/{features}/{dataset}/seed{seed}.log",
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/score_anomaly.py"
