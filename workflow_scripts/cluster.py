"""Rule cluster: embed the clustering images once, cluster them under every configured weighting."""

from defectbench.clustering import run_clustering
from defectbench.tracking import tracked_job

with tracked_job(snakemake):  # noqa: F821 - injected by Snakemake; the log (+ live MLflow runs)
    weightings = snakemake.params.weightings  # noqa: F821
    run_clustering(
        cache_path=snakemake.input["cache"],  # noqa: F821
        manifest_path=snakemake.input["manifest"],  # noqa: F821
        split_path=snakemake.input["split"],  # noqa: F821
        reference_split_path=snakemake.input.get("references"),  # noqa: F821
        metrics_paths=dict(zip(weightings, snakemake.output["metrics"])),  # noqa: F821
        assignments_paths=dict(zip(weightings, snakemake.output["assignments"])),  # noqa: F821
        cfg=snakemake.params.cfg,  # noqa: F821
        dataset=snakemake.wildcards.dataset,  # noqa: F821
        seed=int(snakemake.wildcards.seed),  # noqa: F821
        features=snakemake.wildcards.features,  # noqa: F821
    )
