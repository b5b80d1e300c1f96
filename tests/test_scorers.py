"""Image-level anomaly scorers against hand values, and the anomaly_features/score_anomaly stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from defectbench.anomaly.image_level import extract_anomaly_features, score_anomaly
from defectbench.anomaly.scorers import get_scorer, score_cosine, score_knn, score_mahalanobis
from defectbench.runtime import DefectbenchError


def _circle(degrees, radius=1.0):
    a = np.deg2rad(np.asarray(degrees, dtype=float))
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def test_knn_on_points_on_a_circle():
    train = _circle([0, 90, 180, 270], radius=3.0)
    test = _circle([45, 0], radius=0.5)  # cosine distance ignores the radius
    d45 = 1 - np.cos(np.deg2rad(45))
    d135 = 1 - np.cos(np.deg2rad(135))
    assert score_knn(train, test, k=1) == pytest.approx([d45, 0.0])
    assert score_knn(train, test, k=2) == pytest.approx([d45, 0.5])  # 0 deg: neighbours 0 and 1 away
    assert score_knn(train, test, k=3) == pytest.approx([(2 * d45 + d135) / 3, 2 / 3])
    # k larger than the memory is capped: mean over all 4 training points
    assert score_knn(train, test, k=10) == pytest.approx([(2 * d45 + 2 * d135) / 4, (0 + 1 + 2 + 1) / 4])
    # chunking does not change the result
    assert score_knn(train, test, k=3, chunk=1) == pytest.approx(score_knn(train, test, k=3))


def test_mahalanobis_pinv_hand_values():
    # mean 0; np.cov (unbiased): var_x = (4+4)/3, var_y = (1+1)/3, cov 0
    train = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    test = np.array([[2.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    expected = np.sqrt([4 / (8 / 3), 1 / (2 / 3), 4 / (8 / 3) + 1 / (2 / 3)])
    assert score_mahalanobis(train, test) == pytest.approx(expected)


def test_mahalanobis_pinv_rank_deficient():
    # training features on a line of 3-D space: the pseudo-inverse ignores the orthogonal part
    train = np.array([[1.0, 0, 0], [-1.0, 0, 0], [3.0, 0, 0], [-3.0, 0, 0]])  # var_x = 20/3
    assert score_mahalanobis(train, np.array([[2.0, 5.0, 0.0]])) == pytest.approx([np.sqrt(4 * 3 / 20)])


def test_mahalanobis_shrinkage_approaches_true_gaussian_distance():
    rng = np.random.default_rng(0)
    cov = np.array([[4.0, 1.0], [1.0, 1.0]])
    train = rng.multivariate_normal([1.0, -1.0], cov, size=20000)
    test = np.array([[3.0, -1.0], [1.0, 0.0], [-1.0, -3.0]])
    diff = test - np.array([1.0, -1.0])
    true = np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff))
    assert score_mahalanobis(train, test, shrinkage=True) == pytest.approx(true, rel=0.03)
    assert score_mahalanobis(train, test, shrinkage=False) == pytest.approx(true, rel=0.03)
    # with fewer images than dimensions the shrinkage estimate stays finite and positive
    small = rng.normal(size=(5, 20))
    s = score_mahalanobis(small, rng.normal(size=(3, 20)), shrinkage=True)
    assert np.all(np.isfinite(s)) and np.all(s > 0)


def test_cosine_to_mean_and_registry():
    train = np.array([[1.0, 0.0], [0.0, 1.0]])  # mean direction 45 degrees
    test = np.array([[1.0, 1.0], [1.0, 0.0], [-1.0, 1.0]])
    assert score_cosine(train, test) == pytest.approx([0.0, 1 - np.cos(np.deg2rad(45)), 1.0])
    assert get_scorer("knn", {"knn_k": 1})(train, test) == pytest.approx(score_knn(train, test, k=1))
    assert get_scorer("mahalanobis_shrinkage", {})(train, test) == pytest.approx(score_mahalanobis(train, test, shrinkage=True))
    with pytest.raises(DefectbenchError, match="unknown anomaly scorer 'isolation_forest'; choose from knn, "):
        get_scorer("isolation_forest", {})
    with pytest.raises(DefectbenchError):
        score_knn(train, np.zeros((2, 3)))


# ----------------------------------------------------------------------------- the stage
def _anomaly_split(n_train=12, n_holdout=6, n_test_nominal=6, n_test_anomalous=6):
    subsets = ["train"] * n_train + ["holdout"] * n_holdout + ["test"] * (n_test_nominal + n_test_anomalous)
    labels = [0] * (n_train + n_holdout + n_test_nominal) + [1] * n_test_anomalous
    return pd.DataFrame({"row": np.arange(len(subsets)), "subset": subsets, "label": labels,
                         "label_name": ["good" if y == 0 else "bad" for y in labels], "label_priority": np.nan})


def _stage_cfg(protocol="clean"):
    return {"code_version": "test", "protocol": protocol, "device": "cpu",
            "anomaly": {"knn_k": 2, "threshold_quantile": 0.9, "refit_on_holdout": False, "leaky_percentile": 70,
                        "pretrained": "none", "amp": "none", "feature_batch_size": 8}}


def test_score_anomaly_stage(tmp_path):
    rng = np.random.default_rng(0)
    split = _anomaly_split()
    split_path = tmp_path / "split.parquet"
    split.to_parquet(split_path)
    n = len(split)
    feats = rng.normal(size=(n, 4)).astype(np.float32) * 0.1 + np.array([1, 0, 0, 0], np.float32)
    feats[split["label"] == 1] += np.array([0, 2, 0, 0], np.float32)  # anomalies point elsewhere
    feats_path = tmp_path / "features.npz"
    order = rng.permutation(n)  # rows stored in any order
    np.savez(feats_path, rows=order, features=feats[order])

    train = feats[split["subset"] == "train"]
    for protocol in ("clean", "faithful"):
        out = tmp_path / protocol
        scorers = ["knn", "cosine"]  # one job, every scorer: each with its own outputs
        records = score_anomaly(features_path=str(feats_path), split_path=str(split_path),
                                outputs={s: (str(out / s / "metrics.json"), str(out / s / "scores.parquet")) for s in scorers},
                                cfg=_stage_cfg(protocol), dataset="toy", features="simclr", backbone="resnet18", seed=0)
        assert list(records) == scorers
        for scorer, score_fn in (("knn", lambda m, q: score_knn(m, q, k=2)), ("cosine", score_cosine)):
            m = records[scorer]["metrics"]
            assert m["image_auroc"] == pytest.approx(1.0)
            holdout_scores = score_fn(train, feats[split["subset"] == "holdout"])
            assert m["threshold"] == pytest.approx(np.quantile(holdout_scores, 0.9))
            scores = pd.read_parquet(out / scorer / "scores.parquet")
            assert set(scores["subset"]) == {"holdout", "test"}
            test_rows = scores[scores["subset"] == "test"].sort_values("row")
            assert test_rows["score"].to_numpy() == pytest.approx(score_fn(train, feats[test_rows["row"].to_numpy()]))
            saved = json.loads((out / scorer / "metrics.json").read_text())
            assert (saved["stage"], saved["scorer"], saved["features"], saved["protocol"]) == ("anomaly", scorer, "simclr", protocol)
            assert ("leaky_f1_weighted" in m) == (protocol == "faithful")
        # different scorers, different numbers: each output holds its own scorer's scores
        assert records["knn"]["metrics"]["threshold"] != records["cosine"]["metrics"]["threshold"]


def test_extract_anomaly_features_pretrained(tmp_path):
    import torch

    from defectbench.features import extract_features
    from defectbench.models.backbones import build_backbone

    rng = np.random.default_rng(0)
    split = _anomaly_split(4, 2, 2, 2)
    images = rng.integers(0, 255, size=(len(split) + 3, 32, 32, 3), dtype=np.uint8)  # extra rows not in split
    np.save(tmp_path / "cache-32.npy", images)
    split.to_parquet(tmp_path / "split.parquet")
    out = tmp_path / "f" / "features.npz"
    torch.manual_seed(0)
    extract_anomaly_features(cache_path=str(tmp_path / "cache-32.npy"), split_path=str(tmp_path / "split.parquet"),
                             encoder_path=None, features_path=str(out), cfg=_stage_cfg(), features="pretrained",
                             backbone="resnet18", seed=3)
    with np.load(out) as data:
        rows, feats = data["rows"], data["features"]
    assert rows.tolist() == list(range(len(split)))
    assert feats.shape == (len(split), 512)
    torch.manual_seed(3)  # the stage seeds with seed_everything(3) before building: same random init
    net, _ = build_backbone("resnet18")
    direct = extract_features(net, images[: len(split)], torch.device("cpu"), batch_size=3)
    assert feats == pytest.approx(direct, abs=1e-4)
    assert json.loads((tmp_path / "f" / "features.npz.json").read_text())["feature_dim"] == 512
    with pytest.raises(DefectbenchError):
        extract_anomaly_features(cache_path=str(tmp_path / "cache-32.npy"), split_path=str(tmp_path / "split.parquet"),
                                 encoder_path=None, features_path=str(out), cfg=_stage_cfg(), features="simclr",
                                 backbone="resnet18", seed=3)


def test_extract_anomaly_features_from_encoder_file(tmp_path):
    import torch

    from defectbench.features import extract_features
    from defectbench.models.backbones import build_backbone
    from defectbench.models.encoders import save_encoder

    split = _anomaly_split(3, 2, 2, 2)
    images = np.random.default_rng(1).integers(0, 255, size=(len(split), 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "cache-32.npy", images)
    split.to_parquet(tmp_path / "split.parquet")
    torch.manual_seed(7)
    net, dim = build_backbone("resnet18")
    save_encoder(tmp_path / "encoder.pt", net, "resnet18", dim, 32)
    out = tmp_path / "features.npz"
    kwargs = dict(cache_path=str(tmp_path / "cache-32.npy"), split_path=str(tmp_path / "split.parquet"),
                  encoder_path=str(tmp_path / "encoder.pt"), features_path=str(out), cfg=_stage_cfg(),
                  features="simclr", seed=0)
    extract_anomaly_features(backbone="resnet18", **kwargs)
    with np.load(out) as data:
        feats = data["features"]
    assert feats == pytest.approx(extract_features(net, images, torch.device("cpu")), abs=1e-4)
    with pytest.raises(DefectbenchError, match="backbone"):
        extract_anomaly_features(backbone="resnet50", **kwargs)


def test_score_anomaly_job_never_imports_torch(tmp_path):
    # a numpy-only stage: its config slice has no device, so stage_job picks none (no torch start-up)
    import subprocess
    import sys

    split = _anomaly_split()
    split.to_parquet(tmp_path / "split.parquet")
    np.savez(tmp_path / "features.npz", rows=np.arange(len(split)),
             features=np.random.default_rng(0).normal(size=(len(split), 3)).astype(np.float32))
    cfg = {"protocol": "clean", "anomaly": {"knn_k": 2, "threshold_quantile": 0.9, "refit_on_holdout": False}}
    code = (
        "import json, sys\n"
        "from defectbench.anomaly.image_level import score_anomaly\n"
        f"r = score_anomaly(features_path={str(tmp_path / 'features.npz')!r}, split_path={str(tmp_path / 'split.parquet')!r},"
        f" outputs={{'knn': ({str(tmp_path / 'm.json')!r}, {str(tmp_path / 's.parquet')!r})}}, cfg={cfg!r},"
        " dataset='toy', features='simclr', backbone='resnet18', seed=0)\n"
        "print(json.dumps(['torch' in sys.modules, r['knn']['device']]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, "cpu"]  # no provenance file: cpu
