"""Real image files for the data tests that build their own folders (bit depths, bring-your-own data).

Read from the committed real sample ``tests/data/<name>/`` (tests/data/README.md).

* ``neu-steel``: ``<class>/<class>_<n>.jpg``, 200x200 grey JPEG (6 per class in the sample).
* ``magnetic-tile``: ``MT_<class>/Imgs/<id>.jpg`` (grey JPEG, non-square, ~200-500 px) each with its
  real defect mask ``<id>.png``; ``MT_Free`` is defect-free (16 in the sample, 4 per defect type).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from conftest import SAMPLE


def _first_per_folder(names: list[str], per_folder: int) -> list[str]:
    by_folder: dict[str, list[str]] = {}
    for name in sorted(names):
        by_folder.setdefault(str(PurePosixPath(name).parent), []).append(name)
    return [n for folder in sorted(by_folder) for n in by_folder[folder][:per_folder]]


@functools.lru_cache(maxsize=8)
def real_files(name: str, per_folder: int) -> dict[str, bytes]:
    """``relative path -> bytes`` of the first ``per_folder`` images of every folder of dataset
    ``name`` (magnetic tile: each .jpg with its .png mask), paths relative to the dataset root."""
    sample = SAMPLE / name
    chosen = _first_per_folder([p.relative_to(sample).as_posix() for p in sample.rglob("*.jpg")], per_folder)
    if name == "magnetic-tile":
        chosen += [k[: -len(".jpg")] + ".png" for k in chosen]
    return {key: (sample / key).read_bytes() for key in chosen}


def real_grey(name: str, per_folder: int) -> dict[str, np.ndarray]:
    """``relative path -> (H, W) uint8`` grey pixels of :func:`real_files` images (masks left out)."""
    out = {}
    for key, data in real_files(name, per_folder).items():
        if key.endswith(".jpg"):
            with Image.open(io.BytesIO(data)) as im:
                out[key] = np.asarray(im.convert("L"))
    return out


def write_files(files: dict[str, bytes], root: Path, rename=lambda key: key) -> list[Path]:
    """Write ``files`` under ``root`` (path mapped by ``rename``; None = skip); returns the paths."""
    written = []
    for key, data in files.items():
        target = rename(key)
        if target is None:
            continue
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
