"""Evaluation metrics shared by every stage.

* :mod:`defectbench.metrics.classification`: accuracy, macro recall/F1, macro OvR AUROC, macro
  AUPRC (the DiffCL table semantics) and the confusion matrix.
* :mod:`defectbench.metrics.anomaly`: image AUROC/AUPRC, thresholded metrics at a threshold fitted
  on held-out nominal scores, the F1-max oracle, pixel AUROC and PRO (standard and DDAD-compatible).
* :mod:`defectbench.metrics.clustering`: NMI, ARI and micro F1 after Hungarian matching.

This ``__init__`` re-exports nothing (see :mod:`defectbench.fingerprint`): a probe job must not
depend on the anomaly metrics' code.
"""
