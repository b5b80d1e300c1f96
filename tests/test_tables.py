"""Result tables from synthetic metrics.json files: schema, one row per job, comparisons, Markdown."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from defectbench import tables
from defectbench.runtime import DefectbenchError, write_metrics

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "config" / "published"
PAPER_DATASETS = {"neu": "neu_cls", "mvtec_bottle": "mvtec_ad/bottle", "mvtec_screw": "mvtec_ad/screw"}


def _job(root: Path, rel: str, stage: str, keys: dict, metrics: dict, protocol: str = "clean",
         code: str = "c0de00000000") -> Path:
    path = root / rel / "metrics.json"
    write_metrics(
        path, stage=stage, metrics=metrics, config={"section": {"epochs": 1}, "protocol": protocol, "code": code},
        keys=keys, device="cpu", wall_time_s=2.0, protocol=protocol,
    )
    return path


@pytest.fixture()
def jobs(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path
    paths = []
    # classification: simclr on neu, 3 seeds, accuracy 0.90/0.92/0.94; diffcl 1 seed
    for seed, acc in zip((0, 1, 2), (0.90, 0.92, 0.94)):
        paths.append(_job(root, f"results/probe/simclr/neu/resnet18/seed{seed}/labels100", "classification",
                          {"dataset": "neu", "method": "simclr", "backbone": "resnet18", "seed": seed, "labels_pct": 100},
                          {"accuracy": acc, "macro_f1": acc - 0.01, "macro_auroc": None}))
    paths.append(_job(root, "results/probe/diffcl/neu/resnet18/seed0/labels10", "classification",
                      {"dataset": "neu", "method": "diffcl", "backbone": "resnet18", "seed": 0, "labels_pct": 10},
                      {"accuracy": 0.5, "macro_f1": 0.4}))
    # anomaly: patchcore on two mvtec categories (2 seeds on bottle), one knn job
    for ds, seed, auc in (("mvtec_bottle", 0, 0.99), ("mvtec_bottle", 1, 0.97), ("mvtec_screw", 0, 0.80)):
        paths.append(_job(root, f"results/anomaly/patchcore/wide_resnet50_2/{ds}/seed{seed}", "anomaly",
                          {"dataset": ds, "scorer": "patchcore", "backbone": "wide_resnet50_2", "seed": seed},
                          {"image_auroc": auc, "pixel_auroc": 0.9}))
    paths.append(_job(root, "results/anomaly/knn/simclr/mvtec_bottle/seed0", "anomaly",
                      {"dataset": "mvtec_bottle", "scorer": "knn", "features": "simclr", "seed": 0},
                      {"image_auroc": 0.7, "f1": 0.5}, protocol="faithful"))
    paths.append(_job(root, "results/clustering/supervised/patchcore/mvtec_bottle/seed0", "clustering",
                      {"dataset": "mvtec_bottle", "weighting": "supervised", "features": "patchcore", "seed": 0},
                      {"nmi": 0.5, "ari": 0.4, "f1": 0.6}))
    return root, paths


def test_one_row_per_job_with_schema(jobs):
    root, paths = jobs
    built = tables.build_tables(paths + paths[:2], root=root)  # duplicates given twice still count once
    assert len(built["classification"]) == 4
    assert len(built["anomaly"]) == 4
    assert len(built["clustering"]) == 1
    assert len(built["pretraining"]) == 0
    cls = built["classification"]
    assert list(cls.columns[:6]) == ["dataset", "method", "backbone", "labels_pct", "seed", "protocol"]
    for col in ("accuracy", "macro_recall", "macro_f1", "macro_auroc", "macro_auprc", "config_hash", "versions",
                "device", "wall_time_s", "path", "code_version"):
        assert col in cls.columns
    assert cls["path"].str.startswith("results/probe/").all()
    assert cls["macro_auroc"].isna().all()  # None in metrics.json -> NaN
    assert json.loads(cls["versions"].iloc[0])["defectbench"] == cls["code_version"].iloc[0]
    assert str(cls["seed"].dtype) == "Int64"
    # pretraining is empty but keeps its schema
    assert {"dataset", "method", "backbone", "task", "seed", "protocol", "config_hash"} <= set(built["pretraining"].columns)


def test_write_tables_writes_all_four_and_roundtrips(jobs, tmp_path):
    root, paths = jobs
    out = tmp_path / "tables"
    written = tables.write_tables(paths, out, PUBLISHED_DIR, root=root, paper_datasets=PAPER_DATASETS)
    for stage in tables.STAGES:
        df = pd.read_parquet(out / f"{stage}.parquet")
        assert (out / f"{stage}.md").exists()
        assert "config_hash" in df.columns
    assert len(pd.read_parquet(out / "pretraining.parquet")) == 0
    assert "_No jobs" in (out / "pretraining.md").read_text()
    # only the published files with a row for a declared paper dataset (NEU, MVTec AD) are compared
    assert {n for n in written if n.startswith("comparison_")} == {
        "comparison_diffcl_neu", "comparison_simclr_anomaly", "comparison_supervised_vs_simclr",
        "comparison_ddad_mvtec", "comparison_patchcore_mvtec", "comparison_anomaly_clustering"}
    assert not list(out.glob("comparison_diffcl_pcb*")) and not list(out.glob("comparison_diffcl_cifar100*"))
    neu = pd.read_parquet(out / "comparison_diffcl_neu.parquet")
    assert len(neu) == len(tables.load_published(PUBLISHED_DIR / "diffcl_neu.csv"))
    ddad = pd.read_parquet(out / "comparison_ddad_mvtec.parquet")
    assert not ddad["dataset"].str.startswith("visa").any()  # VisA rows match no configured dataset
    # The Markdown equals its regeneration from Parquet alone (the check issue 7 needs).
    before = {p.name: p.read_text() for p in out.glob("*.md")}
    tables.regenerate_markdown(out)
    assert before == {p.name: p.read_text() for p in out.glob("*.md")}


def test_markdown_aggregates_seeds(jobs):
    root, paths = jobs
    cls = tables.build_tables(paths, root=root)["classification"]
    text = tables.render_stage_markdown(cls, "classification")
    # simclr: mean of .90,.92,.94 = .92, sample std = .02
    line = next(l for l in text.splitlines() if "| simclr |" in l)
    assert "0.9200 ± 0.0200 (n=3)" in line
    diffcl = next(l for l in text.splitlines() if "| diffcl |" in l)
    assert "0.5000 (n=1)" in diffcl and "±" not in diffcl
    assert "macro_auroc" not in text  # all-NaN metric columns are dropped from the rendering


def _published(table: str, dataset_published: str, paper_dataset: str, method_published: str,
               metric_published: str, metric: str, value: float, **ours: str) -> dict:
    """One row of a published CSV (paper "p", source "s"); the columns naming our run in ``ours``, the rest blank."""
    return {**dict.fromkeys(tables.PUBLISHED_COLUMNS, ""), "paper": "p", "source": "s", "table": table,
            "dataset_published": dataset_published, "paper_dataset": paper_dataset,
            "method_published": method_published, "metric_published": metric_published, "metric": metric,
            "value": value, **ours}


def test_comparison_deltas(jobs):
    root, paths = jobs
    built = tables.build_tables(paths, root=root)
    published = pd.DataFrame([
        # averaged over mvtec_*: bottle mean (.99+.97)/2 = .98, screw .80 -> .89
        _published("anomaly", "MVTec avg", "mvtec_ad/*", "PC", "AUROC", "image_auroc", 0.95,
                   method="patchcore", backbone="wide_resnet50_2", differs="data differ"),
        _published("classification", "NEU", "neu_cls", "SimCLR", "Acc", "accuracy", 0.96, method="simclr", labels_pct="100"),
        _published("classification", "NEU", "neu_cls", "HCL", "Acc", "accuracy", 0.9, method="hcl", labels_pct="100"),
        _published("classification", "NEU", "neu_cls", "SimpleNet", "Acc", "accuracy", 0.9),
        _published("anomaly", "bottle", "mvtec_ad/bottle", "kNN", "F1", "f1", 0.409, scorer="knn", features="simclr"),
    ], columns=tables.PUBLISHED_COLUMNS)
    comp = tables.compare_published(published, built, PAPER_DATASETS)
    assert list(comp.columns) == tables.COMPARISON_COLUMNS
    pc = comp.iloc[0]
    # per-seed averages over datasets: seed0 (.99+.80)/2 = .895, seed1 .97 -> std of [.895, .97]
    assert pc["ours"] == pytest.approx(0.89)
    assert pc["delta"] == pytest.approx(0.89 - 0.95)
    assert pc["ours_std"] == pytest.approx(pd.Series([0.895, 0.97]).std())
    assert (pc["n_datasets"], pc["n_seeds"], pc["n_jobs"]) == (2, 2, 3)
    assert "data differ" in pc["note"] and "2 matching dataset" in pc["note"]
    simclr = comp.iloc[1]
    assert simclr["ours"] == pytest.approx(0.92) and simclr["delta"] == pytest.approx(-0.04)
    assert simclr["protocol"] == "clean" and simclr["n_seeds"] == 3
    assert "ours: mvtec_bottle, mvtec_screw" in pc["note"]
    assert math.isnan(comp.iloc[2]["ours"]) and "no run on neu_cls with method=hcl" in comp.iloc[2]["note"]
    assert "not implemented" in comp.iloc[3]["note"]
    knn = comp.iloc[4]
    assert knn["protocol"] == "faithful" and knn["delta"] == pytest.approx(0.5 - 0.409)
    md = tables.render_comparison_markdown(comp, "x")
    assert "-0.0400" in md and "+0.0910" in md


def test_comparisons_match_the_declared_paper_dataset_not_the_name(jobs):
    """A dataset is compared by what it declares: renamed or undeclared datasets behave accordingly."""
    root, paths = jobs
    built = tables.build_tables(paths, root=root)
    published = tables.load_published(PUBLISHED_DIR / "patchcore_mvtec.csv")
    average = published[(published["paper_dataset"] == "mvtec_ad/*") & (published["metric"] == "image_auroc")].iloc[[0]]
    # only bottle declares MVTec AD: the average is bottle's seed mean (.99 + .97) / 2, screw left out
    comp = tables.compare_published(average, built, {"mvtec_bottle": "mvtec_ad/bottle", "mvtec_screw": None})
    assert comp["ours"].tolist() == [pytest.approx(0.98)] and comp["n_datasets"].tolist() == [1]
    # declaring nothing: the published rows are not even kept, so no comparison table is written
    assert tables.published_for(published, {"mvtec_bottle": None, "mvtec_screw": None}).empty
    assert tables.comparison_csvs(PUBLISHED_DIR.glob("*.csv"), {"mvtec_bottle": None}) == []


def test_published_csvs_are_valid():
    csvs = sorted(PUBLISHED_DIR.glob("*.csv"))
    stems = {p.stem for p in csvs}
    assert {"diffcl_neu", "diffcl_pcb", "diffcl_cifar100", "simclr_anomaly", "supervised_vs_simclr",
            "ddad_mvtec", "patchcore_mvtec", "anomaly_clustering"} <= stems
    for csv in csvs:
        df = tables.load_published(csv)
        assert (df["source"] != "").all(), csv.name
        assert df["value"].between(0, 1).all(), csv.name
    neu = tables.load_published(PUBLISHED_DIR / "diffcl_neu.csv")
    row = neu[(neu["method"] == "diffcl") & (neu["metric"] == "accuracy")]
    assert row["value"].tolist() == [0.9927]


def test_bad_inputs_give_one_line_errors(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(DefectbenchError, match="not valid JSON"):
        tables.build_tables([bad])
    bad.write_text(json.dumps({"stage": "classification", "dataset": "x", "metrics": {}}))
    with pytest.raises(DefectbenchError, match="lacks seed"):
        tables.build_tables([bad])
    csv = tmp_path / "p.csv"
    csv.write_text("paper,table\nx,classification\n")
    with pytest.raises(DefectbenchError, match="missing column"):
        tables.load_published(csv)


def test_cli_compare_tables_and_validate(jobs, tmp_path, capsys):
    from defectbench import cli

    root, paths = jobs
    out = tmp_path / "tables"
    tables.write_tables(paths, out, root=root, paper_datasets=PAPER_DATASETS)
    assert cli.main(["compare", "--tables-dir", str(out), "--stage", "classification", "--metric", "accuracy"]) == 0
    text = capsys.readouterr().out
    simclr = next(l for l in text.splitlines() if "simclr" in l)
    assert "0.9200 ± 0.0200 (n=3)" in simclr
    assert cli.main(["compare", "--tables-dir", str(out), "--stage", "anomaly", "--method", "patchcore",
                     "--format", "csv"]) == 0
    csv_lines = capsys.readouterr().out.strip().splitlines()
    assert csv_lines[0].startswith("dataset,scorer") and len(csv_lines) == 3  # bottle + screw
    assert cli.main(["compare", "--tables-dir", str(out), "--stage", "classification", "--metric", "nope"]) == 2
    assert "no such metric" in capsys.readouterr().err
    assert cli.main(["compare", "--tables-dir", str(tmp_path / "none")]) == 2
    assert cli.main(["validate-config", str(PUBLISHED_DIR.parent / "config.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {x: {layout: nope}}\n")
    assert cli.main(["validate-config", str(bad)]) == 2
    assert "config key datasets.x" in capsys.readouterr().err


def test_rows_carry_the_code_fingerprint_and_compare_says_when_it_differs(tmp_path, capsys):
    from defectbench import cli

    keys = {"dataset": "neu", "backbone": "resnet18", "labels_pct": 100}
    paths = [_job(tmp_path, f"results/probe/{m}/neu/resnet18/seed{s}/labels100", "classification",
                  {**keys, "method": m, "seed": s}, {"accuracy": 0.9}, code=code)
             for m, s, code in (("simclr", 0, "aaaaaaaaaaaa"), ("simclr", 1, "aaaaaaaaaaaa"), ("dcl", 0, "bbbbbbbbbbbb"))]
    out = tmp_path / "tables"
    tables.write_tables(paths, out, root=tmp_path)
    cls = pd.read_parquet(out / "classification.parquet")
    assert sorted(cls["code_fingerprint"]) == ["aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert cli.main(["compare", "--tables-dir", str(out), "--stage", "classification", "--metric", "accuracy",
                     "--format", "csv"]) == 0
    captured = capsys.readouterr()
    rows = pd.read_csv(io.StringIO(captured.out))
    assert dict(zip(rows["method"], rows["code"])) == {"dcl": "bbbbbbbbbbbb", "simclr": "aaaaaaaaaaaa"}
    assert "different code (aaaaaaaaaaaa, bbbbbbbbbbbb)" in captured.err
    # same code everywhere: no note
    assert cli.main(["compare", "--tables-dir", str(out), "--stage", "classification", "--method", "simclr"]) == 0
    assert "different code" not in capsys.readouterr().err


def test_the_shared_markdown_helpers():
    """seed_stats / format_stat / markdown_table: what tables.py, claims.py, cli.py and reference.py render with."""
    assert tables.seed_stats(pd.Series([0.90, None, 0.94])) == pytest.approx((0.92, 0.02 * math.sqrt(2), 2))  # sd of .90, .94
    mean, std, n = tables.seed_stats(pd.Series([0.5]))
    assert (mean, n) == (0.5, 1) and math.isnan(std)
    assert math.isnan(tables.seed_stats(pd.Series([None], dtype=float))[0])
    assert tables.format_stat(0.92, 0.0282843, 2) == "0.9200 ± 0.0283 (n=2)"
    assert tables.format_stat(0.5, 0.1, 1) == "0.5000 (n=1)"  # one seed: no spread shown
    assert tables.format_stat(0.92, 0.0282843, digits=3) == "0.920 ± 0.028"
    assert tables.format_stat(0.5, digits=3) == "0.500"
    assert tables.format_stat(math.nan, 0.1, 3) == "—"
    assert tables.markdown_table(["a", "b"], [["1", "2"], ["3", "4"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |"
