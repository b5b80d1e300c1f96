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
        features="results/anomaly/features/{features}/{backbone}/{dataset}/seed{seed}/features.npz",
        info="results/anomaly/features/{features}/{backbone}/{dataset}/seed{seed}/features.npz.json",
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


# One job per feature set runs every configured scorer (each takes less than a job's start-up);
# each scorer keeps its own outputs. Adding a scorer reruns this job, not the feature extraction.
ANOMALY_SCORERS = config["anomaly"]["scorers"]


rule score_anomaly:
    input:
        features=lambda w: f"results/anomaly/features/{w.features}/{anomaly_backbone(w.features)}/{w.dataset}/seed{w.seed}/features.npz",
        info=lambda w: f"results/anomaly/features/{w.features}/{anomaly_backbone(w.features)}/{w.dataset}/seed{w.seed}/features.npz.json",
        split="results/data/{dataset}/splits/anomaly-seed{seed}.parquet",
    output:
        metrics=expand("results/anomaly/{scorer}/{{features}}/{{dataset}}/seed{{seed}}/metrics.json", scorer=ANOMALY_SCORERS),
        scores=expand("results/anomaly/{scorer}/{{features}}/{{dataset}}/seed{{seed}}/scores.parquet", scorer=ANOMALY_SCORERS),
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
