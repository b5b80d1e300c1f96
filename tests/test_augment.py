"""On-device batched augmentation: exact geometry, determinism, presets."""

from __future__ import annotations

import pytest
import torch

from defectbench.models.backbones import imagenet_normalize
from defectbench.runtime import DefectbenchError
from defectbench.ssl.augment import (
    AugmentParams, augment_batch, is_grey, preset_params, random_resized_crop_flip, resolve_params, weaker,
)

IDENTITY = AugmentParams(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, vflip=0.0, rot90=False,
                         brightness=0, contrast=0, saturation=0, hue=0, jitter_p=0, grayscale_p=0, blur_p=0)


def images(b=4, s=16, seed=0):
    return torch.randint(0, 256, (b, s, s, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_identity_recipe_returns_the_normalised_image():
    x = images()
    out = augment_batch(x, IDENTITY, gen())
    torch.testing.assert_close(out, imagenet_normalize(x), atol=1e-5, rtol=0)


def test_flips_are_exact_pixel_flips():
    x = images()
    h = augment_batch(x, AugmentParams(**{**IDENTITY.__dict__, "hflip": 1.0}), gen(), normalize=False)
    v = augment_batch(x, AugmentParams(**{**IDENTITY.__dict__, "vflip": 1.0}), gen(), normalize=False)
    base = x.permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(h, base.flip(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(v, base.flip(2), atol=1e-5, rtol=0)


def test_rot90_gives_one_of_four_exact_rotations():
    x = images(8)
    out = augment_batch(x, AugmentParams(**{**IDENTITY.__dict__, "rot90": True}), gen(), normalize=False)
    base = x.permute(0, 3, 1, 2).float() / 255
    seen = set()
    for i in range(8):
        ks = [k for k in range(4) if torch.allclose(out[i], torch.rot90(base[i], k, dims=(1, 2)), atol=1e-5)]
        assert len(ks) == 1
        seen.add(ks[0])
    assert len(seen) > 1


def test_same_generator_state_same_views_and_different_seed_differs():
    x = images()
    p = preset_params("color")
    a = augment_batch(x, p, gen(1))
    b = augment_batch(x, p, gen(1))
    c = augment_batch(x, p, gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 3, 16, 16) and torch.isfinite(a).all()


def test_grey_preset_keeps_grey_images_grey_and_auto_detects_them():
    g = images()[..., :1].expand(-1, -1, -1, 3).contiguous()
    assert is_grey(g) and not is_grey(images())
    preset, p = resolve_params({"preset": "auto"}, g)
    assert preset == "grey" and p.rot90 and p.saturation == 0
    out = augment_batch(g, p, gen(), normalize=False)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)
    assert resolve_params({"preset": "auto", "hflip": None, "blur_p": 0.0}, images())[1].blur_p == 0.0


def test_crop_zooms_in_and_blur_smooths():
    x = images(2, 32)
    base = x.permute(0, 3, 1, 2).float() / 255
    blurred = augment_batch(x, AugmentParams(**{**IDENTITY.__dict__, "blur_p": 1.0, "blur_sigma": (1.5, 1.5)}), gen(), normalize=False)
    tv = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert tv(blurred) < 0.6 * tv(base)
    torch.testing.assert_close(blurred.mean(), base.mean(), atol=0.02, rtol=0)
    assert weaker(preset_params("color")).crop_scale[0] == 0.5


def test_under_bf16_autocast_output_stays_float32():
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = augment_batch(x, preset_params("color", {"blur_p": 1.0}), gen())
    assert out.dtype == torch.float32


def test_unknown_keys_and_presets_are_errors():
    with pytest.raises(DefectbenchError, match="augment.blurr"):
        preset_params("color", {"blurr": 1})
    with pytest.raises(DefectbenchError, match="preset"):
        preset_params("sepia")
    with pytest.raises(ValueError):
        augment_batch(torch.zeros(2, 3, 8, 8), IDENTITY, gen())


def test_crop_flip_identity_at_full_scale_and_determinism():
    x = torch.rand(6, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    y = random_resized_crop_flip(x, gen, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for a, b in zip(x, y):  # full-size crop: the image itself or its mirror image
        assert torch.allclose(b, a, atol=1e-5) or torch.allclose(b, a.flip(-1), atol=1e-5)
    flips = [not torch.allclose(b, a, atol=1e-5) for a, b in zip(x, y)]
    assert 0 < sum(flips) < 6  # both outcomes occur for this seed
    z1 = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    z2 = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(z1, z2) and z1.shape == x.shape
    # a half-area crop of a left-to-right ramp spans a narrower value range than the image
    ramp = torch.linspace(0, 1, 16).expand(1, 3, 16, 16).contiguous()
    crop = random_resized_crop_flip(ramp, torch.Generator().manual_seed(2), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert float(crop.max() - crop.min()) < 0.6
