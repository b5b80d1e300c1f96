"""Rule aggregate: every job's metrics.json -> results/tables/*.parquet (+ comparisons, Markdown)."""

from pathlib import Path

from defectbench.runtime import job_logging
from defectbench.tables import write_tables

with job_logging(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    write_tables(
        snakemake.input.metrics,  # noqa: F821
        Path(snakemake.output.tables[0]).parent,  # noqa: F821
        snakemake.input.published,  # noqa: F821
        root=".",
        paper_datasets=snakemake.params.paper_datasets,  # noqa: F821
    )
