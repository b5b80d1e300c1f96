"""Bring your own dataset: the four common shapes built from real NEU / magnetic-tile images (real
defect masks), recognised by ``defectbench new-dataset``, read by their layouts, and (slow) run
through the real data rules; an MVTec-style folder without ``ground_truth/`` runs PatchCore with
image metrics only."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from defectbench import cli, tables
from defectbench.data.cache import build_cache
from defectbench.data.inspect import dataset_entry
from defectbench.data.manifest import build_manifest
from defectbench.data.splits import write_split
from defectbench.runtime import DefectbenchError
from job_cfg import job_cfg
from real_images import real_files, write_files
from workflow_helpers import snakemake, working_copy

SIZE = 32
DEFECTS = {"MT_Crack": "crack", "MT_Blowhole": "blowhole"}


def _tiles() -> dict[str, list[tuple[str, bytes, bytes]]]:
    """class -> [(stem, jpg bytes, real mask png bytes)]: 8 MT_Free, 4 per defect type used."""
    files = real_files("magnetic-tile", 8)
    out: dict[str, list[tuple[str, bytes, bytes]]] = {}
    for key in sorted(k for k in files if k.endswith(".jpg")):
        cls = key.split("/")[0]
        if cls == "MT_Free" or cls in DEFECTS:
            out.setdefault(cls, []).append((Path(key).stem, files[key], files[key[:-4] + ".png"]))
    out = {c: v[: 8 if c == "MT_Free" else 4] for c, v in out.items()}
    assert len(out["MT_Free"]) == 8 and all(len(out[c]) == 4 for c in DEFECTS)
    return out


def make_mvtec(root: Path, masks: bool) -> Path:
    """train/good (6 Free), test/good (2 Free), test/<crack|blowhole> (+ ground_truth/<type>/<stem>_mask.png)."""
    tiles = _tiles()
    for i, (stem, jpg, _) in enumerate(tiles["MT_Free"]):
        write_files({f"{'train' if i < 6 else 'test'}/good/{stem}.jpg": jpg}, root)
    for cls, defect in DEFECTS.items():
        for stem, jpg, mask in tiles[cls]:
            write_files({f"test/{defect}/{stem}.jpg": jpg}, root)
            if masks:
                write_files({f"ground_truth/{defect}/{stem}_mask.png": mask}, root)
    return root


def make_csv(root: Path) -> Path:
    """A flat folder of images + masks/ and labels.csv (image,label,mask)."""
    rows = ["image,label,mask"]
    for cls, items in _tiles().items():
        label = "free" if cls == "MT_Free" else DEFECTS[cls]
        for stem, jpg, mask in items:
            write_files({f"{stem}.jpg": jpg}, root)
            mask_rel = ""
            if label != "free":
                mask_rel = f"masks/{stem}.png"
                write_files({mask_rel: mask}, root)
            rows.append(f"{stem}.jpg,{label},{mask_rel}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def polygons_of(mask_png: bytes) -> list[list[float]]:
    """YOLO polygons (normalised x y pairs) traced around the real mask's regions."""
    from skimage import measure

    with Image.open(io.BytesIO(mask_png)) as m:
        arr = np.asarray(m.convert("L")) > 127
    h, w = arr.shape
    out = []
    for contour in measure.find_contours(np.pad(arr, 1).astype(float), 0.5):
        pts = contour[:: max(1, len(contour) // 64)] - 1  # (row, col) without the padding
        if len(pts) >= 3:
            out.append([v for r, c in pts for v in (np.clip(c / w, 0, 1), np.clip(r / h, 0, 1))])
    return out


def make_yolo(root: Path) -> Path:
    """images/{train,val}, labels/{train,val} (class x1 y1 ...), data.yaml names; Free has no label file."""
    names = list(DEFECTS.values())
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": names}))
    for cls, items in _tiles().items():
        for i, (stem, jpg, mask) in enumerate(items):
            split = "train" if i < len(items) - 2 else "val"
            write_files({f"images/{split}/{stem}.jpg": jpg}, root)
            if cls != "MT_Free":
                lines = [f"{names.index(DEFECTS[cls])} " + " ".join(f"{v:.5f}" for v in poly) for poly in polygons_of(mask)]
                write_files({f"labels/{split}/{stem}.txt": ("\n".join(lines) + "\n").encode()}, root)
    return root


def make_imagefolder(root: Path) -> Path:
    """NEU: one folder per class, 3 real images each."""
    files = real_files("neu-steel", 3)
    write_files(files, root)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("byo")
    return {
        "mvtec_masks": make_mvtec(base / "parts_masks", masks=True),
        "mvtec_nomasks": make_mvtec(base / "parts_nomasks", masks=False),
        "csv": make_csv(base / "flat"),
        "yolo": make_yolo(base / "yolo"),
        "imagefolder": make_imagefolder(base / "steel"),
    }


def _manifest(tmp_path: Path, name: str, entry: dict) -> pd.DataFrame:
    marker = tmp_path / "resources" / "datasets" / name / ".fetched.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"dataset": name, "root": entry["source"]["path"]}))
    return build_manifest(marker, entry, tmp_path / "results" / "data" / name / "manifest.parquet", project_root=tmp_path)


def test_new_dataset_recognises_each_shape(shapes):
    expected = {
        "mvtec_masks": ("mvtec", ["anomaly", "clustering"]),
        "mvtec_nomasks": ("mvtec", ["anomaly", "clustering"]),
        "csv": ("csv", ["classification", "anomaly"]),
        "yolo": ("yolo", ["anomaly"]),
        "imagefolder": ("imagefolder", ["classification"]),
    }
    for shape, folder in shapes.items():
        name, entry, comments = dataset_entry(folder, image_size=SIZE)
        assert (entry["layout"], entry["tasks"]) == expected[shape], shape
        assert entry["source"] == {"kind": "directory", "path": str(folder)}
        # magnetic tiles are non-square (padded); NEU's 200x200 keeps the default squash
        assert entry.get("resize") == (None if shape == "imagefolder" else "pad"), shape
        assert name == folder.name
    _, entry, comments = dataset_entry(shapes["mvtec_nomasks"])
    assert "without ground_truth/" in comments[0] and "good 8, blowhole 4, crack 4" in comments[1]
    _, entry, _ = dataset_entry(shapes["csv"])
    assert entry["nominal_classes"] == ["free"] and entry["labels_file"] == "labels.csv"


def test_new_dataset_cli_writes_a_valid_config_once(shapes, tmp_path, capsys):
    out = tmp_path / "parts.yaml"
    assert cli.main(["new-dataset", str(shapes["mvtec_nomasks"]), "--name", "My Parts", "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert list(cfg["datasets"]) == ["my_parts"] and cfg["datasets"]["my_parts"]["layout"] == "mvtec"
    assert out.read_text().startswith("# written by `defectbench new-dataset`")
    assert cli.main(["validate-config", str(out)]) == 0
    assert cli.main(["new-dataset", str(shapes["mvtec_nomasks"]), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    flat = tmp_path / "unlabelled"
    write_files({"a.jpg": next(iter(real_files("neu-steel", 1).values()))}, flat)
    assert cli.main(["new-dataset", str(flat)]) == 2
    assert "add a CSV with columns image,label" in capsys.readouterr().err


def test_mvtec_without_ground_truth_runs_patchcore_image_level_only(shapes, tmp_path):
    from defectbench.anomaly.patchcore import run_patchcore

    results = {}
    for shape in ("mvtec_nomasks", "mvtec_masks"):
        name, entry, _ = dataset_entry(shapes[shape], image_size=SIZE)
        df = _manifest(tmp_path, name, entry)
        assert df["mask_path"].notna().sum() == (8 if shape == "mvtec_masks" else 0)
        assert df["source_split"].value_counts().to_dict() == {"test": 10, "train": 6}
        data = tmp_path / "results" / "data" / name
        write_split(data / "manifest.parquet", "anomaly", 0, entry, data / "anomaly-seed0.parquet")
        build_cache(df, SIZE, data / f"cache-{SIZE}.npy", data / f"masks-{SIZE}.npy", dataset_cfg=entry, project_root=tmp_path)
        masks = np.load(data / f"masks-{SIZE}.npy")
        assert (masks.sum() > 0) == (shape == "mvtec_masks")
        cfg = job_cfg("patchcore", {"patchcore": {
            "backbone": "resnet18", "pretrained": "none", "layers": ["layer2", "layer3"], "pretrain_dim": 32,
            "target_dim": 32, "patchsize": 3, "coreset_ratio": 0.5, "projection_dim": 8, "num_neighbors": 1,
            "reweight": False, "smoothing_sigma": 4.0, "batch_size": 8}}, backbone="resnet18")
        out = tmp_path / "results" / "anomaly" / "patchcore" / "resnet18" / name / "seed0"
        run_patchcore(cache_path=data / f"cache-{SIZE}.npy", masks_path=data / f"masks-{SIZE}.npy",
                      split_path=data / "anomaly-seed0.parquet", metrics_path=out / "metrics.json",
                      scores_path=out / "scores.parquet", maps_path=out / "maps.npy", cfg=cfg, dataset=name, seed=0,
                      features="resnet18")
        results[shape] = out / "metrics.json"
    without = json.loads(results["mvtec_nomasks"].read_text())["metrics"]
    with_masks = json.loads(results["mvtec_masks"].read_text())["metrics"]
    assert 0 <= without["image_auroc"] <= 1 and "pixel_auroc" not in without and "pro" not in without
    assert 0 <= with_masks["pixel_auroc"] <= 1
    # the same images and model: identical image-level scores with or without masks
    assert without["image_auroc"] == with_masks["image_auroc"]
    anomaly = tables.build_tables(list(results.values()), root=tmp_path)["anomaly"].set_index("dataset")
    assert np.isnan(anomaly.loc["parts_nomasks", "pixel_auroc"]) and np.isfinite(anomaly.loc["parts_masks", "pixel_auroc"])


def test_mvtec_partial_ground_truth_is_an_error(shapes, tmp_path):
    _, entry, _ = dataset_entry(shapes["mvtec_masks"], image_size=SIZE)
    missing = next((shapes["mvtec_masks"] / "ground_truth" / "crack").iterdir())
    data = missing.read_bytes()
    missing.unlink()
    try:
        with pytest.raises(DefectbenchError, match="image without its mask"):
            _manifest(tmp_path, "parts", entry)
    finally:
        missing.write_bytes(data)


def test_yolo_polygons_become_the_real_masks(shapes, tmp_path):
    name, entry, _ = dataset_entry(shapes["yolo"], image_size=SIZE)
    df = _manifest(tmp_path, name, entry)
    assert df["class_name"].value_counts().to_dict() == {"good": 8, "blowhole": 4, "crack": 4}
    assert df["source_split"].value_counts().to_dict() == {"train": 10, "test": 6}
    tiles = {stem: mask for items in _tiles().values() for stem, _, mask in items}
    for _, row in df[df["is_anomalous"]].iterrows():
        drawn = np.asarray(Image.open(tmp_path / row["mask_path"])) > 0
        real = np.asarray(Image.open(io.BytesIO(tiles[Path(row["path"]).stem])).convert("L")) > 127
        iou = (drawn & real).sum() / (drawn | real).sum()
        assert iou > 0.6, (row["path"], iou)  # polygons traced at <= 64 vertices per region


def test_yolo_bad_label_lines_name_file_and_line(shapes, tmp_path):
    from defectbench.data.layouts import scan_yolo

    root = tmp_path / "yolo"
    for p in shapes["yolo"].rglob("*"):
        if p.is_file():
            write_files({p.relative_to(shapes["yolo"]).as_posix(): p.read_bytes()}, root)
    label = sorted((root / "labels" / "train").glob("*.txt"))[0]
    original = label.read_text()
    for bad, needle in (("5 0.1 0.1 0.2 0.1 0.2 0.2", "class id 5 outside 0..1"),
                        ("0 0.1 0.1 0.2 0.2", "at least 3 x y pairs"),
                        ("0 0.1 0.1 1.5 0.1 0.2 0.2", "normalised to [0, 1]")):
        label.write_text(original + bad + "\n")
        n = len(original.splitlines()) + 1
        with pytest.raises(DefectbenchError, match=f"{label}:{n}: .*{needle.replace('[', '.').replace(']', '.')}"):
            scan_yolo(root, {}, tmp_path / "ds")
        assert not (tmp_path / "ds" / "masks").exists()  # no half-written mask folder
        assert [p.name for p in (tmp_path / "ds").iterdir()] == []


def test_csv_layout_refuses_unlisted_images_and_bad_columns(shapes, tmp_path):
    root = tmp_path / "flat"
    for p in shapes["csv"].rglob("*"):
        if p.is_file():
            write_files({p.relative_to(shapes["csv"]).as_posix(): p.read_bytes()}, root)
    name, entry, _ = dataset_entry(root, image_size=SIZE)
    df = _manifest(tmp_path, name, entry)
    assert df["label"].tolist() == [["free", "blowhole", "crack"].index(c) for c in df["class_name"]]
    extra = root / "stray.jpg"
    extra.write_bytes((root / df["path"].iloc[0].split("/")[-1]).read_bytes())
    with pytest.raises(DefectbenchError, match="stray.jpg: image not listed in labels.csv"):
        _manifest(tmp_path, name, entry)
    extra.unlink()
    (root / "labels.csv").write_text("file,label\nx.jpg,free\n")
    with pytest.raises(DefectbenchError, match=r"labels.csv: missing column\(s\) \['image'\]"):
        _manifest(tmp_path, name, entry)


@pytest.mark.slow
def test_every_shape_through_the_data_rules(shapes, tmp_path):
    """One real Snakemake run of the data rules over the five configs new-dataset wrote."""
    project = working_copy(tmp_path)
    datasets = {}
    for shape, folder in shapes.items():
        out = project / "config" / f"{shape}.yaml"
        assert cli.main(["new-dataset", str(folder), "--name", shape, "--image-size", str(SIZE), "--out", str(out)]) == 0
        datasets.update(yaml.safe_load(out.read_text())["datasets"])
    (project / "config" / "byo.yaml").write_text(yaml.safe_dump({"seeds": [0], "datasets": datasets}))
    targets = [f"results/data/{n}/{kind}-{SIZE}.npy" for n in datasets for kind in ("cache", "masks")]
    targets += [f"results/data/{n}/splits/{t}-seed0.parquet" for n, e in datasets.items() for t in e["tasks"]]
    snakemake(project, "--cores", "2", *targets, "--configfile", "config/byo.yaml", timeout=300)
    for name in datasets:
        manifest = pd.read_parquet(project / "results" / "data" / name / "manifest.parquet")
        cache = np.load(project / "results" / "data" / name / f"cache-{SIZE}.npy")
        masks = np.load(project / "results" / "data" / name / f"masks-{SIZE}.npy")
        assert cache.shape == (len(manifest), SIZE, SIZE, 3) and set(manifest["pixel_scale"]) == {"8bit"}
        assert (masks.sum() > 0) == (name in ("mvtec_masks", "csv", "yolo")), name
    # padded geometry: the short side of a magnetic tile leaves black rows or columns in the cache
    cache = np.load(project / "results" / "data" / "mvtec_nomasks" / f"cache-{SIZE}.npy")
    assert ((cache[:, 0].max(axis=(1, 2)) == 0) | (cache[:, :, 0].max(axis=(1, 2)) == 0)).all()
