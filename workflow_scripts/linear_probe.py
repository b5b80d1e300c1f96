"""Rule linear_probe: linear classifiers on one frozen encoder, one per label fraction of the train split."""

from pathlib import Path

from defectbench.probe import run_linear_probe
from defectbench.tracking import tracked_job

with tracked_job(snakemake):  # noqa: F821 - injected by Snakemake; the log (+ live MLflow runs)
    run_linear_probe(
        cache_path=snakemake.input["cache"],  # noqa: F821
        split_path=snakemake.input["split"],  # noqa: F821
        manifest_path=snakemake.input["manifest"],  # noqa: F821
        encoder_path=snakemake.input.get("encoder"),  # noqa: F821
        pretrain_metrics_path=snakemake.input.get("pretrain_metrics"),  # noqa: F821
        out_dirs=[str(Path(p).parent) for p in snakemake.output["metrics"]],  # noqa: F821
        fractions=list(snakemake.params.fractions),  # noqa: F821
        cfg=snakemake.params.cfg,  # noqa: F821
        dataset=snakemake.wildcards.dataset,  # noqa: F821
        method=snakemake.wildcards.method,  # noqa: F821
        backbone=snakemake.wildcards.backbone,  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
    )
