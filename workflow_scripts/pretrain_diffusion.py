"""Rule pretrain_diffusion: DDPM (UNet in diffusers' UNet2DModel layout, EMA) on the train subset of one split."""

from defectbench.diffusion.ddpm import pretrain_diffusion
from defectbench.tracking import tracked_job

with tracked_job(snakemake):  # noqa: F821 - injected by Snakemake; the log (+ live MLflow runs)
    pretrain_diffusion(
        cache_path=snakemake.input["cache"],  # noqa: F821
        split_path=snakemake.input["split"],  # noqa: F821
        model_dir=snakemake.output["model"],  # noqa: F821
        metrics_path=snakemake.output["metrics"],  # noqa: F821
        history_path=snakemake.output["history"],  # noqa: F821
        cfg=snakemake.params.cfg,  # noqa: F821
        dataset=snakemake.wildcards.dataset,  # noqa: F821
        task=snakemake.wildcards.task,  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
        masks_path=snakemake.input.get("masks"),  # noqa: F821 - anomaly task only
    )
