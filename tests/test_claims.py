"""The claims table: verdicts computed by the stated rule, checked against hand-computed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from defectbench import claims as claims_mod
from defectbench import tables
from defectbench.claims import evaluate_claim, evaluate_claims, load_claims, paired_bounds, write_claims
from defectbench.runtime import DefectbenchError, write_metrics

ROOT = Path(__file__).resolve().parents[1]
T95_2 = 2.919986  # Student t, one-sided 95%, 2 degrees of freedom
ACCURACY = {  # seeds 0, 1, 2
    "diffcl": [0.80, 0.82, 0.78],
    "simclr": [0.70, 0.74, 0.71],
    "supcon": [0.72, 0.70, 0.69],
    "gca": [0.50, 0.55, 0.47],
    "random": [0.50, 0.52, 0.49],
}


def _claim(cid, method, baseline, control="random", direction="higher", **extra):
    out = {"id": cid, "paper": "test", "claim": f"{method} vs {baseline}", "table": "classification",
           "datasets": ["neu"], "metric": "accuracy", "direction": direction, "method": {"method": method},
           "baseline": {"method": baseline}, "where": {"labels_pct": 100}}
    if control:
        out["control"] = {"method": control}
    out.update(extra)
    return out


def _classification_table():
    rows = [{"dataset": "neu", "method": m, "labels_pct": 100.0, "seed": s, "protocol": "clean", "accuracy": v}
            for m, vals in ACCURACY.items() for s, v in enumerate(vals)]
    # rows that must not count: another label fraction, the faithful protocol, another dataset
    rows += [{"dataset": "neu", "method": "gca", "labels_pct": 10.0, "seed": s, "protocol": "clean", "accuracy": 0.99}
             for s in range(3)]
    rows += [{"dataset": "neu", "method": "gca", "labels_pct": 100.0, "seed": s, "protocol": "faithful", "accuracy": 0.99}
             for s in range(3)]
    rows += [{"dataset": "pcb", "method": "simclr", "labels_pct": 100.0, "seed": s, "protocol": "clean", "accuracy": 0.1}
             for s in range(3)]
    return pd.DataFrame(rows)


def test_paired_bounds_by_hand():
    n, mean, sd, lo, hi = paired_bounds(pd.Series(ACCURACY["diffcl"]), pd.Series(ACCURACY["simclr"]), 1.0)
    # d = .10, .08, .07: mean .083333, sd sqrt(.00023333 ... ) = .0152753
    assert n == 3 and mean == pytest.approx(0.0833333, abs=1e-6) and sd == pytest.approx(0.0152753, abs=1e-6)
    half = T95_2 * 0.0152753 / math.sqrt(3)
    assert lo == pytest.approx(0.0833333 - half, abs=1e-5) and hi == pytest.approx(0.0833333 + half, abs=1e-5)
    # only seeds both sides ran are paired
    n1, *_ = paired_bounds(pd.Series([1.0, 2.0], index=[0, 5]), pd.Series([0.0, 0.0, 0.0], index=[0, 1, 2]), 1.0)
    assert n1 == 1


def test_verdicts_follow_the_rule():
    table = _classification_table()
    claims = [
        _claim("holds", "diffcl", "simclr"),
        _claim("lower_direction", "simclr", "diffcl", control=None, direction="lower"),
        _claim("not_above_control", "gca", "simclr"),
        _claim("within_noise", "supcon", "simclr"),
        _claim("opposite", "simclr", "diffcl"),
        _claim("missing_method", "fairkl", "simclr"),
        _claim("missing_control", "diffcl", "simclr", control="pretrained"),
    ]
    df = evaluate_claims(claims, {"classification": table}).set_index("claim_id")
    assert list(df.columns) == [c for c in claims_mod.CLAIM_COLUMNS if c != "claim_id"]

    r = df.loc["holds"]
    assert r["verdict"] == "holds" and r["n_seeds"] == 3
    assert r["method_mean"] == pytest.approx(0.80) and r["baseline_mean"] == pytest.approx(0.7166667, abs=1e-6)
    assert r["diff_lower"] == pytest.approx(0.0575813, abs=1e-5)
    # diffcl - random = .30, .30, .29: the control is beaten
    assert r["control_mean"] == pytest.approx(0.5033333, abs=1e-6) and r["control_diff_mean"] == pytest.approx(0.2966667, abs=1e-6)
    assert r["control_diff_lower"] > 0

    r = df.loc["lower_direction"]  # "simclr is lower than diffcl": the same differences, same bound
    assert r["verdict"] == "holds" and r["diff_lower"] == pytest.approx(0.0575813, abs=1e-5) and r["control"] == ""

    r = df.loc["not_above_control"]  # gca - random = 0, .03, -.02: mean .0033, lower bound < 0
    assert r["verdict"] == "not testable" and "does not beat its control" in r["reason"]
    assert r["control_diff_mean"] == pytest.approx(0.0033333, abs=1e-6)
    assert r["method_mean"] == pytest.approx(0.5066667, abs=1e-6)  # the 10% and faithful rows did not count

    r = df.loc["within_noise"]  # supcon - simclr = .02, -.04, -.02
    assert r["verdict"] == "does not hold" and "opposite" not in r["reason"]
    assert r["diff_mean"] == pytest.approx(-0.0133333, abs=1e-6) and r["diff_sd"] == pytest.approx(0.0305505, abs=1e-6)
    assert r["diff_upper"] == pytest.approx(-0.0133333 + T95_2 * 0.0305505 / math.sqrt(3), abs=1e-5)

    r = df.loc["opposite"]  # simclr vs diffcl: simclr beats random, but diffcl is significantly better
    assert r["verdict"] == "does not hold" and "the opposite holds" in r["reason"]

    assert df.loc["missing_method", "verdict"] == "not testable"
    assert "no method rows" in df.loc["missing_method", "reason"]
    assert df.loc["missing_control", "verdict"] == "not testable" and "control did not run" in df.loc["missing_control", "reason"]


def test_budget_curve_points_count_only_for_claims_about_them():
    """A budget curve's SimCLR points (more epochs: here far better) are not SimCLR's table row."""
    table = _classification_table()
    budget = pd.DataFrame([{"dataset": "neu", "method": "simclr", "labels_pct": 100.0, "seed": s, "protocol": "clean",
                            "accuracy": 0.95, "budget_epochs": 40, "image_size": 64} for s in range(3)])
    table = pd.concat([table, budget], ignore_index=True)
    table["budget_epochs"] = table["budget_epochs"].astype("Int64")
    df = evaluate_claims([_claim("main", "diffcl", "simclr"),
                          _claim("budget", "simclr", "diffcl", where={"labels_pct": 100, "budget_epochs": 40})],
                         {"classification": table}).set_index("claim_id")
    assert df.loc["main", "baseline_mean"] == pytest.approx(0.7166667, abs=1e-6) and df.loc["main", "verdict"] == "holds"
    # a claim about the 40-epoch point reads it: simclr 0.95 vs diffcl's (non-budget) rows... none at 40 epochs
    assert df.loc["budget", "method_mean"] == pytest.approx(0.95) and df.loc["budget", "verdict"] == "not testable"


def test_a_method_below_its_control_is_not_testable_even_when_it_beats_the_baseline():
    """gca beats a weaker baseline by a wide margin, but not its random control: not testable."""
    table = _classification_table()
    weak = pd.DataFrame([{"dataset": "neu", "method": "weak", "labels_pct": 100.0, "seed": s, "protocol": "clean",
                          "accuracy": v} for s, v in enumerate([0.20, 0.22, 0.21])])
    df = evaluate_claims([_claim("c", "gca", "weak")], {"classification": pd.concat([table, weak])})
    r = df.iloc[0]
    assert r["diff_lower"] > 0.2 and r["control_diff_lower"] < 0
    assert r["verdict"] == "not testable" and "does not beat its control" in r["reason"]


def test_one_seed_is_not_testable_and_datasets_give_one_row_each():
    table = _classification_table()
    table = table[(table["seed"] == 0) | (table["dataset"] == "pcb")]
    df = evaluate_claims([_claim("one", "diffcl", "simclr", datasets=["neu", "pcb"])], {"classification": table})
    assert list(df["dataset"]) == ["neu", "pcb"]
    assert df.loc[0, "verdict"] == "not testable" and "1 paired seed" in df.loc[0, "reason"]
    assert df.loc[1, "verdict"] == "not testable" and "no method rows" in df.loc[1, "reason"]


def test_load_claims_errors_name_the_file_and_claim(tmp_path):
    path = tmp_path / "claims.yaml"
    good = _claim("a", "diffcl", "simclr")
    path.write_text(yaml.safe_dump({"claims": [good]}))
    assert load_claims(path)[0]["id"] == "a"
    cases = [
        ({"claims": [{**good, "metirc": "x"}]}, "claim a: unknown key(s) metirc"),
        ({"claims": [{k: v for k, v in good.items() if k != "baseline"}]}, "claim a: missing key(s) baseline"),
        ({"claims": [good, good]}, "claim a: duplicate id"),
        ({"claims": [{**good, "direction": "up"}]}, "direction 'up'"),
        ({"claims": [{**good, "datasets": "neu"}]}, "datasets must be a non-empty list"),
        ({"claims": [{**good, "method": "diffcl"}]}, "method must be a mapping"),
        ({"claim": []}, "top-level 'claims:' list"),
    ]
    for doc, message in cases:
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(DefectbenchError, match=rf"^{path}: .*{message.replace('(', '[(]').replace(')', '[)]')}"):
            load_claims(path)
    with pytest.raises(DefectbenchError, match="claims file not found"):
        load_claims(tmp_path / "none.yaml")


def test_committed_claims_file_refers_to_real_tables_and_metrics():
    claims = load_claims(ROOT / "config" / "published" / "claims.yaml")
    assert len(claims) >= 8
    for c in claims:
        assert c["table"] in tables.STAGES
        assert c["metric"] in tables.EXPECTED_METRICS[c["table"]], c["id"]
        for side in ("method", "baseline", "control", "where"):
            assert set(c.get(side) or {}) <= set(tables.KEY_COLUMNS[c["table"]]) | {"protocol"}, (c["id"], side)


def test_write_claims_from_metrics_files_and_markdown_regenerates(tmp_path):
    """End to end as aggregate runs it: metrics.json files -> stage tables -> claims Parquet + Markdown."""
    paths = []
    for method, vals in ACCURACY.items():
        for seed, acc in enumerate(vals):
            path = tmp_path / "results" / "probe" / method / f"seed{seed}" / "metrics.json"
            write_metrics(path, stage="classification", metrics={"accuracy": acc}, config={"protocol": "clean"},
                          keys={"dataset": "neu", "method": method, "backbone": "resnet18", "seed": seed,
                                "labels_pct": 100.0}, device="cpu", wall_time_s=1.0)
            paths.append(path)
    out = tmp_path / "tables"
    tables.write_tables(paths, out, root=tmp_path)
    claims_file = tmp_path / "claims.yaml"
    claims_file.write_text(yaml.safe_dump({"claims": [_claim("holds", "diffcl", "simclr"),
                                                      _claim("gca", "gca", "simclr")]}))
    parquet = write_claims(claims_file, out)
    df = pd.read_parquet(parquet)
    assert list(df["verdict"]) == ["holds", "not testable"]
    md = (out / "claims.md").read_text()
    assert md == tables.render_markdown(parquet)  # regenerated from the Parquet file alone
    assert claims_mod.RULE in md and "**holds**" in md and "**not testable**" in md
    assert (out / "claims.html").read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(DefectbenchError, match="stage table missing"):
        write_claims(claims_file, tmp_path / "empty")


def test_reference_readme_leads_with_the_claims_table_once_a_run_has_one(tmp_path):
    """The committed reference tables without their claims table and without the random-init
    control rows (as a run before issue 16 had them)."""
    from defectbench import reference

    committed = ROOT / "results" / "reference" / "tables"
    tables_dir = tmp_path / "tables"
    tables_dir.mkdir()
    for parquet in committed.glob("*.parquet"):
        if parquet.stem != "claims":
            (tables_dir / parquet.name).write_bytes(parquet.read_bytes())
    for stage, column in (("classification", "method"), ("anomaly", "features"), ("clustering", "features")):
        df = pd.read_parquet(tables_dir / f"{stage}.parquet")
        df[df[column].astype("string") != "random"].to_parquet(tables_dir / f"{stage}.parquet")
    assert "claims" not in reference.render_sections(tables_dir)
    write_claims(ROOT / "config" / "published" / "claims.yaml", tables_dir)
    sections = reference.render_sections(tables_dir)
    assert list(sections)[0] == "claims"
    df = pd.read_parquet(tables_dir / "claims.parquet")
    # no control rows: every claim that names a control (and whose sides ran) is not testable
    named = df[(df["control"] != "") & df["method_mean"].notna() & df["baseline_mean"].notna()]
    assert len(named) and (named["verdict"] == "not testable").all()
    assert named["reason"].str.contains("control did not run").all()
    assert sections["claims"] == claims_mod.claims_table_markdown(df)


def _job_with_predictions(root, method, seed, correct):
    """A probe job on 20 test images (10 per class) whose predictions are right where ``correct``."""
    out = root / "results" / "probe" / method / f"seed{seed}"
    y = np.repeat([0, 1], 10)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"row": np.arange(20), "y_true": y, "y_pred": np.where(correct, y, 1 - y)}).to_parquet(
        out / "predictions.parquet")
    write_metrics(out / "metrics.json", stage="classification", metrics={"accuracy": float(np.mean(correct))},
                  config={"protocol": "clean"}, keys={"dataset": "neu", "method": method, "backbone": "resnet18",
                                                      "seed": seed, "labels_pct": 100.0}, device="cpu", wall_time_s=1.0)
    return out / "metrics.json"


def test_bootstrap_over_test_images_can_overrule_agreeing_seeds(tmp_path):
    # every seed: "base" is right on images 0-9, "strong" on 0-14, "close" on 1-11: paired
    # differences 5/20 and 1/20 on every seed (seed sd 0, the seed bound equals the mean)
    idx = np.arange(20)
    correct = {"strong": idx < 15, "close": (idx >= 1) & (idx <= 11), "base": idx < 10}
    paths = [_job_with_predictions(tmp_path, m, s, c) for m, c in correct.items() for s in range(3)]
    out = tmp_path / "tables"
    tables.write_tables(paths, out, root=tmp_path)
    table = pd.read_parquet(out / "classification.parquet")
    claims = [_claim("strong", "strong", "base", control=None), _claim("close", "close", "base", control=None)]
    df = evaluate_claims(claims, {"classification": table}, root=tmp_path).set_index("claim_id")
    assert df.loc["strong", "diff_lower"] == pytest.approx(0.25) and df.loc["close", "diff_lower"] == pytest.approx(0.05)
    # strong: 5 discordant images per seed always favour it; the resampled difference is > 0 unless
    # every seed's resample misses all 5 of them
    assert df.loc["strong", "verdict"] == "holds" and df.loc["strong", "boot_lower"] > 0.1
    # close: 3 discordant images per seed (2 for it, 1 against): the resampled difference per seed,
    # (n10 + n11 - n0) / 20 with counts ~ Binomial(10, .1), has sd ~.08; the mean over 3 seeds ~.05
    # ± .047, so its 5th percentile is below 0 while every seed agrees
    assert df.loc["close", "boot_lower"] < 0 < 0.05 < df.loc["close", "boot_upper"]
    assert df.loc["close", "verdict"] == "does not hold" and "not the test images" in df.loc["close", "reason"]
    # without the job files (no root) only the seed rule speaks
    no_files = evaluate_claims(claims, {"classification": table}).set_index("claim_id")
    assert no_files["boot_lower"].isna().all() and (no_files["verdict"] == "holds").all()


def _tables_with_claims(tmp_path):
    """The committed reference tables plus a claims table evaluated on them."""
    committed = ROOT / "results" / "reference" / "tables"
    tables_dir = tmp_path / "tables"
    tables_dir.mkdir()
    for parquet in committed.glob("*.parquet"):
        (tables_dir / parquet.name).write_bytes(parquet.read_bytes())
    write_claims(ROOT / "config" / "published" / "claims.yaml", tables_dir)
    return tables_dir


def test_reference_readme_must_lead_with_the_claims_marker(tmp_path):
    from defectbench import reference

    tables_dir = _tables_with_claims(tmp_path)
    sections = reference.render_sections(tables_dir)
    others = "".join(f"<!-- generated:{n} -->\nold\n<!-- /generated:{n} -->\n\n" for n in sections if n != "claims")
    readme = tmp_path / "README.md"
    readme.write_text("# Reference\n\n" + others)  # no claims marker: the verdicts would not be shown
    with pytest.raises(DefectbenchError, match="no marker for generated section.*claims"):
        reference.update_readme(readme, tables_dir)
    readme.write_text("# Reference\n\n" + others + "<!-- generated:claims -->\n<!-- /generated:claims -->\n")
    with pytest.raises(DefectbenchError, match="claims table must be the first"):
        reference.update_readme(readme, tables_dir)
    with pytest.raises(DefectbenchError, match="claims table must be the first"):
        reference.main([str(tmp_path), "--check"])
    readme.write_text("# Reference\n\n<!-- generated:claims -->\n<!-- /generated:claims -->\n\n" + others)
    assert reference.update_readme(readme, tables_dir)
    text = readme.read_text()
    assert reference.readme_sections(text)["claims"] == sections["claims"]
    assert text.index("generated:claims") < text.index("generated:diffcl-neu")


def test_determinism_note_names_the_accuracy_claims_within_the_machine_spread(tmp_path):
    from defectbench import reference

    tables_dir = _tables_with_claims(tmp_path)
    df = pd.read_parquet(tables_dir / "claims.parquet")
    acc = df[(df["metric"] == "accuracy") & df["diff_mean"].notna()]
    small, large = acc["diff_mean"].abs().min(), acc["diff_mean"].abs().max()
    runs = [{"threads": 1, "isa": "native"}, {"threads": 2, "isa": "avx2"}]
    record = {"job": "tiny", "runs": runs, "summary": {
        "accuracy_spread": (small + large) / 2, "loss_spread": 0.05, "accuracy_tolerance": 0.01,
        "loss_tolerance": 0.01, "sensitive": True}}
    (tables_dir / "determinism.json").write_text(json.dumps(record))
    note = reference.render_sections(tables_dir)["determinism"]
    assert list(reference.render_sections(tables_dir))[:2] == ["claims", "determinism"]
    assert "**sensitive**" in note and "1 thread(s)/native, 2 thread(s)/avx2" in note
    within = acc[acc["diff_mean"].abs() <= (small + large) / 2]
    assert 0 < len(within) < len(acc)
    for _, r in within.iterrows():
        assert f"{r['claim']} on {r['dataset']} (Δ {r['diff_mean']:+.4f})" in note
    for _, r in acc.drop(within.index).iterrows():
        assert f"(Δ {r['diff_mean']:+.4f})" not in note
    # within tolerance: no claim is flagged
    record["summary"]["sensitive"] = False
    (tables_dir / "determinism.json").write_text(json.dumps(record))
    note = reference.render_sections(tables_dir)["determinism"]
    assert "within the tolerance" in note and "Claims whose" not in note


def test_reference_clustering_section_shows_the_oracle_control_apart(tmp_path):
    from defectbench import reference

    tables_dir = tmp_path / "tables"
    tables_dir.mkdir()
    committed = ROOT / "results" / "reference" / "tables"
    for parquet in committed.glob("*.parquet"):
        (tables_dir / parquet.name).write_bytes(parquet.read_bytes())
    clustering = pd.read_parquet(tables_dir / "clustering.parquet")
    clustering = clustering[~tables.is_control_row(clustering)]  # the real-feature rows only
    clustering.to_parquet(tables_dir / "clustering.parquet")
    before = reference.clustering_section(tables_dir)
    oracle = clustering.copy()
    oracle["features"] = "oracle"
    for metric in ("nmi", "ari", "f1"):
        oracle[metric] = 1.0
    pd.concat([clustering, oracle], ignore_index=True).to_parquet(tables_dir / "clustering.parquet")
    after = reference.clustering_section(tables_dir)
    assert after.startswith(before)  # the real-feature rows are unchanged (the control is not averaged in)
    added = after[len(before):].strip().splitlines()
    assert len(added) == 3 * len(set(clustering["weighting"]))
    assert all("oracle features (positive control)" in line and "1.000 ± 0.000" in line for line in added)


def test_positive_control_rows_are_no_side_of_a_claim():
    """The clustering oracle (NMI 1 by construction) must not lift the weighting it ran with."""
    rows = [{"dataset": "mt", "protocol": "clean", "seed": s, "weighting": w, "features": f, "nmi": v}
            for s in range(3) for w, f, v in (("supervised", "lite0", .30 + .01 * s), ("average", "lite0", .32),
                                              ("supervised", "oracle", 1.0), ("average", "oracle", 1.0))]
    claim = {"id": "c", "paper": "p", "claim": "sup > avg", "table": "clustering", "datasets": ["mt"],
             "metric": "nmi", "direction": "higher", "method": {"weighting": "supervised"},
             "baseline": {"weighting": "average"}}
    row = evaluate_claim(claim, "mt", pd.DataFrame(rows))
    assert row["method_mean"] == pytest.approx(0.31) and row["baseline_mean"] == pytest.approx(0.32)
    assert row["verdict"] == "does not hold"
    # a claim about the control itself still sees it
    on_oracle = evaluate_claim({**claim, "method": {"weighting": "supervised", "features": "oracle"}}, "mt",
                               pd.DataFrame(rows))
    assert on_oracle["method_mean"] == 1.0


def test_random_init_control_rows_are_no_side_but_can_be_the_control():
    """PatchCore's random-init rows (features random) must not drag down a side that names only the
    scorer; the committed PatchCore claim's control picks exactly them."""
    rows = [{"dataset": "mt", "protocol": "clean", "seed": s, "scorer": sc, "features": f, "image_auroc": v}
            for s in range(3) for sc, f, v in (("patchcore", "lite0", .80 + .02 * s), ("patchcore", "random", .50),
                                               ("mahalanobis", "simclr", .60), ("mahalanobis", "random", .55))]
    claim = {"id": "c", "paper": "p", "claim": "pc > maha", "table": "anomaly", "datasets": ["mt"],
             "metric": "image_auroc", "direction": "higher", "method": {"scorer": "patchcore"},
             "baseline": {"scorer": "mahalanobis", "features": "simclr"},
             "control": {"scorer": "patchcore", "features": "random"}}
    row = evaluate_claim(claim, "mt", pd.DataFrame(rows))
    # by hand: method = mean(.80, .82, .84) = .82 (the random rows' .50 would make it .66)
    assert row["method_mean"] == pytest.approx(0.82) and row["control_mean"] == pytest.approx(0.50)
    assert row["control_diff_mean"] == pytest.approx(0.32) and row["verdict"] == "holds"
    committed = {c["id"]: c for c in load_claims(ROOT / "config" / "published" / "claims.yaml")}
    assert committed["patchcore_beats_simclr_mahalanobis"]["control"] == {"scorer": "patchcore", "features": "random"}
    assert committed["ddad_beats_patchcore"]["control"] == {"scorer": "ddad", "features": "random"}
    assert committed["supervised_weights_beat_average"]["control"] == {"weighting": "supervised", "features": "random"}


def test_published_comparisons_leave_out_control_rows_unless_they_name_features():
    ours = pd.DataFrame([{"dataset": "mt", "seed": s, "protocol": "clean", "scorer": "patchcore", "features": f,
                          "image_auroc": v} for s in range(2) for f, v in (("lite0", .9), ("random", .5))])
    pub = {c: "" for c in tables.PUBLISHED_COLUMNS}
    pub.update(paper="p", table="anomaly", dataset_published="x", paper_dataset="mvtec_ad/*", scorer="patchcore",
               metric="image_auroc", value=0.99)
    out = tables.compare_published(pd.DataFrame([pub]), {"anomaly": ours}, {"mt": "mvtec_ad/bottle"})
    assert out["ours"].tolist() == [pytest.approx(0.9)] and out["n_jobs"].tolist() == [2]
    on_random = tables.compare_published(pd.DataFrame([{**pub, "features": "random"}]), {"anomaly": ours},
                                         {"mt": "mvtec_ad/bottle"})
    assert on_random["ours"].tolist() == [pytest.approx(0.5)]


def test_published_comparisons_leave_out_budget_curve_points():
    # the main grid's SimCLR (0.85, 0.87) and two budget points of it (0.70, 0.72): the paper's one
    # number stands beside the main grid only (it was 0.785 with the points averaged in)
    ours = pd.DataFrame([{"dataset": "neu", "seed": s, "protocol": "clean", "method": "simclr", "labels_pct": 100.0,
                          "budget_epochs": e, "accuracy": v}
                         for s, (main, point) in enumerate([(.85, .70), (.87, .72)])
                         for e, v in ((None, main), (5.0, point))])
    pub = {c: "" for c in tables.PUBLISHED_COLUMNS}
    pub.update(paper="p", table="classification", dataset_published="NEU-CLS", paper_dataset="neu_cls", method="simclr",
               labels_pct=100, metric="accuracy", value=0.96)
    out = tables.compare_published(pd.DataFrame([pub]), {"classification": ours}, {"neu": "neu_cls"})
    assert out["ours"].tolist() == [pytest.approx(0.86)] and out["n_jobs"].tolist() == [2]
