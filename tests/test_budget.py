"""Budget curve: one config section -> a grid of methods x pretraining budgets, each probed, as table rows and a figure."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from defectbench import figures
from defectbench.config import validate_config
from defectbench.runtime import DefectbenchError
from workflow_helpers import ROOT, snakemake, working_copy, write_config

SCHEMA = ROOT / "config" / "schema.yaml"

# Real ELPV cells (PyPI package), 6 per class; SimCLR at 2 epoch counts x 2 image sizes; no other stage.
TINY = {
    "run_name": "budget-test",
    "seeds": [0],
    "label_fractions": [1.0],
    "device": "cpu",
    "datasets": {"elpv": {"source": {"kind": "pip", "package": "elpv-dataset"}, "layout": "elpv", "image_size": 16,
                          "max_per_class": 6, "tasks": ["classification"]}},
    "backbones": ["resnet18"],
    "diffusion": {"enabled": False},
    "contrastive": {"methods": ["simclr"], "epochs": 1, "batch_size": 8},
    "supervised": {"enabled": False},
    "probe": {"controls": ["random"], "augment": False},
    "anomaly": {"features": []},
    "patchcore": {"enabled": False},
    "ddad": {"enabled": False},
    "budget": {"methods": ["simclr"], "dataset": "elpv", "epochs": [1, 2], "image_sizes": [16, 24]},
}


def test_budget_config_is_checked():
    cfg = validate_config(copy.deepcopy(TINY), SCHEMA)
    assert cfg["budget"]["epochs"] == [1, 2]
    no_diffusion = {"diffusion": {"enabled": False}}
    with_diffusion = {"diffusion": {"enabled": True}}
    for patch, top, message in [
        ({"methods": ["diffcl"]}, no_diffusion, r"methods: 'diffcl' reads diffusion views; set diffusion\.enabled: true"),
        ({"methods": ["simclr", "diffcl"]}, with_diffusion,
         r"image_sizes: 'diffcl' reads the diffusion views made at datasets\.elpv\.image_size \(16 px\), not \[24\]"),
        ({"methods": ["byol"]}, {}, "methods: 'byol' is not a contrastive method"),
        ({"dataset": "mvtec"}, {}, "dataset: 'mvtec' is not a dataset with the classification task"),
    ]:
        bad = {**copy.deepcopy(TINY), **top}
        bad["budget"].update(patch)
        with pytest.raises(DefectbenchError, match=rf"^config key budget\.{message}"):
            validate_config(bad, SCHEMA)
    # DiffCL at the dataset's own size, with diffusion on: accepted
    ok = {**copy.deepcopy(TINY), **with_diffusion}
    ok["budget"].update({"methods": ["simclr", "diffcl"], "image_sizes": [16]})
    assert validate_config(ok, SCHEMA)["budget"]["methods"] == ["simclr", "diffcl"]
    with pytest.raises(DefectbenchError, match="budget"):
        validate_config({**copy.deepcopy(TINY), "budget": {"methods": ["simclr"], "dataset": "elpv", "epoch": [1]}}, SCHEMA)


def test_budget_points_and_figure_by_hand(tmp_path):
    rows = pd.DataFrame({
        "dataset": "neu", "method": "simclr", "seed": [0, 1, 0, 1],
        "image_size": [32, 32, 32, 32], "budget_epochs": [5, 5, 10, 10],
        "pretrain_steps": [50.0, 50.0, 100.0, 100.0], "accuracy": [0.5, 0.6, 0.7, 0.8],
    })
    pts = figures.budget_points(rows)
    assert pts[["budget_epochs", "pretrain_steps", "mean", "n"]].values.tolist() == [[5, 50.0, 0.55, 2.0],
                                                                                      [10, 100.0, 0.75, 2.0]]
    assert pts["std"].to_numpy() == pytest.approx([np.std([0.5, 0.6], ddof=1), np.std([0.7, 0.8], ddof=1)])
    # the run's other rows: the main-grid SimCLR (open marker), the random control and the supervised baseline
    main = pd.DataFrame({"dataset": "neu", "method": ["random", "simclr", "simclr", "supervised"], "labels_pct": 100.0,
                         "seed": [0, 0, 1, 0], "pretrain_steps": [0.0, 75.0, 75.0, None], "accuracy": [0.6, 0.6, 0.7, 0.9]})
    (png,) = figures.plot_budget_curves(rows, main, tmp_path)
    assert png.name == "budget--neu.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures.plot_budget_curves(rows.drop(columns="budget_epochs"), main, tmp_path) == []
    assert figures.plot_budget_curves(rows, pd.DataFrame(), tmp_path) == [png]  # no other rows: the curve alone


@pytest.mark.slow
def test_budget_grid_runs_for_real_and_lands_in_table_and_figure(tmp_path):
    project = working_copy(tmp_path)
    write_config(project, TINY)
    snakemake(project, "--cores", "2", "--configfile", "config/test.yaml", timeout=1200)
    table = pd.read_parquet(project / "results" / "tables" / "classification.parquet")
    points = table[table["budget_epochs"].notna()].sort_values(["image_size", "budget_epochs"])
    assert points[["image_size", "budget_epochs"]].astype(int).values.tolist() == [[16, 1], [16, 2], [24, 1], [24, 2]]
    # pretraining steps: epochs x full batches of the classification train split
    for _, row in points.iterrows():
        job = (project / row["path"]).parent.parent
        pre = json.loads((job / "pretraining.json").read_text())
        assert pre["metrics"]["epochs"] == row["budget_epochs"]
        steps = row["budget_epochs"] * (pre["metrics"]["train_images"] // pre["metrics"]["batch_size"])
        assert row["pretrain_steps"] == steps > 0
        assert row["labels_pct"] == 100.0 and row["converged"] == 1.0
    # the grid's own probes and the random control are ordinary rows, without budget keys
    others = table[table["budget_epochs"].isna()]
    assert set(others["method"]) == {"simclr", "random"}
    assert (project / "results" / "figures" / "budget--elpv.png").is_file()
    claims = pd.read_parquet(project / "results" / "tables" / "claims.parquet")
    assert set(claims["verdict"]) <= {"holds", "does not hold", "not testable"}
