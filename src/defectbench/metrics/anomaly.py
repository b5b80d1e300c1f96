"""Anomaly-detection metrics (specs B.2, D.6, cross-cutting decision 1). Anomaly = positive class.

Image level:

* ``image_auroc``, ``image_auprc``: threshold-free, the primary numbers.
* ``threshold``: the ``quantile`` of the *held-out nominal* scores (no test label is used);
  an image is predicted anomalous when its score is strictly above it, so about ``1 - quantile``
  of nominal images are flagged. ``precision``, ``recall``, ``f1``, ``accuracy`` at it.
* ``f1_max_oracle``: the best F1 over all thresholds chosen *on the test labels*: an upper
  bound, never a headline number.

Pixel level (when ``maps`` and ``masks`` with at least one anomalous pixel are given):

* ``pixel_auroc`` over all pixels of all test images.
* ``pro``: the per-region-overlap curve (mean over every connected ground-truth region of the
  fraction of its pixels above a threshold) against the pixel FPR on nominal pixels, integrated up
  to ``fpr_limit`` and normalised.

  - ``standard``: every distinct score is a threshold (exact curve), the curve is interpolated
    at FPR = ``fpr_limit`` and the area is divided by ``fpr_limit`` (MVTec AD convention).
  - ``ddad_compat``: DDAD's port of RD4AD: global min-max normalised maps, 200 thresholds evenly
    spaced in [0, 1), a pixel is positive when strictly above the threshold, rows with
    FPR < ``fpr_limit`` kept and their FPR rescaled by the largest retained FPR.

  Regions are 8-connected components of each image's mask (``scipy.ndimage.label`` with a 3x3
  structure, as skimage's default and the MVTec evaluation code), never across images.

Speed: one sort of all pixel scores serves pixel AUROC, both PRO modes and the region counts
(cumulative sums over the sorted order), so ~1e7 pixels take a few seconds.

>>> import numpy as np
>>> m = evaluate_anomaly(np.array([.1, .4, .35, .8]), np.array([0, 0, 1, 1]), np.array([.1, .2, .3]))
>>> m["image_auroc"], round(m["threshold"], 3), m["recall"]
(0.75, 0.29, 1.0)
"""

from __future__ import annotations

import re

from typing import Literal

import numpy as np

from defectbench.runtime import DefectbenchError

ProMode = Literal["standard", "ddad_compat"]
DDAD_PRO_STEPS = 200


# ----------------------------------------------------------------------------- sorted curves
def _descending_groups(scores: np.ndarray, *weights: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct scores in descending order and, for each weight array, the cumulative sum of the
    weights of all items scoring >= that distinct score. One sort; ties are one group."""
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    ends = _group_ends(s)
    cums = [np.cumsum(w[order], dtype=np.float64)[ends] for w in weights]
    return s[ends], cums


def _group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Index of the last item of each run of equal values in a sorted array."""
    ends = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    return np.append(ends, sorted_scores.size - 1)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under the piecewise-linear curve (x nondecreasing, starting at x=0) on [0, limit],
    with the curve interpolated linearly at x = limit."""
    idx = int(np.searchsorted(x, limit, side="right"))  # x[:idx] <= limit
    xs, ys = x[:idx], y[:idx]
    if idx < x.size and xs[-1] < limit:
        x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
        xs = np.append(xs, limit)
        ys = np.append(ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return _trapezoid(ys, xs)


def roc_pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The curves :func:`binary_auroc` and :func:`average_precision` integrate: ``(fpr, tpr)`` from
    (0, 0), and ``(recall, precision)``, at every distinct score as threshold (an item is positive
    when it scores >= it), highest first; ties are one point. A class absent from ``labels``
    gives rates of 0, not NaN (for plotting).

    >>> fpr, tpr, recall, precision = roc_pr_points(np.array([0, 1, 0, 1]), np.array([.1, .9, .5, .5]))
    >>> fpr.tolist(), tpr.tolist(), precision.round(3).tolist()
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0], [1.0, 0.667, 0.5])
    """
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores).ravel()
    n_pos = max(int(labels.sum()), 1)
    n_neg = max(labels.size - int(labels.sum()), 1)
    _, (tp, fp) = _descending_groups(scores, labels.astype(np.float64), (~labels).astype(np.float64))
    recall = tp / n_pos
    return np.concatenate([[0.0], fp / n_neg]), np.concatenate([[0.0], recall]), recall, tp / (tp + fp)


def binary_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC (ties count one half), ``None`` when only one class is present.

    Equal to the fraction of (positive, negative) pairs the scores order correctly.

    >>> binary_auroc(np.array([0, 1, 0, 1]), np.array([.1, .9, .5, .5]))
    0.875
    """
    labels = np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():
        return None
    fpr, tpr, _, _ = roc_pr_points(labels, scores)
    return _trapezoid(tpr, fpr)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Step-wise average precision (sklearn's definition): sum over thresholds of
    (R_i - R_{i-1}) * P_i. ``None`` without positives."""
    labels = np.asarray(labels).ravel().astype(bool)
    if not labels.any():
        return None
    _, _, recall, precision = roc_pr_points(labels, scores)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def _binary_at(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1, accuracy of boolean predictions (anomaly positive; 0 if undefined)."""
    tp = float(np.sum(predicted & labels))
    fp = float(np.sum(predicted & ~labels))
    fn = float(np.sum(~predicted & labels))
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": float(np.mean(predicted == labels))}


def _f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Max F1 over every threshold 'score >= t' (t on the test scores: an oracle)."""
    n_pos = int(labels.sum())
    if n_pos == 0:
        return None
    _, (tp, fp) = _descending_groups(scores, labels.astype(np.float64), (~labels).astype(np.float64))
    return float(np.max(2 * tp / (tp + fp + n_pos)))


# ----------------------------------------------------------------------------- pixel level
def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected ground-truth regions of a (N,H,W) mask stack: int32 ids (0 = nominal pixel,
    1..R = region), 8-connected within each image, never joined across images."""
    from scipy import ndimage  # pixel metrics only: image-level scoring jobs skip the import

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 3x3 neighbourhood in-plane only
    regions, n = ndimage.label(np.asarray(masks) > 0, structure=structure)
    return regions.astype(np.int32, copy=False), int(n)


def pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, *, mode: ProMode = "standard", fpr_limit: float = 0.3
) -> dict[str, float | None]:
    """``pixel_auroc`` and ``pro`` of (N,H,W) maps against (N,H,W) 0/1 masks from ONE sort.

    Sorting all pixels once by descending score, a threshold is a prefix of that order: the FPR,
    TPR and mean region overlap above it are cumulative counts. Each region pixel carries the
    weight 1 / (R * |region|), so their cumulative sum is the mean per-region overlap.
    """
    maps, masks = _check_pixels(maps, masks)
    if mode not in ("standard", "ddad_compat"):
        raise DefectbenchError(f"metrics.pro_mode: unknown {mode!r}; use standard or ddad_compat")
    regions, n_regions = label_regions(masks)
    flat = maps.ravel()
    order = np.argsort(flat, kind="stable")[::-1]
    scores = flat[order]
    region_of = regions.ravel()[order]
    del order
    nominal = region_of == 0
    n_nominal = int(nominal.sum())
    n_anomalous = nominal.size - n_nominal
    if n_regions == 0 or n_nominal == 0:
        return {"pixel_auroc": None, "pro": None}
    fp_all = np.cumsum(nominal, dtype=np.int64)
    areas = np.bincount(region_of, minlength=n_regions + 1).astype(np.float64)
    per_region = np.zeros(n_regions + 1)
    per_region[1:] = 1.0 / (n_regions * areas[1:])
    pro_all = np.cumsum(per_region[region_of])

    ends = _group_ends(scores)
    fp = fp_all[ends].astype(np.float64)
    tp = (ends + 1) - fp
    auroc = _trapezoid(np.concatenate([[0.0], tp / n_anomalous]), np.concatenate([[0.0], fp / n_nominal]))

    if mode == "standard":
        fpr = np.concatenate([[0.0], fp / n_nominal])
        pro_curve = np.concatenate([[0.0], pro_all[ends]])
        return {"pixel_auroc": auroc, "pro": _area_up_to(fpr, pro_curve, fpr_limit) / fpr_limit}

    # ddad_compat: min-max normalise, 200 thresholds in [0, 1), positive = strictly above.
    lo, hi = float(scores[-1]), float(scores[0])
    normalised = (scores.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(scores.size)
    ends = _group_ends(normalised)  # normalising may merge nearly equal scores
    thresholds = np.arange(DDAD_PRO_STEPS) / DDAD_PRO_STEPS
    n_above = np.searchsorted(-normalised[ends], -thresholds, side="left")  # groups with value > t
    last = ends[np.maximum(n_above - 1, 0)]
    fpr = np.where(n_above > 0, fp_all[last] / n_nominal, 0.0)
    pro_curve = np.where(n_above > 0, pro_all[last], 0.0)
    keep = fpr < fpr_limit
    if keep.sum() < 2 or fpr[keep].max() <= 0:
        return {"pixel_auroc": auroc, "pro": None}
    # Thresholds ascend, so FPR descends: reverse to walk the curve from FPR 0 upwards.
    fpr, pro_curve = fpr[keep][::-1] / fpr[keep].max(), pro_curve[keep][::-1]
    return {"pixel_auroc": auroc, "pro": _trapezoid(pro_curve, fpr)}


def per_region_overlap(
    maps: np.ndarray, masks: np.ndarray, *, mode: ProMode = "standard", fpr_limit: float = 0.3
) -> float | None:
    """Normalised area under the PRO curve up to ``fpr_limit`` (see the module docstring).

    ``maps``: (N,H,W) float anomaly maps; ``masks``: (N,H,W) 0/1. ``None`` when there is no
    anomalous or no nominal pixel.
    """
    return pixel_metrics(maps, masks, mode=mode, fpr_limit=fpr_limit)["pro"]


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float | None:
    """AUROC of all pixels of all maps against the masks (``None`` without both classes)."""
    maps, masks = _check_pixels(maps, masks)
    return binary_auroc(masks.ravel() > 0, maps.ravel())


def _check_pixels(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.shape != masks.shape or maps.ndim != 3:
        raise DefectbenchError(
            f"pixel metrics: maps {maps.shape} and masks {masks.shape} must both be (N,H,W); resize maps to the mask size"
        )
    return maps, masks


# ----------------------------------------------------------------------------- entry points
def evaluate_anomaly(
    test_scores: np.ndarray,
    test_labels: np.ndarray,
    holdout_scores: np.ndarray,
    *,
    quantile: float = 0.95,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    pro_mode: ProMode = "standard",
    fpr_limit: float = 0.3,
    test_types: np.ndarray | None = None,
) -> dict[str, float | None]:
    """Every anomaly metric of one test set (module docstring). Labels: 1 = anomalous.

    ``holdout_scores`` are scores of held-out *nominal* images from a model that never saw them;
    only they fix the threshold. ``maps``/``masks`` (N,H,W) add pixel AUROC and PRO.
    ``test_types`` (defect type name per test image) adds :func:`detection_rates` at that threshold.
    """
    scores = np.asarray(test_scores, dtype=np.float64).ravel()
    labels = np.asarray(test_labels).ravel().astype(bool)
    holdout = np.asarray(holdout_scores, dtype=np.float64).ravel()
    if scores.size != labels.size or scores.size == 0:
        raise DefectbenchError(f"evaluate_anomaly: {scores.size} test scores for {labels.size} labels")
    if holdout.size == 0:
        raise DefectbenchError("evaluate_anomaly: no held-out nominal scores to fit the threshold; raise holdout_fraction")
    if not np.isfinite(scores).all() or not np.isfinite(holdout).all():
        raise DefectbenchError("evaluate_anomaly: non-finite anomaly scores; check the scorer's features")
    threshold = float(np.quantile(holdout, quantile))
    out: dict[str, float | None] = {
        "image_auroc": binary_auroc(labels, scores),
        "image_auprc": average_precision(labels, scores),
        "threshold": threshold,
        **_binary_at(labels, scores > threshold),
        "holdout_fpr": float(np.mean(holdout > threshold)),
        "f1_max_oracle": _f1_max(labels, scores),
        "n_test": float(labels.size),
        "n_anomalous": float(labels.sum()),
        "n_holdout": float(holdout.size),
    }
    if test_types is not None:
        out.update(detection_rates(scores, labels, test_types, threshold))
    if maps is not None and masks is not None and np.any(np.asarray(masks) > 0):
        out.update(pixel_metrics(maps, masks, mode=pro_mode, fpr_limit=fpr_limit))
    return out


def detection_rates(scores: np.ndarray, labels: np.ndarray, types: np.ndarray, threshold: float) -> dict[str, float]:
    """Share of each defect type's test images flagged (score above ``threshold``), as
    ``detect_<type>`` (type name lower-cased, non-alphanumerics as ``_``); anomalous images only.

    >>> detection_rates(np.array([.9, .2, .7, .1]), np.array([1, 1, 1, 0]), np.array(["Crack", "Crack", "blow-hole", "good"]), .5)
    {'detect_blow_hole': 1.0, 'detect_crack': 0.5}
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    types = np.asarray(types).astype(str).ravel()
    if types.size != scores.size:
        raise DefectbenchError(f"detection_rates: {types.size} defect types for {scores.size} test scores")
    out: dict[str, float] = {}
    for name in sorted(set(types[labels])):
        hit = labels & (types == name)
        out["detect_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")] = float(np.mean(scores[hit] > threshold))
    return dict(sorted(out.items()))


def leaky_percentile_metrics(
    test_scores: np.ndarray, test_labels: np.ndarray, percentile: float = 70.0
) -> dict[str, float]:
    """LEAKY (specs B.2, faithful protocol only): threshold = the ``percentile`` of the *test*
    scores, then accuracy and support-weighted precision/recall/F1 over both classes, as the
    reference evaluation script does. Keys are prefixed ``leaky_`` so no table mistakes them for
    clean numbers.
    """
    scores = np.asarray(test_scores, dtype=np.float64).ravel()
    labels = np.asarray(test_labels).ravel().astype(bool)
    threshold = float(np.percentile(scores, percentile))
    predicted = scores > threshold
    out = {"leaky_threshold": threshold, "leaky_accuracy": float(np.mean(predicted == labels))}
    weighted = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    for positive in (True, False):  # each class in turn as the positive class
        support = float(np.sum(labels == positive)) / labels.size
        if support == 0:
            continue
        per_class = _binary_at(labels == positive, predicted == positive)
        for key in weighted:
            weighted[key] += support * per_class[key]
    out.update({f"leaky_{k}_weighted": v for k, v in weighted.items()})
    return out
