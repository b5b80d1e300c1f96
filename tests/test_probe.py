"""Feature extraction, the probe's augmentation, the probe trainer and the linear_probe stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from defectbench.features import extract_features
from defectbench.models.backbones import build_backbone, imagenet_normalize
from defectbench.probe import (
    fit_logistic,
    fit_logistic_probe,
    run_linear_probe,
    train_linear_probe,
    validation_rows,
)
from defectbench.runtime import DefectbenchError, load_torch
from neu_fixture import write_tiny_dataset

CPU = torch.device("cpu")


def test_extract_features_matches_direct_forward_across_batches():
    torch.manual_seed(0)
    net, dim = build_backbone("resnet18")
    net.train()  # extract_features must switch to eval mode itself
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    feats = extract_features(net, images, CPU, batch_size=2)
    assert not net.training
    with torch.no_grad():
        direct = net(imagenet_normalize(torch.from_numpy(images))).numpy()
    assert feats.shape == (5, dim) and feats.dtype == np.float32
    assert feats == pytest.approx(direct, abs=1e-4)
    with pytest.raises(DefectbenchError):
        extract_features(net, images[..., 0], CPU)


def test_train_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    y = rng.integers(0, 3, 90)
    views = (centres[y] + 0.3 * rng.normal(size=(2, 90, 3))).astype(np.float32)  # 2 views
    probe, history = train_linear_probe(views, y, 3, epochs=40, batch_size=32, lr=0.05, weight_decay=0.0,
                                        seed=0, device=CPU)
    with torch.no_grad():
        pred = probe(torch.from_numpy(centres.astype(np.float32))).argmax(1)
    assert pred.tolist() == [0, 1, 2]
    assert len(history) == 40 and history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert history["train_acc"].iloc[-1] > 0.95


def test_fit_logistic_matches_sklearn_optimum_and_folds_standardisation():
    """The converged probe is the penalised maximum-likelihood solution: the same as sklearn's
    lbfgs LogisticRegression with C = 1 / (l2 * n) on the standardised features."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 4)) * [1.0, 5.0, 0.1, 2.0] + [0.0, 10.0, -3.0, 1.0]
    x[:, 0] += 1.5 * y  # informative, overlapping classes: the optimum is finite
    fit = fit_logistic(x, y, 3, l2=0.05, max_steps=500, tolerance=1e-6)
    assert fit.converged and fit.steps < 500 and fit.grad_max <= 1e-6
    z = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1 / (0.05 * 60), tol=1e-12, max_iter=10_000).fit(z, y)
    assert fit.predict_proba(x) == pytest.approx(ref.predict_proba(z), abs=1e-5)
    # the recorded final loss is the penalised objective, recomputed here by hand from the head
    w_std = fit.weight * x.std(0)  # back to the standardised space
    p_ = fit.predict_proba(x)
    by_hand = -np.mean(np.log(p_[np.arange(60), y])) + 0.5 * 0.05 * (w_std ** 2).sum()
    assert fit.train_loss == pytest.approx(by_hand, rel=1e-9)
    # a step cap that is hit is recorded as not converged
    capped = fit_logistic(x, y, 3, l2=0.05, max_steps=2, tolerance=1e-12)
    assert capped.steps == 2 and not capped.converged


def test_fit_logistic_balanced_weights_move_the_boundary_towards_the_small_class():
    x = np.array([[0.0], [0.2], [0.4], [0.6], [0.8], [2.0]])
    y = np.array([0, 0, 0, 0, 0, 1])
    plain = fit_logistic(x, y, 2, l2=0.1)
    balanced = fit_logistic(x, y, 2, l2=0.1, class_weight="balanced")
    probe_point = np.array([[1.2]])
    assert balanced.predict_proba(probe_point)[0, 1] > plain.predict_proba(probe_point)[0, 1]
    with pytest.raises(DefectbenchError, match="probe.class_weight"):
        fit_logistic(x, y, 2, l2=0.1, class_weight="inverse")


def test_validation_rows_are_stratified_and_leave_every_class_in_training():
    labels = np.array([0] * 10 + [1] * 5 + [2])
    val = validation_rows(labels, 0.2, seed=3)
    assert [int(val[labels == c].sum()) for c in range(3)] == [2, 1, 0]  # round(10*.2), round(5*.2), 1 image: none
    assert np.array_equal(val, validation_rows(labels, 0.2, seed=3))
    assert not np.array_equal(val, validation_rows(labels, 0.2, seed=4))


def test_fit_logistic_probe_picks_the_lowest_validation_loss_and_refits_on_all():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(2), 15)
    views = (rng.normal(size=(2, 30, 8)) + 0.8 * y[None, :, None]).astype(np.float32)  # 2 views
    fit, history = fit_logistic_probe(views, y, 2, l2_grid=[1e-3, 1e-1, 10.0], val_fraction=0.2, seed=0,
                                      max_steps=200, tolerance=1e-7, class_weight=None)
    val = history[history["stage"] == "validation"]
    assert sorted(val["l2"]) == [1e-3, 1e-1, 10.0]
    assert fit.l2 == float(val.loc[val["val_loss"].idxmin(), "l2"])
    final = history[history["stage"] == "final"].iloc[0]
    assert final["l2"] == fit.l2 and final["steps"] == fit.steps and final["loss"] == pytest.approx(fit.train_loss)
    # one labelled image per class: no validation split, the grid's middle value
    fit1, hist1 = fit_logistic_probe(views[:, [0, 15]], y[[0, 15]], 2, l2_grid=[1e-3, 1e-1, 10.0], val_fraction=0.2,
                                     seed=0, max_steps=200, tolerance=1e-7, class_weight=None)
    assert fit1.l2 == 1e-1 and list(hist1["stage"]) == ["final"]


def _neu_dataset(tmp_path, per_class=6):
    """REAL NEU steel images (32 px), 4 per class train / 2 test, with a manifest."""
    paths = write_tiny_dataset(tmp_path, per_class=per_class, size=32, test_per_class=2)
    split = pd.read_parquet(paths["split"])
    manifest = pd.DataFrame({
        "path": [f"img{i}.png" for i in range(len(split))], "label": split["label"],
        "class_name": split["label_name"], "is_anomalous": True, "mask_path": None, "width": 200, "height": 200,
        "sha256": "0" * 64, "group": None, "source_split": None, "pixel_scale": "8bit",
    })
    manifest.to_parquet(tmp_path / "manifest.parquet")
    return paths, split


def _probe_cfg(**overrides):
    probe = {"kind": "logistic", "l2_grid": [1e-3, 1e-1, 10.0], "val_fraction": 0.2, "max_steps": 300,
             "tolerance": 1e-6, "epochs": 30, "batch_size": 16, "lr": 0.01, "weight_decay": 1e-6, "augment": True,
             "augment_views": 2, "crop_scale_min": 0.5, "class_weight": None, "controls": ["random"],
             "pretrained": "none", "pretrained_backbones": None, "feature_batch_size": 16, "amp": "none"}
    probe.update(overrides)
    return {"code_version": "test", "protocol": "clean", "device": "cpu", "probe": probe}


def _run(tmp_path, paths, cfg, method="random", encoder_path=None, pretrain_metrics_path=None, fractions=(0.5, 1.0)):
    out_dirs = [str(tmp_path / "out" / f"labels{100 * f:g}") for f in fractions]
    records = run_linear_probe(
        cache_path=str(paths["cache"]), split_path=str(paths["split"]), manifest_path=str(tmp_path / "manifest.parquet"),
        encoder_path=encoder_path, pretrain_metrics_path=pretrain_metrics_path, out_dirs=out_dirs,
        fractions=list(fractions), cfg=cfg, dataset="neu", method=method, backbone="resnet18", seed=0)
    return records, [Path(d) for d in out_dirs]


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_one_probe_job_evaluates_every_label_fraction(tmp_path, one_torch_thread, kind):
    paths, split = _neu_dataset(tmp_path)
    records, dirs = _run(tmp_path, paths, _probe_cfg(kind=kind))
    test = split[split["subset"] == "test"].sort_values("row")
    assert [r["labels_pct"] for r in records] == [50.0, 100.0]
    assert [r["extra"]["n_labelled"] for r in records] == [12, 24]  # .5 * 4 and 4 per class, 6 classes
    for record, out in zip(records, dirs):
        saved = json.loads((out / "metrics.json").read_text())
        assert saved == json.loads(json.dumps(record))
        assert (saved["stage"], saved["method"], saved["task"]) == ("classification", "random", "classification")
        m = saved["metrics"]
        assert m["train_steps"] >= 1 and np.isfinite(m["train_loss"]) and m["pretrain_steps"] == 0
        if kind == "logistic":
            assert m["converged"] == 1.0 and m["grad_max"] <= 1e-6 and m["l2"] in (1e-3, 1e-1, 10.0)
        else:  # Adam: epochs x batches per epoch
            assert m["train_steps"] == 30 * math.ceil(saved["extra"]["n_labelled"] / 16)
        preds = pd.read_parquet(out / "predictions.parquet")
        assert preds["row"].tolist() == test["row"].tolist()
        assert preds[[f"proba_{k}" for k in range(6)]].sum(axis=1).to_numpy() == pytest.approx(1.0)
        assert m["accuracy"] == pytest.approx(np.mean(preds["y_true"] == preds["y_pred"]))
        cm = np.array(saved["extra"]["confusion"])
        assert cm.sum() == len(test) and np.trace(cm) == int((preds["y_true"] == preds["y_pred"]).sum())
        head = load_torch(out / "probe.pt")
        assert head["weight"].shape == (6, 512) and head["encoder"] is None
    # the head on raw features reproduces the saved probabilities (standardisation folded in)
    net = _random_control_encoder(seed=0)
    images = np.load(paths["cache"])[test["row"].to_numpy()]
    feats = torch.from_numpy(extract_features(net, images, CPU, 16))
    head = load_torch(dirs[1] / "probe.pt")
    proba = torch.softmax(feats @ head["weight"].T + head["bias"], 1).numpy()
    preds = pd.read_parquet(dirs[1] / "predictions.parquet")
    assert proba == pytest.approx(preds[[f"proba_{k}" for k in range(6)]].to_numpy(), abs=1e-4)


def _random_control_encoder(seed):
    from defectbench.runtime import seed_everything

    seed_everything(seed)
    net, _ = build_backbone("resnet18")
    return net.eval()


def test_probe_records_what_ran_and_rejects_mismatched_outputs(tmp_path, one_torch_thread):
    paths, _ = _neu_dataset(tmp_path, per_class=5)
    from defectbench.models.encoders import save_encoder
    from defectbench.runtime import write_metrics

    torch.manual_seed(0)
    net, dim = build_backbone("resnet18")
    job = tmp_path / "pretrain" / "fairkl"
    save_encoder(job / "encoder.pt", net, "resnet18", dim, 32)
    write_metrics(job / "metrics.json", stage="pretraining", metrics={"train_steps": 120}, config={}, device="cpu",
                  wall_time_s=0.0,
                  keys={"dataset": "neu", "method": "eps_supinfonce", "backbone": "resnet18", "seed": 0,
                        "task": "classification"})
    records, dirs = _run(tmp_path, paths, _probe_cfg(augment=False), method="fairkl",
                         encoder_path=str(job / "encoder.pt"), pretrain_metrics_path=str(job / "metrics.json"),
                         fractions=(1.0,))
    assert records[0]["method"] == "eps_supinfonce" and records[0]["extra"]["n_views"] == 1
    assert records[0]["metrics"]["pretrain_steps"] == 120
    assert load_torch(dirs[0] / "probe.pt")["encoder"] == str(job / "encoder.pt")
    with pytest.raises(DefectbenchError, match="2 label fractions but 1 output"):
        run_linear_probe(cache_path=str(paths["cache"]), split_path=str(paths["split"]),
                         manifest_path=str(tmp_path / "manifest.parquet"), encoder_path=None, pretrain_metrics_path=None,
                         out_dirs=[str(tmp_path / "x")], fractions=[0.5, 1.0], cfg=_probe_cfg(), dataset="neu",
                         method="random", backbone="resnet18", seed=0)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_encoder_file_round_trip_and_refusals(tmp_path, name):
    """load_encoder builds the network on the meta device and fills it from the file: same outputs
    as the saved module, no tensor left unfilled, and a file that does not fit is refused."""
    from defectbench.models.encoders import load_encoder, save_encoder
    from defectbench.runtime import save_torch

    torch.manual_seed(0)
    net, dim = build_backbone(name)
    net.eval()
    save_encoder(tmp_path / "encoder.pt", net, name, dim, 32)
    enc, got_dim, meta = load_encoder(tmp_path / "encoder.pt", CPU)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), net(x))
    assert got_dim == dim and meta["backbone"] == name and not enc.training
    assert not any(t.is_meta for t in [*enc.parameters(), *enc.buffers()])
    record = load_torch(tmp_path / "encoder.pt")
    first = next(iter(record["state_dict"]))
    for broken in ({**record["state_dict"], first: torch.zeros(3)},  # wrong shape
                   {k: v for k, v in record["state_dict"].items() if k != first}):  # tensor missing
        save_torch(tmp_path / "bad.pt", {**record, "state_dict": broken})
        with pytest.raises(DefectbenchError, match=f"bad.pt: weights do not fit backbone {name}"):
            load_encoder(tmp_path / "bad.pt", CPU)


def test_random_control_is_drawn_from_the_experiment_seed():
    from defectbench.features import load_feature_source
    from defectbench.runtime import seed_everything

    def weights(seed, source="random", pretrained="none"):
        seed_everything(seed)
        net, dim = load_feature_source(source, encoder_path=None, backbone="resnet18", pretrained=pretrained, device=CPU)
        assert dim == 512 and not net.training and not any(p.requires_grad for p in net.parameters())
        return torch.cat([p.flatten() for p in net.parameters()])

    assert torch.equal(weights(0), weights(0)) and not torch.equal(weights(0), weights(1))
    # 'random' ignores the section's pretrained weights: it is the untrained control
    assert torch.equal(weights(0), weights(0, pretrained="package"))
    with pytest.raises(DefectbenchError, match="no encoder.pt"):
        load_feature_source("simclr", encoder_path=None, backbone="resnet18", pretrained="none", device=CPU)
