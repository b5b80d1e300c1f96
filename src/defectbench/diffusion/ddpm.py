"""DDPM pretraining (specs A.2 step 1, D.2): one UNet per dataset and task.

The model is a UNet in diffusers' ``UNet2DModel`` layout (:mod:`defectbench.models.unet`, which
does not import diffusers) sized from the config (``block_out_channels``, ``layers_per_block``,
the dataset's image size), trained with epsilon prediction on a DDPM schedule (T=1000, linear
betas 1e-4 -> 0.02), AdamW and an exponential moving average of the weights. The EMA UNet is
saved as diffusers saves a ``UNet2DModel`` and a ``DDPMScheduler`` (diffusers loads it too), so
the DiffCL views (:mod:`defectbench.diffusion.views`) and DDAD (:mod:`defectbench.diffusion.ddad`)
load the same model with :func:`load_diffusion`.

Choices the specs leave open (documented here, recorded in metrics.json through the config):

* Loss: the mean squared error over all elements (A.2 "epsilon-prediction MSE"). DDAD's own loss
  sums over pixels (D.2); that only rescales the gradient (Adam is almost scale invariant).
* EMA decay warm-up ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the diffusers
  convention), so short runs do not return the random initial weights.
* Self-attention in the ``attention_levels`` coarsest levels of the UNet (default 1, the
  cheapest form of D.2's "attention at the 32², 16², 8² maps"; 3 reproduces D.2) and the mid
  block; GroupNorm groups = the largest of 32, 16, 8, ... dividing every width, so tiny demo
  widths (16, 32) work.
* The last incomplete batch of an epoch is dropped (D.2 drop_last) unless it is the only one.

Images enter the model in [-1, 1] (D.1): ``x / 127.5 - 1`` of the uint8 cache.

>>> import torch
>>> table = alpha_bar_table(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
>>> float(table[0]), round(float(alpha_bar(table, torch.tensor(0))), 6)
(1.0, 0.9999)
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from defectbench.data.cache import SplitCache
from defectbench.models.unet import DIFFUSERS_LAYOUT, UNet2D
from defectbench.optim import Adam
from defectbench.runtime import (
    DefectbenchError,
    atomic_dir,
    autocast_context,
    seed_everything,
    stage_job,
    write_parquet,
)

log = logging.getLogger("defectbench")



# ----------------------------------------------------------------------------- model and schedule
def _norm_groups(widths: list[int] | tuple[int, ...]) -> int:
    for groups in (32, 16, 8, 4, 2, 1):
        if all(w % groups == 0 for w in widths):
            return groups
    return 1


def build_unet(image_size: int, block_out_channels: list[int] | tuple[int, ...], layers_per_block: int,
               attention_levels: int = 1, resnet_updown: bool = False) -> UNet2D:
    """The epsilon-prediction UNet (diffusers' ``UNet2DModel`` layout) for 3-channel ``image_size`` images.

    One resolution level per entry of ``block_out_channels`` (each but the last halves the
    size); self-attention in the ``attention_levels`` coarsest levels and the mid block;
    ``resnet_updown`` uses ResNet blocks to down/up-sample (BigGAN style, as DDAD's UNet).

    >>> unet = build_unet(16, [8, 16], 1)
    >>> unet(torch.zeros(2, 3, 16, 16), torch.tensor([0, 999])).shape
    torch.Size([2, 3, 16, 16])
    """
    widths = tuple(int(c) for c in block_out_channels)
    levels = len(widths)
    factor = 2 ** (levels - 1)
    if image_size % factor:
        raise DefectbenchError(
            f"diffusion.block_out_channels: {levels} levels need an image size divisible by {factor}, "
            f"got {image_size}; change the dataset's image_size or use fewer levels"
        )
    n_attn = max(0, min(int(attention_levels), levels))
    return UNet2D(
        image_size, widths, int(layers_per_block),
        ["DownBlock2D"] * (levels - n_attn) + ["AttnDownBlock2D"] * n_attn,
        norm_num_groups=_norm_groups(widths),
        attention_head_dim=min(8, widths[-1]),
        downsample_type="resnet" if resnet_updown else "conv",
        upsample_type="resnet" if resnet_updown else "conv",
    )


class NoiseSchedule:
    """DDPM's linear beta schedule (betas ``linspace(beta_start, beta_end, T)`` in float32), saved
    and loaded as diffusers' ``DDPMScheduler`` config (epsilon prediction, no clipping)."""

    CONFIG_NAME = "scheduler_config.json"

    def __init__(self, num_train_timesteps: int, beta_start: float, beta_end: float):
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float32)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        config = {
            "_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_LAYOUT,
            "num_train_timesteps": self.num_train_timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end,
            "beta_schedule": "linear", "trained_betas": None, "variance_type": "fixed_small", "clip_sample": False,
            "prediction_type": "epsilon", "thresholding": False, "dynamic_thresholding_ratio": 0.995,
            "clip_sample_range": 1.0, "sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0,
            "rescale_betas_zero_snr": False,
        }
        (Path(directory) / self.CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "NoiseSchedule":
        path = Path(directory) / cls.CONFIG_NAME
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DefectbenchError(f"{path}: not a readable scheduler config ({exc})") from exc
        for key, value in (("_class_name", "DDPMScheduler"), ("beta_schedule", "linear"), ("trained_betas", None),
                           ("prediction_type", "epsilon")):
            if config.get(key, value) != value:
                raise DefectbenchError(f"{path}: {key}={config[key]!r} is not supported (only {value!r})")
        try:
            return cls(config["num_train_timesteps"], config["beta_start"], config["beta_end"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DefectbenchError(f"{path}: num_train_timesteps, beta_start and beta_end must be numbers ({exc!r})") from exc


def make_scheduler(cfg: dict[str, Any]) -> NoiseSchedule:
    """The DDPM noise schedule of the ``diffusion`` config section (linear betas)."""
    return NoiseSchedule(cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"])


def alpha_bar_table(betas: torch.Tensor) -> torch.Tensor:
    """Cumulative products of ``1 - beta`` with a prepended ``beta = 0`` (D.3), length T+1.

    Entry ``t + 1`` is the usual ᾱ_t (t = 0..T-1) and entry 0 is ᾱ(-1) = 1, the "clean image"
    level the last DDIM step jumps to. Index it with :func:`alpha_bar`.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    return torch.cumprod(1.0 - torch.cat([betas.new_zeros(1), betas]), dim=0)


def alpha_bar(table: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """ᾱ at integer step(s) ``t`` in -1..T-1 from :func:`alpha_bar_table`."""
    t = torch.as_tensor(t, dtype=torch.long, device=table.device)
    return table[t + 1]


def noise_images(x0: torch.Tensor, noise: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, ᾱ_t per sample (shape (B,) or scalar)."""
    a = torch.as_tensor(alpha_bar_t, dtype=x0.dtype, device=x0.device).reshape(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_next: torch.Tensor,
              eta: float = 0.0, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One generalised DDIM step from level ᾱ_t to ᾱ_next (per-sample levels of shape (B,)).

    x̂0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t);  c1 = η sqrt((1-ᾱ_t/ᾱ_next)(1-ᾱ_next)/(1-ᾱ_t));
    c2 = sqrt(1-ᾱ_next-c1²);  x_next = sqrt(ᾱ_next) x̂0 + c1 z + c2 ε.  Returns (x_next, x̂0).
    ``eta = 0`` is deterministic DDIM (``noise`` unused), ``eta = 1`` DDPM-like (D.3).
    """
    shape = (-1, *([1] * (x_t.dim() - 1)))
    at = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device).reshape(shape)
    an = torch.as_tensor(alpha_bar_next, dtype=x_t.dtype, device=x_t.device).reshape(shape)
    x0 = (x_t - (1.0 - at).sqrt() * eps) / at.sqrt()
    c1 = eta * ((1.0 - at / an) * (1.0 - an) / (1.0 - at)).clamp_min(0.0).sqrt()
    c2 = (1.0 - an - c1**2).clamp_min(0.0).sqrt()
    x_next = an.sqrt() * x0 + c2 * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step: eta > 0 needs noise")
        x_next = x_next + c1 * noise
    return x_next, x0


def epsilon_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """DDPM training loss: mean squared error between predicted and true noise (fp32)."""
    return F.mse_loss(eps_pred.float(), eps.float())


def eps_fn(unet: nn.Module):
    """Wrap the UNet as ``eps(x, t) -> ε̂`` (t: (B,) long), output in fp32."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x, t).float()

    return eps


# ----------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    ``update(model)`` after each optimizer step (``train_loop`` calls it through
    ``extra_state``): shadow <- d·shadow + (1-d)·param with d = min(decay, (1+n)/(10+n)).
    ``state_dict``/``load_state_dict`` make it part of the checkpoint; ``copy_to`` writes the
    averaged weights into a module.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        state = model.state_dict()
        for key, avg in self.shadow.items():
            avg.mul_(d).add_(state[key].detach().to(avg.dtype), alpha=1.0 - d)
        self.num_updates += 1

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow, strict=False)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)


# ----------------------------------------------------------------------------- data
def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float (B,3,H,W) in [-1, 1] (D.1)."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B,3,H,W) in [-1, 1] -> uint8 (B,H,W,3), clipped and rounded."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------- saving / loading
def save_diffusion(model_dir: str | os.PathLike, unet: UNet2D, scheduler: NoiseSchedule) -> None:
    """``save_pretrained`` of the UNet and the scheduler config into one directory, atomically."""
    with atomic_dir(model_dir) as tmp:
        unet.save_pretrained(tmp)
        scheduler.save_pretrained(tmp)


def load_diffusion(model_dir: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[UNet2D, NoiseSchedule]:
    """(UNet in eval mode on ``device``, noise schedule) saved by :func:`save_diffusion` (or by diffusers)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists() or not (model_dir / "scheduler_config.json").exists():
        raise DefectbenchError(f"{model_dir}: not a saved diffusion model (config.json / scheduler_config.json missing); "
                               "rerun pretrain_diffusion")
    return UNet2D.from_pretrained(model_dir).to(device).eval(), NoiseSchedule.from_pretrained(model_dir)


def scheduler_table(scheduler: NoiseSchedule) -> torch.Tensor:
    """The :func:`alpha_bar_table` of a schedule's betas."""
    return alpha_bar_table(scheduler.betas.double())


# ----------------------------------------------------------------------------- training
def train_ddpm(images: np.ndarray, cfg: dict[str, Any], *, seed: int, device: torch.device,
               checkpoint_path: str | os.PathLike) -> tuple[UNet2D, NoiseSchedule, pd.DataFrame]:
    """Train a DDPM on uint8 images (N,S,S,3) with the ``diffusion`` config section.

    Returns (EMA UNet in eval mode, scheduler, per-epoch history). Resumes from
    ``checkpoint_path`` when it exists (through :func:`defectbench.train.train_loop`).
    """
    from defectbench.train import train_loop

    if len(images) == 0:
        raise DefectbenchError("diffusion: no training images in the split's train subset")
    seed_everything(seed)
    size = int(images.shape[1])
    unet = build_unet(size, cfg["block_out_channels"], cfg["layers_per_block"],
                      cfg["attention_levels"], cfg["resnet_updown"]).to(device)
    scheduler = make_scheduler(cfg)
    table = scheduler_table(scheduler).to(device)
    n_steps = scheduler.num_train_timesteps
    ema = EMA(unet, cfg["ema_decay"])
    optimizer = Adam(unet.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                     decoupled_weight_decay=True)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 (N,3,S,S) on CPU
    n = len(data)
    batch_size = min(int(cfg["batch_size"]), n)

    def batches(epoch: int, gen: torch.Generator):
        order = torch.randperm(n, generator=gen, device=gen.device).cpu()
        for start in range(0, n - batch_size + 1, batch_size):  # drop_last (D.2)
            yield data[order[start:start + batch_size]].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)

    def step(x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        t = torch.randint(0, n_steps, (len(x0),), generator=gen, device=device)
        eps = torch.randn(x0.shape, generator=gen, device=device)
        x_t = noise_images(x0, eps, alpha_bar(table, t).float())
        return epsilon_loss(unet(x_t, t), eps), {"ema_decay": ema.current_decay()}

    history = train_loop(unet, optimizer, step, batches, epochs=int(cfg["epochs"]), seed=seed, device=device,
                         amp=cfg["amp"], checkpoint_path=Path(checkpoint_path),
                         checkpoint_every=int(cfg["checkpoint_every"]), extra_state={"ema": ema},
                         log_prefix="diffusion: ")
    ema_unet = copy.deepcopy(unet)
    ema.copy_to(ema_unet)
    return ema_unet.eval(), scheduler, history


# ----------------------------------------------------------------------------- convergence report
@torch.no_grad()
def mask_reconstruction_errors(unet: nn.Module, scheduler: NoiseSchedule, images: np.ndarray, masks: np.ndarray, *,
                               seed: int, device: torch.device, batch_size: int = 16,
                               amp: str = "none") -> dict[str, float]:
    """Mean |x̂ - x| (channel mean, [-1,1] space) inside and outside the defect masks of ``images``.

    x̂: each image noised to DDAD's depth T/4 (250 of 1000) and denoised back by deterministic
    DDIM in 10 steps (DDAD's 250/25), without guidance. A model that learned the nominal images
    repairs the defects, so the error inside the masks is well above the error elsewhere; an
    untrained one fails everywhere alike (ratio near 1). ``masks`` (N,S,S) bool, each non-empty.
    """
    from defectbench.diffusion.views import denoise_partial  # views imports this module

    table = scheduler_table(scheduler).to(device)
    t_start = int(scheduler.num_train_timesteps) // 4
    eps_model = eps_fn(unet)
    gen = torch.Generator().manual_seed(int(seed))
    inside = outside = n_in = n_out = 0.0
    for start in range(0, len(images), batch_size):
        x0 = to_model_range(images[start:start + batch_size]).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        steps = torch.full((len(x0),), 10, dtype=torch.long)
        with autocast_context(device, amp):
            x_rec = denoise_partial(eps_model, x0, noise, torch.full_like(steps, t_start), steps, table)
        err = (x_rec.float() - x0).abs().mean(dim=1).cpu().numpy()
        m = masks[start:start + batch_size]
        inside += float(err[m].sum())
        outside += float(err[~m].sum())
        n_in += float(m.sum())
        n_out += float((~m).sum())
    rec_in, rec_out = inside / n_in, outside / max(n_out, 1.0)
    return {"rec_error_in_mask": rec_in, "rec_error_out_mask": rec_out, "rec_error_ratio": rec_in / max(rec_out, 1e-12)}


def convergence(final_loss: float, errors: dict[str, float] | None, max_loss: float, min_mask_ratio: float) -> bool:
    """Did the pretraining converge? The final training loss is at most ``max_loss``
    (``diffusion.converged_loss``) and, when defect masks were checked, the in-mask reconstruction
    error is at least ``min_mask_ratio`` (``diffusion.converged_mask_ratio``) times the error elsewhere."""
    ok = final_loss <= max_loss
    if errors is not None:
        ok = ok and errors["rec_error_ratio"] >= min_mask_ratio
    return ok


def _masked_test_images(data: SplitCache) -> tuple[np.ndarray, np.ndarray]:
    """(images, bool masks) of the split's ``test`` images whose defect mask is not empty
    (``data`` opened with the mask cache)."""
    test = data.subset("test")
    keep = test.masks.any(axis=(1, 2))
    return test.images[keep], test.masks[keep]


def pretrain_diffusion(cache_path: str | os.PathLike, split_path: str | os.PathLike, model_dir: str | os.PathLike,
                       metrics_path: str | os.PathLike, history_path: str | os.PathLike, cfg: dict[str, Any], *,
                       dataset: str, task: str, seed: int,
                       masks_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Pipeline stage ``pretrain_diffusion``: train on the ``train`` subset of the split, save
    the EMA UNet + scheduler (``model_dir``), ``history.parquet`` and ``metrics.json``.

    ``cfg`` is the rule's config slice: ``{"diffusion": {...}, "device": ..., "protocol": ...}``.
    The checkpoint lives beside ``model_dir`` (:func:`defectbench.train.checkpointed`: named by
    the config slice and the inputs' content, so a changed config never resumes a stale run) and
    is removed once the outputs are written.

    metrics.json reports whether the model converged (``extra.converged``, :func:`convergence`):
    the final loss against ``converged_loss`` and, with ``masks_path`` (the anomaly task, whose
    train subset is nominal only), :func:`mask_reconstruction_errors` on the split's ``test``
    images that have a defect mask. The check only reports: it selects nothing.
    """
    from defectbench.train import checkpointed

    dcfg = cfg["diffusion"]
    keys = {"dataset": dataset, "seed": seed, "method": "ddpm", "backbone": "unet2d", "task": task}
    with stage_job(stage="pretraining", cfg=cfg, keys=keys, seed=seed, amp=dcfg["amp"]) as job:
        data = SplitCache(split_path, cache_path, masks_path=masks_path)
        images = data.subset("train").images
        log.info("diffusion: %s/%s seed %d: %d train images of %d px on %s", dataset, task, seed, len(images),
                 images.shape[1] if len(images) else 0, job.device)
        masked = _masked_test_images(data) if masks_path is not None else None
        with checkpointed(Path(model_dir).parent, cfg, {"cache": cache_path, "split": split_path}) as checkpoint:
            unet, scheduler, history = train_ddpm(images, dcfg, seed=seed, device=job.device, checkpoint_path=checkpoint)
            errors = None
            if masked is not None and len(masked[0]):
                errors = mask_reconstruction_errors(unet, scheduler, *masked, seed=seed, device=job.device,
                                                    batch_size=int(dcfg["batch_size"]), amp=job.amp)
            save_diffusion(model_dir, unet, scheduler)
            write_parquet(history_path, history)
            final_loss = float(history["loss"].iloc[-1])
            converged = _report_convergence(final_loss, errors, dcfg, f"{dataset}/{task} seed {seed}")
            return job.write_metrics(
                metrics_path,
                metrics={"final_loss": final_loss, "epochs": float(len(history)),
                         "n_train": float(len(images)), "n_parameters": float(sum(p.numel() for p in unet.parameters())),
                         "images_per_s": float(history["images_per_s"].mean()), **(errors or {})},
                extra={"amp": job.amp, "image_size": int(images.shape[1]), "converged": converged},
            )


def _report_convergence(final_loss: float, errors: dict[str, float] | None, dcfg: dict[str, Any], what: str) -> bool:
    """:func:`convergence` under the ``diffusion`` section's limits, with a warning when it failed."""
    max_loss, min_ratio = float(dcfg["converged_loss"]), float(dcfg["converged_mask_ratio"])
    converged = convergence(final_loss, errors, max_loss, min_ratio)
    if not converged:
        log.warning("diffusion: %s did not converge: final loss %.4f (converged_loss %g), in/out-of-mask "
                    "reconstruction error ratio %s (converged_mask_ratio %g); train longer or at a higher lr",
                    what, final_loss, max_loss,
                    "not measured" if errors is None else f"{errors['rec_error_ratio']:.2f}", min_ratio)
    return converged


__all__ = [
    "EMA", "alpha_bar", "alpha_bar_table", "build_unet", "convergence", "ddim_step", "epsilon_loss", "eps_fn",
    "load_diffusion", "make_scheduler", "mask_reconstruction_errors", "noise_images", "pretrain_diffusion",
    "save_diffusion", "scheduler_table", "to_model_range", "to_uint8", "train_ddpm",
]
