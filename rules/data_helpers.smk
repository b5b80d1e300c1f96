# Helpers of the data stage (rules/data.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


@register_targets
def data_targets():
    """Every dataset's manifest, its splits (tasks x seeds) and its cache at image_size."""
    out = []
    for name, entry in DATASETS.items():
        out.append(f"results/data/{name}/manifest.parquet")
        out += [split_path(name, task, seed) for task in entry["tasks"] for seed in SEEDS]
        out += [f"results/data/{name}/{kind}-{entry['image_size']}.npy" for kind in ("cache", "masks")]
    return out
