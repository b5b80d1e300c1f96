"""PatchCore and its parts (anomaly/coreset.py, embedding.py, neighbours.py): coreset vs a brute-force
greedy, exact k-NN, MeanMapper semantics, scores, maps, and a run on real magnetic tiles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from magnetic_tile_fixture import write_magnetic_tile  # noqa: E402

from defectbench.anomaly.coreset import greedy_coreset, kcenter_greedy  # noqa: E402
from defectbench.anomaly.embedding import embed_batch, mean_map  # noqa: E402
from defectbench.anomaly.neighbours import nearest_neighbors  # noqa: E402
from defectbench.anomaly.patchcore import PatchCore, gaussian_smooth, run_patchcore  # noqa: E402
from defectbench.models.backbones import FeatureExtractor  # noqa: E402
from defectbench.runtime import DefectbenchError  # noqa: E402
from job_cfg import job_cfg  # noqa: E402


def brute_force_kcenter(points: torch.Tensor, n: int, starts: torch.Tensor) -> list[int]:
    """The textbook approximate greedy loop, written from its definition: one full pass per pick."""
    min_d = torch.stack([(points - points[s]).norm(dim=1) for s in starts]).mean(0)
    picks = []
    for _ in range(n):
        c = int(torch.argmax(min_d))
        picks.append(c)
        min_d = torch.minimum(min_d, (points - points[c]).norm(dim=1))
    return picks


@pytest.mark.parametrize("num,dim,n,block,pool,max_elements", [
    (400, 4, 120, 16, 32, 160),       # small pool and block: many refreshes, pool refills, row chunks of 10
    (1500, 16, 300, 128, 1024, 2**24),  # defaults
    (300, 8, 300, 7, 50, 2**24),       # pick every point
    (200, 3, 50, 128, 5000, 2**24),    # pool larger than the data
])
def test_kcenter_matches_brute_force(num, dim, n, block, pool, max_elements):
    gen = torch.Generator().manual_seed(num)
    points = torch.randn(num, dim, generator=gen, dtype=torch.float64) * 3 + 7
    starts = torch.randperm(num, generator=gen)[:10]
    picks = kcenter_greedy(points, n, starts, block=block, pool=pool, max_elements=max_elements)
    assert picks.tolist() == brute_force_kcenter(points, n, starts)


def test_kcenter_picks_on_one_thread_and_updates_on_single_threaded_workers(monkeypatch):
    # Per-pick ops (addmv over the pool) on the caller's thread with one torch thread; the batched
    # update GEMMs (addmm) in as many worker threads as the caller's torch threads, each GEMM on one
    # torch thread (chunks taken as workers become free: no static split to wait on); the caller's
    # count restored afterwards; the picks stay exact.
    import threading

    import defectbench.anomaly.coreset as pc

    seen: dict[str, set[tuple[int, str]]] = {"addmv": set(), "addmm": set()}
    for name in seen:
        real = getattr(torch, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen[_name].add((torch.get_num_threads(), threading.current_thread().name.split("_")[0]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(pc.torch, name, spy)
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(600, 6, generator=gen, dtype=torch.float64)
    starts = torch.randperm(600, generator=gen)[:10]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        picks = kcenter_greedy(points, 150, starts, block=16, pool=64)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == {"addmv": {(1, "MainThread")}, "addmm": {(1, "coreset")}}
    assert picks.tolist() == brute_force_kcenter(points, 150, starts)


def test_greedy_coreset_size_seed_and_spread():
    gen = torch.Generator().manual_seed(0)
    # two clusters of very different sizes: a random subsample would miss the small one, k-center must not
    feats = torch.cat([torch.randn(990, 64, generator=gen), torch.randn(10, 64, generator=gen) + 50])
    picks = greedy_coreset(feats, 0.05, projection_dim=16, seed=3)
    assert len(picks) == 50 and len(set(picks.tolist())) == 50
    assert (picks >= 990).any()
    assert torch.equal(picks, greedy_coreset(feats, 0.05, projection_dim=16, seed=3))
    assert not torch.equal(picks, greedy_coreset(feats, 0.05, projection_dim=16, seed=4))
    assert torch.equal(greedy_coreset(feats, 1.0), torch.arange(1000))
    with pytest.raises(DefectbenchError, match="coreset_ratio"):
        greedy_coreset(feats, 0.0001)


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_neighbors_match_cdist(k):
    gen = torch.Generator().manual_seed(1)
    q, bank = torch.randn(70, 12, generator=gen), torch.randn(40, 12, generator=gen)
    dist, idx = nearest_neighbors(q, bank, k=k, max_elements=200)  # 5 query rows per chunk
    ref = torch.cdist(q.double(), bank.double()).pow(2)
    ref_d, ref_i = ref.topk(k, dim=1, largest=False)
    assert torch.equal(idx, ref_i)
    assert torch.allclose(dist.double(), ref_d, atol=1e-4)
    # the Euclidean metric (clustering) is cdist itself, chunked the same way
    dist, idx = nearest_neighbors(q, bank, k=k, metric="euclidean", max_elements=200)
    assert torch.equal(idx, ref_i) and torch.allclose(dist.double(), ref_d.sqrt(), atol=1e-5)
    with pytest.raises(DefectbenchError, match="unknown metric"):
        nearest_neighbors(q, bank, metric="cosine")


def test_mean_mapper_is_per_channel_window_mean_when_dims_match():
    gen = torch.Generator().manual_seed(2)
    layer = torch.randn(2, 5, 6, 6, generator=gen)
    emb, grid = embed_batch([layer], pretrain_dim=5, target_dim=5, patchsize=3)
    assert grid == (6, 6) and emb.shape == (2, 36, 5)
    # reference from the definition: unfold (zero padding 1), adaptive_avg_pool1d of the C*9 values to C
    cols = F.unfold(layer, 3, padding=1).permute(0, 2, 1)  # (2, 36, 45), channel-major
    ref = F.adaptive_avg_pool1d(cols.reshape(-1, 1, 45), 5).reshape(2, 36, 5)
    assert torch.allclose(emb, ref, atol=1e-6)
    assert torch.allclose(ref[0, 7, 3], layer[0, 3, 0:3, 0:3].mean())  # location (1,1): channel 3's own window


def test_mean_mapper_mixes_channels_like_adaptive_pooling():
    # 2 channels x 9 window values = 18 numbers -> 3 bins of 6: bin 1 straddles both channels
    x = torch.arange(18.0).reshape(1, 18)
    assert mean_map(x, 3).tolist() == [[2.5, 8.5, 14.5]]
    assert torch.equal(mean_map(x, None), x)


def test_coarser_layer_is_upsampled_bilinearly_and_aggregated():
    gen = torch.Generator().manual_seed(3)
    fine, coarse = torch.randn(1, 2, 8, 8, generator=gen), torch.randn(1, 3, 4, 4, generator=gen)
    emb, grid = embed_batch([fine, coarse], pretrain_dim=None, target_dim=None, patchsize=1)
    assert grid == (8, 8) and emb.shape == (1, 64, 5)
    up = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(emb[0, :, 2:], up[0].permute(1, 2, 0).reshape(64, 3), atol=1e-6)
    assert torch.allclose(emb[0, :, :2], fine[0].permute(1, 2, 0).reshape(64, 2))
    pooled, _ = embed_batch([fine, coarse], pretrain_dim=None, target_dim=1, patchsize=1)
    assert torch.allclose(pooled[0, :, 0], emb[0].mean(1), atol=1e-6)


def _model_with_bank(bank: torch.Tensor, **kw) -> PatchCore:
    model = PatchCore(FeatureExtractor("resnet18", ["layer2"]), smoothing_sigma=0, **kw)
    model.memory_bank = bank
    return model


def test_image_score_is_max_patch_squared_distance_and_reweighting():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    emb = torch.tensor([[[0.0, 0.5], [3.0, 0.0]]])  # patch scores 0.25 and 4 (nearest rows 0 and 1 / 2: tie -> 1)
    model = _model_with_bank(bank)
    scores, maps = model.score_embeddings(emb, (1, 2), (2, 4))
    assert scores.tolist() == [4.0]
    assert maps.shape == (1, 2, 4) and maps.max() == pytest.approx(4.0) and maps.min() == pytest.approx(0.25)
    # Eq. 7 with b=2: m_test=(3,0), m*=(1,0), N_2(m*) = {(1,0), (0,0)}: w = 1 - e^2 / (e^2 + e^3)
    weighted, _ = _model_with_bank(bank, reweight=True, reweight_neighbors=2).score_embeddings(emb, (1, 2), (2, 4))
    w = 1 - np.exp(2) / (np.exp(2) + np.exp(3))
    assert weighted[0] == pytest.approx(4.0 * w, rel=1e-6)


def test_gaussian_smoothing_preserves_mass_and_spreads_a_peak():
    maps = np.zeros((1, 41, 41), dtype=np.float32)
    maps[0, 20, 20] = 1.0
    out = gaussian_smooth(maps, 4.0)
    assert out.sum() == pytest.approx(1.0, rel=1e-4)
    assert out[0, 20, 20] == pytest.approx(1 / (2 * np.pi * 16), rel=0.02)  # peak of a 2-D Gaussian, sigma 4


def test_patchcore_end_to_end_on_real_magnetic_tiles(tmp_path):
    paths = write_magnetic_tile(tmp_path / "data", n_free=16, n_per_defect=3, size=64)
    out = tmp_path / "out"
    cfg = job_cfg("patchcore", {"patchcore": {
        "backbone": "resnet18", "pretrained": "none", "layers": ["layer2", "layer3"], "pretrain_dim": 64,
        "target_dim": 64, "patchsize": 3, "coreset_ratio": 0.25, "projection_dim": 16, "num_neighbors": 1,
        "reweight": False, "smoothing_sigma": 4.0, "batch_size": 8}}, backbone="resnet18")
    record = run_patchcore(cache_path=paths["cache"], masks_path=paths["masks"], split_path=paths["anomaly"],
                           metrics_path=out / "metrics.json", scores_path=out / "scores.parquet",
                           maps_path=out / "maps.npy", cfg=cfg, dataset="mt", seed=0, features="resnet18")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["stage"] == "anomaly" and saved["scorer"] == "patchcore" and saved["features"] == "resnet18"
    assert saved["backbone"] == "resnet18"
    m = saved["metrics"]
    assert 0.0 <= m["image_auroc"] <= 1.0 and 0.0 <= m["pixel_auroc"] <= 1.0 and m["pro"] is not None
    assert m["memory_bank_size"] == int(8 * 64 * 0.25)  # 8 train images x 8x8 patches x ratio
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["subset"]) == {"holdout", "test"} and len(scores) == 3 + 20
    assert np.isfinite(scores["score"]).all()
    assert list(scores.columns) == ["row", "subset", "label", "score", "map_index"]
    maps = np.load(out / "maps.npy")
    assert maps.dtype == np.float32 and maps.shape[1:] == (64, 64)
    # 16 maps: all 5 nominal test images, anomalous ones fill the rest (anomaly/protocol.py)
    assert len(maps) == (scores["map_index"] >= 0).sum() == 16
    kept = scores[scores["map_index"] >= 0]
    assert kept["label"].tolist().count(0) == 5
    assert record["metrics"]["threshold"] == pytest.approx(
        np.quantile(scores.loc[scores["subset"] == "holdout", "score"], 0.95))


def test_random_init_control_runs_the_same_backbone_untrained_and_says_so(tmp_path):
    """patchcore.controls: [random]: the job of wildcard 'random' (its params from the real params
    layer) runs EfficientNet-Lite0 at random init; its row says features 'random', backbone lite0,
    and its scores differ from the package-weights job's on the same images."""
    paths = write_magnetic_tile(tmp_path / "data", n_free=16, n_per_defect=3, size=64)
    section = {"backbone": "efficientnet_lite0", "pretrained": "package", "pretrain_dim": 32, "target_dim": 32,
               "coreset_ratio": 0.25, "projection_dim": 16, "batch_size": 8, "controls": ["random"]}
    saved, scores = {}, {}
    for wildcard in ("efficientnet_lite0", "random"):
        out = tmp_path / wildcard
        run_patchcore(cache_path=paths["cache"], masks_path=paths["masks"], split_path=paths["anomaly"],
                      metrics_path=out / "metrics.json", scores_path=out / "scores.parquet", maps_path=out / "maps.npy",
                      cfg=job_cfg("patchcore", {"patchcore": section}, backbone=wildcard), dataset="mt", seed=0,
                      features=wildcard)
        saved[wildcard] = json.loads((out / "metrics.json").read_text())
        scores[wildcard] = pd.read_parquet(out / "scores.parquet")["score"].to_numpy()
    main, control = saved["efficientnet_lite0"], saved["random"]
    assert (main["features"], main["backbone"]) == ("efficientnet_lite0", "efficientnet_lite0")
    assert (control["features"], control["backbone"]) == ("random", "efficientnet_lite0")
    assert main["config"]["patchcore"]["pretrained"] == "package" and control["config"]["patchcore"]["pretrained"] == "none"
    assert scores["random"].shape == scores["efficientnet_lite0"].shape
    assert not np.allclose(scores["random"], scores["efficientnet_lite0"])
    with pytest.raises(DefectbenchError, match="features 'resnet18'"):
        run_patchcore(cache_path=paths["cache"], masks_path=paths["masks"], split_path=paths["anomaly"],
                      metrics_path=tmp_path / "x.json", scores_path=tmp_path / "x.parquet", maps_path=tmp_path / "x.npy",
                      cfg=job_cfg("patchcore", {"patchcore": section}, backbone="resnet18"), dataset="mt", seed=0,
                      features="resnet18")


def test_bad_split_is_a_one_line_error(tmp_path):
    paths = write_magnetic_tile(tmp_path / "data", n_free=16, n_per_defect=3, size=64)
    split = pd.read_parquet(paths["anomaly"])
    split[split["subset"] != "holdout"].to_parquet(tmp_path / "nohold.parquet")
    with pytest.raises(DefectbenchError, match="no 'holdout' images"):
        run_patchcore(cache_path=paths["cache"], masks_path=paths["masks"], split_path=tmp_path / "nohold.parquet",
                      metrics_path=tmp_path / "m.json", scores_path=tmp_path / "s.parquet", maps_path=tmp_path / "x.npy",
                      cfg=job_cfg("patchcore", {"patchcore": {"backbone": "resnet18"}}, backbone="resnet18"), dataset="mt", seed=0,
                      features="resnet18")
    assert not (tmp_path / "m.json").exists()


def test_layernorm_is_applied_per_image_before_patchify_on_both_paths():
    gen = torch.Generator().manual_seed(6)
    layer = torch.randn(2, 4, 5, 5, generator=gen) * 3 + 1
    normed = (layer - layer.mean((1, 2, 3), keepdim=True)) / (layer.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    fast, _ = embed_batch([layer], pretrain_dim=4, target_dim=None, layernorm=True)  # dim == C: pooled path
    general, _ = embed_batch([layer], pretrain_dim=6, target_dim=None, layernorm=True)  # unfold + adaptive pool
    ref_fast, _ = embed_batch([normed], pretrain_dim=4, target_dim=None)
    ref_general, _ = embed_batch([normed], pretrain_dim=6, target_dim=None)
    assert torch.allclose(fast, ref_fast, atol=1e-5) and torch.allclose(general, ref_general, atol=1e-5)
