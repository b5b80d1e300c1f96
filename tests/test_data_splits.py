"""Splits: stratified, seeded, nested labelled subsets, anomaly and clustering protocols."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from defectbench.data.splits import (
    SPLIT_COLUMNS,
    anomaly_split,
    classification_split,
    clustering_split,
    labelled_subset,
    make_split,
    split_rng,
    write_split,
)
from defectbench.runtime import DefectbenchError


def manifest(counts: dict[str, int], nominal: tuple[str, ...] = (), groups: bool = False, source_split=None) -> pd.DataFrame:
    rows = []
    for label, (name, n) in enumerate(counts.items()):
        for i in range(n):
            rows.append({"label": label, "class_name": name, "is_anomalous": name not in nominal,
                         "group": ("mono" if i % 2 else "poly") if groups else None,
                         "source_split": source_split(name, i) if source_split else None})
    return pd.DataFrame(rows)


def test_rng_is_platform_stable():
    # Pinned values: PCG64 + SeedSequence are specified bit-for-bit by numpy, so these hold on
    # every machine; a change here means splits changed.
    assert split_rng(0, "classification").integers(0, 1000, 5).tolist() == [834, 776, 791, 486, 956]
    assert split_rng(0, "anomaly_test").integers(0, 1000, 3).tolist() != split_rng(0, "classification").integers(0, 1000, 3).tolist()


def test_classification_pinned_split():
    m = manifest({"a": 5, "b": 5})
    s = classification_split(m, seed=0, test_fraction=0.2)
    assert s.loc[s.subset == "test", "row"].tolist() == [1, 5]


def test_same_split_in_a_fresh_process_with_other_hash_seed(tmp_path):
    """No hash()-based randomness: another interpreter (different PYTHONHASHSEED) agrees."""
    import os
    import subprocess
    import sys

    code = (
        "import pandas as pd; from defectbench.data.splits import classification_split;"
        "m = pd.DataFrame({'label': [0]*7 + [1]*6, 'class_name': ['x']*7 + ['y']*6, 'is_anomalous': True,"
        " 'group': None, 'source_split': None});"
        "s = classification_split(m, seed=11); print(s.row[s.subset == 'test'].tolist(), s.label_priority.round(6).tolist())"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": h}).stdout
        for h in ("1", "2")
    }
    assert len(outs) == 1


def test_classification_80_20_per_class_and_deterministic():
    m = manifest({"a": 50, "b": 30, "c": 7})
    s = classification_split(m, seed=3, test_fraction=0.2)
    assert list(s.columns) == SPLIT_COLUMNS and (s.row == np.arange(len(m))).all()
    test_counts = s[s.subset == "test"].groupby("label_name").size().to_dict()
    assert test_counts == {"a": 10, "b": 6, "c": 1}  # round half up: 7 * 0.2 = 1.4 -> 1
    assert s.equals(classification_split(m, seed=3, test_fraction=0.2))
    assert not s.equals(classification_split(m, seed=4, test_fraction=0.2))
    assert s.label_priority[s.subset == "test"].isna().all()
    train_p = s.label_priority[s.subset == "train"]
    assert train_p.notna().all() and (train_p >= 0).all() and (train_p < 1).all()


def test_classification_stratifies_groups():
    m = manifest({"a": 20, "b": 20}, groups=True)
    s = classification_split(m, seed=0, test_fraction=0.5)
    t = m.loc[s.subset == "test"]
    assert t.groupby(["class_name", "group"]).size().tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("seed", [0, 1])
def test_labelled_subsets_nested_stratified(seed):
    m = manifest({"a": 100, "b": 40, "c": 9})
    s = classification_split(m, seed=seed, test_fraction=0.2)
    train_sizes = s[s.subset == "train"].groupby("label").size().to_dict()
    previous: set[int] = set()
    for f in (0.01, 0.05, 0.1, 0.25, 1.0):
        sub = labelled_subset(s, f)
        rows = set(sub.row)
        assert previous <= rows  # nested
        previous = rows
        per_class = sub.groupby("label").size().to_dict()
        assert per_class == {k: math.ceil(f * n) for k, n in train_sizes.items()}  # >= 1 per class
    assert len(labelled_subset(s, 1.0)) == (s.subset == "train").sum()
    with pytest.raises(DefectbenchError, match="must be in"):
        labelled_subset(s, 0.0)


def test_anomaly_split_protocol():
    m = manifest({"good": 50, "scratch": 8, "dent": 4}, nominal=("good",))
    s = anomaly_split(m, seed=0, test_fraction=0.2, holdout_fraction=0.25)
    sub = dict(zip(s.row, s.subset))
    nominal = set(np.flatnonzero(~m.is_anomalous))
    assert {r for r, v in sub.items() if v in ("train", "holdout")} <= nominal  # nominal only
    assert all(sub[r] == "test" for r in np.flatnonzero(m.is_anomalous))  # all anomalous in test
    assert (s.subset == "test").sum() == 10 + 12  # 20% of 50 nominal + 12 anomalous
    assert (s.subset == "holdout").sum() == 10  # 25% of the 40 nominal train
    assert (s.subset == "train").sum() == 30
    assert (s.label == m.is_anomalous.astype(int)).all()
    assert set(s.label_name[s.label == 0]) == {"good"} and set(s.label_name[s.label == 1]) == {"scratch", "dent"}
    assert s.equals(anomaly_split(m, seed=0, test_fraction=0.2, holdout_fraction=0.25))


def test_max_train_nominal_sends_every_unused_nominal_image_to_test():
    m = manifest({"good": 100, "scratch": 8, "dent": 4}, nominal=("good",))
    s = anomaly_split(m, seed=0, test_fraction=0.2, holdout_fraction=0.25, max_train_nominal=20)
    # 20 of the 80 non-test nominal images are kept for train (15) + holdout (5); the other 60
    # join the 20 test nominal images: the test set holds every nominal image not used
    assert ((s.subset == "train").sum(), (s.subset == "holdout").sum()) == (15, 5)
    assert ((s.subset == "test") & (s.label == 0)).sum() == 80 and ((s.subset == "test") & (s.label == 1)).sum() == 12
    uncapped = anomaly_split(m, seed=0, test_fraction=0.2, holdout_fraction=0.25)
    # the cap draws from the uncapped pool: the uncapped test images stay test images
    assert set(uncapped.row[uncapped.subset == "test"]) <= set(s.row[s.subset == "test"])
    assert s.equals(anomaly_split(m, seed=0, test_fraction=0.2, holdout_fraction=0.25, max_train_nominal=20))
    assert not s.equals(anomaly_split(m, seed=1, test_fraction=0.2, holdout_fraction=0.25, max_train_nominal=20))
    # a cap above the pool changes nothing
    assert uncapped.equals(anomaly_split(m, seed=0, test_fraction=0.2, holdout_fraction=0.25, max_train_nominal=500))
    with pytest.raises(DefectbenchError, match="max_train_nominal 1"):
        anomaly_split(m, seed=0, max_train_nominal=1)


def test_max_train_nominal_keeps_an_official_test_set_as_it_is():
    def src(name, i):
        return "train" if name == "good" and i < 10 else "test"

    m = manifest({"good": 14, "crack": 6}, nominal=("good",), source_split=src)
    s = anomaly_split(m, seed=0, holdout_fraction=0.2, max_train_nominal=5)
    assert set(s.row[s.subset == "test"]) == set(range(10, 20))
    assert (s.subset == "unused").sum() == 5 and s.subset.isin(["train", "holdout"]).sum() == 5
    assert make_split(m, "anomaly", 0, {"holdout_fraction": 0.2, "max_train_nominal": 5}).equals(s)


def test_anomaly_split_official_train_test():
    # MVTec-like: 10 train/good, 4 test/good, 6 test defects
    def src(name, i):
        return "train" if name == "good" and i < 10 else "test"

    m = manifest({"good": 14, "crack": 6}, nominal=("good",), source_split=src)
    s = anomaly_split(m, seed=0, holdout_fraction=0.2)
    assert set(s.row[s.subset.isin(["train", "holdout"])]) == set(range(10))
    assert (s.subset == "holdout").sum() == 2
    assert set(s.row[s.subset == "test"]) == set(range(10, 20))
    off = anomaly_split(m, seed=0, holdout_fraction=0.2, official_split=False)
    assert (off.subset == "test").sum() == round(0.2 * 14) + 6


def test_classification_official_only_when_every_class_in_both():
    def src(name, i):
        return "test" if i % 3 == 0 else "train"

    m = manifest({"open": 9, "short": 9}, source_split=src)
    s = classification_split(m, seed=0)
    assert (s.subset == "test").tolist() == (m.source_split == "test").tolist()
    # MVTec-like source split (train has only 'good'): not usable -> stratified 80/20
    m2 = manifest({"good": 10, "crack": 10}, nominal=("good",), source_split=lambda n, i: "train" if n == "good" else "test")
    s2 = classification_split(m2, seed=0)
    assert s2[s2.subset == "test"].groupby("label").size().tolist() == [2, 2]


def test_clustering_split_is_anomaly_test_with_types():
    m = manifest({"good": 20, "scratch": 5, "dent": 3}, nominal=("good",))
    a = anomaly_split(m, seed=2)
    c = clustering_split(m, seed=2)
    assert c.row.tolist() == a.row[a.subset == "test"].tolist()
    assert (c.subset == "test").all()
    anomalous = c[c.label_name != "good"]
    assert dict(zip(anomalous.label_name, anomalous.label)) == {"scratch": 1, "dent": 2}
    assert len(anomalous) == 8 and (c.label_name == "good").sum() == 4


def test_anomaly_needs_nominal_images():
    with pytest.raises(DefectbenchError, match="nominal") as exc:
        make_split(manifest({"a": 10, "b": 10}), "clustering", 0, {})
    assert "\n" not in str(exc.value)


def test_make_split_reads_config_and_writes_atomically(tmp_path):
    m = manifest({"good": 30, "bad": 10}, nominal=("good",))
    for col, val in (("path", "x"), ("mask_path", None), ("width", 1), ("height", 1), ("sha256", "0"), ("pixel_scale", "8bit")):
        m[col] = val
    m.to_parquet(tmp_path / "manifest.parquet")
    out = tmp_path / "splits" / "anomaly-seed0.parquet"
    s = write_split(tmp_path / "manifest.parquet", "anomaly", 0, {"test_fraction": 0.5, "holdout_fraction": 0.2}, out)
    assert pd.read_parquet(out).equals(s)
    assert (s.subset == "test").sum() == 15 + 10
    assert [p.name for p in out.parent.iterdir()] == ["anomaly-seed0.parquet"]
    with pytest.raises(DefectbenchError, match="split task"):
        make_split(m, "segmentation", 0, {})
