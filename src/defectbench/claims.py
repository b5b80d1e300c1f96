"""Verdicts computed, not written: the papers' claims evaluated on our tables.

``config/published/claims.yaml`` lists each claim of a paper as data: which table, dataset(s),
metric and direction, the method that is claimed better, the baseline it is claimed better than,
and the control the method must beat first (the same encoder family at random init, say).
:func:`evaluate_claims` turns every (claim, dataset) into one row of ``claims.parquet`` (and
``claims.md``) with a verdict and the numbers behind it.

The rule (``RULE``), for one claim on one dataset:

1. Rows: the stage table's rows of that dataset with protocol ``clean`` (unless the claim's
   ``where`` says otherwise), filtered by ``where`` and then by each side's own filters
   (a side's filter overrides ``where`` for the same column). Budget-curve points (rows with a
   ``budget_epochs``) count only for a claim that filters on ``budget_epochs``: they are other
   budgets of the same method; control rows (``features`` ``oracle``, the positive control, or
   ``random``, a random-init control: ``tables.CONTROL_FEATURES``) only for a side that filters on
   ``features``. Per seed, a side's value is the mean of its matching rows.
2. Paired over seeds: d_s = s · (method_s − baseline_s), s = +1 for ``direction: higher``,
   −1 for ``lower``, over the seeds both sides ran. With n ≥ 2 pairs, the one-sided 95%
   Student-t bounds are mean(d) ∓ t(0.95, n−1) · sd(d) / √n.
3. Control first: the same paired bound for method vs control. If the claim names a control and
   the method does not beat it (lower bound ≤ 0), or the control did not run, the claim is
   **not testable**: the method's features are no better than untrained ones at this budget, so
   ranking it against the baseline says nothing about the method.
4. Bootstrap over test images (when the jobs' files are at hand and the metric is ``accuracy``
   or ``image_auroc``): each side's per-image predictions (``predictions.parquet``) or scores
   (``scores.parquet``) are paired on the same test images per seed; each of ``N_BOOT``
   resamples draws the images of every seed with replacement (stratified by label), recomputes
   both sides' metric and averages s · (method − baseline) over seeds; its 5th and 95th
   percentiles are ``boot_lower`` / ``boot_upper``.
5. Otherwise **holds** when the lower bound of d is above 0 and, where the bootstrap ran, its
   lower bound too; else **does not hold** (the reason says whether the opposite is significant:
   upper bound below 0).
6. Missing method or baseline rows, or fewer than 2 paired seeds: **not testable**, saying why.

>>> import pandas as pd
>>> t = pd.DataFrame({"dataset": "neu", "protocol": "clean", "seed": [0, 1, 2] * 3,
...                   "method": ["a"] * 3 + ["b"] * 3 + ["random"] * 3,
...                   "accuracy": [.9, .8, .85, .7, .65, .72, .3, .35, .3]})
>>> c = {"id": "x", "paper": "p", "claim": "a beats b", "table": "classification", "datasets": ["neu"],
...      "metric": "accuracy", "direction": "higher", "method": {"method": "a"}, "baseline": {"method": "b"},
...      "control": {"method": "random"}}
>>> evaluate_claim(c, "neu", t)["verdict"]
'holds'
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from defectbench.runtime import DefectbenchError, write_parquet
from defectbench.tables import STAGES, is_budget_point, is_control_row, markdown_table, regenerate_markdown

log = logging.getLogger("defectbench")

RULE = ("paired over seeds: d = method − baseline (sign by direction); holds if the one-sided 95% Student-t lower "
        "bound of mean(d) is > 0 and, where per-image files exist, the 5th percentile of a paired bootstrap over test "
        "images is > 0; not testable if the method does not beat its control by the seed rule, or < 2 paired seeds")
N_BOOT = 1000
BOOTSTRAP_METRICS = ("accuracy", "image_auroc")
CLAIM_KEYS = {"id", "paper", "claim", "table", "datasets", "metric", "direction", "method", "baseline", "control",
              "where", "note"}
REQUIRED_KEYS = {"id", "paper", "claim", "table", "datasets", "metric", "direction", "method", "baseline"}
VERDICTS = ("holds", "does not hold", "not testable")
CLAIM_COLUMNS = [
    "claim_id", "paper", "claim", "table", "dataset", "metric", "direction", "method", "baseline", "control",
    "n_seeds", "method_mean", "baseline_mean", "control_mean", "diff_mean", "diff_sd", "diff_lower", "diff_upper",
    "control_diff_mean", "control_diff_lower", "boot_lower", "boot_upper", "verdict", "reason", "note",
]
_FLOAT_COLUMNS = {"method_mean", "baseline_mean", "control_mean", "diff_mean", "diff_sd", "diff_lower", "diff_upper",
                  "control_diff_mean", "control_diff_lower", "boot_lower", "boot_upper"}


def load_claims(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a claims YAML file (a ``claims:`` list; keys ``CLAIM_KEYS``)."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: claims file not found (report.claims)") from None
    except yaml.YAMLError as exc:
        raise DefectbenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    claims = doc.get("claims") if isinstance(doc, dict) else None
    if not isinstance(claims, list):
        raise DefectbenchError(f"{path}: expected a top-level 'claims:' list")
    seen: set[str] = set()
    for i, c in enumerate(claims):
        where = f"{path}: claim {c.get('id', i + 1) if isinstance(c, dict) else i + 1}"
        if not isinstance(c, dict):
            raise DefectbenchError(f"{where}: must be a mapping")
        unknown, missing = sorted(set(c) - CLAIM_KEYS), sorted(REQUIRED_KEYS - set(c))
        if unknown or missing:
            raise DefectbenchError(f"{where}: " + "; ".join(
                ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) +
                ([f"missing key(s) {', '.join(missing)}"] if missing else [])) + f"; keys are {', '.join(sorted(CLAIM_KEYS))}")
        if c["id"] in seen:
            raise DefectbenchError(f"{where}: duplicate id")
        seen.add(c["id"])
        if c["direction"] not in ("higher", "lower"):
            raise DefectbenchError(f"{where}: direction {c['direction']!r}; use higher or lower")
        if not isinstance(c["datasets"], list) or not c["datasets"]:
            raise DefectbenchError(f"{where}: datasets must be a non-empty list")
        for side in ("method", "baseline", "control", "where"):
            if c.get(side) is not None and not isinstance(c[side], dict):
                raise DefectbenchError(f"{where}: {side} must be a mapping of column: value")
    return claims


def _side_rows(table: pd.DataFrame, dataset: str, metric: str, filters: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of ``dataset`` matching ``filters`` (column == value) that have ``metric``."""
    rows = table[table["dataset"].astype("string") == dataset]
    if "budget_epochs" not in filters:
        rows = rows[~is_budget_point(rows)]
    if "features" not in filters:  # a control is no method's row
        rows = rows[~is_control_row(rows)]
    for col, want in filters.items():
        if col not in rows.columns:
            return pd.Series(dtype=float)
        if isinstance(want, (int, float)) and not isinstance(want, bool):
            hit = pd.to_numeric(rows[col], errors="coerce") == float(want)
        else:
            hit = rows[col].astype("string") == str(want)
        rows = rows[hit.fillna(False).astype(bool)]
    if metric not in rows.columns:
        return rows.iloc[0:0]
    return rows.dropna(subset=[metric])


def _per_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Per-seed mean of ``metric`` over ``rows``."""
    if rows.empty:
        return pd.Series(dtype=float)
    return rows.groupby(rows["seed"].astype(int))[metric].mean()


def _per_image(row: Mapping[str, Any], metric: str, root: Path) -> pd.DataFrame | None:
    """(row, label, value) of one job's test images: correctness for accuracy, score for image_auroc."""
    job = root / str(row["path"])
    try:
        if metric == "accuracy":
            pred = pd.read_parquet(job.parent / "predictions.parquet", columns=["row", "y_true", "y_pred"])
            return pd.DataFrame({"row": pred["row"], "label": pred["y_true"],
                                 "value": (pred["y_true"] == pred["y_pred"]).astype(float)})
        scores = pd.read_parquet(job.parent / "scores.parquet")
    except (OSError, ValueError, KeyError):
        return None
    if "subset" in scores.columns:
        scores = scores[scores["subset"] == "test"]
    return pd.DataFrame({"row": scores["row"], "label": scores["label"], "value": scores["score"].astype(float)})


def bootstrap_bounds(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], metric: str, sign: float,
                     n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """5th / 95th percentile of the paired, label-stratified bootstrap of mean over seeds of
    sign · (metric(method) − metric(baseline)); ``pairs`` holds per seed (labels, method values,
    baseline values) on the same test images (values: correctness for accuracy, scores for
    image_auroc).

    >>> labels = np.array([0, 0, 1, 1])
    >>> bootstrap_bounds([(labels, np.ones(4), np.zeros(4))], "accuracy", 1.0, n_boot=50)
    (1.0, 1.0)
    """
    from defectbench.metrics.anomaly import binary_auroc

    rng = np.random.Generator(np.random.PCG64(seed))

    def value(labels: np.ndarray, v: np.ndarray) -> float:
        if metric == "accuracy":
            return float(v.mean())
        auroc = binary_auroc(labels, v)
        return math.nan if auroc is None else float(auroc)

    groups = [[np.flatnonzero(labels == lab) for lab in np.unique(labels)] for labels, _, _ in pairs]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        diffs = []
        for (labels, a, base), strata in zip(pairs, groups):
            idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in strata])
            diffs.append(value(labels[idx], a[idx]) - value(labels[idx], base[idx]))
        stats[b] = sign * float(np.mean(diffs))
    return float(np.nanpercentile(stats, 5)), float(np.nanpercentile(stats, 95))


def _bootstrap(method_rows: pd.DataFrame, baseline_rows: pd.DataFrame, metric: str, sign: float,
               root: Path | None) -> tuple[float, float]:
    """The bootstrap bounds of a claim, or NaN when the metric or the per-image files do not allow it
    (one job per side and seed is needed)."""
    if root is None or metric not in BOOTSTRAP_METRICS or "path" not in method_rows or "path" not in baseline_rows:
        return math.nan, math.nan
    pairs = []
    for seed in sorted(set(method_rows["seed"].astype(int)) & set(baseline_rows["seed"].astype(int))):
        a_rows = method_rows[method_rows["seed"].astype(int) == seed]
        b_rows = baseline_rows[baseline_rows["seed"].astype(int) == seed]
        if len(a_rows) != 1 or len(b_rows) != 1:
            return math.nan, math.nan
        a, b = _per_image(a_rows.iloc[0], metric, root), _per_image(b_rows.iloc[0], metric, root)
        if a is None or b is None:
            return math.nan, math.nan
        both = a.merge(b, on="row", suffixes=("_a", "_b"))
        if both.empty or not (both["label_a"] == both["label_b"]).all():
            return math.nan, math.nan
        pairs.append((both["label_a"].to_numpy(), both["value_a"].to_numpy(), both["value_b"].to_numpy()))
    return bootstrap_bounds(pairs, metric, sign) if pairs else (math.nan, math.nan)


def paired_bounds(a: pd.Series, b: pd.Series, sign: float) -> tuple[int, float, float, float, float]:
    """(n, mean, sd, lower, upper) of d = sign · (a − b) over the seeds in both; one-sided 95%
    Student-t bounds (NaN below 2 pairs).

    >>> n, mean, sd, lo, hi = paired_bounds(pd.Series([3.0, 4.0, 5.0]), pd.Series([1.0, 1.0, 2.0]), 1.0)
    >>> n, round(mean, 4), round(sd, 4), round(lo, 4)  # 2.6667 - 2.92 * 0.5774 / sqrt(3)
    (3, 2.6667, 0.5774, 1.6933)
    """
    from scipy.stats import t as student_t

    seeds = a.index.intersection(b.index)
    d = sign * (a.loc[seeds].to_numpy(dtype=float) - b.loc[seeds].to_numpy(dtype=float))
    n = len(d)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = float(d.mean())
    if n < 2:
        return n, mean, math.nan, math.nan, math.nan
    sd = float(d.std(ddof=1))
    half = float(student_t.ppf(0.95, n - 1)) * sd / math.sqrt(n)
    return n, mean, sd, mean - half, mean + half


def _describe(filters: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (filters or {}).items())


def evaluate_claim(claim: Mapping[str, Any], dataset: str, table: pd.DataFrame, root: Path | None = None) -> dict[str, Any]:
    """One row of the claims table (module docstring: the rule). ``root``: the project root the
    table's ``path`` column is relative to (None: no bootstrap over test images)."""
    where = {"protocol": "clean", **(claim.get("where") or {})}
    sign = 1.0 if claim["direction"] == "higher" else -1.0
    metric = claim["metric"]

    def side(name: str) -> pd.DataFrame:
        return _side_rows(table, dataset, metric, {**where, **claim[name]})

    method_rows, baseline_rows = side("method"), side("baseline")
    method, baseline = _per_seed(method_rows, metric), _per_seed(baseline_rows, metric)
    control_spec = claim.get("control")
    control = _per_seed(side("control"), metric) if control_spec else pd.Series(dtype=float)
    n, mean, sd, lower, upper = paired_bounds(method, baseline, sign)
    boot_lower, boot_upper = _bootstrap(method_rows, baseline_rows, metric, sign, root)
    c_n, c_mean, _, c_lower, _ = paired_bounds(method, control, sign) if control_spec else (0, math.nan, 0, math.nan, 0)
    row = {
        "claim_id": claim["id"], "paper": claim["paper"], "claim": claim["claim"], "table": claim["table"],
        "dataset": dataset, "metric": metric, "direction": claim["direction"],
        "method": _describe(claim["method"]), "baseline": _describe(claim["baseline"]),
        "control": _describe(control_spec), "n_seeds": n,
        "method_mean": float(method.mean()) if len(method) else math.nan,
        "baseline_mean": float(baseline.mean()) if len(baseline) else math.nan,
        "control_mean": float(control.mean()) if len(control) else math.nan,
        "diff_mean": mean, "diff_sd": sd, "diff_lower": lower, "diff_upper": upper,
        "control_diff_mean": c_mean, "control_diff_lower": c_lower, "boot_lower": boot_lower,
        "boot_upper": boot_upper, "note": claim.get("note", ""),
    }
    if method.empty or baseline.empty:
        missing = " and ".join(s for s, v in (("method", method), ("baseline", baseline)) if v.empty)
        return {**row, "verdict": "not testable", "reason": f"no {missing} rows with {metric} in this run"}
    if n < 2:
        return {**row, "verdict": "not testable", "reason": f"{n} paired seed(s); the rule needs at least 2"}
    if control_spec:
        if control.empty or c_n < 2:
            return {**row, "verdict": "not testable", "reason": "the control did not run on at least 2 of the method's seeds"}
        if not c_lower > 0:
            return {**row, "verdict": "not testable",
                    "reason": f"the method does not beat its control (lower bound {c_lower:+.4f} ≤ 0)"}
    boot = "" if math.isnan(boot_lower) else f", bootstrap lower bound {boot_lower:+.4f}"
    if lower > 0 and (math.isnan(boot_lower) or boot_lower > 0):
        return {**row, "verdict": "holds", "reason": f"lower bound {lower:+.4f} > 0{boot}"}
    opposite = "; the opposite holds (upper bound < 0)" if upper < 0 else ""
    why = f"lower bound {lower:+.4f} ≤ 0" if not lower > 0 else f"seeds agree (lower bound {lower:+.4f}) but not the test images"
    return {**row, "verdict": "does not hold", "reason": f"{why}{boot}{opposite}"}


def evaluate_claims(claims: list[Mapping[str, Any]], tables: Mapping[str, pd.DataFrame],
                    root: str | Path | None = None) -> pd.DataFrame:
    """The claims table: one row per (claim, dataset), columns ``CLAIM_COLUMNS``; ``root`` as in
    :func:`evaluate_claim`."""
    rows = []
    for claim in claims:
        table = tables.get(claim["table"])
        if table is None:
            raise DefectbenchError(f"claim {claim['id']}: unknown table {claim['table']!r}; use one of {', '.join(tables)}")
        for dataset in claim["datasets"]:
            rows.append(evaluate_claim(claim, str(dataset), table, Path(root) if root is not None else None))
    df = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    for col in CLAIM_COLUMNS:
        if col in _FLOAT_COLUMNS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        elif col == "n_seeds":
            df[col] = df[col].astype("int64")
        else:
            df[col] = df[col].astype("string")
    return df


def _num(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def render_claims_markdown(df: pd.DataFrame) -> str:
    """``claims.md``: the rule, then one line per (claim, dataset)."""
    intro = (
        "# Claims of the papers, evaluated on this run\n\n"
        "Generated from `claims.parquet` by `defectbench.claims` (do not edit). Rule: " + RULE + ". "
        "Claims: `config/published/claims.yaml`. `Δ` = method − baseline in the claimed direction (mean over "
        "paired seeds, with its one-sided 95% lower bound); `boot` = the 5th percentile of the paired bootstrap "
        "over test images (— where the per-image files were not at hand); `Δ control` = method − control.\n\n"
    )
    return intro + claims_table_markdown(df) + "\n"


def claims_table_markdown(df: pd.DataFrame) -> str:
    """The pipe table of the claims (no title): one line per (claim, dataset)."""
    if df.empty:
        return "_No claims in this file._"
    header = ["claim", "dataset", "metric", "method", "baseline", "control", "seeds", "method mean", "baseline mean",
              "control mean", "Δ (lower bound)", "boot", "Δ control (lower bound)", "verdict", "why"]
    rows = []
    for _, r in df.iterrows():
        cells = [r["claim"], r["dataset"], r["metric"], r["method"], r["baseline"], r["control"] or "—",
                 str(int(r["n_seeds"])), _num(r["method_mean"]), _num(r["baseline_mean"]), _num(r["control_mean"]),
                 f"{_num(r['diff_mean'])} ({_num(r['diff_lower'])})", _num(r["boot_lower"]),
                 f"{_num(r['control_diff_mean'])} ({_num(r['control_diff_lower'])})" if r["control"] else "—",
                 f"**{r['verdict']}**", r["reason"]]
        rows.append([str(c).replace("|", "\\|") for c in cells])
    return markdown_table(header, rows)


def write_claims(claims_path: str | Path, tables_dir: str | Path, root: str | Path | None = None) -> Path:
    """Evaluate the claims file on the stage tables of ``tables_dir`` (with the bootstrap over
    test images when ``root``, the project root of the tables' paths, is given); write
    ``claims.parquet``, ``claims.md`` and ``claims.html`` there. Returns the Parquet path."""
    tables_dir = Path(tables_dir)
    tables = {}
    for stage in STAGES:
        path = tables_dir / f"{stage}.parquet"
        if not path.is_file():
            raise DefectbenchError(f"{path}: stage table missing; run aggregate (defectbench tables) first")
        tables[stage] = pd.read_parquet(path)
    df = evaluate_claims(load_claims(claims_path), tables, root)
    out = tables_dir / "claims.parquet"
    write_parquet(out, df)
    regenerate_markdown(tables_dir)  # claims.md and claims.html, rendered from the Parquet file alone
    counts = df["verdict"].value_counts().to_dict()
    log.info("claims: %d row(s): %s", len(df), ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS))
    return out
