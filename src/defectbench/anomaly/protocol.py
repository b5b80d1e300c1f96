"""The anomaly evaluation protocol (specs B.2, D.6, E.4): what every anomaly stage does once its
model has scored images. The image-level scorers (:mod:`defectbench.anomaly.image_level`), PatchCore
(:mod:`defectbench.anomaly.patchcore`) and DDAD (:mod:`defectbench.diffusion.ddad`) all use it:

1. :func:`anomaly_subsets`: the anomaly split's ``train`` (fit), ``holdout`` (nominal images the
   model never saw: the threshold) and ``test`` rows, each sorted by ``row`` and non-empty;
   :func:`read_anomaly_split`: their images (and masks) through the split/cache reader.
2. :func:`evaluate`: :func:`defectbench.metrics.anomaly.evaluate_anomaly`: the threshold is the
   ``quantile`` of the held-out nominal scores (no test label is used), image AUROC/AUPRC,
   P/R/F1/accuracy at the threshold, the oracle F1-max, the per-defect-type detection rates
   (``detect_<type>``, from the split's ``label_name``), pixel AUROC and PRO where maps and masks
   with defect pixels are given; with ``leaky_percentile`` (scorers under ``protocol: faithful``)
   the reference's ``leaky_*`` numbers too.
3. :func:`write_scores`: ``scores.parquet``, one schema for every stage (:data:`SCORES_COLUMNS`:
   row int64, subset ``holdout``/``test``, label int64 (1 = anomalous), score float64, map_index
   int64), holdout rows first, then test rows, each by ``row``; and, for stages with anomaly maps,
   ``maps.npy``: the test maps of :func:`sample_maps`, float32 (K,H,W), map ``k`` belongs to the
   test row with ``map_index == k`` (-1 = no map kept; every row of a stage without maps).

Map sample: up to :data:`MAP_SAMPLES` (16) test maps, half anomalous and half nominal (the other
class fills in when one is short), each class's picks spread evenly over its test images. The
test set is sorted by row (= by file path), so spreading covers every defect type instead of the
first few files of the first one. float32, not float16: a kept map holds exactly the values the
metrics saw (DDAD's image score is its map's maximum), and float16 keeps about 3 significant
digits and overflows above 65504 (PatchCore's squared distances are unbounded); 16 maps at 224 px
are 3.2 MB.

>>> import numpy as np
>>> sample_maps(np.array([0, 0, 0, 1, 1, 1, 1, 1]), n=4).tolist()
[0, 2, 3, 7]
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from defectbench.data.cache import SplitCache, SplitImages
from defectbench.metrics.anomaly import ProMode, evaluate_anomaly, leaky_percentile_metrics
from defectbench.runtime import DefectbenchError, atomic_path, write_parquet

SUBSETS = ("train", "holdout", "test")
SCORES_COLUMNS = ("row", "subset", "label", "score", "map_index")
MAP_SAMPLES = 16
MAPS_DTYPE = np.float32


def read_anomaly_split(split_path: str | os.PathLike, cache_path: str | os.PathLike,
                       masks_path: str | os.PathLike | None = None) -> dict[str, SplitImages]:
    """The images (and masks, given ``masks_path``) of the anomaly split's train, holdout and test
    rows (:func:`anomaly_subsets`), read once through the split/cache reader
    (:class:`defectbench.data.cache.SplitCache`)."""
    data = SplitCache(split_path, cache_path, masks_path=masks_path)
    return {name: data.take(part) for name, part in anomaly_subsets(data.split, split_path).items()}


def anomaly_subsets(split: pd.DataFrame, split_path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The ``train``, ``holdout`` and ``test`` rows of an anomaly split, each sorted by ``row``;
    a one-line error naming ``split_path`` when one of them is empty."""
    parts = {name: split[split["subset"] == name].sort_values("row") for name in SUBSETS}
    for name, part in parts.items():
        if part.empty:
            raise DefectbenchError(f"{split_path}: the anomaly split has no '{name}' images; "
                                   "check the dataset's holdout_fraction/test_fraction")
    return parts


def evaluate(test: pd.DataFrame, test_scores: np.ndarray, holdout_scores: np.ndarray, *, quantile: float,
             maps: np.ndarray | None = None, masks: np.ndarray | None = None, pro_mode: ProMode = "standard",
             fpr_limit: float = 0.3, leaky_percentile: float | None = None) -> dict[str, float | None]:
    """Every metric of one test set (module docstring, step 2). ``test``: the split's test rows
    (``label``, ``label_name``) in the order of ``test_scores``; ``maps``/``masks`` (N,H,W) as the
    pixel metrics should see them (e.g. center-cropped)."""
    labels = test["label"].to_numpy().astype(int)
    metrics = evaluate_anomaly(test_scores, labels, holdout_scores, quantile=float(quantile),
                               maps=maps if masks is not None else None, masks=masks,
                               pro_mode=pro_mode, fpr_limit=float(fpr_limit),
                               test_types=test["label_name"].to_numpy())
    if leaky_percentile is not None:
        metrics.update(leaky_percentile_metrics(test_scores, labels, float(leaky_percentile)))
    return metrics


def sample_maps(labels: np.ndarray, n: int = MAP_SAMPLES) -> np.ndarray:
    """Positions (into the test set, ascending) of the maps kept for figures (module docstring)."""
    labels = np.asarray(labels)
    anomalous, nominal = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    take_anomalous = min(len(anomalous), max(n // 2, n - len(nominal)))
    take_nominal = min(len(nominal), n - take_anomalous)
    picked = [_spread(anomalous, take_anomalous), _spread(nominal, take_nominal)]
    return np.sort(np.concatenate(picked)).astype(int)


def _spread(positions: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``positions`` evenly spaced from the first to the last (all distinct)."""
    if count <= 0:
        return positions[:0]
    return positions[np.linspace(0, len(positions) - 1, count).round().astype(int)]


def write_scores(scores_path: str | os.PathLike, *, holdout: pd.DataFrame, holdout_scores: np.ndarray,
                 test: pd.DataFrame, test_scores: np.ndarray, test_maps: np.ndarray | None = None,
                 maps_path: str | os.PathLike | None = None) -> None:
    """Write ``scores.parquet`` (and ``maps.npy`` when ``test_maps`` (N_test,H,W) are given) as the
    module docstring says. ``holdout``/``test``: the split rows the scores belong to, in order."""
    map_index = np.full(len(test), -1, dtype=np.int64)
    if test_maps is not None:
        if maps_path is None or len(test_maps) != len(test):
            raise DefectbenchError(f"{scores_path}: {len(test_maps)} anomaly maps for {len(test)} test images "
                                   "and a maps path are needed together")
        keep = sample_maps(test["label"].to_numpy())
        map_index[keep] = np.arange(len(keep))
        with atomic_path(maps_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(test_maps[keep], dtype=MAPS_DTYPE))
    frames = [_scores_frame(holdout, holdout_scores, "holdout", np.full(len(holdout), -1, dtype=np.int64)),
              _scores_frame(test, test_scores, "test", map_index)]
    write_parquet(scores_path, pd.concat(frames, ignore_index=True))


def _scores_frame(part: pd.DataFrame, scores: np.ndarray, subset: str, map_index: np.ndarray) -> pd.DataFrame:
    columns: dict[str, Any] = {
        "row": part["row"].to_numpy().astype(np.int64), "subset": subset,
        "label": part["label"].to_numpy().astype(np.int64),
        "score": np.asarray(scores, dtype=np.float64).ravel(), "map_index": map_index}
    return pd.DataFrame({name: columns[name] for name in SCORES_COLUMNS})
