"""DiffCL diffusion views (spec A.2 step 2): diffuse-and-denoise (SDEdit) variants of each image.

For each train image x and variant k: draw a strength s ~ U[strength_min, strength_max], set
t* = ⌊s·T⌋ (at most T-1), noise x to x_t* = sqrt(ᾱ_t*) x + sqrt(1-ᾱ_t*) ε, then denoise with
deterministic DDIM (η = 0) in n = max(1, round(ddim_steps·s)) steps visiting
t* > t*(n-1)/n > ... > t*/n and jumping from the last one to ᾱ(-1) = 1 (the clean image).

Every (row, k) pair draws its s and ε from its own generator seeded by (seed, row, k), so a view
does not depend on the batch size, the order of the work or the device. Pairs are processed
sorted by their step count, in batches; a batch runs the largest step count of its members and
members that have finished are left unchanged (pairs of a batch mostly share the same count).

Output: ``views.npy`` (N_train, K, S, S, 3) uint8, rows = the train subset of the split sorted
by ``row`` (docs/CONTRACTS.md), written through a memory map to a temporary file then renamed.

>>> timesteps_for(200, 5)
[200, 160, 120, 80, 40]
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from defectbench.data.cache import read_split_images
from defectbench.diffusion.ddpm import (
    alpha_bar,
    ddim_step,
    eps_fn,
    load_diffusion,
    noise_images,
    scheduler_table,
    to_model_range,
    to_uint8,
)
from defectbench.runtime import DefectbenchError, Timer, atomic_path, autocast_context, stage_job

log = logging.getLogger("defectbench")


def timesteps_for(t_start: int, n_steps: int) -> list[int]:
    """The DDIM timesteps of one view: ``round(t_start·(n-j)/n)`` for j = 0..n-1 (descending)."""
    return [int(round(t_start * (n_steps - j) / n_steps)) for j in range(n_steps)]


def pair_generator(seed: int, row: int, k: int) -> torch.Generator:
    """CPU generator of the (row, k) view, independent of every other pair."""
    state = np.random.SeedSequence([int(seed), int(row), int(k)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def draw_pair(seed: int, row: int, k: int, shape: tuple[int, ...], strength_min: float, strength_max: float,
              ddim_steps: int, num_train_timesteps: int) -> tuple[float, int, int, torch.Tensor]:
    """(s, t*, n, ε) of one view; ε is a CPU tensor of ``shape``."""
    gen = pair_generator(seed, row, k)
    s = strength_min + (strength_max - strength_min) * float(torch.rand((), generator=gen))
    t_start = min(int(s * num_train_timesteps), num_train_timesteps - 1)
    n = max(1, int(round(ddim_steps * s)))
    n = min(n, max(t_start, 1))  # never more steps than timesteps
    eps = torch.randn(shape, generator=gen)
    return s, t_start, n, eps


@torch.no_grad()
def denoise_partial(eps_model, x0: torch.Tensor, noise: torch.Tensor, t_start: torch.Tensor, n_steps: torch.Tensor,
                    table: torch.Tensor) -> torch.Tensor:
    """Noise each x0 to its own level t_start and run its own DDIM(η=0) trajectory of n steps back.

    ``eps_model(x, t) -> ε̂``; ``t_start``/``n_steps`` are (B,) long; ``table`` from
    :func:`defectbench.diffusion.ddpm.alpha_bar_table` (on x0's device). Returns x̃ (B,3,S,S).
    """
    device = x0.device
    t_start = t_start.to(device)
    n_steps = n_steps.to(device)
    x = noise_images(x0, noise, alpha_bar(table, t_start).float())
    for j in range(int(n_steps.max())):
        active = j < n_steps
        # t_j = round(t*·(n-j)/n); next = t_{j+1}, or -1 after the last step
        t = torch.round(t_start.double() * (n_steps - j).double() / n_steps.double()).long()
        t_next = torch.round(t_start.double() * (n_steps - j - 1).double() / n_steps.double()).long()
        t_next = torch.where(j + 1 >= n_steps, torch.full_like(t_next, -1), t_next)
        t = torch.where(active, t, torch.zeros_like(t))
        t_next = torch.where(active, t_next, torch.full_like(t_next, -1))
        eps = eps_model(x, t)
        x_new, _ = ddim_step(x, eps.to(x.dtype), alpha_bar(table, t).float(), alpha_bar(table, t_next).float(), eta=0.0)
        x = torch.where(active.view(-1, 1, 1, 1), x_new, x)
    return x


def make_views(unet: nn.Module, scheduler: Any, images: np.ndarray, rows: np.ndarray, *, k: int,
               strength_min: float, strength_max: float, ddim_steps: int, batch_size: int, seed: int,
               device: torch.device, amp: str = "none", out: np.ndarray | None = None) -> np.ndarray:
    """K diffusion views of each uint8 image (N,S,S,3) -> (N,K,S,S,3) uint8 (written into ``out``).

    ``rows`` (N,) are the manifest rows of the images: they seed each view.
    """
    if not 0.0 <= strength_min <= strength_max <= 1.0:
        raise DefectbenchError(f"diffusion.views: need 0 <= strength_min <= strength_max <= 1, got {strength_min}, {strength_max}")
    n_images, size = len(images), int(images.shape[1]) if len(images) else 0
    if out is None:
        out = np.empty((n_images, k, size, size, 3), dtype=np.uint8)
    n_train = int(scheduler.num_train_timesteps)
    table = scheduler_table(scheduler).to(device)
    eps_model = eps_fn(unet)
    def draw(i: int, kk: int, shape: tuple[int, ...]) -> tuple[float, int, int, torch.Tensor]:
        return draw_pair(seed, int(rows[i]), kk, shape, strength_min, strength_max, ddim_steps, n_train)

    # First pass: step counts only (an empty noise draw consumes no random numbers), so the
    # noise of a pair is drawn when its batch runs and never all at once.
    pairs = []
    for i in range(n_images):
        for kk in range(k):
            _, t_start, n, _ = draw(i, kk, (0,))
            pairs.append((n, i, kk, t_start))
    pairs.sort(key=lambda p: p[0])
    done = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        idx = np.array([p[1] for p in chunk])
        x0 = to_model_range(images[idx]).to(device)
        noise = torch.stack([draw(p[1], p[2], (3, size, size))[3] for p in chunk]).to(device)
        t_start = torch.tensor([p[3] for p in chunk], dtype=torch.long)
        n_steps = torch.tensor([p[0] for p in chunk], dtype=torch.long)
        with autocast_context(device, amp):
            x = denoise_partial(eps_model, x0, noise, t_start, n_steps, table)
        out[idx, [p[2] for p in chunk]] = to_uint8(x)
        done += len(chunk)
        log.info("diffusion views: %d/%d done", done, len(pairs))
    return out


def diffusion_views(model_dir: str | os.PathLike, cache_path: str | os.PathLike, split_path: str | os.PathLike,
                    views_path: str | os.PathLike, cfg: dict[str, Any], *, seed: int) -> np.ndarray:
    """Pipeline stage ``diffusion_views``: views of the split's train rows into ``views_path``.

    ``cfg`` is the rule's config slice with the ``diffusion`` section (its ``views`` block).
    Returns the array (memory-mapped from the final file).
    """
    vcfg = cfg["diffusion"]["views"]
    with stage_job(stage="diffusion_views", cfg=cfg, keys={"seed": seed}, seed=seed,
                   amp=cfg["diffusion"].get("amp", "none")) as job:
        unet, scheduler = load_diffusion(model_dir, job.device)
        train = read_split_images(split_path, cache_path, "train")
        images = train.images
        if len(images) and images.shape[1] != unet.sample_size:
            raise DefectbenchError(f"{model_dir}: model trained at {unet.sample_size} px but {cache_path} is "
                                   f"{images.shape[1]} px; rerun pretrain_diffusion")
        k = int(vcfg["k"])
        size = int(images.shape[1]) if len(images) else int(unet.sample_size)
        log.info("diffusion views: %d images x %d views on %s (amp %s)", len(images), k, job.device, job.amp)
        with Timer() as timer, atomic_path(views_path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), k, size, size, 3))
            make_views(unet, scheduler, images, train.row_ids, k=k,
                       strength_min=float(vcfg["strength_min"]), strength_max=float(vcfg["strength_max"]),
                       ddim_steps=int(vcfg["ddim_steps"]), batch_size=int(vcfg["batch_size"]), seed=seed,
                       device=job.device, amp=job.amp, out=out)
            out.flush()
            m = min(len(images), 256)  # a sample is enough for the log line
            diff = float(np.abs(out[:m].astype(np.float32) - images[:m, None].astype(np.float32)).mean()) if m else 0.0
            del out
        log.info("diffusion views: %.1f views/s, mean |view - image| %.2f of 255",
                 len(images) * k / max(timer.seconds, 1e-9), diff)
    return np.load(views_path, mmap_mode="r")
