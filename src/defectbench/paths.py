"""Where every job's files live: the one place the paths of the data flow are spelled.

The rules (``rules/*.smk``) take their ``input:``/``output:`` paths from here and the figures read
the same files through it, so a path is never retyped. Every argument defaults to its Snakemake
wildcard: called without arguments a function gives the rule's pattern, called with values one
file (and any mix of the two, e.g. a fixed task with the job's ``{dataset}``). Job files are
named by the job's kind (``JOB_DIRS``) and the file name inside its directory.

>>> split()
'results/data/{dataset}/splits/{task}-seed{seed}.parquet'
>>> split("neu", "classification", 0)
'results/data/neu/splits/classification-seed0.parquet'
>>> job("pretrain", "encoder.pt", method="simclr", task="anomaly")
'results/pretrain/simclr/{dataset}/anomaly/{backbone}/seed{seed}/encoder.pt'
"""

from __future__ import annotations

import string

Value = str | int

TABLES_DIR = "results/tables"
FIGURES_DIR = "results/figures"
# The track rule's verification marker: what it synced, written only after reading the store back.
TRACK_MARKER = "results/mlflow.synced.json"


# ----------------------------------------------------------------------------- data stage
def fetched(dataset: Value = "{dataset}") -> str:
    """The record of a verified, extracted dataset (its files sit beside it)."""
    return f"resources/datasets/{dataset}/.fetched.json"


def manifest(dataset: Value = "{dataset}") -> str:
    return f"results/data/{dataset}/manifest.parquet"


def split(dataset: Value = "{dataset}", task: Value = "{task}", seed: Value = "{seed}") -> str:
    return f"results/data/{dataset}/splits/{task}-seed{seed}.parquet"


def cache(dataset: Value = "{dataset}", size: Value = "{size}") -> str:
    """The decoded uint8 images of a dataset at ``size`` x ``size`` (manifest row order)."""
    return f"results/data/{dataset}/cache-{size}.npy"


def masks(dataset: Value = "{dataset}", size: Value = "{size}") -> str:
    """The ground-truth defect masks beside :func:`cache` (zeros for images without one)."""
    return f"results/data/{dataset}/masks-{size}.npy"


# ----------------------------------------------------------------------------- job directories
# kind -> the directory of one job (its files: docs/CONTRACTS.md).
JOB_DIRS = {
    "diffusion": "results/pretrain/diffusion/{dataset}/{task}/seed{seed}",  # a DDPM: model/, views.npy
    "pretrain": "results/pretrain/{method}/{dataset}/{task}/{backbone}/seed{seed}",  # encoder.pt
    "supervised": "results/supervised/{dataset}/{backbone}/seed{seed}/labels{pct}",  # model.pt, predictions
    "probe": "results/probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}",  # probe.pt, predictions
    "budget": "results/budget/{method}/{dataset}/{backbone}/seed{seed}/e{epochs}-px{size}",  # + labels100/
    "anomaly_features": "results/anomaly/features/{features}/{backbone}/{dataset}/seed{seed}",  # features.npz
    "scorer": "results/anomaly/{scorer}/{features}/{dataset}/seed{seed}",  # scores.parquet
    "patchcore": "results/anomaly/patchcore/{backbone}/{dataset}/seed{seed}",  # scores.parquet, maps.npy
    "ddad": "results/anomaly/ddad/{backbone}/{dataset}/seed{seed}",  # scores.parquet, maps.npy
    "clustering": "results/clustering/{weighting}/{features}/{dataset}/seed{seed}",  # assignments.parquet
}


def job(kind: str, file: str = "", **values: Value) -> str:
    """``file`` in the directory of a ``kind`` job (the directory itself when empty), wildcards
    given in ``values`` filled in; a name the directory has no wildcard for is an error.

    >>> job("probe", "metrics.json", method="random", pct=100)
    'results/probe/random/{dataset}/{backbone}/seed{seed}/labels100/metrics.json'
    """
    pattern = JOB_DIRS[kind]
    names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name}
    if set(values) - names:
        raise KeyError(f"paths.job({kind!r}): no wildcard {sorted(set(values) - names)} in {pattern}")
    directory = pattern.format(**{name: values.get(name, f"{{{name}}}") for name in names})
    return f"{directory}/{file}" if file else directory


# ----------------------------------------------------------------------------- report stage
def table(name: Value = "{name}", ext: str = "parquet") -> str:
    """An aggregate table (``parquet`` for pandas, ``md`` and ``html`` for people)."""
    return f"{TABLES_DIR}/{name}.{ext}"
