"""Batched image augmentation on the training device, driven by one ``torch.Generator``.

Images stay uint8 (B, S, S, 3) in memory (decoded once, the cache); every batch is augmented in a
handful of tensor ops instead of per-image PIL calls in DataLoader workers:

* random resized crop + horizontal/vertical flip + 90° rotation: ONE affine sampling grid per
  image, applied with a single ``grid_sample`` call for the whole batch;
* colour jitter (brightness, contrast, saturation, hue as a YIQ rotation), per image, with
  probability ``jitter_p``; fixed order (torchvision shuffles the order, we do not);
* random grayscale; Gaussian blur with a per-image σ as one grouped separable convolution;
* ImageNet normalisation.

All randomness comes from the generator passed in, so a batch's views are a pure function of
(images, generator state): this is what makes resumed training bit-identical.

Presets follow specs A.4: ``color`` is the SimCLR/ADNCE recipe (crop, hflip, jitter .4/.4/.4/.1
p .8, grayscale p .2, blur p .5 with kernel 0.1·S and σ in [.1, 2]); ``grey`` is its variant for
grey steel images (brightness/contrast only, plus vflip and 90° rotations, since defect classes are
rotation-invariant) **[ASSUMPTION of the spec]**; ``auto`` picks ``grey`` when the training images
have three equal channels. ``light`` is the supervised baseline's recipe (crop 80-100%, h/v flips,
90° rotations; no colour change, no blur).

>>> import torch
>>> imgs = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
>>> out = augment_batch(imgs, preset_params("color"), torch.Generator().manual_seed(0))
>>> out.shape, out.dtype
(torch.Size([4, 3, 32, 32]), torch.float32)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from defectbench.models.backbones import imagenet_normalize
from defectbench.runtime import DefectbenchError


@dataclass(frozen=True)
class AugmentParams:
    """One augmentation recipe (probabilities in [0, 1], strengths as in torchvision)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    rot90: bool = False
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


PRESETS: dict[str, AugmentParams] = {
    "color": AugmentParams(),
    "grey": AugmentParams(vflip=0.5, rot90=True, saturation=0.0, hue=0.0, grayscale_p=0.0),
    # The supervised papers' geometry-only recipe (C.1 flips/rotations); colour jitter and blur
    # cost the 32 px supervised baseline ~8 points of NEU accuracy (issue 16).
    "light": AugmentParams(crop_scale=(0.8, 1.0), vflip=0.5, rot90=True, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0),
}


def preset_params(preset: str, overrides: dict[str, Any] | None = None) -> AugmentParams:
    """A preset with config overrides (keys of :class:`AugmentParams`; ``None`` values are ignored)."""
    if preset not in PRESETS:
        raise DefectbenchError(f"augment.preset: unknown {preset!r}; use auto, {', '.join(PRESETS)}")
    names = {f.name for f in fields(AugmentParams)}
    clean = {k: v for k, v in (overrides or {}).items() if v is not None and k != "preset"}
    unknown = sorted(set(clean) - names)
    if unknown:
        raise DefectbenchError(f"augment.{unknown[0]}: unknown key; known keys: {', '.join(sorted(names))}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in clean.items()}
    return replace(PRESETS[preset], **clean)


def weaker(params: AugmentParams) -> AugmentParams:
    """The weaker recipe AdaInf uses for generated samples: milder crops and jitter, no blur/grayscale."""
    return replace(params, crop_scale=(max(params.crop_scale[0], 0.5), params.crop_scale[1]),
                   brightness=params.brightness / 2, contrast=params.contrast / 2,
                   saturation=params.saturation / 2, hue=params.hue / 2, grayscale_p=0.0, blur_p=0.0)


def is_grey(images: torch.Tensor, sample: int = 64) -> bool:
    """True when (a sample of) the uint8 (N,H,W,3) images have identical channels."""
    x = images[: min(sample, len(images))]
    return bool((x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all())


def resolve_params(cfg: dict[str, Any] | None, images: torch.Tensor) -> tuple[str, AugmentParams]:
    """Config ``augment`` section -> (preset actually used, params); ``auto`` looks at the images."""
    cfg = dict(cfg or {})
    preset = cfg.get("preset", "auto")
    if preset == "auto":
        preset = "grey" if is_grey(images) else "color"
    return preset, preset_params(preset, cfg)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _bernoulli(gen: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def _geometry(b: int, p: AugmentParams, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B, 2, 3) affine matrices: output grid -> input coordinates (crop ∘ rotation ∘ flips)."""
    scale = _uniform(gen, b, *p.crop_scale, device)
    log_ratio = _uniform(gen, b, math.log(p.crop_ratio[0]), math.log(p.crop_ratio[1]), device)
    ux = torch.rand(b, generator=gen, device=device)
    uy = torch.rand(b, generator=gen, device=device)
    fx = 1 - 2 * _bernoulli(gen, b, p.hflip, device).float()
    fy = 1 - 2 * _bernoulli(gen, b, p.vflip, device).float()
    if p.rot90:
        k = torch.randint(0, 4, (b,), generator=gen, device=device).float() * (math.pi / 2)
        cos, sin = k.cos().round(), k.sin().round()
    else:
        cos, sin = torch.ones(b, device=device), torch.zeros(b, device=device)
    return _crop_theta(scale, log_ratio, ux, uy, fx, fy, cos, sin)


def _crop_theta(area: torch.Tensor, log_ratio: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor,
                fx: torch.Tensor, fy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine matrices of random-resized crops: crop area fraction ``area``, aspect
    ratio ``exp(log_ratio)``, crop centre placed by ``ux``, ``uy`` in [0, 1) so that the crop lies
    inside the image, then rotation (``cos``, ``sin``) and flips (``fx``, ``fy`` = ±1)."""
    ratio = log_ratio.exp()
    # crop width/height as fractions of the image (torchvision clips instead of retrying; so do we)
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * ux - 1)
    cy = (1 - h) * (2 * uy - 1)
    # in = diag(w, h) · R · diag(fx, fy) · out + c
    theta = torch.zeros(len(area), 2, 3, device=area.device, dtype=area.dtype)
    theta[:, 0, 0] = w * cos * fx
    theta[:, 0, 1] = -w * sin * fy
    theta[:, 1, 0] = h * sin * fx
    theta[:, 1, 1] = h * cos * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def random_resized_crop_flip(images: torch.Tensor, generator: torch.Generator,
                             scale: tuple[float, float] = (0.2, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """The linear probe's augmentation (A.4): per-image random-resized crop (area fraction in
    ``scale``, aspect ratio in ``ratio``) back to the input size and horizontal flip with
    probability 1/2, of a float (B,3,S,S) batch in [0, 1] (no normalisation).

    The crop geometry is :func:`augment_batch`'s; the draws are not: one (B, 5) uniform tensor per
    batch (area, log-ratio, centre x, centre y, flip) and border padding, the recipe the recorded
    probe results were computed with. The generator must live on the images' device.
    """
    b, _, h, w = images.shape
    dev = images.device
    u = torch.rand(b, 5, generator=generator, device=dev)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    ones = torch.ones(b, device=dev)
    theta = _crop_theta(area, log_ratio, u[:, 2], u[:, 3], flip, ones, ones, torch.zeros(b, device=dev))
    grid = F.affine_grid(theta.to(images.dtype), [b, 3, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _jitter(x: torch.Tensor, p: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    b, device = x.shape[0], x.device
    apply = _bernoulli(gen, b, p.jitter_p, device).view(b, 1, 1, 1)
    one = torch.ones(b, device=device)

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(gen, b, max(0.0, 1 - strength), 1 + strength, device) if strength > 0 else one
        return torch.where(apply.view(b), f, one).view(b, 1, 1, 1)

    bri, con, sat = factor(p.brightness), factor(p.contrast), factor(p.saturation)
    x = (x * bri).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * con + mean).clamp(0, 1)
    if p.saturation > 0:
        g = _gray(x)
        x = ((x - g) * sat + g).clamp(0, 1)
    if p.hue > 0:
        angle = _uniform(gen, b, -p.hue, p.hue, device) * (2 * math.pi) * apply.view(b).float()
        x = _rotate_hue(x, angle)
    return x


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Hue shift as a rotation of the chroma plane in YIQ space (one 3x3 matrix per image)."""
    to_yiq = _RGB2YIQ.to(x.device, x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(len(angle), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)


def _blur(x: torch.Tensor, p: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    b, c, hgt, wid = x.shape
    apply = _bernoulli(gen, b, p.blur_p, x.device)
    sigma = _uniform(gen, b, *p.blur_sigma, x.device)
    idx = apply.nonzero().view(-1)
    if idx.numel() == 0:
        return x
    k = max(3, int(p.blur_kernel_frac * wid) // 2 * 2 + 1)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r[None, :] ** 2) / (2 * sigma[idx, None] ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
    sel = x[idx].reshape(1, -1, hgt, wid)
    sel = F.pad(sel, (k // 2, k // 2, k // 2, k // 2), mode="reflect" if k // 2 < min(hgt, wid) else "replicate")
    sel = F.conv2d(sel, kern.view(-1, 1, 1, k), groups=sel.shape[1])
    sel = F.conv2d(sel, kern.view(-1, 1, k, 1), groups=sel.shape[1])
    out = x.clone()
    out[idx] = sel.view(-1, c, hgt, wid)
    return out


def augment_batch(images: torch.Tensor, params: AugmentParams, gen: torch.Generator,
                  out_size: int | None = None, normalize: bool = True) -> torch.Tensor:
    """uint8 (B,H,W,3) on the device -> augmented float (B,3,out,out), ImageNet-normalised.

    ``gen`` must live on ``images.device``; every random draw uses it.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (B,H,W,3), got {images.dtype} {tuple(images.shape)}")
    # Augmentation is data preparation: always float32, even when the step runs under autocast.
    with torch.autocast(device_type=images.device.type, enabled=False):
        return _augment(images, params, gen, out_size or images.shape[1], normalize)


def _augment(images: torch.Tensor, params: AugmentParams, gen: torch.Generator, size: int,
             normalize: bool) -> torch.Tensor:
    b = images.shape[0]
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    theta = _geometry(b, params, gen, x.device)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = _jitter(x, params, gen)
    if params.grayscale_p > 0:
        to_gray = _bernoulli(gen, b, params.grayscale_p, x.device).view(b, 1, 1, 1)
        x = torch.where(to_gray, _gray(x).expand_as(x), x)
    if params.blur_p > 0:
        x = _blur(x, params, gen)
    return imagenet_normalize(x) if normalize else x


def eval_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) -> ImageNet-normalised float (B,3,H,W), no augmentation."""
    return imagenet_normalize(images)
