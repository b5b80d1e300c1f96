# PatchCore (specs E.4): patch-embedding memory bank with a greedy coreset, fitted on the anomaly
# split's nominal train images; threshold from the nominal holdout; image + pixel metrics on test.
# {backbone} = patchcore.backbone or 'random', the random-init control of patchcore.controls (the
# same backbone with pretrained none; its row has features 'random').
# Library: defectbench.anomaly.patchcore (run_patchcore).


include: "patchcore_helpers.smk"


rule patchcore:
    input:
        unpack(patchcore_inputs),
    output:
        metrics=paths.job("patchcore", "metrics.json"),
        scores=paths.job("patchcore", "scores.parquet"),
        maps=paths.job("patchcore", "maps.npy"),
    params:
        cfg=job_params("patchcore"),
    threads: 2
    log:
        "logs/patchcore/{backbone}/{dataset}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/patchcore/{backbone}/{dataset}/seed{seed}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/patchcore.py"
