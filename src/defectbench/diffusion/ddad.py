"""DDAD: anomaly detection with conditioned denoising diffusion (spec D.3-D.5).

1. **Conditioned denoising** (D.3, :func:`conditioned_reconstruction`): noise the image to
   level ``steps`` (250), then run ``steps/skip`` (10) generalised DDIM steps t = 225, 200, ..., 0
   (next down to -1, ᾱ(-1) = 1) in which the noise estimate is pulled towards the target image
   y0 (the input itself at test time) with weight w: ε̂ = ε_θ(x_t,t) - w·sqrt(1-ᾱ_t)·(y_t - x_t),
   y_t = sqrt(ᾱ_t)·y0 + sqrt(1-ᾱ_t)·ε_θ(x_t,t); η = 1. Faithful detail kept on purpose: the
   first model call uses t = 225 on a sample noised to 250.
2. **Domain adaptation** (D.4, :func:`adapt_feature_extractor`): a trainable copy FE of the
   feature backbone (layer1..3) learns to map reconstructions of one nominal image
   (conditioned on another) close to that other image, with two terms keeping FE near the
   frozen copy FE₀ (:func:`domain_adaptation_loss`). ``da_epochs = 0`` means FE = FE₀.
   FE's BatchNorm layers stay in eval mode while it adapts (``da_bn: eval``, default): letting
   them re-estimate their statistics from half-batches of near-identical nominal images, as
   DDAD's code does (``da_bn: train``), wrecks the feature distance (docs/ddad.md).
3. **Anomaly map** (D.5, :func:`anomaly_maps`): D_p = channel mean |x̂ - x|; D_f = Σ over
   layer2, layer3 of 1 - cos(patch-mean features of x, of x̂), upsampled bilinearly;
   A = D_f + v·(max D_f / max D_p)·D_p with the max over the whole batch (``max_norm: batch``,
   DDAD's and the default: it works on the positive control) or per image (``image``: scores
   independent of batch mates, but each image's D_p is rescaled to its own max D_f, which hides
   how large its reconstruction error is; docs/ddad.md); Gaussian blur σ (4), kernel
   2⌊4σ+0.5⌋+1, reflect border (replicate when the image is smaller than the kernel radius).
   Image score = max of the map. DDAD then center-crops maps and masks to 224; that is a 256-px
   convention, so it is applied only when the image size is >= 256 (smaller images keep the
   whole map).

The stage (:func:`run_ddad`) scores the held-out nominal images and the test images with the
model trained on the anomaly split's nominal train subset; the threshold comes from the
held-out scores only (:func:`defectbench.metrics.anomaly.evaluate_anomaly`). Each row carries
the diffusion model's convergence verdict (``diffusion_converged``) so that a score from an
untrained model is not read as a DDAD result. Reading the split, thresholding, the metrics and
the outputs follow the anomaly protocol (:mod:`defectbench.anomaly.protocol`).

>>> ddad_timesteps(250, 25)[:2], ddad_timesteps(250, 25)[-1]
([(225, 200), (200, 175)], (0, -1))
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from defectbench.anomaly import protocol
from defectbench.diffusion.ddpm import (
    alpha_bar,
    eps_fn,
    load_diffusion,
    noise_images,
    scheduler_table,
    to_model_range,
)
from defectbench.models.backbones import FeatureExtractor, imagenet_normalize
from defectbench.optim import Adam
from defectbench.runtime import DefectbenchError, autocast_context, stage_job, write_parquet

log = logging.getLogger("defectbench")

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DA_LAYERS = ("layer1", "layer2", "layer3")
MAP_LAYERS = ("layer2", "layer3")
CROP_FROM, CROP_TO = 256, 224


# ----------------------------------------------------------------------------- D.3
def ddad_timesteps(steps: int, skip: int) -> list[tuple[int, int]]:
    """(t, next_t) pairs of the conditioned denoising: seq = range(0, steps, skip) reversed,
    next = the previous element of seq, -1 after 0."""
    seq = list(range(0, steps, skip))
    nxt = [-1] + seq[:-1]
    return list(zip(reversed(seq), reversed(nxt)))


@torch.no_grad()
def conditioned_reconstruction(eps_model: EpsModel, x: torch.Tensor, y0: torch.Tensor, *, table: torch.Tensor,
                               steps: int = 250, skip: int = 25, w: float = 4.0, eta: float = 1.0,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """DDAD reconstruction of ``x`` (B,3,H,W in [-1,1]) guided towards ``y0`` (same shape).

    ``table`` is :func:`defectbench.diffusion.ddpm.alpha_bar_table` (ᾱ with the prepended β=0)
    on x's device. Random numbers (the initial noise, then one z per step, drawn even where its
    coefficient is 0, as the reference does) come from ``generator``. Returns the last x̂0.
    """
    if not 0 < steps < len(table):
        raise DefectbenchError(f"ddad.steps: must be in 1..{len(table) - 1}, got {steps}")
    b = len(x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_t = noise_images(x, noise, alpha_bar(table, torch.full((b,), steps, device=x.device)).to(x.dtype))
    y0 = y0.to(x.dtype)
    for t_val, next_val in ddad_timesteps(steps, skip):
        t = torch.full((b,), t_val, dtype=torch.long, device=x.device)
        at = alpha_bar(table, t).to(x.dtype).view(-1, 1, 1, 1)
        an = alpha_bar(table, torch.full_like(t, next_val)).to(x.dtype).view(-1, 1, 1, 1)
        eps = eps_model(x_t, t).to(x.dtype)
        y_t = at.sqrt() * y0 + (1 - at).sqrt() * eps
        eps_hat = eps - (1 - at).sqrt() * w * (y_t - x_t)
        x0_hat = (x_t - eps_hat * (1 - at).sqrt()) / at.sqrt()
        c1 = eta * ((1 - at / an) * (1 - an) / (1 - at)).clamp_min(0).sqrt()
        c2 = ((1 - an) - c1**2).clamp_min(0).sqrt()
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = an.sqrt() * x0_hat + c1 * z + c2 * eps_hat
    return x_t


# ----------------------------------------------------------------------------- D.4
def fe_input(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] images -> ImageNet-normalised backbone input ((x+1)/2, then normalise)."""
    return imagenet_normalize((x.float() + 1.0) / 2.0)


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch mean of 1 - cos between per-sample flattened tensors."""
    return (1.0 - F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1)).mean()


def domain_adaptation_loss(rec: list[torch.Tensor], target: list[torch.Tensor], target_frozen: list[torch.Tensor],
                           rec_frozen: list[torch.Tensor], lam: float) -> torch.Tensor:
    """D.4 loss, summed over layers l:
    [1-cos(FE(x̂), FE(y))] + λ[1-cos(FE(y), FE₀(y))] + λ[1-cos(FE(x̂), FE₀(x̂))],
    each cosine over a sample's flattened layer tensor and averaged over the batch."""
    total = rec[0].new_zeros((), dtype=torch.float32)
    for r, t, tf, rf in zip(rec, target, target_frozen, rec_frozen):
        total = total + _one_minus_cos(r, t) + lam * _one_minus_cos(t, tf) + lam * _one_minus_cos(r, rf)
    return total


def build_feature_extractors(name: str, pretrained: str = "none",
                             da_bn: Literal["eval", "train"] = "eval") -> tuple[FeatureExtractor, FeatureExtractor]:
    """(trainable FE, frozen FE₀): two copies of the same weights, layers layer1..3.

    ``da_bn``: ``eval`` keeps FE's BatchNorm layers in eval mode while it adapts (their running
    statistics stay FE₀'s); ``train`` lets them re-estimate the statistics from the adaptation
    batches, as DDAD's code does. With few, near-identical nominal images those statistics
    wreck the feature distance (docs/ddad.md)."""
    if da_bn not in ("eval", "train"):
        raise DefectbenchError(f"ddad.da_bn: unknown {da_bn!r}; use eval or train")
    fe = FeatureExtractor(name, DA_LAYERS, pretrained=pretrained, trainable=True, freeze_norm_stats=da_bn == "eval")
    fe0 = FeatureExtractor(name, DA_LAYERS, trainable=False, model=copy.deepcopy(fe.model))
    return fe, fe0


def adapt_feature_extractor(unet: nn.Module, table: torch.Tensor, images: np.ndarray, cfg: dict[str, Any], *,
                            seed: int, device: torch.device, amp: str = "none",
                            checkpoint_path: str | os.PathLike) -> tuple[FeatureExtractor, pd.DataFrame]:
    """D.4: the feature extractor used for anomaly maps, domain-adapted on nominal train images.

    ``cfg`` is the ``ddad`` section (feature_backbone, pretrained, da_bn, da_epochs, da_lambda,
    w_da, steps, skip, eta, batch_size). Each batch of ``batch_size`` shuffled images is split in
    halves: the first are targets y, the second are reconstructed conditioned on them (w_da).
    Training runs in :func:`defectbench.train.train_loop` (AdamW lr 1e-4, checkpoint + resume).
    Returns (FE in eval mode, history; empty when ``da_epochs`` is 0).
    """
    from defectbench.train import train_loop

    fe, fe0 = build_feature_extractors(cfg["feature_backbone"], cfg["pretrained"], cfg["da_bn"])
    fe, fe0 = fe.to(device), fe0.to(device)
    epochs = int(cfg["da_epochs"])
    if epochs == 0:
        return fe.eval(), pd.DataFrame()
    n = len(images)
    if n < 2:
        raise DefectbenchError("ddad.da_epochs: domain adaptation needs at least 2 nominal train images; set it to 0")
    batch_size = max(2, min(int(cfg["batch_size"]), n))
    data = torch.from_numpy(np.ascontiguousarray(images))
    eps_model = eps_fn(unet)
    lam = float(cfg["da_lambda"])
    rec_kw = dict(table=table, steps=int(cfg["steps"]), skip=int(cfg["skip"]),
                  w=float(cfg["w_da"]), eta=float(cfg["eta"]))

    def batches(epoch: int, gen: torch.Generator):
        order = torch.randperm(n, generator=gen, device=gen.device).cpu()
        for start in range(0, n - batch_size + 1, batch_size):  # drop_last
            yield to_model_range(data[order[start:start + batch_size]]).to(device)

    def step(batch: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        half = len(batch) // 2
        target, source = batch[:half], batch[half:2 * half]
        x_rec = conditioned_reconstruction(eps_model, source, target, generator=gen, **rec_kw)
        rec_in, target_in = fe_input(x_rec), fe_input(target)
        rec_f, target_f = fe(rec_in), fe(target_in)
        with torch.no_grad():
            target_f0, rec_f0 = fe0(target_in), fe0(rec_in)
        loss = domain_adaptation_loss([rec_f[k] for k in DA_LAYERS], [target_f[k] for k in DA_LAYERS],
                                      [target_f0[k] for k in DA_LAYERS], [rec_f0[k] for k in DA_LAYERS], lam)
        return loss, {"rec_l1": float((x_rec.float() - target.float()).abs().mean())}

    optimizer = Adam([p for p in fe.parameters() if p.requires_grad], lr=float(cfg["da_lr"]), weight_decay=0.01,
                     decoupled_weight_decay=True)  # torch.optim.AdamW's default decay
    history = train_loop(fe, optimizer, step, batches, epochs=epochs, seed=seed, device=device, amp=amp,
                         checkpoint_path=Path(checkpoint_path), checkpoint_every=1,
                         log_prefix="ddad domain adaptation: ")
    return fe.eval(), history


# ----------------------------------------------------------------------------- D.5
def pixel_distance(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """D_p: mean over channels of |x̂ - x| in [-1,1] space, (B,1,H,W)."""
    return (x_rec.float() - x.float()).abs().mean(dim=1, keepdim=True)


def patch_mean(features: torch.Tensor, patchsize: int = 3) -> torch.Tensor:
    """DDAD's "patchify": mean over each patchsize² neighbourhood with zero padding (stride 1);
    border positions divide by patchsize² too (the unfold-then-mean of the reference)."""
    return F.avg_pool2d(features, patchsize, stride=1, padding=(patchsize - 1) // 2, count_include_pad=True)


def feature_distance(fe: nn.Module, x_rec: torch.Tensor, x: torch.Tensor, out_size: int,
                     layers: tuple[str, ...] = MAP_LAYERS) -> torch.Tensor:
    """D_f: Σ over ``layers`` of 1 - cos over channels between patch-mean features of x and x̂,
    each upsampled bilinearly (align_corners=True) to ``out_size``; (B,1,H,W)."""
    fx, fr = fe(fe_input(x)), fe(fe_input(x_rec))
    total = None
    for layer in layers:
        d = 1.0 - F.cosine_similarity(patch_mean(fx[layer].float()), patch_mean(fr[layer].float()), dim=1)
        d = F.interpolate(d.unsqueeze(1), size=(out_size, out_size), mode="bilinear", align_corners=True)
        total = d if total is None else total + d
    return total


def combine_distances(d_f: torch.Tensor, d_p: torch.Tensor, v: float,
                      max_norm: Literal["batch", "image"] = "batch") -> torch.Tensor:
    """A = D_f + v·(max D_f / max D_p)·D_p; the maxima over the whole batch (``batch``, the
    reference) or over each image (``image``, so a score never depends on its batch mates)."""
    if max_norm == "batch":
        ratio = d_f.max() / d_p.max().clamp_min(1e-12)
    elif max_norm == "image":
        ratio = d_f.amax(dim=(1, 2, 3), keepdim=True) / d_p.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    else:
        raise DefectbenchError(f"ddad.max_norm: unknown {max_norm!r}; use batch or image")
    return d_f + v * ratio * d_p


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised Gaussian of size 2⌊4σ+0.5⌋+1 (kornia's kernel for DDAD's blur)."""
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,1,H,W) maps, reflect border (replicate if the image is too
    small to reflect the kernel radius)."""
    if sigma <= 0:
        return maps
    g = gaussian_kernel1d(sigma).to(maps.device)
    r = len(g) // 2
    h, w = maps.shape[-2:]
    mode = "reflect" if r < min(h, w) else "replicate"
    x = F.pad(maps.float(), (r, r, r, r), mode=mode)
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def center_crop(arr: np.ndarray | torch.Tensor, size: int = CROP_TO):
    """Central ``size`` x ``size`` of the last two axes (torchvision's rounding)."""
    h, w = arr.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return arr[..., top:top + size, left:left + size]


def maybe_crop(arr: np.ndarray | torch.Tensor):
    """DDAD's CenterCrop(224), only for images of at least 256 px (module docstring)."""
    return center_crop(arr) if arr.shape[-1] >= CROP_FROM else arr


@torch.no_grad()
def anomaly_maps(unet: nn.Module, table: torch.Tensor, fe: nn.Module, images: np.ndarray, cfg: dict[str, Any], *,
                 generator: torch.Generator, device: torch.device, amp: str = "none") -> np.ndarray:
    """Blurred DDAD anomaly maps (N,S,S) float32 of uint8 images (N,S,S,3), batches of
    ``cfg['batch_size']`` in the given order (which matters for ``max_norm: batch``)."""
    fe.eval()
    eps_model = eps_fn(unet)
    batch_size = int(cfg["batch_size"])
    size = int(images.shape[1]) if len(images) else 0
    out = np.empty((len(images), size, size), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start:start + batch_size]).to(device)
        with autocast_context(device, amp):
            x_rec = conditioned_reconstruction(eps_model, x, x, table=table, steps=int(cfg["steps"]),
                                               skip=int(cfg["skip"]), w=float(cfg["w"]),
                                               eta=float(cfg["eta"]), generator=generator).float()
            d_f = feature_distance(fe, x_rec, x, size)
        d_p = pixel_distance(x_rec, x)
        a = combine_distances(d_f.float(), d_p, float(cfg["v"]), cfg["max_norm"])
        out[start:start + len(x)] = gaussian_blur(a, float(cfg["sigma"]))[:, 0].cpu().numpy()
        log.info("ddad: scored %d/%d images", min(start + batch_size, len(images)), len(images))
    return out


def image_scores(maps: np.ndarray) -> np.ndarray:
    """Image score = max of the (cropped) map."""
    return maybe_crop(maps).reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0, np.float32)


# ----------------------------------------------------------------------------- stage
def diffusion_report(path: str | os.PathLike) -> tuple[bool, dict[str, float]]:
    """(converged, metrics to copy) from the diffusion model's pretraining metrics.json."""
    from defectbench.tables import read_metrics_record

    record = read_metrics_record(path)
    converged = (record.get("extra") or {}).get("converged")
    if not isinstance(converged, bool):
        raise DefectbenchError(f"{path}: no convergence report (extra.converged); rerun pretrain_diffusion")
    copied = {f"diffusion_{k}": v for k, v in record["metrics"].items()
              if k in ("final_loss", "rec_error_in_mask", "rec_error_out_mask", "rec_error_ratio")}
    return converged, copied


def run_ddad(model_dir: str | os.PathLike, cache_path: str | os.PathLike, masks_path: str | os.PathLike,
             anomaly_split_path: str | os.PathLike, metrics_path: str | os.PathLike, scores_path: str | os.PathLike,
             maps_path: str | os.PathLike, history_path: str | os.PathLike, cfg: dict[str, Any], *,
             dataset: str, seed: int, features: str, diffusion_metrics_path: str | os.PathLike) -> dict[str, Any]:
    """Pipeline stage ``ddad``: adapt the feature extractor on the nominal train images, score the
    holdout (nominal) and test images, evaluate and write them by the anomaly protocol
    (:mod:`defectbench.anomaly.protocol`: scores.parquet, maps.npy; pixel metrics on the
    center-cropped maps), write the domain-adaptation history and metrics.json.

    ``cfg`` is the rule's config slice: ``ddad`` and ``metrics`` sections, ``threshold_quantile``,
    ``device``, ``protocol``. ``diffusion_metrics_path`` is the model's pretraining metrics.json:
    its convergence verdict becomes the row's ``diffusion_converged`` (a column of the anomaly
    table, so a row from an untrained model is not read as a DDAD result) and its final loss and
    reconstruction errors are copied as ``diffusion_*`` metrics. ``features`` (the job's
    ``{backbone}`` wildcard) labels the row: ``ddad.feature_backbone``, or ``random`` for the
    random-init control (``ddad.controls``; its params carry ``pretrained: none``); the
    ``backbone`` key names the network either way.
    """
    from defectbench.train import checkpointed

    dcfg, mcfg = cfg["ddad"], cfg["metrics"]
    if features not in (dcfg["feature_backbone"], "random"):
        raise DefectbenchError(f"ddad: features {features!r} (from the target's path) are neither "
                               f"ddad.feature_backbone {dcfg['feature_backbone']!r} nor 'random'; check the target path")
    diffusion_converged, diffusion_metrics = diffusion_report(diffusion_metrics_path)
    keys = {"dataset": dataset, "seed": seed, "scorer": "ddad", "features": features,
            "backbone": dcfg["feature_backbone"], "diffusion_converged": diffusion_converged}
    with stage_job(stage="anomaly", cfg=cfg, keys=keys, seed=seed, amp=dcfg["amp"]) as job:
        device, amp = job.device, job.amp
        unet, scheduler = load_diffusion(model_dir, device)
        table = scheduler_table(scheduler).to(device)
        parts = protocol.read_anomaly_split(anomaly_split_path, cache_path, masks_path)
        train, holdout, test = (parts[name] for name in protocol.SUBSETS)
        size = int(test.images.shape[1])
        if size != unet.sample_size:
            raise DefectbenchError(f"{model_dir}: model trained at {unet.sample_size} px but {cache_path} is "
                                   f"{size} px; rerun pretrain_diffusion")
        inputs = {"model": model_dir, "cache": cache_path, "split": anomaly_split_path}
        with checkpointed(Path(metrics_path).parent, cfg, inputs, prefix="da-checkpoint") as ckpt:
            fe, history = adapt_feature_extractor(unet, table, train.images, dcfg, seed=seed, device=device, amp=amp,
                                                  checkpoint_path=ckpt)
            gen = torch.Generator(device=device).manual_seed(int(seed))
            holdout_maps = anomaly_maps(unet, table, fe, holdout.images, dcfg, generator=gen, device=device, amp=amp)
            test_maps = anomaly_maps(unet, table, fe, test.images, dcfg, generator=gen, device=device, amp=amp)
            holdout_scores, test_scores = image_scores(holdout_maps), image_scores(test_maps)
            metrics = protocol.evaluate(test.rows, test_scores, holdout_scores, quantile=cfg["threshold_quantile"],
                                        maps=maybe_crop(test_maps), masks=maybe_crop(test.masks),
                                        pro_mode=mcfg["pro_mode"], fpr_limit=mcfg["pro_fpr_limit"])
            protocol.write_scores(scores_path, holdout=holdout.rows, holdout_scores=holdout_scores,
                                  test=test.rows, test_scores=test_scores, test_maps=test_maps, maps_path=maps_path)
            write_parquet(history_path, history)
            record = job.write_metrics(metrics_path, metrics={**metrics, **diffusion_metrics}, extra={
                "amp": amp, "max_norm": dcfg["max_norm"], "da_bn": dcfg["da_bn"],
                "center_crop": bool(size >= CROP_FROM), "image_size": size, "pro_mode": mcfg["pro_mode"]})
    log.info("ddad: %s seed %d image AUROC %s pixel AUROC %s in %.1fs", dataset, seed,
             metrics.get("image_auroc"), metrics.get("pixel_auroc"), job.elapsed())
    return record
