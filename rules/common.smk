# Helpers shared by all stage files: config validation, the experiment grid, the inputs every
# stage reads first and the per-job params hook. Each stage's own input functions live beside its
# rules, in rules/<stage>_helpers.smk (snakemake --lint wants no functions in a file with rules),
# and register a function returning its final targets with `register_targets`; `rule all` collects
# them, so adding a stage never edits another stage's file. Every input/output path comes from
# defectbench.paths (wildcard patterns by default, one file given values), never retyped.
# A stage file uses only names defined here or in its own files (the report stage also calls the
# other stages' registered target functions, at DAG time, when every file is loaded).
from pathlib import Path

from defectbench import params as job_params_lib
from defectbench import paths, registry
from defectbench.config import validate_config

# Validate (and fill defaults) before any job is scheduled: a bad value stops here with its key path.
validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")

DATASETS = config["datasets"]
SEEDS = config["seeds"]
BACKBONES = config["backbones"]
SCRIPTS_DIR = Path(workflow.basedir) / "workflow_scripts"
_TARGET_FUNCS = []


wildcard_constraints:
    dataset="[a-z0-9_]+",
    seed=r"\d+",
    size=r"\d+",
    task="classification|anomaly|clustering",
    backbone="[a-z0-9_]+",
    pct=r"[0-9.]+",


def register_targets(func):
    """Decorator: func() -> list of final outputs of one stage."""
    _TARGET_FUNCS.append(func)
    return func


def all_targets():
    return [t for func in _TARGET_FUNCS for t in func()]


def job_params(rule_name):
    """params function of `rule_name`'s jobs: exactly what the job reads plus its code fingerprint
    (defectbench.params). Snakemake's params trigger then reruns exactly the jobs an edit reaches."""
    return lambda wildcards: job_params_lib.job_params(rule_name, config, wildcards, SCRIPTS_DIR)


def dataset_entry(name):
    """A dataset's config entry; a target naming an undefined dataset lists the defined ones."""
    return job_params_lib.dataset_entry(config, name)


def datasets_with(task):
    """Names of datasets whose `tasks` include `task`."""
    return [name for name, ds in DATASETS.items() if task in ds["tasks"]]


def image_size(dataset):
    return dataset_entry(dataset)["image_size"]


def patchcore_size(dataset):
    """Image size of the PatchCore patch embeddings (patchcore and cluster jobs): patchcore.image_size,
    or the dataset's image_size when null."""
    return config["patchcore"]["image_size"] or image_size(dataset)


def cache_and_split(wildcards, task=None, size=None):
    """The inputs a stage job reads first: the image cache of the job's {dataset} (at its image_size
    unless `size`) and the `task` split of the job's {seed} (the job's {task} when None)."""
    ds = wildcards.dataset
    return {
        "cache": paths.cache(ds, size or image_size(ds)),
        "split": paths.split(ds, task or wildcards.task, wildcards.seed),
    }


def pct(fraction):
    """Label fraction -> wildcard text: 0.1 -> '10', 0.01 -> '1', 0.005 -> '0.5'."""
    return f"{fraction * 100:g}"


def fraction(pct_text):
    return float(pct_text) / 100.0


def contrastive_methods():
    """The configured contrastive methods; those that need the diffusion views only when diffusion is enabled."""
    return [
        m for m in config["contrastive"]["methods"]
        if config["diffusion"]["enabled"] or "views" not in registry.entry("contrastive_methods", m).reads
    ]
