"""Linear probe on frozen features (specs A.4, C.3): the linear_probe stage.

The encoder (pre-projector feature h of a contrastive method, or a backbone as initialised) is
frozen in eval mode; a ``Linear(d, C)`` is trained with Adam + cross-entropy for a fixed number of
epochs on a labelled subset of the classification train split, then evaluated once on the test
split. Nothing is selected on test labels (fixed epochs, no early stopping).

Features are extracted once, not per epoch (a probe epoch then costs a few matrix products):

* ``probe.augment: false``: the un-augmented train features, the same every epoch.
* ``probe.augment: true`` (clean default of A.4: random-resized crop + horizontal flip, no
  test-time augmentation): ``probe.augment_views`` augmented copies of every labelled image are
  extracted up front, and each epoch draws one of them per image. With as many views as epochs
  this is exactly per-epoch augmentation; fewer views trade augmentation diversity for
  ``augment_views`` encoder passes instead of ``epochs``.

``probe.kind: logistic`` replaces the torch probe by sklearn's ``LogisticRegression`` (specs C.3:
cheaper and deterministic), on all views stacked.

Outputs: ``metrics.json`` (stage ``classification``: the metrics of
:func:`defectbench.metrics.classification.classification_metrics`, the confusion matrix in
``extra``), ``predictions.parquet`` (row, y_true, y_pred, proba_<k>) and ``history.parquet``.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from defectbench.data.splits import read_split
from defectbench.features import extract_features, load_feature_source
from defectbench.metrics.classification import classification_metrics, confusion
from defectbench.runtime import (
    DefectbenchError,
    Timer,
    effective_amp,
    pick_device,
    save_torch,
    seed_everything,
    write_metrics,
    write_parquet,
)

log = logging.getLogger("defectbench")


def random_resized_crop_flip(images: torch.Tensor, generator: torch.Generator,
                             scale: tuple[float, float] = (0.2, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-image random-resized crop (area fraction in ``scale``, aspect ratio in ``ratio``) back to
    the input size, and horizontal flip with probability 1/2, for a float (B,3,S,S) batch.

    Vectorised as one affine ``grid_sample`` (bilinear) over the whole batch. The generator must
    live on the images' device.
    """
    b, _, h, w = images.shape
    dev = images.device
    u = torch.rand(b, 5, generator=generator, device=dev)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - cw) * (2 * u[:, 2] - 1)  # crop centre in [-1, 1] coordinates, crop inside the image
    cy = (1 - ch) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=images.dtype)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_linear_probe(train_views: np.ndarray, y_train: np.ndarray, n_classes: int, *, epochs: int,
                       batch_size: int, lr: float, weight_decay: float, seed: int,
                       device: torch.device) -> tuple[nn.Linear, pd.DataFrame]:
    """Fit ``Linear(d, n_classes)`` with Adam + CE on frozen features.

    ``train_views``: (V, N, d) features (V views of each of N images; each epoch draws one view
    per image with the epoch's generator). Returns the probe (eval mode) and the history.
    """
    from defectbench.train import train_loop

    views = torch.from_numpy(np.ascontiguousarray(train_views, dtype=np.float32)).to(device)
    labels = torch.from_numpy(np.array(y_train, dtype=np.int64)).to(device)
    n_views, n, dim = views.shape
    torch.manual_seed(seed)
    probe = nn.Linear(dim, n_classes).to(device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)

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

    with tempfile.TemporaryDirectory() as tmp:  # probes take seconds: no checkpoint kept
        history = train_loop(probe, optimizer, step, batches, epochs=epochs, seed=seed, device=device, amp="none",
                             checkpoint_path=Path(tmp) / "probe.pt", checkpoint_every=epochs,
                             batch_size_of=lambda b: len(b[1]), log_prefix="probe ")
    return probe.eval(), history


def _logistic_proba(train_views: np.ndarray, y_train: np.ndarray, test: np.ndarray, n_classes: int,
                    class_weight: str | None, seed: int) -> np.ndarray:
    """sklearn LogisticRegression on the stacked views; probabilities for all ``n_classes``
    columns (0 for classes absent from the labelled subset)."""
    from sklearn.linear_model import LogisticRegression

    n_views = train_views.shape[0]
    x = train_views.reshape(-1, train_views.shape[-1])
    y = np.tile(np.asarray(y_train), n_views)
    model = LogisticRegression(max_iter=1000, class_weight=class_weight, random_state=seed).fit(x, y)
    proba = np.zeros((test.shape[0], n_classes))
    proba[:, model.classes_] = model.predict_proba(test)
    return proba


def run_linear_probe(*, cache_path: str, split_path: str, manifest_path: str, encoder_path: str | None,
                     metrics_path: str, predictions_path: str, history_path: str, cfg: dict[str, Any],
                     dataset: str, method: str, backbone: str, seed: int, fraction: float) -> dict[str, Any]:
    """The linear_probe stage (module docstring). ``cfg`` is the rule's config slice (with the
    ``probe`` section); ``method`` is a contrastive method (``encoder_path`` = its encoder.pt) or
    ``pretrained`` (``encoder_path`` None)."""
    from defectbench.data.cache import load_cache
    from defectbench.data.manifest import read_manifest
    from defectbench.data.splits import labelled_subset

    pcfg = cfg["probe"]
    with Timer() as timer:
        device = pick_device(cfg["device"])
        amp = effective_amp(device, pcfg["amp"])
        seed_everything(seed)
        images = load_cache(cache_path)
        manifest = read_manifest(manifest_path)
        n_classes = int(manifest["label"].max()) + 1
        class_names = manifest.groupby("label")["class_name"].first().reindex(range(n_classes)).fillna("").tolist()
        split = read_split(split_path, ("row", "subset", "label", "label_priority"))
        labelled = labelled_subset(split, fraction).sort_values("row")
        test = split[split["subset"] == "test"].sort_values("row")
        if labelled.empty or test.empty:
            raise DefectbenchError(f"{split_path}: empty labelled subset or test subset; check the split and label_fractions")
        log.info("probe %s/%s/%s seed %d: %d labelled (%.3g%%), %d test, %d classes, device %s",
                 method, dataset, backbone, seed, len(labelled), 100 * fraction, len(test), n_classes, device)

        encoder, dim = load_feature_source(method, encoder_path=encoder_path, backbone=backbone,
                                           pretrained=pcfg.get("pretrained"), device=device)
        fbs = int(pcfg["feature_batch_size"])
        train_images = images[labelled["row"].to_numpy()]
        test_feats = extract_features(encoder, images[test["row"].to_numpy()], device, fbs, amp)
        if pcfg["augment"]:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            crop_scale = (float(pcfg["crop_scale_min"]), 1.0)
            n_views = int(pcfg["augment_views"])
            train_views = np.stack([
                extract_features(encoder, train_images, device, fbs, amp,
                                 transform=lambda x: random_resized_crop_flip(x, gen, crop_scale))
                for _ in range(n_views)
            ])
        else:
            train_views = extract_features(encoder, train_images, device, fbs, amp)[None]
        del encoder
        y_train = labelled["label"].to_numpy()
        y_test = test["label"].to_numpy()

        kind = pcfg["kind"]
        if kind == "linear":
            probe, history = train_linear_probe(
                train_views, y_train, n_classes, epochs=int(pcfg["epochs"]), batch_size=int(pcfg["batch_size"]),
                lr=float(pcfg["lr"]), weight_decay=float(pcfg["weight_decay"]), seed=seed, device=device)
            with torch.no_grad():
                logits = probe(torch.from_numpy(test_feats).to(device))
                proba = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
        elif kind == "logistic":
            proba = _logistic_proba(train_views, y_train, test_feats, n_classes, pcfg.get("class_weight"), seed)
            history = pd.DataFrame({"epoch": [1], "loss": [np.nan]})
        else:
            raise DefectbenchError(f"probe.kind: unknown {kind!r}; use linear or logistic")

        metrics = classification_metrics(y_test, proba, n_classes)
        y_pred = proba.argmax(axis=1)
        cm = confusion(y_test, y_pred, n_classes)
        predictions = pd.DataFrame({"row": test["row"].to_numpy(), "y_true": y_test, "y_pred": y_pred})
        for k in range(n_classes):
            predictions[f"proba_{k}"] = proba[:, k]
    if kind == "linear":  # the head, for Grad-CAM figures of the probe (encoder.pt + this = the classifier)
        save_torch(Path(metrics_path).parent / "probe.pt",
                   {"weight": probe.weight.detach().cpu(), "bias": probe.bias.detach().cpu()})
    write_parquet(predictions_path, predictions)
    write_parquet(history_path, history)
    keys = {"dataset": dataset, "method": method, "backbone": backbone, "seed": int(seed),
            "labels_pct": float(100 * fraction), "task": "classification"}
    extra = {"confusion": cm.tolist(), "class_names": class_names, "n_labelled": int(len(labelled)),
             "n_views": int(train_views.shape[0]), "feature_dim": int(dim), "kind": kind, "amp": amp,
             "feature_source": "pretrained" if encoder_path is None else str(encoder_path)}
    record = write_metrics(metrics_path, stage="classification", metrics=metrics, config=cfg, keys=keys,
                           device=str(device), wall_time_s=timer.seconds, extra=extra)
    log.info("probe %s/%s: accuracy %.4f macro F1 %.4f macro AUROC %s (%.1fs)", method, dataset,
             metrics["accuracy"], metrics["macro_f1"], metrics["macro_auroc"], timer.seconds)
    return record
