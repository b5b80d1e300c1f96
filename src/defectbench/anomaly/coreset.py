"""Greedy coreset (specs E.1): PatchCore's approximate greedy k-center selection on a random
linear projection, exact (the textbook loop's picks) but with the distance updates batched into
GEMMs and the argmax searched in a small exact pool (about 20x faster than one pass per pick on
2 cores; picks on one thread: :func:`kcenter_greedy`).

>>> import torch
>>> points = torch.tensor([[0.0], [1.0], [10.0], [11.0]], dtype=torch.float64)
>>> kcenter_greedy(points, 2, torch.tensor([0])).tolist()
[3, 1]
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

from defectbench.runtime import DefectbenchError

log = logging.getLogger("defectbench")


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
    2.3 s beside one busy process). So picks run on one thread. The update GEMMs use as many
    workers as the caller's torch threads, but not by splitting each GEMM statically over the
    threads (a static split waits for the thread that shares its core with another process): the
    rows are cut into many chunks that single-threaded workers take as they become free, so a
    worker on a busy core simply does fewer chunks (benchmarks/coreset_contention.py). On a GPU one
    worker issues the chunks.
    """
    num = points.shape[0]
    n = int(n)
    if not 0 < n <= num:
        raise DefectbenchError(f"coreset: cannot pick {n} of {num} points")
    x = points - points.mean(0)  # centring keeps ||x||^2 - 2x.c + ||c||^2 accurate
    x_sq = x.pow(2).sum(1)
    min_d = torch.cdist(x, x[starts]).mean(1)
    pool = min(pool, num)
    # on a GPU the chunks are kernel launches in order: one worker (CPU threads would only contend)
    threads = 1 if x.is_cuda else torch.get_num_threads()
    # rows per distance update: at most max_elements distances, and enough chunks for the workers
    # to balance (8 per worker)
    chunk = max(1, min(max_elements // block, math.ceil(num / (8 * threads))))
    picks = torch.empty(n, dtype=torch.long)
    pending: list[int] = []

    def update_rows(s: int, c: torch.Tensor, c_sq: torch.Tensor) -> None:
        torch.set_num_threads(1)  # per worker thread: this chunk's GEMM on this worker alone
        d = _squared_distances(x[s:s + chunk], x_sq[s:s + chunk], c, c_sq).amin(1).sqrt_()
        torch.minimum(min_d[s:s + chunk], d, out=min_d[s:s + chunk])

    def refresh(workers: ThreadPoolExecutor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Apply pending centers to every stored m; return the new pool (indices, values, outside bound)."""
        if pending:
            p = torch.tensor(pending)
            c, c_sq = x[p], x_sq[p]
            list(workers.map(lambda s: update_rows(s, c, c_sq), range(0, num, chunk)))
            pending.clear()
        if pool == num:
            return torch.arange(num), min_d.clone(), float("-inf")
        vals, idx = min_d.topk(pool + 1)
        return idx[:pool], vals[:pool].clone(), float(vals[pool])

    t0 = time.perf_counter()
    with torch_threads(1), ThreadPoolExecutor(max_workers=threads, thread_name_prefix="coreset") as workers:
        pool_idx, pool_val, outside = refresh(workers)
        pool_x, pool_sq = x[pool_idx], x_sq[pool_idx]
        for i in range(n):
            j = int(torch.argmax(pool_val))
            if len(pending) >= block or float(pool_val[j]) < outside:
                pool_idx, pool_val, outside = refresh(workers)
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
