"""DDPM pretraining and DiffCL diffusion views (defectbench.diffusion.ddpm / .views).

Tiny on purpose: 16 px images, a two-level UNet of widths 8/16, one or two epochs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from defectbench.data.cache import read_split_images
from defectbench.diffusion import ddpm, views
from defectbench.runtime import DefectbenchError
from job_cfg import job_cfg

CPU = torch.device("cpu")
SECTION = {"epochs": 1, "batch_size": 4, "block_out_channels": [8, 16], "layers_per_block": 1, "checkpoint_every": 1,
           "lr": 1e-3, "ema_decay": 0.999, "views": {"k": 2, "ddim_steps": 5, "batch_size": 8}}
TINY = job_cfg("pretrain_diffusion", {"diffusion": SECTION})["diffusion"]


def smooth_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus a blob: images a UNet can tell from noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 0.8, 3)
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        img = np.stack([a * xx + (1 - a) * yy, b * blob + 0.3, c * (1 - xx)], -1)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return ddpm.build_unet(16, [8, 16], 1).eval(), ddpm.make_scheduler(TINY)


# ----------------------------------------------------------------------------- schedule and noising
def test_alpha_bar_table_prepends_beta_zero():
    table = ddpm.alpha_bar_table(torch.tensor([0.1, 0.2], dtype=torch.float64))
    assert table.tolist() == pytest.approx([1.0, 0.9, 0.72])
    assert float(ddpm.alpha_bar(table, -1)) == 1.0
    assert float(ddpm.alpha_bar(table, 0)) == pytest.approx(0.9)
    assert ddpm.alpha_bar(table, torch.tensor([1, -1])).tolist() == pytest.approx([0.72, 1.0])
    # For t >= 0 it is diffusers' alphas_cumprod of the same linear schedule (tests/test_unet.py).
    sched = ddpm.make_scheduler({"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    assert len(ddpm.scheduler_table(sched)) == 1001


def test_noise_images_by_hand_and_against_diffusers():
    x0 = torch.tensor([[[[1.0, -0.5]]], [[[0.2, 0.0]]]])
    eps = torch.tensor([[[[0.5, 1.0]]], [[[-1.0, 2.0]]]])
    out = ddpm.noise_images(x0, eps, torch.tensor([0.64, 0.36]))
    # sqrt(.64)=.8, sqrt(.36)=.6 ; second: sqrt(.36)=.6, sqrt(.64)=.8
    expected = torch.tensor([[[[0.8 + 0.3, -0.4 + 0.6]]], [[[0.12 - 0.8, 1.6]]]])
    torch.testing.assert_close(out, expected)
    from diffusers import DDPMScheduler

    sched = ddpm.make_scheduler(TINY)
    table = ddpm.scheduler_table(sched)
    theirs = DDPMScheduler(num_train_timesteps=sched.num_train_timesteps, beta_start=sched.beta_start,
                           beta_end=sched.beta_end, beta_schedule="linear")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 4, 4, generator=g)
    e = torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([0, 250, 999])
    torch.testing.assert_close(ddpm.noise_images(x, e, ddpm.alpha_bar(table, t).float()), theirs.add_noise(x, e, t))


def test_epsilon_loss_is_mse():
    assert float(ddpm.epsilon_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))) == pytest.approx(2.5)


def test_ema_update_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ddpm.EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # d = min(0.9, 1/10) = 0.1 -> 0.1*0 + 0.9*1
    assert float(ema.shadow["weight"]) == pytest.approx(0.9)
    ema.update(model)  # d = min(0.9, 2/11)
    d = 2 / 11
    assert float(ema.shadow["weight"]) == pytest.approx(d * 0.9 + (1 - d))
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9  # warm-up capped by the configured decay
    other = ddpm.EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == ema.num_updates and torch.equal(other.shadow["weight"], ema.shadow["weight"])


def test_bad_inputs_name_the_file(tmp_path):
    np.save(tmp_path / "cache.npy", np.zeros((2, 4, 4), np.uint8))  # not (N,S,S,3)
    pd.DataFrame({"row": [0], "subset": ["train"], "label": [0]}).to_parquet(tmp_path / "split.parquet")
    with pytest.raises(DefectbenchError, match="missing.parquet"):
        read_split_images(tmp_path / "missing.parquet", tmp_path / "cache.npy", "train")
    with pytest.raises(DefectbenchError, match="cache.npy"):
        read_split_images(tmp_path / "split.parquet", tmp_path / "cache.npy", "train")


def test_build_unet_rejects_indivisible_size():
    with pytest.raises(DefectbenchError, match="block_out_channels"):
        ddpm.build_unet(18, [8, 16, 32], 1)


def test_ddim_step_eta0_matches_diffusers():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(20)  # prev = t - 50
    table = ddpm.alpha_bar_table(sched.betas)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for t in (300, 0):
        ref = sched.step(eps, t, x, eta=0.0).prev_sample
        ours, _ = ddpm.ddim_step(x, eps, ddpm.alpha_bar(table, torch.tensor([t, t])).float(),
                                 ddpm.alpha_bar(table, torch.tensor([t - 50 if t else -1] * 2)).float())
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- training, resume, save/load
def test_train_resume_matches_uninterrupted(tmp_path):
    images = smooth_images(4)  # one batch of 4 per epoch
    cfg2 = {**TINY, "epochs": 2}
    full, _, hist_full = ddpm.train_ddpm(images, cfg2, seed=3, device=CPU, checkpoint_path=tmp_path / "a.pt")
    # "killed" after epoch 1: a 1-epoch run leaves its checkpoint; the 2-epoch run resumes from it
    ddpm.train_ddpm(images, TINY, seed=3, device=CPU, checkpoint_path=tmp_path / "b.pt")
    resumed, _, hist_res = ddpm.train_ddpm(images, cfg2, seed=3, device=CPU, checkpoint_path=tmp_path / "b.pt")
    assert len(hist_full) == len(hist_res) == 2
    assert hist_res["loss"].tolist() == pytest.approx(hist_full["loss"].tolist(), rel=0, abs=0)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    # the EMA weights differ from the raw ones (they are what is returned)
    assert set(hist_full.columns) >= {"epoch", "loss", "lr", "images_per_s", "ema_decay"}


def test_save_pretrained_round_trip(tmp_path, tiny_model):
    unet, sched = tiny_model
    ddpm.save_diffusion(tmp_path / "model", unet, sched)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directory left
    loaded, loaded_sched = ddpm.load_diffusion(tmp_path / "model")
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), unet(x, t))
    torch.testing.assert_close(loaded_sched.betas, sched.betas)
    assert loaded_sched.num_train_timesteps == 1000
    # saving again replaces the directory atomically
    ddpm.save_diffusion(tmp_path / "model", unet, sched)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(DefectbenchError, match="not a saved diffusion model"):
        ddpm.load_diffusion(tmp_path / "nothing")


# ----------------------------------------------------------------------------- views
def test_view_timesteps_and_trajectories():
    assert views.timesteps_for(200, 5) == [200, 160, 120, 80, 40]
    assert views.timesteps_for(3, 1) == [3]
    table = ddpm.alpha_bar_table(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    visited = []

    def spy(x, t):
        visited.append(t.tolist())
        return torch.zeros_like(x)

    x0 = torch.zeros(2, 3, 2, 2)
    views.denoise_partial(spy, x0, torch.zeros_like(x0), torch.tensor([200, 300]), torch.tensor([5, 3]), table)
    # sample 0: 200,160,120,80,40 ; sample 1: 300,200,100 then idle (t=0, not applied)
    assert [v[0] for v in visited] == [200, 160, 120, 80, 40]
    assert [v[1] for v in visited[:3]] == [300, 200, 100]


def test_zero_noise_oracle_recovers_image():
    """With ε̂ = the true noise, DDIM(η=0) from any level returns the clean image exactly."""
    table = ddpm.alpha_bar_table(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 4, 4, generator=g)
    t_start = torch.tensor([400, 250])

    def oracle(x, t):  # the exact noise of a DDIM(η=0) trajectory stays `noise`
        return noise

    out = views.denoise_partial(oracle, x0, noise, t_start, torch.tensor([4, 7]), table)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_views_shape_determinism_and_strength(tiny_model):
    unet, sched = tiny_model
    images = smooth_images(3)
    rows = np.array([5, 9, 11])
    kw = dict(strength_min=0.2, strength_max=0.5, ddim_steps=6, seed=0, device=CPU)
    a = views.make_views(unet, sched, images, rows, k=2, batch_size=6, **kw)
    b = views.make_views(unet, sched, images, rows, k=2, batch_size=1, **kw)
    assert a.shape == (3, 2, 16, 16, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # independent of batching (up to rounding)
    assert not np.array_equal(a[:, 0], a[:, 1])  # the K variants differ
    other_seed = views.make_views(unet, sched, images, rows, k=2, batch_size=6, **{**kw, "seed": 1})
    assert not np.array_equal(a, other_seed)

    def dist(s):
        v = views.make_views(unet, sched, images, rows, k=1, batch_size=6,
                             **{**kw, "strength_min": s, "strength_max": s})
        return np.abs(v[:, 0].astype(float) - images.astype(float)).mean()

    d02, d05 = dist(0.2), dist(0.5)
    assert 0 < d02 < d05


def test_pretrain_and_views_stages(tmp_path):
    n = 10
    images = smooth_images(n)
    cache = tmp_path / "cache-16.npy"
    np.save(cache, images)
    split = pd.DataFrame({"row": np.arange(n)[::-1], "subset": ["train"] * 6 + ["test"] * 4,
                          "label": np.arange(n) % 2, "label_name": "x"})
    split_path = tmp_path / "split.parquet"
    split.to_parquet(split_path)
    out = tmp_path / "diffusion" / "ds" / "classification" / "seed0"
    cfg = job_cfg("pretrain_diffusion", {"diffusion": SECTION})
    cfg["diffusion"].update(job_cfg("diffusion_views", {"diffusion": SECTION})["diffusion"])  # one cfg for both stages
    record = ddpm.pretrain_diffusion(cache, split_path, out / "model", out / "metrics.json", out / "history.parquet",
                                     cfg, dataset="ds", task="classification", seed=0)
    assert record["stage"] == "pretraining" and record["method"] == "ddpm" and record["task"] == "classification"
    assert record["metrics"]["n_train"] == 6.0 and math.isfinite(record["metrics"]["final_loss"])
    # one epoch is far from converged; without masks only the loss is judged
    assert record["extra"]["converged"] is False and "rec_error_ratio" not in record["metrics"]
    assert json.loads((out / "metrics.json").read_text())["device"] == "cpu"
    assert len(pd.read_parquet(out / "history.parquet")) == 1
    assert not list(out.glob("checkpoint*"))  # removed after success
    v = views.diffusion_views(out / "model", cache, split_path, out / "views.npy", cfg, seed=0)
    assert v.shape == (6, 2, 16, 16, 3)
    # aligned with the train rows sorted by row: train rows are 4..9 -> view i belongs to image 4+i
    train_rows = np.sort(split[split.subset == "train"]["row"].to_numpy())
    d_own = np.abs(v[:, 0].astype(float) - images[train_rows].astype(float)).mean()
    d_shift = np.abs(v[:, 0].astype(float) - images[train_rows[::-1]].astype(float)).mean()
    assert d_own < d_shift
    assert sorted(p.name for p in out.iterdir()) == ["history.parquet", "metrics.json", "model", "views.npy"]


def test_pretrain_refuses_masks_of_another_size(tmp_path):
    images = smooth_images(6)
    np.save(tmp_path / "cache-16.npy", images)
    np.save(tmp_path / "masks-32.npy", np.zeros((6, 32, 32), np.uint8))
    pd.DataFrame({"row": np.arange(6), "subset": ["train"] * 4 + ["test"] * 2, "label": [0] * 4 + [1] * 2,
                  "label_name": "x"}).to_parquet(tmp_path / "split.parquet")
    out = tmp_path / "out"
    with pytest.raises(DefectbenchError, match="masks-32.npy: masks"):
        ddpm.pretrain_diffusion(tmp_path / "cache-16.npy", tmp_path / "split.parquet", out / "model",
                                out / "metrics.json", out / "history.parquet", {"diffusion": TINY, "device": "cpu"},
                                dataset="ds", task="anomaly", seed=0, masks_path=tmp_path / "masks-32.npy")
    assert not (out / "metrics.json").exists() and not (out / "model").exists()
