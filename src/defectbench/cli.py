"""``defectbench`` command: compare runs, rebuild tables, validate a config, start a config for your data.

    defectbench compare --stage classification --dataset neu          # from results/tables
    defectbench compare --source mlflow --stage anomaly --metric image_auroc
    defectbench tables                                                # rebuild results/tables
    defectbench validate-config config/paper.yaml
    defectbench new-dataset path/to/my-images --out config/my-images.yaml   # bring your own data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from defectbench.runtime import DefectbenchError
from defectbench.tables import EXPECTED_METRICS, KEY_COLUMNS, PROVENANCE_COLUMNS, STAGES, format_stat, seed_stats

_COMPARE_HELP = """\
Show runs side by side: one line per configuration (dataset, method/scorer/features/weighting,
backbone, labels, protocol), one column per metric, each cell = mean ± std over seeds (n).

Sources: --source tables (default) reads results/tables/<stage>.parquet (written by the aggregate
rule or `defectbench tables`); --source mlflow reads the child runs of the experiment in the MLflow
store (written by the track rule), so it also works on a copied mlflow.db.

Examples:
  defectbench compare --stage classification --dataset neu --metric accuracy --metric macro_f1
  defectbench compare --stage anomaly --method patchcore --method ddad
  defectbench compare --source mlflow --uri sqlite:///results/mlflow.db --experiment demo --stage clustering
"""


def _frame_from_tables(tables_dir: Path, stage: str) -> pd.DataFrame:
    path = tables_dir / f"{stage}.parquet"
    if not path.exists():
        raise DefectbenchError(f"{path}: table not found; run `snakemake aggregate` or `defectbench tables` first")
    return pd.read_parquet(path)


def _frame_from_mlflow(uri: str, experiment: str, stage: str) -> pd.DataFrame:
    from defectbench.tracking import runs_frame

    df = runs_frame(uri, experiment)
    if df.empty or "stage" not in df.columns:
        return pd.DataFrame()
    return df[df["stage"] == stage].drop(columns=["stage"])


def compare_frame(df: pd.DataFrame, stage: str, *, datasets: Sequence[str] = (), methods: Sequence[str] = (),
                  metrics: Sequence[str] = (), protocol: str | None = None) -> pd.DataFrame:
    """Filter a stage table and pivot it: configurations x metrics, cells ``mean ± std (n)`` over seeds.

    ``methods`` match the ``method`` or ``scorer`` column (PatchCore/DDAD are scorers). Column
    ``code``: the code fingerprint(s) of each row's runs (``a+b`` when its seeds ran different code).
    """
    if df.empty:
        return pd.DataFrame()
    if datasets:
        df = df[df["dataset"].isin(list(datasets))]
    if methods:
        hit = pd.Series(False, index=df.index)
        for col in ("method", "scorer"):
            if col in df.columns:
                hit |= df[col].isin(list(methods)).fillna(False).astype(bool)
        df = df[hit]
    if protocol:
        df = df[df["protocol"] == protocol]
    keys = [c for c in KEY_COLUMNS[stage] if c in df.columns and c != "seed" and df[c].notna().any()]
    keys += ["protocol"] if "protocol" in df.columns else []
    skip = set(keys) | {"seed", "run_id", *PROVENANCE_COLUMNS}
    numeric = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()]
    if metrics:
        missing = [m for m in metrics if m not in df.columns]
        if missing:
            raise DefectbenchError(f"--metric {missing[0]}: no such metric in the {stage} runs; available: {', '.join(numeric)}")
        numeric = list(metrics)
    else:
        preferred = [m for m in EXPECTED_METRICS[stage] if m in numeric]
        numeric = preferred or numeric
    if df.empty:
        return pd.DataFrame()
    fingerprints = "code_fingerprint" in df.columns
    rows = []
    for key, g in df.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = {k: ("" if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else str(v))) for k, v in zip(keys, key)}
        if fingerprints:
            row["code"] = "+".join(sorted(g["code_fingerprint"].dropna().astype(str).unique()))
        for m in numeric:
            row[m] = format_stat(*seed_stats(g[m]))
        rows.append(row)
    return pd.DataFrame(rows, columns=keys + (["code"] if fingerprints else []) + numeric)


def code_note(out: pd.DataFrame) -> str | None:
    """A warning when the compared rows come from different library code, else None."""
    if "code" not in out.columns:
        return None
    codes = sorted({c for cell in out["code"] for c in str(cell).split("+") if c})
    if len(codes) < 2:
        return None
    return (f"note: these rows come from different code ({', '.join(codes)}): the library changed between runs; "
            "rerun them with one version to compare like with like (README: what a change reruns)")


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.source == "mlflow":
        from defectbench.config import load_config

        uri, experiment = args.uri, args.experiment
        if uri is None or experiment is None:
            cfg = load_config(args.config) if Path(args.config).exists() else {}
            tracking = cfg.get("tracking", {})
            uri = uri or tracking.get("uri", "sqlite:///results/mlflow.db")
            experiment = experiment or tracking.get("experiment") or cfg.get("run_name", "defectbench")
        df = _frame_from_mlflow(uri, experiment, args.stage)
    else:
        df = _frame_from_tables(Path(args.tables_dir), args.stage)
    out = compare_frame(df, args.stage, datasets=args.dataset or (), methods=args.method or (),
                        metrics=args.metric or (), protocol=args.protocol)
    if out.empty:
        print(f"no {args.stage} runs match the filters", file=sys.stderr)
        return 1
    note = code_note(out)
    if note:
        print(note, file=sys.stderr)
    if args.format == "csv":
        out.to_csv(sys.stdout, index=False)
    else:
        print(out.to_string(index=False))
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    from defectbench.tables import regenerate_markdown, write_tables

    if args.markdown_only:
        written = regenerate_markdown(args.out)
        print(f"regenerated {len(written)} Markdown file(s) in {args.out}")
        return 0
    from defectbench.config import load_config

    datasets = load_config(args.config)["datasets"]
    paper_datasets = {name: entry.get("paper_dataset") for name, entry in datasets.items()}
    paths = sorted(Path(args.results).rglob("metrics.json"))
    written = write_tables(paths, args.out, args.published, root=".", paper_datasets=paper_datasets)
    if args.claims:
        from defectbench.claims import write_claims

        written["claims"] = write_claims(args.claims, args.out, root=".")
    print(f"{len(paths)} job(s) -> {len(written)} table(s) in {args.out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from defectbench.config import load_config

    cfg = load_config(args.file)
    datasets = ", ".join(cfg["datasets"])
    print(f"{args.file}: valid (datasets: {datasets}; seeds: {cfg['seeds']}; protocol: {cfg['protocol']})")
    return 0


def _cmd_new_dataset(args: argparse.Namespace) -> int:
    from defectbench.data.inspect import dataset_entry, render_entry
    from defectbench.runtime import atomic_path

    name, entry, comments = dataset_entry(args.folder, name=args.name, image_size=args.image_size, category=args.category)
    text = render_entry(name, entry, comments)
    if args.out is None:
        print(text, end="")
        return 0
    out = Path(args.out)
    if out.exists():
        raise DefectbenchError(f"{out}: already exists; pick another --out or delete it")
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    print(f"{out}: dataset {name!r} ({entry['layout']}); run it with `snakemake --cores all --configfile {out}`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="defectbench", description="defectbench: industrial-defect learning benchmark tools")
    sub = parser.add_subparsers(dest="command", required=True)

    cmp = sub.add_parser("compare", help="show runs side by side (methods x metrics)", description=_COMPARE_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp.add_argument("--stage", choices=STAGES, default="classification", help="which table (default: classification)")
    cmp.add_argument("--dataset", action="append", help="keep only this dataset (repeatable)")
    cmp.add_argument("--method", action="append", help="keep only this method or scorer (repeatable)")
    cmp.add_argument("--metric", action="append", help="show this metric (repeatable; default: the stage's headline metrics)")
    cmp.add_argument("--protocol", choices=("clean", "faithful"), help="keep only this protocol")
    cmp.add_argument("--source", choices=("tables", "mlflow"), default="tables", help="read Parquet tables or the MLflow store")
    cmp.add_argument("--tables-dir", default="results/tables", help="directory of the Parquet tables (source tables)")
    cmp.add_argument("--uri", help="MLflow tracking URI (source mlflow; default: tracking.uri of --config)")
    cmp.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment or run_name of --config)")
    cmp.add_argument("--config", default="config/config.yaml", help="config to read tracking defaults from")
    cmp.add_argument("--format", choices=("text", "csv"), default="text", help="output format")
    cmp.set_defaults(func=_cmd_compare)

    tab = sub.add_parser("tables", help="rebuild results/tables from every results/**/metrics.json")
    tab.add_argument("--results", default="results", help="directory searched for metrics.json files")
    tab.add_argument("--out", default="results/tables", help="output directory")
    tab.add_argument("--published", default="config/published", help="directory of published-number CSVs")
    tab.add_argument("--config", default="config/config.yaml",
                     help="config whose dataset entries declare paper_dataset (which published numbers to compare with)")
    tab.add_argument("--claims", default="config/published/claims.yaml",
                     help="claims file evaluated into claims.parquet/.md ('' = none)")
    tab.add_argument("--markdown-only", action="store_true", help="only regenerate the *.md files from the Parquet tables")
    tab.set_defaults(func=_cmd_tables)

    new = sub.add_parser("new-dataset", help="inspect a folder of your images and write a config for it",
                         description="Recognise MVTec-style folders (with or without ground_truth/), YOLO "
                                     "segmentation labels, a folder plus a CSV of labels, or one folder per class, "
                                     "and write a checked config (README: Bring your own dataset).")
    new.add_argument("folder", help="the dataset folder")
    new.add_argument("--name", help="dataset name (default: from the folder name)")
    new.add_argument("--image-size", type=int, default=64, help="cache size in pixels (default 64)")
    new.add_argument("--category", help="MVTec-style: which category folder, when there are several")
    new.add_argument("--out", help="write the config here (default: print it)")
    new.set_defaults(func=_cmd_new_dataset)

    val = sub.add_parser("validate-config", help="validate a config file against config/schema.yaml")
    val.add_argument("file", help="YAML config file")
    val.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DefectbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
