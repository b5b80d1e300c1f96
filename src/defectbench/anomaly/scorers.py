"""Image-level anomaly scorers on frozen features (specs B.1, B.2). Higher score = more anomalous.

Each scorer is a pure function ``score_*(train_feats, test_feats) -> (N_test,) float64``: it
"fits" on the nominal training features and scores the test features, nothing else.

* :func:`score_knn`: mean cosine distance to the k nearest training features (k=5).
* :func:`score_mahalanobis`: Mahalanobis distance to the training mean, with the pseudo-inverse of
  ``np.cov`` (faithful) or the Ledoit-Wolf shrinkage covariance (clean: 128-512-d features from a
  few hundred images give a singular sample covariance).
* :func:`score_cosine`: 1 - cosine similarity to the mean training feature.

>>> import numpy as np
>>> train = np.array([[1.0, 0.0], [0.0, 1.0]])
>>> score_cosine(train, np.array([[1.0, 1.0], [-1.0, -1.0]])).round(3).tolist()
[0.0, 2.0]
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import numpy as np

from defectbench.runtime import DefectbenchError


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _check(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise DefectbenchError(f"scorer: train features {train.shape} and test features {test.shape} must be (N, d) with one d")
    if train.shape[0] == 0:
        raise DefectbenchError("scorer: no nominal training features; check the anomaly split")
    return train, test


def score_knn(train_feats: np.ndarray, test_feats: np.ndarray, k: int = 5, chunk: int = 4096) -> np.ndarray:
    """Mean cosine distance (1 - cos) from each test feature to its ``k`` nearest training features.

    Exact search by one matrix product per chunk of test rows (as sklearn's brute-force cosine
    NearestNeighbors). ``k`` is capped at the number of training features.
    """
    train, test = _check(train_feats, test_feats)
    if k < 1:
        raise DefectbenchError(f"anomaly.knn_k: must be >= 1, got {k}")
    k = min(k, train.shape[0])
    train_n = _l2_normalise(train)
    out = np.empty(test.shape[0])
    for start in range(0, test.shape[0], chunk):
        dist = 1.0 - _l2_normalise(test[start:start + chunk]) @ train_n.T
        nearest = np.partition(dist, k - 1, axis=1)[:, :k]
        out[start:start + chunk] = nearest.mean(axis=1)
    return out


def score_mahalanobis(train_feats: np.ndarray, test_feats: np.ndarray, shrinkage: bool = False) -> np.ndarray:
    """sqrt((x - mu)^T S^+ (x - mu)) with mu, S from the training features.

    ``shrinkage=False``: S = ``np.cov`` (unbiased), inverted with ``np.linalg.pinv`` (faithful).
    ``shrinkage=True``: S = Ledoit-Wolf estimate (well conditioned, invertible).
    """
    train, test = _check(train_feats, test_feats)
    mu = train.mean(axis=0)
    if shrinkage:
        from sklearn.covariance import LedoitWolf

        precision = LedoitWolf().fit(train).precision_
    else:
        if train.shape[0] < 2:
            raise DefectbenchError("scorer mahalanobis: needs at least 2 nominal training images")
        precision = np.linalg.pinv(np.cov(train, rowvar=False), hermitian=True)
    diff = test - mu
    sq = np.einsum("ij,jk,ik->i", diff, precision, diff)
    return np.sqrt(np.maximum(sq, 0.0))


def score_cosine(train_feats: np.ndarray, test_feats: np.ndarray) -> np.ndarray:
    """1 - cos(x, mean of the training features)."""
    train, test = _check(train_feats, test_feats)
    mean = _l2_normalise(train.mean(axis=0, keepdims=True))
    return 1.0 - (_l2_normalise(test) @ mean.T).ravel()


def get_scorer(name: str, anomaly_cfg: Mapping[str, Any]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The scorer registered as ``name`` (:data:`defectbench.registry.ANOMALY_SCORERS`), with the
    ``anomaly`` section keys it reads bound to its keyword arguments.

    >>> get_scorer("knn", {"knn_k": 1}).keywords
    {'k': 1}
    """
    from defectbench import registry

    entry = registry.entry("anomaly_scorers", name)
    kwargs = {**entry.fixed, **{registry.SCORER_ARGUMENTS[key]: anomaly_cfg[key] for key in entry.reads}}
    return functools.partial(registry.implementation("anomaly_scorers", name), **kwargs)
