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
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from defectbench.data.cache import load_cache
from defectbench.data.splits import labelled_subset, read_split
from defectbench.metrics.classification import classification_metrics
from defectbench.models.backbones import build_backbone, imagenet_normalize
from defectbench.models.encoders import save_encoder
from defectbench.runtime import (
    DefectbenchError, effective_amp, pick_device, seed_everything, write_metrics, write_parquet,
)
from defectbench.ssl.augment import augment_batch, resolve_params
from defectbench.train import job_checkpoint, train_loop

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
    from defectbench.runtime import autocast_context

    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = imagenet_normalize(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device))
        with autocast_context(device, amp):
            logits = model(x)
        out.append(logits.float().softmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


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
    if threads:
        torch.set_num_threads(int(threads))
    t_start = time.perf_counter()
    device = pick_device(cfg["device"])
    amp = effective_amp(device, scfg["amp"])
    seed_everything(seed)

    split = read_split(split_path, required=("row", "subset", "label", "label_priority"))
    train = labelled_subset(split, fraction).sort_values("row")
    test = split[split["subset"] == "test"].sort_values("row")
    if train.empty or test.empty:
        raise DefectbenchError(f"{split_path}: {len(train)} labelled train and {len(test)} test rows; both must be non-empty")
    n_classes = int(split["label"].max()) + 1
    cache = load_cache(cache_path)
    if max(train["row"].max(), test["row"].max()) >= len(cache):
        raise DefectbenchError(f"{cache_path}: fewer images than the split's rows; rebuild the cache")
    train_np = np.ascontiguousarray(cache[train["row"].to_numpy()])
    images = torch.from_numpy(train_np).to(device)
    labels_np = train["label"].to_numpy(dtype=np.int64)
    labels = torch.as_tensor(labels_np.copy(), device=device)
    n = len(train)
    batch_size = min(int(scfg["batch_size"]), n)
    preset, aug = resolve_params(scfg["augment"], images)
    weights = class_weights(labels_np, n_classes).to(device) if scfg["class_weights"] == "inverse_frequency" else None

    net, dim = build_backbone(backbone, scfg["pretrained"])
    model = Classifier(net, dim, n_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(scfg["lr"]),
                                  weight_decay=float(scfg["weight_decay"]))
    steps_per_epoch = max(1, n // batch_size)
    total_steps = step_budget(scfg, int((split["subset"] == "train").sum()))
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
                 if scfg["schedule"] == "cosine" else None)

    def batches(epoch: int, gen: torch.Generator):
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(min(steps_per_epoch, total_steps - epoch * steps_per_epoch)):  # the last epoch may be cut short
            yield perm[i * batch_size:(i + 1) * batch_size]

    def step(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(augment_batch(images[idx], aug, gen))
        loss = F.cross_entropy(logits.float(), labels[idx], weight=weights)
        return loss, {"train_accuracy": float((logits.argmax(1) == labels[idx]).float().mean())}

    ckpt = job_checkpoint(Path(model_path).parent, {"cfg": cfg, "fraction": fraction},
                          {"cache": cache_path, "split": split_path})
    log.info("supervised %s on %s: %d labelled images (%.3g of train), %d classes, %d steps (%d epochs), device %s, amp %s",
             backbone, dataset, n, fraction, n_classes, total_steps, epochs, device, amp)
    history = train_loop(model, optimizer, step, batches, epochs=epochs, seed=seed, device=device, amp=amp,
                         checkpoint_path=ckpt, checkpoint_every=int(scfg["checkpoint_every"]),
                         scheduler=scheduler, log_prefix=f"[supervised/{dataset}] ")

    proba = predict_proba(model, cache[test["row"].to_numpy()], device, amp)
    y_true = test["label"].to_numpy(dtype=np.int64)
    metrics = classification_metrics(y_true, proba, n_classes)
    predictions = pd.DataFrame({"row": test["row"].to_numpy(), "y_true": y_true, "y_pred": proba.argmax(1)})
    for c in range(n_classes):
        predictions[f"proba_{c}"] = proba[:, c]

    save_encoder(model_path, model.backbone, backbone, dim, int(train_np.shape[1]),
                 extra={"head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()}, "n_classes": n_classes})
    write_parquet(predictions_path, predictions)
    write_parquet(history_path, history)
    labels_pct = round(fraction * 100, 6)
    record = write_metrics(
        metrics_path, stage="classification",
        metrics={**metrics, "train_images": n, "train_steps": total_steps, "epochs": epochs,
                 "final_loss": float(history["loss"].iloc[-1]),
                 "images_per_s": float(history["images_per_s"].mean())},
        config=cfg, keys={"dataset": dataset, "method": "supervised", "backbone": backbone, "seed": seed,
                          "labels_pct": labels_pct},
        device=str(device), wall_time_s=time.perf_counter() - t_start,
        extra={"amp": amp, "augment_preset": preset, "augment": aug.as_dict(), "n_classes": n_classes,
               "model_selection": "last epoch (no test labels)"},
    )
    ckpt.unlink(missing_ok=True)
    return record
