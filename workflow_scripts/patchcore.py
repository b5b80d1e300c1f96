"""Rule patchcore: fit PatchCore on nominal train images, threshold on the holdout, evaluate on test."""

from defectbench.anomaly.patchcore import run_patchcore
from defectbench.tracking import tracked_job

with tracked_job(snakemake):  # noqa: F821 - injected by Snakemake; the log (+ live MLflow runs)
    run_patchcore(
        cache_path=snakemake.input["cache"],  # noqa: F821
        masks_path=snakemake.input["masks"],  # noqa: F821
        split_path=snakemake.input["split"],  # noqa: F821
        metrics_path=snakemake.output["metrics"],  # noqa: F821
        scores_path=snakemake.output["scores"],  # noqa: F821
        maps_path=snakemake.output["maps"],  # noqa: F821
        cfg=snakemake.params.cfg,  # noqa: F821
        dataset=snakemake.wildcards.dataset,  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
        features=snakemake.wildcards.backbone,  # noqa: F821 - the backbone's name or 'random' (its control)
    )
