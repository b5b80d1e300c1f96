# defectbench: one command regenerates every result table.
#   snakemake --cores all                                   (embedded default config)
#   snakemake --profile profiles/slurm --configfile config/paper.yaml
from snakemake.utils import min_version

min_version("9.0")


# The embedded default applies only when no --configfile is given: a config passed on the command
# line is complete on its own (Snakemake would otherwise merge it into the demo's datasets).
if not config:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/diffusion.smk"
include: "rules/probe.smk"
include: "rules/budget.smk"
include: "rules/anomaly.smk"
include: "rules/patchcore.smk"
include: "rules/clustering.smk"
include: "rules/report.smk"


# Seconds of single-process work each: on a cluster the main Snakemake process runs them itself
# instead of submitting jobs that would queue longer than they run (no effect on local runs).
localrules:
    all,
    aggregate,
    figures,
    track,


rule all:
    default_target: True
    input:
        all_targets(),
