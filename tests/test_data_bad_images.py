"""All bad images of a dataset in one manifest error: undecodable, empty and mask-mismatched files
among real magnetic-tile images, the first 20 listed and the rest counted, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectbench.data.manifest import MAX_LISTED_PROBLEMS, build_manifest
from defectbench.runtime import DefectbenchError
from real_images import real_files, write_files


def _build(tmp_path: Path, root: Path) -> Path:
    marker = tmp_path / "resources" / "datasets" / "mt" / ".fetched.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"dataset": "mt", "root": str(root)}))
    out = tmp_path / "results" / "data" / "mt" / "manifest.parquet"
    build_manifest(marker, {"layout": "magnetic_tile"}, out, project_root=tmp_path)
    return out


def test_every_bad_file_in_one_error(tmp_path):
    root = tmp_path / "magnetic-tile"
    files = write_files(real_files("magnetic-tile", 4), root)
    images = sorted(p for p in files if p.suffix == ".jpg")
    assert len(images) == 24  # 4 per class, 6 classes
    empty = images[:2]
    for p in empty:
        p.write_bytes(b"")
    truncated = images[2:21]
    for p in truncated:
        p.write_bytes(p.read_bytes()[:300])
    mismatched = images[21].with_suffix(".png")  # the mask of a good image, cropped to another size
    from PIL import Image

    with Image.open(mismatched) as m:
        m.crop((0, 0, m.width - 3, m.height)).save(mismatched)
    with pytest.raises(DefectbenchError) as exc:
        _build(tmp_path, root)
    lines = str(exc.value).splitlines()
    assert lines[0].startswith("22 bad image files") and "nothing was written" in lines[0]
    listed = lines[1:1 + MAX_LISTED_PROBLEMS]
    assert len(listed) == 20 and lines[-1].strip() == "... and 2 more"
    assert len(lines) == 1 + 20 + 1
    # sorted by path: the first listed are the two empty files, then the truncated ones
    assert [l.strip().split(": ")[0] for l in listed[:2]] == [str(p) for p in empty]
    assert all("empty file (0 bytes)" in l for l in listed[:2])
    assert all("cannot decode image" in l for l in listed[2:])
    assert not (tmp_path / "results" / "data" / "mt").exists() or not any((tmp_path / "results" / "data" / "mt").iterdir())
    # fewer problems: each on its own line, the mask mismatch named as such
    mismatched_key = mismatched.relative_to(root).as_posix()
    write_files(real_files("magnetic-tile", 4), root, rename=lambda key: None if key == mismatched_key else key)
    with pytest.raises(DefectbenchError) as exc:
        _build(tmp_path, root)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{mismatched}: mask is ") and "fix the mask" in msg


def test_good_files_build(tmp_path):
    root = tmp_path / "magnetic-tile"
    write_files(real_files("magnetic-tile", 2), root)
    out = _build(tmp_path, root)
    assert out.is_file()
