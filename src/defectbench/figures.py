"""Figures for people: PNGs under ``results/figures/`` named ``<kind>--<subject>.png``.

Every figure is made from files the jobs already wrote: the stage tables, beside each job's
metrics.json its ``predictions.parquet``, ``scores.parquet`` + ``maps.npy``, ``encoder.pt``,
``probe.pt`` or supervised ``model.pt`` (``JOB_FILES``), and each dataset's manifest,
classification splits, image cache and masks at its image size (:mod:`defectbench.paths`).
The figures rule declares every one of them as an input (so a change to any reruns it) and
passes the list: :func:`make_figures` reads no other file. A figure that cannot use a file
(missing, or not declared) is drawn without it or not at all, with a log line naming the file
and why; any other failure (an unreadable file, a bug) stops the job like any other error.

Kinds (``FIGURE_KINDS``): ``label-efficiency`` (macro F1 vs labelled fraction per method),
``confusion`` (confusion matrices), ``roc-pr`` (ROC and PR curves of the anomaly scorers),
``score-hist`` (nominal vs anomalous score histograms with the threshold), ``anomaly-maps``
(map overlays of a few test images), ``tsne`` (t-SNE of encoder features coloured by class),
``gradcam`` (Grad-CAM of the supervised CNN and of linear probes), ``failures`` (worst false
positives / negatives per class), ``budget`` (the budget curve: probe accuracy vs pretraining
optimiser steps per image size, with the random-init control).

The pure helpers (:func:`grad_cam`, :func:`worst_failures`, :func:`worst_anomaly_failures`) are
unit-tested on hand-computed inputs; ROC/PR points and confusion matrices come from
:mod:`defectbench.metrics`, the code the metrics themselves use.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from defectbench import paths, registry
from defectbench.metrics.anomaly import binary_auroc, roc_pr_points
from defectbench.metrics.classification import confusion
from defectbench.runtime import DefectbenchError, atomic_path

log = logging.getLogger("defectbench")

FIGURE_KINDS: tuple[str, ...] = (
    "label-efficiency", "confusion", "roc-pr", "score-hist", "anomaly-maps", "tsne", "gradcam", "failures", "budget",
)
_DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")
    plt.close(fig)
    return path


def figure_path(out_dir: str | Path, kind: str, subject: str) -> Path:
    """``out_dir/<kind>--<subject>.png`` (``--`` separates kind and subject for the report patterns)."""
    if kind not in FIGURE_KINDS:
        raise DefectbenchError(f"unknown figure kind {kind!r}")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in subject).replace("--", "-")
    return Path(out_dir) / f"{kind}--{safe}.png"


# ----------------------------------------------------------------------------- pure helpers
def worst_failures(pred: pd.DataFrame, n: int = 3) -> dict[int, dict[str, list[int]]]:
    """Per class k: the ``n`` worst false negatives (true k, predicted otherwise, lowest p_k) and
    false positives (predicted k, true otherwise, highest p_k), as manifest rows.

    ``pred``: predictions.parquet columns ``row, y_true, y_pred, proba_<k>``.
    """
    out: dict[int, dict[str, list[int]]] = {}
    classes = sorted(int(c[len("proba_"):]) for c in pred.columns if c.startswith("proba_"))
    for k in classes:
        p = f"proba_{k}"
        fn = pred[(pred["y_true"] == k) & (pred["y_pred"] != k)].sort_values([p, "row"])
        fp = pred[(pred["y_pred"] == k) & (pred["y_true"] != k)].sort_values([p, "row"], ascending=[False, True])
        out[k] = {"fn": fn["row"].astype(int).tolist()[:n], "fp": fp["row"].astype(int).tolist()[:n]}
    return out


def worst_anomaly_failures(scores: pd.DataFrame, threshold: float | None, n: int = 4) -> dict[str, list[int]]:
    """Test images on the wrong side of ``threshold``: highest-scoring nominal (false positives) and
    lowest-scoring anomalous (false negatives); without a threshold, the extremes of each class."""
    test = scores[scores["subset"] == "test"] if "subset" in scores.columns else scores
    nominal = test[test["label"] == 0].sort_values(["score", "row"], ascending=[False, True])
    anomalous = test[test["label"] == 1].sort_values(["score", "row"])
    if threshold is not None and not math.isnan(threshold):
        nominal = nominal[nominal["score"] > threshold]
        anomalous = anomalous[anomalous["score"] <= threshold]
    return {"fp": nominal["row"].astype(int).tolist()[:n], "fn": anomalous["row"].astype(int).tolist()[:n]}


def grad_cam(model: "torch.nn.Module", images: "torch.Tensor", targets: "torch.Tensor | None" = None) -> np.ndarray:  # noqa: F821
    """Grad-CAM maps (N, H, W) in [0, 1] of a classifier ``model`` ((N,3,H,W) -> (N,K) logits).

    The maps use the last activation with spatial size > 1 (found with forward hooks, so any CNN
    works): weights = spatial mean of d logit_target / d A, map = ReLU(sum_c w_c A_c), bilinearly
    upsampled to the input size and scaled to max 1 per image. ``targets`` default to the argmax.
    """
    import torch
    import torch.nn.functional as F

    acts: list[torch.Tensor] = []

    def hook(_module, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
            acts.append(out)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model.eval()
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            logits = model(x)
            if not acts:
                raise DefectbenchError("grad_cam: the model has no spatial activation to explain")
            a = acts[-1]
            idx = logits.argmax(dim=1) if targets is None else targets.to(logits.device).long()
            chosen = logits.gather(1, idx.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(chosen, a)
    finally:
        for h in handles:
            h.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------- plots
def plot_label_efficiency(classification: pd.DataFrame, out_dir: Path, metric: str = "macro_f1") -> list[Path]:
    """One PNG per dataset: ``metric`` (mean ± std over seeds) vs labelled fraction, one line per method."""
    need = {"dataset", "method", "labels_pct", "seed", metric}
    if classification.empty or not need <= set(classification.columns):
        return []
    plt = _plt()
    written = []
    df = classification.dropna(subset=["labels_pct", metric])
    for dataset, d in df.groupby("dataset", sort=True):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (method, backbone), g in d.groupby(["method", d["backbone"].fillna("")], sort=True):
            s = g.groupby("labels_pct")[metric].agg(["mean", "std"]).sort_index()
            label = f"{method} ({backbone})" if backbone and d["backbone"].nunique() > 1 else str(method)
            ax.errorbar(s.index, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ticks = sorted(d["labels_pct"].unique())
        ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
        ax.set_xlabel("labelled fraction of the train split")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{dataset}: {metric} vs labels (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, figure_path(out_dir, "label-efficiency", dataset)))
    return written


def budget_points(budget: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Budget-curve rows (those with ``budget_epochs``) as points: per (dataset, method,
    image_size, budget_epochs) the mean pretraining steps and ``metric`` mean ± std over seeds.

    >>> rows = pd.DataFrame({"dataset": "neu", "method": "simclr", "image_size": 32, "seed": [0, 1],
    ...                      "budget_epochs": 5, "pretrain_steps": 50.0, "accuracy": [0.5, 0.7]})
    >>> budget_points(rows)[["pretrain_steps", "mean", "n"]].values.tolist()
    [[50.0, 0.6, 2.0]]
    """
    keys = ["dataset", "method", "image_size", "budget_epochs"]
    if budget.empty or not set(keys + ["pretrain_steps", metric]) <= set(budget.columns):
        return pd.DataFrame(columns=keys + ["pretrain_steps", "mean", "std", "n"])
    g = budget.dropna(subset=["budget_epochs", metric]).groupby(keys, sort=True)
    out = g.agg(pretrain_steps=("pretrain_steps", "mean"), mean=(metric, "mean"), std=(metric, "std"),
                n=(metric, "count")).reset_index()
    out["n"] = out["n"].astype(float)
    return out


def plot_budget_curves(budget: pd.DataFrame, main: pd.DataFrame, out_dir: Path, metric: str = "accuracy") -> list[Path]:
    """One PNG per dataset: ``metric`` of the probe (all labels) vs the pretraining optimiser steps,
    one line per method and image size (points labelled with their epochs). From ``main`` (the
    run's other classification rows, 100% labels): each curve method's main-grid run as an open
    marker at its own steps, the random-init control as a dashed and the supervised baseline as a
    dotted grey line, so a point below the control is visible as such."""
    points = budget_points(budget, metric)
    if points.empty:
        return []
    plt = _plt()
    cols = ["dataset", "method", "labels_pct", "seed", "pretrain_steps", metric]
    full = main.reindex(columns=cols)
    full = full[full["labels_pct"] == 100].dropna(subset=[metric])
    written = []
    for dataset, d in points.groupby("dataset", sort=True):
        fig, ax = plt.subplots(figsize=(6, 4))
        at = full[full["dataset"] == dataset]
        for (method, size), g in d.groupby(["method", "image_size"], sort=True):
            g = g.sort_values("pretrain_steps")
            line = ax.errorbar(g["pretrain_steps"], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3,
                               label=f"{method}, {int(size)} px")
            for _, r in g.iterrows():
                ax.annotate(f"{int(r['budget_epochs'])} ep", (r["pretrain_steps"], r["mean"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
            grid = at[at["method"] == method].dropna(subset=["pretrain_steps"])
            if len(grid):
                ax.errorbar([grid["pretrain_steps"].mean()], [grid[metric].mean()], yerr=[np.nan_to_num(grid[metric].std())],
                            marker="o", mfc="white", capsize=3, color=line[0].get_color(), linestyle="none",
                            label=f"{method}, main grid ({int(grid['seed'].nunique())} seeds)")
        for method, label, style in (("random", "random-init control", "--"), ("supervised", "supervised baseline", ":")):
            ref = at[at["method"] == method]
            if len(ref):
                ax.axhline(float(ref[metric].mean()), color="grey", linestyle=style,
                           label=f"{label} ({int(ref['seed'].nunique())} seeds)")
        ax.set_xlabel("pretraining optimiser steps")
        ax.set_ylabel(f"probe {metric.replace('_', ' ')} (all labels)")
        ax.set_title(f"{dataset}: budget curve (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, figure_path(out_dir, "budget", str(dataset))))
    return written


def plot_confusions(jobs: list[tuple[str, pd.DataFrame]], class_names: list[str], out: Path) -> Path | None:
    """Row-normalised confusion matrices of several jobs side by side (title = job label)."""
    if not jobs:
        return None
    plt = _plt()
    k = max(len(class_names), 1 + max(int(max(p["y_true"].max(), p["y_pred"].max())) for _, p in jobs))
    names = class_names + [str(i) for i in range(len(class_names), k)]
    cols = min(len(jobs), 4)
    rows = math.ceil(len(jobs) / cols)
    size = 1.2 + 0.45 * k
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1, size * rows + 0.5), squeeze=False)
    for ax in axes.flat[len(jobs):]:
        ax.axis("off")
    for ax, (label, p) in zip(axes.flat, jobs):
        cm = confusion(p["y_true"].to_numpy(int), p["y_pred"].to_numpy(int), k)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        acc = float(np.trace(cm) / max(cm.sum(), 1))
        ax.set_title(f"{label}\naccuracy {acc:.3f}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    return _save(fig, out)


def plot_roc_pr(jobs: list[tuple[str, pd.DataFrame]], title: str, out: Path) -> Path | None:
    """ROC and PR curves of several anomaly scorers on the same test set (anomalous = positive)."""
    jobs = [(l, s[s["subset"] == "test"] if "subset" in s.columns else s) for l, s in jobs]
    jobs = [(l, s) for l, s in jobs if s["label"].nunique() == 2]
    if not jobs:
        return None
    plt = _plt()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.2))
    for label, s in jobs:
        fpr, tpr, rec, prec = roc_pr_points(s["label"].to_numpy(), s["score"].to_numpy())
        roc.plot(fpr, tpr, label=f"{label} (AUROC {binary_auroc(s['label'].to_numpy(), s['score'].to_numpy()):.3f})")
        pr.plot(np.r_[0.0, rec], np.r_[prec[0] if len(prec) else 1.0, prec], label=label)
    base = float(jobs[0][1]["label"].mean())
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    pr.axhline(base, color="k", ls=":", lw=0.8, label=f"chance ({base:.2f})")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: ROC")
    pr.set(xlabel="recall", ylabel="precision", title=f"{title}: precision-recall", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out)


def plot_score_histograms(jobs: list[tuple[str, pd.DataFrame, float | None]], title: str, out: Path) -> Path | None:
    """Per scorer: test score histograms of nominal vs anomalous images, with the fitted threshold."""
    if not jobs:
        return None
    plt = _plt()
    cols = min(len(jobs), 3)
    rows = math.ceil(len(jobs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(jobs):]:
        ax.axis("off")
    for ax, (label, s, threshold) in zip(axes.flat, jobs):
        test = s[s["subset"] == "test"] if "subset" in s.columns else s
        bins = np.histogram_bin_edges(test["score"], bins=30)
        # Densities, nominal drawn last: test sets are mostly anomalous, so raw counts hide the nominals.
        for value, name, colour in ((1, "anomalous", "tab:red"), (0, "nominal", "tab:blue")):
            scores = test.loc[test["label"] == value, "score"]
            if len(scores):
                ax.hist(scores, bins=bins, density=True, alpha=0.5, color=colour, label=f"{name} (n={len(scores)})")
                ax.hist(scores, bins=bins, density=True, histtype="step", color=colour, lw=1.2)
        if threshold is not None and not math.isnan(threshold):
            ax.axvline(threshold, color="k", ls="--", label="threshold (holdout nominal)")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("anomaly score")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, out)


def _gallery(images: np.ndarray, rows: list[list[int]], row_titles: list[str], cell_titles: list[list[str]],
             title: str, out: Path, overlays: list[list[np.ndarray | None]] | None = None,
             outlines: list[list[np.ndarray | None]] | None = None) -> Path | None:
    """A grid of cache images (one list of manifest rows per grid row), optional heat-map overlays
    (jet at 45% opacity) and mask outlines (ground-truth defect regions drawn as green contours).

    The grid is composed into one image and drawn on one axes: a gallery of 30 cells as 30 axes
    took most of the figures job's time (Matplotlib lays out and draws every axes)."""
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return None
    plt = _plt()
    height, cell_w = images.shape[1:3]
    gap_x, gap_y = max(2, cell_w // 12), max(4, height // 3)  # room for the cell titles above each image
    pitch_x, pitch_y = cell_w + gap_x, height + gap_y
    canvas = np.ones((len(rows) * pitch_y, width * pitch_x - gap_x, 3), dtype=np.float32)
    jet = plt.get_cmap("jet")
    fig, ax = plt.subplots(figsize=(1.9 * width + 1.2, 2.0 * len(rows) + 0.6))
    for i, row in enumerate(rows):
        y0 = i * pitch_y + gap_y
        for j, index in enumerate(row):
            x0 = j * pitch_x
            cell = np.asarray(images[index], dtype=np.float32)
            cell = np.repeat(cell[..., None], 3, axis=2) if cell.ndim == 2 else cell[..., :3]
            cell = cell / 255.0 if images.dtype == np.uint8 else cell
            if overlays is not None and overlays[i][j] is not None:
                heat = np.clip(_resize(np.asarray(overlays[i][j], dtype=np.float32), height), 0.0, 1.0)
                cell = 0.55 * cell + 0.45 * jet(heat)[..., :3]
            canvas[y0:y0 + height, x0:x0 + cell_w] = cell
            if outlines is not None and outlines[i][j] is not None and np.any(outlines[i][j]):
                ax.contour(x0 + np.arange(cell_w), y0 + np.arange(height), np.asarray(outlines[i][j], dtype=np.float32),
                           levels=[0.5], colors="lime", linewidths=0.8)
            ax.text(x0 + cell_w / 2, y0 - 0.5, cell_titles[i][j], ha="center", va="bottom", fontsize=7)
        ax.text(-gap_x, y0 + height / 2, row_titles[i], ha="right", va="center", rotation=90, fontsize=8)
    ax.imshow(canvas, interpolation="nearest", extent=(-0.5, canvas.shape[1] - 0.5, canvas.shape[0] - 0.5, -0.5))
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def plot_tsne(embeddings: list[tuple[str, np.ndarray]], labels: np.ndarray, class_names: list[str], title: str,
              out: Path, seed: int = 0) -> Path | None:
    """2-D t-SNE of each method's features, points coloured by class."""
    from sklearn.manifold import TSNE

    if not embeddings or len(labels) < 5:
        return None
    plt = _plt()
    cols = min(len(embeddings), 3)
    rows = math.ceil(len(embeddings) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 1.5, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(embeddings):]:
        ax.axis("off")
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for ax, (label, feats) in zip(axes.flat, embeddings):
        perplexity = float(min(30, max(2, (len(feats) - 1) // 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)
        for k in np.unique(labels):
            sel = labels == k
            name = class_names[k] if k < len(class_names) else str(k)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=cmap(int(k) % cmap.N), label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes.flat[0].legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle(title)
    return _save(fig, out)


# ----------------------------------------------------------------------------- inputs
TABLES: tuple[str, ...] = ("classification", "anomaly", "pretraining")


class _Results:
    """The files the figures read: the stage tables (``TABLES``); through their ``path`` column each
    job's files (:data:`JOB_FILES`); each dataset's manifest, classification splits and image cache
    and masks at its image size (:mod:`defectbench.paths`).

    ``declared``: the input files of the figures rule (None outside Snakemake). A file outside it is
    never read, so every figure depends only on files Snakemake knows; a file that is missing or
    undeclared leaves the figures that need it out, each with a log line naming the file and why.
    """

    def __init__(self, root: Path, tables_dir: Path, image_sizes: Mapping[str, int], declared: Iterable[str] | None):
        self.root = root
        self.image_sizes = dict(image_sizes)
        self.declared = None if declared is None else {os.path.normpath(p) for p in declared}
        self.tables = {name: self._table(tables_dir / f"{name}.parquet") for name in TABLES}
        # budget-curve points are classification rows with budget keys: they get their own figure
        # and stay out of the per-method figures (they would repeat a method at other budgets)
        cls = self.tables["classification"]
        in_budget = cls["budget_epochs"].notna() if "budget_epochs" in cls else pd.Series(False, index=cls.index)
        self.budget = cls[in_budget]
        self.tables["classification"] = cls[~in_budget]
        self._images: dict[str, np.ndarray | None] = {}
        self._encoders: dict[Path, Any] = {}

    def encoder(self, path: Path) -> "torch.nn.Module":  # noqa: F821
        """The encoder file at ``path`` on the CPU, loaded once per run (Grad-CAM and t-SNE share it)."""
        if path not in self._encoders:
            import torch

            from defectbench.models.encoders import load_encoder

            self._encoders[path] = load_encoder(str(path), torch.device("cpu"))[0]
        return self._encoders[path]

    @staticmethod
    def _table(path: Path) -> pd.DataFrame:
        if not path.exists():
            log.warning("figures: %s missing; no figure of its stage", path)
            return pd.DataFrame()
        return pd.read_parquet(path)

    def file(self, path: str | Path, figure: str, optional: bool = False) -> Path | None:
        """``root/path`` when ``figure`` may read it, else None with a log line (none for an
        ``optional`` file that does not exist: the maps of a scorer that writes none)."""
        rel = os.path.normpath(path)
        full = self.root / rel
        if not full.exists():
            if optional:
                return None
            reason = "missing"
        elif self.declared is not None and rel not in self.declared:
            reason = "not an input of the figures rule"
        else:
            return full
        log.warning("figures: %s drawn without %s (%s)", figure, rel, reason)
        return None

    def job_file(self, row: Mapping[str, Any], name: str, figure: str, optional: bool = False) -> Path | None:
        """File ``name`` of the job a table row describes (beside its metrics.json)."""
        return self.file(Path(str(row["path"])).parent / name, figure, optional)

    def images(self, dataset: str, figure: str) -> np.ndarray | None:
        """The dataset's image cache (memory-mapped) at its image size (each figure without it says so)."""
        if dataset not in self._images:
            path = self.file(paths.cache(dataset, self.image_sizes[dataset]), figure)
            if path is None:
                return None
            self._images[dataset] = np.load(path, mmap_mode="r")
        return self._images[dataset]

    def masks(self, dataset: str, figure: str) -> np.ndarray | None:
        path = self.file(paths.masks(dataset, self.image_sizes[dataset]), figure)
        return None if path is None else np.load(path, mmap_mode="r")

    def class_names(self, dataset: str, figure: str) -> list[str]:
        """Class names by label from the manifest (empty when it cannot be read: labels shown as numbers)."""
        path = self.file(paths.manifest(dataset), figure)
        if path is None:
            return []
        m = pd.read_parquet(path, columns=["label", "class_name"]).drop_duplicates("label").sort_values("label")
        names = [""] * (int(m["label"].max()) + 1) if len(m) else []
        for label, name in zip(m["label"], m["class_name"]):
            names[int(label)] = str(name)
        return names

    def split(self, dataset: str, task: str, seed: int, figure: str) -> pd.DataFrame | None:
        path = self.file(paths.split(dataset, task, seed), figure)
        return None if path is None else pd.read_parquet(path)


# The files beside a job's metrics.json that the figures read (the figures rule declares them).
JOB_FILES = {
    "predictions": "predictions.parquet", "probe": "probe.pt", "supervised": "model.pt", "encoder": "encoder.pt",
    "scores": "scores.parquet", "maps": "maps.npy",
}


def _first_seed_per_dataset(table: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """(dataset, its rows of the table's lowest seed), by dataset name."""
    if table.empty:
        return []
    first = table[table["seed"] == table["seed"].min()]
    return ((str(dataset), rows) for dataset, rows in first.groupby("dataset", sort=True))


def _largest_fraction(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["labels_pct"] == rows["labels_pct"].max()]


def _label(row: Mapping[str, Any], cols: Iterable[str]) -> str:
    """The row's non-empty text values of ``cols``, each once (PatchCore's features and backbone are
    both the backbone's name, its random-init control's 'random' then the name)."""
    values = [row[c] for c in cols if c in row and isinstance(row[c], str) and row[c]]
    return " / ".join(dict.fromkeys(values))


def _threshold(row: Mapping[str, Any]) -> float | None:
    value = row.get("threshold")
    return None if value is None or pd.isna(value) else float(value)


def _name(names: list[str], k: Any) -> str:
    k = int(k)
    return names[k] if 0 <= k < len(names) and names[k] else str(k)


def _confusion_and_failures(res: _Results, dataset: str, top: pd.DataFrame, out_dir: Path) -> list[Path | None]:
    """Confusion matrices of every job at the largest labelled fraction, and the worst
    classification failures of the first of them."""
    pct = f"{top['labels_pct'].iloc[0]:g}"
    confusion_png = figure_path(out_dir, "confusion", f"{dataset}-labels{pct}")
    jobs = []
    for _, row in top.iterrows():
        path = res.job_file(row, JOB_FILES["predictions"], confusion_png.name)
        if path is not None:
            jobs.append((row, pd.read_parquet(path)))
    if not jobs:
        return []
    names = res.class_names(dataset, confusion_png.name)
    written = [plot_confusions([(_label(r, ("method", "backbone")), p) for r, p in jobs], names, confusion_png)]
    failures_png = figure_path(out_dir, "failures", f"{dataset}-classification")
    images = res.images(dataset, failures_png.name)
    if images is None:
        return written
    row, pred = jobs[0]
    proba = pred.set_index("row")
    grid_rows, titles, cells = [], [], []
    for k, f in worst_failures(pred, n=3).items():
        if not f["fn"] + f["fp"]:
            continue
        grid_rows.append(f["fn"] + f["fp"])
        titles.append(f"{_name(names, k)}\n(FN left, FP right)")
        cells.append([f"FN p={proba.loc[r, f'proba_{k}']:.2f}" for r in f["fn"]]
                     + [f"FP: true {_name(names, proba.loc[r, 'y_true'])}\np={proba.loc[r, f'proba_{k}']:.2f}"
                        for r in f["fp"]])
    title = (f"{dataset}: worst false negatives / positives per class "
             f"({_label(row, ('method', 'backbone'))}, {pct}% labels)")
    written.append(_gallery(images, grid_rows, titles, cells, title, failures_png))
    return written


def _classifier_for(res: _Results, row: Mapping[str, Any], figure: str) -> "torch.nn.Module | None":  # noqa: F821
    """Encoder + linear head of a probe (``probe.pt`` beside its metrics) or a supervised ``model.pt``;
    None for a probe of a control (a backbone with no encoder file to explain)."""
    from torch import nn

    from defectbench.runtime import load_torch

    if str(row["method"]) == "supervised":  # encoder.pt format + "head" {weight, bias}
        encoder_path = res.job_file(row, JOB_FILES["supervised"], figure)
        head = None if encoder_path is None else load_torch(encoder_path).get("head")
    else:
        probe_path = res.job_file(row, JOB_FILES["probe"], figure)
        head = None if probe_path is None else load_torch(probe_path)
        encoder_path = res.file(head["encoder"], figure) if head and head.get("encoder") else None
    if head is None or encoder_path is None:
        return None
    encoder = res.encoder(encoder_path)
    linear = nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
    linear.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
    return nn.Sequential(encoder, linear).eval()


def _gradcam_figure(res: _Results, dataset: str, top: pd.DataFrame, out_dir: Path) -> Path | None:
    """Grad-CAM of every job at the largest labelled fraction, on one test image per class."""
    import torch

    from defectbench.models.backbones import imagenet_normalize

    png = figure_path(out_dir, "gradcam", dataset)
    images = res.images(dataset, png.name)
    split = res.split(dataset, "classification", int(top["seed"].min()), png.name)
    if images is None or split is None:
        return None
    names = res.class_names(dataset, png.name)
    test = split[split["subset"] == "test"].sort_values("row")
    # one test image per class (the first), the same images for every model
    picks = test.groupby("label", sort=True)["row"].first().astype(int).tolist()[:6]
    grid, titles, cells, overlays = [], [], [], []
    for _, row in top.iterrows():
        model = _classifier_for(res, row, png.name)
        if model is None:
            continue
        x = imagenet_normalize(torch.from_numpy(np.ascontiguousarray(images[picks])))
        cams = grad_cam(model, x)
        with torch.no_grad():
            pred = model(x).argmax(1).tolist()
        grid.append(picks)
        titles.append(_label(row, ("method", "backbone")))
        cells.append([f"{names[test.set_index('row').loc[r, 'label']] if names else ''} → "
                      f"{names[p] if p < len(names) else p}" for r, p in zip(picks, pred)])
        overlays.append(list(cams))
    if not grid:
        return None
    return _gallery(images, grid, titles, cells, f"{dataset}: Grad-CAM of the predicted class (true → predicted)",
                    png, overlays=overlays)


def _anomaly_figures(res: _Results, dataset: str, rows: pd.DataFrame, out_dir: Path) -> list[Path | None]:
    """ROC/PR curves and score histograms of every scorer, the worst errors of the best-ranked one,
    and the anomaly maps of each scorer that writes maps."""
    roc_png = figure_path(out_dir, "roc-pr", dataset)
    jobs = []
    for _, row in rows.iterrows():
        path = res.job_file(row, JOB_FILES["scores"], roc_png.name)
        if path is not None:
            jobs.append((row, pd.read_parquet(path), _threshold(row)))
    if not jobs:
        return []
    labels = [_label(r, ("scorer", "features", "backbone")) for r, _, _ in jobs]
    written = [
        plot_roc_pr([(l, s) for l, (_, s, _) in zip(labels, jobs)], dataset, roc_png),
        plot_score_histograms([(l, s, t) for l, (_, s, t) in zip(labels, jobs)],
                              f"{dataset}: test scores (threshold from held-out nominal images)",
                              figure_path(out_dir, "score-hist", dataset)),
    ]
    failures_png = figure_path(out_dir, "failures", f"{dataset}-anomaly")
    images = res.images(dataset, failures_png.name)
    if images is None:
        return written
    # failure gallery of the best-ranked scorer by image AUROC (a display choice, not model selection)
    best = max(range(len(jobs)), key=lambda i: -1 if pd.isna(jobs[i][0].get("image_auroc")) else jobs[i][0]["image_auroc"])
    row, scores, threshold = jobs[best]
    fails = worst_anomaly_failures(scores, threshold, n=5)
    by_row = scores.set_index("row")["score"]
    grid = [r for r in (fails["fp"], fails["fn"]) if r]
    titles = [t for t, r in (("false pos.\n(nominal)", fails["fp"]), ("false neg.\n(anomalous)", fails["fn"])) if r]
    cells = [[f"score {by_row.loc[r]:.3g}" for r in picks] for picks in grid]
    written.append(_gallery(images, grid, titles, cells, f"{dataset}: worst errors of {labels[best]} at its threshold",
                            failures_png))
    for (row, scores, _), label in zip(jobs, labels):
        written.append(_map_overlays(res, dataset, row, scores, images, label, out_dir))
    return written


def _map_overlays(res: _Results, dataset: str, row: Mapping[str, Any], scores: pd.DataFrame, images: np.ndarray,
                  label: str, out_dir: Path, n: int = 6) -> Path | None:
    png = figure_path(out_dir, "anomaly-maps", f"{dataset}-{label.replace(' / ', '-')}")
    maps_path = res.job_file(row, JOB_FILES["maps"], png.name, optional=True)
    if maps_path is None:
        return None
    maps = np.load(maps_path, mmap_mode="r")
    test = scores[scores["subset"] == "test"] if "subset" in scores.columns else scores
    if "map_index" in test.columns:
        kept = test[test["map_index"] >= 0]
        index = dict(zip(kept["row"].astype(int), kept["map_index"].astype(int)))
    elif len(maps) == len(test):
        index = dict(zip(test["row"].astype(int), range(len(test))))
    else:
        log.warning("figures: %s not drawn: %s has %d maps for %d test images and no map_index column",
                    png.name, maps_path, len(maps), len(test))
        return None
    labels = test.set_index("row")["label"]
    anomalous = [r for r in index if labels.get(r, 0) == 1][: n // 2 + n % 2]
    nominal = [r for r in index if labels.get(r, 0) == 0][: n // 2]
    picks = anomalous + nominal
    if not picks:
        return None
    size = images.shape[1]
    masks = res.masks(dataset, png.name)
    hi = float(max(np.max(maps[index[r]]) for r in picks)) or 1.0
    lo = float(min(np.min(maps[index[r]]) for r in picks))
    heat = [_resize((np.asarray(maps[index[r]], dtype=np.float32) - lo) / max(hi - lo, 1e-12), size) for r in picks]
    grid = [picks, picks]
    cells = [[("anomalous" if labels[r] == 1 else "nominal") for r in picks], ["anomaly map" for _ in picks]]
    overlays: list[list[np.ndarray | None]] = [[None] * len(picks), heat]
    outline = [np.asarray(masks[r]) if masks is not None else None for r in picks]
    return _gallery(images, grid, ["image", "map"], cells,
                    f"{dataset}: {label} anomaly maps (common colour scale; green = ground-truth mask)",
                    png, overlays=overlays, outlines=[outline, outline])


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape == (size, size):
        return a
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _encoder_rows(pretraining: pd.DataFrame) -> pd.DataFrame:
    """Pretraining rows of contrastive encoders of the classification task (not the diffusion models)."""
    if pretraining.empty or "task" not in pretraining.columns:
        return pd.DataFrame()
    contrastive = pretraining["method"].isin(registry.names("contrastive_methods"))
    return pretraining[contrastive & ((pretraining["task"] == "classification") | pretraining["task"].isna())]


def _tsne_figure(res: _Results, dataset: str, rows: pd.DataFrame, out_dir: Path, max_points: int = 600) -> Path | None:
    import torch

    from defectbench.features import extract_features

    png = figure_path(out_dir, "tsne", dataset)
    seed = int(rows["seed"].min())
    images = res.images(dataset, png.name)
    split = res.split(dataset, "classification", seed, png.name)
    if images is None or split is None:
        return None
    test = split[split["subset"] == "test"].sort_values("row")
    if len(test) > max_points:
        test = test.sample(max_points, random_state=0).sort_values("row")
    picks = test["row"].to_numpy(int)
    embeddings = []
    for _, row in rows.iterrows():
        path = res.job_file(row, JOB_FILES["encoder"], png.name)
        if path is None:
            continue
        feats = extract_features(res.encoder(path), np.ascontiguousarray(images[picks]), torch.device("cpu"),
                                 batch_size=128)
        embeddings.append((_label(row, ("method", "backbone")), feats))
    return plot_tsne(embeddings, test["label"].to_numpy(int), res.class_names(dataset, png.name),
                     f"{dataset}: t-SNE of test-image features (seed {seed})", png)


def _network_figures(res: _Results, out_dir: Path) -> list[Path | None]:
    """The figures that run networks: Grad-CAM of the classifiers and t-SNE of encoder features."""
    written = []
    for dataset, rows in _first_seed_per_dataset(res.tables["classification"]):
        written.append(_gradcam_figure(res, dataset, _largest_fraction(rows), out_dir))
    for dataset, rows in _first_seed_per_dataset(_encoder_rows(res.tables["pretraining"])):
        written.append(_tsne_figure(res, dataset, rows, out_dir))
    return written


def _started(work: Callable[[], list[Path | None]], threads: int) -> Callable[[], list[Path | None]]:
    """Start ``work`` beside this process when it has 2+ threads on Linux (a forked child: nothing is
    imported or pickled again); returns the call that waits for its PNGs. Otherwise runs it now."""
    if threads < 2 or sys.platform != "linux":
        done = work()
        return lambda: done
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    results = ctx.SimpleQueue()

    def child() -> None:
        import torch

        torch.set_num_threads(threads - 1)  # the parent draws on the other thread
        try:
            results.put([None if p is None else str(p) for p in work()])
        except BaseException:
            log.exception("figures: the Grad-CAM / t-SNE process failed")
            raise

    process = ctx.Process(target=child, name="figures-networks", daemon=True)
    process.start()

    def wait() -> list[Path | None]:
        process.join()  # the child's put fits the pipe's buffer (a path per dataset and figure), so it cannot block
        if process.exitcode != 0 or results.empty():
            raise DefectbenchError(f"figures: the Grad-CAM / t-SNE process failed (exit code {process.exitcode}); "
                                   "its traceback is in the log above")
        return [None if p is None else Path(p) for p in results.get()]

    return wait


def make_figures(tables_dir: str | Path, out_dir: str | Path, image_sizes: Mapping[str, int], root: str | Path = ".",
                 declared: Iterable[str] | None = None, threads: int = 1) -> list[Path]:
    """Every figure the results allow, under ``out_dir``; returns the PNGs written.

    ``tables_dir``: the aggregate tables (their ``path`` column leads to each job's files, relative
    to the project ``root``); ``image_sizes``: dataset -> the image size its probes, encoders and
    scorers read (the cache the figures show); ``declared``: the files the figures rule declares
    (the figures read no other; None: any file under ``root``); ``threads``: with 2 or more, the
    figures that run networks (Grad-CAM, t-SNE) are drawn in a second process meanwhile.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = _Results(Path(root), Path(tables_dir), image_sizes, declared)
    networks = _started(lambda: _network_figures(res, out_dir), threads)
    written: list[Path | None] = []
    written += plot_label_efficiency(res.tables["classification"], out_dir)
    written += plot_budget_curves(res.budget, res.tables["classification"], out_dir)
    for dataset, rows in _first_seed_per_dataset(res.tables["classification"]):
        written += _confusion_and_failures(res, dataset, _largest_fraction(rows), out_dir)
    for dataset, rows in _first_seed_per_dataset(res.tables["anomaly"]):
        written += _anomaly_figures(res, dataset, rows, out_dir)
    written += networks()
    drawn = [p for p in written if p is not None]
    log.info("figures: %d PNG(s) in %s", len(drawn), out_dir)
    return drawn
