"""PatchCore (specs E.1, E.4): fit a memory bank of nominal patch embeddings, score images by
their patches' nearest-neighbour distances, and the ``patchcore`` stage.

Built from the shared parts: patch embeddings (:mod:`defectbench.anomaly.embedding`), the greedy
coreset (:mod:`defectbench.anomaly.coreset`), exact nearest neighbours
(:mod:`defectbench.anomaly.neighbours`) and the evaluation protocol
(:mod:`defectbench.anomaly.protocol`).

* :class:`PatchCore`: fit a memory bank, score images (max patch score, optional paper re-weighting)
  and build anomaly maps (bilinear upsampling + Gaussian smoothing, sigma 4).
* :func:`run_patchcore`: the ``patchcore`` rule's stage (fit on nominal train, threshold from the
  nominal holdout, evaluate on test).

>>> import torch
>>> from defectbench.models.backbones import FeatureExtractor
>>> fx = FeatureExtractor("resnet18", ["layer2", "layer3"])
>>> images = torch.zeros(4, 64, 64, 3, dtype=torch.uint8).numpy()
>>> model = PatchCore(fx, pretrain_dim=64, target_dim=32, coreset_ratio=0.5).fit(images)
>>> scores, maps = model.predict(images)
>>> scores.shape, maps.shape, model.memory_bank.shape
((4,), (4, 64, 64), torch.Size([128, 32]))
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectbench.anomaly import protocol
from defectbench.anomaly.coreset import greedy_coreset
from defectbench.anomaly.embedding import embed_patches, patch_extractor
from defectbench.anomaly.neighbours import nearest_neighbors
from defectbench.models.backbones import FeatureExtractor
from defectbench.runtime import DefectbenchError, Timer, stage_job

log = logging.getLogger("defectbench")


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each (h,w) map in (N,h,w) (scipy, as PatchCore; sigma 0 = unchanged)."""
    if sigma <= 0:
        return maps
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(maps, sigma=(0, sigma, sigma))


# ----------------------------------------------------------------------------- the model
@dataclasses.dataclass(kw_only=True, eq=False)
class PatchCore:
    """PatchCore with a frozen feature extractor.

    ``fit(images)`` builds the memory bank; ``predict(images) -> (image scores (N,), maps (N,S,S))``.
    ``fit_embeddings``/``score_embeddings`` do the same on embeddings from :meth:`embed`, so features
    are extracted once per image set.
    """

    extractor: FeatureExtractor = dataclasses.field(kw_only=False)
    # patch embedding (anomaly/embedding.py)
    pretrain_dim: int | None = 1024
    target_dim: int | None = 1024
    patchsize: int = 3
    # memory bank (anomaly/coreset.py)
    coreset_ratio: float = 0.1
    projection_dim: int = 128
    # scores and maps: k nearest bank rows, Eq. 7 re-weighting, smoothing of the maps
    num_neighbors: int = 1
    reweight: bool = False
    reweight_neighbors: int = 3
    smoothing_sigma: float = 4.0
    batch_size: int = 16
    seed: int = 0
    device: torch.device | str = "cpu"
    memory_bank: torch.Tensor | None = dataclasses.field(default=None, init=False, repr=False)
    timings: dict[str, float] = dataclasses.field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)

    def embed(self, images: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 (N,S,S,3) -> (patch embeddings (N,P,D), grid)."""
        return embed_patches(
            self.extractor, images, pretrain_dim=self.pretrain_dim, target_dim=self.target_dim,
            patchsize=self.patchsize, batch_size=self.batch_size, device=self.device,
        )

    def fit_embeddings(self, embeddings: torch.Tensor) -> "PatchCore":
        """Memory bank = coreset of all nominal patch embeddings (N,P,D)."""
        flat = embeddings.reshape(-1, embeddings.shape[-1])
        picks = greedy_coreset(flat, self.coreset_ratio, projection_dim=self.projection_dim, seed=self.seed)
        self.memory_bank = flat[picks].contiguous()
        return self

    def fit(self, images: np.ndarray) -> "PatchCore":
        with Timer() as t:
            emb, _ = self.embed(images)
        self.timings["fit_embed_s"] = t.seconds
        with Timer() as t:
            self.fit_embeddings(emb)
        self.timings["coreset_s"] = t.seconds
        return self

    def patch_scores(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,P,D) -> (patch scores (N,P) = mean squared distance to k nearest bank rows, nearest index (N,P))."""
        if self.memory_bank is None:
            raise DefectbenchError("patchcore: score called before fit")
        n, p, d = embeddings.shape
        dist, idx = nearest_neighbors(embeddings.reshape(-1, d), self.memory_bank, self.num_neighbors)
        return dist.mean(1).reshape(n, p), idx[:, 0].reshape(n, p)

    def image_scores(self, embeddings: torch.Tensor, scores: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
        """Max patch score per image; with ``reweight`` scaled by the paper's Eq. 7 weight.

        Eq. 7: w = 1 - exp||m_test - m*|| / sum_{m in N_b(m*)} exp||m_test - m||, where m_test is the
        highest-scoring patch, m* its nearest bank row and N_b(m*) the b nearest bank rows of m*
        (m* itself included).
        """
        best, where = scores.max(1)
        if not self.reweight:
            return best
        rows = torch.arange(len(best))
        m_test = embeddings[rows, where].float()  # (N,D)
        m_star = self.memory_bank[nearest[rows, where]]  # (N,D)
        _, support = nearest_neighbors(m_star, self.memory_bank, self.reweight_neighbors)  # (N,b); m* first
        dist = (self.memory_bank[support] - m_test[:, None, :]).pow(2).sum(-1).sqrt()  # (N,b)
        weight = 1 - torch.softmax(dist, dim=1)[:, 0]
        return weight * best

    def score_embeddings(
        self, embeddings: torch.Tensor, grid: tuple[int, int], image_size: int | tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(image scores (N,), anomaly maps (N,H,W) float32) for embeddings (N,P,D) on ``grid``."""
        scores, nearest = self.patch_scores(embeddings)
        image = self.image_scores(embeddings, scores, nearest)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        maps = F.interpolate(scores.reshape(-1, 1, *grid), size=size, mode="bilinear", align_corners=False)[:, 0]
        maps = gaussian_smooth(maps.numpy().astype(np.float32), self.smoothing_sigma)
        return image.numpy().astype(np.float64), maps

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with Timer() as t:
            emb, grid = self.embed(images)
            out = self.score_embeddings(emb, grid, images.shape[1:3])
        self.timings["predict_s"] = t.seconds
        return out


# ----------------------------------------------------------------------------- stage
# PatchCore fields set from the ``patchcore`` config section (the rest come from the job).
CONFIG_FIELDS = ("pretrain_dim", "target_dim", "patchsize", "coreset_ratio", "projection_dim", "num_neighbors",
                 "reweight", "reweight_neighbors", "smoothing_sigma", "batch_size")


def build_patchcore(cfg: dict[str, Any], device: torch.device, seed: int) -> PatchCore:
    """A PatchCore from the ``patchcore`` config section."""
    return PatchCore(patch_extractor(cfg), seed=seed, device=device, **{name: cfg[name] for name in CONFIG_FIELDS})


def run_patchcore(
    *,
    cache_path: str | Path,
    masks_path: str | Path | None,
    split_path: str | Path,
    metrics_path: str | Path,
    scores_path: str | Path,
    maps_path: str | Path,
    cfg: dict[str, Any],
    dataset: str,
    seed: int,
    features: str,
) -> dict[str, Any]:
    """The ``patchcore`` stage: fit on the anomaly split's nominal train images, score the nominal
    holdout and the test images, and evaluate and write them by the anomaly protocol
    (:mod:`defectbench.anomaly.protocol`: threshold on the holdout, image + pixel metrics,
    scores.parquet, maps.npy); metrics.json adds the timings and the memory bank size. Runs in
    :func:`defectbench.runtime.stage_job`; PatchCore has no mixed precision (``amp`` none).

    ``features`` (the job's ``{backbone}`` wildcard) labels the row: ``patchcore.backbone``, or
    ``random`` for the random-init control (``patchcore.controls``; its params carry
    ``pretrained: none``); the ``backbone`` key names the network either way.
    """
    pc_cfg = cfg["patchcore"]
    metrics_cfg = cfg["metrics"]
    if features not in (pc_cfg["backbone"], "random"):
        raise DefectbenchError(f"patchcore: features {features!r} (from the target's path) are neither "
                               f"patchcore.backbone {pc_cfg['backbone']!r} nor 'random'; check the target path")
    keys = {"dataset": dataset, "seed": int(seed), "scorer": "patchcore", "features": features,
            "backbone": pc_cfg["backbone"]}
    with stage_job(stage="anomaly", cfg=cfg, keys=keys, seed=seed) as job:
        parts = protocol.read_anomaly_split(split_path, cache_path, masks_path)
        train, holdout, test = (parts[name] for name in protocol.SUBSETS)
        model = build_patchcore(pc_cfg, job.device, seed)
        size = test.images.shape[1:3]
        log.info("patchcore %s on %s: %d train, %d holdout, %d test images at %s px, device %s",
                 pc_cfg["backbone"], dataset, len(train), len(holdout), len(test), size[0], job.device)
        model.fit(train.images)
        holdout_scores, _ = model.predict(holdout.images)
        test_scores, test_maps = model.predict(test.images)
        metrics = protocol.evaluate(test.rows, test_scores, holdout_scores, quantile=cfg["threshold_quantile"],
                                    maps=test_maps, masks=test.masks, pro_mode=metrics_cfg["pro_mode"],
                                    fpr_limit=metrics_cfg["pro_fpr_limit"])
        metrics.update({f"time_{k}": v for k, v in model.timings.items()})
        metrics["memory_bank_size"] = float(len(model.memory_bank))
        protocol.write_scores(scores_path, holdout=holdout.rows, holdout_scores=holdout_scores,
                              test=test.rows, test_scores=test_scores, test_maps=test_maps, maps_path=maps_path)
        record = job.write_metrics(metrics_path, metrics=metrics, extra={
            "amp": job.amp, "threshold": metrics.get("threshold"), "image_size": int(size[0])})
    log.info("patchcore %s: image AUROC %s, pixel AUROC %s", dataset, metrics.get("image_auroc"), metrics.get("pixel_auroc"))
    return record
