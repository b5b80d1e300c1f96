"""Patch embeddings (specs E.1): backbone feature maps -> locally aware patch vectors, shared by
PatchCore (:mod:`defectbench.anomaly.patchcore`) and anomaly clustering (:mod:`defectbench.clustering`).

3x3 patchify of every layer map -> per-layer ``adaptive_avg_pool1d`` to ``pretrain_dim`` (PatchCore's
MeanMapper) -> coarser grids upsampled bilinearly to the finest one -> the stacked layers pooled to
``target_dim`` (the aggregator). Extracted once per image set.

>>> import torch
>>> emb, grid = embed_batch([torch.ones(1, 2, 4, 4)], pretrain_dim=None, target_dim=None, patchsize=1)
>>> tuple(emb.shape), grid
((1, 16, 2), (4, 4))
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from defectbench.models.backbones import FeatureExtractor, imagenet_normalize
from defectbench.runtime import DefectbenchError

log = logging.getLogger("defectbench")


def patch_extractor(patchcore_cfg: Mapping[str, Any]) -> FeatureExtractor:
    """The frozen feature extractor of the ``patchcore`` config section (backbone, layers, pretrained)."""
    return FeatureExtractor(patchcore_cfg["backbone"], patchcore_cfg["layers"], pretrained=patchcore_cfg["pretrained"])


def patchify_layer(feature: torch.Tensor, patchsize: int = 3, layernorm: bool = False) -> torch.Tensor:
    """(B,C,h,w) feature map -> (B, C*k*k, h, w): every location's k x k neighbourhood, zero padded.

    Channel order is c-major then the k*k window (``F.unfold`` order), as in PatchCore's patch maker,
    so adaptive pooling over it later averages a channel's own window before mixing channels.
    ``layernorm``: per-image standardisation over (C,h,w) first (anomaly clustering's fresh
    ``LayerNorm([C,H,W])``, weight 1 bias 0).
    """
    if layernorm:
        feature = F.layer_norm(feature, feature.shape[1:])
    b, c, h, w = feature.shape
    if patchsize == 1:
        return feature
    pad = (patchsize - 1) // 2
    cols = F.unfold(feature, kernel_size=patchsize, padding=pad, stride=1)
    return cols.reshape(b, c * patchsize * patchsize, h, w)


def mean_map(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """(..., F) -> (..., dim): ``adaptive_avg_pool1d`` over the last axis (PatchCore's MeanMapper).

    ``dim=None`` keeps one value per channel of a patchified map (dim = F / k^2 is chosen by the
    caller), i.e. the plain per-channel 3x3 mean.
    """
    if dim is None or dim == x.shape[-1]:
        return x
    lead = x.shape[:-1]
    return F.adaptive_avg_pool1d(x.reshape(-1, 1, x.shape[-1]), dim).reshape(*lead, dim)


def embed_batch(
    features: list[torch.Tensor],
    *,
    pretrain_dim: int | None,
    target_dim: int | None,
    patchsize: int = 3,
    layernorm: bool = False,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Layer feature maps of one batch -> patch embeddings (B, h*w, D) on the finest layer's grid.

    Per layer: patchify, MeanMapper to ``pretrain_dim`` (``None``: C, the per-channel window mean),
    then upsample bilinearly to the finest grid. Bilinear interpolation (per channel, spatial) and
    the MeanMapper (per location, over channels) are both linear and act on different axes, so they
    commute: pooling first and upsampling the pooled map gives PatchCore's result (which upsamples
    the unpooled C*9 map) with 9x less interpolation work. The aggregator then pools the stacked
    layers (L*pretrain_dim) to ``target_dim`` (``None``: concatenation).
    """
    h0 = max(f.shape[-2] for f in features)
    w0 = max(f.shape[-1] for f in features)
    per_layer = []
    for f in features:
        b, c, h, w = f.shape
        dim = pretrain_dim if pretrain_dim is not None else c
        if dim == c:
            # Each of the C bins of the C*k*k patch vector is exactly one channel's zero-padded k x k
            # window: the MeanMapper equals this average pool (same numbers, no C*k*k unfold).
            if layernorm:
                f = F.layer_norm(f, f.shape[1:])
            pad = (patchsize - 1) // 2
            pooled = F.avg_pool2d(f, patchsize, stride=1, padding=pad, count_include_pad=True) if patchsize > 1 else f
        else:
            cols = patchify_layer(f, patchsize, layernorm)  # (B, C*k*k, h, w)
            pooled = mean_map(cols.permute(0, 2, 3, 1), dim).permute(0, 3, 1, 2)  # (B, dim, h, w)
        if (h, w) != (h0, w0):
            pooled = F.interpolate(pooled, size=(h0, w0), mode="bilinear", align_corners=False)
        per_layer.append(pooled.permute(0, 2, 3, 1).reshape(b, h0 * w0, dim))
    stacked = torch.cat(per_layer, dim=-1)  # (B, P, sum dims): stack of layers, flattened
    return mean_map(stacked, target_dim), (h0, w0)


@torch.no_grad()
def embed_patches(
    extractor: FeatureExtractor,
    images: np.ndarray,
    *,
    pretrain_dim: int | None = 1024,
    target_dim: int | None = 1024,
    patchsize: int = 3,
    layernorm: bool = False,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 images (N,S,S,3) -> float32 patch embeddings (N, P, D) on the CPU, and the grid (h, w)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DefectbenchError(f"images: expected (N,S,S,3) uint8, got shape {tuple(images.shape)}")
    device = torch.device(device)
    extractor = extractor.to(device).eval()
    out: list[torch.Tensor] = []
    grid = (0, 0)
    n = len(images)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        maps = extractor(imagenet_normalize(batch))
        emb, grid = embed_batch(
            [maps[layer].float() for layer in extractor.layers],
            pretrain_dim=pretrain_dim, target_dim=target_dim, patchsize=patchsize, layernorm=layernorm,
        )
        out.append(emb.cpu())
        done = min(start + batch_size, n)
        if (start // batch_size) % 10 == 9 or done == n:
            log.info("embedded %d/%d images (%.1fs)", done, n, time.perf_counter() - t0)
    if not out:
        raise DefectbenchError("images: no images to embed (empty subset in the split?)")
    return torch.cat(out), grid
