"""Dataset layouts: turn a fetched directory tree into a list of labelled images.

Each ``scan_<layout>(root, cfg, dataset_dir)`` returns ``(items, classes)``: one :class:`Item` per
image and the ordered class names (``label`` = index in ``classes``). Scans only look at names
and the annotation files; decoding and hashing happen in :mod:`defectbench.data.manifest`.

Label ids per layout (nominal class first where the data has one):

* ``imagefolder``: class folders in sorted order (or the order of ``classes`` when configured);
  folders named in ``nominal_classes`` are defect-free.
* ``magnetic_tile``: ``Free`` (nominal, MT_Free) = 0, then Blowhole, Break, Crack, Fray, Uneven.
* ``deeppcb``: the DeepPCB type minus one: open, short, mousebite, spur, spurious_copper,
  pin_hole (0-5); with ``templates: true`` the template crops are ``good`` = 6 (nominal).
* ``elpv``: ``prob_0`` (nominal), ``prob_33``, ``prob_67``, ``prob_100`` from the defect
  probabilities 0, 1/3, 2/3, 1; ``group`` = mono/poly.
* ``mvtec`` / ``visa``: ``good`` = 0, then the defect types in sorted order (VisA types from the
  category's ``image_anno.csv``; ``anomaly`` when that file is absent). ``mvtec`` without a
  ``ground_truth/`` folder: no masks.
* ``csv``: a folder plus a labels CSV (image,label[,mask][,split]); classes in ``classes`` order,
  else the ``nominal_classes`` first, then sorted.
* ``yolo``: YOLO segmentation polygons filled into masks; ``good`` (no polygon) = 0, then the
  YOLO class names that occur, in class-id order.

``source_split`` is the dataset's own train/test assignment (mvtec, visa, deeppcb; csv ``split``
column; yolo split folders) or None.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectbench import registry
from defectbench.runtime import DefectbenchError, new_temp_dir

log = logging.getLogger("defectbench")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAGNETIC_TILE_CLASSES = ["Free", "Blowhole", "Break", "Crack", "Fray", "Uneven"]
DEEPPCB_CLASSES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]
ELPV_CLASSES = ["prob_0", "prob_33", "prob_67", "prob_100"]


@dataclass
class Item:
    """One image of a layout before decoding."""

    path: Path
    class_name: str
    is_anomalous: bool
    mask_path: Path | None = None
    group: str | None = None
    source_split: str | None = None


Scan = tuple[list[Item], list[str]]


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap the complete directory ``tmp`` in as ``final`` (the old one is removed afterwards)."""
    old = None
    if final.exists():
        old = new_temp_dir(final.parent, f".{final.name}.old-")
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DefectbenchError(f"{path}: {what} not found; the dataset is incomplete, fetch it again")
    return path


# ----------------------------------------------------------------------------- imagefolder
def scan_imagefolder(root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None) -> Scan:
    """``root/<class>/**/<image>``. With ``classes`` configured, any other folder is an error."""
    folders = _visible_dirs(root)
    expected = cfg["classes"]
    names = [f.name for f in folders]
    if expected:
        unknown = [n for n in names if n not in expected]
        if unknown:
            raise DefectbenchError(
                f"{root / unknown[0]}: unknown class folder {unknown[0]!r} (expected one of {expected}); "
                "remove it or add it to the dataset's `classes`"
            )
        missing = [c for c in expected if c not in names]
        if missing:
            raise DefectbenchError(f"{root / missing[0]}: class folder missing; fetch the dataset again or fix `classes`")
        classes = list(expected)
    else:
        classes = names
    if not classes:
        raise DefectbenchError(f"{root}: no class folders found; is source.root right for layout imagefolder?")
    nominal = set(cfg["nominal_classes"])
    bad = nominal - set(classes)
    if bad:
        raise DefectbenchError(f"config key nominal_classes: {sorted(bad)} are not class folders of {root}")
    items = []
    for name in classes:
        images = _images_in(root / name)
        if not images:
            raise DefectbenchError(f"{root / name}: class folder has no images; remove it or fetch the dataset again")
        items += [Item(p, name, name not in nominal) for p in images]
    return items, classes


# ----------------------------------------------------------------------------- magnetic tile
def scan_magnetic_tile(root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None) -> Scan:
    """``MT_<class>/Imgs/<id>.jpg`` with its mask ``<id>.png``; MT_Free is nominal."""
    items = []
    for folder in _visible_dirs(root):
        name = folder.name[3:] if folder.name.startswith("MT_") else None
        if name not in MAGNETIC_TILE_CLASSES:
            raise DefectbenchError(
                f"{folder}: unknown class folder {folder.name!r} for layout magnetic_tile "
                f"(expected MT_{{{','.join(MAGNETIC_TILE_CLASSES)}}}); remove it"
            )
        images = sorted(p for p in (folder / "Imgs").glob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
        if not images:
            raise DefectbenchError(f"{folder / 'Imgs'}: no .jpg images; fetch the dataset again")
        for img in images:
            mask = img.with_suffix(".png")
            if not mask.is_file():
                raise DefectbenchError(f"{img}: image without its mask {mask.name}; restore the mask or remove the image")
            items.append(Item(img, name, name != "Free", mask))
    if not items:
        raise DefectbenchError(f"{root}: no MT_* class folders; is source.root right for layout magnetic_tile?")
    return items, list(MAGNETIC_TILE_CLASSES)


# ----------------------------------------------------------------------------- ELPV
def scan_elpv(root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None) -> Scan:
    """ELPV's ``labels.csv`` (``path probability type``): 4 severity classes, group = mono/poly."""
    labels = root / "labels.csv" if (root / "labels.csv").is_file() else root / "data" / "labels.csv"
    _require_file(labels, "ELPV labels.csv")
    severities = {0.0: 0, 1 / 3: 1, 2 / 3: 2, 1.0: 3}
    items = []
    for lineno, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rel, prob_text, kind = line.split()
            prob = float(prob_text)
        except ValueError:
            raise DefectbenchError(f"{labels}:{lineno}: expected 'path probability type'; the file is damaged") from None
        level = next((v for p, v in severities.items() if abs(prob - p) < 1e-6), None)
        if level is None:
            raise DefectbenchError(f"{labels}:{lineno}: defect probability {prob} is not 0, 1/3, 2/3 or 1")
        img = _require_file(labels.parent / rel, "ELPV image")
        items.append(Item(img, ELPV_CLASSES[level], level > 0, None, kind))
    return items, list(ELPV_CLASSES)


# ----------------------------------------------------------------------------- MVTec AD
def scan_mvtec(root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None) -> Scan:
    """``<category>/train/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``.

    Without a ``ground_truth/`` folder the data has no masks: images are labelled from their
    folders and pixel metrics are simply absent downstream. With one, every defect image needs
    its mask (a missing one is an error, not a silent hole in the pixel metrics).
    """
    category = cfg.get("category")
    if category and (root / category).is_dir():
        base = root / category
    elif (root / "train").is_dir() and (root / "test").is_dir():
        base = root
    else:
        raise DefectbenchError(
            f"{root}: no MVTec category {category!r} here (has {[d.name for d in _visible_dirs(root)]}); "
            "set the dataset's `category`"
        )
    items: list[Item] = []
    train = base / "train"
    for folder in _visible_dirs(train):
        if folder.name != "good":
            raise DefectbenchError(f"{folder}: unknown class folder in train/ (MVTec train holds only 'good'); remove it")
        items += [Item(p, "good", False, source_split="train") for p in _images_in(folder)]
    types = []
    has_masks = (base / "ground_truth").is_dir()
    if not has_masks:
        log.info("%s: no ground_truth/ folder: image labels only (no pixel metrics)", base)
    for folder in _visible_dirs(base / "test"):
        defect = folder.name
        for img in _images_in(folder):
            if defect == "good":
                items.append(Item(img, "good", False, source_split="test"))
                continue
            mask = base / "ground_truth" / defect / f"{img.stem}_mask.png" if has_masks else None
            if mask is not None and not mask.is_file():
                raise DefectbenchError(f"{img}: image without its mask {mask}; restore the mask or remove the image")
            items.append(Item(img, defect, True, mask, source_split="test"))
        if defect != "good":
            types.append(defect)
    if not any(i.source_split == "train" for i in items):
        raise DefectbenchError(f"{train / 'good'}: no training images; fetch the dataset again")
    return items, ["good"] + sorted(types)


# ----------------------------------------------------------------------------- VisA
def _visa_types(category_dir: Path) -> dict[str, str]:
    """image path (relative to the VisA root) -> defect type, from ``image_anno.csv``."""
    anno = category_dir / "image_anno.csv"
    if not anno.is_file():
        return {}
    with open(anno, newline="") as fh:
        return {row["image"]: row["label"].strip() for row in csv.DictReader(fh)}


def scan_visa(root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None) -> Scan:
    """VisA's ``split_csv/1cls.csv`` (object,split,label,image,mask) for the configured category."""
    split_csv = _require_file(root / "split_csv" / "1cls.csv", "VisA split file split_csv/1cls.csv")
    category = cfg.get("category")
    if not category:
        raise DefectbenchError("config key category: required for layout visa (e.g. candle, pcb1)")
    types = _visa_types(root / category)
    items, seen = [], set()
    with open(split_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        seen.add(row["object"])
        if row["object"] != category:
            continue
        split, label = row["split"].strip(), row["label"].strip()
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            raise DefectbenchError(f"{split_csv}: row {row['image']!r} has split {split!r} / label {label!r}; the file is damaged")
        img = _require_file(root / row["image"], "VisA image")
        if label == "normal":
            items.append(Item(img, "good", False, source_split=split))
            continue
        if not row.get("mask"):
            raise DefectbenchError(f"{img}: image without its mask (empty mask column in {split_csv.name}); fetch the dataset again")
        mask = root / row["mask"]
        if not mask.is_file():
            raise DefectbenchError(f"{img}: image without its mask {mask}; fetch the dataset again")
        defect = types.get(row["image"], "anomaly")
        items.append(Item(img, "anomaly" if defect == "normal" else defect, True, mask, source_split=split))
    if not items:
        raise DefectbenchError(f"{split_csv}: no rows for category {category!r} (has {sorted(seen)}); fix the dataset's `category`")
    return items, ["good"] + sorted({i.class_name for i in items if i.is_anomalous})


# ----------------------------------------------------------------------------- DeepPCB
def _deeppcb_pairs(pcb: Path) -> list[tuple[Path, Path, Path, str]]:
    """(test image, template, annotation, source split) for every line of the split lists.

    The lists name ``<id>.jpg``; the files are ``<id>_test.png`` / ``<id>_temp.png``.
    """
    pairs = []
    for list_name, split in (("trainval.txt", "train"), ("test.txt", "test")):
        lst = _require_file(pcb / list_name, "DeepPCB split list")
        for lineno, line in enumerate(lst.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DefectbenchError(f"{lst}:{lineno}: expected '<image> <annotation>'; the file is damaged")
            stem = Path(parts[0]).with_suffix("")
            test = _require_file(pcb / f"{stem}_test.png", "DeepPCB test image")
            temp = _require_file(pcb / f"{stem}_temp.png", "DeepPCB template image")
            pairs.append((test, temp, _require_file(pcb / parts[1], "DeepPCB annotation"), split))
    return pairs


def _read_boxes(ann: Path) -> list[tuple[int, int, int, int, int]]:
    boxes = []
    for lineno, line in enumerate(ann.read_text().replace(",", " ").splitlines(), 1):
        if not line.strip():
            continue
        try:
            x1, y1, x2, y2, kind = (int(v) for v in line.split())
        except ValueError:
            raise DefectbenchError(f"{ann}:{lineno}: expected 'x1 y1 x2 y2 type'; the file is damaged") from None
        if not 1 <= kind <= 6:
            raise DefectbenchError(f"{ann}:{lineno}: defect type {kind} is not 1-6")
        boxes.append((x1, y1, x2, y2, kind))
    return boxes


def scan_deeppcb(root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None, workers: int = 2) -> Scan:
    """Crop every annotated box of the DeepPCB test images into a 6-class set.

    Crops (box + ``crop_padding`` pixels, clipped to the image) are written as PNG files under
    ``<dataset_dir>/crops/`` (rebuilt atomically on every manifest build), so downstream stages
    see ordinary image files. With ``templates: true`` the same box of the defect-free template is
    cropped too, as nominal class ``good``. ``source_split`` follows trainval.txt / test.txt.
    """
    from PIL import Image

    pcb = root / "PCBData" if (root / "PCBData").is_dir() else root
    if dataset_dir is None:
        raise DefectbenchError("layout deeppcb needs the dataset directory to write its crops")
    pad = int(cfg["crop_padding"])
    templates = bool(cfg["templates"])
    pairs = _deeppcb_pairs(pcb)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(dataset_dir, ".crops.partial-")
    final = dataset_dir / "crops"

    def crop_pair(pair: tuple[Path, Path, Path, str]) -> list[Item]:
        test, temp, ann, split = pair
        out = []
        sources = [("test", test)] + ([("temp", temp)] if templates else [])
        for tag, path in sources:
            try:
                with Image.open(path) as im:
                    im.load()
                    w, h = im.size
                    for k, (x1, y1, x2, y2, kind) in enumerate(_read_boxes(ann)):
                        box = (max(0, min(x1, x2) - pad), max(0, min(y1, y2) - pad),
                               min(w, max(x1, x2) + pad), min(h, max(y1, y2) + pad))
                        if box[2] <= box[0] or box[3] <= box[1]:
                            raise DefectbenchError(f"{ann}: box {k + 1} ({x1} {y1} {x2} {y2}) lies outside the {w}x{h} image")
                        name = f"{test.name[: -len('_test.png')]}_{k:02d}_{kind}_{tag}.png"
                        im.crop(box).save(tmp / name)
                        cls = DEEPPCB_CLASSES[kind - 1] if tag == "test" else "good"
                        out.append(Item(final / name, cls, tag == "test", source_split=split))
            except (OSError, SyntaxError) as exc:
                raise DefectbenchError(f"{path}: cannot decode image ({exc}); the file is corrupt, fetch the dataset again") from None
        return out

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            items = [it for chunk in pool.map(crop_pair, pairs) for it in chunk]
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("deeppcb: %d crops from %d images (padding %d px) in %s", len(items), len(pairs), pad, final)
    classes = list(DEEPPCB_CLASSES) + (["good"] if templates else [])
    return items, classes



# ----------------------------------------------------------------------------- CSV of labels
def _ordered_classes(found: set[str], cfg: dict[str, Any], where: Path) -> list[str]:
    """``classes`` when configured (every found label must be in it), else nominal classes first, then sorted."""
    expected = cfg.get("classes")
    if expected:
        unknown = sorted(found - set(expected))
        if unknown:
            raise DefectbenchError(f"{where}: label {unknown[0]!r} is not in the dataset's `classes` {expected}; add it or fix the labels")
        return list(expected)
    nominal = [c for c in cfg.get("nominal_classes") or [] if c in found]
    return nominal + sorted(found - set(nominal))


def scan_csv(root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None) -> Scan:
    """A folder of images plus a CSV (``labels_file``, default ``labels.csv`` in the root) with
    columns ``image`` (path relative to the root) and ``label`` (class name), optionally ``mask``
    (path of a defect mask, empty for none) and ``split`` (the data's own train/test).

    Classes named in ``nominal_classes`` are defect-free; images the CSV does not list are an
    error (a forgotten label would silently shrink the data).
    """
    labels = _require_file(root / cfg["labels_file"], "labels CSV (config key labels_file)")
    with open(labels, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DefectbenchError(f"{labels}: missing column(s) {sorted(missing)}; the CSV needs image,label[,mask][,split]")
        rows = list(reader)
    nominal = set(cfg.get("nominal_classes") or [])
    items, listed = [], set()
    for lineno, row in enumerate(rows, 2):
        rel, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
        if not rel or not label:
            raise DefectbenchError(f"{labels}:{lineno}: empty image or label; every row needs both")
        img = root / rel
        if not img.is_file():
            raise DefectbenchError(f"{labels}:{lineno}: image {rel!r} not found under {root}; fix the path or remove the row")
        mask_rel = (row.get("mask") or "").strip()
        mask = root / mask_rel if mask_rel else None
        if mask is not None and not mask.is_file():
            raise DefectbenchError(f"{labels}:{lineno}: mask {mask_rel!r} not found under {root}; fix the path or leave it empty")
        split = (row.get("split") or "").strip() or None
        if split not in (None, "train", "test"):
            raise DefectbenchError(f"{labels}:{lineno}: split {split!r} is not train or test")
        listed.add(img.resolve())
        items.append(Item(img, label, label not in nominal, mask, source_split=split))
    if not items:
        raise DefectbenchError(f"{labels}: no rows; list one image per row (image,label)")
    masks = {i.mask_path.resolve() for i in items if i.mask_path is not None}
    unlisted = [p for p in _images_in(root) if p.resolve() not in listed and p.resolve() not in masks]
    if unlisted:
        raise DefectbenchError(f"{unlisted[0]}: image not listed in {labels.name} ({len(unlisted)} such); add rows for them or move them out of the folder")
    found = {i.class_name for i in items}
    bad = nominal - found
    if bad:
        raise DefectbenchError(f"config key nominal_classes: {sorted(bad)} are not labels in {labels}")
    return items, _ordered_classes(found, cfg, labels)


# ----------------------------------------------------------------------------- YOLO polygons
def _yolo_names(root: Path, cfg: dict[str, Any]) -> list[str]:
    """Class names by YOLO class id: the dataset's ``classes``, else ``names`` of ``data.yaml``."""
    if cfg.get("classes"):
        return list(cfg["classes"])
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            import yaml

            names = (yaml.safe_load((root / name).read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    raise DefectbenchError(f"{root}: no class names; set the dataset's `classes` (YOLO class id order) or add data.yaml with `names`")


def _yolo_polygons(label: Path, n_classes: int) -> list[tuple[int, list[float]]]:
    """(class id, [x1, y1, x2, y2, ...] normalised) for each line of a YOLO segmentation label file."""
    polygons = []
    for lineno, line in enumerate(label.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, coords = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError:
            raise DefectbenchError(f"{label}:{lineno}: expected 'class x1 y1 x2 y2 ...' (YOLO segmentation); the file is damaged") from None
        if len(coords) < 6 or len(coords) % 2:
            raise DefectbenchError(f"{label}:{lineno}: a polygon needs at least 3 x y pairs (YOLO segmentation; boxes are not masks)")
        if not 0 <= cls < n_classes:
            raise DefectbenchError(f"{label}:{lineno}: class id {cls} outside 0..{n_classes - 1} of the class names")
        if any(v < 0 or v > 1 for v in coords):
            raise DefectbenchError(f"{label}:{lineno}: coordinates must be normalised to [0, 1]")
        polygons.append((cls, coords))
    return polygons


def _polygon_area(coords: list[float]) -> float:
    xs, ys = coords[0::2], coords[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def scan_yolo(root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None) -> Scan:
    """YOLO segmentation data: ``images/[<split>/]<stem>.<ext>`` with ``labels/[<split>/]<stem>.txt``
    (``class x1 y1 ...``, normalised polygon vertices).

    Each image's polygons are filled into a 0/255 mask PNG under ``<dataset_dir>/masks/`` (rebuilt
    atomically on every manifest build). An image without polygons (no or empty label file) is
    nominal ``good``; otherwise it is anomalous with the class of its largest polygon. Split
    folders ``train`` and ``val``/``valid``/``test`` become the source split train / test.
    """
    from PIL import Image, ImageDraw

    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DefectbenchError(f"{images_dir}: not found; layout yolo reads images/ and labels/ (is source.root right?)")
    if dataset_dir is None:
        raise DefectbenchError("layout yolo needs the dataset directory to write its masks")
    names = _yolo_names(root, cfg)
    if "good" in names:
        raise DefectbenchError("config key classes: 'good' is the name of images without polygons; rename that YOLO class")
    images = _images_in(images_dir)
    if not images:
        raise DefectbenchError(f"{images_dir}: no images")
    dataset_dir.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(dataset_dir, ".masks.partial-")
    final = dataset_dir / "masks"
    splits = {"train": "train", "val": "test", "valid": "test", "test": "test"}
    items = []
    try:
        for img in images:
            rel = img.relative_to(images_dir)
            label = (root / "labels" / rel).with_suffix(".txt")
            polygons = _yolo_polygons(label, len(names)) if label.is_file() else []
            split = splits.get(rel.parts[0]) if len(rel.parts) > 1 else None
            if not polygons:
                items.append(Item(img, "good", False, source_split=split))
                continue
            with Image.open(img) as im:
                w, h = im.size
            mask = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(mask)
            for _, coords in polygons:
                draw.polygon([(x * w, y * h) for x, y in zip(coords[0::2], coords[1::2])], fill=255)
            name = "__".join(rel.with_suffix("").parts) + ".png"
            mask.save(tmp / name)
            cls = max(polygons, key=lambda p: _polygon_area(p[1]))[0]
            items.append(Item(img, names[cls], True, final / name, source_split=split))
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = {i.class_name for i in items}
    log.info("yolo: %d images, %d with polygons (masks in %s)", len(items), sum(i.is_anomalous for i in items), final)
    return items, ["good"] * ("good" in found) + [n for n in names if n in found]


def scan_layout(layout: str, root: Path, cfg: dict[str, Any], dataset_dir: Path | None = None, workers: int = 2) -> Scan:
    """Dispatch to the layout's scanner (registered in :data:`defectbench.registry.LAYOUTS`)."""
    from defectbench.config import with_dataset_defaults

    scanner = registry.implementation("layouts", layout)
    cfg = with_dataset_defaults(cfg)
    if not root.is_dir():
        raise DefectbenchError(f"{root}: dataset directory not found; rerun the fetch_dataset rule")
    if layout == "deeppcb":
        return scan_deeppcb(root, cfg, dataset_dir, workers=workers)
    return scanner(root, cfg, dataset_dir)
