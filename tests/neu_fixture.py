"""A tiny decode-once cache of REAL NEU steel images, from the committed sample (tests/data/neu-steel).

The data stage is someone else's; these tests only need a few real images per class, so they read
the sample's files themselves (no download, no dependency on the data rules).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from conftest import SAMPLE

NEU = SAMPLE / "neu-steel"


def neu_images(per_class: int, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 (N,size,size,3) images, int labels, class names): the first ``per_class`` files per class."""
    classes = sorted(p.name for p in NEU.iterdir() if p.is_dir())
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted((NEU / cls).glob("*.jpg"), key=lambda p: p.name)[:per_class]
        assert len(files) == per_class, f"{NEU / cls}: the sample has {len(files)} images, {per_class} asked"
        for path in files:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
            labels.append(label)
    return np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64), classes


def write_tiny_dataset(root: Path, per_class: int = 6, size: int = 32, test_per_class: int = 2) -> dict[str, Path]:
    """cache.npy + a classification split (the last ``test_per_class`` per class are test) under ``root``."""
    images, labels, classes = neu_images(per_class, size)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / f"cache-{size}.npy", images)
    rank = pd.Series(labels).groupby(labels).cumcount().to_numpy()
    subset = np.where(rank >= per_class - test_per_class, "test", "train")
    n_train_per_class = per_class - test_per_class
    split = pd.DataFrame({
        "row": np.arange(len(labels)), "subset": subset, "label": labels,
        "label_name": [classes[i] for i in labels],
        "label_priority": np.where(subset == "train", rank / n_train_per_class, np.nan),
    })
    split.to_parquet(root / "classification-seed0.parquet", index=False)
    return {"cache": root / f"cache-{size}.npy", "split": root / "classification-seed0.parquet"}
