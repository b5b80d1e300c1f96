"""Exact nearest neighbours in chunks of query rows, shared by PatchCore (patch scores, Eq. 7
re-weighting) and anomaly clustering (distances to nominal reference patches).

One chunk's (rows, bank) distance matrix stays below ``max_elements`` values, so memory is
bounded whatever the number of query patches.

>>> import torch
>>> bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
>>> dist, idx = nearest_neighbors(torch.tensor([[3.0, 3.0]]), bank)
>>> dist.tolist(), idx.tolist()
([[1.0]], [[1]])
>>> nearest_neighbors(torch.tensor([[3.0, 3.0]]), bank, metric="euclidean")[0].tolist()
[[1.0]]
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch

from defectbench.runtime import DefectbenchError

Metric = Literal["squared_l2", "euclidean"]


def query_chunks(n_queries: int, bank_size: int, max_elements: int = 2**24) -> Iterator[slice]:
    """Slices of query rows such that each (rows, ``bank_size``) distance matrix has at most
    ``max_elements`` entries (at least one row per chunk)."""
    rows = max(1, max_elements // max(bank_size, 1))
    for start in range(0, n_queries, rows):
        yield slice(start, start + rows)


def nearest_neighbors(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *, metric: Metric = "squared_l2",
    max_elements: int = 2**24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of each query row (M,D) in ``bank`` (K,D): (distances (M,k) ascending, bank indices (M,k)).

    ``squared_l2`` (PatchCore; what faiss ``IndexFlatL2`` returns): ``||q||^2 - 2 q.b + ||b||^2``
    by one GEMM per chunk, in float32, clamped at 0. ``euclidean`` (anomaly clustering):
    ``torch.cdist`` per chunk, in the inputs' dtype. ``k`` is capped at the bank size.
    """
    if metric not in ("squared_l2", "euclidean"):
        raise DefectbenchError(f"nearest_neighbors: unknown metric {metric!r}; use squared_l2 or euclidean")
    k = min(int(k), bank.shape[0])
    if metric == "squared_l2":
        bank = bank.float()
        bank_sq = bank.pow(2).sum(1)
    dists, idxs = [], []
    for chunk in query_chunks(queries.shape[0], bank.shape[0], max_elements):
        if metric == "squared_l2":
            q = queries[chunk].float()
            d = torch.addmm(bank_sq[None, :], q, bank.T, alpha=-2.0)
            d.add_(q.pow(2).sum(1, keepdim=True)).clamp_min_(0)
        else:
            d = torch.cdist(queries[chunk], bank)
        if k == 1:
            val, ind = d.min(1, keepdim=True)
        else:
            val, ind = d.topk(k, dim=1, largest=False)
        dists.append(val)
        idxs.append(ind)
    return torch.cat(dists), torch.cat(idxs)
