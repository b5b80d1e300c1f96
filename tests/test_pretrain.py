"""Contrastive pretraining on REAL NEU steel images: every method runs one tiny epoch end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from defectbench.models.encoders import load_encoder
from defectbench.runtime import DefectbenchError, load_torch
from defectbench.config import validate_config
from defectbench.registry import CONTRASTIVE_METHODS
from defectbench.ssl.pretrain import loss_kwargs, pretrain_contrastive
from neu_fixture import write_tiny_dataset

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def neu(tmp_path_factory):
    root = tmp_path_factory.mktemp("neu")
    paths = write_tiny_dataset(root, per_class=6, size=SIZE, test_per_class=2)  # 24 train, 12 test
    # Stand-in diffusion variants (K=2) aligned with the train rows sorted by row: shifted and
    # brightened copies of the real images (the diffusion stage itself is tested elsewhere).
    split = pd.read_parquet(paths["split"])
    rows = np.sort(split.loc[split["subset"] == "train", "row"].to_numpy())
    cache = np.load(paths["cache"])[rows]
    views = np.stack([np.roll(cache, 3, axis=1), np.clip(cache.astype(int) + 40, 0, 255).astype(np.uint8)], axis=1)
    np.save(root / "views.npy", views)
    paths["views"] = root / "views.npy"
    return paths


def _cfg(**overrides):
    """The contrastive section as a job sees it: tiny values over the schema's defaults."""
    contrastive = {"epochs": 1, "batch_size": 8, "projector": [64, 32], "checkpoint_every": 1, **overrides}
    cfg = validate_config({"datasets": {"neu": {"source": {"kind": "directory", "path": "x"}, "layout": "imagefolder"}},
                           "device": "cpu", "contrastive": contrastive})
    return {"protocol": "clean", "device": "cpu", "contrastive": cfg["contrastive"]}


def _run(neu, tmp_path, method, cfg=None, views=True, name=None):
    out = tmp_path / (name or method)
    record = pretrain_contrastive(
        cache_path=neu["cache"], split_path=neu["split"], encoder_path=out / "encoder.pt",
        history_path=out / "history.parquet", metrics_path=out / "metrics.json", cfg=cfg or _cfg(),
        dataset="neu", method=method, backbone="resnet18", seed=0, task="classification",
        views_path=neu["views"] if views else None,
    )
    return out, record


@pytest.mark.parametrize("method", CONTRASTIVE_METHODS)
def test_every_method_trains_one_epoch_on_real_images(neu, tmp_path, method):
    out, record = _run(neu, tmp_path, method)
    hist = pd.read_parquet(out / "history.parquet")
    assert list(hist["epoch"]) == [1]
    assert np.isfinite(hist["loss"]).all() and {"pos_cos", "neg_cos", "images_per_s", "lr"} <= set(hist.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage"] == "pretraining"
    assert {k: metrics[k] for k in ("dataset", "method", "backbone", "seed", "task")} == {
        "dataset": "neu", "method": "eps_supinfonce" if method == "fairkl" else method,  # labelled by what ran
        "backbone": "resnet18", "seed": 0, "task": "classification"}
    assert metrics["device"] == "cpu" and metrics["extra"]["amp"] == "none"
    assert metrics["extra"]["augment_preset"] == "grey"  # NEU is grey: the A.4 grey recipe is picked
    assert metrics["metrics"]["train_images"] == 24 and metrics["metrics"]["images_per_s"] > 0
    assert metrics["metrics"]["train_steps"] == 1 * (24 // metrics["metrics"]["batch_size"])  # 1 epoch, drop_last
    enc, dim, meta = load_encoder(out / "encoder.pt", torch.device("cpu"))
    assert dim == 512 and meta["image_size"] == SIZE
    feats = enc(torch.randn(3, 3, SIZE, SIZE))
    assert feats.shape == (3, 512) and torch.isfinite(feats).all()
    assert not list(out.glob("checkpoint-*.pt"))  # the checkpoint is removed once outputs exist
    if method == "diffcl":
        assert 0 < hist["generated_frac"].iloc[0] < 1
        assert "reconstruction" in metrics["extra"]["note"]
    if method == "fairkl":
        assert metrics["extra"]["fairkl_bias"].startswith("none")  # no views by default: eps-SupInfoNCE


def test_diffcl_with_only_real_views_is_exactly_simclr(neu, tmp_path):
    """DiffCL differs from SimCLR only in the source of view 2."""
    simclr, _ = _run(neu, tmp_path, "simclr")
    same, _ = _run(neu, tmp_path, "diffcl", _cfg(method_params={"diffcl": {"real_prob": 1.0}}), name="diffcl_real")
    diff, _ = _run(neu, tmp_path, "diffcl", _cfg(method_params={"diffcl": {"real_prob": 0.0}}), name="diffcl_gen")
    a, b, c = (load_torch(p / "encoder.pt")["state_dict"] for p in (simclr, same, diff))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert pd.read_parquet(diff / "history.parquet")["generated_frac"].iloc[0] == 1.0


def test_diffcl_adainf_variant_and_fairkl_with_views(neu, tmp_path):
    out, record = _run(neu, tmp_path, "diffcl", _cfg(method_params={"diffcl": {"variant": "adainf"}}), name="adainf")
    hist = pd.read_parquet(out / "history.parquet")
    assert record["extra"]["diffcl_variant"] == "adainf"
    assert record["metrics"]["batch_size"] == 8 and 0 < hist["generated_frac"].iloc[0] < 1  # pool of 48 (24 real + 24 generated)
    assert len(hist) == 1 and record["metrics"]["train_images"] == 24
    out, record = _run(neu, tmp_path, "fairkl", _cfg(method_params={"fairkl": {"use_views": True}}), name="fairkl_views")
    assert record["extra"]["fairkl_bias"] == "real_vs_generated" and record["method"] == "fairkl"


def test_resume_after_kill_gives_same_encoder(neu, tmp_path, monkeypatch):
    cfg = _cfg(epochs=2)
    straight, _ = _run(neu, tmp_path, "simclr", cfg, name="straight")
    # "kill" the second run right after its first checkpoint, then rerun the stage
    import defectbench.train as train_mod
    real_save = train_mod.save_torch
    calls = []

    def save_then_die(path, obj):
        real_save(path, obj)
        calls.append(obj["epoch"])
        if obj["epoch"] == 1:
            raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(train_mod, "save_torch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(neu, tmp_path, "simclr", cfg, name="resumed")
    assert not (tmp_path / "resumed" / "encoder.pt").exists() and list((tmp_path / "resumed").glob("checkpoint-*.pt"))
    monkeypatch.setattr(train_mod, "save_torch", real_save)
    resumed, _ = _run(neu, tmp_path, "simclr", cfg, name="resumed")
    a = load_torch(straight / "encoder.pt")["state_dict"]
    b = load_torch(resumed / "encoder.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(pd.read_parquet(resumed / "history.parquet")["epoch"]) == [1, 2]


def test_bf16_channels_last_switches_are_recorded(neu, tmp_path):
    out, record = _run(neu, tmp_path, "simclr", _cfg(amp="bf16", channels_last=True), name="bf16")
    assert record["extra"]["amp"] == "bf16" and record["extra"]["channels_last"] is True
    assert pd.read_parquet(out / "history.parquet")["amp"].tolist() == ["bf16"]


def test_deterministic_config_key_reaches_torch_and_is_recorded(neu, tmp_path):
    """`deterministic: true` in the config -> the job's params -> torch.use_deterministic_algorithms
    during the run (the record reads torch's own flag); a job without the key runs with it off."""
    from defectbench.params import job_params

    config = validate_config({"datasets": {"neu": {"source": {"kind": "directory", "path": "x"}, "layout": "imagefolder"}},
                              "device": "cpu", "deterministic": True,
                              "contrastive": {"epochs": 1, "batch_size": 8, "projector": [64, 32], "checkpoint_every": 1}})
    wc = {"method": "simclr", "dataset": "neu", "backbone": "resnet18", "seed": "0", "task": "classification"}
    on = job_params("pretrain_contrastive", config, wc)
    off = job_params("pretrain_contrastive", {**config, "deterministic": False}, wc)
    assert on["deterministic"] is True and "deterministic" not in off
    assert job_params("budget_pretrain", config, {**wc, "epochs": "2", "size": "32"})["deterministic"] is True
    try:
        _, record = _run(neu, tmp_path, "simclr", on, name="det")
        assert record["extra"]["deterministic"] is True and torch.are_deterministic_algorithms_enabled()
        assert record["extra"]["torch_threads"] == torch.get_num_threads()
        _, record = _run(neu, tmp_path, "simclr", off, name="nondet")
        assert record["extra"]["deterministic"] is False and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_bad_inputs_are_one_line_errors(neu, tmp_path):
    with pytest.raises(DefectbenchError, match="diffcl needs the diffusion views"):
        _run(neu, tmp_path, "diffcl", views=False, name="noviews")
    with pytest.raises(DefectbenchError, match="^config key contrastive.method_params.dcl.tau: unknown key"):
        _cfg(method_params={"dcl": {"tau": 0.1}})
    bad = tmp_path / "bad_views.npy"
    np.save(bad, np.zeros((3, 1, SIZE, SIZE, 3), dtype=np.uint8))
    with pytest.raises(DefectbenchError, match="bad_views.npy"):
        pretrain_contrastive(cache_path=neu["cache"], split_path=neu["split"], encoder_path=tmp_path / "x/encoder.pt",
                             history_path=tmp_path / "x/h.parquet", metrics_path=tmp_path / "x/m.json", cfg=_cfg(),
                             dataset="neu", method="diffcl", backbone="resnet18", seed=0, task="classification",
                             views_path=bad)
    assert not (tmp_path / "x" / "m.json").exists()


def test_loss_kwargs_use_shared_temperature_unless_overridden():
    c = _cfg()["contrastive"]
    assert loss_kwargs("simclr", c) == {"temperature": 0.5}
    assert loss_kwargs("supcon", c) == {"temperature": 0.1}
    assert loss_kwargs("diffcl", c) == {"temperature": 0.5}  # real_prob/variant are data-side keys
    assert "temperature" not in loss_kwargs("gca", c)  # GCA's epsilon plays that role


def test_compile_switch_reaches_the_stage(neu, tmp_path):
    """contrastive.compile goes to the stage's compile hook: without a C++ compiler, a one-line
    error naming the key before any training (the compiled step itself: tests/test_train.py)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, "no-such-cxx")}), pytest.raises(
            DefectbenchError, match="^contrastive.compile: true needs a C"):
        _run(neu, tmp_path, "simclr", _cfg(compile=True), name="compiled")
    assert not (tmp_path / "compiled" / "encoder.pt").exists()
