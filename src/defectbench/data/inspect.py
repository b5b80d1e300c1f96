"""Bring your own dataset: look at a folder, pick its layout, write a checked config entry.

:func:`dataset_entry` recognises the common shapes (checked in this order):

* **MVTec-style**: ``train/good`` + ``test/<type>`` (optionally ``ground_truth/<type>/<stem>_mask.png``),
  or one such folder per category (``--category`` picks one) -> layout ``mvtec``, task anomaly
  (+ clustering with two or more defect types); without ``ground_truth/`` image-level only.
* **YOLO segmentation**: ``images/`` + ``labels/`` (polygon ``.txt`` per image) -> layout ``yolo``;
  class names from ``data.yaml`` or ``class_<id>`` placeholders to rename.
* **A flat folder plus a CSV** with columns ``image,label`` (``mask``, ``split`` optional) -> layout
  ``csv``.
* **One folder per class** -> layout ``imagefolder``; folders named good/ok/normal/nominal/free are
  the nominal (defect-free) classes, which adds the anomaly task.

Pixel facts of a sample of images become keys: 16-bit files whose values stay below 4096 get
``bit_depth: 12``, transparent images ``alpha_background: 0``, non-square images (aspect > 1.2)
``resize: pad``. The entry is validated against the schema and the layout is scanned once before
it is returned, so a written snippet runs.

>>> entry_name("My Parts-2024")
'my_parts_2024'
"""

from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path
from typing import Any

from defectbench.data.layouts import IMAGE_EXTENSIONS, scan_layout
from defectbench.runtime import DefectbenchError

NOMINAL_NAMES = {"good", "ok", "normal", "nominal", "free", "defect_free", "mt_free"}
SAMPLE_IMAGES = 32
ASPECT_LIMIT = 1.2


def entry_name(text: str) -> str:
    """A dataset name the schema accepts (``[a-z0-9_]+``) from a folder name."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return name or "my_dataset"


def _images(folder: Path, recursive: bool = True) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_mvtec(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir() and (folder / "test").is_dir()


def _labels_csv(folder: Path) -> Path | None:
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if {"image", "label"} <= {h.strip() for h in header}:
            return path
    return None


def _detect(folder: Path, category: str | None) -> tuple[dict[str, Any], str]:
    """(layout keys, what was recognised) for ``folder``."""
    categories = [d.name for d in _dirs(folder) if _is_mvtec(d)]
    if _is_mvtec(folder) or categories:
        if not _is_mvtec(folder):
            if category is None and len(categories) > 1:
                raise DefectbenchError(f"{folder}: MVTec-style categories {categories}; pass --category to pick one")
            category = category or categories[0]
            if category not in categories:
                raise DefectbenchError(f"{folder}: no MVTec-style category {category!r} (has {categories})")
        base = folder / category if category and not _is_mvtec(folder) else folder
        types = [d.name for d in _dirs(base / "test") if d.name != "good"]
        masks = (base / "ground_truth").is_dir()
        keys: dict[str, Any] = {"layout": "mvtec", "tasks": ["anomaly"] + (["clustering"] if len(types) > 1 else [])}
        if category and not _is_mvtec(folder):
            keys["category"] = category
        what = "MVTec-style folder " + ("with ground_truth/ masks" if masks else "without ground_truth/: image labels only, no pixel metrics")
        return keys, what
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        keys = {"layout": "yolo", "tasks": ["anomaly"]}
        if not any((folder / n).is_file() for n in ("data.yaml", "dataset.yaml")):
            ids = set()
            for label in (folder / "labels").rglob("*.txt"):
                ids |= {int(line.split()[0]) for line in label.read_text().splitlines() if line.split()}
            keys["classes"] = [f"class_{i}" for i in range(max(ids) + 1)] if ids else ["defect"]
        return keys, "YOLO segmentation labels (images/ + labels/), polygons filled into masks"
    labels = _labels_csv(folder)
    if labels is not None:
        with open(labels, newline="") as fh:
            rows = list(csv.DictReader(fh))
        names = sorted({r["label"].strip() for r in rows})
        nominal = [n for n in names if n.lower() in NOMINAL_NAMES]
        has_masks = any((r.get("mask") or "").strip() for r in rows)
        keys = {"layout": "csv", "labels_file": labels.name, "nominal_classes": nominal,
                "tasks": ["classification"] + (["anomaly"] if nominal and len(nominal) < len(names) else [])}
        return keys, f"a folder plus {labels.name} (image,label{',mask' if has_masks else ''})"
    classes = [d.name for d in _dirs(folder) if _images(d)]
    if len(classes) >= 2:
        nominal = [c for c in classes if c.lower() in NOMINAL_NAMES]
        tasks = ["classification"] + (["anomaly"] if nominal else [])
        return {"layout": "imagefolder", "nominal_classes": nominal, "tasks": tasks}, "one folder per class"
    if _images(folder, recursive=False):
        raise DefectbenchError(
            f"{folder}: a flat folder of images without labels; add a CSV with columns image,label "
            "(layout csv) or sort the images into one folder per class"
        )
    raise DefectbenchError(f"{folder}: no images in a shape defectbench knows (MVTec-style, YOLO, CSV of labels, one folder per class)")


def _pixel_keys(images: list[Path]) -> tuple[dict[str, Any], list[str]]:
    """Keys (and the comments saying why) from a sample of evenly spread images."""
    from PIL import Image

    from defectbench.data.pixels import has_transparency, is_deep

    step = max(1, len(images) // SAMPLE_IMAGES)
    deep_max, transparent, aspects = None, False, []
    for path in images[::step]:
        with Image.open(path) as im:
            im.load()
            aspects.append(max(im.size) / min(im.size))
            if is_deep(im):
                deep_max = max(deep_max or 0.0, float(im.getextrema()[1]))
            transparent = transparent or has_transparency(im)
    keys: dict[str, Any] = {}
    notes = []
    if deep_max is not None and deep_max < 4096:
        keys["bit_depth"] = 12
        notes.append(f"deep greyscale with values up to {deep_max:g}: 12-bit data in 16-bit files (bit_depth 12)")
    if transparent:
        keys["alpha_background"] = 0
        notes.append("transparent pixels: flattened on black (alpha_background 0)")
    if max(aspects) > ASPECT_LIMIT:
        keys["resize"] = "pad"
        notes.append(f"non-square images (aspect up to {max(aspects):.2f}): padded to a square (resize pad; or center_crop)")
    return keys, notes


def dataset_entry(folder: str | Path, *, name: str | None = None, image_size: int = 64,
                  category: str | None = None) -> tuple[str, dict[str, Any], list[str]]:
    """(dataset name, validated config entry, comment lines) for the data in ``folder``."""
    from defectbench.config import validate_config

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise DefectbenchError(f"{folder}: not a directory")
    keys, what = _detect(folder, category)
    name = entry_name(name or folder.name)
    entry: dict[str, Any] = {"source": {"kind": "directory", "path": str(folder)}, **keys, "image_size": int(image_size)}
    if not entry.get("nominal_classes", True):
        entry.pop("nominal_classes")
    with tempfile.TemporaryDirectory() as scratch:  # layouts that write files (yolo masks) write here
        items, classes = scan_layout(entry["layout"], folder, {**entry, "category": category or entry.get("category")}, Path(scratch))
    pixel, notes = _pixel_keys(sorted(i.path for i in items))
    entry.update(pixel)
    validate_config({"datasets": {name: dict(entry)}})
    counts = {c: sum(i.class_name == c for i in items) for c in classes}
    comments = [f"{folder}: {what}", f"{len(items)} images; " + ", ".join(f"{c} {n}" for c, n in counts.items())] + notes
    return name, entry, comments


def render_entry(name: str, entry: dict[str, Any], comments: list[str]) -> str:
    """The YAML config snippet: a complete ``--configfile`` for this dataset (other keys default)."""
    import yaml

    head = "".join(f"# {c}\n" for c in ["written by `defectbench new-dataset`", *comments])
    body = yaml.safe_dump({"datasets": {name: entry}}, sort_keys=False, default_flow_style=None, width=100)
    return head + body
