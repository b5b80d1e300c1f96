"""docs/CONTRACTS.md's new-stage walkthrough, followed literally: its three code blocks (a scorer
module, its registry entry, a stage built from the stage-job helper, the split/cache reader and
the anomaly protocol) run as written on a tiny real magnetic-tile split; the metrics are checked
against values computed here by hand from the pixels."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from magnetic_tile_fixture import write_magnetic_tile  # noqa: E402

from defectbench import registry  # noqa: E402
from defectbench.anomaly.protocol import SCORES_COLUMNS  # noqa: E402

CONTRACTS = Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md"
SECTION = "## Walkthrough: a new anomaly scorer and its stage"


def walkthrough_blocks() -> list[str]:
    """The ```python blocks of the walkthrough section, in order."""
    text = CONTRACTS.read_text()
    assert SECTION in text, f"{CONTRACTS}: the walkthrough section is gone"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_walkthrough_has_the_scorer_its_registration_and_a_stage_of_the_three_parts():
    scorer, registration, stage = walkthrough_blocks()
    assert "def score_brightness" in scorer
    assert 'ANOMALY_SCORERS["brightness"]' in registration
    for used in ("stage_job(", "protocol.read_anomaly_split(", "protocol.evaluate(", "protocol.write_scores("):
        assert used in stage, used


def _pairs_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of (anomalous, nominal) pairs ordered correctly, ties one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_new_scorer_stage_runs_through_registry_and_protocol(tmp_path, monkeypatch):
    scorer_code, registration_code, stage_code = walkthrough_blocks()
    # 1. the scorer module, importable as the registry entry names it
    module = types.ModuleType("my_scorers")
    exec(compile(scorer_code, "my_scorers.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "my_scorers", module)
    # 2. its registration (the setitem first records that the name was absent: undone after the test)
    monkeypatch.setitem(registry.ANOMALY_SCORERS, "brightness", None)
    exec(compile(registration_code, "registry entry", "exec"), {})
    assert "brightness" in registry.names("anomaly_scorers")
    # 3. the stage, run on real images
    stage: dict = {}
    exec(compile(stage_code, "stage", "exec"), stage)
    paths = write_magnetic_tile(tmp_path / "data", n_free=16, n_per_defect=3, size=32)
    out = tmp_path / "brightness"
    cfg = {"device": "cpu", "protocol": "clean", "anomaly": {"threshold_quantile": 0.9}}
    record = stage["run_brightness"](cache_path=paths["cache"], split_path=paths["anomaly"],
                                     metrics_path=out / "metrics.json", scores_path=out / "scores.parquet",
                                     cfg=cfg, dataset="mt", seed=0)

    # by hand: mean grey level of each image, its distance to the train images' mean
    cache = np.load(paths["cache"])
    split = pd.read_parquet(paths["anomaly"])
    grey = {r: int(cache[r].astype(np.int64).sum()) / cache[r].size for r in split["row"]}
    rows = {name: sorted(split.loc[split["subset"] == name, "row"]) for name in ("train", "holdout", "test")}
    nominal_mean = sum(grey[r] for r in rows["train"]) / len(rows["train"])
    holdout = np.array([abs(grey[r] - nominal_mean) for r in rows["holdout"]])
    test = np.array([abs(grey[r] - nominal_mean) for r in rows["test"]])
    labels = split.set_index("row").loc[rows["test"], "label"].to_numpy()
    assert len(holdout) == 3 and len(test) == 20 and labels.sum() == 15 and len(set(test)) == 20  # no ties
    low, high = sorted(holdout)[1:]  # 0.9 quantile of 3 values: 1.8 of the way from the first to the last
    threshold = low + 0.8 * (high - low)
    flagged = test > threshold
    tp, fp = int(np.sum(flagged & (labels == 1))), int(np.sum(flagged & (labels == 0)))
    fn = int(np.sum(~flagged & (labels == 1)))
    ranked = labels[np.argsort(-test)]  # descending scores: precision at each anomalous image's rank
    average_precision = np.mean([ranked[:k + 1].sum() / (k + 1) for k in np.flatnonzero(ranked == 1)])
    expected = {
        "threshold": threshold, "image_auroc": _pairs_auroc(test, labels), "image_auprc": average_precision,
        "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0, "accuracy": float(np.mean(flagged == (labels == 1))),
        "holdout_fpr": float(np.mean(holdout > threshold)), "detect_anomalous": tp / 15,
        # oracle: the best F1 over "flag the k highest test scores"
        "f1_max_oracle": max(2 * ranked[:k].sum() / (k + 15) for k in range(1, 21)),
        "n_test": 20.0, "n_anomalous": 15.0, "n_holdout": 3.0,
    }
    m = record["metrics"]
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key

    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["stage"], saved["scorer"], saved["features"], saved["device"]) == ("anomaly", "brightness", "pixels", "cpu")
    assert saved["metrics"] == pytest.approx(m)
    scores = pd.read_parquet(out / "scores.parquet")
    assert tuple(scores.columns) == SCORES_COLUMNS
    assert scores["subset"].tolist() == ["holdout"] * 3 + ["test"] * 20
    assert scores["row"].tolist() == rows["holdout"] + rows["test"]
    assert scores["score"].to_numpy() == pytest.approx(np.concatenate([holdout, test]))
    assert (scores["map_index"] == -1).all()  # no maps: no maps.npy
    assert not (out / "maps.npy").exists()
