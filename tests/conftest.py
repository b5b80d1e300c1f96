"""Shared fixtures: the committed real-image sample, the full real archives where present, and tiny
generated datasets laid out like the real ones.

Real images come from ``tests/data/`` (a 1.75 MB sample of the three archives, cut by
``tests/data/make_sample.py``), so the suite runs on a fresh clone. The few tests that need the
full archives in ``../shared/data`` ask for them through :func:`full_archive`: they skip with a
one-line reason where the archives are absent, and fail instead under ``CI=true``, where every
test must run. Generated datasets are a few dozen 16-48 px images, so every data test runs in well
under a second per case; layouts match the real archives exactly (MVTec AD, VisA, DeepPCB,
magnetic tile, NEU-style image folders).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data"
FULL_ARCHIVES = ROOT.parent / "shared" / "data"

sys.path.insert(0, str(SAMPLE))
from make_sample import ARCHIVES as FULL_ARCHIVE_SHA256  # noqa: E402  (the sample's cutter knows the archives)


# Snakemake imports every installed executor plugin when it starts, and the Slurm one (the `slurm`
# extra, which CI installs for tests/test_slurm.py) then runs `scontrol show config`: where the Slurm
# client is installed but no controller runs, that waits MessageTimeout - 1 seconds (9 s by
# default) in every `snakemake` call. Only tests/test_slurm.py talks to Slurm (through
# :func:`real_slurm_conf`); every other process of the suite reads a Slurm config whose controller
# fails at once.
REAL_SLURM_CONF = os.environ.get("SLURM_CONF")


@pytest.fixture(scope="session", autouse=True)
def no_slurm_probe_stall(tmp_path_factory):
    conf = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost\nMessageTimeout=1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        yield


@pytest.fixture(scope="module")
def real_slurm_conf():
    """The Slurm config the suite was started with (tests that submit to a real Slurm)."""
    with pytest.MonkeyPatch.context() as mp:
        if REAL_SLURM_CONF is None:
            mp.delenv("SLURM_CONF", raising=False)
        else:
            mp.setenv("SLURM_CONF", REAL_SLURM_CONF)
        yield


def skip_unless_ci(reason: str) -> None:
    """Skip with a one-line ``reason``; under ``CI`` (set, not 0/false) fail instead: CI runs every test."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}: under CI=true no test may skip", pytrace=False)
    pytest.skip(reason)


def full_archive(name: str) -> Path:
    """``../shared/data/<name>``; where it is absent the test skips (fails under CI)."""
    path = FULL_ARCHIVES / name
    if not path.is_file():
        skip_unless_ci(f"needs the full archive {path} (absent here; tests/data/README.md)")
    return path


@pytest.fixture(scope="session")
def full_archives() -> Path:
    """The folder holding all three full archives (see :func:`full_archive`)."""
    for name in FULL_ARCHIVE_SHA256:
        full_archive(name)
    return FULL_ARCHIVES


# ----------------------------------------------------------------------------- image helpers
def save_image(path: Path, size: tuple[int, int] = (24, 20), mode: str = "L", seed: int = 0, fmt: str | None = None) -> Path:
    """A random image of ``size`` (w, h) in ``mode``; format from the suffix unless ``fmt``."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "RGB":
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr, "RGB")
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        if mode != "L":
            im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def save_mask(path: Path, size: tuple[int, int], box: tuple[int, int, int, int] | None = (2, 2, 8, 8)) -> Path:
    """0/255 mask with a filled box (x1, y1, x2, y2), or empty."""
    w, h = size
    arr = np.zeros((h, w), dtype=np.uint8)
    if box:
        x1, y1, x2, y2 = box
        arr[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)
    return path


def make_tar(src_dir: Path, archive: Path, arcname: str | None = None) -> str:
    """tar.gz of ``src_dir`` (members under ``arcname``); returns its sha256."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_dir, arcname=arcname or src_dir.name)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


# ----------------------------------------------------------------------------- generated layouts
@pytest.fixture
def imagefolder_root(tmp_path) -> Path:
    """NEU-style ``root/<class>/<class>_<n>.jpg``: classes a (4 images), b (3), c (5)."""
    root = tmp_path / "folder"
    for cls, n in (("a", 4), ("b", 3), ("c", 5)):
        for i in range(n):
            save_image(root / cls / f"{cls}_{i}.jpg", (20, 20), "L", seed=i)
    return root


@pytest.fixture
def magnetic_tile_root(tmp_path) -> Path:
    """``MT_<class>/Imgs/<id>.jpg`` + ``<id>.png`` masks: Free 4, Crack 2, Blowhole 1; varying sizes."""
    root = tmp_path / "magnetic-tile"
    for cls, n in (("Free", 4), ("Crack", 2), ("Blowhole", 1)):
        for i in range(n):
            size = (20 + 4 * i, 16 + 2 * i)
            save_image(root / f"MT_{cls}" / "Imgs" / f"exp{i}_num_{i}.jpg", size, "L", seed=i)
            save_mask(root / f"MT_{cls}" / "Imgs" / f"exp{i}_num_{i}.png", size, None if cls == "Free" else (1, 1, 6, 5))
    (root / "README.md").write_text("upstream readme\n")
    return root


@pytest.fixture
def mvtec_root(tmp_path) -> Path:
    """MVTec AD as extracted: ``bottle/{train/good, test/{good,broken_large,contamination}, ground_truth/<type>/<n>_mask.png}``."""
    root = tmp_path / "mvtec"
    cat = root / "bottle"
    for i in range(6):
        save_image(cat / "train" / "good" / f"{i:03d}.png", (32, 32), "RGB", seed=i)
    for i in range(2):
        save_image(cat / "test" / "good" / f"{i:03d}.png", (32, 32), "RGB", seed=10 + i)
    for defect, n in (("broken_large", 3), ("contamination", 2)):
        for i in range(n):
            save_image(cat / "test" / defect / f"{i:03d}.png", (32, 32), "RGB", seed=20 + i)
            save_mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png", (32, 32), (4, 4, 12, 10))
    (root / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    save_image(root / "cable" / "train" / "good" / "000.png", (32, 32), "RGB")
    return root


@pytest.fixture
def visa_root(tmp_path) -> Path:
    """VisA as extracted: ``candle/Data/Images/{Normal,Anomaly}/*.JPG``, ``Data/Masks/Anomaly/*.png``,
    ``candle/image_anno.csv`` and ``split_csv/1cls.csv`` (object,split,label,image,mask)."""
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    anno = ["image,label,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(5):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            save_image(root / rel, (40, 30), "RGB", seed=i, fmt="JPEG")
            rows.append(f"{obj},{'train' if i < 3 else 'test'},normal,{rel},")
            anno.append(f"{rel},normal,")
        for i, label in enumerate(("wax missing", "wax missing", '"chunk, weird"')):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mask = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            save_image(root / rel, (40, 30), "RGB", seed=50 + i, fmt="JPEG")
            save_mask(root / mask, (40, 30), (5, 5, 15, 12))
            rows.append(f"{obj},test,anomaly,{rel},{mask}")
            anno.append(f"{rel},{label},{mask}")
        (root / obj / "image_anno.csv").write_text("\n".join(anno) + "\n")
        anno = ["image,label,mask"]
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


DEEPPCB_BOXES = {  # image id -> boxes (x1 y1 x2 y2 type); images are 64x64
    "00041000": [(10, 10, 20, 22, 1), (50, 50, 63, 63, 6)],
    "00041001": [(0, 0, 8, 8, 3)],
    "00041002": [(30, 5, 40, 15, 2), (5, 30, 15, 44, 4), (20, 20, 30, 30, 5)],
}


@pytest.fixture
def deeppcb_root(tmp_path) -> Path:
    """DeepPCB as shipped here: ``PCBData/group00041/00041/<id>_{test,temp}.png`` (1-bit),
    ``00041_not/<id>.txt`` boxes, and split lists naming ``<id>.jpg``."""
    root = tmp_path / "deeppcb"
    grp = root / "PCBData" / "group00041"
    lines = []
    for k, (img_id, boxes) in enumerate(DEEPPCB_BOXES.items()):
        save_image(grp / "00041" / f"{img_id}_test.png", (64, 64), "1", seed=k)
        save_image(grp / "00041" / f"{img_id}_temp.png", (64, 64), "1", seed=10 + k)
        ann = grp / "00041_not" / f"{img_id}.txt"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text("\n".join(" ".join(map(str, b)) for b in boxes))  # no final newline, like upstream
        lines.append(f"group00041/00041/{img_id}.jpg group00041/00041_not/{img_id}.txt")
    (root / "PCBData" / "trainval.txt").write_text("\n".join(lines[:2]) + "\n")
    (root / "PCBData" / "test.txt").write_text(lines[2] + "\n")
    return root


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on the shared 2-core machine this is ~10x faster than oversubscribing."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
