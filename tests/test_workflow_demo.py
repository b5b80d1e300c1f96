"""The embedded demo, run for real: all four tables, no comparisons (no paper_dataset), MLflow store, figures, report.

One real `snakemake --cores 2` run of config/config.yaml (ELPV from its PyPI package, tiny sizes)
in a temporary working copy; the tests below inspect what it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import snakemake, working_copy

pytestmark = pytest.mark.slow

TABLES = ("classification", "anomaly", "clustering", "pretraining")
COMMON_COLUMNS = {"dataset", "seed", "protocol", "config_hash", "device", "wall_time_s"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    project = working_copy(tmp_path_factory.mktemp("demo"))
    snakemake(project, "--cores", "2", "--configfile", "config/config.yaml", timeout=1800)
    return project


def _metrics_files(project: Path) -> list[Path]:
    """Every job's metrics.json (not the copies MLflow keeps as artifacts)."""
    results = project / "results"
    return sorted(p for p in results.rglob("metrics.json") if "mlartifacts" not in p.relative_to(results).parts)


def test_all_four_tables_with_schema(demo):
    for name in TABLES:
        df = pd.read_parquet(demo / "results" / "tables" / f"{name}.parquet")
        assert len(df) > 0, name
        assert COMMON_COLUMNS <= set(df.columns), (name, sorted(df.columns))
        assert set(df["protocol"]) == {"clean"}
        assert (df["device"] == "cpu").all()


def test_every_job_appears_exactly_once(demo):
    by_stage: dict[str, int] = {}
    for path in _metrics_files(demo):
        stage = json.loads(path.read_text())["stage"]
        by_stage[stage] = by_stage.get(stage, 0) + 1
    for name in TABLES:
        df = pd.read_parquet(demo / "results" / "tables" / f"{name}.parquet")
        assert len(df) == by_stage.get(name, 0), name
        assert not df.duplicated(subset=[c for c in df.columns if c in ("path",)] or None).any()


def test_demo_covers_every_stage(demo):
    cls = pd.read_parquet(demo / "results" / "tables" / "classification.parquet")
    assert {"simclr", "diffcl", "supcon", "supervised"} <= set(cls["method"])
    # the budget curve's DiffCL points trained with the main grid's diffusion views (without them
    # DiffCL refuses to train)
    points = cls[cls["budget_epochs"].notna()]
    assert sorted(zip(points["method"], points["budget_epochs"])) == [("diffcl", 1.0), ("diffcl", 2.0)]
    anomaly = pd.read_parquet(demo / "results" / "tables" / "anomaly.parquet")
    assert {"knn", "mahalanobis", "mahalanobis_shrinkage", "cosine", "patchcore", "ddad"} <= set(anomaly["scorer"])
    clus = pd.read_parquet(demo / "results" / "tables" / "clustering.parquet")
    assert {"unsupervised", "supervised", "average"} <= set(clus["weighting"])
    pre = pd.read_parquet(demo / "results" / "tables" / "pretraining.parquet")
    assert {"simclr", "diffcl", "supcon", "ddpm"} <= set(pre["method"])


def test_comparison_tables_and_markdown(demo):
    tables = demo / "results" / "tables"
    # the demo's ELPV entry declares no paper_dataset: no published numbers, so no comparison tables
    assert sorted(tables.glob("comparison_*")) == []


def test_mlflow_store_has_one_run_per_job(demo):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{demo / 'results' / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = [r for e in experiments for r in client.search_runs([e.experiment_id], max_results=5000)]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == len(_metrics_files(demo))


# Every figure family the demo's results allow.
DEMO_FIGURES = {
    "anomaly-maps--elpv-ddad-efficientnet_lite0.png", "anomaly-maps--elpv-patchcore-resnet18.png", "budget--elpv.png",
    "confusion--elpv-labels100.png", "failures--elpv-anomaly.png", "failures--elpv-classification.png",
    "gradcam--elpv.png", "label-efficiency--elpv.png", "roc-pr--elpv.png", "score-hist--elpv.png", "tsne--elpv.png",
}


def test_figures_and_report(demo):
    assert {p.name for p in (demo / "results" / "figures").glob("*.png")} == DEMO_FIGURES
    # the figures read only files their rule declares, and none was missing
    assert "drawn without" not in (demo / "logs" / "figures" / "figures.log").read_text()
    snakemake(demo, "--cores", "1", "--configfile", "config/config.yaml", "--report", "results/report.html", timeout=600)
    html = (demo / "results" / "report.html").read_text(errors="replace")
    assert "classification" in html.lower()


def test_unchanged_rerun_does_nothing(demo):
    proc = snakemake(demo, "--cores", "2", "--configfile", "config/config.yaml", "-n", timeout=300)
    assert "Nothing to be done" in proc.stdout + proc.stderr
