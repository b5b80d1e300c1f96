"""Rule build_cache: decode every manifest image once into cache-{size}.npy / masks-{size}.npy."""

from defectbench.data.cache import build_cache
from defectbench.runtime import job_logging

with job_logging(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    build_cache(
        snakemake.input[0],  # noqa: F821
        int(snakemake.wildcards.size),  # noqa: F821
        snakemake.output.images,  # noqa: F821
        snakemake.output.masks,  # noqa: F821
        dataset_cfg=snakemake.params.cfg["dataset"],  # noqa: F821
        workers=snakemake.threads,  # noqa: F821
    )
