"""The manifest: one Parquet row per image, the single index every later stage uses.

Columns (docs/CONTRACTS.md): ``path`` (relative to the project root when under it), ``label``,
``class_name``, ``is_anomalous``, ``mask_path``, ``width``, ``height``, ``sha256`` (of the file's
bytes), ``group``, ``source_split`` (the dataset's own train/test, or None) and ``pixel_scale``
(how the cache maps the image's values to 0..255 under the dataset's ``bit_depth``:
:mod:`defectbench.data.pixels`). Row order is
sorted by path and is the row order of the decode-once cache.

Building the manifest decodes every image (and mask) once, so corrupt, truncated, empty or
mask-mismatched files stop the pipeline here, all listed in one error (nothing written), instead
of in the middle of training.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from defectbench.data.layouts import Item, scan_layout
from defectbench.data.pixels import PixelError, has_transparency, pixel_scale_of
from defectbench.data.sources import project_relative, resolve_path
from defectbench.runtime import DefectbenchError, write_parquet

log = logging.getLogger("defectbench")

MANIFEST_COLUMNS = [
    "path", "label", "class_name", "is_anomalous", "mask_path", "width", "height", "sha256", "group", "source_split",
    "pixel_scale",
]
#: Bad files named one per line in the manifest error; the rest are counted.
MAX_LISTED_PROBLEMS = 20
#: Seed of the ``max_per_class`` subsample. Fixed (not the experiment seed): the manifest is
#: shared by every seed, so every seed sees the same images and differs only in its split.
SUBSAMPLE_SEED = 0


def read_marker(marker: str | os.PathLike) -> dict[str, Any]:
    """The ``.fetched.json`` record written by :func:`defectbench.data.sources.fetch_dataset`."""
    try:
        return json.loads(Path(marker).read_text())
    except FileNotFoundError:
        raise DefectbenchError(f"{marker}: fetch marker not found; run the fetch_dataset rule first") from None
    except json.JSONDecodeError:
        raise DefectbenchError(f"{marker}: damaged fetch marker; delete it and rerun") from None


def subsample_per_class(items: list[Item], max_per_class: int | None, seed: int = SUBSAMPLE_SEED, *,
                        max_nominal: int | None = None, max_defective: int | None = None) -> list[Item]:
    """At most ``max_per_class`` items per class, drawn with numpy PCG64(seed); order kept.

    ``max_nominal`` / ``max_defective`` replace ``max_per_class`` for the classes of nominal /
    anomalous images (null = ``max_per_class``), so an anomaly dataset can keep all its
    defect-free images while its defect classes stay capped (or the other way round).

    >>> its = [Item(Path(f"{c}{i}"), c, c == "b") for c in "ab" for i in range(5)]
    >>> [i.class_name for i in subsample_per_class(its, 2)]
    ['a', 'a', 'b', 'b']
    >>> [i.class_name for i in subsample_per_class(its, 2, max_nominal=4)]
    ['a', 'a', 'a', 'a', 'b', 'b']
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    keep: set[int] = set()
    by_class: dict[str, list[int]] = {}
    for idx, item in enumerate(items):
        by_class.setdefault(item.class_name, []).append(idx)
    for name in sorted(by_class):
        idx = by_class[name]
        override = max_defective if items[idx[0]].is_anomalous else max_nominal
        cap = override if override is not None else max_per_class
        if not cap or len(idx) <= cap:
            keep.update(idx)
        else:
            keep.update(np.asarray(idx)[rng.choice(len(idx), size=cap, replace=False)].tolist())
    return [item for i, item in enumerate(items) if i in keep]


def inspect_image(path: Path, bit_depth: str | int | None = "auto", background: Any = None) -> tuple[str, int, int, str | None]:
    """(sha256 of the bytes, width, height, pixel_scale), after decoding the whole image.

    PIL's ``load()`` decodes every pixel, so truncated or corrupt files raise here, as do images
    the dataset's ``bit_depth`` / ``alpha_background`` cannot map to 0..255
    (:mod:`defectbench.data.pixels`). ``bit_depth=None`` (masks: any non-zero pixel is defect)
    skips the pixel-value checks and gives no pixel_scale.
    """
    from PIL import Image

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: image file not found; fetch the dataset again") from None
    if not data:
        raise DefectbenchError(f"{path}: empty file (0 bytes); replace or remove it")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            w, h = im.size
            scale = None if bit_depth is None else pixel_scale_of(im, bit_depth)
            if scale is not None and background is None and has_transparency(im):
                raise PixelError("image has transparent pixels; set the dataset's alpha_background (grey 0-255 or [r, g, b]) to flatten it")
    except PixelError as exc:
        raise DefectbenchError(f"{path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DefectbenchError(f"{path}: cannot decode image ({exc}); the file is corrupt, replace or remove it") from None
    return hashlib.sha256(data).hexdigest(), w, h, scale


def _inspect_item(item: Item, bit_depth: str | int, background: Any) -> tuple[str, int, int, str] | str:
    """The item's inspection result, or the one-line reason it is bad (collected, not raised)."""
    try:
        sha, w, h, scale = inspect_image(item.path, bit_depth, background)
        if item.mask_path is not None:
            _, mw, mh, _ = inspect_image(item.mask_path, bit_depth=None)
            if (mw, mh) != (w, h):
                return f"{item.mask_path}: mask is {mw}x{mh} but its image {item.path.name} is {w}x{h}; fix the mask"
    except DefectbenchError as exc:
        return str(exc)
    return sha, w, h, scale


def bad_files_error(problems: list[str], shown: int = MAX_LISTED_PROBLEMS) -> DefectbenchError:
    """One error for every bad file: a single problem is its own one-line message; several are a
    heading line plus the first ``shown`` problems (one line each) and how many more there are."""
    if len(problems) == 1:
        return DefectbenchError(problems[0])
    lines = [f"{len(problems)} bad image files; fix or remove them, then rerun (nothing was written):"]
    lines += [f"  {p}" for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more")
    return DefectbenchError("\n".join(lines))


def manifest_frame(
    items: list[Item],
    classes: list[str],
    *,
    workers: int = 2,
    project_root: str | os.PathLike | None = None,
    bit_depth: str | int = "auto",
    background: Any = None,
) -> pd.DataFrame:
    """Decode-check and hash ``items`` (in a thread pool) into the manifest DataFrame.

    Every file is checked before any error is raised, so one run lists every undecodable, empty or
    mask-mismatched file (:func:`bad_files_error`).
    """
    label_of = {name: i for i, name in enumerate(classes)}
    items = sorted(items, key=lambda it: it.path.as_posix())
    n = len(items)
    results: list[tuple[str, int, int, str] | str] = []
    step = max(1, n // 10)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, res in enumerate(pool.map(lambda it: _inspect_item(it, bit_depth, background), items), 1):
            results.append(res)
            if i % step == 0 or i == n:
                log.info("manifest: verified %d/%d images", i, n)
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        raise bad_files_error(problems)
    df = pd.DataFrame(
        {
            "path": [project_relative(it.path, project_root) for it in items],
            "label": np.array([label_of[it.class_name] for it in items], dtype=np.int64),
            "class_name": [it.class_name for it in items],
            "is_anomalous": np.array([it.is_anomalous for it in items], dtype=bool),
            "mask_path": [None if it.mask_path is None else project_relative(it.mask_path, project_root) for it in items],
            "width": np.array([r[1] for r in results], dtype=np.int64),
            "height": np.array([r[2] for r in results], dtype=np.int64),
            "sha256": [r[0] for r in results],
            "group": [it.group for it in items],
            "source_split": [it.source_split for it in items],
            "pixel_scale": [r[3] for r in results],
        },
        columns=MANIFEST_COLUMNS,
    )
    return df


def build_manifest(
    marker: str | os.PathLike,
    dataset_cfg: dict[str, Any],
    out_path: str | os.PathLike,
    *,
    workers: int = 2,
    project_root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Scan the fetched dataset with its layout, subsample, verify, and write the manifest Parquet."""
    from defectbench.config import with_dataset_defaults

    dataset_cfg = with_dataset_defaults(dataset_cfg)
    project_root = Path(project_root or Path.cwd())
    record = read_marker(marker)
    root = resolve_path(record["root"], project_root)
    if not root.is_dir():
        raise DefectbenchError(f"{root}: fetched data is gone; delete {marker} and rerun (fetch_dataset runs again)")
    layout = dataset_cfg["layout"]
    items, classes = scan_layout(layout, root, dataset_cfg, Path(marker).parent, workers=workers)
    log.info("%s: layout %s found %d images in %d classes", record.get("dataset", "?"), layout, len(items), len(classes))
    items = subsample_per_class(sorted(items, key=lambda it: it.path.as_posix()), dataset_cfg["max_per_class"],
                                max_nominal=dataset_cfg["max_nominal"], max_defective=dataset_cfg["max_defective"])
    df = manifest_frame(items, classes, workers=workers, project_root=project_root,
                        bit_depth=dataset_cfg["bit_depth"], background=dataset_cfg["alpha_background"])
    counts = df.groupby("class_name", sort=False).size().to_dict()
    log.info("manifest: %d rows; per class %s", len(df), counts)
    write_parquet(out_path, df)
    return df


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest Parquet, checking its columns."""
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: manifest not found; run the build_manifest rule") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DefectbenchError(f"{path}: not a manifest (missing columns {missing}); delete it and rerun")
    return df
