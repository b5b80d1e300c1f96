"""The number tables of ``results/reference/README.md``, generated from the committed Parquet tables.

The README's prose is written by people; its tables of numbers are not: each sits between
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` and is rendered here from
``results/reference/tables/*.parquet`` alone (the stage tables for our numbers, the
``comparison_*`` tables for the papers' numbers, which they carry). A test checks that the
committed README matches, so no number in it can drift from the data.

    python -m defectbench.reference results/reference          # rewrite the generated sections
    python -m defectbench.reference results/reference --check  # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd

from defectbench import registry
from defectbench.claims import claims_table_markdown
from defectbench.runtime import DefectbenchError, atomic_path
from defectbench.tables import format_stat, is_budget_point, is_control_row, markdown_table, seed_stats

CONTRASTIVE_ORDER = registry.names("contrastive_methods")
ANOMALY_DATASETS = ["magnetic_tile", "elpv"]
SCORER_NAMES = {"knn": "kNN", "mahalanobis": "Mahalanobis (pinv)", "mahalanobis_shrinkage": "Mahalanobis (Ledoit-Wolf)",
                "cosine": "cosine to mean", "patchcore": "PatchCore", "ddad": "DDAD"}
# (label, comparison table, method as the paper names it, dataset_published regex, filters on our anomaly rows)
ANOMALY_PAPERS = [
    ("PatchCore WRN50, 224 px (reference code)", "patchcore_mvtec",
     "PatchCore IM224 WRN50 L2-3 P01 (reference code)", r"MVTec AD average", {"scorer": "patchcore"}),
    ("PatchCore ResNet-18 (anomalib)", "patchcore_mvtec", "anomalib PatchCore R18", r"MVTec AD average",
     {"scorer": "patchcore"}),
    ("DDAD (mean of the 15 categories)", "ddad_mvtec", "DDAD", r"MVTec AD \w", {"scorer": "ddad"}),
    ("SimCLR R18 + Mahalanobis (best run)", "simclr_anomaly", "SimCLR ResNet-18 + Mahalanobis (best)",
     r"MVTec AD big5 pooled", {"scorer": "mahalanobis", "features": "simclr"}),
    ("SimCLR R18 + kNN", "simclr_anomaly", "SimCLR ResNet-18 + KNN", r"MVTec AD big5 pooled",
     {"scorer": "knn", "features": "simclr"}),
    ("SimCLR R18 + cosine", "simclr_anomaly", "SimCLR ResNet-18 + Cosine", r"MVTec AD big5 pooled",
     {"scorer": "cosine", "features": "simclr"}),
]
CLUSTERING_PAPER = ("anomaly_clustering", r"MVTec AD texture categories", "Anomaly Clustering WideResNet50, {} weights")
WEIGHTINGS = registry.names("clustering_weightings")
# How the clustering section names a control's rows (features -> label; {backbone}: the network).
CLUSTERING_CONTROL_LABELS = {"oracle": "oracle features (positive control)",
                             "random": "random-init {backbone} features (random-init control)"}


def _delta(ours: float, paper: float) -> str:
    return "—" if math.isnan(ours) or math.isnan(paper) else f"{ours - paper:+.3f}"


def _read(tables_dir: Path, name: str) -> pd.DataFrame:
    path = tables_dir / f"{name}.parquet"
    if not path.is_file():
        raise DefectbenchError(f"{path}: table missing; run the reference config (see results/reference/README.md)")
    return pd.read_parquet(path)


def _without_budget_points(df: pd.DataFrame) -> pd.DataFrame:
    """The classification rows of the run's own budget: a budget curve's points (rows with a
    ``budget_epochs``) are the same method at other budgets and have a figure of their own."""
    return df[~is_budget_point(df)]


def diffcl_section(tables_dir: Path, comparison: str) -> str:
    """The DiffCL seed table (NEU-CLS or PCB): every method, paper vs ours (linear probe, 100% labels)."""
    df = _read(tables_dir, f"comparison_{comparison}")
    metrics = [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("macro_auroc", "macro AUROC")]
    header = ["method"] + [f"{label} {who}" for _, label in metrics for who in ("paper", "ours", "Δ")] + ["seeds"]
    rows = []
    for method_published, g in df.groupby("method_published", sort=False):
        row = [str(method_published)]
        seeds = 0
        for metric, _ in metrics:
            m = g[g["metric"] == metric]
            if m.empty:
                row += ["—", "—", "—"]
                continue
            r = m.iloc[0]
            ours = float(r["ours"]) if pd.notna(r["ours"]) else math.nan
            std = float(r["ours_std"]) if pd.notna(r["ours_std"]) else math.nan
            row += [f"{r['published']:.3f}", format_stat(ours, std, digits=3), _delta(ours, float(r["published"]))]
            seeds = max(seeds, int(r["n_seeds"]))
        implemented = bool(g["method"].fillna("").astype(str).str.len().gt(0).any())
        rows.append(row + [str(seeds) if implemented else "not implemented"])
    return markdown_table(header, rows)


def label_efficiency_section(tables_dir: Path) -> str:
    """Every encoder and the supervised baseline at each label fraction (accuracy, macro F1)."""
    df = _without_budget_points(_read(tables_dir, "classification"))
    fractions = sorted(df["labels_pct"].dropna().unique())
    header = ["dataset", "method"] + [f"{m} @ {int(p)}% labels" for p in fractions for m in ("accuracy", "macro F1")]
    order = {m: i for i, m in enumerate(CONTRASTIVE_ORDER + ["supervised"])}
    rows = []
    for (dataset, method), g in sorted(df.groupby(["dataset", "method"]), key=lambda k: (k[0][0], order.get(k[0][1], 99))):
        row = [str(dataset), str(method)]
        for p in fractions:
            sub = g[g["labels_pct"] == p]
            for metric in ("accuracy", "macro_f1"):
                mean, std, _ = seed_stats(sub[metric])
                row.append(format_stat(mean, std, digits=3))
        rows.append(row)
    return markdown_table(header, rows)


def budget_section(tables_dir: Path) -> str | None:
    """The budget curve as numbers (its figure is ``budget--<dataset>.png``): each curve method at
    each budget point and in the main grid, then (once per dataset) the random-init control and the
    supervised baseline, all probed on 100% of the labels; ``None`` when the run has no curve."""
    df = _read(tables_dir, "classification")
    if "budget_epochs" not in df.columns or df["budget_epochs"].isna().all():
        return None
    full = df[df["labels_pct"] == 100]
    points, main = full[full["budget_epochs"].notna()], _without_budget_points(full)
    header = ["dataset", "what ran", "optimiser steps (pretraining / supervised)", "accuracy", "macro F1", "seeds"]
    rows = []

    def row(dataset: str, label: str, g: pd.DataFrame, steps_col: str) -> list:
        steps = seed_stats(g[steps_col])[0] if steps_col in g else math.nan
        return [dataset, label, "—" if math.isnan(steps) else f"{steps:.0f}",
                format_stat(*seed_stats(g["accuracy"])[:2], digits=3),
                format_stat(*seed_stats(g["macro_f1"])[:2], digits=3), str(g["seed"].nunique())]

    for dataset, at_points in points.groupby("dataset", sort=True):
        at = main[main["dataset"] == dataset]
        for method, curve in at_points.groupby("method", sort=True):
            ranked = [(seed_stats(g["pretrain_steps"])[0],
                       row(dataset, f"{method}, {int(e)} epochs at {int(px)} px (budget point)", g, "pretrain_steps"))
                      for (e, px), g in curve.groupby(["budget_epochs", "image_size"], sort=True)]
            grid = at[at["method"] == method]
            if len(grid):
                ranked.append((seed_stats(grid["pretrain_steps"])[0], row(dataset, f"{method}, main grid", grid, "pretrain_steps")))
            rows += [r for _, r in sorted(ranked, key=lambda t: t[0])]
        for control, label, steps_col in (("random", "random-init control", "pretrain_steps"),
                                          ("supervised", "supervised baseline", "train_steps")):
            g = at[at["method"] == control]
            if len(g):
                rows.append(row(dataset, label, g, steps_col))
    return markdown_table(header, rows)


def supervised_vs_simclr_section(tables_dir: Path) -> str:
    """Seed 002's two headline rows (MVTec, binary) beside our NEU and PCB rows (multi-class)."""
    comp = _read(tables_dir, "comparison_supervised_vs_simclr")
    cls = _without_budget_points(_read(tables_dir, "classification"))
    datasets = sorted(cls["dataset"].unique())
    header = ["setting", "metric", "paper (MVTec AD, good vs defective)"] + [f"ours {d} (Δ)" for d in datasets]
    rows = []
    for (method_published, method, pct), g in comp.groupby(["method_published", "method", "labels_pct"], sort=False):
        for _, r in g.iterrows():
            if r["metric"] not in ("accuracy",):
                continue
            cells = []
            for d in datasets:
                mean, std, _ = seed_stats(cls[(cls["dataset"] == d) & (cls["method"] == method)
                                              & (cls["labels_pct"] == int(pct))]["accuracy"])
                cells.append(f"{format_stat(mean, std, digits=3)} ({_delta(mean, float(r['published']))})")
            rows.append([f"{method_published}: ours {method} @ {int(pct)}%", "accuracy", f"{r['published']:.3f}", *cells])
    return markdown_table(header, rows)


def anomaly_section(tables_dir: Path) -> str:
    """Every scorer on each anomaly dataset (mean ± std over seeds); controls are rows of their own
    (features ``random``: the image-level scorers' random-init features and the random-init
    backbone of PatchCore / DDAD; ``pretrained``: the scorers' ImageNet features)."""
    df = _read(tables_dir, "anomaly")
    metrics = [("image_auroc", "image AUROC"), ("image_auprc", "image AUPRC"), ("pixel_auroc", "pixel AUROC"),
               ("pro", "PRO (FPR ≤ 0.3)"), ("f1", "F1 @ threshold"), ("f1_max_oracle", "F1-max (oracle)")]
    header = ["dataset", "method", "features"] + [label for _, label in metrics] + ["seeds"]
    rows = []
    scorer_order = {s: i for i, s in enumerate(SCORER_NAMES)}
    keyed = df.assign(features=df["features"].fillna(df["backbone"]))
    groups = sorted(keyed.groupby(["dataset", "scorer", "features"]),
                    key=lambda k: (ANOMALY_DATASETS.index(k[0][0]) if k[0][0] in ANOMALY_DATASETS else 99,
                                   scorer_order.get(k[0][1], 99), k[0][2]))
    for (dataset, scorer, features), g in groups:
        row = [str(dataset), SCORER_NAMES.get(scorer, str(scorer)), str(features)]
        for metric, _ in metrics:
            mean, std, _ = seed_stats(g[metric]) if metric in g else (math.nan, math.nan, 0)
            row.append(format_stat(mean, std, digits=3))
        rows.append(row + [str(g["seed"].nunique())])
    return markdown_table(header, rows)


def _anomaly_ours(df: pd.DataFrame, dataset: str, filters: dict[str, str], metric: str) -> float:
    mask = df["dataset"] == dataset
    if "features" not in filters:  # PatchCore's or DDAD's random-init rows are no paper's method
        mask &= ~is_control_row(df)
    for col, want in filters.items():
        mask &= df[col] == want
    return seed_stats(df.loc[mask, metric])[0] if metric in df else math.nan


def anomaly_papers_section(tables_dir: Path) -> str:
    """The seeds' MVTec AD numbers beside ours on other data (so Δ compares datasets too)."""
    ours = _read(tables_dir, "anomaly")
    datasets = [d for d in ANOMALY_DATASETS if d in set(ours["dataset"])]
    header = ["paper method (MVTec AD)", "metric", "paper"] + [f"ours {d} (Δ)" for d in datasets]
    rows = []
    for label, comparison, method_published, dataset_re, filters in ANOMALY_PAPERS:
        comp = _read(tables_dir, f"comparison_{comparison}")
        pub = comp[(comp["method_published"] == method_published)
                   & comp["dataset_published"].str.match(dataset_re)]
        for metric, g in pub.groupby("metric", sort=False):
            paper = float(g["published"].mean())
            cells = []
            for d in datasets:
                mine = _anomaly_ours(ours, d, filters, metric)
                cells.append(f"{format_stat(mine, digits=3)} ({_delta(mine, paper)})")
            rows.append([label, str(metric), f"{paper:.3f}", *cells])
    return markdown_table(header, rows)


def clustering_section(tables_dir: Path) -> str:
    """Each α weighting on each dataset, beside the re-implementation's MVTec texture numbers; then
    the controls' rows: the positive control (features ``oracle``), which a working stage scores
    1.000, and the random-init backbone (features ``random``)."""
    clustering = _read(tables_dir, "clustering")
    is_control = is_control_row(clustering)
    ours, controls = clustering[~is_control], clustering[is_control]
    comparison, dataset_re, method_fmt = CLUSTERING_PAPER
    # the re-implementation's numbers are there when a dataset of the run declares an MVTec paper_dataset
    comp = (_read(tables_dir, f"comparison_{comparison}")
            if (tables_dir / f"comparison_{comparison}.parquet").is_file() else None)
    datasets = [d for d in ANOMALY_DATASETS if d in set(ours["dataset"])]
    header = (["weighting", "metric"] + (["paper (MVTec texture, WRN50)"] if comp is not None else [])
              + [f"ours {d} (Δ)" if comp is not None else f"ours {d}" for d in datasets])
    rows = []
    for w in WEIGHTINGS:
        for metric in ("nmi", "ari", "f1"):
            label = [w, metric.upper() if metric != "f1" else "F1"]
            stats = [seed_stats(ours[(ours["dataset"] == d) & (ours["weighting"] == w)][metric]) for d in datasets]
            cells = [format_stat(*st[:2], digits=3) for st in stats]
            if comp is None:
                rows.append(label + cells)
                continue
            pub = comp[(comp["method_published"] == method_fmt.format(w)) & comp["dataset_published"].str.match(dataset_re)]
            p = pub[pub["metric"] == metric]["published"]
            paper = float(p.mean()) if len(p) else math.nan
            rows.append(label + [format_stat(paper, digits=3)]
                        + [f"{c} ({_delta(st[0], paper)})" for c, st in zip(cells, stats)])
    for (features, w), g in controls.groupby(["features", "weighting"], sort=True):
        backbones = sorted(g["backbone"].dropna().unique()) if "backbone" in g else []
        label = CLUSTERING_CONTROL_LABELS[features].format(backbone="/".join(backbones) or "backbone")
        for metric in ("nmi", "ari", "f1"):
            cells = [format_stat(*seed_stats(g[g["dataset"] == d][metric])[:2], digits=3) for d in datasets]
            rows.append([f"{w}, {label}", metric.upper() if metric != "f1" else "F1",
                         *(["—"] if comp is not None else []), *cells])
    return markdown_table(header, rows)


def determinism_section(record: dict) -> str:
    """The measured spread of one job across thread counts and instruction sets
    (benchmarks/determinism.py's JSON), and the accuracy claims whose Δ it could overturn."""
    s = record["summary"]
    verdict = ("above the tolerance: rows of trained encoders are **sensitive** to the machine"
               if s["sensitive"] else "within the tolerance")
    settings = sorted({(r["threads"], r["isa"]) for r in record["runs"]})
    return (f"One job ({record['job']}) over {len(record['runs'])} runs on "
            f"{', '.join(f'{threads} thread(s)/{isa}' for threads, isa in settings)}, with and "
            f"without `deterministic`: probe accuracy spread {s['accuracy_spread']:.4f} (tolerance "
            f"{s['accuracy_tolerance']}), final loss spread {s['loss_spread']:.4f} (tolerance {s['loss_tolerance']}): "
            f"{verdict}.")


def sensitive_claims(claims: pd.DataFrame, record: dict) -> pd.DataFrame:
    """Accuracy claims whose |Δ mean| is within the measured machine spread of accuracy (only
    when that spread exceeds its tolerance): another CPU or thread count could move them by as
    much as their own size."""
    s = record["summary"]
    if not s["sensitive"]:
        return claims.iloc[0:0]
    hit = (claims["metric"] == "accuracy") & (claims["diff_mean"].abs() <= s["accuracy_spread"])
    return claims[hit.fillna(False).astype(bool)]


CONTROL_PAPER = "defectbench control"  # the claims rows "<encoder> beats random-init features"


def best_vs_control_section(claims: pd.DataFrame) -> str | None:
    """Does the best label-free encoder beat its random-init control? Per dataset, from the claims
    table's control rows (``paper: defectbench control``): the row whose method has the highest
    mean, its margin and verdict. Picking the best by its test mean favours it, so a "holds" here is
    an upper bound on what any label-free encoder reaches; a "does not hold" is a plain no."""
    rows = claims[(claims["paper"] == CONTROL_PAPER) & claims["method_mean"].notna() & claims["baseline_mean"].notna()]
    lines = []
    for dataset, g in rows.groupby("dataset", sort=True):
        best = g.loc[g["method_mean"].idxmax()]
        answer = "beats" if best["verdict"] == "holds" else "does **not** beat"
        boot = "" if math.isnan(best["boot_lower"]) else f", bootstrap 5th percentile {best['boot_lower']:+.3f}"
        lines.append(
            f"* **{dataset}**: the best label-free encoder by mean {best['metric']} ({len(g)} compared), "
            f"{best['method'].removeprefix('method=')} ({best['method_mean']:.3f} over {int(best['n_seeds'])} seeds), "
            f"{answer} random-init features ({best['baseline_mean']:.3f}) at this budget: Δ {best['diff_mean']:+.3f}, "
            f"one-sided 95% lower bound {best['diff_lower']:+.3f}{boot} (**{best['verdict']}**).")
    return "\n".join(lines) or None


def render_sections(tables_dir: str | Path) -> dict[str, str]:
    """Every generated section of the reference README, by name."""
    t = Path(tables_dir)
    # the claims table leads the README once a run has produced it (runs before issue 16 did not)
    claims: dict[str, str] = {}
    if (t / "claims.parquet").is_file():
        table = pd.read_parquet(t / "claims.parquet")
        claims["claims"] = claims_table_markdown(table)
        if (t / "determinism.json").is_file():
            record = json.loads((t / "determinism.json").read_text())
            sensitive = sensitive_claims(table, record)
            claims["determinism"] = determinism_section(record) + (
                " Claims whose Δ is within that spread: " + "; ".join(
                    f"{r['claim']} on {r['dataset']} (Δ {r['diff_mean']:+.4f})" for _, r in sensitive.iterrows())
                + "." if len(sensitive) else "")
        if (best := best_vs_control_section(table)) is not None:
            claims["best-vs-control"] = best
    builders = [  # (section, its builder, the comparison table it needs: absent when no dataset of the run has one)
        ("diffcl-neu", lambda: diffcl_section(t, "diffcl_neu"), "diffcl_neu"),
        ("diffcl-pcb", lambda: diffcl_section(t, "diffcl_pcb"), "diffcl_pcb"),
        ("label-efficiency", lambda: label_efficiency_section(t), None),
        ("budget", lambda: budget_section(t), None),
        ("supervised-vs-simclr", lambda: supervised_vs_simclr_section(t), "supervised_vs_simclr"),
        ("anomaly", lambda: anomaly_section(t), None),
        ("anomaly-papers", lambda: anomaly_papers_section(t), "patchcore_mvtec"),
        ("clustering", lambda: clustering_section(t), None),
    ]
    built = {name: build() for name, build, needs in builders
             if needs is None or (t / f"comparison_{needs}.parquet").is_file()}
    return {**claims, **{name: body for name, body in built.items() if body is not None}}


_SECTION = re.compile(r"<!-- generated:(?P<name>[\w-]+) -->\n(?P<body>.*?)\n?<!-- /generated:(?P=name) -->", re.S)


def readme_sections(text: str) -> dict[str, str]:
    """The generated sections as they stand in a README text."""
    return {m["name"]: m["body"] for m in _SECTION.finditer(text)}


def check_markers(readme: Path, text: str, sections: dict[str, str]) -> None:
    """Every rendered section has its marker and no marker is unknown; with a claims table, the
    README's first generated section is the claims table (the verdicts lead, not the prose)."""
    present = list(readme_sections(text))
    unknown, missing = set(present) - set(sections), [n for n in sections if n not in present]
    if unknown:
        raise DefectbenchError(f"{readme}: unknown generated section(s) {', '.join(sorted(unknown))}")
    if missing:
        raise DefectbenchError(f"{readme}: no marker for generated section(s) {', '.join(missing)}; add "
                               + ", ".join(f"<!-- generated:{n} --><!-- /generated:{n} -->" for n in missing))
    if "claims" in sections and present[0] != "claims":
        raise DefectbenchError(f"{readme}: the claims table must be the first generated section (it is "
                               f"'{present[0]}'); move <!-- generated:claims --> above the other tables")


def update_readme(readme: str | Path, tables_dir: str | Path) -> bool:
    """Rewrite the generated sections of ``readme`` in place; return whether anything changed."""
    readme = Path(readme)
    text = readme.read_text()
    sections = render_sections(tables_dir)
    check_markers(readme, text, sections)
    new = _SECTION.sub(
        lambda m: f"<!-- generated:{m['name']} -->\n{sections[m['name']]}\n<!-- /generated:{m['name']} -->", text)
    if new != text:
        with atomic_path(readme) as tmp:
            tmp.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m defectbench.reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("reference_dir", type=Path, help="directory with README.md and tables/ (results/reference)")
    ap.add_argument("--check", action="store_true", help="only check: exit 1 if a generated section is stale")
    args = ap.parse_args(argv)
    readme, tables_dir = args.reference_dir / "README.md", args.reference_dir / "tables"
    if args.check:
        sections = render_sections(tables_dir)
        check_markers(readme, readme.read_text(), sections)
        stale = [n for n, body in readme_sections(readme.read_text()).items() if sections[n] != body]
        if stale:
            print(f"{readme}: stale section(s) {', '.join(stale)}; run python -m defectbench.reference {args.reference_dir}")
            return 1
        return 0
    changed = update_readme(readme, tables_dir)
    print(f"{readme}: {'updated' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
