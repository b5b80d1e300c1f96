# Linear probes on frozen encoders (specs A.4, C.3): every contrastive method x classification
# dataset x backbone x seed x label fraction (nested labelled subsets of the train split).
# Library: defectbench.probe.run_linear_probe. Method 'pretrained' (probe.include_pretrained) is
# the backbone as initialised by probe.pretrained, without any self-supervised training.


include: "probe_helpers.smk"


rule linear_probe:
    input:
        unpack(probe_inputs),
    output:
        metrics="results/probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}/metrics.json",
        predictions="results/probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}/predictions.parquet",
        history="results/probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}/history.parquet",
        # the linear head (for Grad-CAM figures); a logistic probe has none
        **PROBE_HEAD,
    wildcard_constraints:
        method=registry.wildcard_pattern("contrastive_methods") + "|pretrained",
    params:
        cfg=job_params("linear_probe"),
        fraction=lambda wildcards: fraction(wildcards.pct),
    threads: 2
    log:
        "logs/linear_probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}.log",
    benchmark:
        "logs/benchmarks/linear_probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/linear_probe.py"
