"""Frozen-encoder features of decoded images: one batched, no-grad pass in eval mode.

Every evaluation that works on pooled image features (linear probes, image-level anomaly scorers)
extracts them here, once per (encoder, image set), so each scorer or probe epoch reuses the same
array instead of running the network again.

>>> import numpy as np, torch
>>> from defectbench.models.backbones import build_backbone
>>> net, dim = build_backbone("resnet18")
>>> extract_features(net, np.zeros((3, 32, 32, 3), np.uint8), torch.device("cpu"), batch_size=2).shape
(3, 512)
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from defectbench.models.backbones import imagenet_normalize
from defectbench.runtime import DefectbenchError, autocast_context

log = logging.getLogger("defectbench")


#: Feature sources that need no training: the controls every table gets beside the methods.
CONTROL_SOURCES = ("random", "pretrained")


def load_feature_source(source: str, *, encoder_path: str | None, backbone: str, pretrained: str,
                        device: torch.device) -> tuple[nn.Module, int]:
    """The frozen image encoder of a feature source, on ``device`` in eval mode.

    ``source`` is a control (:data:`CONTROL_SOURCES`: ``random``, the backbone at random init
    drawn from torch's current seed; ``pretrained``, the backbone with the ``pretrained`` weights,
    ImageNet or a local file; neither is trained) or a contrastive method whose ``encoder.pt`` is
    at ``encoder_path``.
    """
    if source in CONTROL_SOURCES:
        from defectbench.models.backbones import build_backbone

        module, dim = build_backbone(backbone, "none" if source == "random" else pretrained)
    else:
        if not encoder_path:
            raise DefectbenchError(f"features {source!r}: no encoder.pt given; run pretrain_contrastive for it first")
        from defectbench.models.encoders import load_encoder

        module, dim, meta = load_encoder(encoder_path, device)
        if meta.get("backbone") != backbone:
            raise DefectbenchError(
                f"{encoder_path}: encoder backbone is {meta.get('backbone')!r}, but this job is keyed {backbone!r}; "
                "delete the encoder and rerun pretrain_contrastive"
            )
    module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module, int(dim)


@torch.no_grad()
def extract_features(encoder: nn.Module, images_uint8: np.ndarray, device: torch.device, batch_size: int = 256,
                     amp: str = "none",
                     transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """(N, d) float32 features of (N, S, S, 3) uint8 images (memory-mapped arrays are fine).

    The encoder maps ImageNet-normalised (B,3,S,S) images to (B,d); it is put in eval mode (BN
    running statistics, no dropout) and run without autograd, optionally under autocast
    (``amp``: none | bf16 | fp16, see :func:`defectbench.runtime.autocast_context`).
    ``transform`` (e.g. a random crop + flip) maps float (B,3,S,S) images in [0,1] to the same
    shape before normalisation.
    """
    if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != np.uint8:
        raise DefectbenchError(
            f"extract_features: expected (N,S,S,3) uint8 images, got {images_uint8.dtype} {images_uint8.shape}; "
            "pass a cache-*.npy array"
        )
    if batch_size < 1:
        raise DefectbenchError(f"batch_size: must be >= 1, got {batch_size}")
    encoder.eval()
    n = images_uint8.shape[0]
    out: np.ndarray | None = None
    n_batches = (n + batch_size - 1) // batch_size
    every = max(1, n_batches // 10)
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, n, batch_size)):
        batch = torch.from_numpy(np.ascontiguousarray(images_uint8[start:start + batch_size])).to(device)
        if transform is not None:
            x = imagenet_normalize(transform(batch.permute(0, 3, 1, 2).float().div_(255.0)))
        else:
            x = imagenet_normalize(batch)
        with autocast_context(device, amp):
            feats = encoder(x)
        if feats.ndim != 2:
            raise DefectbenchError(f"extract_features: the encoder returned shape {tuple(feats.shape)}, expected (B, d)")
        feats = feats.float().cpu().numpy()
        if out is None:
            out = np.empty((n, feats.shape[1]), dtype=np.float32)
        out[start:start + feats.shape[0]] = feats
        if (b + 1) % every == 0 or b + 1 == n_batches:
            log.info("features: batch %d/%d (%.1f img/s)", b + 1, n_batches,
                     min(n, start + batch_size) / max(time.perf_counter() - t0, 1e-9))
    if out is None:
        raise DefectbenchError("extract_features: no images given; check the split")
    return out
