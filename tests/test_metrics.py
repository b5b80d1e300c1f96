"""Metrics against hand-computed values and slow reference implementations written from the
definitions (not from the library code)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label as sk_label
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import label_binarize

from defectbench.metrics.anomaly import (
    binary_auroc,
    evaluate_anomaly,
    label_regions,
    leaky_percentile_metrics,
    per_region_overlap,
    pixel_auroc,
    roc_pr_points,
)
from defectbench.metrics.classification import classification_metrics, confusion
from defectbench.metrics.clustering import clustering_metrics, hungarian_match
from defectbench.runtime import DefectbenchError

# ----------------------------------------------------------------------------- classification
Y = np.array([0, 0, 1, 2])
P = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])


def test_classification_hand_values():
    m = classification_metrics(Y, P, 3)
    # predictions 0,1,1,2: 3 of 4 right
    assert m["accuracy"] == pytest.approx(0.75)
    # recalls 1/2, 1, 1
    assert m["macro_recall"] == pytest.approx(2.5 / 3)
    # F1: class0 P=1 R=.5 -> 2/3; class1 P=.5 R=1 -> 2/3; class2 1
    assert m["macro_f1"] == pytest.approx(7 / 9)
    # OvR AUROC by counting pairs: class0 4/4, class1 2/3 (.5 beats .2,.2, loses to .6), class2 3/3
    assert m["macro_auroc"] == pytest.approx(8 / 9)
    # AP: class0 1, class1 1/2 (its positive is ranked 2nd), class2 1
    assert m["macro_auprc"] == pytest.approx(2.5 / 3)
    assert "binary_f1" not in m


@pytest.mark.parametrize("decimals", [None, 1])
def test_classification_matches_spec_sklearn_calls(decimals):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    logits = rng.normal(size=(60, 4)) + 1.5 * np.eye(4)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if decimals is not None:  # many tied probabilities: ties must count as sklearn counts them
        proba = np.round(proba, decimals)
        assert len(np.unique(proba)) < proba.size / 10
        proba = proba / proba.sum(1, keepdims=True)  # sklearn's multi-class AUROC wants rows summing to 1
    m = classification_metrics(y, proba, 4)
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert m["macro_auprc"] == pytest.approx(
        average_precision_score(label_binarize(y, classes=range(4)), proba, average="macro")
    )


def test_classification_absent_class_rule():
    # class 3 never occurs in y_true; one image is predicted as class 3 (an error).
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.05, 0, 0.05], [0.1, 0.1, 0, 0.8], [0.2, 0.8, 0, 0], [0.3, 0.7, 0, 0]])
    m = classification_metrics(y, proba, 4)
    assert m["n_classes_evaluated"] == 2
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_recall"] == pytest.approx((0.5 + 1.0) / 2)  # over present classes only
    # class0 P=1 R=.5 F1=2/3; class1 P=1 R=1 F1=1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    # AUROC class0: positives .9, .1 vs negatives .2, .3 -> 2/4; class1: .8, .7 vs .05, .1 -> 1
    assert m["macro_auroc"] == pytest.approx(0.75)


def test_classification_binary_extras_and_single_class_auroc():
    m = classification_metrics(np.array([0, 1, 1, 1]), np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]]), 2)
    assert m["binary_precision"] == pytest.approx(1.0)
    assert m["binary_recall"] == pytest.approx(2 / 3)
    assert m["binary_f1"] == pytest.approx(0.8)
    single = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), 2)
    assert single["macro_auroc"] is None
    assert single["accuracy"] == pytest.approx(0.5)


def test_confusion_counts_and_bad_ids():
    cm = confusion(np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 2]]
    with pytest.raises(DefectbenchError):
        confusion(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(DefectbenchError):
        classification_metrics(Y, P[:, :2], 3)


# ----------------------------------------------------------------------------- image level
def test_binary_auroc_counts_pairs():
    # positives .8, .4; negatives .5, .1 -> pairs (.8>.5, .8>.1, .4<.5, .4>.1) = 3/4
    assert binary_auroc(np.array([1, 0, 1, 0]), np.array([0.8, 0.5, 0.4, 0.1])) == pytest.approx(0.75)
    # a tie counts one half: positive .5 vs negative .5
    assert binary_auroc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert binary_auroc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_binary_auroc_and_ap_match_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    assert binary_auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    m = evaluate_anomaly(s, y, s[y == 0])
    assert m["image_auprc"] == pytest.approx(average_precision_score(y, s))



def test_roc_pr_points_match_sklearn_curves():
    from sklearn.metrics import precision_recall_curve, roc_curve

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # with ties
    fpr, tpr, recall, precision = roc_pr_points(labels, scores)
    sk_fpr, sk_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    sk_precision, sk_recall, _ = precision_recall_curve(labels, scores)  # lowest threshold first, plus (0, 1)
    assert np.allclose(recall, sk_recall[:-1][::-1]) and np.allclose(precision, sk_precision[:-1][::-1])
    # one class only: rates of 0 (the curve a plot draws), not NaN
    fpr, tpr, recall, precision = roc_pr_points(np.zeros(3, int), np.array([0.1, 0.2, 0.3]))
    assert tpr.tolist() == [0.0, 0.0, 0.0, 0.0] and fpr.tolist() == [0.0, 1 / 3, 2 / 3, 1.0]

def test_evaluate_anomaly_threshold_from_holdout():
    test_scores = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    holdout = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    m = evaluate_anomaly(test_scores, labels, holdout, quantile=0.75)
    # 0.75-quantile of 5 sorted values: position 3 -> 0.3; predicted anomalous: score > 0.3
    assert m["threshold"] == pytest.approx(0.3)
    # predicted: .6 (FP), .7, .9 (TP); .3 is a FN
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["holdout_fpr"] == pytest.approx(1 / 5)
    # oracle: threshold .3 inclusive -> TP 3, FP 1 -> F1 = 6/7
    assert m["f1_max_oracle"] == pytest.approx(6 / 7)
    # AUROC: 9 pairs, wrong only (.3 < .6): 8/9
    assert m["image_auroc"] == pytest.approx(8 / 9)
    assert "pro" not in m


def test_per_defect_type_detection_rates_at_the_holdout_threshold():
    # holdout quantile 0.5 of [0.2, 0.4, 0.6] = 0.4: flagged = score > 0.4
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.45, 0.41, 0.2])
    labels = np.array([0, 0, 1, 1, 1, 1, 1])
    types = np.array(["good", "good", "MT_Crack", "MT_Crack", "blow-hole", "blow-hole", "blow-hole"])
    m = evaluate_anomaly(scores, labels, np.array([0.2, 0.4, 0.6]), quantile=0.5, test_types=types)
    assert m["threshold"] == pytest.approx(0.4)
    assert m["detect_mt_crack"] == pytest.approx(1 / 2) and m["detect_blow_hole"] == pytest.approx(2 / 3)
    assert "detect_good" not in m
    # together the types are the recall over all anomalous images
    assert m["recall"] == pytest.approx((1 + 2) / 5)
    assert not any(k.startswith("detect_") for k in evaluate_anomaly(scores, labels, np.array([0.2, 0.4, 0.6])))
    with pytest.raises(DefectbenchError, match="2 defect types for 7"):
        evaluate_anomaly(scores, labels, np.array([0.2]), test_types=types[:2])


def test_evaluate_anomaly_rejects_bad_input():
    with pytest.raises(DefectbenchError):
        evaluate_anomaly(np.array([0.1, 0.2]), np.array([0, 1, 1]), np.array([0.1]))
    with pytest.raises(DefectbenchError):
        evaluate_anomaly(np.array([0.1, 0.2]), np.array([0, 1]), np.array([]))
    with pytest.raises(DefectbenchError):
        evaluate_anomaly(np.array([0.1, np.nan]), np.array([0, 1]), np.array([0.1]))


def test_leaky_percentile_hand_values():
    scores = np.arange(10, dtype=float)  # 70th percentile = 6.3 -> predicted anomalous: 7, 8, 9
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 1])
    m = leaky_percentile_metrics(scores, labels)
    assert m["leaky_threshold"] == pytest.approx(6.3)
    # TP 2 (7, 9), FP 1 (8), FN 1 (6), TN 6 -> accuracy .8
    assert m["leaky_accuracy"] == pytest.approx(0.8)
    # class1: P 2/3 R 2/3; class0: P 6/7 R 6/7; weights .3 / .7
    assert m["leaky_precision_weighted"] == pytest.approx(0.3 * 2 / 3 + 0.7 * 6 / 7)
    assert m["leaky_recall_weighted"] == pytest.approx(0.8)
    assert m["leaky_f1_weighted"] == pytest.approx(0.3 * 2 / 3 + 0.7 * 6 / 7)


# ----------------------------------------------------------------------------- pixel level
def _reference_curve(maps, masks, thresholds, strict):
    """PRO and FPR at each threshold, straight from the definition, region by region."""
    regions = []
    for img, m in enumerate(masks):
        lab = sk_label(m > 0, connectivity=2)
        regions += [(img, lab == r) for r in range(1, lab.max() + 1)]
    nominal = masks == 0
    pros, fprs = [], []
    for t in thresholds:
        pred = maps > t if strict else maps >= t
        pros.append(np.mean([pred[img][reg].sum() / reg.sum() for img, reg in regions]))
        fprs.append((pred & nominal).sum() / nominal.sum())
    return np.array(fprs), np.array(pros)


def reference_pro_standard(maps, masks, limit):
    thresholds = np.unique(maps)[::-1]
    fpr, pro = _reference_curve(maps, masks, thresholds, strict=False)
    xs, ys = np.concatenate([[0], fpr]), np.concatenate([[0], pro])
    area = 0.0
    for i in range(len(xs) - 1):
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


def reference_pro_ddad(maps, masks, limit):
    norm = (maps - maps.min()) / (maps.max() - maps.min())
    thresholds = [i / 200 for i in range(200)]
    fpr, pro = _reference_curve(norm, masks, thresholds, strict=True)
    keep = fpr < limit
    return sk_auc(fpr[keep] / fpr[keep].max(), pro[keep])


def _toy_maps(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 14, 14), dtype=np.uint8)
    masks[0, 2:5, 2:6] = 1  # region 1
    masks[0, 9:12, 8:13] = 1  # region 2
    masks[1, 5:7, 5:7] = 1  # region 3 ...
    masks[1, 7, 7] = 1  # ... diagonally touching: same region under 8-connectivity
    # image 2 is nominal
    maps = rng.normal(size=masks.shape) + 1.2 * masks
    return np.round(maps, 1), masks  # rounding creates ties


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pro_standard_matches_reference(seed):
    maps, masks = _toy_maps(seed)
    for limit in (0.3, 0.05, 1.0):
        assert per_region_overlap(maps, masks, mode="standard", fpr_limit=limit) == pytest.approx(
            reference_pro_standard(maps, masks, limit), abs=1e-9
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pro_ddad_compat_matches_reference(seed):
    maps, masks = _toy_maps(seed)
    assert per_region_overlap(maps, masks, mode="ddad_compat", fpr_limit=0.3) == pytest.approx(
        reference_pro_ddad(maps, masks, 0.3), abs=1e-9
    )


def test_pro_hand_value_and_regions():
    # one 1x2 region (scores .9, .2) and two nominal pixels (.5, .1):
    # thresholds .9 -> (fpr 0, pro .5); .5 -> (.5, .5); .2 -> (.5, 1); .1 -> (1, 1)
    maps = np.array([[[0.9, 0.2], [0.5, 0.1]]])
    masks = np.array([[[1, 1], [0, 0]]])
    assert per_region_overlap(maps, masks, fpr_limit=1.0) == pytest.approx((0.5 * 0.5 + 0.5 * 1.0) / 1.0)
    # up to FPR .3: area .3 * .5, normalised by .3
    assert per_region_overlap(maps, masks, fpr_limit=0.3) == pytest.approx(0.5)
    _, n = label_regions(_toy_maps(0)[1])
    assert n == 3
    assert per_region_overlap(maps, np.zeros_like(masks)) is None


def test_pixel_auroc_and_evaluate_with_maps():
    maps, masks = _toy_maps(3)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    m = evaluate_anomaly(maps.max(axis=(1, 2)), np.array([1, 1, 0]), np.array([0.5]), maps=maps, masks=masks)
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert m["pro"] == pytest.approx(reference_pro_standard(maps, masks, 0.3))
    m = evaluate_anomaly(maps.max(axis=(1, 2)), np.array([1, 1, 0]), np.array([0.5]), maps=maps, masks=masks,
                         pro_mode="ddad_compat")
    assert m["pro"] == pytest.approx(reference_pro_ddad(maps, masks, 0.3))
    with pytest.raises(DefectbenchError):
        pixel_auroc(maps[:, :5], masks)


# ----------------------------------------------------------------------------- clustering
def test_clustering_permuted_labelling_is_perfect():
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    clusters = np.array([7, 7, 3, 3, 3, 5, 5])
    m = clustering_metrics(labels, clusters)
    assert m["f1"] == pytest.approx(1.0)
    assert m["nmi"] == pytest.approx(1.0)
    assert m["ari"] == pytest.approx(1.0)
    assert hungarian_match(labels, clusters) == {7: 0, 3: 1, 5: 2}


def test_clustering_hand_values_and_extra_clusters():
    labels = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([0, 0, 1, 1, 1, 2])  # 3 clusters for 2 labels
    m = clustering_metrics(labels, clusters)
    # best matching: cluster0 -> label0 (2 right), cluster1 -> label1 (2 right), cluster2 unmatched
    assert m["f1"] == pytest.approx(4 / 6)
    # ARI by hand: sum C(n_ij,2) = 1+1 = 2; rows C(3,2)*2 = 6; cols C(2,2)+C(3,2)+C(1,2) = 4;
    # expected index 6*4/C(6,2) = 1.6; max index (6+4)/2 = 5
    assert m["ari"] == pytest.approx((2 - 1.6) / (5 - 1.6))
    # NMI by hand: H(Y)=ln2, H(C) from (2,3,1)/6, I from the contingency table
    p_c = np.array([2, 3, 1]) / 6
    h_c = -(p_c * np.log(p_c)).sum()
    mi = (2 / 6) * np.log((2 / 6) / (0.5 * 2 / 6)) + (1 / 6) * np.log((1 / 6) / (0.5 * 3 / 6)) \
        + (2 / 6) * np.log((2 / 6) / (0.5 * 3 / 6)) + (1 / 6) * np.log((1 / 6) / (0.5 * 1 / 6))
    assert m["nmi"] == pytest.approx(mi / ((np.log(2) + h_c) / 2))
    # fewer clusters than labels: one label is left without a cluster
    assert clustering_metrics(np.array([0, 1, 2, 2]), np.array([0, 0, 1, 1]))["f1"] == pytest.approx(3 / 4)
