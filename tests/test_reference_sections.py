"""Sections of the reference README that depend on what a run holds: the budget curve's table, and
the paper sections of datasets the run left out (no comparison table: no section)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from defectbench import reference
from defectbench.claims import evaluate_claims, load_claims


ROOT = Path(__file__).resolve().parents[1]


def _classification(tmp_path):
    rows = []
    for seed, (acc_5, acc_60, acc_main, acc_random, acc_sup) in enumerate(
            [(.50, .70, .60, .40, .90), (.52, .74, .62, .44, .92), (.54, .72, .64, .42, .94)]):
        common = {"dataset": "neu", "labels_pct": 100.0, "seed": seed, "macro_f1": 0.5}
        rows += [
            {**common, "method": "simclr", "budget_epochs": 5.0, "image_size": 64.0, "pretrain_steps": 35.0, "accuracy": acc_5},
            {**common, "method": "diffcl", "budget_epochs": 5.0, "image_size": 64.0, "pretrain_steps": 35.0, "accuracy": acc_5 - .1},
            {**common, "method": "simclr", "budget_epochs": 60.0, "image_size": 64.0, "pretrain_steps": 420.0, "accuracy": acc_60},
            {**common, "method": "simclr", "pretrain_steps": 210.0, "accuracy": acc_main},
            {**common, "method": "random", "pretrain_steps": 0.0, "accuracy": acc_random},
            {**common, "method": "supervised", "train_steps": 140.0, "accuracy": acc_sup},
            {**common, "method": "simclr", "labels_pct": 10.0, "pretrain_steps": 210.0, "accuracy": 0.1},  # not on the curve
        ]
    tables_dir = tmp_path / "tables"
    tables_dir.mkdir()
    pd.DataFrame(rows).to_parquet(tables_dir / "classification.parquet")
    return tables_dir


def test_budget_section_orders_points_by_steps_and_adds_controls(tmp_path):
    body = reference.budget_section(_classification(tmp_path))
    lines = body.splitlines()[2:]
    # per method its points by steps (its main-grid run among them), then the controls once
    assert [line.split(" | ")[1] for line in lines] == [
        "diffcl, 5 epochs at 64 px (budget point)",
        "simclr, 5 epochs at 64 px (budget point)", "simclr, main grid", "simclr, 60 epochs at 64 px (budget point)",
        "random-init control", "supervised baseline"]
    # steps, then mean ± std over the three seeds of the 100%-label rows only
    assert lines[0].split(" | ")[2:4] == ["35", "0.420 ± 0.020"]
    assert lines[1].split(" | ")[2:5] == ["35", "0.520 ± 0.020", "0.500 ± 0.000"]
    assert lines[3].split(" | ")[2:4] == ["420", "0.720 ± 0.020"]
    assert lines[5].split(" | ")[2:4] == ["140", "0.920 ± 0.020"]
    assert all(line.endswith("| 3 |") for line in lines)


def test_no_budget_rows_no_budget_section(tmp_path):
    tables_dir = _classification(tmp_path)
    df = pd.read_parquet(tables_dir / "classification.parquet")
    df.drop(columns=["budget_epochs"]).to_parquet(tables_dir / "classification.parquet")
    assert reference.budget_section(tables_dir) is None


def test_paper_sections_need_their_comparison_tables(tmp_path):
    tables_dir = _classification(tmp_path)
    clustering = pd.DataFrame({"dataset": "magnetic_tile", "weighting": ["unsupervised"] * 3, "features": "patchcore",
                               "seed": [0, 1, 2], "nmi": [.1, .2, .3], "ari": .1, "f1": .4})
    clustering.to_parquet(tables_dir / "clustering.parquet")
    pd.DataFrame({"dataset": "magnetic_tile", "scorer": "knn", "features": "simclr", "backbone": "resnet18",
                  "seed": [0, 1, 2], "image_auroc": .6}).to_parquet(tables_dir / "anomaly.parquet")
    sections = reference.render_sections(tables_dir)
    # no comparison_* table: no DiffCL, seed-002 or MVTec section; our own tables still render
    assert set(sections) == {"label-efficiency", "budget", "anomaly", "clustering"}
    header = sections["clustering"].splitlines()[0]
    assert header == "| weighting | metric | ours magnetic_tile |"
    assert "| unsupervised | NMI | 0.200 ± 0.100 |" in sections["clustering"]
    with pytest.raises(Exception, match="comparison_diffcl_neu.parquet: table missing"):
        reference.diffcl_section(tables_dir, "diffcl_neu")


def test_best_label_free_encoder_vs_its_random_control_is_computed_from_the_claims(tmp_path):
    claims = [c for c in load_claims(ROOT / "config" / "published" / "claims.yaml")
              if c["paper"] == reference.CONTROL_PAPER]
    assert {c["method"]["method"] for c in claims} == {"simclr", "dcl", "hcl", "adnce", "decoupled", "gca", "diffcl"}
    acc = {"random": [.70, .72, .71], "simclr": [.74, .77, .75], "dcl": [.71, .70, .73], "supcon": [.95, .96, .97]}
    rows = [{"dataset": "neu", "protocol": "clean", "labels_pct": 100.0, "method": m, "seed": s, "accuracy": a}
            for m, accs in acc.items() for s, a in enumerate(accs)]
    table = evaluate_claims(claims, {"classification": pd.DataFrame(rows)})
    line = reference.best_vs_control_section(table)
    # supcon uses labels: not among the compared; simclr's mean 0.7533 beats dcl's; paired d = .04, .05, .04
    assert line == ("* **neu**: the best label-free encoder by mean accuracy (2 compared), simclr (0.753 over 3 seeds), "
                    "beats random-init features (0.710) at this budget: Δ +0.043, one-sided 95% lower bound +0.034 "
                    "(**holds**).")
    # with the control above every encoder the answer is a plain no
    rows = [r | {"accuracy": r["accuracy"] + .1} if r["method"] == "random" else r for r in rows]
    line = reference.best_vs_control_section(evaluate_claims(claims, {"classification": pd.DataFrame(rows)}))
    assert "simclr (0.753 over 3 seeds), does **not** beat random-init features (0.810)" in line
    assert line.endswith("(**does not hold**).")


def test_random_init_rows_of_patchcore_ddad_and_clustering_are_shown_as_controls(tmp_path):
    """The random-init backbone's rows: their own anomaly rows (features random), never in the
    PatchCore / DDAD numbers beside the papers', and listed apart after clustering's main rows."""
    tables_dir = tmp_path / "tables"
    tables_dir.mkdir()
    lite = "efficientnet_lite0"
    anomaly = pd.DataFrame(
        [{"dataset": "magnetic_tile", "scorer": sc, "features": f, "backbone": lite, "seed": s, "image_auroc": v + .02 * s}
         for s in range(3) for sc, f, v in (("patchcore", lite, .80), ("patchcore", "random", .50),
                                             ("ddad", lite, .60), ("ddad", "random", .40))])
    anomaly.to_parquet(tables_dir / "anomaly.parquet")
    clustering = pd.DataFrame(
        [{"dataset": "magnetic_tile", "weighting": "average", "features": f, "backbone": b, "seed": s,
          "nmi": v + step * s, "ari": .1, "f1": .4}
         for s in range(3) for f, b, v, step in ((lite, lite, .30, .1), ("random", lite, .10, .1), ("oracle", None, 1.0, 0))])
    clustering.to_parquet(tables_dir / "clustering.parquet")
    rows = [line.split(" | ") for line in reference.anomaly_section(tables_dir).splitlines()[2:]]
    # by hand: mean of v, v + .02, v + .04 = v + .02, sample std .02
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("PatchCore", lite, "0.820 ± 0.020"), ("PatchCore", "random", "0.520 ± 0.020"),
        ("DDAD", lite, "0.620 ± 0.020"), ("DDAD", "random", "0.420 ± 0.020")]
    assert reference._anomaly_ours(anomaly, "magnetic_tile", {"scorer": "patchcore"}, "image_auroc") == pytest.approx(.82)
    assert reference._anomaly_ours(anomaly, "magnetic_tile", {"scorer": "ddad"}, "image_auroc") == pytest.approx(.62)
    lines = reference.clustering_section(tables_dir).splitlines()[2:]
    nmi = [line for line in lines if "| NMI |" in line]
    # main rows: the real features only (.30, .40, .50 -> 0.400 ± 0.100); then oracle, then random init
    assert "| average | NMI | 0.400 ± 0.100 |" in nmi
    assert nmi[-2:] == ["| average, oracle features (positive control) | NMI | 1.000 ± 0.000 |",
                        f"| average, random-init {lite} features (random-init control) | NMI | 0.200 ± 0.100 |"]
