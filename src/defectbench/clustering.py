"""Anomaly Clustering (specs E.2, E.3): weighted image embeddings from patch embeddings, Ward clustering.

Each image i has patch embeddings Z_i (P,D) (PatchCore's embedding, with a per-image LayerNorm of
every layer map when ``layernorm``). A weight alpha_ip per patch says how anomalous the patch is:

* ``unsupervised``: d(p) = mean over the *other* images j of min_q ||z_p - z_q||, q in Z_j;
* ``supervised``: d(p) = min over the patches of nominal reference images of ||z_p - z_q||
  (the first ``int(train_ratio * len(references))`` of them: the clean fix of the reference code,
  which counted the test images);
* ``average``: uniform weights 1/P.

alpha_i = softmax(d / tau) over the patches of image i (stable; tau = 0 puts all weight on the
max-distance patches, ties split), X_i = sum_p alpha_ip z_p, and Ward agglomerative clustering of
the X_i into k clusters.

Positive control (``clustering.controls: [oracle]``, features ``oracle``): the same images,
weightings, Ward clustering and metrics, on patch embeddings made from the test labels
(:func:`oracle_patch_embeddings`: one-hot of the label plus noise). Any working stage clusters them
perfectly (NMI 1), so an NMI near chance on the real features is the features', not the stage's.
Random-init control (``clustering.controls: [random]``, features ``random``): the same job on
the patch embeddings of ``patchcore.backbone`` at random init (its params carry ``pretrained:
none``), so real features can be read against untrained ones of the same network.

>>> import torch
>>> d = torch.tensor([[1.0, 3.0, 3.0]])
>>> patch_weights(d, tau=0).tolist()
[[0.0, 0.5, 0.5]]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectbench.anomaly.neighbours import nearest_neighbors, query_chunks
from defectbench.data.cache import SplitCache
from defectbench.runtime import DefectbenchError

log = logging.getLogger("defectbench")

# The oracle control's patches: 16 per image, each the label's one-hot plus N(0, 0.5^2) per entry.
# Classes sit sqrt(2) apart; one patch's noise (norm ~0.5 sqrt(k)) blurs them, the image embedding
# (a weighted mean of 16 patches) does not, unless the stage mixes up images, labels or clusters.
ORACLE_PATCHES = 16
ORACLE_NOISE = 0.5


def oracle_patch_embeddings(labels: np.ndarray, n_classes: int, seed: int) -> torch.Tensor:
    """Positive-control patch embeddings (N, ORACLE_PATCHES, n_classes) of images with ``labels``:
    one-hot(label) + ORACLE_NOISE * N(0, 1) per patch entry, drawn from ``seed``.

    >>> z = oracle_patch_embeddings(np.array([0, 2]), 3, seed=0)
    >>> tuple(z.shape), z.mean(1).argmax(1).tolist()
    ((2, 16, 3), [0, 2])
    """
    gen = torch.Generator().manual_seed(int(seed))
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), n_classes).float()
    noise = torch.randn(len(labels), ORACLE_PATCHES, n_classes, generator=gen) * ORACLE_NOISE
    return onehot[:, None, :] + noise


def unsupervised_distances(embeddings: torch.Tensor, max_elements: int = 2**24) -> torch.Tensor:
    """d (N,P): for patch p of image i, the mean over images j != i of the distance to j's nearest patch."""
    n, p, dim = embeddings.shape
    if n < 2:
        raise DefectbenchError("clustering: unsupervised weights need at least 2 images")
    flat = embeddings.reshape(n * p, dim)
    out = torch.empty(n * p)
    image_of = torch.arange(n * p) // p
    for chunk in query_chunks(n * p, n * p, max_elements):
        q = flat[chunk]
        per_image = torch.cdist(q, flat).reshape(len(q), n, p).amin(2)  # (rows, N): min over j's patches
        per_image[torch.arange(len(q)), image_of[chunk]] = 0.0  # drop j == i
        out[chunk] = per_image.sum(1) / (n - 1)
    return out.reshape(n, p)


def supervised_distances(embeddings: torch.Tensor, references: torch.Tensor, train_ratio: float = 1.0) -> torch.Tensor:
    """d (N,P): distance of every patch to its nearest patch of the nominal reference images (M,P',D)."""
    used = int(train_ratio * len(references))
    if used < 1:
        raise DefectbenchError(f"clustering.train_ratio: {train_ratio} of {len(references)} reference images uses none")
    bank = references[:used].reshape(-1, references.shape[-1])
    n, p, dim = embeddings.shape
    nearest, _ = nearest_neighbors(embeddings.reshape(n * p, dim), bank, metric="euclidean")
    return nearest.reshape(n, p)


def patch_weights(distances: torch.Tensor, tau: float) -> torch.Tensor:
    """alpha (N,P) = softmax(d / tau) per image (max-subtracted); tau = 0: one-hot on the max, ties split."""
    if tau < 0:
        raise DefectbenchError(f"clustering.tau: must be >= 0, got {tau}")
    if tau == 0:
        hot = (distances == distances.amax(1, keepdim=True)).to(distances.dtype)
        return hot / hot.sum(1, keepdim=True)
    return torch.softmax(distances / tau, dim=1)


def image_embeddings(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """X (N,D) = sum_p alpha_ip z_ip."""
    return torch.bmm(weights[:, None, :].to(embeddings.dtype), embeddings)[:, 0]


def average_weights(embeddings: torch.Tensor, **_: Any) -> torch.Tensor:
    """Uniform patch weights 1/P (the plain average of the patch embeddings)."""
    n, p, _ = embeddings.shape
    return torch.full((n, p), 1.0 / p)


def unsupervised_weights(embeddings: torch.Tensor, *, tau: float, **_: Any) -> torch.Tensor:
    """AC unsupervised weights: softmax of each patch's distance to the other images' patches."""
    return patch_weights(unsupervised_distances(embeddings), tau)


def supervised_weights(embeddings: torch.Tensor, *, tau: float, references: torch.Tensor | None,
                       train_ratio: float, **_: Any) -> torch.Tensor:
    """AC supervised weights: softmax of each patch's distance to the nominal reference patches."""
    if references is None or len(references) == 0:
        raise DefectbenchError("clustering: 'supervised' weighting needs nominal reference images (anomaly split train)")
    return patch_weights(supervised_distances(embeddings, references, train_ratio), tau)


def weighted_embeddings(
    embeddings: torch.Tensor,
    weighting: str,
    *,
    tau: float = 2.0,
    references: torch.Tensor | None = None,
    train_ratio: float = 1.0,
) -> torch.Tensor:
    """Image embeddings (N,D) of patch embeddings (N,P,D) under one registered weighting
    (:data:`defectbench.registry.CLUSTERING_WEIGHTINGS`)."""
    from defectbench import registry

    weights = registry.implementation("clustering_weightings", weighting)(
        embeddings, tau=tau, references=references, train_ratio=train_ratio)
    return image_embeddings(embeddings, weights)


def ward_clusters(x: np.ndarray, k: int) -> np.ndarray:
    """Cluster ids (N,) from Ward agglomerative clustering (Euclidean) into ``k`` clusters."""
    from sklearn.cluster import AgglomerativeClustering

    if not 1 <= k <= len(x):
        raise DefectbenchError(f"clustering: cannot form {k} clusters from {len(x)} images")
    if k == 1:
        return np.zeros(len(x), dtype=int)
    return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(np.asarray(x, dtype=np.float64))


def cap_per_label(images: "pandas.DataFrame", cap: int, seed: int) -> "pandas.DataFrame":  # noqa: F821
    """At most ``cap`` rows per ``label`` (a seeded draw, kept in row order): clustering costs
    (images x patches)^2, so at 224 px (784 patches an image) only a few dozen images fit a CPU run.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"row": range(6), "label": [0, 0, 0, 1, 1, 2]})
    >>> cap_per_label(df, 2, seed=0)["label"].tolist()
    [0, 0, 1, 1, 2]
    """
    from defectbench.data.splits import split_rng

    rng = split_rng(seed, "clustering-cap")
    keep = [rng.choice(g.index.to_numpy(), size=min(cap, len(g)), replace=False)
            for _, g in images.sort_values("row").groupby("label", sort=True)]
    return images.loc[np.sort(np.concatenate(keep))].sort_values("row")


# ----------------------------------------------------------------------------- stage
def clustering_rows(data: SplitCache, manifest_path: str | Path, cl_cfg: dict[str, Any], seed: int) -> "pd.DataFrame":  # noqa: F821
    """The rows to cluster: the ``test`` rows of the clustering split (``data``), without the
    nominal ones (manifest ``is_anomalous`` false) unless ``clustering.include_normal``, at most
    ``clustering.max_per_class`` per label when set (:func:`cap_per_label`)."""
    import pandas as pd

    try:
        manifest = pd.read_parquet(manifest_path, columns=["is_anomalous"])
    except FileNotFoundError:
        raise DefectbenchError(f"{manifest_path}: manifest not found; run the build_manifest rule") from None
    rows = data.split[data.split["subset"] == "test"].copy()
    rows["is_anomalous"] = manifest["is_anomalous"].to_numpy()[rows["row"].to_numpy()]
    if not cl_cfg["include_normal"]:
        rows = rows[rows["is_anomalous"]]
    if cl_cfg.get("max_per_class") is not None:  # params carry the key only when a cap is set
        rows = cap_per_label(rows, int(cl_cfg["max_per_class"]), seed)
    if len(rows) < 2:
        raise DefectbenchError(f"{data.split_path}: fewer than 2 images to cluster; check the dataset's clustering task")
    return rows


def reference_rows(reference_split_path: str | Path | None, cache_path: str | Path,
                   clustered_rows: np.ndarray) -> tuple[SplitCache, "pd.DataFrame"]:  # noqa: F821
    """(the anomaly split, its rows used as references by ``supervised`` weighting): the nominal
    ``train`` images, minus any image being clustered."""
    if reference_split_path is None:
        raise DefectbenchError("clustering: 'supervised' weighting needs the anomaly split of the dataset")
    ref = SplitCache(reference_split_path, cache_path)
    nominal_train = ref.split[(ref.split["subset"] == "train") & (ref.split["label"] == 0)]
    rows = nominal_train[~nominal_train["row"].isin(clustered_rows)]
    if not len(rows):
        raise DefectbenchError(f"{reference_split_path}: no nominal train images to use as references")
    return ref, rows


def patch_embedder(features: str, cfg: dict[str, Any], *, n_labels: int, seed: int, device: Any):
    """``embed(source, rows, row_labels, stream) -> (N,P,D)`` patch embeddings of split rows:
    PatchCore's embedding of their images (``features`` = ``patchcore.backbone``, or ``random``:
    the same backbone with the job's ``pretrained: none``) or, for ``oracle``,
    :func:`oracle_patch_embeddings` of their labels (stream 0: the clustered images, 1: the
    references, each with its own noise draws; the images are not read)."""
    cl_cfg = cfg["clustering"]
    if features == "oracle":
        def embed(source: SplitCache, rows: Any, row_labels: np.ndarray, stream: int) -> torch.Tensor:
            return oracle_patch_embeddings(row_labels, n_labels, seed=2 * int(seed) + stream)
        return embed
    from defectbench.anomaly.embedding import embed_patches, patch_extractor

    pc_cfg = cfg["patchcore"]
    if features not in (pc_cfg["backbone"], "random"):
        raise DefectbenchError(f"clustering: features {features!r} are neither 'oracle', 'random' nor patchcore.backbone "
                               f"{pc_cfg['backbone']!r}; check the target path")
    extractor = patch_extractor(pc_cfg)
    embed_kw = dict(pretrain_dim=cl_cfg.get("pretrain_dim"), target_dim=cl_cfg.get("target_dim"),
                    patchsize=pc_cfg["patchsize"], layernorm=cl_cfg["layernorm"],
                    batch_size=pc_cfg["batch_size"], device=device)

    def embed(source: SplitCache, rows: Any, row_labels: np.ndarray, stream: int) -> torch.Tensor:
        return embed_patches(extractor, source.take(rows).images, **embed_kw)[0]
    return embed


def run_clustering(
    *,
    cache_path: str | Path,
    manifest_path: str | Path,
    split_path: str | Path,
    reference_split_path: str | Path | None,
    metrics_paths: dict[str, str | Path],
    assignments_paths: dict[str, str | Path],
    cfg: dict[str, Any],
    dataset: str,
    seed: int,
    features: str,
) -> dict[str, dict[str, Any]]:
    """The ``cluster`` rule: embed the clustering images once, then for every weighting in
    ``metrics_paths`` cluster them and write metrics.json + assignments.parquet (row, label,
    label_name, cluster, matched_label).

    Images: :func:`clustering_rows`; k = number of distinct labels among them. References for
    ``supervised``: :func:`reference_rows`. ``features``: ``patchcore.backbone``, ``random``
    (the random-init control) or ``oracle`` (the positive control), see :func:`patch_embedder`;
    rows of real features also name the network in ``backbone``.
    """
    import pandas as pd

    from defectbench import registry
    from defectbench.metrics.clustering import clustering_metrics, hungarian_match
    from defectbench.runtime import Timer, stage_job, write_parquet

    cl_cfg = cfg["clustering"]
    keys = {"dataset": dataset, "seed": int(seed), "features": features,
            **({} if features == "oracle" else {"backbone": cfg["patchcore"]["backbone"]})}
    with stage_job(stage="clustering", cfg=cfg, keys=keys, seed=seed) as job:
        data = SplitCache(split_path, cache_path)
        images = clustering_rows(data, manifest_path, cl_cfg, seed)
        labels = images["label"].to_numpy().astype(int)
        k = int(np.unique(labels).size)
        embed = patch_embedder(features, cfg, n_labels=int(data.split["label"].max()) + 1, seed=seed, device=job.device)
        log.info("clustering %s: %d images, k=%d, features %s", dataset, len(images), k, features)
        emb = embed(data, images, labels, 0)
        references = None
        if "supervised" in metrics_paths:
            ref, ref_rows = reference_rows(reference_split_path, cache_path, images["row"].to_numpy())
            references = embed(ref, ref_rows, np.zeros(len(ref_rows), dtype=int), 1)
        records = {}
        for weighting, metrics_path in metrics_paths.items():
            # only the keys this weighting reads are in the job's params (an average-only job has no tau)
            reads = registry.entry("clustering_weightings", weighting).reads
            with Timer() as timer:
                x = weighted_embeddings(emb, weighting, references=references,
                                        **{key: cl_cfg[key] for key in ("tau", "train_ratio") if key in reads})
                clusters = ward_clusters(x.numpy(), k)
                metrics = clustering_metrics(labels, clusters)
                mapping = hungarian_match(labels, clusters)
                write_parquet(assignments_paths[weighting], pd.DataFrame({
                    "row": images["row"].to_numpy(), "label": labels,
                    "label_name": images["label_name"].astype(str).to_numpy(),
                    "cluster": clusters, "matched_label": [mapping.get(int(c), -1) for c in clusters],
                }))
            records[weighting] = job.write_metrics(
                metrics_path, metrics=metrics, keys={"weighting": weighting},
                extra={"amp": job.amp, "k": k, "include_normal": bool(cl_cfg["include_normal"]),
                       "weighting_time_s": timer.seconds},
            )
            log.info("clustering %s/%s: NMI %.3f ARI %.3f F1 %.3f", dataset, weighting, metrics["nmi"], metrics["ari"], metrics["f1"])
    return records
