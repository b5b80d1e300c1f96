"""The committed real-image sample (tests/data): small, complete, read by the real data stage, and
reproducible from the full archives by tests/data/make_sample.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE, make_tar
from defectbench.data.manifest import build_manifest
from defectbench.data.sources import fetch_dataset

NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
MT_DEFECTS = ["Blowhole", "Break", "Crack", "Fray", "Uneven"]
DATASETS = ("neu-steel", "magnetic-tile", "deeppcb")


def _sample_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for d in DATASETS for p in sorted((root / d).rglob("*")) if p.is_file()}


def test_sample_is_small_and_complete():
    files = _sample_files(SAMPLE)
    assert sum(len(b) for b in files.values()) < 2_500_000  # a few MB at most in the repository
    for cls in NEU_CLASSES:
        assert len(list((SAMPLE / "neu-steel" / cls).glob("*.jpg"))) == 6, cls
    mt = SAMPLE / "magnetic-tile"
    for cls, n in [("Free", 16)] + [(d, 4) for d in MT_DEFECTS]:
        images = sorted((mt / f"MT_{cls}" / "Imgs").glob("*.jpg"))
        assert len(images) == n and all(p.with_suffix(".png").is_file() for p in images), cls
    pcb = SAMPLE / "deeppcb" / "PCBData"
    for split_list in ("trainval.txt", "test.txt"):
        lines = (pcb / split_list).read_text().splitlines()
        assert len(lines) == 2
        for line in lines:
            image, boxes = line.split()
            stem = pcb / image[: -len(".jpg")]
            assert Path(f"{stem}_test.png").is_file() and Path(f"{stem}_temp.png").is_file() and (pcb / boxes).is_file()


@pytest.fixture
def fetched(tmp_path):
    """Each sample folder packed as a tar.gz and fetched as an ``archive`` source -> its marker."""
    def fetch(folder: str) -> Path:
        archive = tmp_path / f"{folder}.tar.gz"
        sha = make_tar(SAMPLE / folder, archive)
        marker = tmp_path / "resources" / "datasets" / folder / ".fetched.json"
        fetch_dataset(folder, {"kind": "archive", "path": str(archive), "sha256": sha}, marker, workdir=tmp_path)
        return marker
    return fetch


def _manifest(tmp_path: Path, marker: Path, cfg: dict):
    out = tmp_path / "results" / "data" / marker.parent.name / "manifest.parquet"
    return build_manifest(marker, cfg, out, project_root=tmp_path)


def test_data_stage_reads_the_sample(tmp_path, fetched):
    neu = _manifest(tmp_path, fetched("neu-steel"), {"layout": "imagefolder", "classes": NEU_CLASSES})
    assert neu.class_name.value_counts().to_dict() == {c: 6 for c in NEU_CLASSES}
    mt = _manifest(tmp_path, fetched("magnetic-tile"), {"layout": "magnetic_tile"})
    assert mt.class_name.value_counts().to_dict() == {"Free": 16, **{d: 4 for d in MT_DEFECTS}}
    assert (~mt.is_anomalous).sum() == 16 and mt.mask_path.notna().all()
    # 29 boxes in the 4 box files (counted by hand): types 1-6 x 3, 3, 9, 5, 5, 4; 13 train, 16 test
    pcb = _manifest(tmp_path, fetched("deeppcb"), {"layout": "deeppcb", "crop_padding": 8})
    assert pcb.class_name.value_counts().to_dict() == {
        "mousebite": 9, "spur": 5, "spurious_copper": 5, "pin_hole": 4, "open": 3, "short": 3}
    assert pcb.source_split.value_counts().to_dict() == {"test": 16, "train": 13}


def test_sample_reproduces_from_full_archives(tmp_path, full_archives):
    script = SAMPLE / "make_sample.py"
    proc = subprocess.run([sys.executable, str(script), "--archives", str(full_archives), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _sample_files(tmp_path) == _sample_files(SAMPLE)


def test_no_committed_file_needs_this_machine():
    """No absolute path of a development machine anywhere, and the code (library, rules, scripts,
    Makefile) never names ../shared: only tests, CI, configs, docs and benchmarks may."""
    root = SAMPLE.parents[1]
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True).stdout
    code = ("src/", "rules/", "workflow_scripts/", "scripts/", "Snakefile", "Makefile", "pyproject.toml")
    for name in filter(None, tracked.split("\0")):
        path = root / name
        if name == "tests/test_sample_data.py" or not path.is_file():  # this file spells the pattern
            continue
        data = path.read_bytes()
        if b"\0" in data:  # images, Parquet, ...
            continue
        text = data.decode(errors="replace")
        assert "/work/" not in text, f"{name} names an absolute path of this machine"
        if name.startswith(code):
            assert "shared/data" not in text and '"shared"' not in text, f"{name} depends on ../shared"
