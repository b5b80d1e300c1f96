"""Decode once: every manifest image decoded, resized and stored as one uint8 array.

``cache-{size}.npy`` is (N, S, S, 3) uint8 in manifest row order (grey and 1-bit images expanded
to 3 channels; deep greyscale scaled by the manifest's ``pixel_scale``, transparency flattened,
squares made by the dataset's resize policy: :mod:`defectbench.data.pixels`; PIL bilinear resize,
which low-pass filters when shrinking); ``masks-{size}.npy`` is (N, S, S) uint8 in {0, 1} (the
same geometry, nearest-neighbour; all zero where a row has no mask).
Training reads them with ``np.load(mmap_mode='r')`` (:func:`load_cache`) and never decodes a
JPEG/PNG again.

Both arrays are filled in place in temporary ``.npy`` files (``open_memmap``) by a thread pool
(PIL releases the GIL while decoding and resizing) and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from defectbench.data.pixels import PixelError, fit_square, is_deep, pixel_scale_of, to_pixels
from defectbench.data.sources import resolve_path
from defectbench.runtime import DefectbenchError, atomic_path

log = logging.getLogger("defectbench")


def decode_image(
    path: str | os.PathLike,
    size: int,
    pixel_scale: str | None = None,
    *,
    background: int | Sequence[int] | None = None,
    resize: str = "squash",
    resize_to: int | None = None,
) -> np.ndarray:
    """(size, size, 3) uint8: decode, scale to 0..255 by ``pixel_scale`` (None: the file's own
    depth, ``bit_depth: auto``), flatten transparency on ``background``, map to a square by the
    resize policy (bilinear, antialiased), grey to 3 channels.

    For JPEG, PIL's ``draft`` lets libjpeg decode directly at a reduced scale (never below the
    resize size), which is much faster for large images and equivalent to area averaging.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                target = int(resize_to or size)
                im.draft(im.mode, (target, target))
            scale = pixel_scale or pixel_scale_of(im, "auto")
            im = fit_square(to_pixels(im, scale, background), size, resize, resize_to)
            arr = np.asarray(im)
        if arr.dtype != np.uint8:  # deep greyscale stays float through the resize; round once here
            arr = np.rint(np.clip(arr, 0, 255)).astype(np.uint8)  # clip guards float rounding only
        return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr
    except PixelError as exc:
        raise DefectbenchError(f"{path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DefectbenchError(f"{path}: cannot decode image ({exc}); rebuild the manifest (the file changed or is corrupt)") from None


def decode_mask(path: str | os.PathLike | None, size: int, *, resize: str = "squash", resize_to: int | None = None) -> np.ndarray:
    """(size, size) uint8 in {0, 1}: the image's geometry with nearest-neighbour resampling; any
    non-zero pixel is defect (padding is nominal)."""
    if path is None:
        return np.zeros((size, size), dtype=np.uint8)
    from PIL import Image

    try:
        with Image.open(path) as im:
            values = np.asarray(im) if is_deep(im) else np.asarray(im.convert("L"))
            binary = Image.fromarray((values > 0).astype(np.uint8))
            return np.asarray(fit_square(binary, size, resize, resize_to, nearest=True)).astype(np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DefectbenchError(f"{path}: cannot decode mask ({exc}); rebuild the manifest") from None


def build_cache(
    manifest: pd.DataFrame | str | os.PathLike,
    size: int,
    images_out: str | os.PathLike,
    masks_out: str | os.PathLike,
    *,
    dataset_cfg: dict[str, Any] | None = None,
    workers: int = 2,
    project_root: str | os.PathLike | None = None,
    chunk: int = 256,
) -> tuple[int, float]:
    """Write ``cache-{size}.npy`` and ``masks-{size}.npy`` for every manifest row.

    Pixel values follow the manifest's per-row ``pixel_scale``; ``dataset_cfg`` gives
    ``alpha_background``, ``resize`` and ``resize_to`` (:mod:`defectbench.data.pixels`).
    Returns (rows, seconds). Relative manifest paths resolve against ``project_root`` (default:
    the working directory).
    """
    from defectbench.data.manifest import read_manifest

    if not isinstance(manifest, pd.DataFrame):
        manifest = read_manifest(manifest)
    if size < 1:
        raise DefectbenchError(f"image_size {size}: must be a positive integer")
    cfg = dataset_cfg or {}
    geometry = {"resize": cfg.get("resize", "squash"), "resize_to": cfg.get("resize_to")}
    if geometry["resize_to"] is not None and geometry["resize_to"] < size:
        raise DefectbenchError(f"config key resize_to: {geometry['resize_to']} is smaller than the {size} px cache; set it >= {size} or null")
    background = cfg.get("alpha_background")
    scales = manifest["pixel_scale"].tolist() if "pixel_scale" in manifest.columns else [None] * len(manifest)
    root = Path(project_root or Path.cwd())
    paths = [resolve_path(p, root) for p in manifest["path"]]
    masks = [None if (m is None or (isinstance(m, float) and np.isnan(m))) else resolve_path(m, root) for m in manifest["mask_path"]]
    n = len(paths)
    start = time.perf_counter()
    with atomic_path(images_out, suffix=".npy") as img_tmp, atomic_path(masks_out, suffix=".npy") as mask_tmp:
        images = np.lib.format.open_memmap(img_tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        mask_arr = np.lib.format.open_memmap(mask_tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
        next_log = time.monotonic() + 5.0
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                images[lo:hi] = np.stack(list(pool.map(
                    lambda i: decode_image(paths[i], size, scales[i], background=background, **geometry), range(lo, hi))))
                mask_arr[lo:hi] = np.stack(list(pool.map(lambda p: decode_mask(p, size, **geometry), masks[lo:hi])))
                if time.monotonic() >= next_log or hi == n:
                    log.info("cache %dpx: %d/%d images (%.0f img/s)", size, hi, n, hi / max(time.perf_counter() - start, 1e-9))
                    next_log = time.monotonic() + 5.0
        images.flush()
        mask_arr.flush()
        del images, mask_arr
    seconds = time.perf_counter() - start
    log.info("cache %dpx: %d images in %.1fs -> %s", size, n, seconds, images_out)
    return n, seconds


def load_cache(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a cache (``cache-*.npy`` or ``masks-*.npy``) read-only; no copy, no decode."""
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise DefectbenchError(f"{path}: cache not found; run the build_cache rule") from None
    except ValueError as exc:
        raise DefectbenchError(f"{path}: not a readable .npy cache ({exc}); delete it and rerun") from None
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
        raise DefectbenchError(f"{path}: expected a uint8 (N,S,S[,3]) cache, got {arr.dtype} {arr.shape}; delete it and rerun")
    return arr


@dataclass(frozen=True)
class SplitImages:
    """Rows of a split with their cached images: ``rows`` (split rows sorted by ``row``, index
    0..n-1), ``images`` (n,S,S,3) uint8 in that order (an in-memory contiguous copy) and ``masks``
    (n,S,S) bool (defect pixels) when the reader was given the mask cache, else None."""

    rows: pd.DataFrame
    images: np.ndarray
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_ids(self) -> np.ndarray:
        """(n,) int64 manifest/cache rows (a fresh array)."""
        return np.array(self.rows["row"], dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """(n,) int64 split labels (a fresh array)."""
        return np.array(self.rows["label"], dtype=np.int64)


class SplitCache:
    """A split file and the decode-once cache it indexes, opened together: the one reader of
    "the images of these split rows" (:func:`read_split_images`).

    Opening reads the split (sorted by ``row``, :func:`defectbench.data.splits.read_split`),
    memory-maps the image cache (and the mask cache) and checks once that every split row is an
    image of the cache and that the masks have the images' geometry; every error is one line
    naming the file. ``split`` is the whole split; :meth:`subset` and :meth:`take` read the
    images of some of its rows.
    """

    def __init__(self, split_path: str | os.PathLike, cache_path: str | os.PathLike, *,
                 masks_path: str | os.PathLike | None = None,
                 required: tuple[str, ...] = ("row", "subset", "label")):
        from defectbench.data.splits import read_split

        self.split_path, self.cache_path, self.masks_path = split_path, cache_path, masks_path
        self.split = read_split(split_path, required)
        self.cache = load_cache(cache_path)
        if self.cache.ndim != 4 or self.cache.shape[-1] != 3:
            raise DefectbenchError(f"{cache_path}: expected (N,S,S,3) images, got {self.cache.shape}; rerun build_cache")
        self.masks = None
        if masks_path is not None:
            self.masks = load_cache(masks_path)
            if self.masks.shape != self.cache.shape[:3]:
                raise DefectbenchError(f"{masks_path}: masks {self.masks.shape} do not match the images "
                                       f"{self.cache.shape[:3]} of {cache_path}; rerun build_cache")
        rows = self.split["row"]
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.cache)):
            raise DefectbenchError(f"{split_path}: rows {rows.min()}..{rows.max()} out of range of {cache_path} "
                                   f"({len(self.cache)} images); rebuild the cache or the split")

    def subset(self, *names: str, min_rows: int = 0) -> SplitImages:
        """The images of the split's rows in the subsets ``names`` (e.g. ``"train"``, or
        ``"holdout"`` and ``"test"`` of an anomaly split); fewer than ``min_rows`` is an error."""
        part = self.take(self.split[self.split["subset"].isin(names)])
        if len(part) < min_rows:
            raise DefectbenchError(f"{self.split_path}: {len(part)} {'/'.join(names)} row(s), at least {min_rows} "
                                   "needed; check the dataset and its split")
        return part

    def take(self, rows: pd.DataFrame) -> SplitImages:
        """The images of ``rows``, some of this split's rows (e.g. a labelled subset), sorted by row."""
        rows = rows.sort_values("row", kind="stable").reset_index(drop=True)
        ids = rows["row"].to_numpy(dtype=np.int64)
        masks = np.asarray(self.masks[ids]) > 0 if self.masks is not None else None
        return SplitImages(rows, np.ascontiguousarray(self.cache[ids]), masks)


def read_split_images(split_path: str | os.PathLike, cache_path: str | os.PathLike, *subsets: str,
                      masks_path: str | os.PathLike | None = None, min_rows: int = 0) -> SplitImages:
    """The images (and masks) of one or more subsets of a split: ``SplitCache(...).subset(...)``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> np.save(d / "cache.npy", np.arange(4, dtype=np.uint8).repeat(12).reshape(4, 2, 2, 3))
    >>> pd.DataFrame({"row": [3, 0, 1], "subset": ["train", "train", "test"], "label": [1, 0, 0]}).to_parquet(d / "s.parquet")
    >>> part = read_split_images(d / "s.parquet", d / "cache.npy", "train")
    >>> part.row_ids.tolist(), part.labels.tolist(), part.images[:, 0, 0, 0].tolist()
    ([0, 3], [0, 1], [0, 3])
    """
    return SplitCache(split_path, cache_path, masks_path=masks_path).subset(*subsets, min_rows=min_rows)
