"""Where every job's files live: the one place the paths of the data flow are spelled.

The rules (``rules/*.smk``) take their ``input:``/``output:`` paths from here and the figures read
the same files through it, so a path is never retyped. Every argument defaults to its Snakemake
wildcard: called without arguments a function gives the rule's pattern, called with values one
file (and any mix of the two, e.g. a fixed task with the job's ``{dataset}``). A job directory's
function takes the file name inside it first (none: the directory itself).

>>> split()
'results/data/{dataset}/splits/{task}-seed{seed}.parquet'
>>> split("neu", "classification", 0)
'results/data/neu/splits/classification-seed0.parquet'
>>> pretrain_job("encoder.pt", method="simclr", task="anomaly")
'results/pretrain/simclr/{dataset}/anomaly/{backbone}/seed{seed}/encoder.pt'
"""

from __future__ import annotations

Value = str | int

TABLES_DIR = "results/tables"
FIGURES_DIR = "results/figures"
# The track rule's verification marker: what it synced, written only after reading the store back.
TRACK_MARKER = "results/mlflow.synced.json"


def _in(directory: str, file: str) -> str:
    return f"{directory}/{file}" if file else directory


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
def diffusion_job(file: str = "", *, dataset: Value = "{dataset}", task: Value = "{task}",
                  seed: Value = "{seed}") -> str:
    """A DDPM of one dataset x task split x seed (model/, views.npy, metrics.json)."""
    return _in(f"results/pretrain/diffusion/{dataset}/{task}/seed{seed}", file)


def pretrain_job(file: str = "", *, method: Value = "{method}", dataset: Value = "{dataset}", task: Value = "{task}",
                 backbone: Value = "{backbone}", seed: Value = "{seed}") -> str:
    """A contrastive method's encoder (encoder.pt, history.parquet, metrics.json)."""
    return _in(f"results/pretrain/{method}/{dataset}/{task}/{backbone}/seed{seed}", file)


def supervised_job(file: str = "", *, dataset: Value = "{dataset}", backbone: Value = "{backbone}",
                   seed: Value = "{seed}", pct: Value = "{pct}") -> str:
    """The supervised baseline at one labelled fraction (model.pt, predictions.parquet, metrics.json)."""
    return _in(f"results/supervised/{dataset}/{backbone}/seed{seed}/labels{pct}", file)


def probe_job(file: str = "", *, method: Value = "{method}", dataset: Value = "{dataset}",
              backbone: Value = "{backbone}", seed: Value = "{seed}", pct: Value = "{pct}") -> str:
    """A linear probe at one labelled fraction (probe.pt, predictions.parquet, metrics.json)."""
    return _in(f"results/probe/{method}/{dataset}/{backbone}/seed{seed}/labels{pct}", file)


def budget_job(file: str = "", *, method: Value = "{method}", dataset: Value = "{dataset}",
               backbone: Value = "{backbone}", seed: Value = "{seed}", epochs: Value = "{epochs}",
               size: Value = "{size}") -> str:
    """One budget-curve point: its pretraining (encoder.pt, pretraining.json) and labels100/ probe."""
    return _in(f"results/budget/{method}/{dataset}/{backbone}/seed{seed}/e{epochs}-px{size}", file)


def anomaly_features_job(file: str = "", *, features: Value = "{features}", backbone: Value = "{backbone}",
                         dataset: Value = "{dataset}", seed: Value = "{seed}") -> str:
    """Frozen features of the anomaly split from one feature source (features.npz + .json)."""
    return _in(f"results/anomaly/features/{features}/{backbone}/{dataset}/seed{seed}", file)


def scorer_job(file: str = "", *, scorer: Value = "{scorer}", features: Value = "{features}",
               dataset: Value = "{dataset}", seed: Value = "{seed}") -> str:
    """An image-level scorer on one feature source (scores.parquet, metrics.json)."""
    return _in(f"results/anomaly/{scorer}/{features}/{dataset}/seed{seed}", file)


def patchcore_job(file: str = "", *, backbone: Value = "{backbone}", dataset: Value = "{dataset}",
                  seed: Value = "{seed}") -> str:
    """PatchCore (scores.parquet, maps.npy, metrics.json)."""
    return _in(f"results/anomaly/patchcore/{backbone}/{dataset}/seed{seed}", file)


def ddad_job(file: str = "", *, backbone: Value = "{backbone}", dataset: Value = "{dataset}",
             seed: Value = "{seed}") -> str:
    """DDAD (scores.parquet, maps.npy, da_history.parquet, metrics.json)."""
    return _in(f"results/anomaly/ddad/{backbone}/{dataset}/seed{seed}", file)


def clustering_job(file: str = "", *, weighting: Value = "{weighting}", features: Value = "{features}",
                   dataset: Value = "{dataset}", seed: Value = "{seed}") -> str:
    """Anomaly clustering under one weighting of one feature source (assignments.parquet, metrics.json)."""
    return _in(f"results/clustering/{weighting}/{features}/{dataset}/seed{seed}", file)


# ----------------------------------------------------------------------------- report stage
def table(name: Value = "{name}", ext: str = "parquet") -> str:
    """An aggregate table (``parquet`` for pandas, ``md`` and ``html`` for people)."""
    return f"{TABLES_DIR}/{name}.{ext}"
