# Report stage: aggregate (tables + published-vs-ours comparisons + the claims table), track (the
# only MLflow writer), figures. Library: defectbench.tables, defectbench.claims,
# defectbench.tracking, defectbench.figures.
#
# The stage inputs are every other stage's registered metrics.json (all_targets() minus the
# outputs of this stage), evaluated lazily so every rule file has registered its targets first.


include: "report_helpers.smk"


rule aggregate:
    input:
        metrics=stage_metrics,
        published=PUBLISHED_CSVS,
        claims=[CLAIMS_FILE] if CLAIMS_FILE else [],
    output:
        tables=[paths.table(name) for name in TABLE_NAMES],
        markdown=[paths.table(name, "md") for name in TABLE_NAMES],
        html=[_table_report(n) for n in TABLE_NAMES],
        claims=CLAIMS_OUTPUTS,
    params:
        cfg=job_params("aggregate"),
        paper_datasets=paper_datasets(),
    log:
        "logs/aggregate/aggregate.log",
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/aggregate.py"


# The figures read only the files figure_inputs declares (defectbench.figures checks): a change to
# any of them reruns the figures, and a figure that cannot use a file says which and why in the log.
rule figures:
    input:
        unpack(figure_inputs),
    output:
        report(
            directory(paths.FIGURES_DIR),
            patterns=["{kind}--{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            subcategory="{kind}",
            labels={"figure": "{kind}", "subject": "{name}"},
        ),
    params:
        cfg=job_params("figures"),
        image_sizes=figure_image_sizes(),
    threads: 2
    log:
        "logs/figures/figures.log",
    benchmark:
        "logs/benchmarks/figures/figures.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/figures.py"


# The track rule syncs every job into the MLflow store and writes the marker only after reading
# the store back (a run for every job). The embedded SQLite store is an output flagged update():
# Snakemake reruns the rule when the file is deleted but never deletes it before a run (which
# would drop the runs of earlier configs, e.g. on --forcerun track), and restores it if the
# sync fails. track_metrics removes a marker whose store lost its runs. With a tracking server
# the jobs have logged their own runs; the rule adds any that are missing and checks the count.
rule track:
    input:
        metrics=track_metrics,
        tables=[paths.table(name, "md") for name in TABLE_NAMES],
        figures=[paths.FIGURES_DIR] if config["report"]["figures"] else [],
    output:
        marker=paths.TRACK_MARKER,
        **({"store": update(str(TRACKING_STORE))} if TRACKING_STORE else {}),
    params:
        cfg=job_params("track"),
        parent_artifacts=[paths.TABLES_DIR] + ([paths.FIGURES_DIR] if config["report"]["figures"] else []),
    log:
        "logs/track/track.log",
    benchmark:
        "logs/benchmarks/track/track.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/track.py"
