"""The anomaly evaluation protocol (anomaly/protocol.py): subsets, the map sample, the one
scores.parquet schema, maps.npy, and what evaluate adds to evaluate_anomaly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from defectbench.anomaly import protocol
from defectbench.runtime import DefectbenchError


def _rows(rows, labels, names=None) -> pd.DataFrame:
    labels = list(labels)
    return pd.DataFrame({"row": rows, "label": labels,
                         "label_name": names or ["good" if y == 0 else "crack" for y in labels]})


@pytest.mark.parametrize("labels,n,expected", [
    # 8 of 10 nominal at round(linspace(0, 9, 8)) = 0,1,3,4,5,6,8,9; 8 of 20 anomalous at
    # 10 + round(linspace(0, 19, 8)) = 10 + 0,3,5,8,11,14,16,19
    ([0] * 10 + [1] * 20, 16, [0, 1, 3, 4, 5, 6, 8, 9, 10, 13, 15, 18, 21, 24, 26, 29]),
    # 3 nominal only: the anomalous fill in (5 = 8 - 3), at 3 + round(0, 4.75, 9.5, 14.25, 19)
    ([0] * 3 + [1] * 20, 8, [0, 1, 2, 3, 8, 13, 17, 22]),
    ([1] * 5, 4, [0, 1, 3, 4]),  # one class: it takes every place
    ([0] * 2, 4, [0, 1]),  # fewer images than places: all of them
])
def test_map_sample_half_each_class_spread_evenly(labels, n, expected):
    assert protocol.sample_maps(np.array(labels), n=n).tolist() == expected


def test_anomaly_subsets_sorted_and_non_empty(tmp_path):
    split = pd.DataFrame({"row": [5, 1, 3, 0, 2, 4], "subset": ["test", "train", "holdout", "train", "test", "unused"],
                          "label": [1, 0, 0, 0, 0, 0]})
    parts = protocol.anomaly_subsets(split, "s.parquet")
    assert {k: v["row"].tolist() for k, v in parts.items()} == {"train": [0, 1], "holdout": [3], "test": [2, 5]}
    with pytest.raises(DefectbenchError, match=r"^s\.parquet: the anomaly split has no 'holdout' images"):
        protocol.anomaly_subsets(split[split["subset"] != "holdout"], "s.parquet")


def test_read_anomaly_split_reads_images_and_masks_of_each_subset(tmp_path):
    images = np.arange(5, dtype=np.uint8).repeat(2 * 2 * 3).reshape(5, 2, 2, 3)
    masks = np.zeros((5, 2, 2), np.uint8)
    masks[4, 0, 1] = 1
    np.save(tmp_path / "cache.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    pd.DataFrame({"row": [4, 0, 1, 2], "subset": ["test", "train", "holdout", "test"],
                  "label": [1, 0, 0, 0]}).to_parquet(tmp_path / "split.parquet")
    parts = protocol.read_anomaly_split(tmp_path / "split.parquet", tmp_path / "cache.npy", tmp_path / "masks.npy")
    assert parts["test"].row_ids.tolist() == [2, 4] and parts["test"].images[:, 0, 0, 0].tolist() == [2, 4]
    assert parts["test"].masks.sum(axis=(1, 2)).tolist() == [0, 1]
    assert parts["train"].images[:, 0, 0, 0].tolist() == [0]


def test_write_scores_one_schema_with_and_without_maps(tmp_path):
    holdout, test = _rows([7, 3], [0, 0]), _rows([9, 2, 4, 6], [1, 0, 1, 0])
    maps = np.arange(4 * 2 * 2, dtype=np.float64).reshape(4, 2, 2)
    protocol.write_scores(tmp_path / "s.parquet", holdout=holdout, holdout_scores=np.array([0.1, 0.2], np.float32),
                          test=test, test_scores=np.array([0.9, 0.3, 0.8, 0.4]), test_maps=maps,
                          maps_path=tmp_path / "maps.npy")
    scores = pd.read_parquet(tmp_path / "s.parquet")
    assert tuple(scores.columns) == protocol.SCORES_COLUMNS
    assert {c: str(scores[c].dtype) for c in ("row", "label", "score", "map_index")} == {
        "row": "int64", "label": "int64", "score": "float64", "map_index": "int64"}  # float32 scores widened
    assert pd.api.types.is_string_dtype(scores["subset"])
    assert scores["row"].tolist() == [7, 3, 9, 2, 4, 6]  # holdout then test, in the order given
    assert scores["subset"].tolist() == ["holdout"] * 2 + ["test"] * 4
    assert scores["score"].tolist() == pytest.approx([0.1, 0.2, 0.9, 0.3, 0.8, 0.4])
    kept = np.load(tmp_path / "maps.npy")
    assert kept.dtype == np.float32 and kept.shape == (4, 2, 2)
    # every test map kept (4 < 16): map k of the row with map_index k is that row's map
    assert scores["map_index"].tolist() == [-1, -1, 0, 1, 2, 3]
    np.testing.assert_array_equal(kept, maps.astype(np.float32))

    protocol.write_scores(tmp_path / "plain.parquet", holdout=holdout, holdout_scores=np.zeros(2),
                          test=test, test_scores=np.zeros(4))
    plain = pd.read_parquet(tmp_path / "plain.parquet")
    assert tuple(plain.columns) == protocol.SCORES_COLUMNS and (plain["map_index"] == -1).all()
    with pytest.raises(DefectbenchError, match="maps path"):
        protocol.write_scores(tmp_path / "x.parquet", holdout=holdout, holdout_scores=np.zeros(2), test=test,
                              test_scores=np.zeros(4), test_maps=maps)
    assert not (tmp_path / "x.parquet").exists()


def test_evaluate_adds_detection_rates_pixels_and_leaky_only_when_asked():
    test = _rows([0, 1, 2, 3], [0, 0, 1, 1], ["good", "good", "crack", "hole"])
    holdout = np.array([0.1, 0.2, 0.3])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    m = protocol.evaluate(test, scores, holdout, quantile=0.5)
    # threshold = median of the holdout = 0.2; flagged: 0.4 (nominal), 0.35, 0.8 (both anomalous)
    assert m["threshold"] == pytest.approx(0.2) and m["recall"] == 1.0 and m["precision"] == pytest.approx(2 / 3)
    assert m["detect_crack"] == 1.0 and m["detect_hole"] == 1.0
    assert "pixel_auroc" not in m and not any(k.startswith("leaky_") for k in m)
    # pixel metrics: map values equal the mask in image 2 and 3 -> perfect pixel AUROC
    masks = np.zeros((4, 2, 2), bool)
    masks[2, 0, 0] = masks[3, 1, 1] = True
    m = protocol.evaluate(test, scores, holdout, quantile=0.5, maps=masks.astype(float), masks=masks,
                          leaky_percentile=50)
    assert m["pixel_auroc"] == 1.0
    # leaky: threshold = median of the test scores = (0.35 + 0.4) / 2; flags 0.4 and 0.8
    assert m["leaky_threshold"] == pytest.approx(0.375) and m["leaky_accuracy"] == 0.5
