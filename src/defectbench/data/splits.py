"""Seeded, stratified splits: classification, anomaly detection, clustering.

Every random choice uses numpy's PCG64 generator seeded from ``(seed, task)`` through
``SeedSequence`` (never Python's ``hash()``), on rows in manifest order, so the same manifest
and seed give the same split on any machine.

Split columns: ``row`` (index into manifest and cache), ``subset``, ``label``, ``label_name``,
``label_priority`` (classification train rows only; NaN elsewhere).

* classification: stratified by (label, group) with ``test_fraction`` in test. Each train row
  gets ``label_priority`` = its rank within its class (random order) / class size, so
  ``label_priority < f`` is a stratified, nested labelled subset with at least one row per
  class (:func:`labelled_subset`). With ``official_split`` and a dataset whose own train/test
  holds every class in both parts (DeepPCB's trainval/test lists), that split is used instead.
* anomaly: train and holdout are nominal only; test = ``test_fraction`` of the nominal images +
  every anomalous image; ``holdout_fraction`` of the nominal train is held out for thresholds.
  ``max_train_nominal`` caps train + holdout; the nominal images it leaves out are test images.
  With ``official_split`` and a dataset that has its own train/test (MVTec AD, VisA 1cls,
  DeepPCB), nominal train images form train+holdout and the official test set is the test set
  (an anomalous image is always test).
* clustering: the test rows of the anomaly split; label = defect type id (manifest label),
  label_name = class name, or ``good`` for nominal rows (the clustering stage decides whether to
  use them).

>>> m = pd.DataFrame({"label": [0] * 5 + [1] * 5, "class_name": ["a"] * 5 + ["b"] * 5,
...                   "is_anomalous": [False] * 5 + [True] * 5, "group": [None] * 10, "source_split": [None] * 10})
>>> s = classification_split(m, seed=0, test_fraction=0.2)
>>> s.groupby("subset").size().to_dict()
{'test': 2, 'train': 8}
>>> len(labelled_subset(s, 0.01))  # at least one per class
2
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any

import numpy as np
import pandas as pd

from defectbench.runtime import DefectbenchError, write_parquet

log = logging.getLogger("defectbench")

SPLIT_COLUMNS = ["row", "subset", "label", "label_name", "label_priority"]
TASKS = ("classification", "anomaly", "clustering")
NOMINAL_NAME = "good"


def split_rng(seed: int, stream: str) -> np.random.Generator:
    """A PCG64 generator for (seed, stream); streams are independent and platform stable."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), zlib.crc32(stream.encode())])))


def _n_test(n: int, fraction: float) -> int:
    """Round half up (no banker's rounding), keep >= 1 row on each side when n >= 2."""
    if n < 2:
        return 0
    k = int(np.floor(n * fraction + 0.5))
    return min(max(k, 1), n - 1)


def _strata(manifest: pd.DataFrame, rows: np.ndarray, by_group: bool = True) -> dict[tuple, np.ndarray]:
    labels = manifest["label"].to_numpy()[rows]
    groups = manifest["group"].astype(object).where(manifest["group"].notna(), "").to_numpy()[rows] if by_group else None
    out: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        key = (int(labels[i]), str(groups[i]) if by_group else "")
        out.setdefault(key, []).append(int(r))
    return {k: np.asarray(v, dtype=np.int64) for k, v in sorted(out.items())}


def stratified_test_rows(manifest: pd.DataFrame, rows: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Pick ``fraction`` of ``rows`` per (label, group) stratum as test rows (sorted)."""
    test: list[np.ndarray] = []
    for stratum in _strata(manifest, np.sort(rows)).values():
        perm = rng.permutation(len(stratum))
        test.append(stratum[perm[: _n_test(len(stratum), fraction)]])
    return np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)


def _official(manifest: pd.DataFrame) -> pd.Series | None:
    src = manifest["source_split"] if "source_split" in manifest.columns else None
    if src is None or src.isna().any() or not {"train", "test"} <= set(src.unique()):
        return None
    return src


def label_priorities(manifest: pd.DataFrame, train_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank / class size of each train row within its class, in a random order (values in [0,1))."""
    prio = np.empty(len(train_rows), dtype=np.float64)
    labels = manifest["label"].to_numpy()[train_rows]
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        prio[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) / len(idx)
    return prio


def classification_split(
    manifest: pd.DataFrame, seed: int, test_fraction: float = 0.2, official_split: bool = True
) -> pd.DataFrame:
    """Stratified train/test split of every manifest row plus nested label priorities."""
    rows = np.arange(len(manifest))
    src = _official(manifest) if official_split else None
    if src is not None:
        per_class = manifest.groupby("label")["source_split"].agg(lambda s: set(s))
        if not all({"train", "test"} <= parts for parts in per_class):
            src = None
    if src is not None:
        test_rows = np.flatnonzero(src.to_numpy() == "test")
        log.info("classification split: the dataset's own train/test (%d test rows)", len(test_rows))
    else:
        test_rows = stratified_test_rows(manifest, rows, test_fraction, split_rng(seed, "classification"))
    is_test = np.zeros(len(manifest), dtype=bool)
    is_test[test_rows] = True
    train_rows = rows[~is_test]
    prio = np.full(len(manifest), np.nan)
    prio[train_rows] = label_priorities(manifest, train_rows, split_rng(seed, "label_priority"))
    return pd.DataFrame(
        {
            "row": rows,
            "subset": np.where(is_test, "test", "train"),
            "label": manifest["label"].to_numpy(dtype=np.int64),
            "label_name": manifest["class_name"].astype(str).to_numpy(),
            "label_priority": prio,
        },
        columns=SPLIT_COLUMNS,
    )


def labelled_subset(split_df: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Train rows of a classification split whose ``label_priority < fraction``.

    Nested (a smaller fraction gives a subset of a larger one), stratified
    (``ceil(fraction * class size)`` rows per class) and never empty for a class (priority 0).
    """
    if not 0 < fraction <= 1:
        raise DefectbenchError(f"label fraction {fraction}: must be in (0, 1]")
    train = split_df[split_df["subset"] == "train"]
    if train["label_priority"].isna().any():
        raise DefectbenchError("labelled_subset: not a classification split (train rows without label_priority)")
    return train[train["label_priority"] < fraction - 1e-12]


def anomaly_split(
    manifest: pd.DataFrame,
    seed: int,
    test_fraction: float = 0.2,
    holdout_fraction: float = 0.2,
    official_split: bool = True,
    max_train_nominal: int | None = None,
) -> pd.DataFrame:
    """Train/holdout (nominal only) and test (nominal share + all anomalous) rows.

    ``max_train_nominal``: at most this many nominal images in train + holdout (a seeded draw
    from the pool); the rest of the pool is not trained on, so it joins the test set, which then
    holds every nominal image not used for training or thresholds. With the dataset's official
    split the official test set is kept as it is and the rest of the pool is ``unused``.
    """
    anomalous = manifest["is_anomalous"].to_numpy(dtype=bool)
    nominal_rows = np.flatnonzero(~anomalous)
    if len(nominal_rows) < 3:
        raise DefectbenchError(
            "anomaly split: the dataset has fewer than 3 nominal (defect-free) images; remove 'anomaly' and 'clustering' "
            "from its tasks (or mark nominal classes)"
        )
    if not anomalous.any():
        raise DefectbenchError("anomaly split: the dataset has no anomalous images; remove 'anomaly' and 'clustering' from its tasks")
    src = _official(manifest) if official_split else None
    if src is not None:
        is_train_src = src.to_numpy() == "train"
        pool = nominal_rows[is_train_src[nominal_rows]]
        test_nominal = nominal_rows[~is_train_src[nominal_rows]]
        log.info("anomaly split: the dataset's own train/test (%d nominal train, %d nominal test)", len(pool), len(test_nominal))
    else:
        test_nominal = stratified_test_rows(manifest, nominal_rows, test_fraction, split_rng(seed, "anomaly_test"))
        pool = np.setdiff1d(nominal_rows, test_nominal)
    left_out = np.zeros(0, dtype=np.int64)
    if max_train_nominal is not None and len(pool) > max_train_nominal:
        if max_train_nominal < 2:
            raise DefectbenchError(f"anomaly split: max_train_nominal {max_train_nominal}: needs at least 2 (train + holdout)")
        kept = np.sort(split_rng(seed, "anomaly_train_cap").choice(pool, size=max_train_nominal, replace=False))
        left_out = np.setdiff1d(pool, kept)
        pool = kept
    holdout = stratified_test_rows(manifest, pool, holdout_fraction, split_rng(seed, "anomaly_holdout"))
    subset = np.full(len(manifest), "test", dtype=object)
    subset[pool] = "train"
    subset[holdout] = "holdout"
    subset[test_nominal] = "test"
    subset[left_out] = "unused" if src is not None else "test"
    names = np.where(anomalous, manifest["class_name"].astype(str).to_numpy(), NOMINAL_NAME)
    return pd.DataFrame(
        {
            "row": np.arange(len(manifest)),
            "subset": subset.astype(str),
            "label": anomalous.astype(np.int64),
            "label_name": names,
            "label_priority": np.full(len(manifest), np.nan),
        },
        columns=SPLIT_COLUMNS,
    )


def clustering_split(manifest: pd.DataFrame, seed: int, **anomaly_kwargs: Any) -> pd.DataFrame:
    """Test rows of the anomaly split, labelled with their defect type (nominal: ``good``)."""
    test = anomaly_split(manifest, seed, **anomaly_kwargs)
    rows = test.loc[test["subset"] == "test", "row"].to_numpy()
    anomalous = manifest["is_anomalous"].to_numpy(dtype=bool)[rows]
    return pd.DataFrame(
        {
            "row": rows,
            "subset": "test",
            "label": manifest["label"].to_numpy(dtype=np.int64)[rows],
            "label_name": np.where(anomalous, manifest["class_name"].astype(str).to_numpy()[rows], NOMINAL_NAME),
            "label_priority": np.full(len(rows), np.nan),
        },
        columns=SPLIT_COLUMNS,
    )


def make_split(manifest: pd.DataFrame, task: str, seed: int, dataset_cfg: dict[str, Any]) -> pd.DataFrame:
    """The split of ``task`` for one seed, with fractions from the dataset's config entry."""
    from defectbench.config import with_dataset_defaults

    dataset_cfg = with_dataset_defaults(dataset_cfg)
    test_fraction = float(dataset_cfg["test_fraction"])
    official = bool(dataset_cfg["official_split"])
    if task == "classification":
        return classification_split(manifest, seed, test_fraction, official)
    kwargs = dict(test_fraction=test_fraction, holdout_fraction=float(dataset_cfg["holdout_fraction"]),
                  official_split=official, max_train_nominal=dataset_cfg["max_train_nominal"])
    if task == "anomaly":
        return anomaly_split(manifest, seed, **kwargs)
    if task == "clustering":
        return clustering_split(manifest, seed, **kwargs)
    raise DefectbenchError(f"split task {task!r}: use one of {TASKS}")


def write_split(
    manifest_path: str | os.PathLike, task: str, seed: int, dataset_cfg: dict[str, Any], out_path: str | os.PathLike
) -> pd.DataFrame:
    """Read the manifest, make the split, log its sizes, write it atomically."""
    from defectbench.data.manifest import read_manifest

    split = make_split(read_manifest(manifest_path), task, seed, dataset_cfg)
    sizes = split.groupby("subset").size().to_dict()
    log.info("%s split seed %d: %s", task, seed, sizes)
    write_parquet(out_path, split)
    return split


def read_split(path: str | os.PathLike, required: tuple[str, ...] = ("row", "subset", "label")) -> pd.DataFrame:
    """A split file, sorted by ``row``; a one-line error when it is missing or lacks columns."""
    try:
        split = pd.read_parquet(path)
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: split file not found; run the make_split rule") from None
    missing = set(required) - set(split.columns)
    if missing:
        raise DefectbenchError(f"{path}: split lacks columns {sorted(missing)}; rerun make_split")
    return split.sort_values("row", kind="stable").reset_index(drop=True)
