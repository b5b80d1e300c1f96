"""Rule train_supervised: the backbone trained with labels on a labelled fraction of the train split."""

from defectbench.supervised import train_supervised
from defectbench.tracking import tracked_job

with tracked_job(snakemake):  # noqa: F821 - injected by Snakemake; the log (+ live MLflow runs)
    train_supervised(
        cache_path=snakemake.input["cache"],  # noqa: F821
        split_path=snakemake.input["split"],  # noqa: F821
        model_path=snakemake.output["model"],  # noqa: F821
        predictions_path=snakemake.output["predictions"],  # noqa: F821
        history_path=snakemake.output["history"],  # noqa: F821
        metrics_path=snakemake.output["metrics"],  # noqa: F821
        cfg=snakemake.params.cfg,  # noqa: F821
        dataset=snakemake.wildcards.dataset,  # noqa: F821
        backbone=snakemake.wildcards.backbone,  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
        fraction=float(snakemake.params.fraction),  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
