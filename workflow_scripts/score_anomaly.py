"""Rule score_anomaly: every configured image-level scorer on shared features, thresholds from held-out nominal images."""

from defectbench.anomaly.image_level import score_anomaly
from defectbench.tracking import tracked_job

with tracked_job(snakemake):  # noqa: F821 - injected by Snakemake; the log (+ live MLflow runs)
    scorers = snakemake.params.scorers  # noqa: F821
    score_anomaly(
        features_path=snakemake.input["features"],  # noqa: F821
        split_path=snakemake.input["split"],  # noqa: F821
        # expand() in the rule lists the outputs in the order of the scorers
        outputs=dict(zip(scorers, zip(snakemake.output["metrics"], snakemake.output["scores"]))),  # noqa: F821
        cfg=snakemake.params.cfg,  # noqa: F821
        dataset=snakemake.wildcards.dataset,  # noqa: F821
        features=snakemake.wildcards.features,  # noqa: F821
        backbone=snakemake.params.backbone,  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
    )
