"""Result tables: every job's ``metrics.json`` -> Parquet tables, published-vs-ours comparisons, Markdown.

Tables are built only from the ``metrics.json`` files the jobs wrote (``runtime.write_metrics``), so
they can always be rebuilt from ``results/`` alone (``defectbench tables``).

Schema of ``results/tables/{classification,anomaly,clustering,pretraining}.parquet`` (one row per
job, i.e. per ``metrics.json``; column order as listed):

* key columns (``KEY_COLUMNS[stage]``, always present, null where a job has no such key):
  classification ``dataset, method, backbone, labels_pct, seed``; anomaly ``dataset, scorer,
  features, method, backbone, seed, diffusion_converged`` (DDAD rows: True/False, whether its
  diffusion model converged, so rows from an untrained model are flagged and never averaged with
  converged seeds; null on other rows); clustering ``dataset, weighting, features, backbone, seed``;
  pretraining ``dataset, method, backbone, task, seed``. Any further key a job records (a
  top-level field of metrics.json that is not provenance) is appended as its own column.
* ``protocol`` (clean | faithful).
* one float column per metric: the expected ones of the stage (``EXPECTED_METRICS``, always
  present, NaN when not computed) followed by every other metric name found, sorted. A metric
  whose name collides with a key or provenance column is stored as ``metric_<name>``.
* provenance: ``config_hash``, ``code_fingerprint`` (hash of the library files the job imported:
  :mod:`defectbench.fingerprint`; two rows with different values come from different code),
  ``code_version`` (defectbench package version), ``versions`` (JSON string
  of the versions dict), ``device``, ``amp`` (effective mixed precision, when recorded),
  ``wall_time_s``, ``host``, ``finished_at``, ``path`` (the metrics.json, relative to the project
  root when under it).

``comparison_<name>.parquet`` (one per ``config/published/<name>.csv`` with a row for a configured
dataset): each published row beside our mean over seeds and over our datasets whose declared
``paper_dataset`` (the dataset entry key, e.g. ``mvtec_ad/bottle``; never the name a user picks)
matches the row's ``paper_dataset`` pattern; one row per (published row, our protocol); columns
``COMPARISON_COLUMNS``: ``dataset`` (the published ``paper_dataset`` pattern), ``published``,
``ours``, ``ours_std``, ``n_seeds``, ``n_datasets``, ``n_jobs``, ``delta = ours - published`` and a
``note`` saying which of our datasets matched, what differs (data, protocol, budget) or why there is
no value. Published rows that match no configured dataset are left out, and a file left with no
rows writes no comparison table (:func:`published_for`).

The Markdown files (``*.md``) are renderings of the Parquet files for people: seeds aggregated
to mean +- std (n). :func:`render_markdown` regenerates them from Parquet alone.

>>> import pandas as pd
>>> format_stat(0.91234, 0.0123, 3)
'0.9123 ± 0.0123 (n=3)'
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from defectbench.runtime import DefectbenchError, atomic_path, write_parquet

log = logging.getLogger("defectbench")

STAGES: tuple[str, ...] = ("classification", "anomaly", "clustering", "pretraining")

KEY_COLUMNS: dict[str, list[str]] = {
    "classification": ["dataset", "method", "backbone", "labels_pct", "seed"],
    "anomaly": ["dataset", "scorer", "features", "method", "backbone", "seed", "diffusion_converged"],
    "clustering": ["dataset", "weighting", "features", "backbone", "seed"],
    "pretraining": ["dataset", "method", "backbone", "task", "seed"],
}

EXPECTED_METRICS: dict[str, list[str]] = {
    "classification": ["accuracy", "macro_recall", "macro_f1", "macro_auroc", "macro_auprc"],
    "anomaly": [
        "image_auroc", "image_auprc", "pixel_auroc", "pro",
        "precision", "recall", "f1", "accuracy", "threshold", "f1_max_oracle",
    ],
    "clustering": ["nmi", "ari", "f1"],
    "pretraining": [],
}

PROVENANCE_COLUMNS: list[str] = [
    "config_hash", "code_fingerprint", "code_version", "versions", "device", "amp", "wall_time_s", "host", "finished_at", "path",
]

# Fields of a metrics.json record that are not job keys.
_RECORD_FIELDS = {
    "stage", "protocol", "metrics", "config", "config_hash", "versions", "device", "wall_time_s",
    "host", "finished_at", "extra", "amp",
}
_NUMERIC_KEYS = {"seed": "Int64", "labels_pct": "float64", "budget_epochs": "Int64", "image_size": "Int64"}

TITLES: dict[str, str] = {
    "classification": "Classification: linear probes on frozen features and the supervised baseline",
    "anomaly": "Anomaly detection: image-level scorers, PatchCore, DDAD",
    "clustering": "Anomaly clustering",
    "pretraining": "Pretraining runs (contrastive encoders, diffusion models, supervised training)",
}

PUBLISHED_COLUMNS: list[str] = [
    "paper", "table", "dataset_published", "paper_dataset", "method_published", "method", "backbone",
    "labels_pct", "scorer", "features", "weighting", "metric_published", "metric", "value",
    "source", "differs",
]
# Published-row columns that filter our rows (empty = any value).
FILTER_COLUMNS: list[str] = ["method", "backbone", "labels_pct", "scorer", "features", "weighting"]
# Features of control rows: the clustering positive control (``oracle``) and the random-init
# control (``random``: the image-level scorers' feature source, patchcore/ddad/clustering.controls).
# They are no method's rows: a filter matches them only when it names ``features``.
CONTROL_FEATURES: tuple[str, ...] = ("oracle", "random")


def is_budget_point(rows: pd.DataFrame) -> pd.Series:
    """True for the budget curve's rows (``budget_epochs`` set): the same method at other budgets
    than the run's own, so no published number or claim side stands for them unless it says so."""
    if "budget_epochs" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["budget_epochs"].notna()


def is_control_row(rows: pd.DataFrame) -> pd.Series:
    """True for the rows whose ``features`` is a control's (``CONTROL_FEATURES``)."""
    if "features" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["features"].astype("string").isin(CONTROL_FEATURES).fillna(False).astype(bool)

COMPARISON_COLUMNS: list[str] = [
    "paper", "table", "dataset_published", "dataset", "method_published", "method", "backbone",
    "labels_pct", "scorer", "features", "weighting", "metric_published", "metric", "protocol",
    "published", "ours", "ours_std", "n_seeds", "n_datasets", "n_jobs", "delta", "source", "note",
]


# ----------------------------------------------------------------------------- job tables
def read_metrics_record(path: str | Path) -> dict[str, Any]:
    """Load one metrics.json; a one-line error names the file when it is unreadable or incomplete."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: metrics file not found; rerun the job that writes it") from None
    except json.JSONDecodeError as exc:
        raise DefectbenchError(f"{path}: not valid JSON ({exc.msg}); delete it and rerun its job") from None
    missing = [k for k in ("stage", "dataset", "seed", "metrics") if k not in record]
    if missing:
        raise DefectbenchError(f"{path}: metrics.json lacks {', '.join(missing)}; write it with runtime.write_metrics")
    if record["stage"] not in STAGES:
        raise DefectbenchError(f"{path}: unknown stage {record['stage']!r}; expected one of {', '.join(STAGES)}")
    return record


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def record_to_row(record: Mapping[str, Any], path: str, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Flatten one metrics.json record into a table row (keys, protocol, metrics, provenance).

    ``keys``: the table's key columns (default: this record's own), which decide when a metric
    name collides with a key and is stored as ``metric_<name>``.
    """
    stage = record["stage"]
    keys = list(keys) if keys is not None else _job_keys(stage, record)
    row: dict[str, Any] = {k: record.get(k) for k in keys}
    row["protocol"] = record.get("protocol")
    for name, value in (record.get("metrics") or {}).items():
        row[_metric_column(name, set(keys))] = np.nan if value is None else float(value)
    versions = record.get("versions") or {}
    extra = record.get("extra") or {}
    row.update(
        config_hash=record.get("config_hash"),
        code_fingerprint=(record.get("config") or {}).get("code"),
        code_version=versions.get("defectbench"),
        versions=json.dumps(versions, sort_keys=True),
        device=record.get("device"),
        amp=record.get("amp", extra.get("amp") if isinstance(extra, dict) else None),
        wall_time_s=record.get("wall_time_s"),
        host=record.get("host"),
        finished_at=record.get("finished_at"),
        path=path,
    )
    return row


def _metric_column(name: str, key_names: set[str]) -> str:
    return f"metric_{name}" if name in key_names or name in PROVENANCE_COLUMNS or name == "protocol" else name


def _job_keys(stage: str, record: Mapping[str, Any]) -> list[str]:
    """The key columns of a record: the stage's standard keys, then any other non-provenance field."""
    keys = list(KEY_COLUMNS[stage])
    return keys + [k for k in record if k not in _RECORD_FIELDS and k not in keys]


def _column_order(stage: str, records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """(key columns, metric columns, all columns in table order) for the given records."""
    base = KEY_COLUMNS[stage]
    extra_keys = sorted({k for rec in records for k in _job_keys(stage, rec)} - set(base))
    keys = base + extra_keys
    key_set = set(keys)
    found = {_metric_column(m, key_set) for rec in records for m in (rec.get("metrics") or {})}
    expected = list(EXPECTED_METRICS[stage])
    metrics = expected + sorted(found - set(expected))
    return keys, metrics, keys + ["protocol"] + metrics + PROVENANCE_COLUMNS


def _typed_frame(rows: list[dict[str, Any]], keys: list[str], metrics: list[str], columns: list[str]) -> pd.DataFrame:
    """A DataFrame with fixed dtypes, so that empty and full tables share one Parquet schema."""
    df = pd.DataFrame(rows, columns=columns)
    for col in columns:
        if col in _NUMERIC_KEYS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(_NUMERIC_KEYS[col])
        elif col in metrics or col == "wall_time_s":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        else:
            df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            df[col] = df[col].astype("string")
    return df


def build_stage_table(stage: str, records: Sequence[tuple[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """One stage's table from (path, record) pairs; sorted by its key columns, then path."""
    mine = [(path, rec) for path, rec in records if rec["stage"] == stage]
    keys, metrics, columns = _column_order(stage, [rec for _, rec in mine])
    rows = [record_to_row(rec, path, keys) for path, rec in mine]
    df = _typed_frame(rows, keys, metrics, columns)
    return df.sort_values(keys + ["protocol", "path"], na_position="last", kind="stable").reset_index(drop=True)


def build_tables(metrics_paths: Iterable[str | Path], root: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """All four stage tables from the given metrics.json files (each job once, duplicates refused)."""
    root_path = Path(root) if root is not None else None
    records: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for p in sorted({Path(p) for p in metrics_paths}):
        rel = _relative(p, root_path)
        if rel in seen:
            continue
        seen.add(rel)
        records.append((rel, read_metrics_record(p)))
    return {stage: build_stage_table(stage, records) for stage in STAGES}


# ----------------------------------------------------------------------------- published numbers
def load_published(path: str | Path) -> pd.DataFrame:
    """Read one ``config/published/*.csv`` and check its columns (``PUBLISHED_COLUMNS``)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#")
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: published-numbers file not found") from None
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise DefectbenchError(f"{path}: missing column(s) {', '.join(missing)}; see config/published/README.md")
    df = df[PUBLISHED_COLUMNS].copy()
    bad = [i for i, v in enumerate(df["value"]) if not _is_number(v)]
    if bad:
        raise DefectbenchError(f"{path}: row {bad[0] + 2}: value {df['value'].iloc[bad[0]]!r} is not a number")
    unknown = sorted(set(df["table"]) - set(STAGES))
    if unknown:
        raise DefectbenchError(f"{path}: unknown table {unknown[0]!r}; use one of {', '.join(STAGES)}")
    df["value"] = df["value"].astype(float)
    return df


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _dataset_matches(names: pd.Series, pattern: str) -> pd.Series:
    """``pattern``: ``|``-separated fnmatch patterns (``mvtec_ad/*``, ``neu_cls``); empty matches nothing."""
    pats = [p.strip() for p in pattern.split("|") if p.strip()]
    return names.map(lambda n: isinstance(n, str) and any(fnmatch.fnmatchcase(n, p) for p in pats)).astype(bool)


def published_for(published: pd.DataFrame, paper_datasets: Mapping[str, str | None]) -> pd.DataFrame:
    """The published rows whose ``paper_dataset`` pattern matches a configured dataset's
    ``paper_dataset`` (``paper_datasets``: our dataset name -> its declared paper dataset or None).

    >>> pub = pd.DataFrame({"paper_dataset": ["mvtec_ad/*", "neu_cls"]})
    >>> published_for(pub, {"bottle": "mvtec_ad/bottle", "mine": None})["paper_dataset"].tolist()
    ['mvtec_ad/*']
    """
    declared = pd.Series([v for v in paper_datasets.values() if v], dtype=object)
    keep = published["paper_dataset"].map(lambda pattern: bool(_dataset_matches(declared, pattern).any()))
    return published[keep.astype(bool)].reset_index(drop=True)


def _filter_matches(ours: pd.DataFrame, column: str, wanted: str, table: str) -> pd.Series:
    """Rows whose ``column`` equals ``wanted`` (numbers compared as floats).

    In the anomaly table PatchCore/DDAD jobs name the method in ``scorer``; a ``method`` filter
    there also accepts a row whose method is null and whose scorer equals the value.
    """
    if column not in ours.columns:
        return pd.Series(False, index=ours.index)
    values = ours[column]
    if column == "labels_pct":
        hit = pd.to_numeric(values, errors="coerce") == float(wanted)
    else:
        hit = values.astype("string") == wanted
    hit = hit.fillna(False).astype(bool)
    if column == "method" and table == "anomaly" and "scorer" in ours.columns:
        alt = values.isna() & (ours["scorer"].astype("string") == wanted).fillna(False)
        hit = hit | alt.astype(bool)
    return hit


def _ours_summary(rows: pd.DataFrame, metric: str) -> dict[str, Any]:
    """Mean over datasets of per-dataset seed means; std over seeds of the dataset-averaged value."""
    vals = rows[["dataset", "seed", metric]].dropna(subset=[metric])
    if vals.empty:
        return {"ours": np.nan, "ours_std": np.nan, "n_seeds": 0, "n_datasets": 0, "n_jobs": 0}
    per_dataset = vals.groupby("dataset")[metric].mean()
    per_seed = vals.groupby("seed")[metric].mean()
    return {
        "ours": float(per_dataset.mean()),
        "ours_std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else np.nan,
        "n_seeds": int(vals["seed"].nunique()),
        "n_datasets": int(vals["dataset"].nunique()),
        "n_jobs": int(len(vals)),
    }


def compare_published(
    published: pd.DataFrame, tables: Mapping[str, pd.DataFrame], paper_datasets: Mapping[str, str | None]
) -> pd.DataFrame:
    """Published numbers beside ours: one row per (published row, protocol of the matching runs).

    Matching: the declared ``paper_dataset`` of our row's dataset (``paper_datasets``: name ->
    paper dataset) matches the published ``paper_dataset`` pattern and every non-empty filter
    column (``FILTER_COLUMNS``) equals ours; control rows (:func:`is_control_row`) only when the
    published row names ``features``; budget-curve points (:func:`is_budget_point`) never.
    ``delta = ours - published``.
    """
    out: list[dict[str, Any]] = []
    for _, pub in published.iterrows():
        base = {c: pub[c] for c in PUBLISHED_COLUMNS if c not in ("value", "differs", "paper_dataset")}
        base["dataset"] = pub["paper_dataset"]
        base["published"] = float(pub["value"])
        ours = tables.get(pub["table"])
        notes = [pub["differs"]] if pub["differs"] else []
        if not pub["method"] and not pub["scorer"] and pub["table"] != "clustering":
            out.append(_no_value(base, notes + ["method not implemented in defectbench"]))
            continue
        if ours is None or ours.empty:
            out.append(_no_value(base, notes + ["no run of this configuration"]))
            continue
        mask = _dataset_matches(ours["dataset"].map(lambda n: paper_datasets.get(n)), pub["paper_dataset"])
        mask &= ~is_budget_point(ours)
        if not pub["features"]:
            mask &= ~is_control_row(ours)
        for col in FILTER_COLUMNS:
            if pub[col]:
                mask &= _filter_matches(ours, col, pub[col], pub["table"])
        matched = ours[mask]
        if matched.empty:
            wanted = ", ".join(f"{c}={pub[c]}" for c in FILTER_COLUMNS if pub[c])
            out.append(_no_value(base, notes + [f"no run on {pub['paper_dataset']}" + (f" with {wanted}" if wanted else "")]))
            continue
        if pub["metric"] not in matched.columns or matched[pub["metric"]].isna().all():
            out.append(_no_value(base, notes + [f"our runs do not report {pub['metric']}"]))
            continue
        for protocol, group in matched.groupby("protocol", dropna=False, sort=True):
            summary = _ours_summary(group, pub["metric"])
            row_notes = list(notes) + [f"ours: {', '.join(sorted(group['dataset'].dropna().unique()))}"]
            n_pattern = len([p for p in pub["paper_dataset"].split("|") if p.strip()])
            if "*" in pub["paper_dataset"] or n_pattern > 1:
                row_notes.append(f"ours: unweighted mean over {summary['n_datasets']} matching dataset(s)")
            if summary["n_seeds"] < 3:
                row_notes.append(f"ours: {summary['n_seeds']} seed(s)")
            row = {**base, "protocol": None if pd.isna(protocol) else str(protocol), **summary}
            row["delta"] = row["ours"] - row["published"]
            row["note"] = "; ".join(row_notes)
            out.append(row)
    df = pd.DataFrame(out, columns=COMPARISON_COLUMNS)
    return _typed_comparison(df)


def _no_value(base: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    return {
        **base, "protocol": None, "ours": np.nan, "ours_std": np.nan, "n_seeds": 0, "n_datasets": 0,
        "n_jobs": 0, "delta": np.nan, "note": "; ".join(notes),
    }


def _typed_comparison(df: pd.DataFrame) -> pd.DataFrame:
    for col in COMPARISON_COLUMNS:
        if col in ("published", "ours", "ours_std", "delta"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        elif col.startswith("n_"):
            df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64")
        else:
            df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            df[col] = df[col].astype("string")
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- Markdown
def seed_stats(values: pd.Series) -> tuple[float, float, int]:
    """(mean, sample std, n) of the non-missing values; NaN mean when none, NaN std below two.

    >>> seed_stats(pd.Series([0.5, None, 0.7]))
    (0.6, 0.14142135623730948, 2)
    """
    v = values.dropna().astype(float)
    return (float(v.mean()) if len(v) else math.nan, float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))


def format_stat(mean: float, std: float = math.nan, n: int | None = None, digits: int = 4) -> str:
    """``mean ± std (n=k)``; ``—`` when there is no value, no ``±`` without a std or with a single
    seed; without ``n`` no ``(n=k)``.

    >>> format_stat(0.91234, 0.01234, 3), format_stat(0.9, math.nan, 1), format_stat(0.91234, 0.01234, digits=3)
    ('0.9123 ± 0.0123 (n=3)', '0.9000 (n=1)', '0.912 ± 0.012')
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    count = "" if n is None else f" (n={n})"
    if (n is None or n > 1) and std is not None and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}{count}"
    return f"{mean:.{digits}f}{count}"


def _cell(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown pipe table (no final newline); cells are used as given (escape ``|`` before).

    >>> print(markdown_table(["a", "b"], [["1", "2"]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def aggregate_seeds(df: pd.DataFrame, stage: str) -> tuple[list[str], list[str], pd.DataFrame]:
    """Group a stage table over seeds: (group columns, metric columns, rows with mean/std/n)."""
    metric_cols = [c for c in df.columns if df[c].dtype == "float64" and c not in ("wall_time_s", "labels_pct")]
    key_cols = [c for c in df.columns if c not in metric_cols and c not in PROVENANCE_COLUMNS and c != "seed"]
    key_cols = [c for c in key_cols if df[c].notna().any()]
    metric_cols = [c for c in metric_cols if df[c].notna().any()]
    if df.empty:
        return key_cols, metric_cols, pd.DataFrame()
    grouped = df.groupby(key_cols, dropna=False, sort=True)
    stats = []
    for key, g in grouped:
        key = key if isinstance(key, tuple) else (key,)
        entry: dict[str, Any] = dict(zip(key_cols, key))
        entry["n_seeds"] = int(g["seed"].nunique())
        entry["wall_time_s"] = float(g["wall_time_s"].mean())
        for m in metric_cols:
            entry[f"{m}__mean"], entry[f"{m}__std"], entry[f"{m}__n"] = seed_stats(g[m])
        stats.append(entry)
    return key_cols, metric_cols, pd.DataFrame(stats)


def render_stage_markdown(df: pd.DataFrame, stage: str) -> str:
    """Markdown of one stage table: one line per configuration, metrics as mean ± std (n seeds)."""
    title = TITLES.get(stage, stage)
    intro = (
        f"# {title}\n\n"
        f"Generated from `{stage}.parquet` by `defectbench.tables` (do not edit). One line per "
        "configuration; each metric is the mean ± sample standard deviation over seeds, n = number "
        f"of seeds with a value. {len(df)} job(s).\n\n"
    )
    key_cols, metric_cols, stats = aggregate_seeds(df, stage)
    if stats.empty:
        return intro + "_No jobs of this stage in this run._\n"
    header = key_cols + metric_cols + ["wall time (s, mean)"]
    rows = []
    for _, s in stats.iterrows():
        cells = [_cell(s[c]) for c in key_cols]
        cells += [format_stat(s[f"{m}__mean"], s[f"{m}__std"], int(s[f"{m}__n"])) for m in metric_cols]
        cells.append(f"{s['wall_time_s']:.1f}" if not math.isnan(s["wall_time_s"]) else "")
        rows.append(cells)
    return intro + markdown_table(header, rows) + "\n"


def render_comparison_markdown(df: pd.DataFrame, name: str) -> str:
    """Markdown of one comparison table: published value, ours (mean ± std, n), delta, note, source."""
    intro = (
        f"# Published vs reproduced: {name}\n\n"
        f"Generated from `comparison_{name}.parquet` by `defectbench.tables` (do not edit). "
        "`published` is the number reported by the source; `ours` is our mean over seeds (± std, "
        "n = seeds), averaged over every matching dataset; `delta` = ours − published. The note "
        "says what differs (data, protocol, budget). DiffCL is a reconstruction, not a reproduction "
        "(no code was released).\n\n"
    )
    if df.empty:
        return intro + "_No published numbers in this file._\n"
    header = ["dataset (paper → ours)", "method (paper → ours)", "metric", "protocol", "published", "ours", "delta", "note", "source"]
    rows = []
    for _, r in df.iterrows():
        method = _cell(r["method_published"])
        ours_method = "/".join(_cell(r[c]) for c in ("method", "scorer", "features", "weighting", "backbone") if _cell(r[c]))
        if not pd.isna(r["labels_pct"]) and _cell(r["labels_pct"]):
            ours_method += f" @{_cell(r['labels_pct'])}% labels"
        rows.append([
            f"{_cell(r['dataset_published'])} → {_cell(r['dataset']) or '—'}",
            f"{method} → {ours_method or '—'}",
            _cell(r["metric"]),
            _cell(r["protocol"]),
            f"{r['published']:.4f}",
            format_stat(r["ours"], r["ours_std"], int(r["n_seeds"])),
            "—" if math.isnan(r["delta"]) else f"{r['delta']:+.4f}",
            _cell(r["note"]),
            _cell(r["source"]),
        ])
    return intro + markdown_table(header, rows) + "\n"


def render_markdown(parquet_path: str | Path) -> str:
    """The Markdown rendering of a table file, from the Parquet file alone."""
    path = Path(parquet_path)
    df = pd.read_parquet(path)
    if path.stem.startswith("comparison_"):
        return render_comparison_markdown(df, path.stem.removeprefix("comparison_"))
    if path.stem == "claims":
        from defectbench.claims import render_claims_markdown

        return render_claims_markdown(df)
    if path.stem not in STAGES:
        raise DefectbenchError(f"{path}: not a defectbench table (expected one of {', '.join(STAGES)}, claims or comparison_*)")
    return render_stage_markdown(df, path.stem)


def markdown_to_html(text: str) -> str:
    """A standalone HTML page of one rendered table (title, paragraphs, pipe table), for the report."""
    import html

    def inline(s: str) -> str:
        parts = html.escape(s).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    body, table = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
        elif line.startswith("# "):
            body.append(f"<h2>{inline(line[2:])}</h2>")
        elif line.strip():
            body.append(f"<p>{inline(line.strip('_'))}</p>")
    if table:
        head = "".join(f"<th>{inline(c)}</th>" for c in table[0])
        rows = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in table[1:])
        body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top} th{background:#eee}")
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def regenerate_markdown(tables_dir: str | Path) -> dict[str, Path]:
    """Rewrite every ``*.md`` (and its ``*.html`` twin for the Snakemake report) beside the
    ``*.parquet`` tables of ``tables_dir``; return name -> Markdown path."""
    tables_dir = Path(tables_dir)
    written: dict[str, Path] = {}
    for parquet in sorted(tables_dir.glob("*.parquet")):
        if parquet.stem not in STAGES and parquet.stem != "claims" and not parquet.stem.startswith("comparison_"):
            continue
        md = parquet.with_suffix(".md")
        text = render_markdown(parquet)
        with atomic_path(md) as tmp:
            tmp.write_text(text)
        with atomic_path(parquet.with_suffix(".html")) as tmp:
            tmp.write_text(markdown_to_html(text))
        written[parquet.stem] = md
    return written


# ----------------------------------------------------------------------------- entry point
def comparison_csvs(csvs: Iterable[str | Path], paper_datasets: Mapping[str, str | None]) -> list[Path]:
    """The published CSVs with at least one row for a configured dataset (their comparison tables
    are the ones :func:`write_tables` writes; the aggregate rule declares exactly these)."""
    return [Path(c) for c in sorted(csvs) if not published_for(load_published(c), paper_datasets).empty]


def write_tables(
    metrics_paths: Iterable[str | Path],
    out_dir: str | Path,
    published: str | Path | Iterable[str | Path] | None = None,
    root: str | Path | None = None,
    paper_datasets: Mapping[str, str | None] | None = None,
) -> dict[str, Path]:
    """Build and write the four stage tables, one comparison per published CSV that has rows for a
    configured dataset (:func:`published_for`), and their Markdown.

    ``published``: a directory of published-number CSVs or a list of CSV files;
    ``paper_datasets``: our dataset name -> its declared ``paper_dataset`` (None: no comparisons).
    Returns name -> Parquet path. Stage tables are always written (empty with the schema columns
    when no job of the stage ran).
    """
    out_dir = Path(out_dir)
    tables = build_tables(metrics_paths, root=root)
    written: dict[str, Path] = {}
    for stage, df in tables.items():
        write_parquet(out_dir / f"{stage}.parquet", df)
        written[stage] = out_dir / f"{stage}.parquet"
        log.info("table %s: %d job(s)", stage, len(df))
    if published is not None:
        if isinstance(published, (str, Path)):
            csvs = sorted(Path(published).glob("*.csv"))
        else:
            csvs = sorted(Path(p) for p in published)
        if not csvs:
            log.warning("no published-number CSVs given: no comparison tables")
        for csv in csvs:
            rows = published_for(load_published(csv), paper_datasets or {})
            if rows.empty:
                log.info("%s: no row for a configured dataset's paper_dataset: no comparison table", csv.name)
                continue
            comp = compare_published(rows, tables, paper_datasets or {})
            name = f"comparison_{csv.stem}"
            write_parquet(out_dir / f"{name}.parquet", comp)
            written[name] = out_dir / f"{name}.parquet"
            log.info("%s: %d published number(s), %d with a value of ours", name, len(comp), int(comp["ours"].notna().sum()))
    regenerate_markdown(out_dir)
    return written
