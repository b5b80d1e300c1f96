"""Supervised baseline on REAL NEU images, and the EfficientNet-Lite0 package weights."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from defectbench.models.encoders import load_encoder
from defectbench.runtime import load_torch
from defectbench.supervised import class_weights, train_supervised
from job_cfg import job_cfg
from neu_fixture import neu_images, write_tiny_dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_supervised_trains_on_labelled_fraction_and_evaluates_on_test(tmp_path):
    paths = write_tiny_dataset(tmp_path / "neu", per_class=6, size=32, test_per_class=2)
    cfg = job_cfg("train_supervised", {"supervised": {
        "epochs": 2, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-4, "pretrained": "none", "amp": "none",
        "checkpoint_every": 1, "schedule": "cosine", "class_weights": "inverse_frequency",
        "augment": {"preset": "auto", "crop_scale": [0.5, 1.0]}}})
    out = tmp_path / "sup"
    record = train_supervised(cache_path=paths["cache"], split_path=paths["split"], model_path=out / "model.pt",
                              predictions_path=out / "predictions.parquet", history_path=out / "history.parquet",
                              metrics_path=out / "metrics.json", cfg=cfg, dataset="neu", backbone="resnet18", seed=0,
                              fraction=0.5)
    # 4 train images per class, label_priority rank/4 < 0.5 -> 2 per class = 12 labelled images
    assert record["metrics"]["train_images"] == 12
    # budget in steps, not epochs: 2 epochs of the whole 24-image train split at batch 8 = 6 steps,
    # which at 12 labelled images (1 full batch per epoch) takes 6 epochs
    assert (record["metrics"]["train_steps"], record["metrics"]["epochs"]) == (6, 6)
    pred = pd.read_parquet(out / "predictions.parquet")
    assert len(pred) == 12 and list(pred.columns[:3]) == ["row", "y_true", "y_pred"]
    proba = pred[[f"proba_{c}" for c in range(6)]].to_numpy()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert (pred["y_pred"] == proba.argmax(1)).all()
    # the recorded accuracy is the accuracy of the written predictions
    assert record["metrics"]["accuracy"] == pytest.approx(float((pred["y_pred"] == pred["y_true"]).mean()))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage"] == "classification" and metrics["method"] == "supervised" and metrics["labels_pct"] == 50
    assert metrics["extra"]["model_selection"].startswith("last epoch")
    hist = pd.read_parquet(out / "history.parquet")
    assert list(hist["epoch"]) == [1, 2, 3, 4, 5, 6] and "train_accuracy" in hist and hist["lr"].iloc[1] < 1e-3
    assert hist["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-12)  # cosine over exactly the 6 steps
    enc, dim, meta = load_encoder(out / "model.pt", torch.device("cpu"))
    assert meta["n_classes"] == 6 and meta["head"]["weight"].shape == (6, 512)
    # encoder + head reproduce the written probabilities
    cache = np.load(paths["cache"])
    from defectbench.models.backbones import imagenet_normalize
    with torch.no_grad():
        logits = enc(imagenet_normalize(torch.from_numpy(cache[pred["row"].to_numpy()]))) @ meta["head"]["weight"].T + meta["head"]["bias"]
    np.testing.assert_allclose(logits.softmax(1).numpy(), proba, atol=1e-4)


def test_supervised_steps_budget_cuts_the_last_epoch_and_uses_the_light_preset(tmp_path):
    paths = write_tiny_dataset(tmp_path / "neu", per_class=6, size=32, test_per_class=2)
    cfg = job_cfg("train_supervised", {"supervised": {
        "epochs": 50, "steps": 5, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-4, "pretrained": "none",
        "amp": "none", "checkpoint_every": 10, "schedule": "cosine", "class_weights": "none",
        "augment": {"preset": "light"}}})
    out = tmp_path / "sup"
    record = train_supervised(cache_path=paths["cache"], split_path=paths["split"], model_path=out / "model.pt",
                              predictions_path=out / "predictions.parquet", history_path=out / "history.parquet",
                              metrics_path=out / "metrics.json", cfg=cfg, dataset="neu", backbone="resnet18", seed=0,
                              fraction=1.0)
    # 24 labelled images at batch 8: 3 steps per epoch, so 5 steps = one full epoch + 2 steps
    assert (record["metrics"]["train_steps"], record["metrics"]["epochs"]) == (5, 2)
    hist = pd.read_parquet(out / "history.parquet")
    assert hist["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-12)  # a 6th step would lift the cosine off 0
    aug = record["extra"]["augment"]
    assert record["extra"]["augment_preset"] == "light"
    assert (aug["crop_scale"], aug["vflip"], aug["rot90"], aug["jitter_p"], aug["blur_p"]) == ([0.8, 1.0], 0.5, True, 0.0, 0.0)


def test_step_budget_is_the_same_for_every_label_fraction():
    from defectbench.supervised import step_budget

    assert step_budget({"steps": None, "epochs": 15, "batch_size": 64}, 384) == 15 * 6
    assert step_budget({"steps": None, "epochs": 2, "batch_size": 64}, 10) == 2  # one (partial) batch per epoch
    assert step_budget({"steps": 300, "epochs": 15, "batch_size": 64}, 384) == 300


def test_class_weights_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1, 2, 2]), 4).numpy()
    # 1/3, 1, 1/2 normalised to mean 1 over the present classes; absent class weight 0
    expected = np.array([1 / 3, 1.0, 0.5]) / np.mean([1 / 3, 1.0, 0.5])
    np.testing.assert_allclose(w, [*expected, 0.0], rtol=1e-6)


def test_efficientnet_package_weights_classify_real_photos():
    """The positional mapping is right: ImageNet weights recognise skimage's cat and coffee photos."""
    from skimage import data, transform

    from defectbench.models.backbones import imagenet_normalize
    from defectbench.models.efficientnet import efficientnet_lite0

    model = efficientnet_lite0("package").eval()
    photos = [(transform.resize(f(), (224, 224), anti_aliasing=True) * 255).astype(np.uint8) for f in (data.chelsea, data.coffee)]
    x = imagenet_normalize(torch.from_numpy(np.stack(photos)))
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    assert top[0] in range(281, 286)   # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top[1] in (967, 968)        # espresso / cup
    # a randomly initialised net does not: the check can fail
    with torch.no_grad():
        rand_top = efficientnet_lite0("none").eval()(x).argmax(1).tolist()
    assert not (rand_top[0] in range(281, 286) and rand_top[1] in (967, 968))


def test_efficientnet_package_features_and_bn_stats_on_neu():
    from defectbench.models.backbones import build_backbone, imagenet_normalize
    from defectbench.models.efficientnet import efficientnet_lite0, map_package_state_dict, package_weights_path

    source = load_torch(package_weights_path())
    model = efficientnet_lite0("package")
    # BN running stats are the package's own, tensor for tensor
    src_bn = [v for k, v in source.items() if k.endswith("running_var")]
    own_bn = [v for k, v in model.state_dict().items() if k.endswith("running_var")]
    assert len(src_bn) == len(own_bn) and all(torch.equal(a, b) for a, b in zip(src_bn, own_bn))
    images, labels, _ = neu_images(per_class=2, size=64)
    net, dim = build_backbone("efficientnet_lite0", "package")
    with torch.no_grad():
        feats = net.eval()(imagenet_normalize(torch.from_numpy(images)))
    assert feats.shape == (12, 1280) and torch.isfinite(feats).all()
    assert feats.std(0).mean() > 1e-2                       # not constant across images
    assert (feats > 0).float().mean() > 0.05                  # not dead (ReLU6 features)
    # a shuffled mapping is refused
    items = list(source.items())
    items[0], items[1] = items[1], items[0]
    from defectbench.runtime import DefectbenchError
    with pytest.raises(DefectbenchError, match="does not line up"):
        map_package_state_dict(dict(items), model.state_dict())
