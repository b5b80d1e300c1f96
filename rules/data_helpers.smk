# Helpers of the data stage (rules/data.smk): its input functions, constants and registered
# final targets. Kept apart from the rules (snakemake --lint: no functions beside rules).


@register_targets
def data_targets():
    """Every dataset's manifest, its splits (tasks x seeds) and its cache at image_size."""
    out = []
    for name, entry in DATASETS.items():
        out.append(paths.manifest(name))
        out += [paths.split(name, task, seed) for task in entry["tasks"] for seed in SEEDS]
        out += [paths.cache(name, entry["image_size"]), paths.masks(name, entry["image_size"])]
    return out
