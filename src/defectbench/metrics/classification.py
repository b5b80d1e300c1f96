"""Multi-class classification metrics with the semantics of the DiffCL tables (specs A.1).

* ``accuracy``: fraction of correct argmax predictions.
* ``macro_recall``: unweighted mean of per-class recall (balanced accuracy).
* ``macro_f1``: unweighted mean of per-class F1.
* ``macro_auroc``: unweighted mean of one-vs-rest AUROCs of the softmax probabilities.
* ``macro_auprc``: unweighted mean of per-class average precision on one-hot labels.

Classes absent from the test set (rule): every macro average runs over the classes that occur in
``y_true`` only. Recall, AUROC and AP are undefined for a class without positives, and counting
it as 0 (or skipping it for some metrics but not others) would make numbers incomparable across
splits. Predictions *of* an absent class still count as errors: they lower accuracy and the recall
of the true classes. ``n_classes_evaluated`` records how many classes entered the averages. With
fewer than two classes present the AUROC is undefined and reported as ``None``.

For two-class problems the binary numbers of the MSc protocol (specs C.3: class 1 = defective =
positive) are added as ``binary_precision``, ``binary_recall``, ``binary_f1``.

>>> import numpy as np
>>> m = classification_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]), 2)
>>> round(m["accuracy"], 4), m["macro_recall"], m["macro_auroc"]
(0.6667, 0.75, 1.0)
"""

from __future__ import annotations

import numpy as np

# The library's own sorted-curve AUROC/AP (checked against sklearn in the tests): importing
# sklearn.metrics would cost every probe job about a second of start-up (it loads scipy.stats).
from defectbench.metrics.anomaly import average_precision, binary_auroc
from defectbench.runtime import DefectbenchError


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: rows = true class, columns = predicted class.

    >>> confusion(np.array([0, 1, 1]), np.array([0, 0, 1]), 3).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise DefectbenchError(f"confusion: y_true has {y_true.size} entries but y_pred has {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise DefectbenchError(f"confusion: {name} holds a class id outside [0, {n_classes}); check the labels")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def _per_class_prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return precision, recall, f1


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float | None]:
    """Accuracy, macro recall, macro F1, macro OvR AUROC, macro AUPRC from class probabilities.

    ``y_true``: (N,) int class ids in [0, n_classes); ``proba``: (N, n_classes) probabilities
    (softmax outputs; rows need not sum exactly to 1). Predictions are the row argmax.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (y_true.size, n_classes):
        raise DefectbenchError(
            f"classification_metrics: proba has shape {proba.shape}, expected ({y_true.size}, {n_classes})"
        )
    if y_true.size == 0:
        raise DefectbenchError("classification_metrics: empty test set; check the split")
    y_pred = proba.argmax(axis=1)
    cm = confusion(y_true, y_pred, n_classes)
    present = np.flatnonzero(cm.sum(axis=1) > 0)
    precision, recall, f1 = _per_class_prf(cm)

    aurocs, aps = [], []
    for k in present:
        positive = y_true == k
        aps.append(average_precision(positive, proba[:, k]))
        if 0 < positive.sum() < positive.size:
            aurocs.append(binary_auroc(positive, proba[:, k]))

    out: dict[str, float | None] = {
        "accuracy": float(np.trace(cm) / y_true.size),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "macro_auroc": float(np.mean(aurocs)) if len(present) >= 2 else None,
        "macro_auprc": float(np.mean(aps)),
        "n_test": float(y_true.size),
        "n_classes_evaluated": float(len(present)),
    }
    if n_classes == 2:
        out["binary_precision"] = float(precision[1])
        out["binary_recall"] = float(recall[1])
        out["binary_f1"] = float(f1[1])
    return out
