"""Rule aggregate: every job's metrics.json -> results/tables/*.parquet (+ comparisons, claims, Markdown)."""

from pathlib import Path

from defectbench.claims import write_claims
from defectbench.runtime import job_logging
from defectbench.tables import write_tables

with job_logging(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    out_dir = Path(snakemake.output.tables[0]).parent  # noqa: F821
    write_tables(
        snakemake.input.metrics,  # noqa: F821
        out_dir,
        snakemake.input.published,  # noqa: F821
        root=".",
        paper_datasets=snakemake.params.paper_datasets,  # noqa: F821
    )
    if snakemake.input.claims:  # noqa: F821
        write_claims(snakemake.input.claims[0], out_dir, root=".")  # noqa: F821
