"""Images of every depth and shape: real NEU / magnetic-tile pixels written by the test as 16-bit,
12-bit-in-16, float and RGBA files, through the manifest (pixel_scale recorded, bad ones refused
by name) and the cache (scaled by the declared rule, never clipped; resize policies, masks alike)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defectbench.data.cache import build_cache, decode_image, decode_mask
from defectbench.data.manifest import build_manifest
from defectbench.data.pixels import fit_square
from defectbench.runtime import DefectbenchError
from real_images import real_grey

SIZE = 32


@pytest.fixture(scope="module")
def grey() -> list[np.ndarray]:
    """Four real 200x200 NEU images, centre 32x32 (no resize needed: the cache size)."""
    images = list(real_grey("neu-steel", 1).values())[:4]
    return [im[84:84 + SIZE, 84:84 + SIZE] for im in images]


def _folder(tmp_path: Path, files: dict[str, Image.Image]) -> Path:
    root = tmp_path / "data"
    for rel, im in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / rel)
    return root


def _manifest(tmp_path: Path, root: Path, cfg: dict) -> tuple[pd.DataFrame, Path]:
    marker = tmp_path / "resources" / ".fetched.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"dataset": "ds", "root": str(root)}))
    out = tmp_path / "results" / "manifest.parquet"
    return build_manifest(marker, {"layout": "imagefolder", **cfg}, out, project_root=tmp_path), out


def _cache(tmp_path: Path, manifest: pd.DataFrame, cfg: dict, size: int = SIZE) -> np.ndarray:
    build_cache(manifest, size, tmp_path / "c.npy", tmp_path / "m.npy", dataset_cfg=cfg, project_root=tmp_path)
    return np.load(tmp_path / "c.npy")


def _i16(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr.astype(np.uint16))


def test_16bit_full_range_is_scaled_not_clipped(tmp_path, grey):
    # v * 257 spans 0..65535 exactly; v * 257 * 255 / 65535 = v, so the cache must give back v.
    root = _folder(tmp_path, {f"a/{i}.png": _i16(g.astype(np.uint32) * 257) for i, g in enumerate(grey)})
    assert Image.open(root / "a/0.png").mode == "I;16"
    df, _ = _manifest(tmp_path, root, {})
    assert df["pixel_scale"].tolist() == ["16bit"] * 4
    cache = _cache(tmp_path, df, {})
    for i, g in enumerate(grey):
        assert np.array_equal(cache[i, :, :, 0], g)
        assert np.array_equal(cache[i, :, :, 2], g)
    # the old convert("L") clipped: every value >= 255 became white
    clipped = np.asarray(Image.open(root / "a/0.png").convert("L"))
    assert (clipped == 255).mean() > 0.9 and not (cache[0] == 255).mean() > 0.9


def test_12bit_in_16_needs_its_declaration(tmp_path, grey):
    twelve = [np.rint(g * (4095 / 255)).astype(np.uint16) for g in grey]
    root = _folder(tmp_path, {f"a/{i}.png": _i16(t) for i, t in enumerate(twelve)})
    df, _ = _manifest(tmp_path, root, {"bit_depth": 12})
    assert set(df["pixel_scale"]) == {"12bit"}
    cache = _cache(tmp_path, df, {})
    for i, t in enumerate(twelve):
        expected = np.rint(t * (255 / 4095))  # hand rule: value * 255 / 4095
        assert np.array_equal(cache[i, :, :, 0], expected.astype(np.uint8))
        assert np.abs(cache[i, :, :, 0].astype(int) - grey[i]).max() <= 1
    # auto reads the same files as 16-bit: dark but proportional, still not clipped
    df16, _ = _manifest(tmp_path, root, {"bit_depth": "auto"})
    dark = _cache(tmp_path, df16, {})
    assert set(df16["pixel_scale"]) == {"16bit"}
    assert dark.max() <= 16 and np.array_equal(dark[0, :, :, 0], np.rint(twelve[0] * (255 / 65535)).astype(np.uint8))


def test_values_outside_the_declared_depth_are_refused_by_name(tmp_path, grey):
    root = _folder(tmp_path, {"a/ok.png": _i16(grey[0]), "a/wide.png": _i16(grey[1].astype(np.uint32) * 257)})
    with pytest.raises(DefectbenchError) as exc:
        _manifest(tmp_path, root, {"bit_depth": 12})
    msg = str(exc.value)
    assert str(root / "a/wide.png") in msg and "bit_depth 16" in msg and "ok.png" not in msg
    assert not (tmp_path / "results").exists()


def test_float_images_unit_range_or_minmax(tmp_path, grey):
    unit = Image.fromarray((grey[0] / 255).astype(np.float32))
    wide = Image.fromarray(grey[1].astype(np.float32) * 10 + 100)  # 100 + 10 v: no implied range
    root = _folder(tmp_path, {"a/unit.tif": unit, "a/wide.tif": wide})
    with pytest.raises(DefectbenchError, match="wide.tif: float image with values .* outside \\[0, 1\\]; set the dataset's bit_depth: minmax"):
        _manifest(tmp_path, root, {})
    df, _ = _manifest(tmp_path, root, {"bit_depth": "minmax"})
    assert df["pixel_scale"].tolist() == ["minmax", "minmax"]
    cache = _cache(tmp_path, df, {})
    g = grey[1].astype(float)
    expected = np.rint((g - g.min()) / (g.max() - g.min()) * 255)  # 100 + 10 v min-maxed = v min-maxed
    assert np.array_equal(cache[1, :, :, 0], expected.astype(np.uint8))
    (root / "a/wide.tif").unlink()
    df, _ = _manifest(tmp_path, root, {})
    assert df["pixel_scale"].tolist() == ["unit"]
    assert np.abs(_cache(tmp_path, df, {})[0, :, :, 0].astype(int) - grey[0]).max() <= 1


def test_transparency_refused_or_flattened_on_the_declared_background(tmp_path, grey):
    rgba = np.dstack([grey[0], grey[1], grey[2], np.full_like(grey[0], 255)])
    rgba[:, :16, 3] = 0  # left half transparent
    opaque = rgba.copy()
    opaque[..., 3] = 255
    root = _folder(tmp_path, {"a/t.png": Image.fromarray(rgba, "RGBA"), "a/o.png": Image.fromarray(opaque, "RGBA")})
    with pytest.raises(DefectbenchError) as exc:
        _manifest(tmp_path, root, {})
    assert str(root / "a/t.png") in str(exc.value) and "alpha_background" in str(exc.value)
    assert "o.png" not in str(exc.value)  # a fully opaque alpha channel is no reason to refuse
    df, _ = _manifest(tmp_path, root, {"alpha_background": [255, 0, 0]})
    cache = _cache(tmp_path, df, {"alpha_background": [255, 0, 0]})
    flat = cache[list(df["path"].str.endswith("t.png")).index(True)]
    assert (flat[:, :16] == [255, 0, 0]).all()
    assert np.array_equal(flat[:, 16:], rgba[:, 16:, :3])
    assert np.array_equal(cache[list(df["path"].str.endswith("o.png")).index(True)], opaque[..., :3])


def test_resize_policies_keep_image_and_mask_aligned(tmp_path):
    tile = next(iter(real_grey("magnetic-tile", 1).values()))  # real, non-square
    h, w = tile.shape
    assert h != w
    wide = tile if w > h else tile.T.copy()
    h, w = wide.shape
    img = tmp_path / "wide.png"
    Image.fromarray(wide).save(img)
    mask = tmp_path / "wide_mask.png"
    Image.fromarray(np.full((h, w), 255, np.uint8)).save(mask)  # all defect: shows the geometry
    s = 16
    # pad: long side to 16, centred on black; the mask is defect exactly where the image is
    nh = round(h * s / w)
    top = (s - nh) // 2
    padded = decode_image(img, s, resize="pad")[..., 0]
    ref = np.asarray(Image.fromarray(wide).resize((s, nh), Image.BILINEAR))
    assert np.array_equal(padded[top:top + nh], ref)
    assert (padded[:top] == 0).all() and (padded[top + nh:] == 0).all()
    m = decode_mask(mask, s, resize="pad")
    assert m[top:top + nh].all() and m.sum() == s * nh
    # center_crop: short side to 16, centre columns kept; mask all defect
    nw = round(w * s / h)
    left = (nw - s) // 2
    ref = np.asarray(Image.fromarray(wide).resize((nw, s), Image.BILINEAR))[:, left:left + s]
    assert np.array_equal(decode_image(img, s, resize="center_crop")[..., 0], ref)
    assert decode_mask(mask, s, resize="center_crop").all()
    # squash then centre crop (resize_to): PatchCore's resize 256 -> crop 224, here 20 -> 16
    ref = np.asarray(Image.fromarray(wide).resize((20, 20), Image.BILINEAR))[2:18, 2:18]
    assert np.array_equal(decode_image(img, s, resize="squash", resize_to=20)[..., 0], ref)
    assert fit_square(Image.fromarray(wide), 20, "squash", 20).size == (20, 20)  # a cache at resize_to: uncropped


def test_cache_rejects_resize_to_below_its_size(tmp_path, grey):
    root = _folder(tmp_path, {"a/0.png": Image.fromarray(grey[0])})
    df, _ = _manifest(tmp_path, root, {})
    with pytest.raises(DefectbenchError, match="config key resize_to: 24 is smaller than the 32 px cache"):
        _cache(tmp_path, df, {"resize_to": 24})
    assert not (tmp_path / "c.npy").exists()
