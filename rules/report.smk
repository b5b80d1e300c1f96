# Report stage: aggregate (tables + published-vs-ours comparisons), track (the only MLflow
# writer), figures. Library: defectbench.tables, defectbench.tracking, defectbench.figures.
#
# The stage inputs are every other stage's registered metrics.json (all_targets() minus the
# outputs of this stage), evaluated lazily so every rule file has registered its targets first.


include: "report_helpers.smk"


rule aggregate:
    input:
        metrics=stage_metrics,
        published=PUBLISHED_CSVS,
    output:
        tables=expand("results/tables/{name}.parquet", name=TABLE_NAMES),
        markdown=expand("results/tables/{name}.md", name=TABLE_NAMES),
        html=[_table_report(n) for n in TABLE_NAMES],
    params:
        cfg=job_params("aggregate"),
        paper_datasets=paper_datasets(),
    log:
        "logs/aggregate/aggregate.log",
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/aggregate.py"


rule figures:
    input:
        tables=expand("results/tables/{name}.parquet", name=STAGE_TABLES),
        metrics=stage_metrics,
    output:
        report(
            directory(FIGURES_DIR),
            patterns=["{kind}--{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            subcategory="{kind}",
            labels={"figure": "{kind}", "subject": "{name}"},
        ),
    params:
        cfg=job_params("figures"),
    threads: 2
    log:
        "logs/figures/figures.log",
    benchmark:
        "logs/benchmarks/figures/figures.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/figures.py"


# The MLflow store (results/mlflow.db by default) is deliberately not an output: Snakemake deletes
# outputs before a job runs, which would drop the runs of earlier configs, and a server URI has no
# file. The sentinel records what was synced (created / replaced / skipped runs).
rule track:
    input:
        metrics=stage_metrics,
        tables=expand("results/tables/{name}.md", name=TABLE_NAMES),
        figures=[FIGURES_DIR] if config["report"]["figures"] else [],
    output:
        TRACK_SENTINEL,
    params:
        cfg=job_params("track"),
        parent_artifacts=["results/tables"] + ([FIGURES_DIR] if config["report"]["figures"] else []),
    log:
        "logs/track/track.log",
    benchmark:
        "logs/benchmarks/track/track.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/track.py"
