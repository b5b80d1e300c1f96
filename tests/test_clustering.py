"""Anomaly clustering: patch distances, weights, image embeddings, Ward clustering, and a run on real magnetic tiles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from magnetic_tile_fixture import write_magnetic_tile  # noqa: E402

from job_cfg import job_cfg  # noqa: E402

from defectbench.clustering import (  # noqa: E402
    image_embeddings,
    oracle_patch_embeddings,
    patch_embedder,
    patch_weights,
    run_clustering,
    supervised_distances,
    unsupervised_distances,
    ward_clusters,
    weighted_embeddings,
)
from defectbench.metrics.clustering import clustering_metrics  # noqa: E402
from defectbench.runtime import DefectbenchError  # noqa: E402


def test_unsupervised_distances_match_a_loop():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 5, 3, generator=gen)
    ref = torch.zeros(4, 5)
    for i in range(4):
        for p in range(5):
            ref[i, p] = np.mean([float((z[j] - z[i, p]).norm(dim=1).min()) for j in range(4) if j != i])
    assert torch.allclose(unsupervised_distances(z, max_elements=40), ref, atol=1e-5)  # chunked: 2 query rows


def test_supervised_distances_use_the_first_train_ratio_of_references():
    z = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    refs = torch.tensor([[[0.0, 1.0]], [[3.0, 4.0]]])  # 2 reference images of 1 patch
    assert supervised_distances(z, refs, 1.0).tolist() == [[1.0, 0.0]]
    assert torch.allclose(supervised_distances(z, refs, 0.5), torch.tensor([[1.0, float(np.hypot(3, 3))]]))
    with pytest.raises(DefectbenchError, match="train_ratio"):
        supervised_distances(z, refs, 0.4)


def test_patch_weights_softmax_properties():
    d = torch.tensor([[1.0, 2.0, 3.0], [1000.0, 1001.0, 0.0]])
    w = patch_weights(d, tau=2.0)
    assert torch.allclose(w.sum(1), torch.ones(2)) and torch.isfinite(w).all()  # stable at large distances
    assert torch.allclose(w[0], torch.softmax(torch.tensor([0.5, 1.0, 1.5]), 0))
    assert (w[0].diff() > 0).all()  # more distant patches weigh more
    flat, sharp = patch_weights(d[:1], 100.0), patch_weights(d[:1], 0.1)
    assert flat.max() < w[0].max() < sharp.max()
    assert patch_weights(d, tau=0).tolist() == [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert patch_weights(torch.tensor([[2.0, 0.0, 2.0]]), tau=0).tolist() == [[0.5, 0.0, 0.5]]


def test_image_embeddings_are_weighted_sums():
    z = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert image_embeddings(z, torch.tensor([[0.25, 0.75]])).tolist() == [[0.25, 1.5]]
    assert weighted_embeddings(z, "average").tolist() == [[0.5, 1.0]]


def test_well_separated_blobs_cluster_perfectly():
    gen = torch.Generator().manual_seed(4)
    centres = torch.tensor([[0.0] * 8, [20.0] * 8, [-20.0] + [0.0] * 7])
    labels = np.repeat([0, 1, 2], 6)
    # every image: 9 patches near its blob centre, plus one shared "background" patch
    z = centres[labels][:, None, :] + 0.3 * torch.randn(18, 10, 8, generator=gen)
    z[:, 0] = 0.1 * torch.randn(18, 8, generator=gen)
    for weighting in ("unsupervised", "average"):
        x = weighted_embeddings(z, weighting, tau=1.0)
        metrics = clustering_metrics(labels, ward_clusters(x.numpy(), 3))
        assert metrics["nmi"] == pytest.approx(1.0) and metrics["f1"] == 1.0


def test_supervised_weights_find_the_defect_patch():
    # nominal references are all near 0; each image has one "defect" patch of its type far away
    gen = torch.Generator().manual_seed(5)
    refs = 0.1 * torch.randn(5, 6, 4, generator=gen)
    types = np.repeat([0, 1], 4)
    z = 0.1 * torch.randn(8, 6, 4, generator=gen)
    z[types == 0, 2] += torch.tensor([10.0, 0, 0, 0])
    z[types == 1, 4] += torch.tensor([0, 0, 10.0, 0])
    x_sup = weighted_embeddings(z, "supervised", tau=0.5, references=refs)
    assert clustering_metrics(types, ward_clusters(x_sup.numpy(), 2))["nmi"] == pytest.approx(1.0)
    with pytest.raises(DefectbenchError, match="reference"):
        weighted_embeddings(z, "supervised")


def test_clustering_end_to_end_on_real_magnetic_tiles(tmp_path):
    paths = write_magnetic_tile(tmp_path / "data", n_free=16, n_per_defect=3, size=64)
    out = tmp_path / "out"
    weightings = ["unsupervised", "supervised", "average"]
    cfg = {"device": "cpu", "protocol": "clean",
           "clustering": {"features": "patchcore", "weightings": weightings, "tau": 2.0, "include_normal": False,
                          "layernorm": True, "pretrain_dim": 64, "target_dim": 128, "train_ratio": 1.0},
           "patchcore": {"backbone": "resnet18", "pretrained": "none", "layers": ["layer2", "layer3"],
                         "patchsize": 3, "batch_size": 8}}
    run_clustering(cache_path=paths["cache"], manifest_path=paths["manifest"], split_path=paths["clustering"],
                   reference_split_path=paths["anomaly"],
                   metrics_paths={w: out / w / "metrics.json" for w in weightings},
                   assignments_paths={w: out / w / "assignments.parquet" for w in weightings},
                   cfg=cfg, dataset="mt", seed=0, features="resnet18")
    for w in weightings:
        saved = json.loads((out / w / "metrics.json").read_text())
        assert saved["stage"] == "clustering" and saved["weighting"] == w and saved["features"] == "resnet18"
        m = saved["metrics"]
        assert 0 <= m["nmi"] <= 1 and -1 <= m["ari"] <= 1 and 0 <= m["f1"] <= 1
        assert m["n_images"] == 15 and m["n_clusters"] == 5  # include_normal false: 5 types x 3 defects
        table = pd.read_parquet(out / w / "assignments.parquet")
        assert len(table) == 15 and "good" not in set(table["label_name"])
    cfg["clustering"]["include_normal"] = True
    run_clustering(cache_path=paths["cache"], manifest_path=paths["manifest"], split_path=paths["clustering"],
                   reference_split_path=None, metrics_paths={"average": out / "avg.json"},
                   assignments_paths={"average": out / "avg.parquet"}, cfg=cfg, dataset="mt", seed=0,
                   features="resnet18")
    m = json.loads((out / "avg.json").read_text())["metrics"]
    assert m["n_images"] == 20 and m["n_clusters"] == 6  # + 5 nominal test images as their own class


def test_oracle_control_clusters_real_tiles_perfectly_by_the_same_stage(tmp_path):
    """The positive control: label-made patches through the same weightings, Ward and metrics give
    NMI/ARI/F1 = 1 on every weighting; the same run on the images' own features need not."""
    paths = write_magnetic_tile(tmp_path / "data", n_free=16, n_per_defect=3, size=64)
    out = tmp_path / "out"
    weightings = ["unsupervised", "supervised", "average"]
    cfg = {"device": "cpu", "protocol": "clean",
           "clustering": {"weightings": weightings, "tau": 2.0, "include_normal": True, "train_ratio": 1.0}}
    records = run_clustering(cache_path=paths["cache"], manifest_path=paths["manifest"], split_path=paths["clustering"],
                             reference_split_path=paths["anomaly"],
                             metrics_paths={w: out / w / "metrics.json" for w in weightings},
                             assignments_paths={w: out / w / "assignments.parquet" for w in weightings},
                             cfg=cfg, dataset="mt", seed=3, features="oracle")
    for w in weightings:
        saved = json.loads((out / w / "metrics.json").read_text())
        assert saved == json.loads(json.dumps(records[w], default=str))
        assert saved["features"] == "oracle" and "patchcore" not in saved["config"]
        m = saved["metrics"]
        assert m["n_images"] == 20 and m["n_clusters"] == 6
        assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0)
        table = pd.read_parquet(out / w / "assignments.parquet")
        assert (table["matched_label"] == table["label"]).all()
    with pytest.raises(DefectbenchError, match="features 'wide_resnet50_2'"):
        run_clustering(cache_path=paths["cache"], manifest_path=paths["manifest"], split_path=paths["clustering"],
                       reference_split_path=None, metrics_paths={"average": out / "x.json"},
                       assignments_paths={"average": out / "x.parquet"},
                       cfg={**cfg, "patchcore": {"backbone": "resnet18"}}, dataset="mt", seed=0,
                       features="wide_resnet50_2")


def test_random_init_control_embeds_with_the_untrained_backbone_and_says_so(tmp_path):
    """clustering.controls: [random]: the cluster job of features 'random' (params from the real
    params layer) embeds with EfficientNet-Lite0 at random init, not its package weights, and its
    rows say features 'random', backbone efficientnet_lite0."""
    paths = write_magnetic_tile(tmp_path / "data", n_free=16, n_per_defect=3, size=64)
    sections = {"patchcore": {"backbone": "efficientnet_lite0", "pretrained": "package", "batch_size": 8},
                "clustering": {"weightings": ["average"], "pretrain_dim": 32, "target_dim": 32,
                               "controls": ["oracle", "random"]}}
    from defectbench.data.cache import SplitCache

    data = SplitCache(paths["clustering"], paths["cache"])
    rows = data.split[data.split["subset"] == "test"].head(4)
    embedded, saved = {}, {}
    for features in ("efficientnet_lite0", "random"):
        cfg = job_cfg("cluster", sections, features=features, seed=0)
        embed = patch_embedder(features, cfg, n_labels=6, seed=0, device=torch.device("cpu"))
        embedded[features] = embed(data, rows, rows["label"].to_numpy(), 0)
        out = tmp_path / features
        run_clustering(cache_path=paths["cache"], manifest_path=paths["manifest"], split_path=paths["clustering"],
                       reference_split_path=None, metrics_paths={"average": out / "m.json"},
                       assignments_paths={"average": out / "a.parquet"}, cfg=cfg, dataset="mt", seed=0,
                       features=features)
        saved[features] = json.loads((out / "m.json").read_text())
    assert saved["random"]["config"]["patchcore"]["pretrained"] == "none"
    assert saved["efficientnet_lite0"]["config"]["patchcore"]["pretrained"] == "package"
    assert (saved["random"]["features"], saved["random"]["backbone"]) == ("random", "efficientnet_lite0")
    assert saved["efficientnet_lite0"]["backbone"] == "efficientnet_lite0"
    assert embedded["random"].shape == embedded["efficientnet_lite0"].shape
    assert not torch.allclose(embedded["random"], embedded["efficientnet_lite0"])


def test_clustering_cap_draws_per_label_and_is_seeded(tmp_path):
    paths = write_magnetic_tile(tmp_path / "data", n_free=16, n_per_defect=3, size=64)
    cfg = {"device": "cpu", "protocol": "clean",
           "clustering": {"weightings": ["average"], "include_normal": True, "max_per_class": 2}}
    rows = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"s{seed}-{len(rows)}"
        run_clustering(cache_path=paths["cache"], manifest_path=paths["manifest"], split_path=paths["clustering"],
                       reference_split_path=None, metrics_paths={"average": out / "m.json"},
                       assignments_paths={"average": out / "a.parquet"}, cfg=cfg, dataset="mt", seed=seed,
                       features="oracle")
        table = pd.read_parquet(out / "a.parquet")
        assert table["label"].value_counts().tolist() == [2] * 6  # 5 nominal test images and 3 per type -> 2 each
        rows.setdefault(seed, []).append(table["row"].tolist())
    assert rows[0][0] == rows[0][1] and rows[0][0] != rows[1][0]


def test_oracle_embeddings_separate_only_the_labels_they_were_given():
    labels = np.repeat(np.arange(4), 5)
    z = oracle_patch_embeddings(labels, 4, seed=0)
    x = weighted_embeddings(z, "average")
    assert clustering_metrics(labels, ward_clusters(x.numpy(), 4))["nmi"] == pytest.approx(1.0)
    # a stage that mixed up images and labels would score near chance on the same control
    shuffled = np.random.default_rng(0).permutation(labels)
    assert clustering_metrics(shuffled, ward_clusters(x.numpy(), 4))["nmi"] < 0.5
    # one patch alone is noisy (not trivially separable): the image embedding's averaging is what separates
    assert clustering_metrics(labels, ward_clusters(z[:, 0].numpy(), 4))["nmi"] < 1.0
