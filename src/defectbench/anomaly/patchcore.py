"""PatchCore (specs E.1, E.4): locally aggregated patch embeddings, greedy coreset, nearest-neighbour scores.

The pieces, each a plain function so that anomaly clustering (``defectbench.clustering``) and the
benchmark reuse them:

* :func:`embed_patches`: backbone feature maps -> 3x3 patchify -> coarser grid upsampled to the
  finest one -> per-layer ``adaptive_avg_pool1d`` to ``pretrain_dim`` (the MeanMapper) -> stack and
  ``adaptive_avg_pool1d`` to ``target_dim`` (the aggregator). Extracted once per image set.
* :func:`greedy_coreset`: approximate greedy k-center selection on a random linear projection,
  exact (the textbook loop's picks) but with the distance updates batched into GEMMs and the
  argmax searched in a small exact pool (about 20x faster than one pass per pick on 2 cores).
* :func:`nearest_neighbors`: exact chunked k-NN in squared L2 (what faiss ``IndexFlatL2`` returns).
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

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from defectbench.models.backbones import FeatureExtractor, imagenet_normalize
from defectbench.runtime import DefectbenchError, Timer, pick_device, seed_everything

log = logging.getLogger("defectbench")


# ----------------------------------------------------------------------------- patch embeddings
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


# ----------------------------------------------------------------------------- coreset
def random_projection(features: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Project (N,D) -> (N,dim) with a ``nn.Linear(D, dim, bias=False)``-style matrix (Kaiming uniform).

    As in PatchCore's sampler, features already of width ``dim`` are used as they are.
    """
    d = features.shape[1]
    if d == dim:
        return features.float().contiguous()
    bound = 1.0 / math.sqrt(d)
    weight = (torch.rand(dim, d, generator=generator) * 2 - 1) * bound
    return (features.float() @ weight.T.to(features.device)).contiguous()


def _squared_distances(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (len(x), len(c)) by one GEMM: ||x||^2 - 2 x.c + ||c||^2, clamped at 0."""
    return torch.addmm(c_sq[None, :], x, c.T, alpha=-2.0).add_(x_sq[:, None]).clamp_min_(0)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def kcenter_greedy(
    points: torch.Tensor, n: int, starts: torch.Tensor, block: int = 128, pool: int = 1024, max_elements: int = 2**24
) -> torch.Tensor:
    """Approximate greedy k-center (PatchCore): indices of ``n`` picks from ``points`` (N,d).

    The min-distance m(x) starts as the mean Euclidean distance to the ``starts`` points; then,
    ``n`` times, the point with the largest m is picked and every m is lowered to the distance to
    it. The picks are those of that textbook loop (up to float rounding: work in float64 for bitwise
    equality), computed without touching all N points per pick:

    * Stored m values are brought up to date lazily, ``block`` new centers at a time, with one GEMM
      (compute-bound) instead of ``block`` memory-bound passes over the data.
    * Between updates, the argmax is searched in a pool of the ``pool`` largest stored values,
      which are kept exact after every pick (a small matrix-vector product). Stored values only
      overestimate the true ones, so when the pool's best is at least the largest value outside
      the pool, it is the true argmax; otherwise the pool is refilled after an update.

    Threads: the per-pick work (a ``pool`` x d matrix-vector product, an argmax) is microseconds,
    too small to split; run with several threads, every pick waits for the slowest thread, and on
    a shared node a descheduled thread makes that wait a time slice (measured: 126 s instead of
    2.3 s beside one busy process). So picks run on one thread and only the update GEMMs use all.
    """
    num = points.shape[0]
    n = int(n)
    if not 0 < n <= num:
        raise DefectbenchError(f"coreset: cannot pick {n} of {num} points")
    x = points - points.mean(0)  # centring keeps ||x||^2 - 2x.c + ||c||^2 accurate
    x_sq = x.pow(2).sum(1)
    min_d = torch.cdist(x, x[starts]).mean(1)
    pool = min(pool, num)
    chunk = max(1, max_elements // block)  # rows per distance update: at most max_elements distances
    picks = torch.empty(n, dtype=torch.long)
    pending: list[int] = []
    threads = torch.get_num_threads()

    @torch_threads(threads)
    def refresh() -> tuple[torch.Tensor, torch.Tensor, float]:
        """Apply pending centers to every stored m; return the new pool (indices, values, outside bound)."""
        if pending:
            p = torch.tensor(pending)
            c, c_sq = x[p], x_sq[p]
            for s in range(0, num, chunk):  # row chunks bound the (rows, block) distance matrix
                d = _squared_distances(x[s:s + chunk], x_sq[s:s + chunk], c, c_sq).amin(1).sqrt_()
                torch.minimum(min_d[s:s + chunk], d, out=min_d[s:s + chunk])
            pending.clear()
        if pool == num:
            return torch.arange(num), min_d.clone(), float("-inf")
        vals, idx = min_d.topk(pool + 1)
        return idx[:pool], vals[:pool].clone(), float(vals[pool])

    pool_idx, pool_val, outside = refresh()
    pool_x, pool_sq = x[pool_idx], x_sq[pool_idx]
    t0 = time.perf_counter()
    with torch_threads(1):
        for i in range(n):
            j = int(torch.argmax(pool_val))
            if len(pending) >= block or float(pool_val[j]) < outside:
                pool_idx, pool_val, outside = refresh()
                pool_x, pool_sq = x[pool_idx], x_sq[pool_idx]
                j = int(torch.argmax(pool_val))
            c = int(pool_idx[j])
            picks[i] = c
            pending.append(c)
            d = torch.addmv(pool_sq, pool_x, x[c], alpha=-2.0).add_(x_sq[c]).clamp_min_(0).sqrt_()
            torch.minimum(pool_val, d, out=pool_val)
            if (i + 1) % 5000 == 0:
                log.info("coreset: %d/%d picks (%.1fs)", i + 1, n, time.perf_counter() - t0)
    return picks


def greedy_coreset(
    features: torch.Tensor,
    ratio: float,
    *,
    projection_dim: int = 128,
    n_starts: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of ``int(ratio * N)`` coreset rows of ``features`` (N,D) (PatchCore's approximate greedy).

    ``ratio >= 1`` keeps every row. Random projection and the ``n_starts`` starting points come from
    a generator seeded with ``seed``.
    """
    num = features.shape[0]
    n = int(num * ratio)
    if ratio >= 1 or n >= num:
        return torch.arange(num)
    if n < 1:
        raise DefectbenchError(f"patchcore.coreset_ratio: {ratio} of {num} patches picks nothing; raise it")
    gen = torch.Generator().manual_seed(int(seed))
    projected = random_projection(features, projection_dim, gen)
    starts = torch.randperm(num, generator=gen)[: min(n_starts, num)]
    t0 = time.perf_counter()
    picks = kcenter_greedy(projected, n, starts)
    log.info("coreset: %d of %d patches in %.1fs", n, num, time.perf_counter() - t0)
    return picks


# ----------------------------------------------------------------------------- nearest neighbours
def nearest_neighbors(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, max_elements: int = 2**24
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN in squared L2: (squared distances (M,k) ascending, bank indices (M,k)).

    Chunked ``||q||^2 - 2 q.b + ||b||^2`` over query rows, so that one chunk's distance matrix stays
    below ``max_elements`` floats.
    """
    k = min(int(k), bank.shape[0])
    bank = bank.float()
    bank_sq = bank.pow(2).sum(1)
    rows = max(1, max_elements // max(bank.shape[0], 1))
    dists, idxs = [], []
    for start in range(0, queries.shape[0], rows):
        q = queries[start:start + rows].float()
        d = torch.addmm(bank_sq[None, :], q, bank.T, alpha=-2.0)
        d.add_(q.pow(2).sum(1, keepdim=True)).clamp_min_(0)
        if k == 1:
            val, ind = d.min(1, keepdim=True)
        else:
            val, ind = d.topk(k, dim=1, largest=False)
        dists.append(val)
        idxs.append(ind)
    return torch.cat(dists), torch.cat(idxs)


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each (h,w) map in (N,h,w) (scipy, as PatchCore; sigma 0 = unchanged)."""
    if sigma <= 0:
        return maps
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(maps, sigma=(0, sigma, sigma))


# ----------------------------------------------------------------------------- the model
class PatchCore:
    """PatchCore with a frozen feature extractor.

    ``fit(images)`` builds the memory bank; ``predict(images) -> (image scores (N,), maps (N,S,S))``.
    ``fit_embeddings``/``score_embeddings`` do the same on embeddings from :meth:`embed`, so features
    are extracted once per image set.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        pretrain_dim: int | None = 1024,
        target_dim: int | None = 1024,
        patchsize: int = 3,
        coreset_ratio: float = 0.1,
        projection_dim: int = 128,
        num_neighbors: int = 1,
        reweight: bool = False,
        reweight_neighbors: int = 3,
        smoothing_sigma: float = 4.0,
        batch_size: int = 16,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.extractor = extractor
        self.pretrain_dim = pretrain_dim
        self.target_dim = target_dim
        self.patchsize = patchsize
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.reweight = reweight
        self.reweight_neighbors = reweight_neighbors
        self.smoothing_sigma = smoothing_sigma
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.memory_bank: torch.Tensor | None = None
        self.timings: dict[str, float] = {}

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
def build_patchcore(cfg: dict[str, Any], device: torch.device, seed: int) -> PatchCore:
    """A PatchCore from the ``patchcore`` config section."""
    extractor = FeatureExtractor(cfg["backbone"], cfg["layers"],
                                 pretrained=cfg["pretrained"])
    return PatchCore(
        extractor,
        pretrain_dim=cfg["pretrain_dim"],
        target_dim=cfg["target_dim"],
        patchsize=cfg["patchsize"],
        coreset_ratio=cfg["coreset_ratio"],
        projection_dim=cfg["projection_dim"],
        num_neighbors=cfg["num_neighbors"],
        reweight=cfg["reweight"],
        reweight_neighbors=cfg["reweight_neighbors"],
        smoothing_sigma=cfg["smoothing_sigma"],
        batch_size=cfg["batch_size"],
        seed=seed,
        device=device,
    )


def load_split_images(cache_path: str | Path, masks_path: str | Path | None, split_path: str | Path):
    """(split DataFrame sorted by row, cache memmap, masks memmap or None) with shape checks."""
    from defectbench.data.cache import load_cache
    from defectbench.data.splits import read_split

    split = read_split(split_path)
    cache = load_cache(cache_path)
    masks = load_cache(masks_path) if masks_path else None
    if cache.ndim != 4:
        raise DefectbenchError(f"{cache_path}: expected (N,S,S,3) uint8, got {cache.dtype} {cache.shape}; rebuild it")
    if masks is not None and masks.shape[:3] != cache.shape[:3]:
        raise DefectbenchError(f"{masks_path}: mask cache shape {masks.shape} does not match {cache_path}; rebuild both")
    if len(split) and int(split["row"].max()) >= len(cache):
        raise DefectbenchError(f"{split_path}: row {int(split['row'].max())} beyond the {len(cache)} cached images")
    return split, cache, masks


def map_sample(labels: np.ndarray, n_anomalous: int = 8, n_nominal: int = 4) -> np.ndarray:
    """Positions (into the test set) of the maps kept for figures: evenly spread anomalous + nominal."""
    picked = []
    for value, count in ((1, n_anomalous), (0, n_nominal)):
        pos = np.flatnonzero(labels == value)
        if len(pos):
            picked.append(pos[np.unique(np.linspace(0, len(pos) - 1, min(count, len(pos))).round().astype(int))])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


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
) -> dict[str, Any]:
    """The ``patchcore`` stage: fit on the anomaly split's nominal train images, threshold on the
    nominal holdout, evaluate on test (image + pixel metrics), write metrics.json, scores.parquet
    (row, subset, label, score, map_index) and maps.npy (a float16 sample of test maps for figures;
    ``map_index`` says which test row is which map, -1 = not kept).
    """
    import pandas as pd

    from defectbench.metrics.anomaly import evaluate_anomaly
    from defectbench.runtime import write_metrics, write_parquet, atomic_path

    pc_cfg = cfg["patchcore"]
    metrics_cfg = cfg["metrics"]
    start = time.perf_counter()
    seed_everything(seed)
    device = pick_device(cfg["device"])
    split, cache, masks = load_split_images(cache_path, masks_path, split_path)
    subsets = {name: split[split["subset"] == name] for name in ("train", "holdout", "test")}
    for name, part in subsets.items():
        if part.empty:
            raise DefectbenchError(f"{split_path}: the anomaly split has no '{name}' images; check the dataset's anomaly task")
    model = build_patchcore(pc_cfg, device, seed)
    size = cache.shape[1:3]
    log.info("patchcore %s on %s: %d train, %d holdout, %d test images at %s px, device %s",
             pc_cfg["backbone"], dataset, len(subsets["train"]), len(subsets["holdout"]), len(subsets["test"]),
             size[0], device)
    model.fit(cache[subsets["train"]["row"].to_numpy()])
    holdout_scores, _ = model.predict(cache[subsets["holdout"]["row"].to_numpy()])
    test_rows = subsets["test"]["row"].to_numpy()
    test_scores, test_maps = model.predict(cache[test_rows])
    test_labels = subsets["test"]["label"].to_numpy().astype(int)
    test_masks = np.asarray(masks[test_rows]) > 0 if masks is not None else None
    metrics = evaluate_anomaly(
        test_scores, test_labels, holdout_scores,
        quantile=cfg["threshold_quantile"],
        maps=test_maps if test_masks is not None else None, masks=test_masks,
        pro_mode=metrics_cfg["pro_mode"], fpr_limit=metrics_cfg["pro_fpr_limit"],
        test_types=subsets["test"]["label_name"].to_numpy(),
    )
    metrics.update({f"time_{k}": v for k, v in model.timings.items()})
    metrics["memory_bank_size"] = float(len(model.memory_bank))

    keep = map_sample(test_labels)
    map_index = np.full(len(test_rows), -1)
    map_index[keep] = np.arange(len(keep))
    with atomic_path(maps_path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, test_maps[keep].astype(np.float16))
    rows = [
        pd.DataFrame({"row": subsets["holdout"]["row"].to_numpy(), "subset": "holdout",
                      "label": subsets["holdout"]["label"].to_numpy().astype(int), "score": holdout_scores,
                      "map_index": -1}),
        pd.DataFrame({"row": test_rows, "subset": "test", "label": test_labels, "score": test_scores,
                      "map_index": map_index}),
    ]
    write_parquet(scores_path, pd.concat(rows, ignore_index=True))
    record = write_metrics(
        metrics_path,
        stage="anomaly",
        metrics=metrics,
        config=cfg,
        keys={"dataset": dataset, "seed": int(seed), "scorer": "patchcore", "features": pc_cfg["backbone"]},
        device=str(device),
        wall_time_s=time.perf_counter() - start,
        extra={"amp": "none", "threshold": metrics.get("threshold"), "image_size": int(size[0])},
    )
    log.info("patchcore %s: image AUROC %s, pixel AUROC %s", dataset, metrics.get("image_auroc"), metrics.get("pixel_auroc"))
    return record
