"""Rule budget_pretrain: one contrastive method at one (epochs, image size) point of the budget curve
(DiffCL with the main grid's diffusion views)."""

from defectbench.ssl.pretrain import pretrain_contrastive
from defectbench.tracking import tracked_job

with tracked_job(snakemake):  # noqa: F821 - injected by Snakemake; the log (+ live MLflow runs)
    pretrain_contrastive(
        cache_path=snakemake.input["cache"],  # noqa: F821
        split_path=snakemake.input["split"],  # noqa: F821
        views_path=snakemake.input.get("views"),  # noqa: F821
        encoder_path=snakemake.output["encoder"],  # noqa: F821
        history_path=snakemake.output["history"],  # noqa: F821
        metrics_path=snakemake.output["metrics"],  # noqa: F821
        cfg=snakemake.params.cfg,  # noqa: F821
        dataset=snakemake.wildcards.dataset,  # noqa: F821
        method=snakemake.wildcards.method,  # noqa: F821
        backbone=snakemake.wildcards.backbone,  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
        task="classification",
        threads=snakemake.threads,  # noqa: F821
    )
