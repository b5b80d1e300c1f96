# Image-level anomaly scorers on frozen features (specs B): features of every anomaly-split image
# are extracted once per feature source (anomaly_features) and shared by every scorer
# (score_anomaly). Feature sources: contrastive methods pretrained on the split's nominal train
# images (backbone = first of `backbones`), and the controls 'random' (that backbone at random
# init) and 'pretrained' (anomaly.pretrained weights on anomaly.pretrained_backbone, default the
# same backbone). Library: defectbench.anomaly.image_level.

# Keys that change the features (not the scorer list: adding a scorer must not re-extract).
ANOMALY_FEATURE_KEYS = ["pretrained", "amp", "feature_batch_size"]
ANOMALY_SCORER_KEYS = ["knn_k", "threshold_quantile", "refit_on_holdout", "leaky_percentile"]


rule anomaly_features:
    input:
        unpack(anomaly_feature_inputs),
    wildcard_constraints:
        features="[a-z0-9_]+",
    output:
        features="results/anomaly/features/{features}/{backbone}/{dataset}/seed{seed}/features.npz",
        info="results/anomaly/features/{features}/{backbone}/{dataset}/seed{seed}/features.npz.json",
    params:
        cfg=anomaly_feature_params,
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
        features="[a-z0-9_]+",
    params:
        cfg=config_slice(anomaly={k: config["anomaly"][k] for k in ANOMALY_SCORER_KEYS}),
        scorers=ANOMALY_SCORERS,
        backbone=lambda w: anomaly_backbone(w.features),
    log:
        "logs/score_anomaly/{features}/{dataset}/seed{seed}.log",
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/score_anomaly.py"
