"""Rule figures: PNG figures from the tables and the job files the rule declares as its inputs."""

from pathlib import Path

from defectbench.figures import make_figures
from defectbench.runtime import job_logging

with job_logging(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    make_figures(
        Path(snakemake.input.tables[0]).parent,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        image_sizes=snakemake.params.image_sizes,  # noqa: F821
        declared=list(snakemake.input),  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
