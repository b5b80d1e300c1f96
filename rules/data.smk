# Data stage: fetch (verify + extract) -> manifest -> splits per task x seed -> decode-once cache.
# Library: defectbench.data (sources, extract, layouts, manifest, splits, cache).
#
# Each rule receives only the keys of the dataset entry it reads (defectbench.params), so e.g.
# changing image_size rebuilds the cache but never re-fetches or re-verifies the images.


include: "data_helpers.smk"


rule fetch_dataset:
    output:
        paths.fetched(),
    params:
        cfg=job_params("fetch_dataset"),
    log:
        "logs/fetch_dataset/{dataset}.log",
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/fetch_dataset.py"


rule build_manifest:
    input:
        paths.fetched(),
    output:
        paths.manifest(),
    params:
        cfg=job_params("build_manifest"),
    threads: 2
    log:
        "logs/build_manifest/{dataset}.log",
    benchmark:
        "logs/benchmarks/build_manifest/{dataset}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/build_manifest.py"


rule make_split:
    input:
        paths.manifest(),
    output:
        paths.split(),
    params:
        cfg=job_params("make_split"),
    log:
        "logs/make_split/{dataset}/{task}-seed{seed}.log",
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/make_split.py"


rule build_cache:
    input:
        paths.manifest(),
    output:
        images=paths.cache(),
        masks=paths.masks(),
    params:
        cfg=job_params("build_cache"),
    threads: 2
    log:
        "logs/build_cache/{dataset}/{size}.log",
    benchmark:
        "logs/benchmarks/build_cache/{dataset}/{size}.tsv"
    conda:
        "../envs/defectbench.yaml"
    script:
        "../workflow_scripts/build_cache.py"
