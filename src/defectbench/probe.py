"""Linear probe on frozen features (specs A.4, C.3): the linear_probe stage.

One job per encoder (a contrastive method's pre-projector feature h, or a control: the backbone
at random init, or with pretrained weights) evaluates every label fraction: features are
extracted once, for the largest labelled subset (the subsets are nested) and the test split, and
each fraction fits its own probe on its rows. The encoder is frozen in eval mode. Nothing is
selected on test labels.

* ``probe.kind: logistic`` (default): multinomial logistic regression on standardised features,
  trained to convergence with full-batch L-BFGS (:func:`fit_logistic`); its L2 strength is
  chosen from ``probe.l2_grid`` by cross-entropy on a validation split carved from the labelled
  images (``probe.val_fraction``), then the probe is refitted on all of them
  (:func:`fit_logistic_probe`). A probe whose optimiser stops early ranks encoders by how fast
  their features are fitted, not by what they hold: this one does not stop early.
* ``probe.kind: linear``: ``Linear(d, C)`` with Adam + cross-entropy for ``probe.epochs`` epochs
  (the reference recipe of A.4).

Every metrics file records the probe's optimiser steps (``train_steps``) and final train loss
(``train_loss``), and the encoder's pretraining steps (``pretrain_steps``, 0 for a control); the
logistic probe also its ``l2``, the final largest gradient entry (``grad_max``) and whether it
converged (``converged``, 1/0).

Augmentation:

* ``probe.augment: false``: the un-augmented train features.
* ``probe.augment: true`` (clean default of A.4: random-resized crop + horizontal flip, no
  test-time augmentation): ``probe.augment_views`` augmented copies of every labelled image are
  extracted up front. The linear probe draws one of them per image and epoch (with as many views
  as epochs this is exactly per-epoch augmentation); the logistic probe fits all of them.

Outputs per fraction (``labels<pct>/``): ``metrics.json`` (stage ``classification``: the metrics
of :func:`defectbench.metrics.classification.classification_metrics` plus the fit numbers above,
the confusion matrix in ``extra``; ``method`` is what ran, e.g. ``eps_supinfonce`` for FairKL with
weight 0), ``predictions.parquet`` (row, y_true, y_pred, proba_<k>), ``history.parquet`` and
``probe.pt`` (the head on raw features and the encoder path).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from defectbench.data.cache import SplitCache
from defectbench.data.splits import labelled_subset, split_rng
from defectbench.features import extract_features, load_feature_source
from defectbench.metrics.classification import classification_metrics, confusion
from defectbench.runtime import DefectbenchError, Timer, save_torch, stage_job, write_parquet
from defectbench.ssl.augment import random_resized_crop_flip

log = logging.getLogger("defectbench")


def train_linear_probe(train_views: np.ndarray, y_train: np.ndarray, n_classes: int, *, epochs: int,
                       batch_size: int, lr: float, weight_decay: float, seed: int,
                       device: torch.device) -> tuple[nn.Linear, pd.DataFrame]:
    """Fit ``Linear(d, n_classes)`` with Adam + CE on frozen features.

    ``train_views``: (V, N, d) features (V views of each of N images; each epoch draws one view
    per image with the epoch's generator). Returns the probe (eval mode) and the history.
    """
    from defectbench.optim import Adam
    from defectbench.train import train_loop

    views = torch.from_numpy(np.ascontiguousarray(train_views, dtype=np.float32)).to(device)
    labels = torch.from_numpy(np.array(y_train, dtype=np.int64)).to(device)
    n_views, n, dim = views.shape
    torch.manual_seed(seed)
    probe = nn.Linear(dim, n_classes).to(device)
    optimizer = Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)

    def batches(epoch: int, gen: torch.Generator):
        pick = torch.randint(n_views, (n,), generator=gen, device=device)
        feats = views[pick, torch.arange(n, device=device)]
        order = torch.randperm(n, generator=gen, device=device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield feats[idx], labels[idx]

    def step(batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator):
        x, y = batch
        logits = probe(x)
        return F.cross_entropy(logits.float(), y), {"train_acc": float((logits.argmax(1) == y).float().mean())}

    # a probe trains in seconds: no checkpoint
    history = train_loop(probe, optimizer, step, batches, epochs=epochs, seed=seed, device=device, amp="none",
                         checkpoint_path=None, checkpoint_every=epochs, batch_size_of=lambda b: len(b[1]),
                         log_prefix="probe ")
    return probe.eval(), history


@dataclass(frozen=True)
class LogisticFit:
    """A fitted multinomial logistic probe, with the standardisation folded into the head."""

    weight: np.ndarray  # (C, d): applies to raw (unstandardised) features
    bias: np.ndarray  # (C,)
    l2: float
    steps: int  # L-BFGS iterations
    train_loss: float  # penalised objective at the end (standardised features)
    grad_max: float  # largest absolute gradient entry at the end
    converged: bool  # grad_max <= tolerance

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = np.asarray(x, dtype=np.float64) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, *, l2: float, max_steps: int = 1000,
                 tolerance: float = 1e-6, class_weight: str | None = None) -> LogisticFit:
    """Multinomial logistic regression on standardised features, trained to convergence.

    Objective: (weighted) mean cross-entropy + ``l2``/2 · ||W||² (bias not penalised), on features
    standardised with the mean/std of ``x`` (constant features keep std 1); full-batch L-BFGS
    (scipy's L-BFGS-B, analytic gradient, float64), until the largest absolute gradient entry is at
    most ``tolerance`` or after ``max_steps`` iterations (no stop on a small loss change: that
    stops strongly penalised fits early). The objective is
    strictly convex for ``l2 > 0``, so the result does not depend on initialisation or batch order.
    ``converged``: the final largest gradient entry is at most ``tolerance``.
    ``class_weight='balanced'``: sample weight n / (C · count of its class), as sklearn.

    >>> fit = fit_logistic(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]), 2, l2=0.1)
    >>> fit.converged, fit.predict_proba(np.array([[0.0], [3.0]])).argmax(1).tolist()
    (True, [0, 1])
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    z = (x - mean) / std
    n, d = z.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if class_weight == "balanced":
        per_class = np.where(counts > 0, len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    elif class_weight is None:
        per_class = np.ones(n_classes)
    else:
        raise DefectbenchError(f"probe.class_weight: unknown {class_weight!r}; use balanced or null")
    sample_w = per_class[y] / per_class[y].sum()
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes:]
        logits = z @ w + b
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        loss = float(sample_w @ (lse - logits[np.arange(n), y])) + 0.5 * l2 * float((w ** 2).sum())
        g = (np.exp(logits - lse[:, None]) - onehot) * sample_w[:, None]
        return loss, np.concatenate([(z.T @ g + l2 * w).ravel(), g.sum(axis=0)])

    # L-BFGS-B's pgtol is exactly the largest absolute gradient entry (no bounds); ftol 0: no stop
    # on a small loss change, which stops strongly penalised fits early
    # one BLAS thread: the products are small, and threads spinning on them stall under contention
    # (a 1,536 x 512 fit: 0.05 s single-threaded, seconds with 2 threads on a busy 2-core machine)
    with threadpool_limits(limits=1, user_api="blas"):
        result = minimize(objective, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                          options={"maxiter": max_steps, "maxfun": 25 * max_steps, "gtol": tolerance, "ftol": 0.0,
                                   "maxcor": 20})
        loss, grad = objective(result.x)
    grad_max = float(np.abs(grad).max())
    w, b = result.x[: d * n_classes].reshape(d, n_classes), result.x[d * n_classes:]
    return LogisticFit(weight=(w / std[:, None]).T.copy(), bias=b - (mean / std) @ w, l2=float(l2), steps=int(result.nit),
                       train_loss=loss, grad_max=grad_max, converged=grad_max <= tolerance)


def validation_rows(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask: a stratified, seeded ``fraction`` of each class for validation, always
    leaving at least one image of every class for training (a class of 1 image gives none).

    >>> int(validation_rows(np.array([0, 0, 0, 0, 0, 1]), 0.4, seed=0).sum())
    2
    """
    rng = split_rng(seed, "probe_validation")
    mask = np.zeros(len(labels), dtype=bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        k = min(int(np.floor(len(idx) * fraction + 0.5)), len(idx) - 1)
        mask[idx[rng.permutation(len(idx))[:k]]] = True
    return mask


def fit_logistic_probe(train_views: np.ndarray, y: np.ndarray, n_classes: int, *, l2_grid: Sequence[float],
                       val_fraction: float, seed: int, max_steps: int, tolerance: float,
                       class_weight: str | None) -> tuple[LogisticFit, pd.DataFrame]:
    """The converged probe: L2 strength chosen on a validation split carved from the labelled
    images (never the test set), then refitted on all of them.

    ``train_views``: (V, N, d), V views of N labelled images; the validation split is by image
    (all views of an image are on one side). Selection: the lowest mean validation
    cross-entropy; ties go to the stronger penalty. With no validation image (every class has a
    single labelled image) the grid's middle value is used. Returns the final fit and a history
    with one row per candidate (``stage`` validation) and the final refit (``stage`` final).
    """
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    if not grid or grid[-1] <= 0:
        raise DefectbenchError("probe.l2_grid: needs at least one value, all > 0")
    n_views = train_views.shape[0]
    y = np.asarray(y)

    def stack(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return train_views[:, mask].reshape(-1, train_views.shape[-1]), np.tile(y[mask], n_views)

    fit_kw = dict(max_steps=max_steps, tolerance=tolerance, class_weight=class_weight)
    val = validation_rows(y, val_fraction, seed)
    rows: list[dict[str, Any]] = []
    if val.any():
        x_tr, y_tr = stack(~val)
        x_val, y_val = stack(val)
        best = None
        for l2 in grid:
            fit = fit_logistic(x_tr, y_tr, n_classes, l2=l2, **fit_kw)
            proba = fit.predict_proba(x_val)
            val_loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y_val)), y_val], 1e-12, None))))
            rows.append({"stage": "validation", "l2": l2, "steps": fit.steps, "loss": fit.train_loss,
                         "grad_max": fit.grad_max, "val_loss": val_loss,
                         "val_accuracy": float(np.mean(proba.argmax(1) == y_val))})
            if best is None or val_loss < best[1]:
                best = (l2, val_loss)
        chosen = best[0]
    else:
        chosen = grid[len(grid) // 2]
    x_all, y_all = stack(np.ones(len(y), dtype=bool))
    final = fit_logistic(x_all, y_all, n_classes, l2=chosen, **fit_kw)
    rows.append({"stage": "final", "l2": chosen, "steps": final.steps, "loss": final.train_loss,
                 "grad_max": final.grad_max, "val_loss": np.nan, "val_accuracy": np.nan})
    return final, pd.DataFrame(rows)


def _pretraining(method: str, pretrain_metrics_path: str | None) -> tuple[str, float]:
    """(what ran, its optimiser steps): the ``method`` its pretraining job recorded (e.g.
    ``eps_supinfonce`` for FairKL run with weight 0) and its ``train_steps``; for a control, its
    name and 0 steps."""
    if not pretrain_metrics_path:
        return method, 0.0
    try:
        record = json.loads(Path(pretrain_metrics_path).read_text())
        return str(record["method"]), float(record["metrics"].get("train_steps", math.nan))
    except (OSError, ValueError, KeyError, AttributeError):
        raise DefectbenchError(f"{pretrain_metrics_path}: unreadable pretraining record; rerun pretrain_contrastive") from None


@dataclass(frozen=True)
class ProbeFeatures:
    """Frozen features of one encoder for every label fraction of a probe job: ``pool_views``
    (V, N, d) of the largest labelled subset ``pool`` (its rows sorted by row; V augmented views,
    or 1 un-augmented), ``test_feats`` (M, d) of the ``test`` rows."""

    pool: pd.DataFrame
    pool_views: np.ndarray
    test: pd.DataFrame
    test_feats: np.ndarray
    dim: int


def probe_features(data: SplitCache, fractions: Sequence[float], *, method: str, encoder_path: str | None,
                   backbone: str, pcfg: dict[str, Any], seed: int, device: torch.device, amp: str) -> ProbeFeatures:
    """Extract the features once for all ``fractions`` (the labelled subsets are nested), with
    ``probe.augment_views`` random-resized crop + flip views of the labelled images when
    ``probe.augment`` (:func:`defectbench.ssl.augment.random_resized_crop_flip`, own generator
    seeded with ``seed``)."""
    pool = data.take(labelled_subset(data.split, max(fractions)))  # nested: holds every fraction's images
    test = data.subset("test")
    if not len(pool) or not len(test):
        raise DefectbenchError(f"{data.split_path}: empty labelled subset or test subset; check the split and label_fractions")
    encoder, dim = load_feature_source(method, encoder_path=encoder_path, backbone=backbone,
                                       pretrained=pcfg.get("pretrained"), device=device)
    fbs = int(pcfg["feature_batch_size"])
    test_feats = extract_features(encoder, test.images, device, fbs, amp)
    if pcfg["augment"]:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        crop_scale = (float(pcfg["crop_scale_min"]), 1.0)
        pool_views = np.stack([
            extract_features(encoder, pool.images, device, fbs, amp,
                             transform=lambda x: random_resized_crop_flip(x, gen, crop_scale))
            for _ in range(int(pcfg["augment_views"]))
        ])
    else:
        pool_views = extract_features(encoder, pool.images, device, fbs, amp)[None]
    return ProbeFeatures(pool.rows, pool_views, test.rows, test_feats, dim)


def fit_probe(views: np.ndarray, y_train: np.ndarray, test_feats: np.ndarray, n_classes: int, *,
              pcfg: dict[str, Any], seed: int, device: torch.device) -> tuple[dict[str, torch.Tensor], np.ndarray,
                                                                            pd.DataFrame, dict[str, float]]:
    """Fit the ``probe.kind`` probe on ``views`` (V, N, d) with labels ``y_train``; returns (head
    on raw features {weight, bias}, test probabilities (M, C) float64, history, fit metrics)."""
    if pcfg["kind"] == "linear":
        probe, history = train_linear_probe(
            views, y_train, n_classes, epochs=int(pcfg["epochs"]), batch_size=int(pcfg["batch_size"]),
            lr=float(pcfg["lr"]), weight_decay=float(pcfg["weight_decay"]), seed=seed, device=device)
        head = {"weight": probe.weight.detach().cpu(), "bias": probe.bias.detach().cpu()}
        with torch.no_grad():
            logits = probe(torch.from_numpy(test_feats).to(device))
            proba = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
        fit_metrics = {"train_steps": int(pcfg["epochs"]) * math.ceil(len(y_train) / int(pcfg["batch_size"])),
                       "train_loss": float(history["loss"].iloc[-1])}
        return head, proba, history, fit_metrics
    fit, history = fit_logistic_probe(
        views, y_train, n_classes, l2_grid=pcfg["l2_grid"], val_fraction=float(pcfg["val_fraction"]), seed=seed,
        max_steps=int(pcfg["max_steps"]), tolerance=float(pcfg["tolerance"]), class_weight=pcfg["class_weight"])
    head = {"weight": torch.from_numpy(fit.weight).float(), "bias": torch.from_numpy(fit.bias).float()}
    fit_metrics = {"train_steps": fit.steps, "train_loss": fit.train_loss, "l2": fit.l2,
                   "grad_max": fit.grad_max, "converged": float(fit.converged)}
    return head, fit.predict_proba(test_feats), history, fit_metrics


def _class_names(manifest_path: str) -> list[str]:
    """Class name of every label id of the manifest ('' for an id no image has)."""
    from defectbench.data.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    n_classes = int(manifest["label"].max()) + 1
    return manifest.groupby("label")["class_name"].first().reindex(range(n_classes)).fillna("").tolist()


def run_linear_probe(*, cache_path: str, split_path: str, manifest_path: str, encoder_path: str | None,
                     pretrain_metrics_path: str | None, out_dirs: Sequence[str], fractions: Sequence[float],
                     cfg: dict[str, Any], dataset: str, method: str, backbone: str, seed: int,
                     extra_keys: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The linear_probe stage (module docstring): every label fraction of one encoder.

    ``cfg`` is the rule's config slice (with the ``probe`` section); ``method`` is a contrastive
    method (``encoder_path`` = its encoder.pt, ``pretrain_metrics_path`` = its metrics.json) or a
    control of :data:`defectbench.features.CONTROL_SOURCES` (no encoder). ``out_dirs[i]``
    receives the outputs of ``fractions[i]``. ``extra_keys`` join the job keys of every record
    (a budget-curve point's ``budget_epochs`` and ``image_size``). Returns the metrics.json
    records, in that order. A record's wall time is its fraction's fit plus an equal share of the
    one-off feature extraction.
    """
    if len(out_dirs) != len(fractions) or not fractions:
        raise DefectbenchError(f"linear_probe: {len(fractions)} label fractions but {len(out_dirs)} output directories")
    pcfg = cfg["probe"]
    if pcfg["kind"] not in ("linear", "logistic"):
        raise DefectbenchError(f"probe.kind: unknown {pcfg['kind']!r}; use logistic or linear")
    label, pretrain_steps = _pretraining(method, pretrain_metrics_path)
    keys = {"dataset": dataset, "method": label, "backbone": backbone, "seed": int(seed), "task": "classification",
            **(extra_keys or {})}
    # seeded: the seed also draws the random-init control's weights
    with stage_job(stage="classification", cfg=cfg, keys=keys, seed=seed, amp=pcfg["amp"]) as job:
        with Timer() as setup:
            class_names = _class_names(manifest_path)
            n_classes = len(class_names)
            data = SplitCache(split_path, cache_path, required=("row", "subset", "label", "label_priority"))
            feats = probe_features(data, fractions, method=method, encoder_path=encoder_path, backbone=backbone,
                                   pcfg=pcfg, seed=seed, device=job.device, amp=job.amp)
        log.info("probe %s/%s/%s seed %d: features of %d labelled and %d test images in %.1fs (%d views, device %s)",
                 label, dataset, backbone, seed, len(feats.pool), len(feats.test), setup.seconds,
                 feats.pool_views.shape[0], job.device)
        y_test = feats.test["label"].to_numpy()
        records = []
        for fraction, out_dir in zip(fractions, out_dirs):
            with Timer() as timer:
                labelled = labelled_subset(data.split, fraction).sort_values("row")
                views = feats.pool_views[:, np.searchsorted(feats.pool["row"].to_numpy(), labelled["row"].to_numpy())]
                head, proba, history, fit_metrics = fit_probe(views, labelled["label"].to_numpy(), feats.test_feats,
                                                              n_classes, pcfg=pcfg, seed=seed, device=job.device)
                metrics = {**classification_metrics(y_test, proba, n_classes), **fit_metrics,
                           "pretrain_steps": pretrain_steps}
                y_pred = proba.argmax(axis=1)
                predictions = pd.DataFrame({"row": feats.test["row"].to_numpy(), "y_true": y_test, "y_pred": y_pred})
                for k in range(n_classes):
                    predictions[f"proba_{k}"] = proba[:, k]
            out = Path(out_dir)
            # the head in raw feature space, for Grad-CAM figures (the encoder + this = the classifier)
            save_torch(out / "probe.pt", {**head, "encoder": encoder_path})
            write_parquet(out / "predictions.parquet", predictions)
            write_parquet(out / "history.parquet", history)
            extra = {"confusion": confusion(y_test, y_pred, n_classes).tolist(), "class_names": class_names,
                     "n_labelled": int(len(labelled)), "n_views": int(views.shape[0]), "feature_dim": int(feats.dim),
                     "kind": pcfg["kind"], "amp": job.amp,
                     "feature_source": method if encoder_path is None else str(encoder_path),
                     "feature_seconds": setup.seconds, "model_selection": (
                         "l2 by validation cross-entropy on a split of the labelled images" if pcfg["kind"] == "logistic"
                         else "fixed epochs (no selection)")}
            records.append(job.write_metrics(out / "metrics.json", metrics=metrics, extra=extra,
                                             keys={"labels_pct": float(100 * fraction)},
                                             wall_time_s=timer.seconds + setup.seconds / len(fractions)))
            log.info("probe %s/%s %g%% labels: accuracy %.4f macro F1 %.4f, %d steps, train loss %.4g (%.1fs)", label,
                     dataset, 100 * fraction, metrics["accuracy"], metrics["macro_f1"], fit_metrics["train_steps"],
                     fit_metrics["train_loss"], timer.seconds)
    return records
