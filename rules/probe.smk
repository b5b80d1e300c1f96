# Linear probes on frozen encoders (specs A.4, C.3): one job per contrastive method (or control)
# x classification dataset x backbone x seed evaluates every label fraction (nested labelled
# subsets of the train split), extracting the encoder's features once. Controls
# (probe.controls): 'random' = the backbone at random init, 'pretrained' = the backbone with
# probe.pretrained weights, neither trained. Library: defectbench.probe.run_linear_probe.


include: "probe_helpers.smk"


rule linear_probe:
    input:
        unpack(probe_inputs),
    output:
        metrics=probe_outputs("metrics.json"),
        predictions=probe_outputs("predictions.parquet"),
        history=probe_outputs("history.parquet"),
        heads=probe_outputs("probe.pt"),
    wildcard_constraints:
        method=registry.wildcard_pattern("feature_sources"),
    params:
        cfg=job_params("linear_probe"),
        fractions=[fraction(p) for p in LABEL_PCTS],
    threads: 2
    log:
        "logs/linear_probe/{method}/{dataset}/{backbone}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/linear_probe/{method}/{dataset}/{backbone}/seed{seed}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/linear_probe.py"
