"""The train_supervised stage: the same backbone trained end to end with labels (specs C.1, C.3).

Training data: the labelled subset ``labelled_subset(split, fraction)`` of the classification
split's train rows (nested across fractions). Model: backbone + Linear(d, C) trained with
cross-entropy (optionally inverse-frequency class weights, as C.1), AdamW, cosine schedule per
step, on-device augmentation (:mod:`defectbench.ssl.augment`; default the papers' light recipe:
small crops, flips, 90° rotations). Budget: a number of optimiser steps (:func:`step_budget`),
the same for every label fraction; ``train_steps`` is recorded. Model selection: none — the
**last epoch** is evaluated (clean protocol: no test labels, no early stopping on test).
Evaluation: softmax probabilities on the test subset, without test-time augmentation, scored with
:func:`defectbench.metrics.classification.classification_metrics`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from defectbench.data.cache import SplitCache, SplitImages
from defectbench.data.splits import labelled_subset
from defectbench.metrics.classification import classification_metrics
from defectbench.models.backbones import build_backbone, imagenet_normalize
from defectbench.models.encoders import save_encoder
from defectbench.optim import Adam, CosineSchedule
from defectbench.runtime import DefectbenchError, autocast_context, stage_job, write_parquet
from defectbench.ssl.augment import AugmentParams, augment_batch, resolve_params
from defectbench.train import checkpointed, train_loop

log = logging.getLogger("defectbench")


class Classifier(nn.Module):
    """Backbone (images -> (B, d)) followed by a linear head (d -> C)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def step_budget(scfg: dict[str, Any], n_train: int) -> int:
    """Optimiser steps of a supervised run: ``steps``, or ``epochs`` passes over the whole train
    split (``n_train`` images, full batches) when ``steps`` is null. Independent of the label
    fraction, so a 10% run is not trained 10x shorter than the 100% one.

    >>> step_budget({"steps": None, "epochs": 15, "batch_size": 64}, 384)
    90
    >>> step_budget({"steps": 40, "epochs": 15, "batch_size": 64}, 384)
    40
    """
    if scfg["steps"]:
        return int(scfg["steps"])
    return int(scfg["epochs"]) * max(1, n_train // int(scfg["batch_size"]))


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present (absent classes: 0).

    >>> class_weights(np.array([0, 0, 0, 1]), 3).tolist()
    [0.5, 1.5, 0.0]
    """
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    w = w / w[counts > 0].mean()
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, device: torch.device, amp: str, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, C) of uint8 (N,S,S,3) images, in eval mode, no augmentation."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = imagenet_normalize(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device))
        with autocast_context(device, amp):
            logits = model(x)
        out.append(logits.float().softmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


@dataclass(frozen=True)
class SupervisedFit:
    """A trained classifier and how it was trained."""

    model: Classifier
    feature_dim: int
    history: pd.DataFrame
    train_steps: int
    epochs: int
    augment_preset: str
    augment: AugmentParams


def fit_classifier(train: SplitImages, n_classes: int, n_train_split: int, *, backbone: str, scfg: dict[str, Any],
                   seed: int, device: torch.device, amp: str, checkpoint_path: Path, log_prefix: str) -> SupervisedFit:
    """Train backbone + head on the labelled ``train`` images for :func:`step_budget` steps
    (``n_train_split``: the size of the whole train split), resuming from ``checkpoint_path``."""
    images = torch.from_numpy(train.images).to(device)
    labels_np = train.labels
    labels = torch.as_tensor(labels_np, device=device)
    n = len(train)
    batch_size = min(int(scfg["batch_size"]), n)
    preset, aug = resolve_params(scfg["augment"], images)
    weights = class_weights(labels_np, n_classes).to(device) if scfg["class_weights"] == "inverse_frequency" else None

    net, dim = build_backbone(backbone, scfg["pretrained"])
    model = Classifier(net, dim, n_classes).to(device)
    optimizer = Adam(model.parameters(), lr=float(scfg["lr"]), weight_decay=float(scfg["weight_decay"]),
                     decoupled_weight_decay=True)
    steps_per_epoch = max(1, n // batch_size)
    total_steps = step_budget(scfg, n_train_split)
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = (CosineSchedule(optimizer, total_steps)
                 if scfg["schedule"] == "cosine" else None)

    def batches(epoch: int, gen: torch.Generator):
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(min(steps_per_epoch, total_steps - epoch * steps_per_epoch)):  # the last epoch may be cut short
            yield perm[i * batch_size:(i + 1) * batch_size]

    def step(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(augment_batch(images[idx], aug, gen))
        loss = F.cross_entropy(logits.float(), labels[idx], weight=weights)
        return loss, {"train_accuracy": float((logits.argmax(1) == labels[idx]).float().mean())}

    log.info("%s%d labelled images, %d classes, %d steps (%d epochs), device %s, amp %s",
             log_prefix, n, n_classes, total_steps, epochs, device, amp)
    history = train_loop(model, optimizer, step, batches, epochs=epochs, seed=seed, device=device, amp=amp,
                         checkpoint_path=checkpoint_path, checkpoint_every=int(scfg["checkpoint_every"]),
                         scheduler=scheduler, log_prefix=log_prefix)
    return SupervisedFit(model, dim, history, total_steps, epochs, preset, aug)


def train_supervised(*, cache_path: str | Path, split_path: str | Path, model_path: str | Path,
                     predictions_path: str | Path, history_path: str | Path, metrics_path: str | Path,
                     cfg: dict[str, Any], dataset: str, backbone: str, seed: int, fraction: float,
                     threads: int | None = None) -> dict[str, Any]:
    """Train on the labelled ``fraction`` of the train split, evaluate the last epoch on test.

    Writes model.pt (encoder format + ``head`` + ``n_classes``), predictions.parquet (row, y_true,
    y_pred, proba_0..), history.parquet and metrics.json (stage ``classification``, method
    ``supervised``). Returns the metrics.json record.
    """
    scfg = cfg["supervised"]
    keys = {"dataset": dataset, "method": "supervised", "backbone": backbone, "seed": seed,
            "labels_pct": round(fraction * 100, 6)}
    with stage_job(stage="classification", cfg=cfg, keys=keys, seed=seed, threads=threads, amp=scfg["amp"]) as job:
        data = SplitCache(split_path, cache_path, required=("row", "subset", "label", "label_priority"))
        train = data.take(labelled_subset(data.split, fraction))
        test = data.subset("test")
        if not len(train) or not len(test):
            raise DefectbenchError(f"{split_path}: {len(train)} labelled train and {len(test)} test rows; both must be non-empty")
        n_classes = int(data.split["label"].max()) + 1
        with checkpointed(Path(model_path).parent, {"cfg": cfg, "fraction": fraction},
                          {"cache": cache_path, "split": split_path}) as ckpt:
            fit = fit_classifier(train, n_classes, int((data.split["subset"] == "train").sum()), backbone=backbone,
                                 scfg=scfg, seed=seed, device=job.device, amp=job.amp, checkpoint_path=ckpt,
                                 log_prefix=f"[supervised/{dataset}] ")
            proba = predict_proba(fit.model, test.images, job.device, job.amp)
            y_true = test.labels
            metrics = classification_metrics(y_true, proba, n_classes)
            predictions = pd.DataFrame({"row": test.row_ids, "y_true": y_true, "y_pred": proba.argmax(1)})
            for c in range(n_classes):
                predictions[f"proba_{c}"] = proba[:, c]
            save_encoder(model_path, fit.model.backbone, backbone, fit.feature_dim, int(train.images.shape[1]),
                         extra={"head": {k: v.detach().cpu() for k, v in fit.model.head.state_dict().items()},
                                "n_classes": n_classes})
            write_parquet(predictions_path, predictions)
            write_parquet(history_path, fit.history)
            return job.write_metrics(
                metrics_path,
                metrics={**metrics, "train_images": len(train), "train_steps": fit.train_steps, "epochs": fit.epochs,
                         "final_loss": float(fit.history["loss"].iloc[-1]),
                         "images_per_s": float(fit.history["images_per_s"].mean())},
                extra={"amp": job.amp, "augment_preset": fit.augment_preset, "augment": fit.augment.as_dict(),
                       "n_classes": n_classes, "model_selection": "last epoch (no test labels)"},
            )
