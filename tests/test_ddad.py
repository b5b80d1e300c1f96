"""DDAD (defectbench.diffusion.ddad): conditioned denoising, domain adaptation, anomaly maps, the stage.

Unit tests on hand-sized tensors; one end-to-end run on real magnetic-tile images with masks.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from ddad_control_fixture import (  # noqa: E402
    POSITIVE_CONTROL_DIFFUSION,
    POSITIVE_CONTROL_SIZES,
    control_config,
    nominal_image,
    prepare_control,
    run_control_ddad,
    write_mvtec_control,
)
from magnetic_tile_fixture import magnetic_tile_arrays  # noqa: E402

from defectbench import tables  # noqa: E402
from defectbench.diffusion import ddad, ddpm  # noqa: E402
from defectbench.models.backbones import FeatureExtractor  # noqa: E402
from defectbench.runtime import DefectbenchError  # noqa: E402
from job_cfg import job_cfg  # noqa: E402

CPU = torch.device("cpu")
TABLE = ddpm.alpha_bar_table(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for ε_θ that depends on x and t."""
    return 0.3 * x + 1e-3 * t.view(-1, 1, 1, 1).float() - 0.1


# ----------------------------------------------------------------------------- D.3
def test_step_sequence_faithful():
    pairs = ddad.ddad_timesteps(250, 25)
    assert pairs == [(225, 200), (200, 175), (175, 150), (150, 125), (125, 100), (100, 75), (75, 50), (50, 25),
                     (25, 0), (0, -1)]
    visited = []

    def spy(x, t):
        visited.append(int(t[0]))
        return torch.zeros_like(x)

    x = torch.zeros(1, 3, 2, 2)
    ddad.conditioned_reconstruction(spy, x, x, table=TABLE, steps=250, skip=25, w=4.0, eta=1.0,
                                    generator=torch.Generator().manual_seed(0))
    assert visited == [225, 200, 175, 150, 125, 100, 75, 50, 25, 0]  # first call t=225 on a sample noised to 250


def test_w0_is_plain_ddim_with_eta():
    """w = 0 removes the guidance: the loop is diffusers' DDIM with the same η and noise draws."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(40)  # prev_timestep = t - 25; t = 0 steps to ᾱ = 1
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    y0 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    for eta in (1.0, 0.5):
        ours = ddad.conditioned_reconstruction(toy_eps, x, y0, table=TABLE, steps=250, skip=25, w=0.0, eta=eta,
                                               generator=torch.Generator().manual_seed(7))
        ref_gen = torch.Generator().manual_seed(7)
        noise = torch.randn(x.shape, generator=ref_gen)
        sample = sched.alphas_cumprod[250].sqrt() * x + (1 - sched.alphas_cumprod[250]).sqrt() * noise
        for t in range(225, -1, -25):
            z = torch.randn(x.shape, generator=ref_gen)
            eps = toy_eps(sample, torch.full((2,), t))
            sample = sched.step(eps, t, sample, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(ours, sample, rtol=1e-4, atol=1e-4)


def test_guided_single_step_by_hand():
    """steps=25, skip=25: noise to ᾱ_25, one call at t=0, jump to ᾱ(-1)=1 (c1 = c2 = 0)."""
    x = torch.tensor([0.5, -0.2]).view(1, 2, 1, 1)
    y0 = torch.tensor([0.1, 0.3]).view(1, 2, 1, 1)
    w = 3.0
    g = torch.Generator().manual_seed(3)
    out = ddad.conditioned_reconstruction(toy_eps, x, y0, table=TABLE, steps=25, skip=25, w=w, eta=1.0, generator=g)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    a25 = float(np.prod(1 - np.linspace(1e-4, 0.02, 1000)[:26]))
    a0 = 1 - 1e-4
    xt = math.sqrt(a25) * x + math.sqrt(1 - a25) * noise
    eps = 0.3 * xt - 0.1  # toy_eps at t = 0
    yt = math.sqrt(a0) * y0 + math.sqrt(1 - a0) * eps
    eps_hat = eps - w * math.sqrt(1 - a0) * (yt - xt)
    x0 = (xt - math.sqrt(1 - a0) * eps_hat) / math.sqrt(a0)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- D.4
def test_domain_adaptation_loss_by_hand():
    rec = [torch.tensor([[1.0, 0.0]])]
    target = [torch.tensor([[0.0, 1.0]])]
    target_frozen = [torch.tensor([[0.0, 2.0]])]  # same direction as target: 0
    rec_frozen = [torch.tensor([[1.0, 1.0]])]  # 1 - 1/sqrt(2)
    loss = ddad.domain_adaptation_loss(rec, target, target_frozen, rec_frozen, lam=0.1)
    assert float(loss) == pytest.approx(1.0 + 0.1 * (1 - 1 / math.sqrt(2)))
    two_layers = ddad.domain_adaptation_loss(rec * 2, target * 2, target_frozen * 2, rec_frozen * 2, lam=0.1)
    assert float(two_layers) == pytest.approx(2 * float(loss))  # summed over layers


def _running_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches_tracked" in k}


def test_frozen_norm_stats_survive_train_mode():
    fe = FeatureExtractor("resnet18", ["layer1"], trainable=True, freeze_norm_stats=True)
    assert not any(m.training for m in fe.modules() if isinstance(m, torch.nn.BatchNorm2d))  # frozen from the start
    fe.train()
    norms = [m for m in fe.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [m for m in fe.modules() if isinstance(m, torch.nn.Conv2d)]
    assert norms and not any(m.training for m in norms) and all(m.training for m in convs)
    before = _running_stats(fe)
    fe(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert all(torch.equal(before[k], v) for k, v in _running_stats(fe).items())
    free = FeatureExtractor("resnet18", ["layer1"], trainable=True).train()
    assert all(m.training for m in free.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("da_bn", ["eval", "train"])
def test_domain_adaptation_batchnorm_buffers(da_bn, one_torch_thread):
    """da_bn eval: two epochs of adaptation (train_loop calls train() each epoch) change the weights
    but leave every BatchNorm buffer as loaded; da_bn train (DDAD's code) re-estimates them."""
    from defectbench.models.backbones import build_model

    torch.manual_seed(0)
    unet = ddpm.build_unet(32, [8, 16], 1, attention_levels=0).eval()
    images = np.stack([nominal_image(np.random.default_rng(i), 32) for i in range(8)])
    cfg = job_cfg("ddad", {"ddad": {"feature_backbone": "efficientnet_lite0", "pretrained": "package", "da_epochs": 2,
                                    "batch_size": 8, "steps": 50, "skip": 25, "da_bn": da_bn}}, backbone="efficientnet_lite0")["ddad"]
    loaded = build_model("efficientnet_lite0", "package")
    fe, history = ddad.adapt_feature_extractor(unet, TABLE, images, cfg, seed=0, device=CPU,
                                               checkpoint_path=Path(tempfile.mkdtemp()) / "ckpt.pt")
    assert len(history) == 2 and not fe.training
    stats, want = _running_stats(fe.model), _running_stats(loaded)
    assert stats.keys() == want.keys() and any(k.endswith("running_mean") for k in stats)
    unchanged = [k for k in stats if torch.equal(stats[k], want[k])]
    weights, loaded_weights = dict(fe.model.named_parameters()), dict(loaded.named_parameters())
    assert any(not torch.equal(weights[k], loaded_weights[k]) for k in weights)  # adaptation did train
    if da_bn == "eval":
        assert unchanged == list(stats)
    else:  # the stem's statistics and those of every block up to layer3 moved (later blocks never run)
        changed = [k for k in stats if k.endswith("running_mean") and k not in unchanged]
        assert "bn1.running_mean" in changed and any(k.startswith("blocks.4.") for k in changed)
    with pytest.raises(DefectbenchError, match="ddad.da_bn"):
        ddad.build_feature_extractors("resnet18", "none", "batch")


def test_feature_extractor_copies_start_equal_and_only_fe_trains():
    fe, fe0 = ddad.build_feature_extractors("resnet18")
    x = torch.randn(2, 3, 32, 32)
    fe.eval()
    a, b = fe(x), fe0(x)
    assert list(a) == ["layer1", "layer2", "layer3"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert all(p.requires_grad for p in fe.parameters()) and not any(p.requires_grad for p in fe0.parameters())
    assert fe.model is not fe0.model


# ----------------------------------------------------------------------------- D.5
def test_patch_mean_equals_unfold_mean():
    f = torch.randn(2, 5, 6, 6)
    unfolded = F.unfold(f, kernel_size=3, padding=1).view(2, 5, 9, 36).mean(2).view(2, 5, 6, 6)
    torch.testing.assert_close(ddad.patch_mean(f), unfolded)


def test_pixel_distance_by_hand():
    a = torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    b = torch.tensor([0.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert float(ddad.pixel_distance(a, b)) == pytest.approx((1 + 1 + 0.5) / 3)


def test_max_norm_batch_vs_image():
    d_f = torch.zeros(2, 1, 2, 2)
    d_p = torch.zeros(2, 1, 2, 2)
    d_f[0, 0, 0, 0], d_f[1, 0, 0, 0] = 2.0, 4.0
    d_p[0, 0, 1, 1], d_p[1, 0, 1, 1] = 1.0, 4.0
    batch = ddad.combine_distances(d_f, d_p, v=1.0, max_norm="batch")  # ratio 4/4 = 1
    image = ddad.combine_distances(d_f, d_p, v=1.0, max_norm="image")  # ratios 2/1, 4/4
    assert float(batch[0, 0, 1, 1]) == pytest.approx(1.0)
    assert float(image[0, 0, 1, 1]) == pytest.approx(2.0)
    torch.testing.assert_close(batch[1], image[1])
    # per-image normalisation does not depend on the batch mates; the faithful one does
    torch.testing.assert_close(ddad.combine_distances(d_f[:1], d_p[:1], 1.0, "image"), image[:1])
    assert not torch.allclose(ddad.combine_distances(d_f[:1], d_p[:1], 1.0, "batch"), batch[:1])
    assert float(ddad.combine_distances(d_f, d_p, v=0.5, max_norm="image")[0, 0, 1, 1]) == pytest.approx(1.0)


def test_gaussian_blur_matches_scipy():
    from scipy import ndimage

    assert len(ddad.gaussian_kernel1d(4.0)) == 33
    assert float(ddad.gaussian_kernel1d(4.0).sum()) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    m = rng.random((2, 40, 40)).astype(np.float32)
    ours = ddad.gaussian_blur(torch.from_numpy(m)[:, None], 4.0)[:, 0].numpy()
    # torch 'reflect' = scipy 'mirror'; scipy's radius int(truncate*sigma+0.5) with truncate 4 = 16
    ref = np.stack([ndimage.gaussian_filter(mi, 4.0, mode="mirror", truncate=4.0) for mi in m])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    small = rng.random((1, 1, 10, 10)).astype(np.float32)  # smaller than the radius: replicate border
    ref_small = ndimage.gaussian_filter(small[0, 0], 4.0, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(ddad.gaussian_blur(torch.from_numpy(small), 4.0)[0, 0].numpy(), ref_small, atol=1e-5)


def test_center_crop_only_from_256():
    small = np.zeros((2, 32, 32))
    assert ddad.maybe_crop(small).shape == (2, 32, 32)
    big = np.zeros((1, 256, 256))
    big[0, 16, 16] = 1.0
    big[0, 15, 15] = 5.0
    cropped = ddad.maybe_crop(big)
    assert cropped.shape == (1, 224, 224) and cropped[0, 0, 0] == 1.0 and cropped.max() == 1.0
    assert ddad.image_scores(big).tolist() == [1.0]  # the score is the max of the cropped map


# ----------------------------------------------------------------------------- end to end on real images
@pytest.fixture(scope="module")
def magnetic_tile(tmp_path_factory):
    """8 defect-free + 4 blowhole real magnetic-tile images (32 px) with masks, as cache/masks/split files."""
    images, masks, names = magnetic_tile_arrays(n_free=8, n_per_defect=4, size=32)
    keep = [i for i, name in enumerate(names) if name in ("MT_Free", "MT_Blowhole")]  # Free first, then Blowhole
    images, masks = images[keep], masks[keep]
    assert masks[:8].sum() == 0
    assert masks[8:].sum() > 0
    root = tmp_path_factory.mktemp("mt")
    np.save(root / "cache-32.npy", images)
    np.save(root / "masks-32.npy", masks)
    subset = ["train"] * 4 + ["holdout"] * 2 + ["test"] * 6
    split = pd.DataFrame({"row": np.arange(12), "subset": subset, "label": [0] * 8 + [1] * 4,
                          "label_name": ["good"] * 8 + ["blowhole"] * 4})
    split.to_parquet(root / "anomaly-seed0.parquet")
    return root


def test_ddad_stage_end_to_end(magnetic_tile, tmp_path):
    root = magnetic_tile
    model_dir = tmp_path / "pretrain" / "model"
    dcfg = {"epochs": 1, "batch_size": 4, "block_out_channels": [8, 16], "layers_per_block": 1, "checkpoint_every": 1}
    pre = tmp_path / "pretrain"
    pretrained = ddpm.pretrain_diffusion(root / "cache-32.npy", root / "anomaly-seed0.parquet", model_dir,
                                         pre / "metrics.json", pre / "history.parquet",
                                         job_cfg("pretrain_diffusion", {"diffusion": dcfg}), dataset="mt", task="anomaly", seed=0,
                                         masks_path=root / "masks-32.npy")
    # one epoch: the loss is far above converged_loss and the blowholes are not repaired
    pm = pretrained["metrics"]
    assert pm["final_loss"] > 0.1 and pretrained["extra"]["converged"] is False
    assert pm["rec_error_in_mask"] > 0 and pm["rec_error_out_mask"] > 0
    assert pm["rec_error_ratio"] == pytest.approx(pm["rec_error_in_mask"] / pm["rec_error_out_mask"])
    cfg = job_cfg("ddad", {"protocol": "faithful", "ddad": {
        "w": 4.0, "steps": 50, "skip": 25, "eta": 1.0, "v": 1.0, "da_epochs": 1, "da_lambda": 0.1, "w_da": 3.0,
        "feature_backbone": "resnet18", "pretrained": "none", "batch_size": 4, "max_norm": "batch", "sigma": 4.0}}, backbone="resnet18")
    out = tmp_path / "ddad"
    record = ddad.run_ddad(model_dir, root / "cache-32.npy", root / "masks-32.npy", root / "anomaly-seed0.parquet",
                           out / "metrics.json", out / "scores.parquet", out / "maps.npy", out / "da_history.parquet",
                           cfg, dataset="mt", seed=0, features="resnet18", diffusion_metrics_path=pre / "metrics.json")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["stage"] == "anomaly" and saved["scorer"] == "ddad" and saved["features"] == "resnet18"
    assert saved["backbone"] == "resnet18"
    assert saved["protocol"] == "faithful" and saved["extra"]["max_norm"] == "batch"
    assert saved["extra"]["da_bn"] == "eval"  # the default
    assert saved["diffusion_converged"] is False
    assert saved["metrics"]["diffusion_final_loss"] == pytest.approx(pm["final_loss"])
    assert saved["metrics"]["diffusion_rec_error_ratio"] == pytest.approx(pm["rec_error_ratio"])
    # the row is flagged in the anomaly table and its Markdown rendering
    anomaly = tables.build_tables([out / "metrics.json"])["anomaly"]
    assert anomaly["diffusion_converged"].tolist() == ["False"]
    assert "diffusion_converged" in tables.render_stage_markdown(anomaly, "anomaly")
    m = record["metrics"]
    for key in ("image_auroc", "image_auprc", "threshold", "f1", "f1_max_oracle", "pixel_auroc", "pro"):
        assert m[key] is not None and math.isfinite(m[key]), key
    assert 0 <= m["image_auroc"] <= 1 and 0 <= m["pixel_auroc"] <= 1
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["subset"].value_counts().to_dict() == {"test": 6, "holdout": 2}
    test = scores[scores.subset == "test"]
    assert test["row"].tolist() == list(range(6, 12)) and test["label"].tolist() == [0, 0, 1, 1, 1, 1]
    # threshold = 95th percentile of the holdout scores only
    assert m["threshold"] == pytest.approx(np.quantile(scores[scores.subset == "holdout"]["score"], 0.95))
    maps = np.load(out / "maps.npy")
    kept = test[test.map_index >= 0]
    assert maps.shape == (6, 32, 32) and len(kept) == 6
    np.testing.assert_allclose(maps.reshape(6, -1).max(1)[kept["map_index"]], kept["score"], rtol=1e-6)
    assert len(pd.read_parquet(out / "da_history.parquet")) == 1
    assert not list(out.glob("da-checkpoint*"))


# ----------------------------------------------------------------------------- convergence report
class ZeroEps(torch.nn.Module):
    """A UNet stand-in that predicts no noise at all."""

    def forward(self, x, t):
        return torch.zeros_like(x)


def test_mask_reconstruction_errors_by_hand():
    """With ε̂ = 0 every DDIM step rescales x_t, so the trajectory ends at x_t*/sqrt(ᾱ_t*) =
    x + sqrt((1-ᾱ)/ᾱ)·noise: the error is the same noise inside and outside the masks."""
    scheduler = ddpm.make_scheduler(job_cfg("pretrain_diffusion")["diffusion"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 2:5, 1:4] = True
    got = ddpm.mask_reconstruction_errors(ZeroEps(), scheduler, images, masks, seed=5, device=CPU, batch_size=2)
    gen = torch.Generator().manual_seed(5)
    noise = torch.cat([torch.randn((2, 3, 8, 8), generator=gen), torch.randn((1, 3, 8, 8), generator=gen)])
    a = float(ddpm.alpha_bar(TABLE, 250))
    err = (math.sqrt((1 - a) / a) * noise).abs().mean(1).numpy()
    assert got["rec_error_in_mask"] == pytest.approx(err[masks].mean(), rel=1e-4)
    assert got["rec_error_out_mask"] == pytest.approx(err[~masks].mean(), rel=1e-4)
    assert 0.7 < got["rec_error_ratio"] < 1.3  # nothing repaired: not a converged model


def test_convergence_verdict():
    assert ddpm.convergence(0.05, None, 0.1, 1.5) and not ddpm.convergence(0.37, None, 0.1, 1.5)
    assert ddpm.convergence(0.1, {"rec_error_ratio": 1.5}, 0.1, 1.5)  # both limits inclusive
    assert not ddpm.convergence(0.05, {"rec_error_ratio": 1.02}, 0.1, 1.5)  # defects reconstructed like the rest
    assert not ddpm.convergence(0.2, {"rec_error_ratio": 6.0}, 0.1, 1.5)
    assert ddpm.convergence(0.3, None, 0.5, 1.5)


# ----------------------------------------------------------------------------- positive control
def test_positive_control(tmp_path, one_torch_thread):
    """DDAD must find bright/dark squares on a plain grey texture (docs/ddad.md): the generated
    set goes through the data stage, diffusion pretraining and the DDAD stage (the library
    functions the workflow scripts call) with the schema's defaults for everything but sizes."""
    write_mvtec_control(tmp_path / "raw", size=32, **POSITIVE_CONTROL_SIZES)
    config = control_config(tmp_path / "raw", diffusion=POSITIVE_CONTROL_DIFFUSION)
    files = prepare_control(tmp_path, config)
    pretrained = json.loads(files["diffusion"].read_text())
    assert pretrained["extra"]["converged"] is True, pretrained["metrics"]
    assert pretrained["metrics"]["rec_error_ratio"] >= config["diffusion"]["converged_mask_ratio"]
    record = run_control_ddad(files, config, tmp_path / "ddad")
    assert record["extra"]["da_bn"] == "eval" and record["extra"]["max_norm"] == "batch"
    assert record["diffusion_converged"] is True
    scores = pd.read_parquet(tmp_path / "ddad" / "scores.parquet")
    assert (scores["subset"] == "test").sum() == 32 and scores["label"].sum() == 16
    m = record["metrics"]
    assert m["image_auroc"] >= 0.95, m
    assert m["pixel_auroc"] >= 0.9, m
