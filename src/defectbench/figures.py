"""Figures for people: PNGs under ``results/figures/`` named ``<kind>--<subject>.png``.

Every figure is made from files the jobs already wrote (tables, ``predictions.parquet``,
``scores.parquet`` + ``maps.npy``, ``encoder.pt``, ``probe.pt``, supervised ``model.pt``, the
image caches); a figure whose inputs are missing is skipped with a log line, never an error, so
the report always builds from what exists.

Kinds (``FIGURE_KINDS``): ``label-efficiency`` (macro F1 vs labelled fraction per method),
``confusion`` (confusion matrices), ``roc-pr`` (ROC and PR curves of the anomaly scorers),
``score-hist`` (nominal vs anomalous score histograms with the threshold), ``anomaly-maps``
(map overlays of a few test images), ``tsne`` (t-SNE of encoder features coloured by class),
``gradcam`` (Grad-CAM of the supervised CNN and of linear probes), ``failures`` (worst false
positives / negatives per class), ``budget`` (the budget curve: probe accuracy vs pretraining
optimiser steps per image size, with the random-init control).

The pure helpers (:func:`grad_cam`, :func:`worst_failures`, :func:`worst_anomaly_failures`,
:func:`roc_curve_points`) are unit-tested on hand-computed inputs.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

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
def roc_curve_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, recall, precision) at every distinct threshold, highest score first (label 1 = positive)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each tied group
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = np.cumsum(~y)[last].astype(np.float64)
    p, n = max(labels.sum(), 1), max((~labels).sum(), 1)
    fpr, tpr = np.r_[0.0, fp / n], np.r_[0.0, tp / p]
    precision = tp / np.maximum(tp + fp, 1)
    return fpr, tpr, tp / p, precision


def worst_failures(pred: pd.DataFrame, n: int = 3) -> dict[int, dict[str, list[int]]]:
    """Per class k: the ``n`` worst false negatives (true k, predicted otherwise, lowest p_k) and
    false positives (predicted k, true otherwise, highest p_k), as manifest rows.

    ``pred``: predictions.parquet columns ``row, y_true, y_pred, proba_<k>``.
    """
    out: dict[int, dict[str, list[int]]] = {}
    classes = sorted(int(c[len("proba_"):]) for c in pred.columns if c.startswith("proba_"))
    for k in classes:
        p = pred[f"proba_{k}"]
        fn = pred[(pred["y_true"] == k) & (pred["y_pred"] != k)].assign(_p=p).sort_values(["_p", "row"])
        fp = pred[(pred["y_pred"] == k) & (pred["y_true"] != k)].assign(_p=p).sort_values(["_p", "row"], ascending=[False, True])
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


def plot_budget_curves(budget: pd.DataFrame, controls: pd.DataFrame, out_dir: Path, metric: str = "accuracy") -> list[Path]:
    """One PNG per dataset: ``metric`` of the probe (all labels) vs the method's pretraining
    optimiser steps, one line per image size (points labelled with their epochs); the random-init
    control's value at 100% labels as a dashed line, so a point below it is visible as such."""
    points = budget_points(budget, metric)
    if points.empty:
        return []
    plt = _plt()
    written = []
    for dataset, d in points.groupby("dataset", sort=True):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (method, size), g in d.groupby(["method", "image_size"], sort=True):
            g = g.sort_values("pretrain_steps")
            ax.errorbar(g["pretrain_steps"], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3,
                        label=f"{method}, {int(size)} px")
            for _, r in g.iterrows():
                ax.annotate(f"{int(r['budget_epochs'])} ep", (r["pretrain_steps"], r["mean"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ctrl = pd.DataFrame()
        if {"dataset", "method", "labels_pct", "seed", metric} <= set(controls.columns):
            ctrl = controls[(controls["dataset"] == dataset) & (controls["method"] == "random")
                            & (controls["labels_pct"] == 100)].dropna(subset=[metric])
        if not ctrl.empty:
            ax.axhline(float(ctrl[metric].mean()), color="grey", linestyle="--",
                       label=f"random-init control ({int(ctrl['seed'].nunique())} seeds)")
        ax.set_xlabel("pretraining optimiser steps")
        ax.set_ylabel(f"probe {metric.replace('_', ' ')} (all labels)")
        ax.set_title(f"{dataset}: budget curve (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, figure_path(out_dir, "budget", str(dataset))))
    return written


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


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
        cm = _confusion(p["y_true"].to_numpy(int), p["y_pred"].to_numpy(int), k)
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
        fpr, tpr, rec, prec = roc_curve_points(s["label"].to_numpy(), s["score"].to_numpy())
        auc = float(np.trapezoid(tpr, fpr))
        roc.plot(fpr, tpr, label=f"{label} (AUROC {auc:.3f})")
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
    and mask outlines (ground-truth defect regions drawn as green contours)."""
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), width, figsize=(1.9 * width + 1.2, 2.0 * len(rows) + 0.6), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(width):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j >= len(row):
                continue
            ax.imshow(images[row[j]])
            if overlays is not None and overlays[i][j] is not None:
                ax.imshow(overlays[i][j], cmap="jet", alpha=0.45, vmin=0, vmax=1,
                          extent=(-0.5, images.shape[2] - 0.5, images.shape[1] - 0.5, -0.5))
            if outlines is not None and outlines[i][j] is not None and np.any(outlines[i][j]):
                ax.contour(np.asarray(outlines[i][j], dtype=np.float32), levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(cell_titles[i][j], fontsize=7)
        axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
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


# ----------------------------------------------------------------------------- discovery
class _Results:
    """Finds job outputs under the project root from the tables' ``path`` column."""

    def __init__(self, root: Path, tables_dir: Path):
        self.root = root
        self.tables = {name: self._table(tables_dir / f"{name}.parquet") for name in
                       ("classification", "anomaly", "clustering", "pretraining")}
        # budget-curve points are classification rows with budget keys: they get their own figure
        # and stay out of the per-method figures (they would repeat a method at other budgets)
        cls = self.tables["classification"]
        in_budget = cls["budget_epochs"].notna() if "budget_epochs" in cls else pd.Series(False, index=cls.index)
        self.budget = cls[in_budget]
        self.tables["classification"] = cls[~in_budget]
        self._images: dict[str, np.ndarray | None] = {}

    @staticmethod
    def _table(path: Path) -> pd.DataFrame:
        return pd.read_parquet(path) if path.exists() else pd.DataFrame()

    def job_dir(self, row: Mapping[str, Any]) -> Path:
        return (self.root / str(row["path"])).parent

    def images(self, dataset: str) -> np.ndarray | None:
        """The largest cached image array of a dataset (memory-mapped), or None."""
        if dataset not in self._images:
            caches = sorted((self.root / "results" / "data" / dataset).glob("cache-*.npy"),
                            key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else 0)
            self._images[dataset] = np.load(caches[-1], mmap_mode="r") if caches else None
        return self._images[dataset]

    def masks(self, dataset: str, size: int) -> np.ndarray | None:
        path = self.root / "results" / "data" / dataset / f"masks-{size}.npy"
        return np.load(path, mmap_mode="r") if path.exists() else None

    def class_names(self, dataset: str) -> list[str]:
        manifest = self.root / "results" / "data" / dataset / "manifest.parquet"
        if not manifest.exists():
            return []
        m = pd.read_parquet(manifest, columns=["label", "class_name"]).drop_duplicates("label").sort_values("label")
        names = [""] * (int(m["label"].max()) + 1) if len(m) else []
        for label, name in zip(m["label"], m["class_name"]):
            names[int(label)] = str(name)
        return names

    def split(self, dataset: str, task: str, seed: int) -> pd.DataFrame | None:
        path = self.root / "results" / "data" / dataset / "splits" / f"{task}-seed{seed}.parquet"
        return pd.read_parquet(path) if path.exists() else None


def _first_seed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["seed"] == df["seed"].min()] if len(df) else df


def _label(row: Mapping[str, Any], cols: Iterable[str]) -> str:
    return " / ".join(str(row[c]) for c in cols if c in row and isinstance(row[c], str) and row[c])


def _threshold(job_dir: Path) -> float | None:
    try:
        value = json.loads((job_dir / "metrics.json").read_text())["metrics"].get("threshold")
    except (OSError, ValueError, KeyError):
        return None
    return None if value is None else float(value)


def _safe(kind: str, func: Callable[[], list[Path | None]]) -> list[Path]:
    """Run one figure family; a failure is logged and skipped so the other figures still appear."""
    try:
        return [p for p in func() if p is not None]
    except Exception as exc:  # noqa: BLE001 - a broken figure must not stop the report
        log.warning("figures: %s skipped (%s: %s)", kind, type(exc).__name__, exc)
        return []


def _name(names: list[str], k: Any) -> str:
    k = int(k)
    return names[k] if 0 <= k < len(names) and names[k] else str(k)


def _classification_figures(res: _Results, out_dir: Path) -> list[Path | None]:
    cls = res.tables["classification"]
    written: list[Path | None] = []
    if cls.empty:
        return written
    for dataset, d in _first_seed(cls).groupby("dataset", sort=True):
        top = d[d["labels_pct"] == d["labels_pct"].max()]
        jobs = []
        for _, row in top.iterrows():
            pred_path = res.job_dir(row) / "predictions.parquet"
            if pred_path.exists():
                jobs.append((row, pd.read_parquet(pred_path)))
        if not jobs:
            continue
        names = res.class_names(str(dataset))
        pct = f"{top['labels_pct'].iloc[0]:g}"
        written.append(plot_confusions([(_label(r, ("method", "backbone")), p) for r, p in jobs], names,
                                       figure_path(out_dir, "confusion", f"{dataset}-labels{pct}")))
        images = res.images(str(dataset))
        if images is None:
            continue
        row, pred = jobs[0]
        fails = worst_failures(pred, n=3)
        grid_rows, titles, cells = [], [], []
        proba = pred.set_index("row")
        for k, f in fails.items():
            sel = f["fn"] + f["fp"]
            if not sel:
                continue
            grid_rows.append(sel)
            titles.append(f"{_name(names, k)}\n(FN left, FP right)")
            cells.append([f"FN p={proba.loc[r, f'proba_{k}']:.2f}" for r in f["fn"]]
                         + [f"FP: true {_name(names, proba.loc[r, 'y_true'])}\np={proba.loc[r, f'proba_{k}']:.2f}"
                            for r in f["fp"]])
        written.append(_gallery(images, grid_rows, titles, cells,
                                f"{dataset}: worst false negatives / positives per class ({_label(row, ('method', 'backbone'))}, {pct}% labels)",
                                figure_path(out_dir, "failures", f"{dataset}-classification")))
    return written


def _gradcam_all(res: _Results, out_dir: Path) -> list[Path | None]:
    """Grad-CAM per dataset, for the jobs at the largest labelled fraction of the first seed."""
    cls = res.tables["classification"]
    written: list[Path | None] = []
    if cls.empty:
        return written
    for dataset, d in _first_seed(cls).groupby("dataset", sort=True):
        images = res.images(str(dataset))
        if images is not None:
            top = d[d["labels_pct"] == d["labels_pct"].max()]
            written.extend(_gradcam_figures(res, str(dataset), top, images, res.class_names(str(dataset)), out_dir))
    return written


def _classifier_for(res: _Results, row: Mapping[str, Any]) -> "torch.nn.Module | None":  # noqa: F821
    """Encoder + linear head of a probe (``probe.pt`` beside its metrics) or a supervised ``model.pt``."""
    import torch
    from torch import nn

    from defectbench.models.encoders import load_encoder
    from defectbench.runtime import load_torch

    job = res.job_dir(row)
    if (job / "model.pt").exists():  # supervised: encoder.pt format + "head" {weight, bias}
        encoder_path, head = job / "model.pt", load_torch(job / "model.pt").get("head")
    elif (job / "probe.pt").exists():
        head = load_torch(job / "probe.pt")
        if not head.get("encoder"):  # a control (random / pretrained backbone): no encoder file
            return None
        encoder_path = res.root / str(head["encoder"])
    else:
        return None
    if not head or "weight" not in head or not encoder_path.exists():
        return None
    encoder, _, _ = load_encoder(str(encoder_path), torch.device("cpu"))
    linear = nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
    linear.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
    return nn.Sequential(encoder, linear).eval()


def _gradcam_figures(res: _Results, dataset: str, jobs: pd.DataFrame, images: np.ndarray, names: list[str],
                     out_dir: Path) -> list[Path | None]:
    import torch

    from defectbench.models.backbones import imagenet_normalize

    split = res.split(dataset, "classification", int(jobs["seed"].min()))
    if split is None:
        return []
    test = split[split["subset"] == "test"].sort_values("row")
    # one test image per class (the first), the same images for every model
    picks = test.groupby("label", sort=True)["row"].first().astype(int).tolist()[:6]
    grid, titles, cells, overlays = [], [], [], []
    for _, row in jobs.iterrows():
        model = _classifier_for(res, row)
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
        return []
    return [_gallery(images, grid, titles, cells, f"{dataset}: Grad-CAM of the predicted class (true → predicted)",
                     figure_path(out_dir, "gradcam", dataset), overlays=overlays)]


def _anomaly_figures(res: _Results, out_dir: Path) -> list[Path | None]:
    an = res.tables["anomaly"]
    written: list[Path | None] = []
    if an.empty:
        return written
    for dataset, d in _first_seed(an).groupby("dataset", sort=True):
        jobs = []
        for _, row in d.iterrows():
            scores_path = res.job_dir(row) / "scores.parquet"
            if scores_path.exists():
                jobs.append((row, pd.read_parquet(scores_path), _threshold(res.job_dir(row))))
        if not jobs:
            continue
        labels = [_label(r, ("scorer", "features", "backbone")) for r, _, _ in jobs]
        written.append(plot_roc_pr([(l, s) for l, (_, s, _) in zip(labels, jobs)], str(dataset),
                                   figure_path(out_dir, "roc-pr", str(dataset))))
        written.append(plot_score_histograms([(l, s, t) for l, (_, s, t) in zip(labels, jobs)],
                                             f"{dataset}: test scores (threshold from held-out nominal images)",
                                             figure_path(out_dir, "score-hist", str(dataset))))
        images = res.images(str(dataset))
        if images is None:
            continue
        # failure gallery of the best-ranked scorer by image AUROC (a display choice, not model selection)
        best = max(range(len(jobs)), key=lambda i: -1 if pd.isna(jobs[i][0].get("image_auroc")) else jobs[i][0]["image_auroc"])
        row, scores, threshold = jobs[best]
        fails = worst_anomaly_failures(scores, threshold, n=5)
        by_row = scores.set_index("row")["score"]
        grid = [r for r in (fails["fp"], fails["fn"]) if r]
        titles = [t for t, r in (("false pos.\n(nominal)", fails["fp"]), ("false neg.\n(anomalous)", fails["fn"])) if r]
        cells = [[f"score {by_row.loc[r]:.3g}" for r in rows] for rows in grid]
        written.append(_gallery(images, grid, titles, cells,
                                f"{dataset}: worst errors of {labels[best]} at its threshold",
                                figure_path(out_dir, "failures", f"{dataset}-anomaly")))
        for (row, scores, _), label in zip(jobs, labels):
            written.append(_map_overlays(res, str(dataset), row, scores, images, label, out_dir))
    return written


def _map_overlays(res: _Results, dataset: str, row: Mapping[str, Any], scores: pd.DataFrame, images: np.ndarray,
                  label: str, out_dir: Path, n: int = 6) -> Path | None:
    maps_path = res.job_dir(row) / "maps.npy"
    if not maps_path.exists():
        return None
    maps = np.load(maps_path, mmap_mode="r")
    test = scores[scores["subset"] == "test"] if "subset" in scores.columns else scores
    if "map_index" in test.columns:
        kept = test[test["map_index"] >= 0]
        index = dict(zip(kept["row"].astype(int), kept["map_index"].astype(int)))
    elif len(maps) == len(test):
        index = dict(zip(test["row"].astype(int), range(len(test))))
    else:
        log.warning("figures: %s has %d maps but no map_index column; skipped", maps_path, len(maps))
        return None
    labels = test.set_index("row")["label"]
    anomalous = [r for r in index if labels.get(r, 0) == 1][: n // 2 + n % 2]
    nominal = [r for r in index if labels.get(r, 0) == 0][: n // 2]
    picks = anomalous + nominal
    if not picks:
        return None
    size = images.shape[1]
    masks = res.masks(dataset, size)
    hi = float(max(np.max(maps[index[r]]) for r in picks)) or 1.0
    lo = float(min(np.min(maps[index[r]]) for r in picks))
    heat = [_resize((np.asarray(maps[index[r]], dtype=np.float32) - lo) / max(hi - lo, 1e-12), size) for r in picks]
    grid = [picks, picks]
    cells = [[("anomalous" if labels[r] == 1 else "nominal") for r in picks], ["anomaly map" for _ in picks]]
    overlays: list[list[np.ndarray | None]] = [[None] * len(picks), heat]
    outline = [np.asarray(masks[r]) if masks is not None else None for r in picks]
    return _gallery(images, grid, ["image", "map"], cells,
                    f"{dataset}: {label} anomaly maps (common colour scale; green = ground-truth mask)",
                    figure_path(out_dir, "anomaly-maps", f"{dataset}-{label.replace(' / ', '-')}"),
                    overlays=overlays, outlines=[outline, outline])


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape == (size, size):
        return a
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _tsne_figures(res: _Results, out_dir: Path, max_points: int = 600) -> list[Path | None]:
    import torch

    from defectbench.features import extract_features
    from defectbench.models.encoders import load_encoder

    pre = res.tables["pretraining"]
    if pre.empty or "task" not in pre.columns:
        return []
    written: list[Path | None] = []
    enc = _first_seed(pre[(pre["task"] == "classification") | pre["task"].isna()])
    for dataset, d in enc.groupby("dataset", sort=True):
        images = res.images(str(dataset))
        split = res.split(str(dataset), "classification", int(d["seed"].min()))
        if images is None or split is None:
            continue
        test = split[split["subset"] == "test"].sort_values("row")
        if len(test) > max_points:
            test = test.sample(max_points, random_state=0).sort_values("row")
        rows = test["row"].to_numpy(int)
        embeddings = []
        for _, row in d.iterrows():
            path = res.job_dir(row) / "encoder.pt"
            if not path.exists():
                continue
            module, _, _ = load_encoder(str(path), torch.device("cpu"))
            feats = extract_features(module, np.ascontiguousarray(images[rows]), torch.device("cpu"), batch_size=128)
            embeddings.append((_label(row, ("method", "backbone")), feats))
        written.append(plot_tsne(embeddings, test["label"].to_numpy(int), res.class_names(str(dataset)),
                                 f"{dataset}: t-SNE of test-image features (seed {int(d['seed'].min())})",
                                 figure_path(out_dir, "tsne", str(dataset))))
    return written


def make_figures(tables_dir: str | Path, out_dir: str | Path, root: str | Path = ".") -> list[Path]:
    """Every figure the results allow, under ``out_dir``; returns the PNGs written.

    ``tables_dir``: the aggregate tables (their ``path`` column leads to each job's files);
    ``root``: the project root the table paths are relative to.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = _Results(Path(root), Path(tables_dir))
    written: list[Path] = []
    written += _safe("label-efficiency", lambda: plot_label_efficiency(res.tables["classification"], out_dir))
    written += _safe("budget", lambda: plot_budget_curves(res.budget, res.tables["classification"], out_dir))
    written += _safe("classification figures", lambda: _classification_figures(res, out_dir))
    written += _safe("gradcam", lambda: _gradcam_all(res, out_dir))
    written += _safe("anomaly figures", lambda: _anomaly_figures(res, out_dir))
    written += _safe("tsne", lambda: _tsne_figures(res, out_dir))
    log.info("figures: %d PNG(s) in %s", len(written), out_dir)
    return written
