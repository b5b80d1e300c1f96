"""Rule track: syncs every job into the MLflow store, verifies it, writes the marker."""

from defectbench.runtime import job_logging
from defectbench.tracking import track_workflow

with job_logging(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    track_workflow(
        snakemake.input.metrics,  # noqa: F821
        snakemake.params.cfg,  # noqa: F821
        snakemake.output.marker,  # noqa: F821
        parent_artifacts=snakemake.params.parent_artifacts,  # noqa: F821
    )
