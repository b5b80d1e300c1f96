"""A tiny decode-once set of REAL magnetic-tile images with pixel masks, from the committed sample
(tests/data/magnetic-tile).

PatchCore and clustering tests need real defects with masks but not the data stage, so this reads
the sample's files itself and writes the contract files (cache, masks, manifest, anomaly and
clustering splits) into a temporary directory.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from conftest import SAMPLE

MAGNETIC_TILE = SAMPLE / "magnetic-tile"
DEFECTS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


@functools.lru_cache(maxsize=4)
def magnetic_tile_arrays(n_free: int, n_per_defect: int, size: int):
    """(images (N,S,S,3) uint8, masks (N,S,S) uint8 0/1, class names): first files per class, sorted."""
    images, masks, names = [], [], []
    for cls in ("MT_Free", *DEFECTS):
        want = n_free if cls == "MT_Free" else n_per_defect
        files = sorted((MAGNETIC_TILE / cls / "Imgs").glob("*.jpg"), key=lambda p: p.name)[:want]
        assert len(files) == want, f"{MAGNETIC_TILE / cls}: the sample has {len(files)} images, {want} asked"
        for path in files:
            with Image.open(path) as im, Image.open(path.with_suffix(".png")) as mk:
                images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
                masks.append((np.asarray(mk.convert("L").resize((size, size), Image.NEAREST)) > 127).astype(np.uint8))
            names.append(cls)
    return np.stack(images), np.stack(masks), names


def write_magnetic_tile(root: Path, *, n_free: int = 16, n_per_defect: int = 3, size: int = 64,
                        n_train: int = 8, n_holdout: int = 3) -> dict[str, Path]:
    """Contract files of a tiny magnetic-tile dataset under ``root``; returns their paths."""
    images, masks, names = magnetic_tile_arrays(n_free, n_per_defect, size)
    root.mkdir(parents=True, exist_ok=True)
    paths = {k: root / v for k, v in {"cache": f"cache-{size}.npy", "masks": f"masks-{size}.npy",
                                      "manifest": "manifest.parquet", "anomaly": "anomaly-seed0.parquet",
                                      "clustering": "clustering-seed0.parquet"}.items()}
    np.save(paths["cache"], images)
    np.save(paths["masks"], masks)
    classes = sorted(set(names))
    is_anom = np.array([n != "MT_Free" for n in names])
    pd.DataFrame({"path": [f"{n}/{i}.jpg" for i, n in enumerate(names)], "label": [classes.index(n) for n in names],
                  "class_name": names, "is_anomalous": is_anom}).to_parquet(paths["manifest"])
    rows = np.arange(len(names))
    free = rows[~is_anom]
    subset = np.array(["test"] * len(rows), dtype=object)
    subset[free[:n_train]] = "train"
    subset[free[n_train:n_train + n_holdout]] = "holdout"
    pd.DataFrame({"row": rows, "subset": subset, "label": is_anom.astype(int),
                  "label_name": np.where(is_anom, "anomalous", "good")}).to_parquet(paths["anomaly"])
    test = rows[subset == "test"]
    types = ["good", *DEFECTS]
    label_name = ["good" if names[r] == "MT_Free" else names[r] for r in test]
    pd.DataFrame({"row": test, "subset": "test", "label": [types.index(n) for n in label_name],
                  "label_name": label_name}).to_parquet(paths["clustering"])
    return paths
