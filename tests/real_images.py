"""Real image files for the data tests that build their own folders (bit depths, bring-your-own data).

Read from the committed sample ``tests/data/<name>/`` when it is there, else the same selection
(the first files per folder, names sorted as strings) straight from the full archive in
``../shared/data/``; without either the test is skipped with the reason (under ``CI=true`` it
fails instead: CI has the archives).

* ``neu-steel``: ``<class>/<class>_<n>.jpg``, 200x200 grey JPEG, the first ``per_folder`` per class.
* ``magnetic-tile``: ``MT_<class>/Imgs/<id>.jpg`` (grey JPEG, non-square, ~200-500 px) each with its
  real defect mask ``<id>.png``; ``MT_Free`` is defect-free.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data"
ARCHIVES = ROOT.parent / "shared" / "data"
IMAGE_SUFFIXES = (".jpg", ".png")


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
    archive = ARCHIVES / f"{name}.tar.gz"
    if sample.is_dir():
        names = [p.relative_to(sample).as_posix() for p in sample.rglob("*") if p.is_file()]
    elif archive.is_file():
        with tarfile.open(archive) as tar:
            names = [m.name.split("/", 1)[1] for m in tar if m.isfile() and "/" in m.name]
    else:
        reason = f"no real images: neither {sample} nor {archive} exists"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    chosen = _first_per_folder([k for k in names if k.endswith(".jpg")], per_folder)
    if name == "magnetic-tile":
        chosen += [k[: -len(".jpg")] + ".png" for k in chosen]
    if sample.is_dir():
        return {key: (sample / key).read_bytes() for key in chosen}
    wanted, out = set(chosen), {}
    with tarfile.open(archive) as tar:  # one sequential pass: a .tar.gz cannot seek back cheaply
        for member in tar:
            key = member.name.split("/", 1)[-1]
            if key in wanted:
                out[key] = tar.extractfile(member).read()
    return {key: out[key] for key in chosen}


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
