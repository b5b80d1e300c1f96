"""Layouts -> manifest: every layout on generated fixtures laid out like the real archives,
ELPV from its PyPI package, and every bad input (unknown class folder, corrupt image, image
without its mask) as a one-line error with no manifest written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import DEEPPCB_BOXES, save_image
from defectbench.data.layouts import Item
from defectbench.data.manifest import MANIFEST_COLUMNS, build_manifest, read_manifest, subsample_per_class
from defectbench.runtime import DefectbenchError


def _marker(tmp_path: Path, root: Path, name: str = "ds") -> Path:
    marker = tmp_path / "resources" / "datasets" / name / ".fetched.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"dataset": name, "root": str(root)}))
    return marker


def _build(tmp_path, root, cfg, name="ds"):
    out = tmp_path / "results" / "data" / name / "manifest.parquet"
    df = build_manifest(_marker(tmp_path, root, name), cfg, out, project_root=tmp_path)
    assert read_manifest(out).equals(df)
    return df


def _fails(tmp_path, root, cfg, *needles):
    out = tmp_path / "results" / "data" / "ds" / "manifest.parquet"
    with pytest.raises(DefectbenchError) as exc:
        build_manifest(_marker(tmp_path, root), cfg, out, project_root=tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no manifest, no temp file
    return msg


def test_imagefolder_manifest_columns_hashes_sizes(tmp_path, imagefolder_root):
    df = _build(tmp_path, imagefolder_root, {"layout": "imagefolder"})
    assert list(df.columns) == MANIFEST_COLUMNS
    assert df.groupby("class_name").size().to_dict() == {"a": 4, "b": 3, "c": 5}
    assert dict(zip(df.class_name, df.label)) == {"a": 0, "b": 1, "c": 2}
    assert df.is_anomalous.all() and df.mask_path.isna().all()
    assert (df.width == 20).all() and (df.height == 20).all()
    first = imagefolder_root / "a" / "a_0.jpg"
    assert df.path[0] == first.relative_to(tmp_path).as_posix()  # relative to the project root
    assert df.sha256[0] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert list(df.path) == sorted(df.path)


def test_imagefolder_nominal_classes_and_class_order(tmp_path, imagefolder_root):
    df = _build(tmp_path, imagefolder_root, {"layout": "imagefolder", "classes": ["c", "a", "b"], "nominal_classes": ["c"]})
    assert dict(zip(df.class_name, df.label)) == {"c": 0, "a": 1, "b": 2}
    assert not df[df.class_name == "c"].is_anomalous.any() and df[df.class_name != "c"].is_anomalous.all()


def test_unknown_class_folder(tmp_path, imagefolder_root):
    save_image(imagefolder_root / "zebra" / "z.jpg")
    _fails(tmp_path, imagefolder_root, {"layout": "imagefolder", "classes": ["a", "b", "c"]},
           "unknown class folder 'zebra'", str(imagefolder_root / "zebra"))


def test_corrupt_image(tmp_path, imagefolder_root):
    bad = imagefolder_root / "b" / "b_1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    _fails(tmp_path, imagefolder_root, {"layout": "imagefolder"}, str(bad), "cannot decode image")


def test_not_an_image(tmp_path, imagefolder_root):
    bad = imagefolder_root / "a" / "a_2.jpg"
    bad.write_text("<html>not an image</html>")
    _fails(tmp_path, imagefolder_root, {"layout": "imagefolder"}, str(bad), "cannot decode image")


def test_magnetic_tile(tmp_path, magnetic_tile_root):
    df = _build(tmp_path, magnetic_tile_root, {"layout": "magnetic_tile"})
    assert df.groupby("class_name").size().to_dict() == {"Free": 4, "Crack": 2, "Blowhole": 1}
    assert dict(zip(df.class_name, df.label)) == {"Free": 0, "Blowhole": 1, "Crack": 3}
    assert (df.is_anomalous == (df.class_name != "Free")).all()
    assert all(m.endswith(p[:-4] + ".png") for p, m in zip(df.path, df.mask_path))  # same stem
    assert set(zip(df.width, df.height)) >= {(20, 16), (24, 18)}


def test_image_without_its_mask(tmp_path, magnetic_tile_root):
    mask = magnetic_tile_root / "MT_Crack" / "Imgs" / "exp1_num_1.png"
    mask.unlink()
    _fails(tmp_path, magnetic_tile_root, {"layout": "magnetic_tile"}, "image without its mask",
           str(mask.with_suffix(".jpg")))


def test_magnetic_tile_unknown_class_folder(tmp_path, magnetic_tile_root):
    save_image(magnetic_tile_root / "MT_Dent" / "Imgs" / "x.jpg")
    _fails(tmp_path, magnetic_tile_root, {"layout": "magnetic_tile"}, "unknown class folder 'MT_Dent'")


def test_mask_size_mismatch(tmp_path, magnetic_tile_root):
    from conftest import save_mask

    mask = save_mask(magnetic_tile_root / "MT_Crack" / "Imgs" / "exp0_num_0.png", (7, 7))
    _fails(tmp_path, magnetic_tile_root, {"layout": "magnetic_tile"}, str(mask), "mask is 7x7")


def test_elpv_from_pip_with_max_per_class(tmp_path):
    from defectbench.data.sources import fetch_dataset

    marker = tmp_path / "resources/datasets/elpv/.fetched.json"
    fetch_dataset("elpv", {"kind": "pip", "package": "elpv-dataset"}, marker, workdir=tmp_path)
    out = tmp_path / "manifest.parquet"
    df = build_manifest(marker, {"layout": "elpv", "max_per_class": 5}, out, project_root=tmp_path)
    assert df.groupby("class_name").size().to_dict() == {"prob_0": 5, "prob_33": 5, "prob_67": 5, "prob_100": 5}
    assert dict(zip(df.class_name, df.label)) == {"prob_0": 0, "prob_33": 1, "prob_67": 2, "prob_100": 3}
    assert set(df.group) <= {"mono", "poly"}
    assert (df.is_anomalous == (df.label > 0)).all()
    assert (df.width == 300).all() and Path(df.path[0]).is_absolute()  # outside the project: absolute
    # same subsample on a rebuild (fixed seed)
    again = build_manifest(marker, {"layout": "elpv", "max_per_class": 5}, out, project_root=tmp_path)
    assert list(again.path) == list(df.path)


def test_magnetic_tile_separate_nominal_and_defect_caps(tmp_path, magnetic_tile_root):
    capped = {"layout": "magnetic_tile", "max_per_class": 1}
    assert _build(tmp_path, magnetic_tile_root, capped).groupby("class_name").size().to_dict() == {
        "Free": 1, "Crack": 1, "Blowhole": 1}
    # all defect-free tiles kept while the defect classes stay capped, and the other way round
    df = _build(tmp_path, magnetic_tile_root, {**capped, "max_nominal": 10})
    assert df.groupby("class_name").size().to_dict() == {"Free": 4, "Crack": 1, "Blowhole": 1}
    df = _build(tmp_path, magnetic_tile_root, {"layout": "magnetic_tile", "max_nominal": 2, "max_defective": None})
    assert df.groupby("class_name").size().to_dict() == {"Free": 2, "Crack": 2, "Blowhole": 1}


def test_subsample_per_class_stratified_seeded():
    items = [Item(Path(f"{c}/{i}.png"), c, False) for c in "xyz" for i in range(10 if c != "z" else 2)]
    a = subsample_per_class(items, 3)
    assert [i.class_name for i in a].count("x") == 3 and [i.class_name for i in a].count("z") == 2
    assert [i.path for i in a] == [i.path for i in subsample_per_class(items, 3)]
    assert [i.path for i in a] != [i.path for i in subsample_per_class(items, 3, seed=1)]
    assert subsample_per_class(items, None) == items


def test_mvtec_layout(tmp_path, mvtec_root):
    df = _build(tmp_path, mvtec_root, {"layout": "mvtec", "category": "bottle"})
    assert len(df) == 6 + 2 + 3 + 2
    assert dict(zip(df.class_name, df.label)) == {"good": 0, "broken_large": 1, "contamination": 2}
    assert df.groupby("source_split").size().to_dict() == {"test": 7, "train": 6}
    assert (df[df.source_split == "train"].class_name == "good").all()
    anomalous = df[df.is_anomalous]
    assert len(anomalous) == 5 and anomalous.mask_path.notna().all()
    assert all("/ground_truth/" in m and m.endswith("_mask.png") for m in anomalous.mask_path)
    assert df[~df.is_anomalous].mask_path.isna().all()


def test_mvtec_missing_mask_and_unknown_category(tmp_path, mvtec_root):
    (mvtec_root / "bottle/ground_truth/contamination/001_mask.png").unlink()
    _fails(tmp_path, mvtec_root, {"layout": "mvtec", "category": "bottle"}, "image without its mask",
           str(mvtec_root / "bottle/test/contamination/001.png"))
    _fails(tmp_path, mvtec_root, {"layout": "mvtec", "category": "carpet"}, "no MVTec category 'carpet'")


def test_visa_layout(tmp_path, visa_root):
    df = _build(tmp_path, visa_root, {"layout": "visa", "category": "candle"})
    assert len(df) == 8 and all(p.split("/")[-5] == "candle" for p in df.path)
    assert dict(zip(df.class_name, df.label)) == {"good": 0, "chunk, weird": 1, "wax missing": 2}
    assert df.groupby("source_split").size().to_dict() == {"test": 5, "train": 3}
    assert (df[df.source_split == "train"].is_anomalous == False).all()  # noqa: E712
    assert df[df.is_anomalous].mask_path.notna().all()
    assert (df.width == 40).all() and (df.height == 30).all()


def test_visa_unknown_category_and_missing_mask(tmp_path, visa_root):
    _fails(tmp_path, visa_root, {"layout": "visa", "category": "cashew"}, "no rows for category 'cashew'")
    (visa_root / "pcb1/Data/Masks/Anomaly/002.png").unlink()
    _fails(tmp_path, visa_root, {"layout": "visa", "category": "pcb1"}, "image without its mask")


def test_deeppcb_crops(tmp_path, deeppcb_root):
    df = _build(tmp_path, deeppcb_root, {"layout": "deeppcb", "crop_padding": 2}, name="pcb")
    n_boxes = sum(len(b) for b in DEEPPCB_BOXES.values())
    assert len(df) == n_boxes
    classes = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]
    expected = sorted((classes[t - 1], t - 1) for boxes in DEEPPCB_BOXES.values() for *_, t in boxes)
    assert sorted(zip(df.class_name, df.label)) == expected
    crops = tmp_path / "resources/datasets/pcb/crops"
    assert all((tmp_path / p).parent == crops for p in df.path)
    assert len(list(crops.iterdir())) == n_boxes
    # box (10,10)-(20,22) with 2 px padding -> 14x16; box (50,50)-(63,63) clipped at 64 -> 16x16
    sizes = dict(zip(df.path.map(lambda p: Path(p).name), zip(df.width, df.height)))
    assert sizes["00041000_00_1_test.png"] == (14, 16)
    assert sizes["00041000_01_6_test.png"] == (16, 16)
    assert sizes["00041001_00_3_test.png"] == (10, 10)  # clipped at 0
    # split lists: first two ids trainval, last one test
    by_id = dict(zip(df.path.map(lambda p: Path(p).name[:8]), df.source_split))
    assert by_id == {"00041000": "train", "00041001": "train", "00041002": "test"}
    # the crop pixels are the test image's pixels
    from PIL import Image

    src = np.asarray(Image.open(deeppcb_root / "PCBData/group00041/00041/00041000_test.png").convert("L"))
    crop = np.asarray(Image.open(crops / "00041000_00_1_test.png").convert("L"))
    assert np.array_equal(crop, src[8:24, 8:22])


def test_deeppcb_templates_as_nominal(tmp_path, deeppcb_root):
    df = _build(tmp_path, deeppcb_root, {"layout": "deeppcb", "crop_padding": 0, "templates": True}, name="pcb")
    n_boxes = sum(len(b) for b in DEEPPCB_BOXES.values())
    assert len(df) == 2 * n_boxes
    good = df[df.class_name == "good"]
    assert len(good) == n_boxes and (good.label == 6).all() and not good.is_anomalous.any()


def test_deeppcb_missing_image_named(tmp_path, deeppcb_root):
    img = deeppcb_root / "PCBData/group00041/00041/00041001_test.png"
    img.unlink()
    _fails(tmp_path, deeppcb_root, {"layout": "deeppcb"}, str(img), "not found")
    assert not (tmp_path / "resources/datasets/ds/crops").exists()
    assert [p for p in (tmp_path / "resources/datasets/ds").iterdir() if p.is_dir()] == []
